//! The Meiro Authentication API as an axum `Router`: a thin adapter (parse → `auth` → JSON).
//! Anything it does not serve falls through to the data plane; its paths are `auth::paths`.

mod admin;
mod caller;
pub mod error;
mod invite;
mod login;
mod okta;
pub mod openapi;
mod password;
mod user_list;
pub mod users;

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use tracing::Instrument;

use crate::auth::{Auth, paths};
use crate::proxy::ProxyService;
use crate::telemetry::metrics::{MethodIndex, Metrics, RouteMetrics};
use error::ApiError;

/// The main listener's router: API routes, then the data plane as the fallback. Each route
/// is counted in `metrics` under a fixed `api_*` name.
pub fn router(
    auth: Arc<Auth>,
    api_prefix: &str,
    api_max_body: usize,
    proxy: ProxyService,
    metrics: &Metrics,
) -> Router {
    let counted = |name: &str, route: MethodRouter<Arc<Auth>>| {
        route.layer(axum::middleware::from_fn_with_state(
            Arc::new(metrics.route(name)),
            count,
        ))
    };
    let document = openapi::Document::mounted_at(api_prefix);
    let api = Router::new()
        .route(
            paths::AUTH_OPTIONS,
            counted("api_auth_options", get(auth_options)),
        )
        .route(
            paths::LOGIN,
            counted(
                "api_login",
                axum::routing::post(login::login)
                    .patch(login::refresh)
                    .delete(login::logout),
            ),
        )
        .route(
            paths::OKTA_LOGIN,
            counted("api_okta_login", axum::routing::post(okta::okta_login)),
        )
        .route(
            paths::INVITE,
            counted(
                "api_invite",
                axum::routing::post(invite::invite).patch(invite::reinvite),
            ),
        )
        .route(
            paths::USERS,
            counted(
                "api_users",
                get(user_list::list_users).post(users::create_user),
            ),
        )
        .route(
            paths::TRASH,
            counted("api_users_trash", get(user_list::list_trash)),
        )
        .route(
            paths::CREATE_OR_RESTORE,
            counted(
                "api_users_create_or_restore",
                axum::routing::post(users::create_or_restore),
            ),
        )
        .route(
            paths::USER,
            counted(
                "api_user",
                get(users::get_user)
                    .patch(users::modify_user)
                    .delete(users::delete_user),
            ),
        )
        .route(
            paths::CHANGE_PASSWORD,
            counted(
                "api_change_password",
                axum::routing::post(users::change_password),
            ),
        )
        .route(
            paths::INVITATION_LINK,
            counted("api_invitation_link", get(invite::invitation_link)),
        )
        .route(
            paths::PASSWORD,
            counted(
                "api_password",
                axum::routing::post(password::forgot).patch(password::reset),
            ),
        )
        .route(
            paths::OPENAPI,
            counted("api_openapi", get(move || document.serve())),
        );
    // Under `server.api_prefix` when one is set (Meiro CDP serves its API under `/api`); the
    // JWKS stays at the root, where backends are told to fetch it.
    let api = match api_prefix {
        "" => api,
        prefix => Router::new().nest(prefix, api),
    };
    api.route(paths::JWKS, counted("api_jwks", get(jwks)))
        // The API's requests are few and slow (argon2, store writes): a span naming the request
        // id is cheap here, and every line their handlers log carries it (see `request_id`).
        .route_layer(axum::middleware::from_fn(request_span))
        // A known path with another method: 405 (axum adds the `Allow` header) with the
        // contract's JSON error body instead of an empty one.
        .method_not_allowed_fallback(method_not_allowed)
        // Bounds what the API's extractors read; the proxied bodies stream unbounded.
        .layer(DefaultBodyLimit::max(api_max_body))
        .with_state(auth)
        .fallback_service(proxy)
}

/// Okta login is offered only with a link to follow: while its provider cannot be discovered
/// (or Okta is off) the answer is `false` / `null`, so a client never shows a dead button.
/// Credentials login is always on.
async fn auth_options(State(auth): State<Arc<Auth>>) -> Json<serde_json::Value> {
    let okta_auth_link = auth.okta_auth_link().await;
    Json(serde_json::json!({
        "is_credentials_login_enabled": true,
        "is_okta_login_enabled": okta_auth_link.is_some(),
        "okta_auth_link": okta_auth_link,
    }))
}

async fn request_span(request: Request, next: Next) -> Response {
    let span = tracing::info_span!(
        "request",
        request_id = crate::request_id::field(request.headers())
    );
    next.run(request).instrument(span).await
}

/// Counts one API request under its route's fixed name.
async fn count(State(route): State<Arc<RouteMetrics>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = MethodIndex::of(request.method());
    let response = next.run(request).await;
    route.record(method, response.status(), started.elapsed());
    response
}

/// A known path with another method (axum adds `Allow`).
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// For a listener all of whose paths are the gateway's own (the admin listener): an unknown
/// path is a JSON 404 like every other error, not an empty body.
pub async fn not_found() -> ApiError {
    ApiError::NotFound
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
