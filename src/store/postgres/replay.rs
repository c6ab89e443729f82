//! Running an operation once more when its pooled connection turns out to be dead, where that
//! is safe for the operation.
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

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::Connection;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, Postgres};

use super::PostgresStore;
use crate::store::backend::{BoxFuture, Conn, Replay};
use crate::store::{StoreError, StoreResult};

impl PostgresStore {
    /// Runs `op` on a pooled connection, and once more on another one if its connection turned
    /// out to be dead and `replay` allows it (see the module docs). `Replay::Transaction` hands
    /// `op` a connection inside a transaction that this begins and commits.
    pub(super) async fn run<'env, T, F>(&self, replay: Replay, mut op: F) -> StoreResult<T>
    where
        F: for<'c> FnMut(Conn<'c, 'env, PgConnection>) -> BoxFuture<'c, StoreResult<T>>,
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
        F: for<'c> FnMut(Conn<'c, 'env, PgConnection>) -> BoxFuture<'c, StoreResult<T>>,
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
                Replay::Idempotent => op(Conn::new(&mut *conn))
                    .await
                    .map_err(|e| (Stage::Statements, e)),
                Replay::Once => {
                    self.check_alive(&mut conn)
                        .await
                        .map_err(|e| (Stage::Check, e))?;
                    op(Conn::new(&mut *conn))
                        .await
                        .map_err(|e| (Stage::Statements, e))
                }
                Replay::Transaction => {
                    let mut tx = conn.begin().await.map_err(|e| (Stage::Check, e.into()))?;
                    let value = op(Conn::new(&mut *tx))
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
}

/// How far a failed attempt got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
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
    pub(super) fn may_rerun(self, stage: Stage) -> bool {
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
pub(super) fn is_dead_connection(error: &StoreError) -> bool {
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

/// When the store last met a dead connection. A restart, failover or a pooler dropping its
/// connections kills every connection idle at the time, so the pool pings each connection that
/// was already idle then before handing it out (and opens a new one when the ping fails),
/// instead of letting each of them fail one more operation. A connection that went idle later
/// is spared: sqlx pings every connection on its way back to the pool.
#[derive(Debug)]
pub(super) struct ConnectionLoss {
    epoch: Instant,
    /// Nanoseconds from `epoch` to the last loss; 0 for none yet.
    last: AtomicU64,
}

impl ConnectionLoss {
    pub(super) fn new() -> ConnectionLoss {
        ConnectionLoss {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    pub(super) fn seen(&self) {
        self.last.fetch_max(self.now().max(1), Ordering::Relaxed);
    }

    /// Was a connection idle for `idle_for` already idle when the last loss was seen?
    pub(super) fn seen_while_idle(&self, idle_for: Duration) -> bool {
        let last = self.last.load(Ordering::Relaxed);
        let idle_for = u64::try_from(idle_for.as_nanos()).unwrap_or(u64::MAX);
        last != 0 && self.now().saturating_sub(idle_for) <= last
    }
}
