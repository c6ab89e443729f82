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
//! Pooled connections die under the pool's feet: a server restart or failover, a pooler or
//! firewall closing idle connections, `pg_terminate_backend`. The first statement on such a
//! connection fails (a killed backend answers with its FATAL `57P01`, a closed socket with an
//! I/O error; see [`is_dead_connection`]), and it fails alike whether the backend died before
//! the statement arrived or while running it, so the error alone never tells whether a write
//! took effect. Every method therefore runs through [`PostgresStore::run`], which runs it once
//! more on another connection when that is safe for its [`Replay`] class:
//!
//! - [`Replay::Idempotent`]: reads, and writes whose second run leaves the database as one run
//!   would; run again whatever failed.
//! - [`Replay::Transaction`]: `run` begins and commits the transaction. PostgreSQL rolls back
//!   what a dead connection had not committed, so a failure before the `COMMIT` was sent left
//!   nothing behind; a failed `COMMIT` may have committed and is not run again.
//! - [`Replay::Once`]: a single statement that must not run twice. `run` pings the connection
//!   first; only a failed ping (the statement was never sent) is run again.
//!
//! Only an operation that already holds a connection is run again, and only once: failing to
//! get a connection means the database is unreachable, and the pool has already tried for
//! `store.timeout`. SQLite has no connection to lose and none of this.

use std::future::Future;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{
    PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions, PgRow, Postgres,
};
use sqlx::{Connection, Row, SqlSafeStr};
use uuid::Uuid;

use crate::config::store_url::postgres_options;

use super::rows::{
    UuidColumns, audit_event_from_row, password_reset_from_row, revocation_from_row,
    session_from_row, user_from_row,
};
use super::sql::{self, audit_columns, user_columns};
use super::{
    AuditEvent, AuditFilter, DEFAULT_TIMEOUT, FeedListener, FeedWakeup, Invitation, NewUser,
    PasswordReset, Revocation, Role, Rotation, Session, SessionId, Store, StoreError, StoreResult,
    UnixTime, User, UserId, detail_json,
};

/// Embedded so the binary carries its schema without sqlx's `migrate!` macro. Versions are kept
/// parallel to `migrations/sqlite`.
const INIT_SQL: &str = include_str!("../../migrations/postgres/0001_init.sql");
const INVITATIONS_AND_RESETS_SQL: &str =
    include_str!("../../migrations/postgres/0002_invitations_and_resets.sql");
const THROTTLE_SQL: &str = include_str!("../../migrations/postgres/0003_throttle.sql");
const AUDIT_SQL: &str = include_str!("../../migrations/postgres/0004_audit.sql");

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

/// The channel feed appends are announced on, computed by the server so that writers and
/// listeners agree: suffixed with the feed table's oid (like [`FEED_LOCK_CLASS`]'s second key),
/// so stores in different schemas of one database (tests) do not wake each other.
macro_rules! feed_channel {
    () => {
        "'meiro_gate_feed_' || 'session_revocations'::regclass::oid"
    };
}

/// First key of the feed's advisory lock (two-key form, whose key space does not overlap the
/// one-key form sqlx's migrator locks with). The second key is the feed table's oid, so stores in
/// different schemas of one database (tests) do not contend.
const FEED_LOCK_CLASS: i32 = 0x4d47_4645; // "MGFE"

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

    /// Runs `op` on a pooled connection, and once more on another one if its connection turned
    /// out to be dead and `replay` allows it (see the module docs). `Replay::Transaction` hands
    /// `op` a connection inside a transaction that this begins and commits.
    async fn run<'env, T, F>(&self, replay: Replay, mut op: F) -> StoreResult<T>
    where
        F: for<'c> FnMut(Conn<'c, 'env>) -> BoxFuture<'c, StoreResult<T>>,
    {
        let mut rerun = false;
        loop {
            let (stage, error) = match self.attempt(replay, &mut op).await {
                Ok(value) => return Ok(value),
                Err(failed) => failed,
            };
            if rerun || !is_dead_connection(&error) {
                return Err(error);
            }
            // The other connections idle as long as this one may be dead too: the pool now
            // pings them before handing them out (see `open_with_timeout`).
            self.loss.seen();
            if !replay.may_rerun(stage) {
                tracing::warn!(
                    %error,
                    ?stage,
                    "PostgreSQL connection lost while writing; not run again, as the write may \
                     have taken effect"
                );
                return Err(error);
            }
            tracing::info!(
                %error,
                ?stage,
                "PostgreSQL connection lost; running the operation again on another connection"
            );
            rerun = true;
        }
    }

    /// One run of `op`; a failure says how far it got.
    async fn attempt<'env, T, F>(
        &self,
        replay: Replay,
        op: &mut F,
    ) -> Result<T, (Stage, StoreError)>
    where
        F: for<'c> FnMut(Conn<'c, 'env>) -> BoxFuture<'c, StoreResult<T>>,
    {
        // Not run again: the pool has already replaced dead idle connections and retried
        // connecting for `store.timeout`.
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| (Stage::Acquire, e.into()))?;
        let outcome = async {
            match replay {
                Replay::Idempotent => op(Conn::new(&mut conn))
                    .await
                    .map_err(|e| (Stage::Statements, e)),
                Replay::Once => {
                    self.check_alive(&mut conn)
                        .await
                        .map_err(|e| (Stage::Check, e))?;
                    op(Conn::new(&mut conn))
                        .await
                        .map_err(|e| (Stage::Statements, e))
                }
                Replay::Transaction => {
                    let mut tx = conn.begin().await.map_err(|e| (Stage::Check, e.into()))?;
                    let value = op(Conn::new(&mut tx))
                        .await
                        .map_err(|e| (Stage::Statements, e))?;
                    tx.commit().await.map_err(|e| (Stage::Commit, e.into()))?;
                    Ok(value)
                }
            }
        }
        .await;
        if let Err((_, e)) = &outcome
            && is_dead_connection(e)
        {
            // Closed here rather than pinged and closed on its way back to the pool.
            drop(conn.detach());
        }
        outcome
    }

    /// [`Replay::Once`]'s proof that the connection is alive before its statement is sent. A
    /// ping unanswered within `store.timeout` counts as a dead connection.
    async fn check_alive(&self, conn: &mut PoolConnection<Postgres>) -> StoreResult<()> {
        match tokio::time::timeout(self.timeout, conn.ping()).await {
            Ok(pinged) => Ok(pinged?),
            Err(_) => Err(StoreError::Database(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "ping unanswered within store.timeout",
            )))),
        }
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

