//! The delivery worker every replica runs: claims due notifications from the outbox with a
//! lease, delivers each outside any transaction as a signed webhook (Standard Webhooks), and
//! records the outcome fenced by the claim's token. At least once: a replica that dies
//! between delivering and recording leaves the lease to lapse, and another replica delivers
//! again with the same `webhook-id`; receivers de-duplicate on it (or on the event number).
//!
//! Outcomes (docs/security-and-reliability.md, "Reliable delivery of status notifications"): 2xx
//! delivered; 410 turns the subscription off; 429/503 retry after `Retry-After`; anything else,
//! redirects included (none are followed), retries on the backoff schedule, and after the last
//! attempt the event is kept as dead and the subscription goes to `error` until someone asks for a
//! resend.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rand::Rng;
use tokio::sync::watch;

use super::resources::ResourceService;
use super::subscriptions::{event_of, focus_of, snapshot_of};
use super::ServiceError;
use crate::domain::instant::Instant;
use crate::domain::notification::{notification_bundle, NotificationType};
use crate::domain::subscriptions::{
    is_public_address, subscriber_scope, EndpointPolicy, PayloadContent, SubscriptionStatus,
};
use crate::domain::webhook::{RetrySchedule, WebhookSecret};
use crate::metrics::Metrics;
use crate::store::{ClaimedEvent, DeliveryOutcome, OutboxKind, SubscriptionRow};

/// A failing handshake is retried this often (within the schedule) before the subscription
/// goes to `error`: a subscriber creating a subscription wants to know soon.
const HANDSHAKE_ATTEMPTS: u32 = 3;
/// `Retry-After` is honoured up to a day.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(86_400);
/// The most notifications claimed at once by one replica.
const CLAIM_BATCH: u32 = 64;
/// Deliveries in flight at once per replica.
const CONCURRENT_DELIVERIES: usize = 16;
/// How much of a failing endpoint's answer is kept as the reason.
const MAX_REASON_CHARS: usize = 300;

/// How the worker delivers.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// The public base URL, for the references in notifications.
    pub base_url: String,
    pub schedule: RetrySchedule,
    pub policy: EndpointPolicy,
    /// How often to look for due notifications when nothing wakes the worker (other
    /// replicas' commits, retries coming due).
    pub poll_interval: Duration,
    /// How long a claim lasts: longer than a delivery can take (the request timeout).
    pub lease: Duration,
    /// Per-delivery HTTP timeout.
    pub timeout: Duration,
}

/// The per-replica delivery worker.
#[derive(Clone)]
pub struct DeliveryWorker {
    service: ResourceService,
    client: reqwest::Client,
    settings: Arc<DeliverySettings>,
    metrics: Metrics,
}

/// Why the worker could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the webhook client: {0}")]
pub struct DeliveryWorkerError(String);

/// Resolves endpoint host names to public addresses only, so a name that points into the
/// server's own network (DNS rebinding included: the check is on the address connected to)
/// cannot be used to reach it.
struct PublicAddressesOnly;

impl reqwest::dns::Resolve for PublicAddressesOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = addresses.into_iter().filter(|a| is_public_address(a.ip())).collect();
            if public.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            let addresses: reqwest::dns::Addrs = Box::new(public.into_iter());
            Ok(addresses)
        })
    }
}

/// What one attempt came to, before it is recorded.
struct Attempt {
    status: Option<u16>,
    retry_after: Option<Duration>,
    error: Option<String>,
}

