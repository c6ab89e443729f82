//! The data plane: every request that is not the auth API. In request order: normalize the
//! path → route (host + longest prefix) → authenticate unless the route is
//! public → pick a healthy instance → forward, streaming both bodies, retrying only when safe.

mod balance;
mod body;
pub mod error;
pub mod headers;
pub mod health;
mod health_checks;
pub mod introspect;
pub mod path;
mod pool;
pub mod retry;
pub mod routes;
mod send;
mod upgrade;
pub mod upstream;

use std::borrow::Cow;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use http::header::{CONTENT_LENGTH, HOST};
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::Body as _;
use http_body_util::{BodyExt, Limited};
use tokio::sync::watch;

use crate::auth::cache::Grant;
use crate::auth::check::extract_token;
use crate::auth::paths;
use crate::auth::{Auth, AuthError, Clock};
use crate::config::{Config, UpstreamConfig};
use crate::request_id::{self, RequestId};
use crate::telemetry::metrics::{
    AUTH_API_ROUTE, MethodIndex, Metrics, Rejection, RouteMetrics, ScrapeState, TokenCheckMetrics,
    UNMATCHED_ROUTE,
};
use body::{BodyProgress, DownstreamBody};
use error::ProxyError;
use headers::Downstream;
use introspect::{IntrospectError, Introspector};
use routes::{Route, RouteTable};
use upstream::{Cluster, ClusterError};

#[derive(Debug, thiserror::Error)]
pub enum ProxyBuildError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("route {prefix}: unknown upstream {upstream}")]
    UnknownUpstream { prefix: String, upstream: String },
    #[error("auth.upstream.upstream: unknown upstream {0}")]
    UnknownAuthUpstream(String),
    #[error("auth.mode = \"upstream\" needs [auth.upstream]")]
    MissingAuthUpstream,
}

/// A downstream connection's place under `limits.max_connections`, handed to the data plane
/// with a request that asks for a protocol switch: the tunnel it becomes holds it until it
/// closes, so upgraded connections count against the limit like any other.
#[derive(Clone)]
pub struct ConnectionSlot(pub Arc<dyn Send + Sync>);

/// Who checks tokens on the data plane.
pub enum Validator {
    /// Local mode: this gateway's own tokens, verified and looked up by `auth`.
    Local(Arc<Auth>),
    /// Upstream mode: the Meiro backend is asked (cached); its auth API is passed through.
    /// Shared so a reload that keeps the introspection cluster keeps the answer cache too.
    Introspect(Arc<Introspector>),
}

/// Shared, read-only state of the data plane.
pub struct Proxy {
    validator: Validator,
    cookie_name: String,
    routes: RouteTable,
    clusters: Vec<Arc<Cluster>>,
    downstream_proto: &'static str,
    /// `server.underscores_in_headers`.
    underscores_allowed: bool,
    /// `limits.body_read_timeout`.
    body_read_timeout: Duration,
    access_log: bool,
    /// Requests no route took, and upstream mode's auth API pass-through.
    unmatched: RouteMetrics,
    auth_api: RouteMetrics,
    /// Where a request without a token is counted (the validators count the rest).
    token_checks: TokenCheckMetrics,
}

/// What the access log and the metrics say about one request.
#[derive(Default)]
struct Outcome<'p> {
    instance: Option<(Arc<Cluster>, usize)>,
    user: Option<HeaderValue>,
    /// The route that took the request; `None`: [`Proxy::unmatched`].
    route: Option<&'p RouteMetrics>,
}

