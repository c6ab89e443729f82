//! The holes an outside attack run found (issue 14), each pinned by a test that fails when its
//! defence is removed: identity headers in disguise, two Hosts, h2c upgrade tunnels and other
//! unasked protocol switches, malformed request bodies held against an upstream, an HTTP/1.0
//! upstream's version leaking to the client, idle connections without a deadline, and paced
//! HTTP/2 rapid reset. `docs/security.md` names each test with the class it covers.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::plane::{backend_gateway, raw_get};
use common::raw::{Raw, exchange, find, raw, read_response, read_until_closed};
use common::ws::ws_echo;
use common::{FakeUpstream, Gateway};
use http::HeaderMap;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meiro_gate::store::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The headers the gateway alone may set, as a backend that reads `_` as `-` would see them.
const GATEWAY_OWNED: [&str; 8] = [
    "x-meiro-user-id",
    "x-meiro-user-email",
    "x-meiro-user-role",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
    "x-access-token",
];

/// A header name as CGI/WSGI-style backends read it: lower case, any separator a `-`.
fn as_backend_reads(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

/// Every gateway-owned header the upstream got, as (the name it arrived under, value), with
/// names a backend would merge counted as one.
fn owned_headers_seen(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(name, _)| GATEWAY_OWNED.contains(&as_backend_reads(name.as_str()).as_str()))
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                value.to_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// Asserts that of the gateway-owned headers only the exact names arrived, once each.
fn assert_no_disguised_copy(headers: &HeaderMap, context: &str) {
    for (name, _) in owned_headers_seen(headers) {
        assert!(
            GATEWAY_OWNED.contains(&name.as_str()),
            "{context}: the client's {name} reached the upstream: {headers:?}"
        );
    }
    for owned in GATEWAY_OWNED {
        assert!(
            headers.get_all(owned).iter().count() <= 1,
            "{context}: {owned} twice: {headers:?}"
        );
    }
}

async fn user_token(gw: &Gateway) -> String {
    gw.add_user("mallory@example.com", Role::User).await;
    gw.login("mallory@example.com").await
}

/// Disguises of the role header and the others, with an `admin` the client wishes for.
const DISGUISES: &str = "X_Meiro_User_Role: admin\r\nx_meiro_user_role: admin\r\n\
    X-Meiro_User-Role: admin\r\nx.meiro.user.role: admin\r\nX_MEIRO_USER_ID: 00000000-0000-0000-0000-000000000001\r\n\
    X_Meiro_User_Email: root@example.com\r\nX_Forwarded_For: 10.0.0.1\r\nX_Forwarded_Host: admin.internal\r\n\
    X_Forwarded_Proto: https\r\nX_Request_Id: forged\r\nX_Access_Token: forged\r\n";

// ---------------------------------------------------------------------------------------------
// Hole 1: identity headers with underscores (and other separators).

#[tokio::test]
async fn disguised_identity_headers_never_reach_the_upstream_over_any_protocol() {
    let upstream = FakeUpstream::start().await;
    let gw = Gateway::start(&upstream).await;
    let token = user_token(&gw).await;

    // HTTP/1.1, authenticated and public routes.
    for (target, auth) in [
        ("/data", format!("X-Access-Token: {token}\r\n")),
        ("/public/data", String::new()),
    ] {
        let response = raw(
            gw.addr,
            format!(
                "GET {target} HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n{auth}{DISGUISES}\r\n"
            ),
        )
        .await;
        assert_eq!(response.status, 200, "{target}");
        let seen = upstream.last();
        assert_no_disguised_copy(&seen.headers, target);
        let role = seen
            .headers
            .get("x-meiro-user-role")
            .map(|v| v.to_str().unwrap());
        assert_eq!(
            role,
            (!auth.is_empty()).then_some("user"),
            "{target}: the role is the gateway's word"
        );
    }

    // h2c with prior knowledge: header names arrive lower-cased, the disguises the same.
    let h2c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let mut request = h2c.get(gw.url("/data")).header("x-access-token", &token);
    for line in DISGUISES.split("\r\n").filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(": ").unwrap();
        request = request.header(name.to_ascii_lowercase(), value);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let seen = upstream.last();
    assert_no_disguised_copy(&seen.headers, "h2c");
    assert_eq!(seen.headers["x-meiro-user-role"], "user");
    gw.shutdown().await;
}

#[tokio::test]
async fn disguised_identity_headers_never_reach_a_websocket_upstream() {
    let (echo, handshakes, echo_task) = ws_echo().await;
    let gw = Gateway::start_with(&format!("http://{echo}"), "").await;
    let token = user_token(&gw).await;
    let mut request = format!("ws://{}/ws", gw.addr)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("x-access-token", token.parse().unwrap());
    for line in DISGUISES.split("\r\n").filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(": ").unwrap();
        request.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (_ws, response) = tokio_tungstenite::client_async(request, stream)
        .await
        .expect("the upgrade succeeds");
    assert_eq!(response.status(), 101);
    let seen = handshakes.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_no_disguised_copy(&seen[0], "websocket handshake");
    assert_eq!(seen[0]["x-meiro-user-role"], "user");
    gw.shutdown().await;
    echo_task.abort();
}

#[tokio::test]
async fn underscores_in_headers_off_drops_every_underscore_header() {
    let upstream = FakeUpstream::start().await;
    let request = "GET /public/x HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\
        X_Custom_Header: 1\r\nX-Plain-Header: 2\r\n\r\n";
    let on = Gateway::start(&upstream).await;
    assert_eq!(raw(on.addr, request).await.status, 200);
    assert!(upstream.last().headers.contains_key("x_custom_header"));
    on.shutdown().await;

    let off = Gateway::start_with(
        &upstream.url(),
        "[server]\nunderscores_in_headers = false\n",
    )
    .await;
    assert_eq!(raw(off.addr, request).await.status, 200);
    let seen = upstream.last();
    assert!(!seen.headers.contains_key("x_custom_header"), "{seen:?}");
    assert_eq!(seen.headers["x-plain-header"], "2");
    off.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Hole 2: one Host per request.

/// `public.example` has a public route for `/`; every other host needs a token.
async fn host_routed_gateway(upstream: &FakeUpstream) -> Gateway {
    backend_gateway(
        &upstream.url(),
        &[("/", ""), ("/", "host = \"public.example\"\npublic = true")],
    )
    .await
}

#[tokio::test]
async fn two_hosts_or_a_host_against_the_target_are_refused_and_never_forwarded() {
    let upstream = FakeUpstream::start().await;
    let gw = host_routed_gateway(&upstream).await;
    // The public host alone routes without a token (the test would prove nothing otherwise).
    let alone = raw_get(gw.addr, "public.example", "/admin", "").await;
    assert_eq!(alone.status, 200);
    let forwarded = upstream.recorded().len();

    for (case, head) in [
        (
            "two Host lines",
            "GET /admin HTTP/1.1\r\nHost: public.example\r\nHost: admin.example\r\nConnection: close\r\n\r\n",
        ),
        (
            "two Host lines, the other order",
            "GET /admin HTTP/1.1\r\nHost: admin.example\r\nHost: public.example\r\nConnection: close\r\n\r\n",
        ),
        (
            "absolute form against Host",
            "GET http://public.example/admin HTTP/1.1\r\nHost: admin.example\r\nConnection: close\r\n\r\n",
        ),
        (
            "Host with user info",
            "GET /admin HTTP/1.1\r\nHost: public.example@admin.example\r\nConnection: close\r\n\r\n",
        ),
        (
            "no Host in HTTP/1.1",
            "GET /admin HTTP/1.1\r\nConnection: close\r\n\r\n",
        ),
    ] {
        let response = raw(gw.addr, head).await;
        assert_eq!(response.status, 400, "{case}: {response:?}");
        assert_eq!(response.header("content-type"), Some("application/json"));
        assert!(response.message().contains("Host"), "{case}: {response:?}");
    }
    assert_eq!(
        upstream.recorded().len(),
        forwarded,
        "nothing was forwarded"
    );

    // Absolute form with the same host routes on it, and the upstream gets that host only.
    let same = raw_get(gw.addr, "public.example", "http://public.example/admin", "").await;
    assert_eq!(same.status, 200);
    let seen = upstream.last();
    assert_eq!(seen.headers.get_all("host").iter().count(), 1);
    assert_eq!(seen.headers["host"], "public.example");
    assert_eq!(seen.headers["x-forwarded-host"], "public.example");
    gw.shutdown().await;
}

#[tokio::test]
async fn http2_authority_against_host_is_refused() {
    let upstream = FakeUpstream::start().await;
    let gw = host_routed_gateway(&upstream).await;
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let mut send = |authority: &str, host: Option<&str>| {
        let mut request = http::Request::builder()
            .uri(format!("http://{authority}/admin"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        if let Some(host) = host {
            request.headers_mut().insert("host", host.parse().unwrap());
        }
        sender.send_request(request)
    };
    let response = send("public.example", None).await.unwrap();
    assert_eq!(response.status(), 200, ":authority alone routes");
    let forwarded = upstream.recorded().len();
    let response = send("public.example", Some("admin.example")).await.unwrap();
    assert_eq!(response.status(), 400, ":authority against host");
    assert_eq!(response.headers()["content-type"], "application/json");
    let response = send("public.example", Some("public.example"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "agreeing :authority and host");
    assert_eq!(upstream.recorded().len(), forwarded + 1);
    assert_eq!(upstream.last().headers.get_all("host").iter().count(), 1);
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Path parameters and host spellings a backend reads differently than a naive gateway.

#[tokio::test]
async fn path_parameters_and_a_trailing_host_dot_do_not_escape_a_protected_route() {
    let upstream = FakeUpstream::start().await;
    // The layout that makes these tricks pay: a public catch-all with protected routes inside.
    let gw = backend_gateway(
        &upstream.url(),
        &[
            ("/", "public = true"),
            ("/admin", ""),
            ("/", "host = \"admin.example\""),
        ],
    )
    .await;
    let get = |host: &'static str, target: &'static str| raw_get(gw.addr, host, target, "");
    assert_eq!(
        get("gateway.test", "/open").await.status,
        200,
        "the public route"
    );
    let forwarded = upstream.recorded().len();
    // Servlet containers serve `/admin;x` as `/admin`, and `..;` as `..`.
    for target in [
        "/admin;jsessionid=1",
        "/admin;x/users",
        "/;x/admin",
        "/%61dmin;x",
    ] {
        assert_eq!(get("gateway.test", target).await.status, 401, "{target}");
    }
    for target in ["/open/..;/admin", "/open/.;/admin", "/open/%2e%2e;x/admin"] {
        let response = get("gateway.test", target).await;
        assert_eq!(response.status, 400, "{target}");
        assert_eq!(response.message(), "Invalid request path");
    }
    // DNS reads `admin.example.` as `admin.example`.
    for host in ["admin.example.", "ADMIN.EXAMPLE.:80"] {
        assert_eq!(get(host, "/open").await.status, 401, "{host}");
    }
    assert_eq!(
        upstream.recorded().len(),
        forwarded,
        "nothing else was forwarded"
    );
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Hole 3: only the upgrades a route allows become tunnels; CONNECT and TRACE are refused.

/// What a scripted upstream answers to one request head.
type Script = dyn Fn(&str) -> Vec<u8> + Send + Sync;

/// A raw HTTP/1.1 upstream: reads each request head (and a `Content-Length` body), records
/// the head, and writes whatever `script` returns for it; after a `101` it echoes the raw
/// bytes it gets (the "tunnel"). Counts requests in progress, and notices a client that
/// closes while it holds a request (`hold_ms` in the target's query holds it).
struct ScriptedUpstream {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    in_progress: Arc<AtomicUsize>,
    max_in_progress: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl ScriptedUpstream {
    async fn start(script: Arc<Script>) -> ScriptedUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads: Arc<Mutex<Vec<String>>> = Arc::default();
        let in_progress = Arc::new(AtomicUsize::new(0));
        let max_in_progress = Arc::new(AtomicUsize::new(0));
        let (log, busy, peak) = (heads.clone(), in_progress.clone(), max_in_progress.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (log, busy, peak, script) =
                    (log.clone(), busy.clone(), peak.clone(), script.clone());
                tokio::spawn(serve_scripted(stream, script, log, busy, peak));
            }
        });
        ScriptedUpstream {
            addr,
            heads,
            in_progress,
            max_in_progress,
            task,
        }
    }

    /// Answers every request with `reply`.
    async fn answering(reply: &'static [u8]) -> ScriptedUpstream {
        Self::start(Arc::new(move |_: &str| reply.to_vec())).await
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

impl Drop for ScriptedUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_scripted(
    mut stream: TcpStream,
    script: Arc<Script>,
    log: Arc<Mutex<Vec<String>>>,
    busy: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let Some(end) = find(&buf, b"\r\n\r\n") else {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buf.len() < end + 4 + length {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..end + 4 + length);
        log.lock().unwrap().push(head.clone());
        let hold = head
            .split_once("hold_ms=")
            .and_then(|(_, rest)| {
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(0u64);
        if hold > 0 {
            let now = busy.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            // Held until the time is up or the gateway gives the request up (closes).
            let closed = tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(hold)) => false,
                read = stream.read(&mut chunk) => matches!(read, Ok(0) | Err(_)),
            };
            busy.fetch_sub(1, Ordering::SeqCst);
            if closed {
                return;
            }
        }
        let reply = script(&head);
        if stream.write_all(&reply).await.is_err() {
            return;
        }
        if reply.starts_with(b"HTTP/1.1 101") {
            // The tunnel: echo raw bytes until either side closes.
            let (mut r, mut w) = stream.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
            return;
        }
        if reply.starts_with(b"HTTP/1.0") {
            // An HTTP/1.0 server closes after each response.
            return;
        }
    }
}

/// Answers `101` to any request that offers `h2c` (as an upstream that speaks it would),
/// `200` otherwise.
fn h2c_accepting() -> Arc<Script> {
    Arc::new(|head: &str| {
        if head.to_ascii_lowercase().contains("upgrade: h2c") {
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
                .to_vec()
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()
        }
    })
}

#[tokio::test]
async fn an_h2c_upgrade_is_never_tunnelled_and_the_connection_stays_http1() {
    let upstream = ScriptedUpstream::start(h2c_accepting()).await;
    let gw = Gateway::start_with(&upstream.url(), "").await;
    let token = user_token(&gw).await;
    let h2c = format!(
        "GET /data HTTP/1.1\r\nHost: gateway.test\r\nConnection: Upgrade, HTTP2-Settings\r\n\
         Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nX-Access-Token: {token}\r\n\r\n"
    );
    let (mut stream, response) = exchange(gw.addr, h2c).await;
    assert_eq!(
        response.status, 200,
        "answered as a plain request: {response:?}"
    );
    let head = upstream.heads().pop().unwrap().to_ascii_lowercase();
    for hop in ["upgrade:", "http2-settings:", "connection:"] {
        assert!(!head.contains(hop), "{hop} reached the upstream:\n{head}");
    }
    // Still HTTP/1.1 on the same connection: a second request is answered as one.
    stream
        .write_all(
            format!("GET /data HTTP/1.1\r\nHost: gateway.test\r\nX-Access-Token: {token}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(read_response(&mut stream).await.status, 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn asking_for_an_ungranted_upgrade_does_not_blind_the_smuggling_check() {
    let upstream = FakeUpstream::start().await;
    let gw = Gateway::start(&upstream).await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(
            b"GET /public/first HTTP/1.1\r\nHost: gateway.test\r\nConnection: Upgrade\r\n\
              Upgrade: x-unknown\r\n\r\n",
        )
        .await
        .unwrap();
    assert_eq!(
        read_response(&mut stream).await.status,
        200,
        "served as plain"
    );
    stream
        .write_all(
            b"POST /public/smuggled HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: 5\r\n\
              Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
    let response = read_response(&mut stream).await;
    assert_eq!(response.status, 400, "{response:?}");
    assert_eq!(
        response.message(),
        "Request has both Content-Length and Transfer-Encoding"
    );
    assert!(
        upstream
            .recorded()
            .iter()
            .all(|r| r.uri.path() != "/public/smuggled"),
        "the conflicting request was forwarded"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_route_tunnels_only_the_protocols_it_allows() {
    // An upstream that accepts any offered protocol.
    let upstream = ScriptedUpstream::start(Arc::new(|head: &str| {
        let protocol = head
            .lines()
            .find_map(|l| l.strip_prefix("upgrade: ").or(l.strip_prefix("Upgrade: ")))
            .map(str::to_owned);
        match protocol {
            Some(p) => format!(
                "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {p}\r\n\r\n"
            )
            .into_bytes(),
            None => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        }
    }))
    .await;
    let gw = backend_gateway(
        &upstream.url(),
        &[
            ("/", "public = true"),
            ("/custom", "public = true\nupgrades = [\"x-custom/2\"]"),
            ("/none", "public = true\nupgrades = []"),
        ],
    )
    .await;
    let ask = |target: &str, protocol: &str| {
        format!(
            "GET {target} HTTP/1.1\r\nHost: gateway.test\r\nConnection: Upgrade\r\nUpgrade: {protocol}\r\n\r\n"
        )
    };
    for (target, protocol, switched) in [
        ("/ws", "websocket", true),
        ("/ws", "x-custom/2", false),
        ("/custom", "x-custom/2", true),
        ("/custom", "websocket", false),
        ("/none", "websocket", false),
    ] {
        let (mut stream, response) = exchange(gw.addr, ask(target, protocol)).await;
        if switched {
            assert_eq!(response.status, 101, "{target} {protocol}");
            // Bytes now go through the tunnel (the upstream echoes them).
            stream.write_all(b"ping").await.unwrap();
            let mut echo = [0u8; 4];
            stream.read_exact(&mut echo).await.unwrap();
            assert_eq!(&echo, b"ping");
        } else {
            assert_eq!(response.status, 200, "{target} {protocol}: {response:?}");
            let head = upstream.heads().pop().unwrap().to_ascii_lowercase();
            assert!(!head.contains("upgrade:"), "{target} {protocol}:\n{head}");
        }
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn an_upstream_switching_to_anything_unoffered_gets_no_tunnel() {
    // 101 to everything, naming h2c whatever was asked.
    let upstream = ScriptedUpstream::answering(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
    )
    .await;
    let gw = Gateway::start_with(&upstream.url(), "").await;
    for head in [
        "GET /public/ws HTTP/1.1\r\nHost: gateway.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        "GET /public/plain HTTP/1.1\r\nHost: gateway.test\r\n\r\n",
    ] {
        let (_stream, response) = exchange(gw.addr, head).await;
        assert_eq!(response.status, 502, "{head:?}: {response:?}");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn connect_and_trace_are_refused_before_any_route() {
    let upstream = FakeUpstream::start().await;
    let gw = Gateway::start(&upstream).await;
    for head in [
        "CONNECT internal.example:443 HTTP/1.1\r\nHost: internal.example:443\r\n\r\n",
        "TRACE /public/x HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n",
    ] {
        let (_stream, response) = exchange(gw.addr, head).await;
        assert_eq!(response.status, 405, "{head:?}");
        assert!(response.header("allow").unwrap().contains("GET"));
        assert_eq!(response.header("content-type"), Some("application/json"));
    }
    assert!(upstream.recorded().is_empty());
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Hole 4: a client's bad body is the client's error, and no client input ejects an instance.

/// The sum of every sample of `metric` in a `/metrics` scrape.
async fn metric_sum(gw: &Gateway, metric: &str) -> f64 {
    let text = gw.metrics_text().await;
    text.lines()
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Asserts the upstream was charged with nothing: no error, ejection, retry or timeout.
async fn assert_upstream_uncharged(gw: &Gateway, context: &str) {
    for metric in [
        "meiro_gate_upstream_errors_total",
        "meiro_gate_upstream_ejections_total",
        "meiro_gate_upstream_retries_total",
    ] {
        assert_eq!(metric_sum(gw, metric).await, 0.0, "{context}: {metric}");
    }
}

/// `POST /data` with the token; `rest` is the framing header(s), the blank line and the body.
fn authenticated_post(token: &str, rest: &str) -> String {
    format!("POST /data HTTP/1.1\r\nHost: gateway.test\r\nX-Access-Token: {token}\r\n{rest}")
}

/// One instance, ejection for a minute, retries and a 300 ms response timeout: anything held
/// against the instance shows (a 503 after an ejection, a count in the metrics).
async fn strict_gateway(upstream: &str, extra: &str) -> Gateway {
    Gateway::start_with(
        upstream,
        &format!(
            r#"
            [[upstreams]]
            name = "backend"
            instances = ["{upstream}"]
            retries = 2
            eject_base = "60s"
            response_timeout = "300ms"
            [[routes]]
            prefix = "/"
            upstream = "backend"
            {extra}
            "#
        ),
    )
    .await
}

/// A [`strict_gateway`] with `extra`, its upstream, and a user's token.
async fn strict_setup(extra: &str) -> (FakeUpstream, Gateway, String) {
    let upstream = FakeUpstream::start().await;
    let gw = strict_gateway(&upstream.url(), extra).await;
    let token = user_token(&gw).await;
    (upstream, gw, token)
}

/// A connection that has sent [`authenticated_post`]`(token, rest)`.
async fn send_post(gw: &Gateway, token: &str, rest: &str) -> TcpStream {
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(authenticated_post(token, rest).as_bytes())
        .await
        .unwrap();
    stream
}

#[tokio::test]
async fn malformed_chunked_bodies_are_the_clients_400_and_charge_no_upstream() {
    let (_upstream, gw, token) = strict_setup("").await;
    for (case, body) in [
        ("plus sign", "+5\r\nhello\r\n0\r\n\r\n"),
        ("0x prefix", "0x5\r\nhello\r\n0\r\n\r\n"),
        ("17 hex digits", "10000000000000000\r\nhello\r\n0\r\n\r\n"),
        ("bare LF after the size", "5\nhello\r\n0\r\n\r\n"),
        ("bare LF after the data", "5\r\nhello\n0\r\n\r\n"),
        ("size too large", "fffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
        ("not hex", "zz\r\nhello\r\n0\r\n\r\n"),
    ] {
        let response = raw(
            gw.addr,
            authenticated_post(&token, &format!("Transfer-Encoding: chunked\r\n\r\n{body}")),
        )
        .await;
        assert_eq!(response.status, 400, "{case}: {response:?}");
        assert_eq!(response.message(), "Request body is malformed", "{case}");
    }
    assert_upstream_uncharged(&gw, "malformed bodies").await;
    assert_eq!(gw.get_with_token("/data", &token).await.status(), 200);
    // Leading zeros are valid (RFC 9112 §7.1: 1*HEXDIG), as hyper and nginx read them.
    let zeros = raw(
        gw.addr,
        authenticated_post(
            &token,
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n00000000000000005\r\nhello\r\n0\r\n\r\n",
        ),
    )
    .await;
    assert_eq!(zeros.status, 200);
    assert_eq!(zeros.json()["body_bytes"], 5);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_stalled_upload_is_the_clients_408_and_charges_no_upstream() {
    let (_upstream, gw, token) = strict_setup("[limits]\nbody_read_timeout = \"300ms\"\n").await;
    let mut stream = send_post(&gw, &token, "Content-Length: 10\r\n\r\nabc").await;
    let started = Instant::now();
    let response = read_response(&mut stream).await;
    assert_eq!(response.status, 408, "{response:?}");
    assert_eq!(response.message(), "Request body timed out");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_upstream_uncharged(&gw, "stalled upload").await;
    assert_eq!(gw.get_with_token("/data", &token).await.status(), 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_slow_steady_upload_is_not_an_upstream_timeout() {
    // response_timeout is 300 ms; the upload takes about 750 ms.
    let (_upstream, gw, token) = strict_setup("").await;
    let mut stream = send_post(&gw, &token, "Transfer-Encoding: chunked\r\n\r\n").await;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        stream.write_all(b"a\r\n0123456789\r\n").await.unwrap();
    }
    stream.write_all(b"0\r\n\r\n").await.unwrap();
    let response = read_response(&mut stream).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.json()["body_bytes"], 50);
    assert_upstream_uncharged(&gw, "slow upload").await;
    gw.shutdown().await;
}

#[tokio::test]
async fn a_slow_endpoint_times_out_but_ejects_no_instance() {
    let (_upstream, gw, token) = strict_setup("").await;
    // Any client can ask for something slow.
    let slow = gw.get_with_token("/data?delay_ms=800", &token).await;
    assert_eq!(slow.status(), 504);
    assert_eq!(
        metric_sum(&gw, "meiro_gate_upstream_ejections_total").await,
        0.0
    );
    // The one instance is still in service.
    assert_eq!(gw.get_with_token("/data", &token).await.status(), 200);
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Hole 5: the gateway speaks its own HTTP version downstream.

#[tokio::test]
async fn an_http10_upstream_neither_downgrades_nor_closes_the_client_connection() {
    for (case, reply) in [
        (
            "with a length",
            &b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"[..],
        ),
        (
            "close-delimited",
            b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nok",
        ),
    ] {
        let upstream = ScriptedUpstream::answering(reply).await;
        let gw = Gateway::start_with(&upstream.url(), "").await;
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        for n in 0..3 {
            stream
                .write_all(b"GET /public/x HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
                .await
                .unwrap();
            let response = read_response(&mut stream).await;
            assert_eq!(response.version, "HTTP/1.1", "{case}, request {n}");
            assert_eq!(response.status, 200, "{case}, request {n}");
            assert_eq!(response.body, b"ok", "{case}, request {n}");
            assert_ne!(response.header("connection"), Some("close"), "{case}");
        }
        gw.shutdown().await;
    }
}

// ---------------------------------------------------------------------------------------------
// Hole 8: every connection state has a deadline.

/// Reads until the peer closes; how long that took (panics after 5 s).
async fn closed_after<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Duration {
    let started = Instant::now();
    read_until_closed(stream).await;
    started.elapsed()
}

/// A client asking for `/public/x` from a task, so that the test can watch it wait in the
/// backlog for a free connection slot.
fn get_in_background(addr: SocketAddr) -> JoinHandle<Raw> {
    tokio::spawn(async move { raw_get(addr, "gateway.test", "/public/x", "").await })
}

#[tokio::test]
async fn silent_and_half_open_connections_are_closed_and_free_their_slots() {
    let upstream = FakeUpstream::start().await;
    let gw = Gateway::start_with(
        &upstream.url(),
        "[limits]\nheader_read_timeout = \"400ms\"\nmax_connections = 3\n",
    )
    .await;
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    let mut half_preface = TcpStream::connect(gw.addr).await.unwrap();
    half_preface.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let mut half_head = TcpStream::connect(gw.addr).await.unwrap();
    half_head.write_all(b"GET /public/x HT").await.unwrap();
    // All three places are taken: a fourth client waits in the backlog until one is freed.
    let waiting = get_in_background(gw.addr);
    for (name, stream) in [
        ("silent", &mut silent),
        ("half a preface", &mut half_preface),
        ("half a head", &mut half_head),
    ] {
        let waited = closed_after(stream).await;
        assert!(waited < Duration::from_secs(2), "{name}: {waited:?}");
    }
    assert_eq!(waiting.await.unwrap().status, 200, "the freed place serves");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_tls_connection_that_says_nothing_after_the_handshake_is_closed() {
    use common::tls::{self_signed, tls_connect, write_cert};
    let upstream = FakeUpstream::start().await;
    let cert = self_signed("gateway");
    let dir = tempfile::tempdir().unwrap();
    write_cert(dir.path(), &cert);
    let gw = Gateway::start_with(
        &upstream.url(),
        &format!(
            "[limits]\nheader_read_timeout = \"400ms\"\n[server.tls]\ncert = \"{0}/cert.pem\"\nkey = \"{0}/key.pem\"\n",
            dir.path().display()
        ),
    )
    .await;
    let mut stream = tls_connect(gw.addr, &[&cert]).await.expect("handshake");
    let waited = closed_after(&mut stream).await;
    assert!(waited < Duration::from_secs(2), "{waited:?}");
    gw.shutdown().await;
}

#[tokio::test]
async fn an_upgraded_tunnel_keeps_its_connection_slot() {
    let (echo, _, echo_task) = ws_echo().await;
    let gw =
        Gateway::start_with(&format!("http://{echo}"), "[limits]\nmax_connections = 1\n").await;
    let request = format!("ws://{}/public/ws", gw.addr)
        .into_client_request()
        .unwrap();
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .expect("the upgrade succeeds");
    // The only place is the tunnel's: another client waits in the backlog meanwhile.
    let waiting = get_in_background(gw.addr);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "served past max_connections");
    drop(ws);
    let served = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("served once the tunnel closed")
        .unwrap();
    // Answered by the gateway (the echo server speaks no plain HTTP, hence an error status).
    assert!(matches!(served.status, 400 | 502), "{served:?}");
    gw.shutdown().await;
    echo_task.abort();
}

#[tokio::test]
async fn an_idle_http2_connection_is_sent_goaway() {
    let upstream = FakeUpstream::start().await;
    let gw = Gateway::start_with(&upstream.url(), "[limits]\nidle_timeout = \"400ms\"\n").await;
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let connection = tokio::spawn(connection);
    let request = http::Request::builder()
        .uri(format!("http://{}/public/x", gw.addr))
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(sender.send_request(request).await.unwrap().status(), 200);
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), connection)
        .await
        .expect("the gateway ends an idle HTTP/2 connection")
        .unwrap()
        .expect("with GOAWAY, not an error");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(350) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    gw.shutdown().await;
}

/// A TCP relay between a client and the gateway that can be frozen: nothing more is passed
/// either way (the client's PING answers included), while it still notices the gateway
/// closing its side.
struct Relay {
    addr: SocketAddr,
    frozen: Arc<std::sync::atomic::AtomicBool>,
    gateway_closed: tokio::sync::watch::Receiver<bool>,
}

impl Relay {
    async fn start(gateway: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (closed_tx, gateway_closed) = tokio::sync::watch::channel(false);
        let flag = frozen.clone();
        tokio::spawn(async move {
            let (client, _) = listener.accept().await.unwrap();
            let upstream = TcpStream::connect(gateway).await.unwrap();
            let (mut client_read, mut client_write) = client.into_split();
            let (mut gateway_read, mut gateway_write) = upstream.into_split();
            let up_flag = flag.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 16384];
                while let Ok(n) = client_read.read(&mut buf).await {
                    if n == 0 || up_flag.load(Ordering::SeqCst) {
                        // Frozen: the client's side is never read again; the socket stays open.
                        std::future::pending::<()>().await;
                    }
                    if gateway_write.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
            let mut buf = [0u8; 16384];
            loop {
                match gateway_read.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let _ = closed_tx.send(true);
                        return;
                    }
                    Ok(n) if !flag.load(Ordering::SeqCst) => {
                        let _ = client_write.write_all(&buf[..n]).await;
                    }
                    Ok(_) => {}
                }
            }
        });
        Relay {
            addr,
            frozen,
            gateway_closed,
        }
    }
}

#[tokio::test]
async fn an_http2_client_that_stops_answering_pings_loses_its_connection_and_its_requests() {
    let upstream =
        ScriptedUpstream::answering(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let gw = Gateway::start_with(
        &upstream.url(),
        "[limits]\nhttp2_keepalive_interval = \"200ms\"\nhttp2_keepalive_timeout = \"200ms\"\n",
    )
    .await;
    let mut relay = Relay::start(gw.addr).await;
    let stream = TcpStream::connect(relay.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = http::Request::builder()
        .uri(format!("http://{}/public/slow?hold_ms=30000", gw.addr))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let _pending = tokio::spawn(sender.send_request(request));
    eventually!(
        upstream.in_progress.load(Ordering::SeqCst) == 1,
        "the request reached the upstream"
    );
    relay.frozen.store(true, Ordering::SeqCst);
    let started = Instant::now();
    tokio::time::timeout(
        Duration::from_secs(5),
        relay.gateway_closed.wait_for(|c| *c),
    )
    .await
    .expect("the gateway closes a connection whose PINGs go unanswered")
    .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    eventually!(
        upstream.in_progress.load(Ordering::SeqCst) == 0,
        "the request was cancelled at the upstream"
    );
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Hole 9: paced HTTP/2 rapid reset.

#[tokio::test]
async fn paced_rapid_reset_gets_goaway_and_cancels_at_the_upstream() {
    let upstream =
        ScriptedUpstream::answering(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let gw = Gateway::start_with(&upstream.url(), "").await;
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(stream).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();

    const ROUNDS: usize = 20;
    const BATCH: usize = 100;
    let mut sent = 0;
    let mut shut: Option<h2::Error> = None;
    'rounds: for _ in 0..ROUNDS {
        let mut streams = Vec::new();
        for _ in 0..BATCH {
            let request = http::Request::builder()
                .uri(format!("http://{}/public/x?hold_ms=10000", gw.addr))
                .body(())
                .unwrap();
            match client.send_request(request, true) {
                Ok((response, _)) => streams.push(response),
                Err(e) => {
                    shut = Some(e);
                    break 'rounds;
                }
            }
            sent += 1;
            client = match client.ready().await {
                Ok(c) => c,
                Err(e) => {
                    shut = Some(e);
                    break 'rounds;
                }
            };
        }
        // The pause: each batch is reset only once all of it reached the upstream, so the
        // gateway accepted every stream first (hyper's own limit counts only streams reset
        // before that, and lets this through).
        let reached = upstream.heads().len();
        let deadline = Instant::now() + Duration::from_secs(5);
        while upstream.heads().len() < sent && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if upstream.heads().len() == reached && reached < sent {
            break; // Nothing more gets through: the connection is going away.
        }
        // Dropping an unanswered response future resets its stream (RST_STREAM CANCEL).
        drop(streams);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let shut = shut.expect("the connection was never shut");
    assert!(
        shut.is_go_away() || shut.is_io() || shut.reason().is_some(),
        "shut by the gateway: {shut:?}"
    );
    let forwarded = upstream.heads().len();
    assert!(
        forwarded <= 3 * BATCH,
        "{forwarded} of {sent} reset requests reached the upstream"
    );
    assert!(
        upstream.max_in_progress.load(Ordering::SeqCst) <= 200,
        "more in progress at the upstream than one connection's stream limit"
    );
    eventually!(
        upstream.in_progress.load(Ordering::SeqCst) == 0,
        "reset requests still held at the upstream"
    );
    let _ = tokio::time::timeout(Duration::from_secs(5), connection).await;
    gw.shutdown().await;
}
