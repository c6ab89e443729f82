//! The data plane end to end: token checks, forwarded headers, identity-header spoofing, path
//! normalization, streaming, upstream failures, expiry and revocation, and h2c.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use common::{FakeUpstream, Gateway, message};
use meiro_gate::store::{Role, SqliteStore, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::RwLock;

const MISSING: &str = "Missing access token";
const INVALID: &str = "Invalid or expired access token";

/// The memory test reads this process's RSS, which every other test running in parallel
/// moves (each argon2 hash alone takes 19 MiB): it holds this exclusively, the others shared.
static RSS_GUARD: RwLock<()> = RwLock::const_new(());

/// One raw HTTP/1.1 exchange, for request targets a client library would normalize itself.
/// Returns the status, the lower-cased header lines and the (de-chunked) body.
async fn raw_request(addr: SocketAddr, head: &str) -> (u16, Vec<String>, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf))
        .await
        .expect("the gateway answers and closes within 5 s")
        .unwrap();
    let text = String::from_utf8(buf).expect("UTF-8 response");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .expect("a complete response head");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers: Vec<String> = lines.map(str::to_ascii_lowercase).collect();
    let body = if headers.iter().any(|h| h == "transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, headers, body)
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").expect("chunk size line");
        let size = usize::from_str_radix(size.trim(), 16).expect("hex chunk size");
        if size == 0 {
            return out;
        }
        out.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
}

/// `GET target` with `Host: x` and `Connection: close`, plus `extra` header lines.
async fn raw_get(addr: SocketAddr, target: &str, extra: &str) -> (u16, String) {
    let head = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n");
    let (status, _, body) = raw_request(addr, &head).await;
    (status, body)
}

fn json_message(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).expect("JSON body");
    v["message"].as_str().expect("a message").to_owned()
}

fn header<'a>(r: &'a common::Recorded, name: &str) -> Vec<&'a str> {
    r.headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}

/// A `/proc/self/status` field in kB (`VmRSS:`, `VmHWM:`).
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"))
}

/// Watches this process's peak RSS from `start` to `stop`: a buffered body may be freed again
/// before the response arrives, so the RSS afterwards proves nothing. The kernel's high-water
/// mark is reset where allowed, and a thread samples VmRSS every 2 ms regardless.
struct PeakRss {
    hwm_reset: bool,
    stop: Arc<AtomicBool>,
    sampler: std::thread::JoinHandle<u64>,
}

impl PeakRss {
    fn start() -> PeakRss {
        let hwm_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let sampler = std::thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(Ordering::Relaxed) {
                peak = peak.max(status_kib("VmRSS:"));
                std::thread::sleep(Duration::from_millis(2));
            }
            peak.max(status_kib("VmRSS:"))
        });
        PeakRss {
            hwm_reset,
            stop,
            sampler,
        }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let sampled = self.sampler.join().unwrap();
        if self.hwm_reset {
            sampled.max(status_kib("VmHWM:"))
        } else {
            sampled
        }
    }
}

/// A token with its signature replaced by `signature` (already base64url).
fn with_parts(header: &str, payload: &str, signature: &str) -> String {
    format!("{header}.{payload}.{signature}")
}

