//! The Meiro Authentication API as an axum `Router`: a thin adapter (parse → `auth` → JSON).
//! Anything it does not serve falls through to the data plane.

pub mod error;
mod login;
pub mod users;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::auth::Auth;
use crate::proxy::ProxyService;

/// The main listener's router: API routes, then the data plane as the fallback.
pub fn router(auth: Arc<Auth>, api_max_body: usize, proxy: ProxyService) -> Router {
    Router::new()
        .route("/auth_options", get(auth_options))
        .route(
            "/users/login",
            axum::routing::post(login::login)
                .patch(login::refresh)
                .delete(login::logout),
        )
        .route("/.well-known/jwks.json", get(jwks))
        // A known path with another method: 405 (axum keeps the `Allow` header) with the
        // contract's JSON error body instead of an empty one.
        .method_not_allowed_fallback(method_not_allowed)
        // Bounds what the API's extractors read; the proxied bodies stream unbounded.
        .layer(DefaultBodyLimit::max(api_max_body))
        .with_state(auth)
        .fallback_service(proxy)
}

/// Okta arrives in a later version; until then only credentials login is offered.
async fn auth_options() -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "is_credentials_login_enabled": true,
        "is_okta_login_enabled": false,
        "okta_auth_link": null,
    }))
}

async fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(serde_json::json!({ "message": "Method not allowed" })),
    )
        .into_response()
}

async fn jwks(State(auth): State<Arc<Auth>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        auth.keys().jwks_json(),
    )
        .into_response()
}
