//! Upstreams behind the data plane: balancing (round robin, least request), passive ejection
//! and active health checks, safe retries, response-head and route timeouts, a down or slow
//! upstream, the keep-alive pool, HTTP/2 upstreams, and request and response bodies of 50 MiB
//! streamed through with flat memory.

mod common;

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::fake::{FakeTask, serve_http};
use common::plane::{Upstream, closed_port, gateway, route_toml, upstream_toml};
use common::raw::find;
use common::{FakeUpstream, Gateway, message};
use http::{Method, Version};
use meiro_gate::store::Role;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::RwLock;
use tokio::task::{JoinHandle, JoinSet};

/// The memory test reads this process's RSS, which every other test running in parallel
/// moves (each argon2 hash alone takes 19 MiB): it holds this exclusively, the others shared.
static RSS_GUARD: RwLock<()> = RwLock::const_new(());

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
async fn start_big_upstream(len: usize) -> (SocketAddr, FakeTask) {
    static CHUNK: [u8; 64 * 1024] = [b'y'; 64 * 1024];
    serve_http(move |_req| async move {
        let frames = std::iter::repeat_n(CHUNK.len(), len / CHUNK.len())
            .chain(std::iter::once(len % CHUNK.len()))
            .filter(|n| *n > 0)
            .map(|n| {
                Ok::<_, std::io::Error>(http_body::Frame::data(Bytes::from_static(&CHUNK[..n])))
            });
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        hyper::Response::new(body)
    })
    .await
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

/// The per-route timeout and the cluster's response-head timeout.
#[tokio::test]
async fn response_head_timeouts_are_504() {
    let _shared = RSS_GUARD.read().await;
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

#[tokio::test]
async fn round_robin_spreads_evenly() {
    let _shared = RSS_GUARD.read().await;
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
    let _shared = RSS_GUARD.read().await;
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

#[tokio::test]
async fn a_killed_instance_fails_no_get_and_is_ejected() {
    let _shared = RSS_GUARD.read().await;
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
    let _shared = RSS_GUARD.read().await;
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
    let _shared = RSS_GUARD.read().await;
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

/// The data plane's own keep-alive pool: sequential requests share one upstream connection
/// (it is handed back when each response ends), and a pooled connection the upstream closed
/// meanwhile costs nothing — a POST, which is never retried, still goes through, once.
#[tokio::test]
async fn upstream_connections_are_reused_and_stale_ones_replaced() {
    let _shared = RSS_GUARD.read().await;
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

#[tokio::test]
async fn http2_upstreams_are_spoken_to_in_http2() {
    let _shared = RSS_GUARD.read().await;
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

/// The harness's own promise: a fake whose handler panics fails the test that owns it, when
/// the test asks it for its records and when the test drops it (also for a panic in a task
/// hyper spawned itself, an HTTP/2 stream), instead of leaving the test a closed connection
/// to puzzle over.
#[tokio::test]
async fn a_panic_in_a_fake_upstream_fails_the_test_that_owns_it() {
    let _shared = RSS_GUARD.read().await;
    let panic_of = |outcome: std::thread::Result<()>| -> String {
        let payload = outcome.expect_err("the owning scope did not panic");
        payload
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default()
    };

    let up = FakeUpstream::start().await;
    let answered = reqwest::get(format!("{}/x?panic=1", up.url())).await;
    assert!(answered.is_err(), "{answered:?}");
    let asked = std::panic::catch_unwind(AssertUnwindSafe(|| {
        up.recorded();
    }));
    let message = panic_of(asked);
    assert!(
        message.contains("the fake upstream was asked to panic"),
        "{message}"
    );

    let up = FakeUpstream::start().await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let answered = h2.get(format!("{}/x?panic=1", up.url())).send().await;
    assert!(answered.is_err(), "{answered:?}");
    let dropped = std::panic::catch_unwind(AssertUnwindSafe(|| drop(up)));
    let message = panic_of(dropped);
    assert!(
        message.contains("the fake upstream was asked to panic"),
        "{message}"
    );
}
