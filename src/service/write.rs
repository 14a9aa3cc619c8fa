//! The write pipeline: plan, then commit, then plan again while concurrent requests collide.
//!
//! Every write goes through here: planned against what it read, committed atomically as one
//! [`WriteSet`], and planned again from a fresh read (at most [`MAX_ATTEMPTS`] plannings) only
//! when the store reports that a concurrent request got in first: a key it claimed was taken
//! or its conditional create now matches (`ConditionalClaimTaken`), a request with its
//! X-Request-ID committed (`DuplicateRequest`, answered as a replay when it is one), or a
//! version it planned on changed (`VersionConflict`, when its path says to plan again, see
//! [`OnVersionConflict`]). The server's own writes also plan again when they reached the
//! writer too late (`SettleWindowPassed`): they have no client to retry them. Any other
//! failure is the answer.
//!
//! A write path supplies only what differs ([`PlanWrite`]): how it plans its write set from
//! what it reads, what it answers once that is committed, and what a changed version means.

use super::idempotency::RequestKey;
use super::ServiceError;
use crate::store::{Store, StoreError, WriteSet};

/// How many times a write is planned before the pipeline stops and answers that the resource
/// or key it needs is busy ([`PlanWrite::exhausted`]).
const MAX_ATTEMPTS: usize = 5;

/// What one planning of a write produced.
#[expect(
    clippy::large_enum_variant,
    reason = "one value per planning, moved once into the commit: a box would only add an allocation"
)]
pub(super) enum Planned<A> {
    /// What was read already answers the request and nothing is written: a conditional create
    /// that matched, a deletion of what is deleted, a status change of what has gone.
    Answered(A),
    /// A write set to commit, and the answer to give once it is durable.
    Commit {
        write_set: WriteSet,
        /// What the request produced, as the X-Request-ID record names it to a replay.
        request_outcome: String,
        answer: A,
    },
}

/// What a write path does when a version it planned on changed before its write set reached
/// the database.
pub(super) enum OnVersionConflict {
    /// Plan again on the newer version: the client did not say which version it changed.
    PlanAgain,
    /// Answer with this error: the client named the version it read (If-Match, 412), or the
    /// write may not be planned again on newer content (a transaction).
    Refuse(ServiceError),
}

/// A write path: what it reads and plans, and how its collisions are answered.
pub(super) trait PlanWrite {
    /// What the path answers once its write is committed.
    type Answer;

    /// Plans the write against what it reads now. `attempt` counts the plannings from 0; it
    /// tells the referral rules how much to read first ([`super::rules::Pending::for_attempt`]).
    async fn plan(&mut self, attempt: usize) -> Result<Planned<Self::Answer>, ServiceError>;

    /// What it means that `resource_type/id` changed between the last planning and its
    /// commit. Unless the path says otherwise, the conflict is the answer (409): a create
    /// planned on no version, so it has none to plan again on.
    fn on_version_conflict(&self, resource_type: String, id: String) -> OnVersionConflict {
        OnVersionConflict::Refuse(StoreError::VersionConflict { resource_type, id }.into())
    }

    /// The answer when every planning collided with a concurrent request.
    fn exhausted(&self) -> ServiceError;

    /// Whether a write that reached the writer too late is planned again rather than answered
    /// 503 with `Retry-After`: only the server's own writes, which no client retries, are.
    fn plans_again_when_late(&self) -> bool {
        false
    }
}

/// A write under way: its request, if it carries an X-Request-ID, has not been seen before.
pub(super) struct WritePipeline<'a> {
    store: &'a Store,
    request: Option<&'a RequestKey>,
}

impl<'a> WritePipeline<'a> {
    /// Begins a write. A request whose X-Request-ID was used before is refused now, before any
    /// work: a replay (409 duplicate) or a different request under the same id (422).
    pub(super) async fn begin(store: &'a Store, request: Option<&'a RequestKey>) -> Result<Self, ServiceError> {
        if let Some(key) = request {
            key.refuse_if_seen(store).await?;
        }
        Ok(WritePipeline { store, request })
    }

    /// Plans the write and commits it, planning again while concurrent requests collide with
    /// it (see the module's doc comment for which collisions those are).
    pub(super) async fn commit<P: PlanWrite>(self, mut path: P) -> Result<P::Answer, ServiceError> {
        for attempt in 0..MAX_ATTEMPTS {
            let (mut write_set, request_outcome, answer) = match path.plan(attempt).await? {
                Planned::Answered(answer) => return Ok(answer),
                Planned::Commit { write_set, request_outcome, answer } => (write_set, request_outcome, answer),
            };
            write_set.request = self.request.map(|key| key.record(request_outcome));
            match self.store.commit(write_set).await {
                Ok(()) => return Ok(answer),
                // A concurrent request took a key this one needs, or created what its
                // conditional create now matches: the next planning reads and sees it.
                Err(StoreError::ConditionalClaimTaken) => {}
                // A request with the same X-Request-ID committed meanwhile: this one is answered
                // as its replay (or as the reuse of its id for another request).
                Err(StoreError::DuplicateRequest) => {
                    if let Some(key) = self.request {
                        key.refuse_if_seen(self.store).await?;
                    }
                }
                Err(StoreError::VersionConflict { resource_type, id }) => {
                    if let OnVersionConflict::Refuse(refusal) = path.on_version_conflict(resource_type, id) {
                        return Err(refusal);
                    }
                }
                Err(StoreError::SettleWindowPassed { .. }) if path.plans_again_when_late() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(path.exhausted())
    }
}
