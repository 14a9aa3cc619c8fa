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
use crate::store::{
    ConditionalClaim, ConditionalKey, ConditionalLookup, NoMatchRequired, ResourceWrite, StoredVersion, WriteMethod,
    WriteSet,
};

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

/// The id a transaction's POST entry gets, settled before any entry is planned.
#[derive(Debug, Clone)]
enum SettledId {
    /// A new resource, created under this id.
    New(ResourceId),
    /// The one resource its `ifNoneExist` matched: nothing is written.
    Matched(ResourceId),
}

impl SettledId {
    fn id(&self) -> &ResourceId {
        match self {
            SettledId::New(id) | SettledId::Matched(id) => id,
        }
    }
}

/// What a transaction settles about its POST entries before it plans any entry, so that every
/// entry may refer to what the others create.
#[derive(Debug, Default)]
struct SettledCreates {
    /// The id of each POST entry, by its index in the Bundle.
    ids: HashMap<usize, SettledId>,
    /// Each POST entry's `fullUrl` and the `Type/id` it becomes.
    references: HashMap<String, String>,
    /// The conditional-create keys the new resources claim.
    claims: Vec<ConditionalClaim>,
    /// The searches the writer must find empty (see `ResourceService::conditional_lookup`).
    no_match_required: Vec<NoMatchRequired>,
}

/// The order entries are planned in (R4 http.html#trules): deletions, then creates, then
/// updates, each in Bundle order.
fn processing_order(entries: &[Entry]) -> Vec<&Entry> {
    let rank = |method: &str| match method {
        "DELETE" => 0,
        "POST" => 1,
        _ => 2,
    };
    let mut ordered: Vec<&Entry> = entries.iter().collect();
    ordered.sort_by_key(|e| (rank(&e.method), e.index));
    ordered
}

