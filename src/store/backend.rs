//! The one [`Store`] implementation, written over [`Backend`]: what each method runs is the same
//! on SQLite and PostgreSQL, so it is written here once. A backend supplies only what differs:
//! how an operation gets its connection (and whether it may run again, see [`Replay`]), how a
//! [`Statement`] runs, the row lock of a user and the revocation feed's append.

use std::future::Future;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;

use async_trait::async_trait;

use super::rows::{
    Columns, audit_events_oldest_first, password_reset_from_row, revocation_from_row,
    session_from_row, user_from_row,
};
use super::sql::{self, Dialect, Statement};
use super::user_change::{change_user_in, revoke_open_sessions};
use super::{
    AuditEvent, AuditFilter, ChangeRefused, ChangedUser, FeedKind, FeedListener, Invitation,
    InvitationAcceptance, NewUser, PasswordReset, ResetCompletion, Revocation, Role, Rotation,
    Session, SessionId, Store, StoreError, StoreResult, ThrottleAttempt, TokenSwap, UnixTime, User,
    UserChanges, UserId, UserPage,
};
use Replay::{Idempotent, Once, Transaction};

/// What kind of operation [`Backend::run`] runs. On PostgreSQL it also says whether the
/// operation may run again after its pooled connection died (see `postgres::replay`); on SQLite,
/// only whether it is a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Replay {
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

/// What an operation of [`Backend::run`] returns.
pub(super) type BoxFuture<'c, T> = Pin<Box<dyn Future<Output = T> + Send + 'c>>;

/// The connection [`Backend::run`] lends an operation (dereferences to it). Its second lifetime,
/// bounded as in `std::thread::scope`'s `Scope<'scope, 'env>`, lets the operation's boxed future
/// hold both this borrow and the method's own arguments: `'env: 'c` is implied by the type. (An
/// `AsyncFnMut` operation would need no box, but rustc cannot yet prove its future `Send` for
/// every lifetime, as `async_trait` requires.)
pub(super) struct Conn<'c, 'env: 'c, C> {
    conn: &'c mut C,
    env: PhantomData<&'c &'env ()>,
}

impl<'c, C> Conn<'c, '_, C> {
    pub(super) fn new(conn: &'c mut C) -> Self {
        Conn {
            conn,
            env: PhantomData,
        }
    }
}

impl<C> Deref for Conn<'_, '_, C> {
    type Target = C;

    fn deref(&self) -> &C {
        self.conn
    }
}

impl<C> DerefMut for Conn<'_, '_, C> {
    fn deref_mut(&mut self) -> &mut C {
        self.conn
    }
}

/// What a database backend supplies to the [`Store`] implementation below.
pub(super) trait Backend: Send + Sync + 'static {
    type Connection: Send;
    type Row: Columns + Send + Sync;

    /// The statements whose text differs from the other backend's.
    const DIALECT: Dialect;

    /// Runs `op` on a pooled connection, inside a transaction that this begins and commits for
    /// [`Replay::Transaction`].
    fn run<'env, T, F>(&self, replay: Replay, op: F) -> impl Future<Output = StoreResult<T>> + Send
    where
        T: Send,
        F: for<'c> FnMut(Conn<'c, 'env, Self::Connection>) -> BoxFuture<'c, StoreResult<T>> + Send;

    /// Runs `statement`; returns how many rows it changed.
    fn execute<'c>(conn: &'c mut Self::Connection, statement: Statement<'c>) -> Run<'c, u64>;

    fn fetch_optional<'c>(
        conn: &'c mut Self::Connection,
        statement: Statement<'c>,
    ) -> Run<'c, Option<Self::Row>>;

    fn fetch_all<'c>(
        conn: &'c mut Self::Connection,
        statement: Statement<'c>,
    ) -> Run<'c, Vec<Self::Row>>;

    /// The first column of the first row, if there is a row.
    fn fetch_int<'c>(
        conn: &'c mut Self::Connection,
        statement: Statement<'c>,
    ) -> Run<'c, Option<Option<i64>>>;

    /// Locks the user's row for the rest of the transaction where the backend needs a row lock
    /// to serialize the changes of one user's password resets.
    fn lock_user(
        conn: &mut Self::Connection,
        user: UserId,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// Appends sessions to the revocation feed as `kind`, in the order given; the last thing a
    /// transaction does before it commits.
    fn append_revocations(
        conn: &mut Self::Connection,
        ids: &[SessionId],
        at: UnixTime,
        kind: FeedKind,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// Is `error` the violation of the unique index on users' emails?
    fn is_duplicate_email(error: &dyn sqlx::error::DatabaseError) -> bool;

    /// See [`Store::revocation_listener`].
    fn feed_listener(&self) -> Option<Box<dyn FeedListener>> {
        None
    }
}

/// What a statement runner ([`Backend::execute`], [`Backend::fetch_optional`], ...) returns.
pub(super) type Run<'c, T> = BoxFuture<'c, StoreResult<T>>;

/// The statement runners of [`Backend`] for a backend whose module has a `query` function that
/// makes a [`Statement`] an sqlx query; the same text on both backends.
macro_rules! statement_runners {
    ($connection:ty, $row:ty) => {
        type Connection = $connection;
        type Row = $row;

        fn execute<'c>(conn: &'c mut $connection, statement: Statement<'c>) -> Run<'c, u64> {
            Box::pin(async move { Ok(query(statement)?.execute(conn).await?.rows_affected()) })
        }

        fn fetch_optional<'c>(
            conn: &'c mut $connection,
            statement: Statement<'c>,
        ) -> Run<'c, Option<$row>> {
            Box::pin(async move { Ok(query(statement)?.fetch_optional(conn).await?) })
        }

        fn fetch_all<'c>(
            conn: &'c mut $connection,
            statement: Statement<'c>,
        ) -> Run<'c, Vec<$row>> {
            Box::pin(async move { Ok(query(statement)?.fetch_all(conn).await?) })
        }

        fn fetch_int<'c>(
            conn: &'c mut $connection,
            statement: Statement<'c>,
        ) -> Run<'c, Option<Option<i64>>> {
            Box::pin(async move {
                let row = query(statement)?.fetch_optional(conn).await?;
                Ok(row.map(|row| sqlx::Row::try_get(&row, 0)).transpose()?)
            })
        }
    };
}

