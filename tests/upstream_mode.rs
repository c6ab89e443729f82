//! Upstream mode end to end: a gateway in front of a fake Meiro backend (real HTTP on
//! loopback) that owns users and opaque tokens. The gateway validates data-plane tokens by
//! introspection (cached, one call per token even under concurrency), asks about the tokens
//! of login responses at once (so their first request carries identity), forgets them on logout, never says "valid" when the backend cannot
//! answer, and passes the auth API through unchanged.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::fake::{FakeTask, endless_event_stream, serve_http};
use common::streams::{assert_cut, assert_flowing};
use common::{Gateway, message};
use figment::Figment;
use figment::providers::{Format, Toml};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use meiro_gate::app::StartError;
use meiro_gate::proxy::ProxyBuildError;
use meiro_gate::{App, config};
use serde_json::{Value, json};

const INVALID: &str = "Invalid or expired access token";
const UNAVAILABLE: &str = "Token validation is temporarily unavailable";
const BAD_CREDENTIALS: &str = "Invalid credentials have been provided";
const LOGGED_OUT: &str = "Successfully logged-out";

/// The backend's session cookie; the gateway is configured with the same name.
const COOKIE: &str = "session";

struct User {
    id: &'static str,
    email: &'static str,
    password: &'static str,
    admin: bool,
}

const ALICE: User = User {
    id: "u-alice",
    email: "alice@example.com",
    password: "alice-password",
    admin: false,
};
const ADMIN: User = User {
    id: "u-admin",
    email: "admin@example.com",
    password: "admin-password",
    admin: true,
};
const USERS: [&User; 2] = [&ALICE, &ADMIN];

/// One request as the backend saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    query: Option<String>,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Seen {
    fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }
}

#[derive(Default)]
struct BackendState {
    /// Calls of the introspection route (`GET /users/me`).
    introspections: AtomicUsize,
    /// Non-zero: the introspection route answers this status whatever the token.
    introspect_status: AtomicU16,
    /// The introspection route never answers in time (sleeps 3 s).
    introspect_hang: AtomicBool,
    /// Delay before the introspection route answers, in ms.
    introspect_delay_ms: AtomicU64,
    /// Live tokens → index in `USERS`.
    tokens: Mutex<HashMap<String, usize>>,
    seen: Mutex<Vec<Seen>>,
}

/// A fake Meiro backend: login/refresh/logout, `/auth_options`, an introspection route, an
/// admin-only invitation route, an echo route under `/users/echo` and an echoing data route.
struct Backend {
    addr: SocketAddr,
    state: Arc<BackendState>,
    _task: FakeTask,
}

impl Backend {
    async fn start() -> Backend {
        let state: Arc<BackendState> = Arc::default();
        let shared = state.clone();
        let (addr, task) = serve_http(move |req| serve(req, shared.clone())).await;
        Backend {
            addr,
            state,
            _task: task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn introspections(&self) -> usize {
        self.state.introspections.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// The requests that reached `path`.
    fn seen_at(&self, path: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.path == path).collect()
    }

    fn last_at(&self, path: &str) -> Seen {
        self.seen_at(path)
            .pop()
            .unwrap_or_else(|| panic!("the backend saw no request to {path}"))
    }

    /// A token issued by the backend without the gateway seeing the login.
    fn issue(&self, user: &User) -> String {
        let token = new_token();
        let index = USERS.iter().position(|u| u.id == user.id).unwrap();
        self.state
            .tokens
            .lock()
            .unwrap()
            .insert(token.clone(), index);
        token
    }

    /// Ends a token at the backend without the gateway seeing the logout.
    fn revoke(&self, token: &str) {
        assert!(self.state.tokens.lock().unwrap().remove(token).is_some());
    }

    fn is_live(&self, token: &str) -> bool {
        self.state.tokens.lock().unwrap().contains_key(token)
    }
}

fn new_token() -> String {
    format!("opaque-{}", uuid::Uuid::new_v4().simple())
}

fn reply(status: u16, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-backend", "meiro")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn cookie_token(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE).then(|| value.to_owned())
        })
}

