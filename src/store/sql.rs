//! The statement texts both backends run, written once.
//!
//! The SQLite and PostgreSQL schemas (see `migrations/`) keep the same tables and column names,
//! and sqlx binds `$1, $2, …` on SQLite as it does on PostgreSQL, so most statements read the
//! same on both. What really differs by dialect (case-insensitive email, the insertion-order
//! tie-break, row locks, the revocation feed's append, parameter casts) stays with its backend,
//! which builds those texts from the column lists exported here.

/// The columns of `users` that make a [`super::User`], in the order of [`INSERT_USER`].
macro_rules! user_columns {
    () => {
        "id, email, password_hash, role, disabled, deleted, sso_enabled, invitation_pending, \
         invitation_nonce, invitation_expires_at, created, last_login"
    };
}

/// The columns of `sessions` that make a [`super::Session`], in the order of [`INSERT_SESSION`].
macro_rules! session_columns {
    () => {
        "id, user_id, created, expires_at, revoked_at, current_jti, refresh_count, last_refresh_at"
    };
}

/// The columns of `password_resets`, in the order of [`INSERT_PASSWORD_RESET`].
macro_rules! password_reset_columns {
    () => {
        "digest, user_id, created, expires_at, used_at"
    };
}

/// The columns of `audit_events` that make an [`super::AuditEvent`], in the order of
/// [`INSERT_AUDIT_EVENT`].
macro_rules! audit_columns {
    () => {
        "at, kind, user_id, email, client_ip, request_id, detail"
    };
}

pub(super) use {audit_columns, user_columns};

pub(super) const PING: &str = "SELECT 1";

pub(super) const COUNT_USERS: &str = "SELECT COUNT(*) FROM users";

pub(super) const INSERT_USER: &str = concat!(
    "INSERT INTO users (",
    user_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
);

pub(super) const USER_BY_ID: &str =
    concat!("SELECT ", user_columns!(), " FROM users WHERE id = $1");

pub(super) const RECORD_LOGIN: &str = "UPDATE users SET last_login = $1 WHERE id = $2";

/// `NOT sso_enabled`: every SSO login calls this; only the first one writes a row version.
pub(super) const SET_SSO_ENABLED: &str =
    "UPDATE users SET sso_enabled = TRUE WHERE id = $1 AND NOT sso_enabled";

pub(super) const INSERT_SESSION: &str = concat!(
    "INSERT INTO sessions (",
    session_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
);

pub(super) const SESSION_BY_ID: &str = concat!(
    "SELECT ",
    session_columns!(),
    " FROM sessions WHERE id = $1"
);

/// The compare and the swap are one statement, so of two refreshes presenting the same token
/// exactly one can win.
pub(super) const ROTATE_SESSION_TOKEN: &str = "UPDATE sessions \
     SET current_jti = $1, refresh_count = refresh_count + 1, last_refresh_at = $2 \
     WHERE id = $3 AND current_jti = $4 AND revoked_at IS NULL";

pub(super) const SESSION_REVOKED_AT: &str = "SELECT revoked_at FROM sessions WHERE id = $1";

pub(super) const REVOKE_SESSION: &str =
    "UPDATE sessions SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL";

pub(super) const REVOCATIONS_SINCE: &str =
    "SELECT seq, session_id FROM session_revocations WHERE seq > $1 ORDER BY seq LIMIT $2";

pub(super) const REVOCATION_CURSOR: &str = "SELECT COALESCE(MAX(seq), 0) FROM session_revocations";

pub(super) const PRUNE_REVOCATIONS: &str = "DELETE FROM session_revocations WHERE revoked_at < $1";

pub(super) const PRUNE_PASSWORD_RESETS: &str = "DELETE FROM password_resets WHERE expires_at < $1";

pub(super) const PRUNE_THROTTLE_WINDOWS: &str =
    "DELETE FROM throttle_windows WHERE expires_at < $1";

/// One statement, so replicas racing on one key are serialized by its row: insert the first
/// window, or start a new window over an ended one, or count one more in a window below the
/// limit. A full, current window matches the WHERE of neither and returns nothing. (SET
/// expressions all read the row as it was.) Binds scope, key, now, window length, limit.
pub(super) const THROTTLE_RESERVE: &str = "INSERT INTO throttle_windows AS t \
     (scope, key, window_start, expires_at, attempts) \
     VALUES ($1, $2, $3, $3 + $4, 1) \
     ON CONFLICT (scope, key) DO UPDATE SET \
     window_start = CASE WHEN t.expires_at <= $3 THEN $3 ELSE t.window_start END, \
     expires_at = CASE WHEN t.expires_at <= $3 THEN $3 + $4 ELSE t.expires_at END, \
     attempts = CASE WHEN t.expires_at <= $3 THEN 1 ELSE t.attempts + 1 END \
     WHERE t.expires_at <= $3 OR t.attempts < $5 \
     RETURNING window_start";

/// Only the retry hint of a refused [`THROTTLE_RESERVE`]; the decision was made there.
pub(super) const THROTTLE_WINDOW_END: &str =
    "SELECT expires_at FROM throttle_windows WHERE scope = $1 AND key = $2";

pub(super) const THROTTLE_REFUND: &str = "UPDATE throttle_windows SET attempts = attempts - 1 \
     WHERE scope = $1 AND key = $2 AND window_start = $3 AND attempts > 0";

pub(super) const RENEW_INVITATION: &str = concat!(
    "UPDATE users SET invitation_nonce = $1, invitation_expires_at = $2, role = $3 \
     WHERE id = $4 AND invitation_pending RETURNING ",
    user_columns!()
);

/// Check and spend are one statement, so of concurrent accepts of one link exactly one wins
/// (like [`ROTATE_SESSION_TOKEN`]).
pub(super) const ACCEPT_INVITATION: &str = "UPDATE users SET password_hash = $1, \
     invitation_pending = FALSE, invitation_nonce = NULL, invitation_expires_at = NULL \
     WHERE id = $2 AND invitation_pending AND invitation_nonce = $3 \
     AND invitation_expires_at > $4";

/// Superseded: an earlier link stops working once a newer one is sent.
pub(super) const SUPERSEDE_PASSWORD_RESETS: &str =
    "UPDATE password_resets SET used_at = $1 WHERE user_id = $2 AND used_at IS NULL";

pub(super) const INSERT_PASSWORD_RESET: &str = concat!(
    "INSERT INTO password_resets (",
    password_reset_columns!(),
    ") VALUES ($1, $2, $3, $4, $5)"
);

pub(super) const PASSWORD_RESET_BY_DIGEST: &str = concat!(
    "SELECT ",
    password_reset_columns!(),
    " FROM password_resets WHERE digest = $1"
);

/// Binds the time of spending, the digest and the user.
pub(super) const SPEND_PASSWORD_RESET: &str = "UPDATE password_resets SET used_at = $1 \
     WHERE digest = $2 AND user_id = $3 AND used_at IS NULL AND expires_at > $1";

pub(super) const SET_PASSWORD: &str = "UPDATE users SET password_hash = $1 WHERE id = $2";

pub(super) const INSERT_AUDIT_EVENT: &str = concat!(
    "INSERT INTO audit_events (",
    audit_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7)"
);

pub(super) const PRUNE_AUDIT: &str = "DELETE FROM audit_events WHERE at < $1";
