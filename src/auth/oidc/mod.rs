//! Okta (any OpenID Connect provider) login: discovery and the JWKS, cached and fetched lazily,
//! the JWKS refetched for an unknown `kid`; the authorization-code exchange; full id_token
//! validation (openidconnect's checks plus the ones it leaves to the client); user mapping.
//!
//! Validation of an id_token, in order (every refusal is one `InvalidCredentials` for the
//! client, the reason only in the log):
//! 1. `typ`, `cty`, `crit` headers (openidconnect); JWE is refused.
//! 2. `iss` equals the configured issuer exactly (openidconnect).
//! 3. `aud` contains `client_id` (openidconnect); other audiences only with `azp == client_id`
//!    ([`check_authorized_party`]), and a present `azp` must name this client anyway.
//! 4. `alg` on `okta.algorithms` — never `none`, never HMAC (a public-client verifier has no
//!    shared secret) — and the signature verifies with the JWKS key named by `kid`; an unknown
//!    `kid` refetches the JWKS once (at most every `okta.jwks_min_refresh`).
//! 5. `exp` not passed and `iat` not in the future, both with [`LEEWAY_SECS`] of clock skew.
//! 6. `email` present and, unless `okta.require_verified_email = false`, `email_verified: true`.
//!
//! No nonce is sent: `/users/okta_login` receives only the code, which the gateway redeems
//! itself over TLS with its client secret, so the id_token comes straight from the provider.

mod login;
mod provider_http;
mod rules;

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use openidconnect::core::{
    CoreClient, CoreIdToken, CoreIdTokenClaims, CoreIdTokenVerifier, CoreJsonWebKeySet,
    CoreJwsSigningAlgorithm, CoreProviderMetadata,
};
use openidconnect::{
    AuthType, AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret, IssuerUrl,
    JsonWebKeySet, JsonWebKeySetUrl, RedirectUrl, SignatureVerificationError, TokenResponse,
    TokenUrl,
};
use tokio::time::Instant;
use url::Url;

use super::Clock;
use super::tokens::random_base64url;
use crate::config::{OktaClientAuth, OktaConfig};
use crate::store::{Role, UnixTime};

pub use provider_http::HttpError;
use provider_http::ProviderHttp;
pub use rules::{
    authorization_link, check_authorized_party, check_email, check_issue_time, issuer_url,
    parse_algorithms,
};
use rules::{error_chain, no_nonce_sent, token_error, unix_to_datetime};

/// Clock skew tolerated on `exp` and `iat`, in seconds.
pub const LEEWAY_SECS: i64 = 60;
/// Largest response body read from the provider (discovery document, JWKS, token response).
const MAX_RESPONSE_BYTES: usize = 1 << 20;
/// Longest authorization code passed on to the provider (Okta's are 43 characters).
const MAX_CODE_BYTES: usize = 4096;
/// How long `GET /auth_options` waits for a discovery it had to start.
const AUTH_OPTIONS_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum OidcInitError {
    #[error("okta.{0} is required when okta.enabled = true")]
    Missing(&'static str),
    #[error("okta.algorithms: {0}")]
    Algorithm(String),
    #[error("okta.issuer: {0}")]
    Issuer(String),
    #[error("okta.redirect_uri: {0}")]
    RedirectUri(String),
    #[error("HTTP client for the provider: {0}")]
    Http(#[source] reqwest::Error),
}

/// Why an Okta login was refused: for the log only; the client always sees
/// `InvalidCredentials`. Never carries the code, the client secret or a token.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("the provider is unreachable: {0}")]
    Unreachable(String),
    #[error(
        "the provider is unreachable (discovery failed recently; the next attempt is in {0:?})"
    )]
    HeldOff(Duration),
    #[error("empty or oversized authorization code")]
    BadCode,
    #[error("code exchange failed: {0}")]
    Exchange(String),
    #[error("the token response has no id_token")]
    NoIdToken,
    #[error("id_token rejected: {0}")]
    IdToken(String),
    #[error("id_token claims rejected: {0}")]
    Claims(String),
}

