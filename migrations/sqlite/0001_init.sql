-- Users, login sessions and the revocation feed. Times are unix seconds; ids are hyphenated UUIDs.

CREATE TABLE users (
    id                 TEXT    PRIMARY KEY NOT NULL,
    -- Callers lower-case emails; NOCASE keeps uniqueness case-insensitive even if one forgets.
    email              TEXT    NOT NULL UNIQUE COLLATE NOCASE,
    password_hash      TEXT    NULL,
    role               TEXT    NOT NULL CHECK (role IN ('admin', 'user')),
    disabled           INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
    deleted            INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1)),
    sso_enabled        INTEGER NOT NULL DEFAULT 0 CHECK (sso_enabled IN (0, 1)),
    invitation_pending INTEGER NOT NULL DEFAULT 0 CHECK (invitation_pending IN (0, 1)),
    created            INTEGER NOT NULL,
    last_login         INTEGER NULL
);

CREATE TABLE sessions (
    id              TEXT    PRIMARY KEY NOT NULL,
    user_id         TEXT    NOT NULL REFERENCES users (id),
    created         INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    revoked_at      INTEGER NULL,
    current_jti     TEXT    NOT NULL,
    refresh_count   INTEGER NOT NULL DEFAULT 0,
    last_refresh_at INTEGER NULL
);

CREATE INDEX sessions_user_id ON sessions (user_id);
-- prune() deletes by expiry.
CREATE INDEX sessions_expires_at ON sessions (expires_at);

-- AUTOINCREMENT so a pruned seq is never handed out again: replicas poll with `seq > cursor`.
CREATE TABLE session_revocations (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT    NOT NULL,
    revoked_at INTEGER NOT NULL
);

CREATE INDEX session_revocations_revoked_at ON session_revocations (revoked_at);
