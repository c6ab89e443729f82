//! Keep-alive connections to one plain-HTTP/1.1 instance: the data plane's fast path.
//!
//! hyper-util's legacy `Client` keys its pool by (scheme, authority) — a SipHash of the
//! authority byte by byte on every checkout and return — and routes each request through its
//! own dispatch future; the balancer has already chosen the instance, so a pool per instance
//! needs no map at all: an idle stack behind a mutex held for a push or a pop. `https://` and
//! HTTP/2 instances, health checks and introspection keep the legacy client.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use http::header::HOST;
use http::uri::Authority;
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Idle connections kept per instance; more are closed when their response ends.
const MAX_IDLE: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection could be made (refused, unreachable, or `connect_timeout`: `TimedOut`).
    #[error("connect to {authority}: {source}")]
    Connect {
        authority: Authority,
        source: io::Error,
    },
    /// The request failed on an established connection (maybe after reaching the upstream).
    #[error(transparent)]
    Request(#[from] hyper::Error),
}

pub struct Http1Pool {
    authority: Authority,
    connect_timeout: Duration,
    idle_timeout: Duration,
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

/// A connection whose response is still being read: handed back to its pool when the body
/// has ended (see `body::TrackedBody`), dropped (and closed) otherwise.
pub struct Checkout {
    pool: Arc<Http1Pool>,
    sender: SendRequest<Body>,
}

impl Checkout {
    pub fn release(self) {
        self.pool.put(self.sender);
    }
}

impl std::fmt::Debug for Http1Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http1Pool")
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

impl Http1Pool {
    pub fn new(authority: Authority, connect_timeout: Duration, idle_timeout: Duration) -> Self {
        Http1Pool {
            authority,
            connect_timeout,
            idle_timeout,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Sends `request` (its URI in origin form, `/path?query`) on an idle connection, or a
    /// new one. A request an idle connection refused before writing anything (it had just
    /// been closed) moves on to the next one: it provably never reached the upstream, so this
    /// is safe for every method.
    pub async fn send(
        self: &Arc<Self>,
        mut request: Request<Body>,
    ) -> Result<(Response<Incoming>, Checkout), PoolError> {
        // `Host` names the instance when the client sent none, as hyper-util's client does.
        if !request.headers().contains_key(HOST)
            && let Ok(host) = HeaderValue::from_str(self.authority.as_str())
        {
            request.headers_mut().insert(HOST, host);
        }
        loop {
            let (mut sender, reused) = match self.take_idle() {
                Some(sender) => (sender, true),
                None => (self.connect().await?, false),
            };
            // An idle sender is ready unless its connection has just closed: try the next
            // one. A fresh connection that is not is a failure of this attempt (looping would
            // reconnect as fast as the upstream closes, uncounted and never ejected).
            if let Err(e) = sender.ready().await {
                if reused {
                    continue;
                }
                return Err(PoolError::Request(e));
            }
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let checkout = Checkout {
                        pool: self.clone(),
                        sender,
                    };
                    return Ok((response, checkout));
                }
                Err(mut failed) => match failed.take_message() {
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(PoolError::Request(failed.into_error())),
                },
            }
        }
    }

    fn take_idle(&self) -> Option<SendRequest<Body>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(entry) = idle.pop() {
            if entry.since.elapsed() < self.idle_timeout && !entry.sender.is_closed() {
                return Some(entry.sender);
            }
        }
        None
    }

    fn put(&self, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self) -> Result<SendRequest<Body>, PoolError> {
        let connect_error = |source| PoolError::Connect {
            authority: self.authority.clone(),
            source,
        };
        // `[::1]` as written in a URL; the resolver wants the bare address.
        let host = self
            .authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let address = (host, self.authority.port_u16().unwrap_or(80));
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(address))
            .await
            .map_err(|_| connect_error(io::ErrorKind::TimedOut.into()))?
            .map_err(connect_error)?;
        // Proxied requests are small and latency-bound: never wait for Nagle.
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}
