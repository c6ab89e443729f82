//! `FakeIdp`: an OpenID provider speaking the real protocol over HTTP on 127.0.0.1:0, for the
//! Okta tests. It serves the discovery document, a JWKS of RSA keys generated in the test
//! (rotatable), and a token endpoint that authenticates the client (`client_secret_basic` or
//! `client_secret_post`) and redeems single-use, expiring codes that the test registers with
//! whatever id_token it wants (see [`jwt`] to craft one). It can be stopped and started again
//! on the same address to play "provider down".

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::{KeyPair, KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use super::fake::Tasks;

pub const CLIENT_ID: &str = "0oa-meiro-gate";
pub const CLIENT_SECRET: &str = "client-secret-for-tests-only";
/// The gateway's `okta.redirect_uri`; the token endpoint insists on it.
pub const REDIRECT_URI: &str = "http://app.test/okta/callback";
/// Path of the issuer below the server, like an Okta custom authorization server.
const ISSUER_PATH: &str = "/oauth2/default";

/// How the token endpoint wants the client to authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    Basic,
    Post,
}

/// How a crafted JWT is signed.
pub enum Signer<'a> {
    Rsa(&'a KeyPair),
    Hmac(&'a [u8]),
    /// `alg: none`: an empty signature.
    Unsigned,
}

/// RSA-2048 keys shared by every provider of the test binary: generating them is the slow
/// part, and each provider names them with its own `kid`s.
fn key_pool() -> &'static [KeyPair] {
    static POOL: OnceLock<Vec<KeyPair>> = OnceLock::new();
    POOL.get_or_init(|| {
        (0..4)
            .map(|_| KeyPair::generate(KeySize::Rsa2048).expect("RSA key generation"))
            .collect()
    })
}

/// The key no provider ever publishes: signatures made with it must not verify.
pub fn unpublished_key() -> &'static KeyPair {
    &key_pool()[3]
}

/// `header.payload.signature`, base64url, signed as `signer` says (the header is taken as
/// given, so it may lie about `alg` or `kid`).
pub fn jwt(header: &Value, claims: &Value, signer: Signer<'_>) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = match signer {
        Signer::Rsa(key) => {
            let mut sig = vec![0; key.public_modulus_len()];
            key.sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                input.as_bytes(),
                &mut sig,
            )
            .expect("RSA signing");
            sig
        }
        Signer::Hmac(secret) => {
            let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
            aws_lc_rs::hmac::sign(&key, input.as_bytes())
                .as_ref()
                .to_vec()
        }
        Signer::Unsigned => Vec::new(),
    };
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn random_text() -> String {
    let mut bytes = [0u8; 12];
    SystemRandom::new().fill(&mut bytes).unwrap();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The JWK of an RSA public key (RFC 7517/7518: `n` and `e` big-endian, no leading zeros).
fn rsa_jwk(key: &KeyPair, kid: &str) -> Value {
    let components = PublicKeyComponents::<Vec<u8>>::from(key.public_key());
    let unsigned = |bytes: &[u8]| {
        let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
        URL_SAFE_NO_PAD.encode(&bytes[start..])
    };
    json!({
        "kty": "RSA",
        "use": "sig",
        "alg": "RS256",
        "kid": kid,
        "n": unsigned(&components.n),
        "e": unsigned(&components.e),
    })
}

/// One token request as the provider saw it.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub authorization: Option<String>,
    pub form: HashMap<String, String>,
}

/// How often each endpoint was called.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hits {
    pub discovery: usize,
    pub jwks: usize,
    pub token: usize,
}

struct Code {
    id_token: String,
    expires_at: Instant,
    used: bool,
}

struct State {
    issuer: String,
    client_auth: ClientAuth,
    /// `(kid, index into the key pool)` of every published key, oldest first.
    published: Vec<(String, usize)>,
    /// Index into `published` of the key that signs.
    signing: usize,
    codes: HashMap<String, Code>,
    hits: Hits,
    token_requests: Vec<TokenRequest>,
    /// The discovery document names `/v1/moved`, which redirects (307) to the token endpoint.
    token_endpoint_moved: bool,
    /// The token endpoint waits this long before answering.
    token_delay: Duration,
}

pub struct FakeIdp {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    server: Mutex<Option<JoinHandle<()>>>,
    tasks: Tasks,
}

impl FakeIdp {
    /// A provider expecting `client_secret_basic`.
    pub async fn start() -> FakeIdp {
        Self::start_with(ClientAuth::Basic).await
    }

