//! PostgreSQL implementation of [`Store`], so several gateway replicas can share users, sessions
//! and the revocation feed: connection setup, the embedded schema migrations and the queries
//! behind each trait method.
//!
//! Transactions run at PostgreSQL's default READ COMMITTED isolation:
//!
//! - The compare-and-swap methods (`rotate_session_token`, `accept_invitation`, `revoke_session`
//!   and spending a reset in `complete_password_reset`) decide with one conditional `UPDATE`. A
//!   concurrent `UPDATE` of the same row waits for the row lock and then re-checks its `WHERE`
//!   clause against the committed row, so of several racers exactly one matches.
//! - The multi-statement changes of a user's password resets (`create_password_reset`,
//!   `complete_password_reset`) first lock the user's row (`SELECT ... FOR NO KEY UPDATE`), which
//!   serializes them per user like SQLite's `BEGIN IMMEDIATE` does globally.
//! - Locks are always taken in the same order — the user row, then reset rows, then session rows
//!   (several of them in id order), then the feed lock of [`append_revocations`] — so these
//!   transactions cannot deadlock each other.
//!
//! Pooled connections that die under the pool are the other PostgreSQL-only concern: every
//! method runs through [`PostgresStore::run`] with the [`Replay`] class that says whether it may
//! run again on another connection (see `replay`). The revocation feed's ordered append and its
//! LISTEN/NOTIFY wake-ups are in `feed`.

mod feed;
mod replay;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, Row, SqlSafeStr};
use uuid::Uuid;

use crate::config::store_url::postgres_options;

use super::rows::{
    UuidColumns, audit_event_from_row, password_reset_from_row, revocation_from_row,
    session_from_row, user_from_row,
};
use super::sql::{self, audit_columns, user_columns};
use super::{
    AuditEvent, AuditFilter, DEFAULT_TIMEOUT, FeedListener, Invitation, NewUser, PasswordReset,
    Revocation, Role, Rotation, Session, SessionId, Store, StoreError, StoreResult, UnixTime, User,
    UserId, detail_json,
};

use feed::{PgFeedListener, append_revocations};
use replay::{ConnectionLoss, Replay};

/// Embedded so the binary carries its schema without sqlx's `migrate!` macro. Versions are kept
/// parallel to `migrations/sqlite`.
const INIT_SQL: &str = include_str!("../../../migrations/postgres/0001_init.sql");
const INVITATIONS_AND_RESETS_SQL: &str =
    include_str!("../../../migrations/postgres/0002_invitations_and_resets.sql");
const THROTTLE_SQL: &str = include_str!("../../../migrations/postgres/0003_throttle.sql");
const AUDIT_SQL: &str = include_str!("../../../migrations/postgres/0004_audit.sql");

/// Connections per replica. Queries are short; argon2 and the network, not the database, bound
/// a gateway, and PostgreSQL's default `max_connections` (100) leaves room for several replicas.
const POOL_SIZE: u32 = 10;

/// A connection that sat idle this long is pinged before use. Not every acquire: the store
/// answers the data plane's cache misses, and a ping per acquire would add a round trip to each
/// of them (`test_before_acquire`) to spare the rare call that meets a dead connection one failed
/// round trip, which [`PostgresStore::run`] already retries. Long-idle connections are still
/// pinged because they are the ones a NAT or firewall drops silently: the ping waits within the
/// acquire timeout, a statement on such a socket would wait for TCP to give up. Once a dead
/// connection has been met, every connection idle since then is pinged too
/// ([`ConnectionLoss`]): a restart or failover kills them all at once.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(30);

/// The unique index behind [`StoreError::DuplicateEmail`].
const EMAIL_INDEX: &str = "users_email_lower";

// The statements that differ from SQLite's; the rest are in `sql`.

/// Matches the expression of the unique index on `lower(email)`, which serves the lookup.
const USER_BY_EMAIL: &str = concat!(
    "SELECT ",
    user_columns!(),
    " FROM users WHERE lower(email) = lower($1)"
);

