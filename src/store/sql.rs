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

use std::borrow::Cow;

use sqlx::error::BoxDynError;
use sqlx::{Arguments, Encode, Type};
use uuid::Uuid;

use super::{
    AuditEvent, AuditFilter, Invitation, InvitationAcceptance, PasswordReset, Role, Session,
    SessionId, ThrottleAttempt, TokenSwap, UnixTime, User, UserId, UserOrder, UserPage,
    detail_json,
};

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

pub(super) const REVOCATIONS_SINCE: &str = "SELECT seq, session_id, identity_changed \
     FROM session_revocations WHERE seq > $1 ORDER BY seq LIMIT $2";

/// A user's sessions that are open at `$2`, in id order (the lock order).
pub(super) const OPEN_SESSIONS: &str = "SELECT id FROM sessions \
     WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $2 ORDER BY id";

/// Writes every field a [`super::UserChanges`] may change (the row is locked and was read in
/// the same transaction, so the fields not changed are written back as they are).
pub(super) const UPDATE_USER: &str = "UPDATE users SET email = $1, password_hash = $2, \
     role = $3, disabled = $4, deleted = $5, sso_enabled = $6, invitation_pending = $7, \
     invitation_nonce = $8, invitation_expires_at = $9 WHERE id = $10";

/// A page of [`super::Store::users_page`] in an order both dialects write alike (binds
/// `deleted`, limit, offset). Every order ends in `id`, so it is total.
macro_rules! users_page {
    ($order:literal) => {
        concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE deleted = $1 ORDER BY ",
            $order,
            " LIMIT $2 OFFSET $3"
        )
    };
}

pub(super) use users_page;

/// The ids of the active admins, in id order (the lock order), as the last-admin rule reads
/// them; each backend adds its row lock. The WHERE is the predicate of the partial index
/// `users_active_admins` (migration 0005), word for word, so the planner uses it.
macro_rules! active_admins {
    () => {
        "SELECT id FROM users WHERE role = 'admin' \
         AND NOT disabled AND NOT deleted AND NOT invitation_pending ORDER BY id"
    };
}

pub(super) use active_admins;

pub(super) const USERS_BY_ID: &str = users_page!("id ASC");
pub(super) const USERS_BY_ID_DESC: &str = users_page!("id DESC");
pub(super) const USERS_BY_CREATED: &str = users_page!("created ASC, id ASC");
pub(super) const USERS_BY_CREATED_DESC: &str = users_page!("created DESC, id DESC");

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

/// Seconds until a refused window ends (at least one, also when the window has just gone).
pub(super) fn retry_after(window_end: Option<UnixTime>, now: UnixTime) -> u64 {
    window_end.map_or(1, |ends| (ends - now).max(1) as u64)
}

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

/// One value bound to a statement. A UUID stays a UUID here: how one is stored (text or a native
/// `uuid`) is the backend's choice, made once in [`Statement::arguments`].
#[derive(Clone)]
pub(super) enum Param<'a> {
    Text(Cow<'a, str>),
    OptText(Option<Cow<'a, str>>),
    Int(i64),
    OptInt(Option<i64>),
    Flag(bool),
    Uuid(Uuid),
    OptUuid(Option<Uuid>),
}

macro_rules! param_from {
    ($($type:ty => |$value:ident| $param:expr;)*) => {
        $(impl<'a> From<$type> for Param<'a> {
            fn from($value: $type) -> Param<'a> {
                $param
            }
        })*
    };
}

param_from! {
    &'a str => |text| Param::Text(Cow::Borrowed(text));
    &'a String => |text| Param::Text(Cow::Borrowed(text));
    String => |text| Param::Text(Cow::Owned(text));
    Option<&'a str> => |text| Param::OptText(text.map(Cow::Borrowed));
    Option<String> => |text| Param::OptText(text.map(Cow::Owned));
    i64 => |int| Param::Int(int);
    Option<i64> => |int| Param::OptInt(int);
    bool => |flag| Param::Flag(flag);
    Uuid => |id| Param::Uuid(id);
    UserId => |id| Param::Uuid(id.0);
    SessionId => |id| Param::Uuid(id.0);
    Option<UserId> => |id| Param::OptUuid(id.map(|id| id.0));
}

