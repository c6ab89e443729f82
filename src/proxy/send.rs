//! Sending a request to its cluster: the attempt loop (instance choice, retries within the
//! count and the retry budget), the response deadline counted from the end of the request
//! body, and the verdict on a failure — the client's (its body), or the upstream's (counted,
//! maybe ejected, maybe retried).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri};
use http_body::Body as _;

use super::body::{BodyProgress, TrackedBody};
use super::error::ProxyError;
use super::retry::{self, Failure};
use super::upstream::{Cluster, InFlight};
use super::{Outcome, Proxy, headers, pool};
use crate::request_id;

impl Proxy {
    /// Sends the request to an instance, and on a safe failure to another one, within the
    /// retry count and the cluster's retry budget. A failure the client caused — its body
    /// malformed, over the limit or stalled — is answered as the client's and counts against
    /// no instance: no ejection, no retry, no upstream error.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn send_with_retries(
        &self,
        cluster: Arc<Cluster>,
        mut parts: http::request::Parts,
        body: Body,
        progress: Option<Arc<BodyProgress>>,
        target: PathAndQuery,
        deadline: Duration,
        outcome: &mut Outcome<'_>,
    ) -> Result<Response<Body>, ProxyError> {
        // The id for failure log lines, kept apart once the last attempt takes the headers.
        let mut taken_id = None;
        let now_secs = coarse_secs();
        cluster.budget.record_request(now_secs);
        // Only an empty body can be sent again: streamed bodies are not kept.
        let replayable = body.is_end_stream() && cluster.retries > 0;
        let mut body = Some(body);
        let mut exclude = None;
        let mut attempt = 0;
        let mut last_error = None;
        loop {
            let Some(index) = cluster.pick(exclude) else {
                // A retry with nowhere left to go reports why the last attempt failed.
                if let Some(error) = last_error {
                    return Err(error);
                }
                cluster.metrics.no_healthy_instance.inc();
                return Err(ProxyError::NoInstance);
            };
            outcome.instance = Some((cluster.clone(), index));
            let instance = &cluster.instances[index];
            // The own pool writes the origin form (`/path?query`) on its direct connection;
            // hyper-util's client wants the absolute URI to pick its connection.
            let uri = match &instance.pool {
                Some(_) => Uri::from(target.clone()),
                None => Uri::builder()
                    .scheme(instance.scheme.clone())
                    .authority(instance.authority.clone())
                    .path_and_query(target.clone())
                    .build()
                    .map_err(|_| ProxyError::Internal)?,
            };
            let attempt_body = if replayable {
                Body::empty()
            } else {
                body.take().ok_or(ProxyError::Internal)?
            };
            let mut request = Request::new(attempt_body);
            *request.method_mut() = parts.method.clone();
            *request.uri_mut() = uri;
            // Copied only while another attempt may still need them; the last one takes them.
            let last_attempt = !replayable || attempt >= cluster.retries;
            *request.headers_mut() = if last_attempt {
                taken_id = parts.headers.get(&request_id::X_REQUEST_ID).cloned();
                std::mem::take(&mut parts.headers)
            } else {
                parts.headers.clone()
            };

            let in_flight = InFlight::start(cluster.clone(), index);
            let instance_metrics = &cluster.metrics.instances[index];
            let sent_at = Instant::now();
            let progress = progress.as_deref();
            let sent = match &instance.pool {
                Some(pool) => within_deadline(deadline, progress, pool.send(request))
                    .await
                    .map(|r| {
                        r.map(|(response, checkout)| (response, Some(checkout)))
                            .map_err(SendError::Pool)
                    }),
                None => within_deadline(deadline, progress, cluster.client.request(request))
                    .await
                    .map(|r| {
                        r.map(|response| (response, None))
                            .map_err(SendError::Client)
                    }),
            };
            if let Some(client_fault) = progress.and_then(BodyProgress::failure) {
                // Whatever the upstream client made of it (a broken pipe, a reset stream, an
                // early answer), the request failed on the client's side.
                return Err(client_fault);
            }
            let failure = match sent {
                Ok(Ok((response, _))) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
                    // Nothing asked for a switch on this path: no tunnel opens behind the
                    // gateway's back.
                    instance_metrics.broken.inc();
                    tracing::warn!(upstream = %cluster.name, instance = %instance.authority, request_id = request_id::field_of(taken_id.as_ref(), &parts.headers), "upstream switched protocols unasked");
                    return Err(ProxyError::UpstreamUnavailable);
                }
                Ok(Ok((response, checkout))) => {
                    instance_metrics.duration.observe(sent_at.elapsed());
                    if response.status().is_server_error() {
                        instance_metrics.server_errors.inc();
                    }
                    cluster.succeeded(index);
                    let (mut head, incoming) = response.into_parts();
                    headers::strip_hop_by_hop(&mut head.headers);
                    // An intermediary speaks its own version downstream (RFC 9110 §6.2): an
                    // HTTP/1.0 upstream must not turn the client's keep-alive connection into
                    // one that closes after every response.
                    head.version = http::Version::HTTP_11;
                    let body = Body::new(TrackedBody::new(incoming, in_flight, checkout));
                    return Ok(Response::from_parts(head, body));
                }
                Ok(Err(e)) => {
                    let failure = if e.is_connect() {
                        instance_metrics.connect_errors.inc();
                        Failure::Connect
                    } else {
                        instance_metrics.broken.inc();
                        Failure::Broken
                    };
                    tracing::warn!(upstream = %cluster.name, instance = %instance.authority, error = %e.as_error(), ?failure, request_id = request_id::field_of(taken_id.as_ref(), &parts.headers), "upstream attempt failed");
                    if failure == Failure::Connect {
                        cluster.eject(index);
                    }
                    if is_timeout(e.as_error()) {
                        // A connect timeout: it never left, but the answer is a 504.
                        Err(Failure::Connect)
                    } else {
                        Ok(failure)
                    }
                }
                Err(Elapsed) => {
                    instance_metrics.timeouts.inc();
                    tracing::warn!(upstream = %cluster.name, instance = %instance.authority, ?deadline, request_id = request_id::field_of(taken_id.as_ref(), &parts.headers), "upstream response timed out");
                    // Not ejected: a slow answer says as much about the request (any client
                    // can call a slow endpoint) as about the instance, and ejecting on it would
                    // let clients take healthy instances out. A hung instance fails its active
                    // health checks, and one that stops accepting fails to connect.
                    Err(Failure::Timeout)
                }
            };
            drop(in_flight);
            let (kind, timed_out) = match failure {
                Ok(kind) => (kind, false),
                Err(kind) => (kind, true),
            };
            let error = if timed_out {
                ProxyError::UpstreamTimeout
            } else {
                ProxyError::UpstreamUnavailable
            };
            let retry = attempt < cluster.retries
                && retry::may_retry(&parts.method, replayable, kind)
                && cluster.budget.try_retry(coarse_secs());
            if !retry {
                return Err(error);
            }
            last_error = Some(error);
            cluster.metrics.retries.inc();
            attempt += 1;
            exclude = Some(index);
        }
    }
}

