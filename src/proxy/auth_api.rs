//! Upstream mode's auth API: `/auth_options` and `/users/*` go to the backend unchanged
//! (bodies, statuses, cookies), no token required here — the backend decides. On the way the
//! introspector learns ([`Exchange`]): a successful login's token is introspected at once,
//! and the tokens a successful logout ended are forgotten at once.

use std::sync::Arc;

use axum::body::Body;
use http::{HeaderValue, Response};
use http_body_util::{BodyExt, Limited};

use super::attempt::{self, Clients, Outbound};
use super::body::{RequestBody, downstream_body};
use super::error::ProxyError;
use super::{Outcome, Proxy, routes};
use crate::auth::introspect::{Exchange, Introspector};

/// Bodies read on the way (a logout request, a login response).
const AUTH_BODY_LIMIT: usize = 1 << 20;

impl Proxy {
    /// `exchange` is what the request is to the auth API (named by its path below the prefix);
    /// `path` the normalized path, prefix included, as the backend receives it.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn pass_auth_api(
        &self,
        introspector: &Arc<Introspector>,
        exchange: Exchange,
        mut parts: http::request::Parts,
        body: Body,
        path: &str,
        host: Option<HeaderValue>,
        outcome: &mut Outcome<'_>,
    ) -> Result<Response<Body>, ProxyError> {
        let body = downstream_body(body, &parts.headers, None, self.body_read_timeout)?;
        // A logout's body is read (bounded) for the token it ends, and forwarded as read.
        let (body, ended) = if exchange == Exchange::Logout {
            let RequestBody { body, progress } = body;
            let bytes = match Limited::new(body, AUTH_BODY_LIMIT).collect().await {
                Ok(collected) => collected.to_bytes(),
                // Reading failed: the body was malformed or stalled (the client's), or too long.
                Err(_) => {
                    return Err(progress
                        .and_then(|p| p.failure())
                        .unwrap_or(ProxyError::PayloadTooLarge));
                }
            };
            let ended = introspector.ended_by_logout(&parts.headers, &bytes);
            (RequestBody::whole(Body::from(bytes)), ended)
        } else {
            (body, Vec::new())
        };

        self.prepare_upstream_headers(&mut parts, host, None, None)?;
        let target = routes::path_and_query(&parts.uri, path)?;
        let cluster = self.auth_api_cluster.clone().ok_or(ProxyError::Internal)?;
        let deadline = cluster.response_timeout;
        let outbound = Outbound::new(parts, body, target, deadline);
        let response = attempt::send(&Clients, cluster, outbound, &mut outcome.instance).await?;
        if !response.status().is_success() {
            return Ok(response);
        }
        match exchange {
            Exchange::Logout => {
                for token in &ended {
                    introspector.forget(token).await;
                }
                Ok(response)
            }
            Exchange::Login => {
                // Read the login response (small) for its token; pass the same bytes on.
                let (head, body) = response.into_parts();
                let bytes = Limited::new(body, AUTH_BODY_LIMIT)
                    .collect()
                    .await
                    .map_err(|_| ProxyError::UpstreamUnavailable)?
                    .to_bytes();
                introspector.prefetch_from_login(&bytes);
                Ok(Response::from_parts(head, Body::from(bytes)))
            }
            Exchange::Other => Ok(response),
        }
    }
}
