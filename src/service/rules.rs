//! The referral rules applied to every write, whatever path it comes by (create, update,
//! patch, delete, transaction entries): who may write which type, the Task state machine and
//! edit rights, and the referential rules between Task, ServiceRequest and CarePlan
//! (`docs/referral-workflow.md`, "Task state machine" and "Idempotency: no duplicate referrals").

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use serde_json::{json, Value};

use super::ServiceError;
use crate::domain::ids::ResourceId;
use crate::domain::instant::Instant;
use crate::domain::outcome::{Issue, IssueCode};
use crate::domain::references::{literal_references, PartyReference, ReferenceTarget};
use crate::domain::referral_request::{ReferralRequest, RequestStatus};
use crate::domain::resource_type::ResourceType;
use crate::domain::search_params;
use crate::domain::task_workflow::{self, changed_elements, ReferralTask, Refusal, TaskParty, TaskStatus};
use crate::domain::tenancy::{ods_code_of, OdsCode, Principal, Role, TenantScope, Visibility};
use crate::store::{ConditionalClaim, ConditionalKey, RoleAndClaim, Store, StoredVersion, VisibilityGrant};

/// The scope of the open-referral keys (one open referral per patient and CLW service), and
/// the first part of their criteria.
const OPEN_REFERRAL: &str = "open-referral";

/// The key a Task with an open referral claims, and the patient it names.
struct OpenReferral {
    patient: String,
    criteria: String,
}

/// More Tasks than any one referral or patient has; bounds the rules' look-ups.
const MAX_LINKED_TASKS: u32 = 1000;

/// What a request has planned so far, shared by its writes: the resources written earlier in
/// the same transaction, visible to the later entries' rules; and whether this planning is a
/// retry after a key the request claimed was found taken.
#[derive(Default)]
pub(crate) struct Pending {
    resources: HashMap<(ResourceType, String), Value>,
    /// What the transaction creates (or matched by `ifNoneExist` in the caller's scope),
    /// known before its entries are planned, so an entry may refer to one planned after it.
    created: HashSet<(ResourceType, String)>,
    /// What the transaction deleted: gone for its later entries.
    deleted: HashSet<(ResourceType, String)>,
    /// What the rules read from the store while planning this request, by type and id (`None`:
    /// not there, or not the caller's to see), so each is read once however many rules and
    /// entries ask.
    read: Mutex<HashMap<(ResourceType, String), Option<Value>>>,
    key_holders: KeyHolders,
}

/// How the rules learn which Task holds an open-referral key a write claims.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum KeyHolders {
    /// Assumed free: the claim goes to the store as a new key, and should the key be held, the
    /// commit fails with `ConditionalClaimTaken` and the request is planned again with `Read`.
    /// Nearly every referral is its patient's first open one with that service, so this
    /// saves one of the two reads a referral transaction made before it wrote.
    #[default]
    AssumedFree,
    /// Read before the claim is planned: taken over from a Task that has ended, refused while
    /// the Task holding it is open.
    Read,
}

impl Pending {
    /// The `attempt`-th planning of a request (from 0): every one after the first follows a
    /// commit that failed (a taken key among the reasons), and reads who holds the keys it
    /// claims.
    pub fn for_attempt(attempt: usize) -> Self {
        let key_holders = if attempt == 0 { KeyHolders::AssumedFree } else { KeyHolders::Read };
        Pending { key_holders, ..Pending::default() }
    }

    /// Whether this planning assumes that the keys it claims are free and that a conditional
    /// create matches nothing, leaving both to the writer to verify (a failure plans again,
    /// reading first): the first planning of a request.
    pub fn assumes_keys_free(&self) -> bool {
        self.key_holders == KeyHolders::AssumedFree
    }

    /// Remembers what the transaction wrote to `resource_type/id`, for its later entries.
    pub fn remember(&mut self, resource_type: ResourceType, id: String, body: Value) {
        self.deleted.remove(&(resource_type, id.clone()));
        self.resources.insert((resource_type, id), body);
    }

    /// Remembers that the transaction deleted `resource_type/id`.
    pub fn forget(&mut self, resource_type: ResourceType, id: String) {
        self.resources.remove(&(resource_type, id.clone()));
        self.created.remove(&(resource_type, id.clone()));
        self.deleted.insert((resource_type, id));
    }

    /// Announces that an entry of the transaction creates `resource_type/id` (or found it by
    /// `ifNoneExist` in the caller's scope): its other entries may refer to it.
    pub fn expect(&mut self, resource_type: ResourceType, id: String) {
        self.created.insert((resource_type, id));
    }

    fn already_read(&self, key: &(ResourceType, String)) -> Option<Option<Value>> {
        self.read.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(key).cloned()
    }

    fn record_read(&self, key: (ResourceType, String), found: Option<Value>) {
        self.read.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(key, found);
    }

    /// Whether this request writes `resource_type/id` itself, so a reference to it needs no read.
    fn holds(&self, resource_type: ResourceType, id: &str) -> bool {
        let key = (resource_type, id.to_owned());
        self.resources.contains_key(&key) || self.created.contains(&key)
    }

