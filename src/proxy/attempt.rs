//! Sending a request to its cluster: the attempt loop (instance choice, retries within the
//! count and the retry budget), the response deadline counted from the end of the request
//! body, and the verdict on each attempt ([`Attempt`]) — the client's fault (its body), or the
//! upstream's (counted, maybe ejected, maybe retried).
//!
//! The loop reaches instances through [`Transport`]: in the gateway the cluster's clients
//! ([`Clients`]), in the unit tests below a script, so every verdict is tested without sockets.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body::Body as _;

use super::body::{BodyProgress, RequestBody, TrackedBody};
use super::error::ProxyError;
use super::retry::{self, Failure};
use super::upstream::{Cluster, InFlight};
use super::{headers, pool};
use crate::request_id;

/// A request on its way to a cluster, as the attempts send it.
pub(super) struct Outbound {
    pub parts: http::request::Parts,
    pub body: RequestBody,
    /// What the upstream is asked for (`/path?query`).
    pub target: PathAndQuery,
    /// For the response head, counted from the end of the request body.
    pub deadline: Duration,
}

impl Outbound {
    pub fn new(
        parts: http::request::Parts,
        body: RequestBody,
        target: PathAndQuery,
        deadline: Duration,
    ) -> Outbound {
        Outbound {
            parts,
            body,
            target,
            deadline,
        }
    }
}

/// How one attempt ended.
enum Attempt {
    /// The upstream answered: its response goes to the client as it is.
    Answered(Response<Body>),
    /// The client's body failed (malformed, over the limit, stalled): the client's error,
    /// whatever the upstream client made of it. No instance is blamed.
    ClientFault(ProxyError),
    /// The upstream answered `101` though nothing asked for a switch on this path: `502`, and
    /// no tunnel opens behind the gateway's back.
    SwitchedUnasked,
    /// No connection was made, so the request never left; `timed_out`: the connect timeout
    /// ran out (answered `504`, else `502`).
    NotConnected { timed_out: bool },
    /// The connection broke after the request may have left; `timed_out`: on a socket
    /// timeout (answered `504`, else `502`).
    Broken { timed_out: bool },
    /// No response head within the deadline.
    TimedOut,
}

impl Attempt {
    /// What a failed attempt means for retrying, and what the client is told if it is the
    /// last one; `None` for the outcomes that end the loop whatever the retry rules say.
    fn failure(&self) -> Option<(Failure, ProxyError)> {
        match self {
            Attempt::NotConnected { timed_out: false } => {
                Some((Failure::Connect, ProxyError::UpstreamUnavailable))
            }
            Attempt::NotConnected { timed_out: true } => {
                Some((Failure::Connect, ProxyError::UpstreamTimeout))
            }
            Attempt::Broken { timed_out: false } => {
                Some((Failure::Broken, ProxyError::UpstreamUnavailable))
            }
            Attempt::Broken { timed_out: true } => {
                Some((Failure::Broken, ProxyError::UpstreamTimeout))
            }
            Attempt::TimedOut => Some((Failure::Timeout, ProxyError::UpstreamTimeout)),
            Attempt::Answered(_) | Attempt::ClientFault(_) | Attempt::SwitchedUnasked => None,
        }
    }
}

/// Why a transport got no response.
pub(super) struct SendError {
    /// No connection was made: the request never left.
    pub not_connected: bool,
    pub error: Box<dyn std::error::Error + Send + Sync>,
}

/// How an attempt reaches an instance.
pub(super) trait Transport: Sync {
    /// Sends `request` (its URI still to be set from `target`) to instance `index`; the
    /// response's body holds `in_flight` until it ends.
    fn send(
        &self,
        cluster: &Cluster,
        index: usize,
        target: &PathAndQuery,
        request: Request<Body>,
        in_flight: InFlight,
    ) -> impl Future<Output = Result<Response<Body>, SendError>> + Send;
}

/// The gateway's transport: an instance's own HTTP/1.1 pool, or the cluster's hyper-util
/// client (TLS, HTTP/2).
pub(super) struct Clients;

