//! One downstream connection's life after `accept`: the deadlines of every state it can sit in
//! without a request in progress, and the client cancellations that mark an HTTP/2 rapid
//! reset. hyper bounds the head of an HTTP/1 request (`header_read_timeout`, which also runs
//! while a keep-alive connection waits for its next head) and nothing else; here:
//!
//! - **first request**: a connection must start one within `header_read_timeout` of being
//!   accepted — TLS handshake, protocol detection (hyper-util reads the HTTP/2 preface with no
//!   timer at all) and the first head together — or it is closed;
//! - **idle**: a connection with no request in progress and none started for `idle_timeout`
//!   is shut down gracefully (HTTP/1: closed; HTTP/2: GOAWAY, streams still open finish);
//! - **rapid reset**: once a connection has started [`RESET_MIN_REQUESTS`] requests and its
//!   client cancelled more than half of them before their response head, it is sent GOAWAY
//!   and closed [`ABUSE_GRACE`] later, whatever is still open (Envoy's premature-reset rule).
//!   hyper's own limit only counts streams reset before they were accepted, so a client that
//!   pauses between its HEADERS and its RST_STREAMs passes it.
//!
//! The per-request cost is two atomic adds and a reference count: the idle check reads the
//! counters from a timer ticking a quarter of `idle_timeout`, not a clock per request.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, watch};
use tokio::time::Instant;

/// Requests a connection must have started before its cancellations are judged.
pub const RESET_MIN_REQUESTS: u64 = 100;

/// How long an abusive connection keeps its open streams after its GOAWAY.
pub const ABUSE_GRACE: Duration = Duration::from_secs(1);

/// The connection's timers (from `[limits]`).
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub first_request: Duration,
    pub idle: Duration,
}

/// What the service and the connection task share about one connection.
pub struct ConnectionState {
    /// Requests whose service future is running (no response head yet).
    active: AtomicU64,
    /// Requests handed to the service so far.
    started: AtomicU64,
    /// Requests whose service future was dropped before it produced a response head: on
    /// HTTP/2, a stream the client reset.
    cancelled: AtomicU64,
    /// Woken once when the cancellations cross the rapid-reset threshold.
    abusive: Notify,
    /// The connection's place under `limits.max_connections`, released when the connection
    /// and every tunnel upgraded from it are gone.
    _permit: OwnedSemaphorePermit,
}

impl ConnectionState {
    pub fn new(permit: OwnedSemaphorePermit) -> Arc<ConnectionState> {
        Arc::new(ConnectionState {
            active: AtomicU64::new(0),
            started: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            abusive: Notify::new(),
            _permit: permit,
        })
    }

    /// Counts a request from the moment the service is handed it; the guard ends it.
    pub fn start_request(self: &Arc<Self>) -> RequestGuard {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
        RequestGuard {
            connection: self.clone(),
            answered: false,
        }
    }

    fn cancelled_one(&self) {
        let cancelled = self.cancelled.fetch_add(1, Ordering::Relaxed) + 1;
        if is_rapid_reset(self.started.load(Ordering::Relaxed), cancelled) {
            // `notify_one` keeps the permit if the task is not waiting yet; later calls are
            // harmless (the task has stopped listening).
            self.abusive.notify_one();
        }
    }
}

/// Envoy's premature-reset rule: enough requests to judge, and most of them cancelled.
pub fn is_rapid_reset(started: u64, cancelled: u64) -> bool {
    started >= RESET_MIN_REQUESTS && cancelled * 2 > started
}

/// One request in progress; dropped without [`RequestGuard::answered`], it was cancelled.
pub struct RequestGuard {
    connection: Arc<ConnectionState>,
    answered: bool,
}

impl RequestGuard {
    /// The service produced the response head.
    pub fn answered(mut self) {
        self.answered = true;
    }

    /// The connection this request came on (a tunnel upgraded from it holds this).
    pub fn connection(&self) -> &Arc<ConnectionState> {
        &self.connection
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.connection.active.fetch_sub(1, Ordering::Relaxed);
        if !self.answered {
            self.connection.cancelled_one();
        }
    }
}

/// How a connection ended, for the debug log.
#[derive(Debug, PartialEq, Eq)]
pub enum End<E> {
    /// hyper finished it (the peer closed, an error, or a graceful shutdown completed).
    Served(Result<(), E>),
    /// No request started within the first-request deadline.
    NoRequest,
    /// A rapid-reset client outstayed its grace after GOAWAY.
    Abusive,
}

/// Whether an idle tick saw the connection quiet: nothing in progress, nothing started since
/// the last tick.
fn quiet(state: &ConnectionState, started_at_last_tick: u64) -> bool {
    state.active.load(Ordering::Relaxed) == 0
        && state.started.load(Ordering::Relaxed) == started_at_last_tick
}

/// Ticks per `idle` period: a connection is shut down after this many quiet ticks in a row,
/// so between `idle` and 1.25 × `idle` after its last request.
const IDLE_TICKS: u32 = 4;

