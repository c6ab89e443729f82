-- Attempt counters of the per-account login and password-reset limits, shared by every
-- replica (PostgreSQL). One fixed window per (scope, key); times are bigint unix seconds.
CREATE TABLE throttle_windows (
    scope        text    NOT NULL,
    key          text    NOT NULL,
    window_start bigint  NOT NULL,
    -- window_start + the window's length: when the row stops mattering (prune).
    expires_at   bigint  NOT NULL,
    attempts     integer NOT NULL CHECK (attempts >= 0),
    PRIMARY KEY (scope, key)
);
CREATE INDEX throttle_windows_expires_at ON throttle_windows (expires_at);
