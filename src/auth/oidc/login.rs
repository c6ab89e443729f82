//! The gateway's side of an Okta login: the proven e-mail address → a user of the store (found,
//! or provisioned with `okta.auto_provision`) → a session and token like a credentials login.

use crate::auth::audit::{AuditKind, Caller, Entry};
use crate::auth::{Auth, AuthError, IssuedToken};
use crate::store::{NewUser, StoreError, User};

use super::Oidc;

impl Auth {
    /// `POST /users/okta_login`: the email proven by the provider's id_token → the existing
    /// active user (or, with `okta.auto_provision`, a new one, `sso_enabled` since it has no
    /// password), with a session and token exactly like a credentials login. Okta login works
    /// whatever `sso_enabled` says and does not change it: that flag is the admin's "SSO
    /// only", which refuses credentials login; a user who also has a password keeps it.
    pub async fn okta_login(&self, code: &str, caller: &Caller) -> Result<IssuedToken, AuthError> {
        let okta = self.okta.as_ref().ok_or(AuthError::OktaDisabled)?;
        let failed = |reason: &str| {
            Entry::new(AuditKind::OktaLoginFailed, self.clock.now(), caller)
                .detail("reason", reason)
        };
        let email = match okta.identify(code).await {
            Ok(email) => email,
            Err(refusal) => {
                tracing::warn!(reason = %refusal, "okta login refused");
                self.audit.record(failed(refusal.code()));
                return Err(AuthError::InvalidCredentials);
            }
        };
        let Some(user) = self.okta_user(okta, &email).await? else {
            tracing::warn!(%email, "okta login refused: no active user with this email");
            self.audit
                .record(failed("no_active_user").claimed_email(&email));
            return Err(AuthError::InvalidCredentials);
        };
        let issued = self.start_session(&user).await?;
        self.audit
            .record(Entry::new(AuditKind::OktaLogin, self.clock.now(), caller).user(&user));
        Ok(issued)
    }

    /// `okta_auth_link` of `GET /auth_options`: `None` when Okta is off or its provider has
    /// not been discovered (yet).
    pub async fn okta_auth_link(&self) -> Option<String> {
        self.okta.as_ref()?.auth_link().await
    }

    async fn okta_user(&self, okta: &Oidc, email: &str) -> Result<Option<User>, AuthError> {
        if let Some(user) = self.store.user_by_email(email).await? {
            // Disabled, deleted and not-yet-activated users are refused like a wrong password.
            return Ok(Some(user).filter(User::is_active));
        }
        if !okta.auto_provision {
            return Ok(None);
        }
        let created = self
            .store
            .create_user(NewUser {
                email: email.to_owned(),
                password_hash: None,
                role: okta.default_role,
                invitation_pending: false,
                invitation: None,
                // No password: SSO only.
                sso_enabled: true,
                created: self.clock.now(),
            })
            .await;
        match created {
            Ok(user) => {
                tracing::info!(user = %user.id, %email, role = user.role.as_str(), "okta: user provisioned");
                Ok(Some(user))
            }
            // The same person's concurrent first login created it a moment earlier.
            Err(StoreError::DuplicateEmail) => Ok(self
                .store
                .user_by_email(email)
                .await?
                .filter(User::is_active)),
            Err(e) => Err(e.into()),
        }
    }
}
