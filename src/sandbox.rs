//! `linkbridge demo seed`: the integrator sandbox. Fills a running server with a small, realistic
//! data set through its public API, exactly as the GP system and the CLW tool would: the two
//! directory entries, four patients each referred in one transaction Bundle, and those referrals
//! taken to different points of the workflow (new, accepted, in progress with a CarePlan,
//! declined). Every request is a real, authenticated, audited call; nothing is written behind
//! the server's back. Seeding twice adds nothing new: the Bundles create conditionally on their
//! business identifiers and a referral is only moved from where the seed left it.

use reqwest::Method;
use serde_json::{json, Value};

use crate::admin::{self, AdminError};
use crate::config::Settings;

const ODS_SYSTEM: &str = "https://fhir.nhs.uk/Id/ods-organization-code";
const NHS_NUMBER_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";
/// Business identifiers of what the sandbox creates, so a second seed finds the first.
const SANDBOX_SYSTEM: &str = "https://linkbridge.scot/fhir/sandbox";
const SOCIAL_NEED_SYSTEM: &str = "https://linkbridge.scot/fhir/CodeSystem/social-need-category";

/// The profiles' own examples, so the sandbox data is what the profiles describe.
const PATIENT_EXAMPLE: &str = include_str!("../profiles/examples/Patient-nhs-number.json");
const SERVICE_REQUEST_EXAMPLE: &str = include_str!("../profiles/examples/ServiceRequest-referral.json");
const TASK_EXAMPLE: &str = include_str!("../profiles/examples/Task-referral.json");
const CARE_PLAN_EXAMPLE: &str = include_str!("../profiles/examples/CarePlan-link-worker.json");

/// Where the seed takes each referral.
#[derive(Clone, Copy)]
enum Stage {
    New,
    Accepted,
    InProgress,
    Declined,
}

struct SamplePatient {
    /// NHS numbers from the 900 range, which is never issued to a real person.
    nhs_number: &'static str,
    family: &'static str,
    given: &'static str,
    gender: &'static str,
    birth_date: &'static str,
    need: &'static str,
    why: &'static str,
    stage: Stage,
}

const PATIENTS: [SamplePatient; 4] = [
    SamplePatient {
        nhs_number: "9000000009",
        family: "MacLeod",
        given: "Morag",
        gender: "female",
        birth_date: "1961-04-12",
        need: "money-debt",
        why: "Rent arrears since her hours were cut",
        stage: Stage::New,
    },
    SamplePatient {
        nhs_number: "9000000017",
        family: "Baird",
        given: "Callum",
        gender: "male",
        birth_date: "1978-09-30",
        need: "isolation",
        why: "Lonely since his wife died; rarely leaves the flat",
        stage: Stage::Accepted,
    },
    SamplePatient {
        nhs_number: "9000000025",
        family: "Nowak",
        given: "Agnieszka",
        gender: "female",
        birth_date: "1990-02-17",
        need: "housing",
        why: "Damp and mould in a private let; two young children",
        stage: Stage::InProgress,
    },
    SamplePatient {
        nhs_number: "9000000033",
        family: "Reid",
        given: "Tam",
        gender: "male",
        birth_date: "1955-12-03",
        need: "money-debt",
        why: "Energy debt; prepayment meter often empty",
        stage: Stage::Declined,
    },
];

/// The server's API as one demo client sees it.
struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn send(&self, method: Method, path: &str, content_type: &str, body: &Value) -> Result<Value, AdminError> {
        self.send_with(method, path, content_type, body, None).await
    }

    /// With `If-None-Exist` where given (a conditional create).
    async fn send_with(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: &Value,
        if_none_exist: Option<&str>,
    ) -> Result<Value, AdminError> {
        let url = format!("{}{path}", self.base);
        let mut request = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(&self.token)
            .header("Content-Type", content_type)
            .header("Accept", "application/fhir+json");
        if let Some(condition) = if_none_exist {
            request = request.header("If-None-Exist", condition);
        }
        let response = request
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| AdminError::Invalid(format!("cannot reach {url}: {e}")))?;
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            Ok(answer)
        } else {
            Err(AdminError::Invalid(format!("{method} {path} answered {status}: {answer}")))
        }
    }

    async fn get(&self, path: &str) -> Result<Value, AdminError> {
        self.send(Method::GET, path, "application/fhir+json", &Value::Null).await
    }
}