impl Transport for Clients {
    async fn send(
        &self,
        cluster: &Cluster,
        index: usize,
        target: &PathAndQuery,
        mut request: Request<Body>,
        in_flight: InFlight,
    ) -> Result<Response<Body>, SendError> {
        let instance = &cluster.instances[index];
        let (response, checkout) = match &instance.pool {
            // The own pool writes the origin form on its direct connection.
            Some(pool) => {
                *request.uri_mut() = Uri::from(target.clone());
                let (response, checkout) = pool.send(request).await.map_err(|e| SendError {
                    not_connected: matches!(e, pool::PoolError::Connect { .. }),
                    error: Box::new(e),
                })?;
                (response, Some(checkout))
            }
            // hyper-util's client wants the absolute URI to pick its connection.
            None => {
                *request.uri_mut() =
                    instance
                        .absolute_uri(target.clone())
                        .map_err(|e| SendError {
                            not_connected: true,
                            error: Box::new(e),
                        })?;
                let response = cluster
                    .client
                    .request(request)
                    .await
                    .map_err(|e| SendError {
                        not_connected: e.is_connect(),
                        error: Box::new(e),
                    })?;
                (response, None)
            }
        };
        Ok(response.map(|incoming| Body::new(TrackedBody::new(incoming, in_flight, checkout))))
    }
}

