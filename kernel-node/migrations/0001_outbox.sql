-- The transactional outbox (docs/PROTOCOL.md §6.8). A plugin inserts rows
-- in its own transaction; the node's relay publishes committed rows in id
-- order and deletes them.
CREATE TABLE kernel.outbox (
    id           bigserial   PRIMARY KEY,
    topic        text        NOT NULL,
    payload      bytea       NOT NULL DEFAULT '\x',
    content_type text        NOT NULL DEFAULT '',
    headers      jsonb       NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- One notification per inserting statement, sent when its transaction
-- commits (PostgreSQL holds NOTIFY until then and never sends it on
-- rollback); the relay LISTENs on kernel_outbox.
CREATE FUNCTION kernel.outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('kernel_outbox', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_notify AFTER INSERT ON kernel.outbox
    FOR EACH STATEMENT EXECUTE FUNCTION kernel.outbox_notify();

-- Rows the bus can never accept (an invalid topic, a payload over the
-- limit, a schema mismatch): moved here with the reason, never dropped.
CREATE TABLE kernel.outbox_rejected (
    id           bigint      PRIMARY KEY,
    topic        text        NOT NULL,
    payload      bytea       NOT NULL,
    content_type text        NOT NULL,
    headers      jsonb       NOT NULL,
    created_at   timestamptz NOT NULL,
    rejected_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    reason       text        NOT NULL
);
