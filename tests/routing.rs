//! Routing on the data plane: longest prefix, host and `strip_prefix` routes, per-route
//! `max_body`, path normalization against public routes, CORS, and the tokens of protected
//! routes (where a token may be, forged and expired ones, revocation) with the identity and
//! forwarding headers the upstream gets in their place.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::plane::{Upstream, gateway, raw_get, route_toml, token, upstream_toml};
use common::raw::raw;
use common::{FakeUpstream, Gateway, INVALID, MISSING, foreign_token, header, message};
use http::Method;
use meiro_gate::store::{Role, SqliteStore, Store};

/// `GET target` with `Host: x` and `Connection: close`, plus `extra` header lines: the status
/// and the body as text, for request targets a client library would normalize itself.
async fn raw_get_x(addr: SocketAddr, target: &str, extra: &str) -> (u16, String) {
    let response = raw_get(addr, "x", target, extra).await;
    let body = String::from_utf8(response.body).expect("UTF-8 response");
    (response.status, body)
}

fn json_message(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).expect("JSON body");
    v["message"].as_str().expect("a message").to_owned()
}

/// A token with its signature replaced by `signature` (already base64url).
fn with_parts(header: &str, payload: &str, signature: &str) -> String {
    format!("{header}.{payload}.{signature}")
}

#[tokio::test]
async fn missing_and_forged_tokens_are_rejected_before_the_upstream() {
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
    let (other, foreign) = foreign_token(&up, "alice@example.com").await;

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
    let up = FakeUpstream::start().await;
    let gw = Gateway::start(&up).await;
    let (status, _) = raw_get_x(
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
    let up = FakeUpstream::start().await;
    let gw = Gateway::start(&up).await;
    gw.add_user("dave@example.com", Role::User).await;
    let token = gw.login("dave@example.com").await;

    let (status, body) = raw_get_x(gw.addr, "/public/x", "").await;
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
        let (status, body) = raw_get_x(gw.addr, target, "").await;
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
    let (status, body) = raw_get_x(gw.addr, "/public/%2e%2e/private?q=%2e%2e", &auth).await;
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
        let (status, body) = raw_get_x(gw.addr, target, "").await;
        assert_eq!(status, 400, "{target}: {body}");
        assert_eq!(json_message(&body), "Invalid request path", "{target}");
    }

    let (status, body) = raw_get_x(gw.addr, "//public/x", "").await;
    assert_eq!(status, 200, "{body}");
    let answered: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answered["path"], "/public/x");
    assert_eq!(up.last().uri.path(), "/public/x");
    gw.shutdown().await;
}

