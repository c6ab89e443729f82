//! The two bodies the data plane streams: the client's request body on its way upstream
//! ([`DownstreamBody`]: bounded, with a stall deadline, and watched so that its failures are
//! known to be the client's), and the upstream's response body on its way back
//! ([`TrackedBody`]: holds the instance's in-flight count and its pooled connection).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::HeaderMap;
use http::header::CONTENT_LENGTH;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use super::error::ProxyError;
use super::pool::Checkout;
use super::upstream::InFlight;

/// The client's body as the upstream client will read it: a declared length over the
/// route's limit is refused at once; a body that streams is counted against the limit, given
/// `read_timeout` between reads, and watched (see [`BodyProgress`]). An empty body is passed
/// as it is, so bodiless requests cost nothing here.
pub fn downstream_body(
    body: Body,
    headers: &HeaderMap,
    max: Option<u64>,
    read_timeout: Duration,
) -> Result<RequestBody, ProxyError> {
    if body.is_end_stream() {
        return Ok(RequestBody::whole(body));
    }
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if max.is_some_and(|max| declared.is_some_and(|len| len > max)) {
        return Err(ProxyError::PayloadTooLarge);
    }
    let (body, progress) = DownstreamBody::new(body, max, read_timeout);
    Ok(RequestBody {
        body: Body::new(body),
        progress: Some(progress),
    })
}

/// A request body on its way upstream.
pub struct RequestBody {
    pub body: Body,
    /// How reading the client's body goes, while it streams; `None` for a body that is
    /// already whole (empty, or read by the gateway).
    pub progress: Option<Arc<BodyProgress>>,
}

impl RequestBody {
    pub fn whole(body: Body) -> RequestBody {
        RequestBody {
            body,
            progress: None,
        }
    }
}

/// How reading a request body went, shared between the body (which the upstream client owns
/// while it sends) and the data plane (which must tell a client's fault from an upstream's).
#[derive(Debug, Default)]
pub struct BodyProgress {
    state: AtomicU8,
    /// Woken when `state` leaves [`STREAMING`].
    settled: Notify,
}

const STREAMING: u8 = 0;
const COMPLETE: u8 = 1;
const TOO_LARGE: u8 = 2;
const STALLED: u8 = 3;
const MALFORMED: u8 = 4;

impl BodyProgress {
    fn settle(&self, state: u8) {
        // Only the first outcome counts (a failed body is not polled again, but be exact).
        if self
            .state
            .compare_exchange(STREAMING, state, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.settled.notify_waiters();
        }
    }

    /// The client's fault, if reading its body failed: whatever the upstream client then
    /// reports (a broken pipe, a reset stream) is answered as this, and held against no
    /// instance.
    pub fn failure(&self) -> Option<ProxyError> {
        match self.state.load(Ordering::Acquire) {
            TOO_LARGE => Some(ProxyError::PayloadTooLarge),
            STALLED => Some(ProxyError::BodyTimeout),
            MALFORMED => Some(ProxyError::MalformedBody),
            _ => None,
        }
    }

    /// Resolves once the body was read to its end (or failed).
    pub async fn settled(&self) {
        loop {
            let notified = self.settled.notified();
            if self.state.load(Ordering::Acquire) != STREAMING {
                return;
            }
            notified.await;
        }
    }
}

/// Why a request body stopped; the upstream client sees this as its body's error.
#[derive(Debug, thiserror::Error)]
pub enum DownstreamBodyError {
    #[error("request body over the route's limit")]
    TooLarge,
    #[error("no request body data for {0:?}")]
    Stalled(Duration),
    #[error("malformed request body: {0}")]
    Malformed(#[source] axum::Error),
}

/// The client's request body as the upstream client reads it.
pub struct DownstreamBody {
    inner: Body,
    /// Bytes still allowed (the route's `max_body`).
    allowed: u64,
    stall_after: Duration,
    /// Allocated at the first wait; re-armed after every frame.
    stall: Option<Pin<Box<Sleep>>>,
    armed: bool,
    progress: Arc<BodyProgress>,
}

impl DownstreamBody {
    pub fn new(inner: Body, max: Option<u64>, stall_after: Duration) -> (Self, Arc<BodyProgress>) {
        let progress = Arc::new(BodyProgress::default());
        let body = DownstreamBody {
            inner,
            allowed: max.unwrap_or(u64::MAX),
            stall_after,
            stall: None,
            armed: false,
            progress: progress.clone(),
        };
        (body, progress)
    }

    fn fail(
        &self,
        state: u8,
        error: DownstreamBodyError,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        self.progress.settle(state);
        Poll::Ready(Some(Err(axum::Error::new(error))))
    }
}

impl HttpBody for DownstreamBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.armed = false;
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > this.allowed {
                        return this.fail(TOO_LARGE, DownstreamBodyError::TooLarge);
                    }
                    this.allowed -= len;
                }
                if this.inner.is_end_stream() {
                    this.progress.settle(COMPLETE);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => this.fail(MALFORMED, DownstreamBodyError::Malformed(e)),
            Poll::Ready(None) => {
                this.progress.settle(COMPLETE);
                Poll::Ready(None)
            }
            Poll::Pending => {
                let deadline = Instant::now() + this.stall_after;
                let stall = this
                    .stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if !this.armed {
                    stall.as_mut().reset(deadline);
                    this.armed = true;
                }
                ready!(stall.as_mut().poll(cx));
                this.fail(STALLED, DownstreamBodyError::Stalled(this.stall_after))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for DownstreamBody {
    fn drop(&mut self) {
        // Dropped unfinished (the upstream answered early, or the attempt failed): whoever
        // waits for the end must not wait forever.
        self.progress.settle(COMPLETE);
    }
}

/// The upstream's response body, streamed as is, holding the instance's in-flight count
/// until it ends or is dropped, and handing its pooled connection back once it has ended.
pub struct TrackedBody {
    inner: Incoming,
    _in_flight: InFlight,
    checkout: Option<Checkout>,
}

impl TrackedBody {
    pub fn new(inner: Incoming, in_flight: InFlight, checkout: Option<Checkout>) -> TrackedBody {
        let mut body = TrackedBody {
            inner,
            _in_flight: in_flight,
            checkout,
        };
        // A bodiless response may never be polled: its connection is free already.
        body.release_if_ended();
        body
    }

    fn release_if_ended(&mut self) {
        if self.inner.is_end_stream()
            && let Some(checkout) = self.checkout.take()
        {
            checkout.release();
        }
    }
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                if let Some(checkout) = self.checkout.take() {
                    checkout.release();
                }
            }
            // A failed body leaves the connection in an unknown state: it is dropped.
            Poll::Ready(Some(Err(_))) => self.checkout = None,
            Poll::Ready(Some(Ok(_))) => self.release_if_ended(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
