//! The data plane: every request that is not the auth API, as a short list of phases (in
//! the spirit of pingora's `request_filter → upstream_peer → upstream_request_filter →
//! response_filter → logging`), each owned by a module:
//!
//! 1. **request** — normalize the path ([`path`]), take the Host that routes;
//! 2. **route** — host + longest prefix ([`routes`]); upstream mode's auth API first ([`auth_api`]);
//! 3. **body** — the client's body bounded and watched ([`body`]);
//! 4. **authenticate** — unless the route is public: [`Validator::check`]; then the route's
//!    roles and methods ([`policy`]);
//! 5. **upstream request** — headers rewritten ([`headers`]), an allowed upgrade taken ([`upgrade`]);
//! 6. **send** — the attempt loop ([`attempt`]) or a tunnel ([`upgrade::tunnel`]); a tunnel
//!    or a streamed response lives no longer than its session ([`relay`], [`session_bound`]);
//! 7. **log** — metrics and the access log ([`Proxy::handle`]).

mod attempt;
mod auth_api;
mod balance;
mod body;
pub mod error;
pub mod headers;
pub mod health;
mod health_checks;
pub mod path;
pub mod policy;
mod pool;
mod relay;
pub mod retry;
pub mod routes;
mod session_bound;
mod upgrade;
pub mod upstream;
mod user_limits;
pub mod ws_frames;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use http::header::HOST;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use tokio::sync::watch;

use crate::auth::cache::{Grant, Principal};
use crate::auth::introspect::{Exchange, Introspector};
use crate::auth::paths;
use crate::auth::validator::Validator;
use crate::auth::{Auth, Clock};
use crate::config::{Config, UpstreamConfig};
use crate::request_id::{self, RequestId};
use crate::telemetry::metrics::{
    AUTH_API_ROUTE, MethodIndex, Metrics, RouteMetrics, ScrapeState, SessionClosures,
    UNMATCHED_ROUTE,
};
use attempt::{Clients, Outbound};
use body::downstream_body;
use error::ProxyError;
use headers::Downstream;
use policy::Refusal;
use routes::{Route, RouteTable};
use upstream::{Cluster, ClusterError};
use user_limits::UserLimiter;

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

/// Shared, read-only state of the data plane.
pub struct Proxy {
    validator: Validator,
    /// Upstream mode: where the auth API is passed through (the introspection backend), and
    /// where it is mounted (`server.api_prefix`).
    auth_api_cluster: Option<Arc<Cluster>>,
    api_prefix: String,
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
    /// `[limits] per_user_rate`: the budget of the routes without their own.
    user_limiter: Option<Arc<UserLimiter>>,
    /// Counts the tunnels and streams closed because their session ended.
    closures: SessionClosures,
}