/// insertion_seq breaks ties in insertion order.
const LIST_USERS: &str = concat!(
    "SELECT ",
    user_columns!(),
    " FROM users ORDER BY created, insertion_seq"
);

/// Locks the user row first, like the reset transactions.
const SET_USER_DISABLED: &str = concat!(
    "UPDATE users SET disabled = $1 WHERE lower(email) = lower($2) RETURNING ",
    user_columns!()
);

/// See [`lock_user`].
const LOCK_USER: &str = "SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE";

/// The rows are locked in id order so that two of these for one user (say a disable racing a
/// password reset) cannot deadlock; a session revoked meanwhile drops out of the sub-select when
/// its lock is granted and its `revoked_at` re-checked.
const REVOKE_OPEN_SESSIONS: &str = "UPDATE sessions SET revoked_at = $1 \
     WHERE id IN (SELECT id FROM sessions WHERE user_id = $2 AND revoked_at IS NULL \
                  ORDER BY id FOR UPDATE) \
     RETURNING id";

/// Sessions in id order: the lock order of the other transactions (an ended session may still be
/// open and be revoked meanwhile).
const PRUNE_SESSIONS: &str = "DELETE FROM sessions WHERE id IN \
     (SELECT id FROM sessions WHERE expires_at < $1 ORDER BY id FOR UPDATE)";

/// PostgreSQL must know a parameter's type even where it is only compared with NULL.
const AUDIT_EVENTS: &str = concat!(
    "SELECT ",
    audit_columns!(),
    " FROM audit_events WHERE at >= $1 \
     AND (($2::uuid IS NULL AND $3::text IS NULL) OR user_id = $2 OR email = $3) \
     ORDER BY at DESC, seq DESC LIMIT $4"
);

#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// One connection, outside `pool`, held by the revocation listener; connected lazily.
    listener_pool: PgPool,
    /// Shared with `pool`'s `before_acquire`.
    loss: Arc<ConnectionLoss>,
    /// `store.timeout`, which also bounds [`Replay::Once`]'s ping.
    timeout: Duration,
}

impl PostgresStore {
    /// Connects to and migrates the database at `url` (`postgres://` or `postgresql://`, libpq
    /// style: `sslmode`, `sslrootcert`, `options`, `application_name`, ... in the query).
    /// `sslmode` defaults to `prefer`; TLS is rustls on aws-lc-rs.
    pub async fn open(url: &str) -> StoreResult<PostgresStore> {
        PostgresStore::open_with(connect_options(url)?).await
    }

    /// Like [`PostgresStore::open`], with options already parsed (tests set a `search_path`).
    pub async fn open_with(options: PgConnectOptions) -> StoreResult<PostgresStore> {
        PostgresStore::open_with_timeout(options, DEFAULT_TIMEOUT).await
    }

    /// `timeout` bounds waiting for a pooled connection, including opening a new one (TCP, TLS,
    /// authentication): an unreachable database fails requests and `/readyz` within it instead
    /// of hanging them.
    pub async fn open_with_timeout(
        options: PgConnectOptions,
        timeout: Duration,
    ) -> StoreResult<PostgresStore> {
        let listener_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(timeout)
            // Held for the life of the process; a dead one is replaced on re-subscribing.
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with(options.clone());
        let loss = Arc::new(ConnectionLoss::new());
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(timeout)
            .test_before_acquire(false)
            .before_acquire({
                let loss = loss.clone();
                move |conn, meta| {
                    let suspect =
                        meta.idle_for >= PING_IF_IDLE_FOR || loss.seen_while_idle(meta.idle_for);
                    Box::pin(async move {
                        // A failed ping closes the connection and the pool opens a new one.
                        if suspect {
                            conn.ping().await?;
                        }
                        Ok(true)
                    })
                }
            })
            .connect_with(options)
            .await?;
        // sqlx's migrator holds a database-wide advisory lock while it runs, so replicas
        // starting together apply each migration once.
        migrator().run(&pool).await?;
        Ok(PostgresStore {
            pool,
            listener_pool,
            loss,
            timeout,
        })
    }