/// The parameters of a statement, in placeholder order.
macro_rules! params {
    ($($value:expr),* $(,)?) => {
        vec![$($crate::store::sql::Param::from($value)),*]
    };
}

pub(super) use params;

/// A statement's text with the values for its placeholders, kept together so the order of the
/// values is written once, next to the text it must match.
#[derive(Clone)]
pub(super) struct Statement<'a> {
    pub(super) text: &'static str,
    params: Vec<Param<'a>>,
}

impl<'a> Statement<'a> {
    pub(super) fn new(text: &'static str, params: Vec<Param<'a>>) -> Statement<'a> {
        Statement { text, params }
    }

    /// The statement as `EXPLAIN <how> …`, with the same parameters (tests read its plan).
    #[cfg(test)]
    pub(super) fn explained(self, how: &str) -> Statement<'a> {
        let text = Box::leak(format!("EXPLAIN {how}{}", self.text).into_boxed_str());
        Statement::new(text, self.params)
    }

    /// The values as a backend's arguments, each UUID stored as `uuid` makes it. An encoding
    /// error is returned, as sqlx's own `bind` does, when the statement runs.
    pub(super) fn arguments<A, U>(self, uuid: fn(Uuid) -> U) -> Result<A, BoxDynError>
    where
        A: Arguments,
        Cow<'a, str>: Encode<'a, A::Database> + Type<A::Database>,
        i64: Encode<'a, A::Database> + Type<A::Database>,
        bool: Encode<'a, A::Database> + Type<A::Database>,
        U: Encode<'a, A::Database> + Type<A::Database> + 'a,
        Option<Cow<'a, str>>: Encode<'a, A::Database> + Type<A::Database>,
        Option<i64>: Encode<'a, A::Database> + Type<A::Database>,
        Option<U>: Encode<'a, A::Database> + Type<A::Database>,
    {
        let mut arguments = A::default();
        for param in self.params {
            match param {
                Param::Text(text) => arguments.add(text),
                Param::OptText(text) => arguments.add(text),
                Param::Int(int) => arguments.add(int),
                Param::OptInt(int) => arguments.add(int),
                Param::Flag(flag) => arguments.add(flag),
                Param::Uuid(id) => arguments.add(uuid(id)),
                Param::OptUuid(id) => arguments.add(id.map(uuid)),
            }?;
        }
        Ok(arguments)
    }
}

/// The statements whose text differs by dialect (see the module docs), filled in by each backend;
/// their parameters are the same on both.
pub(super) struct Dialect {
    /// Case-insensitive match on `email`.
    pub(super) user_by_email: &'static str,
    /// Oldest first, ties in insertion order.
    pub(super) list_users: &'static str,
    /// [`users_page`] by email, ascending and descending: the collation that orders the
    /// lower-cased addresses byte-wise and matches the index is the dialect's.
    pub(super) users_by_email: [&'static str; 2],
    /// Ids of the active admins, locking their rows where the backend needs row locks (in id
    /// order, the lock order of the other transactions).
    pub(super) lock_active_admins: &'static str,
    /// Revokes a user's open sessions but the one to keep (`$3`), returning their ids.
    pub(super) revoke_open_sessions: &'static str,
    pub(super) prune_sessions: &'static str,
    pub(super) audit_events: &'static str,
}

impl Dialect {
    pub(super) fn user_by_email<'a>(&self, email: &'a str) -> Statement<'a> {
        Statement::new(self.user_by_email, params![email])
    }

    pub(super) fn list_users(&self) -> Statement<'static> {
        Statement::new(self.list_users, params![])
    }

    pub(super) fn users_page(&self, page: &UserPage) -> Statement<'static> {
        let text = match (page.order, page.descending) {
            (UserOrder::Id, false) => USERS_BY_ID,
            (UserOrder::Id, true) => USERS_BY_ID_DESC,
            (UserOrder::Created, false) => USERS_BY_CREATED,
            (UserOrder::Created, true) => USERS_BY_CREATED_DESC,
            (UserOrder::Email, descending) => self.users_by_email[usize::from(descending)],
        };
        Statement::new(text, params![page.trash, page.limit, page.offset])
    }

    pub(super) fn lock_active_admins(&self) -> Statement<'static> {
        Statement::new(self.lock_active_admins, params![])
    }

    /// `keep`: a session to leave open (the nil id, which no session has, when none).
    pub(super) fn revoke_open_sessions(
        &self,
        user: UserId,
        at: UnixTime,
        keep: Option<SessionId>,
    ) -> Statement<'static> {
        let keep = keep.map_or(Uuid::nil(), |s| s.0);
        Statement::new(self.revoke_open_sessions, params![at, user, keep])
    }

    pub(super) fn prune_sessions(&self, before: UnixTime) -> Statement<'static> {
        Statement::new(self.prune_sessions, params![before])
    }

    /// Binds the time, user, email and limit of `filter`.
    pub(super) fn audit_events<'a>(&self, filter: &'a AuditFilter) -> Statement<'a> {
        Statement::new(
            self.audit_events,
            params![
                filter.since.unwrap_or(UnixTime::MIN),
                filter.user_id,
                filter.email.as_deref(),
                filter.limit,
            ],
        )
    }
}

