//! Instance health: the pure state machines (active checks with thresholds, passive ejection
//! with exponential backoff) and the task that runs the active checks.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{Request, Uri};
use tokio::sync::watch;
use tokio::time::Instant;

use super::upstream::Cluster;

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

/// Runs the active checks of one cluster until shutdown.
pub async fn run_checks(cluster: Arc<Cluster>, mut shutdown: watch::Receiver<bool>) {
    let Some(config) = cluster.health.clone() else {
        return;
    };
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = ticker.tick() => {}
        }
        let checks = cluster.instances.iter().map(|instance| {
            let uri = Uri::builder()
                .scheme(instance.scheme.clone())
                .authority(instance.authority.clone())
                .path_and_query(config.path.as_str())
                .build();
            let cluster = &cluster;
            async move {
                let Ok(uri) = uri else { return false };
                let mut request = Request::new(Body::empty());
                *request.uri_mut() = uri;
                match tokio::time::timeout(config.timeout, cluster.client.request(request)).await {
                    Ok(Ok(response)) => response.status().is_success(),
                    _ => false,
                }
            }
        });
        let results = futures_util::future::join_all(checks).await;
        for (instance, ok) in cluster.instances.iter().zip(results) {
            let mut state = instance.state();
            let changed =
                state
                    .active
                    .record(ok, config.healthy_threshold, config.unhealthy_threshold);
            // A passing check is better evidence than an old failure: like Envoy, it ends a
            // passive ejection instead of waiting out the backoff.
            if ok && state.ejection.ejected_until.is_some() {
                state.ejection.succeeded();
            }
            drop(state);
            match changed {
                Some(true) => {
                    tracing::info!(upstream = %cluster.name, instance = %instance.authority, "instance healthy again")
                }
                Some(false) => {
                    tracing::warn!(upstream = %cluster.name, instance = %instance.authority, "instance unhealthy")
                }
                None => {}
            }
        }
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
