//! The production data plane over real sockets: routing (longest prefix, host, strip_prefix,
//! max_body, per-route timeout), balancing, passive ejection and active health checks, safe
//! retries, response-head timeouts, WebSocket, TLS with ALPN and certificate reload, slowloris,
//! framing checks, CORS, header and connection limits, HTTP/2 upstreams, `Expect: 100-continue`.
//!
//! Every gateway here defines its own complete `[[upstreams]]` and `[[routes]]`: figment's
//! `merge` replaces the harness's base arrays instead of appending to them.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::raw::{Raw, find, parse_response, raw, read_response, read_until_closed};
use common::tls::{TestCert, self_signed, tls_connect, write_cert};
use common::ws::{next_text, ws_echo};
use common::{Gateway, message};
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Method, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use meiro_gate::store::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};

// ---------------------------------------------------------------------------------------------
// A test upstream that records what reaches it and can be killed and brought back.

/// One request as an upstream instance saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    query: Option<String>,
    version: Version,
    headers: HeaderMap,
    body: Vec<u8>,
    /// The body ended cleanly (not cut off by a broken connection).
    complete: bool,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
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
struct Upstream {
    name: &'static str,
    addr: SocketAddr,
    hold: Duration,
    log: Arc<Log>,
    task: Option<JoinHandle<()>>,
}

impl Upstream {
    async fn start(name: &'static str) -> Upstream {
        Self::holding(name, Duration::ZERO).await
    }