/// The response deadline ran out.
struct Elapsed;

/// `send`, bounded by `deadline` counted from the end of the request body: an upload is the
/// client's time, not the upstream's (as Envoy counts its route timeout), so a client that
/// streams slowly cannot make a healthy upstream look like it timed out.
async fn within_deadline<F: Future>(
    deadline: Duration,
    body: Option<&BodyProgress>,
    send: F,
) -> Result<F::Output, Elapsed> {
    let Some(body) = body else {
        return tokio::time::timeout(deadline, send)
            .await
            .map_err(|_| Elapsed);
    };
    tokio::pin!(send);
    tokio::select! {
        biased;
        output = &mut send => Ok(output),
        () = async {
            body.settled().await;
            tokio::time::sleep(deadline).await;
        } => Err(Elapsed),
    }
}

/// Why an attempt failed, from whichever client sent it.
enum SendError {
    Client(hyper_util::client::legacy::Error),
    Pool(pool::PoolError),
}

impl SendError {
    /// No connection was made: the request never left.
    fn is_connect(&self) -> bool {
        match self {
            SendError::Client(e) => e.is_connect(),
            SendError::Pool(e) => matches!(e, pool::PoolError::Connect { .. }),
        }
    }

    fn as_error(&self) -> &(dyn std::error::Error + 'static) {
        match self {
            SendError::Client(e) => e,
            SendError::Pool(e) => e,
        }
    }
}

/// Seconds for the retry budget's windows; monotonic, so wall-clock jumps do not matter.
fn coarse_secs() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs()
}

/// Does any error in the `source()` chain satisfy `test`?
fn caused_by(
    error: &(dyn std::error::Error + 'static),
    test: impl Fn(&(dyn std::error::Error + 'static)) -> bool,
) -> bool {
    std::iter::successors(Some(error), |e| e.source()).any(test)
}

/// A connect timeout surfaces as an error whose source chain holds `TimedOut`.
fn is_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    caused_by(error, |e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
    })
}
