//! Persistence of users, sessions and the revocation feed, behind one [`Store`] trait.
//!
//! `auth/` talks only to this trait. Times are passed in by the caller (unix seconds) so the
//! rules above stay testable with an injected clock; the store never reads the wall clock.

mod backend;
mod postgres;
mod rows;
mod schema;
mod sql;
mod sqlite;
#[cfg(test)]
pub(crate) mod suite;
#[cfg(test)]
mod suite_users;
mod user_change;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use uuid::Uuid;

pub use crate::config::store_url::DEFAULT_TIMEOUT;
use crate::config::store_url::{StoreBackend, UNKNOWN_SCHEME};
pub use crate::types::{Role, SessionId, UnixTime, UserId};
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// A user as stored. `email` is trimmed and lower-cased by the caller before it gets here.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    pub email: String,
    /// PHC string (argon2id); `None` for an account that can only use SSO or a reset.
    pub password_hash: Option<String>,
    pub role: Role,
    pub disabled: bool,
    pub deleted: bool,
    pub sso_enabled: bool,
    /// Invited but has not set a password yet.
    pub invitation_pending: bool,
    /// The current invitation of a pending user (`None` once accepted, or never invited).
    pub invitation: Option<Invitation>,
    pub created: UnixTime,
    pub last_login: Option<UnixTime>,
}

/// What an invitation link is derived from: the link's token is an HMAC over the user, the
/// email and this record, so the same link can be shown again without storing the token, and
/// a new nonce (re-invite) makes every earlier link stop working.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invitation {
    /// Random, base64url; not a secret by itself (the HMAC key is).
    pub nonce: String,
    pub expires_at: UnixTime,
}

/// What [`Store::accept_invitation`] spends: `user`'s invitation with this `nonce`, for the
/// first password `password_hash`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvitationAcceptance<'a> {
    pub user: UserId,
    pub nonce: &'a str,
    /// PHC string of the password the user chose.
    pub password_hash: &'a str,
}

/// A password-reset request. Only the SHA-256 digest of the token is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordReset {
    /// Lower-case hex SHA-256 of the token.
    pub digest: String,
    pub user_id: UserId,
    pub created: UnixTime,
    pub expires_at: UnixTime,
    pub used_at: Option<UnixTime>,
}

/// What [`Store::complete_password_reset`] spends: the reset with this `digest`, claimed for
/// `user`, who gets the new password `password_hash`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResetCompletion<'a> {
    /// Lower-case hex SHA-256 of the token, as in [`PasswordReset::digest`].
    pub digest: &'a str,
    pub user: UserId,
    /// PHC string of the new password.
    pub password_hash: &'a str,
}

impl User {
    /// May this user log in and hold sessions?
    pub fn is_active(&self) -> bool {
        !self.disabled && !self.deleted && !self.invitation_pending
    }

    /// The user [`Store::create_user`] stores for `user`, under a fresh random id.
    fn from_new(user: NewUser) -> User {
        User {
            id: UserId::new_random(),
            email: user.email,
            password_hash: user.password_hash,
            role: user.role,
            disabled: false,
            deleted: false,
            sso_enabled: user.sso_enabled,
            invitation_pending: user.invitation_pending,
            invitation: user.invitation,
            created: user.created,
            last_login: None,
        }
    }

    /// An admin who may act as one: the role, and active. The last of these cannot be removed
    /// ([`ChangeRefused::LastAdmin`]).
    pub fn is_active_admin(&self) -> bool {
        self.role == Role::Admin && self.is_active()
    }

    /// This user with `changes` applied (what [`Store::change_user`] writes). Setting a
    /// password spends a pending invitation: the admin has given the user their way in.
    fn with_changes(&self, changes: &UserChanges) -> User {
        let mut after = self.clone();
        if let Some(email) = &changes.email {
            after.email.clone_from(email);
        }
        if let Some(hash) = &changes.password_hash {
            after.password_hash = Some(hash.clone());
            after.invitation_pending = false;
            after.invitation = None;
        }
        after.sso_enabled = changes.sso_enabled.unwrap_or(after.sso_enabled);
        after.role = changes.role.unwrap_or(after.role);
        after.disabled = changes.disabled.unwrap_or(after.disabled);
        after.deleted = changes.deleted.unwrap_or(after.deleted);
        after
    }