    /// The underlying pool, for tests and diagnostics.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Parses `url`. Errors name the URL with its password redacted.
pub(crate) fn connect_options(url: &str) -> StoreResult<PgConnectOptions> {
    postgres_options(url).map_err(|why| {
        let shown = crate::types::Secret::url(url.to_owned()).redacted_url();
        StoreError::InvalidUrl(format!("{shown}: {why}"))
    })
}

/// Every schema migration, in order. Applied ones must never change: sqlx checksums them.
fn migrations() -> Vec<Migration> {
    [
        (1, "init", INIT_SQL),
        (2, "invitations and resets", INVITATIONS_AND_RESETS_SQL),
        (3, "throttle", THROTTLE_SQL),
        (4, "audit", AUDIT_SQL),
    ]
    .into_iter()
    .map(|(version, description, sql)| {
        Migration::new(
            version,
            description.into(),
            MigrationType::Simple,
            sql.into_sql_str(),
            false,
        )
    })
    .collect()
}

fn migrator() -> Migrator {
    Migrator::with_migrations(migrations())
}

/// UUIDs are stored as PostgreSQL's own `uuid`.
impl UuidColumns for PgRow {
    fn uuid(&self, column: &str) -> StoreResult<Uuid> {
        Ok(self.try_get(column)?)
    }

    fn opt_uuid(&self, column: &str) -> StoreResult<Option<Uuid>> {
        Ok(self.try_get(column)?)
    }
}

/// Locks a user's row for the rest of the transaction; the first lock of every transaction that
/// changes the user's password resets. A no-op for an unknown user.
async fn lock_user(conn: &mut PgConnection, user: UserId) -> StoreResult<()> {
    sqlx::query(LOCK_USER).bind(user.0).execute(conn).await?;
    Ok(())
}

/// Revokes the user's open sessions and feeds them to the revocation log; the caller owns the
/// transaction so this can be part of a larger change (as its last step, see
/// [`append_revocations`]).
async fn revoke_open_sessions(
    conn: &mut PgConnection,
    user: UserId,
    at: UnixTime,
) -> StoreResult<Vec<SessionId>> {
    let mut ids: Vec<SessionId> = sqlx::query_scalar(REVOKE_OPEN_SESSIONS)
        .bind(at)
        .bind(user.0)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(SessionId)
        .collect();
    // RETURNING order is unspecified; sort so the feed order is reproducible.
    ids.sort();
    append_revocations(conn, &ids, at).await?;
    Ok(ids)
}

/// Each method names its [`Replay`] class and, for a write, why it is safe in it.
#[async_trait]
impl Store for PostgresStore {
    async fn ping(&self) -> StoreResult<()> {
        // `/readyz`: a dead pooled connection is not an unreachable database.
        self.run(Replay::Idempotent, |mut conn| {
            Box::pin(async move {
                sqlx::query(sql::PING).execute(&mut *conn).await?;
                Ok(())
            })
        })
        .await
    }

    async fn count_users(&self) -> StoreResult<i64> {
        self.run(Replay::Idempotent, |mut conn| {
            Box::pin(async move {
                Ok(sqlx::query_scalar(sql::COUNT_USERS)
                    .fetch_one(&mut *conn)
                    .await?)
            })
        })
        .await
    }

