//! Create, read, vread, update, patch, delete and history of any served resource type
//! (FHIR R4 http.html).

use serde_json::Value;

use super::idempotency::RequestKey;
use super::ingest::{check_resource, stamp};
use super::rules::{LiteralPartyCode, Pending, Rules};
use super::subscription_rules::{plan_subscription_write, SubscriptionEffects};
use super::write::{OnVersionConflict, PlanWrite, Planned, WritePipeline};
use super::ServiceError;
use crate::domain::audit::{AuditAction, AuditAgent, AuditOutcome, AuditRecord};
use crate::domain::ids::{ResourceId, VersionId};
use crate::domain::instant::Instant;
use crate::domain::outcome::{Issue, IssueCode};
use crate::domain::patch::{PatchLimits, PatchRefusal};
use crate::domain::resource_type::ResourceType;
use crate::domain::search_params::{extract_index, split_reference, IndexEntry};
use crate::domain::search_query::{parse_criteria, SearchQuery};
use crate::domain::subscriptions::{EndpointPolicy, Topic};
use crate::domain::tenancy::{derived_visibility, OdsCode, Principal, TenantScope, Visibility};
use crate::profiles::ProfileCheck;
use crate::store::{
    ConditionalClaim, ConditionalKey, ConditionalLookup, DeletedContent, HistoryQuery, NoMatchRequired, Precondition,
    ResourceWrite, Store, StoredVersion, WriteMethod, WriteSet,
};

/// The outcome of a create: a new resource, or (conditional create) the one that matched.
#[derive(Debug)]
pub enum CreateOutcome {
    Created(StoredVersion),
    Existing(StoredVersion),
}

/// What a change to an existing resource is conditional on: the version the client read
/// (`If-Match`) and the request's de-duplication key (`X-Request-ID`).
#[derive(Debug, Clone, Default)]
pub struct WriteConditions {
    pub if_match: Option<VersionId>,
    pub request: Option<RequestKey>,
}

/// The resource-level use cases over one store.
#[derive(Clone)]
pub struct ResourceService {
    store: Store,
    /// Refuse a second open referral for one patient to one CLW service (BaRS).
    single_open_referral: bool,
    /// The profiles every write is checked against.
    pub(super) profiles: ProfileCheck,
    /// Which webhook endpoints subscriptions may name.
    endpoint_policy: EndpointPolicy,
    /// How many operations a JSON Patch may hold and how large its result may grow.
    patch_limits: PatchLimits,
}

/// A patch too long for the limits is a bad request (400); one whose result would be too
/// large, or that cannot be applied to this resource, is unprocessable (422).
fn patch_refused(refusal: PatchRefusal) -> ServiceError {
    let message = refusal.to_string();
    match refusal {
        PatchRefusal::TooManyOperations { .. } => {
            ServiceError::Invalid(vec![Issue::error(IssueCode::TooLong, message)])
        }
        PatchRefusal::ResultTooLarge { .. } => {
            ServiceError::Unprocessable(vec![Issue::error(IssueCode::TooCostly, message)])
        }
        PatchRefusal::Failed { .. } => ServiceError::Unprocessable(vec![Issue::error(
            IssueCode::Processing,
            format!("the patch cannot be applied: {message}"),
        )]),
    }
}

/// A stored body as JSON; the store only holds what the service wrote, so a failure is a fault.
pub(super) fn stored_json(body: &str) -> Result<Value, ServiceError> {
    serde_json::from_str(body).map_err(|e| ServiceError::Internal(format!("stored body is not JSON: {e}")))
}

/// Gives each reference row that names a party by a literal reference the ODS code it resolves
/// to ([`Rules::literal_party_codes`]) as its identifier, as if the sender had written both.
fn index_party_codes(index: &mut [IndexEntry], codes: &[LiteralPartyCode]) {
    for entry in index.iter_mut() {
        let IndexEntry::Reference { param, target_type, target_id, identifier_system, identifier_value } = entry else {
            continue;
        };
        if identifier_value.is_some() {
            continue;
        }
        let resolved = codes.iter().find(|(parameter, literal, _)| {
            parameter == param
                && split_reference(literal).is_some_and(|(t, i)| {
                    target_type.as_deref() == Some(t.as_str()) && target_id.as_deref() == Some(i.as_str())
                })
        });
        if let Some((_, _, ods)) = resolved {
            *identifier_system = Some(OdsCode::SYSTEM.to_owned());
            *identifier_value = Some(ods.as_str().to_owned());
        }
    }
}

