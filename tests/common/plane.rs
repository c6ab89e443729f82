//! The data-plane harness: `Upstream`, a test upstream instance that records what reaches it
//! and can be killed and brought back, and the config snippets of gateways that define their
//! own complete `[[upstreams]]` and `[[routes]]` (figment's `merge` replaces the harness's base
//! arrays instead of appending to them).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use meiro_gate::store::Role;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use super::Gateway;
use super::fake::Tasks;
use super::raw::{Raw, raw};

/// One request as an upstream instance saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// The body ended cleanly (not cut off by a broken connection).
    pub complete: bool,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

#[derive(Default)]
struct Log {
    /// TCP connections accepted.
    connections: AtomicUsize,
    /// Request heads that arrived (counted before the body is read or any delay).
    arrived: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
    /// `/healthz` requests, and whether they fail (`503`).
    health_checks: AtomicUsize,
    sick: AtomicBool,
}

/// HTTP/1.1 + h2c server on 127.0.0.1. Answers `200 {"upstream", "path", "query", "version",
/// "body_bytes"}` after `hold` (or `?delay_ms=N`), with `?status=N` as the status. `/healthz`
/// answers at once (`503` once `set_sick(true)`), counted apart. `kill` closes the listener
/// and every open connection.
pub struct Upstream {
    pub name: &'static str,
    pub addr: SocketAddr,
    hold: Duration,
    log: Arc<Log>,
    tasks: Tasks,
    task: Option<JoinHandle<()>>,
}

impl Upstream {
    pub async fn start(name: &'static str) -> Upstream {
        Self::holding(name, Duration::ZERO).await
    }

    /// Every request (but `/healthz`) waits `hold` before its answer.
    pub async fn holding(name: &'static str, hold: Duration) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::<Log>::default();
        let tasks = Tasks::default();
        let task = spawn_upstream(&tasks, listener, name, hold, log.clone());
        Upstream {
            name,
            addr,
            hold,
            log,
            tasks,
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.tasks.check();
        self.log.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.tasks.check();
        self.log.seen.lock().unwrap().len()
    }

    pub fn connections(&self) -> usize {
        self.log.connections.load(Ordering::SeqCst)
    }

    pub fn arrived(&self) -> usize {
        self.log.arrived.load(Ordering::SeqCst)
    }

    pub fn health_checks(&self) -> usize {
        self.log.health_checks.load(Ordering::SeqCst)
    }

    /// Fails (or passes again) its health checks while serving everything else as usual.
    pub fn set_sick(&self, sick: bool) {
        self.log.sick.store(sick, Ordering::SeqCst);
    }

    /// Waits until `n` more health checks have reached this instance. Checks run in rounds, so
    /// when check `k + 1` arrives the verdict of check `k` has been recorded.
    pub async fn await_health_checks(&self, n: usize) {
        let target = self.health_checks() + n;
        crate::eventually!(
            self.health_checks() >= target,
            "{} got no health checks",
            self.name
        );
    }

    /// The instance dies: its listener and every open connection close.
    pub async fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Back on the same port after `kill`, same log.
    pub async fn restart(&mut self) {
        assert!(self.task.is_none(), "{} is running", self.name);
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.task = Some(spawn_upstream(
            &self.tasks,
            listener,
            self.name,
            self.hold,
            self.log.clone(),
        ));
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
        self.tasks.check_on_drop();
    }
}

fn spawn_upstream(
    tasks: &Tasks,
    listener: TcpListener,
    name: &'static str,
    hold: Duration,
    log: Arc<Log>,
) -> JoinHandle<()> {
    let watched = tasks.clone();
    tasks.spawn(async move {
        // Owned by this task: aborting it drops the set, which aborts every connection.
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { return };
                    log.connections.fetch_add(1, Ordering::SeqCst);
                    let log = log.clone();
                    let executor = watched.clone();
                    connections.spawn(watched.watch(async move {
                        let service = hyper::service::service_fn(move |request| {
                            answer(name, hold, log.clone(), request)
                        });
                        let _ = auto::Builder::new(executor)
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }));
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    })
}

async fn answer(
    name: &'static str,
    hold: Duration,
    log: Arc<Log>,
    request: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let health = request.uri().path() == "/healthz";
    if health {
        // Counted before the flag is read: a check counted after `set_sick` sees the new state.
        log.health_checks.fetch_add(1, Ordering::SeqCst);
        let status = if log.sick.load(Ordering::SeqCst) {
            503
        } else {
            200
        };
        return Ok(hyper::Response::builder()
            .status(status)
            .body(Full::new(Bytes::new()))
            .unwrap());
    }
    log.arrived.fetch_add(1, Ordering::SeqCst);
    let (parts, mut body) = request.into_parts();
    let mut bytes = Vec::new();
    let mut complete = true;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    bytes.extend_from_slice(data);
                }
            }
            Err(_) => {
                complete = false;
                break;
            }
        }
    }
    let query = parts.uri.query().map(str::to_owned);
    let param = |key: &str| {
        query
            .as_deref()
            .unwrap_or("")
            .split('&')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let body_bytes = bytes.len();
    log.seen.lock().unwrap().push(Seen {
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        query: query.clone(),
        version: parts.version,
        headers: parts.headers.clone(),
        body: bytes,
        complete,
    });
    let delay = param("delay_ms").map_or(hold, Duration::from_millis);
    tokio::time::sleep(delay).await;
    let json = serde_json::json!({
        "upstream": name,
        "path": parts.uri.path(),
        "query": query,
        "version": format!("{:?}", parts.version),
        "body_bytes": body_bytes,
    });
    Ok(hyper::Response::builder()
        .status(param("status").unwrap_or(200) as u16)
        .header("content-type", "application/json")
        .header("x-upstream", name)
        .body(Full::new(Bytes::from(json.to_string())))
        .unwrap())
}

