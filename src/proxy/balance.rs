//! Instance choice, kept pure: the cluster holds the counter, this decides.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Round robin over `len` instances; wraps without ever panicking.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    pub fn pick(&self, len: usize) -> Option<usize> {
        (len > 0).then(|| self.next.fetch_add(1, Ordering::Relaxed) % len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_through_every_instance_in_order() {
        let rr = RoundRobin::default();
        let picks: Vec<_> = (0..6).map(|_| rr.pick(3).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        assert_eq!(rr.pick(0), None);
    }

    #[test]
    fn survives_counter_wraparound() {
        let rr = RoundRobin {
            next: AtomicUsize::new(usize::MAX),
        };
        assert!(rr.pick(3).is_some());
        assert!(rr.pick(3).is_some());
    }
}
