//! The auth API's one translator to HTTP: every failure becomes `{"message": …}` with the
//! contract's status; details go to the log, never to the client.

use axum::Json;
use axum::extract::rejection::{BytesRejection, JsonRejection};
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
                    "Too many failed login attempts; try again later",
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

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
            JsonRejection::BytesRejection(b) => b.into(),
            // Syntax and data errors: serde's message names the field and what was wrong,
            // and never echoes a value back.
            JsonRejection::JsonDataError(e) => ApiError::BadRequest(format!(
                "Invalid request body: {}",
                without_values(e.body_text().trim_start_matches(
                    "Failed to deserialize the JSON body into the target type: "
                ))
            )),
            JsonRejection::JsonSyntaxError(_) => {
                ApiError::BadRequest("Request body is not valid JSON".into())
            }
            other => ApiError::BadRequest(other.body_text()),
        }
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

/// `axum::Json` whose rejections speak the contract's `{"message"}` format.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(value) = Json::<T>::from_request(request, state).await?;
        Ok(ApiJson(value))
    }
}

#[cfg(test)]
mod tests {
    use super::without_values;

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
}
