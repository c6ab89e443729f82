//! Configuration: the typed settings every subsystem reads, loaded by [`load()`] from
//! defaults < TOML file < `MEIRO_GATE_<SECTION>__<KEY>` environment variables.
//!
//! `config/` only loads, merges and validates; each value is documented here with its unit
//! and default, because operators script against these names (see the README).

mod load;
mod values;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use url::Url;

pub use load::{ConfigError, Problem, load, load_from_figment};
pub use values::{ByteSize, Secret, duration_serde};

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// This gateway serves the Authentication API and verifies its own tokens.
    Local,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuthConfig {
    /// Only `"local"` in this version.
    pub mode: AuthMode,
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
    /// Signing keys (Ed25519 PEM, 0600); generated on first start if empty. Default `data/keys`.
    pub keys_dir: PathBuf,
    /// Concurrent argon2 computations (each ~30 ms CPU, 19 MiB). Default: half the cores, at least 1.
    pub password_hash_concurrency: usize,
    pub login_throttle: LoginThrottleConfig,
}

/// Limits on failed `POST /users/login` attempts; successful logins do not count.
#[derive(Debug, Clone, Serialize)]
pub struct LoginThrottleConfig {
    /// Failed attempts allowed per account within `window`. Default `5`.
    pub per_account: u32,
    /// Failed attempts allowed per client IP within `window`. Default `20`.
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    RoundRobin,
}

#[derive(Debug, Clone, Serialize)]
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
}

#[derive(Debug, Clone, Serialize)]
pub struct RouteConfig {
    /// Path prefix, matched on segment boundaries of the normalized path; longest wins.
    pub prefix: String,
    /// Name of an `[[upstreams]]` entry.
    pub upstream: String,
    /// `true`: forwarded without a token. Default `false`.
    pub public: bool,
}
