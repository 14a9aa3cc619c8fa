//! `POST /` with a `transaction` Bundle (all or nothing, `urn:uuid:` references resolved,
//! `ifNoneExist` and `ifMatch` honoured, every entry authorised and checked by the same rules
//! as a single request) or a `batch` Bundle (entries processed one by one).

use std::collections::HashMap;

use serde_json::{json, Value};

use super::idempotency::RequestKey;
use super::ingest::{check_entry_resource, structure_issue};
use super::resources::{CreateOutcome, ResourceService, WriteConditions};
use super::rules::Pending;
use super::write::{OnVersionConflict, PlanWrite, Planned, WritePipeline};
use super::ServiceError;
use crate::auth::Interaction;
use crate::domain::ids::{ResourceId, VersionId};
use crate::domain::outcome::{operation_outcome, Issue, IssueCode};
use crate::domain::resource_type::ResourceType;
use crate::domain::search_query::parse_criteria;
use crate::domain::tenancy::{Principal, Visibility};
use crate::store::{ConditionalClaim, ConditionalKey, ConditionalLookup, ResourceWrite, WriteMethod, WriteSet};

/// Whether the caller's token permits an interaction on a type (the HTTP layer's scopes).
pub type Authorize<'a> = &'a (dyn Fn(ResourceType, Interaction) -> bool + Sync);

/// One entry as requested.
#[derive(Debug, Clone)]
struct Entry {
    index: usize,
    method: String,
    resource_type: ResourceType,
    id: Option<ResourceId>,
    full_url: Option<String>,
    resource: Option<Value>,
    if_none_exist: Option<String>,
    if_match: Option<VersionId>,
}

fn entry_error(index: usize, mut error: ServiceError) -> ServiceError {
    let prefix = |issues: &mut Vec<Issue>| {
        for issue in issues.iter_mut() {
            issue.diagnostics = format!("Bundle.entry[{index}]: {}", issue.diagnostics);
        }
    };
    match &mut error {
        ServiceError::Invalid(issues) | ServiceError::Unprocessable(issues) => prefix(issues),
        ServiceError::ForbiddenAt(issue) | ServiceError::Conflict(issue) => {
            issue.diagnostics = format!("Bundle.entry[{index}]: {}", issue.diagnostics)
        }
        ServiceError::Forbidden(why)
        | ServiceError::NotFound(why)
        | ServiceError::Gone(why)
        | ServiceError::PreconditionFailed(why) => *why = format!("Bundle.entry[{index}]: {why}"),
        ServiceError::Internal(_) | ServiceError::Store(_) => {}
    }
    error
}

fn invalid_entry(index: usize, message: &str, element: &str) -> ServiceError {
    ServiceError::Invalid(vec![Issue::error(IssueCode::Invalid, format!("Bundle.entry[{index}]: {message}"))
        .at(format!("Bundle.entry[{index}].{element}"))])
}

/// Reads the entries of a Bundle into requests.
fn parse_entries(bundle: &Value) -> Result<Vec<Entry>, ServiceError> {
    let entries = bundle.get("entry").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    entries
        .iter()
        .enumerate()
        .map(|(index, entry)| {
            let request =
                entry.get("request").ok_or_else(|| invalid_entry(index, "every entry needs a request", "request"))?;
            let method = request.get("method").and_then(Value::as_str).unwrap_or_default().to_owned();
            let url = request.get("url").and_then(Value::as_str).unwrap_or_default();
            let path = url.split('?').next().unwrap_or_default().trim_matches('/');
            let mut parts = path.split('/');
            let type_name = parts.next().unwrap_or_default();
            let resource_type =
                ResourceType::parse(type_name).map_err(|e| invalid_entry(index, &e.to_string(), "request.url"))?;
            let id = parts
                .next()
                .map(|raw| ResourceId::parse(raw).map_err(|e| invalid_entry(index, &e.to_string(), "request.url")))
                .transpose()?;
            let if_match = request
                .get("ifMatch")
                .and_then(Value::as_str)
                .map(|raw| {
                    VersionId::parse_etag(raw).map_err(|e| invalid_entry(index, &e.to_string(), "request.ifMatch"))
                })
                .transpose()?;
            Ok(Entry {
                index,
                method,
                resource_type,
                id,
                full_url: entry.get("fullUrl").and_then(Value::as_str).map(str::to_owned),
                resource: entry.get("resource").cloned(),
                if_none_exist: request.get("ifNoneExist").and_then(Value::as_str).map(str::to_owned),
                if_match,
            })
        })
        .collect()
}

