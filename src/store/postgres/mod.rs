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

use std::convert::identity;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::{Migration, Migrator};
use sqlx::postgres::{
    PgArguments, PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow, Postgres,
};
use sqlx::query::{Query, QueryScalar};
use sqlx::{Connection, FromRow, Row};
use uuid::Uuid;

use crate::config::store_url::postgres_options;

use super::rows::{
    UuidColumns, audit_events_oldest_first, password_reset_from_row, revocation_from_row,
    session_from_row, user_from_row,
};
use super::schema::postgres_migrations;
use super::sql::{self, Dialect, Statement, audit_columns, params, user_columns};
use super::{
    AuditEvent, AuditFilter, DEFAULT_TIMEOUT, FeedListener, Invitation, NewUser, PasswordReset,
    Revocation, Role, Rotation, Session, SessionId, Store, StoreError, StoreResult, UnixTime, User,
    UserId,
};

use feed::{PgFeedListener, append_revocations};
use replay::{ConnectionLoss, Replay};

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
const DIALECT: Dialect = Dialect {
    // Matches the expression of the unique index on `lower(email)`, which serves the lookup.
    user_by_email: concat!(
        "SELECT ",
        user_columns!(),
        " FROM users WHERE lower(email) = lower($1)"
    ),
    // insertion_seq breaks ties in insertion order.
    list_users: concat!(
        "SELECT ",
        user_columns!(),
        " FROM users ORDER BY created, insertion_seq"
    ),
    // Locks the user row first, like the reset transactions.
    set_user_disabled: concat!(
        "UPDATE users SET disabled = $1 WHERE lower(email) = lower($2) RETURNING ",
        user_columns!()
    ),
    // The rows are locked in id order so that two of these for one user (say a disable racing a
    // password reset) cannot deadlock; a session revoked meanwhile drops out of the sub-select
    // when its lock is granted and its `revoked_at` re-checked.
    revoke_open_sessions: "UPDATE sessions SET revoked_at = $1 \
         WHERE id IN (SELECT id FROM sessions WHERE user_id = $2 AND revoked_at IS NULL \
                      ORDER BY id FOR UPDATE) \
         RETURNING id",
    // Sessions in id order: the lock order of the other transactions (an ended session may
    // still be open and be revoked meanwhile).
    prune_sessions: "DELETE FROM sessions WHERE id IN \
         (SELECT id FROM sessions WHERE expires_at < $1 ORDER BY id FOR UPDATE)",
    // PostgreSQL must know a parameter's type even where it is only compared with NULL.
    audit_events: concat!(
        "SELECT ",
        audit_columns!(),
        " FROM audit_events WHERE at >= $1 \
         AND (($2::uuid IS NULL AND $3::text IS NULL) OR user_id = $2 OR email = $3) \
         ORDER BY at DESC, seq DESC LIMIT $4"
    ),
};

/// See [`lock_user`].
const LOCK_USER: &str = "SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE";

/// [`Store`] backed by a PostgreSQL database that several replicas may share.
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

