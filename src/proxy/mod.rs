//! The data plane: every request that is not the auth API. In request order: normalize the
//! path → route → authenticate (unless the route is public) → pick an instance → forward,
//! streaming both bodies.

mod balance;
pub mod error;
pub mod forward;
pub mod path;
pub mod routes;
pub mod upstream;

use std::borrow::Cow;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::ConnectInfo;
use http::uri::PathAndQuery;
use http::{Request, Response};

use crate::auth::layer::extract_token;
use crate::auth::{Auth, AuthError};
use crate::config::Config;
use error::ProxyError;
use routes::{Route, RouteTable};
use upstream::Cluster;

#[derive(Debug, thiserror::Error)]
pub enum ProxyBuildError {
    #[error(transparent)]
    Instance(#[from] upstream::BadInstance),
    #[error("route {prefix}: unknown upstream {upstream}")]
    UnknownUpstream { prefix: String, upstream: String },
}

/// Shared, read-only state of the data plane.
pub struct Proxy {
    auth: Arc<Auth>,
    routes: RouteTable,
    downstream_proto: &'static str,
}

impl Proxy {
    pub fn new(config: &Config, auth: Arc<Auth>) -> Result<Proxy, ProxyBuildError> {
        let clusters: HashMap<&str, Arc<Cluster>> = config
            .upstreams
            .iter()
            .map(|u| Ok((u.name.as_str(), Arc::new(Cluster::new(u)?))))
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
                Ok(Route {
                    prefix: r.prefix.clone(),
                    public: r.public,
                    cluster,
                })
            })
            .collect::<Result<Vec<_>, ProxyBuildError>>()?;
        Ok(Proxy {
            auth,
            routes: RouteTable::new(routes),
            downstream_proto: "http",
        })
    }

    /// Handles one request; every failure is a JSON response, never an `Err`.
    pub async fn handle(&self, request: Request<Body>) -> Response<Body> {
        match self.forward(request).await {
            Ok(response) => response,
            Err(e) => e.into_response(),
        }
    }

    async fn forward(&self, mut request: Request<Body>) -> Result<Response<Body>, ProxyError> {
        let path = path::normalize(request.uri().path()).map_err(|_| ProxyError::BadPath)?;
        let route = self.routes.find(&path).ok_or(ProxyError::NoRoute)?;
        let path_and_query = upstream_target(request.uri(), path)?;

        let principal = if route.public {
            None
        } else {
            let token = extract_token(request.headers(), &self.auth.settings().cookie_name)
                .ok_or(ProxyError::MissingToken)?;
            Some(self.auth.authenticate(token).await.map_err(|e| match e {
                AuthError::Internal(_) | AuthError::Store(_) => {
                    tracing::error!(error = %e, "token validation failed");
                    ProxyError::AuthUnavailable
                }
                _ => ProxyError::InvalidToken,
            })?)
        };

        let instance = route.cluster.pick().ok_or(ProxyError::NoInstance)?;
        let client = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0)
            .ok_or(ProxyError::Internal)?;
        forward::prepare_request(
            &mut request,
            instance,
            path_and_query,
            client,
            self.downstream_proto,
            principal.as_deref(),
        )?;
        let mut response = forward::send(&route.cluster, request).await?;
        forward::strip_hop_by_hop(response.headers_mut());
        Ok(response.map(Body::new))
    }
}

/// The path and query the upstream receives: the normalized path, the query untouched.
/// Reuses the original (no allocation) when normalization changed nothing.
fn upstream_target(uri: &http::Uri, normalized: Cow<'_, str>) -> Result<PathAndQuery, ProxyError> {
    match (&normalized, uri.path_and_query()) {
        (Cow::Borrowed(_), Some(pq)) => Ok(pq.clone()),
        _ => {
            let target = match uri.query() {
                Some(q) => format!("{normalized}?{q}"),
                None => normalized.to_string(),
            };
            PathAndQuery::try_from(target).map_err(|_| ProxyError::BadPath)
        }
    }
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