impl Proxy {
    /// `auth` is the local auth subsystem (local mode); `None` in upstream mode. `previous`
    /// is the data plane a reload replaces: its clusters whose `[[upstreams]]` entry did not
    /// change are taken over as they are (keep-alive pools, health and ejection state,
    /// metric handles), and so is the introspection cache when its cluster is. Metric
    /// handles are resolved here from the long-lived `metrics`, so a rebuilt proxy counts on
    /// in the same series.
    pub fn new(
        config: &Config,
        auth: Option<Arc<Auth>>,
        clock: Clock,
        metrics: &Metrics,
        previous: Option<&Proxy>,
    ) -> Result<Proxy, ProxyBuildError> {
        let kept =
            |u: &UpstreamConfig| previous?.clusters.iter().find(|c| c.built_from(u)).cloned();
        let clusters: HashMap<&str, Arc<Cluster>> = config
            .upstreams
            .iter()
            .map(|u| {
                let cluster = match kept(u) {
                    Some(cluster) => cluster,
                    None => Arc::new(Cluster::new(u, metrics)?),
                };
                Ok((u.name.as_str(), cluster))
            })
            .collect::<Result<_, ProxyBuildError>>()?;
        let routes = config
            .routes
            .iter()
            .map(|r| {
                let cluster = clusters.get(r.upstream.as_str()).cloned().ok_or_else(|| {
                    ProxyBuildError::UnknownUpstream {
                        prefix: r.prefix.clone(),
                        upstream: r.upstream.clone(),
                    }
                })?;
                Ok(Route::new(r, cluster, metrics))
            })
            .collect::<Result<Vec<_>, ProxyBuildError>>()?;
        let validator = match (auth, &config.auth.upstream) {
            (Some(auth), _) => Validator::Local(auth),
            (None, Some(upstream)) => {
                let cluster = clusters
                    .get(upstream.upstream.as_str())
                    .cloned()
                    .ok_or_else(|| {
                        ProxyBuildError::UnknownAuthUpstream(upstream.upstream.clone())
                    })?;
                let same = previous.and_then(|p| match &p.validator {
                    Validator::Introspect(i) if Arc::ptr_eq(i.cluster(), &cluster) => {
                        Some(i.clone())
                    }
                    _ => None,
                });
                Validator::Introspect(same.unwrap_or_else(|| {
                    Arc::new(Introspector::new(
                        upstream,
                        cluster,
                        clock,
                        metrics.token_checks().clone(),
                    ))
                }))
            }
            (None, None) => return Err(ProxyBuildError::MissingAuthUpstream),
        };
        Ok(Proxy {
            validator,
            cookie_name: config.auth.cookie_name.clone(),
            routes: RouteTable::new(routes),
            clusters: clusters.into_values().collect(),
            downstream_proto: if config.server.tls.is_some() {
                "https"
            } else {
                "http"
            },
            underscores_allowed: config.server.underscores_in_headers,
            body_read_timeout: config.limits.body_read_timeout,
            access_log: config.server.access_log,
            unmatched: metrics.route(UNMATCHED_ROUTE),
            auth_api: metrics.route(AUTH_API_ROUTE),
            token_checks: metrics.token_checks().clone(),
        })
    }

    /// What `/metrics` reads at scrape time: token cache size and instance health.
    pub async fn scrape_state(&self) -> ScrapeState {
        let token_cache_entries = match &self.validator {
            Validator::Local(auth) => auth.cache().entry_count().await,
            Validator::Introspect(introspector) => introspector.cache_entries().await,
        };
        ScrapeState {
            token_cache_entries,
            instances: self
                .clusters
                .iter()
                .flat_map(|c| c.instance_states())
                .collect(),
        }
    }

    pub fn clusters(&self) -> &[Arc<Cluster>] {
        &self.clusters
    }

    /// Starts the active health checks of every cluster that has them, until `shutdown`
    /// turns true or its sender is dropped (a reload ends the replaced data plane's checks so).
    pub fn spawn_health_checks(&self, shutdown: &watch::Receiver<bool>) {
        for cluster in self.clusters.iter().filter(|c| c.health.is_some()) {
            tokio::spawn(health_checks::run_checks(cluster.clone(), shutdown.clone()));
        }
    }

