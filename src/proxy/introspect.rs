//! Upstream mode's token validation: ask the Meiro backend (`introspect_method
//! introspect_path` with the token in `X-Access-Token`) and remember its answer in the token
//! cache — 2xx is valid for `positive_ttl`, 401/403 invalid for `negative_ttl`; anything else
//! (an error, a timeout, another status) is never "valid" and is not remembered.
//!
//! Concurrent misses for one token share one backend call (moka `try_get_with`), and cache
//! keys carry this validator's tag (`introspect:<cluster>`), so its entries cannot satisfy
//! another validator.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::header::ACCEPT;
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};

use super::upstream::Cluster;
use crate::auth::Clock;
use crate::auth::cache::{Principal, TokenCache, Verdict, token_digest};
use crate::auth::layer::X_ACCESS_TOKEN;
use crate::config::AuthUpstreamConfig;

/// Largest introspection or login response body read.
const MAX_BODY: usize = 64 * 1024;
/// Entries of the cache (valid and invalid verdicts together).
const CACHE_CAPACITY: u64 = 2_000_000;

#[derive(Debug, Clone, thiserror::Error)]
pub enum IntrospectError {
    #[error("the token was refused by the backend")]
    Invalid,
    #[error("the backend could not answer: {0}")]
    Unavailable(String),
}

pub struct Introspector {
    cluster: Arc<Cluster>,
    method: Method,
    path: PathAndQuery,
    positive_ttl: i64,
    negative_ttl: i64,
    tag: Vec<u8>,
    cache: TokenCache,
    clock: Clock,
}

impl Introspector {
    pub fn new(config: &AuthUpstreamConfig, cluster: Arc<Cluster>, clock: Clock) -> Introspector {
        Introspector {
            tag: format!("introspect:{}", cluster.name).into_bytes(),
            cluster,
            method: Method::from_bytes(config.introspect_method.as_bytes()).unwrap_or(Method::GET),
            path: PathAndQuery::try_from(config.introspect_path.as_str())
                .unwrap_or_else(|_| PathAndQuery::from_static("/")),
            positive_ttl: secs(config.positive_ttl),
            negative_ttl: secs(config.negative_ttl),
            cache: TokenCache::new(CACHE_CAPACITY),
            clock,
        }
    }

    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// The principal the backend vouches for, from the cache or by asking once.
    pub async fn authenticate(&self, token: &str) -> Result<Arc<Principal>, IntrospectError> {
        let key = token_digest(&self.tag, token.as_bytes());
        let verdict = self
            .cache
            .entries()
            .try_get_with(key, self.ask(token))
            .await
            .map_err(|e| (*e).clone())?;
        let now = self.clock.now();
        match verdict {
            Verdict::Valid(principal) if now < principal.exp => Ok(principal),
            Verdict::Invalid { until } if now < until => Err(IntrospectError::Invalid),
            // Outlived its TTL on the injectable clock: forget it and ask again.
            _ => {
                self.cache.entries().invalidate(&key).await;
                Box::pin(self.authenticate(token)).await
            }
        }
    }

    /// A token seen in a successful login response: valid without asking.
    pub async fn learn(&self, token: &str) {
        let exp = self.clock.now().saturating_add(self.positive_ttl);
        let principal = Arc::new(Principal::vouched(None, None, None, exp));
        self.cache
            .entries()
            .insert(
                token_digest(&self.tag, token.as_bytes()),
                Verdict::Valid(principal),
            )
            .await;
    }

    /// A token a successful logout ended: forgotten at once.
    pub async fn forget(&self, token: &str) {
        self.cache
            .entries()
            .invalidate(&token_digest(&self.tag, token.as_bytes()))
            .await;
    }