    async fn create_user(&self, user: NewUser) -> StoreResult<User> {
        let user = User {
            id: UserId::new_random(),
            email: user.email,
            password_hash: user.password_hash,
            role: user.role,
            disabled: false,
            deleted: false,
            sso_enabled: false,
            invitation_pending: user.invitation_pending,
            invitation: user.invitation,
            created: user.created,
            last_login: None,
        };
        // Once: a second run of an insert that took effect fails as a duplicate email.
        let row = &user;
        self.run(Replay::Once, |mut conn| {
            Box::pin(async move {
                let inserted = sqlx::query(sql::INSERT_USER)
                    .bind(row.id.0)
                    .bind(&row.email)
                    .bind(&row.password_hash)
                    .bind(row.role.as_str())
                    .bind(row.disabled)
                    .bind(row.deleted)
                    .bind(row.sso_enabled)
                    .bind(row.invitation_pending)
                    .bind(row.invitation.as_ref().map(|i| i.nonce.as_str()))
                    .bind(row.invitation.as_ref().map(|i| i.expires_at))
                    .bind(row.created)
                    .bind(row.last_login)
                    .execute(&mut *conn)
                    .await;
                match inserted {
                    Ok(_) => Ok(()),
                    Err(sqlx::Error::Database(e))
                        if e.is_unique_violation() && e.constraint() == Some(EMAIL_INDEX) =>
                    {
                        Err(StoreError::DuplicateEmail)
                    }
                    Err(e) => Err(e.into()),
                }
            })
        })
        .await?;
        Ok(user)
    }

    async fn user_by_email(&self, email: &str) -> StoreResult<Option<User>> {
        self.run(Replay::Idempotent, |mut conn| {
            Box::pin(async move {
                sqlx::query(USER_BY_EMAIL)
                    .bind(email)
                    .fetch_optional(&mut *conn)
                    .await?
                    .as_ref()
                    .map(user_from_row)
                    .transpose()
            })
        })
        .await
    }

    async fn user_by_id(&self, id: UserId) -> StoreResult<Option<User>> {
        self.run(Replay::Idempotent, |mut conn| {
            Box::pin(async move {
                sqlx::query(sql::USER_BY_ID)
                    .bind(id.0)
                    .fetch_optional(&mut *conn)
                    .await?
                    .as_ref()
                    .map(user_from_row)
                    .transpose()
            })
        })
        .await
    }

    async fn list_users(&self) -> StoreResult<Vec<User>> {
        self.run(Replay::Idempotent, |mut conn| {
            Box::pin(async move {
                sqlx::query(LIST_USERS)
                    .fetch_all(&mut *conn)
                    .await?
                    .iter()
                    .map(user_from_row)
                    .collect()
            })
        })
        .await
    }

    async fn record_login(&self, id: UserId, at: UnixTime) -> StoreResult<()> {
        // Idempotent: a second run writes the same time again. (Only a login of the same user
        // committed between the two runs, milliseconds apart, would see its later time replaced
        // by this one; `last_login` is informational.)
        self.run(Replay::Idempotent, |mut conn| {
            Box::pin(async move {
                sqlx::query(sql::RECORD_LOGIN)
                    .bind(at)
                    .bind(id.0)
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            })
        })
        .await
    }

    async fn set_sso_enabled(&self, user: UserId) -> StoreResult<()> {
        // Idempotent: a second run matches nothing.
        self.run(Replay::Idempotent, |mut conn| {
            Box::pin(async move {
                sqlx::query(sql::SET_SSO_ENABLED)
                    .bind(user.0)
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            })
        })
        .await
    }

    async fn set_user_disabled(
        &self,
        email: &str,
        disabled: bool,
        at: UnixTime,
    ) -> StoreResult<Option<User>> {
        self.run(Replay::Transaction, |mut tx| {
            Box::pin(async move {
                let row = sqlx::query(SET_USER_DISABLED)
                    .bind(disabled)
                    .bind(email)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(row) = row else {
                    return Ok(None);
                };
                let user = user_from_row(&row)?;
                if disabled {
                    revoke_open_sessions(&mut tx, user.id, at).await?;
                }
                Ok(Some(user))
            })
        })
        .await
    }

