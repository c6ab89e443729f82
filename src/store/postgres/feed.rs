//! The revocation feed's PostgreSQL side: appends that commit in seq order across replicas,
//! and the LISTEN/NOTIFY wake-ups that tell followers to read it.

use async_trait::async_trait;
use sqlx::postgres::{PgConnection, PgListener, PgPool};
use uuid::Uuid;

use crate::store::{FeedKind, FeedListener, FeedWakeup, SessionId, StoreResult, UnixTime};

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

/// Appends sessions to the feed (ended, or with a changed identity), in the order given. Must be the last thing the
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
pub(super) async fn append_revocations(
    conn: &mut PgConnection,
    ids: &[SessionId],
    at: UnixTime,
    kind: FeedKind,
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
        "WITH appended AS (INSERT INTO session_revocations \
         (session_id, revoked_at, identity_changed) \
         SELECT id, $2, $3 FROM unnest($1::uuid[]) AS t (id)) \
         SELECT pg_notify(",
        feed_channel!(),
        ", '')"
    ))
    .bind(&ids)
    .bind(at)
    .bind(kind == FeedKind::IdentityChanged)
    .execute(conn)
    .await?;
    Ok(())
}

/// Wakes the revocation follower on feed appends by any replica (`LISTEN` on the feed's
/// channel, on its own connection).
pub(super) struct PgFeedListener {
    pub(super) pool: PgPool,
    /// `None` until subscribed, and again after an error.
    pub(super) listener: Option<PgListener>,
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
