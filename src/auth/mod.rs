//! The authentication rules: credentials login, refresh, logout, and the check every proxied
//! request goes through (`validator`: this gateway's tokens, or upstream mode's introspection).
//! HTTP reaches it only at two seams — the request's headers, and the introspection
//! `Backend` the data plane injects; `api/` and `proxy/` adapt.

pub mod audit;
pub mod cache;
pub mod check;
pub mod clock;
pub mod introspect;
pub mod invitations;
pub mod key_files;
pub mod keyring;
pub mod oidc;
pub mod passwords;
pub mod paths;
mod registry;
mod resets;
pub mod revocation;
mod sessions;
pub mod throttle;
pub mod tokens;
pub mod users;
pub mod validator;
mod watchers;

use std::sync::Arc;
use std::time::Duration;

pub use cache::{Principal, TokenCache};
pub use clock::Clock;
pub use keyring::Keyring;
pub use sessions::IssuedToken;
pub use tokens::KeySet;

use crate::config::{Config, ThrottleConfig};
use crate::mail::{Mail, Undelivered};
use crate::store::{Store, StoreError, User};
use crate::telemetry::metrics::AuthMetrics;
use audit::Caller;
use invitations::LinkSecret;
use passwords::{PasswordError, Passwords};
use throttle::Throttle;