    /// Whether an earlier entry of the transaction writes or deletes `resource_type/id`: its
    /// fate is that entry's, and a cascade (a referral's Tasks cancelled) leaves it alone.
    fn writes(&self, resource_type: ResourceType, id: &str) -> bool {
        let key = (resource_type, id.to_owned());
        self.resources.contains_key(&key) || self.deleted.contains(&key)
    }

    fn get(&self, resource_type: ResourceType, id: &str) -> Option<&Value> {
        self.resources.get(&(resource_type, id.to_owned()))
    }
}

/// What a write needs besides itself, as found by the rules.
#[derive(Debug, Default)]
pub(crate) struct RuleEffects {
    /// More visibility keys for the written resource (e.g. a CarePlan for the GP).
    pub extra_visibility: Vec<String>,
    /// Visibility of other resources (the referral's patient for the CLW service).
    pub grants: Vec<VisibilityGrant>,
    /// Visibility withdrawn: an open referral, once claimed, is no longer for every performer.
    pub revocations: Vec<VisibilityGrant>,
    /// Tasks to cancel because their referral was revoked: (current version, new body).
    pub cancel_tasks: Vec<(StoredVersion, Value)>,
    /// The one-open-referral-per-patient-and-service key.
    pub claims: Vec<ConditionalClaim>,
    /// The parties the written resource names by a literal reference into the directory, with
    /// the ODS code each resolves to ([`Rules::literal_party_codes`]), for its search index.
    pub literal_party_codes: Vec<LiteralPartyCode>,
}

/// A party named by a literal reference into the directory: (search parameter, reference as
/// written, the ODS code it resolves to).
pub(crate) type LiteralPartyCode = (&'static str, String, OdsCode);

/// One party a resource names, resolved: the element naming it, the literal reference it was
/// named by when it carries no identifier, and its organisation's ODS code.
struct ResolvedParty {
    element: &'static str,
    literal: Option<String>,
    ods: OdsCode,
}

/// The first ODS code among an Organization's identifiers.
fn first_ods_code(organization: &Value) -> Option<OdsCode> {
    organization
        .get("identifier")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find_map(|identifier| ods_code_of(&json!({"identifier": identifier})))
}

fn forbidden(message: impl Into<String>, expression: &str) -> ServiceError {
    ServiceError::ForbiddenAt(Issue::error(IssueCode::Forbidden, message).at(expression.to_owned()))
}

fn unprocessable(message: impl Into<String>, expression: &str) -> ServiceError {
    ServiceError::Unprocessable(vec![Issue::error(IssueCode::BusinessRule, message).at(expression.to_owned())])
}

fn from_refusal(refusal: Refusal) -> ServiceError {
    match refusal {
        Refusal::Forbidden(issue) => ServiceError::ForbiddenAt(issue),
        Refusal::Unprocessable(issue) => ServiceError::Unprocessable(vec![issue]),
    }
}

/// The rule checker for one caller's write.
pub(crate) struct Rules<'a> {
    pub store: &'a Store,
    pub caller: &'a Principal,
    pub pending: &'a Pending,
    /// One open referral per patient and CLW service (BaRS), configurable.
    pub single_open_referral: bool,
}

