//! Per-user rate limits (`[limits] per_user_rate` / `per_user_burst`, `routes.per_user_rate`):
//! a budget per user — governor's keyed GCRA over a sharded map — keyed by the user id the
//! token speaks for, so all of a user's tokens share it and one user's traffic never waits on
//! another's. Counted on this replica only: N replicas behind a balancer let a user up to N
//! times the rate.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::HeaderValue;

/// Checks between two sweeps of the users who have been idle long enough to be back at a full
/// budget (their state would say nothing a fresh one does not).
const PRUNE_EVERY: u32 = 1 << 16;

pub struct UserLimiter {
    limiter: DefaultKeyedRateLimiter<HeaderValue>,
    clock: DefaultClock,
    checks: AtomicU32,
    /// `(rate, burst)` it counts: a reload that keeps them keeps this limiter, and with it
    /// what its users have spent.
    quota: (u32, u32),
}

impl UserLimiter {
    /// `rate` requests per second, `burst` at once (`0`: the rate); `None` for a rate of 0.
    pub fn new(rate: u32, burst: u32) -> Option<UserLimiter> {
        let rate = NonZeroU32::new(rate)?;
        let burst = NonZeroU32::new(burst).unwrap_or(rate);
        Some(UserLimiter {
            limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            clock: DefaultClock::default(),
            checks: AtomicU32::new(0),
            quota: (rate.get(), burst.get()),
        })
    }

    /// Does this limiter count `rate` and `burst` as [`UserLimiter::new`] would?
    pub fn counts(&self, rate: u32, burst: u32) -> bool {
        let burst = if burst == 0 { rate } else { burst };
        self.quota == (rate, burst)
    }

    /// Counts one request of `user` (the id header the principal carries); over the budget:
    /// `Err(seconds until the next request is allowed)`, at least 1.
    pub fn check(&self, user: &HeaderValue) -> Result<(), u64> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(user).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            (wait.as_secs_f64().ceil() as u64).max(1)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_user_has_a_budget_of_their_own() {
        let limiter = UserLimiter::new(2, 3).expect("on");
        let (alice, bob) = (HeaderValue::from_static("a"), HeaderValue::from_static("b"));
        for _ in 0..3 {
            assert_eq!(limiter.check(&alice), Ok(()), "the burst");
        }
        assert_eq!(limiter.check(&alice), Err(1), "then the rate");
        for _ in 0..3 {
            assert_eq!(limiter.check(&bob), Ok(()), "bob is not slowed by alice");
        }
        assert!(UserLimiter::new(0, 5).is_none(), "0 is off");
        assert!(UserLimiter::new(4, 0).is_some_and(|l| l.counts(4, 4) && l.counts(4, 0)));
    }
}
