//! Request ids and W3C trace context over real sockets: `X-Request-Id` taken from the client
//! (when sane) or generated, seen by the upstream, returned on every kind of response, and on
//! the request's log lines; `traceparent`/`tracestate` passed through unchanged both ways, in
//! local and in upstream mode.

mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use common::fake::{FakeTask, serve_http};
use common::thread_log;
use common::{Gateway, PASSWORD};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use meiro_gate::store::Role;
use serde_json::Value;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACESTATE: &str = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";
/// What the origin sends back as its own trace context (an origin may change it).
const ORIGIN_TRACESTATE: &str = "origin=1,rojo=00f067aa0ba902b7";

/// An origin that answers with the request headers it received as JSON, and returns the
/// trace context it received (`traceparent` as is, `tracestate` with an entry of its own).
struct EchoOrigin {
    addr: SocketAddr,
    _task: FakeTask,
}

impl EchoOrigin {
    async fn start() -> EchoOrigin {
        let (addr, task) = serve_http(|req: Request<Incoming>| async move {
            let headers: serde_json::Map<String, Value> = req
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), Value::from(v.to_str().unwrap_or("<binary>"))))
                .collect();
            let mut response = Response::builder()
                .header("content-type", "application/json")
                // An origin's own id must not replace the gateway's.
                .header("x-request-id", "set-by-origin");
            if let Some(tp) = req.headers().get("traceparent") {
                response = response
                    .header("traceparent", tp)
                    .header("tracestate", ORIGIN_TRACESTATE);
            }
            response
                .body(Full::new(Bytes::from(Value::from(headers).to_string())))
                .unwrap()
        })
        .await;
        EchoOrigin { addr, _task: task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn response_id(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("x-request-id")
        .expect("every response carries X-Request-Id")
        .to_str()
        .unwrap()
        .to_owned()
}

fn is_generated(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

#[tokio::test]
async fn a_client_request_id_reaches_the_upstream_and_comes_back() {
    let origin = EchoOrigin::start().await;
    let gw = Gateway::start_with(&origin.url(), "").await;
    gw.add_user("alice@example.com", Role::User).await;
    let token = gw.login("alice@example.com").await;

    let response = gw
        .http
        .get(gw.url("/data"))
        .header("x-access-token", &token)
        .header("x-request-id", "client-id-1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response_id(&response),
        "client-id-1",
        "not the origin's own"
    );
    let seen: Value = response.json().await.unwrap();
    assert_eq!(seen["x-request-id"], "client-id-1");

    // None sent: one is generated, and the upstream saw the same one.
    let response = gw.get_with_token("/data", &token).await;
    let id = response_id(&response);
    assert!(is_generated(&id), "{id}");
    let seen: Value = response.json().await.unwrap();
    assert_eq!(seen["x-request-id"], id.as_str());
    let next = response_id(&gw.get_with_token("/data", &token).await);
    assert_ne!(next, id, "a new id per request");

    // Not acceptable: replaced, and the upstream sees the replacement, not the original.
    let long = "x".repeat(129);
    for bad in ["two words", long.as_str()] {
        let response = gw
            .http
            .get(gw.url("/data"))
            .header("x-access-token", &token)
            .header("x-request-id", bad)
            .send()
            .await
            .unwrap();
        let id = response_id(&response);
        assert!(is_generated(&id), "{bad:?} replaced by {id}");
        let seen: Value = response.json().await.unwrap();
        assert_eq!(seen["x-request-id"], id.as_str());
    }
}

#[tokio::test]
async fn api_answers_errors_and_refusals_carry_the_request_id() {
    let gw = Gateway::start_with_layers(
        "http://127.0.0.1:9",
        &["[limits]\nmax_header_bytes = 1024\n"],
    )
    .await;
    let get = |path: &str, id: &str| gw.http.get(gw.url(path)).header("x-request-id", id).send();
    // The auth API, a data-plane refusal (no token) and an upstream failure (nothing listens).
    let api = get("/auth_options", "id-api").await.unwrap();
    assert_eq!(api.status(), 200);
    assert_eq!(response_id(&api), "id-api");
    let no_token = get("/data", "id-401").await.unwrap();
    assert_eq!(no_token.status(), 401);
    assert_eq!(response_id(&no_token), "id-401");
    let failed_login = gw
        .http
        .post(gw.url("/users/login"))
        .header("x-request-id", "id-login")
        .json(&serde_json::json!({"email": "nobody@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(failed_login.status(), 401);
    assert_eq!(response_id(&failed_login), "id-login");
    // Refused below the router: a head over `limits.max_header_bytes`.
    let too_large = gw
        .http
        .get(gw.url("/data"))
        .header("x-request-id", "id-431")
        .header("x-padding", "p".repeat(2000))
        .send()
        .await
        .unwrap();
    assert_eq!(too_large.status(), 431);
    assert_eq!(response_id(&too_large), "id-431");
    // The admin listener too.
    let health = gw.http.get(gw.admin_url("/healthz")).send().await.unwrap();
    assert!(is_generated(&response_id(&health)));
}

#[tokio::test]
async fn trace_context_passes_through_unchanged_both_ways() {
    let origin = EchoOrigin::start().await;
    let gw = Gateway::start_with(&origin.url(), "").await;
    gw.add_user("alice@example.com", Role::User).await;
    let token = gw.login("alice@example.com").await;
    for http2 in [false, true] {
        let client = if http2 {
            reqwest::Client::builder()
                .http2_prior_knowledge()
                .build()
                .unwrap()
        } else {
            gw.http.clone()
        };
        let response = client
            .get(gw.url("/data"))
            .header("x-access-token", &token)
            .header("traceparent", TRACEPARENT)
            .header("tracestate", TRACESTATE)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "http2: {http2}");
        let headers = response.headers().clone();
        let seen: Value = response.json().await.unwrap();
        assert_eq!(seen["traceparent"], TRACEPARENT, "http2: {http2}");
        assert_eq!(seen["tracestate"], TRACESTATE, "http2: {http2}");
        assert_eq!(headers["traceparent"], TRACEPARENT, "http2: {http2}");
        assert_eq!(
            headers["tracestate"], ORIGIN_TRACESTATE,
            "the origin's answer, as it sent it (http2: {http2})"
        );
    }
}

#[tokio::test]
async fn upstream_mode_passes_the_request_id_and_trace_context_to_the_backend() {
    let origin = EchoOrigin::start().await;
    let toml = format!(
        r#"
        [auth]
        mode = "upstream"
        [auth.upstream]
        upstream = "meiro"
        introspect_path = "/users/me"
        [[upstreams]]
        name = "meiro"
        instances = ["{url}"]
        [[routes]]
        prefix = "/"
        upstream = "meiro"
        "#,
        url = origin.url()
    );
    let gw = Gateway::start_with(&origin.url(), &toml).await;
    let response = gw
        .http
        .post(gw.url("/users/login"))
        .header("x-request-id", "id-upstream-login")
        .header("traceparent", TRACEPARENT)
        .json(&serde_json::json!({"email": "a@example.com", "password": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response_id(&response), "id-upstream-login");
    assert_eq!(response.headers()["traceparent"], TRACEPARENT);
    let seen: Value = response.json().await.unwrap();
    assert_eq!(seen["x-request-id"], "id-upstream-login");
    assert_eq!(seen["traceparent"], TRACEPARENT);
}

#[tokio::test]
async fn the_request_id_is_on_the_requests_log_lines() {
    thread_log::capture("info", thread_log::Format::Json);
    let origin = EchoOrigin::start().await;
    let gw = Gateway::start_with(&origin.url(), "").await;
    gw.add_user("alice@example.com", Role::User).await;
    let token = gw.login("alice@example.com").await;
    thread_log::take();
    gw.http
        .get(gw.url("/data"))
        .header("x-access-token", &token)
        .header("x-request-id", "id-logged-1")
        .send()
        .await
        .unwrap();
    // A failed login logs an audit line (and its handler runs in the span too).
    gw.http
        .post(gw.url("/users/login"))
        .header("x-request-id", "id-logged-2")
        .json(&serde_json::json!({"email": "alice@example.com", "password": "wrong one"}))
        .send()
        .await
        .unwrap();
    let logs = thread_log::take();
    let lines: Vec<Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON log lines"))
        .collect();
    let access = lines
        .iter()
        .find(|l| l["target"] == "meiro_gate::access")
        .unwrap_or_else(|| panic!("no access log line in {logs}"));
    assert_eq!(access["fields"]["request_id"], "id-logged-1", "{access}");
    let audit = lines
        .iter()
        .find(|l| l["target"] == "audit")
        .unwrap_or_else(|| panic!("no audit log line in {logs}"));
    assert_eq!(audit["span"]["request_id"], "id-logged-2", "{audit}");
    assert_eq!(audit["fields"]["request_id"], "id-logged-2", "{audit}");

    // A data-plane failure: the upstream refuses connections.
    let down = Gateway::start_with("http://127.0.0.1:9", "").await;
    down.add_user("alice@example.com", Role::User).await;
    let token = down.login("alice@example.com").await;
    thread_log::take();
    let failed = down
        .http
        .get(down.url("/data"))
        .header("x-access-token", &token)
        .header("x-request-id", "id-logged-3")
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), 502);
    let logs = thread_log::take();
    let warning = logs
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|l| l["fields"]["message"] == "upstream attempt failed")
        .unwrap_or_else(|| panic!("no upstream failure logged in {logs}"));
    assert_eq!(warning["fields"]["request_id"], "id-logged-3", "{warning}");
}
