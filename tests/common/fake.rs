//! The tasks of a fake server, watched: a panic in any of them is kept and raised again in the
//! test that owns the fake (when it asks the fake for what it recorded, and when it drops the
//! fake), instead of being swallowed by tokio while the test sees a hang or a closed
//! connection.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::task::JoinHandle;

/// Shared by a fake and every task it runs; the first panic of any of them is kept.
#[derive(Clone, Default)]
pub struct Tasks {
    panic: Arc<Mutex<Option<String>>>,
}

impl Tasks {
    /// `future`, with a panic inside it kept here instead of unwinding its task.
    pub fn watch<F: Future<Output = ()>>(&self, future: F) -> Watched<F> {
        Watched {
            future: Box::pin(future),
            tasks: self.clone(),
        }
    }

    /// `tokio::spawn` of [`Tasks::watch`].
    pub fn spawn<F>(&self, future: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        tokio::spawn(self.watch(future))
    }

    /// Panics in the caller if a task of the fake has panicked.
    pub fn check(&self) {
        let kept = self.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(message) = kept {
            panic!("a task of a fake server panicked: {message}");
        }
    }

    /// [`Tasks::check`] for a fake's `Drop`: not while the test already unwinds (a second
    /// panic would abort the process and hide the first).
    pub fn check_on_drop(&self) {
        if !std::thread::panicking() {
            self.check();
        }
    }

    fn keep(&self, payload: Box<dyn Any + Send>) {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(a panic without a message)".to_owned());
        self.panic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(message);
    }
}

/// hyper's executor for the tasks it spawns itself (an HTTP/2 connection's streams), watched.
impl<F> hyper::rt::Executor<F> for Tasks
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        self.spawn(async move {
            future.await;
        });
    }
}

/// A future whose panic is kept by its [`Tasks`]; it then ends as if it had returned.
pub struct Watched<F> {
    future: Pin<Box<F>>,
    tasks: Tasks,
}

impl<F: Future<Output = ()>> Future for Watched<F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        match std::panic::catch_unwind(AssertUnwindSafe(|| this.future.as_mut().poll(cx))) {
            Ok(poll) => poll,
            Err(payload) => {
                this.tasks.keep(payload);
                Poll::Ready(())
            }
        }
    }
}

/// A fake's main task: aborted when dropped, and then its panics, if any, raised in the test.
pub struct FakeTask {
    pub tasks: Tasks,
    handle: JoinHandle<()>,
}

impl FakeTask {
    pub fn new(tasks: Tasks, handle: JoinHandle<()>) -> FakeTask {
        FakeTask { tasks, handle }
    }

    pub fn abort(&self) {
        self.handle.abort();
    }
}

impl Drop for FakeTask {
    fn drop(&mut self) {
        self.handle.abort();
        self.tasks.check_on_drop();
    }
}

/// A fake HTTP/1.1 + h2c server on 127.0.0.1:0 that answers every request with `handler`;
/// its tasks, and those hyper spawns for it, are watched.
pub async fn serve_http<H, F, B>(handler: H) -> (std::net::SocketAddr, FakeTask)
where
    H: Fn(hyper::Request<hyper::body::Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = hyper::Response<B>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tasks = Tasks::default();
    let watched = tasks.clone();
    let task = tasks.spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            let executor = watched.clone();
            watched.spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let answer = handler(request);
                    async move { Ok::<_, std::convert::Infallible>(answer.await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(executor)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, FakeTask::new(tasks, task))
}

/// An upstream whose every response is an endless event stream: a chunk every 50 ms, no
/// declared length.
pub async fn endless_event_stream() -> (std::net::SocketAddr, FakeTask) {
    serve_http(|_request| async {
        let ticks = futures_util::stream::unfold(0u64, |n| async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let chunk = hyper::body::Frame::data(bytes::Bytes::from(format!("data: {n}\n\n")));
            Some((Ok::<_, std::convert::Infallible>(chunk), n + 1))
        });
        hyper::Response::builder()
            .header("content-type", "text/event-stream")
            .body(http_body_util::StreamBody::new(ticks))
            .unwrap()
    })
    .await
}
