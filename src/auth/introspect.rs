//! Upstream mode's token validation: ask the Meiro backend (`introspect_method
//! introspect_path` with the token in `X-Access-Token`) and remember its answer in the token
//! cache — 2xx is valid for `positive_ttl`, 401/403 invalid for `negative_ttl`; anything else
//! (an error, a timeout, another status) is never "valid" and is not remembered.
//!
//! Concurrent misses for one token share one backend call (moka `or_try_insert_with`), and
//! cache keys carry this validator's tag (`introspect:<cluster>`), so its entries cannot
//! satisfy another validator.
//!
//! TTLs are kept as monotonic instants, not unix seconds: sub-second TTLs are valid
//! configuration, and whole seconds would round them to zero (every answer stale at once).
//!
//! The backend is reached through [`Backend`], which the data plane implements with its
//! cluster (instance choice, ejection, deadline): `auth` owns the rules, not an HTTP client.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::ACCEPT;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use moka::Expiry;
use moka::future::Cache;

use super::cache::{Grant, Principal, TokenDigest, token_digest};
use super::check::{X_ACCESS_TOKEN, extract_token};
use super::{Clock, paths};
use crate::config::AuthUpstreamConfig;
use crate::telemetry::metrics::{Rejection, TokenCheckMetrics};

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

/// Whom the introspector asks: in the gateway, the data plane's cluster for the Meiro
/// backend; in tests, anything that speaks HTTP.
pub trait Backend: Send + Sync {
    /// Names the backend in cache keys (`introspect:<name>`).
    fn name(&self) -> &str;
    /// How long an answer (head, then body) may take.
    fn deadline(&self) -> Duration;
    /// Sends `request` (origin-form target) to one instance, within [`Backend::deadline`];
    /// the error says why there is no answer.
    fn send(&self, request: Request<Body>) -> BoxFuture<'_, Result<Response<Body>, String>>;
}

pub struct Introspector {
    backend: Arc<dyn Backend>,
    /// Where a token may also come from besides the headers (`auth.cookie_name`).
    cookie_name: String,
    method: Method,
    path: PathAndQuery,
    positive_ttl: Duration,
    negative_ttl: Duration,
    tag: Vec<u8>,
    cache: Cache<TokenDigest, Answer>,
    /// Bumped by every [`Introspector::forget`]: an answer asked for before a logout passed
    /// may predate it, so it is used for its own request but not remembered.
    forgets: AtomicU64,
    clock: Clock,
    checks: TokenCheckMetrics,
}

/// A remembered answer and the instant it stops being trusted: what the backend vouched
/// for, or `None` for a token it refused. (The grant's unix `exp` is informational; `until`
/// decides.)
#[derive(Debug, Clone)]
struct Answer {
    grant: Option<Grant>,
    until: Instant,
}

/// Entries live exactly until their answer's `until`, also when replaced (a login teaching
/// a token that was cached as invalid gets the positive TTL, not the old remainder).
struct UntilAnswerExpires;

impl Expiry<TokenDigest, Answer> for UntilAnswerExpires {
    fn expire_after_create(
        &self,
        _key: &TokenDigest,
        answer: &Answer,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(answer.until.saturating_duration_since(created_at))
    }

    fn expire_after_update(
        &self,
        _key: &TokenDigest,
        answer: &Answer,
        updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(answer.until.saturating_duration_since(updated_at))
    }
}