    /// Is at least one instance of some cluster available? (`/readyz`.) No cluster: ready.
    pub fn any_instance_available(&self) -> bool {
        self.clusters.is_empty() || self.clusters.iter().any(|c| c.pick(None).is_some())
    }

    /// Handles one request; every failure is a JSON response, never an `Err`.
    pub async fn handle(&self, request: Request<Body>) -> Response<Body> {
        let started = Instant::now();
        let method_index = MethodIndex::of(request.method());
        // What the access log needs of the request, taken before it is consumed.
        let access = self.access_log.then(|| {
            (
                request.method().clone(),
                request.uri().path().to_owned(),
                request_id::of(request.headers()),
            )
        });
        let mut outcome = Outcome::default();
        let response = match self.forward(request, &mut outcome).await {
            Ok(response) => response,
            Err(e) => e.into_response(),
        };
        let elapsed = started.elapsed();
        outcome
            .route
            .unwrap_or(&self.unmatched)
            .record(method_index, response.status(), elapsed);
        if let Some((method, path, id)) = access {
            log_access(
                &method,
                &path,
                id.as_ref(),
                response.status(),
                &outcome,
                elapsed,
            );
        }
        response
    }

    async fn forward<'p>(
        &'p self,
        request: Request<Body>,
        outcome: &mut Outcome<'p>,
    ) -> Result<Response<Body>, ProxyError> {
        let (mut parts, body) = request.into_parts();
        // Framing was settled by hyper before we got here (RFC 9112 §6.3): conflicting
        // Content-Length values are a 400, and Transfer-Encoding overrides Content-Length
        // (the length is dropped and the connection closed after the response), so what is
        // forwarded is exactly the body hyper read — nothing can be smuggled behind it. The
        // server edge has refused two Hosts, or a Host that disagrees with the target.
        let path = path::normalize(parts.uri.path()).map_err(|_| ProxyError::BadPath)?;
        let host = parts.headers.get(HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        if let Validator::Introspect(introspector) = &self.validator
            && paths::upstream_auth_api(&path)
        {
            // Upstream mode serves the auth API whatever the route table says.
            outcome.route = Some(&self.auth_api);
            let path = path.into_owned();
            return self
                .forward_auth_api(introspector, parts, body, &path, host, outcome)
                .await;
        }
        let route = self
            .routes
            .find(
                host.as_ref().and_then(|h| h.to_str().ok()),
                &path::without_params(&path),
            )
            .ok_or(ProxyError::NoRoute)?;
        outcome.route = Some(&route.metrics);
        let target = upstream_target(&parts.uri, path, route)?;
        let (body, progress) = self.downstream_body(body, &parts.headers, route.max_body)?;

        let grant = if route.public {
            None
        } else {
            let Some(token) = extract_token(&parts.headers, &self.cookie_name) else {
                self.token_checks.rejected(Rejection::Missing);
                return Err(ProxyError::MissingToken);
            };
            Some(self.authenticate(token, &parts.headers).await?)
        };
        if self.access_log {
            // Read by the access log only.
            outcome.user = grant
                .as_ref()
                .and_then(|g| g.principal()?.user_id_header.clone());
        }

        let client = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0)
            .ok_or(ProxyError::Internal)?;
        // Only a protocol the route allows is asked of the upstream; anything else goes on as
        // a plain request, its Upgrade dropped with the other hop-by-hop headers.
        let offered = upgrade::requested(&parts.headers)
            .filter(|_| parts.version == http::Version::HTTP_11)
            .and_then(|requested| upgrade::permitted(requested, &route.upgrades));
        // hyper leaves the connection's upgrade handle in the extensions of HTTP/1.1 requests.
        let switch = match &offered {
            Some(offered) => {
                parts
                    .extensions
                    .remove::<hyper::upgrade::OnUpgrade>()
                    .map(|downstream| upgrade::Switch {
                        offered: offered.clone(),
                        downstream,
                        slot: parts.extensions.remove::<ConnectionSlot>(),
                    })
            }
            None => None,
        };
        headers::prepare_headers(
            &mut parts.headers,
            Downstream {
                client,
                proto: self.downstream_proto,
                host,
                principal: grant.as_ref().and_then(Grant::principal),
                upgrade: switch.as_ref().map(|s| s.offered.clone()),
                underscores_allowed: self.underscores_allowed,
            },
        );
        let deadline = route.timeout.unwrap_or(route.cluster.response_timeout);
        let cluster = route.cluster.clone();
        if let Some(switch) = switch {
            return upgrade::tunnel(cluster, parts, target, deadline, switch, outcome).await;
        }
        self.send_with_retries(cluster, parts, body, progress, target, deadline, outcome)
            .await
    }

    /// The client's body as the upstream client will read it: a declared length over the
    /// route's limit is refused at once; a body that streams is counted against the limit,
    /// given `limits.body_read_timeout` between reads, and watched (see [`BodyProgress`]).
    /// An empty body is passed as it is, so bodiless requests cost nothing here.
    fn downstream_body(
        &self,
        body: Body,
        headers: &http::HeaderMap,
        max: Option<u64>,
    ) -> Result<(Body, Option<Arc<BodyProgress>>), ProxyError> {
        if body.is_end_stream() {
            return Ok((body, None));
        }
        let declared = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if max.is_some_and(|max| declared.is_some_and(|len| len > max)) {
            return Err(ProxyError::PayloadTooLarge);
        }
        let (body, progress) = DownstreamBody::new(body, max, self.body_read_timeout);
        Ok((Body::new(body), Some(progress)))
    }

    /// `headers` only name the request in a log line.
    async fn authenticate(
        &self,
        token: &str,
        headers: &http::HeaderMap,
    ) -> Result<Grant, ProxyError> {
        match &self.validator {
            Validator::Local(auth) => auth.authenticate(token).await.map_err(|e| match e {
                AuthError::Internal(_) | AuthError::Store(_) => {
                    tracing::error!(error = %e, request_id = request_id::field(headers), "token validation failed");
                    ProxyError::AuthUnavailable
                }
                _ => ProxyError::InvalidToken,
            }),
            Validator::Introspect(introspector) => {
                introspector.authenticate(token).await.map_err(|e| match e {
                    IntrospectError::Invalid => ProxyError::InvalidToken,
                    IntrospectError::Unavailable(reason) => {
                        tracing::warn!(%reason, request_id = request_id::field(headers), "token introspection failed");
                        ProxyError::AuthUnavailable
                    }
                })
            }
        }
    }

    /// Upstream mode: `/auth_options` and `/users/*` go to the backend unchanged (bodies,
    /// statuses, cookies), no token required here — the backend decides. On the way the
    /// gateway learns: a successful login's `{"token"}` is cached as valid, and the token a
    /// successful logout ended is evicted at once.
    async fn forward_auth_api(
        &self,
        introspector: &Introspector,
        mut parts: http::request::Parts,
        body: Body,
        path: &str,
        host: Option<HeaderValue>,
        outcome: &mut Outcome<'_>,
    ) -> Result<Response<Body>, ProxyError> {
        let is_login = path == paths::LOGIN && matches!(parts.method, Method::POST | Method::PATCH)
            || path == paths::OKTA_LOGIN && parts.method == Method::POST;
        let is_logout = path == paths::LOGIN && parts.method == Method::DELETE;

        // A logout's ended tokens: the header or cookie one, and the one in a JSON body (read
        // here, bounded, and forwarded as read).
        let mut ended: Vec<String> = Vec::new();
        let (body, progress) = self.downstream_body(body, &parts.headers, None)?;
        let (body, progress) = if is_logout {
            ended.extend(extract_token(&parts.headers, &self.cookie_name).map(str::to_owned));
            let bytes = match Limited::new(body, AUTH_BODY_LIMIT).collect().await {
                Ok(collected) => collected.to_bytes(),
                // Reading failed: the body was malformed or stalled (the client's), or too long.
                Err(_) => {
                    return Err(progress
                        .and_then(|p| p.failure())
                        .unwrap_or(ProxyError::PayloadTooLarge));
                }
            };
            ended.extend(introspect::token_in_body(&bytes));
            (Body::from(bytes), None)
        } else {
            (body, progress)
        };

        let client = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0)
            .ok_or(ProxyError::Internal)?;
        headers::prepare_headers(
            &mut parts.headers,
            Downstream {
                client,
                proto: self.downstream_proto,
                host,
                principal: None,
                upgrade: None,
                underscores_allowed: self.underscores_allowed,
            },
        );
        let target = upstream_target_plain(&parts.uri, path)?;
        let cluster = introspector.cluster().clone();
        let deadline = cluster.response_timeout;
        let response = self
            .send_with_retries(cluster, parts, body, progress, target, deadline, outcome)
            .await?;
        if !response.status().is_success() {
            return Ok(response);
        }
        if is_logout {
            for token in &ended {
                introspector.forget(token).await;
            }
            return Ok(response);
        }
        if !is_login {
            return Ok(response);
        }
        // Read the login response (small) to learn its token, and pass the same bytes on.
        let (head, body) = response.into_parts();
        let bytes = Limited::new(body, AUTH_BODY_LIMIT)
            .collect()
            .await
            .map_err(|_| ProxyError::UpstreamUnavailable)?
            .to_bytes();
        if let Some(token) = introspect::token_in_body(&bytes) {
            introspector.learn(&token).await;
        }
        Ok(Response::from_parts(head, Body::from(bytes)))
    }
}