/// Sends the request to an instance, and on a safe failure to another one, within the
/// retry count and the cluster's retry budget. `instance` is set to each instance tried.
pub(super) async fn send<T: Transport>(
    transport: &T,
    cluster: Arc<Cluster>,
    outbound: Outbound,
    instance: &mut Option<(Arc<Cluster>, usize)>,
) -> Result<Response<Body>, ProxyError> {
    let Outbound {
        mut parts,
        body: RequestBody { body, progress },
        target,
        deadline,
    } = outbound;
    // The id for failure log lines, kept apart once the last attempt takes the headers.
    let mut taken_id: Option<HeaderValue> = None;
    cluster.budget.record_request(coarse_secs());
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
        *instance = Some((cluster.clone(), index));
        let attempt_body = if replayable {
            Body::empty()
        } else {
            body.take().ok_or(ProxyError::Internal)?
        };
        let mut request = Request::new(attempt_body);
        *request.method_mut() = parts.method.clone();
        // Copied only while another attempt may still need them; the last one takes them.
        *request.headers_mut() = if !replayable || attempt >= cluster.retries {
            taken_id = parts.headers.get(&request_id::X_REQUEST_ID).cloned();
            std::mem::take(&mut parts.headers)
        } else {
            parts.headers.clone()
        };
        let in_flight = InFlight::start(cluster.clone(), index);
        let sent_at = Instant::now();
        let sent = within_deadline(
            deadline,
            progress.as_deref(),
            transport.send(&cluster, index, &target, request, in_flight),
        )
        .await;
        let request_id = (taken_id.as_ref(), &parts.headers);
        let outcome = judge(
            &cluster,
            index,
            sent,
            progress.as_deref(),
            deadline,
            request_id,
        );
        let (failure, error) = match outcome {
            Attempt::Answered(response) => {
                cluster.metrics.instances[index]
                    .duration
                    .observe(sent_at.elapsed());
                return Ok(response);
            }
            Attempt::ClientFault(error) => return Err(error),
            Attempt::SwitchedUnasked => return Err(ProxyError::UpstreamUnavailable),
            failed => failed.failure().ok_or(ProxyError::Internal)?,
        };
        let retry = attempt < cluster.retries
            && retry::may_retry(&parts.method, replayable, failure)
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

/// The verdict on one attempt, with its bookkeeping: the instance's counters, its ejection
/// on a connect failure, its recovery on an answer, the log line of a failure.
fn judge(
    cluster: &Cluster,
    index: usize,
    sent: Result<Result<Response<Body>, SendError>, Elapsed>,
    progress: Option<&BodyProgress>,
    deadline: Duration,
    (taken_id, headers): (Option<&HeaderValue>, &http::HeaderMap),
) -> Attempt {
    // Read only by the failure log lines.
    let log_id = || request_id::field_of(taken_id, headers);
    if let Some(client_fault) = progress.and_then(BodyProgress::failure) {
        // Whatever the upstream client made of it (a broken pipe, a reset stream, an early
        // answer), the request failed on the client's side.
        return Attempt::ClientFault(client_fault);
    }
    let instance = &cluster.instances[index];
    let metrics = &cluster.metrics.instances[index];
    match sent {
        Ok(Ok(response)) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
            metrics.broken.inc();
            tracing::warn!(upstream = %cluster.name, instance = %instance.authority, request_id = log_id(), "upstream switched protocols unasked");
            Attempt::SwitchedUnasked
        }
        Ok(Ok(mut response)) => {
            if response.status().is_server_error() {
                metrics.server_errors.inc();
            }
            cluster.succeeded(index);
            headers::strip_hop_by_hop(response.headers_mut());
            // An intermediary speaks its own version downstream (RFC 9110 §6.2): an HTTP/1.0
            // upstream must not turn the client's keep-alive connection into one that closes
            // after every response.
            *response.version_mut() = http::Version::HTTP_11;
            Attempt::Answered(response)
        }
        Ok(Err(e)) => {
            // A connect timeout never left, but its answer is a 504 all the same.
            let timed_out = is_timeout(e.error.as_ref());
            let attempt = if e.not_connected {
                metrics.connect_errors.inc();
                cluster.eject(index);
                Attempt::NotConnected { timed_out }
            } else {
                metrics.broken.inc();
                Attempt::Broken { timed_out }
            };
            let failure = attempt.failure().map(|(failure, _)| failure);
            tracing::warn!(upstream = %cluster.name, instance = %instance.authority, error = %e.error, ?failure, request_id = log_id(), "upstream attempt failed");
            attempt
        }
        Err(Elapsed) => {
            metrics.timeouts.inc();
            tracing::warn!(upstream = %cluster.name, instance = %instance.authority, ?deadline, request_id = log_id(), "upstream response timed out");
            // Not ejected: a slow answer says as much about the request (any client can call
            // a slow endpoint) as about the instance, and ejecting on it would let clients
            // take healthy instances out. A hung instance fails its active health checks, and
            // one that stops accepting fails to connect.
            Attempt::TimedOut
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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use figment::Figment;
    use figment::providers::{Format, Toml};
    use http::Method;
    use http_body_util::BodyExt;

    use super::*;
    use crate::proxy::body::DownstreamBody;
    use crate::telemetry::metrics::Metrics;

    /// What the scripted upstream does with one attempt.
    #[derive(Debug, Clone, Copy)]
    enum Step {
        Answer(u16),
        Refused,
        ConnectTimeout,
        Reset,
        /// Never answers.
        Hang,
        /// Reads the request body to its end (or its error), then resets.
        ReadBodyThenReset,
    }

    /// A transport that plays `steps` in order and records which instance each attempt
    /// went to; an attempt past the script fails the test.
    struct Script {
        steps: Mutex<VecDeque<Step>>,
        sent_to: Mutex<Vec<usize>>,
    }

    impl Script {
        fn new(steps: &[Step]) -> Script {
            Script {
                steps: Mutex::new(steps.iter().copied().collect()),
                sent_to: Mutex::new(Vec::new()),
            }
        }

        fn attempts(&self) -> Vec<usize> {
            self.sent_to.lock().unwrap().clone()
        }
    }

    fn io_error(kind: std::io::ErrorKind, not_connected: bool) -> SendError {
        SendError {
            not_connected,
            error: Box::new(std::io::Error::from(kind)),
        }
    }

    impl Transport for Script {
        fn send(
            &self,
            _cluster: &Cluster,
            index: usize,
            _target: &PathAndQuery,
            request: Request<Body>,
            in_flight: InFlight,
        ) -> impl Future<Output = Result<Response<Body>, SendError>> + Send {
            self.sent_to.lock().unwrap().push(index);
            let step = self.steps.lock().unwrap().pop_front();
            async move {
                let _in_flight = in_flight;
                match step.expect("an attempt the script did not expect") {
                    Step::Answer(status) => Ok(Response::builder()
                        .status(status)
                        .body(Body::empty())
                        .unwrap()),
                    Step::Refused => Err(io_error(std::io::ErrorKind::ConnectionRefused, true)),
                    Step::ConnectTimeout => Err(io_error(std::io::ErrorKind::TimedOut, true)),
                    Step::Reset => Err(io_error(std::io::ErrorKind::ConnectionReset, false)),
                    Step::Hang => std::future::pending().await,
                    Step::ReadBodyThenReset => {
                        let _ = request.into_body().collect().await;
                        Err(io_error(std::io::ErrorKind::ConnectionReset, false))
                    }
                }
            }
        }
    }

    /// Two instances (never dialled: the script stands in for them), `retries` retries.
    fn cluster(retries: u32) -> Arc<Cluster> {
        let toml = format!(
            "[[upstreams]]\nname = \"u\"\ninstances = [\"http://127.0.0.1:1\", \"http://127.0.0.1:2\"]\nretries = {retries}\n"
        );
        let config = crate::config::load_from_figment(&Figment::from(Toml::string(&toml)))
            .expect("valid config");
        Arc::new(Cluster::new(&config.upstreams[0], &Metrics::new()).unwrap())
    }

    fn outbound(method: Method, body: Body, progress: Option<Arc<BodyProgress>>) -> Outbound {
        let body = RequestBody { body, progress };
        let (parts, ()) = Request::builder()
            .method(method)
            .body(())
            .unwrap()
            .into_parts();
        Outbound {
            parts,
            body,
            target: PathAndQuery::from_static("/x"),
            deadline: Duration::from_millis(100),
        }
    }

    async fn run(
        cluster: &Arc<Cluster>,
        script: &Script,
        outbound: Outbound,
    ) -> Result<StatusCode, ProxyError> {
        let mut instance = None;
        let sent = send(script, cluster.clone(), outbound, &mut instance).await;
        assert!(instance.is_some(), "the instance tried is reported");
        sent.map(|response| response.status())
    }

    fn get() -> Outbound {
        outbound(Method::GET, Body::empty(), None)
    }

    fn ejected(cluster: &Cluster) -> Vec<bool> {
        cluster.instance_states().map(|s| s.ejected).collect()
    }

    #[tokio::test]
    async fn a_refused_connection_is_ejected_and_retried_on_the_other_instance() {
        let cluster = cluster(1);
        let script = Script::new(&[Step::Refused, Step::Answer(200)]);
        assert_eq!(run(&cluster, &script, get()).await, Ok(StatusCode::OK));
        let attempts = script.attempts();
        assert_eq!(attempts.len(), 2);
        assert_ne!(attempts[0], attempts[1], "the retry goes elsewhere");
        let first = attempts[0];
        assert!(ejected(&cluster)[first]);
        assert_eq!(cluster.metrics.instances[first].connect_errors.get(), 1);
        assert_eq!(cluster.metrics.retries.get(), 1);
    }

    #[tokio::test]
    async fn a_broken_connection_is_retried_for_a_get_but_not_for_a_post() {
        let cluster = cluster(1);
        let script = Script::new(&[Step::Reset, Step::Answer(200)]);
        assert_eq!(run(&cluster, &script, get()).await, Ok(StatusCode::OK));
        assert_eq!(script.attempts().len(), 2);

        let script = Script::new(&[Step::Reset]);
        let post = outbound(Method::POST, Body::empty(), None);
        assert_eq!(
            run(&cluster, &script, post).await,
            Err(ProxyError::UpstreamUnavailable)
        );
        assert_eq!(
            script.attempts().len(),
            1,
            "it may have reached the upstream"
        );
        assert_eq!(
            ejected(&cluster),
            [false, false],
            "only connect failures eject"
        );
    }

    #[tokio::test]
    async fn a_response_timeout_is_504_neither_retried_nor_ejected() {
        let cluster = cluster(1);
        let script = Script::new(&[Step::Hang]);
        assert_eq!(
            run(&cluster, &script, get()).await,
            Err(ProxyError::UpstreamTimeout)
        );
        let attempts = script.attempts();
        assert_eq!(attempts.len(), 1);
        assert_eq!(cluster.metrics.instances[attempts[0]].timeouts.get(), 1);
        assert_eq!(ejected(&cluster), [false, false]);
    }

    #[tokio::test]
    async fn connect_timeouts_are_504_once_the_retries_are_spent() {
        let cluster = cluster(1);
        let script = Script::new(&[Step::ConnectTimeout, Step::ConnectTimeout]);
        assert_eq!(
            run(&cluster, &script, get()).await,
            Err(ProxyError::UpstreamTimeout)
        );
        assert_eq!(script.attempts().len(), 2);
        assert_eq!(ejected(&cluster), [true, true]);
    }

    #[tokio::test]
    async fn with_every_instance_ejected_the_last_failure_is_reported() {
        let cluster = cluster(3);
        // Both instances refuse: the third attempt has nowhere to go.
        let script = Script::new(&[Step::Refused, Step::Refused]);
        assert_eq!(
            run(&cluster, &script, get()).await,
            Err(ProxyError::UpstreamUnavailable)
        );
        assert_eq!(script.attempts().len(), 2);
        // A new request finds no instance at all.
        let script = Script::new(&[]);
        assert_eq!(
            run_without_instance(&cluster, &script).await,
            Err(ProxyError::NoInstance)
        );
        assert_eq!(cluster.metrics.no_healthy_instance.get(), 1);
    }

    async fn run_without_instance(
        cluster: &Arc<Cluster>,
        script: &Script,
    ) -> Result<StatusCode, ProxyError> {
        let mut instance = None;
        let sent = send(script, cluster.clone(), get(), &mut instance).await;
        assert!(instance.is_none());
        sent.map(|response| response.status())
    }

    #[tokio::test]
    async fn an_unasked_switch_is_502_and_not_retried() {
        let cluster = cluster(1);
        let script = Script::new(&[Step::Answer(101)]);
        assert_eq!(
            run(&cluster, &script, get()).await,
            Err(ProxyError::UpstreamUnavailable)
        );
        assert_eq!(script.attempts().len(), 1);
    }

    #[tokio::test]
    async fn server_errors_are_answers_passed_on_not_retried() {
        let cluster = cluster(1);
        let script = Script::new(&[Step::Answer(503)]);
        assert_eq!(
            run(&cluster, &script, get()).await,
            Ok(StatusCode::SERVICE_UNAVAILABLE)
        );
        let attempts = script.attempts();
        assert_eq!(attempts.len(), 1);
        assert_eq!(
            cluster.metrics.instances[attempts[0]].server_errors.get(),
            1
        );
    }

    #[tokio::test]
    async fn a_streamed_body_is_sent_once() {
        let cluster = cluster(1);
        let script = Script::new(&[Step::Refused]);
        let post = outbound(Method::PUT, Body::from("streamed"), None);
        assert_eq!(
            run(&cluster, &script, post).await,
            Err(ProxyError::UpstreamUnavailable)
        );
        assert_eq!(
            script.attempts().len(),
            1,
            "the body is not kept for a retry"
        );
    }

    #[tokio::test]
    async fn a_broken_client_body_is_the_clients_fault_not_the_instances() {
        let cluster = cluster(1);
        let script = Script::new(&[Step::ReadBodyThenReset]);
        let broken = Body::from_stream(futures_util::stream::iter([
            Ok(bytes::Bytes::from_static(b"abc")),
            Err(std::io::Error::other("bad chunk")),
        ]));
        let (body, progress) = DownstreamBody::new(broken, None, Duration::from_secs(5));
        let put = outbound(Method::PUT, Body::new(body), Some(progress));
        assert_eq!(
            run(&cluster, &script, put).await,
            Err(ProxyError::MalformedBody)
        );
        let attempts = script.attempts();
        assert_eq!(attempts.len(), 1);
        assert_eq!(cluster.metrics.instances[attempts[0]].broken.get(), 0);
        assert_eq!(cluster.metrics.retries.get(), 0);
    }
}
