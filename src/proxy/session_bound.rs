//! Streamed responses end with the session that asked for them: an event stream or a long
//! download is cut (the connection aborted mid-body, or the HTTP/2 stream reset) when the
//! session ends, so a logged-out or disabled user cannot keep reading one for hours.
//!
//! Only bodies that can last are watched: those of unknown length and those longer than
//! [`WATCHED_ABOVE`]. An ordinary response, whose length is known and small, pays one branch
//! and keeps its body as it is.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http::Response;
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::auth::cache::{CachedSession, Ending};
use crate::telemetry::metrics::SessionClosures;

/// Bodies of a known length up to this are sent in moments: not worth watching.
pub const WATCHED_ABOVE: u64 = 64 * 1024;

/// `response`, its body cut when `session` ends if it is one that can last.
pub fn bind(
    response: Response<Body>,
    session: Arc<CachedSession>,
    closures: &SessionClosures,
) -> Response<Body> {
    match response.body().size_hint().exact() {
        Some(length) if length <= WATCHED_ABOVE => response,
        _ => {
            let closures = closures.clone();
            response.map(|inner| {
                Body::new(SessionBound {
                    inner,
                    ending: Box::pin(session.ended()),
                    closures,
                    cut: false,
                })
            })
        }
    }
}

/// The error a cut body ends with; hyper then aborts the response.
#[derive(Debug, thiserror::Error)]
#[error("the session that asked for this response ended ({0})")]
pub struct SessionEnded(&'static str);

struct SessionBound {
    inner: Body,
    ending: Pin<Box<dyn Future<Output = Ending> + Send>>,
    closures: SessionClosures,
    cut: bool,
}

impl HttpBody for SessionBound {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.cut {
            return Poll::Ready(None);
        }
        if let Poll::Ready(why) = self.ending.as_mut().poll(cx) {
            self.cut = true;
            self.closures.closed("stream", why.as_str());
            tracing::info!(
                reason = why.as_str(),
                "streamed response cut: the session that asked for it ended"
            );
            return Poll::Ready(Some(Err(Box::new(SessionEnded(why.as_str())))));
        }
        Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map_err(|e| Box::new(e) as Self::Error)
    }

    fn is_end_stream(&self) -> bool {
        self.cut || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