pub(super) use statement_runners;

/// One statement as an operation of its own, run by `runner` (one of the backend's runners).
async fn single<B: Backend, T: Send>(
    store: &B,
    replay: Replay,
    statement: Statement<'_>,
    runner: for<'c> fn(&'c mut B::Connection, Statement<'c>) -> Run<'c, T>,
) -> StoreResult<T> {
    store
        .run(replay, |mut conn| {
            let statement = statement.clone();
            Box::pin(async move { runner(&mut conn, statement).await })
        })
        .await
}

/// The one integer an aggregate statement returns.
async fn count<B: Backend>(store: &B, statement: Statement<'_>) -> StoreResult<i64> {
    single(store, Replay::Idempotent, statement, B::fetch_int)
        .await?
        .flatten()
        .ok_or_else(|| sqlx::Error::RowNotFound.into())
}

pub(super) fn one<R, T>(row: Option<R>, map: fn(&R) -> StoreResult<T>) -> StoreResult<Option<T>> {
    row.as_ref().map(map).transpose()
}

/// Each method names its [`Replay`] class and, for a write, why it is safe in it. Transactions
/// take their locks in the order `postgres`'s module docs set out.
#[async_trait]
impl<B: Backend> Store for B {
    async fn ping(&self) -> StoreResult<()> {
        // `/readyz`: a dead pooled connection is not an unreachable database.
        single(self, Idempotent, sql::ping(), B::execute).await?;
        Ok(())
    }

    async fn count_users(&self) -> StoreResult<i64> {
        count(self, sql::count_users()).await
    }

    async fn create_user(&self, user: NewUser) -> StoreResult<User> {
        let user = User::from_new(user);
        // Once: a second run of an insert that took effect fails as a duplicate email.
        match single(self, Once, sql::insert_user(&user), B::execute).await {
            Ok(_) => Ok(user),
            Err(StoreError::Database(sqlx::Error::Database(e))) if B::is_duplicate_email(&*e) => {
                Err(StoreError::DuplicateEmail)
            }
            Err(e) => Err(e),
        }
    }

    async fn user_by_email(&self, email: &str) -> StoreResult<Option<User>> {
        let by_email = B::DIALECT.user_by_email(email);
        let found = single(self, Idempotent, by_email, B::fetch_optional).await?;
        one(found, user_from_row)
    }

    async fn user_by_id(&self, id: UserId) -> StoreResult<Option<User>> {
        one(
            single(self, Idempotent, sql::user_by_id(id), B::fetch_optional).await?,
            user_from_row,
        )
    }