/// Whether [`PostgresStore::run`] may run an operation again after its connection turned out to
/// be dead; each method names its class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replay {
    /// Reads, and writes whose second run leaves the database as one run would: run again
    /// whatever stage failed.
    Idempotent,
    /// Several statements in one transaction, which `run` begins and commits: run again when
    /// the failure came before the `COMMIT` was sent, since PostgreSQL rolls back a transaction
    /// whose connection died uncommitted.
    Transaction,
    /// A single write that must not take effect twice: its connection is pinged first, and only
    /// a failure up to that ping (the statement was never sent) is run again.
    Once,
}

/// How far a failed attempt got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Getting a connection from the pool (or opening one).
    Acquire,
    /// `BEGIN` ([`Replay::Transaction`]) or the ping ([`Replay::Once`]): nothing of the
    /// operation has reached the server.
    Check,
    /// The operation's own statements.
    Statements,
    /// The `COMMIT`: the transaction may or may not have committed.
    Commit,
}

impl Replay {
    /// May an attempt that failed at `stage` on a dead connection be run again?
    fn may_rerun(self, stage: Stage) -> bool {
        match (self, stage) {
            (_, Stage::Acquire) => false,
            (Replay::Idempotent, _) => true,
            (Replay::Transaction, Stage::Check | Stage::Statements) => true,
            (Replay::Transaction, Stage::Commit) => false,
            (Replay::Once, Stage::Check) => true,
            (Replay::Once, Stage::Statements | Stage::Commit) => false,
        }
    }
}

/// Did `error` come from a connection that is dead, so that another connection may succeed?
///
/// What a lost connection reports (reproduced with `pg_terminate_backend` and by closing the
/// socket under it): a killed backend's FATAL error on the next statement, whether the backend
/// died idle or while running it, here `57P01 admin_shutdown`; any later use an I/O error
/// (`UnexpectedEof`); a socket closed by something between gateway and server, `UnexpectedEof`
/// and then `BrokenPipe` (a reset one, `ConnectionReset`). Every I/O error on an open connection
/// leaves it unusable.
///
/// Not counted: [`sqlx::Error::PoolTimedOut`] (no connection within `store.timeout`: the
/// database is unreachable, and trying again would only double the wait) and
/// [`sqlx::Error::PoolClosed`] (the store is shutting down).
fn is_dead_connection(error: &StoreError) -> bool {
    match error {
        StoreError::Database(sqlx::Error::Io(_)) => true,
        StoreError::Database(sqlx::Error::Database(e)) => e.code().is_some_and(|code| {
            matches!(
                code.as_ref(),
                // admin_shutdown (pg_terminate_backend, a fast or smart shutdown),
                // crash_shutdown (another backend crashed), cannot_connect_now (the server is
                // starting or stopping), idle_session_timeout.
                "57P01" | "57P02" | "57P03" | "57P05"
            )
        }),
        _ => false,
    }
}

/// What an operation of [`PostgresStore::run`] returns.
type BoxFuture<'c, T> = Pin<Box<dyn Future<Output = T> + Send + 'c>>;

/// The connection [`PostgresStore::run`] lends an operation (dereferences to it). Its second
/// lifetime, bounded as in `std::thread::scope`'s `Scope<'scope, 'env>`, lets the operation's
/// boxed future hold both this borrow and the method's own arguments: `'env: 'c` is implied by
/// the type. (An `AsyncFnMut` operation would need no box, but rustc cannot yet prove its
/// future `Send` for every lifetime, as `async_trait` requires.)
struct Conn<'c, 'env: 'c> {
    conn: &'c mut PgConnection,
    env: PhantomData<&'c &'env ()>,
}

impl<'c> Conn<'c, '_> {
    fn new(conn: &'c mut PgConnection) -> Self {
        Conn {
            conn,
            env: PhantomData,
        }
    }
}

impl Deref for Conn<'_, '_> {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        self.conn
    }
}

impl DerefMut for Conn<'_, '_> {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.conn
    }
}

/// When the store last met a dead connection. A restart, failover or a pooler dropping its
/// connections kills every connection idle at the time, so the pool pings each connection that
/// was already idle then before handing it out (and opens a new one when the ping fails),
/// instead of letting each of them fail one more operation. A connection that went idle later
/// is spared: sqlx pings every connection on its way back to the pool.
#[derive(Debug)]
struct ConnectionLoss {
    epoch: Instant,
    /// Nanoseconds from `epoch` to the last loss; 0 for none yet.
    last: AtomicU64,
}

