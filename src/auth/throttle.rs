//! Failed-login throttling per account and per client IP.
//!
//! Only failures are counted, and a key that is over its limit is refused *before* the
//! password is checked, so a blocked attacker cannot even burn argon2 time. governor's GCRA
//! limiters consume a cell on every check, which would count successes too; a fixed-window
//! counter is all the rule needs: per account in the store (shared by replicas, see
//! [`Throttle`]), per client IP in a moka cache whose entries expire with their window.
//!
//! [`Throttle::begin`] checks and counts an attempt as a failure in one step, before the
//! password is verified, and a success takes it back: checking first and counting afterwards
//! would let a burst of concurrent attempts all pass the check before any failure is counted.

use std::borrow::Borrow;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use moka::sync::Cache;

use super::AuthError;
use crate::store::{Store, ThrottleAttempt, UnixTime};

/// Failures of one key inside the current window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    started: UnixTime,
    failures: u32,
}

impl Window {
    /// Pure rule: is this key blocked at `now`? Returns the seconds until it is not.
    fn blocked_for(&self, now: UnixTime, limit: u32, window: i64) -> Option<u64> {
        let ends = self.started + window;
        (self.failures >= limit && now < ends).then(|| (ends - now).max(1) as u64)
    }

    fn record_failure(&mut self, now: UnixTime, window: i64) {
        if now >= self.started + window {
            *self = Window {
                started: now,
                failures: 0,
            };
        }
        self.failures += 1;
    }
}

#[derive(Clone)]
struct Counter<K> {
    windows: Cache<K, Arc<Mutex<Window>>>,
    limit: u32,
    window_secs: i64,
}

impl<K: Hash + Eq + Send + Sync + Clone + 'static> Counter<K> {
    fn new(limit: u32, window: Duration, capacity: u64) -> Self {
        Self {
            windows: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(window)
                .build(),
            limit,
            window_secs: window.as_secs().max(1) as i64,
        }
    }

    /// Atomically: `Err(retry_after_secs)` when blocked, else counts one failure in advance
    /// and returns the start of the window it went into (for [`Counter::refund`]).
    fn reserve(&self, key: K, now: UnixTime) -> Result<UnixTime, u64> {
        let entry = self.windows.get_with(key, || {
            Arc::new(Mutex::new(Window {
                started: now,
                failures: 0,
            }))
        });
        let mut window = entry.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(secs) = window.blocked_for(now, self.limit, self.window_secs) {
            return Err(secs);
        }
        window.record_failure(now, self.window_secs);
        Ok(window.started)
    }

    /// Takes back a reservation, unless its window has since been replaced.
    fn refund<Q>(&self, key: &Q, started: UnixTime)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(entry) = self.windows.get(key) {
            let mut window = entry.lock().unwrap_or_else(|e| e.into_inner());
            if window.started == started {
                window.failures = window.failures.saturating_sub(1);
            }
        }
    }
}

/// Two limits over one window: per account (email), counted in the store so that every
/// replica sees the same count, and per client IP, counted in this replica's memory. `POST
/// /users/login` counts failures only; `POST /users/password` counts every request.
///
/// The per-IP counter stays local on purpose: it is checked first and costs no round trip, so a
/// client over its limit (a spray across many accounts) is refused without touching the
/// database, also while the database is down; its state is bounded by the in-memory cache,
/// where a shared table would grow with every address an attacker can source. The price is
/// that a client whose requests a load balancer spreads over N replicas gets up to N ×
/// `per_ip`; the per-account limit, which guards each password, holds exactly.
pub struct Throttle {
    /// Names the account counters in the store (`login`, `reset`).
    scope: &'static str,
    store: Arc<dyn Store>,
    per_account: u32,
    window_secs: i64,
    per_ip: Counter<IpAddr>,
}

