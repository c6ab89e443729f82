//! What the shared [`Store`](crate::store::Store) implementation needs from PostgreSQL: runs
//! through [`PostgresStore::run`], the user row lock and the feed's append (see the parent
//! module's docs for the lock order).

use sqlx::error::DatabaseError;
use sqlx::postgres::{PgConnection, PgRow};

use super::feed::{PgFeedListener, append_revocations};
use super::{DIALECT, EMAIL_INDEX, LOCK_USER, PostgresStore, query};
use crate::store::backend::{Backend, BoxFuture, Conn, Replay, Run, statement_runners};
use crate::store::sql::{Dialect, Statement, params};
use crate::store::{FeedKind, FeedListener, SessionId, StoreResult, UnixTime, UserId};

impl Backend for PostgresStore {
    statement_runners!(PgConnection, PgRow);

    const DIALECT: Dialect = DIALECT;

    async fn run<'env, T, F>(&self, replay: Replay, op: F) -> StoreResult<T>
    where
        T: Send,
        F: for<'c> FnMut(Conn<'c, 'env, PgConnection>) -> BoxFuture<'c, StoreResult<T>> + Send,
    {
        PostgresStore::run(self, replay, op).await
    }

    /// The first lock of every transaction that changes the user's password resets. A no-op for
    /// an unknown user.
    async fn lock_user(conn: &mut PgConnection, user: UserId) -> StoreResult<()> {
        query(Statement::new(LOCK_USER, params![user]))?
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn append_revocations(
        conn: &mut PgConnection,
        ids: &[SessionId],
        at: UnixTime,
        kind: FeedKind,
    ) -> StoreResult<()> {
        append_revocations(conn, ids, at, kind).await
    }

    fn is_duplicate_email(error: &dyn DatabaseError) -> bool {
        error.is_unique_violation() && error.constraint() == Some(EMAIL_INDEX)
    }

    fn feed_listener(&self) -> Option<Box<dyn FeedListener>> {
        Some(Box::new(PgFeedListener {
            pool: self.listener_pool.clone(),
            listener: None,
        }))
    }
}
