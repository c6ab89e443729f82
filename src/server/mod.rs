//! Listeners: accept loops serving HTTP/1.1 and HTTP/2 (hyper-util auto; over TLS with ALPN,
//! h2c with prior knowledge in the clear), a connection limit, the slowloris guard, and
//! graceful drain on shutdown. What a listener serves is a [`Site`] behind an `ArcSwap`, so a
//! reload replaces it without touching open connections.

pub mod cors;
pub(crate) mod framing;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::ConnectInfo;
use futures_util::future::Either;
use http::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::proxy::Proxy;
use crate::request_id::{self, RequestId};
use framing::{Verdicts, Watched};

/// hyper's smallest HTTP/1 read buffer: it refuses longer heads (431) itself, so a
/// `max_header_bytes` under it is checked on each parsed head instead.
const HYPER_MIN_BUF_SIZE: usize = 8192;

/// The size of an HTTP/1.1 request head as sent (request line, header lines, blank line);
/// 0 for HTTP/2, whose header list hyper bounds with `max_header_list_size`.
fn http1_head_size<B>(request: &hyper::Request<B>) -> usize {
    if request.version() > http::Version::HTTP_11 {
        return 0;
    }
    let target = request
        .uri()
        .path_and_query()
        .map_or(1, |pq| pq.as_str().len());
    let line = request.method().as_str().len() + 1 + target + " HTTP/1.1\r\n".len();
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + 2 + value.len() + 2)
        .sum();
    line + headers + 2
}

