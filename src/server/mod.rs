//! Listeners: accept loops serving HTTP/1.1 and HTTP/2 (hyper-util auto; over TLS with ALPN,
//! h2c with prior knowledge in the clear), a connection limit, the deadlines of each
//! connection (`connection`), the checks every request passes first (`edge`), and graceful
//! drain on shutdown. What a listener serves is a [`Site`] behind an `ArcSwap`, so a
//! reload replaces it without touching open connections.

pub mod client_addr;
mod connection;
pub mod cors;
pub mod edge;
pub(crate) mod framing;
pub mod proxy_protocol;
pub mod tls;

use std::future::Future;
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
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::auth::paths;
use crate::proxy::{ConnectionSlot, Proxy};
use crate::request_id::{self, RequestId};
use client_addr::Addressing;
use connection::{ConnectionState, Deadlines};
use edge::Refusal;
use framing::{Verdicts, Watched};
use proxy_protocol::{Prefixed, Refusal as ProxyRefusal};

/// hyper's smallest HTTP/1 read buffer: it refuses longer heads (431) itself, so a
/// `max_header_bytes` under it is checked on each parsed head instead.
const HYPER_MIN_BUF_SIZE: usize = 8192;

/// Streams one HTTP/2 connection may have open at once (hyper's default, named here because
/// it also bounds what one connection can have in progress at the upstreams).
const HTTP2_MAX_CONCURRENT_STREAMS: u32 = 200;

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
    /// When set, a request whose path the auth API cannot serve goes straight to the data plane
    /// instead of through the router, whose fallback it would reach anyway: no route lookup,
    /// no boxed future, no extra service clone per proxied request. Unset when a middleware
    /// (CORS) must see every request.
    pub direct: Option<DirectDataPlane>,
}

#[derive(Clone)]
pub struct DirectDataPlane {
    pub proxy: Arc<Proxy>,
    /// The router serves the local auth API (`auth::paths::local_api_may_serve` names the
    /// paths it may claim); without it every request goes straight to the data plane.
    pub local_api: bool,
    /// `server.api_prefix`: where the local auth API is mounted.
    pub api_prefix: Arc<str>,
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
    /// A connection with nothing in progress for this long is shut down gracefully.
    pub idle_timeout: Duration,
    /// HTTP/2 PING after this long without a frame from the client (`None`: never), and how
    /// long the client has to answer it.
    pub http2_keepalive: Option<(Duration, Duration)>,
}

/// Everything a listener serves that a reload may replace: the routing and the trusted
/// proxies, read once per request (so a keep-alive connection follows a reload), and the
/// connection limits and PROXY protocol switch, read once per connection (they configure
/// hyper's connection builder and the connection's deadlines). `max_connections` sizes the
/// accept semaphore and is only read at start.
pub struct Site {
    routing: Routing,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: ConnectionLimits,
    addressing: Arc<Addressing>,
}

impl Site {
    pub fn new(routing: Routing, limits: ConnectionLimits, addressing: Addressing) -> Site {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            // hyper's floor for the read buffer is 8 KiB; the head must fit in it.
            .max_buf_size(limits.max_header_bytes.max(HYPER_MIN_BUF_SIZE));
        let mut http2 = builder.http2();
        http2
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(HTTP2_MAX_CONCURRENT_STREAMS);
        if let Some((interval, timeout)) = limits.http2_keepalive {
            // A client that stops answering PINGs (gone without a FIN, or stalled) loses its
            // connection and whatever streams it held open.
            http2
                .keep_alive_interval(interval)
                .keep_alive_timeout(timeout);
        }
        Site {
            routing,
            builder: Arc::new(builder),
            limits,
            addressing: Arc::new(addressing),
        }
    }

    fn deadlines(&self) -> Deadlines {
        Deadlines {
            first_request: self.limits.header_read_timeout,
            idle: self.limits.idle_timeout,
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
    let max_connections = site.load().limits.max_connections;
    let permits = Arc::new(Semaphore::new(max_connections.max(1)));
    // Each connection task holds a sender; when the last is gone, every connection has ended.
    let (open_tx, mut open_rx) = mpsc::channel::<()>(1);

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
        let at = tokio::time::Instant::now();
        let _ = stream.set_nodelay(true);
        let (builder, head_limit, deadlines, proxied) = {
            let current = site.load();
            (
                current.builder.clone(),
                current.limits.max_header_bytes,
                current.deadlines(),
                // Only then is the addressing needed per connection.
                current
                    .addressing
                    .proxy_protocol
                    .then(|| current.addressing.clone()),
            )
        };
        let connection = ConnectionState::new(permit);
        let verdicts = Arc::new(Verdicts::default());
        let site = site.clone();
        let tls = tls.clone();
        let shutdown = shutdown.clone();
        let open = open_tx.clone();
        tokio::spawn(async move {
            // The PROXY header, the TLS handshake and the first request share the
            // first-request deadline: a client that opens a socket and says nothing is a
            // slowloris in TLS (or PROXY) clothing.
            let deadline = at + deadlines.first_request;
            let (stream, peer) = match proxied {
                None => (Prefixed::new(bytes::Bytes::new(), stream), remote),
                Some(addressing) => {
                    match proxy_header(stream, remote, &addressing, deadline).await {
                        Ok(accepted) => accepted,
                        Err(refusal) => return addressing.refused(remote, refusal),
                    }
                }
            };
            let service = service(site, connection.clone(), verdicts.clone(), peer, head_limit);
            let accepted = Accepted {
                builder,
                service,
                // hyper keeps at most this much of a head before refusing it.
                scan_limit: head_limit.max(HYPER_MIN_BUF_SIZE),
                verdicts,
                connection,
                deadlines,
                at,
                shutdown,
                remote,
            };
            match tls {
                None => accepted.serve(stream).await,
                Some(acceptor) => {
                    match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => accepted.serve(stream).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, %remote, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                    }
                }
            }
            drop(open);
        });
    }
    drop(listener);
    drop(open_tx);
    tokio::select! {
        _ = open_rx.recv() => true,
        _ = tokio::time::sleep(drain) => {
            tracing::warn!(?drain, "drain timeout: closing remaining connections");
            false
        }
    }
}

