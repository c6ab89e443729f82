//! The PostgreSQL backend of [`Store`](super::Store), so several gateway replicas can share
//! users, sessions and the revocation feed: connection setup, the embedded schema migrations,
//! and its [`Backend`](super::backend::Backend) part of the shared implementation (`store`).
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
//!   (several of them in id order), then the feed lock of [`feed::append_revocations`] — so these
//!   transactions cannot deadlock each other.
//!
//! Pooled connections that die under the pool are the other PostgreSQL-only concern: every
//! method runs through [`PostgresStore::run`] with the [`Replay`](super::backend::Replay) class that says whether it may
//! run again on another connection (see `replay`). The revocation feed's ordered append and its
//! LISTEN/NOTIFY wake-ups are in `feed`.

mod feed;
mod replay;
mod store;
#[cfg(test)]
mod tests;

use std::convert::identity;
use std::sync::Arc;
use std::time::Duration;

use sqlx::migrate::{Migration, Migrator};
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPool, PgPoolOptions, PgRow, Postgres};
use sqlx::query::Query;
use sqlx::{Connection, Row};
use uuid::Uuid;

use crate::config::store_url::postgres_options;

use super::rows::UuidColumns;
use super::schema::postgres_migrations;
use super::sql::{Dialect, Statement, active_admins, audit_columns, user_columns, users_page};
use super::{DEFAULT_TIMEOUT, StoreError, StoreResult};

use replay::ConnectionLoss;

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
    // Byte order of the lower-cased addresses, as on SQLite and in the index, whatever the
    // database's locale.
    users_by_email: [
        users_page!("email COLLATE \"C\" ASC"),
        users_page!("email COLLATE \"C\" DESC"),
    ],
    // Row locks in id order; a row an admin change racing this one commits meanwhile is
    // re-checked against the WHERE once its lock is granted, so a just-demoted admin drops out.
    lock_active_admins: concat!(active_admins!(), " FOR NO KEY UPDATE"),
    // The rows are locked in id order so that two of these for one user (say a disable racing a
    // password reset) cannot deadlock; a session revoked meanwhile drops out of the sub-select
    // when its lock is granted and its `revoked_at` re-checked.
    revoke_open_sessions: "UPDATE sessions SET revoked_at = $1 \
         WHERE id IN (SELECT id FROM sessions WHERE user_id = $2 AND revoked_at IS NULL \
                      AND id <> $3 ORDER BY id FOR UPDATE) \
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

/// See `lock_user` (in `store`).
const LOCK_USER: &str = "SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE";

/// [`Store`](super::Store) backed by a PostgreSQL database that several replicas may share.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// One connection, outside `pool`, held by the revocation listener; connected lazily.
    listener_pool: PgPool,
    /// Shared with `pool`'s `before_acquire`.
    loss: Arc<ConnectionLoss>,
    /// `store.timeout`, which also bounds [`replay::Replay::Once`]'s ping.
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