/// Bodies of the auth API read by upstream mode (a logout request, a login response).
const AUTH_BODY_LIMIT: usize = 1 << 20;

fn upstream_target_plain(uri: &Uri, path: &str) -> Result<PathAndQuery, ProxyError> {
    let target = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    PathAndQuery::try_from(target).map_err(|_| ProxyError::BadPath)
}

/// The path and query the upstream receives: the normalized path (minus the prefix when the
/// route strips it), the query untouched. Reuses the original (no allocation) when nothing
/// changed.
fn upstream_target(
    uri: &Uri,
    normalized: Cow<'_, str>,
    route: &Route,
) -> Result<PathAndQuery, ProxyError> {
    if let (Cow::Borrowed(_), false, Some(pq)) =
        (&normalized, route.strip_prefix, uri.path_and_query())
    {
        return Ok(pq.clone());
    }
    upstream_target_plain(uri, route.upstream_path(&normalized))
}

fn log_access(
    method: &Method,
    path: &str,
    id: Option<&RequestId>,
    status: StatusCode,
    outcome: &Outcome<'_>,
    latency: Duration,
) {
    let instance = outcome
        .instance
        .as_ref()
        .map(|(cluster, i)| cluster.instances[*i].authority.as_str());
    let upstream = outcome.instance.as_ref().map(|(c, _)| c.name.as_str());
    tracing::info!(
        target: "meiro_gate::access",
        method = %method,
        path,
        status = status.as_u16(),
        upstream,
        instance,
        latency_us = latency.as_micros() as u64,
        request_id = id.map(RequestId::as_str),
        user = outcome.user.as_ref().and_then(|u| u.to_str().ok()),
    );
}

