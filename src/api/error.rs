//! The auth API's one translator to HTTP: every failure becomes `{"message": …}` with the
//! contract's status; details go to the log, never to the client.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::auth::AuthError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("expected application/json")]
    UnsupportedMediaType,
    #[error(transparent)]
    Auth(#[from] AuthError),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // The rule that failed, never the address (`crate::email::InvalidEmail`).
        if let ApiError::Auth(AuthError::InvalidEmail(rule)) = &self {
            let message = format!("Invalid email address: {rule}");
            return (
                StatusCode::BAD_REQUEST,
                Json(serde_json::json!({ "message": message })),
            )
                .into_response();
        }
        let (status, message, retry_after): (StatusCode, &str, Option<u64>) = match &self {
            ApiError::BadRequest(msg) => (StatusCode::BAD_REQUEST, msg, None),
            ApiError::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "Request body is too large",
                None,
            ),
            // The contract's general rules: a wrong content type is a 400 like any bad input.
            ApiError::UnsupportedMediaType => (
                StatusCode::BAD_REQUEST,
                "Content-Type must be application/json",
                None,
            ),
            ApiError::Auth(e) => match e {
                AuthError::InvalidCredentials => (
                    StatusCode::UNAUTHORIZED,
                    "Invalid credentials have been provided",
                    None,
                ),
                AuthError::Throttled { retry_after_secs } => (
                    StatusCode::TOO_MANY_REQUESTS,
                    "Too many attempts; try again later",
                    Some(*retry_after_secs),
                ),
                AuthError::Overloaded => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Server is busy; try again",
                    Some(1),
                ),
                AuthError::MissingToken => (StatusCode::UNAUTHORIZED, "Missing access token", None),
                AuthError::InvalidToken => (
                    StatusCode::UNAUTHORIZED,
                    "Invalid or expired access token",
                    None,
                ),
                AuthError::TokenTooOld => (
                    StatusCode::UNAUTHORIZED,
                    "Token is too old for refresh",
                    None,
                ),
                AuthError::TokenReused => (
                    StatusCode::UNAUTHORIZED,
                    "Token has already been refreshed; the session has ended",
                    None,
                ),
                AuthError::SessionTooOld => (
                    StatusCode::UNAUTHORIZED,
                    "Session has reached its maximum age; log in again",
                    None,
                ),
                AuthError::Forbidden => (StatusCode::FORBIDDEN, "Insufficient permissions", None),
                AuthError::InvalidEmail(_) => {
                    unreachable!("answered above, with its rule")
                }
                AuthError::UserExists => (
                    StatusCode::CONFLICT,
                    "A user with this email already exists",
                    None,
                ),
                AuthError::NoPendingInvitation => (
                    StatusCode::NOT_FOUND,
                    "No pending invitation for this user",
                    None,
                ),
                AuthError::NotFound => (StatusCode::NOT_FOUND, "User not found", None),
                AuthError::OktaDisabled => {
                    (StatusCode::NOT_FOUND, "Okta login is not enabled", None)
                }
                AuthError::InvalidOneTimeToken => {
                    (StatusCode::BAD_REQUEST, "Invalid or expired token", None)
                }
                AuthError::WeakPassword(rule) => (StatusCode::BAD_REQUEST, rule.as_str(), None),
                AuthError::Store(_) => {
                    tracing::error!(error = %e, "store failure in the auth API");
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Service temporarily unavailable",
                        Some(1),
                    )
                }
                AuthError::Internal(_) => {
                    tracing::error!(error = %e, "internal failure in the auth API");
                    (StatusCode::INTERNAL_SERVER_ERROR, "Internal error", None)
                }
            },
        };
        let mut response =
            (status, Json(serde_json::json!({ "message": message }))).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// A body that failed to deserialize, as the contract's 400: syntax errors say so, data
/// errors name the field (`password: invalid type: integer, expected a string`) and never
/// echo a value back.
fn json_error(e: &serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    match e.inner().classify() {
        serde_json::error::Category::Data => {
            let path = e.path().to_string();
            let inner = without_values(&e.inner().to_string());
            ApiError::BadRequest(match path.as_str() {
                "." | "" => format!("Invalid request body: {inner}"),
                _ => format!("Invalid request body: {path}: {inner}"),
            })
        }
        _ => ApiError::BadRequest("Request body is not valid JSON".into()),
    }
}

/// serde writes the offending value into "invalid type: integer `5`, expected …" (and
/// `string "…"` for strings); keep only its kind, so a password sent as a number is not echoed.
fn without_values(text: &str) -> String {
    for marker in ["invalid type: ", "invalid value: "] {
        let Some(start) = text.find(marker).map(|i| i + marker.len()) else {
            continue;
        };
        let Some(len) = text[start..].rfind(", expected") else {
            continue;
        };
        let unexpected = &text[start..start + len];
        let kind = unexpected.split(['`', '"']).next().unwrap_or("").trim_end();
        return format!("{}{kind}{}", &text[..start], &text[start + len..]);
    }
    text.to_owned()
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::BadRequest("Could not read the request body".into())
        }
    }
}

/// A JSON object body, parsed like `axum::Json` but with the contract's `{"message"}`
/// rejections: 400 for a wrong content type, bad syntax, a non-object (serde would read a
/// struct from an array) or ill-typed fields; 413 past `limits.api_max_body`.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(request.headers()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let body = Bytes::from_request(request, state).await?;
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(match body.iter().all(u8::is_ascii_whitespace) {
                true => ApiError::BadRequest("Request body is not valid JSON".into()),
                false => ApiError::BadRequest("Request body must be a JSON object".into()),
            });
        }
        serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(&body))
            .map(ApiJson)
            .map_err(|e| json_error(&e))
    }
}

/// `application/json`, or any `application/*+json`, as axum's `Json` accepts.
fn is_json(headers: &axum::http::HeaderMap) -> bool {
    let Some(content_type) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = content_type.split(';').next().unwrap_or("").trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json")
            || subtype.len() > 5 && subtype[subtype.len() - 5..].eq_ignore_ascii_case("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_errors_keep_the_kind_but_not_the_value() {
        assert_eq!(
            without_values(
                "password: invalid type: integer `123`, expected a string at line 1 column 9"
            ),
            "password: invalid type: integer, expected a string at line 1 column 9"
        );
        assert_eq!(
            without_values(r#"n: invalid type: string "s3cret, expected", expected u32 at line 1"#),
            "n: invalid type: string, expected u32 at line 1"
        );
        assert_eq!(
            without_values("missing field `email`"),
            "missing field `email`"
        );
    }

    #[test]
    fn json_content_types() {
        let with = |ct: &'static str| {
            let mut h = axum::http::HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            is_json(&h)
        };
        assert!(with("application/json"));
        assert!(with("application/json; charset=utf-8"));
        assert!(with("Application/JSON"));
        assert!(with("application/problem+json"));
        assert!(!with("text/plain"));
        assert!(!with("application/jsonx"));
        assert!(!is_json(&axum::http::HeaderMap::new()));
    }
}