#[tokio::test]
async fn missing_and_forged_tokens_are_rejected_before_the_upstream() {
    let _shared = RSS_GUARD.read().await;
    let up = FakeUpstream::start().await;
    let gw = Gateway::start(&up).await;
    gw.add_user("alice@example.com", Role::User).await;
    let real = gw.login("alice@example.com").await;

    let none = gw.http.get(gw.url("/data")).send().await.unwrap();
    assert_eq!(none.status(), 401);
    assert_eq!(none.headers()["www-authenticate"], "Bearer");
    assert_eq!(message(none).await, MISSING);

    let parts: Vec<&str> = real.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWS compact token");
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let kid = header["kid"].as_str().expect("tokens carry a kid");

    let mut signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    signature[10] ^= 0x01;
    let flipped = with_parts(parts[0], parts[1], &URL_SAFE_NO_PAD.encode(&signature));

    let none_header =
        URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"none","typ":"JWT","kid":"{kid}"}}"#));
    let alg_none = with_parts(&none_header, parts[1], "");
    let alg_none_with_sig = with_parts(&none_header, parts[1], parts[2]);

    // HS256 keyed with the gateway's public key bytes, under its kid: the classic confusion.
    let jwks = gw.jwks().await;
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .expect("the signing kid is in the JWKS");
    let public = URL_SAFE_NO_PAD.decode(key["x"].as_str().unwrap()).unwrap();
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let mut hs_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs_header.kid = Some(kid.to_owned());
    let hs256 = jsonwebtoken::encode(
        &hs_header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&public),
    )
    .unwrap();

    // A valid token of another gateway (same issuer URL, its own key).
    let other = Gateway::start(&up).await;
    other.add_user("alice@example.com", Role::User).await;
    let foreign = other.login("alice@example.com").await;

    let seen_before = up.recorded().len();
    for (what, token) in [
        ("garbage", "garbage"),
        ("three garbage parts", "a.b.c"),
        ("flipped signature byte", flipped.as_str()),
        ("alg none", alg_none.as_str()),
        (
            "alg none with the real signature",
            alg_none_with_sig.as_str(),
        ),
        ("HS256 with the public key", hs256.as_str()),
        ("another gateway's token", foreign.as_str()),
    ] {
        let response = gw.get_with_token("/data", token).await;
        assert_eq!(response.status(), 401, "{what}");
        assert_eq!(message(response).await, INVALID, "{what}");
    }
    assert_eq!(up.recorded().len(), seen_before, "the upstream saw nothing");
    assert_eq!(seen_before, 0);

    // And the real token still works (nothing above poisoned the cache).
    assert_eq!(gw.get_with_token("/data", &real).await.status(), 200);
    other.shutdown().await;
    gw.shutdown().await;
}