impl Introspector {
    pub fn new(
        config: &AuthUpstreamConfig,
        cookie_name: &str,
        backend: Arc<dyn Backend>,
        clock: Clock,
        checks: TokenCheckMetrics,
    ) -> Introspector {
        Introspector {
            tag: format!("introspect:{}", backend.name()).into_bytes(),
            backend,
            cookie_name: cookie_name.to_owned(),
            method: Method::from_bytes(config.introspect_method.as_bytes()).unwrap_or(Method::GET),
            path: PathAndQuery::try_from(config.introspect_path.as_str())
                .unwrap_or_else(|_| PathAndQuery::from_static("/")),
            positive_ttl: config.positive_ttl,
            negative_ttl: config.negative_ttl,
            cache: Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .expire_after(UntilAnswerExpires)
                .build(),
            forgets: AtomicU64::new(0),
            clock,
            checks,
        }
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Entries of the answer cache, settled first (`/metrics`).
    pub async fn cache_entries(&self) -> u64 {
        self.cache.run_pending_tasks().await;
        self.cache.entry_count()
    }

    /// What the token of a request grants: `Ok(None)` when it carries none.
    pub async fn check(&self, headers: &HeaderMap) -> Result<Option<Grant>, IntrospectError> {
        let Some(token) = extract_token(headers, &self.cookie_name) else {
            self.checks.rejected(Rejection::Missing);
            return Ok(None);
        };
        self.authenticate(token).await.map(Some)
    }

    /// What the backend vouches for, from the cache or by asking once.
    pub async fn authenticate(&self, token: &str) -> Result<Grant, IntrospectError> {
        let result = self.cached_or_asked(token).await;
        match &result {
            Ok((_, true)) => {
                self.checks.verified.inc();
            }
            Ok((_, false)) => {
                self.checks.cache_hit.inc();
            }
            Err(IntrospectError::Invalid) => self.checks.rejected(Rejection::Invalid),
            Err(IntrospectError::Unavailable(_)) => {
                self.checks.unavailable.inc();
            }
        }
        result.map(|(grant, _)| grant)
    }

    /// The backend's grant, and whether the backend was asked for it.
    async fn cached_or_asked(&self, token: &str) -> Result<(Grant, bool), IntrospectError> {
        let key = token_digest(&self.tag, token.as_bytes());
        let (answer, fresh) = match self.answer(key, token).await? {
            // A fresh answer is used as is, however short its TTL; a cached one while trusted.
            (answer, fresh) if fresh || Instant::now() < answer.until => (answer, fresh),
            // Outlived its TTL but not yet dropped by the cache: ask again, once.
            _ => {
                self.cache.invalidate(&key).await;
                self.answer(key, token).await?
            }
        };
        let grant = answer.grant.ok_or(IntrospectError::Invalid)?;
        Ok((grant, fresh))
    }

    /// The cached answer, or the backend's (one call for all concurrent misses); `true` when
    /// this call asked.
    async fn answer(
        &self,
        key: TokenDigest,
        token: &str,
    ) -> Result<(Answer, bool), IntrospectError> {
        let forgets = self.forgets.load(Ordering::SeqCst);
        let entry = self
            .cache
            .entry(key)
            .or_try_insert_with(self.ask(token))
            .await
            .map_err(|e| (*e).clone())?;
        let fresh = entry.is_fresh();
        // A logout passed while we asked (`forget` bumps, then evicts; we inserted, then
        // check): our answer may be older than it, so it must not stay.
        if fresh && self.forgets.load(Ordering::SeqCst) != forgets {
            self.cache.invalidate(&key).await;
        }
        Ok((entry.into_value(), fresh))
    }

    /// A successful login's response body: the token in it is introspected at once, in the
    /// background, so that its first request finds the backend's answer (or joins the call
    /// still under way: concurrent misses share one) and carries the same identity headers as
    /// every later request of the session. (Vouching for it unasked would send its first
    /// requests without them.)
    pub fn prefetch_from_login(self: &Arc<Self>, response_body: &[u8]) {
        let Some(token) = token_in_body(response_body) else {
            return;
        };
        let introspector = self.clone();
        tokio::spawn(async move {
            let key = token_digest(&introspector.tag, token.as_bytes());
            if let Err(e) = introspector.answer(key, &token).await {
                // Its first request asks again, and answers for itself.
                tracing::debug!(error = %e, "introspecting a token from a login response failed");
            }
        });
    }

    /// The tokens a logout request ends: the header or cookie one, and its JSON body's.
    pub fn ended_by_logout(&self, headers: &HeaderMap, request_body: &[u8]) -> Vec<String> {
        let from_headers = extract_token(headers, &self.cookie_name).map(str::to_owned);
        from_headers
            .into_iter()
            .chain(token_in_body(request_body))
            .collect()
    }

    /// A token a successful logout ended: forgotten at once, and the tunnels and streams it
    /// opened through this replica closed.
    pub async fn forget(&self, token: &str) {
        self.forgets.fetch_add(1, Ordering::SeqCst);
        let forgotten = self
            .cache
            .remove(&token_digest(&self.tag, token.as_bytes()))
            .await;
        if let Some(grant) = forgotten.and_then(|answer| answer.grant) {
            grant.session.revoke();
        }
    }

    /// When an answer given now stops being trusted: the instant that decides, and the unix
    /// time (rounded up) recorded in the verdict.
    fn expiry(&self, ttl: Duration) -> (Instant, i64) {
        let whole_secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let unix = self
            .clock
            .now()
            .saturating_add(i64::try_from(whole_secs).unwrap_or(i64::MAX));
        let until = Instant::now()
            .checked_add(ttl)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(365 * 86_400));
        (until, unix)
    }