fn label(resource_type: ResourceType, id: &ResourceId) -> String {
    format!("{resource_type}/{id}")
}

/// What a deletion deleted, for the writer to match against the live subscriptions
/// (`store::events`): a deletion notifies on what was deleted. `None` for a type no topic
/// covers.
fn deleted_content(resource_type: ResourceType, id: &ResourceId, before: &Value) -> Option<DeletedContent> {
    Topic::of(resource_type)?;
    Some(DeletedContent {
        resource_type,
        id: id.clone(),
        index: extract_index(resource_type, before),
        visibility: derived_visibility(resource_type, before).iter().map(Visibility::key).collect(),
    })
}

impl ResourceService {
    pub fn new(store: Store, profiles: ProfileCheck) -> Self {
        ResourceService {
            store,
            single_open_referral: true,
            profiles,
            endpoint_policy: EndpointPolicy::default(),
            patch_limits: PatchLimits {
                max_operations: PatchLimits::DEFAULT_MAX_OPERATIONS,
                max_result_bytes: crate::config::Settings::default().max_body_bytes,
            },
        }
    }

    /// The profiles writes are checked against (`$validate` uses the same).
    pub fn profiles(&self) -> &ProfileCheck {
        &self.profiles
    }

    pub fn with_single_open_referral(mut self, enabled: bool) -> Self {
        self.single_open_referral = enabled;
        self
    }

    pub fn with_patch_limits(mut self, limits: PatchLimits) -> Self {
        self.patch_limits = limits;
        self
    }

    pub fn with_endpoint_policy(mut self, policy: EndpointPolicy) -> Self {
        self.endpoint_policy = policy;
        self
    }

    /// Plans one write through the referral rules: the new version (`change`: the content and
    /// how it came about; `None` deletes) of `resource_type/id` from `current`, with its audit
    /// record and everything the rules add (visibility, cascaded Task cancellations, the
    /// open-referral key). Every write path (create, update, patch, delete, transaction
    /// entries) comes through here, within the write pipeline (`service::write`).
    pub(crate) async fn plan(
        &self,
        caller: &Principal,
        resource_type: ResourceType,
        id: ResourceId,
        current: Option<&StoredVersion>,
        change: Option<(Value, WriteMethod)>,
        pending: &Pending,
    ) -> Result<(WriteSet, ResourceWrite), ServiceError> {
        let (mut after, method) = match change {
            Some((body, method)) => (Some(body), method),
            None => (None, WriteMethod::Delete),
        };
        let before: Option<Value> = current.filter(|c| !c.deleted).map(|c| stored_json(&c.body)).transpose()?;
        let subscription = match resource_type {
            ResourceType::Subscription => {
                let policy = &self.endpoint_policy;
                plan_subscription_write(&self.store, caller, &id, before.as_ref(), after.as_mut(), policy).await?
            }
            _ => SubscriptionEffects::default(),
        };
        let rules = Rules { store: &self.store, caller, pending, single_open_referral: self.single_open_referral };
        let effects = rules.check(resource_type, &id, before.as_ref(), after.as_mut()).await?;
        let deleted = match (&before, &after) {
            (Some(before), None) => deleted_content(resource_type, &id, before),
            _ => None,
        };
        let mut write = Self::version_write(caller, resource_type, id, current, after, method);
        write.visibility.extend(effects.extra_visibility);
        index_party_codes(&mut write.index, &effects.literal_party_codes);
        let mut write_set = Self::write_set_of(caller, write.clone(), effects.claims);
        write_set.grants = effects.grants;
        write_set.revocations = effects.revocations;
        for (task, body) in effects.cancel_tasks {
            write_set.absorb(Self::plan_cancellation(&rules, caller, task, body).await?);
        }
        write_set.subscription_changes = subscription.changes;
        write_set.notifications = subscription.notifications;
        write_set.deleted_contents.extend(deleted);
        Ok((write_set, write))
    }

