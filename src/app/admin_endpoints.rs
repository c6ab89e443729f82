//! The admin listener's endpoints: `/healthz` (the process answers), `/readyz` (the store
//! answers and an upstream instance is available), `/metrics` (Prometheus text).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};

use crate::proxy::Proxy;
use crate::store::Store;
use crate::telemetry::metrics::{self, Metrics};

#[derive(Clone)]
struct Readiness {
    /// Local mode's store; upstream mode has none.
    store: Option<Arc<dyn Store>>,
    proxy: Arc<Proxy>,
    metrics: Arc<Metrics>,
}

pub(super) fn admin_router(
    store: Option<Arc<dyn Store>>,
    proxy: Arc<Proxy>,
    metrics: Arc<Metrics>,
) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readyz))
        .route("/metrics", get(scrape))
        // Every path here is the gateway's own: what the router answers itself is the API's
        // JSON error too, not an empty body.
        .method_not_allowed_fallback(crate::api::method_not_allowed)
        .fallback(crate::api::not_found)
        .with_state(Readiness {
            store,
            proxy,
            metrics,
        })
}

/// `GET /metrics`: the Prometheus text exposition.
async fn scrape(State(admin): State<Readiness>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let state = admin.proxy.scrape_state().await;
    match admin.metrics.render(&state) {
        Ok(text) => (
            [(axum::http::header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "encoding metrics failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(serde_json::json!({"message": "metrics unavailable"})),
            )
                .into_response()
        }
    }
}

/// Ready: the store answers and at least one upstream instance is available (or no
/// upstream is configured).
async fn readyz(State(ready): State<Readiness>) -> (StatusCode, Json<serde_json::Value>) {
    if let Some(store) = &ready.store
        && let Err(e) = store.ping().await
    {
        tracing::warn!(error = %e, "readiness: store unreachable");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"message": "store unreachable"})),
        );
    }
    if !ready.proxy.any_instance_available() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"message": "no healthy upstream instance"})),
        );
    }
    (StatusCode::OK, Json(serde_json::json!({"status": "ready"})))
}