    async fn list_users(&self) -> StoreResult<Vec<User>> {
        let rows = single(self, Idempotent, B::DIALECT.list_users(), B::fetch_all).await?;
        rows.iter().map(user_from_row).collect()
    }

    async fn record_login(&self, id: UserId, at: UnixTime) -> StoreResult<()> {
        // Idempotent: a second run writes the same time again. (Only a login of the same user
        // committed between the two runs, milliseconds apart, would see its later time replaced
        // by this one; `last_login` is informational.)
        single(self, Idempotent, sql::record_login(id, at), B::execute).await?;
        Ok(())
    }

    async fn users_page(&self, page: &UserPage) -> StoreResult<Vec<User>> {
        let rows = single(self, Idempotent, B::DIALECT.users_page(page), B::fetch_all).await?;
        rows.iter().map(user_from_row).collect()
    }

    async fn change_user(
        &self,
        id: UserId,
        changes: &UserChanges,
        at: UnixTime,
    ) -> StoreResult<Result<ChangedUser, ChangeRefused>> {
        let changed = self
            .run(Transaction, |mut tx| {
                Box::pin(async move { change_user_in::<B>(&mut tx, id, changes, at).await })
            })
            .await;
        match changed {
            Err(StoreError::Database(sqlx::Error::Database(e))) if B::is_duplicate_email(&*e) => {
                Ok(Err(ChangeRefused::DuplicateEmail))
            }
            other => other,
        }
    }

    async fn create_session(&self, session: &Session) -> StoreResult<()> {
        // Once: a second run of an insert that took effect fails on the primary key.
        single(self, Once, sql::insert_session(session), B::execute).await?;
        Ok(())
    }

    async fn session(&self, id: SessionId) -> StoreResult<Option<Session>> {
        one(
            single(self, Idempotent, sql::session_by_id(id), B::fetch_optional).await?,
            session_from_row,
        )
    }

    async fn rotate_session_token(&self, swap: TokenSwap, at: UnixTime) -> StoreResult<Rotation> {
        // Once: a second run of a swap that took effect finds `new_jti` current and reports a
        // reuse, which would end the session.
        self.run(Once, |mut conn| {
            Box::pin(async move {
                // The compare and the swap are one statement: a concurrent rotation waits for the
                // row lock, then re-checks `current_jti` against the winner's row and matches
                // nothing.
                let rotate = sql::rotate_session_token(swap, at);
                if B::execute(&mut conn, rotate).await? > 0 {
                    return Ok(Rotation::Rotated);
                }
                // Only classifies the failure; it was decided atomically above.
                let revoked_at =
                    B::fetch_int(&mut conn, sql::session_revoked_at(swap.session)).await?;
                Ok(Rotation::of_failed_swap(revoked_at))
            })
        })
        .await
    }

