//! The data plane's listener: TLS with ALPN and certificate reload, h2c, slowloris and the
//! header timeout, request framing (conflicting lengths, smuggling), head-size and connection
//! limits, and `Expect: 100-continue`.

mod common;

use std::time::{Duration, Instant};

use common::plane::{Upstream, gateway, raw_get, route_toml, token, upstream_toml};
use common::raw::{find, parse_response, raw, read_response, read_until_closed};
use common::tls::{TestCert, self_signed, tls_connect, write_cert};
use common::{FakeUpstream, Gateway, MISSING, header, message};
use meiro_gate::store::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

#[tokio::test]
async fn h2c_prior_knowledge_clients_are_served() {
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
