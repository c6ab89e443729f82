//! The active health checks: one task per cluster with `[upstreams.health]`, asking each
//! instance's health path every interval and feeding the answers to its [`ActiveHealth`]
//! (`health.rs`).
//!
//! [`ActiveHealth`]: super::health::ActiveHealth

use std::sync::Arc;

use axum::body::Body;
use http::Request;
use tokio::sync::watch;

use super::upstream::Cluster;

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
            let uri = instance.absolute_uri(config.path.as_str());
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
