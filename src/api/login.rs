//! `/users/login`: credentials login (POST), refresh (PATCH), logout (DELETE).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::error::{ApiError, ApiJson};
use crate::auth::audit::Caller;
use crate::auth::check::extract_token;
use crate::auth::{Auth, IssuedToken, Settings};

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = Login)]
pub struct LoginBody {
    email: String,
    password: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = Token)]
pub struct TokenBody {
    token: String,
}

/// Logout's optional body: the token may as well come in a header or the cookie, so `{}`
/// (which some clients send with every DELETE) must not fail the logout.
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = Logout)]
pub struct LogoutBody {
    token: Option<String>,
}

pub async fn login(
    State(auth): State<Arc<Auth>>,
    caller: Caller,
    ApiJson(body): ApiJson<LoginBody>,
) -> Result<Response, ApiError> {
    let issued = auth.login(&body.email, body.password, &caller).await?;
    Ok(token_response(auth.settings(), issued))
}

pub async fn refresh(
    State(auth): State<Arc<Auth>>,
    caller: Caller,
    ApiJson(body): ApiJson<TokenBody>,
) -> Result<Response, ApiError> {
    let issued = auth.refresh(&body.token, &caller).await?;
    Ok(token_response(auth.settings(), issued))
}

/// Idempotent: whatever the token, the answer is 200 and a cookie deletion. Every token
/// presented — header or cookie, and the body's — has its session ended: a client holding a
/// stale cookie and sending the current token in the body must not stay logged in. A body
/// that is not `{"token": …}` is ignored rather than refused, so it can never keep a session
/// alive — nor can one past `limits.api_max_body`, which is read up to the limit and dropped.
pub async fn logout(
    State(auth): State<Arc<Auth>>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let from_body = body
        .ok()
        .and_then(|body| serde_json::from_slice::<LogoutBody>(&body).ok())
        .and_then(|b| b.token);
    let from_headers = extract_token(&headers, &auth.settings().cookie_name);
    auth.logout(from_headers, &caller).await?;
    if from_body.as_deref() != from_headers {
        auth.logout(from_body.as_deref(), &caller).await?;
    }
    let mut response =
        Json(serde_json::json!({ "message": "Successfully logged-out" })).into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, cookie(auth.settings(), "", 0));
    Ok(response)
}

pub(super) fn token_response(settings: &Settings, issued: IssuedToken) -> Response {
    let cookie = cookie(settings, &issued.token, issued.expires_in);
    let mut response = Json(serde_json::json!({ "token": issued.token })).into_response();
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    response
}

/// The session cookie: HttpOnly so scripts cannot read it, SameSite=Lax against CSRF on
/// state-changing cross-site requests, Max-Age = the token's remaining life.
fn cookie(settings: &Settings, token: &str, max_age: i64) -> HeaderValue {
    let secure = if settings.cookie_secure {
        "; Secure"
    } else {
        ""
    };
    let value = format!(
        "{}={token}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
        settings.cookie_name,
        max_age.max(0)
    );
    // A JWT and a validated cookie name are always valid header text.
    HeaderValue::try_from(value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(secure: bool) -> Settings {
        Settings {
            access_token_ttl: 28_800,
            refresh_window: 14_400,
            session_max_age: 2_592_000,
            cookie_name: "meiro_access_token".into(),
            cookie_secure: secure,
            invitation_ttl: 432_000,
            reset_ttl: 3_600,
            password_min_length: 12,
            recheck_interval: 30,
            audit_retention: 90 * 86_400,
            frontend_url: "http://app.test".into(),
        }
    }

    #[test]
    fn cookie_attributes() {
        assert_eq!(
            cookie(&settings(true), "abc", 28_800),
            "meiro_access_token=abc; Path=/; Max-Age=28800; HttpOnly; SameSite=Lax; Secure"
        );
        assert_eq!(
            cookie(&settings(false), "", 0),
            "meiro_access_token=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax"
        );
    }
}