    async fn create_session(&self, session: &Session) -> StoreResult<()> {
        // Once: a second run of an insert that took effect fails on the primary key.
        self.run(Replay::Once, |mut conn| {
            Box::pin(async move {
                sqlx::query(sql::INSERT_SESSION)
                    .bind(session.id.0)
                    .bind(session.user_id.0)
                    .bind(session.created)
                    .bind(session.expires_at)
                    .bind(session.revoked_at)
                    .bind(session.current_jti)
                    .bind(session.refresh_count)
                    .bind(session.last_refresh_at)
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            })
        })
        .await
    }

    async fn session(&self, id: SessionId) -> StoreResult<Option<Session>> {
        self.run(Replay::Idempotent, |mut conn| {
            Box::pin(async move {
                sqlx::query(sql::SESSION_BY_ID)
                    .bind(id.0)
                    .fetch_optional(&mut *conn)
                    .await?
                    .as_ref()
                    .map(session_from_row)
                    .transpose()
            })
        })
        .await
    }

    async fn rotate_session_token(
        &self,
        id: SessionId,
        presented_jti: Uuid,
        new_jti: Uuid,
        at: UnixTime,
    ) -> StoreResult<Rotation> {
        // Once: a second run of a swap that took effect finds `new_jti` current and reports a
        // reuse, which would end the session.
        self.run(Replay::Once, |mut conn| {
            Box::pin(async move {
                // The compare and the swap are one statement: a concurrent rotation waits for the
                // row lock, then re-checks `current_jti` against the winner's row and matches
                // nothing.
                let swapped = sqlx::query(sql::ROTATE_SESSION_TOKEN)
                    .bind(new_jti)
                    .bind(at)
                    .bind(id.0)
                    .bind(presented_jti)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
                if swapped > 0 {
                    return Ok(Rotation::Rotated);
                }
                // Only classifies the failure; it was decided atomically above.
                let revoked_at: Option<Option<UnixTime>> =
                    sqlx::query_scalar(sql::SESSION_REVOKED_AT)
                        .bind(id.0)
                        .fetch_optional(&mut *conn)
                        .await?;
                Ok(match revoked_at {
                    Some(None) => Rotation::NotCurrent,
                    None | Some(Some(_)) => Rotation::Gone,
                })
            })
        })
        .await
    }

    async fn revoke_session(&self, id: SessionId, at: UnixTime) -> StoreResult<bool> {
        self.run(Replay::Transaction, |mut tx| {
            Box::pin(async move {
                // Nothing to append when it was already revoked; the commit then ends an empty
                // transaction.
                let revoked = sqlx::query(sql::REVOKE_SESSION)
                    .bind(at)
                    .bind(id.0)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    > 0;
                if revoked {
                    append_revocations(&mut tx, &[id], at).await?;
                }
                Ok(revoked)
            })
        })
        .await
    }

    async fn revoke_user_sessions(
        &self,
        user: UserId,
        at: UnixTime,
    ) -> StoreResult<Vec<SessionId>> {
        self.run(Replay::Transaction, |mut tx| {
            Box::pin(async move { revoke_open_sessions(&mut tx, user, at).await })
        })
        .await
    }

    async fn revocations_since(&self, after: i64, limit: i64) -> StoreResult<Vec<Revocation>> {
        // PostgreSQL rejects a negative LIMIT; SQLite reads it as "no limit". Both: nothing.
        if limit <= 0 {
            return Ok(Vec::new());
        }
        self.run(Replay::Idempotent, |mut conn| {
            Box::pin(async move {
                sqlx::query(sql::REVOCATIONS_SINCE)
                    .bind(after)
                    .bind(limit)
                    .fetch_all(&mut *conn)
                    .await?
                    .iter()
                    .map(revocation_from_row)
                    .collect()
            })
        })
        .await
    }

    async fn revocation_cursor(&self) -> StoreResult<i64> {
        self.run(Replay::Idempotent, |mut conn| {
            Box::pin(async move {
                // Appends commit in seq order (see `append_revocations`), so nothing below this can
                // still appear.
                Ok(sqlx::query_scalar(sql::REVOCATION_CURSOR)
                    .fetch_one(&mut *conn)
                    .await?)
            })
        })
        .await
    }