/// The data plane as a tower `Service`, for axum's `fallback_service`.
#[derive(Clone)]
pub struct ProxyService(pub Arc<Proxy>);

impl tower::Service<Request<Body>> for ProxyService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let proxy = self.0.clone();
        Box::pin(async move { Ok(proxy.handle(request).await) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::Figment;
    use figment::providers::{Format, Toml};
    use proptest::prelude::*;

    /// Routes whose prefixes nest and overlap, each with `strip_prefix` as given.
    fn route_table(strip: [bool; 5]) -> RouteTable {
        let prefixes = ["/", "/api", "/api/admin", "/public", "/api/v1.0"];
        let mut toml =
            String::from("[[upstreams]]\nname = \"u\"\ninstances = [\"http://127.0.0.1:9\"]\n");
        for (prefix, strip) in prefixes.iter().zip(strip) {
            toml.push_str(&format!(
                "[[routes]]\nprefix = \"{prefix}\"\nupstream = \"u\"\nstrip_prefix = {strip}\n"
            ));
        }
        let config = crate::config::load_from_figment(&Figment::from(Toml::string(&toml)))
            .expect("valid config");
        let metrics = Metrics::new();
        let cluster = Arc::new(Cluster::new(&config.upstreams[0], &metrics).unwrap());
        RouteTable::new(
            config
                .routes
                .iter()
                .map(|r| Route::new(r, cluster.clone(), &metrics))
                .collect(),
        )
    }

    /// Segments chosen to trip a normalizer: dots plain and escaped, escaped separators, case,
    /// escaped unreserved characters, and the prefixes themselves.
    fn segment() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "", ".", "..", "%2e", "%2E%2e", ".%2e", "%2e.", "api", "API", "admin", "public",
            "v1.0", "v1%2e0", "%61pi", "%61dmin", "a%2fb", "a%5Cb", "x", "%7e", "~", ";", "%20",
            "%25", "api;x", "%",
        ])
    }

    fn request_path() -> impl Strategy<Value = String> {
        prop::collection::vec(segment(), 0..8).prop_map(|segments| {
            let mut path = String::new();
            for s in segments {
                path.push('/');
                path.push_str(s);
            }
            if path.is_empty() {
                path.push('/');
            }
            path
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whatever path the gateway matched a route on is exactly the path the upstream
        /// receives (after `strip_prefix`), and that path is already normal: the upstream
        /// cannot read it as another one.
        #[test]
        fn the_path_that_routes_is_the_path_that_is_forwarded(
            path in request_path(),
            query in prop::option::of(prop::sample::select(vec!["a=1", "x=%2e%2e/..", ""])),
            strip in any::<[bool; 5]>(),
        ) {
            let table = route_table(strip);
            let target = match query {
                Some(q) => format!("{path}?{q}"),
                None => path.clone(),
            };
            let Ok(uri) = target.parse::<Uri>() else { return Ok(()) };
            let Ok(normalized) = path::normalize(uri.path()) else { return Ok(()) };
            // As `Proxy::forward` does: routes see the path without segment parameters.
            let routing = path::without_params(&normalized);
            let route = table.find(None, &routing).expect("\"/\" matches every path");
            prop_assert!(routes::prefix_matches(&route.prefix, &routing));
            // The longest matching prefix won.
            for other in ["/", "/api", "/api/admin", "/public", "/api/v1.0"] {
                if routes::prefix_matches(other, &routing) {
                    prop_assert!(other.trim_end_matches('/').len() <= route.prefix.len());
                }
            }
            let sent = upstream_target(&uri, normalized.clone(), route).unwrap();
            let forwarded = sent.path();
            if route.strip_prefix {
                // What the upstream routes on is the matched path minus the prefix.
                let remainder = routing.strip_prefix(route.prefix.as_str()).unwrap();
                let expected = if remainder.is_empty() { "/" } else { remainder };
                prop_assert_eq!(
                    &*path::without_params(forwarded), expected,
                    "{} → {} on {}", normalized, forwarded, route.prefix
                );
            } else {
                prop_assert_eq!(forwarded, &*normalized);
            }
            // Already normal, so no reading of it climbs elsewhere: no dot segment, with or
            // without parameters, survives.
            let renormalized = path::normalize(forwarded).unwrap();
            prop_assert_eq!(&*renormalized, forwarded, "not normal");
            prop_assert_eq!(sent.query(), uri.query());
        }
    }
}