#[tokio::test]
async fn valid_token_in_each_place_is_forwarded_with_identity_and_forwarding_headers() {
    let _shared = RSS_GUARD.read().await;
    let up = FakeUpstream::start().await;
    let gw = Gateway::start(&up).await;
    let user = gw.add_user("Bob@Example.com", Role::Admin).await;
    let token = gw.login("bob@example.com").await;
    let host = gw.addr.to_string();

    let via_header = gw
        .http
        .post(gw.url("/a/b?x=1&y=2"))
        .header("x-access-token", &token)
        .body("hello, upstream")
        .send()
        .await
        .unwrap();
    let via_bearer = gw
        .http
        .put(gw.url("/a/b?x=1&y=2"))
        .bearer_auth(&token)
        .body("hello, upstream")
        .send()
        .await
        .unwrap();
    let via_cookie = gw
        .http
        .delete(gw.url("/a/b?x=1&y=2"))
        .header("cookie", format!("other=1; meiro_access_token={token}"))
        .body("hello, upstream")
        .send()
        .await
        .unwrap();

    let recorded = up.recorded();
    assert_eq!(recorded.len(), 3);
    for (response, method, seen) in [
        (via_header, "POST", &recorded[0]),
        (via_bearer, "PUT", &recorded[1]),
        (via_cookie, "DELETE", &recorded[2]),
    ] {
        assert_eq!(response.status(), 200, "{method}");
        assert_eq!(response.headers()["x-upstream"], "fake", "{method}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["path"], "/a/b", "{method}");
        assert_eq!(body["body_bytes"], 15, "{method}");

        assert_eq!(seen.method, method);
        assert_eq!(seen.uri.path(), "/a/b", "{method}");
        assert_eq!(seen.uri.query(), Some("x=1&y=2"), "{method}");
        assert_eq!(seen.body_bytes, 15, "{method}");
        assert_eq!(
            header(seen, "x-meiro-user-id"),
            [user.id.to_string()],
            "{method}"
        );
        assert_eq!(
            header(seen, "x-meiro-user-email"),
            ["bob@example.com"],
            "{method}"
        );
        assert_eq!(header(seen, "x-meiro-user-role"), ["admin"], "{method}");
        assert_eq!(header(seen, "x-forwarded-for"), ["127.0.0.1"], "{method}");
        assert_eq!(header(seen, "x-forwarded-proto"), ["http"], "{method}");
        assert_eq!(
            header(seen, "x-forwarded-host"),
            [host.as_str()],
            "{method}"
        );
    }

    // X-Forwarded-Host is the Host the client sent, whatever it is.
    let named_host = gw
        .http
        .get(gw.url("/h"))
        .header("x-access-token", &token)
        .header("host", "app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(named_host.status(), 200);
    assert_eq!(header(&up.last(), "x-forwarded-host"), ["app.example.com"]);

    // The upstream's status passes through unchanged.
    let teapot = gw.get_with_token("/t?status=418", &token).await;
    assert_eq!(teapot.status(), 418);
    gw.shutdown().await;
}

#[tokio::test]
async fn token_sources_keep_their_order_but_an_empty_one_hides_nothing() {
    let _shared = RSS_GUARD.read().await;
    let up = FakeUpstream::start().await;
    let gw = Gateway::start(&up).await;
    gw.add_user("kim@example.com", Role::User).await;
    let token = gw.login("kim@example.com").await;
    let cookie = format!("meiro_access_token={token}");
    let get = || gw.http.get(gw.url("/order"));

    // A present token wins even when a later source holds a valid one.
    let header_first = get()
        .header("x-access-token", "garbage")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(header_first.status(), 401);
    let bearer_first = get()
        .bearer_auth("garbage")
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer_first.status(), 401);

    // A source that carries no token does not hide the next one.
    let empty_header = get()
        .header("x-access-token", "")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        empty_header.status(),
        200,
        "empty X-Access-Token, valid Bearer"
    );
    let basic = get()
        .header("authorization", "Basic Zm9vOmJhcg==")
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 200, "Authorization: Basic, valid cookie");
    gw.shutdown().await;
}

#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded() {
    let _shared = RSS_GUARD.read().await;
    let up = FakeUpstream::start().await;
    let gw = Gateway::start(&up).await;
    let (status, _) = raw_get(
        gw.addr,
        "/public/hop",
        "Connection: close, x-secret-hop\r\nX-Secret-Hop: 1\r\nKeep-Alive: timeout=5\r\n\
         X-End-To-End: kept\r\n",
    )
    .await;
    assert_eq!(status, 200);
    let seen = up.last();
    assert!(seen.headers.get("x-secret-hop").is_none(), "{seen:?}");
    assert!(seen.headers.get("keep-alive").is_none(), "{seen:?}");
    assert_eq!(header(&seen, "x-end-to-end"), ["kept"]);
    gw.shutdown().await;
}