fn header_token(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get("x-access-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn serve(req: Request<Incoming>, state: Arc<BackendState>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let seen = Seen {
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers.clone(),
        body: body.clone(),
    };
    state.seen.lock().unwrap().push(seen.clone());
    let json_body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let user_of = |token: Option<&String>| -> Option<&'static User> {
        let index = *state.tokens.lock().unwrap().get(token?)?;
        Some(USERS[index])
    };
    let logged_in = |user: &User| {
        let token = new_token();
        let index = USERS.iter().position(|u| u.id == user.id).unwrap();
        state.tokens.lock().unwrap().insert(token.clone(), index);
        let mut response = reply(200, json!({ "token": token }));
        let headers = response.headers_mut();
        headers.append(
            "set-cookie",
            format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Lax")
                .parse()
                .unwrap(),
        );
        headers.append("set-cookie", "seen_login=1; Path=/".parse().unwrap());
        response
    };

    match (&parts.method, seen.path.as_str()) {
        (&Method::POST, "/users/login") => {
            let user = USERS
                .iter()
                .find(|u| json_body["email"] == u.email && json_body["password"] == u.password);
            match user {
                Some(user) => logged_in(user),
                None => {
                    let mut response = reply(401, json!({ "message": BAD_CREDENTIALS }));
                    response.headers_mut().append(
                        "set-cookie",
                        format!("{COOKIE}=; Max-Age=0; Path=/").parse().unwrap(),
                    );
                    response
                }
            }
        }
        (&Method::PATCH, "/users/login") => {
            let old = json_body["token"].as_str().map(str::to_owned);
            match user_of(old.as_ref()) {
                Some(user) => logged_in(user),
                None => reply(401, json!({ "message": "Token cannot be refreshed" })),
            }
        }
        (&Method::POST, "/users/okta_login") => {
            if json_body["code"] == "good-code" {
                logged_in(&ALICE)
            } else {
                reply(401, json!({ "message": "Okta login failed" }))
            }
        }
        (&Method::DELETE, "/users/login") => {
            let token = header_token(&parts.headers)
                .or_else(|| cookie_token(&parts.headers))
                .or_else(|| json_body["token"].as_str().map(str::to_owned));
            let removed = token.is_some_and(|t| state.tokens.lock().unwrap().remove(&t).is_some());
            if removed {
                let mut response = reply(200, json!({ "message": LOGGED_OUT }));
                response.headers_mut().append(
                    "set-cookie",
                    format!("{COOKIE}=; Max-Age=0; Path=/").parse().unwrap(),
                );
                response
            } else {
                reply(401, json!({ "message": "Not logged in" }))
            }
        }
        (&Method::GET, "/auth_options") => reply(
            200,
            json!({ "credentials": true, "okta": { "enabled": true, "client_id": "abc" } }),
        ),
        (&Method::GET, "/users/me") => {
            state.introspections.fetch_add(1, Ordering::SeqCst);
            // Decided on arrival: a slow answer may be overtaken by a logout.
            let user = user_of(header_token(&parts.headers).as_ref());
            let delay = state.introspect_delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            if state.introspect_hang.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            let forced = state.introspect_status.load(Ordering::SeqCst);
            if forced != 0 {
                return reply(forced, json!({ "message": "backend trouble" }));
            }
            match user {
                Some(user) => reply(200, json!({ "id": user.id, "email": user.email })),
                None => reply(401, json!({ "message": "Unauthorized" })),
            }
        }
        (&Method::POST, "/users/invite") => match user_of(header_token(&parts.headers).as_ref()) {
            Some(user) if user.admin => reply(
                201,
                json!({ "message": "Invitation sent", "email": json_body["email"] }),
            ),
            Some(_) => reply(403, json!({ "message": "Forbidden" })),
            None => reply(401, json!({ "message": "Unauthorized" })),
        },
        (_, "/users/echo") => {
            let status = seen
                .query
                .as_deref()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("status=")))
                .and_then(|s| s.parse().ok())
                .unwrap_or(200);
            let mut response = reply(
                status,
                json!({
                    "method": parts.method.as_str(),
                    "query": seen.query,
                    "cookie": seen.header("cookie"),
                    "body": String::from_utf8_lossy(&body),
                }),
            );
            let headers = response.headers_mut();
            headers.append("set-cookie", "echo=1; Path=/".parse().unwrap());
            headers.append("set-cookie", "second=two; HttpOnly".parse().unwrap());
            response
        }
        (_, path) if path.starts_with("/data") => reply(
            200,
            json!({
                "path": path,
                "user_id": seen.header("x-meiro-user-id"),
                "user_email": seen.header("x-meiro-user-email"),
                "user_role": seen.header("x-meiro-user-role"),
            }),
        ),
        _ => reply(404, json!({ "message": "Not found" })),
    }
}

/// The cache and timeout settings a test runs with.
struct Settings {
    positive_ttl: &'static str,
    negative_ttl: &'static str,
    response_timeout: &'static str,
}