    /// Must the user's open sessions end when `self` becomes `after`? When the user can no
    /// longer log in as before: moved to the trash, disabled, a new password, or SSO only.
    /// (A new email or role keeps them; they are updated instead.)
    fn change_ends_sessions(&self, after: &User) -> bool {
        (after.deleted && !self.deleted)
            || (after.disabled && !self.disabled)
            || after.password_hash != self.password_hash
            || (after.sso_enabled && !self.sso_enabled)
    }
}

/// What [`Store::change_user`] changes; `None` leaves a field as it is. (No `Debug`: it may
/// hold a password hash.)
#[derive(Clone, Default, PartialEq, Eq)]
pub struct UserChanges {
    /// Lower-cased by the caller, like every stored email.
    pub email: Option<String>,
    /// PHC string of a new password.
    pub password_hash: Option<String>,
    pub sso_enabled: Option<bool>,
    pub role: Option<Role>,
    pub disabled: Option<bool>,
    /// `Some(true)` moves the user to the trash, `Some(false)` restores them; either only from
    /// the other state. Without it, a user in the trash cannot be changed.
    pub deleted: Option<bool>,
    /// The one session that stays open when the change ends the others (`change_password`
    /// keeps the caller's own).
    pub keep_session: Option<SessionId>,
}

impl UserChanges {
    /// Could this change take away a user's admin powers? Then the last-admin rule must look.
    fn may_remove_an_admin(&self) -> bool {
        self.role == Some(Role::User) || self.disabled == Some(true) || self.deleted == Some(true)
    }
}

/// Why [`Store::change_user`] changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeRefused {
    /// No such user, or in the trash (or, for a restore, not in it).
    NotFound,
    /// It would leave no active admin.
    LastAdmin,
    /// The new email is another user's (active, pending or in the trash).
    DuplicateEmail,
}

/// What [`Store::change_user`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedUser {
    pub before: User,
    pub user: User,
    /// Sessions the change ended, in the revocation feed.
    pub ended: Vec<SessionId>,
    /// Open sessions whose identity (email, role) changed, in the feed as updates.
    pub updated: Vec<SessionId>,
}

/// The order of [`Store::users_page`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserOrder {
    Id,
    Email,
    Created,
}

/// One page of users: those in the trash or those not, ordered by `order` (ties by id, so
/// every order is total and pages neither skip nor repeat a user).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserPage {
    pub trash: bool,
    pub order: UserOrder,
    pub descending: bool,
    pub limit: i64,
    pub offset: i64,
}

// Hand-written so a stray `{:?}` can never print a password hash.
impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("email", &self.email)
            .field("has_password", &self.password_hash.is_some())
            .field("role", &self.role)
            .field("disabled", &self.disabled)
            .field("deleted", &self.deleted)
            .field("sso_enabled", &self.sso_enabled)
            .field("invitation_pending", &self.invitation_pending)
            .field(
                "invitation_expires_at",
                &self.invitation.as_ref().map(|i| i.expires_at),
            )
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct NewUser {
    pub email: String,
    pub password_hash: Option<String>,
    pub role: Role,
    pub invitation_pending: bool,
    /// Set for an invited user (then `invitation_pending` is true too).
    pub invitation: Option<Invitation>,
    /// Only Okta login (credentials login is refused).
    pub sso_enabled: bool,
    pub created: UnixTime,
}

/// A login session: the chain of tokens issued by one login and its refreshes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: SessionId,
    pub user_id: UserId,
    pub created: UnixTime,
    /// Absolute end of the session (`created + session_max_age`); no token outlives it.
    pub expires_at: UnixTime,
    pub revoked_at: Option<UnixTime>,
    /// `jti` of the newest token of the session: the only one that may be refreshed.
    pub current_jti: Uuid,
    pub refresh_count: i64,
    pub last_refresh_at: Option<UnixTime>,
}

