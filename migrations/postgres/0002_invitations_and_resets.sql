-- Invitation links and password resets (PostgreSQL). Times are bigint unix seconds; ids are uuid.

-- The current invitation of a pending user: both set, or both NULL (never invited, accepted,
-- or a pending user created before invitations carried a nonce).
ALTER TABLE users ADD COLUMN invitation_nonce text NULL;
ALTER TABLE users ADD COLUMN invitation_expires_at bigint NULL;
ALTER TABLE users ADD CONSTRAINT users_invitation_complete
    CHECK ((invitation_nonce IS NULL) = (invitation_expires_at IS NULL));

-- Only the SHA-256 digest (lower-case hex) of a reset token is stored.
CREATE TABLE password_resets (
    digest     text   PRIMARY KEY,
    user_id    uuid   NOT NULL REFERENCES users (id),
    created    bigint NOT NULL,
    expires_at bigint NOT NULL,
    -- Set when spent, or when a newer reset of the same user supersedes it.
    used_at    bigint NULL
);

-- create_password_reset() supersedes a user's earlier resets.
CREATE INDEX password_resets_user_id ON password_resets (user_id);
-- prune() deletes by expiry.
CREATE INDEX password_resets_expires_at ON password_resets (expires_at);
