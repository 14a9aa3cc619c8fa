-- Subscriptions (the delivery-side projection of each Subscription resource, written in the
-- same transaction as its versions) and the transactional outbox of their notifications.
CREATE TABLE subscriptions (
    id TEXT PRIMARY KEY,
    -- The subscriber: its organisation (ODS code) and role decide what it may hear of.
    organization TEXT NOT NULL,
    role TEXT NOT NULL,
    topic TEXT NOT NULL,
    -- JSON array of backport-filter-criteria strings, ANDed.
    filters TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    payload TEXT NOT NULL,
    -- JSON array of [name, value] pairs.
    headers TEXT NOT NULL,
    heartbeat_secs BIGINT,
    secret TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    -- The last event number handed out; incremented in the transaction of each change, so
    -- numbers follow commit order per subscription.
    events_since_start BIGINT NOT NULL DEFAULT 0,
    -- When something (an event or a heartbeat) last reached the endpoint, in microseconds.
    last_sent_at BIGINT,
    deleted BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX subscriptions_by_topic ON subscriptions (topic, status);

CREATE TABLE outbox_events (
    -- The Standard Webhooks message id: the same on every retry.
    id TEXT PRIMARY KEY,
    subscription_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    event_number BIGINT,
    focus_type TEXT,
    focus_id TEXT,
    focus_version BIGINT,
    created_at BIGINT NOT NULL,
    -- pending | delivered | dead
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    failures BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    -- The claim: a random token per claim (fencing) and when it lapses.
    lease_token TEXT,
    lease_until BIGINT,
    last_status BIGINT,
    last_error TEXT,
    delivered_at BIGINT
);
CREATE INDEX outbox_due ON outbox_events (state, next_attempt_at);
CREATE UNIQUE INDEX outbox_event_numbers ON outbox_events (subscription_id, event_number);