/// Drives `connection` to its end under the deadlines above and the process's `shutdown`.
/// `graceful` starts hyper's graceful shutdown of the pinned connection.
pub async fn drive<C, E>(
    mut connection: std::pin::Pin<&mut C>,
    graceful: impl Fn(std::pin::Pin<&mut C>),
    state: &ConnectionState,
    deadlines: Deadlines,
    accepted: Instant,
    mut shutdown: watch::Receiver<bool>,
) -> End<E>
where
    C: Future<Output = Result<(), E>>,
{
    let first_deadline = accepted + deadlines.first_request;
    let tick = (deadlines.idle / IDLE_TICKS).max(Duration::from_millis(10));
    let next_tick = |first_request_pending: bool| {
        let next = Instant::now() + tick;
        if first_request_pending {
            next.min(first_deadline)
        } else {
            next
        }
    };
    let timer = tokio::time::sleep_until(next_tick(true));
    tokio::pin!(timer);
    let mut first_request_pending = true;
    let mut started_at_last_tick = 0;
    let mut quiet_ticks = 0;
    let mut closing = false;
    let mut abusive = false;
    loop {
        tokio::select! {
            biased;
            result = connection.as_mut() => return End::Served(result),
            _ = shutdown.changed(), if !closing => {
                graceful(connection.as_mut());
                closing = true;
            }
            _ = state.abusive.notified(), if !abusive => {
                tracing::debug!("connection cancels most of its requests: GOAWAY");
                graceful(connection.as_mut());
                closing = true;
                abusive = true;
                timer.as_mut().reset(Instant::now() + ABUSE_GRACE);
            }
            () = timer.as_mut() => {
                if abusive {
                    return End::Abusive;
                }
                if closing {
                    // Shutting down: the drain deadline of `serve` bounds the rest.
                    timer.as_mut().reset(Instant::now() + Duration::from_secs(3600));
                    continue;
                }
                let started = state.started.load(Ordering::Relaxed);
                if first_request_pending {
                    if started == 0 {
                        if Instant::now() >= first_deadline {
                            return End::NoRequest;
                        }
                    } else {
                        first_request_pending = false;
                    }
                } else if quiet(state, started_at_last_tick) {
                    quiet_ticks += 1;
                    if quiet_ticks >= IDLE_TICKS {
                        graceful(connection.as_mut());
                        closing = true;
                    }
                } else {
                    quiet_ticks = 0;
                }
                started_at_last_tick = started;
                timer.as_mut().reset(next_tick(first_request_pending));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::Semaphore;

    fn state() -> Arc<ConnectionState> {
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        ConnectionState::new(permit)
    }

    #[test]
    fn rapid_reset_needs_enough_requests_and_a_majority_cancelled() {
        assert!(!is_rapid_reset(99, 99));
        assert!(!is_rapid_reset(100, 50));
        assert!(is_rapid_reset(100, 51));
        assert!(is_rapid_reset(1000, 501));
        assert!(!is_rapid_reset(1000, 500));
    }

    #[test]
    fn guards_count_answered_and_cancelled_requests() {
        let state = state();
        state.start_request().answered();
        drop(state.start_request());
        assert_eq!(state.started.load(Ordering::Relaxed), 2);
        assert_eq!(state.cancelled.load(Ordering::Relaxed), 1);
        assert_eq!(state.active.load(Ordering::Relaxed), 0);
    }

    /// A connection future that never ends and counts graceful shutdowns.
    struct Forever(u32);
    impl Future for Forever {
        type Output = Result<(), ()>;
        fn poll(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), ()>> {
            std::task::Poll::Pending
        }
    }

    const DEADLINES: Deadlines = Deadlines {
        first_request: Duration::from_secs(10),
        idle: Duration::from_secs(60),
    };

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_starts_no_request_is_closed_at_the_first_deadline() {
        let state = state();
        let (_tx, shutdown) = watch::channel(false);
        let mut conn = std::pin::pin!(Forever(0));
        let began = Instant::now();
        let end = drive(conn.as_mut(), |_| {}, &state, DEADLINES, began, shutdown).await;
        assert_eq!(end, End::NoRequest);
        assert_eq!(began.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_shut_down_gracefully_once() {
        let state = state();
        let (_tx, shutdown) = watch::channel(false);
        state.start_request().answered();
        let mut conn = std::pin::pin!(Forever(0));
        let began = Instant::now();
        let driven = drive(
            conn.as_mut(),
            |mut c| {
                c.0 += 1;
                assert_eq!(c.0, 1, "one graceful shutdown");
            },
            &state,
            DEADLINES,
            began,
            shutdown,
        );
        // Forever never ends: the drive is cut off after a while and the shutdowns counted.
        let _ = tokio::time::timeout(Duration::from_secs(600), driven).await;
        assert_eq!(conn.0, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_progress_keeps_the_connection_open() {
        let state = state();
        let (_tx, shutdown) = watch::channel(false);
        let _in_progress = state.start_request();
        let mut conn = std::pin::pin!(Forever(0));
        let driven = drive(
            conn.as_mut(),
            |mut c| c.0 += 1,
            &state,
            DEADLINES,
            Instant::now(),
            shutdown,
        );
        let _ = tokio::time::timeout(Duration::from_secs(600), driven).await;
        assert_eq!(conn.0, 0, "shut down with a request in progress");
    }

    #[tokio::test(start_paused = true)]
    async fn a_rapid_reset_connection_gets_goaway_then_is_closed() {
        let state = state();
        let (_tx, shutdown) = watch::channel(false);
        for _ in 0..RESET_MIN_REQUESTS {
            drop(state.start_request());
        }
        let mut conn = std::pin::pin!(Forever(0));
        let began = Instant::now();
        let end = drive(
            conn.as_mut(),
            |mut c| c.0 += 1,
            &state,
            DEADLINES,
            began,
            shutdown,
        )
        .await;
        assert_eq!(end, End::Abusive);
        assert_eq!(conn.0, 1, "GOAWAY first");
        assert_eq!(began.elapsed(), ABUSE_GRACE);
    }
}
