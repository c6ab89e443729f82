//! Follows the store's revocation feed so a logout, refresh reuse or `users disable` on any
//! replica (or the CLI) reaches this replica's cache within one poll interval.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::Auth;

/// Poll interval of the feed: the contract allows 1 s for other replicas to follow.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Feed entries and ended sessions are deleted this long after they stop mattering.
const RETENTION: i64 = 3600;
const PRUNE_EVERY: Duration = Duration::from_secs(600);
const BATCH: i64 = 1000;

/// Runs until `shutdown` turns true. `cursor` is the feed's end read before the gateway
/// started serving: older revocations concern tokens this fresh cache has never seen (a miss
/// reads the store, which has them), and reading it any later could skip one that races the
/// first cached tokens.
pub async fn follow(auth: Arc<Auth>, mut cursor: i64, mut shutdown: watch::Receiver<bool>) {
    let mut poll = tokio::time::interval(POLL_INTERVAL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = poll.tick() => cursor = apply_new_revocations(&auth, cursor).await,
            _ = prune.tick() => {
                auth.cache().prune_sessions();
                let before = auth.clock().now() - RETENTION;
                if let Err(e) = auth.store().prune(before).await {
                    tracing::warn!(error = %e, "pruning ended sessions failed");
                }
            }
        }
    }
}

async fn apply_new_revocations(auth: &Auth, mut cursor: i64) -> i64 {
    loop {
        match auth.store().revocations_since(cursor, BATCH).await {
            Ok(batch) => {
                for r in &batch {
                    auth.cache().revoke_session(r.session_id);
                    cursor = r.seq;
                }
                if (batch.len() as i64) < BATCH {
                    return cursor;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "polling the revocation feed failed");
                return cursor;
            }
        }
    }
}
