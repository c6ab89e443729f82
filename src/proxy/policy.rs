//! A route's rules beyond the token: which roles may use it (`routes.allow_roles`, else `403`),
//! which methods (`routes.methods`, else `405` with `Allow`) and how often each user
//! (`per_user_rate`, else `429` with `Retry-After`; see `user_limits`). Checked after
//! authentication, so a caller without a token learns nothing of them; with none set the check
//! is three `None` tests.

use axum::body::Body;
use std::sync::Arc;

use http::header::{ALLOW, RETRY_AFTER};
use http::{HeaderValue, Method, Response};
use prometheus_client::metrics::counter::Counter;

use super::error::ProxyError;
use super::user_limits::UserLimiter;
use crate::auth::Principal;
use crate::config::RouteConfig;
use crate::telemetry::metrics::Metrics;
use crate::types::Role;

pub struct RoutePolicy {
    /// `None`: any authenticated user (or anyone, on a public route).
    roles: Option<Vec<Role>>,
    /// `None`: any method.
    methods: Option<AllowedMethods>,
    /// The route's own per-user budget, or `[limits]`' shared one; `None`: unlimited.
    user_limiter: Option<Arc<UserLimiter>>,
    refused_role: Counter,
    refused_method: Counter,
    rate_limited: Counter,
}

struct AllowedMethods {
    allowed: Vec<Method>,
    /// The `Allow` header of the route's `405`, built once.
    allow: HeaderValue,
}

/// Why a route's rules refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Role,
    Method,
    /// Over the user's budget; the next request is allowed this many seconds from now.
    RateLimit {
        retry_after: u64,
    },
}

impl Refusal {
    /// The access log's and the metric's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Role => "role",
            Refusal::Method => "method",
            Refusal::RateLimit { .. } => "rate_limit",
        }
    }
}

impl RoutePolicy {
    /// The rules of `config`, counted under the route's metric name `route`. Methods were
    /// validated by the config loader; one that does not parse here is left out.
    pub fn new(
        config: &RouteConfig,
        route: &str,
        shared_limiter: Option<&Arc<UserLimiter>>,
        metrics: &Metrics,
    ) -> RoutePolicy {
        let methods = config.methods.as_ref().map(|names| {
            let mut allowed: Vec<Method> = Vec::new();
            let parsed = names
                .iter()
                .filter_map(|m| Method::from_bytes(m.as_bytes()).ok());
            // As nginx's `limit_except`: a route that serves GET answers HEAD too.
            let head = names.iter().any(|m| m == "GET").then_some(Method::HEAD);
            for method in parsed.chain(head) {
                if !allowed.contains(&method) {
                    allowed.push(method);
                }
            }
            let list = allowed
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            AllowedMethods {
                allow: HeaderValue::from_str(&list).unwrap_or(HeaderValue::from_static("")),
                allowed,
            }
        });
        // A route's own rate has its own budget, with a burst of one second's worth.
        let user_limiter = match config.per_user_rate {
            Some(rate) => UserLimiter::new(rate, rate).map(Arc::new),
            None => shared_limiter.cloned(),
        };
        let rate_limit = Refusal::RateLimit { retry_after: 0 };
        RoutePolicy {
            roles: config.allow_roles.clone(),
            methods,
            user_limiter,
            refused_role: metrics.policy_refusals(route, Refusal::Role.as_str()),
            refused_method: metrics.policy_refusals(route, Refusal::Method.as_str()),
            rate_limited: metrics.policy_refusals(route, rate_limit.as_str()),
        }
    }

    /// The role rule first (a caller without the role learns nothing of the methods), then
    /// the method rule, then the user's budget (which a refused request does not spend).
    /// `principal`: who the token speaks for (`None` on a public route, which no budget
    /// limits).
    #[inline]
    pub fn check(&self, method: &Method, principal: Option<&Principal>) -> Result<(), Refusal> {
        if let Some(roles) = &self.roles
            && !principal
                .and_then(Principal::role)
                .is_some_and(|role| roles.contains(&role))
        {
            self.refused_role.inc();
            return Err(Refusal::Role);
        }
        if let Some(methods) = &self.methods
            && !methods.allowed.contains(method)
        {
            self.refused_method.inc();
            return Err(Refusal::Method);
        }
        if let Some(limiter) = &self.user_limiter
            && let Some(user) = principal.and_then(|p| p.user_id_header.as_ref())
            && let Err(retry_after) = limiter.check(user)
        {
            self.rate_limited.inc();
            return Err(Refusal::RateLimit { retry_after });
        }
        Ok(())
    }

    /// The answer to a refused request: `403`, `405` with the route's `Allow`, or `429` with
    /// `Retry-After`.
    pub fn refusal_response(&self, refusal: Refusal) -> Response<Body> {
        match refusal {
            Refusal::Role => ProxyError::Forbidden.into_response(),
            Refusal::Method => {
                let mut response = ProxyError::MethodNotAllowed.into_response();
                if let Some(methods) = &self.methods {
                    response.headers_mut().insert(ALLOW, methods.allow.clone());
                }
                response
            }
            Refusal::RateLimit { retry_after } => {
                let mut response = ProxyError::RateLimited.into_response();
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(retry_after));
                response
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;
    use crate::types::UserId;

    fn policy(roles: Option<Vec<Role>>, methods: Option<&[&str]>) -> RoutePolicy {
        let config = RouteConfig {
            name: None,
            prefix: "/".into(),
            upstream: "u".into(),
            public: false,
            host: None,
            strip_prefix: false,
            max_body: None,
            timeout: None,
            upgrades: vec![],
            allow_roles: roles,
            methods: methods.map(|m| m.iter().map(|m| (*m).to_owned()).collect()),
            per_user_rate: None,
        };
        RoutePolicy::new(&config, "r", None, &Metrics::new())
    }

    #[test]
    fn roles_come_from_the_local_user_or_the_role_an_upstream_vouched_with() {
        let admins = policy(Some(vec![Role::Admin]), None);
        let local = |role| Principal::new(UserId::new_random(), "a@example.com", role);
        let vouched = |role: Option<&'static str>| {
            Principal::vouched(None, None, role.map(HeaderValue::from_static))
        };
        assert_eq!(
            admins.check(&Method::GET, Some(&local(Role::Admin))),
            Ok(())
        );
        assert_eq!(
            admins.check(&Method::GET, Some(&vouched(Some("admin")))),
            Ok(())
        );
        for refused in [
            Some(local(Role::User)),
            Some(vouched(Some("user"))),
            Some(vouched(Some("Admin"))),
            Some(vouched(None)),
            None,
        ] {
            assert_eq!(
                admins.check(&Method::GET, refused.as_ref()),
                Err(Refusal::Role)
            );
        }
    }

    #[test]
    fn methods_bring_head_with_get_and_say_so_in_allow() {
        let reads = policy(None, Some(&["GET", "HEAD", "GET"]));
        assert_eq!(reads.check(&Method::HEAD, None), Ok(()));
        assert_eq!(reads.check(&Method::POST, None), Err(Refusal::Method));
        let response = reads.refusal_response(Refusal::Method);
        assert_eq!(response.status(), 405);
        assert_eq!(response.headers()[ALLOW], "GET, HEAD");
        let open = policy(None, None);
        assert_eq!(
            open.check(&Method::from_bytes(b"PURGE").unwrap(), None),
            Ok(())
        );
    }
}
