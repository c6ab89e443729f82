//! Follows the store's revocation feed so a logout, refresh reuse, password reset or a user's
//! change (disabled, deleted, new password, email or role) on any replica (or the CLI) reaches
//! this replica's cache: an ended session is revoked, one whose user's identity changed is
//! marked stale and its tokens loaded again on their next use.
//!
//! On PostgreSQL every feed append also sends a `NOTIFY`; a listener task turns those into
//! wake-ups and the follower reads the feed from its cursor at once (milliseconds). The
//! notification carries nothing: the feed stays the source of truth, so a lost, late or
//! duplicated wake-up can never drop or reorder a revocation. Whenever the listener
//! (re)subscribes — at start and after a lost connection — the follower re-reads the feed,
//! which covers everything committed while nobody was listening. A poll stays as the fallback:
//! every [`POLL_INTERVAL`] while there is no working subscription (always on SQLite, whose one
//! replica revokes in its own cache directly and only needs the poll for the CLI's changes),
//! every [`FALLBACK_POLL_INTERVAL`] while there is one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::Auth;
use crate::store::{FeedKind, FeedListener, FeedWakeup};

/// Poll interval without push: the contract allows 1 s for other replicas to follow.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Poll interval while subscribed: only a guard against a wake-up lost in some way that the
/// connection did not notice.
pub const FALLBACK_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// First and longest wait before re-subscribing after the listener failed.
const RESUBSCRIBE_MIN: Duration = Duration::from_millis(100);
const RESUBSCRIBE_MAX: Duration = Duration::from_secs(5);
/// Feed entries and ended sessions are deleted this long after they stop mattering.
const RETENTION: i64 = 3600;
const PRUNE_EVERY: Duration = Duration::from_secs(600);
const BATCH: i64 = 1000;

/// Runs until `shutdown` turns true. `cursor` is the feed's end read before the gateway
/// started serving: older revocations concern tokens this fresh cache has never seen (a miss
/// reads the store, which has them), and reading it any later could skip one that races the
/// first cached tokens.
pub async fn follow(auth: Arc<Auth>, mut cursor: i64, mut shutdown: watch::Receiver<bool>) {
    // Capacity 1: wake-ups that arrive while one is pending coalesce into it, since a read
    // covers everything committed before it starts.
    let (wake, mut woken) = mpsc::channel(1);
    let subscribed = Arc::new(AtomicBool::new(false));
    if let Some(listener) = auth.store().revocation_listener() {
        tokio::spawn(listen(listener, wake, subscribed.clone(), shutdown.clone()));
    }
    let mut poll = tokio::time::interval(POLL_INTERVAL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_read = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            Some(()) = woken.recv() => {
                last_read = Instant::now();
                cursor = apply_new_revocations(&auth, cursor).await;
            }
            _ = poll.tick() => {
                let due = if subscribed.load(Ordering::Relaxed) {
                    FALLBACK_POLL_INTERVAL
                } else {
                    POLL_INTERVAL
                };
                if last_read.elapsed() >= due {
                    last_read = Instant::now();
                    cursor = apply_new_revocations(&auth, cursor).await;
                }
            }
            // Its own task: a sweep of a large cache and the store's deletes take a while, and
            // this loop must keep applying revocations within the second meanwhile.
            _ = prune.tick() => drop(tokio::spawn(maintain(auth.clone()))),
        }
    }
}

/// The periodic housekeeping: expired and revoked tokens out of the cache, registries pruned,
/// ended sessions, old feed entries and audit records past `audit.retention` deleted.
async fn maintain(auth: Arc<Auth>) {
    let swept = auth.cache().sweep(auth.clock().now()).await;
    tracing::debug!(swept, "dropped expired and revoked tokens from the cache");
    auth.cache().prune_sessions();
    let now = auth.clock().now();
    if let Err(e) = auth.store().prune(now - RETENTION).await {
        tracing::warn!(error = %e, "pruning ended sessions failed");
    }
    let audit_before = now.saturating_sub(auth.settings().audit_retention);
    match auth.store().prune_audit(audit_before).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(deleted = n, "audit records past their retention pruned"),
        Err(e) => tracing::warn!(error = %e, "pruning audit records failed"),
    }
}

/// Forwards the store's push notifications as wake-ups, re-subscribing with a growing pause
/// after failures (a database that is down must not be hammered).
async fn listen(
    mut listener: Box<dyn FeedListener>,
    wake: mpsc::Sender<()>,
    subscribed: Arc<AtomicBool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut pause = RESUBSCRIBE_MIN;
    loop {
        let event = tokio::select! {
            _ = shutdown.changed() => return,
            event = listener.next() => event,
        };
        match event {
            Ok(wakeup) => {
                if wakeup == FeedWakeup::Subscribed {
                    tracing::info!("listening for revocations");
                    subscribed.store(true, Ordering::Relaxed);
                    pause = RESUBSCRIBE_MIN;
                }
                // Full: a wake-up is pending already and covers this one.
                let _ = wake.try_send(());
            }
            Err(e) => {
                subscribed.store(false, Ordering::Relaxed);
                tracing::warn!(error = %e, retry_in = ?pause, "revocation listener failed; polling meanwhile");
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(RESUBSCRIBE_MAX);
            }
        }
    }
}

async fn apply_new_revocations(auth: &Auth, mut cursor: i64) -> i64 {
    loop {
        match auth.store().revocations_since(cursor, BATCH).await {
            Ok(batch) => {
                auth.metrics()
                    .revocations_received
                    .inc_by(u64::try_from(batch.len()).unwrap_or(u64::MAX));
                for r in &batch {
                    match r.kind {
                        FeedKind::Ended => auth.cache().revoke_session(r.session_id),
                        FeedKind::IdentityChanged => auth.cache().refresh_session(r.session_id),
                    }
                    cursor = r.seq;
                }
                if (batch.len() as i64) < BATCH {
                    return cursor;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the revocation feed failed");
                return cursor;
            }
        }
    }
}