/// Replaces every `reference` equal to a key of `map` (an entry's `fullUrl`) with the new
/// `Type/id` (R4 http.html#trules).
fn resolve_references(value: &mut Value, map: &HashMap<String, String>) {
    match value {
        Value::Object(object) => {
            for (key, child) in object.iter_mut() {
                if key == "reference" {
                    if let Some(target) = child.as_str().and_then(|r| map.get(r)) {
                        *child = Value::String(target.clone());
                    }
                } else {
                    resolve_references(child, map);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| resolve_references(item, map)),
        _ => {}
    }
}

fn required_interaction(method: &str) -> Option<Interaction> {
    match method {
        "POST" => Some(Interaction::Create),
        "PUT" => Some(Interaction::Update),
        "DELETE" => Some(Interaction::Delete),
        "GET" => Some(Interaction::Read),
        _ => None,
    }
}

/// The response of an entry that wrote a version.
fn written_entry(status: &str, write: &ResourceWrite) -> Value {
    entry_response(
        status,
        Some(format!("{}/{}/_history/{}", write.resource_type, write.id, write.version)),
        Some(write.version.etag()),
        Some(write.last_updated.to_fhir()),
    )
}

/// Makes a version written by an earlier entry visible to the rules of the later ones.
fn remember(pending: &mut Pending, write: &ResourceWrite) {
    if write.method == WriteMethod::Delete {
        pending.forget(write.resource_type, write.id.as_str().to_owned());
    } else if let Ok(body) = serde_json::from_str::<Value>(&write.body) {
        pending.remember(write.resource_type, write.id.as_str().to_owned(), body);
    }
}

/// The response of one processed entry.
fn entry_response(
    status: &str,
    location: Option<String>,
    etag: Option<String>,
    last_modified: Option<String>,
) -> Value {
    let mut response = json!({"status": status});
    if let Some(map) = response.as_object_mut() {
        if let Some(l) = location {
            map.insert("location".into(), json!(l));
        }
        if let Some(e) = etag {
            map.insert("etag".into(), json!(e));
        }
        if let Some(m) = last_modified {
            map.insert("lastModified".into(), json!(m));
        }
    }
    json!({"response": response})
}

impl ResourceService {
    /// `POST /`: a transaction or batch Bundle.
    pub async fn process_bundle(
        &self,
        caller: &Principal,
        bundle: Value,
        authorize: Authorize<'_>,
        request: Option<&RequestKey>,
    ) -> Result<Value, ServiceError> {
        if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
            return Err(ServiceError::invalid(
                IssueCode::Invalid,
                "POST / takes a transaction or batch Bundle",
                Some("resourceType"),
            ));
        }
        crate::fhir::format::check_structure(&bundle).map_err(|e| ServiceError::Invalid(vec![structure_issue(e)]))?;
        match bundle.get("type").and_then(Value::as_str) {
            Some("transaction") => self.transaction(caller, &bundle, authorize, request).await,
            Some("batch") => Ok(self.batch(caller, &bundle, authorize).await),
            other => Err(ServiceError::invalid(
                IssueCode::Invalid,
                format!("a Bundle of type {} cannot be processed; use transaction or batch", other.unwrap_or("(none)")),
                Some("Bundle.type"),
            )),
        }
    }

    /// A transaction Bundle: every entry planned into one write set, committed all or nothing.
    async fn transaction(
        &self,
        caller: &Principal,
        bundle: &Value,
        authorize: Authorize<'_>,
        request: Option<&RequestKey>,
    ) -> Result<Value, ServiceError> {
        let pipeline = WritePipeline::begin(self.store(), request).await?;
        let entries = parse_entries(bundle)?;
        for entry in &entries {
            let interaction =
                required_interaction(&entry.method).filter(|i| *i != Interaction::Read).ok_or_else(|| {
                    invalid_entry(entry.index, "transaction entries are POST, PUT or DELETE", "request.method")
                })?;
            if !authorize(entry.resource_type, interaction) {
                return Err(entry_error(
                    entry.index,
                    ServiceError::Forbidden(format!(
                        "the access token's scopes do not allow this entry on {}",
                        entry.resource_type
                    )),
                ));
            }
        }
        pipeline.commit(Transaction { service: self, caller, entries: &entries }).await
    }

    /// Plans every entry into one write set, for the `attempt`-th time (see
    /// [`Pending::for_attempt`]). Creates come first so that later entries can refer to what
    /// they create; references to `fullUrl`s are resolved before any check.
    async fn plan_transaction(
        &self,
        caller: &Principal,
        entries: &[Entry],
        attempt: usize,
    ) -> Result<(WriteSet, Vec<Value>), ServiceError> {
        let scope = caller.scope();
        let mut pending = Pending::for_attempt(attempt);
        let mut ids: HashMap<usize, (ResourceId, bool)> = HashMap::new();
        let mut references: HashMap<String, String> = HashMap::new();
        let mut claims = Vec::new();
        let mut no_match_required = Vec::new();
        for entry in entries.iter().filter(|e| e.method == "POST") {
            let mut existing = None;
            if let Some(raw) = &entry.if_none_exist {
                let criteria = parse_criteria(entry.resource_type, raw)
                    .map_err(|issue| entry_error(entry.index, ServiceError::Invalid(vec![issue])))?;
                let key = criteria.canonical_key();
                let scope_key = Visibility::Organization(caller.organization().clone()).key();
                let claim =
                    ConditionalKey { scope_key: &scope_key, resource_type: entry.resource_type, criteria: &key };
                let (ConditionalLookup { claimed: stale, matches }, no_match) =
                    self.conditional_lookup(&pending, &claim, &scope, &criteria).await?;
                no_match_required.extend(no_match);
                match matches.as_slice() {
                    [] => {
                        let id = ResourceId::generate();
                        claims.push(ConditionalClaim {
                            scope_key,
                            resource_type: entry.resource_type,
                            criteria: key,
                            id: id.clone(),
                            replaces: stale,
                        });
                        existing = Some((id, false));
                    }
                    [one] => existing = Some((one.clone(), true)),
                    _ => {
                        return Err(entry_error(
                            entry.index,
                            ServiceError::PreconditionFailed("ifNoneExist matches more than one resource".into()),
                        ))
                    }
                }
            }
            let (id, matched) = existing.unwrap_or_else(|| (ResourceId::generate(), false));
            pending.expect(entry.resource_type, id.as_str().to_owned());
            if let Some(full_url) = &entry.full_url {
                references.insert(full_url.clone(), format!("{}/{}", entry.resource_type, id));
            }
            ids.insert(entry.index, (id, matched));
        }

        let mut write_set = WriteSet { conditional_claims: claims, no_match_required, ..Default::default() };
        let mut responses: Vec<(usize, Value)> = Vec::new();
        let order = |method: &str| match method {
            "DELETE" => 0,
            "POST" => 1,
            _ => 2,
        };
        let mut ordered: Vec<&Entry> = entries.iter().collect();
        ordered.sort_by_key(|e| (order(&e.method), e.index));
        for entry in ordered {
            let fail = |e: ServiceError| entry_error(entry.index, e);
            let mut resource = entry.resource.clone();
            if let Some(r) = resource.as_mut() {
                resolve_references(r, &references);
            }
            match entry.method.as_str() {
                "POST" => {
                    let (id, matched) = ids
                        .get(&entry.index)
                        .cloned()
                        .ok_or_else(|| fail(ServiceError::invalid(IssueCode::Processing, "entry lost", None)))?;
                    if matched {
                        let current = self.read_resource(caller, entry.resource_type, &id).await.map_err(fail)?;
                        responses.push((
                            entry.index,
                            entry_response(
                                "200 OK",
                                Some(format!("{}/{}/_history/{}", entry.resource_type, id, current.version)),
                                Some(current.version.etag()),
                                Some(current.last_updated.to_fhir()),
                            ),
                        ));
                        continue;
                    }
                    let body = resource.ok_or_else(|| {
                        fail(ServiceError::invalid(IssueCode::Required, "a POST entry needs a resource", None))
                    })?;
                    check_entry_resource(&body, entry.resource_type, &self.profiles).map_err(fail)?;
                    let (planned, write) = self
                        .plan(
                            caller,
                            entry.resource_type,
                            id.clone(),
                            None,
                            Some((body, WriteMethod::Create)),
                            &pending,
                        )
                        .await
                        .map_err(fail)?;
                    remember(&mut pending, &write);
                    responses.push((entry.index, written_entry("201 Created", &write)));
                    write_set.absorb(planned);
                }
                "PUT" | "DELETE" => {
                    let id = entry.id.clone().ok_or_else(|| {
                        fail(ServiceError::invalid(
                            IssueCode::Invalid,
                            "PUT and DELETE entries name Type/id",
                            Some("request.url"),
                        ))
                    })?;
                    let current = self
                        .store()
                        .read_current(&scope, entry.resource_type, &id)
                        .await?
                        .ok_or_else(|| fail(ServiceError::NotFound(format!("{}/{id}", entry.resource_type))))?;
                    if let Some(expected) = entry.if_match {
                        if expected != current.version {
                            return Err(fail(ServiceError::PreconditionFailed(format!(
                                "ifMatch names version {expected}, the current is {}",
                                current.version
                            ))));
                        }
                    }
                    let change = if entry.method == "PUT" {
                        let body = resource.ok_or_else(|| {
                            fail(ServiceError::invalid(IssueCode::Required, "a PUT entry needs a resource", None))
                        })?;
                        check_entry_resource(&body, entry.resource_type, &self.profiles).map_err(fail)?;
                        if body.get("id").and_then(Value::as_str) != Some(id.as_str()) {
                            return Err(fail(ServiceError::invalid(
                                IssueCode::Invalid,
                                "the resource id must match request.url",
                                Some("resource.id"),
                            )));
                        }
                        Some((body, WriteMethod::Update))
                    } else {
                        None
                    };
                    let method = change.as_ref().map_or(WriteMethod::Delete, |(_, m)| *m);
                    let (planned, write) = self
                        .plan(caller, entry.resource_type, id.clone(), Some(&current), change, &pending)
                        .await
                        .map_err(fail)?;
                    let status = if method == WriteMethod::Delete { "204 No Content" } else { "200 OK" };
                    remember(&mut pending, &write);
                    responses.push((entry.index, written_entry(status, &write)));
                    write_set.absorb(planned);
                }
                _ => {
                    return Err(fail(ServiceError::invalid(
                        IssueCode::NotSupported,
                        "unsupported entry method",
                        Some("request.method"),
                    )))
                }
            }
        }
        responses.sort_by_key(|(index, _)| *index);
        Ok((write_set, responses.into_iter().map(|(_, r)| r).collect()))
    }

    /// Each entry on its own, as if sent alone; a failure answers in its entry.
    async fn batch(&self, caller: &Principal, bundle: &Value, authorize: Authorize<'_>) -> Value {
        let entries = match parse_entries(bundle) {
            Ok(entries) => entries,
            Err(e) => return json!({"resourceType": "Bundle", "type": "batch-response", "entry": [failure_entry(&e)]}),
        };
        let mut responses = Vec::with_capacity(entries.len());
        for entry in entries {
            let outcome = self.batch_entry(caller, &entry, authorize).await;
            responses.push(match outcome {
                Ok(response) => response,
                Err(e) => failure_entry(&entry_error(entry.index, e)),
            });
        }
        response_bundle("batch-response", responses)
    }

    async fn batch_entry(
        &self,
        caller: &Principal,
        entry: &Entry,
        authorize: Authorize<'_>,
    ) -> Result<Value, ServiceError> {
        let interaction = required_interaction(&entry.method).ok_or_else(|| {
            ServiceError::invalid(
                IssueCode::NotSupported,
                "batch entries are GET, POST, PUT or DELETE",
                Some("request.method"),
            )
        })?;
        if !authorize(entry.resource_type, interaction) {
            return Err(ServiceError::Forbidden(format!(
                "the access token's scopes do not allow this entry on {}",
                entry.resource_type
            )));
        }
        let need_id = || {
            entry.id.clone().ok_or_else(|| {
                ServiceError::invalid(IssueCode::Invalid, "the request url names Type/id", Some("request.url"))
            })
        };
        let need_body = || {
            entry
                .resource
                .clone()
                .ok_or_else(|| ServiceError::invalid(IssueCode::Required, "the entry needs a resource", None))
        };
        let located = |v: &crate::store::StoredVersion, status: &str| {
            entry_response(
                status,
                Some(format!("{}/{}/_history/{}", v.resource_type, v.id, v.version)),
                Some(v.version.etag()),
                Some(v.last_updated.to_fhir()),
            )
        };
        match entry.method.as_str() {
            "GET" => {
                let v = self.read_resource(caller, entry.resource_type, &need_id()?).await?;
                let mut response = located(&v, "200 OK");
                if let (Some(map), Ok(resource)) = (response.as_object_mut(), serde_json::from_str::<Value>(&v.body)) {
                    map.insert("resource".into(), resource);
                }
                Ok(response)
            }
            "POST" => match self
                .create_resource(caller, entry.resource_type, need_body()?, entry.if_none_exist.as_deref(), None)
                .await?
            {
                CreateOutcome::Created(v) => Ok(located(&v, "201 Created")),
                CreateOutcome::Existing(v) => Ok(located(&v, "200 OK")),
            },
            "PUT" => {
                let conditions = WriteConditions { if_match: entry.if_match, request: None };
                let v =
                    self.update_resource(caller, entry.resource_type, &need_id()?, need_body()?, &conditions).await?;
                Ok(located(&v, "200 OK"))
            }
            _ => {
                let conditions = WriteConditions { if_match: entry.if_match, request: None };
                self.delete_resource(caller, entry.resource_type, &need_id()?, &conditions).await?;
                Ok(entry_response("204 No Content", None, None, None))
            }
        }
    }
}

/// A transaction Bundle as one write: its entries planned together, committed all or nothing.
struct Transaction<'a> {
    service: &'a ResourceService,
    caller: &'a Principal,
    entries: &'a [Entry],
}