impl Throttle {
    pub fn new(
        scope: &'static str,
        store: Arc<dyn Store>,
        per_account: u32,
        per_ip: u32,
        window: Duration,
    ) -> Self {
        // Bounded so a spray of random source addresses cannot grow memory without limit.
        const CAPACITY: u64 = 100_000;
        Self {
            scope,
            store,
            per_account,
            window_secs: window.as_secs().max(1) as i64,
            per_ip: Counter::new(per_ip, window, CAPACITY),
        }
    }

    /// Starts an attempt: [`AuthError::Throttled`] when the client or the account is over its
    /// limit, else an [`Attempt`] already counted as a failure. Call [`Attempt::keep`] when the
    /// credentials were wrong (or the request always counts); dropping it otherwise (success,
    /// or an error that says nothing about the password) takes the failure back.
    pub async fn begin(
        &self,
        email: &str,
        ip: Option<IpAddr>,
        now: UnixTime,
    ) -> Result<Attempt, AuthError> {
        let ip = match ip {
            None => None,
            Some(ip) => match self.per_ip.reserve(ip, now) {
                Ok(started) => Some((ip, started)),
                Err(retry_after_secs) => return Err(AuthError::Throttled { retry_after_secs }),
            },
        };
        let refund_ip = |ip: Option<(IpAddr, UnixTime)>| {
            if let Some((ip, started)) = ip {
                self.per_ip.refund(&ip, started);
            }
        };
        let attempt = ThrottleAttempt {
            scope: self.scope,
            key: email,
            limit: self.per_account,
            window: self.window_secs,
        };
        let reserved = self.store.throttle_reserve(attempt, now).await;
        let account = match reserved {
            Ok(Ok(started)) => started,
            Ok(Err(retry_after_secs)) => {
                refund_ip(ip);
                return Err(AuthError::Throttled { retry_after_secs });
            }
            Err(e) => {
                refund_ip(ip);
                return Err(e.into());
            }
        };
        Ok(Attempt {
            ip_counter: self.per_ip.clone(),
            store: self.store.clone(),
            scope: self.scope,
            email: email.to_owned(),
            account,
            ip,
            failed: false,
        })
    }
}

/// An attempt counted in advance as a failure; see [`Throttle::begin`].
#[must_use]
pub struct Attempt {
    ip_counter: Counter<IpAddr>,
    store: Arc<dyn Store>,
    scope: &'static str,
    email: String,
    account: UnixTime,
    ip: Option<(IpAddr, UnixTime)>,
    failed: bool,
}

impl Attempt {
    /// Keeps the attempt counted (wrong credentials, or a request that always counts).
    pub fn keep(mut self) {
        self.failed = true;
    }

    /// Takes the attempt back before returning, so the caller's next attempt already sees it
    /// gone (dropping an attempt refunds too, but in the background).
    pub async fn succeeded(mut self) {
        if let Some(refund) = self.take_refund() {
            refund.run().await;
        }
    }

    /// The in-memory refund is made at once; the store's is returned to be awaited or
    /// spawned. `None` once the attempt is kept or already refunded.
    fn take_refund(&mut self) -> Option<StoreRefund> {
        if self.failed {
            return None;
        }
        self.failed = true;
        if let Some((ip, started)) = self.ip.take() {
            self.ip_counter.refund(&ip, started);
        }
        Some(StoreRefund {
            store: self.store.clone(),
            scope: self.scope,
            email: std::mem::take(&mut self.email),
            started: self.account,
        })
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        // Drop cannot wait for the store; the refund is best effort (a failed one leaves the
        // attempt counted, the safe side).
        if let Some(refund) = self.take_refund() {
            tokio::spawn(refund.run());
        }
    }
}

/// Taking one attempt back from the account's window in the store.
struct StoreRefund {
    store: Arc<dyn Store>,
    scope: &'static str,
    email: String,
    started: UnixTime,
}