/// A port nothing listens on (bound, then released).
pub fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

pub fn upstream_toml(name: &str, instances: &[String], settings: &str) -> String {
    let list: Vec<String> = instances.iter().map(|i| format!("{i:?}")).collect();
    format!(
        "\n[[upstreams]]\nname = \"{name}\"\ninstances = [{}]\n{settings}\n",
        list.join(", ")
    )
}

pub fn route_toml(prefix: &str, upstream: &str, settings: &str) -> String {
    format!("\n[[routes]]\nprefix = \"{prefix}\"\nupstream = \"{upstream}\"\n{settings}\n")
}

/// A gateway whose one upstream, `backend` at `url`, serves `routes`: each a prefix and the
/// route's other settings.
pub async fn backend_gateway(url: &str, routes: &[(&str, &str)]) -> Gateway {
    backend_gateway_with(url, routes, "").await
}

/// [`backend_gateway`] with `sections` (TOML) besides.
pub async fn backend_gateway_with(url: &str, routes: &[(&str, &str)], sections: &str) -> Gateway {
    let mut extra = upstream_toml("backend", &[url.to_owned()], "");
    for (prefix, settings) in routes {
        extra.push_str(&route_toml(prefix, "backend", settings));
    }
    Gateway::start_with_layers(url, &[&extra, sections]).await
}

/// A gateway whose config is `[[upstreams]]`/`[[routes]]`/sections given in full by `extra`.
pub async fn gateway(extra: &str) -> Gateway {
    Gateway::start_with("http://127.0.0.1:9", extra).await
}

pub async fn token(gw: &Gateway) -> String {
    gw.add_user("plane@example.com", Role::User).await;
    gw.login("plane@example.com").await
}

/// `GET target` with the given `Host` and `Connection: close`, plus `extra` header lines.
pub async fn raw_get(addr: SocketAddr, host: &str, target: &str, extra: &str) -> Raw {
    let head = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\r\n");
    raw(addr, head).await
}
