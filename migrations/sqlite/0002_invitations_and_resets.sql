-- Invitation links and password resets. Times are unix seconds; ids are hyphenated UUIDs.

-- The current invitation of a pending user: both set, or both NULL (never invited, accepted,
-- or a pending user created before invitations carried a nonce).
ALTER TABLE users ADD COLUMN invitation_nonce TEXT NULL;
ALTER TABLE users ADD COLUMN invitation_expires_at INTEGER NULL;

-- Only the SHA-256 digest (lower-case hex) of a reset token is stored.
CREATE TABLE password_resets (
    digest     TEXT    PRIMARY KEY NOT NULL,
    user_id    TEXT    NOT NULL REFERENCES users (id),
    created    INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    -- Set when spent, or when a newer reset of the same user supersedes it.
    used_at    INTEGER NULL
);

-- create_password_reset() supersedes a user's earlier resets.
CREATE INDEX password_resets_user_id ON password_resets (user_id);
