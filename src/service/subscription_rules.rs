//! Subscription's write rules: what a subscriber's create, update or deletion of a
//! Subscription must satisfy (a valid request, filters naming only the caller, a signing
//! secret on create), how the server adjusts the resource (its status and error, the secret
//! taken out), and what the write records for delivery (the subscription row, a handshake),
//! all in the write's own write set. The referral rules (`rules`) leave Subscriptions to these.

use serde_json::{json, Value};

use super::ServiceError;
use crate::domain::ids::ResourceId;
use crate::domain::instant::Instant;
use crate::domain::outcome::{Issue, IssueCode};
use crate::domain::resource_type::ResourceType;
use crate::domain::search_params;
use crate::domain::search_query::{parse_token, Clause, ParamRef, SearchQuery};
use crate::domain::subscriptions::{
    requested_status, strip_secret, EndpointPolicy, SubscriptionRequest, SubscriptionStatus, Topic,
};
use crate::domain::tenancy::{OdsCode, Principal, Role};
use crate::store::{OutboxEntry, OutboxKind, Store, SubscriptionChange, SubscriptionRecord};

/// At most this many directory entries of one organisation are recognised as its own in a
/// subscription filter (an organisation has one; a few while it is being corrected).
const OWN_DIRECTORY_ENTRIES: u32 = 16;

/// What a Subscription write records besides the resource.
#[derive(Debug, Default)]
pub(super) struct SubscriptionEffects {
    pub changes: Vec<SubscriptionChange>,
    pub notifications: Vec<OutboxEntry>,
}

/// Checks a subscriber's write of a Subscription (`after`; `None` deletes it) and plans its
/// delivery-side record. `after` is adjusted: the status and error are the server's, and the
/// signing secret is taken out (it is kept only where delivery reads it).
pub(super) async fn plan_subscription_write(
    store: &Store,
    caller: &Principal,
    id: &ResourceId,
    before: Option<&Value>,
    after: Option<&mut Value>,
    policy: &EndpointPolicy,
) -> Result<SubscriptionEffects, ServiceError> {
    let Some(after) = after else {
        return Ok(SubscriptionEffects { changes: vec![SubscriptionChange::Delete(id.clone())], ..Default::default() });
    };
    let request = SubscriptionRequest::parse(after, policy).map_err(ServiceError::Unprocessable)?;
    let own_entries = own_directory_entries(store, caller).await?;
    check_filters_are_the_callers_own(caller, &request, &own_entries)?;
    if before.is_none() && request.secret.is_none() {
        return Err(ServiceError::Unprocessable(vec![Issue::error(
            IssueCode::Required,
            format!(
                "a new subscription needs a signing secret: channel.extension '{}' with valueString 'whsec_' + base64 of 24-64 random bytes",
                crate::domain::subscriptions::WEBHOOK_SECRET_EXTENSION
            ),
        )
        .at("Subscription.channel.extension".to_owned())]));
    }
    let current = before.and_then(|b| b.get("status")).and_then(Value::as_str).and_then(SubscriptionStatus::parse);
    let status = requested_status(after.get("status").and_then(Value::as_str), current);
    // The error stays while the status does; a new handshake or a turn off clears it.
    let error = match status {
        SubscriptionStatus::Error => before.and_then(|b| b.get("error")).and_then(Value::as_str).map(str::to_owned),
        _ => None,
    };
    strip_secret(after);
    if let Some(map) = after.as_object_mut() {
        map.insert("status".into(), json!(status.code()));
        match &error {
            Some(text) => map.insert("error".into(), json!(text)),
            None => map.remove("error"),
        };
    }
    let record = SubscriptionRecord {
        id: id.clone(),
        organization: caller.organization().as_str().to_owned(),
        role: caller.role().as_str().to_owned(),
        topic: request.topic.url().to_owned(),
        filters: request.filters.iter().map(|f| f.as_str().to_owned()).collect(),
        endpoint: request.endpoint.to_string(),
        payload: request.payload.code().to_owned(),
        headers: request.headers.clone(),
        heartbeat_secs: request.heartbeat_period.map(|p| i64::try_from(p.as_secs()).unwrap_or(i64::MAX)),
        secret: request.secret.as_ref().map(|s| s.encoded()),
        status: status.code().to_owned(),
        error,
    };
    let mut effects =
        SubscriptionEffects { changes: vec![SubscriptionChange::Save(Box::new(record))], ..Default::default() };
    // A create starts `requested` (see `requested_status`), so it always asks for one.
    if status == SubscriptionStatus::Requested && current != Some(SubscriptionStatus::Requested) {
        effects.notifications.push(OutboxEntry {
            id: uuid::Uuid::new_v4().to_string(),
            subscription_id: id.clone(),
            kind: OutboxKind::Handshake,
            focus: None,
            created_at: Instant::now(),
        });
    }
    Ok(effects)
}

/// The ids of the directory Organizations carrying the caller's ODS code (a subscription
/// filter may name the caller by one). The directory is shared: read in the caller's scope.
async fn own_directory_entries(store: &Store, caller: &Principal) -> Result<Vec<String>, ServiceError> {
    let ods = parse_token(&format!("{}|{}", OdsCode::SYSTEM, caller.organization().as_str()));
    let Some(identifier) = search_params::find(ResourceType::Organization, "identifier") else {
        return Ok(Vec::new());
    };
    let query = SearchQuery {
        resource_type: ResourceType::Organization,
        clauses: vec![Clause { param: ParamRef::Registered(identifier), negated: false, any_of: vec![ods] }],
    };
    let ids = store.find_ids(&caller.scope(), &query, OWN_DIRECTORY_ENTRIES).await?;
    Ok(ids.into_iter().map(|id| id.as_str().to_owned()).collect())
}

/// A GP system follows its own referrals and a CLW service the Tasks it owns: a filter naming
/// another organisation as requester (or owner, performer, author) would only ever match
/// nothing after narrowing, so it is refused as the mistake it is. The caller is named as in a
/// search: by its ODS code (`Organization/<ODS code>`), or by a literal reference to its
/// directory entry (`Organization/<id>`, one of `own_entries`).
fn check_filters_are_the_callers_own(
    caller: &Principal,
    request: &SubscriptionRequest,
    own_entries: &[String],
) -> Result<(), ServiceError> {
    let own_parameter = match (caller.role(), request.topic) {
        (Role::Referrer, Topic::ReferralTask | Topic::ReferralServiceRequest) => "requester",
        (Role::Performer, Topic::ReferralTask) => "owner",
        (Role::Performer, Topic::ReferralServiceRequest) => "performer",
        (Role::Performer, Topic::CarePlan) => "author",
        _ => return Ok(()),
    };
    let own = caller.organization().as_str();
    let is_own = |named: &String| named == own || own_entries.iter().any(|id| id.eq_ignore_ascii_case(named));
    if let Some(other) = request.filtered_organizations(own_parameter).into_iter().find(|named| !is_own(named)) {
        return Err(ServiceError::ForbiddenAt(
            Issue::error(
                IssueCode::Forbidden,
                format!("{own_parameter}=Organization/{other} names another organisation; you may subscribe to your own ({own}) only"),
            )
            .at("Subscription.criteria.extension('backport-filter-criteria')".to_owned()),
        ));
    }
    Ok(())
}