/// `linkbridge demo seed`: registers the demo clients if they are not yet, then seeds the
/// running server at `server` and says what is there and how to try it.
pub async fn seed(settings: &Settings, server: &str) -> Result<String, AdminError> {
    admin::ensure_demo_clients(settings).await?;
    let base = server.trim_end_matches('/').to_owned();
    let http = reqwest::Client::new();
    let gp = Api {
        http: http.clone(),
        base: base.clone(),
        token: admin::demo_token(settings, "demo-gp", &base, "system/*.cruds").await?,
    };
    let clw = Api {
        http,
        base: base.clone(),
        token: admin::demo_token(settings, "demo-clw", &base, "system/*.cruds").await?,
    };

    directory_entry(&gp, "DEMOGP1", "Deep End Demo Medical Practice").await?;
    directory_entry(&clw, "DEMOCLW1", "Demo Community Links Service").await?;

    let mut lines = vec![format!("Seeded {base} (as demo-gp, ODS DEMOGP1, and demo-clw, ODS DEMOCLW1):")];
    for (number, sample) in PATIENTS.iter().enumerate() {
        let referral = refer(&gp, number + 1, sample).await?;
        let status = advance(&clw, &referral, sample).await?;
        lines.push(format!(
            "  {} {} ({}): Task/{} {status}, ServiceRequest/{}, Patient/{}",
            sample.given, sample.family, sample.need, referral.task, referral.service_request, referral.patient
        ));
    }
    lines.push(String::new());
    lines.push(format!(
        "Try it: TOKEN=$(linkbridge demo token demo-clw --server {base})\n  \
         curl -H \"Authorization: Bearer $TOKEN\" '{base}/Task?owner:identifier={ODS_SYSTEM}|DEMOCLW1&status=requested'\n\
         Browse and call every operation at {base}/docs (Authorize: paste the token as bearer)."
    ));
    Ok(lines.join("\n"))
}

/// The organisation's own Organization entry (each organisation maintains its own), created
/// unless its ODS code is already there.
async fn directory_entry(api: &Api, ods: &str, name: &str) -> Result<(), AdminError> {
    let organization = json!({
        "resourceType": "Organization",
        "identifier": [{"system": ODS_SYSTEM, "value": ods}],
        "active": true,
        "name": name,
    });
    let condition = format!("identifier={ODS_SYSTEM}|{ods}");
    api.send_with(Method::POST, "/Organization", "application/fhir+json", &organization, Some(&condition)).await?;
    Ok(())
}

struct Referral {
    patient: String,
    service_request: String,
    task: String,
}

fn example(text: &str) -> Result<Value, AdminError> {
    serde_json::from_str(text).map_err(|e| AdminError::Invalid(format!("a bundled profile example is not JSON: {e}")))
}

