//! The check every protected request goes through: find the token, look its digest up in the
//! cache, and on a miss verify it and load its session once (concurrent misses for the same
//! token share one verification through moka's `try_get_with`).
//!
//! Safety net behind the revocation feed: a hit on a session last confirmed by the store more
//! than `auth.recheck_interval` ago starts one re-check of the session and its user in the
//! background and is itself served from the cache; a revocation the feed never delivered is
//! thus enforced at most one interval (plus a store round trip) late. A store that cannot be
//! reached leaves the cached verdict standing and the re-check is retried later: cached tokens
//! keep working through a database outage.

use std::sync::Arc;

use http::HeaderMap;
use http::header::{AUTHORIZATION, COOKIE};

use super::cache::{
    CachedSession, Grant, LocalIdentity, Standing, TokenDigest, VOUCHED_LOCALLY, token_digest,
};
use super::tokens::is_expired;
use super::{Auth, AuthError};
use crate::store::{SessionId, Store, StoreResult, UnixTime, User, UserId};
use crate::telemetry::metrics::Rejection;

/// After a re-check could not reach the store, the next hit retries this much later.
const RECHECK_RETRY: UnixTime = 5;

pub static X_ACCESS_TOKEN: http::HeaderName = http::HeaderName::from_static("x-access-token");

/// Why a miss could not produce a principal; cloned out of moka's shared error.
#[derive(Debug, thiserror::Error)]
enum LoadError {
    #[error("invalid token")]
    Invalid(Rejection),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
}

impl Auth {
    /// What the token of a request grants: the check behind the data plane
    /// ([`super::validator::Validator`]) and the API's extractors alike.
    pub async fn check(&self, headers: &HeaderMap) -> Result<Grant, AuthError> {
        let Some(token) = extract_token(headers, &self.settings.cookie_name) else {
            self.metrics.tokens.rejected(Rejection::Missing);
            return Err(AuthError::MissingToken);
        };
        self.authenticate(token).await
    }

    /// What a token grants, or why it grants nothing.
    pub async fn authenticate(&self, token: &str) -> Result<Grant, AuthError> {
        let checks = &self.metrics.tokens;
        let digest = token_digest(VOUCHED_LOCALLY, token.as_bytes());
        // Set only if this call ran the verification: a hit (or a concurrent miss that shared
        // another call's verification) leaves it false, at no cost.
        let mut verified = false;
        let mut grant = self.cached_grant(digest, token, &mut verified).await?;
        // Checked on every hit: the cache entry may outlive a revocation or (by a second) the
        // token itself, and the clock is injectable.
        let mut standing = grant.session.standing();
        if standing == Standing::Stale {
            grant = self.reload_grant(digest, token, &mut verified).await?;
            standing = grant.session.standing();
        }
        let now = self.clock.now();
        if standing == Standing::Revoked {
            checks.rejected(Rejection::Revoked);
            return Err(AuthError::InvalidToken);
        }
        if is_expired(grant.exp, now) {
            checks.rejected(Rejection::Expired);
            return Err(AuthError::InvalidToken);
        }
        if grant.session.recheck_due(now) {
            self.start_recheck(&grant, now);
        }
        if verified {
            checks.verified.inc();
        } else {
            checks.cache_hit.inc();
        }
        Ok(grant)
    }

    /// The cached grant of a token, verified and loaded on a miss. Local verification never
    /// caches a refusal: a forged token costs one signature check, and a store outage must
    /// not be remembered.
    async fn cached_grant(
        &self,
        digest: TokenDigest,
        token: &str,
        verified: &mut bool,
    ) -> Result<Grant, AuthError> {
        let checks = &self.metrics.tokens;
        self.cache
            .entries()
            .try_get_with(digest, async {
                *verified = true;
                self.load_grant(token).await
            })
            .await
            .map_err(|e| match &*e {
                LoadError::Invalid(why) => {
                    checks.rejected(*why);
                    AuthError::InvalidToken
                }
                LoadError::Store(e) => {
                    checks.unavailable.inc();
                    AuthError::Internal(format!("store: {e}"))
                }
            })
    }

    /// The token's session went stale (its user's email or role changed): the entry is
    /// dropped and the token loaded again, under a fresh session with the new identity.
    #[cold]
    async fn reload_grant(
        &self,
        digest: TokenDigest,
        token: &str,
        verified: &mut bool,
    ) -> Result<Grant, AuthError> {
        self.cache.entries().invalidate(&digest).await;
        self.cached_grant(digest, token, verified).await
    }

    /// Re-checks the principal's session in the background, unless another hit already does.
    #[cold]
    fn start_recheck(&self, grant: &Grant, now: UnixTime) {
        let Some(identity) = grant.local() else {
            return;
        };
        let interval = self.settings.recheck_interval;
        if !grant
            .session
            .claim_recheck(now, now.saturating_add(RECHECK_RETRY.min(interval)))
        {
            return;
        }
        let (store, clock, flag) = (
            self.store.clone(),
            self.clock.clone(),
            grant.session.clone(),
        );
        tokio::spawn(recheck(store, clock, identity, flag, interval));
    }