/// Refuses a transaction unless every entry is a write the caller's token permits.
fn authorize_entries(entries: &[Entry], authorize: Authorize<'_>) -> Result<(), ServiceError> {
    for entry in entries {
        let interaction = required_interaction(&entry.method).filter(|i| *i != Interaction::Read).ok_or_else(|| {
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
    Ok(())
}

/// The response of an entry about a version that is stored.
fn located_entry(status: &str, version: &StoredVersion) -> Value {
    entry_response(
        status,
        Some(format!("{}/{}/_history/{}", version.resource_type, version.id, version.version)),
        Some(version.version.etag()),
        Some(version.last_updated.to_fhir()),
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
        authorize_entries(&entries, authorize)?;
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
        let mut pending = Pending::for_attempt(attempt);
        let creates = self.settle_creates(caller, entries, &mut pending).await?;
        let mut write_set = WriteSet {
            conditional_claims: creates.claims,
            no_match_required: creates.no_match_required,
            ..Default::default()
        };
        let mut responses: Vec<(usize, Value)> = Vec::with_capacity(entries.len());
        for entry in processing_order(entries) {
            let mut resource = entry.resource.clone();
            if let Some(r) = resource.as_mut() {
                resolve_references(r, &creates.references);
            }
            let planned = match entry.method.as_str() {
                "POST" => {
                    self.plan_create_entry(caller, entry, creates.ids.get(&entry.index), resource, &mut pending).await
                }
                "PUT" | "DELETE" => self.plan_change_entry(caller, entry, resource, &mut pending).await,
                _ => Err(ServiceError::invalid(
                    IssueCode::NotSupported,
                    "unsupported entry method",
                    Some("request.method"),
                )),
            };
            let (planned, response) = planned.map_err(|e| entry_error(entry.index, e))?;
            write_set.absorb(planned);
            responses.push((entry.index, response));
        }
        responses.sort_by_key(|(index, _)| *index);
        Ok((write_set, responses.into_iter().map(|(_, r)| r).collect()))
    }

    /// Settles the id of every POST entry, and the keys its conditional creates claim.
    async fn settle_creates(
        &self,
        caller: &Principal,
        entries: &[Entry],
        pending: &mut Pending,
    ) -> Result<SettledCreates, ServiceError> {
        let mut settled = SettledCreates::default();
        for entry in entries.iter().filter(|e| e.method == "POST") {
            let id = match &entry.if_none_exist {
                Some(raw) => self
                    .settle_conditional_id(caller, entry.resource_type, raw, pending, &mut settled)
                    .await
                    .map_err(|e| entry_error(entry.index, e))?,
                None => SettledId::New(ResourceId::generate()),
            };
            pending.expect(entry.resource_type, id.id().as_str().to_owned());
            if let Some(full_url) = &entry.full_url {
                settled.references.insert(full_url.clone(), format!("{}/{}", entry.resource_type, id.id()));
            }
            settled.ids.insert(entry.index, id);
        }
        Ok(settled)
    }

    /// The id of a POST entry with `ifNoneExist` (`raw`): the one resource its criteria match,
    /// or a new one claiming the criteria's key; several matches are 412.
    async fn settle_conditional_id(
        &self,
        caller: &Principal,
        resource_type: ResourceType,
        raw: &str,
        pending: &Pending,
        settled: &mut SettledCreates,
    ) -> Result<SettledId, ServiceError> {
        let criteria = parse_criteria(resource_type, raw).map_err(|issue| ServiceError::Invalid(vec![issue]))?;
        let key = criteria.canonical_key();
        let scope_key = Visibility::Organization(caller.organization().clone()).key();
        let claim = ConditionalKey { scope_key: &scope_key, resource_type, criteria: &key };
        let (ConditionalLookup { claimed: stale, matches }, no_match) =
            self.conditional_lookup(pending, &claim, &caller.scope(), &criteria).await?;
        settled.no_match_required.extend(no_match);
        match matches.as_slice() {
            [] => {
                let id = ResourceId::generate();
                let claim =
                    ConditionalClaim { scope_key, resource_type, criteria: key, id: id.clone(), replaces: stale };
                settled.claims.push(claim);
                Ok(SettledId::New(id))
            }
            [one] => Ok(SettledId::Matched(one.clone())),
            _ => Err(ServiceError::PreconditionFailed("ifNoneExist matches more than one resource".into())),
        }
    }

    /// Plans a POST entry under its settled id; one whose `ifNoneExist` matched writes nothing
    /// (an empty write set) and answers with what it matched.
    async fn plan_create_entry(
        &self,
        caller: &Principal,
        entry: &Entry,
        settled: Option<&SettledId>,
        resource: Option<Value>,
        pending: &mut Pending,
    ) -> Result<(WriteSet, Value), ServiceError> {
        let id = match settled {
            Some(SettledId::New(id)) => id.clone(),
            Some(SettledId::Matched(id)) => {
                let current = self.read_resource(caller, entry.resource_type, id).await?;
                return Ok((WriteSet::default(), located_entry("200 OK", &current)));
            }
            None => return Err(ServiceError::invalid(IssueCode::Processing, "entry lost", None)),
        };
        let body = resource
            .ok_or_else(|| ServiceError::invalid(IssueCode::Required, "a POST entry needs a resource", None))?;
        check_entry_resource(&body, entry.resource_type, &self.profiles)?;
        let change = Some((body, WriteMethod::Create));
        let (planned, write) = self.plan(caller, entry.resource_type, id, None, change, pending).await?;
        remember(pending, &write);
        Ok((planned, written_entry("201 Created", &write)))
    }

    /// Plans a PUT or DELETE entry on the current version of the resource it names.
    async fn plan_change_entry(
        &self,
        caller: &Principal,
        entry: &Entry,
        resource: Option<Value>,
        pending: &mut Pending,
    ) -> Result<(WriteSet, Value), ServiceError> {
        let id = entry.id.clone().ok_or_else(|| {
            ServiceError::invalid(IssueCode::Invalid, "PUT and DELETE entries name Type/id", Some("request.url"))
        })?;
        let current = self.current_for_write(caller, entry.resource_type, &id).await?;
        if let Some(expected) = entry.if_match {
            if expected != current.version {
                return Err(ServiceError::PreconditionFailed(format!(
                    "ifMatch names version {expected}, the current is {}",
                    current.version
                )));
            }
        }
        let change = if entry.method == "PUT" {
            let body = resource
                .ok_or_else(|| ServiceError::invalid(IssueCode::Required, "a PUT entry needs a resource", None))?;
            check_entry_resource(&body, entry.resource_type, &self.profiles)?;
            if body.get("id").and_then(Value::as_str) != Some(id.as_str()) {
                return Err(ServiceError::invalid(
                    IssueCode::Invalid,
                    "the resource id must match request.url",
                    Some("resource.id"),
                ));
            }
            Some((body, WriteMethod::Update))
        } else {
            None
        };
        let status = if change.is_some() { "200 OK" } else { "204 No Content" };
        let (planned, write) = self.plan(caller, entry.resource_type, id, Some(&current), change, pending).await?;
        remember(pending, &write);
        Ok((planned, written_entry(status, &write)))
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
        match entry.method.as_str() {
            "GET" => {
                let v = self.read_resource(caller, entry.resource_type, &need_id()?).await?;
                let mut response = located_entry("200 OK", &v);
                if let (Some(map), Ok(resource)) = (response.as_object_mut(), serde_json::from_str::<Value>(&v.body)) {
                    map.insert("resource".into(), resource);
                }
                Ok(response)
            }
            "POST" => match self
                .create_resource(caller, entry.resource_type, need_body()?, entry.if_none_exist.as_deref(), None)
                .await?
            {
                CreateOutcome::Created(v) => Ok(located_entry("201 Created", &v)),
                CreateOutcome::Existing(v) => Ok(located_entry("200 OK", &v)),
            },
            "PUT" => {
                let conditions = WriteConditions { if_match: entry.if_match, request: None };
                let v =
                    self.update_resource(caller, entry.resource_type, &need_id()?, need_body()?, &conditions).await?;
                Ok(located_entry("200 OK", &v))
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
