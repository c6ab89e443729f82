//! Test harness: a gateway started in-process on 127.0.0.1:0 with a temp SQLite file and its
//! own key directory, a movable clock, and `FakeUpstream`s that speak real HTTP and record
//! what reaches them.

#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod accounts;
pub mod oidc;
pub mod plane;
pub mod raw;
pub mod replicas;
pub mod smtp;
pub mod streams;
pub mod thread_log;
pub mod tls;
pub mod ws;

/// Declared in `smtp.rs`, which `src/mail` also includes on its own.
pub use smtp::fake;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fake::FakeTask;
use figment::Figment;
use figment::providers::{Format, Toml};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use meiro_gate::auth::Clock;
use meiro_gate::auth::passwords::hash_standalone;
use meiro_gate::store::{AuditEvent, AuditFilter, NewUser, Role, User};
use meiro_gate::{App, RunningApp, config};
use tempfile::TempDir;

/// Polls `cond` every 20 ms for up to 5 s; for asynchronous state (revocation, health).
#[macro_export]
macro_rules! eventually {
    ($cond:expr, $($msg:tt)+) => {{
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if $cond { break; }
            if std::time::Instant::now() > deadline { panic!($($msg)+); }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }};
}

/// The data plane's 401 messages.
pub const MISSING: &str = "Missing access token";
pub const INVALID: &str = "Invalid or expired access token";

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: http::Method,
    pub uri: http::Uri,
    pub headers: http::HeaderMap,
    pub body_bytes: usize,
}

/// A real HTTP/1.1 + HTTP/2 server on 127.0.0.1:0. It reads the whole request body as a
/// stream (counting, not keeping it) and answers `200 {"path", "body_bytes"}`. Query
/// parameters steer it: `delay_ms=N` waits before answering, `status=N` sets the status,
/// `panic=1` makes its handler panic (which fails the test, see [`fake`]).
pub struct FakeUpstream {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    task: FakeTask,
}

impl FakeUpstream {
    pub async fn start() -> FakeUpstream {
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let log = requests.clone();
        let (addr, task) = fake::serve_http(move |req| answer(req, log.clone())).await;
        FakeUpstream {
            addr,
            requests,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn recorded(&self) -> Vec<Recorded> {
        self.task.tasks.check();
        self.requests.lock().unwrap().clone()
    }

    pub fn last(&self) -> Recorded {
        self.recorded().pop().expect("the upstream saw no request")
    }
}

/// Every value of header `name` a request arrived with.
pub fn header<'a>(r: &'a Recorded, name: &str) -> Vec<&'a str> {
    r.headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}

async fn answer(req: Request<Incoming>, log: Arc<Mutex<Vec<Recorded>>>) -> Response<Full<Bytes>> {
    let (parts, mut body) = req.into_parts();
    let mut body_bytes = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => body_bytes += f.data_ref().map_or(0, |d| d.len()),
            Err(_) => break,
        }
    }
    let query = parts.uri.query().unwrap_or("");
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse::<u64>().ok())
    };
    if param("panic").is_some() {
        panic!("the fake upstream was asked to panic");
    }
    if let Some(ms) = param("delay_ms") {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let status = param("status").unwrap_or(200) as u16;
    log.lock().unwrap().push(Recorded {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        headers: parts.headers.clone(),
        body_bytes,
    });
    let json = serde_json::json!({ "path": parts.uri.path(), "body_bytes": body_bytes });
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-upstream", "fake")
        .body(Full::new(Bytes::from(json.to_string())))
        .unwrap()
}

/// A gateway running in this process.
pub struct Gateway {
    pub app: Option<RunningApp>,
    pub addr: SocketAddr,
    pub clock: Clock,
    pub dir: TempDir,
    pub http: reqwest::Client,
}

pub const PASSWORD: &str = "correct horse battery staple";

impl Gateway {
    /// Routes: `/` → upstream (protected), `/public` → upstream (public).
    pub async fn start(upstream: &FakeUpstream) -> Gateway {
        Self::start_with(&upstream.url(), "").await
    }

    /// `extra_toml` is merged over the defaults (same keys win).
    pub async fn start_with(upstream_url: &str, extra_toml: &str) -> Gateway {
        Self::start_with_layers(upstream_url, &[extra_toml]).await
    }

    /// Like [`Gateway::start_with`], with several TOML documents merged in order (later wins),
    /// so helpers and tests can each set keys of the same section.
    pub async fn start_with_layers(upstream_url: &str, layers: &[&str]) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let config = config_in(dir.path(), upstream_url, layers);
        let clock = Clock::default();
        let app = App::start_with_clock(config, clock.clone()).await.unwrap();
        Gateway {
            addr: app.addr,
            app: Some(app),
            clock,
            dir,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The published key set (`/.well-known/jwks.json`).
    pub async fn jwks(&self) -> serde_json::Value {
        get_json(self.http.get(self.url("/.well-known/jwks.json"))).await
    }

    /// Every audit event persisted so far, as the store lists them.
    pub async fn audit_events(&self) -> Vec<AuditEvent> {
        self.app()
            .auth()
            .store()
            .audit_events(&AuditFilter {
                user_id: None,
                email: None,
                since: None,
                limit: 10_000,
            })
            .await
            .unwrap()
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.app().admin_addr, path)
    }

