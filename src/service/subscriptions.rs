//! Subscriptions as use cases: the `$status`, `$events` and `$resend` operations, the status
//! moves the server makes (writes through the pipeline, `write`), and the outbox's figures.
//! What a subscriber's own write of a Subscription must satisfy and records is
//! `subscription_rules`; which changes notify whom, the writer matches (`store::events`).

use serde_json::{json, Value};

use super::resources::{stored_json, ResourceService};
use super::write::{OnVersionConflict, PlanWrite, Planned, WritePipeline};
use super::ServiceError;
use crate::domain::audit::{AuditAction, AuditAgent, AuditOutcome, AuditRecord};
use crate::domain::ids::{ResourceId, VersionId};
use crate::domain::instant::Instant;
use crate::domain::notification::{
    notification_bundle, Focus, NotificationEvent, NotificationType, SubscriptionSnapshot,
};
use crate::domain::outcome::{Issue, IssueCode};
use crate::domain::resource_type::ResourceType;
use crate::domain::subscriptions::{PayloadContent, SubscriptionStatus, Topic};
use crate::domain::tenancy::{Principal, TenantScope};
use crate::store::{OutboxRow, OutboxStats, Precondition, SubscriptionChange, SubscriptionRow, WriteMethod, WriteSet};

/// The most events one `$events` call returns.
const MAX_EVENTS_PER_QUERY: u32 = 500;

/// The server itself, as the author of status changes in the audit trail.
fn server_agent() -> AuditAgent {
    AuditAgent { client_id: "linkbridge".to_owned(), organization: "linkbridge".to_owned() }
}

/// The server's move of a subscription to a new status, as a write through the pipeline: the
/// status goes onto whatever version is current when it commits.
struct StatusChange<'a> {
    service: &'a ResourceService,
    id: ResourceId,
    status: SubscriptionStatus,
    error: Option<String>,
}

impl PlanWrite for StatusChange<'_> {
    type Answer = ();

    async fn plan(&mut self, _attempt: usize) -> Result<Planned<()>, ServiceError> {
        let current =
            self.service.store().read_current(&TenantScope::Everything, ResourceType::Subscription, &self.id).await?;
        let Some(current) = current.filter(|c| !c.deleted) else {
            return Ok(Planned::Answered(()));
        };
        let mut body = stored_json(&current.body)?;
        if let Some(map) = body.as_object_mut() {
            map.insert("status".into(), json!(self.status.code()));
            match &self.error {
                Some(text) => map.insert("error".into(), json!(text)),
                None => map.remove("error"),
            };
        }
        // The server creates nothing here, so there is no creator to grant visibility to.
        let write = ResourceService::prepare_write(
            None,
            ResourceType::Subscription,
            self.id.clone(),
            body,
            current.version.next(),
            WriteMethod::Update,
            Precondition::CurrentVersion(current.version),
        );
        let request_outcome = format!("Subscription/{}/_history/{}", self.id, write.version);
        let audit = AuditRecord::new(
            server_agent(),
            AuditAction::Update,
            "update",
            AuditOutcome::Success,
            Some(ResourceType::Subscription.as_str()),
            Some(self.id.as_str()),
        );
        let write_set = WriteSet {
            resources: vec![write],
            audit: vec![audit],
            subscription_changes: vec![SubscriptionChange::Status {
                id: self.id.clone(),
                status: self.status.code().to_owned(),
                error: self.error.clone(),
            }],
            ..Default::default()
        };
        Ok(Planned::Commit { write_set, request_outcome, answer: () })
    }

    /// The subscriber changed it meanwhile: the status goes onto the newer version.
    fn on_version_conflict(&self, _resource_type: String, _id: String) -> OnVersionConflict {
        OnVersionConflict::PlanAgain
    }

    fn exhausted(&self) -> ServiceError {
        ServiceError::Conflict(Issue::error(IssueCode::Transient, "the subscription kept changing; retry"))
    }

    /// The server's own write: no client retries it.
    fn plans_again_when_late(&self) -> bool {
        true
    }
}

/// Which events `$events` returns.
#[derive(Debug, Clone, Copy)]
pub struct EventRange {
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub content: Option<PayloadContent>,
}

impl ResourceService {
    /// Moves a subscription to `status` (with `error` as the reason), as a new version of the
    /// Subscription written by the server. A deleted subscription stays deleted.
    pub async fn set_subscription_status(
        &self,
        id: &str,
        status: SubscriptionStatus,
        error: Option<String>,
    ) -> Result<(), ServiceError> {
        let Ok(id) = ResourceId::parse(id) else { return Ok(()) };
        let change = StatusChange { service: self, id, status, error };
        WritePipeline::begin(self.store(), None).await?.commit(change).await
    }