impl ConnectionLoss {
    fn new() -> ConnectionLoss {
        ConnectionLoss {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn seen(&self) {
        self.last.fetch_max(self.now().max(1), Ordering::Relaxed);
    }

    /// Was a connection idle for `idle_for` already idle when the last loss was seen?
    fn seen_while_idle(&self, idle_for: Duration) -> bool {
        let last = self.last.load(Ordering::Relaxed);
        let idle_for = u64::try_from(idle_for.as_nanos()).unwrap_or(u64::MAX);
        last != 0 && self.now().saturating_sub(idle_for) <= last
    }
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

/// Appends revoked sessions to the feed, in the order given. Must be the last thing the
/// transaction does before it commits.
///
/// Replicas poll `seq > cursor` and move the cursor to the last seq they read, so no seq may
/// become visible after a higher one has been read. A sequence alone does not ensure that: two
/// transactions draw seqs 7 and 8, the one with 8 commits first, a replica polling in between reads
/// 8 and will never ask for 7 again. So appends are serialized by a transaction-level advisory
/// lock: seqs are drawn only while holding it, and it is held until the transaction has
/// committed (PostgreSQL releases locks after the commit is visible to others), so seqs commit in
/// increasing order and every snapshot of the feed is a prefix of it (with gaps only where a
/// transaction rolled back). Readers need nothing special.
///
/// The lock is taken after every row lock the transaction needs, and only this `INSERT` and
/// the `COMMIT` follow it, so a holder never waits on another transaction (no deadlock) and
/// holds it for about two round trips. The price is that all replicas' feed appends run one at
/// a time, which revocations (logout, refresh-token reuse, disabling, password resets) can
/// afford. The alternative — stamping each row with its transaction id and having readers stop
/// below the oldest transaction still running (`pg_snapshot_xmin`) — keeps appends parallel,
/// but any long transaction in the database, related or not, would then stall every replica's
/// feed.
async fn append_revocations(
    conn: &mut PgConnection,
    ids: &[SessionId],
    at: UnixTime,
) -> StoreResult<()> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "SELECT 1 FROM pg_advisory_xact_lock($1, 'session_revocations'::regclass::oid::int4)",
    )
    .bind(FEED_LOCK_CLASS)
    .execute(&mut *conn)
    .await?;
    let ids: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
    // unnest yields the array in order and the seq default is drawn row by row as they come.
    // The NOTIFY is queued by the transaction and delivered only when it commits, so a woken
    // listener always finds the entries; one statement keeps the lock's hold at two round trips.
    sqlx::query(concat!(
        "WITH appended AS (INSERT INTO session_revocations (session_id, revoked_at) \
         SELECT id, $2 FROM unnest($1::uuid[]) AS t (id)) \
         SELECT pg_notify(",
        feed_channel!(),
        ", '')"
    ))
    .bind(&ids)
    .bind(at)
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

/// Wakes the revocation follower on feed appends by any replica (`LISTEN` on the feed's
/// channel, on its own connection).
struct PgFeedListener {
    pool: PgPool,
    /// `None` until subscribed, and again after an error.
    listener: Option<PgListener>,
}

#[async_trait]
impl FeedListener for PgFeedListener {
    async fn next(&mut self) -> StoreResult<FeedWakeup> {
        let Some(listener) = self.listener.as_mut() else {
            self.listener = Some(subscribe(&self.pool).await?);
            return Ok(FeedWakeup::Subscribed);
        };
        match listener.try_recv().await {
            Ok(Some(_)) => Ok(FeedWakeup::Appended),
            // The connection was lost; sqlx has already reconnected and re-issued the LISTEN
            // (its `eager_reconnect`), and reports a failed reconnect as an error instead.
            Ok(None) => Ok(FeedWakeup::Subscribed),
            Err(e) => {
                // A terminated backend reports its FATAL error here before the socket closes;
                // either way, start over with a fresh connection on the next call, so that
                // the moment the subscription is back is reported as `Subscribed`.
                self.listener = None;
                Err(e.into())
            }
        }
    }
}

async fn subscribe(pool: &PgPool) -> StoreResult<PgListener> {
    let mut listener = PgListener::connect_with(pool).await?;
    let channel: String = sqlx::query_scalar(concat!("SELECT ", feed_channel!()))
        .fetch_one(&mut listener)
        .await?;
    listener.listen(&channel).await?;
    Ok(listener)
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

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::Arc;
    use std::time::Duration;

    use sqlx::AssertSqlSafe;
    use sqlx::postgres::PgSslMode;

    use super::*;
    use crate::store::suite;

    const URL_VAR: &str = "MEIRO_GATE_TEST_POSTGRES_URL";

    /// The test server's URL, or `None` after saying clearly that `test` is skipped.
    fn test_url(test: &str) -> Option<String> {
        match std::env::var(URL_VAR) {
            Ok(url) if !url.is_empty() => Some(url),
            _ => {
                eprintln!(
                    "SKIPPED store::postgres::{test}: {URL_VAR} is not set \
                     (CI sets it, e.g. postgres://postgres@127.0.0.1:5432/test)"
                );
                None
            }
        }
    }

    /// Runs `body` with connect options whose `search_path` is a fresh schema of its own, so
    /// parallel tests and runs never see each other's rows; the schema is dropped afterwards,
    /// also when `body` panics. Skips (returning) when the server's URL is not set.
    async fn with_scratch_schema<F, Fut>(test: &str, body: F)
    where
        F: FnOnce(PgConnectOptions) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some(url) = test_url(test) else {
            return;
        };
        let base = connect_options(&url).expect("test database URL");
        let schema = format!("mg_test_{}", Uuid::new_v4().simple());
        let mut admin = PgConnection::connect_with(&base)
            .await
            .unwrap_or_else(|e| panic!("connecting to {URL_VAR}: {e}"));
        sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&mut admin)
            .await
            .expect("create scratch schema");
        let options = base.options([("search_path", schema.as_str())]);
        // Spawned so a panic comes back as a JoinError and the schema is still dropped.
        let outcome = tokio::spawn(body(options)).await;
        sqlx::query(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(&mut admin)
            .await
            .expect("drop scratch schema");
        admin.close().await.ok();
        if let Err(e) = outcome {
            match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(e) => panic!("test task failed: {e}"),
            }
        }
    }

    async fn open(options: &PgConnectOptions) -> PostgresStore {
        PostgresStore::open_with(options.clone())
            .await
            .expect("open PostgresStore")
    }

    fn new_user(email: &str) -> NewUser {
        NewUser {
            email: email.to_owned(),
            password_hash: None,
            role: Role::User,
            invitation_pending: false,
            invitation: None,
            created: 1_700_000_000,
        }
    }

    fn new_session(user: UserId) -> Session {
        Session {
            id: SessionId::new_random(),
            user_id: user,
            created: 1_700_000_000,
            expires_at: 1_700_086_400,
            revoked_at: None,
            current_jti: Uuid::new_v4(),
            refresh_count: 0,
            last_refresh_at: None,
        }
    }

    async fn sessions_of_new_user(store: &PostgresStore, email: &str, n: usize) -> Vec<Session> {
        let user = store.create_user(new_user(email)).await.unwrap();
        let mut sessions = Vec::new();
        for _ in 0..n {
            let s = new_session(user.id);
            store.create_session(&s).await.unwrap();
            sessions.push(s);
        }
        sessions
    }