const DEFAULTS: Settings = Settings {
    positive_ttl: "1h",
    negative_ttl: "5s",
    response_timeout: "2s",
};

fn upstream_mode_toml(backend_url: &str, s: &Settings) -> String {
    format!(
        r#"
        [auth]
        mode = "upstream"
        cookie_name = "{COOKIE}"
        [auth.upstream]
        upstream = "meiro"
        introspect_path = "/users/me"
        introspect_method = "GET"
        positive_ttl = "{positive}"
        negative_ttl = "{negative}"
        [[upstreams]]
        name = "meiro"
        instances = ["{backend_url}"]
        connect_timeout = "1s"
        response_timeout = "{timeout}"
        [[routes]]
        prefix = "/"
        upstream = "meiro"
        "#,
        positive = s.positive_ttl,
        negative = s.negative_ttl,
        timeout = s.response_timeout,
    )
}

async fn gateway(backend: &Backend, s: &Settings) -> Gateway {
    Gateway::start_with(&backend.url(), &upstream_mode_toml(&backend.url(), s)).await
}

async fn login(gw: &Gateway, user: &User) -> String {
    let response = gw.login_response(user.email, user.password).await;
    assert_eq!(response.status(), 200, "login of {}", user.email);
    let body: Value = response.json().await.unwrap();
    body["token"].as_str().unwrap().to_owned()
}

/// GET a data route with the token in `X-Access-Token`; the status and the echoed JSON.
async fn data(gw: &Gateway, path: &str, token: &str) -> (StatusCode, Value) {
    let response = gw.get_with_token(path, token).await;
    let status = response.status();
    (status, response.json().await.unwrap())
}