/// The compare-and-swap [`Store::rotate_session_token`] attempts on a session's current token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenSwap {
    pub session: SessionId,
    /// `jti` of the token presented for refresh: swapped only if it is the current one.
    pub presented_jti: Uuid,
    /// `jti` of the token issued in its place.
    pub new_jti: Uuid,
}

/// Outcome of [`Store::rotate_session_token`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// `current_jti` was the presented one and now is the new one.
    Rotated,
    /// The presented `jti` is not (or no longer) the session's current one: a reuse.
    NotCurrent,
    /// No such session, or it is revoked.
    Gone,
}

impl Rotation {
    /// Classifies a compare-and-swap that matched nothing by the session's `revoked_at` as read
    /// afterwards (`None`: no such session).
    fn of_failed_swap(revoked_at: Option<Option<UnixTime>>) -> Rotation {
        match revoked_at {
            Some(None) => Rotation::NotCurrent,
            None | Some(Some(_)) => Rotation::Gone,
        }
    }
}

/// One entry of the revocation feed every replica polls (see `auth::revocation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revocation {
    /// Monotonic cursor of the feed.
    pub seq: i64,
    pub session_id: SessionId,
    pub kind: FeedKind,
}

/// What a feed entry says of its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedKind {
    /// It ended: every token of it is refused.
    Ended,
    /// Its user's email or role changed: cached tokens of it are checked again, so the
    /// identity headers follow.
    IdentityChanged,
}

/// One record of the audit trail (built by `auth::audit`, which owns the kinds and what goes
/// in them). Never holds a token, password or link secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEvent {
    pub at: UnixTime,
    /// `login_succeeded`, `login_failed`, … (`auth::audit::AuditKind`).
    pub kind: String,
    pub user_id: Option<UserId>,
    pub email: Option<String>,
    /// The client address (`server::client_addr`: the peer, or the client a trusted proxy or a
    /// PROXY header named).
    pub client_ip: Option<IpAddr>,
    pub request_id: Option<String>,
    /// Short, non-secret facts: a failure's reason, the acting admin, a key id.
    pub detail: BTreeMap<String, String>,
}

/// One attempt counted by [`Store::throttle_reserve`]: `key` (an account's email) in `scope`
/// (`login`, `reset`), allowed `limit` times per window of `window` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleAttempt<'a> {
    pub scope: &'a str,
    pub key: &'a str,
    pub limit: u32,
    /// Seconds from a window's first attempt to its end.
    pub window: i64,
}

/// Which audit records [`Store::audit_events`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditFilter {
    /// Records of this user, or (see `email`) naming this email. Both `None`: everyone's.
    pub user_id: Option<UserId>,
    /// Also matches records with no user id, such as a failed login of an unknown address.
    pub email: Option<String>,
    /// Records at or after this time.
    pub since: Option<UnixTime>,
    /// The newest `limit` matching records.
    pub limit: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("a user with this email already exists")]
    DuplicateEmail,
    #[error("change refused: {0:?}")]
    Refused(ChangeRefused),
    #[error("invalid store url: {0}")]
    InvalidUrl(String),
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("creating the database directory: {0}")]
    Io(#[from] std::io::Error),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// What woke the revocation follower (see [`Store::revocation_listener`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedWakeup {
    /// A replica committed feed entries.
    Appended,
    /// The listener (re)subscribed: notifications sent while it was not subscribed are lost,
    /// so the follower must read the feed now.
    Subscribed,
}

/// Push notifications of feed appends. Only a wake-up: the feed read from the follower's cursor
/// stays the source of truth, so a lost or duplicated wake-up never loses or reorders anything.
#[async_trait]
pub trait FeedListener: Send {
    /// Waits for the next wake-up. After an error no wake-up arrives until the next
    /// [`FeedWakeup::Subscribed`], which a later call attempts.
    async fn next(&mut self) -> StoreResult<FeedWakeup>;
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Cheap round trip for `/readyz`.
    async fn ping(&self) -> StoreResult<()>;