impl Rules<'_> {
    /// Reads a resource the caller may see, from this transaction or the store.
    /// Each resource is read from the store once per request (`Pending::read`).
    async fn find(&self, resource_type: ResourceType, id: &str) -> Result<Option<Value>, ServiceError> {
        let key = (resource_type, id.to_owned());
        if self.pending.deleted.contains(&key) {
            return Ok(None);
        }
        if let Some(value) = self.pending.get(resource_type, id) {
            return Ok(Some(value.clone()));
        }
        if let Some(known) = self.pending.already_read(&key) {
            return Ok(known);
        }
        let found = match ResourceId::parse(id) {
            Ok(parsed) => match self.store.read_current(&self.caller.scope(), resource_type, &parsed).await? {
                Some(v) if !v.deleted => serde_json::from_str(&v.body).ok(),
                _ => None,
            },
            Err(_) => None,
        };
        self.pending.record_read(key, found.clone());
        Ok(found)
    }

    /// Every literal reference the write adds (one its previous version did not hold) points at
    /// a resource the caller may see, or at one this request writes: otherwise the write could
    /// make another organisation's patient part of a referral and the referral's grants would
    /// disclose it. A foreign resource and a missing one get the same answer (no existence
    /// oracle). References kept from the previous version were checked when it was written,
    /// so an update reads nothing for them. Which references count is
    /// `domain::references::literal_references`.
    async fn check_references(
        &self,
        resource_type: ResourceType,
        before: Option<&Value>,
        after: &Value,
    ) -> Result<(), ServiceError> {
        let kept: HashSet<(ResourceType, String)> = before
            .map(|b| literal_references(resource_type, b))
            .unwrap_or_default()
            .into_iter()
            .map(|r| (r.target_type, r.target_id))
            .collect();
        let mut checked: HashSet<(ResourceType, String)> = HashSet::new();
        for reference in literal_references(resource_type, after) {
            let target = (reference.target_type, reference.target_id);
            if kept.contains(&target) || self.pending.holds(target.0, &target.1) || checked.contains(&target) {
                continue;
            }
            if self.find(target.0, &target.1).await?.is_none() {
                return Err(unprocessable(
                    format!(
                        "{}/{} is not a resource you may refer to: it is unknown, or not yours to see",
                        target.0, target.1
                    ),
                    &reference.expression,
                ));
            }
            checked.insert(target);
        }
        Ok(())
    }

    /// The live Tasks whose `param` points at `target_type/target_id`, with their parsed bodies:
    /// one query, no read per Task.
    async fn tasks_referencing(
        &self,
        scope: &TenantScope,
        param: &str,
        target_type: ResourceType,
        target_id: &str,
    ) -> Result<Vec<(StoredVersion, Value)>, ServiceError> {
        let param = search_params::find(ResourceType::Task, param)
            .ok_or_else(|| ServiceError::Internal(format!("Task has no search parameter '{param}'")))?;
        let versions = self.store.referencing(scope, param, target_type, &[target_id], MAX_LINKED_TASKS).await?;
        Ok(versions
            .into_iter()
            .filter_map(|version| serde_json::from_str(&version.body).ok().map(|task| (version, task)))
            .collect())
    }

    /// The ODS code of the organisation a party names: by identifier, or through a literal
    /// reference to an Organization (or a PractitionerRole in one).
    async fn organization_of(&self, party: Option<&PartyReference>) -> Result<Option<OdsCode>, ServiceError> {
        match party {
            None | Some(PartyReference::Unresolvable) => Ok(None),
            Some(PartyReference::OdsCode(ods)) => Ok(Some(ods.clone())),
            Some(PartyReference::Organization(id)) => {
                Ok(self.find(ResourceType::Organization, id).await?.as_ref().and_then(first_ods_code))
            }
            Some(PartyReference::PractitionerRole(id)) => {
                let role = self.find(ResourceType::PractitionerRole, id).await?;
                let organization = role.as_ref().and_then(|r| r.get("organization")).map(PartyReference::parse);
                Box::pin(self.organization_of(organization.as_ref())).await
            }
        }
    }

    /// [`Rules::organization_of`] a Reference in JSON (a party element of a resource that has
    /// no typed view).
    async fn organization_named_by(&self, reference: Option<&Value>) -> Result<Option<OdsCode>, ServiceError> {
        self.organization_of(reference.map(PartyReference::parse).as_ref()).await
    }

    fn is_caller(&self, ods: Option<&OdsCode>) -> bool {
        ods == Some(self.caller.organization())
    }

    /// Checks a write of `resource_type`: `before` is the current version (None for a create),
    /// `after` the new content (None for a delete). May adjust `after` (server-maintained
    /// elements) and returns what else the write needs.
    pub async fn check(
        &self,
        resource_type: ResourceType,
        id: &ResourceId,
        before: Option<&Value>,
        after: Option<&mut Value>,
    ) -> Result<RuleEffects, ServiceError> {
        let role = self.caller.role();
        let mut after = after;
        use ResourceType as T;
        let mut effects = match (resource_type, role) {
            // Anyone may subscribe, in its own tenancy (`service::subscriptions`).
            (T::Subscription, _) | (_, Role::Operator) => RuleEffects::default(),
            (T::Task, _) => self.check_task(id, before, after.as_deref_mut()).await?,
            (T::ServiceRequest, Role::Referrer) => self.check_service_request(id, before, after.as_deref_mut()).await?,
            (T::CarePlan, Role::Performer) => self.check_care_plan(after.as_deref_mut()).await?,
            (T::Patient, Role::Referrer) if after.is_none() => self.check_patient_deletion(id).await?,
            (T::Patient | T::Consent, Role::Referrer) => RuleEffects::default(),
            (T::Organization | T::PractitionerRole, _) => {
                self.check_directory_entry(resource_type, before, after.as_deref()).await?
            }
            (T::Practitioner, _) => RuleEffects::default(),
            (T::ServiceRequest | T::Patient | T::Consent, _) => {
                return Err(forbidden(
                    format!("a CLW service reads {resource_type} resources but does not write them"),
                    resource_type.as_str(),
                ))
            }
            (T::CarePlan, _) => {
                return Err(forbidden("CarePlans are written by the CLW service that works the referral", "CarePlan"))
            }
        };
        if let Some(after) = after.as_deref() {
            self.check_references(resource_type, before, after).await?;
            let parties = self.resolved_parties(resource_type, after).await?;
            effects
                .extra_visibility
                .extend(parties.iter().map(|party| Visibility::Organization(party.ods.clone()).key()));
            effects.literal_party_codes = literal_codes(resource_type, parties);
        }
        Ok(effects)
    }

    /// The organisations a referral resource names as its parties (by ODS identifier or by a
    /// literal reference into the directory): they may see it, which the content-derived
    /// visibility `domain::tenancy::derived_visibility` cannot tell, as it resolves no references.
    async fn resolved_parties(
        &self,
        resource_type: ResourceType,
        resource: &Value,
    ) -> Result<Vec<ResolvedParty>, ServiceError> {
        let elements: &[&'static str] = match resource_type {
            ResourceType::Task => &["requester", "owner"],
            ResourceType::ServiceRequest => &["requester", "performer"],
            // Not `contributor`: the CLW service names whoever it likes there, and the
            // workflow's parties to a CarePlan are its author and the referring practice.
            ResourceType::CarePlan => &["author"],
            _ => return Ok(Vec::new()),
        };
        let mut parties = Vec::new();
        for &element in elements {
            for reference in party_references(resource, element) {
                if let Some(ods) = self.organization_named_by(Some(reference)).await? {
                    let literal = match reference.get("identifier") {
                        Some(_) => None,
                        None => reference.get("reference").and_then(Value::as_str).map(str::to_owned),
                    };
                    parties.push(ResolvedParty { element, literal, ods });
                }
            }
        }
        Ok(parties)
    }

    /// The parties a referral resource names by a literal reference into the directory
    /// (`"owner": {"reference": "Organization/<id>"}`, or a PractitionerRole in one), with the
    /// ODS code each resolves to. Indexed as the reference's identifier
    /// (`service::resources::index_party_codes`), so that a poll by `owner:identifier` or
    /// `requester:identifier` finds the resource however its sender wrote the reference. For a
    /// write the rules check, [`RuleEffects::literal_party_codes`] holds the same.
    pub(crate) async fn literal_party_codes(
        &self,
        resource_type: ResourceType,
        resource: &Value,
    ) -> Result<Vec<LiteralPartyCode>, ServiceError> {
        Ok(literal_codes(resource_type, self.resolved_parties(resource_type, resource).await?))
    }

    /// The directory is shared by every tenant, so an organisation maintains only its own
    /// entry (an Organization carrying its ODS code) and the roles of its own staff (a
    /// PractitionerRole in it); the operator maintains the rest.
    async fn check_directory_entry(
        &self,
        resource_type: ResourceType,
        before: Option<&Value>,
        after: Option<&Value>,
    ) -> Result<RuleEffects, ServiceError> {
        let mut own = true;
        for (entry, is_new) in [(before, false), (after, true)] {
            let Some(entry) = entry else { continue };
            own &= match resource_type {
                ResourceType::Organization if is_new => self.carries_only_own_ods_code(entry),
                // An entry written before its codes were held to this keeps its first ODS code's
                // owner, who may correct it.
                ResourceType::Organization => self.is_caller(first_ods_code(entry).as_ref()),
                _ => self.is_caller(self.organization_named_by(entry.get("organization")).await?.as_ref()),
            };
        }
        if own {
            return Ok(RuleEffects::default());
        }
        let element = match resource_type {
            ResourceType::Organization => "Organization.identifier",
            _ => "PractitionerRole.organization",
        };
        Err(forbidden(
            "an organisation maintains only its own directory entries (carrying its own ODS code and no other's); the operator maintains the rest",
            element,
        ))
    }

    /// Whether an Organization names the caller by ODS code and no other organisation: an
    /// entry listing another's code would answer a search for that code, passing itself off
    /// as that organisation. An ODS-system identifier whose value is not a valid code counts
    /// as another's (it is nobody's to publish).
    fn carries_only_own_ods_code(&self, organization: &Value) -> bool {
        let ods_identifiers: Vec<Option<OdsCode>> = organization
            .get("identifier")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|identifier| identifier.get("system").and_then(Value::as_str) == Some(OdsCode::SYSTEM))
            .map(|identifier| ods_code_of(&json!({"identifier": identifier})))
            .collect();
        !ods_identifiers.is_empty() && ods_identifiers.iter().all(|ods| self.is_caller(ods.as_ref()))
    }

    async fn check_task(
        &self,
        id: &ResourceId,
        before: Option<&Value>,
        after: Option<&mut Value>,
    ) -> Result<RuleEffects, ServiceError> {
        let Some(after) = after else {
            let before = before.ok_or_else(|| unprocessable("nothing to delete", "Task"))?;
            return self.check_task_deletion(id, &ReferralTask::parse(before)).await;
        };
        after.as_object_mut().map(|m| m.insert("lastModified".into(), json!(Instant::now().to_fhir())));
        let after = ReferralTask::parse(after);
        match before {
            None => self.check_new_task(id, &after).await,
            Some(before) => self.check_task_update(id, &ReferralTask::parse(before), &after).await,
        }
    }

    /// Deleting a referral's Task: only its requester may (the performer cancels or fails it).
    async fn check_task_deletion(&self, id: &ResourceId, task: &ReferralTask<'_>) -> Result<RuleEffects, ServiceError> {
        let requester = self.organization_of(task.requester()).await?;
        if !self.is_caller(requester.as_ref()) {
            return Err(forbidden("only the requester may delete a Task", "Task.requester"));
        }
        task_workflow::check_task_deletion(task).map_err(ServiceError::Conflict)?;
        // An open Task (no owner yet) let every CLW service read its referral; deleted, it
        // no longer does (unless another open Task still needs that).
        let mut effects = RuleEffects::default();
        if task.owner().is_none() {
            effects.revocations = self.open_referral_revocations(id, task).await?;
        }
        Ok(effects)
    }

    /// A change of a stored Task, by its requester, its owner, or a performer claiming it.
    async fn check_task_update(
        &self,
        id: &ResourceId,
        before: &ReferralTask<'_>,
        after: &ReferralTask<'_>,
    ) -> Result<RuleEffects, ServiceError> {
        let requester = self.organization_of(before.requester()).await?;
        let owner = self.organization_of(before.owner()).await?;
        let new_owner = self.organization_of(after.owner()).await?;
        let (party, claiming) = if self.is_caller(requester.as_ref()) {
            (TaskParty::Requester, false)
        } else if self.is_caller(owner.as_ref()) {
            (TaskParty::Owner, false)
        } else if owner.is_none() && self.caller.role() == Role::Performer && self.is_caller(new_owner.as_ref()) {
            (TaskParty::Owner, true)
        } else {
            return Err(forbidden(
                "only the Task's requester or owner may change it (an open Task is claimed by setting owner to yourself while accepting)",
                "Task.owner",
            ));
        };
        task_workflow::check_task_change(party, before, after, claiming).map_err(from_refusal)?;
        let mut effects = RuleEffects::default();
        if party == TaskParty::Requester {
            effects = self.requester_change_effects(id, before, after, new_owner.as_ref()).await?;
        }
        if claiming {
            if let Some(ods) = &new_owner {
                self.assign_to_performer(id, after, ods, &mut effects).await?;
                effects.revocations.extend(self.open_referral_revocations(id, after).await?);
            }
        }
        Ok(effects)
    }

    /// What a requester's change of its Task needs: the Task stays its own, a new focus or
    /// patient is checked, a new owner is assigned the referral.
    async fn requester_change_effects(
        &self,
        id: &ResourceId,
        before: &ReferralTask<'_>,
        after: &ReferralTask<'_>,
        new_owner: Option<&OdsCode>,
    ) -> Result<RuleEffects, ServiceError> {
        if !self.is_caller(self.organization_of(after.requester()).await?.as_ref()) {
            return Err(forbidden("the requester cannot hand its Task to another practice", "Task.requester"));
        }
        let changed = changed_elements(before.resource(), after.resource());
        let mut effects = RuleEffects::default();
        if changed.contains(&"focus") || changed.contains(&"for") {
            effects = self.check_task_links(after).await?;
        }
        if changed.contains(&"owner") {
            if let Some(ods) = new_owner {
                self.assign_to_performer(id, after, ods, &mut effects).await?;
            }
        }
        // An open referral the practice gives to one service, or ends, is no longer for
        // every service: what it let them all read is withdrawn, as when one claims it.
        if before.is_open_to_every_performer() && !after.is_open_to_every_performer() {
            effects.revocations.extend(self.open_referral_revocations(id, before).await?);
        }
        Ok(effects)
    }

    async fn check_new_task(&self, id: &ResourceId, task: &ReferralTask<'_>) -> Result<RuleEffects, ServiceError> {
        if self.caller.role() != Role::Referrer {
            return Err(forbidden("Tasks are created by the referrer (the GP practice)", "Task"));
        }
        let requester = self.organization_of(task.requester()).await?;
        if requester.is_none() {
            return Err(unprocessable("a referral Task names its requester organisation (ODS code)", "Task.requester"));
        }
        if !self.is_caller(requester.as_ref()) {
            return Err(forbidden("a practice creates Tasks with itself as requester", "Task.requester"));
        }
        task_workflow::check_new_task(task).map_err(from_refusal)?;
        let mut effects = self.check_task_links(task).await?;
        let owner = self.organization_of(task.owner()).await?;
        match &owner {
            None if task.owner().is_some() => {
                return Err(unprocessable("the owner must name a CLW service by its ODS code", "Task.owner"))
            }
            None => {
                effects.grants.extend(self.referral_grants(task, &Visibility::AnyPerformer).await?);
            }
            Some(ods) => self.assign_to_performer(id, task, ods, &mut effects).await?,
        }
        Ok(effects)
    }

    /// A Task given to a CLW service: it must be a registered performer; it may now read the
    /// referral; and the patient may have only this one open referral with it. Whether the
    /// owner is a performer is known to the store for a while once asked; which Task holds the
    /// open referral is read only on a retry ([`KeyHolders`]), in the same round trip.
    async fn assign_to_performer(
        &self,
        id: &ResourceId,
        task: &ReferralTask<'_>,
        owner: &OdsCode,
        effects: &mut RuleEffects,
    ) -> Result<(), ServiceError> {
        let open_referral = self.open_referral(task, owner);
        let key = open_referral.as_ref().map(|o| ConditionalKey {
            scope_key: OPEN_REFERRAL,
            resource_type: ResourceType::Task,
            criteria: &o.criteria,
        });
        let RoleAndClaim { has_role, claimed_by } = match self.pending.key_holders {
            KeyHolders::Read => {
                self.store.role_and_claim(owner.as_str(), Role::Performer.as_str(), key.as_ref()).await?
            }
            KeyHolders::AssumedFree => RoleAndClaim {
                has_role: self.store.organization_has_role(owner.as_str(), Role::Performer.as_str()).await?,
                claimed_by: None,
            },
        };
        if !has_role {
            return Err(unprocessable(
                format!("the owner {owner} is not a registered CLW service (performer)"),
                "Task.owner",
            ));
        }
        effects.grants.extend(self.referral_grants(task, &Visibility::Organization(owner.clone())).await?);
        if let Some(open_referral) = open_referral {
            effects.claims.extend(self.open_referral_claim(id, open_referral, owner, claimed_by).await?);
        }
        Ok(())
    }

    /// `focus` is an existing ServiceRequest the requester owns; `for` is its subject.
    async fn check_task_links(&self, task: &ReferralTask<'_>) -> Result<RuleEffects, ServiceError> {
        let focus = task.focus_service_request().ok_or_else(|| {
            unprocessable("a referral Task's focus is its ServiceRequest (ServiceRequest/id)", "Task.focus")
        })?;
        let service_request = self
            .find(ResourceType::ServiceRequest, focus)
            .await?
            .ok_or_else(|| unprocessable(format!("ServiceRequest/{focus} is not known"), "Task.focus"))?;
        let service_request = ReferralRequest::parse(&service_request);
        let sr_requester = self.organization_of(service_request.requester()).await?;
        if !self.is_caller(sr_requester.as_ref()) {
            return Err(unprocessable("the focus must be a ServiceRequest of the requesting practice", "Task.focus"));
        }
        let subject = service_request.subject();
        if subject.is_none() || subject != task.patient() {
            return Err(unprocessable("the Task is for the ServiceRequest's subject", "Task.for"));
        }
        Ok(RuleEffects::default())
    }

    /// A Task assigned to (or open for) a CLW service makes its referral readable to it: the
    /// ServiceRequest, the patient, and the consent the referral points at. The referral is
    /// read by the id its focus names.
    async fn referral_grants(
        &self,
        task: &ReferralTask<'_>,
        to: &Visibility,
    ) -> Result<Vec<VisibilityGrant>, ServiceError> {
        let mut targets: Vec<ReferenceTarget> = Vec::new();
        targets.extend(task.focus().cloned());
        targets.extend(task.patient().and_then(ReferenceTarget::parse));
        if let Some(focus) = task.focus() {
            if let Some(service_request) = self.find(ResourceType::ServiceRequest, &focus.id).await? {
                targets.extend_from_slice(ReferralRequest::parse(&service_request).supporting_info());
            }
        }
        Ok(targets
            .into_iter()
            .filter_map(|target| {
                let resource_type = target.served_type()?;
                let id = ResourceId::parse(&target.id).ok()?;
                Some(VisibilityGrant { resource_type, id, key: to.key() })
            })
            .collect())
    }

    /// The "any performer" visibility that an open Task gave its referral, withdrawn when it is
    /// claimed, unless another open Task still needs it.
    async fn open_referral_revocations(
        &self,
        id: &ResourceId,
        task: &ReferralTask<'_>,
    ) -> Result<Vec<VisibilityGrant>, ServiceError> {
        let everyone = Visibility::AnyPerformer;
        let mut revocations = Vec::new();
        let focus = task.focus().map(|focus| focus.id.clone());
        for grant in self.referral_grants(task, &everyone).await? {
            // Which other open Tasks would still need the grant: those of the same patient or
            // referral; the referral's supporting information (its consent) is needed while a
            // Task of the same referral is open. Left behind, every CLW service could go on
            // reading the consent of a referral another had claimed.
            let (param, target_type, target_id) = match grant.resource_type {
                ResourceType::ServiceRequest => ("focus", ResourceType::ServiceRequest, grant.id.as_str().to_owned()),
                ResourceType::Patient => ("patient", ResourceType::Patient, grant.id.as_str().to_owned()),
                _ => match &focus {
                    Some(service_request) => ("focus", ResourceType::ServiceRequest, service_request.clone()),
                    None => continue,
                },
            };
            let others = self.tasks_referencing(&TenantScope::Everything, param, target_type, &target_id).await?;
            let still_open = others.iter().any(|(other, other_task)| {
                other.id != *id && ReferralTask::parse(other_task).is_open_to_every_performer()
            });
            if !still_open {
                revocations.push(grant);
            }
        }
        Ok(revocations)
    }

    /// The open-referral key a Task claims, if it claims one: one open referral per patient
    /// and CLW service (when the rule is on), and a Task that has ended holds none.
    fn open_referral(&self, task: &ReferralTask<'_>, owner: &OdsCode) -> Option<OpenReferral> {
        if !self.single_open_referral || task.status().is_some_and(TaskStatus::is_terminal) {
            return None;
        }
        let patient = task.patient()?;
        Some(OpenReferral { patient: patient.to_owned(), criteria: format!("{OPEN_REFERRAL}|{patient}|{owner}") })
    }

    /// The Task's claim of its open-referral key, which `holder` holds now: a key left by a
    /// Task that has since ended (or gone) is taken over; one held by an open Task refuses it.
    async fn open_referral_claim(
        &self,
        id: &ResourceId,
        open_referral: OpenReferral,
        owner: &OdsCode,
        holder: Option<String>,
    ) -> Result<Vec<ConditionalClaim>, ServiceError> {
        let OpenReferral { patient, criteria } = open_referral;
        let replaces = match holder {
            None => None,
            Some(holder_id) if holder_id == id.as_str() => return Ok(Vec::new()),
            Some(holder_id) => {
                let holder_task = match ResourceId::parse(&holder_id) {
                    Ok(hid) => self.store.read_current(&TenantScope::Everything, ResourceType::Task, &hid).await?,
                    Err(_) => None,
                };
                let still_open = holder_task
                    .filter(|v| !v.deleted)
                    .and_then(|v| serde_json::from_str::<Value>(&v.body).ok())
                    .is_some_and(|holder| ReferralTask::parse(&holder).is_open());
                if still_open {
                    return Err(ServiceError::Conflict(
                        Issue::error(
                            IssueCode::Duplicate,
                            format!("{patient} already has an open referral to {owner}: Task/{holder_id}"),
                        )
                        .at("Task.for"),
                    ));
                }
                Some(holder_id)
            }
        };
        Ok(vec![ConditionalClaim {
            scope_key: OPEN_REFERRAL.into(),
            resource_type: ResourceType::Task,
            criteria,
            id: id.clone(),
            replaces,
        }])
    }

    async fn check_service_request(
        &self,
        id: &ResourceId,
        before: Option<&Value>,
        after: Option<&mut Value>,
    ) -> Result<RuleEffects, ServiceError> {
        let before = before.map(ReferralRequest::parse);
        let current_requester = match &before {
            Some(b) => self.organization_of(b.requester()).await?,
            None => None,
        };
        if before.is_some() && !self.is_caller(current_requester.as_ref()) {
            return Err(forbidden("only the requesting practice may change its referral", "ServiceRequest.requester"));
        }
        let Some(after) = after else {
            // Deleting a referral ends it as revoking does: its open Tasks are cancelled in the
            // same transaction, so that no CLW service goes on working a referral that is gone.
            let cancel_tasks = self.cancel_open_tasks(id, "the referral was deleted by the requester").await?;
            return Ok(RuleEffects { cancel_tasks, ..RuleEffects::default() });
        };
        let after = ReferralRequest::parse(after);
        let requester = self.organization_of(after.requester()).await?;
        if requester.is_none() {
            return Err(unprocessable(
                "a referral names its requester organisation (ODS code)",
                "ServiceRequest.requester",
            ));
        }
        if !self.is_caller(requester.as_ref()) {
            return Err(forbidden("a practice sends referrals with itself as requester", "ServiceRequest.requester"));
        }
        let mut effects = RuleEffects::default();
        let revoked = after.status().is_some_and(RequestStatus::is_withdrawn);
        let was_revoked = before.as_ref().and_then(ReferralRequest::status).is_some_and(RequestStatus::is_withdrawn);
        if revoked && !was_revoked && before.is_some() {
            // linkbridge: revoking the referral cancels its open Tasks in the same transaction.
            effects.cancel_tasks = self.cancel_open_tasks(id, "the referral was revoked by the requester").await?;
        }
        Ok(effects)
    }

    /// The open Tasks of the referral `service_request` (at most [`MAX_LINKED_TASKS`]), each
    /// with its cancelled version saying `why`: what revoking or deleting the referral writes.
    async fn cancel_open_tasks(
        &self,
        service_request: &ResourceId,
        why: &str,
    ) -> Result<Vec<(StoredVersion, Value)>, ServiceError> {
        let tasks = self
            .tasks_referencing(&self.caller.scope(), "focus", ResourceType::ServiceRequest, service_request.as_str())
            .await?;
        let mut cancelled = Vec::new();
        for (current, mut task) in tasks {
            if !ReferralTask::parse(&task).is_open() || self.pending.writes(ResourceType::Task, current.id.as_str()) {
                continue;
            }
            if let Some(map) = task.as_object_mut() {
                map.insert("status".into(), json!("cancelled"));
                map.insert("statusReason".into(), json!({"text": why}));
                map.insert("lastModified".into(), json!(Instant::now().to_fhir()));
            }
            cancelled.push((current, task));
        }
        Ok(cancelled)
    }

    /// A Patient that open referrals name cannot be deleted: its Tasks would be orphaned, still
    /// open for the CLW service to accept, and its referrals would point at nothing. Refused
    /// with 409 naming them (those the caller can see; at most [`MAX_LINKED_TASKS`] of each
    /// type are read), so that the practice ends them first.
    async fn check_patient_deletion(&self, patient: &ResourceId) -> Result<RuleEffects, ServiceError> {
        let scope = self.caller.scope();
        let mut open = Vec::new();
        for (resource_type, open_status) in [
            (ResourceType::Task, open_task_status as fn(&Value) -> Option<&'static str>),
            (ResourceType::ServiceRequest, open_service_request_status),
        ] {
            let param = search_params::find(resource_type, "subject")
                .ok_or_else(|| ServiceError::Internal(format!("{resource_type} has no search parameter 'subject'")))?;
            let referencing = self
                .store
                .referencing(&scope, param, ResourceType::Patient, &[patient.as_str()], MAX_LINKED_TASKS)
                .await?;
            for version in referencing {
                let Ok(body) = serde_json::from_str::<Value>(&version.body) else { continue };
                if let Some(status) = open_status(&body) {
                    open.push(format!("{resource_type}/{} ({status})", version.id));
                }
            }
        }
        if open.is_empty() {
            return Ok(RuleEffects::default());
        }
        /// How many of the open referrals the refusal names; it counts the rest.
        const NAMED: usize = 10;
        let mut named = open.iter().take(NAMED).cloned().collect::<Vec<_>>().join(", ");
        if open.len() > NAMED {
            named.push_str(&format!(" and {} more", open.len() - NAMED));
        }
        Err(ServiceError::Conflict(
            Issue::error(
                IssueCode::BusinessRule,
                format!(
                    "Patient/{patient} cannot be deleted while open referrals name it: {named}; end them first \
                     (revoke the ServiceRequest, which cancels its open Tasks, or mark them entered-in-error)"
                ),
            )
            .at("Patient"),
        ))
    }

    /// A CarePlan is written by the CLW service that owns a Task for the referral it is based
    /// on, for that referral's subject; the referring practice can then read it.
    async fn check_care_plan(&self, after: Option<&mut Value>) -> Result<RuleEffects, ServiceError> {
        let Some(plan) = after else { return Ok(RuleEffects::default()) };
        let based_on = plan
            .get("basedOn")
            .and_then(Value::as_array)
            .and_then(|refs| {
                refs.iter().filter_map(ReferenceTarget::of).find(|target| target.type_name == "ServiceRequest")
            })
            .map(|target| target.id)
            .ok_or_else(|| {
                unprocessable("a CarePlan is basedOn the referral (ServiceRequest/id)", "CarePlan.basedOn")
            })?;
        let service_request = self
            .find(ResourceType::ServiceRequest, &based_on)
            .await?
            .ok_or_else(|| unprocessable(format!("ServiceRequest/{based_on} is not known"), "CarePlan.basedOn"))?;
        let service_request = ReferralRequest::parse(&service_request);
        let tasks =
            self.tasks_referencing(&self.caller.scope(), "focus", ResourceType::ServiceRequest, &based_on).await?;
        let mut owns_a_task = false;
        for (_, task) in &tasks {
            if self.is_caller(self.organization_of(ReferralTask::parse(task).owner()).await?.as_ref()) {
                owns_a_task = true;
                break;
            }
        }
        if !owns_a_task {
            return Err(forbidden(
                "a CarePlan is written by the CLW service that owns a Task for its referral",
                "CarePlan.basedOn",
            ));
        }
        let subject = service_request.subject();
        let plan_subject = plan.get("subject").and_then(|s| s.get("reference")).and_then(Value::as_str);
        if subject.is_none() || subject != plan_subject {
            return Err(unprocessable("the CarePlan is for the referral's subject", "CarePlan.subject"));
        }
        if let Some(author) = plan.get("author") {
            if !self.is_caller(self.organization_named_by(Some(author)).await?.as_ref()) {
                return Err(unprocessable("the CarePlan's author is the CLW service writing it", "CarePlan.author"));
            }
        }
        let mut effects = RuleEffects::default();
        if let Some(gp) = self.organization_of(service_request.requester()).await? {
            effects.extra_visibility.push(Visibility::Organization(gp).key());
        }
        Ok(effects)
    }
}