fn set_cookies(response: &reqwest::Response) -> Vec<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_thousand_requests_with_one_token_cost_one_introspection() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &DEFAULTS).await;
    let token = backend.issue(&ALICE);

    for i in 0..1000 {
        let response = gw
            .http
            .get(gw.url(&format!("/data/{i}")))
            .header("x-access-token", &token)
            // Client-sent identity is never believed.
            .header("x-meiro-user-id", "u-admin")
            .header("x-meiro-user-email", "admin@example.com")
            .header("x-meiro-user-role", "admin")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "request {i}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["path"], format!("/data/{i}"));
        assert_eq!(body["user_id"], json!(["u-alice"]), "request {i}");
        assert_eq!(
            body["user_email"],
            json!(["alice@example.com"]),
            "request {i}"
        );
        assert_eq!(
            body["user_role"],
            json!([]),
            "no role in the introspection answer"
        );
    }
    assert_eq!(backend.introspections(), 1);
    let asked = backend.last_at("/users/me");
    assert_eq!(asked.method, Method::GET);
    assert_eq!(asked.header("x-access-token"), [token.as_str()]);
    assert_eq!(backend.seen_at("/users/me").len(), 1);
    assert_eq!(
        backend
            .seen()
            .iter()
            .filter(|s| s.path.starts_with("/data/"))
            .count(),
        1000
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_requests_share_one_introspection() {
    let backend = Backend::start().await;
    // Slow enough that all 100 requests are waiting on the same miss.
    backend
        .state
        .introspect_delay_ms
        .store(300, Ordering::SeqCst);
    let gw = Arc::new(gateway(&backend, &DEFAULTS).await);
    let token = backend.issue(&ADMIN);

    let barrier = Arc::new(tokio::sync::Barrier::new(100));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..100 {
        let (gw, token, barrier) = (gw.clone(), token.clone(), barrier.clone());
        tasks.spawn(async move {
            barrier.wait().await;
            data(&gw, &format!("/data/c{i}"), &token).await
        });
    }
    let started = Instant::now();
    while let Some(result) = tasks.join_next().await {
        let (status, body) = result.unwrap();
        assert_eq!(status, 200);
        assert_eq!(body["user_id"], json!(["u-admin"]));
        assert_eq!(body["user_email"], json!(["admin@example.com"]));
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the waiters were not serialized"
    );
    assert_eq!(backend.introspections(), 1);
    Arc::into_inner(gw).unwrap().shutdown().await;
}

#[tokio::test]
async fn tokens_from_login_responses_carry_the_users_identity_from_their_first_request() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &DEFAULTS).await;

    // A failed login passes through as the backend said it.
    let refused = gw.login_response(ALICE.email, "wrong").await;
    assert_eq!(refused.status(), 401);
    assert_eq!(
        set_cookies(&refused),
        [format!("{COOKIE}=; Max-Age=0; Path=/")]
    );
    assert_eq!(message(refused).await, BAD_CREDENTIALS);

    let response = gw.login_response(ALICE.email, ALICE.password).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-backend"], "meiro");
    assert_eq!(response.headers()["content-type"], "application/json");
    let cookies = set_cookies(&response);
    let raw = response.bytes().await.unwrap();
    let body: Value = serde_json::from_slice(&raw).unwrap();
    let token = body["token"].as_str().unwrap().to_owned();
    assert_eq!(raw, json!({ "token": token }).to_string().as_bytes());
    assert_eq!(
        cookies,
        [
            format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Lax"),
            "seen_login=1; Path=/".to_owned()
        ]
    );
    assert!(backend.is_live(&token));
    // The login request reached the backend unchanged.
    let seen = backend.last_at("/users/login");
    assert_eq!(seen.method, Method::POST);
    assert_eq!(
        serde_json::from_slice::<Value>(&seen.body).unwrap(),
        json!({ "email": ALICE.email, "password": ALICE.password })
    );

    // Every request of the session, the very first included, carries the backend's identity
    // of the user (the gateway asked about the token as soon as it saw it issued), never a
    // client's copy.
    for i in 0..20 {
        let response = gw
            .http
            .get(gw.url(&format!("/data/l{i}")))
            .header("x-access-token", &token)
            .header("x-meiro-user-id", "u-admin")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["user_id"], json!([ALICE.id]), "request {i}");
        assert_eq!(body["user_email"], json!([ALICE.email]), "request {i}");
    }
    // And with the session cookie the login set.
    let by_cookie = gw
        .http
        .get(gw.url("/data/cookie"))
        .header("cookie", format!("{COOKIE}={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(by_cookie.status(), 200);

    // A refresh's new token too.
    let refreshed = gw.refresh_response(&token).await;
    assert_eq!(refreshed.status(), 200);
    let new: Value = refreshed.json().await.unwrap();
    let new = new["token"].as_str().unwrap().to_owned();
    assert_ne!(new, token);
    let (status, body) = data(&gw, "/data/refreshed", &new).await;
    assert_eq!(status, 200);
    assert_eq!(body["user_id"], json!([ALICE.id]));

    // And an Okta login's.
    let okta = gw
        .http
        .post(gw.url("/users/okta_login"))
        .json(&json!({ "code": "good-code" }))
        .send()
        .await
        .unwrap();
    assert_eq!(okta.status(), 200);
    let okta: Value = okta.json().await.unwrap();
    let okta = okta["token"].as_str().unwrap().to_owned();
    let (status, body) = data(&gw, "/data/okta", &okta).await;
    assert_eq!(status, 200);
    assert!(body["user_id"].as_array().is_some_and(|ids| ids.len() == 1));

    // One introspection per issued token, however many requests used it.
    assert_eq!(backend.introspections(), 3);

    // Control: a token the gateway did not see being issued costs exactly one too.
    let unseen = backend.issue(&ALICE);
    assert_eq!(data(&gw, "/data/unseen", &unseen).await.0, 200);
    assert_eq!(data(&gw, "/data/unseen", &unseen).await.0, 200);
    assert_eq!(backend.introspections(), 4);
    gw.shutdown().await;
}

/// The gateway knows no sessions of the backend's, but a logout it passes on ends what the
/// token opened through it: its streamed responses are cut, another token's flow on.
#[tokio::test]
async fn a_logout_through_the_gateway_cuts_the_tokens_streamed_responses() {
    let backend = Backend::start().await;
    let (events, _events_task) = endless_event_stream().await;
    let streams = format!(
        "[[upstreams]]\nname = \"events\"\ninstances = [\"http://{events}\"]\n\
         [[routes]]\nprefix = \"/events\"\nupstream = \"events\"\n"
    );
    let toml = upstream_mode_toml(&backend.url(), &DEFAULTS) + &streams;
    let gw = Gateway::start_with(&backend.url(), &toml).await;
    let alice = login(&gw, &ALICE).await;
    let admin = login(&gw, &ADMIN).await;
    let mut alices = gw.get_with_token("/events/feed", &alice).await;
    let mut admins = gw.get_with_token("/events/feed", &admin).await;
    assert_eq!(alices.status(), 200);
    assert_flowing(&mut alices).await;

    let logout = Instant::now();
    let out = gw
        .http
        .delete(gw.url("/users/login"))
        .header("x-access-token", &alice)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 200);
    assert_cut(&mut alices, logout, Duration::from_secs(1)).await;
    assert_flowing(&mut admins).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn logout_through_the_gateway_rejects_the_token_at_once() {
    let backend = Backend::start().await;
    // positive_ttl 1h: only the logout can make the gateway forget.
    let gw = gateway(&backend, &DEFAULTS).await;

    // Control: a logout the gateway does not see leaves the cached answer in place.
    let unseen = backend.issue(&ALICE);
    assert_eq!(data(&gw, "/data/a", &unseen).await.0, 200);
    backend.revoke(&unseen);
    assert_eq!(data(&gw, "/data/a", &unseen).await.0, 200);
    assert_eq!(backend.introspections(), 1);

    // Token in X-Access-Token, learned from the login.
    let by_header = login(&gw, &ALICE).await;
    assert_eq!(data(&gw, "/data/h", &by_header).await.0, 200);
    let out = gw
        .http
        .delete(gw.url("/users/login"))
        .header("x-access-token", &by_header)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 200);
    assert_eq!(set_cookies(&out), [format!("{COOKIE}=; Max-Age=0; Path=/")]);
    assert_eq!(message(out).await, LOGGED_OUT);
    assert!(!backend.is_live(&by_header));
    let (status, body) = data(&gw, "/data/h", &by_header).await;
    assert_eq!(status, 401);
    assert_eq!(body["message"], INVALID);

    // Token in the JSON body, cached from an introspection.
    let by_body = backend.issue(&ALICE);
    assert_eq!(data(&gw, "/data/b", &by_body).await.0, 200);
    let asked = backend.introspections();
    let out = gw
        .http
        .delete(gw.url("/users/login"))
        .json(&json!({ "token": by_body }))
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 200);
    assert_eq!(message(out).await, LOGGED_OUT);
    // The body the gateway read on the way arrived whole.
    let seen = backend.last_at("/users/login");
    assert_eq!(seen.method, Method::DELETE);
    assert_eq!(
        serde_json::from_slice::<Value>(&seen.body).unwrap(),
        json!({ "token": by_body })
    );
    assert!(seen.header("x-access-token").is_empty());
    let (status, body) = data(&gw, "/data/b", &by_body).await;
    assert_eq!(status, 401);
    assert_eq!(body["message"], INVALID);
    assert_eq!(
        backend.introspections(),
        asked + 1,
        "the evicted token was asked about again"
    );

    // Token in the session cookie.
    let by_cookie = login(&gw, &ADMIN).await;
    assert_eq!(data(&gw, "/data/c", &by_cookie).await.0, 200);
    let out = gw
        .http
        .delete(gw.url("/users/login"))
        .header("cookie", format!("theme=dark; {COOKIE}={by_cookie}"))
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 200);
    assert_eq!(message(out).await, LOGGED_OUT);
    let (status, body) = data(&gw, "/data/c", &by_cookie).await;
    assert_eq!(status, 401);
    assert_eq!(body["message"], INVALID);

    // The unseen logout is still served from the cache: nothing else was evicted.
    assert_eq!(data(&gw, "/data/a", &unseen).await.0, 200);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_during_an_introspection_is_not_undone_by_its_answer() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &DEFAULTS).await;
    let token = backend.issue(&ALICE);
    // The backend vouches for the token on arrival, then answers only after the logout.
    backend
        .state
        .introspect_delay_ms
        .store(500, Ordering::SeqCst);

    let (racing, logout) = tokio::join!(data(&gw, "/data/race", &token), async {
        eventually!(
            backend.introspections() == 1,
            "the introspection never started"
        );
        gw.http
            .delete(gw.url("/users/login"))
            .header("x-access-token", &token)
            .send()
            .await
            .unwrap()
    });
    assert_eq!(logout.status(), 200);
    assert!(!backend.is_live(&token));
    // The request that raced the logout got the answer given before it.
    assert_eq!(racing.0, 200);

    // But that answer is not remembered past the logout.
    backend.state.introspect_delay_ms.store(0, Ordering::SeqCst);
    let (status, body) = data(&gw, "/data/race", &token).await;
    assert_eq!(status, 401);
    assert_eq!(body["message"], INVALID);
    assert_eq!(backend.introspections(), 2);
    gw.shutdown().await;
}

