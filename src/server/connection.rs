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
//! - **rapid reset**: once [`RESET_MIN_REQUESTS`] of a connection's requests have finished
//!   and its client cancelled more than half of them before their response head, it is sent GOAWAY
//!   and closed [`ABUSE_GRACE`] later, whatever is still open (Envoy's premature-reset rule).
//!   hyper's own limit only counts streams reset before they were accepted, so a client that
//!   pauses between its HEADERS and its RST_STREAMs passes it.
//!
//! The timers and the process's shutdown are watched by a [`watchdog`] task of the
//! connection's own, which tells the task serving the connection what to do through one
//! atomic [`Order`]: the serving task polls nothing per wake-up but hyper's connection and
//! that order. Per request the cost is two atomic adds and a reference count; the idle check
//! reads the counters from a timer ticking a quarter of `idle_timeout`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, watch};
use tokio::time::Instant;

/// Requests of a connection that must have finished before its cancellations are judged.
pub const RESET_MIN_REQUESTS: u64 = 100;

/// How long an abusive connection keeps its open streams after its GOAWAY.
pub const ABUSE_GRACE: Duration = Duration::from_secs(1);

/// The connection's timers (from `[limits]`).
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub first_request: Duration,
    pub idle: Duration,
}

/// What the watchdog asks of the serving task; each order only ever raises the last one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Order {
    Serve = 0,
    /// Start hyper's graceful shutdown (idle, or the process is stopping).
    GoAway = 1,
    /// GOAWAY now, then [`Order::CloseAbusive`] after [`ABUSE_GRACE`].
    GoAwayAbusive = 2,
    /// Drop the connection: no request started within the first-request deadline.
    CloseNoRequest = 3,
    /// Drop the connection: a rapid-reset client outstayed its grace.
    CloseAbusive = 4,
}

impl Order {
    fn from_u8(value: u8) -> Order {
        match value {
            0 => Order::Serve,
            1 => Order::GoAway,
            2 => Order::GoAwayAbusive,
            3 => Order::CloseNoRequest,
            _ => Order::CloseAbusive,
        }
    }
}

/// What the service, the watchdog and the serving task share about one connection.
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
    /// The watchdog's standing order, and the serving task's waker for a new one (kept, not
    /// taken, by a wake-up: the serving task registers it once, not on every poll).
    order: AtomicU8,
    order_waker: Mutex<Option<Waker>>,
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
            order: AtomicU8::new(Order::Serve as u8),
            order_waker: Mutex::new(None),
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
        let closed = (self.started.load(Ordering::Relaxed))
            .saturating_sub(self.active.load(Ordering::Relaxed));
        if is_rapid_reset(closed, cancelled) {
            // `notify_one` keeps the permit if the watchdog is not waiting yet; later calls
            // are harmless.
            self.abusive.notify_one();
        }
    }

    /// Raises the standing order and wakes the serving task.
    fn give(&self, order: Order) {
        if self.order.fetch_max(order as u8, Ordering::AcqRel) < order as u8 {
            let waker = self
                .order_waker
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }

    /// Registers the serving task's waker (before it reads the order, so no raise is missed).
    fn register(&self, waker: &Waker) {
        *self.order_waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(waker.clone());
    }

    /// Nothing in progress, and nothing started since `started_before`.
    fn quiet_since(&self, started_before: u64) -> bool {
        self.active.load(Ordering::Relaxed) == 0
            && self.started.load(Ordering::Relaxed) == started_before
    }
}

