//! Configuration: the typed settings every subsystem reads, loaded by [`load()`] from
//! defaults < TOML file < `MEIRO_GATE_<SECTION>__<KEY>` environment variables.
//!
//! `config/` only loads, merges and validates; each value is documented here with its unit
//! and default, because operators script against these names (see the README).

mod load;
pub mod store_url;
mod values;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

pub use crate::types::{Secret, SigningAlgorithm};

pub use load::{ConfigError, Problem, file, load, load_from_figment};
pub use values::{ByteSize, duration_serde};

/// The whole effective configuration. `Serialize` is what `check-config` prints; secrets
/// serialize as `"<redacted>"`.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub store: StoreConfig,
    pub auth: AuthConfig,
    pub bootstrap: BootstrapConfig,
    pub limits: LimitsConfig,
    pub log: LogConfig,
    pub mail: MailConfig,
    pub okta: OktaConfig,
    pub audit: AuditConfig,
    /// `[cors]`; absent: no CORS headers at all.
    pub cors: Option<CorsConfig>,
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerConfig {
    /// Main listener (auth API + data plane). Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// How clients reach the gateway; also the `iss` of issued tokens. Default `http://<listen>`.
    pub public_url: Url,
    /// Base of links in e-mails. Default: `public_url`.
    pub frontend_url: Url,
    /// How long SIGTERM/SIGINT waits for in-flight requests before exiting. Default `30s`.
    #[serde(with = "duration_serde")]
    pub drain_timeout: Duration,
    /// One `meiro_gate::access` log line per proxied request. Default `true`.
    pub access_log: bool,
    /// Tokio worker threads serving requests (argon2 runs on the separate blocking pool).
    /// At least 1. Default: one per CPU core.
    pub worker_threads: Option<usize>,
    /// `[server.tls]`: terminate TLS on the main listener. Absent: plain HTTP (and h2c).
    pub tls: Option<TlsConfig>,
    /// `false`: every request header whose name contains `_` is dropped before forwarding
    /// (nginx's default, `underscores_in_headers off`). Names that equal a header the gateway
    /// sets once `_` (or any other separator) reads as `-` are dropped either way. Default
    /// `true`.
    pub underscores_in_headers: bool,
    /// Where the auth API (`/auth_options`, `/users/*`, `/openapi.json`) is served: `""` at
    /// the root (Meiro's ME API), `"/api"` under it (Meiro CDP's). The JWKS stays at the root.
    pub api_prefix: String,
    /// How often `serve` compares the config file with what it last loaded and reloads it
    /// when it changed (as SIGHUP does). `0s`: only SIGHUP reloads. Needs a restart to change.
    /// Default `2s`.
    #[serde(with = "duration_serde")]
    pub config_watch_interval: Duration,
    /// Peers (CIDRs; a bare address is one host) whose `X-Forwarded-For` is believed: the
    /// client is then its right-most address that is not itself trusted. Empty (the default):
    /// the client is the peer and no forwarded header is believed. Reloaded live.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Every connection to `server.listen` starts with a PROXY protocol v1 or v2 header (L4
    /// balancers such as AWS NLB), whose source address is then the peer; a connection
    /// without one is closed. Default `false`. Reloaded live, for new connections.
    pub proxy_protocol: bool,
}

/// `[server.tls]`: PEM files, re-read on SIGHUP and when they change on disk.
#[derive(Debug, Clone, Serialize)]
pub struct TlsConfig {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// PKCS#8, PKCS#1 or SEC1 private key.
    pub key: PathBuf,
}