#[tokio::test]
async fn unknown_tokens_are_rejected_and_the_rejection_is_cached_for_negative_ttl() {
    let backend = Backend::start().await;
    // Sub-second on purpose: whole-second TTL bookkeeping once made this stale at once.
    let settings = Settings {
        negative_ttl: "700ms",
        ..DEFAULTS
    };
    let gw = gateway(&backend, &settings).await;

    let (status, body) = data(&gw, "/data/x", "never-issued").await;
    assert_eq!(status, 401);
    assert_eq!(body, json!({ "message": INVALID }));
    assert_eq!(backend.introspections(), 1);

    // Within negative_ttl: the cached "invalid" answers.
    let response = gw.get_with_token("/data/x", "never-issued").await;
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert_eq!(message(response).await, INVALID);
    assert_eq!(backend.introspections(), 1);
    assert!(
        backend.seen_at("/data/x").is_empty(),
        "the backend saw no data request"
    );

    // After it: asked again.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(data(&gw, "/data/x", "never-issued").await.0, 401);
    assert_eq!(backend.introspections(), 2);

    // A token refused once and issued later is accepted once the rejection has expired.
    let later = "issued-later";
    assert_eq!(data(&gw, "/data/y", later).await.0, 401);
    assert_eq!(backend.introspections(), 3);
    let index = USERS.iter().position(|u| u.id == ALICE.id).unwrap();
    backend
        .state
        .tokens
        .lock()
        .unwrap()
        .insert(later.to_owned(), index);
    assert_eq!(data(&gw, "/data/y", later).await.0, 401, "still cached");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (status, body) = data(&gw, "/data/y", later).await;
    assert_eq!(status, 200);
    assert_eq!(body["user_id"], json!(["u-alice"]));
    assert_eq!(backend.introspections(), 4);
    gw.shutdown().await;
}

