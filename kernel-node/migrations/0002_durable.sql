-- Durable subscriptions (docs/PROTOCOL.md §6.9): a subscription by name
-- whose position and unacked events live here, so it survives the
-- subscriber's absence and a node restart.
CREATE TABLE kernel.durable (
    name       text        PRIMARY KEY,
    patterns   text[]      NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Its events not yet acked, in publish order (seq). A row is deleted when
-- the subscriber acks it or it is dead-lettered.
CREATE TABLE kernel.durable_event (
    name         text        NOT NULL REFERENCES kernel.durable ON DELETE CASCADE,
    seq          bigserial,
    event_id     bigint      NOT NULL,
    topic        text        NOT NULL,
    payload      bytea       NOT NULL,
    content_type text        NOT NULL,
    headers      jsonb       NOT NULL,
    publish_time bigint      NOT NULL,
    attempts     integer     NOT NULL DEFAULT 0,
    PRIMARY KEY (name, seq)
);