impl Refusal {
    /// A short, fixed name for the audit record (the message may quote the provider).
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Unreachable(_) | Refusal::HeldOff(_) => "provider_unreachable",
            Refusal::BadCode => "bad_code",
            Refusal::Exchange(_) => "code_exchange_failed",
            Refusal::NoIdToken => "no_id_token",
            Refusal::IdToken(_) => "id_token_rejected",
            Refusal::Claims(_) => "claims_rejected",
        }
    }
}

/// What discovery found: the endpoints and the current JWKS. Replaced whole (a new `Arc`)
/// when the JWKS is refetched.
struct Provider {
    authorization_endpoint: Url,
    token_endpoint: TokenUrl,
    jwks_uri: JsonWebKeySetUrl,
    jwks: CoreJsonWebKeySet,
}

impl Provider {
    fn from_metadata(metadata: &CoreProviderMetadata) -> Result<Provider, String> {
        let token_endpoint = metadata
            .token_endpoint()
            .cloned()
            .ok_or("the discovery document names no token_endpoint")?;
        Ok(Provider {
            authorization_endpoint: metadata.authorization_endpoint().url().clone(),
            token_endpoint,
            jwks_uri: metadata.jwks_uri().clone(),
            jwks: metadata.jwks().clone(),
        })
    }
}

/// When the provider was last asked, so a down provider or an unknown `kid` cannot make
/// every login call it.
#[derive(Default)]
struct Attempts {
    discovery_failed_at: Option<Instant>,
    jwks_fetched_at: Option<Instant>,
}

/// The OpenID Connect client of the gateway. Building it does no I/O.
pub struct Oidc {
    issuer: IssuerUrl,
    client_id: ClientId,
    client_secret: ClientSecret,
    redirect_uri: RedirectUrl,
    /// `okta.scopes`, space-joined.
    scope: String,
    client_auth: AuthType,
    algorithms: Vec<CoreJwsSigningAlgorithm>,
    auto_provision: bool,
    default_role: Role,
    require_verified_email: bool,
    discovery_retry: Duration,
    jwks_min_refresh: Duration,
    http: ProviderHttp,
    clock: Clock,
    /// Read on every login; written after discovery and a JWKS refetch. Never held across
    /// an `.await`.
    provider: RwLock<Option<Arc<Provider>>>,
    /// Serializes calls to the discovery and JWKS endpoints (held across them, on purpose:
    /// concurrent logins wait for one attempt instead of each making their own).
    attempts: tokio::sync::Mutex<Attempts>,
}

impl Oidc {
    pub fn new(config: &OktaConfig, clock: Clock) -> Result<Oidc, OidcInitError> {
        let issuer = config
            .issuer
            .as_ref()
            .ok_or(OidcInitError::Missing("issuer"))?;
        let redirect_uri = config
            .redirect_uri
            .as_ref()
            .ok_or(OidcInitError::Missing("redirect_uri"))?;
        if config.client_id.is_empty() {
            return Err(OidcInitError::Missing("client_id"));
        }
        Ok(Oidc {
            issuer: issuer_url(issuer).map_err(|e| OidcInitError::Issuer(e.to_string()))?,
            client_id: ClientId::new(config.client_id.clone()),
            client_secret: ClientSecret::new(config.client_secret.expose().to_owned()),
            redirect_uri: RedirectUrl::new(redirect_uri.as_str().to_owned())
                .map_err(|e| OidcInitError::RedirectUri(e.to_string()))?,
            scope: config.scopes.join(" "),
            client_auth: match config.client_auth {
                OktaClientAuth::ClientSecretBasic => AuthType::BasicAuth,
                OktaClientAuth::ClientSecretPost => AuthType::RequestBody,
            },
            algorithms: parse_algorithms(&config.algorithms).map_err(OidcInitError::Algorithm)?,
            auto_provision: config.auto_provision,
            default_role: config.default_role,
            require_verified_email: config.require_verified_email,
            discovery_retry: config.discovery_retry,
            jwks_min_refresh: config.jwks_min_refresh,
            http: ProviderHttp::new(config.http_timeout).map_err(OidcInitError::Http)?,
            clock,
            provider: RwLock::new(None),
            attempts: tokio::sync::Mutex::new(Attempts::default()),
        })
    }