#[tokio::test]
async fn introspection_failures_are_503_never_valid_and_never_cached() {
    let backend = Backend::start().await;
    let settings = Settings {
        response_timeout: "300ms",
        ..DEFAULTS
    };
    let gw = gateway(&backend, &settings).await;
    let token = backend.issue(&ALICE);

    // 500 (and any status other than 2xx/401/403) → 503, asked again every time.
    for (status, asked) in [(500, 1), (500, 2), (404, 3), (302, 4)] {
        backend
            .state
            .introspect_status
            .store(status, Ordering::SeqCst);
        let response = gw.get_with_token("/data/f", &token).await;
        assert_eq!(response.status(), 503, "introspection answered {status}");
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(message(response).await, UNAVAILABLE);
        assert_eq!(backend.introspections(), asked);
    }
    assert!(
        backend.seen_at("/data/f").is_empty(),
        "never treated as valid"
    );

    // Recovered: valid, and cached from now on.
    backend.state.introspect_status.store(0, Ordering::SeqCst);
    let (status, body) = data(&gw, "/data/f", &token).await;
    assert_eq!(status, 200);
    assert_eq!(body["user_id"], json!(["u-alice"]));
    assert_eq!(data(&gw, "/data/f", &token).await.0, 200);
    assert_eq!(backend.introspections(), 5);

    // Hanging past the cluster's response_timeout → 503, in about that time.
    let other = backend.issue(&ADMIN);
    backend.state.introspect_hang.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let response = gw.get_with_token("/data/g", &other).await;
    let waited = started.elapsed();
    assert_eq!(response.status(), 503);
    assert_eq!(message(response).await, UNAVAILABLE);
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(2),
        "answered after {waited:?}"
    );
    assert_eq!(backend.introspections(), 6);
    assert!(
        backend.seen_at("/data/g").is_empty(),
        "never treated as valid"
    );

    // Recovered: asked again (the timeout was not cached), valid.
    backend.state.introspect_hang.store(false, Ordering::SeqCst);
    let (status, body) = data(&gw, "/data/g", &other).await;
    assert_eq!(status, 200);
    assert_eq!(body["user_id"], json!(["u-admin"]));
    assert_eq!(backend.introspections(), 7);
    // The token validated before the trouble stayed valid throughout.
    assert_eq!(data(&gw, "/data/f", &token).await.0, 200);
    assert_eq!(backend.introspections(), 7);
    gw.shutdown().await;
}