    /// For the use cases of `service` built on this one (bundles, subscriptions, delivery);
    /// outside `service` the store is reached only through a service's own functions.
    pub(super) fn store(&self) -> &Store {
        &self.store
    }

    /// The write of the version after `current` (the first when there is none): `after`
    /// stamped and indexed, or a deletion.
    fn version_write(
        caller: &Principal,
        resource_type: ResourceType,
        id: ResourceId,
        current: Option<&StoredVersion>,
        after: Option<Value>,
        method: WriteMethod,
    ) -> ResourceWrite {
        let (version, precondition) = match current {
            Some(c) => (c.version.next(), Precondition::CurrentVersion(c.version)),
            None => (VersionId::FIRST, Precondition::Absent),
        };
        match after {
            Some(body) => {
                Self::prepare_write(Some(caller.organization()), resource_type, id, body, version, method, precondition)
            }
            None => ResourceWrite {
                resource_type,
                id,
                version,
                last_updated: Instant::now(),
                method: WriteMethod::Delete,
                precondition,
                body: String::new(),
                index: Vec::new(),
                visibility: Vec::new(),
                visibility_grants: Vec::new(),
            },
        }
    }

    /// The write set cancelling a Task whose referral was revoked (`body`: the cancelled Task).
    async fn plan_cancellation(
        rules: &Rules<'_>,
        caller: &Principal,
        task: StoredVersion,
        body: Value,
    ) -> Result<WriteSet, ServiceError> {
        // A cancelled Task keeps the ODS codes its parties resolve to, in its index and in
        // who may see it: a service named by a literal reference to its directory entry
        // would otherwise lose sight of the Task (and never hear of the cancellation), as
        // the content alone names it by no ODS code.
        let party_codes = rules.literal_party_codes(ResourceType::Task, &body).await?;
        let mut cancel = Self::prepare_write(
            Some(caller.organization()),
            ResourceType::Task,
            task.id.clone(),
            body,
            task.version.next(),
            WriteMethod::Update,
            Precondition::CurrentVersion(task.version),
        );
        index_party_codes(&mut cancel.index, &party_codes);
        cancel.visibility.extend(party_codes.iter().map(|(_, _, ods)| Visibility::Organization(ods.clone()).key()));
        cancel.visibility.sort();
        cancel.visibility.dedup();
        Ok(Self::write_set_of(caller, cancel, Vec::new()))
    }

    /// Builds the write of one new version: stamps the server-owned elements, serialises the
    /// body and extracts its index and visibility. A create grants visibility to `creator`.
    pub(crate) fn prepare_write(
        creator: Option<&OdsCode>,
        resource_type: ResourceType,
        id: ResourceId,
        mut resource: Value,
        version: VersionId,
        method: WriteMethod,
        precondition: Precondition,
    ) -> ResourceWrite {
        let last_updated = Instant::now();
        stamp(&mut resource, &id, version.get(), &last_updated.to_fhir());
        let index = extract_index(resource_type, &resource);
        let mut visibility: Vec<String> =
            derived_visibility(resource_type, &resource).iter().map(Visibility::key).collect();
        visibility.sort();
        visibility.dedup();
        let visibility_grants = match (method, creator) {
            (WriteMethod::Create, Some(creator)) => vec![Visibility::Organization(creator.clone()).key()],
            _ => Vec::new(),
        };
        ResourceWrite {
            resource_type,
            id,
            version,
            last_updated,
            method,
            precondition,
            body: resource.to_string(),
            index,
            visibility,
            visibility_grants,
        }
    }

    /// The write set of one resource write, with its audit record: a change and the record of
    /// it commit together or not at all.
    pub(crate) fn write_set_of(caller: &Principal, write: ResourceWrite, claims: Vec<ConditionalClaim>) -> WriteSet {
        let (action, interaction) = match write.method {
            WriteMethod::Create => (AuditAction::Create, "create"),
            WriteMethod::Update => (AuditAction::Update, "update"),
            WriteMethod::Patch => (AuditAction::Update, "patch"),
            WriteMethod::Delete => (AuditAction::Delete, "delete"),
        };
        let audit = AuditRecord::new(
            AuditAgent::of(caller),
            action,
            interaction,
            AuditOutcome::Success,
            Some(write.resource_type.as_str()),
            Some(write.id.as_str()),
        );
        WriteSet { resources: vec![write], conditional_claims: claims, audit: vec![audit], ..Default::default() }
    }

