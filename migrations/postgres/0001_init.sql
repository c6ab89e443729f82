-- Users, login sessions and the revocation feed (PostgreSQL). Mirrors migrations/sqlite with
-- native types: ids are uuid, times are bigint unix seconds, flags are boolean. Versions are kept
-- parallel to the SQLite migrations so both backends move through the same schema steps.

CREATE TABLE users (
    id                 uuid    PRIMARY KEY,
    -- Callers lower-case emails; the unique index on lower(email) keeps uniqueness and lookups
    -- case-insensitive even if one forgets (like SQLite's COLLATE NOCASE, without citext).
    email              text    NOT NULL,
    password_hash      text    NULL,
    role               text    NOT NULL CHECK (role IN ('admin', 'user')),
    disabled           boolean NOT NULL DEFAULT false,
    deleted            boolean NOT NULL DEFAULT false,
    sso_enabled        boolean NOT NULL DEFAULT false,
    invitation_pending boolean NOT NULL DEFAULT false,
    created            bigint  NOT NULL,
    last_login         bigint  NULL,
    -- Breaks ties between equal `created` in insertion order (what SQLite's rowid does).
    insertion_seq      bigint  GENERATED ALWAYS AS IDENTITY
);

CREATE UNIQUE INDEX users_email_lower ON users (lower(email));
-- list_users() order.
CREATE INDEX users_created ON users (created, insertion_seq);

CREATE TABLE sessions (
    id              uuid   PRIMARY KEY,
    user_id         uuid   NOT NULL REFERENCES users (id),
    created         bigint NOT NULL,
    expires_at      bigint NOT NULL,
    revoked_at      bigint NULL,
    current_jti     uuid   NOT NULL,
    refresh_count   bigint NOT NULL DEFAULT 0,
    last_refresh_at bigint NULL
);

CREATE INDEX sessions_user_id ON sessions (user_id);
-- prune() deletes by expiry.
CREATE INDEX sessions_expires_at ON sessions (expires_at);

-- The feed every replica polls with `seq > cursor`. A sequence never hands out a value twice, so a
-- pruned seq is never reused. Appends are serialized by an advisory lock (see
-- src/store/postgres.rs) so seqs also become visible in increasing order.
CREATE TABLE session_revocations (
    seq        bigserial PRIMARY KEY,
    session_id uuid      NOT NULL,
    revoked_at bigint    NOT NULL
);

CREATE INDEX session_revocations_revoked_at ON session_revocations (revoked_at);
