-- The audit trail (auth/audit.rs), shared by every replica: one row per security-relevant
-- event, never a token or password. No foreign key to users: records outlive accounts, and a
-- failed login may name no user. Times are bigint unix seconds; pruned after `audit.retention`.
CREATE TABLE audit_events (
    seq        bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         bigint  NOT NULL,
    kind       text    NOT NULL,
    user_id    uuid    NULL,
    email      text    NULL,
    client_ip  text    NULL,
    request_id text    NULL,
    -- A JSON object of short strings (reason, actor, …).
    detail     text    NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_events_at ON audit_events (at);
CREATE INDEX audit_events_user_id ON audit_events (user_id, at);
CREATE INDEX audit_events_email ON audit_events (email, at);