    fn written(write: ResourceWrite) -> StoredVersion {
        StoredVersion {
            resource_type: write.resource_type,
            id: write.id,
            version: write.version,
            last_updated: write.last_updated,
            deleted: write.body.is_empty(),
            method: write.method,
            body: write.body,
            change_seq: 0,
        }
    }

    /// `POST [type]`, optionally conditional on `If-None-Exist` criteria.
    pub async fn create_resource(
        &self,
        caller: &Principal,
        resource_type: ResourceType,
        resource: Value,
        if_none_exist: Option<&str>,
        request: Option<&RequestKey>,
    ) -> Result<CreateOutcome, ServiceError> {
        check_resource(&resource, resource_type, &self.profiles)?;
        let pipeline = WritePipeline::begin(&self.store, request).await?;
        let criteria = if_none_exist
            .map(|raw| parse_criteria(resource_type, raw))
            .transpose()
            .map_err(|issue| ServiceError::Invalid(vec![issue]))?;
        match criteria {
            None => pipeline.commit(Creation { service: self, caller, resource_type, resource }).await,
            Some(criteria) => {
                pipeline.commit(ConditionalCreation::new(self, caller, resource_type, resource, criteria)).await
            }
        }
    }

    /// What a conditional create knows before it claims its key: who holds the key, and the
    /// live resources (at most two) its criteria match in the caller's scope. The first
    /// planning of a request (see [`Pending::assumes_keys_free`]) reads nothing: it takes the
    /// key as free and the criteria as matching nothing, and returns the search the writer
    /// must find empty when it applies the write set ([`NoMatchRequired`]); should it not, the
    /// commit fails with `ConditionalClaimTaken` and the next planning reads.
    pub(super) async fn conditional_lookup(
        &self,
        pending: &Pending,
        claim: &ConditionalKey<'_>,
        scope: &TenantScope,
        criteria: &SearchQuery,
    ) -> Result<(ConditionalLookup, Option<NoMatchRequired>), ServiceError> {
        if pending.assumes_keys_free() {
            let no_match = NoMatchRequired { scope: scope.clone(), query: criteria.clone() };
            return Ok((ConditionalLookup { claimed: None, matches: Vec::new() }, Some(no_match)));
        }
        Ok((self.store.conditional_lookup(claim, scope, criteria, 2).await?, None))
    }

    /// `GET [type]/[id]`: 404 for missing or not visible, 410 for deleted.
    pub async fn read_resource(
        &self,
        caller: &Principal,
        resource_type: ResourceType,
        id: &ResourceId,
    ) -> Result<StoredVersion, ServiceError> {
        let current = self
            .store
            .read_current(&caller.scope(), resource_type, id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(label(resource_type, id)))?;
        if current.deleted {
            return Err(ServiceError::Gone(label(resource_type, id)));
        }
        Ok(current)
    }