/// One referral as the GP system sends it: Patient, Consent, ServiceRequest and Task in one
/// transaction, each created only if its identifier is not already there.
async fn refer(gp: &Api, number: usize, sample: &SamplePatient) -> Result<Referral, AdminError> {
    let urn = || format!("urn:uuid:{}", uuid::Uuid::new_v4());
    let (patient_urn, consent_urn, request_urn, task_urn) = (urn(), urn(), urn(), urn());
    let referral_id = format!("SANDBOX-{number:03}");

    let mut patient = example(PATIENT_EXAMPLE)?;
    patient["identifier"] = json!([{"system": NHS_NUMBER_SYSTEM, "value": sample.nhs_number}]);
    patient["name"] = json!([{"family": sample.family, "given": [sample.given]}]);
    patient["gender"] = json!(sample.gender);
    patient["birthDate"] = json!(sample.birth_date);

    let consent = json!({
        "resourceType": "Consent",
        "identifier": [{"system": SANDBOX_SYSTEM, "value": format!("{referral_id}-consent")}],
        "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0", "display": "Patient Consent"}]}],
        "patient": {"reference": patient_urn},
        "dateTime": "2026-11-23T09:29:00Z",
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "provision": {"type": "permit"}
    });

    let mut request = example(SERVICE_REQUEST_EXAMPLE)?;
    request["identifier"] = json!([{"system": SANDBOX_SYSTEM, "value": referral_id}]);
    request["subject"] = json!({"reference": patient_urn});
    request["supportingInfo"] = json!([{"reference": consent_urn}]);
    request["reasonCode"] =
        json!([{"coding": [{"system": SOCIAL_NEED_SYSTEM, "code": sample.need}], "text": sample.why}]);

    let mut task = example(TASK_EXAMPLE)?;
    task["identifier"] = json!([{"system": SANDBOX_SYSTEM, "value": format!("{referral_id}-task")}]);
    task["focus"] = json!({"reference": request_urn});
    task["for"] = json!({"reference": patient_urn});

    let conditional = |resource: Value, full_url: &str, condition: String| {
        let url = resource["resourceType"].clone();
        json!({"fullUrl": full_url, "resource": resource, "request": {"method": "POST", "url": url, "ifNoneExist": condition}})
    };
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            conditional(patient, &patient_urn, format!("identifier={NHS_NUMBER_SYSTEM}|{}", sample.nhs_number)),
            conditional(consent, &consent_urn, format!("identifier={SANDBOX_SYSTEM}|{referral_id}-consent")),
            conditional(request, &request_urn, format!("identifier={SANDBOX_SYSTEM}|{referral_id}")),
            conditional(task, &task_urn, format!("identifier={SANDBOX_SYSTEM}|{referral_id}-task")),
        ]
    });
    let response = gp.send(Method::POST, "/", "application/fhir+json", &bundle).await?;
    let created = |index: usize| -> Result<String, AdminError> {
        response["entry"][index]["response"]["location"]
            .as_str()
            // `Type/id/_history/n`, relative or absolute.
            .and_then(|location| location.split("/_history").next()?.rsplit('/').next())
            .map(str::to_owned)
            .ok_or_else(|| AdminError::Invalid(format!("the transaction response has no location for entry {index}")))
    };
    Ok(Referral { patient: created(0)?, service_request: created(2)?, task: created(3)? })
}

/// Takes a new referral to the sample's stage as the CLW tool would; one the seed moved before
/// is left where it is. Returns the Task's status.
async fn advance(clw: &Api, referral: &Referral, sample: &SamplePatient) -> Result<String, AdminError> {
    let path = format!("/Task/{}", referral.task);
    let current = clw.get(&path).await?;
    let status = current["status"].as_str().unwrap_or_default().to_owned();
    if status != "requested" {
        return Ok(status);
    }
    let moves: &[&str] = match sample.stage {
        Stage::New => &[],
        Stage::Accepted => &["accepted"],
        Stage::InProgress => &["accepted", "in-progress"],
        Stage::Declined => &["rejected"],
    };
    let mut status = status;
    for target in moves {
        let mut patch = vec![json!({"op": "replace", "path": "/status", "value": target})];
        if *target == "rejected" {
            patch.push(json!({"op": "add", "path": "/statusReason", "value": {"text": "Already supported by the energy advice service"}}));
        }
        let task = clw.send(Method::PATCH, &path, "application/json-patch+json", &Value::Array(patch)).await?;
        status = task["status"].as_str().unwrap_or(target).to_owned();
    }
    if matches!(sample.stage, Stage::InProgress) {
        let mut plan = example(CARE_PLAN_EXAMPLE)?;
        plan["title"] = json!(format!("What matters to {}", sample.given));
        plan["subject"] = json!({"reference": format!("Patient/{}", referral.patient)});
        plan["basedOn"] = json!([{"reference": format!("ServiceRequest/{}", referral.service_request)}]);
        clw.send(Method::POST, "/CarePlan", "application/fhir+json", &plan).await?;
    }
    Ok(status)
}