    /// Starts discovery in the background (at gateway start): it never delays the start, and
    /// if the provider is down the first login tries again after `okta.discovery_retry`.
    pub fn prefetch(self: &Arc<Self>) {
        let this = self.clone();
        tokio::spawn(async move {
            let _ = this.discover().await;
        });
    }

    /// The link of `GET /auth_options`: the provider's authorization endpoint with
    /// `client_id`, `response_type=code`, `scope`, `redirect_uri` and a fresh random `state`.
    /// `None` while discovery has not succeeded (waiting at most [`AUTH_OPTIONS_WAIT`]).
    pub async fn auth_link(self: &Arc<Self>) -> Option<String> {
        let provider = match tokio::time::timeout(AUTH_OPTIONS_WAIT, self.provider()).await {
            Ok(Ok(provider)) => provider,
            Ok(Err(_)) | Err(_) => return None,
        };
        let state = random_base64url::<16>().ok()?;
        let link = authorization_link(
            &provider.authorization_endpoint,
            &self.client_id,
            &self.scope,
            &self.redirect_uri,
            &state,
        );
        Some(link.into())
    }

    /// Redeems `code` and validates the id_token; returns the normalized email it proves.
    pub async fn identify(self: &Arc<Self>, code: &str) -> Result<String, Refusal> {
        if code.is_empty() || code.len() > MAX_CODE_BYTES {
            return Err(Refusal::BadCode);
        }
        let provider = self.provider().await?;
        let id_token = self.exchange(&provider, code).await?;
        let now = self.clock.now();
        let claims = match self.verify(&provider.jwks, &id_token, now) {
            Err(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey,
            )) => {
                // Key rotation: the provider signs with a key our copy of its JWKS predates.
                let provider = self.refetch_jwks(&provider).await.ok_or_else(|| {
                    Refusal::IdToken("signed with a key that is not in the provider's JWKS".into())
                })?;
                self.verify(&provider.jwks, &id_token, now)
            }
            other => other,
        }
        .map_err(|e| Refusal::IdToken(error_chain(&e)))?;
        let audiences: Vec<&str> = claims.audiences().iter().map(|a| a.as_str()).collect();
        check_authorized_party(
            &audiences,
            claims.authorized_party().map(|azp| azp.as_str()),
            &self.client_id,
        )
        .map_err(Refusal::Claims)?;
        check_email(
            claims.email().map(|e| e.as_str()),
            claims.email_verified(),
            self.require_verified_email,
        )
        .map_err(Refusal::Claims)
    }

    fn current(&self) -> Option<Arc<Provider>> {
        self.provider
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn store_provider(&self, provider: &Arc<Provider>) {
        *self
            .provider
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(provider.clone());
    }

    /// The discovered provider, discovering it first if needed.
    async fn provider(self: &Arc<Self>) -> Result<Arc<Provider>, Refusal> {
        if let Some(provider) = self.current() {
            return Ok(provider);
        }
        // In a task of its own, so a caller that stops waiting (auth_options' bound, a client
        // hanging up) does not cancel the attempt other callers wait for.
        let this = self.clone();
        tokio::spawn(async move { this.discover().await })
            .await
            .unwrap_or_else(|e| Err(Refusal::Unreachable(format!("discovery task: {e}"))))
    }

    async fn discover(&self) -> Result<Arc<Provider>, Refusal> {
        let mut attempts = self.attempts.lock().await;
        if let Some(provider) = self.current() {
            return Ok(provider); // found while this call waited for the lock
        }
        let now = Instant::now();
        if let Some(failed) = attempts.discovery_failed_at
            && now < failed + self.discovery_retry
        {
            return Err(Refusal::HeldOff(failed + self.discovery_retry - now));
        }
        let discovered = CoreProviderMetadata::discover_async(self.issuer.clone(), &self.http)
            .await
            .map_err(|e| error_chain(&e))
            .and_then(|metadata| {
                self.warn_unless_algorithms_offered(&metadata);
                Provider::from_metadata(&metadata)
            });
        match discovered {
            Ok(provider) => {
                let provider = Arc::new(provider);
                attempts.discovery_failed_at = None;
                attempts.jwks_fetched_at = Some(Instant::now());
                self.store_provider(&provider);
                tracing::info!(issuer = %self.issuer.as_str(), keys = provider.jwks.keys().len(), "okta: provider discovered");
                Ok(provider)
            }
            Err(detail) => {
                attempts.discovery_failed_at = Some(Instant::now());
                tracing::warn!(issuer = %self.issuer.as_str(), error = %detail, retry_in = ?self.discovery_retry, "okta: provider discovery failed");
                Err(Refusal::Unreachable(detail))
            }
        }
    }

    fn warn_unless_algorithms_offered(&self, metadata: &CoreProviderMetadata) {
        let offered = metadata.id_token_signing_alg_values_supported();
        if !self.algorithms.iter().any(|alg| offered.contains(alg)) {
            tracing::warn!(
                offered = ?offered,
                accepted = ?self.algorithms,
                "okta: the provider signs id_tokens with none of okta.algorithms; logins will fail"
            );
        }
    }

    /// A provider whose JWKS was fetched after `seen`'s, or `None` when the last fetch is too
    /// recent (`okta.jwks_min_refresh`) or the fetch failed.
    async fn refetch_jwks(&self, seen: &Arc<Provider>) -> Option<Arc<Provider>> {
        let mut attempts = self.attempts.lock().await;
        let current = self.current()?;
        if !Arc::ptr_eq(&current, seen) {
            return Some(current); // another login refetched it while this one waited
        }
        let now = Instant::now();
        if let Some(last) = attempts.jwks_fetched_at
            && now < last + self.jwks_min_refresh
        {
            tracing::warn!(
                min_refresh = ?self.jwks_min_refresh,
                "okta: id_token names an unknown key; JWKS fetched too recently to refetch"
            );
            return None;
        }
        attempts.jwks_fetched_at = Some(now);
        match JsonWebKeySet::fetch_async(&current.jwks_uri, &self.http).await {
            Ok(jwks) => {
                let provider = Arc::new(Provider {
                    authorization_endpoint: current.authorization_endpoint.clone(),
                    token_endpoint: current.token_endpoint.clone(),
                    jwks_uri: current.jwks_uri.clone(),
                    jwks,
                });
                self.store_provider(&provider);
                tracing::info!(
                    keys = provider.jwks.keys().len(),
                    "okta: JWKS refetched for an unknown key"
                );
                Some(provider)
            }
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "okta: JWKS refetch failed");
                None
            }
        }
    }

    /// The token request: once, never retried (a code is single-use).
    async fn exchange(&self, provider: &Provider, code: &str) -> Result<CoreIdToken, Refusal> {
        let client = CoreClient::new(
            self.client_id.clone(),
            self.issuer.clone(),
            // Unused: the id_token is verified by `verify`, with a public-client verifier.
            JsonWebKeySet::new(Vec::new()),
        )
        .set_client_secret(self.client_secret.clone())
        .set_auth_type(self.client_auth.clone())
        .set_redirect_uri(self.redirect_uri.clone())
        .set_token_uri(provider.token_endpoint.clone());
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .request_async(&self.http)
            .await
            .map_err(|e| Refusal::Exchange(token_error(&e)))?;
        response.id_token().cloned().ok_or(Refusal::NoIdToken)
    }

    /// Steps 1–5 of the module doc.
    fn verify<'t>(
        &self,
        jwks: &CoreJsonWebKeySet,
        id_token: &'t CoreIdToken,
        now: UnixTime,
    ) -> Result<&'t CoreIdTokenClaims, ClaimsVerificationError> {
        // A public-client verifier: it has no shared secret, so no HMAC algorithm can verify.
        let verifier = CoreIdTokenVerifier::new_public_client(
            self.client_id.clone(),
            self.issuer.clone(),
            jwks.clone(),
        )
        .set_allowed_algs(self.algorithms.iter().cloned())
        // Further audiences pass here only to be held to `azp == client_id` by
        // `check_authorized_party`, which openidconnect leaves to the client.
        .set_other_audience_verifier_fn(|_| true)
        // openidconnect refuses at `now >= exp`; shifting its clock back is the leeway.
        .set_time_fn(move || unix_to_datetime(now - LEEWAY_SECS))
        .set_issue_time_verifier_fn(move |iat| check_issue_time(iat.timestamp(), now));
        id_token.claims(&verifier, no_nonce_sent)
    }
}