    async fn load_grant(&self, token: &str) -> Result<Grant, LoadError> {
        let claims = self
            .keys
            .verify(token)
            .map_err(|_| LoadError::Invalid(Rejection::Invalid))?;
        let now = self.clock.now();
        if is_expired(claims.exp, now) {
            return Err(LoadError::Invalid(Rejection::Expired));
        }
        // Taken before the store is read, so a revocation racing this load still flags it.
        let session = self.cache.session(claims.sid);
        let user = live_user(self.store.as_ref(), claims.sid, claims.sub, now)
            .await?
            .ok_or(LoadError::Invalid(Rejection::Revoked))?;
        session.checked_until(now.saturating_add(self.settings.recheck_interval));
        session.bind(|| self.cache.principal(user.id, &user.email, user.role));
        Ok(Grant {
            exp: claims.exp,
            session,
        })
    }
}

/// The user of a session that is open, unexpired at `now` and belongs to `user`, if that user
/// is active: what a token needs from the store to be valid.
async fn live_user(
    store: &dyn Store,
    session: SessionId,
    user: UserId,
    now: UnixTime,
) -> StoreResult<Option<User>> {
    let session_ok = store.session(session).await?.is_some_and(|s| {
        s.revoked_at.is_none() && s.user_id == user && !is_expired(s.expires_at, now)
    });
    if !session_ok {
        return Ok(None);
    }
    Ok(store.user_by_id(user).await?.filter(User::is_active))
}

/// The background half of the safety net: ends the session in the cache when the store says
/// it is over, else confirms it for another interval. On a store error the claim's retry time
/// stands and the cached verdict with it.
async fn recheck(
    store: Arc<dyn Store>,
    clock: super::Clock,
    identity: LocalIdentity,
    flag: Arc<CachedSession>,
    interval: UnixTime,
) {
    let now = clock.now();
    match live_user(store.as_ref(), identity.session_id, identity.user_id, now).await {
        Ok(Some(user)) => {
            let same = flag
                .principal()
                .is_some_and(|p| p.same_identity(user.id, &user.email, user.role));
            if same {
                flag.checked_until(now.saturating_add(interval));
            } else {
                // A change whose feed entry never arrived: the next use loads it again.
                tracing::info!(session = %identity.session_id, "re-check found the user's identity changed; reloading");
                flag.mark_stale();
            }
        }
        Ok(None) => {
            tracing::info!(session = %identity.session_id, "re-check found the session ended; revoked in the cache");
            flag.revoke();
        }
        Err(e) => {
            tracing::warn!(error = %e, session = %identity.session_id, "re-checking a cached session failed; keeping the cached verdict")
        }
    }
}

/// The access token of a request: `X-Access-Token`, else `Authorization: Bearer`, else the
/// session cookie (api-contract.md, in that order). A source that carries no token (an empty
/// header, another `Authorization` scheme such as Basic) does not hide the next one.
pub fn extract_token<'h>(headers: &'h HeaderMap, cookie_name: &str) -> Option<&'h str> {
    let header_token = headers
        .get(&X_ACCESS_TOKEN)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty());
    if header_token.is_some() {
        return header_token;
    }
    let bearer = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, rest)| rest.trim())
        .filter(|t| !t.is_empty());
    if bearer.is_some() {
        return bearer;
    }
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == cookie_name && !value.is_empty()).then_some(value)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn header_then_bearer_then_cookie() {
        let all = headers(&[
            ("x-access-token", "a"),
            ("authorization", "Bearer b"),
            ("cookie", "meiro_access_token=c"),
        ]);
        assert_eq!(extract_token(&all, "meiro_access_token"), Some("a"));
        let bearer = headers(&[
            ("authorization", "bearer  b "),
            ("cookie", "meiro_access_token=c"),
        ]);
        assert_eq!(extract_token(&bearer, "meiro_access_token"), Some("b"));
        let cookie = headers(&[("cookie", "x=1; meiro_access_token=c; y=2")]);
        assert_eq!(extract_token(&cookie, "meiro_access_token"), Some("c"));
    }

    #[test]
    fn absent_or_empty_or_other_schemes_are_no_token() {
        assert_eq!(extract_token(&headers(&[]), "t"), None);
        assert_eq!(
            extract_token(&headers(&[("x-access-token", " ")]), "t"),
            None
        );
        assert_eq!(
            extract_token(&headers(&[("authorization", "Basic Zm9vOmJhcg==")]), "t"),
            None
        );
        assert_eq!(
            extract_token(&headers(&[("cookie", "tt=1; t=")]), "t"),
            None
        );
    }
}