impl PlanWrite for Transaction<'_> {
    type Answer = Value;

    async fn plan(&mut self, attempt: usize) -> Result<Planned<Value>, ServiceError> {
        let (write_set, responses) = self.service.plan_transaction(self.caller, self.entries, attempt).await?;
        let created: Vec<&str> = responses.iter().filter_map(|r| r["response"]["location"].as_str()).collect();
        let request_outcome = format!("the transaction of {}", created.join(", "));
        Ok(Planned::Commit { write_set, request_outcome, answer: response_bundle("transaction-response", responses) })
    }

    /// The transaction is refused whole (412), not planned again on a version its entries did
    /// not read.
    fn on_version_conflict(&self, resource_type: String, id: String) -> OnVersionConflict {
        OnVersionConflict::Refuse(ServiceError::PreconditionFailed(format!(
            "{resource_type}/{id} was changed by another request; the transaction was not applied"
        )))
    }

    fn exhausted(&self) -> ServiceError {
        ServiceError::Conflict(Issue::error(
            IssueCode::Transient,
            "concurrent requests kept colliding; retry the transaction",
        ))
    }
}

/// A failed batch entry: its status and OperationOutcome (R4 bundle.html#batch).
fn failure_entry(error: &ServiceError) -> Value {
    let (status, issues) = error.status_and_issues();
    json!({"response": {"status": status.to_string(), "outcome": operation_outcome(&issues)}})
}

/// A batch or transaction response; without `entry` when the request had none (FHIR JSON never
/// has an empty array).
fn response_bundle(kind: &str, responses: Vec<Value>) -> Value {
    let mut bundle = json!({"resourceType": "Bundle", "type": kind});
    if !responses.is_empty() {
        bundle["entry"] = Value::Array(responses);
    }
    bundle
}