    /// `GET [type]/[id]/_history/[vid]`.
    pub async fn vread_resource(
        &self,
        caller: &Principal,
        resource_type: ResourceType,
        id: &ResourceId,
        version: VersionId,
    ) -> Result<StoredVersion, ServiceError> {
        let found = self
            .store
            .read_version(&caller.scope(), resource_type, id, version)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("{}/_history/{version}", label(resource_type, id))))?;
        if found.deleted {
            return Err(ServiceError::Gone(format!("{}/_history/{version}", label(resource_type, id))));
        }
        Ok(found)
    }

    /// The current version for a write: not visible or never created is 404; a deleted
    /// resource may be brought back by an update (R4 http.html#update).
    pub(super) async fn current_for_write(
        &self,
        caller: &Principal,
        resource_type: ResourceType,
        id: &ResourceId,
    ) -> Result<StoredVersion, ServiceError> {
        self.store
            .read_current(&caller.scope(), resource_type, id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(label(resource_type, id)))
    }

    fn check_if_match(current: &StoredVersion, if_match: Option<VersionId>) -> Result<(), ServiceError> {
        match if_match {
            Some(expected) if expected != current.version => Err(ServiceError::PreconditionFailed(format!(
                "If-Match names version {expected} but the current version is {}",
                current.version
            ))),
            _ => Ok(()),
        }
    }

    /// Commits a new version computed from the current one. With `If-Match`, a concurrent
    /// writer turns into 412; without it the change is recomputed on the newer version.
    async fn write_new_version<F>(
        &self,
        caller: &Principal,
        resource_type: ResourceType,
        id: &ResourceId,
        conditions: &WriteConditions,
        method: WriteMethod,
        next_body: F,
    ) -> Result<StoredVersion, ServiceError>
    where
        F: FnMut(&StoredVersion) -> Result<Value, ServiceError>,
    {
        let target = ExistingResource { service: self, caller, resource_type, id, if_match: conditions.if_match };
        let change = NewVersion { target, method, next_body };
        WritePipeline::begin(&self.store, conditions.request.as_ref()).await?.commit(change).await
    }

    /// `PUT [type]/[id]`.
    pub async fn update_resource(
        &self,
        caller: &Principal,
        resource_type: ResourceType,
        id: &ResourceId,
        resource: Value,
        conditions: &WriteConditions,
    ) -> Result<StoredVersion, ServiceError> {
        check_resource(&resource, resource_type, &self.profiles)?;
        match resource.get("id").and_then(Value::as_str) {
            Some(body_id) if body_id == id.as_str() => {}
            Some(body_id) => {
                return Err(ServiceError::invalid(
                    IssueCode::Invalid,
                    format!("the body's id '{body_id}' does not match the id '{id}' in the URL"),
                    Some(&format!("{resource_type}.id")),
                ))
            }
            None => {
                return Err(ServiceError::invalid(
                    IssueCode::Required,
                    "an update must carry the resource id matching the URL",
                    Some(&format!("{resource_type}.id")),
                ))
            }
        }
        self.write_new_version(caller, resource_type, id, conditions, WriteMethod::Update, |_| Ok(resource.clone()))
            .await
    }

    /// `PATCH [type]/[id]` with a JSON Patch document (RFC 6902), within the patch limits
    /// (`domain::patch`). The patched resource is checked like any update; `id` and `meta`
    /// stay the server's.
    pub async fn patch_resource(
        &self,
        caller: &Principal,
        resource_type: ResourceType,
        id: &ResourceId,
        patch: &json_patch::Patch,
        conditions: &WriteConditions,
    ) -> Result<StoredVersion, ServiceError> {
        crate::domain::patch::check_operation_count(patch, self.patch_limits).map_err(patch_refused)?;
        self.write_new_version(caller, resource_type, id, conditions, WriteMethod::Patch, |current| {
            if current.deleted {
                return Err(ServiceError::Gone(label(resource_type, id)));
            }
            let mut resource = stored_json(&current.body)?;
            crate::domain::patch::apply(&mut resource, current.body.len(), patch, self.patch_limits)
                .map_err(patch_refused)?;
            if resource.get("id").and_then(Value::as_str) != Some(id.as_str()) {
                return Err(ServiceError::Unprocessable(vec![Issue::error(
                    IssueCode::Invalid,
                    "a patch may not change or remove the resource id",
                )
                .at(format!("{resource_type}.id"))]));
            }
            check_resource(&resource, resource_type, &self.profiles).map_err(|e| match e {
                // The patch document was fine; the resource it produced is not (422).
                ServiceError::Invalid(issues) => ServiceError::Unprocessable(issues),
                other => other,
            })?;
            Ok(resource)
        })
        .await
    }

    /// `DELETE [type]/[id]`: writes a deletion version; deleting a deleted resource is a no-op.
    pub async fn delete_resource(
        &self,
        caller: &Principal,
        resource_type: ResourceType,
        id: &ResourceId,
        conditions: &WriteConditions,
    ) -> Result<(), ServiceError> {
        let target = ExistingResource { service: self, caller, resource_type, id, if_match: conditions.if_match };
        WritePipeline::begin(&self.store, conditions.request.as_ref()).await?.commit(Deletion { target }).await
    }

    /// `GET [type]/[id]/_history` and `GET [type]/_history`, newest first.
    pub async fn history(
        &self,
        caller: &Principal,
        resource_type: ResourceType,
        id: Option<&ResourceId>,
        query: &HistoryQuery,
    ) -> Result<Vec<StoredVersion>, ServiceError> {
        if let Some(id) = id {
            // An unknown or invisible instance is a 404, not an empty history.
            self.store
                .read_current(&caller.scope(), resource_type, id)
                .await?
                .ok_or_else(|| ServiceError::NotFound(label(resource_type, id)))?;
        }
        Ok(self.store.history(&caller.scope(), resource_type, id, query).await?)
    }
}

