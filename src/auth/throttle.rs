//! Failed-login throttling per account and per client IP.
//!
//! Only failures are counted, and a key that is over its limit is refused *before* the
//! password is checked, so a blocked attacker cannot even burn argon2 time. governor's GCRA
//! limiters consume a cell on every check, which would count successes too; this fixed-window
//! counter (one moka entry per key, expiring with its window) is all the rule needs.
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

use crate::store::UnixTime;

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

    fn blocked_for<Q>(&self, key: &Q, now: UnixTime) -> Option<u64>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let window = self.windows.get(key)?;
        let window = *window.lock().unwrap_or_else(|e| e.into_inner());
        window.blocked_for(now, self.limit, self.window_secs)
    }

    fn record_failure(&self, key: K, now: UnixTime) {
        let entry = self.windows.get_with(key, || {
            Arc::new(Mutex::new(Window {
                started: now,
                failures: 0,
            }))
        });
        entry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record_failure(now, self.window_secs);
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

/// Two counters — per account (email) and per client IP — over one window. `POST
/// /users/login` counts failures only; `POST /users/password` counts every request.
pub struct Throttle {
    per_account: Counter<String>,
    per_ip: Counter<IpAddr>,
}

impl Throttle {
    pub fn new(per_account: u32, per_ip: u32, window: Duration) -> Self {
        // Bounded so a spray of random emails cannot grow memory without limit.
        const CAPACITY: u64 = 100_000;
        Self {
            per_account: Counter::new(per_account, window, CAPACITY),
            per_ip: Counter::new(per_ip, window, CAPACITY),
        }
    }

    /// `Some(retry_after_secs)` when either the account or the client is over its limit.
    pub fn blocked_for(&self, email: &str, ip: Option<IpAddr>, now: UnixTime) -> Option<u64> {
        let by_ip = ip.and_then(|ip| self.per_ip.blocked_for(&ip, now));
        let by_account = self.per_account.blocked_for(email, now);
        by_ip.max(by_account)
    }

    pub fn record_failure(&self, email: &str, ip: Option<IpAddr>, now: UnixTime) {
        self.per_account.record_failure(email.to_owned(), now);
        if let Some(ip) = ip {
            self.per_ip.record_failure(ip, now);
        }
    }

    /// Starts a login attempt: `Err(retry_after_secs)` when the account or the client is over
    /// its limit, else an [`Attempt`] already counted as a failure. Call [`Attempt::keep`]
    /// when the credentials were wrong; dropping it otherwise (success, or an error that says
    /// nothing about the password) takes the failure back.
    pub fn begin(
        &self,
        email: &str,
        ip: Option<IpAddr>,
        now: UnixTime,
    ) -> Result<Attempt<'_>, u64> {
        let account = self
            .per_account
            .reserve(email.to_owned(), now)
            .map_err(|by_account| {
                let by_ip = ip.and_then(|ip| self.per_ip.blocked_for(&ip, now));
                by_ip.map_or(by_account, |by_ip| by_ip.max(by_account))
            })?;
        let ip = match ip {
            None => None,
            Some(ip) => match self.per_ip.reserve(ip, now) {
                Ok(started) => Some((ip, started)),
                Err(by_ip) => {
                    self.per_account.refund(email, account);
                    return Err(by_ip);
                }
            },
        };
        Ok(Attempt {
            throttle: self,
            email: email.to_owned(),
            account,
            ip,
            failed: false,
        })
    }
}

/// A login attempt counted in advance as a failure; see [`Throttle::begin`].
#[must_use]
pub struct Attempt<'a> {
    throttle: &'a Throttle,
    email: String,
    account: UnixTime,
    ip: Option<(IpAddr, UnixTime)>,
    failed: bool,
}

impl Attempt<'_> {
    /// Keeps the attempt counted (wrong credentials, or a request that always counts).
    pub fn keep(mut self) {
        self.failed = true;
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if self.failed {
            return;
        }
        self.throttle
            .per_account
            .refund(self.email.as_str(), self.account);
        if let Some((ip, started)) = self.ip {
            self.throttle.per_ip.refund(&ip, started);
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

    #[test]
    fn account_and_ip_limits_are_independent() {
        let t = Throttle::new(2, 3, Duration::from_secs(60));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other_ip: IpAddr = "10.0.0.2".parse().unwrap();
        t.record_failure("a@x", Some(ip), 0);
        t.record_failure("a@x", Some(ip), 0);
        // account a@x is blocked from any IP
        assert!(t.blocked_for("a@x", Some(other_ip), 1).is_some());
        // ip has 2 of 3
        assert_eq!(t.blocked_for("b@x", Some(ip), 1), None);
        t.record_failure("b@x", Some(ip), 1);
        assert!(t.blocked_for("c@x", Some(ip), 2).is_some());
        assert_eq!(t.blocked_for("c@x", Some(other_ip), 2), None);
    }

    #[test]
    fn attempts_in_flight_count_and_successes_are_taken_back() {
        let t = Throttle::new(2, 10, Duration::from_secs(60));
        let ip: Option<IpAddr> = Some("10.0.0.1".parse().unwrap());
        // Two attempts in flight at once use up the account's limit...
        let first = t.begin("a@x", ip, 0).unwrap();
        let second = t.begin("a@x", ip, 0).unwrap();
        assert_eq!(t.begin("a@x", ip, 0).err(), Some(60));
        // ...until one turns out to be a success.
        drop(first);
        let third = t.begin("a@x", ip, 1).unwrap();
        second.keep();
        third.keep();
        assert_eq!(t.begin("a@x", ip, 2).err(), Some(58));
        // The refused attempts and the success left the client's count at 2 of 10.
        for i in 0..8 {
            assert!(t.begin("c@x", ip, 3).is_ok());
            t.begin(&format!("b{i}@x"), ip, 3).unwrap().keep();
        }
        assert!(t.begin("c@x", ip, 3).is_err());
    }

    #[test]
    fn a_refusal_by_ip_does_not_count_against_the_account() {
        let t = Throttle::new(2, 1, Duration::from_secs(60));
        let ip: Option<IpAddr> = Some("10.0.0.1".parse().unwrap());
        t.begin("a@x", ip, 0).unwrap().keep();
        assert!(t.begin("b@x", ip, 0).is_err());
        assert!(t.begin("b@x", ip, 0).is_err());
        assert!(t.begin("b@x", None, 0).is_ok());
        assert!(t.begin("b@x", None, 0).is_ok());
    }
}