    pub async fn start_with(client_auth: ClientAuth) -> FakeIdp {
        // Generated now, before any gateway shares this test's runtime: a first use later
        // would block the thread (and so the gateway's timers) for the whole generation.
        key_pool();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let prefix = random_text();
        let state = Arc::new(Mutex::new(State {
            issuer: format!("http://{addr}{ISSUER_PATH}"),
            client_auth,
            published: vec![(format!("{prefix}-k0"), 0)],
            signing: 0,
            codes: HashMap::new(),
            hits: Hits::default(),
            token_requests: Vec::new(),
            token_endpoint_moved: false,
            token_delay: Duration::ZERO,
        }));
        let tasks = Tasks::default();
        let server = tasks.spawn(serve(listener, state.clone(), tasks.clone()));
        FakeIdp {
            addr,
            state,
            server: Mutex::new(Some(server)),
            tasks,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.tasks.check();
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn issuer(&self) -> String {
        self.state().issuer.clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer())
    }

    /// The gateway's `[okta]` section for this provider. `extra` lines go into the same table
    /// and replace the defaults they name (e.g. `auto_provision = true`, `http_timeout = "1s"`).
    pub fn okta_toml(&self, extra: &str) -> String {
        let auth = match self.state().client_auth {
            ClientAuth::Basic => "client_secret_basic",
            ClientAuth::Post => "client_secret_post",
        };
        let defaults = [
            ("enabled", "true".to_owned()),
            ("issuer", format!("{:?}", self.issuer())),
            ("client_id", format!("{CLIENT_ID:?}")),
            ("client_secret", format!("{CLIENT_SECRET:?}")),
            ("redirect_uri", format!("{REDIRECT_URI:?}")),
            ("client_auth", format!("{auth:?}")),
            ("http_timeout", "\"2s\"".to_owned()),
            ("discovery_retry", "\"200ms\"".to_owned()),
        ];
        let overridden = |key: &str| {
            extra
                .lines()
                .any(|line| line.split('=').next().is_some_and(|k| k.trim() == key))
        };
        let mut toml = String::from("[okta]\n");
        for (key, value) in defaults {
            if !overridden(key) {
                toml.push_str(&format!("{key} = {value}\n"));
            }
        }
        toml.push_str(extra);
        toml.push('\n');
        toml
    }

    /// Valid id_token claims for `email`, issued now for an hour.
    pub fn claims(&self, email: &str) -> Value {
        let now = unix_now();
        json!({
            "iss": self.issuer(),
            "sub": format!("00u{}", random_text()),
            "aud": CLIENT_ID,
            "iat": now,
            "exp": now + 3600,
            "auth_time": now,
            "email": email,
            "email_verified": true,
            "name": "Test User",
        })
    }

    /// `kid` of the key that currently signs.
    pub fn signing_kid(&self) -> String {
        let state = self.state();
        state.published[state.signing].0.clone()
    }

    pub fn signing_key(&self) -> &'static KeyPair {
        let state = self.state();
        &key_pool()[state.published[state.signing].1]
    }

    /// The header the provider signs with: `RS256` and the current `kid`.
    pub fn header(&self) -> Value {
        json!({ "alg": "RS256", "kid": self.signing_kid() })
    }

    /// An id_token over `claims`, signed by the current key.
    pub fn sign(&self, claims: &Value) -> String {
        jwt(&self.header(), claims, Signer::Rsa(self.signing_key()))
    }

    /// Registers a code (valid for a minute) that redeems to `id_token`.
    pub fn code_for(&self, id_token: String) -> String {
        self.register(id_token, Instant::now() + Duration::from_secs(60))
    }

    /// A code whose validity has already ended.
    pub fn expired_code_for(&self, id_token: String) -> String {
        self.register(id_token, Instant::now() - Duration::from_secs(1))
    }

    fn register(&self, id_token: String, expires_at: Instant) -> String {
        let code = random_text();
        self.state().codes.insert(
            code.clone(),
            Code {
                id_token,
                expires_at,
                used: false,
            },
        );
        code
    }

    /// A code for a valid id_token of `email`.
    pub fn login_code(&self, email: &str) -> String {
        self.code_for(self.sign(&self.claims(email)))
    }

    /// Publishes a new key and signs with it from now on (the old key stays published).
    pub fn rotate_key(&self) {
        let mut state = self.state();
        let next = state.published.len();
        assert!(next < 3, "the pool has three publishable keys");
        let kid = format!("{}-k{next}", random_text());
        state.published.push((kid, next));
        state.signing = next;
    }

    /// From the next discovery on, the token endpoint is a `307` to the real one: a client
    /// that follows redirects would replay its code and secret there.
    pub fn move_token_endpoint(&self) {
        self.state().token_endpoint_moved = true;
    }

    /// The token endpoint answers only after `delay`.
    pub fn delay_token_endpoint(&self, delay: Duration) {
        self.state().token_delay = delay;
    }

    pub fn hits(&self) -> Hits {
        self.state().hits
    }

    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.state().token_requests.clone()
    }

    /// Closes the listener and every open connection: the address refuses connections.
    pub fn stop(&self) {
        if let Some(server) = self
            .server
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            server.abort();
        }
    }

    /// Listens again on the same address, with the same keys and codes.
    pub async fn restart(&self) {
        self.stop();
        // The aborted task drops its listener when it is next polled; retry until it has.
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        let server = self
            .tasks
            .spawn(serve(listener, self.state.clone(), self.tasks.clone()));
        *self.server.lock().unwrap_or_else(PoisonError::into_inner) = Some(server);
    }
}