/// What a new resource's planning commits: its write set, and the resource as created.
fn created(write_set: WriteSet, write: ResourceWrite) -> Planned<CreateOutcome> {
    let request_outcome = format!("{}/{}/_history/1", write.resource_type, write.id);
    Planned::Commit { write_set, request_outcome, answer: CreateOutcome::Created(ResourceService::written(write)) }
}

/// `POST [type]`: a new resource under a new id.
struct Creation<'a> {
    service: &'a ResourceService,
    caller: &'a Principal,
    resource_type: ResourceType,
    resource: Value,
}

impl PlanWrite for Creation<'_> {
    type Answer = CreateOutcome;

    async fn plan(&mut self, attempt: usize) -> Result<Planned<CreateOutcome>, ServiceError> {
        let change = Some((self.resource.clone(), WriteMethod::Create));
        let pending = Pending::for_attempt(attempt);
        let id = ResourceId::generate();
        let (write_set, write) = self.service.plan(self.caller, self.resource_type, id, None, change, &pending).await?;
        Ok(created(write_set, write))
    }

    fn exhausted(&self) -> ServiceError {
        ServiceError::Conflict(Issue::error(
            IssueCode::Transient,
            "concurrent requests kept colliding; retry the request",
        ))
    }
}

/// Conditional create (R4 http.html#ccreate). Matching is by search in the caller's tenancy;
/// the race between concurrent identical requests is settled by a unique key per
/// (organisation, type, criteria) claimed in the same write set as the create.
struct ConditionalCreation<'a> {
    service: &'a ResourceService,
    caller: &'a Principal,
    resource_type: ResourceType,
    resource: Value,
    criteria: SearchQuery,
    /// The criteria as their key claims them (`SearchQuery::canonical_key`).
    key: String,
    /// Whose key it is: the caller's organisation.
    scope_key: String,
}

impl<'a> ConditionalCreation<'a> {
    fn new(
        service: &'a ResourceService,
        caller: &'a Principal,
        resource_type: ResourceType,
        resource: Value,
        criteria: SearchQuery,
    ) -> Self {
        let key = criteria.canonical_key();
        let scope_key = Visibility::Organization(caller.organization().clone()).key();
        ConditionalCreation { service, caller, resource_type, resource, criteria, key, scope_key }
    }
}

impl PlanWrite for ConditionalCreation<'_> {
    type Answer = CreateOutcome;

    /// The one live resource the criteria match, or a new one claiming their key; several
    /// matches are 412. Should someone else create a match meanwhile, the commit fails and the
    /// next planning finds theirs.
    async fn plan(&mut self, attempt: usize) -> Result<Planned<CreateOutcome>, ServiceError> {
        let (service, resource_type) = (self.service, self.resource_type);
        let pending = Pending::for_attempt(attempt);
        let claim = ConditionalKey { scope_key: &self.scope_key, resource_type, criteria: &self.key };
        let (ConditionalLookup { claimed: stale, matches }, no_match) =
            service.conditional_lookup(&pending, &claim, &self.caller.scope(), &self.criteria).await?;
        match matches.as_slice() {
            [] => {}
            [one] => {
                let existing = service.read_resource(self.caller, resource_type, one).await?;
                return Ok(Planned::Answered(CreateOutcome::Existing(existing)));
            }
            _ => {
                return Err(ServiceError::PreconditionFailed(format!(
                    "the If-None-Exist criteria match more than one {resource_type}"
                )))
            }
        }
        let id = ResourceId::generate();
        let change = Some((self.resource.clone(), WriteMethod::Create));
        let (mut write_set, write) =
            service.plan(self.caller, resource_type, id.clone(), None, change, &pending).await?;
        write_set.conditional_claims.push(ConditionalClaim {
            scope_key: self.scope_key.clone(),
            resource_type,
            criteria: self.key.clone(),
            id,
            replaces: stale,
        });
        write_set.no_match_required.extend(no_match);
        Ok(created(write_set, write))
    }

    fn exhausted(&self) -> ServiceError {
        ServiceError::Conflict(Issue::error(
            IssueCode::Transient,
            "concurrent conditional creates kept colliding; retry the request",
        ))
    }
}

