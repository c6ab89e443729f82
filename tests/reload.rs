//! Live reload in process ([`RunningApp::reload`], what SIGHUP calls): a swapped upstream
//! takes new requests while a slow stream, a WebSocket and a keep-alive connection opened
//! before it carry on; a reload that cannot be built changes nothing; keys that need a restart
//! are reported and not applied; replaced health checks stop, unchanged clusters are kept;
//! CORS switched on live. The binary's SIGHUP path is in tests/cli.rs.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::fake::{FakeTask, serve_http};
use figment::Figment;
use figment::providers::{Format, Toml};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use meiro_gate::{App, Config, RunningApp, config};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// Chunks of the slow stream, and the pause before each.
const CHUNKS: usize = 30;
const CHUNK_PAUSE: Duration = Duration::from_millis(50);

/// Chunk `i` of `/stream`: 1 KiB that says which chunk it is, so a lost, repeated or
/// reordered chunk shows.
fn chunk(i: usize) -> Vec<u8> {
    format!("chunk {i:04} ").repeat(1024 / 11 + 1).into_bytes()[..1024].to_vec()
}

fn whole_stream() -> Vec<u8> {
    (0..CHUNKS).flat_map(chunk).collect()
}

/// An origin that answers every request with its name (`Content-Length` body), except
/// `/stream` (the slow chunked stream) and `/health` (counted). Counts what it served.
struct Origin {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    health_checks: Arc<AtomicUsize>,
    _task: FakeTask,
}