impl Drop for FakeIdp {
    fn drop(&mut self) {
        self.stop();
        self.tasks.check_on_drop();
    }
}

/// Accepts until aborted; the connections live in a `JoinSet` the task owns, so aborting it
/// closes them too.
async fn serve(listener: TcpListener, state: Arc<Mutex<State>>, tasks: Tasks) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let state = state.clone();
        let executor = tasks.clone();
        connections.spawn(tasks.watch(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(answer(req, &state).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(executor)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }));
        while connections.try_join_next().is_some() {}
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("cache-control", "no-store")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn oauth_error(status: StatusCode, error: &str) -> Response<Full<Bytes>> {
    json_response(
        status,
        &json!({ "error": error, "error_description": format!("fake provider: {error}") }),
    )
}

async fn answer(req: Request<Incoming>, state: &Mutex<State>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = parts
        .uri
        .path()
        .strip_prefix(ISSUER_PATH)
        .unwrap_or("")
        .to_owned();
    let lock = || state.lock().unwrap_or_else(PoisonError::into_inner);
    match (&parts.method, path.as_str()) {
        (&Method::GET, "/.well-known/openid-configuration") => {
            let mut state = lock();
            state.hits.discovery += 1;
            let issuer = &state.issuer;
            json_response(
                StatusCode::OK,
                &json!({
                    "issuer": issuer,
                    "authorization_endpoint": format!("{issuer}/v1/authorize"),
                    "token_endpoint": if state.token_endpoint_moved {
                        format!("{issuer}/v1/moved")
                    } else {
                        format!("{issuer}/v1/token")
                    },
                    "jwks_uri": format!("{issuer}/v1/keys"),
                    "userinfo_endpoint": format!("{issuer}/v1/userinfo"),
                    "response_types_supported": ["code"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                    "scopes_supported": ["openid", "email", "profile"],
                    "token_endpoint_auth_methods_supported":
                        ["client_secret_basic", "client_secret_post"],
                    "grant_types_supported": ["authorization_code"],
                }),
            )
        }
        (&Method::GET, "/v1/keys") => {
            let mut state = lock();
            state.hits.jwks += 1;
            let keys: Vec<Value> = state
                .published
                .iter()
                .map(|(kid, i)| rsa_jwk(&key_pool()[*i], kid))
                .collect();
            json_response(StatusCode::OK, &json!({ "keys": keys }))
        }
        (&Method::POST, "/v1/moved") => {
            let location = format!("{}/v1/token", lock().issuer);
            Response::builder()
                .status(StatusCode::TEMPORARY_REDIRECT)
                .header("location", location)
                .body(Full::new(Bytes::new()))
                .unwrap()
        }
        (&Method::POST, "/v1/token") => {
            let authorization = parts
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let form: HashMap<String, String> =
                url::form_urlencoded::parse(&body).into_owned().collect();
            let (response, delay) = {
                let mut state = lock();
                state.hits.token += 1;
                state.token_requests.push(TokenRequest {
                    authorization: authorization.clone(),
                    form: form.clone(),
                });
                let response = token(&mut state, authorization.as_deref(), &form);
                (response, state.token_delay)
            };
            tokio::time::sleep(delay).await;
            response
        }
        _ => oauth_error(StatusCode::NOT_FOUND, "not_found"),
    }
}

/// RFC 6749 §2.3.1 `client_secret_basic`: id and secret each form-urlencoded, then joined
/// by `:` and base64-encoded.
fn basic_credentials(header: &str) -> Option<(String, String)> {
    let encoded = header.strip_prefix("Basic ")?;
    let decoded = String::from_utf8(STANDARD.decode(encoded).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let unescape = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
    };
    Some((unescape(id)?, unescape(secret)?))
}

/// The token endpoint (RFC 6749 §4.1.3): client authentication first, then the grant.
fn token(
    state: &mut State,
    authorization: Option<&str>,
    form: &HashMap<String, String>,
) -> Response<Full<Bytes>> {
    let client = match state.client_auth {
        ClientAuth::Basic => authorization.and_then(basic_credentials),
        // With `client_secret_post` a Basic header is a second method: refused.
        ClientAuth::Post if authorization.is_some() => None,
        ClientAuth::Post => form
            .get("client_id")
            .cloned()
            .zip(form.get("client_secret").cloned()),
    };
    if client != Some((CLIENT_ID.to_owned(), CLIENT_SECRET.to_owned())) {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    if form.get("grant_type").map(String::as_str) != Some("authorization_code") {
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type");
    }
    if form.get("redirect_uri").map(String::as_str) != Some(REDIRECT_URI) {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
    }
    let Some(code) = form.get("code").and_then(|c| state.codes.get_mut(c)) else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
    };
    // Single use: the first redemption spends the code whatever its outcome.
    let fresh = !code.used && Instant::now() < code.expires_at;
    code.used = true;
    if !fresh {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
    }
    json_response(
        StatusCode::OK,
        &json!({
            "access_token": random_text(),
            "token_type": "Bearer",
            "expires_in": 3600,
            "scope": "openid email profile",
            "id_token": code.id_token,
        }),
    )
}
