//! Instance choice, kept pure: the cluster supplies which instances are available and their
//! in-flight counts; these functions decide.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Round robin over the available instances; wraps without ever panicking.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// The next available index at or after the counter, skipping unavailable ones.
    pub fn pick(&self, len: usize, available: impl Fn(usize) -> bool) -> Option<usize> {
        if len == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..len)
            .map(|offset| start.wrapping_add(offset) % len)
            .find(|&i| available(i))
    }
}

/// Power of two choices: two distinct random available instances, the one with fewer
/// requests in flight wins (ties: the first). `random(n)` returns a value in `0..n`.
pub fn least_request(
    len: usize,
    available: impl Fn(usize) -> bool,
    in_flight: impl Fn(usize) -> usize,
    mut random: impl FnMut(usize) -> usize,
) -> Option<usize> {
    // Instances are few (a handful per cluster): a stack array keeps this allocation-free.
    const MAX: usize = 64;
    let mut candidates = [0usize; MAX];
    let mut n = 0;
    for i in (0..len).filter(|&i| available(i)).take(MAX) {
        candidates[n] = i;
        n += 1;
    }
    match n {
        0 => None,
        1 => Some(candidates[0]),
        _ => {
            let a = random(n);
            // A second, different candidate: draw from the n-1 others.
            let mut b = random(n - 1);
            if b >= a {
                b += 1;
            }
            let (a, b) = (candidates[a], candidates[b]);
            Some(if in_flight(b) < in_flight(a) { b } else { a })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_cycles_through_every_instance_in_order() {
        let rr = RoundRobin::default();
        let picks: Vec<_> = (0..6).map(|_| rr.pick(3, |_| true).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        assert_eq!(rr.pick(0, |_| true), None);
    }

    #[test]
    fn round_robin_skips_unavailable_instances_evenly() {
        let rr = RoundRobin::default();
        let mut counts = [0; 3];
        for _ in 0..300 {
            counts[rr.pick(3, |i| i != 1).unwrap()] += 1;
        }
        assert_eq!(counts[1], 0);
        // Skipping shifts the load onto the next instance, but both survivors serve.
        assert!(counts[0] >= 100 && counts[2] >= 100, "{counts:?}");
        assert_eq!(rr.pick(3, |_| false), None);
    }

    #[test]
    fn round_robin_survives_counter_wraparound() {
        let rr = RoundRobin {
            next: AtomicUsize::new(usize::MAX),
        };
        assert!(rr.pick(3, |_| true).is_some());
        assert!(rr.pick(3, |_| true).is_some());
    }

    #[test]
    fn least_request_prefers_the_idle_of_two() {
        let busy = [5, 0, 9];
        // random always draws the first two candidates: 0 and 1.
        let pick = least_request(3, |_| true, |i| busy[i], |_| 0);
        assert_eq!(pick, Some(1));
        // An unavailable instance is never chosen, even when idle.
        for seed in 0..50 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let pick = least_request(3, |i| i != 1, |i| busy[i], |n| rng.usize(..n));
            assert_eq!(pick, Some(0), "seed {seed}");
        }
    }

    #[test]
    fn least_request_with_one_or_no_candidate() {
        assert_eq!(least_request(3, |i| i == 2, |_| 0, |_| 0), Some(2));
        assert_eq!(least_request(3, |_| false, |_| 0, |_| 0), None);
        assert_eq!(least_request(0, |_| true, |_| 0, |_| 0), None);
    }

    #[test]
    fn least_request_spreads_equal_load() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut counts = [0; 4];
        for _ in 0..4000 {
            let i = least_request(4, |_| true, |_| 0, |n| rng.usize(..n)).unwrap();
            counts[i] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }
}