impl Origin {
    async fn start(name: &'static str) -> Origin {
        let requests = Arc::new(AtomicUsize::new(0));
        let health_checks = Arc::new(AtomicUsize::new(0));
        let (counted, checks) = (requests.clone(), health_checks.clone());
        let (addr, task) = serve_http(move |req: hyper::Request<Incoming>| {
            let (counted, checks) = (counted.clone(), checks.clone());
            async move {
                if req.uri().path() == "/health" {
                    checks.fetch_add(1, Ordering::SeqCst);
                    return answer(Bytes::from_static(b"ok"));
                }
                counted.fetch_add(1, Ordering::SeqCst);
                if req.uri().path() == "/stream" {
                    return slow_stream();
                }
                answer(Bytes::from_static(name.as_bytes()))
            }
        })
        .await;
        Origin {
            addr,
            requests,
            health_checks,
            _task: task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn served(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn health_checks(&self) -> usize {
        self.health_checks.load(Ordering::SeqCst)
    }
}

type OriginBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn answer(body: Bytes) -> hyper::Response<OriginBody> {
    hyper::Response::new(http_body_util::Full::new(body).boxed())
}

fn slow_stream() -> hyper::Response<OriginBody> {
    let frames = futures_util::stream::iter(0..CHUNKS).then(|i| async move {
        tokio::time::sleep(CHUNK_PAUSE).await;
        Ok::<_, Infallible>(Frame::data(Bytes::from(chunk(i))))
    });
    hyper::Response::new(BodyExt::boxed(StreamBody::new(frames)))
}

/// A WebSocket echo origin.
async fn ws_echo() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if message.is_text() && ws.send(message).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, task)
}

/// A local-mode gateway config (store and keys in `dir`); `sections` are the upstreams,
/// routes and anything else, in TOML.
fn config(dir: &TempDir, sections: &str) -> Config {
    let toml = format!("{}\n{sections}", common::local_toml(dir.path()));
    let figment = Figment::from(Toml::string(&toml));
    config::load_from_figment(&figment).expect("test config is valid")
}

/// One public route `/` to a single-instance upstream named `name`.
fn single(name: &str, url: &str, extra: &str) -> String {
    format!(
        r#"
        [[upstreams]]
        name = "{name}"
        instances = ["{url}"]
        connect_timeout = "1s"
        response_timeout = "5s"
        {extra}
        [[routes]]
        prefix = "/"
        upstream = "{name}"
        public = true
        "#
    )
}

async fn start(dir: &TempDir, sections: &str) -> RunningApp {
    App::start(config(dir, sections)).await.unwrap()
}

async fn get_text(app: &RunningApp, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{}{path}", app.addr))
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// A raw keep-alive HTTP/1.1 connection, so the test knows it is one and the same socket.
struct KeepAlive {
    reader: BufReader<TcpStream>,
}

impl KeepAlive {
    async fn open(addr: SocketAddr) -> KeepAlive {
        KeepAlive {
            reader: BufReader::new(TcpStream::connect(addr).await.unwrap()),
        }
    }

    /// `GET path`; the response's status and body (`Content-Length` framed).
    async fn get(&mut self, path: &str) -> (u16, String) {
        let head = format!("GET {path} HTTP/1.1\r\nHost: gateway.test\r\n\r\n");
        self.reader
            .get_mut()
            .write_all(head.as_bytes())
            .await
            .unwrap();
        let mut status_line = String::new();
        self.reader.read_line(&mut status_line).await.unwrap();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {status_line:?}"));
        let mut length = 0;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).await.unwrap();
        (status, String::from_utf8(body).unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_upstream_takes_new_requests_while_open_streams_websockets_and_connections_carry_on()
 {
    let a = Origin::start("A").await;
    let b = Origin::start("B").await;
    let (ws_addr, _ws) = ws_echo().await;
    let dir = tempfile::tempdir().unwrap();
    let websocket_route = format!(
        r#"
        [[upstreams]]
        name = "ws"
        instances = ["http://{ws_addr}"]
        [[routes]]
        prefix = "/ws"
        upstream = "ws"
        public = true
        "#
    );
    let app = start(&dir, &(single("a", &a.url(), "") + &websocket_route)).await;

    // Before: a keep-alive connection, a slow stream under way, an open WebSocket.
    let mut kept = KeepAlive::open(app.addr).await;
    assert_eq!(kept.get("/before").await, (200, "A".to_owned()));
    let mut stream = reqwest::get(format!("http://{}/stream", app.addr))
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let mut received = stream
        .chunk()
        .await
        .unwrap()
        .expect("the first chunk")
        .to_vec();
    let socket = TcpStream::connect(app.addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{}/ws", app.addr), socket)
        .await
        .expect("the upgrade succeeds");
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap().to_text().unwrap(),
        "before"
    );
    let served_by_a = a.served();

    // Reload: `/` goes to B, and the WebSocket route is gone.
    let report = app
        .reload(config(&dir, &single("b", &b.url(), "")))
        .expect("the reload is applied");
    assert!(report.restart_needed.is_empty(), "{report:?}");
    assert_eq!((report.upstreams_kept, report.upstreams_rebuilt), (0, 1));

    // New requests reach B: from a new connection, and on the connection opened before.
    assert_eq!(get_text(&app, "/after").await, (200, "B".to_owned()));
    assert_eq!(kept.get("/after-on-kept").await, (200, "B".to_owned()));
    // The open WebSocket still echoes, although its route is gone for new upgrades.
    ws.send(Message::text("after")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap().to_text().unwrap(),
        "after"
    );
    let fresh = TcpStream::connect(app.addr).await.unwrap();
    assert!(
        tokio_tungstenite::client_async(format!("ws://{}/ws", app.addr), fresh)
            .await
            .is_err(),
        "a new WebSocket follows the new routes (to B, which does not upgrade)"
    );
    // The stream started before the reload completes intact, from A.
    while let Some(more) = stream.chunk().await.unwrap() {
        received.extend_from_slice(&more);
    }
    assert!(
        received == whole_stream(),
        "the stream arrived damaged: {} of {} bytes",
        received.len(),
        whole_stream().len()
    );
    assert_eq!(a.served(), served_by_a, "A got nothing after the reload");
    assert_eq!(b.served(), 3);
    assert!(app.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_cannot_be_built_changes_nothing() {
    let a = Origin::start("A").await;
    let b = Origin::start("B").await;
    let dir = tempfile::tempdir().unwrap();
    let app = start(&dir, &single("a", &a.url(), "")).await;
    // Valid as a config, but the CA bundle cannot be read when the cluster is built.
    let missing_ca = format!("ca_file = \"{}/missing-ca.pem\"", dir.path().display());
    let https_b = format!("https://{}", b.addr);
    let error = app
        .reload(config(&dir, &single("b", &https_b, &missing_ca)))
        .expect_err("an unreadable CA bundle refuses the reload");
    assert!(error.to_string().contains("missing-ca.pem"), "{error}");
    assert_eq!(get_text(&app, "/x").await, (200, "A".to_owned()));
    assert_eq!(b.served(), 0);
    assert!(app.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_that_need_a_restart_are_reported_and_not_applied() {
    let a = Origin::start("A").await;
    let b = Origin::start("B").await;
    let dir = tempfile::tempdir().unwrap();
    let app = start(&dir, &single("a", &a.url(), "")).await;
    let mut new = config(&dir, &single("b", &b.url(), ""));
    new.server.listen = "127.0.0.1:1".parse().unwrap();
    new.admin.listen = "127.0.0.1:2".parse().unwrap();
    new.auth.cookie_name = "other_cookie".to_owned();
    new.store.url =
        meiro_gate::config::Secret::url(format!("sqlite://{}/other.db", dir.path().display()));
    new.limits.max_connections = 7;
    let report = app.reload(new).expect("the live part is applied");
    let mut keys = report.restart_needed.clone();
    keys.sort();
    assert_eq!(
        keys,
        [
            "admin.listen",
            "auth.cookie_name",
            "limits.max_connections",
            "server.listen",
            "store.url"
        ]
    );
    // Still on the old listeners, with the new route.
    assert_eq!(get_text(&app, "/x").await, (200, "B".to_owned()));
    let admin = reqwest::get(format!("http://{}/healthz", app.admin_addr))
        .await
        .unwrap();
    assert_eq!(admin.status(), 200);
    // A second reload of the same file reports the same keys again: nothing was applied.
    let mut again = config(&dir, &single("b", &b.url(), ""));
    again.server.listen = "127.0.0.1:1".parse().unwrap();
    let report = app.reload(again).unwrap();
    assert_eq!(report.restart_needed, ["server.listen"]);
    assert_eq!(report.upstreams_kept, 1, "the unchanged upstream b is kept");
    assert!(app.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_health_checks_stop_and_unchanged_clusters_keep_theirs() {
    let a = Origin::start("A").await;
    let b = Origin::start("B").await;
    let dir = tempfile::tempdir().unwrap();
    let health = r#"
        [upstreams.health]
        path = "/health"
        interval = "50ms"
        timeout = "1s"
        "#;
    let both = |b_route: bool| {
        let mut sections = single("a", &a.url(), health);
        sections += &format!(
            r#"
            [[upstreams]]
            name = "b"
            instances = ["{}"]
            {health}
            "#,
            b.url()
        );
        if b_route {
            sections += "[[routes]]\nprefix = \"/b\"\nupstream = \"b\"\npublic = true\n";
        }
        sections
    };
    let app = start(&dir, &both(false)).await;
    eventually!(
        a.health_checks() >= 2 && b.health_checks() >= 2,
        "health checks run"
    );

    // Only a route added: both clusters are kept, their checks go on.
    let report = app.reload(config(&dir, &both(true))).unwrap();
    assert_eq!((report.upstreams_kept, report.upstreams_rebuilt), (2, 0));
    assert_eq!(get_text(&app, "/b/x").await, (200, "B".to_owned()));
    let a_checks = a.health_checks();
    eventually!(a.health_checks() >= a_checks + 2, "a still checked");

    // Upstream a removed: its checks stop; b's go on, in the new generation's task only.
    app.reload(config(&dir, &single("b", &b.url(), health)))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (a_checks, b_checks) = (a.health_checks(), b.health_checks());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        a.health_checks(),
        a_checks,
        "the removed cluster is still checked"
    );
    let b_rate = b.health_checks() - b_checks;
    // One task at 50 ms gives ~10 checks in 500 ms; a leaked second task would double that.
    assert!(
        (3..=14).contains(&b_rate),
        "b checked {b_rate} times in 500 ms"
    );
    assert!(app.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_switched_on_by_a_reload() {
    let a = Origin::start("A").await;
    let dir = tempfile::tempdir().unwrap();
    let app = start(&dir, &single("a", &a.url(), "")).await;
    let http = reqwest::Client::new();
    let preflight = || {
        http.request(reqwest::Method::OPTIONS, format!("http://{}/x", app.addr))
            .header("origin", "https://app.example.com")
            .header("access-control-request-method", "GET")
            .send()
    };
    let before = preflight().await.unwrap();
    assert!(
        before
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );

    let cors = "[cors]\nallowed_origins = [\"https://app.example.com\"]\n";
    app.reload(config(&dir, &(single("a", &a.url(), "") + cors)))
        .unwrap();
    let after = preflight().await.unwrap();
    assert_eq!(
        after.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(get_text(&app, "/x").await, (200, "A".to_owned()));
    assert!(app.shutdown().await);
}

/// An editor or `cp` writing the config in place: the watcher must not apply the file while it
/// is half written, although the first half parses (as a config with no route at all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_caught_half_written_is_not_applied() {
    let a = Origin::start("A").await;
    let b = Origin::start("B").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("meiro-gate.toml");
    let base = common::local_toml(dir.path());
    std::fs::write(&file, format!("{base}\n{}", single("a", &a.url(), ""))).unwrap();
    let app = App::start(config::load(Some(&file)).unwrap())
        .await
        .unwrap();
    let writer = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        std::fs::write(&file, &base).unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
        let mut rest = std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap();
        std::io::Write::write_all(
            &mut rest,
            format!("\n{}", single("b", &b.url(), "")).as_bytes(),
        )
        .unwrap();
    };
    let mut statuses = Vec::new();
    let poll = async {
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        loop {
            let (status, body) = get_text(&app, "/x").await;
            statuses.push(status);
            if body == "B" {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "B never served");
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    };
    tokio::select! {
        _ = app.watch_config_file(Some(&file), Duration::from_millis(10)) => unreachable!(),
        _ = async { tokio::join!(writer, poll) } => {}
    }
    assert!(
        statuses.iter().all(|s| *s == 200),
        "the half config was applied: {statuses:?}"
    );
    assert!(app.shutdown().await);
}

/// A reload that adds a route rule takes effect on the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_a_routes_methods() {
    let a = Origin::start("A").await;
    let dir = tempfile::tempdir().unwrap();
    let app = start(&dir, &single("a", &a.url(), "")).await;
    let post = |app: &RunningApp| {
        let url = format!("http://{}/x", app.addr);
        async move { reqwest::Client::new().post(url).send().await.unwrap() }
    };
    assert_eq!(post(&app).await.status(), 200);
    let get_only = single("a", &a.url(), "").replace(
        "public = true",
        "public = true\n        methods = [\"GET\"]",
    );
    app.reload(config(&dir, &get_only)).unwrap();
    let refused = post(&app).await;
    assert_eq!(refused.status(), 405);
    assert_eq!(refused.headers()["allow"], "GET, HEAD");
    assert_eq!(get_text(&app, "/x").await, (200, "A".to_owned()));
    assert!(app.shutdown().await);
}