    async fn prune(&self, before: UnixTime) -> StoreResult<u64> {
        self.run(Replay::Transaction, |mut tx| {
            Box::pin(async move {
                // Old feed rows are locked by no one else. Resets before sessions: the lock order
                // of the other transactions.
                let revocations = sqlx::query(sql::PRUNE_REVOCATIONS)
                    .bind(before)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                let resets = sqlx::query(sql::PRUNE_PASSWORD_RESETS)
                    .bind(before)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                let sessions = sqlx::query(PRUNE_SESSIONS)
                    .bind(before)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                let windows = sqlx::query(sql::PRUNE_THROTTLE_WINDOWS)
                    .bind(before)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                Ok(revocations + sessions + resets + windows)
            })
        })
        .await
    }

    async fn throttle_reserve(
        &self,
        scope: &str,
        key: &str,
        limit: u32,
        window: i64,
        now: UnixTime,
    ) -> StoreResult<Result<UnixTime, u64>> {
        // Once: a second run would count the attempt twice.
        self.run(Replay::Once, |mut conn| {
            Box::pin(async move {
                let started: Option<UnixTime> = sqlx::query_scalar(sql::THROTTLE_RESERVE)
                    .bind(scope)
                    .bind(key)
                    .bind(now)
                    .bind(window)
                    .bind(i64::from(limit))
                    .fetch_optional(&mut *conn)
                    .await?;
                if let Some(started) = started {
                    return Ok(Ok(started));
                }
                let ends: Option<UnixTime> = sqlx::query_scalar(sql::THROTTLE_WINDOW_END)
                    .bind(scope)
                    .bind(key)
                    .fetch_optional(&mut *conn)
                    .await?;
                Ok(Err(ends.map_or(1, |ends| (ends - now).max(1) as u64)))
            })
        })
        .await
    }

    async fn throttle_refund(
        &self,
        scope: &str,
        key: &str,
        window_start: UnixTime,
    ) -> StoreResult<()> {
        // Once: a second run would take back two attempts.
        self.run(Replay::Once, |mut conn| {
            Box::pin(async move {
                sqlx::query(sql::THROTTLE_REFUND)
                    .bind(scope)
                    .bind(key)
                    .bind(window_start)
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            })
        })
        .await
    }

    fn revocation_listener(&self) -> Option<Box<dyn FeedListener>> {
        Some(Box::new(PgFeedListener {
            pool: self.listener_pool.clone(),
            listener: None,
        }))
    }

    async fn renew_invitation(
        &self,
        user: UserId,
        invitation: &Invitation,
        role: Role,
    ) -> StoreResult<Option<User>> {
        // Idempotent: a second run writes the same nonce, expiry and role again. Nothing can
        // accept the new invitation in between: its link has not been sent yet.
        self.run(Replay::Idempotent, |mut conn| {
            Box::pin(async move {
                sqlx::query(sql::RENEW_INVITATION)
                    .bind(&invitation.nonce)
                    .bind(invitation.expires_at)
                    .bind(role.as_str())
                    .bind(user.0)
                    .fetch_optional(&mut *conn)
                    .await?
                    .as_ref()
                    .map(user_from_row)
                    .transpose()
            })
        })
        .await
    }

    async fn accept_invitation(
        &self,
        user: UserId,
        nonce: &str,
        password_hash: &str,
        at: UnixTime,
    ) -> StoreResult<bool> {
        // Once: a second run of an accept that took effect finds the invitation spent and
        // reports the link as invalid.
        self.run(Replay::Once, |mut conn| {
            Box::pin(async move {
                let accepted = sqlx::query(sql::ACCEPT_INVITATION)
                    .bind(password_hash)
                    .bind(user.0)
                    .bind(nonce)
                    .bind(at)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
                Ok(accepted > 0)
            })
        })
        .await
    }