    async fn ask(&self, token: &str) -> Result<Verdict, IntrospectError> {
        let token = HeaderValue::from_str(token).map_err(|_| IntrospectError::Invalid)?;
        let index = self
            .cluster
            .pick(None)
            .ok_or_else(|| IntrospectError::Unavailable("no healthy instance".into()))?;
        let instance = &self.cluster.instances[index];
        let uri = Uri::builder()
            .scheme(instance.scheme.clone())
            .authority(instance.authority.clone())
            .path_and_query(self.path.clone())
            .build()
            .map_err(|e| IntrospectError::Unavailable(e.to_string()))?;
        let mut request = Request::new(Body::empty());
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = uri;
        request.headers_mut().insert(X_ACCESS_TOKEN.clone(), token);
        request
            .headers_mut()
            .insert(ACCEPT, HeaderValue::from_static("application/json"));
        let timeout = self.cluster.response_timeout;
        let response =
            match tokio::time::timeout(timeout, self.cluster.client.request(request)).await {
                Ok(Ok(response)) => response,
                Ok(Err(e)) => {
                    if e.is_connect() {
                        self.cluster.eject(index);
                    }
                    return Err(IntrospectError::Unavailable(e.to_string()));
                }
                Err(_) => {
                    return Err(IntrospectError::Unavailable(format!(
                        "no answer in {timeout:?}"
                    )));
                }
            };
        let now = self.clock.now();
        match response.status() {
            status if status.is_success() => {
                let body = read_body(response.into_body(), timeout)
                    .await
                    .unwrap_or_default();
                let (id, email, role) = identity(&body);
                let exp = now.saturating_add(self.positive_ttl);
                Ok(Verdict::Valid(Arc::new(Principal::vouched(
                    id, email, role, exp,
                ))))
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Ok(Verdict::Invalid {
                until: now.saturating_add(self.negative_ttl),
            }),
            status => Err(IntrospectError::Unavailable(format!(
                "unexpected status {status}"
            ))),
        }
    }
}

/// A response body, bounded in size and time; `None` if it is larger or slower.
pub async fn read_body(body: hyper::body::Incoming, timeout: Duration) -> Option<Bytes> {
    let collected = tokio::time::timeout(timeout, Limited::new(body, MAX_BODY).collect()).await;
    collected.ok()?.ok().map(|c| c.to_bytes())
}

/// Identity headers from an introspection body: `id`, `email` (and `role`) when it is JSON
/// carrying them; strings or numbers; anything else is left out.
fn identity(
    body: &[u8],
) -> (
    Option<HeaderValue>,
    Option<HeaderValue>,
    Option<HeaderValue>,
) {
    let Ok(serde_json::Value::Object(fields)) = serde_json::from_slice::<serde_json::Value>(body)
    else {
        return (None, None, None);
    };
    let header = |name: &str| match fields.get(name)? {
        serde_json::Value::String(s) => HeaderValue::from_str(s).ok(),
        serde_json::Value::Number(n) => HeaderValue::from_str(&n.to_string()).ok(),
        _ => None,
    };
    (header("id"), header("email"), header("role"))
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// The `{"token": …}` of a JSON body, if any.
pub fn token_in_body(body: &[u8]) -> Option<String> {
    match serde_json::from_slice::<serde_json::Value>(body).ok()? {
        serde_json::Value::Object(mut fields) => match fields.remove("token")? {
            serde_json::Value::String(token) if !token.is_empty() => Some(token),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_comes_from_json_fields_when_present() {
        let (id, email, role) = identity(br#"{"id": 42, "email": "a@b.co", "role": "admin"}"#);
        assert_eq!(id.unwrap(), "42");
        assert_eq!(email.unwrap(), "a@b.co");
        assert_eq!(role.unwrap(), "admin");
        let (id, email, role) = identity(br#"{"id": "u-1"}"#);
        assert_eq!(id.unwrap(), "u-1");
        assert!(email.is_none() && role.is_none());
        assert_eq!(identity(b"not json"), (None, None, None));
        assert_eq!(identity(br#"{"email": "a\nb@c.d"}"#).1, None);
        assert_eq!(identity(br#"[1]"#), (None, None, None));
    }

    #[test]
    fn tokens_are_found_in_json_bodies_only() {
        assert_eq!(token_in_body(br#"{"token":"abc"}"#).as_deref(), Some("abc"));
        assert_eq!(token_in_body(br#"{"token":""}"#), None);
        assert_eq!(token_in_body(br#"{"token":5}"#), None);
        assert_eq!(token_in_body(b"token=abc"), None);
    }
}
