//! The [`Store`] methods on PostgreSQL: each runs through [`PostgresStore::run`] with the
//! [`Replay`] class that says whether it may run again after its connection died, and takes its
//! locks in the order the parent module's docs set out.

use async_trait::async_trait;
use sqlx::postgres::PgConnection;
use uuid::Uuid;

use super::feed::{PgFeedListener, append_revocations};
use super::replay::Replay;
use super::{DIALECT, EMAIL_INDEX, LOCK_USER, PostgresStore, query, query_scalar};
use crate::store::rows::{
    audit_events_oldest_first, password_reset_from_row, revocation_from_row, session_from_row,
    user_from_row,
};
use crate::store::sql::{self, Statement, params};
use crate::store::{
    AuditEvent, AuditFilter, FeedListener, Invitation, NewUser, PasswordReset, Revocation, Role,
    Rotation, Session, SessionId, Store, StoreError, StoreResult, UnixTime, User, UserId,
};

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
