//! The data plane's one translator to HTTP: downstream faults → 4xx, upstream faults →
//! 502/503/504, our own → 500. Bodies are static JSON so an error costs no allocation.

use axum::body::Body;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};

use crate::auth::validator::Denial;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("request path cannot be normalized safely")]
    BadPath,
    #[error("request body over the route's limit")]
    PayloadTooLarge,
    #[error("request body could not be read (bad chunked framing, or cut off)")]
    MalformedBody,
    #[error("request body stalled")]
    BodyTimeout,
    #[error("no route matches")]
    NoRoute,
    #[error("missing access token")]
    MissingToken,
    #[error("invalid or expired access token")]
    InvalidToken,
    #[error("token validation unavailable")]
    AuthUnavailable,
    #[error("the route does not admit the caller's role")]
    Forbidden,
    #[error("the route does not serve this method")]
    MethodNotAllowed,
    #[error("over the user's request budget")]
    RateLimited,
    #[error("upstream has no instance")]
    NoInstance,
    #[error("upstream refused or failed")]
    UpstreamUnavailable,
    #[error("upstream timed out")]
    UpstreamTimeout,
    #[error("could not build the upstream request")]
    Internal,
}

impl From<Denial> for ProxyError {
    fn from(denial: Denial) -> ProxyError {
        match denial {
            Denial::Missing => ProxyError::MissingToken,
            Denial::Invalid => ProxyError::InvalidToken,
            Denial::Unavailable => ProxyError::AuthUnavailable,
        }
    }
}

impl ProxyError {
    pub fn status(self) -> StatusCode {
        match self {
            ProxyError::BadPath => StatusCode::BAD_REQUEST,
            ProxyError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::MalformedBody => StatusCode::BAD_REQUEST,
            ProxyError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::MissingToken | ProxyError::InvalidToken => StatusCode::UNAUTHORIZED,
            ProxyError::AuthUnavailable | ProxyError::NoInstance => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Forbidden => StatusCode::FORBIDDEN,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn body(self) -> &'static str {
        match self {
            ProxyError::BadPath => r#"{"message":"Invalid request path"}"#,
            ProxyError::PayloadTooLarge => r#"{"message":"Request body is too large"}"#,
            ProxyError::MalformedBody => r#"{"message":"Request body is malformed"}"#,
            ProxyError::BodyTimeout => r#"{"message":"Request body timed out"}"#,
            ProxyError::NoRoute => r#"{"message":"Not found"}"#,
            ProxyError::MissingToken => r#"{"message":"Missing access token"}"#,
            ProxyError::InvalidToken => r#"{"message":"Invalid or expired access token"}"#,
            ProxyError::AuthUnavailable => {
                r#"{"message":"Token validation is temporarily unavailable"}"#
            }
            ProxyError::Forbidden => r#"{"message":"Insufficient permissions"}"#,
            ProxyError::MethodNotAllowed => r#"{"message":"Method not allowed"}"#,
            ProxyError::RateLimited => r#"{"message":"Too many requests"}"#,
            ProxyError::NoInstance => r#"{"message":"No upstream instance available"}"#,
            ProxyError::UpstreamUnavailable => r#"{"message":"Upstream unavailable"}"#,
            ProxyError::UpstreamTimeout => r#"{"message":"Upstream timed out"}"#,
            ProxyError::Internal => r#"{"message":"Internal error"}"#,
        }
    }

    pub fn into_response(self) -> Response<Body> {
        let mut response = Response::new(Body::from(Bytes::from_static(self.body().as_bytes())));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if self.status() == StatusCode::UNAUTHORIZED {
            headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_body_is_json_with_a_message() {
        for e in [
            ProxyError::BadPath,
            ProxyError::PayloadTooLarge,
            ProxyError::MalformedBody,
            ProxyError::BodyTimeout,
            ProxyError::NoRoute,
            ProxyError::MissingToken,
            ProxyError::InvalidToken,
            ProxyError::AuthUnavailable,
            ProxyError::Forbidden,
            ProxyError::MethodNotAllowed,
            ProxyError::RateLimited,
            ProxyError::NoInstance,
            ProxyError::UpstreamUnavailable,
            ProxyError::UpstreamTimeout,
            ProxyError::Internal,
        ] {
            let v: serde_json::Value = serde_json::from_str(e.body()).unwrap();
            assert!(v["message"].is_string(), "{e:?}");
        }
    }
}