    /// Every request (but `/healthz`) waits `hold` before its answer.
    async fn holding(name: &'static str, hold: Duration) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::<Log>::default();
        let task = spawn_upstream(listener, name, hold, log.clone());
        Upstream {
            name,
            addr,
            hold,
            log,
            task: Some(task),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.log.seen.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.log.seen.lock().unwrap().len()
    }

    fn connections(&self) -> usize {
        self.log.connections.load(Ordering::SeqCst)
    }

    fn arrived(&self) -> usize {
        self.log.arrived.load(Ordering::SeqCst)
    }

    fn health_checks(&self) -> usize {
        self.log.health_checks.load(Ordering::SeqCst)
    }

    /// Fails (or passes again) its health checks while serving everything else as usual.
    fn set_sick(&self, sick: bool) {
        self.log.sick.store(sick, Ordering::SeqCst);
    }

    /// Waits until `n` more health checks have reached this instance. Checks run in rounds, so
    /// when check `k + 1` arrives the verdict of check `k` has been recorded.
    async fn await_health_checks(&self, n: usize) {
        let target = self.health_checks() + n;
        eventually!(
            self.health_checks() >= target,
            "{} got no health checks",
            self.name
        );
    }

    /// The instance dies: its listener and every open connection close.
    async fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Back on the same port after `kill`, same log.
    async fn restart(&mut self) {
        assert!(self.task.is_none(), "{} is running", self.name);
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.task = Some(spawn_upstream(
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
    }
}

fn spawn_upstream(
    listener: TcpListener,
    name: &'static str,
    hold: Duration,
    log: Arc<Log>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        // Owned by this task: aborting it drops the set, which aborts every connection.
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { return };
                    log.connections.fetch_add(1, Ordering::SeqCst);
                    let log = log.clone();
                    connections.spawn(async move {
                        let service = hyper::service::service_fn(move |request| {
                            answer(name, hold, log.clone(), request)
                        });
                        let _ = auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
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
fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Config snippets.

fn upstream_toml(name: &str, instances: &[String], settings: &str) -> String {
    let list: Vec<String> = instances.iter().map(|i| format!("{i:?}")).collect();
    format!(
        "\n[[upstreams]]\nname = \"{name}\"\ninstances = [{}]\n{settings}\n",
        list.join(", ")
    )
}

fn route_toml(prefix: &str, upstream: &str, settings: &str) -> String {
    format!("\n[[routes]]\nprefix = \"{prefix}\"\nupstream = \"{upstream}\"\n{settings}\n")
}

/// A gateway whose config is `[[upstreams]]`/`[[routes]]`/sections given in full by `extra`.
async fn gateway(extra: &str) -> Gateway {
    Gateway::start_with("http://127.0.0.1:9", extra).await
}

async fn token(gw: &Gateway) -> String {
    gw.add_user("plane@example.com", Role::User).await;
    gw.login("plane@example.com").await
}

/// `GET target` with the given `Host` and `Connection: close`, plus `extra` header lines.
async fn raw_get(addr: SocketAddr, host: &str, target: &str, extra: &str) -> Raw {
    let head = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\r\n");
    raw(addr, head).await
}

// ---------------------------------------------------------------------------------------------
// 1. Routes.

#[tokio::test]
async fn longest_prefix_host_and_strip_prefix_routing() {
    let root = Upstream::start("root").await;
    let api = Upstream::start("api").await;
    let v2 = Upstream::start("v2").await;
    let hosted = Upstream::start("hosted").await;
    let stripped = Upstream::start("stripped").await;
    let extra = [
        upstream_toml("root", &[root.url()], ""),
        upstream_toml("api", &[api.url()], ""),
        upstream_toml("v2", &[v2.url()], ""),
        upstream_toml("hosted", &[hosted.url()], ""),
        upstream_toml("stripped", &[stripped.url()], ""),
        route_toml("/", "root", "public = true"),
        route_toml("/api", "api", "public = true"),
        route_toml("/api/v2", "v2", "public = true"),
        route_toml(
            "/svc",
            "hosted",
            "public = true\nhost = \"Svc.Example.com\"",
        ),
        route_toml("/strip", "stripped", "public = true\nstrip_prefix = true"),
    ]
    .concat();
    let gw = gateway(&extra).await;

    // (Host, target) → (upstream, path it receives, query it receives)
    let cases: &[(&str, &str, &str, &str, Option<&str>)] = &[
        ("x", "/api/v2/users", "v2", "/api/v2/users", None),
        ("x", "/api/v2", "v2", "/api/v2", None),
        (
            "x",
            "/api/users?page=2",
            "api",
            "/api/users",
            Some("page=2"),
        ),
        ("x", "/api", "api", "/api", None),
        ("x", "/api/v2x", "api", "/api/v2x", None),
        ("x", "/apix", "root", "/apix", None),
        ("x", "/other", "root", "/other", None),
        // A host route serves its host only: any case, with or without a port.
        ("svc.example.com", "/svc/a", "hosted", "/svc/a", None),
        ("SVC.Example.COM:8443", "/svc/a", "hosted", "/svc/a", None),
        ("svc.example.com:80", "/svc", "hosted", "/svc", None),
        ("other.example.com", "/svc/a", "root", "/svc/a", None),
        ("svc.example.com.evil", "/svc/a", "root", "/svc/a", None),
        ("svc.example.com", "/api/x", "api", "/api/x", None),
        // strip_prefix: the prefix goes, the query stays; the bare prefix becomes "/".
        ("x", "/strip/x?q=1", "stripped", "/x", Some("q=1")),
        ("x", "/strip/deep/er", "stripped", "/deep/er", None),
        ("x", "/strip", "stripped", "/", None),
        ("x", "/strip?q=2", "stripped", "/", Some("q=2")),
        ("x", "/stripx", "root", "/stripx", None),
    ];
    for &(host, target, upstream, path, query) in cases {
        let response = raw_get(gw.addr, host, target, "").await;
        assert_eq!(response.status, 200, "{host} {target}");
        let body = response.json();
        assert_eq!(body["upstream"], upstream, "{host} {target}");
        assert_eq!(body["path"], path, "{host} {target}");
        assert_eq!(body["query"].as_str(), query, "{host} {target}");
    }
    // Each upstream saw exactly the requests routed to it.
    let routed = |name: &str| cases.iter().filter(|c| c.2 == name).count();
    for up in [&root, &api, &v2, &hosted, &stripped] {
        assert_eq!(up.count(), routed(up.name), "{}", up.name);
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn max_body_is_413_for_declared_and_streamed_bodies() {
    let up = Upstream::start("up").await;
    let extra = [
        upstream_toml("backend", &[up.url()], ""),
        route_toml("/", "backend", "public = true"),
        route_toml("/upload", "backend", "public = true\nmax_body = \"1KiB\""),
    ]
    .concat();
    let gw = gateway(&extra).await;

    // Declared over the limit: refused at once, before any byte of the body is read.
    let started = Instant::now();
    let response = raw(
        gw.addr,
        "POST /upload/declared HTTP/1.1\r\nHost: x\r\nContent-Length: 2048\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 413);
    assert_eq!(response.message(), "Request body is too large");
    assert!(
        response
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/json"))
    );
    assert!(started.elapsed() < Duration::from_secs(2));

    // At the limit: forwarded whole.
    let at_limit = format!(
        "POST /upload/exact HTTP/1.1\r\nHost: x\r\nContent-Length: 1024\r\nConnection: close\r\n\r\n{}",
        "a".repeat(1024)
    );
    let response = raw(gw.addr, at_limit).await;
    assert_eq!(response.status, 200);
    let exact = up.seen().into_iter().find(|s| s.path == "/upload/exact");
    let exact = exact.expect("the upstream got /upload/exact");
    assert_eq!((exact.body.len(), exact.complete), (1024, true));

    // Chunked, growing past the limit: 413, and the upstream never gets a body that ends
    // cleanly (a cut-off body that looks complete would be processed as a truncated upload).
    let mut chunked = String::from(
        "POST /upload/chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    );
    for _ in 0..4 {
        chunked.push_str(&format!("200\r\n{}\r\n", "b".repeat(512)));
    }
    chunked.push_str("0\r\n\r\n");
    let response = raw(gw.addr, chunked).await;
    assert_eq!(response.status, 413);
    assert_eq!(response.message(), "Request body is too large");
    tokio::time::sleep(Duration::from_millis(200)).await;
    for seen in up.seen().iter().filter(|s| s.path == "/upload/chunked") {
        assert!(
            !seen.complete && seen.body.len() <= 1024,
            "the upstream got a complete body: {} bytes",
            seen.body.len()
        );
    }
    // Without the limit the same chunked body goes through.
    let mut unlimited = String::from(
        "POST /free HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    );
    for _ in 0..4 {
        unlimited.push_str(&format!("200\r\n{}\r\n", "b".repeat(512)));
    }
    unlimited.push_str("0\r\n\r\n");
    assert_eq!(raw(gw.addr, unlimited).await.status, 200);
    assert_eq!(up.seen().last().unwrap().body.len(), 2048);
    gw.shutdown().await;
}

// 1 + 5: per-route timeout and the cluster's response-head timeout.
#[tokio::test]
async fn response_head_timeouts_are_504() {
    let up = Upstream::start("up").await;
    let extra = [
        upstream_toml("quick", &[up.url()], "response_timeout = \"300ms\""),
        upstream_toml("patient", &[up.url()], "response_timeout = \"5s\""),
        upstream_toml("patient2", &[up.url()], "response_timeout = \"5s\""),
        route_toml("/quick", "quick", "public = true"),
        route_toml("/patient", "patient", "public = true"),
        route_toml("/short", "patient2", "public = true\ntimeout = \"300ms\""),
    ]
    .concat();
    let gw = gateway(&extra).await;

    let within = gw
        .http
        .get(gw.url("/patient/x?delay_ms=600"))
        .send()
        .await
        .unwrap();
    assert_eq!(within.status(), 200, "600 ms is within the 5 s timeout");

    for target in ["/quick/x?delay_ms=2000", "/short/x?delay_ms=2000"] {
        let started = Instant::now();
        let response = gw.http.get(gw.url(target)).send().await.unwrap();
        let elapsed = started.elapsed();
        assert_eq!(response.status(), 504, "{target}");
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
        assert_eq!(message(response).await, "Upstream timed out");
        assert!(
            elapsed >= Duration::from_millis(250) && elapsed < Duration::from_millis(1500),
            "{target}: 504 after {elapsed:?}, the timeout is 300 ms"
        );
    }
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 2. Normalization.

#[tokio::test]
async fn normalization_bypasses_of_public_routes_require_a_token() {
    let up = Upstream::start("up").await;
    let extra = [
        upstream_toml("backend", &[up.url()], ""),
        route_toml("/", "backend", ""),
        route_toml("/public", "backend", "public = true"),
        route_toml("/pub", "backend", "public = true\nstrip_prefix = true"),
    ]
    .concat();
    let gw = gateway(&extra).await;
    let token = token(&gw).await;

    for target in [
        "/public/../users/invite",
        "/public/%2e%2e/x",
        "/public/%2E%2E/x",
        "/public/./../x",
        "//x",
        "/pub/../x",
        "/pub/%2e%2e/admin",
    ] {
        let response = raw_get(gw.addr, "x", target, "").await;
        assert_eq!(response.status, 401, "{target}");
        assert_eq!(response.message(), "Missing access token", "{target}");
    }
    for target in ["/public%2f..%2fx", "/public/%2F../x", "/public\\..\\x"] {
        let response = raw_get(gw.addr, "x", target, "").await;
        assert_eq!(response.status, 400, "{target}");
        assert_eq!(response.message(), "Invalid request path", "{target}");
    }
    assert_eq!(
        up.count(),
        0,
        "nothing reached the upstream without a token"
    );

    // With a token the normalized path is what the upstream gets.
    let auth = format!("X-Access-Token: {token}\r\n");
    let response = raw_get(gw.addr, "x", "/public/%2e%2e/x?a=%2e", &auth).await;
    assert_eq!(response.status, 200);
    let seen = up.seen().pop().unwrap();
    assert_eq!(
        (seen.path.as_str(), seen.query.as_deref()),
        ("/x", Some("a=%2e"))
    );
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 3. Balancing.

#[tokio::test]
async fn round_robin_spreads_evenly() {
    let ups = [
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    ];
    let urls: Vec<String> = ups.iter().map(Upstream::url).collect();
    let extra = [
        upstream_toml("pool", &urls, "balance = \"round_robin\""),
        route_toml("/", "pool", "public = true"),
    ]
    .concat();
    let gw = gateway(&extra).await;
    for i in 0..30 {
        let response = gw
            .http
            .get(gw.url(&format!("/rr/{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let counts: Vec<usize> = ups.iter().map(Upstream::count).collect();
    assert_eq!(counts, [10, 10, 10]);
    gw.shutdown().await;
}

#[tokio::test]
async fn least_request_prefers_the_idle_instance() {
    // `busy` holds every request 2 s; `idle` answers at once.
    let busy = Upstream::holding("busy", Duration::from_millis(2000)).await;
    let idle = Upstream::start("idle").await;
    let extra = [
        upstream_toml(
            "pool",
            &[busy.url(), idle.url()],
            "balance = \"least_request\"\nresponse_timeout = \"5s\"",
        ),
        route_toml("/", "pool", "public = true"),
    ]
    .concat();
    let gw = gateway(&extra).await;

    // Start requests one by one until two are stuck in flight at `busy`.
    let mut held = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while busy.arrived() < 2 {
        assert!(Instant::now() < deadline, "no request ever reached busy");
        let http = gw.http.clone();
        let url = gw.url(&format!("/held/{}", held.len()));
        held.push(tokio::spawn(async move {
            http.get(url).send().await.unwrap().status()
        }));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let busy_before = busy.arrived();
    let idle_before = idle.count();
    for i in 0..20 {
        let response = gw
            .http
            .get(gw.url(&format!("/quick/{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-upstream"], "idle", "request {i}");
    }
    assert_eq!(busy.arrived(), busy_before, "busy got new requests");
    assert_eq!(idle.count(), idle_before + 20);
    for task in held {
        assert_eq!(task.await.unwrap(), 200);
    }
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 4. Failure handling.

#[tokio::test]
async fn a_killed_instance_fails_no_get_and_is_ejected() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let mut c = Upstream::start("c").await;
    let extra = [
        upstream_toml(
            "pool",
            &[a.url(), b.url(), c.url()],
            "retries = 2\neject_base = \"30s\"\neject_max = \"30s\"\nconnect_timeout = \"500ms\"",
        ),
        route_toml("/", "pool", "public = true"),
    ]
    .concat();
    let gw = gateway(&extra).await;

    // Five clients, ten GETs each; c dies once a dozen have been answered.
    let answered = Arc::new(AtomicUsize::new(0));
    let mut clients = JoinSet::new();
    for client in 0..5 {
        let (http, base, answered) = (gw.http.clone(), gw.url(""), answered.clone());
        clients.spawn(async move {
            let mut failures = Vec::new();
            for i in 0..10 {
                let response = http.get(format!("{base}/run/{client}/{i}")).send().await;
                match response {
                    Ok(r) if r.status() == 200 => {}
                    Ok(r) => failures.push(format!("{client}/{i}: {}", r.status())),
                    Err(e) => failures.push(format!("{client}/{i}: {e}")),
                }
                answered.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            failures
        });
    }
    eventually!(
        answered.load(Ordering::SeqCst) >= 12,
        "the run did not start"
    );
    c.kill().await;
    let mut failures = Vec::new();
    while let Some(result) = clients.join_next().await {
        failures.extend(result.unwrap());
    }
    assert!(failures.is_empty(), "failed GETs: {failures:?}");
    assert!(c.count() > 0, "c served before it died");
    // Every GET was served; a GET that c had already counted when it died is legitimately
    // served again elsewhere (idempotent, connection broken), at most once per client in flight.
    let served = a.count() + b.count() + c.count();
    assert!((50..=55).contains(&served), "served {served} for 50 GETs");

    // c is back on its port, but its ejection (30 s) still holds: not one request tries it.
    let served_before = c.count();
    c.restart().await;
    for i in 0..30 {
        let response = gw
            .http
            .get(gw.url(&format!("/after/{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    assert_eq!(c.count(), served_before, "an ejected instance got traffic");
    assert_eq!(c.arrived(), served_before);
    gw.shutdown().await;
}

/// `n` sequential GETs, all of which must be 200.
async fn get_all_ok(gw: &Gateway, label: &str, n: usize) {
    for i in 0..n {
        let response = gw
            .http
            .get(gw.url(&format!("/{label}/{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{label} {i}");
    }
}

#[tokio::test]
async fn health_checks_take_instances_out_and_back() {
    let mut ups = [
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    ];
    let urls: Vec<String> = ups.iter().map(Upstream::url).collect();
    // A 30 s ejection: whatever comes back within this test came back through the checks.
    let settings = "retries = 2\neject_base = \"30s\"\neject_max = \"30s\"\n\
        [upstreams.health]\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"200ms\"\n\
        healthy_threshold = 2\nunhealthy_threshold = 2";
    let extra = [
        upstream_toml("pool", &urls, settings),
        route_toml("/", "pool", "public = true"),
    ]
    .concat();
    let gw = gateway(&extra).await;

    // c fails its checks (and would serve fine): it gets no traffic.
    ups[2].set_sick(true);
    ups[2].await_health_checks(3).await;
    get_all_ok(&gw, "sick", 30).await;
    assert_eq!(
        ups[2].count(),
        0,
        "an instance failing its checks got traffic"
    );

    // Its checks pass again: it is back in the rotation.
    ups[2].set_sick(false);
    ups[2].await_health_checks(3).await;
    get_all_ok(&gw, "well", 30).await;
    assert_eq!(
        ups[2].count(),
        10,
        "a healthy instance again gets its share"
    );

    // Every instance dies, with no request to notice it: the checks alone make the gateway
    // unready, and the first request is a 503 at once instead of three failed connections.
    for up in &mut ups {
        up.kill().await;
    }
    eventually!(
        gw.http
            .get(gw.admin_url("/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            == 503,
        "still ready with every instance down"
    );
    let started = Instant::now();
    let response = gw.http.get(gw.url("/down")).send().await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(response.status(), 503);
    assert_eq!(message(response).await, "No upstream instance available");

    // b comes back on its port: the checks take it back (it was never ejected: no request
    // ever failed on it).
    let before = ups[1].count();
    ups[1].restart().await;
    eventually!(
        gw.http.get(gw.url("/again")).send().await.unwrap().status() == 200,
        "a recovered instance is not used"
    );
    assert!(ups[1].count() > before);
    let ready = gw.http.get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    gw.shutdown().await;
}

/// Accepts connections and reads each request head (and a little of its body), then closes
/// without an answer: a request that broke after it was written.
async fn black_hole() -> (SocketAddr, Arc<Mutex<Vec<String>>>, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = heads.clone();
    let task = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            let log = log.clone();
            connections.spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while find(&buf, b"\r\n\r\n").is_none() {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ =
                    tokio::time::timeout(Duration::from_millis(20), stream.read(&mut chunk)).await;
                let head = String::from_utf8_lossy(&buf).into_owned();
                log.lock()
                    .unwrap()
                    .push(head.lines().next().unwrap().to_owned());
            });
        }
    });
    (addr, heads, task)
}

#[tokio::test]
async fn posts_are_never_sent_twice_and_broken_gets_are_retried() {
    let live = Upstream::start("live").await;
    let dead = closed_port();
    let (hole, hole_heads, hole_task) = black_hole().await;
    let settings = "retries = 2\neject_base = \"30s\"\neject_max = \"30s\"";
    let extra = [
        upstream_toml(
            "deadpool",
            &[format!("http://{dead}"), live.url()],
            settings,
        ),
        upstream_toml(
            "holepool",
            &[format!("http://{hole}"), live.url()],
            settings,
        ),
        route_toml("/dead", "deadpool", "public = true"),
        route_toml("/hole", "holepool", "public = true"),
    ]
    .concat();
    let gw = gateway(&extra).await;
    let post = |path: &str, body: String| gw.http.post(gw.url(path)).body(body).send();
    let live_bodies = |prefix: &str| -> Vec<String> {
        live.seen()
            .into_iter()
            .filter(|s| s.path.starts_with(prefix) && s.method == Method::POST)
            .map(|s| String::from_utf8(s.body).unwrap())
            .collect()
    };

    // Round robin starts at the dead instance: the first POST fails cleanly, not retried.
    let response = post("/dead/order", "order-0".into()).await.unwrap();
    assert_eq!(response.status(), 502);
    assert_eq!(message(response).await, "Upstream unavailable");
    assert!(live_bodies("/dead").is_empty(), "the POST was replayed");
    // The dead instance is ejected: the next POSTs all reach the live one, once each.
    for i in 1..=4 {
        let response = post("/dead/order", format!("order-{i}")).await.unwrap();
        assert_eq!(response.status(), 200);
    }
    assert_eq!(
        live_bodies("/dead"),
        ["order-1", "order-2", "order-3", "order-4"]
    );

    // The black hole breaks every connection after reading the request: idempotent GETs are
    // retried on the live instance, POSTs are not (they may have been processed).
    for i in 0..6 {
        let response = gw
            .http
            .get(gw.url(&format!("/hole/get/{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "GET {i}");
    }
    let hole_gets = hole_heads.lock().unwrap().len();
    assert!(hole_gets > 0, "the black hole was never tried");
    let mut failed = Vec::new();
    for i in 0..6 {
        let body = format!("hole-{i}");
        let response = post("/hole/post", body.clone()).await.unwrap();
        match response.status().as_u16() {
            200 => {}
            502 => {
                assert_eq!(message(response).await, "Upstream unavailable");
                failed.push(body);
            }
            other => panic!("POST {i}: {other}"),
        }
    }
    let hole_posts = hole_heads
        .lock()
        .unwrap()
        .iter()
        .filter(|h| h.starts_with("POST"))
        .count();
    assert!(hole_posts > 0, "no POST reached the black hole");
    assert_eq!(
        failed.len(),
        hole_posts,
        "each POST the hole broke is a 502"
    );
    let delivered = live_bodies("/hole");
    assert_eq!(delivered.len(), 6 - failed.len());
    for body in &failed {
        assert!(!delivered.contains(body), "{body} was sent twice");
    }
    let mut unique = delivered.clone();
    unique.dedup();
    assert_eq!(unique, delivered, "a POST reached the live instance twice");

    // A POST without a body could be replayed, but it is not idempotent: a broken one is
    // not sent again either.
    let mut broken = 0;
    for i in 0..6 {
        let path = format!("/hole/empty/{i}");
        let response = gw.http.post(gw.url(&path)).send().await.unwrap();
        match response.status().as_u16() {
            200 => assert_eq!(live.seen().iter().filter(|s| s.path == path).count(), 1),
            502 => {
                broken += 1;
                assert!(
                    live.seen().iter().all(|s| s.path != path),
                    "{path} was retried"
                );
            }
            other => panic!("{path}: {other}"),
        }
    }
    assert!(broken > 0, "no empty POST reached the black hole");
    gw.shutdown().await;
    hole_task.abort();
}

// ---------------------------------------------------------------------------------------------
// 6. WebSocket.

#[tokio::test]
async fn websocket_echo_through_the_gateway_with_a_token_only() {
    let (echo, handshakes, echo_task) = ws_echo().await;
    let gw = Gateway::start_with(&format!("http://{echo}"), "").await;
    let user = gw.add_user("ws@example.com", Role::User).await;
    let token = gw.login("ws@example.com").await;

    let url = format!("ws://{}/ws/chat", gw.addr);
    let mut request = url.as_str().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("x-access-token", token.parse().unwrap());
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (mut ws, response) = tokio_tungstenite::client_async(request, stream)
        .await
        .expect("the upgrade succeeds");
    assert_eq!(response.status(), 101);

    assert_eq!(next_text(&mut ws).await, "welcome", "server → client");
    for text in ["hello", "second message", &"long ".repeat(10_000)] {
        ws.send(Message::text(text)).await.unwrap();
        assert_eq!(next_text(&mut ws).await, text, "client → server → client");
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed.into_data().as_ref(), [0u8, 1, 2, 255]);
    ws.close(None).await.unwrap();

    let seen = handshakes.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["x-meiro-user-id"], user.id.to_string().as_str());
    assert_eq!(seen[0]["x-meiro-user-email"], "ws@example.com");

    // Without a token: 401, and no upgrade ever reaches the upstream.
    let request = url.as_str().into_client_request().unwrap();
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    match tokio_tungstenite::client_async(request, stream).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401),
        Err(e) => panic!("expected an HTTP 401, got {e}"),
        Ok(_) => panic!("upgraded without a token"),
    }
    assert_eq!(handshakes.lock().unwrap().len(), 1);
    gw.shutdown().await;
    echo_task.abort();
}

// ---------------------------------------------------------------------------------------------
// 7. TLS.

fn peer_leaf(stream: &tokio_rustls::client::TlsStream<TcpStream>) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn https_client(trusted: &TestCert, gw: &Gateway, http1: bool) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(trusted.cert_pem.as_bytes()).unwrap()])
        .resolve("localhost", gw.addr);
    if http1 {
        builder = builder.http1_only();
    }
    builder.build().unwrap()
}

#[tokio::test]
async fn tls_with_alpn_h2_and_certificate_reload() {
    let up = Upstream::start("up").await;
    let certs = tempfile::tempdir().unwrap();
    let first = self_signed("meiro-gate test one");
    let second = self_signed("meiro-gate test two");
    let third = self_signed("meiro-gate test three");
    write_cert(certs.path(), &first);
    let extra = format!(
        "[server.tls]\ncert = \"{dir}/cert.pem\"\nkey = \"{dir}/key.pem\"\n{}{}",
        upstream_toml("backend", &[up.url()], ""),
        route_toml("/", "backend", "public = true"),
        dir = certs.path().display()
    );
    let gw = gateway(&extra).await;
    let url = |path: &str| format!("https://localhost:{}{path}", gw.addr.port());

    // HTTP/2 by ALPN.
    let h2 = https_client(&first, &gw, false);
    let response = h2.get(url("/tls/h2")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let seen = up.seen().pop().unwrap();
    assert_eq!(seen.path, "/tls/h2");
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));

    // HTTP/1.1 over TLS.
    let h1 = https_client(&first, &gw, true);
    let response = h1.get(url("/tls/h1")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    assert_eq!(
        up.seen().pop().unwrap().header("x-forwarded-proto"),
        Some("https")
    );

    // A connection opened before the reload, and used after it.
    let mut open = tls_connect(gw.addr, &[&first]).await.unwrap();
    assert_eq!(peer_leaf(&open), first.der);

    // Reload (the SIGHUP path): new connections get the new certificate.
    write_cert(certs.path(), &second);
    gw.app().reload_files();
    let fresh = tls_connect(gw.addr, &[&first, &second]).await.unwrap();
    assert_eq!(peer_leaf(&fresh), second.der, "the reloaded certificate");
    assert!(
        tls_connect(gw.addr, &[&first]).await.is_err(),
        "a client trusting only the old certificate cannot connect anew"
    );

    // Existing connections keep working: the raw HTTP/1.1 one, and the h2 client's pooled one
    // (it trusts only the first certificate, so it could not have reconnected).
    open.write_all(b"GET /tls/kept HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let kept = read_response(&mut open).await;
    assert_eq!(kept.status, 200);
    assert_eq!(kept.json()["path"], "/tls/kept");
    let response = h2.get(url("/tls/h2-again")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let response = https_client(&second, &gw, false)
        .get(url("/tls/new-client"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);

    // The file watcher picks up a change on its own.
    write_cert(certs.path(), &third);
    eventually!(
        tls_connect(gw.addr, &[&first, &second, &third])
            .await
            .is_ok_and(|s| peer_leaf(&s) == third.der),
        "the changed files were never picked up"
    );
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 8. Slowloris.

#[tokio::test]
async fn a_slowloris_connection_is_closed_after_the_header_timeout() {
    let up = Upstream::start("up").await;
    let extra = [
        "[limits]\nheader_read_timeout = \"500ms\"\n".to_owned(),
        upstream_toml("backend", &[up.url()], ""),
        route_toml("/", "backend", "public = true"),
    ]
    .concat();
    let gw = gateway(&extra).await;

    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Partial: a")
        .await
        .unwrap();
    let started = Instant::now();
    let answer = read_until_closed(&mut stream).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(400) && elapsed < Duration::from_secs(3),
        "closed after {elapsed:?}, the header timeout is 500 ms"
    );
    let text = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    assert_eq!(up.count(), 0);

    // A prompt client on the same gateway is served.
    let response = raw_get(gw.addr, "x", "/prompt", "").await;
    assert_eq!(response.status, 200);
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 9. Framing.

async fn framing_gateway() -> (Upstream, Gateway) {
    let up = Upstream::start("up").await;
    let extra = [
        upstream_toml("backend", &[up.url()], ""),
        route_toml("/", "backend", "public = true"),
    ]
    .concat();
    let gw = gateway(&extra).await;
    (up, gw)
}

#[tokio::test]
async fn conflicting_lengths_are_400_and_nothing_is_smuggled() {
    let (up, gw) = framing_gateway().await;

    let response = raw(
        gw.addr,
        "POST /twice HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    )
    .await;
    assert_eq!(response.status, 400);
    assert_eq!(up.count(), 0, "a request with two lengths was forwarded");

    // Content-Length and Transfer-Encoding disagree on where the body ends; a request hidden
    // behind the shorter reading never reaches the upstream, and the upstream never gets both.
    for (first, second) in [
        ("Content-Length", "Transfer-Encoding: chunked"),
        ("Transfer-Encoding: chunked", "Content-Length"),
    ] {
        let hidden = "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
        let header = |h: &str| {
            if h == "Content-Length" {
                format!("Content-Length: {}", hidden.len())
            } else {
                h.to_owned()
            }
        };
        let request = format!(
            "POST /both HTTP/1.1\r\nHost: x\r\n{}\r\n{}\r\n\r\n{hidden}",
            header(first),
            header(second)
        );
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let answer = String::from_utf8_lossy(&read_until_closed(&mut stream).await).into_owned();
        assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    for seen in up.seen() {
        assert_ne!(seen.path, "/smuggled");
        assert!(
            seen.header("content-length").is_none() || seen.header("transfer-encoding").is_none(),
            "{seen:?}"
        );
    }

    // Either framing alone is fine.
    let response = raw(
        gw.addr,
        "POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 200);
    assert_eq!(up.seen().pop().unwrap().body, b"hello");
    gw.shutdown().await;
}

/// hyper settles Content-Length + Transfer-Encoding silently (Transfer-Encoding wins); the
/// gateway watches the raw heads below it and refuses such a request with 400 instead, also
/// behind earlier keep-alive requests of either body framing on the same connection.
#[tokio::test]
async fn content_length_with_transfer_encoding_is_400() {
    let (up, gw) = framing_gateway().await;
    for both in [
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
    ] {
        let pipelined = format!(
            "POST /sized HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
             POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
             5\r\nhello\r\n0\r\n\r\n\
             POST /both HTTP/1.1\r\nHost: x\r\n{both}\r\n5\r\nhello\r\n0\r\n\r\n"
        );
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        stream.write_all(pipelined.as_bytes()).await.unwrap();
        let answer = String::from_utf8_lossy(&read_until_closed(&mut stream).await).into_owned();
        let statuses: Vec<&str> = answer
            .match_indices("HTTP/1.1 ")
            .map(|(at, _)| &answer[at + 9..at + 12])
            .collect();
        assert_eq!(statuses, ["200", "200", "400"], "{both:?}: {answer}");
        assert!(
            answer.contains("Content-Length and Transfer-Encoding"),
            "{answer}"
        );
    }
    let paths: Vec<String> = up.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/sized", "/chunked", "/sized", "/chunked"]);
    gw.shutdown().await;
}

/// The data plane's own keep-alive pool: sequential requests share one upstream connection
/// (it is handed back when each response ends), and a pooled connection the upstream closed
/// meanwhile costs nothing — a POST, which is never retried, still goes through, once.
#[tokio::test]
async fn upstream_connections_are_reused_and_stale_ones_replaced() {
    let mut up = Upstream::start("up").await;
    let extra = [
        upstream_toml("backend", &[up.url()], ""),
        route_toml("/", "backend", "public = true"),
    ]
    .concat();
    let gw = gateway(&extra).await;
    for i in 0..20 {
        let get = gw
            .http
            .get(gw.url(&format!("/get/{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(get.status(), 200);
        let post = gw
            .http
            .post(gw.url(&format!("/post/{i}")))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(post.status(), 200);
    }
    assert_eq!(
        up.connections(),
        1,
        "40 sequential requests, one upstream connection"
    );

    // Every open connection is closed by the upstream; it comes back on the same port.
    up.kill().await;
    up.restart().await;
    for i in 0..5 {
        let post = gw
            .http
            .post(gw.url(&format!("/after/{i}")))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(post.status(), 200, "POST on a stale pooled connection");
    }
    let after = up
        .seen()
        .iter()
        .filter(|s| s.path.starts_with("/after/"))
        .count();
    assert_eq!(after, 5, "each POST arrived exactly once");
    assert_eq!(up.connections(), 2);
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 10. CORS.

fn cors_headers(headers: &reqwest::header::HeaderMap) -> Vec<String> {
    headers
        .keys()
        .map(|k| k.as_str().to_owned())
        .filter(|k| k.starts_with("access-control-"))
        .collect()
}

#[tokio::test]
async fn cors_preflights_and_responses_only_for_allowed_origins() {
    const ALLOWED: &str = "https://app.example.com";
    const OTHER: &str = "https://evil.example.com";
    let up = Upstream::start("up").await;
    let extra = [
        "[cors]\nallowed_origins = [\"https://app.example.com\"]\n".to_owned(),
        upstream_toml("backend", &[up.url()], ""),
        route_toml("/", "backend", ""),
    ]
    .concat();
    let gw = gateway(&extra).await;
    let token = token(&gw).await;
    let preflight = |path: &str, origin: &str| {
        gw.http
            .request(Method::OPTIONS, gw.url(path))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "x-access-token, content-type",
            )
            .send()
    };

    for path in ["/protected/data", "/users/login"] {
        let response = preflight(path, ALLOWED).await.unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        let h = response.headers();
        assert_eq!(h["access-control-allow-origin"], ALLOWED, "{path}");
        assert_eq!(h["access-control-allow-credentials"], "true", "{path}");
        let methods = h["access-control-allow-methods"].to_str().unwrap();
        assert!(
            methods.contains("POST") && methods.contains("DELETE"),
            "{methods}"
        );
        let allowed_headers = h["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .to_ascii_lowercase();
        assert!(
            allowed_headers.contains("x-access-token") && allowed_headers.contains("content-type"),
            "{allowed_headers}"
        );
        assert_eq!(h["access-control-max-age"], "600", "{path}");

        let denied = preflight(path, OTHER).await.unwrap();
        assert!(
            denied
                .headers()
                .get("access-control-allow-origin")
                .is_none(),
            "{path}: {:?}",
            denied.headers()
        );
    }
    assert_eq!(up.count(), 0, "preflights are answered by the gateway");

    let get = |origin: &str| {
        gw.http
            .get(gw.url("/protected/data"))
            .header("x-access-token", &token)
            .header("origin", origin)
            .send()
    };
    let allowed = get(ALLOWED).await.unwrap();
    assert_eq!(allowed.status(), 200);
    assert_eq!(allowed.headers()["access-control-allow-origin"], ALLOWED);
    assert_eq!(
        allowed.headers()["access-control-allow-credentials"],
        "true"
    );

    let other = get(OTHER).await.unwrap();
    assert_eq!(other.status(), 200);
    assert_eq!(cors_headers(other.headers()), Vec::<String>::new());
    let plain = gw
        .http
        .get(gw.url("/protected/data"))
        .header("x-access-token", &token)
        .send()
        .await
        .unwrap();
    assert!(plain.headers().get("access-control-allow-origin").is_none());
    assert_eq!(up.count(), 3);
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 11. Limits.

#[tokio::test]
async fn oversized_request_heads_are_431() {
    let up = Upstream::start("up").await;
    let extra = [
        "[limits]\nmax_header_bytes = 4096\n".to_owned(),
        upstream_toml("backend", &[up.url()], ""),
        route_toml("/", "backend", "public = true"),
    ]
    .concat();
    let gw = gateway(&extra).await;
    let big = |n: usize| format!("X-Big: {}\r\n", "a".repeat(n));

    let response = raw_get(gw.addr, "x", "/small", &big(2000)).await;
    assert_eq!(response.status, 200);
    for n in [6000, 20_000] {
        let response = raw_get(gw.addr, "x", "/big", &big(n)).await;
        assert_eq!(response.status, 431, "a {n}-byte header");
    }
    assert_eq!(up.count(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn max_connections_makes_extra_connections_wait() {
    let up = Upstream::start("up").await;
    let extra = [
        "[limits]\nmax_connections = 2\n".to_owned(),
        upstream_toml("backend", &[up.url()], ""),
        route_toml("/", "backend", "public = true"),
    ]
    .concat();
    let gw = gateway(&extra).await;
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");

    let mut first = TcpStream::connect(gw.addr).await.unwrap();
    let mut second = TcpStream::connect(gw.addr).await.unwrap();
    for (stream, path) in [(&mut first, "/one"), (&mut second, "/two")] {
        stream.write_all(get(path).as_bytes()).await.unwrap();
        assert_eq!(read_response(stream).await.status, 200, "{path}");
    }

    // The third connection is not served while two are open...
    let mut third = TcpStream::connect(gw.addr).await.unwrap();
    third.write_all(get("/three").as_bytes()).await.unwrap();
    let mut byte = [0u8; 1];
    let waited = tokio::time::timeout(Duration::from_millis(700), third.read(&mut byte)).await;
    assert!(waited.is_err(), "a third connection was served: {waited:?}");
    assert_eq!(up.count(), 2);

    // ...and is as soon as one closes.
    drop(first);
    let response = read_response(&mut third).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["path"], "/three");

    // Still on its feet.
    drop(second);
    drop(third);
    let response = gw.http.get(gw.url("/later")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 12. HTTP/2 upstreams.

#[tokio::test]
async fn http2_upstreams_are_spoken_to_in_http2() {
    let up = Upstream::start("up").await;
    let extra = [
        upstream_toml("h2", &[up.url()], "protocol = \"http2\""),
        upstream_toml("h1", &[up.url()], ""),
        route_toml("/", "h1", "public = true"),
        route_toml("/h2", "h2", "public = true"),
    ]
    .concat();
    let gw = gateway(&extra).await;

    let response = gw
        .http
        .post(gw.url("/h2/data?x=1"))
        .body("twelve bytes")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = up.seen().pop().unwrap();
    assert_eq!(seen.version, Version::HTTP_2);
    assert_eq!(
        (seen.path.as_str(), seen.query.as_deref()),
        ("/h2/data", Some("x=1"))
    );
    assert_eq!(
        (seen.body.as_slice(), seen.complete),
        (&b"twelve bytes"[..], true)
    );

    let response = gw.http.get(gw.url("/plain")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(up.seen().pop().unwrap().version, Version::HTTP_11);
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 13. Expect: 100-continue.

#[tokio::test]
async fn expect_100_continue_gets_a_continue_and_the_full_body() {
    let up = Upstream::start("up").await;
    let gw = Gateway::start_with(&up.url(), "").await;
    let token = token(&gw).await;

    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: x\r\nX-Access-Token: {token}\r\nContent-Length: 11\r\n\
         Expect: 100-continue\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    while find(&buf, b"\r\n\r\n").is_none() {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .expect("a 100 Continue within 5 s")
            .unwrap();
        assert!(n > 0, "closed before 100 Continue");
        buf.extend_from_slice(&chunk[..n]);
    }
    let interim = String::from_utf8_lossy(&buf).into_owned();
    assert!(
        interim.starts_with("HTTP/1.1 100 Continue\r\n"),
        "{interim}"
    );
    assert_eq!(up.count(), 0, "nothing forwarded before the body");

    stream.write_all(b"hello world").await.unwrap();
    let end = find(&buf, b"\r\n\r\n").unwrap() + 4;
    let mut rest = buf.split_off(end);
    rest.extend(read_until_closed(&mut stream).await);
    let response = parse_response(&rest, true).expect("a final response");
    assert_eq!(response.status, 200);
    let seen = up.seen().pop().unwrap();
    assert_eq!(
        (seen.body.as_slice(), seen.complete),
        (&b"hello world"[..], true)
    );
    assert!(seen.header("expect").is_none());
    gw.shutdown().await;
}
