//! The transaction bodies that change a user together with their sessions and the revocation
//! feed, for the [`Store`](super::Store) implementation in `backend`: the caller owns the
//! transaction, these run inside it.

use uuid::Uuid;

use super::backend::{Backend, one};
use super::rows::{Columns, user_from_row};
use super::sql;
use super::{
    ChangeRefused, ChangedUser, FeedKind, SessionId, StoreResult, UnixTime, UserChanges, UserId,
};

/// Revokes the user's open sessions (but `keep`) and feeds them to the revocation log; the
/// caller owns the transaction so this can be part of a larger change (as its last step, see
/// [`Backend::append_revocations`]).
pub(super) async fn revoke_open_sessions<B: Backend>(
    conn: &mut B::Connection,
    user: UserId,
    at: UnixTime,
    keep: Option<SessionId>,
) -> StoreResult<Vec<SessionId>> {
    let revoke = B::DIALECT.revoke_open_sessions(user, at, keep);
    let mut ids = ids(&B::fetch_all(conn, revoke).await?, SessionId)?;
    // RETURNING order is unspecified; sort so the feed order is reproducible.
    ids.sort();
    B::append_revocations(conn, &ids, at, FeedKind::Ended).await?;
    Ok(ids)
}

/// Feeds the user's open sessions as updated (their identity changed); same rules as
/// [`revoke_open_sessions`].
async fn update_open_sessions<B: Backend>(
    conn: &mut B::Connection,
    user: UserId,
    at: UnixTime,
) -> StoreResult<Vec<SessionId>> {
    let ids = ids(
        &B::fetch_all(conn, sql::open_sessions(user, at)).await?,
        SessionId,
    )?;
    B::append_revocations(conn, &ids, at, FeedKind::IdentityChanged).await?;
    Ok(ids)
}

/// The `id` column of `rows`, each wrapped as the id type it is.
fn ids<T>(rows: &[impl Columns], wrap: fn(Uuid) -> T) -> StoreResult<Vec<T>> {
    rows.iter().map(|row| row.uuid("id").map(wrap)).collect()
}

/// The body of [`Store::change_user`], in its transaction. Locks: the active admins (when the
/// change may remove one), then the user — the user row after other user rows, in id order,
/// as every transaction that locks several — then the user's sessions and the feed.
pub(super) async fn change_user_in<B: Backend>(
    tx: &mut B::Connection,
    id: UserId,
    changes: &UserChanges,
    at: UnixTime,
) -> StoreResult<Result<ChangedUser, ChangeRefused>> {
    let admins = if changes.may_remove_an_admin() {
        let rows = B::fetch_all(tx, B::DIALECT.lock_active_admins()).await?;
        Some(ids(&rows, UserId)?)
    } else {
        None
    };
    B::lock_user(tx, id).await?;
    let Some(before) = one(
        B::fetch_optional(tx, sql::user_by_id(id)).await?,
        user_from_row,
    )?
    else {
        return Ok(Err(ChangeRefused::NotFound));
    };
    // Only a restore may touch a user in the trash, and only a user in it.
    if before.deleted != (changes.deleted == Some(false)) {
        return Ok(Err(ChangeRefused::NotFound));
    }
    let user = before.with_changes(changes);
    let others_remain = admins.is_some_and(|admins| admins.iter().any(|admin| *admin != id));
    if before.is_active_admin() && !user.is_active_admin() && !others_remain {
        return Ok(Err(ChangeRefused::LastAdmin));
    }
    // A taken email fails here with the unique index's violation, which rolls back.
    B::execute(tx, sql::update_user(&user)).await?;
    let (mut ended, mut updated) = (Vec::new(), Vec::new());
    if before.change_ends_sessions(&user) {
        ended = revoke_open_sessions::<B>(tx, id, at, changes.keep_session).await?;
    } else if before.email != user.email || before.role != user.role {
        updated = update_open_sessions::<B>(tx, id, at).await?;
    }
    Ok(Ok(ChangedUser {
        before,
        user,
        ended,
        updated,
    }))
}