/// How many validated tokens the cache holds (what an entry costs: the README's benchmarks).
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
    #[error("authenticated but not allowed")]
    Forbidden,
    #[error("not a valid email address: {0}")]
    InvalidEmail(#[from] crate::email::InvalidEmail),
    #[error("a user with this email already exists")]
    UserExists,
    #[error("no pending invitation")]
    NoPendingInvitation,
    #[error("no such user")]
    NotFound,
    #[error("invalid or expired one-time token")]
    InvalidOneTimeToken,
    #[error("password rejected: {0}")]
    WeakPassword(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("internal: {0}")]
    Internal(String),
    #[error("Okta login is not enabled")]
    OktaDisabled,
    #[error("at least one active admin must remain")]
    LastAdmin,
    /// The current password given to change it was wrong.
    #[error("wrong password")]
    WrongPassword,
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
    Keys(#[from] key_files::KeyError),
    #[error(transparent)]
    Passwords(#[from] PasswordError),
    #[error(transparent)]
    Oidc(#[from] oidc::OidcInitError),
}

/// Token, cookie and one-time-link settings, in the units the rules use.
#[derive(Debug, Clone)]
pub struct Settings {
    pub access_token_ttl: i64,
    pub refresh_window: i64,
    pub session_max_age: i64,
    pub cookie_name: String,
    pub cookie_secure: bool,
    pub invitation_ttl: i64,
    pub reset_ttl: i64,
    pub password_min_length: usize,
    /// Seconds after which a cached session is re-checked in the store (`auth.layer`).
    pub recheck_interval: i64,
    /// Seconds an audit record is kept (`audit.retention`).
    pub audit_retention: i64,
    /// Base of the links in e-mails, without a trailing slash.
    pub frontend_url: String,
}

/// The auth subsystem: shared by the API handlers and the data plane.
pub struct Auth {
    store: Arc<dyn Store>,
    /// Shared with the mail queue's reports of undelivered messages ([`Auth::on_undelivered`]).
    audit: Arc<audit::Audit>,
    keys: Arc<Keyring>,
    link_secret: LinkSecret,
    cache: TokenCache,
    passwords: Passwords,
    login_throttle: Throttle,
    reset_throttle: Throttle,
    mail: Mail,
    clock: Clock,
    settings: Settings,
    /// `Some` when `okta.enabled`.
    okta: Option<Arc<oidc::Oidc>>,
    metrics: AuthMetrics,
}

impl Auth {
    /// Tokens are issued for `server.public_url` (their `iss`). `metrics`: token checks,
    /// logins and revocations are counted there (`AuthMetrics::default()`: nowhere).
    pub async fn new(
        config: &Config,
        store: Arc<dyn Store>,
        mail: Mail,
        clock: Clock,
        metrics: AuthMetrics,
    ) -> Result<Auth, AuthInitError> {
        let auth = &config.auth;
        let issuer = config.server.public_url.as_str().trim_end_matches('/');
        let keys = Arc::new(Keyring::open(
            &auth.keys_dir,
            issuer,
            auth.signing_algorithm,
            auth.key_activation_delay,
            clock.clone(),
        )?);
        let link_secret = LinkSecret::load_or_generate(&auth.keys_dir)?;
        let passwords =
            Passwords::new(auth.password_hash_concurrency, PASSWORD_QUEUE_TIMEOUT).await?;
        let okta = if config.okta.enabled {
            Some(Arc::new(oidc::Oidc::new(&config.okta, clock.clone())?))
        } else {
            None
        };
        let throttle = |scope, t: &ThrottleConfig| {
            Throttle::new(scope, store.clone(), t.per_account, t.per_ip, t.window)
        };
        let login_throttle = throttle("login", &auth.login_throttle);
        let reset_throttle = throttle("reset", &auth.reset_throttle);
        let audit = Arc::new(audit::Audit::start(store.clone()));
        Ok(Auth {
            store,
            audit,
            keys,
            link_secret,
            cache: TokenCache::new(TOKEN_CACHE_CAPACITY),
            passwords,
            login_throttle,
            reset_throttle,
            mail,
            clock,
            settings: Settings {
                access_token_ttl: secs(auth.access_token_ttl),
                refresh_window: secs(auth.refresh_window),
                session_max_age: secs(auth.session_max_age),
                cookie_name: auth.cookie_name.clone(),
                cookie_secure: auth.cookie_secure,
                invitation_ttl: secs(auth.invitation_ttl),
                reset_ttl: secs(auth.reset_ttl),
                password_min_length: auth.password_min_length,
                recheck_interval: secs(auth.recheck_interval),
                audit_retention: secs(config.audit.retention),
                frontend_url: config
                    .server
                    .frontend_url
                    .as_str()
                    .trim_end_matches('/')
                    .to_owned(),
            },
            okta,
            metrics,
        })
    }

    /// The user with this id, deleted or not; [`AuthError::NotFound`] when there is none.
    pub async fn user(&self, id: crate::store::UserId) -> Result<User, AuthError> {
        self.store.user_by_id(id).await?.ok_or(AuthError::NotFound)
    }

    pub fn metrics(&self) -> &AuthMetrics {
        &self.metrics
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The signing keys, following `auth.keys_dir`.
    pub fn keys(&self) -> &Arc<Keyring> {
        &self.keys
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The audit trail (`auth::audit`).
    pub fn audit(&self) -> &audit::Audit {
        &self.audit
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

    /// The OpenID Connect client, when `okta.enabled`.
    pub fn okta(&self) -> Option<&Arc<oidc::Oidc>> {
        self.okta.as_ref()
    }

    /// What the mail queue runs if it drops a message to `user`: a `mail_failed` audit event
    /// under the request that queued it, with the message kind, the recipient's domain, the
    /// reason and the attempts — never the link. (The queue counts it in
    /// `mail_failed_total{kind, reason}` itself.)
    fn on_undelivered(
        &self,
        user: &User,
        caller: &Caller,
    ) -> impl FnOnce(Undelivered) + Send + 'static {
        let audit = self.audit.clone();
        let clock = self.clock.clone();
        let user = user.clone();
        let caller = caller.clone();
        move |undelivered| {
            audit.record(
                audit::Entry::new(audit::AuditKind::MailFailed, clock.now(), &caller)
                    .user(&user)
                    .detail("kind", undelivered.kind.as_str())
                    .detail("recipient_domain", undelivered.recipient_domain)
                    .detail("reason", undelivered.reason.as_str())
                    .detail("attempts", undelivered.attempts.to_string()),
            );
        }
    }

    fn check_password_policy(&self, password: &str, email: &str) -> Result<(), AuthError> {
        passwords::check_password_policy(password, email, self.settings.password_min_length)
            .map_err(AuthError::WeakPassword)
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

pub use crate::email::normalize as normalize_email;
