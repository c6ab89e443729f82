//! When a failed attempt may be sent again, to another instance: pure rules plus the retry
//! budget that keeps a failing cluster from being hammered.

use std::sync::atomic::{AtomicU64, Ordering};

use http::Method;

/// How an attempt failed, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The connection could not be established: the request provably never left.
    Connect,
    /// The connection broke after the request may have been (partly) written.
    Broken,
    /// No response head within the timeout: the upstream may still be working on it.
    Timeout,
}

/// RFC 9110 §9.2.2: repeating these has the same effect as sending them once.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// May an attempt that failed like this be sent again? Only a request whose body can be
/// sent again (an empty one: streamed bodies are not kept), and only if it never reached the
/// upstream or repeating it is harmless. A timeout is never retried: the upstream may still
/// be processing it, and retrying slow requests multiplies load exactly when it hurts.
pub fn may_retry(method: &Method, body_replayable: bool, failure: Failure) -> bool {
    body_replayable
        && match failure {
            Failure::Connect => true,
            Failure::Broken => is_idempotent(method),
            Failure::Timeout => false,
        }
}

/// Retries allowed per window: a floor, plus `ratio` of the window's requests
/// (like Linkerd's and Envoy's retry budgets).
pub fn budget_allows(requests: u64, retries: u64, ratio: f64) -> bool {
    let allowed = MIN_RETRIES_PER_WINDOW as f64 + ratio * requests as f64;
    (retries as f64) < allowed
}

const WINDOW_SECS: u64 = 10;
/// 1 retry per second even for a cluster with almost no traffic.
const MIN_RETRIES_PER_WINDOW: u64 = WINDOW_SECS;

/// Per-cluster request and retry counts over fixed 10 s windows. Lock-free: a window roll
/// racing with a count may misattribute one request, which a budget can afford.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    window: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

impl RetryBudget {
    pub fn new(ratio: f64) -> RetryBudget {
        RetryBudget {
            ratio,
            window: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        }
    }

    fn roll(&self, now_secs: u64) {
        let window = now_secs / WINDOW_SECS;
        if self.window.load(Ordering::Relaxed) != window
            && self.window.swap(window, Ordering::Relaxed) != window
        {
            self.requests.store(0, Ordering::Relaxed);
            self.retries.store(0, Ordering::Relaxed);
        }
    }

    pub fn record_request(&self, now_secs: u64) {
        self.roll(now_secs);
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget, if it has one.
    pub fn try_retry(&self, now_secs: u64) -> bool {
        self.roll(now_secs);
        let requests = self.requests.load(Ordering::Relaxed);
        let retries = self.retries.load(Ordering::Relaxed);
        if budget_allows(requests, retries, self.ratio) {
            self.retries.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_safe_failures_of_replayable_requests_are_retried() {
        assert!(may_retry(&Method::POST, true, Failure::Connect));
        assert!(!may_retry(&Method::POST, true, Failure::Broken));
        assert!(may_retry(&Method::GET, true, Failure::Broken));
        assert!(may_retry(&Method::PUT, true, Failure::Broken));
        assert!(!may_retry(&Method::GET, true, Failure::Timeout));
        assert!(!may_retry(&Method::GET, false, Failure::Connect));
        assert!(!is_idempotent(&Method::PATCH));
    }

    #[test]
    fn budget_has_a_floor_and_grows_with_traffic() {
        assert!(budget_allows(0, 9, 0.2));
        assert!(!budget_allows(0, 10, 0.2));
        assert!(budget_allows(100, 29, 0.2));
        assert!(!budget_allows(100, 30, 0.2));
    }

    #[test]
    fn budget_refills_each_window() {
        let budget = RetryBudget::new(0.0);
        let granted = (0..50).filter(|_| budget.try_retry(100)).count();
        assert_eq!(granted as u64, MIN_RETRIES_PER_WINDOW);
        assert!(!budget.try_retry(105));
        assert!(
            budget.try_retry(110),
            "a new window starts with a fresh budget"
        );
        for _ in 0..100 {
            budget.record_request(110);
        }
        let with_ratio = RetryBudget::new(0.5);
        for _ in 0..100 {
            with_ratio.record_request(200);
        }
        let granted = (0..200).filter(|_| with_ratio.try_retry(200)).count();
        assert_eq!(granted, 10 + 50);
    }
}