/// Envoy's premature-reset rule: enough finished requests to judge (answered or cancelled;
/// those still running would make a burst of resets look diluted by requests sent after it),
/// and most of them cancelled.
pub fn is_rapid_reset(finished: u64, cancelled: u64) -> bool {
    finished >= RESET_MIN_REQUESTS && cancelled * 2 > finished
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

/// Ticks per `idle` period: a connection is shut down after this many quiet ticks in a row,
/// so between `idle` and 1.25 × `idle` after its last request.
const IDLE_TICKS: u32 = 4;

/// Watches one connection's deadlines, its cancellations and the process's `shutdown`, and
/// gives the serving task its orders. Ends once it has nothing more to order; the serving
/// task aborts it when the connection ends first.
pub async fn watchdog(
    state: Arc<ConnectionState>,
    deadlines: Deadlines,
    accepted: Instant,
    mut shutdown: watch::Receiver<bool>,
) {
    let first_deadline = accepted + deadlines.first_request;
    let tick = (deadlines.idle / IDLE_TICKS).max(Duration::from_millis(10));
    let mut first_request_pending = true;
    let mut started_at_last_tick = 0;
    let mut quiet_ticks = 0;
    let mut going_away = false;
    loop {
        let next = if first_request_pending {
            first_deadline.min(Instant::now() + tick)
        } else {
            Instant::now() + tick
        };
        tokio::select! {
            _ = shutdown.changed(), if !going_away => {
                state.give(Order::GoAway);
                going_away = true;
            }
            () = state.abusive.notified() => {
                tracing::debug!("connection cancels most of its requests: GOAWAY");
                state.give(Order::GoAwayAbusive);
                tokio::time::sleep(ABUSE_GRACE).await;
                state.give(Order::CloseAbusive);
                return;
            }
            () = tokio::time::sleep_until(next), if !going_away => {
                let started = state.started.load(Ordering::Relaxed);
                if first_request_pending {
                    if started > 0 {
                        first_request_pending = false;
                    } else if Instant::now() >= first_deadline {
                        state.give(Order::CloseNoRequest);
                        return;
                    }
                } else if state.quiet_since(started_at_last_tick) {
                    quiet_ticks += 1;
                    if quiet_ticks >= IDLE_TICKS {
                        state.give(Order::GoAway);
                        going_away = true;
                    }
                } else {
                    quiet_ticks = 0;
                }
                started_at_last_tick = started;
            }
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

/// Drives `connection` to its end, following the watchdog's orders. `graceful` starts hyper's
/// graceful shutdown of the pinned connection.
pub struct Drive<'a, C> {
    connection: Pin<&'a mut C>,
    graceful: fn(Pin<&mut C>),
    state: &'a ConnectionState,
    obeyed: Order,
    /// hyper's graceful shutdown is started once, whichever order asked first.
    going_away: bool,
    /// The waker last registered: a task's waker stays the same from poll to poll, so it is
    /// registered again only if it changed.
    registered: Option<Waker>,
}

impl<'a, C> Drive<'a, C> {
    pub fn new(
        connection: Pin<&'a mut C>,
        graceful: fn(Pin<&mut C>),
        state: &'a ConnectionState,
    ) -> Self {
        Drive {
            connection,
            graceful,
            state,
            obeyed: Order::Serve,
            going_away: false,
            registered: None,
        }
    }
}

impl<C, E> Future for Drive<'_, C>
where
    C: Future<Output = Result<(), E>>,
{
    type Output = End<E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<End<E>> {
        let this = &mut *self;
        if let Poll::Ready(result) = this.connection.as_mut().poll(cx) {
            return Poll::Ready(End::Served(result));
        }
        if !this
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            this.state.register(cx.waker());
            this.registered = Some(cx.waker().clone());
        }
        let order = Order::from_u8(this.state.order.load(Ordering::Acquire));
        if order == this.obeyed {
            return Poll::Pending;
        }
        this.obeyed = order;
        match order {
            Order::Serve => Poll::Pending,
            Order::GoAway | Order::GoAwayAbusive if this.going_away => Poll::Pending,
            Order::GoAway | Order::GoAwayAbusive => {
                (this.graceful)(this.connection.as_mut());
                this.going_away = true;
                // hyper starts sending GOAWAY (or closes an idle HTTP/1 connection) when
                // polled next.
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Order::CloseNoRequest => Poll::Ready(End::NoRequest),
            Order::CloseAbusive => Poll::Ready(End::Abusive),
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
    fn rapid_reset_needs_enough_finished_requests_and_a_majority_cancelled() {
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

    const DEADLINES: Deadlines = Deadlines {
        first_request: Duration::from_secs(10),
        idle: Duration::from_secs(60),
    };

    fn order(state: &ConnectionState) -> Order {
        Order::from_u8(state.order.load(Ordering::Acquire))
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_starts_no_request_is_closed_at_the_first_deadline() {
        let state = state();
        let (_tx, shutdown) = watch::channel(false);
        let began = Instant::now();
        watchdog(state.clone(), DEADLINES, began, shutdown).await;
        assert_eq!(order(&state), Order::CloseNoRequest);
        assert_eq!(began.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_told_to_go_away_once_idle() {
        let state = state();
        let (_tx, shutdown) = watch::channel(false);
        state.start_request().answered();
        let watched = tokio::spawn(watchdog(state.clone(), DEADLINES, Instant::now(), shutdown));
        tokio::time::sleep(Duration::from_secs(59)).await;
        assert_eq!(order(&state), Order::Serve, "not idle for 60 s yet");
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(order(&state), Order::GoAway);
        watched.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_progress_keeps_the_connection_open() {
        let state = state();
        let (_tx, shutdown) = watch::channel(false);
        let _in_progress = state.start_request();
        let watched = tokio::spawn(watchdog(state.clone(), DEADLINES, Instant::now(), shutdown));
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(order(&state), Order::Serve);
        watched.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_tells_the_connection_to_go_away() {
        let state = state();
        let (tx, shutdown) = watch::channel(false);
        state.start_request().answered();
        let watched = tokio::spawn(watchdog(state.clone(), DEADLINES, Instant::now(), shutdown));
        tx.send(true).unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(order(&state), Order::GoAway);
        watched.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_rapid_reset_connection_gets_goaway_then_is_closed() {
        let state = state();
        let (_tx, shutdown) = watch::channel(false);
        for _ in 0..RESET_MIN_REQUESTS {
            drop(state.start_request());
        }
        let began = Instant::now();
        let watched = tokio::spawn(watchdog(state.clone(), DEADLINES, began, shutdown));
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(order(&state), Order::GoAwayAbusive, "GOAWAY first");
        watched.await.unwrap();
        assert_eq!(order(&state), Order::CloseAbusive);
        assert_eq!(began.elapsed(), ABUSE_GRACE);
    }

    /// A connection future that never ends and counts graceful shutdowns.
    struct Forever(u32);
    impl Future for Forever {
        type Output = Result<(), ()>;
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn the_serving_task_obeys_each_order_once() {
        let state = state();
        let mut conn = std::pin::pin!(Forever(0));
        {
            let drive = Drive::new(conn.as_mut(), |mut c| c.0 += 1, &state);
            tokio::pin!(drive);
            assert!(futures_util::poll!(drive.as_mut()).is_pending());
            state.give(Order::GoAway);
            assert!(futures_util::poll!(drive.as_mut()).is_pending());
            assert!(futures_util::poll!(drive.as_mut()).is_pending());
            state.give(Order::CloseAbusive);
            assert_eq!(drive.await, End::Abusive);
        }
        assert_eq!(conn.0, 1, "one graceful shutdown");
    }
}