#[tokio::test]
async fn the_auth_api_passes_through_unchanged_and_nothing_local_is_created() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &DEFAULTS).await;

    // Any method, query, cookies and a non-JSON body reach the backend as sent; status, body
    // and every Set-Cookie come back.
    let response = gw
        .http
        .put(gw.url("/users/echo?status=409&a=1&b=two%20words"))
        .header("cookie", "theme=dark; other=2")
        .header("x-custom", "kept")
        .header("x-meiro-user-id", "u-admin")
        .header("content-type", "text/plain")
        .body("raw body, not JSON")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    assert_eq!(response.headers()["x-backend"], "meiro");
    assert_eq!(
        set_cookies(&response),
        ["echo=1; Path=/", "second=two; HttpOnly"]
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({
            "method": "PUT",
            "query": "status=409&a=1&b=two%20words",
            "cookie": ["theme=dark; other=2"],
            "body": "raw body, not JSON",
        })
    );
    let seen = backend.last_at("/users/echo");
    assert_eq!(seen.method, Method::PUT);
    assert_eq!(&seen.body[..], b"raw body, not JSON");
    assert_eq!(seen.header("x-custom"), ["kept"]);
    assert_eq!(seen.header("content-type"), ["text/plain"]);
    assert!(
        seen.header("x-meiro-user-id").is_empty(),
        "spoofed identity reached the backend"
    );
    assert_eq!(seen.header("x-forwarded-for"), ["127.0.0.1"]);

    // Other methods too, no token needed at the gateway: the backend decides.
    let deleted = gw
        .http
        .delete(gw.url("/users/echo"))
        .body("")
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    assert_eq!(deleted.json::<Value>().await.unwrap()["method"], "DELETE");

    let options = gw.http.get(gw.url("/auth_options")).send().await.unwrap();
    assert_eq!(options.status(), 200);
    assert_eq!(
        options.json::<Value>().await.unwrap(),
        json!({ "credentials": true, "okta": { "enabled": true, "client_id": "abc" } })
    );
    assert_eq!(backend.seen_at("/auth_options").len(), 1);

    // /users/invite is the backend's: it checks the admin's token, not the gateway.
    let admin = login(&gw, &ADMIN).await;
    let invite = gw
        .http
        .post(gw.url("/users/invite"))
        .header("x-access-token", &admin)
        .json(&json!({ "email": "new@example.com" }))
        .send()
        .await
        .unwrap();
    assert_eq!(invite.status(), 201);
    assert_eq!(
        invite.json::<Value>().await.unwrap(),
        json!({ "message": "Invitation sent", "email": "new@example.com" })
    );
    let seen = backend.last_at("/users/invite");
    assert_eq!(seen.header("x-access-token"), [admin.as_str()]);
    assert_eq!(
        serde_json::from_slice::<Value>(&seen.body).unwrap(),
        json!({ "email": "new@example.com" })
    );
    let alice = login(&gw, &ALICE).await;
    let forbidden = gw
        .http
        .post(gw.url("/users/invite"))
        .header("x-access-token", &alice)
        .json(&json!({ "email": "x@example.com" }))
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status(), 403);
    assert_eq!(message(forbidden).await, "Forbidden");
    // An unknown /users route is the backend's 404, not the gateway's.
    let unknown = gw.http.get(gw.url("/users/nope")).send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(unknown.headers()["x-backend"], "meiro");
    // The auth API's own requests are not checked here: the backend was asked only about the
    // two tokens the logins issued (at once, in the background, for their identity).
    eventually!(
        backend.introspections() == 2,
        "introspections: {}",
        backend.introspections()
    );

    // Local mode's public endpoints do not exist here; readiness does not need a store.
    let jwks = gw
        .http
        .get(gw.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(jwks.status(), 401, "a data-plane request without a token");
    let ready = gw.http.get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    let dir = gw.dir.path().to_owned();
    gw.shutdown().await;
    assert!(!dir.join("gate.db").exists(), "a local store was created");
    assert!(!dir.join("keys").exists(), "local key material was created");
    assert!(!dir.join("outbox").exists(), "a mail outbox was created");
}

/// A complete upstream-mode configuration for [`config::load_from_figment`].
fn standalone_config(dir: &std::path::Path, auth_upstream: &str) -> Figment {
    let toml = format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        public_url = "http://gateway.test"
        [admin]
        listen = "127.0.0.1:0"
        [store]
        url = "sqlite://{dir}/gate.db"
        [auth]
        mode = "upstream"
        keys_dir = "{dir}/keys"
        [auth.upstream]
        upstream = "{auth_upstream}"
        introspect_path = "/users/me"
        [[upstreams]]
        name = "meiro"
        instances = ["http://127.0.0.1:9"]
        [[routes]]
        prefix = "/"
        upstream = "meiro"
        "#,
        dir = dir.display()
    );
    Figment::from(Toml::string(&toml))
}

