//! The client's address behind balancers, over real sockets: `server.trusted_proxies` (the
//! right-most untrusted `X-Forwarded-For` hop of a trusted peer) and `server.proxy_protocol`
//! (PROXY v1 and v2). The per-IP login throttle counts by that address, the audit trail and
//! the upstream's `X-Forwarded-For` carry it, and spoofed headers from untrusted peers change
//! nothing.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::raw::{raw, read_response, read_until_closed};
use common::thread_log;
use common::{FakeUpstream, Gateway, PASSWORD, header};
use meiro_gate::store::Role;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";
/// Failed logins per client address before `429` (per account: never reached here).
const PER_IP: u32 = 3;

fn throttle(server: &str) -> String {
    format!("[server]\n{server}\n[auth.login_throttle]\nper_ip = {PER_IP}\nper_account = 1000\n")
}

async fn gateway(server: &str) -> (FakeUpstream, Gateway) {
    let upstream = FakeUpstream::start().await;
    let gw = Gateway::start_with(&upstream.url(), &throttle(server)).await;
    gw.add_user(ALICE, Role::User).await;
    gw.add_user(BOB, Role::User).await;
    (upstream, gw)
}

/// `POST /users/login` with `X-Forwarded-For: xff` (when given) and a request id.
async fn login(gw: &Gateway, password: &str, xff: Option<&str>, id: &str) -> u16 {
    let mut request = gw
        .http
        .post(gw.url("/users/login"))
        .header("x-request-id", id)
        .json(&serde_json::json!({ "email": ALICE, "password": password }));
    if let Some(xff) = xff {
        request = request.header("x-forwarded-for", xff);
    }
    request.send().await.unwrap().status().as_u16()
}

