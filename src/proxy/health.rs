//! Instance health as pure state machines: active checks with thresholds, and passive ejection
//! with exponential backoff. The task that runs the checks against a cluster is
//! `health_checks.rs`, so this state depends on nothing else of the proxy.

use std::time::Duration;

use tokio::time::Instant;

/// Active-check verdicts in a row decide: `unhealthy_threshold` failures take a healthy
/// instance out, `healthy_threshold` successes bring it back. Instances start healthy, so
/// a fresh gateway serves before its first check completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveHealth {
    pub healthy: bool,
    streak: u32,
}

impl Default for ActiveHealth {
    fn default() -> Self {
        ActiveHealth {
            healthy: true,
            streak: 0,
        }
    }
}

impl ActiveHealth {
    /// Records one check; returns `Some(new state)` when the instance changed state.
    pub fn record(
        &mut self,
        ok: bool,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
    ) -> Option<bool> {
        if ok == self.healthy {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if ok {
            healthy_threshold
        } else {
            unhealthy_threshold
        };
        if self.streak >= needed {
            self.healthy = ok;
            self.streak = 0;
            Some(ok)
        } else {
            None
        }
    }
}

/// Passive ejection: a connect failure or timeout takes the instance out until
/// `ejected_until`; each consecutive ejection doubles the time, up to a maximum; a success
/// resets the count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ejection {
    pub ejected_until: Option<Instant>,
    consecutive: u32,
}

impl Ejection {
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| now < until)
    }

    /// Ejects (again) and returns for how long.
    pub fn eject(&mut self, now: Instant, base: Duration, max: Duration) -> Duration {
        let factor = 1u32 << self.consecutive.min(16);
        let time = base.saturating_mul(factor).min(max);
        self.consecutive = self.consecutive.saturating_add(1);
        self.ejected_until = Some(now + time);
        time
    }

    pub fn succeeded(&mut self) {
        self.consecutive = 0;
        self.ejected_until = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_decide_transitions() {
        let mut h = ActiveHealth::default();
        assert!(h.healthy);
        assert_eq!(h.record(false, 2, 3), None);
        assert_eq!(h.record(false, 2, 3), None);
        assert_eq!(h.record(false, 2, 3), Some(false));
        assert!(!h.healthy);
        assert_eq!(h.record(true, 2, 3), None);
        // A failure in between resets the streak.
        assert_eq!(h.record(false, 2, 3), None);
        assert_eq!(h.record(true, 2, 3), None);
        assert_eq!(h.record(true, 2, 3), Some(true));
        assert_eq!(h.record(true, 2, 3), None);
    }

    #[test]
    fn ejection_backs_off_exponentially_up_to_max_and_resets_on_success() {
        let now = Instant::now();
        let (base, max) = (Duration::from_secs(5), Duration::from_secs(30));
        let mut e = Ejection::default();
        assert!(!e.is_ejected(now));
        assert_eq!(e.eject(now, base, max), Duration::from_secs(5));
        assert!(e.is_ejected(now + Duration::from_secs(4)));
        assert!(!e.is_ejected(now + Duration::from_secs(5)));
        assert_eq!(e.eject(now, base, max), Duration::from_secs(10));
        assert_eq!(e.eject(now, base, max), Duration::from_secs(20));
        assert_eq!(e.eject(now, base, max), Duration::from_secs(30));
        assert_eq!(e.eject(now, base, max), Duration::from_secs(30));
        e.succeeded();
        assert!(!e.is_ejected(now));
        assert_eq!(e.eject(now, base, max), Duration::from_secs(5));
    }
}