    /// The subscription row of a Subscription the caller may read (404 otherwise).
    async fn subscription_of(&self, caller: &Principal, id: &ResourceId) -> Result<SubscriptionRow, ServiceError> {
        self.read_resource(caller, ResourceType::Subscription, id).await?;
        self.store()
            .subscription(id.as_str())
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("Subscription/{id}")))
    }

    /// `GET Subscription/{id}/$status`: a Bundle with the subscription's status Parameters.
    pub async fn subscription_status(
        &self,
        caller: &Principal,
        id: &ResourceId,
        base_url: &str,
    ) -> Result<Value, ServiceError> {
        let row = self.subscription_of(caller, id).await?;
        let stats = self.store().outbox_stats(Some(id.as_str())).await?;
        let mut bundle = notification_bundle(
            base_url,
            &uuid::Uuid::new_v4().to_string(),
            &Instant::now(),
            NotificationType::QueryStatus,
            &snapshot_of(&row)?,
            &[],
            PayloadContent::Empty,
        );
        bundle["type"] = json!("searchset");
        bundle["total"] = json!(1);
        if let Some(parameters) = bundle.pointer_mut("/entry/0/resource/parameter").and_then(Value::as_array_mut) {
            parameters.extend(delivery_parameters(&stats));
        }
        Ok(bundle)
    }

    /// `GET Subscription/{id}/$events`: the events numbered in the range, whatever their
    /// delivery state, so a subscriber can fetch what it missed.
    pub async fn subscription_events(
        &self,
        caller: &Principal,
        id: &ResourceId,
        range: EventRange,
        base_url: &str,
    ) -> Result<Value, ServiceError> {
        let row = self.subscription_of(caller, id).await?;
        let since = range.since.unwrap_or(1).max(1);
        let until = range.until.unwrap_or(i64::MAX);
        if until < since {
            return Err(ServiceError::invalid(
                IssueCode::Value,
                format!("eventsUntilNumber {until} is before eventsSinceNumber {since}"),
                Some("eventsUntilNumber"),
            ));
        }
        let payload = range.content.or_else(|| PayloadContent::parse(&row.payload)).unwrap_or(PayloadContent::IdOnly);
        let rows = self.store().notification_events(id.as_str(), since, until, MAX_EVENTS_PER_QUERY).await?;
        let mut events = Vec::with_capacity(rows.len());
        for event in &rows {
            // Read with the caller's own scope: what it may no longer see is not handed out.
            let resource = match (payload, focus_of(event)) {
                (PayloadContent::FullResource, Some(focus)) => self.focus_body(&caller.scope(), &focus).await?,
                _ => None,
            };
            events.push(event_of(event, resource));
        }
        let mut bundle = notification_bundle(
            base_url,
            &uuid::Uuid::new_v4().to_string(),
            &Instant::now(),
            NotificationType::QueryEvent,
            &snapshot_of(&row)?,
            &events,
            payload,
        );
        bundle["type"] = json!("history");
        Ok(bundle)
    }

    /// `POST Subscription/{id}/$resend`: puts dead notifications back in line and makes the
    /// subscription active again. Returns how many notifications were requeued.
    pub async fn resend_subscription(&self, caller: &Principal, id: &ResourceId) -> Result<u64, ServiceError> {
        let row = self.subscription_of(caller, id).await?;
        if row.status == SubscriptionStatus::Off.code() {
            return Err(ServiceError::Unprocessable(vec![Issue::error(
                IssueCode::BusinessRule,
                "the subscription is off; update it with status 'requested' to start it again",
            )]));
        }
        let requeued = self.store().resend_dead_notifications(id.as_str(), Instant::now()).await?;
        if row.status == SubscriptionStatus::Error.code() {
            self.set_subscription_status(id.as_str(), SubscriptionStatus::Active, None).await?;
        }
        Ok(requeued)
    }

    /// The body of the version an event is about, if `scope` may see it and it is not deleted.
    pub(crate) async fn focus_body(&self, scope: &TenantScope, focus: &Focus) -> Result<Option<Value>, ServiceError> {
        let (Ok(resource_type), Ok(id)) = (ResourceType::parse(&focus.resource_type), ResourceId::parse(&focus.id))
        else {
            return Ok(None);
        };
        let version = VersionId::from_stored(focus.version);
        let found = self.store().read_version(scope, resource_type, &id, version).await?;
        Ok(found.filter(|v| !v.deleted).and_then(|v| serde_json::from_str(&v.body).ok()))
    }

    /// The operator's view of the outbox.
    pub async fn outbox_stats(&self) -> Result<OutboxStats, ServiceError> {
        Ok(self.store().outbox_stats(None).await?)
    }
}

/// The outbox figures as status parameters (linkbridge's own, after the Backport's).
pub fn delivery_parameters(stats: &OutboxStats) -> Vec<Value> {
    let mut parameters = vec![
        json!({"name": "pending", "valueInteger": stats.pending}),
        json!({"name": "delivered", "valueInteger": stats.delivered}),
        json!({"name": "dead", "valueInteger": stats.dead}),
        json!({"name": "attempts", "valueInteger": stats.attempts}),
        json!({"name": "failures", "valueInteger": stats.failures}),
    ];
    if let Some(oldest) = &stats.oldest_pending {
        parameters.push(json!({"name": "oldest-pending", "valueInstant": oldest.to_fhir()}));
        let age = (Instant::now().micros() - oldest.micros()).max(0) / 1_000_000;
        parameters.push(json!({"name": "oldest-pending-age-seconds", "valueInteger": age}));
    }
    parameters
}

pub(crate) fn snapshot_of(row: &SubscriptionRow) -> Result<SubscriptionSnapshot, ServiceError> {
    let corrupt = |what: &str| ServiceError::Internal(format!("stored subscription has a bad {what}"));
    Ok(SubscriptionSnapshot {
        id: row.id.clone(),
        topic: Topic::parse(&row.topic).ok_or_else(|| corrupt("topic"))?,
        status: SubscriptionStatus::parse(&row.status).ok_or_else(|| corrupt("status"))?,
        events_since_start: row.events_since_start,
        error: row.error.clone(),
    })
}

pub(crate) fn focus_of(event: &OutboxRow) -> Option<Focus> {
    Some(Focus { resource_type: event.focus_type.clone()?, id: event.focus_id.clone()?, version: event.focus_version? })
}

pub(crate) fn event_of(event: &OutboxRow, resource: Option<Value>) -> NotificationEvent {
    NotificationEvent {
        number: event.event_number.unwrap_or(0),
        timestamp: event.created_at,
        focus: focus_of(event),
        resource,
    }
}