/// Every schema migration, in order (see `schema`).
fn migrations() -> Vec<Migration> {
    postgres_migrations()
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

/// `statement` ready to run, UUIDs bound as `uuid`.
fn query(statement: Statement<'_>) -> StoreResult<Query<'static, Postgres, PgArguments>> {
    let text = statement.text;
    let arguments = statement.arguments(identity::<Uuid>);
    Ok(sqlx::query_with(
        text,
        arguments.map_err(sqlx::Error::Encode)?,
    ))
}

/// As [`query`], for a statement that returns one column.
fn query_scalar<O>(
    statement: Statement<'_>,
) -> StoreResult<QueryScalar<'static, Postgres, O, PgArguments>>
where
    (O,): for<'r> FromRow<'r, PgRow>,
{
    let text = statement.text;
    let arguments = statement.arguments(identity::<Uuid>);
    Ok(sqlx::query_scalar_with(
        text,
        arguments.map_err(sqlx::Error::Encode)?,
    ))
}

/// Locks a user's row for the rest of the transaction; the first lock of every transaction that
/// changes the user's password resets. A no-op for an unknown user.
async fn lock_user(conn: &mut PgConnection, user: UserId) -> StoreResult<()> {
    query(Statement::new(LOCK_USER, params![user]))?
        .execute(conn)
        .await?;
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
    let mut ids: Vec<SessionId> = query_scalar(DIALECT.revoke_open_sessions(user, at))?
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
                query(sql::ping())?.execute(&mut *conn).await?;
                Ok(())
            })
        })
        .await
    }

    async fn count_users(&self) -> StoreResult<i64> {
        self.run(Replay::Idempotent, |mut conn| {
            Box::pin(async move {
                Ok(query_scalar(sql::count_users())?
                    .fetch_one(&mut *conn)
                    .await?)
            })
        })
        .await
    }

    async fn create_user(&self, user: NewUser) -> StoreResult<User> {
        let user = User::from_new(user);
        // Once: a second run of an insert that took effect fails as a duplicate email.
        let row = &user;
        self.run(Replay::Once, |mut conn| {
            Box::pin(async move {
                match query(sql::insert_user(row))?.execute(&mut *conn).await {
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
                query(DIALECT.user_by_email(email))?
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
                query(sql::user_by_id(id))?
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
                query(DIALECT.list_users())?
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
                query(sql::record_login(id, at))?
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
                query(sql::set_sso_enabled(user))?
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
                let row = query(DIALECT.set_user_disabled(email, disabled))?
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
                query(sql::insert_session(session))?
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
                query(sql::session_by_id(id))?
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
                let swapped = query(sql::rotate_session_token(id, presented_jti, new_jti, at))?
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
                if swapped > 0 {
                    return Ok(Rotation::Rotated);
                }
                // Only classifies the failure; it was decided atomically above.
                let revoked_at = query_scalar(sql::session_revoked_at(id))?
                    .fetch_optional(&mut *conn)
                    .await?;
                Ok(Rotation::of_failed_swap(revoked_at))
            })
        })
        .await
    }

    async fn revoke_session(&self, id: SessionId, at: UnixTime) -> StoreResult<bool> {
        self.run(Replay::Transaction, |mut tx| {
            Box::pin(async move {
                // Nothing to append when it was already revoked; the commit then ends an empty
                // transaction.
                let revoked = query(sql::revoke_session(id, at))?
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
                query(sql::revocations_since(after, limit))?
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
                Ok(query_scalar(sql::revocation_cursor())?
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
                let mut deleted = 0;
                for statement in [
                    sql::prune_revocations(before),
                    sql::prune_password_resets(before),
                    DIALECT.prune_sessions(before),
                    sql::prune_throttle_windows(before),
                ] {
                    deleted += query(statement)?.execute(&mut *tx).await?.rows_affected();
                }
                Ok(deleted)
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
                let started = query_scalar(sql::throttle_reserve(scope, key, limit, window, now))?
                    .fetch_optional(&mut *conn)
                    .await?;
                if let Some(started) = started {
                    return Ok(Ok(started));
                }
                let ends = query_scalar(sql::throttle_window_end(scope, key))?
                    .fetch_optional(&mut *conn)
                    .await?;
                Ok(Err(sql::retry_after(ends, now)))
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
                query(sql::throttle_refund(scope, key, window_start))?
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
                query(sql::renew_invitation(user, invitation, role))?
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
                let accepted = query(sql::accept_invitation(user, nonce, password_hash, at))?
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
                query(sql::supersede_password_resets(reset))?
                    .execute(&mut *tx)
                    .await?;
                query(sql::insert_password_reset(reset))?
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
                query(sql::password_reset_by_digest(digest))?
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
                let spent = query(sql::spend_password_reset(digest, user, at))?
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if spent == 0 {
                    // Nothing changed; the commit only releases the user row's lock.
                    return Ok(None);
                }
                query(sql::set_password(user, password_hash))?
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
                for event in events {
                    query(sql::insert_audit_event(event))?
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
                    Ok(query(DIALECT.audit_events(filter))?
                        .fetch_all(&mut *conn)
                        .await?)
                })
            })
            .await?;
        audit_events_oldest_first(&rows)
    }

    async fn prune_audit(&self, before: UnixTime) -> StoreResult<u64> {
        // Idempotent: a second run deletes only what has aged since (its count, which is only
        // logged, then misses what the first run deleted).
        self.run(Replay::Idempotent, |mut conn| {
            Box::pin(async move {
                Ok(query(sql::prune_audit(before))?
                    .execute(&mut *conn)
                    .await?
                    .rows_affected())
            })
        })
        .await
    }
}