pub(super) fn ping() -> Statement<'static> {
    Statement::new(PING, params![])
}

pub(super) fn count_users() -> Statement<'static> {
    Statement::new(COUNT_USERS, params![])
}

pub(super) fn insert_user(user: &User) -> Statement<'_> {
    let mut params = params![user.id];
    params.extend(changeable_user_fields(user));
    params.extend(params![user.created, user.last_login]);
    Statement::new(INSERT_USER, params)
}

/// The columns of `users` that [`UPDATE_USER`] writes, in its order (which is also their
/// order in [`INSERT_USER`], after the id).
fn changeable_user_fields(user: &User) -> Vec<Param<'_>> {
    let invitation = user.invitation.as_ref();
    params![
        &user.email,
        user.password_hash.as_deref(),
        user.role.as_str(),
        user.disabled,
        user.deleted,
        user.sso_enabled,
        user.invitation_pending,
        invitation.map(|i| i.nonce.as_str()),
        invitation.map(|i| i.expires_at),
    ]
}

pub(super) fn user_by_id(id: UserId) -> Statement<'static> {
    Statement::new(USER_BY_ID, params![id])
}

pub(super) fn record_login(id: UserId, at: UnixTime) -> Statement<'static> {
    Statement::new(RECORD_LOGIN, params![at, id])
}

pub(super) fn insert_session(session: &Session) -> Statement<'static> {
    Statement::new(
        INSERT_SESSION,
        params![
            session.id,
            session.user_id,
            session.created,
            session.expires_at,
            session.revoked_at,
            session.current_jti,
            session.refresh_count,
            session.last_refresh_at,
        ],
    )
}

pub(super) fn session_by_id(id: SessionId) -> Statement<'static> {
    Statement::new(SESSION_BY_ID, params![id])
}

pub(super) fn rotate_session_token(swap: TokenSwap, at: UnixTime) -> Statement<'static> {
    let TokenSwap {
        session,
        presented_jti,
        new_jti,
    } = swap;
    Statement::new(
        ROTATE_SESSION_TOKEN,
        params![new_jti, at, session, presented_jti],
    )
}

pub(super) fn session_revoked_at(id: SessionId) -> Statement<'static> {
    Statement::new(SESSION_REVOKED_AT, params![id])
}

pub(super) fn revoke_session(id: SessionId, at: UnixTime) -> Statement<'static> {
    Statement::new(REVOKE_SESSION, params![at, id])
}

pub(super) fn revocations_since(after: i64, limit: i64) -> Statement<'static> {
    Statement::new(REVOCATIONS_SINCE, params![after, limit])
}