#[tokio::test]
async fn cached_tokens_expire_with_the_clock() {
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

#[tokio::test]
async fn route_roles_and_methods_are_enforced_before_the_upstream() {
    common::thread_log::capture("info", common::thread_log::Format::Json);
    let up = FakeUpstream::start().await;
    let gw = common::plane::backend_gateway(
        &up.url(),
        &[
            ("/admin", r#"allow_roles = ["admin"]"#),
            ("/reports", r#"methods = ["get", "POST"]"#),
            (
                "/open",
                r#"public = true
methods = ["GET"]"#,
            ),
        ],
    )
    .await;
    gw.add_user("root@example.com", Role::Admin).await;
    gw.add_user("alice@example.com", Role::User).await;
    let admin = gw.login("root@example.com").await;
    let alice = gw.login("alice@example.com").await;
    let send = |method: Method, path: &str, token: Option<&str>| {
        let mut request = gw.http.request(method, gw.url(path));
        if let Some(token) = token {
            request = request.header("x-access-token", token);
        }
        request.send()
    };

    // Roles: authentication first (401), then the role (403), never the upstream.
    let before = up.recorded().len();
    let none = send(Method::GET, "/admin/x", None).await.unwrap();
    assert_eq!(none.status(), 401);
    let user = send(Method::GET, "/admin/x", Some(&alice)).await.unwrap();
    assert_eq!(user.status(), 403);
    common::assert_json(user.headers());
    assert_eq!(message(user).await, "Insufficient permissions");
    assert_eq!(
        up.recorded().len(),
        before,
        "refused requests never reach the upstream"
    );
    let ok = send(Method::DELETE, "/admin/x", Some(&admin))
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(up.last().uri, "/admin/x");

    // Methods: 405 with the route's Allow (GET brings HEAD), after authentication.
    let before = up.recorded().len();
    let none = send(Method::DELETE, "/reports", None).await.unwrap();
    assert_eq!(none.status(), 401, "no token: the methods are not revealed");
    let wrong = send(Method::DELETE, "/reports", Some(&alice))
        .await
        .unwrap();
    assert_eq!(wrong.status(), 405);
    assert_eq!(wrong.headers()["allow"], "GET, POST, HEAD");
    common::assert_json(wrong.headers());
    assert_eq!(message(wrong).await, "Method not allowed");
    assert_eq!(up.recorded().len(), before);
    for method in [Method::GET, Method::HEAD, Method::POST] {
        let allowed = send(method.clone(), "/reports", Some(&alice))
            .await
            .unwrap();
        assert_eq!(allowed.status(), 200, "{method}");
    }
    // A public route's methods apply to everyone.
    assert_eq!(
        send(Method::GET, "/open", None).await.unwrap().status(),
        200
    );
    let post = send(Method::POST, "/open", None).await.unwrap();
    assert_eq!(
        (
            post.status().as_u16(),
            post.headers()["allow"].to_str().unwrap()
        ),
        (405, "GET, HEAD")
    );

    // The refusals are in the access log with the user, and no token is.
    let logs = common::thread_log::take();
    let refusals: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["target"] == "meiro_gate::access" && l["fields"]["refused"].is_string())
        .collect();
    let reasons: Vec<(&str, u64)> = refusals
        .iter()
        .map(|l| {
            (
                l["fields"]["refused"].as_str().unwrap(),
                l["fields"]["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        [("role", 403), ("method", 405), ("method", 405)],
        "{logs}"
    );
    assert!(refusals[0]["fields"]["user"].is_string(), "{}", refusals[0]);
    assert!(
        !logs.contains(&alice) && !logs.contains(&admin),
        "a token in the log"
    );

    let metrics = gw.metrics_text().await;
    for line in [
        r#"policy_refusals_total{route="backend",reason="role"} 1"#,
        r#"policy_refusals_total{route="backend",reason="method"} 2"#,
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn per_user_rate_limits_hold_each_user_to_their_own_budget() {
    let up = FakeUpstream::start().await;
    let gw = common::plane::backend_gateway_with(
        &up.url(),
        &[("/", ""), ("/export", "per_user_rate = 1")],
        "[limits]\nper_user_rate = 1\nper_user_burst = 3\n",
    )
    .await;
    gw.add_user("alice@example.com", Role::User).await;
    gw.add_user("bob@example.com", Role::User).await;
    let alice = gw.login("alice@example.com").await;
    let alice_too = gw.login("alice@example.com").await;
    let bob = gw.login("bob@example.com").await;
    let get = |path: &'static str, token: String| {
        let request = gw.http.get(gw.url(path)).header("x-access-token", token);
        async move { request.send().await.unwrap() }
    };

    // Alice, on two tokens, and bob at the same time: a burst of 3 each (a refill takes 1 s).
    let (alice_runs, bob_runs) = tokio::join!(
        async {
            let mut statuses = Vec::new();
            for token in [&alice, &alice_too, &alice, &alice_too, &alice] {
                statuses.push(get("/data", token.clone()).await);
            }
            statuses
        },
        async {
            let mut statuses = Vec::new();
            for _ in 0..3 {
                statuses.push(get("/data", bob.clone()).await.status().as_u16());
            }
            statuses
        }
    );
    let alice_statuses: Vec<u16> = alice_runs.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(
        alice_statuses,
        [200, 200, 200, 429, 429],
        "one budget for all her tokens"
    );
    assert_eq!(bob_runs, [200, 200, 200], "bob is not slowed by alice");
    let limited = alice_runs.into_iter().last().unwrap();
    assert_eq!(limited.headers()["retry-after"], "1");
    common::assert_json(limited.headers());
    assert_eq!(message(limited).await, "Too many requests");
    assert_eq!(
        up.recorded().len(),
        6,
        "limited requests never reach the upstream"
    );

    // A route with its own rate has its own budget: bob's spent burst does not count there.
    assert_eq!(get("/export", bob.clone()).await.status(), 200);
    assert_eq!(get("/export", bob.clone()).await.status(), 429);
    let metrics = gw.metrics_text().await;
    // Alice's two refusals and bob's one on /export (both routes are named after the upstream).
    let line = r#"policy_refusals_total{route="backend",reason="rate_limit"} 3"#;
    assert!(metrics.contains(line), "{line} in\n{metrics}");
    gw.shutdown().await;
}