impl DeliveryWorker {
    pub fn new(
        service: ResourceService,
        settings: DeliverySettings,
        metrics: Metrics,
    ) -> Result<Self, DeliveryWorkerError> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .user_agent(concat!("linkbridge/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(30));
        if !settings.policy.allow_private {
            builder = builder.dns_resolver(Arc::new(PublicAddressesOnly));
        }
        let client = builder.build().map_err(|e| DeliveryWorkerError(e.to_string()))?;
        Ok(DeliveryWorker { service, client, settings: Arc::new(settings), metrics })
    }

    /// Delivers until `stop` turns true; deliveries in flight finish first.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                break;
            }
            let worked = match self.run_once().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "delivery round failed; retrying after the poll interval");
                    0
                }
            };
            if worked > 0 {
                continue;
            }
            tokio::select! {
                _ = stop.changed() => {}
                _ = self.service.store().outbox_changed() => {}
                _ = tokio::time::sleep(self.settings.poll_interval) => {}
            }
        }
    }

    /// One round: claims what is due, delivers it, sends due heartbeats. Returns how many
    /// notifications were handled.
    pub async fn run_once(&self) -> Result<usize, ServiceError> {
        let store = self.service.store();
        let now = Instant::now();
        let mut handled = 0;
        if store.has_due_notifications(now).await? {
            let claimed = store.claim_due_notifications(now, self.settings.lease, CLAIM_BATCH).await?;
            handled = claimed.len();
            futures::stream::iter(claimed)
                .for_each_concurrent(CONCURRENT_DELIVERIES, |claim| async move {
                    if let Err(e) = self.deliver(&claim).await {
                        // The lease lapses and the event is claimed again: nothing is lost.
                        tracing::warn!(error = %e, event = %claim.event.id, "could not record a delivery");
                    }
                })
                .await;
        }
        self.send_heartbeats(now).await?;
        Ok(handled)
    }

    async fn deliver(&self, claim: &ClaimedEvent) -> Result<(), ServiceError> {
        let store = self.service.store();
        let Some(subscription) = store.subscription(&claim.event.subscription_id).await? else {
            store.finish_delivery(claim, DeliveryOutcome::Released, Instant::now()).await?;
            return Ok(());
        };
        let kind = match claim.event.kind {
            OutboxKind::Handshake => NotificationType::Handshake,
            OutboxKind::Event => NotificationType::EventNotification,
        };
        let payload = PayloadContent::parse(&subscription.payload).unwrap_or(PayloadContent::IdOnly);
        let events = match claim.event.kind {
            OutboxKind::Handshake => Vec::new(),
            OutboxKind::Event => {
                let resource = match (
                    payload,
                    focus_of(&claim.event),
                    subscriber_scope(&subscription.organization, &subscription.role),
                ) {
                    (PayloadContent::FullResource, Some(focus), Some(scope)) => {
                        self.service.focus_body(&scope, &focus).await?
                    }
                    _ => None,
                };
                vec![event_of(&claim.event, resource)]
            }
        };
        // Built from the event alone (id, creation instant) so every retry sends the same
        // notification, apart from the subscription's current status and count.
        let bundle = notification_bundle(
            &self.settings.base_url,
            &claim.event.id,
            &claim.event.created_at,
            kind,
            &snapshot_of(&subscription)?,
            &events,
            payload,
        );
        let attempt = self.post(&subscription, &claim.event.id, &bundle).await;
        self.record(claim, &subscription, attempt).await
    }

    /// Sends one signed notification; never fails, the outcome says what happened.
    async fn post(&self, subscription: &SubscriptionRow, message_id: &str, bundle: &serde_json::Value) -> Attempt {
        let failed = |error: String| Attempt { status: None, retry_after: None, error: Some(error) };
        // Checked again at delivery: the operator may have withdrawn the allowance since.
        let endpoint = match self.settings.policy.check(&subscription.endpoint) {
            Ok(url) => url,
            Err(reason) => return failed(reason),
        };
        let secret = match WebhookSecret::parse(&subscription.secret) {
            Ok(secret) => secret,
            Err(reason) => return failed(format!("the subscription's secret is unusable: {reason}")),
        };
        let body = match serde_json::to_vec(bundle) {
            Ok(body) => body,
            Err(e) => return failed(format!("cannot encode the notification: {e}")),
        };
        let timestamp = Instant::now().micros() / 1_000_000;
        let mut request = self
            .client
            .post(endpoint)
            .header(reqwest::header::CONTENT_TYPE, "application/fhir+json")
            .header("webhook-id", message_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", secret.sign(message_id, timestamp, &body));
        for (name, value) in &subscription.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        match request.body(body).send().await {
            Err(e) => failed(describe_transport_error(&e)),
            Ok(response) => {
                let status = response.status();
                let retry_after = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_retry_after);
                let error = (!status.is_success()).then(|| {
                    let mut reason = format!("the endpoint answered {status}");
                    if status.is_redirection() {
                        reason.push_str(" (redirects are not followed)");
                    }
                    reason
                });
                Attempt { status: Some(status.as_u16()), retry_after, error }
            }
        }
    }

    /// Records an attempt and moves the subscription where the outcome says.
    async fn record(
        &self,
        claim: &ClaimedEvent,
        subscription: &SubscriptionRow,
        attempt: Attempt,
    ) -> Result<(), ServiceError> {
        let store = self.service.store();
        let now = Instant::now();
        let handshake = claim.event.kind == OutboxKind::Handshake;
        let attempts = u32::try_from(claim.event.attempts).unwrap_or(u32::MAX);
        let Some(error) = attempt.error else {
            self.metrics.delivery("delivered");
            let status = attempt.status.unwrap_or(200);
            if store.finish_delivery(claim, DeliveryOutcome::Delivered { status }, now).await? && handshake {
                self.service.set_subscription_status(&subscription.id, SubscriptionStatus::Active, None).await?;
            }
            return Ok(());
        };
        let error: String = error.chars().take(MAX_REASON_CHARS).collect();
        tracing::warn!(
            subscription = %subscription.id,
            event = ?claim.event.event_number,
            attempt = attempts,
            status = ?attempt.status,
            error = %error,
            "webhook delivery failed"
        );
        if attempt.status == Some(410) {
            self.metrics.delivery("gone");
            if store.finish_delivery(claim, DeliveryOutcome::Released, now).await? {
                let reason = "the endpoint answered 410 Gone: the subscription was turned off".to_owned();
                self.service.set_subscription_status(&subscription.id, SubscriptionStatus::Off, Some(reason)).await?;
            }
            return Ok(());
        }
        let max_attempts = if handshake {
            HANDSHAKE_ATTEMPTS.min(self.settings.schedule.max_attempts())
        } else {
            self.settings.schedule.max_attempts()
        };
        let honoured_retry_after = match attempt.status {
            Some(429 | 503) => attempt.retry_after,
            _ => None,
        };
        let delay = match honoured_retry_after {
            Some(delay) if attempts < max_attempts => Some(delay),
            _ if attempts >= max_attempts => None,
            _ => self.settings.schedule.delay_after(attempts, rand::thread_rng().gen::<f64>()),
        };
        match delay {
            Some(delay) => {
                self.metrics.delivery("retry");
                let next_attempt_at = Instant::from_micros(
                    now.micros().saturating_add(i64::try_from(delay.as_micros()).unwrap_or(i64::MAX)),
                );
                let outcome = DeliveryOutcome::Retry { next_attempt_at, status: attempt.status, error };
                store.finish_delivery(claim, outcome, now).await?;
            }
            None => {
                self.metrics.delivery("dead");
                let reason = match (handshake, claim.event.event_number) {
                    (true, _) => format!("the handshake failed after {attempts} attempts: {error}"),
                    (false, Some(n)) => format!("event {n} could not be delivered after {attempts} attempts: {error}"),
                    (false, None) => format!("a notification could not be delivered: {error}"),
                };
                let outcome = DeliveryOutcome::Dead { status: attempt.status, error };
                if store.finish_delivery(claim, outcome, now).await? {
                    self.service
                        .set_subscription_status(&subscription.id, SubscriptionStatus::Error, Some(reason))
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Heartbeats for active subscriptions that nothing has reached within their period.
    /// One replica wins each turn; a failed heartbeat is logged, not retried (the next one
    /// follows a period later).
    async fn send_heartbeats(&self, now: Instant) -> Result<(), ServiceError> {
        let store = self.service.store();
        for subscription in store.subscriptions_due_heartbeat(now).await? {
            if !store.claim_heartbeat(&subscription, now).await? {
                continue;
            }
            let bundle = notification_bundle(
                &self.settings.base_url,
                &uuid::Uuid::new_v4().to_string(),
                &now,
                NotificationType::Heartbeat,
                &snapshot_of(&subscription)?,
                &[],
                PayloadContent::Empty,
            );
            let id = bundle["id"].as_str().unwrap_or_default().to_owned();
            let attempt = self.post(&subscription, &id, &bundle).await;
            if let Some(error) = attempt.error {
                tracing::warn!(subscription = %subscription.id, error = %error, "heartbeat failed");
            }
        }
        Ok(())
    }
}

/// A transport failure in words for the subscriber (no internal detail beyond the kind).
fn describe_transport_error(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "the endpoint did not answer in time".to_owned()
    } else if error.is_connect() {
        format!("could not connect to the endpoint: {}", root_cause(error))
    } else {
        format!("the request failed: {}", root_cause(error))
    }
}

fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// `Retry-After` in seconds (the HTTP-date form is rare for webhooks and falls back to the
/// schedule), at least a second and at most a day.
fn parse_retry_after(raw: &str) -> Option<Duration> {
    let seconds: u64 = raw.trim().parse().ok()?;
    Some(Duration::from_secs(seconds).clamp(Duration::from_secs(1), MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_in_seconds_and_bounded() {
        assert_eq!(parse_retry_after("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("0"), Some(Duration::from_secs(1)));
        assert_eq!(parse_retry_after("9999999"), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2026 07:28:00 GMT"), None);
    }
}