    async fn applied_migrations(store: &PostgresStore) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
            .fetch_one(store.pool())
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn conformance_suite() {
        with_scratch_schema("conformance_suite", |options| async move {
            suite::run_all(Arc::new(open(&options).await)).await;
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn conformance_suite_reruns_on_a_used_schema() {
        with_scratch_schema(
            "conformance_suite_reruns_on_a_used_schema",
            |options| async move {
                let store = Arc::new(open(&options).await);
                suite::run_all(store.clone()).await;
                suite::run_all(store).await;
            },
        )
        .await;
    }

    #[tokio::test]
    async fn reopening_keeps_data_and_does_not_reapply_migrations() {
        with_scratch_schema(
            "reopening_keeps_data_and_does_not_reapply_migrations",
            |options| async move {
                let store = open(&options).await;
                let user = store
                    .create_user(new_user("keep@example.test"))
                    .await
                    .unwrap();
                assert_eq!(applied_migrations(&store).await, migrations().len() as i64);
                store.pool().close().await;

                // Two replicas starting at once: the migrator's lock lets one apply, none twice.
                let (a, b) = tokio::join!(open(&options), open(&options));
                for store in [&a, &b] {
                    let found = store.user_by_email("keep@example.test").await.unwrap();
                    assert_eq!(found.as_ref(), Some(&user), "user survives reopening");
                    assert_eq!(
                        applied_migrations(store).await,
                        migrations().len() as i64,
                        "each migration recorded once"
                    );
                }
            },
        )
        .await;
    }

    #[tokio::test]
    async fn database_from_first_migration_upgrades() {
        with_scratch_schema(
            "database_from_first_migration_upgrades",
            |options| async move {
                // A schema with only migration 1 applied.
                let pool = PgPoolOptions::new()
                    .max_connections(1)
                    .connect_with(options.clone())
                    .await
                    .unwrap();
                Migrator::with_migrations(migrations().into_iter().take(1).collect())
                    .run(&pool)
                    .await
                    .unwrap();
                let id = Uuid::new_v4();
                sqlx::query(
                "INSERT INTO users (id, email, password_hash, role, invitation_pending, created) \
                 VALUES ($1, 'old@example.test', 'hash', 'admin', true, 42)",
            )
            .bind(id)
            .execute(&pool)
            .await
            .unwrap();
                pool.close().await;

                let store = open(&options).await;
                let user = store
                    .user_by_email("old@example.test")
                    .await
                    .unwrap()
                    .expect("user survives the upgrade");
                assert_eq!(user.id, UserId(id));
                assert_eq!(user.password_hash.as_deref(), Some("hash"));
                assert_eq!(user.role, Role::Admin);
                assert!(user.invitation_pending);
                assert_eq!(user.invitation, None, "no invitation before migration 2");
                assert_eq!(applied_migrations(&store).await, migrations().len() as i64);
            },
        )
        .await;
    }

    #[tokio::test]
    async fn schema_rejects_half_an_invitation_and_unknown_roles() {
        with_scratch_schema(
            "schema_rejects_half_an_invitation_and_unknown_roles",
            |options| async move {
                let store = open(&options).await;
                for (email, role, nonce, expires_at) in [
                    ("nonce-only@example.test", "user", Some("n"), None),
                    ("expiry-only@example.test", "user", None, Some(5_i64)),
                    ("root@example.test", "root", None, None),
                ] {
                    let err = sqlx::query(
                        "INSERT INTO users (id, email, role, created, invitation_pending, \
                         invitation_nonce, invitation_expires_at) \
                         VALUES ($1, $2, $3, 0, true, $4, $5)",
                    )
                    .bind(Uuid::new_v4())
                    .bind(email)
                    .bind(role)
                    .bind(nonce)
                    .bind(expires_at)
                    .execute(store.pool())
                    .await
                    .unwrap_err();
                    let is_check = matches!(
                        &err,
                        sqlx::Error::Database(e) if e.is_check_violation()
                    );
                    assert!(is_check, "{email}: {err}");
                }
            },
        )
        .await;
    }

    /// The feed-ordering guarantee of `append_revocations`, step by step: an append that starts
    /// while another is uncommitted waits for its commit, so its larger seq can never be read
    /// before the smaller one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn feed_appends_commit_in_seq_order() {
        with_scratch_schema("feed_appends_commit_in_seq_order", |options| async move {
            let store = open(&options).await;
            let reader = open(&options).await;
            let sessions = sessions_of_new_user(&store, "feed-order@example.test", 2).await;
            let (first, second) = (sessions[0].id, sessions[1].id);
            let cursor = reader.revocation_cursor().await.unwrap();

            // Transaction A appends `first` and stays open.
            let mut a = store.pool().begin().await.unwrap();
            append_revocations(&mut a, &[first], 10).await.unwrap();

            // B revokes `second` meanwhile; without the lock it would commit with the larger seq
            // while A's smaller one is still invisible.
            let b = tokio::spawn({
                let store = store.clone();
                async move { store.revoke_session(second, 20).await.unwrap() }
            });
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(!b.is_finished(), "B's append waits for A's commit");
            assert!(
                reader
                    .revocations_since(cursor, 10)
                    .await
                    .unwrap()
                    .is_empty(),
                "nothing uncommitted is visible"
            );

            a.commit().await.unwrap();
            assert!(b.await.unwrap(), "B revoked its session");
            let feed = reader.revocations_since(cursor, 10).await.unwrap();
            assert_eq!(
                feed.iter().map(|r| r.session_id).collect::<Vec<_>>(),
                vec![first, second],
                "commit order is seq order: {feed:?}"
            );
            assert!(feed[0].seq < feed[1].seq);
        })
        .await;
    }

    /// Many writers on two "replicas" revoke concurrently while a follower polls the way
    /// `auth::revocation` does (moving its cursor to the last seq read): it must see every
    /// revocation exactly once. Every other append dawdles a little before its commit, the
    /// window in which an unserialized feed lets a later seq be read first.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn follower_misses_no_concurrent_revocation() {
        const WRITERS: usize = 8;
        const PER_WRITER: usize = 40;
        with_scratch_schema(
            "follower_misses_no_concurrent_revocation",
            |options| async move {
                let replicas = [open(&options).await, open(&options).await];
                let follower = open(&options).await;
                let start = follower.revocation_cursor().await.unwrap();

                // Everything is set up before anything races.
                let mut expected = Vec::new();
                let mut work = Vec::new();
                for w in 0..WRITERS {
                    let store = replicas[w % 2].clone();
                    let sessions =
                        sessions_of_new_user(&store, &format!("w{w}@example.test"), PER_WRITER)
                            .await;
                    expected.extend(sessions.iter().map(|s| s.id));
                    work.push((store, sessions));
                }

                let done = Arc::new(tokio::sync::Notify::new());
                let poller = tokio::spawn({
                    let done = done.clone();
                    async move {
                        let mut cursor = start;
                        let mut seen = Vec::new();
                        let mut finishing = false;
                        loop {
                            let batch = follower.revocations_since(cursor, 7).await.unwrap();
                            for r in &batch {
                                assert!(r.seq > cursor, "seqs increase: {r:?} after {cursor}");
                                seen.push(r.session_id);
                                cursor = r.seq;
                            }
                            if batch.is_empty() {
                                if finishing {
                                    return seen;
                                }
                                tokio::select! {
                                    _ = done.notified() => finishing = true,
                                    _ = tokio::task::yield_now() => {}
                                }
                            }
                        }
                    }
                });

                let mut writers = tokio::task::JoinSet::new();
                for (store, sessions) in work {
                    writers.spawn(async move {
                        for (i, s) in sessions.into_iter().enumerate() {
                            if i % 2 == 0 {
                                assert!(store.revoke_session(s.id, 1_700_000_100).await.unwrap());
                            } else {
                                let mut tx = store.pool().begin().await.unwrap();
                                append_revocations(&mut tx, &[s.id], 1_700_000_100)
                                    .await
                                    .unwrap();
                                let dawdle = fastrand::u64(0..3_000);
                                tokio::time::sleep(Duration::from_micros(dawdle)).await;
                                tx.commit().await.unwrap();
                            }
                        }
                    });
                }
                writers.join_all().await;
                done.notify_one();
                let seen = poller.await.unwrap();

                assert_eq!(seen.len(), expected.len(), "every revocation seen once");
                let mut seen_sorted = seen.clone();
                seen_sorted.sort();
                expected.sort();
                assert_eq!(seen_sorted, expected);
            },
        )
        .await;
    }

    /// Two stores on one database behave as replicas: what one writes, the other reads,
    /// including through the revocation feed each one follows from its own cursor.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn replicas_share_users_sessions_and_the_revocation_feed() {
        with_scratch_schema(
            "replicas_share_users_sessions_and_the_revocation_feed",
            |options| async move {
                let a = open(&options).await;
                let b = open(&options).await;
                let cursor_a = a.revocation_cursor().await.unwrap();
                let cursor_b = b.revocation_cursor().await.unwrap();
                assert_eq!(cursor_a, cursor_b);

                let user = a
                    .create_user(new_user("shared@example.test"))
                    .await
                    .unwrap();
                assert_eq!(
                    b.user_by_email("SHARED@example.test").await.unwrap(),
                    Some(user.clone())
                );
                assert!(matches!(
                    b.create_user(new_user("shared@example.test")).await,
                    Err(StoreError::DuplicateEmail)
                ));
                let s1 = new_session(user.id);
                let s2 = new_session(user.id);
                let s3 = new_session(user.id);
                for s in [&s1, &s2, &s3] {
                    a.create_session(s).await.unwrap();
                }

                // A logout on replica A reaches B's feed, and the other way round.
                assert!(a.revoke_session(s1.id, 100).await.unwrap());
                let on_b = b.revocations_since(cursor_b, 100).await.unwrap();
                assert_eq!(
                    on_b.iter().map(|r| r.session_id).collect::<Vec<_>>(),
                    [s1.id]
                );
                assert!(b.revoke_session(s2.id, 110).await.unwrap());
                assert!(
                    !a.revoke_session(s2.id, 120).await.unwrap(),
                    "B already did"
                );
                let on_a = a.revocations_since(cursor_a, 100).await.unwrap();
                assert_eq!(
                    on_a.iter().map(|r| r.session_id).collect::<Vec<_>>(),
                    [s1.id, s2.id]
                );
                assert_eq!(b.revocation_cursor().await.unwrap(), on_a[1].seq);
                assert_eq!(a.revocation_cursor().await.unwrap(), on_a[1].seq);

                // Disabling on B revokes the rest; A follows from where it was.
                b.set_user_disabled("shared@example.test", true, 130)
                    .await
                    .unwrap()
                    .expect("known user");
                let rest = a.revocations_since(on_a[1].seq, 100).await.unwrap();
                assert_eq!(
                    rest.iter().map(|r| r.session_id).collect::<Vec<_>>(),
                    [s3.id]
                );
                assert_eq!(
                    a.session(s3.id).await.unwrap().unwrap().revoked_at,
                    Some(130)
                );
                assert!(a.user_by_id(user.id).await.unwrap().unwrap().disabled);
            },
        )
        .await;
    }

