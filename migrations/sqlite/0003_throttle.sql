-- Attempt counters of the per-account login and password-reset limits (SQLite: one replica,
-- kept here so the limits survive a restart and match PostgreSQL). Times are unix seconds.
CREATE TABLE throttle_windows (
    scope        TEXT    NOT NULL,
    key          TEXT    NOT NULL,
    window_start INTEGER NOT NULL,
    -- window_start + the window's length: when the row stops mattering (prune).
    expires_at   INTEGER NOT NULL,
    attempts     INTEGER NOT NULL CHECK (attempts >= 0),
    PRIMARY KEY (scope, key)
);
CREATE INDEX throttle_windows_expires_at ON throttle_windows (expires_at);