    /// The admin listener's `/metrics`, as text.
    pub async fn metrics_text(&self) -> String {
        let response = self
            .http
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    }

    pub fn app(&self) -> &RunningApp {
        self.app.as_ref().expect("gateway running")
    }

    pub async fn add_user(&self, email: &str, role: Role) -> User {
        self.app()
            .auth()
            .store()
            .create_user(NewUser {
                email: email.to_lowercase(),
                password_hash: Some(hash_standalone(PASSWORD.into()).await.unwrap()),
                role,
                invitation_pending: false,
                invitation: None,
                sso_enabled: false,
                created: self.clock.now(),
            })
            .await
            .unwrap()
    }

    /// Disables `email` in the store (`None`: no such user).
    pub async fn disable_user(&self, email: &str) -> Option<User> {
        self.app()
            .auth()
            .store()
            .set_user_disabled(email, true, self.clock.now())
            .await
            .unwrap()
    }

    pub async fn login_response(&self, email: &str, password: &str) -> reqwest::Response {
        self.http
            .post(self.url("/users/login"))
            .json(&serde_json::json!({ "email": email, "password": password }))
            .send()
            .await
            .unwrap()
    }

    /// Logs in with [`PASSWORD`] and returns the token.
    pub async fn login(&self, email: &str) -> String {
        token_of_login(self.login_response(email, PASSWORD).await, email).await
    }

    /// GET through the data plane with `X-Access-Token`.
    pub async fn get_with_token(&self, path: &str, token: &str) -> reqwest::Response {
        get_with_token(&self.http, self.url(path), token).await
    }

    /// `PATCH /users/login` with the token in the body.
    pub async fn refresh_response(&self, token: &str) -> reqwest::Response {
        self.http
            .patch(self.url("/users/login"))
            .json(&serde_json::json!({ "token": token }))
            .send()
            .await
            .unwrap()
    }

    /// `DELETE /users/login` with `X-Access-Token`, asserting it succeeded.
    pub async fn logout(&self, token: &str) {
        let response = self
            .http
            .delete(self.url("/users/login"))
            .header("x-access-token", token)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "logout: {}",
            response.status()
        );
    }

    pub async fn shutdown(mut self) -> bool {
        self.app.take().unwrap().shutdown().await
    }

    /// This gateway's `auth.keys_dir`.
    pub fn keys_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("keys")
    }

    /// Extra TOML that makes another gateway a replica of this one: the same store and keys
    /// directory, as replicas sharing a database and a mounted Secret. (One SQLite file is
    /// fine for replicas in one process on one host; in production they share PostgreSQL.)
    /// `auth_lines` go into its `[auth]` table.
    pub fn replica_toml(&self, auth_lines: &str) -> String {
        format!(
            "[store]\nurl = \"sqlite://{dir}/gate.db\"\n[auth]\nkeys_dir = \"{dir}/keys\"\n{auth_lines}\n",
            dir = self.dir.path().display()
        )
    }
}

/// A valid token for `email` of another gateway on `upstream` (same issuer URL, its own
/// key), with that gateway, which must live as long as the token is used.
pub async fn foreign_token(upstream: &FakeUpstream, email: &str) -> (Gateway, String) {
    let other = Gateway::start(upstream).await;
    other.add_user(email, Role::User).await;
    let token = other.login(email).await;
    (other, token)
}

/// The JSON body of a request's response, whatever its status.
pub async fn get_json(request: reqwest::RequestBuilder) -> serde_json::Value {
    request.send().await.unwrap().json().await.unwrap()
}

/// The token of a login response, asserting its 200.
pub async fn token_of_login(response: reqwest::Response, email: &str) -> String {
    assert_eq!(response.status(), 200, "login of {email}");
    let body: serde_json::Value = response.json().await.unwrap();
    body["token"].as_str().unwrap().to_owned()
}

/// GET `url` with `X-Access-Token`.
pub async fn get_with_token(http: &reqwest::Client, url: String, token: &str) -> reqwest::Response {
    http.get(url)
        .header("x-access-token", token)
        .send()
        .await
        .unwrap()
}

