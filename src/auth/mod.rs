//! The authentication rules: credentials login, refresh, logout, and the check every proxied
//! request goes through. Knows no HTTP types beyond header values; `api/` and `proxy/` adapt.

pub mod cache;
pub mod clock;
pub mod layer;
pub mod passwords;
pub mod revocation;
mod sessions;
pub mod throttle;
pub mod tokens;

use std::sync::Arc;
use std::time::Duration;

pub use cache::{Principal, TokenCache};
pub use clock::Clock;
pub use sessions::IssuedToken;
pub use tokens::KeySet;

use crate::config::AuthConfig;
use crate::store::{Store, StoreError};
use passwords::{PasswordError, Passwords};
use throttle::Throttle;

/// How many validated tokens the cache holds (~300 B each).
const TOKEN_CACHE_CAPACITY: u64 = 2_000_000;
/// How long a login may wait for an argon2 slot before it is refused as overloaded.
const PASSWORD_QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("too many failed logins; retry in {retry_after_secs}s")]
    Throttled { retry_after_secs: u64 },
    #[error("password hashing is overloaded")]
    Overloaded,
    #[error("no access token")]
    MissingToken,
    #[error("invalid, expired or revoked token")]
    InvalidToken,
    #[error("token is too old for refresh")]
    TokenTooOld,
    #[error("token was already refreshed; session ended")]
    TokenReused,
    #[error("session reached its maximum age")]
    SessionTooOld,
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("internal: {0}")]
    Internal(String),
}

impl From<PasswordError> for AuthError {
    fn from(e: PasswordError) -> Self {
        match e {
            PasswordError::Busy => AuthError::Overloaded,
            PasswordError::Internal(msg) => AuthError::Internal(msg),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthInitError {
    #[error(transparent)]
    Keys(#[from] tokens::KeyError),
    #[error(transparent)]
    Passwords(#[from] PasswordError),
}

/// Token and cookie settings, in the units the rules use.
#[derive(Debug, Clone)]
pub struct Settings {
    pub access_token_ttl: i64,
    pub refresh_window: i64,
    pub session_max_age: i64,
    pub cookie_name: String,
    pub cookie_secure: bool,
}

/// The auth subsystem: shared by the API handlers and the data plane.
pub struct Auth {
    store: Arc<dyn Store>,
    keys: KeySet,
    cache: TokenCache,
    passwords: Passwords,
    throttle: Throttle,
    clock: Clock,
    settings: Settings,
}

impl Auth {
    /// `issuer` becomes the `iss` of every token (the gateway's public URL).
    pub async fn new(
        config: &AuthConfig,
        issuer: &str,
        store: Arc<dyn Store>,
        clock: Clock,
    ) -> Result<Auth, AuthInitError> {
        let keys = KeySet::load_or_generate(&config.keys_dir, issuer)?;
        let passwords =
            Passwords::new(config.password_hash_concurrency, PASSWORD_QUEUE_TIMEOUT).await?;
        let throttle = Throttle::new(
            config.login_throttle.per_account,
            config.login_throttle.per_ip,
            config.login_throttle.window,
        );
        Ok(Auth {
            store,
            keys,
            cache: TokenCache::new(TOKEN_CACHE_CAPACITY),
            passwords,
            throttle,
            clock,
            settings: Settings {
                access_token_ttl: secs(config.access_token_ttl),
                refresh_window: secs(config.refresh_window),
                session_max_age: secs(config.session_max_age),
                cookie_name: config.cookie_name.clone(),
                cookie_secure: config.cookie_secure,
            },
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn keys(&self) -> &KeySet {
        &self.keys
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn cache(&self) -> &TokenCache {
        &self.cache
    }

    pub fn passwords(&self) -> &Passwords {
        &self.passwords
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Emails are compared and stored trimmed and lower-cased (api-contract.md).
pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}