    async fn count_users(&self) -> StoreResult<i64>;
    /// Fails with [`StoreError::DuplicateEmail`] if the (lower-cased) email is taken.
    async fn create_user(&self, user: NewUser) -> StoreResult<User>;
    async fn user_by_email(&self, email: &str) -> StoreResult<Option<User>>;
    async fn user_by_id(&self, id: UserId) -> StoreResult<Option<User>>;
    /// All users, oldest first.
    async fn list_users(&self) -> StoreResult<Vec<User>>;
    /// One page of the users in the trash or not (`GET /users`, `GET /users/trash`), through
    /// an index whatever the order.
    async fn users_page(&self, page: &UserPage) -> StoreResult<Vec<User>>;
    /// Changes a user, atomically with its consequences: the sessions it ends are revoked and
    /// fed to other replicas; the open sessions of a user whose email or role changed are fed
    /// as updates. Refused if it would leave no active admin (checked under locks, so two
    /// admins demoting each other at once cannot both succeed).
    async fn change_user(
        &self,
        id: UserId,
        changes: &UserChanges,
        at: UnixTime,
    ) -> StoreResult<Result<ChangedUser, ChangeRefused>>;
    async fn record_login(&self, id: UserId, at: UnixTime) -> StoreResult<()>;
    /// Sets `disabled` of the user with this email through [`Store::change_user`] (disabling
    /// ends every session). Returns the updated user, `None` if unknown or in the trash.
    async fn set_user_disabled(
        &self,
        email: &str,
        disabled: bool,
        at: UnixTime,
    ) -> StoreResult<Option<User>> {
        let Some(user) = self.user_by_email(email).await? else {
            return Ok(None);
        };
        let changes = UserChanges {
            disabled: Some(disabled),
            ..UserChanges::default()
        };
        match self.change_user(user.id, &changes, at).await? {
            Ok(changed) => Ok(Some(changed.user)),
            Err(ChangeRefused::NotFound) => Ok(None),
            Err(refused) => Err(StoreError::Refused(refused)),
        }
    }

    async fn create_session(&self, session: &Session) -> StoreResult<()>;
    async fn session(&self, id: SessionId) -> StoreResult<Option<Session>>;
    /// Compare-and-swap of `current_jti`: only the holder of the current token can refresh.
    async fn rotate_session_token(&self, swap: TokenSwap, at: UnixTime) -> StoreResult<Rotation>;
    /// Revokes one session (no-op if already revoked or unknown) and appends it to the
    /// revocation feed. Returns whether this call revoked it.
    async fn revoke_session(&self, id: SessionId, at: UnixTime) -> StoreResult<bool>;
    /// Revokes every open session of a user; returns their ids.
    async fn revoke_user_sessions(&self, user: UserId, at: UnixTime)
    -> StoreResult<Vec<SessionId>>;
    /// Feed entries with `seq > after`, oldest first, at most `limit`.
    async fn revocations_since(&self, after: i64, limit: i64) -> StoreResult<Vec<Revocation>>;
    /// Highest `seq` in the feed (0 when empty): where a fresh replica starts polling.
    async fn revocation_cursor(&self) -> StoreResult<i64>;
    /// Deletes feed entries older than `before`, sessions that ended before it and throttle
    /// windows that ended before it.
    async fn prune(&self, before: UnixTime) -> StoreResult<u64>;
    /// Counts one attempt of `attempt.key` in `attempt.scope` (per-account login or reset limit)
    /// unless it already has `attempt.limit` in its window, atomically (replicas share the
    /// count). A window is `attempt.window` seconds from its first attempt; an attempt after it
    /// starts a new one. Returns
    /// the start of the window counted in (for [`Store::throttle_refund`]), or
    /// `Err(seconds until the window ends)` when over the limit.
    async fn throttle_reserve(
        &self,
        attempt: ThrottleAttempt<'_>,
        now: UnixTime,
    ) -> StoreResult<Result<UnixTime, u64>>;
    /// Takes back one attempt counted in the window that started at `window_start`; nothing if
    /// that window has since been replaced.
    async fn throttle_refund(
        &self,
        scope: &str,
        key: &str,
        window_start: UnixTime,
    ) -> StoreResult<()>;
    /// Push wake-ups for feed appends by any replica, or `None` when the backend has none
    /// (SQLite: one replica, which revokes in its own cache directly and polls for the CLI's
    /// changes). Connects lazily: the first [`FeedListener::next`] subscribes.
    fn revocation_listener(&self) -> Option<Box<dyn FeedListener>> {
        None
    }

