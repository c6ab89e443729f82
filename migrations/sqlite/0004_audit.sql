-- The audit trail (auth/audit.rs): one row per security-relevant event, never a token or
-- password. No foreign key to users: records outlive accounts, and a failed login may name no
-- user. Times are unix seconds; pruned after `audit.retention`.
CREATE TABLE audit_events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    at         INTEGER NOT NULL,
    kind       TEXT    NOT NULL,
    user_id    TEXT    NULL,
    email      TEXT    NULL,
    client_ip  TEXT    NULL,
    request_id TEXT    NULL,
    -- A JSON object of short strings (reason, actor, …).
    detail     TEXT    NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_events_at ON audit_events (at);
CREATE INDEX audit_events_user_id ON audit_events (user_id, at);
CREATE INDEX audit_events_email ON audit_events (email, at);
