//! Login, refresh and logout: the session rules of the contract (8 h tokens, refresh up to
//! 4 h after expiry and only once per token, logout ending every token of the session).

use uuid::Uuid;

use super::audit::{AuditKind, Caller, Entry};
use super::tokens::{Claims, is_expired};
use super::{Auth, AuthError, normalize_email};
use crate::store::{Rotation, Session, SessionId, TokenSwap, UnixTime, User};

/// A freshly signed access token.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: String,
    /// Seconds until it expires (the cookie's `Max-Age`).
    pub expires_in: i64,
}

impl Auth {
    /// `POST /users/login`. Every failure — unknown email, wrong password, disabled, deleted,
    /// pending or SSO-only user — is the same [`AuthError::InvalidCredentials`] after one argon2
    /// verification, so neither body nor timing tells them apart.
    pub async fn login(
        &self,
        email: &str,
        password: String,
        caller: &Caller,
    ) -> Result<IssuedToken, AuthError> {
        let result = self.check_credentials(email, password, caller).await;
        let m = &self.metrics;
        match &result {
            Ok(_) => m.login_success.inc(),
            Err(AuthError::InvalidCredentials) => m.login_failure.inc(),
            Err(AuthError::Throttled { .. }) => m.login_rate_limited.inc(),
            Err(_) => m.login_error.inc(),
        };
        result
    }

    async fn check_credentials(
        &self,
        email: &str,
        password: String,
        caller: &Caller,
    ) -> Result<IssuedToken, AuthError> {
        let email = normalize_email(email);
        let now = self.clock.now();
        let failed =
            |reason: &str| Entry::new(AuditKind::LoginFailed, now, caller).detail("reason", reason);
        // Counted as a failure until it proves otherwise, so concurrent attempts cannot all
        // pass the limit before the first failure is recorded.
        let attempt = match self
            .login_throttle
            .begin(&email, caller.client_ip, now)
            .await
        {
            Ok(attempt) => attempt,
            Err(e) => {
                if matches!(e, AuthError::Throttled { .. }) {
                    self.audit.record(failed("throttled").claimed_email(&email));
                }
                return Err(e);
            }
        };
        let found = self.store.user_by_email(&email).await?;
        // An SSO-only user (`sso_enabled`) logs in through Okta, never with a password.
        let user = found.as_ref().filter(|u| u.is_active() && !u.sso_enabled);
        let hash = user.and_then(|u| u.password_hash.clone());
        let verified = self.passwords.verify(password, hash).await?;
        let Some(user) = user.filter(|_| verified) else {
            attempt.keep();
            let entry = match &found {
                Some(user) => failed(login_failure_reason(user)).user(user),
                None => failed("unknown_user").claimed_email(&email),
            };
            self.audit.record(entry);
            return Err(AuthError::InvalidCredentials);
        };
        attempt.succeeded().await; // a success does not count
        let issued = self.start_session(user).await?;
        self.audit
            .record(Entry::new(AuditKind::LoginSucceeded, now, caller).user(user));
        Ok(issued)
    }

    /// Opens a session for an already authenticated user and signs its first token.
    pub async fn start_session(&self, user: &User) -> Result<IssuedToken, AuthError> {
        let now = self.clock.now();
        let session = Session {
            id: SessionId::new_random(),
            user_id: user.id,
            created: now,
            expires_at: now.saturating_add(self.settings.session_max_age),
            revoked_at: None,
            current_jti: Uuid::new_v4(),
            refresh_count: 0,
            last_refresh_at: None,
        };
        self.store.create_session(&session).await?;
        self.store.record_login(user.id, now).await?;
        self.sign(&session, session.current_jti, now)
    }