/// `[audit]`: the audit trail (`auth::audit`).
#[derive(Debug, Clone, Serialize)]
pub struct AuditConfig {
    /// How long audit records are kept in the store before the hourly prune deletes them
    /// (the log lines are the log's business). Greater than zero. Default `90d`.
    #[serde(with = "duration_serde")]
    pub retention: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct AdminConfig {
    /// Admin listener: `/healthz`, `/readyz`. Default `127.0.0.1:9090`.
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Serialize)]
pub struct StoreConfig {
    /// `sqlite://path` (created on first start). Default `sqlite://data/meiro-gate.db`.
    /// Printed with any password redacted.
    pub url: Secret,
    /// PostgreSQL: how long a query waits for a connection (opening one included) before
    /// failing, so an unreachable database answers `503` instead of hanging. Default `5s`.
    #[serde(with = "duration_serde")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// This gateway serves the Authentication API and verifies its own tokens.
    Local,
    /// A Meiro backend serves the Authentication API and issues the tokens; the gateway
    /// forwards `/auth_options` and `/users/*` to it and validates tokens by asking it.
    Upstream,
}

/// `[auth.upstream]`: the backend that owns users and tokens in upstream mode.
#[derive(Debug, Clone, Serialize)]
pub struct AuthUpstreamConfig {
    /// The `[[upstreams]]` cluster that serves `/auth_options` and `/users/*`.
    pub upstream: String,
    /// Any backend route that answers 2xx for a valid token and 401/403 otherwise. Required.
    pub introspect_path: String,
    /// Default `GET`.
    pub introspect_method: String,
    /// How long a "valid" answer (or a token learned from a login) is trusted. Default `60s`.
    #[serde(with = "duration_serde")]
    pub positive_ttl: Duration,
    /// How long an "invalid" answer is trusted. Default `5s`.
    #[serde(with = "duration_serde")]
    pub negative_ttl: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuthConfig {
    /// `"local"` (default) or `"upstream"`.
    pub mode: AuthMode,
    /// Required with `mode = "upstream"`.
    pub upstream: Option<AuthUpstreamConfig>,
    /// Lifetime of an access token. Default `8h`.
    #[serde(with = "duration_serde")]
    pub access_token_ttl: Duration,
    /// How long after expiry a token may still be refreshed. Default `4h`.
    #[serde(with = "duration_serde")]
    pub refresh_window: Duration,
    /// Absolute cap on a session (a refresh chain). Default `30d`.
    #[serde(with = "duration_serde")]
    pub session_max_age: Duration,
    /// Name of the session cookie. Default `meiro_access_token`.
    pub cookie_name: String,
    /// `Secure` attribute on the cookie. Default `true`.
    pub cookie_secure: bool,
    /// Signing keys (PKCS#8 PEM, 0600); generated on first start if empty. Default `data/keys`.
    pub keys_dir: PathBuf,
    /// Algorithm of generated signing keys (the first one and `keys rotate`): `"EdDSA"`
    /// (Ed25519) or `"ES256"` (P-256, for verifiers without EdDSA such as HAProxy 2.6).
    /// Existing key files keep verifying with their own algorithm. Default `"EdDSA"`.
    pub signing_algorithm: SigningAlgorithm,
    /// How often `keys_dir` is re-read for keys added or removed by a rotation (also on
    /// SIGHUP, and at once for a token of an unknown key). Default `60s`.
    #[serde(with = "duration_serde")]
    pub keys_rescan_interval: Duration,
    /// How long after this replica first sees a new key it starts signing with it: longer
    /// than the Secret sync across replicas, so every replica can verify the first token.
    /// `0s` signs at once (one replica). Default `2m`.
    #[serde(with = "duration_serde")]
    pub key_activation_delay: Duration,
    /// Concurrent argon2 computations (each ~30 ms CPU, 19 MiB). Default: half the cores, at least 1.
    pub password_hash_concurrency: usize,
    /// Failed `POST /users/login` attempts; successful logins do not count.
    pub login_throttle: ThrottleConfig,
    /// Every `POST /users/password` (forgotten password) request counts.
    pub reset_throttle: ThrottleConfig,
    /// How long an invitation link stays valid. Default `5d`.
    #[serde(with = "duration_serde")]
    pub invitation_ttl: Duration,
    /// How long a password-reset link stays valid. Default `1h`.
    #[serde(with = "duration_serde")]
    pub reset_ttl: Duration,
    /// Shortest password accepted (it must also differ from the email). Default `12`.
    pub password_min_length: usize,
    /// A cached token's session and user are re-checked in the store when a request uses it
    /// this long after the last check: the bound on how long a revocation whose feed entry
    /// never arrived stays unnoticed. Default `30s`.
    #[serde(with = "duration_serde")]
    pub recheck_interval: Duration,
}

/// Counted attempts allowed per account and per client IP within a window.
#[derive(Debug, Clone, Serialize)]
pub struct ThrottleConfig {
    /// Per account (email) within `window`. Default `5`.
    pub per_account: u32,
    /// Per client IP within `window`. Default `20`.
    pub per_ip: u32,
    /// Default `15m`.
    #[serde(with = "duration_serde")]
    pub window: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct BootstrapConfig {
    /// Created as an admin when the store has no user yet. Empty: no bootstrap.
    pub admin_email: String,
    pub admin_password: Secret,
}

#[derive(Debug, Clone, Serialize)]
pub struct LimitsConfig {
    /// Concurrent downstream connections per listener. Default `10000`.
    pub max_connections: usize,
    /// Time allowed for a request head to arrive (slowloris guard). Default `10s`.
    #[serde(with = "duration_serde")]
    pub header_read_timeout: Duration,
    /// Largest request head. Default `16384` bytes.
    pub max_header_bytes: usize,
    /// Largest body accepted by the auth API. Default `64KiB`.
    pub api_max_body: ByteSize,
    /// A downstream connection with no request in progress and none started for this long
    /// is shut down gracefully (HTTP/2: GOAWAY). Default `60s`.
    #[serde(with = "duration_serde")]
    pub idle_timeout: Duration,
    /// Longest pause between two reads of a request body before the request is answered
    /// `408` (a client's stalled upload, never held against the upstream). Default `60s`.
    #[serde(with = "duration_serde")]
    pub body_read_timeout: Duration,
    /// An HTTP/2 client that sent no frame for this long is sent a PING. `0s`: never.
    /// Default `30s`.
    #[serde(with = "duration_serde")]
    pub http2_keepalive_interval: Duration,
    /// A PING not answered within this closes the connection. Default `20s`.
    #[serde(with = "duration_serde")]
    pub http2_keepalive_timeout: Duration,
    /// Requests per second per authenticated user (all their tokens share it), counted on
    /// this replica; excess gets `429`. `0`: off. Default `0`.
    pub per_user_rate: u32,
    /// Requests a user may send at once before the rate applies. `0`: the rate. Default `0`.
    pub per_user_burst: u32,
}

/// `[log]`: what goes to stderr. Reloaded live (SIGHUP).
#[derive(Debug, Clone, Serialize)]
pub struct LogConfig {
    /// `tracing` filter directives (`RUST_LOG` syntax), e.g. `"info,meiro_gate::access=warn"`.
    /// The `RUST_LOG` variable, when set, overrides it (at start and on every reload).
    /// Default `"info"`.
    pub filter: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    RoundRobin,
    /// Power of two choices over in-flight request counts.
    LeastRequest,
}

/// The protocol spoken to an upstream's instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    Http1,
    /// HTTP/2: prior knowledge over `http://`, ALPN `h2` over `https://`.
    Http2,
}

/// `[upstreams.health]`: active health checks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthCheckConfig {
    /// GET this path on each instance; any 2xx is healthy.
    pub path: String,
    /// Default `5s`.
    #[serde(with = "duration_serde")]
    pub interval: Duration,
    /// Default `1s`.
    #[serde(with = "duration_serde")]
    pub timeout: Duration,
    /// Consecutive successes that bring an unhealthy instance back. Default `2`.
    pub healthy_threshold: u32,
    /// Consecutive failures that take a healthy instance out. Default `3`.
    pub unhealthy_threshold: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpstreamConfig {
    pub name: String,
    /// `http://host:port` base URLs; at least one.
    pub instances: Vec<Url>,
    pub balance: Balance,
    /// Default `2s`.
    #[serde(with = "duration_serde")]
    pub connect_timeout: Duration,
    /// Until the response head arrives. Default `30s`.
    #[serde(with = "duration_serde")]
    pub response_timeout: Duration,
    /// How long an idle pooled connection is kept. Default `90s`.
    #[serde(with = "duration_serde")]
    pub idle_timeout: Duration,
    /// Extra attempts on another instance, for idempotent requests or requests that never
    /// reached the upstream. Default `2`.
    pub retries: u32,
    /// Retries may add at most this fraction of the cluster's requests (plus a floor of 10
    /// per second). Default `0.2`.
    pub retry_budget: f64,
    /// Default `http1`.
    pub protocol: UpstreamProtocol,
    /// PEM CA bundle for `https://` instances. Default: the system roots.
    pub ca_file: Option<PathBuf>,
    /// An instance that refuses connections or times out is ejected this long, doubling per
    /// consecutive ejection. Default `5s`.
    #[serde(with = "duration_serde")]
    pub eject_base: Duration,
    /// Longest ejection. Default `1m`.
    #[serde(with = "duration_serde")]
    pub eject_max: Duration,
    pub health: Option<HealthCheckConfig>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RouteConfig {
    /// The `route` label of the route's metrics (`/metrics`): letters, digits, `_`, `-`, `.`;
    /// up to 64. Default: the upstream's name (routes to one upstream then share series).
    pub name: Option<String>,
    /// Path prefix, matched on segment boundaries of the normalized path; longest wins.
    pub prefix: String,
    /// Name of an `[[upstreams]]` entry.
    pub upstream: String,
    /// `true`: forwarded without a token. Default `false`.
    pub public: bool,
    /// Only requests for this host (case-insensitive, port ignored); a route with a host
    /// wins over one without for the same prefix. Default: any host.
    pub host: Option<String>,
    /// Remove the prefix before forwarding (`/api/x` → `/x`). Default `false`.
    pub strip_prefix: bool,
    /// Largest request body (`413` beyond). Default: unlimited.
    pub max_body: Option<ByteSize>,
    /// Deadline for the response head, counted from the end of the request body. Default:
    /// the upstream's `response_timeout`.
    #[serde(with = "duration_serde::option")]
    pub timeout: Option<Duration>,
    /// Protocols a client may switch to on this route (`Upgrade`, lower case), tunnelled
    /// after authentication. Others are not passed on: the request goes upstream without its
    /// `Upgrade`. `h2c` is refused in config: past the switch, no request is checked.
    /// Default `["websocket"]`.
    pub upgrades: Vec<String>,
    /// Only these roles may use the route (others: `403`); checked after authentication, so
    /// not on a public route. Default: any authenticated user.
    pub allow_roles: Option<Vec<crate::types::Role>>,
    /// Only these methods (upper case; `GET` brings `HEAD`), others `405` with `Allow`.
    /// Default: any method.
    pub methods: Option<Vec<String>>,
    /// `[limits] per_user_rate` for this route alone (its own budget; `0`: no limit here).
    /// Default: the `[limits]` budget, shared by every route without one.
    pub per_user_rate: Option<u32>,
}

/// `[cors]`: which browser origins may call the gateway.
#[derive(Debug, Clone, Serialize)]
pub struct CorsConfig {
    /// Exact origins (`https://app.example.com`), or `"*"` (not with credentials).
    pub allowed_origins: Vec<String>,
    /// Default `["GET", "POST", "PUT", "PATCH", "DELETE"]`.
    pub allowed_methods: Vec<String>,
    /// Default `["X-Access-Token", "Authorization", "Content-Type"]`.
    pub allowed_headers: Vec<String>,
    /// Response headers scripts may read. Default none.
    pub expose_headers: Vec<String>,
    /// Default `true`.
    pub allow_credentials: bool,
    /// How long browsers may cache a preflight. Default `10m`.
    #[serde(with = "duration_serde")]
    pub max_age: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MailTransport {
    /// One `.eml` file per message in `mail.dir`.
    File,
    /// Delivery to `mail.smtp_url`.
    Smtp,
}

/// `[mail]`: how invitation and password-reset e-mails leave the gateway.
#[derive(Debug, Clone, Serialize)]
pub struct MailConfig {
    /// Default `file`.
    pub transport: MailTransport,
    /// Outbox directory of the file transport. Default `data/outbox`.
    pub dir: PathBuf,
    /// `smtp://host:port` (STARTTLS when offered), `smtps://host:port` (implicit TLS), with
    /// optional `user:password@`. Required with `transport = "smtp"`. Printed redacted.
    pub smtp_url: Secret,
    /// Sender mailbox. Default `Meiro <no-reply@localhost>`.
    pub from: String,
    /// Directory whose `invitation.txt|.html`, `reset.txt|.html` override the built-in
    /// templates. Default: none (built-ins).
    pub templates_dir: Option<PathBuf>,
    /// One SMTP delivery attempt may take this long. Default `10s`.
    #[serde(with = "duration_serde")]
    pub smtp_timeout: Duration,
    /// First retry delay after a transient failure; doubles up to `retry_max`. Default `1s`.
    #[serde(with = "duration_serde")]
    pub retry_initial: Duration,
    /// Default `5m`.
    #[serde(with = "duration_serde")]
    pub retry_max: Duration,
    /// A message still undelivered this long after it was queued is dropped (logged).
    /// Default `24h`.
    #[serde(with = "duration_serde")]
    pub give_up_after: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OktaClientAuth {
    /// `Authorization: Basic` with the client id and secret (RFC 6749 §2.3.1).
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the token request body.
    ClientSecretPost,
}

/// `[okta]`: login through an OpenID Connect provider (Okta or any compliant one).
#[derive(Debug, Clone, Serialize)]
pub struct OktaConfig {
    /// Default `false`; the other keys are then not required.
    pub enabled: bool,
    /// e.g. `https://example.okta.com/oauth2/default`; discovery reads
    /// `<issuer>/.well-known/openid-configuration`. Required when enabled.
    pub issuer: Option<Url>,
    pub client_id: String,
    pub client_secret: Secret,
    /// Where the provider sends the browser back with `?code=`. Required when enabled.
    pub redirect_uri: Option<Url>,
    /// Default `["openid", "email", "profile"]`; a space-separated string is accepted too.
    pub scopes: Vec<String>,
    /// Default `client_secret_basic`.
    pub client_auth: OktaClientAuth,
    /// Create an active user for an unknown, verified email. Default `false`.
    pub auto_provision: bool,
    /// Role of auto-provisioned users. Default `user`.
    pub default_role: crate::types::Role,
    /// Refuse an id_token whose `email_verified` is not true. Default `true`.
    pub require_verified_email: bool,
    /// Accepted id_token signature algorithms. Default `["RS256"]`; `none` and HMAC are
    /// never accepted.
    pub algorithms: Vec<String>,
    /// Timeout of each call to the provider. Default `10s`.
    #[serde(with = "duration_serde")]
    pub http_timeout: Duration,
    /// How soon a failed discovery is retried. Default `30s`.
    #[serde(with = "duration_serde")]
    pub discovery_retry: Duration,
    /// The JWKS is refetched for an unknown `kid` at most this often. Default `30s`.
    #[serde(with = "duration_serde")]
    pub jwks_min_refresh: Duration,
}