/// The client address the audit trail recorded for request `id` (written in the background).
async fn audited_ip(gw: &Gateway, id: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let events = gw.audit_events().await;
        if let Some(event) = events.iter().find(|e| e.request_id.as_deref() == Some(id)) {
            return event.client_ip.map(|ip| ip.to_string()).unwrap_or_default();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no audit event for {id}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_throttle() {
    let (_upstream, gw) = gateway(r#"trusted_proxies = ["127.0.0.1/32"]"#).await;
    // The proxy appended the client it saw; the client wrote whatever it liked before that.
    let a = "198.51.100.66, 203.0.113.1";
    for i in 0..PER_IP {
        assert_eq!(login(&gw, "wrong", Some(a), &format!("a-{i}")).await, 401);
    }
    assert_eq!(login(&gw, PASSWORD, Some(a), "a-last").await, 429);
    // Another client behind the same proxy (the same peer) is not locked out.
    assert_eq!(login(&gw, PASSWORD, Some("203.0.113.2"), "b").await, 200);
    // Nor is the proxy's own address, for a request it makes itself.
    assert_eq!(login(&gw, PASSWORD, None, "proxy").await, 200);
    assert_eq!(audited_ip(&gw, "a-0").await, "203.0.113.1");
    assert_eq!(audited_ip(&gw, "b").await, "203.0.113.2");
    assert_eq!(audited_ip(&gw, "proxy").await, "127.0.0.1");
    let metrics = gw.metrics_text().await;
    assert!(
        metrics.contains(&format!("meiro_gate_client_forwarded_total {}", PER_IP + 2)),
        "{metrics}"
    );
}

#[tokio::test]
async fn spoofed_forwarded_for_from_an_untrusted_peer_changes_nothing() {
    // Nothing trusted, and a trusted network the peer (127.0.0.1) is not in.
    for server in ["", r#"trusted_proxies = ["10.0.0.0/8"]"#] {
        let (_upstream, gw) = gateway(server).await;
        for i in 0..PER_IP {
            let spoofed = format!("203.0.113.{i}");
            let status = login(&gw, "wrong", Some(&spoofed), &format!("s-{i}")).await;
            assert_eq!(status, 401, "{server}");
        }
        // A fresh spoofed address, or a trusted-looking one, does not evade the throttle.
        for (i, spoofed) in ["203.0.113.99", "10.0.0.1", "10.0.0.1, 203.0.113.98"]
            .into_iter()
            .enumerate()
        {
            let status = login(&gw, PASSWORD, Some(spoofed), &format!("t-{i}")).await;
            assert_eq!(status, 429, "{server}: {spoofed}");
        }
        assert_eq!(audited_ip(&gw, "s-1").await, "127.0.0.1", "{server}");
        assert!(gw.shutdown().await);
    }
}

/// `GET /public/x` with `X-Forwarded-For: xff`: the `X-Forwarded-For` the upstream received.
async fn forwarded(gw: &Gateway, upstream: &FakeUpstream, xff: &str) -> Vec<String> {
    let request = gw.http.get(gw.url("/public/x"));
    let response = request.header("x-forwarded-for", xff).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let last = upstream.last();
    header(&last, "x-forwarded-for")
        .iter()
        .map(|v| v.to_string())
        .collect()
}

#[tokio::test]
async fn the_upstream_can_believe_the_right_most_forwarded_entry() {
    let (upstream, gw) = gateway(r#"trusted_proxies = ["127.0.0.1/32", "10.0.0.0/8"]"#).await;
    // The trusted hops right of the client are dropped; what is left of it is kept.
    let xff = forwarded(&gw, &upstream, "198.51.100.7, 203.0.113.5, 10.1.1.1").await;
    assert_eq!(xff, ["198.51.100.7, 203.0.113.5"]);
    // Garbage right of every address stops the walk at the trusted hop right of it.
    let xff = forwarded(&gw, &upstream, "203.0.113.5, junk, 10.1.1.1").await;
    assert_eq!(xff, ["203.0.113.5, junk, 10.1.1.1"]);
    assert!(gw.shutdown().await);

    // Untrusted peer: the received list, then the peer.
    let (upstream, gw) = gateway(r#"trusted_proxies = ["10.0.0.0/8"]"#).await;
    let xff = forwarded(&gw, &upstream, "203.0.113.5, 10.1.1.1").await;
    assert_eq!(xff, ["203.0.113.5, 10.1.1.1, 127.0.0.1"]);
}

/// A PROXY v1 header naming `source` as the client.
fn v1(source: &str) -> Vec<u8> {
    format!("PROXY TCP4 {source} 10.0.0.1 40000 443\r\n").into_bytes()
}

/// A PROXY v2 header naming `source` (IPv6) as the client.
fn v2(source: &str) -> Vec<u8> {
    let source: std::net::Ipv6Addr = source.parse().unwrap();
    let mut h = b"\r\n\r\n\0\r\nQUIT\n\x21\x21\x00\x24".to_vec();
    h.extend_from_slice(&source.octets());
    h.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
    h.extend_from_slice(&40000u16.to_be_bytes());
    h.extend_from_slice(&443u16.to_be_bytes());
    h
}

/// A request with nothing about its client.
const PLAIN_GET: &[u8] =
    b"GET /public/x HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n";

/// A v2 LOCAL header (the balancer's health check).
const V2_LOCAL: &[u8] = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";

fn login_request(password: &str, id: &str) -> Vec<u8> {
    let body = serde_json::json!({ "email": ALICE, "password": password }).to_string();
    format!(
        "POST /users/login HTTP/1.1\r\nHost: gateway.test\r\nContent-Type: application/json\r\n\
         X-Request-Id: {id}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// One login over a new connection that starts with `proxy_header`.
async fn login_via(addr: SocketAddr, proxy_header: &[u8], password: &str, id: &str) -> u16 {
    raw(addr, [proxy_header, &login_request(password, id)].concat())
        .await
        .status
}

#[tokio::test]
async fn proxy_protocol_v1_and_v2_clients_are_throttled_apart() {
    let (_upstream, gw) = gateway("proxy_protocol = true").await;
    for (version, a, b) in [
        ("v1", v1("203.0.113.1"), v1("203.0.113.2")),
        ("v2", v2("2001:db8::1"), v2("2001:db8::2")),
    ] {
        for i in 0..PER_IP {
            let id = format!("{version}-a-{i}");
            assert_eq!(login_via(gw.addr, &a, "wrong", &id).await, 401, "{version}");
        }
        let id = format!("{version}-a-last");
        assert_eq!(
            login_via(gw.addr, &a, PASSWORD, &id).await,
            429,
            "{version}"
        );
        let id = format!("{version}-b");
        assert_eq!(
            login_via(gw.addr, &b, PASSWORD, &id).await,
            200,
            "{version}"
        );
    }
    assert_eq!(audited_ip(&gw, "v1-a-0").await, "203.0.113.1");
    assert_eq!(audited_ip(&gw, "v2-b").await, "2001:db8::2");
    // LOCAL names nobody: the TCP peer is the client.
    assert_eq!(login_via(gw.addr, V2_LOCAL, PASSWORD, "local").await, 200);
    assert_eq!(audited_ip(&gw, "local").await, "127.0.0.1");
}

/// Opens a connection, sends `bytes`, and returns what came back before the gateway closed.
async fn answer_to(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(bytes).await;
    tokio::time::timeout(Duration::from_secs(5), read_until_closed(&mut stream))
        .await
        .expect("the gateway closes the connection")
}

#[tokio::test]
async fn proxy_protocol_refuses_connections_without_a_valid_header() {
    let (upstream, gw) = gateway("proxy_protocol = true").await;
    assert!(
        answer_to(gw.addr, PLAIN_GET).await.is_empty(),
        "no header: closed unanswered"
    );
    let bad = [
        &b"PROXY TCP4 203.0.113.1 10.0.0.1 1 99999\r\n"[..],
        PLAIN_GET,
    ]
    .concat();
    assert!(answer_to(gw.addr, &bad).await.is_empty(), "invalid: closed");
    assert!(upstream.recorded().is_empty());
    // The admin listener (probes, scrapes) takes no PROXY header.
    let metrics = gw.metrics_text().await;
    for reason in ["missing", "invalid"] {
        let line = format!("meiro_gate_proxy_header_refused_total{{reason=\"{reason}\"}} 1");
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
    // A valid header, and the upstream's list ends with the client it named.
    let spoofed = b"GET /public/x HTTP/1.1\r\nHost: gateway.test\r\nX-Forwarded-For: 10.9.9.9\r\n\
                    Connection: close\r\n\r\n";
    let response = raw(gw.addr, [&v1("203.0.113.7")[..], spoofed].concat()).await;
    assert_eq!(response.status, 200);
    assert_eq!(
        header(&upstream.last(), "x-forwarded-for"),
        ["10.9.9.9, 203.0.113.7"]
    );
}

#[tokio::test]
async fn a_proxy_header_is_believed_only_from_a_trusted_peer() {
    let (upstream, gw) = gateway(
        r#"proxy_protocol = true
        trusted_proxies = ["10.0.0.0/8"]"#,
    )
    .await;
    let sent = [&v1("203.0.113.7")[..], PLAIN_GET].concat();
    assert!(
        answer_to(gw.addr, &sent).await.is_empty(),
        "peer 127.0.0.1 is not trusted"
    );
    assert!(upstream.recorded().is_empty());
    let metrics = gw.metrics_text().await;
    let line = "meiro_gate_proxy_header_refused_total{reason=\"untrusted_peer\"} 1";
    assert!(metrics.contains(line), "{metrics}");
}

#[tokio::test]
async fn a_slow_proxy_header_times_out_and_holds_nobody_up() {
    let (_upstream, gw) =
        gateway("proxy_protocol = true\n[limits]\nheader_read_timeout = \"300ms\"").await;
    let mut slow = TcpStream::connect(gw.addr).await.unwrap();
    slow.write_all(b"PROXY TCP4 203.0.").await.unwrap();
    // Meanwhile another connection is served.
    assert_eq!(
        login_via(gw.addr, &v1("203.0.113.1"), PASSWORD, "fast").await,
        200
    );
    let rest = tokio::time::timeout(Duration::from_secs(5), read_until_closed(&mut slow)).await;
    assert!(rest.expect("closed after the deadline").is_empty());
    let metrics = gw.metrics_text().await;
    let line = "meiro_gate_proxy_header_refused_total{reason=\"timeout\"} 1";
    assert!(metrics.contains(line), "{metrics}");
}

#[tokio::test]
async fn trusted_proxies_and_proxy_protocol_reload_live() {
    let (upstream, gw) = gateway("").await;
    let xff = forwarded(&gw, &upstream, "203.0.113.5").await;
    assert_eq!(xff, ["203.0.113.5, 127.0.0.1"]);
    let reload = |server: &str| {
        let config = common::config_in(gw.dir.path(), &upstream.url(), &[&throttle(server)]);
        let report = gw.app().reload(config).unwrap();
        assert!(
            report.restart_needed.is_empty(),
            "{:?}",
            report.restart_needed
        );
    };
    reload(r#"trusted_proxies = ["127.0.0.1"]"#);
    // The same keep-alive client, the next request: the header is believed now.
    assert_eq!(
        forwarded(&gw, &upstream, "203.0.113.5").await,
        ["203.0.113.5"]
    );
    reload("proxy_protocol = true");
    let no_header = answer_to(gw.addr, PLAIN_GET).await;
    assert!(no_header.is_empty(), "new connections need a header");
}

#[tokio::test]
async fn the_access_log_names_the_resolved_client_and_refused_connections() {
    thread_log::capture("meiro_gate::access=info", thread_log::Format::Json);
    // An NLB (PROXY header) in front of an ingress on 127.0.0.1: the header's source is the
    // peer judged for X-Forwarded-For.
    let (_upstream, gw) = gateway(
        r#"proxy_protocol = true
        trusted_proxies = ["127.0.0.1/32"]"#,
    )
    .await;
    let get = b"GET /public/x HTTP/1.1\r\nHost: gateway.test\r\nX-Forwarded-For: 203.0.113.7\r\n\
                Connection: close\r\n\r\n";
    let response = raw(gw.addr, [&v1("127.0.0.1")[..], get].concat()).await;
    assert_eq!(response.status, 200);
    assert!(answer_to(gw.addr, get).await.is_empty());
    let logged = thread_log::take();
    let served = logged
        .lines()
        .find(|l| l.contains(r#""path":"/public/x""#))
        .unwrap_or_else(|| panic!("no access line in {logged}"));
    assert!(served.contains(r#""client":"203.0.113.7""#), "{served}");
    let refused = logged
        .lines()
        .find(|l| l.contains(r#""refused":"missing""#))
        .unwrap_or_else(|| panic!("no refusal line in {logged}"));
    assert!(refused.contains(r#""peer":"127.0.0.1:"#), "{refused}");
}

#[tokio::test]
async fn the_proxy_header_comes_before_tls() {
    let certs = tempfile::tempdir().unwrap();
    let cert = common::tls::self_signed("gateway");
    common::tls::write_cert(certs.path(), &cert);
    let tls = format!(
        "proxy_protocol = true\n[server.tls]\ncert = \"{dir}/cert.pem\"\nkey = \"{dir}/key.pem\"",
        dir = certs.path().display()
    );
    let (_upstream, gw) = gateway(&tls).await;
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(&v2("2001:db8::9")).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(common::tls::tls_client_config(&[&cert]));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut stream = connector.connect(name, tcp).await.unwrap();
    stream
        .write_all(&login_request(PASSWORD, "over-tls"))
        .await
        .unwrap();
    assert_eq!(read_response(&mut stream).await.status, 200);
    assert_eq!(audited_ip(&gw, "over-tls").await, "2001:db8::9");
}