impl StoreRefund {
    async fn run(self) {
        let refunded = self
            .store
            .throttle_refund(self.scope, &self.email, self.started)
            .await;
        if let Err(e) = refunded {
            tracing::warn!(error = %e, "taking back a throttled attempt failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_blocks_at_limit_until_it_ends() {
        let mut w = Window {
            started: 100,
            failures: 0,
        };
        for _ in 0..3 {
            assert_eq!(w.blocked_for(100, 3, 60), None);
            w.record_failure(100, 60);
        }
        assert_eq!(w.blocked_for(110, 3, 60), Some(50));
        assert_eq!(w.blocked_for(159, 3, 60), Some(1));
        assert_eq!(w.blocked_for(160, 3, 60), None);
    }

    #[test]
    fn a_failure_after_the_window_starts_a_new_one() {
        let mut w = Window {
            started: 0,
            failures: 5,
        };
        w.record_failure(1000, 60);
        assert_eq!(
            w,
            Window {
                started: 1000,
                failures: 1
            }
        );
    }

    async fn throttle(per_account: u32, per_ip: u32) -> Throttle {
        let store = crate::store::SqliteStore::open("sqlite::memory:")
            .await
            .unwrap();
        Throttle::new(
            "login",
            Arc::new(store),
            per_account,
            per_ip,
            Duration::from_secs(60),
        )
    }

    fn retry_after(r: Result<Attempt, AuthError>) -> Option<u64> {
        match r {
            Err(AuthError::Throttled { retry_after_secs }) => Some(retry_after_secs),
            Err(e) => panic!("unexpected {e}"),
            Ok(_) => None,
        }
    }

    /// Lets the refunds spawned by dropped attempts reach the store.
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    #[tokio::test]
    async fn account_and_ip_limits_are_independent() {
        let t = throttle(2, 3).await;
        let ip: Option<IpAddr> = Some("10.0.0.1".parse().unwrap());
        let other_ip: Option<IpAddr> = Some("10.0.0.2".parse().unwrap());
        t.begin("a@x", ip, 0).await.unwrap().keep();
        t.begin("a@x", ip, 0).await.unwrap().keep();
        // account a@x is blocked from any IP, and that refusal costs the IP nothing
        assert_eq!(retry_after(t.begin("a@x", other_ip, 1).await), Some(59));
        assert_eq!(retry_after(t.begin("a@x", ip, 1).await), Some(59));
        // the IP has 2 of 3
        t.begin("b@x", ip, 1).await.unwrap().keep();
        assert_eq!(retry_after(t.begin("c@x", ip, 2).await), Some(58));
        assert!(t.begin("c@x", other_ip, 2).await.is_ok());
    }

    #[tokio::test]
    async fn attempts_in_flight_count_and_successes_are_taken_back() {
        let t = throttle(2, 10).await;
        let ip: Option<IpAddr> = Some("10.0.0.1".parse().unwrap());
        // Two attempts in flight at once use up the account's limit...
        let first = t.begin("a@x", ip, 0).await.unwrap();
        let second = t.begin("a@x", ip, 0).await.unwrap();
        assert_eq!(retry_after(t.begin("a@x", ip, 0).await), Some(60));
        // ...until one turns out to be a success.
        drop(first);
        settle().await;
        let third = t.begin("a@x", ip, 1).await.unwrap();
        second.keep();
        third.keep();
        assert_eq!(retry_after(t.begin("a@x", ip, 2).await), Some(58));
    }

    #[tokio::test]
    async fn a_refusal_by_ip_does_not_count_against_the_account() {
        let t = throttle(2, 1).await;
        let ip: Option<IpAddr> = Some("10.0.0.1".parse().unwrap());
        t.begin("a@x", ip, 0).await.unwrap().keep();
        assert!(retry_after(t.begin("b@x", ip, 0).await).is_some());
        assert!(retry_after(t.begin("b@x", ip, 0).await).is_some());
        assert!(t.begin("b@x", None, 0).await.is_ok());
        assert!(t.begin("b@x", None, 0).await.is_ok());
    }
}