pub(super) fn revocation_cursor() -> Statement<'static> {
    Statement::new(REVOCATION_CURSOR, params![])
}

pub(super) fn prune_revocations(before: UnixTime) -> Statement<'static> {
    Statement::new(PRUNE_REVOCATIONS, params![before])
}

pub(super) fn prune_password_resets(before: UnixTime) -> Statement<'static> {
    Statement::new(PRUNE_PASSWORD_RESETS, params![before])
}

pub(super) fn prune_throttle_windows(before: UnixTime) -> Statement<'static> {
    Statement::new(PRUNE_THROTTLE_WINDOWS, params![before])
}

pub(super) fn throttle_reserve(attempt: ThrottleAttempt<'_>, now: UnixTime) -> Statement<'_> {
    let ThrottleAttempt {
        scope,
        key,
        limit,
        window,
    } = attempt;
    Statement::new(
        THROTTLE_RESERVE,
        params![scope, key, now, window, i64::from(limit)],
    )
}

pub(super) fn throttle_window_end<'a>(scope: &'a str, key: &'a str) -> Statement<'a> {
    Statement::new(THROTTLE_WINDOW_END, params![scope, key])
}

pub(super) fn throttle_refund<'a>(
    scope: &'a str,
    key: &'a str,
    window_start: UnixTime,
) -> Statement<'a> {
    Statement::new(THROTTLE_REFUND, params![scope, key, window_start])
}

pub(super) fn renew_invitation<'a>(
    user: UserId,
    invitation: &'a Invitation,
    role: Role,
) -> Statement<'a> {
    Statement::new(
        RENEW_INVITATION,
        params![
            &invitation.nonce,
            invitation.expires_at,
            role.as_str(),
            user
        ],
    )
}

pub(super) fn accept_invitation(
    acceptance: InvitationAcceptance<'_>,
    at: UnixTime,
) -> Statement<'_> {
    let InvitationAcceptance {
        user,
        nonce,
        password_hash,
    } = acceptance;
    Statement::new(ACCEPT_INVITATION, params![password_hash, user, nonce, at])
}

pub(super) fn supersede_password_resets(reset: &PasswordReset) -> Statement<'static> {
    Statement::new(
        SUPERSEDE_PASSWORD_RESETS,
        params![reset.created, reset.user_id],
    )
}

pub(super) fn insert_password_reset(reset: &PasswordReset) -> Statement<'_> {
    Statement::new(
        INSERT_PASSWORD_RESET,
        params![
            &reset.digest,
            reset.user_id,
            reset.created,
            reset.expires_at,
            reset.used_at,
        ],
    )
}

pub(super) fn password_reset_by_digest(digest: &str) -> Statement<'_> {
    Statement::new(PASSWORD_RESET_BY_DIGEST, params![digest])
}

pub(super) fn spend_password_reset(digest: &str, user: UserId, at: UnixTime) -> Statement<'_> {
    Statement::new(SPEND_PASSWORD_RESET, params![at, digest, user])
}

pub(super) fn open_sessions(user: UserId, at: UnixTime) -> Statement<'static> {
    Statement::new(OPEN_SESSIONS, params![user, at])
}

pub(super) fn update_user(user: &User) -> Statement<'_> {
    let mut params = changeable_user_fields(user);
    params.extend(params![user.id]);
    Statement::new(UPDATE_USER, params)
}

pub(super) fn set_password(user: UserId, password_hash: &str) -> Statement<'_> {
    Statement::new(SET_PASSWORD, params![password_hash, user])
}

pub(super) fn insert_audit_event(event: &AuditEvent) -> Statement<'_> {
    Statement::new(
        INSERT_AUDIT_EVENT,
        params![
            event.at,
            &event.kind,
            event.user_id,
            event.email.as_deref(),
            event.client_ip.map(|ip| ip.to_string()),
            event.request_id.as_deref(),
            detail_json(&event.detail),
        ],
    )
}

pub(super) fn prune_audit(before: UnixTime) -> Statement<'static> {
    Statement::new(PRUNE_AUDIT, params![before])
}
