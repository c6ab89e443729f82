//! The connections waiting for a session's end (see [`CachedSession::ended`]), kept beside the
//! sessions rather than in them: a million cached sessions carry no waiting list, only the
//! few that hold a WebSocket or a stream open have one here, found by the session's address
//! (stable while a waiter holds the session, which it does for as long as it waits).
//!
//! [`CachedSession::ended`]: super::cache::CachedSession::ended

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};

use tokio::sync::Notify;

const SHARDS: usize = 16;

/// Per watched session: what wakes its waiters, and how many there are.
type Shard = HashMap<usize, (Arc<Notify>, usize)>;

static WAITERS: LazyLock<[Mutex<Shard>; SHARDS]> =
    LazyLock::new(|| std::array::from_fn(|_| Mutex::new(HashMap::new())));

fn shard(session: usize) -> MutexGuard<'static, Shard> {
    // Sessions are allocations of the same size: the low bits say nothing, skip them.
    WAITERS[(session >> 6) % SHARDS]
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// One waiter's registration, withdrawn when dropped.
pub struct Watch {
    session: usize,
    pub notify: Arc<Notify>,
}

/// Registers a waiter for the session at address `session`.
pub fn watch(session: usize) -> Watch {
    let mut shard = shard(session);
    let (notify, waiters) = shard
        .entry(session)
        .or_insert_with(|| (Arc::new(Notify::new()), 0));
    *waiters += 1;
    Watch {
        session,
        notify: notify.clone(),
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut shard = shard(self.session);
        if let Some((_, waiters)) = shard.get_mut(&self.session) {
            *waiters -= 1;
            if *waiters == 0 {
                shard.remove(&self.session);
            }
        }
    }
}

/// Wakes every waiter of the session at address `session`, if it has any.
pub fn wake(session: usize) {
    let notify = shard(session).get(&session).map(|(n, _)| n.clone());
    if let Some(notify) = notify {
        notify.notify_waiters();
    }
}

#[cfg(test)]
pub fn has_waiters(session: usize) -> bool {
    shard(session).contains_key(&session)
}