    /// A feed append by one replica wakes another replica's listener, on commit and not
    /// before: a woken follower always finds the entries it was woken for.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn listener_is_woken_by_another_replicas_commit() {
        with_scratch_schema(
            "listener_is_woken_by_another_replicas_commit",
            |options| async move {
                let (a, b) = (open(&options).await, open(&options).await);
                let mut listener = b.revocation_listener().expect("PostgreSQL pushes");
                assert_eq!(listener.next().await.unwrap(), FeedWakeup::Subscribed);
                let sessions = sessions_of_new_user(&a, "listen@example.test", 2).await;

                let mut tx = a.pool().begin().await.unwrap();
                append_revocations(&mut tx, &[sessions[0].id], 10)
                    .await
                    .unwrap();
                let early = tokio::time::timeout(Duration::from_millis(300), listener.next());
                assert!(early.await.is_err(), "no wake-up before the commit");
                tx.commit().await.unwrap();
                let woken = tokio::time::timeout(Duration::from_secs(5), listener.next()).await;
                assert_eq!(woken.expect("woken").unwrap(), FeedWakeup::Appended);

                assert!(a.revoke_session(sessions[1].id, 11).await.unwrap());
                let woken = tokio::time::timeout(Duration::from_secs(5), listener.next()).await;
                assert_eq!(woken.expect("woken").unwrap(), FeedWakeup::Appended);
            },
        )
        .await;
    }

    /// Concurrent refreshes of one token through two replicas: exactly one wins.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn rotations_across_replicas_have_one_winner() {
        with_scratch_schema(
            "rotations_across_replicas_have_one_winner",
            |options| async move {
                let replicas = [open(&options).await, open(&options).await];
                let session = sessions_of_new_user(&replicas[0], "rot@example.test", 1)
                    .await
                    .remove(0);
                let barrier = Arc::new(tokio::sync::Barrier::new(16));
                let mut tasks = tokio::task::JoinSet::new();
                for i in 0..16 {
                    let (store, barrier) = (replicas[i % 2].clone(), barrier.clone());
                    tasks.spawn(async move {
                        barrier.wait().await;
                        store
                            .rotate_session_token(
                                session.id,
                                session.current_jti,
                                Uuid::new_v4(),
                                5,
                            )
                            .await
                            .unwrap()
                    });
                }
                let outcomes = tasks.join_all().await;
                let wins = outcomes.iter().filter(|o| **o == Rotation::Rotated).count();
                assert_eq!(wins, 1, "{outcomes:?}");
                assert!(
                    outcomes
                        .iter()
                        .all(|o| matches!(o, Rotation::Rotated | Rotation::NotCurrent))
                );
            },
        )
        .await;
    }

    /// Revoking a user's sessions feeds them in id order, one seq each.
    #[tokio::test]
    async fn bulk_revocation_feeds_in_id_order() {
        with_scratch_schema("bulk_revocation_feeds_in_id_order", |options| async move {
            let store = open(&options).await;
            let sessions = sessions_of_new_user(&store, "bulk@example.test", 12).await;
            let cursor = store.revocation_cursor().await.unwrap();
            let revoked = store
                .revoke_user_sessions(sessions[0].user_id, 50)
                .await
                .unwrap();
            let mut ids: Vec<SessionId> = sessions.iter().map(|s| s.id).collect();
            ids.sort();
            assert_eq!(revoked, ids);
            let feed = store.revocations_since(cursor, 100).await.unwrap();
            assert_eq!(
                feed.iter().map(|r| r.session_id).collect::<Vec<_>>(),
                ids,
                "feed order is the returned (sorted) order"
            );
            assert!(feed.windows(2).all(|w| w[0].seq < w[1].seq));
        })
        .await;
    }

    /// `options` with an `application_name` of their own: the backends of a store opened with
    /// them, and only those, can be found (and killed) in `pg_stat_activity`.
    fn named(options: &PgConnectOptions) -> (PgConnectOptions, String) {
        let name = format!("mg_test_{}", Uuid::new_v4().simple());
        (options.clone().application_name(&name), name)
    }

    /// A connection for the test itself, outside the store's pool and its name.
    async fn admin_connection(options: &PgConnectOptions) -> PgConnection {
        PgConnection::connect_with(&options.clone().application_name("mg_test_admin"))
            .await
            .expect("admin connection")
    }

    /// Terminates the backends named `name` (all, or only those waiting on a lock) and waits
    /// until they are gone; returns how many.
    async fn terminate(admin: &mut PgConnection, name: &str, lock_waiters_only: bool) -> i64 {
        // The call in the select list, never in the WHERE: the planner may evaluate WHERE
        // conditions in any order, and a `pg_terminate_backend` there kills other backends.
        let killed: Vec<(i32, bool)> = sqlx::query_as(
            "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = $1 AND ($2 = false OR wait_event_type = 'Lock')",
        )
        .bind(name)
        .bind(lock_waiters_only)
        .fetch_all(&mut *admin)
        .await
        .unwrap();
        let killed: Vec<i32> = killed.into_iter().map(|(pid, _)| pid).collect();
        for _ in 0..500 {
            let left: i64 =
                sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)")
                    .bind(&killed)
                    .fetch_one(&mut *admin)
                    .await
                    .unwrap();
            if left == 0 {
                return killed.len() as i64;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("backends of {name} still there after being terminated");
    }

    /// Fills `store`'s pool with `n` idle connections, then kills every one of them on the
    /// server, as a restart or a pooler dropping idle connections would: whatever the store
    /// takes from its pool next is dead.
    async fn kill_idle_pool(store: &PostgresStore, n: u32, name: &str, admin: &mut PgConnection) {
        let mut held = Vec::new();
        for _ in 0..n {
            held.push(store.pool().acquire().await.unwrap());
        }
        drop(held);
        for _ in 0..500 {
            if store.pool().num_idle() >= n as usize {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let pooled = store.pool().size();
        assert!(pooled >= n, "{pooled} pooled");
        assert_eq!(
            store.pool().num_idle(),
            pooled as usize,
            "all pooled connections idle"
        );
        assert_eq!(
            terminate(admin, name, false).await,
            i64::from(pooled),
            "every pooled connection killed"
        );
    }

    /// Waits until a backend named `name` waits on a lock: its statement has reached the server.
    async fn until_waiting_on_a_lock(admin: &mut PgConnection, name: &str) {
        for _ in 0..500 {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE application_name = $1 AND wait_event_type = 'Lock'",
            )
            .bind(name)
            .fetch_one(&mut *admin)
            .await
            .unwrap();
            if waiting > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no backend of {name} came to wait on the lock");
    }

    /// Every operation, each right after all of the pool's idle connections were killed, still
    /// succeeds, and each write takes effect once: reads and idempotent writes are run again,
    /// transactions failed before their commit, single writes were stopped by their ping.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_operation_survives_its_pooled_connections_being_killed() {
        with_scratch_schema(
            "every_operation_survives_its_pooled_connections_being_killed",
            |options| async move {
                let (named_options, name) = named(&options);
                let store = open(&named_options).await;
                let mut admin = admin_connection(&options).await;
                let t0: UnixTime = 1_700_000_000;
                macro_rules! after_kill {
                    ($op:expr) => {{
                        kill_idle_pool(&store, 3, &name, &mut admin).await;
                        $op.await.unwrap_or_else(|e| {
                            panic!("{} on a killed pool: {e:?}", stringify!($op))
                        })
                    }};
                }

                // Once (pinged first), then reads of what they wrote.
                let user = after_kill!(store.create_user(new_user("dead@example.test")));
                let session = new_session(user.id);
                after_kill!(store.create_session(&session));
                assert_eq!(after_kill!(store.user_by_id(user.id)), Some(user.clone()));
                assert_eq!(
                    after_kill!(store.user_by_email("DEAD@example.test")),
                    Some(user.clone())
                );
                assert_eq!(
                    after_kill!(store.session(session.id)),
                    Some(session.clone())
                );
                assert_eq!(after_kill!(store.count_users()), 1);
                assert_eq!(after_kill!(store.list_users()), vec![user.clone()]);
                after_kill!(store.ping());
                let new_jti = Uuid::new_v4();
                assert_eq!(
                    after_kill!(store.rotate_session_token(
                        session.id,
                        session.current_jti,
                        new_jti,
                        t0 + 1
                    )),
                    Rotation::Rotated
                );
                // Counted once each: the third attempt finds the window full.
                let key = "dead-throttle@example.test";
                assert_eq!(
                    after_kill!(store.throttle_reserve("login", key, 2, 60, t0)),
                    Ok(t0)
                );
                assert_eq!(
                    after_kill!(store.throttle_reserve("login", key, 2, 60, t0)),
                    Ok(t0)
                );
                assert_eq!(
                    after_kill!(store.throttle_reserve("login", key, 2, 60, t0)),
                    Err(60)
                );
                after_kill!(store.throttle_refund("login", key, t0));
                assert_eq!(
                    after_kill!(store.throttle_reserve("login", key, 2, 60, t0)),
                    Ok(t0)
                );

                // Idempotent writes.
                after_kill!(store.record_login(user.id, t0 + 2));
                after_kill!(store.set_sso_enabled(user.id));
                let found = store.user_by_id(user.id).await.unwrap().unwrap();
                assert_eq!((found.last_login, found.sso_enabled), (Some(t0 + 2), true));
                let invited = store
                    .create_user(NewUser {
                        invitation_pending: true,
                        invitation: Some(Invitation {
                            nonce: "first".into(),
                            expires_at: t0 + 100,
                        }),
                        ..new_user("dead-invited@example.test")
                    })
                    .await
                    .unwrap();
                let renewed = Invitation {
                    nonce: "second".into(),
                    expires_at: t0 + 200,
                };
                let after = after_kill!(store.renew_invitation(invited.id, &renewed, Role::Admin));
                assert_eq!(after.and_then(|u| u.invitation), Some(renewed));
                assert!(after_kill!(store.accept_invitation(
                    invited.id,
                    "second",
                    "hash",
                    t0 + 3
                )));

                // Transactions, and the feed they append to.
                let cursor = after_kill!(store.revocation_cursor());
                let others = sessions_of_new_user(&store, "dead-many@example.test", 2).await;
                assert!(after_kill!(store.revoke_session(session.id, t0 + 4)));
                let mut bulk: Vec<SessionId> = others.iter().map(|s| s.id).collect();
                bulk.sort();
                assert_eq!(
                    after_kill!(store.revoke_user_sessions(others[0].user_id, t0 + 5)),
                    bulk
                );
                let fed = after_kill!(store.revocations_since(cursor, 10));
                assert_eq!(
                    fed.iter().map(|r| r.session_id).collect::<Vec<_>>(),
                    [vec![session.id], bulk].concat(),
                    "each revocation fed once"
                );
                let reset = PasswordReset {
                    digest: "ab".repeat(32),
                    user_id: user.id,
                    created: t0,
                    expires_at: t0 + 3600,
                    used_at: None,
                };
                after_kill!(store.create_password_reset(&reset));
                assert_eq!(
                    after_kill!(store.password_reset(&reset.digest)),
                    Some(reset.clone())
                );
                let later = new_session(user.id);
                store.create_session(&later).await.unwrap();
                assert_eq!(
                    after_kill!(store.complete_password_reset(
                        &reset.digest,
                        user.id,
                        "new hash",
                        t0 + 6
                    )),
                    Some(vec![later.id])
                );
                let disabled =
                    after_kill!(store.set_user_disabled("dead@example.test", true, t0 + 7));
                assert!(disabled.is_some_and(|u| u.disabled));
                let event = AuditEvent {
                    at: t0,
                    kind: "login_succeeded".into(),
                    user_id: Some(user.id),
                    email: None,
                    client_ip: None,
                    request_id: None,
                    detail: Default::default(),
                };
                after_kill!(store.append_audit(std::slice::from_ref(&event)));
                let filter = AuditFilter {
                    user_id: Some(user.id),
                    email: None,
                    since: None,
                    limit: 10,
                };
                assert_eq!(after_kill!(store.audit_events(&filter)), vec![event]);
                assert_eq!(after_kill!(store.prune_audit(t0 + 1)), 1);
                after_kill!(store.prune(t0));

                // Many callers at once, each meeting a dead connection or a pinged one.
                kill_idle_pool(&store, POOL_SIZE, &name, &mut admin).await;
                let mut readers = tokio::task::JoinSet::new();
                for _ in 0..3 * POOL_SIZE {
                    let store = store.clone();
                    readers
                        .spawn(async move { store.user_by_id(user.id).await.map(|u| u.is_some()) });
                }
                for read in readers.join_all().await {
                    assert!(read.expect("a concurrent read on a killed pool"));
                }
                admin.close().await.ok();
            },
        )
        .await;
    }

    /// A single write whose statement reached the server before its backend was killed is not
    /// run again: it may have taken effect (here it did not, and it is not counted twice either).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_single_write_killed_on_the_server_is_not_run_again() {
        with_scratch_schema(
            "a_single_write_killed_on_the_server_is_not_run_again",
            |options| async move {
                let (named_options, name) = named(&options);
                let store = open(&named_options).await;
                let mut admin = admin_connection(&options).await;
                let key = "midflight@example.test";
                let t0: UnixTime = 1_700_000_000;
                assert_eq!(
                    store
                        .throttle_reserve("login", key, 5, 60, t0)
                        .await
                        .unwrap(),
                    Ok(t0)
                );

                // The window's row locked, so the store's statement waits on the server.
                let mut locker = admin_connection(&options).await;
                let mut lock = locker.begin().await.unwrap();
                sqlx::query("SELECT 1 FROM throttle_windows WHERE key = $1 FOR UPDATE")
                    .bind(key)
                    .execute(&mut *lock)
                    .await
                    .unwrap();
                let reserve = tokio::spawn({
                    let store = store.clone();
                    async move { store.throttle_reserve("login", key, 5, 60, t0 + 1).await }
                });
                until_waiting_on_a_lock(&mut admin, &name).await;
                assert_eq!(terminate(&mut admin, &name, true).await, 1);
                lock.rollback().await.unwrap();

                let outcome = reserve.await.unwrap();
                assert!(
                    matches!(&outcome, Err(e) if is_dead_connection(e)),
                    "the lost connection is reported, not run again: {outcome:?}"
                );
                let attempts: i32 =
                    sqlx::query_scalar("SELECT attempts FROM throttle_windows WHERE key = $1")
                        .bind(key)
                        .fetch_one(&mut admin)
                        .await
                        .unwrap();
                assert_eq!(attempts, 1, "the killed statement was rolled back");
                // The store carries on.
                assert_eq!(
                    store
                        .throttle_reserve("login", key, 5, 60, t0 + 2)
                        .await
                        .unwrap(),
                    Ok(t0)
                );
                admin.close().await.ok();
                locker.close().await.ok();
            },
        )
        .await;
    }

    /// A transaction whose backend is killed before its commit is run again on another
    /// connection: the server rolled the first run back, so the revocations are fed once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_transaction_killed_before_its_commit_is_run_again() {
        with_scratch_schema(
            "a_transaction_killed_before_its_commit_is_run_again",
            |options| async move {
                let (named_options, name) = named(&options);
                let store = open(&named_options).await;
                let mut admin = admin_connection(&options).await;
                let sessions = sessions_of_new_user(&store, "midtx@example.test", 2).await;
                let cursor = store.revocation_cursor().await.unwrap();

                let mut locker = admin_connection(&options).await;
                let mut lock = locker.begin().await.unwrap();
                sqlx::query("SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE")
                    .bind(sessions[0].id.0)
                    .execute(&mut *lock)
                    .await
                    .unwrap();
                let revoke = tokio::spawn({
                    let store = store.clone();
                    let user = sessions[0].user_id;
                    async move { store.revoke_user_sessions(user, 50).await }
                });
                until_waiting_on_a_lock(&mut admin, &name).await;
                assert_eq!(terminate(&mut admin, &name, true).await, 1);
                // The second run waits on the same lock, on a connection of its own.
                until_waiting_on_a_lock(&mut admin, &name).await;
                lock.commit().await.unwrap();

                let mut ids: Vec<SessionId> = sessions.iter().map(|s| s.id).collect();
                ids.sort();
                assert_eq!(revoke.await.unwrap().expect("run again"), ids);
                let fed = store.revocations_since(cursor, 10).await.unwrap();
                assert_eq!(
                    fed.iter().map(|r| r.session_id).collect::<Vec<_>>(),
                    ids,
                    "fed once"
                );
                admin.close().await.ok();
                locker.close().await.ok();
            },
        )
        .await;
    }

    /// `sslmode` from the URL is honoured, and TLS (rustls on aws-lc-rs) really connects when
    /// the server offers it.
    #[tokio::test]
    async fn sslmode_from_the_url_is_honoured() {
        let Some(url) = test_url("sslmode_from_the_url_is_honoured") else {
            return;
        };
        let with_mode = |mode: &str| {
            let mut url = url::Url::parse(&url).unwrap();
            let rest: Vec<(String, String)> = url
                .query_pairs()
                .filter(|(k, _)| k != "sslmode")
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            url.query_pairs_mut()
                .clear()
                .extend_pairs(rest)
                .append_pair("sslmode", mode);
            url.to_string()
        };
        async fn uses_tls(url: &str) -> bool {
            let mut conn = PgConnection::connect_with(&connect_options(url).unwrap())
                .await
                .unwrap_or_else(|e| panic!("connect with {url}: {e}"));
            let ssl =
                sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
            conn.close().await.ok();
            ssl
        }

        assert!(!uses_tls(&with_mode("disable")).await, "sslmode=disable");
        let mut conn = PgConnection::connect_with(&connect_options(&url).unwrap())
            .await
            .unwrap();
        let server_ssl: String = sqlx::query_scalar("SHOW ssl")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        conn.close().await.ok();
        if server_ssl == "on" {
            assert!(uses_tls(&with_mode("require")).await, "sslmode=require");
        } else {
            eprintln!("sslmode_from_the_url_is_honoured: server has ssl off; require not tried");
            assert!(
                PgConnection::connect_with(&connect_options(&with_mode("require")).unwrap())
                    .await
                    .is_err(),
                "sslmode=require refuses a server without TLS"
            );
        }
    }

    #[test]
    fn url_forms() {
        let opts = connect_options("postgres://gate:pw@db.internal:6432/gate").unwrap();
        assert_eq!(opts.get_host(), "db.internal");
        assert_eq!(opts.get_port(), 6432);
        assert_eq!(opts.get_username(), "gate");
        assert_eq!(opts.get_database(), Some("gate"));

        assert_eq!(opts.get_options(), Some("-c client_min_messages=warning"));

        let opts = connect_options("postgresql://db/gate?sslmode=verify-full").unwrap();
        assert!(matches!(opts.get_ssl_mode(), PgSslMode::VerifyFull));
        let opts = connect_options("postgres://db/gate?options=-c%20client_min_messages%3Dnotice")
            .unwrap();
        assert_eq!(
            opts.get_options(),
            Some("-c client_min_messages=notice"),
            "the URL's own setting is kept"
        );
        let opts = connect_options("postgres://db/gate?sslmode=disable").unwrap();
        assert!(matches!(opts.get_ssl_mode(), PgSslMode::Disable));

        for bad in [
            "postgres://gate:s3cret@db/gate?sslmode=sometimes",
            "mysql://gate:s3cret@db/gate",
            "sqlite://gate.db",
        ] {
            match connect_options(bad) {
                Err(StoreError::InvalidUrl(message)) => {
                    assert!(!message.contains("s3cret"), "{message}");
                    assert!(!message.contains("error with configuration"), "{message}");
                }
                other => panic!("{bad}: expected InvalidUrl, got {other:?}"),
            }
        }
    }

    /// The replay rule: nothing is run again after a failed acquire, a transaction up to its
    /// `COMMIT`, a single write only when its ping failed.
    #[test]
    fn which_failures_run_again() {
        use Replay::*;
        use Stage::*;
        for (replay, reruns) in [
            (Idempotent, [false, true, true, true]),
            (Transaction, [false, true, true, false]),
            (Once, [false, true, false, false]),
        ] {
            for (stage, rerun) in [Acquire, Check, Statements, Commit].into_iter().zip(reruns) {
                assert_eq!(replay.may_rerun(stage), rerun, "{replay:?} at {stage:?}");
            }
        }
    }

    #[test]
    fn dead_connection_errors() {
        let io = |kind| StoreError::Database(sqlx::Error::Io(std::io::Error::from(kind)));
        for kind in [
            std::io::ErrorKind::UnexpectedEof,
            std::io::ErrorKind::BrokenPipe,
            std::io::ErrorKind::ConnectionReset,
        ] {
            assert!(is_dead_connection(&io(kind)), "{kind:?}");
        }
        for alive in [
            StoreError::Database(sqlx::Error::PoolTimedOut),
            StoreError::Database(sqlx::Error::PoolClosed),
            StoreError::Database(sqlx::Error::RowNotFound),
            StoreError::DuplicateEmail,
            StoreError::Corrupt("x".into()),
        ] {
            assert!(!is_dead_connection(&alive), "{alive:?}");
        }
    }

    #[test]
    fn connections_idle_when_a_loss_was_seen_are_suspect() {
        let loss = ConnectionLoss::new();
        assert!(
            !loss.seen_while_idle(Duration::from_secs(3600)),
            "no loss yet"
        );
        std::thread::sleep(Duration::from_millis(2));
        loss.seen();
        std::thread::sleep(Duration::from_millis(2));
        assert!(loss.seen_while_idle(Duration::from_secs(3600)));
        assert!(
            !loss.seen_while_idle(Duration::from_micros(100)),
            "idle only since after the loss"
        );
    }

    /// A refused connection surfaces as an error within the acquire timeout, not a hang.
    #[tokio::test]
    async fn unreachable_server_fails_fast() {
        // Port 1 on localhost: nothing listens there.
        let started = std::time::Instant::now();
        let err = PostgresStore::open("postgres://gate@127.0.0.1:1/gate?sslmode=disable")
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Database(_)), "got {err:?}");
        assert!(started.elapsed() <= DEFAULT_TIMEOUT + Duration::from_secs(5));
    }
}