/// A refusal made below the router, in the API's JSON error shape.
fn refusal(status: http::StatusCode, body: &'static str) -> Response<axum::body::Body> {
    let mut response = Response::new(axum::body::Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

/// Returns the request's id to the client on whatever answered it (an upstream's own
/// `X-Request-Id` is replaced by the one the logs and the upstream saw).
fn with_id(mut response: Response<axum::body::Body>, id: RequestId) -> Response<axum::body::Body> {
    response
        .headers_mut()
        .insert(request_id::X_REQUEST_ID.clone(), id.into_header_value());
    response
}

/// What a listener serves: an axum router, and optionally the data plane called directly.
#[derive(Clone)]
pub struct Routing {
    pub router: Router,
    /// When set, a request whose path `is_api` does not claim goes straight to the data plane
    /// instead of through the router, whose fallback it would reach anyway: no route lookup,
    /// no boxed future, no extra service clone per proxied request. Unset when a middleware
    /// (CORS) must see every request.
    pub direct: Option<DirectDataPlane>,
}

#[derive(Clone)]
pub struct DirectDataPlane {
    pub proxy: Arc<Proxy>,
    /// Paths the router may serve itself; must cover every route it has (more is harmless:
    /// the router's fallback is the same data plane).
    pub is_api: fn(&str) -> bool,
}

impl From<Router> for Routing {
    fn from(router: Router) -> Routing {
        Routing {
            router,
            direct: None,
        }
    }
}

/// Per-listener connection settings (from `[limits]`).
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
}

/// Everything a listener serves that a reload may replace: the routing, read once per
/// request (so a keep-alive connection follows a reload), and the head limits, read once per
/// connection (they configure hyper's connection builder). `max_connections` sizes the
/// accept semaphore and is only read at start.
pub struct Site {
    routing: Routing,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: ConnectionLimits,
}

impl Site {
    pub fn new(routing: Routing, limits: ConnectionLimits) -> Site {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            // hyper's floor for the read buffer is 8 KiB; the head must fit in it.
            .max_buf_size(limits.max_header_bytes.max(HYPER_MIN_BUF_SIZE));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
        Site {
            routing,
            builder: Arc::new(builder),
            limits,
        }
    }
}

/// The current [`Site`] of a listener; [`ArcSwap::store`] replaces it for new requests while
/// requests in flight keep the `Arc`s (router, data plane) they already took.
pub type LiveSite = Arc<ArcSwap<Site>>;

/// Serves the [`LiveSite`] on `listener` (through `tls` when given) until `shutdown` turns
/// true, then stops accepting and waits up to `drain` for in-flight requests. Returns whether
/// every connection drained in time.
pub async fn serve(
    listener: TcpListener,
    site: LiveSite,
    tls: Option<TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) -> bool {
    let graceful = GracefulShutdown::new();
    let max_connections = site.load().limits.max_connections;
    let permits = Arc::new(Semaphore::new(max_connections.max(1)));

    loop {
        // Waiting for a permit before accepting leaves excess connections in the kernel's
        // backlog instead of accepting work we cannot serve.
        let permit = tokio::select! {
            _ = shutdown.changed() => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, remote) = tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (builder, head_limit, handshake_timeout) = {
            let current = site.load();
            (
                current.builder.clone(),
                current.limits.max_header_bytes,
                current.limits.header_read_timeout,
            )
        };
        let site = site.clone();
        // hyper keeps at most this much of a head before refusing it.
        let scan_limit = head_limit.max(HYPER_MIN_BUF_SIZE);
        let verdicts = Arc::new(Verdicts::default());
        let watched_verdicts = verdicts.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            // First, so refusals carry it too; from here on the request's `X-Request-Id` header
            // is the id, so the upstream gets it as is.
            let id = request_id::assign(request.headers_mut());
            if request.version() <= http::Version::HTTP_11 && verdicts.next_request_is_conflicting()
            {
                // Never forwarded; hyper closes the connection after this answer.
                return Either::Left(std::future::ready(Ok(with_id(
                    refusal(
                        http::StatusCode::BAD_REQUEST,
                        r#"{"message":"Request has both Content-Length and Transfer-Encoding"}"#,
                    ),
                    id,
                ))));
            }
            if head_limit < HYPER_MIN_BUF_SIZE && http1_head_size(&request) > head_limit {
                return Either::Left(std::future::ready(Ok(with_id(
                    refusal(
                        http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                        r#"{"message":"Request header fields too large"}"#,
                    ),
                    id,
                ))));
            }
            let mut request = request.map(axum::body::Body::new);
            request
                .extensions_mut()
                .insert(ConnectInfo::<SocketAddr>(remote));
            // One lock-free load per request; the guard is gone before the first await, the
            // future owns clones of what it needs.
            let current = site.load();
            match &current.routing.direct {
                Some(direct) if !(direct.is_api)(request.uri().path()) => {
                    let proxy = direct.proxy.clone();
                    Either::Right(Either::Left(async move {
                        Ok::<_, std::convert::Infallible>(with_id(proxy.handle(request).await, id))
                    }))
                }
                _ => {
                    let router = current.routing.router.clone();
                    Either::Right(Either::Right(async move {
                        Ok(with_id(router.oneshot(request).await?, id))
                    }))
                }
            }
        });
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let result =
                match tls {
                    None => {
                        let stream = Watched::new(stream, scan_limit, watched_verdicts);
                        let connection =
                            builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                        watcher.watch(connection.into_owned()).await
                    }
                    Some(acceptor) => {
                        // The handshake counts against the header timeout: a client that opens a
                        // socket and says nothing is a slowloris in TLS clothing.
                        let stream =
                            match tokio::time::timeout(handshake_timeout, acceptor.accept(stream))
                                .await
                            {
                                Ok(Ok(stream)) => stream,
                                Ok(Err(e)) => {
                                    tracing::debug!(error = %e, %remote, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(%remote, "TLS handshake timed out");
                                    return;
                                }
                            };
                        let stream = Watched::new(stream, scan_limit, watched_verdicts);
                        let connection =
                            builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                        watcher.watch(connection.into_owned()).await
                    }
                };
            if let Err(e) = result {
                tracing::debug!(error = %e, %remote, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => true,
        _ = tokio::time::sleep(drain) => {
            tracing::warn!(?drain, "drain timeout: closing remaining connections");
            false
        }
    }
}