/// Reads the PROXY header a connection must start with (`server.proxy_protocol`): the stream
/// with what followed the header put back, and the peer it names (the TCP peer when it names
/// none).
async fn proxy_header(
    mut stream: tokio::net::TcpStream,
    remote: SocketAddr,
    addressing: &Addressing,
    deadline: tokio::time::Instant,
) -> Result<(Prefixed<tokio::net::TcpStream>, SocketAddr), ProxyRefusal> {
    // With trusted proxies set, only they may say whose connection it is.
    if !addressing.trusted.is_empty() && !addressing.trusted.contains(remote.ip()) {
        return Err(ProxyRefusal::UntrustedPeer);
    }
    let read = proxy_protocol::read_header(&mut stream);
    let (source, rest) = tokio::time::timeout_at(deadline, read)
        .await
        .map_err(|_| ProxyRefusal::Timeout)??;
    Ok((Prefixed::new(rest, stream), source.unwrap_or(remote)))
}

/// A connection accepted and everything needed to serve it, over plain TCP or TLS.
struct Accepted<S> {
    builder: Arc<auto::Builder<TokioExecutor>>,
    service: S,
    scan_limit: usize,
    verdicts: Arc<Verdicts>,
    connection: Arc<ConnectionState>,
    deadlines: Deadlines,
    at: tokio::time::Instant,
    shutdown: watch::Receiver<bool>,
    remote: SocketAddr,
}

impl<S> Accepted<S>
where
    S: hyper::service::Service<
            hyper::Request<Incoming>,
            Response = Response<axum::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    /// Serves the connection until it ends, under its deadlines (`connection::drive`).
    async fn serve<I>(self, stream: I)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let stream = Watched::new(stream, self.scan_limit, self.verdicts);
        let http = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(stream), self.service);
        tokio::pin!(http);
        let watchdog = tokio::spawn(connection::watchdog(
            self.connection.clone(),
            self.deadlines,
            self.at,
            self.shutdown,
        ));
        let end = connection::Drive::new(http, |c| c.graceful_shutdown(), &self.connection).await;
        watchdog.abort();
        let remote = self.remote;
        match end {
            connection::End::Served(Ok(())) => {}
            connection::End::Served(Err(e)) => {
                tracing::debug!(error = %e, %remote, "connection ended with an error")
            }
            connection::End::NoRequest => {
                tracing::debug!(%remote, "connection closed: no request within the deadline")
            }
            connection::End::Abusive => {
                tracing::info!(%remote, "connection closed: it cancelled most of its requests (HTTP/2 rapid reset)")
            }
        }
    }
}

/// The service of one connection from `peer` (its PROXY header's source, if it sent one): the
/// edge checks, the client's address, then the data plane directly or the router, every
/// answer carrying the request id.
fn service(
    site: LiveSite,
    connection: Arc<ConnectionState>,
    verdicts: Arc<Verdicts>,
    peer: SocketAddr,
    head_limit: usize,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = Response<axum::body::Body>,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<Response<axum::body::Body>, std::convert::Infallible>>
             + Send
             + 'static,
> + Clone
+ Send
+ 'static {
    hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        // First, so refusals carry it too; from here on the request's `X-Request-Id` header
        // is the id, so the upstream gets it as is.
        let id = request_id::assign(request.headers_mut());
        let guard = connection.start_request();
        let refused = if request.version() <= http::Version::HTTP_11
            && verdicts.next_request_is_conflicting()
        {
            // Never forwarded; hyper closes the connection after this answer.
            Some(Refusal::ConflictingFraming)
        } else if head_limit < HYPER_MIN_BUF_SIZE && http1_head_size(&request) > head_limit {
            Some(Refusal::HeadTooLarge)
        } else {
            edge::screen(&request).err()
        };
        if let Some(refusal) = refused {
            guard.answered();
            return Either::Left(std::future::ready(Ok(with_id(refusal.into_response(), id))));
        }
        if request
            .extensions()
            .get::<hyper::upgrade::OnUpgrade>()
            .is_some()
        {
            // A tunnel upgraded from this request keeps the connection's slot.
            request
                .extensions_mut()
                .insert(ConnectionSlot(guard.connection().clone()));
        }
        // One lock-free load per request; the guard is gone before the first await, the
        // future owns clones of what it needs.
        let current = site.load();
        // Every consumer of the client's address reads it here (`client_addr`).
        let client = current.addressing.client(peer, request.headers_mut());
        let mut request = request.map(axum::body::Body::new);
        request
            .extensions_mut()
            .insert(ConnectInfo::<SocketAddr>(client));
        match &current.routing.direct {
            Some(direct)
                if !(direct.local_api
                    && paths::local_api_may_serve(&direct.api_prefix, request.uri().path())) =>
            {
                let proxy = direct.proxy.clone();
                Either::Right(Either::Left(async move {
                    let response = proxy.handle(request).await;
                    guard.answered();
                    Ok::<_, std::convert::Infallible>(with_id(response, id))
                }))
            }
            _ => {
                let router = current.routing.router.clone();
                Either::Right(Either::Right(async move {
                    let response = router.oneshot(request).await?;
                    guard.answered();
                    Ok(with_id(response, id))
                }))
            }
        }
    })
}