    async fn ask(&self, token: &str) -> Result<Answer, IntrospectError> {
        let token = HeaderValue::from_str(token).map_err(|_| IntrospectError::Invalid)?;
        let mut request = Request::new(Body::empty());
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.path.clone().into();
        request.headers_mut().insert(X_ACCESS_TOKEN.clone(), token);
        request
            .headers_mut()
            .insert(ACCEPT, HeaderValue::from_static("application/json"));
        let response = self
            .backend
            .send(request)
            .await
            .map_err(IntrospectError::Unavailable)?;
        match response.status() {
            status if status.is_success() => {
                let body = read_body(response.into_body(), self.backend.deadline())
                    .await
                    .unwrap_or_default();
                let (id, email, role) = identity(&body);
                let (until, exp) = self.expiry(self.positive_ttl);
                Ok(Answer {
                    grant: Some(Grant::vouched(Principal::vouched(id, email, role), exp)),
                    until,
                })
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                let (until, _) = self.expiry(self.negative_ttl);
                Ok(Answer { grant: None, until })
            }
            status => Err(IntrospectError::Unavailable(format!(
                "unexpected status {status}"
            ))),
        }
    }
}

/// A response body, bounded in size and time; `None` if it is larger or slower.
async fn read_body(body: Body, timeout: Duration) -> Option<Bytes> {
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

/// What upstream mode learns from an auth API request it passes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exchange {
    /// Credentials or Okta login: a success teaches its token.
    Login,
    /// A success forgets the tokens the request named.
    Logout,
    Other,
}

impl Exchange {
    pub fn of(method: &Method, path: &str) -> Exchange {
        match (path, method) {
            (paths::LOGIN, &Method::POST | &Method::PATCH) | (paths::OKTA_LOGIN, &Method::POST) => {
                Exchange::Login
            }
            (paths::LOGIN, &Method::DELETE) => Exchange::Logout,
            _ => Exchange::Other,
        }
    }
}

/// The `{"token": …}` of a JSON body, if any.
fn token_in_body(body: &[u8]) -> Option<String> {
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
    fn logins_and_logouts_are_told_by_method_and_path() {
        assert_eq!(Exchange::of(&Method::POST, paths::LOGIN), Exchange::Login);
        assert_eq!(Exchange::of(&Method::PATCH, paths::LOGIN), Exchange::Login);
        assert_eq!(
            Exchange::of(&Method::POST, paths::OKTA_LOGIN),
            Exchange::Login
        );
        assert_eq!(
            Exchange::of(&Method::DELETE, paths::LOGIN),
            Exchange::Logout
        );
        assert_eq!(Exchange::of(&Method::GET, paths::LOGIN), Exchange::Other);
        assert_eq!(
            Exchange::of(&Method::DELETE, paths::OKTA_LOGIN),
            Exchange::Other
        );
        assert_eq!(
            Exchange::of(&Method::POST, "/users/invite"),
            Exchange::Other
        );
    }

    #[test]
    fn tokens_are_found_in_json_bodies_only() {
        assert_eq!(token_in_body(br#"{"token":"abc"}"#).as_deref(), Some("abc"));
        assert_eq!(token_in_body(br#"{"token":""}"#), None);
        assert_eq!(token_in_body(br#"{"token":5}"#), None);
        assert_eq!(token_in_body(b"token=abc"), None);
    }
}