/// What the access log and the metrics say about one request.
#[derive(Default)]
struct Outcome<'p> {
    instance: Option<(Arc<Cluster>, usize)>,
    user: Option<HeaderValue>,
    /// The route that took the request; `None`: [`Proxy::unmatched`].
    route: Option<&'p RouteMetrics>,
    /// The route's rule that refused the request, if one did.
    refused: Option<Refusal>,
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
        // `[limits]`' budget, shared by the routes without one of their own; a reload that keeps
        // its rate and burst keeps what users have spent.
        let (rate, burst) = (config.limits.per_user_rate, config.limits.per_user_burst);
        let user_limiter = match previous.and_then(|p| p.user_limiter.as_ref()) {
            Some(kept) if kept.counts(rate, burst) => Some(kept.clone()),
            _ => UserLimiter::new(rate, burst).map(Arc::new),
        };
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
                Ok(Route::new(r, cluster, user_limiter.as_ref(), metrics))
            })
            .collect::<Result<Vec<_>, ProxyBuildError>>()?;
        let (validator, auth_api_cluster) = match (auth, &config.auth.upstream) {
            (Some(auth), _) => (Validator::Local(auth), None),
            (None, Some(upstream)) => {
                let cluster = clusters
                    .get(upstream.upstream.as_str())
                    .cloned()
                    .ok_or_else(|| {
                        ProxyBuildError::UnknownAuthUpstream(upstream.upstream.clone())
                    })?;
                let kept = previous.and_then(|p| match &p.validator {
                    Validator::Introspect(i) if asks(i, &cluster) => Some(i.clone()),
                    _ => None,
                });
                let introspector = kept.unwrap_or_else(|| {
                    Arc::new(Introspector::new(
                        upstream,
                        &config.auth.cookie_name,
                        cluster.clone(),
                        clock,
                        metrics.token_checks().clone(),
                    ))
                });
                (Validator::Introspect(introspector), Some(cluster))
            }
            (None, None) => return Err(ProxyBuildError::MissingAuthUpstream),
        };
        Ok(Proxy {
            validator,
            auth_api_cluster,
            api_prefix: config.server.api_prefix.clone(),
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
            user_limiter,
            closures: metrics.session_closures().clone(),
        })
    }

    /// What `/metrics` reads at scrape time: token cache size and instance health.
    pub async fn scrape_state(&self) -> ScrapeState {
        ScrapeState {
            token_cache_entries: self.validator.cache_entries().await,
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
        let access = self.access_log.then(|| Access {
            method: request.method().clone(),
            path: request.uri().path().to_owned(),
            id: request_id::of(request.headers()),
            client: request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
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
        if let Some(access) = access {
            log_access(&access, response.status(), &outcome, elapsed);
        }
        response
    }

    /// The phases, in order; the first failure ends the request as its JSON error.
    async fn forward<'p>(
        &'p self,
        request: Request<Body>,
        outcome: &mut Outcome<'p>,
    ) -> Result<Response<Body>, ProxyError> {
        // 1. Request. Framing was settled by hyper before we got here (RFC 9112 §6.3):
        // conflicting Content-Length values are a 400, and Transfer-Encoding overrides
        // Content-Length, so what is forwarded is exactly the body hyper read — nothing can be
        // smuggled behind it. The server edge has refused two Hosts, or a Host that disagrees
        // with the target.
        let (mut parts, body) = request.into_parts();
        let path = path::normalize(parts.uri.path()).map_err(|_| ProxyError::BadPath)?;
        let host = parts.headers.get(HOST).cloned().or_else(|| {
            let authority = parts.uri.authority()?;
            HeaderValue::from_str(authority.as_str()).ok()
        });

        // 2. Route. Upstream mode serves the auth API whatever the route table says.
        if let Validator::Introspect(introspector) = &self.validator
            && let Some(api_path) = paths::upstream_auth_api(&self.api_prefix, &path)
        {
            outcome.route = Some(&self.auth_api);
            let exchange = Exchange::of(&parts.method, api_path);
            let path = path.into_owned();
            return self
                .pass_auth_api(introspector, exchange, parts, body, &path, host, outcome)
                .await;
        }
        let routing_host = host.as_ref().and_then(|h| h.to_str().ok());
        let route = self
            .routes
            .find(routing_host, &path::without_params(&path))
            .ok_or(ProxyError::NoRoute)?;
        outcome.route = Some(&route.metrics);
        let target = routes::upstream_target(&parts.uri, path, route)?;

        // 3. Body.
        let body = downstream_body(body, &parts.headers, route.max_body, self.body_read_timeout)?;

        // 4. Authenticate, then the route's rules.
        let grant = match route.public {
            true => None,
            false => Some(self.validator.check(&parts.headers).await?),
        };
        if self.access_log {
            outcome.user = grant
                .as_ref()
                .and_then(|g| g.principal()?.user_id_header.clone());
        }
        let principal = grant.as_ref().and_then(Grant::principal);
        if let Err(refusal) = route.policy.check(&parts.method, principal) {
            outcome.refused = Some(refusal);
            return Ok(route.policy.refusal_response(refusal));
        }

        // 5. Upstream request.
        let switch = upgrade::take_switch(&mut parts, &route.upgrades);
        let upgrade = switch.as_ref().map(|s| s.offered.clone());
        self.prepare_upstream_headers(&mut parts, host, principal, upgrade)?;

        // 6. Send.
        let deadline = route.timeout.unwrap_or(route.cluster.response_timeout);
        let cluster = route.cluster.clone();
        let instance = &mut outcome.instance;
        let session = grant.map(|g| g.session);
        if let Some(switch) = switch {
            let holder = upgrade::Holder {
                session,
                closures: self.closures.clone(),
            };
            return upgrade::tunnel(cluster, parts, target, deadline, switch, holder, instance)
                .await;
        }
        let outbound = Outbound::new(parts, body, target, deadline);
        let response = attempt::send(&Clients, cluster, outbound, instance).await?;
        Ok(match session {
            Some(session) => session_bound::bind(response, session, &self.closures),
            None => response,
        })
    }

    /// The headers the upstream receives (see [`headers::prepare_headers`]).
    fn prepare_upstream_headers(
        &self,
        parts: &mut http::request::Parts,
        host: Option<HeaderValue>,
        principal: Option<&Principal>,
        upgrade: Option<HeaderValue>,
    ) -> Result<(), ProxyError> {
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
                principal,
                upgrade,
                underscores_allowed: self.underscores_allowed,
            },
        );
        Ok(())
    }
}

/// Does `introspector` ask `cluster`? (A reload keeps its answer cache only then.)
fn asks(introspector: &Introspector, cluster: &Arc<Cluster>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(introspector.backend()), Arc::as_ptr(cluster))
}

/// What the access log needs of a request, taken before it is consumed.
struct Access {
    method: Method,
    path: String,
    id: Option<RequestId>,
    /// The client as the server edge resolved it (`server::client_addr`).
    client: Option<IpAddr>,
}

fn log_access(access: &Access, status: StatusCode, outcome: &Outcome<'_>, latency: Duration) {
    let instance = outcome
        .instance
        .as_ref()
        .map(|(cluster, i)| cluster.instances[*i].authority.as_str());
    let upstream = outcome.instance.as_ref().map(|(c, _)| c.name.as_str());
    tracing::info!(
        target: "meiro_gate::access",
        method = %access.method,
        path = access.path,
        client = access.client.map(tracing::field::display),
        status = status.as_u16(),
        upstream,
        instance,
        latency_us = latency.as_micros() as u64,
        request_id = access.id.as_ref().map(RequestId::as_str),
        user = outcome.user.as_ref().and_then(|u| u.to_str().ok()),
        refused = outcome.refused.map(Refusal::as_str),
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
