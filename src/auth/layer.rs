//! The check every protected request goes through: find the token, look its digest up in the
//! cache, and on a miss verify it and load its session once (concurrent misses for the same
//! token share one verification through moka's `try_get_with`).

use std::sync::Arc;

use http::HeaderMap;
use http::header::{AUTHORIZATION, COOKIE};

use super::cache::{Principal, VOUCHED_LOCALLY, Verdict, token_digest};
use super::tokens::is_expired;
use super::{Auth, AuthError};

pub static X_ACCESS_TOKEN: http::HeaderName = http::HeaderName::from_static("x-access-token");

/// Why a miss could not produce a principal; cloned out of moka's shared error.
#[derive(Debug, thiserror::Error)]
enum LoadError {
    #[error("invalid token")]
    Invalid,
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
}

impl Auth {
    /// The principal a token speaks for, or why it does not.
    pub async fn authenticate(&self, token: &str) -> Result<Arc<Principal>, AuthError> {
        let verdict = self
            .cache
            .entries()
            .try_get_with(
                token_digest(VOUCHED_LOCALLY, token.as_bytes()),
                self.load_principal(token),
            )
            .await
            .map_err(|e| match &*e {
                LoadError::Invalid => AuthError::InvalidToken,
                LoadError::Store(e) => AuthError::Internal(format!("store: {e}")),
            })?;
        // Local verification never caches a refusal (a forged token costs one signature
        // check, and a store outage must not be remembered), so this is always `Valid`.
        let Verdict::Valid(principal) = verdict else {
            return Err(AuthError::InvalidToken);
        };
        // Checked on every hit: the cache entry may outlive a revocation or (by a second) the
        // token itself, and the clock is injectable.
        if principal.session.is_revoked() || is_expired(principal.exp, self.clock.now()) {
            return Err(AuthError::InvalidToken);
        }
        Ok(principal)
    }

    async fn load_principal(&self, token: &str) -> Result<Verdict, LoadError> {
        let claims = self.keys.verify(token).map_err(|_| LoadError::Invalid)?;
        let now = self.clock.now();
        if is_expired(claims.exp, now) {
            return Err(LoadError::Invalid);
        }
        // Taken before the store is read, so a revocation racing this load still flags it.
        let flag = self.cache.session_flag(claims.sid);
        let session = self.store.session(claims.sid).await?;
        let session_ok = session.is_some_and(|s| {
            s.revoked_at.is_none() && s.user_id == claims.sub && !is_expired(s.expires_at, now)
        });
        if !session_ok {
            return Err(LoadError::Invalid);
        }
        let user = self
            .store
            .user_by_id(claims.sub)
            .await?
            .filter(|u| u.is_active())
            .ok_or(LoadError::Invalid)?;
        Ok(Verdict::Valid(Arc::new(Principal::new(
            user.id,
            &user.email,
            user.role,
            claims.sid,
            claims.exp,
            flag,
        ))))
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
