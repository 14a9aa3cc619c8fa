//! What one request writes, as plain data the store applies atomically.

use crate::domain::audit::AuditRecord;
use crate::domain::ids::{ResourceId, VersionId};
use crate::domain::instant::Instant;
use crate::domain::resource_type::ResourceType;
use crate::domain::search_params::IndexEntry;
use crate::domain::search_query::SearchQuery;
use crate::domain::tenancy::TenantScope;
use crate::domain::versions::WriteMethod;

/// What must hold for a resource write to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// The resource does not exist yet (create).
    Absent,
    /// The current version is exactly this one (update, patch, delete). Checked in the same
    /// statement as the write, so two writers from one version cannot both succeed.
    CurrentVersion(VersionId),
}

/// One new version of one resource.
#[derive(Debug, Clone)]
pub struct ResourceWrite {
    pub resource_type: ResourceType,
    pub id: ResourceId,
    pub version: VersionId,
    pub last_updated: Instant,
    pub method: WriteMethod,
    pub precondition: Precondition,
    /// The JSON text served on reads, `id` and `meta` included. Empty for a delete.
    pub body: String,
    /// Search index rows of this version (none for a delete).
    pub index: Vec<IndexEntry>,
    /// Visibility keys (see `domain::tenancy::Visibility`) that follow from this version's
    /// content; they replace those of the previous version.
    pub visibility: Vec<String>,
    /// Visibility keys that persist whatever later versions say (the creating organisation).
    pub visibility_grants: Vec<String>,
}

impl ResourceWrite {
    /// Whether this write creates a resource under an id this server generated for it
    /// ([`WriteMethod::Create`]): no row of any table can hold that id yet, and nothing
    /// outside this write set can have granted it visibility, so its rows go in without
    /// conflict checks. A client-named create (`PUT` of a new id) may race another.
    pub fn creates_with_fresh_id(&self) -> bool {
        self.method == WriteMethod::Create && self.precondition == Precondition::Absent
    }
}

/// Claims a conditional-create key so that concurrent identical conditional creates make one
/// resource: the key is unique per (scope, type, criteria).
#[derive(Debug, Clone)]
pub struct ConditionalClaim {
    pub scope_key: String,
    pub resource_type: ResourceType,
    pub criteria: String,
    pub id: ResourceId,
    /// A stale key (its resource no longer matches) is taken over by compare-and-swap.
    pub replaces: Option<String>,
}

/// A conditional create planned without searching for a match first: it applies only if,
/// when the writer applies it, no live resource in `scope` matches `query`. Otherwise the
/// commit fails with `StoreError::ConditionalClaimTaken`, as when its key is taken, and the
/// request searches and plans again. Nearly every conditional create (a referral's patient)
/// matches nothing, and the writer checks a whole batch's in one statement: a read round trip
/// fewer per request than searching first.
#[derive(Debug, Clone)]
pub struct NoMatchRequired {
    pub scope: TenantScope,
    pub query: SearchQuery,
}

/// Makes an existing resource visible to one more party without a new version (e.g. the
/// patient of a referral becomes visible to the CLW service the Task is assigned to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisibilityGrant {
    pub resource_type: ResourceType,
    pub id: ResourceId,
    pub key: String,
}

/// The `X-Request-ID` of the request that makes this change (BaRS de-duplication).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub client_id: String,
    pub request_id: String,
    /// SHA-256 of the request (method, path, body): a replay with another body is refused.
    pub body_hash: String,
    /// What the first request produced, e.g. `Task/abc/_history/1`.
    pub outcome: String,
}