/// The `kid` in a JWT's header.
pub fn kid_of(token: &str) -> String {
    use base64::Engine;
    let header = token.split('.').next().unwrap();
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .unwrap();
    let header: serde_json::Value = serde_json::from_slice(&header).unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

/// `{"message": …}` of an error response, asserting the JSON shape.
pub async fn message(response: reqwest::Response) -> String {
    let body: serde_json::Value = response.json().await.expect("JSON error body");
    body["message"]
        .as_str()
        .expect("error body has a message")
        .to_owned()
}

/// Asserts the one JSON content type every response of the contract carries, from the auth
/// API and the data plane alike.
pub fn assert_json(headers: &http::HeaderMap) {
    let ct = headers
        .get(http::header::CONTENT_TYPE)
        .expect("a Content-Type")
        .to_str()
        .unwrap();
    assert_eq!(ct, "application/json", "content type");
}

/// Status and `{"message"}` of a response, asserting the JSON shape.
pub async fn status_message(response: reqwest::Response) -> (reqwest::StatusCode, String) {
    let status = response.status();
    assert_json(response.headers());
    (status, message(response).await)
}

/// [`status_message`], naming `what` the response answered if it is not JSON.
pub async fn status_message_of(
    response: reqwest::Response,
    what: &str,
) -> (reqwest::StatusCode, String) {
    assert_eq!(
        response.headers()[http::header::CONTENT_TYPE],
        "application/json",
        "{what}"
    );
    status_message(response).await
}

/// Status and the whole JSON body.
pub async fn status_json(response: reqwest::Response) -> (reqwest::StatusCode, serde_json::Value) {
    let status = response.status();
    assert_json(response.headers());
    (status, response.json().await.expect("a JSON body"))
}

/// The `Retry-After` of a throttled answer, in whole seconds.
pub fn retry_after(headers: &http::HeaderMap) -> u64 {
    headers
        .get(http::header::RETRY_AFTER)
        .expect("a Retry-After header")
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After in whole seconds")
}

/// A gateway in front of a fake upstream, delivering its mail over SMTP to `sink`.
pub struct MailingGateway {
    pub upstream: FakeUpstream,
    pub sink: smtp::SmtpSink,
    pub gw: Gateway,
}

impl MailingGateway {
    /// `layers` of TOML are merged over the mail settings, in order.
    pub async fn start(layers: &[&str]) -> MailingGateway {
        let sink = smtp::SmtpSink::start().await;
        let upstream = FakeUpstream::start().await;
        let mail = smtp_toml(sink.addr);
        let layers: Vec<&str> = std::iter::once(mail.as_str())
            .chain(layers.iter().copied())
            .collect();
        let gw = Gateway::start_with_layers(&upstream.url(), &layers).await;
        MailingGateway { upstream, sink, gw }
    }
}

/// Asserts a throttled answer (`what` names it): 429, a `Retry-After` within `1..=window`
/// seconds and a JSON message; the wait and the message.
pub async fn assert_throttled(
    response: reqwest::Response,
    window: u64,
    what: &str,
) -> (u64, String) {
    assert_eq!(
        response.status(),
        reqwest::StatusCode::TOO_MANY_REQUESTS,
        "{what}"
    );
    let wait = retry_after(response.headers());
    assert!((1..=window).contains(&wait), "{what}: Retry-After {wait}");
    let (_, msg) = status_message(response).await;
    assert!(!msg.is_empty(), "{what}");
    (wait, msg)
}

/// Extra TOML sending mail over SMTP to `addr`, with quick retries.
pub fn smtp_toml(addr: SocketAddr) -> String {
    format!(
        "[mail]\ntransport = \"smtp\"\nsmtp_url = \"smtp://{addr}\"\n\
         retry_initial = \"100ms\"\nretry_max = \"500ms\"\n"
    )
}

/// The settings of a local-mode gateway on ephemeral ports with its store, keys and mail
/// outbox in `dir`, as TOML (no upstreams or routes).
pub fn local_toml(dir: &std::path::Path) -> String {
    format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        public_url = "http://gateway.test"
        drain_timeout = "5s"
        [admin]
        listen = "127.0.0.1:0"
        [store]
        url = "sqlite://{dir}/gate.db"
        [mail]
        dir = "{dir}/outbox"
        [auth]
        keys_dir = "{dir}/keys"
        cookie_secure = false
        password_hash_concurrency = 2
        "#,
        dir = dir.display()
    )
}

/// The config [`Gateway::start_with_layers`] starts with, its files in `dir` (a reload test
/// builds the next one the same way).
pub fn config_in(dir: &std::path::Path, upstream_url: &str, layers: &[&str]) -> config::Config {
    let base = [
        local_toml(dir),
        plane::upstream_toml(
            "backend",
            &[upstream_url.to_owned()],
            "connect_timeout = \"1s\"\nresponse_timeout = \"2s\"",
        ),
        plane::route_toml("/", "backend", ""),
        plane::route_toml("/public", "backend", "public = true"),
    ]
    .concat();
    let figment = layers
        .iter()
        .fold(Figment::from(Toml::string(&base)), |f, layer| {
            f.merge(Toml::string(layer))
        });
    config::load_from_figment(&figment).expect("test config is valid")
}