    /// Gives a still-pending user a new invitation (and `role`), which makes every earlier
    /// link stop working. Returns the updated user; `None` if the user is not pending.
    async fn renew_invitation(
        &self,
        user: UserId,
        invitation: &Invitation,
        role: Role,
    ) -> StoreResult<Option<User>>;
    /// Spends an invitation, atomically: only while the user is still pending with exactly
    /// `acceptance.nonce` and the invitation has not expired at `at`. Sets the password, clears the
    /// invitation and pending flag. Returns whether it did.
    async fn accept_invitation(
        &self,
        acceptance: InvitationAcceptance<'_>,
        at: UnixTime,
    ) -> StoreResult<bool>;
    /// Records a reset; every earlier unused reset of the same user stops working.
    async fn create_password_reset(&self, reset: &PasswordReset) -> StoreResult<()>;
    async fn password_reset(&self, digest: &str) -> StoreResult<Option<PasswordReset>>;
    /// Spends the reset `completion.digest`, atomically: only if it is unused, unexpired at `at`
    /// and belongs to `completion.user`. Sets the password and revokes every open session of the
    /// user (appending them to the revocation feed). Returns the revoked sessions; `None` if it
    /// was not spendable.
    async fn complete_password_reset(
        &self,
        completion: ResetCompletion<'_>,
        at: UnixTime,
    ) -> StoreResult<Option<Vec<SessionId>>>;

    /// Appends audit records, all or none.
    async fn append_audit(&self, events: &[AuditEvent]) -> StoreResult<()>;
    /// The newest `filter.limit` matching records, returned oldest first (by time, then in
    /// the order they were appended).
    async fn audit_events(&self, filter: &AuditFilter) -> StoreResult<Vec<AuditEvent>>;
    /// Deletes audit records older than `before` (`audit.retention`); returns how many.
    async fn prune_audit(&self, before: UnixTime) -> StoreResult<u64>;
}

/// `detail` as stored: a JSON object.
pub(crate) fn detail_json(detail: &BTreeMap<String, String>) -> String {
    serde_json::to_string(detail).unwrap_or_else(|_| "{}".to_owned())
}

/// Opens the store named by `url` (creating and migrating it as needed): `sqlite:` for one
/// replica, `postgres://` or `postgresql://` for several replicas sharing one database.
pub async fn open(url: &str) -> StoreResult<Arc<dyn Store>> {
    open_with_timeout(url, DEFAULT_TIMEOUT).await
}

/// As [`open`]; on PostgreSQL, waiting for a connection fails after `timeout` (`store.timeout`).
pub async fn open_with_timeout(url: &str, timeout: Duration) -> StoreResult<Arc<dyn Store>> {
    match StoreBackend::of(url) {
        Some(StoreBackend::Sqlite) => Ok(Arc::new(SqliteStore::open(url).await?)),
        Some(StoreBackend::Postgres) => Ok(Arc::new(
            PostgresStore::open_with_timeout(postgres::connect_options(url)?, timeout).await?,
        )),
        None => Err(StoreError::InvalidUrl(UNKNOWN_SCHEME.into())),
    }
}