/// The existing resource an update, patch or deletion changes, and the version the client
/// read, if it named one (`If-Match`).
struct ExistingResource<'a> {
    service: &'a ResourceService,
    caller: &'a Principal,
    resource_type: ResourceType,
    id: &'a ResourceId,
    if_match: Option<VersionId>,
}

impl ExistingResource<'_> {
    /// The write set of the change planned on `current`, answered with the version written.
    async fn plan(
        &self,
        current: &StoredVersion,
        change: Option<(Value, WriteMethod)>,
        attempt: usize,
    ) -> Result<(WriteSet, ResourceWrite, String), ServiceError> {
        let pending = Pending::for_attempt(attempt);
        let id = self.id.clone();
        let (write_set, write) =
            self.service.plan(self.caller, self.resource_type, id, Some(current), change, &pending).await?;
        let request_outcome = format!("{}/{}/_history/{}", self.resource_type, self.id, write.version);
        Ok((write_set, write, request_outcome))
    }

    /// Without `If-Match` the change is planned again on the newer version; with it, the
    /// version the client read is gone (412). Passing the `If-Match` check at planning means
    /// the version planned on is the one the client named.
    fn on_version_conflict(&self) -> OnVersionConflict {
        match self.if_match {
            None => OnVersionConflict::PlanAgain,
            Some(read) => OnVersionConflict::Refuse(ServiceError::PreconditionFailed(format!(
                "{} was changed by another request since version {read}",
                label(self.resource_type, self.id)
            ))),
        }
    }

    /// Every planning collided: the resource is busy.
    fn busy(&self, advice: &str) -> ServiceError {
        ServiceError::Conflict(Issue::error(
            IssueCode::Conflict,
            format!("{} is being changed by other requests; {advice}", label(self.resource_type, self.id)),
        ))
    }
}

/// `PUT` and `PATCH [type]/[id]`: a new version computed from the current one by `next_body`.
struct NewVersion<'a, F> {
    target: ExistingResource<'a>,
    method: WriteMethod,
    next_body: F,
}

impl<F> PlanWrite for NewVersion<'_, F>
where
    F: FnMut(&StoredVersion) -> Result<Value, ServiceError>,
{
    type Answer = StoredVersion;

    async fn plan(&mut self, attempt: usize) -> Result<Planned<StoredVersion>, ServiceError> {
        let target = &self.target;
        let current = target.service.current_for_write(target.caller, target.resource_type, target.id).await?;
        ResourceService::check_if_match(&current, target.if_match)?;
        let resource = (self.next_body)(&current)?;
        let (write_set, write, request_outcome) =
            self.target.plan(&current, Some((resource, self.method)), attempt).await?;
        Ok(Planned::Commit { write_set, request_outcome, answer: ResourceService::written(write) })
    }

    fn on_version_conflict(&self, _resource_type: String, _id: String) -> OnVersionConflict {
        self.target.on_version_conflict()
    }

    fn exhausted(&self) -> ServiceError {
        self.target.busy("retry with If-Match")
    }
}

/// `DELETE [type]/[id]`.
struct Deletion<'a> {
    target: ExistingResource<'a>,
}

impl PlanWrite for Deletion<'_> {
    type Answer = ();

    /// A deleted resource stays deleted, whatever version `If-Match` names.
    async fn plan(&mut self, attempt: usize) -> Result<Planned<()>, ServiceError> {
        let target = &self.target;
        let current = target.service.current_for_write(target.caller, target.resource_type, target.id).await?;
        if current.deleted {
            return Ok(Planned::Answered(()));
        }
        ResourceService::check_if_match(&current, target.if_match)?;
        let (write_set, _, request_outcome) = target.plan(&current, None, attempt).await?;
        Ok(Planned::Commit { write_set, request_outcome, answer: () })
    }

    fn on_version_conflict(&self, _resource_type: String, _id: String) -> OnVersionConflict {
        self.target.on_version_conflict()
    }

    fn exhausted(&self) -> ServiceError {
        self.target.busy("retry")
    }
}