#[tokio::test]
async fn an_unknown_auth_upstream_cluster_is_refused() {
    let dir = tempfile::tempdir().unwrap();

    // Configuration loading catches it, naming the key.
    let error = config::load_from_figment(&standalone_config(dir.path(), "nope"))
        .expect_err("an unknown auth.upstream.upstream is an error");
    let problem = error
        .problems
        .iter()
        .find(|p| p.key == "auth.upstream.upstream")
        .unwrap_or_else(|| panic!("no problem for auth.upstream.upstream: {error}"));
    assert!(problem.message.contains("unknown upstream"), "{problem:?}");

    // And a Config built past validation does not start either.
    let mut config = config::load_from_figment(&standalone_config(dir.path(), "meiro"))
        .expect("the same config with a known cluster is valid");
    config.auth.upstream.as_mut().unwrap().upstream = "nope".to_owned();
    match App::start(config.clone()).await {
        Err(StartError::Proxy(ProxyBuildError::UnknownAuthUpstream(name))) => {
            assert_eq!(name, "nope");
        }
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("started with an unknown auth.upstream.upstream"),
    }
    config.auth.upstream = None;
    match App::start(config).await {
        Err(StartError::Proxy(ProxyBuildError::MissingAuthUpstream)) => {}
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("started in upstream mode without [auth.upstream]"),
    }
    assert!(!dir.path().join("gate.db").exists());
    assert!(!dir.path().join("keys").exists());
}

/// `server.api_prefix = "/api"`: the backend's auth API is passed through under the prefix
/// (unchanged, prefix included: the backend serves it there), and at the root those paths are
/// ordinary data-plane requests that need a token.
#[tokio::test]
async fn under_an_api_prefix_the_auth_api_is_passed_through_there_and_only_there() {
    let backend = Backend::start().await;
    let prefixed = "[server]\napi_prefix = \"/api\"\n";
    let layers = [
        upstream_mode_toml(&backend.url(), &DEFAULTS),
        prefixed.to_owned(),
    ];
    let layers: Vec<&str> = layers.iter().map(String::as_str).collect();
    let gw = Gateway::start_with_layers(&backend.url(), &layers).await;

    let credentials = json!({ "email": ALICE.email, "password": ALICE.password });
    let login = |path: &str| gw.http.post(gw.url(path)).json(&credentials).send();
    let passed = login("/api/users/login").await.unwrap();
    assert_eq!(passed.headers()["x-backend"], "meiro", "passed through");
    let seen = backend.last_at("/api/users/login");
    assert_eq!(seen.method, Method::POST);
    assert!(seen.header("x-access-token").is_empty());

    let at_root = login("/users/login").await.unwrap();
    assert_eq!(at_root.status(), 401, "the data plane's: no token");
    assert!(at_root.headers().get("x-backend").is_none());
    assert!(backend.seen_at("/users/login").is_empty());
    gw.shutdown().await;
}

#[tokio::test]
async fn every_users_api_route_is_the_backends_in_upstream_mode() {
    let backend = Backend::start().await;
    let gw = gateway(&backend, &DEFAULTS).await;
    let admin = login(&gw, &ADMIN).await;
    let id = "0b8e7f3c-4d5a-4e6b-9c7d-8e9f0a1b2c3d";
    let change_password = format!("/users/{id}/change_password");
    let user = format!("/users/{id}");
    for (method, path, query) in [
        (Method::GET, "/users", Some("limit=5&order_by=email")),
        (Method::POST, "/users", None),
        (Method::GET, "/users/trash", Some("offset=20")),
        (Method::POST, "/users/create_or_restore", None),
        (Method::GET, user.as_str(), None),
        (Method::PATCH, user.as_str(), None),
        (Method::DELETE, user.as_str(), None),
        (Method::POST, change_password.as_str(), None),
    ] {
        let url = match query {
            Some(query) => gw.url(&format!("{path}?{query}")),
            None => gw.url(path),
        };
        let response = gw
            .http
            .request(method.clone(), url)
            .header("x-access-token", &admin)
            .json(&json!({ "email": "x@example.com", "password": "p" }))
            .send()
            .await
            .unwrap();
        // The fake backend has none of these routes: its 404, not the gateway's answer.
        assert_eq!(response.status(), 404, "{method} {path}");
        assert_eq!(response.headers()["x-backend"], "meiro", "{method} {path}");
        let seen = backend.last_at(path);
        assert_eq!((&seen.method, seen.query.as_deref()), (&method, query));
        assert_eq!(seen.header("x-access-token"), [admin.as_str()]);
        assert_eq!(
            serde_json::from_slice::<Value>(&seen.body).unwrap(),
            json!({ "email": "x@example.com", "password": "p" }),
            "{method} {path}: the body as sent"
        );
    }
    gw.shutdown().await;
}