#[tokio::test]
async fn spoofed_identity_headers_never_reach_the_upstream() {
    let _shared = RSS_GUARD.read().await;
    let up = FakeUpstream::start().await;
    let gw = Gateway::start(&up).await;
    let user = gw.add_user("carol@example.com", Role::User).await;
    let token = gw.login("carol@example.com").await;

    let spoof = |request: reqwest::RequestBuilder| {
        request
            .header("x-meiro-user-id", "attacker")
            .header("x-meiro-user-id", "attacker-2")
            .header("X-Meiro-User-Email", "root@example.com")
            .header("x-meiro-user-email", "root2@example.com")
            .header("x-meiro-user-role", "admin")
            .header("x-meiro-user-role", "admin")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "evil.example")
    };

    let protected = spoof(gw.http.get(gw.url("/private")))
        .header("x-access-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(protected.status(), 200);
    let seen = up.last();
    assert_eq!(header(&seen, "x-meiro-user-id"), [user.id.to_string()]);
    assert_eq!(header(&seen, "x-meiro-user-email"), ["carol@example.com"]);
    assert_eq!(header(&seen, "x-meiro-user-role"), ["user"]);
    // The gateway's own view of the hop replaces the client's claims about it.
    assert_eq!(header(&seen, "x-forwarded-proto"), ["http"]);
    assert_eq!(
        header(&seen, "x-forwarded-host"),
        [gw.addr.to_string().as_str()]
    );

    let public = spoof(gw.http.get(gw.url("/public/page")))
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), 200);
    let seen = up.last();
    assert_eq!(seen.uri.path(), "/public/page");
    for name in ["x-meiro-user-id", "x-meiro-user-email", "x-meiro-user-role"] {
        assert!(header(&seen, name).is_empty(), "{name} reached: {seen:?}");
    }

    // A public route with a token too: whatever the gateway forwards, never the client's copy.
    let public_with_token = spoof(gw.http.get(gw.url("/public/page")))
        .header("x-access-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(public_with_token.status(), 200);
    let seen = up.last();
    for name in ["x-meiro-user-id", "x-meiro-user-email", "x-meiro-user-role"] {
        let values = header(&seen, name);
        assert!(values.len() <= 1, "{name}: {values:?}");
        assert!(
            !values
                .iter()
                .any(|v| v.contains("attacker") || v.contains("root") || *v == "admin"),
            "{name}: {values:?}"
        );
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn path_normalization_cannot_reach_a_protected_route_through_a_public_one() {
    let _shared = RSS_GUARD.read().await;
    let up = FakeUpstream::start().await;
    let gw = Gateway::start(&up).await;
    gw.add_user("dave@example.com", Role::User).await;
    let token = gw.login("dave@example.com").await;

    let (status, body) = raw_get(gw.addr, "/public/x", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(up.last().uri.path(), "/public/x");

    for target in [
        "/public/../private",
        "/public/%2e%2e/private",
        "/public/%2E./private",
        "/public/./../private",
        "/public//../private",
        "/publicity",
    ] {
        let (status, body) = raw_get(gw.addr, target, "").await;
        assert_eq!(status, 401, "{target}: {body}");
        assert_eq!(json_message(&body), MISSING, "{target}");
    }
    assert_eq!(
        up.recorded().len(),
        1,
        "nothing but /public/x reached the upstream"
    );

    // With a token the same target goes through, normalized, query intact.
    let auth = format!("X-Access-Token: {token}\r\n");
    let (status, body) = raw_get(gw.addr, "/public/%2e%2e/private?q=%2e%2e", &auth).await;
    assert_eq!(status, 200, "{body}");
    let seen = up.last();
    assert_eq!(seen.uri.path(), "/private");
    assert_eq!(seen.uri.query(), Some("q=%2e%2e"));

    for target in [
        "/public%2f..%2fprivate",
        "/public%2F..%2Fprivate",
        "/a%5cb",
        "/public/a%00b",
        "/public/%zz",
        "/public/../..",
    ] {
        let (status, body) = raw_get(gw.addr, target, "").await;
        assert_eq!(status, 400, "{target}: {body}");
        assert_eq!(json_message(&body), "Invalid request path", "{target}");
    }

    let (status, body) = raw_get(gw.addr, "//public/x", "").await;
    assert_eq!(status, 200, "{body}");
    let answered: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answered["path"], "/public/x");
    assert_eq!(up.last().uri.path(), "/public/x");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_50_mib_request_body_streams_through_with_flat_memory() {
    const CHUNK_LEN: usize = 64 * 1024;
    const CHUNKS: usize = 800;
    static CHUNK: [u8; CHUNK_LEN] = [b'x'; CHUNK_LEN];

    let _exclusive = RSS_GUARD.write().await;
    let up = FakeUpstream::start().await;
    let gw = Gateway::start(&up).await;
    gw.add_user("erin@example.com", Role::User).await;
    let token = gw.login("erin@example.com").await;
    // Warm every connection pool and buffer before the baseline.
    assert_eq!(gw.get_with_token("/warm", &token).await.status(), 200);

    let before = status_kib("VmRSS:");
    let peak = PeakRss::start();
    let chunks = futures_util::stream::iter(
        std::iter::repeat_n(Bytes::from_static(&CHUNK), CHUNKS).map(Ok::<_, std::io::Error>),
    );
    let response = gw
        .http
        .post(gw.url("/upload"))
        .header("x-access-token", &token)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    let peak = peak.stop();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["body_bytes"], 52_428_800);
    assert_eq!(up.last().body_bytes, 52_428_800);
    let growth_mib = peak.saturating_sub(before) / 1024;
    assert!(
        growth_mib < 40,
        "RSS peaked {growth_mib} MiB above the start ({before} kB -> {peak} kB): the body was buffered"
    );
    gw.shutdown().await;
}

/// An upstream whose every answer is a `len`-byte body streamed in 64 KiB frames.
async fn start_big_upstream(len: usize) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    static CHUNK: [u8; 64 * 1024] = [b'y'; 64 * 1024];
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| async move {
                    let frames = std::iter::repeat_n(CHUNK.len(), len / CHUNK.len())
                        .chain(std::iter::once(len % CHUNK.len()))
                        .filter(|n| *n > 0)
                        .map(|n| {
                            Ok::<_, std::io::Error>(http_body::Frame::data(Bytes::from_static(
                                &CHUNK[..n],
                            )))
                        });
                    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(body))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_50_mib_response_body_streams_through_with_flat_memory() {
    const LEN: usize = 50 * 1024 * 1024 + 7;
    let _exclusive = RSS_GUARD.write().await;
    let (addr, upstream) = start_big_upstream(LEN).await;
    let gw = Gateway::start_with(&format!("http://{addr}"), "").await;
    let warm = gw.http.get(gw.url("/public/warm")).send().await.unwrap();
    assert_eq!(warm.status(), 200);
    drop(warm);

    let before = status_kib("VmRSS:");
    let peak = PeakRss::start();
    let mut response = gw.http.get(gw.url("/public/big")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut received = 0;
    while let Some(chunk) = response.chunk().await.unwrap() {
        received += chunk.len();
    }
    let peak = peak.stop();
    assert_eq!(received, LEN);
    let growth_mib = peak.saturating_sub(before) / 1024;
    assert!(
        growth_mib < 40,
        "RSS peaked {growth_mib} MiB above the start ({before} kB -> {peak} kB): the response was buffered"
    );
    gw.shutdown().await;
    upstream.abort();
}

#[tokio::test]
async fn upstream_down_is_502_and_slow_is_504_never_a_hang() {
    let _shared = RSS_GUARD.read().await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let down = Gateway::start_with(&format!("http://{closed}"), "").await;
    down.add_user("frank@example.com", Role::User).await;
    let token = down.login("frank@example.com").await;
    let started = Instant::now();
    let response = down.get_with_token("/x", &token).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(response.status(), 502);
    assert_eq!(message(response).await, "Upstream unavailable");
    // The refused instance is now ejected: the public route (same cluster) is answered at
    // once with 503, without another connection attempt.
    let started = Instant::now();
    let response = down.http.get(down.url("/public/x")).send().await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(response.status(), 503);
    assert_eq!(message(response).await, "No upstream instance available");
    down.shutdown().await;

    let up = FakeUpstream::start().await;
    let gw = Gateway::start(&up).await;
    gw.add_user("frank@example.com", Role::User).await;
    let token = gw.login("frank@example.com").await;
    let started = Instant::now();
    let response = gw.get_with_token("/slow?delay_ms=3000", &token).await;
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 504);
    assert_eq!(message(response).await, "Upstream timed out");
    assert!(
        elapsed >= Duration::from_millis(1900) && elapsed < Duration::from_millis(2600),
        "504 after {elapsed:?}, the response timeout is 2 s"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn cached_tokens_expire_with_the_clock() {
    let _shared = RSS_GUARD.read().await;
    let up = FakeUpstream::start().await;
    let gw = Gateway::start(&up).await;
    gw.add_user("gina@example.com", Role::User).await;
    let token = gw.login("gina@example.com").await;
    assert_eq!(gw.get_with_token("/x", &token).await.status(), 200);

    gw.clock.advance(Duration::from_secs(8 * 3600 - 60));
    assert_eq!(
        gw.get_with_token("/x", &token).await.status(),
        200,
        "valid until 8 h"
    );
    gw.clock.advance(Duration::from_secs(60));
    let response = gw.get_with_token("/x", &token).await;
    assert_eq!(response.status(), 401);
    assert_eq!(message(response).await, INVALID);
    assert_eq!(up.recorded().len(), 2);
    gw.shutdown().await;
}

#[tokio::test]
async fn disabling_a_user_from_another_process_rejects_cached_tokens_within_a_second() {
    let _shared = RSS_GUARD.read().await;
    let up = FakeUpstream::start().await;
    let gw = Gateway::start(&up).await;
    gw.add_user("hank@example.com", Role::User).await;
    gw.add_user("ivy@example.com", Role::User).await;
    let hank = gw.login("hank@example.com").await;
    let ivy = gw.login("ivy@example.com").await;
    assert_eq!(gw.get_with_token("/x", &hank).await.status(), 200);
    assert_eq!(gw.get_with_token("/x", &ivy).await.status(), 200);

    // Not the gateway's store handle: a separate pool on the same file, as the CLI would open.
    let url = format!("sqlite://{}/gate.db", gw.dir.path().display());
    let other = SqliteStore::open(&url).await.unwrap();
    let disabled = other
        .set_user_disabled("hank@example.com", true, gw.clock.now())
        .await
        .unwrap()
        .expect("hank exists");
    assert!(disabled.disabled);
    let started = Instant::now();
    eventually!(
        gw.get_with_token("/x", &hank).await.status() == 401,
        "hank's cached token still works 5 s after he was disabled"
    );
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_millis(1500), "took {elapsed:?}");
    let response = gw.get_with_token("/x", &hank).await;
    assert_eq!(message(response).await, INVALID);
    assert_eq!(
        gw.get_with_token("/x", &ivy).await.status(),
        200,
        "ivy unaffected"
    );
    assert_eq!(
        gw.login_response("hank@example.com", common::PASSWORD)
            .await
            .status(),
        401
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn h2c_prior_knowledge_clients_are_served() {
    let _shared = RSS_GUARD.read().await;
    let up = FakeUpstream::start().await;
    let gw = Gateway::start(&up).await;
    gw.add_user("jack@example.com", Role::User).await;
    let token = gw.login("jack@example.com").await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();

    let response = h2
        .post(gw.url("/h2/path?z=9"))
        .header("x-access-token", &token)
        .body("twelve bytes")
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let seen = up.last();
    assert_eq!(seen.uri.path(), "/h2/path");
    assert_eq!(seen.uri.query(), Some("z=9"));
    assert_eq!(seen.body_bytes, 12);
    assert_eq!(header(&seen, "x-meiro-user-email"), ["jack@example.com"]);
    assert_eq!(
        header(&seen, "x-forwarded-host"),
        [gw.addr.to_string().as_str()],
        "the :authority becomes X-Forwarded-Host"
    );

    let missing = h2.get(gw.url("/h2/path")).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    assert_eq!(message(missing).await, MISSING);
    gw.shutdown().await;
}