    /// `PATCH /users/login`.
    pub async fn refresh(&self, token: &str, caller: &Caller) -> Result<IssuedToken, AuthError> {
        let claims = self
            .keys
            .verify(token)
            .map_err(|_| AuthError::InvalidToken)?;
        let now = self.clock.now();
        if refresh_too_late(claims.exp, self.settings.refresh_window, now) {
            return Err(AuthError::TokenTooOld);
        }
        let session = self
            .store
            .session(claims.sid)
            .await?
            .filter(|s| s.revoked_at.is_none() && s.user_id == claims.sub)
            .ok_or(AuthError::InvalidToken)?;
        let user_active = self
            .store
            .user_by_id(claims.sub)
            .await?
            .is_some_and(|u| u.is_active());
        if !user_active {
            return Err(AuthError::InvalidToken);
        }
        if is_expired(session.expires_at, now) {
            return Err(AuthError::SessionTooOld);
        }
        let swap = TokenSwap {
            session: session.id,
            presented_jti: claims.jti,
            new_jti: Uuid::new_v4(),
        };
        match self.store.rotate_session_token(swap, now).await? {
            Rotation::Rotated => {
                let issued = self.sign(&session, swap.new_jti, now)?;
                self.audit.record(
                    Entry::new(AuditKind::TokenRefreshed, now, caller)
                        .session(session.user_id, session.id),
                );
                Ok(issued)
            }
            Rotation::NotCurrent => {
                // A token refreshed twice has been copied: end the session for both holders.
                self.end_session(session.id).await?;
                tracing::warn!(session = %session.id, user = %session.user_id, "refresh token reuse; session ended");
                self.audit.record(
                    Entry::new(AuditKind::RefreshReused, now, caller)
                        .session(session.user_id, session.id),
                );
                Err(AuthError::TokenReused)
            }
            Rotation::Gone => Err(AuthError::InvalidToken),
        }
    }

    /// `DELETE /users/login`: ends the token's session. Idempotent: an unknown, forged or
    /// long-expired token is simply nothing to end.
    pub async fn logout(&self, token: Option<&str>, caller: &Caller) -> Result<(), AuthError> {
        let Some(claims) = token.and_then(|t| self.keys.verify(t).ok()) else {
            return Ok(());
        };
        self.end_session(claims.sid).await?;
        self.audit.record(
            Entry::new(AuditKind::Logout, self.clock.now(), caller).session(claims.sub, claims.sid),
        );
        Ok(())
    }

    /// Revokes a session in the store (which feeds other replicas) and in this cache.
    pub async fn end_session(&self, session: SessionId) -> Result<(), AuthError> {
        if self.store.revoke_session(session, self.clock.now()).await? {
            self.metrics.revocations_sent.inc();
        }
        self.cache.revoke_session(session);
        Ok(())
    }

    fn sign(&self, session: &Session, jti: Uuid, now: UnixTime) -> Result<IssuedToken, AuthError> {
        let exp = token_expiry(now, self.settings.access_token_ttl, session.expires_at);
        let claims = Claims {
            iss: self.keys.issuer().to_owned(),
            sub: session.user_id,
            sid: session.id,
            jti,
            iat: now,
            exp,
        };
        let token = self
            .keys
            .sign(&claims)
            .map_err(|e| AuthError::Internal(e.to_string()))?;
        Ok(IssuedToken {
            token,
            expires_in: exp - now,
        })
    }
}

/// Why a known user's login failed, for the audit record only (the client sees one answer).
fn login_failure_reason(user: &User) -> &'static str {
    if user.deleted {
        "deleted"
    } else if user.disabled {
        "disabled"
    } else if user.invitation_pending {
        "invitation_pending"
    } else if user.sso_enabled {
        "sso_only"
    } else if user.password_hash.is_none() {
        "no_password"
    } else {
        "wrong_password"
    }
}

/// A token lives `ttl`, but never past the end of its session.
fn token_expiry(now: UnixTime, ttl: i64, session_expires_at: UnixTime) -> UnixTime {
    now.saturating_add(ttl).min(session_expires_at)
}

/// "Access token can be refreshed maximally 4 hours after it expires": at exactly
/// `exp + window` it still can, one second later it cannot.
fn refresh_too_late(exp: UnixTime, window: i64, now: UnixTime) -> bool {
    now > exp.saturating_add(window)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_never_outlive_their_session() {
        assert_eq!(token_expiry(100, 50, 1000), 150);
        assert_eq!(token_expiry(100, 50, 120), 120);
    }

    #[test]
    fn refresh_window_boundary() {
        let exp = 1_000;
        let window = 4 * 3600;
        assert!(!refresh_too_late(exp, window, exp - 1));
        assert!(!refresh_too_late(exp, window, exp + window));
        assert!(refresh_too_late(exp, window, exp + window + 1));
    }
}