    async fn revoke_session(&self, id: SessionId, at: UnixTime) -> StoreResult<bool> {
        self.run(Transaction, |mut tx| {
            Box::pin(async move {
                // Nothing to append when it was already revoked; the commit then ends an empty
                // transaction.
                let revoked = B::execute(&mut tx, sql::revoke_session(id, at)).await? > 0;
                if revoked {
                    B::append_revocations(&mut tx, &[id], at, FeedKind::Ended).await?;
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
        self.run(Transaction, |mut tx| {
            Box::pin(async move { revoke_open_sessions::<B>(&mut tx, user, at, None).await })
        })
        .await
    }

    async fn revocations_since(&self, after: i64, limit: i64) -> StoreResult<Vec<Revocation>> {
        // PostgreSQL rejects a negative LIMIT; SQLite reads it as "no limit". Both: nothing.
        if limit <= 0 {
            return Ok(Vec::new());
        }
        let since = sql::revocations_since(after, limit);
        let rows = single(self, Idempotent, since, B::fetch_all).await?;
        rows.iter().map(revocation_from_row).collect()
    }

    async fn revocation_cursor(&self) -> StoreResult<i64> {
        // Appends commit in seq order (see `append_revocations`), so nothing below this can
        // still appear.
        count(self, sql::revocation_cursor()).await
    }

    async fn prune(&self, before: UnixTime) -> StoreResult<u64> {
        self.run(Transaction, |mut tx| {
            Box::pin(async move {
                // Old feed rows are locked by no one else. Resets before sessions: the lock order
                // of the other transactions.
                let mut deleted = 0;
                for statement in [
                    sql::prune_revocations(before),
                    sql::prune_password_resets(before),
                    B::DIALECT.prune_sessions(before),
                    sql::prune_throttle_windows(before),
                ] {
                    deleted += B::execute(&mut tx, statement).await?;
                }
                Ok(deleted)
            })
        })
        .await
    }

    async fn throttle_reserve(
        &self,
        attempt: ThrottleAttempt<'_>,
        now: UnixTime,
    ) -> StoreResult<Result<UnixTime, u64>> {
        // Once: a second run would count the attempt twice.
        self.run(Once, |mut conn| {
            Box::pin(async move {
                let reserve = sql::throttle_reserve(attempt, now);
                if let Some(started) = B::fetch_int(&mut conn, reserve).await?.flatten() {
                    return Ok(Ok(started));
                }
                let end = sql::throttle_window_end(attempt.scope, attempt.key);
                let ends = B::fetch_int(&mut conn, end).await?.flatten();
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
        let refund = sql::throttle_refund(scope, key, window_start);
        single(self, Once, refund, B::execute).await?;
        Ok(())
    }

    fn revocation_listener(&self) -> Option<Box<dyn FeedListener>> {
        self.feed_listener()
    }

    async fn renew_invitation(
        &self,
        user: UserId,
        invitation: &Invitation,
        role: Role,
    ) -> StoreResult<Option<User>> {
        // Idempotent: a second run writes the same nonce, expiry and role again. Nothing can
        // accept the new invitation in between: its link has not been sent yet.
        let renew = sql::renew_invitation(user, invitation, role);
        one(
            single(self, Idempotent, renew, B::fetch_optional).await?,
            user_from_row,
        )
    }

    async fn accept_invitation(
        &self,
        acceptance: InvitationAcceptance<'_>,
        at: UnixTime,
    ) -> StoreResult<bool> {
        // Once: a second run of an accept that took effect finds the invitation spent and
        // reports the link as invalid.
        let accept = sql::accept_invitation(acceptance, at);
        Ok(single(self, Once, accept, B::execute).await? > 0)
    }

    async fn create_password_reset(&self, reset: &PasswordReset) -> StoreResult<()> {
        self.run(Transaction, |mut tx| {
            Box::pin(async move {
                // Without it, two concurrent resets of one user would each miss the other's
                // uncommitted row below and both stay usable.
                B::lock_user(&mut tx, reset.user_id).await?;
                B::execute(&mut tx, sql::supersede_password_resets(reset)).await?;
                B::execute(&mut tx, sql::insert_password_reset(reset)).await?;
                Ok(())
            })
        })
        .await
    }

    async fn password_reset(&self, digest: &str) -> StoreResult<Option<PasswordReset>> {
        let by_digest = sql::password_reset_by_digest(digest);
        let found = single(self, Idempotent, by_digest, B::fetch_optional).await?;
        one(found, password_reset_from_row)
    }

    async fn complete_password_reset(
        &self,
        completion: ResetCompletion<'_>,
        at: UnixTime,
    ) -> StoreResult<Option<Vec<SessionId>>> {
        let ResetCompletion {
            digest,
            user,
            password_hash,
        } = completion;
        self.run(Transaction, |mut tx| {
            Box::pin(async move {
                // The user row before the reset row, in the same order as `create_password_reset`.
                B::lock_user(&mut tx, user).await?;
                let spend = sql::spend_password_reset(digest, user, at);
                if B::execute(&mut tx, spend).await? == 0 {
                    // Nothing changed; the commit only releases the user row's lock.
                    return Ok(None);
                }
                B::execute(&mut tx, sql::set_password(user, password_hash)).await?;
                Ok(Some(
                    revoke_open_sessions::<B>(&mut tx, user, at, None).await?,
                ))
            })
        })
        .await
    }

    async fn append_audit(&self, events: &[AuditEvent]) -> StoreResult<()> {
        self.run(Transaction, |mut tx| {
            Box::pin(async move {
                for event in events {
                    B::execute(&mut tx, sql::insert_audit_event(event)).await?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn audit_events(&self, filter: &AuditFilter) -> StoreResult<Vec<AuditEvent>> {
        let matching = B::DIALECT.audit_events(filter);
        let rows = single(self, Idempotent, matching, B::fetch_all).await?;
        audit_events_oldest_first(&rows)
    }

    async fn prune_audit(&self, before: UnixTime) -> StoreResult<u64> {
        // Idempotent: a second run deletes only what has aged since (its count, which is only
        // logged, then misses what the first run deleted).
        single(self, Idempotent, sql::prune_audit(before), B::execute).await
    }
}