/// Everything one request writes.
#[derive(Debug, Clone, Default)]
pub struct WriteSet {
    pub resources: Vec<ResourceWrite>,
    pub conditional_claims: Vec<ConditionalClaim>,
    /// Searches that must find nothing for this change to apply (conditional creates planned
    /// without a search first).
    pub no_match_required: Vec<NoMatchRequired>,
    /// Audit records of this change, committed with it (or not at all).
    pub audit: Vec<AuditRecord>,
    pub grants: Vec<VisibilityGrant>,
    /// Visibility withdrawn from other resources (an open referral once claimed).
    pub revocations: Vec<VisibilityGrant>,
    pub request: Option<RequestRecord>,
    /// The delivery-side record of Subscriptions this change writes.
    pub subscription_changes: Vec<SubscriptionChange>,
    /// Notifications of this change (the transactional outbox): committed with it, or not
    /// at all. The events of its resource writes are added by the writer, which matches them
    /// against the live subscriptions once per batch (see `store::events`).
    pub notifications: Vec<OutboxEntry>,
    /// What the resources this change deletes said (a deletion has no index of its own to
    /// match subscriptions against).
    pub deleted_contents: Vec<DeletedContent>,
}

/// The content of a resource a write set deletes, as its deletion is matched against
/// subscriptions: its index entries and its content-derived visibility keys.
#[derive(Debug, Clone)]
pub struct DeletedContent {
    pub resource_type: ResourceType,
    pub id: ResourceId,
    pub index: Vec<IndexEntry>,
    pub visibility: Vec<String>,
}

impl WriteSet {
    /// Only audit records: the access record of a read, search or refusal.
    pub fn is_audit_only(&self) -> bool {
        self.resources.is_empty()
            && self.conditional_claims.is_empty()
            && self.no_match_required.is_empty()
            && self.grants.is_empty()
            && self.revocations.is_empty()
            && self.request.is_none()
            && self.subscription_changes.is_empty()
            && self.notifications.is_empty()
    }

    /// Adds another write set's content (transactions build one from many entries).
    pub fn absorb(&mut self, other: WriteSet) {
        self.resources.extend(other.resources);
        self.conditional_claims.extend(other.conditional_claims);
        self.no_match_required.extend(other.no_match_required);
        self.audit.extend(other.audit);
        self.grants.extend(other.grants);
        self.revocations.extend(other.revocations);
        self.subscription_changes.extend(other.subscription_changes);
        self.notifications.extend(other.notifications);
        self.deleted_contents.extend(other.deleted_contents);
    }
}

/// What delivery needs to know of one Subscription, saved with each version of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRecord {
    pub id: ResourceId,
    /// The subscriber's organisation (ODS code).
    pub organization: String,
    /// The subscriber's role (referrer, performer, operator).
    pub role: String,
    pub topic: String,
    /// `backport-filter-criteria` values, all of which must match.
    pub filters: Vec<String>,
    pub endpoint: String,
    pub payload: String,
    pub headers: Vec<(String, String)>,
    pub heartbeat_secs: Option<i64>,
    /// The signing secret (`whsec_…`); `None` keeps the stored one.
    pub secret: Option<String>,
    pub status: String,
    pub error: Option<String>,
}

/// A change to the delivery-side record of a Subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionChange {
    /// Created or updated by its owner. The event counter is kept on update.
    Save(Box<SubscriptionRecord>),
    /// The server moved it (handshake done, delivery failed, endpoint gone...).
    Status { id: ResourceId, status: String, error: Option<String> },
    /// Deleted: nothing more is recorded or delivered for it.
    Delete(ResourceId),
}

/// What an outbox row announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxKind {
    /// The first notification of a new (or re-requested) subscription.
    Handshake,
    /// A change of a resource the subscription's topic and filters match.
    Event,
}

impl OutboxKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OutboxKind::Handshake => "handshake",
            OutboxKind::Event => "event-notification",
        }
    }

    pub fn from_stored(raw: &str) -> OutboxKind {
        if raw == "handshake" {
            OutboxKind::Handshake
        } else {
            OutboxKind::Event
        }
    }
}

/// One notification to deliver. An event's number is given out by the store when it is
/// applied (the subscription's counter, in the same transaction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// The Standard Webhooks message id, the same on every retry.
    pub id: String,
    pub subscription_id: ResourceId,
    pub kind: OutboxKind,
    /// The resource version the event is about.
    pub focus: Option<(ResourceType, ResourceId, VersionId)>,
    pub created_at: Instant,
}
