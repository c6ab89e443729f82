//! The [`Caller`] extractor: who sent an auth API request, for the audit trail and the
//! throttles. The client IP is the one the server edge resolved (`server::client_addr`: the
//! peer, or behind `server.trusted_proxies` the right-most untrusted `X-Forwarded-For` hop);
//! the request id is the one the server edge assigned (in the request's `X-Request-Id`).

use std::convert::Infallible;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;

use crate::auth::audit::Caller;
use crate::request_id;

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(Caller {
            client_ip: parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
            request_id: request_id::of(&parts.headers),
        })
    }
}
