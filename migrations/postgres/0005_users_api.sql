-- The Users API (`GET /users`, `GET /users/trash`): one index per order it offers, each led by
-- `deleted` so a page of either list is read in order from the index, and ending in `id` (the
-- tie-break that makes paging stable). Emails are ordered byte-wise (COLLATE "C"), as SQLite
-- orders the lower-cased addresses, whatever the database's locale.
CREATE INDEX users_page_id ON users (deleted, id);
CREATE INDEX users_page_email ON users (deleted, email COLLATE "C");
CREATE INDEX users_page_created ON users (deleted, created, id);

-- The active admins, which a change that may remove one reads (and locks) to keep the last one:
-- a handful of rows however many users there are. Its predicate is the query's WHERE, word for
-- word, so the planner can use it.
CREATE INDEX users_active_admins ON users (id)
    WHERE role = 'admin' AND NOT disabled AND NOT deleted AND NOT invitation_pending;

-- Feed entries that update a session instead of ending it: its user's email or role changed,
-- so other replicas re-check their cached tokens of it (auth/revocation.rs).
ALTER TABLE session_revocations ADD COLUMN identity_changed boolean NOT NULL DEFAULT false;