/// The References of a party element (`owner`, `performer`...), whether it holds one or a list.
fn party_references<'v>(resource: &'v Value, element: &str) -> Vec<&'v Value> {
    match resource.get(element) {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(single) => vec![single],
        None => Vec::new(),
    }
}

/// The status of a Task not yet ended, to name it; `None` once it has ended.
fn open_task_status(task: &Value) -> Option<&'static str> {
    ReferralTask::parse(task).status().filter(|status| !status.is_terminal()).map(TaskStatus::code)
}

/// The status of a referral not yet ended (draft, active or on hold), to name it; `None` once
/// it has ended.
fn open_service_request_status(service_request: &Value) -> Option<&'static str> {
    ReferralRequest::parse(service_request).status().filter(|status| status.is_open()).map(RequestStatus::code)
}

/// The literal-reference parties among `parties`, for the types whose party elements are
/// search parameters (a Task's and a ServiceRequest's); a reference that carries an identifier
/// is indexed as written.
fn literal_codes(resource_type: ResourceType, parties: Vec<ResolvedParty>) -> Vec<LiteralPartyCode> {
    if !matches!(resource_type, ResourceType::Task | ResourceType::ServiceRequest) {
        return Vec::new();
    }
    parties.into_iter().filter_map(|party| party.literal.map(|literal| (party.element, literal, party.ods))).collect()
}
