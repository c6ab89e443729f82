-- The Users API (`GET /users`, `GET /users/trash`): one index per order it offers, each led by
-- `deleted` so a page of either list is read in order from the index, and ending in `id` (the
-- tie-break that makes paging stable). Emails are ordered byte-wise (COLLATE "C"), as SQLite
-- orders the lower-cased addresses, whatever the database's locale.
CREATE INDEX users_page_id ON users (deleted, id);
CREATE INDEX users_page_email ON users (deleted, email COLLATE "C");
CREATE INDEX users_page_created ON users (deleted, created, id);

-- Feed entries that update a session instead of ending it: its user's email or role changed,
-- so other replicas re-check their cached tokens of it (auth/revocation.rs).
ALTER TABLE session_revocations ADD COLUMN identity_changed boolean NOT NULL DEFAULT false;