    async fn create_password_reset(&self, reset: &PasswordReset) -> StoreResult<()> {
        self.run(Replay::Transaction, |mut tx| {
            Box::pin(async move {
                // Without it, two concurrent resets of one user would each miss the other's
                // uncommitted row below and both stay usable.
                lock_user(&mut tx, reset.user_id).await?;
                sqlx::query(sql::SUPERSEDE_PASSWORD_RESETS)
                    .bind(reset.created)
                    .bind(reset.user_id.0)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(sql::INSERT_PASSWORD_RESET)
                    .bind(&reset.digest)
                    .bind(reset.user_id.0)
                    .bind(reset.created)
                    .bind(reset.expires_at)
                    .bind(reset.used_at)
                    .execute(&mut *tx)
                    .await?;
                Ok(())
            })
        })
        .await
    }

    async fn password_reset(&self, digest: &str) -> StoreResult<Option<PasswordReset>> {
        self.run(Replay::Idempotent, |mut conn| {
            Box::pin(async move {
                sqlx::query(sql::PASSWORD_RESET_BY_DIGEST)
                    .bind(digest)
                    .fetch_optional(&mut *conn)
                    .await?
                    .as_ref()
                    .map(password_reset_from_row)
                    .transpose()
            })
        })
        .await
    }

    async fn complete_password_reset(
        &self,
        digest: &str,
        user: UserId,
        password_hash: &str,
        at: UnixTime,
    ) -> StoreResult<Option<Vec<SessionId>>> {
        self.run(Replay::Transaction, |mut tx| {
            Box::pin(async move {
                // The user row before the reset row, in the same order as `create_password_reset`.
                lock_user(&mut tx, user).await?;
                let spent = sqlx::query(sql::SPEND_PASSWORD_RESET)
                    .bind(at)
                    .bind(digest)
                    .bind(user.0)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if spent == 0 {
                    // Nothing changed; the commit only releases the user row's lock.
                    return Ok(None);
                }
                sqlx::query(sql::SET_PASSWORD)
                    .bind(password_hash)
                    .bind(user.0)
                    .execute(&mut *tx)
                    .await?;
                Ok(Some(revoke_open_sessions(&mut tx, user, at).await?))
            })
        })
        .await
    }

    async fn append_audit(&self, events: &[AuditEvent]) -> StoreResult<()> {
        self.run(Replay::Transaction, |mut tx| {
            Box::pin(async move {
                for e in events {
                    sqlx::query(sql::INSERT_AUDIT_EVENT)
                        .bind(e.at)
                        .bind(&e.kind)
                        .bind(e.user_id.map(|u| u.0))
                        .bind(&e.email)
                        .bind(e.client_ip.map(|ip| ip.to_string()))
                        .bind(&e.request_id)
                        .bind(detail_json(&e.detail))
                        .execute(&mut *tx)
                        .await?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn audit_events(&self, filter: &AuditFilter) -> StoreResult<Vec<AuditEvent>> {
        let rows = self
            .run(Replay::Idempotent, |mut conn| {
                Box::pin(async move {
                    Ok(sqlx::query(AUDIT_EVENTS)
                        .bind(filter.since.unwrap_or(UnixTime::MIN))
                        .bind(filter.user_id.map(|u| u.0))
                        .bind(&filter.email)
                        .bind(filter.limit)
                        .fetch_all(&mut *conn)
                        .await?)
                })
            })
            .await?;
        let mut events = rows
            .iter()
            .map(audit_event_from_row)
            .collect::<StoreResult<Vec<_>>>()?;
        events.reverse();
        Ok(events)
    }

    async fn prune_audit(&self, before: UnixTime) -> StoreResult<u64> {
        // Idempotent: a second run deletes only what has aged since (its count, which is only
        // logged, then misses what the first run deleted).
        self.run(Replay::Idempotent, |mut conn| {
            Box::pin(async move {
                Ok(sqlx::query(sql::PRUNE_AUDIT)
                    .bind(before)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected())
            })
        })
        .await
    }
}
