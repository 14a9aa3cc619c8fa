-- X-Request-ID de-duplication (NHS BaRS): one row per client request id that wrote something,
-- committed in the same transaction as the write. A replay finds it; a concurrent duplicate
-- collides on the key.
CREATE TABLE request_ids (
    client_id TEXT NOT NULL,
    request_id TEXT NOT NULL,
    body_hash TEXT NOT NULL,
    outcome TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (client_id, request_id)
);
