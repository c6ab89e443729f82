//! Forgotten passwords: `POST /users/password` e-mails a reset link to an active user, and
//! `PATCH /users/password` spends an invitation or reset token to set a password.
//!
//! Reset tokens are 256 random bits; only their SHA-256 digest is stored, so a database
//! leak yields no usable link. A new reset supersedes the user's earlier ones.

use std::sync::Arc;

use aws_lc_rs::digest;
use tracing::Instrument;

use super::audit::{AuditKind, Caller, Entry};
use super::tokens::{is_expired, random_base64url};
use super::{Auth, AuthError, normalize_email};
use crate::store::{PasswordReset, ResetCompletion, User};

/// Lower-case hex SHA-256 of a one-time token: what the store keeps and looks up.
fn token_digest_hex(token: &str) -> String {
    digest::digest(&digest::SHA256, token.trim().as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Auth {
    /// `POST /users/password`. Answers the same, at the same speed, for every address: the
    /// lookup, token and e-mail happen in a background task, so neither the response nor its
    /// timing tells whether the address has an account. Only the throttle can refuse.
    pub async fn request_password_reset(
        self: &Arc<Self>,
        email: &str,
        caller: &Caller,
    ) -> Result<(), AuthError> {
        let email = normalize_email(email);
        self.reset_throttle
            .begin(&email, caller.client_ip, self.clock.now())
            .await?
            .keep();
        let auth = self.clone();
        let caller = caller.clone();
        tokio::spawn(
            async move {
                if let Err(e) = auth.send_password_reset(&email, &caller).await {
                    tracing::error!(error = %e, "password reset request failed");
                }
            }
            // Its log lines still belong to the request.
            .in_current_span(),
        );
        Ok(())
    }

    async fn send_password_reset(&self, email: &str, caller: &Caller) -> Result<(), AuthError> {
        let now = self.clock.now();
        let requested = Entry::new(AuditKind::PasswordResetRequested, now, caller);
        // The address rule every entry point applies (`crate::email`): the contract answers
        // `ok` for any address, but one the mail path cannot deliver to gets no token and no
        // mail, whoever it might name.
        if crate::email::parse(email).is_err() {
            self.audit
                .record(requested.detail("outcome", "invalid_address"));
            return Ok(());
        }
        let Some(user) = self
            .store
            .user_by_email(email)
            .await?
            .filter(User::is_active)
        else {
            // Recorded too (not answered differently): someone asked for this address.
            self.audit.record(
                requested
                    .claimed_email(email)
                    .detail("outcome", "no_active_user"),
            );
            return Ok(());
        };
        let token = random_base64url::<32>()?;
        self.store
            .create_password_reset(&PasswordReset {
                digest: token_digest_hex(&token),
                user_id: user.id,
                created: now,
                expires_at: now.saturating_add(self.settings.reset_ttl),
                used_at: None,
            })
            .await?;
        let link = self.set_password_link(&user.email, &token, "reset-password");
        self.mail
            .send_password_reset(&user.email, &link, self.on_undelivered(&user, caller));
        self.audit
            .record(requested.user(&user).detail("outcome", "sent"));
        Ok(())
    }

    /// `PATCH /users/password`: with an invitation token, activates the pending user; with a
    /// reset token, sets the new password and ends every session of the user. Any token that
    /// is wrong, spent, superseded, expired or not this email's is the same error.
    pub async fn set_password(
        &self,
        email: &str,
        password: String,
        token: &str,
        caller: &Caller,
    ) -> Result<(), AuthError> {
        let email = normalize_email(email);
        let user = self
            .store
            .user_by_email(&email)
            .await?
            .ok_or(AuthError::InvalidOneTimeToken)?;
        if user.invitation_pending {
            return self.accept_invitation(&user, password, token, caller).await;
        }
        if !user.is_active() {
            return Err(AuthError::InvalidOneTimeToken);
        }
        let now = self.clock.now();
        let digest = token_digest_hex(token);
        self.store
            .password_reset(&digest)
            .await?
            .filter(|r| r.user_id == user.id && r.used_at.is_none())
            .filter(|r| !is_expired(r.expires_at, now))
            .ok_or(AuthError::InvalidOneTimeToken)?;
        self.check_password_policy(&password, &user.email)?;
        let hash = self.passwords.hash(password).await?;
        // The store spends the token, sets the hash and revokes the sessions atomically; a
        // concurrent second use finds it spent.
        let completion = ResetCompletion {
            digest: &digest,
            user: user.id,
            password_hash: &hash,
        };
        let ended = self
            .store
            .complete_password_reset(completion, now)
            .await?
            .ok_or(AuthError::InvalidOneTimeToken)?;
        for session in &ended {
            self.cache.revoke_session(*session);
        }
        self.metrics
            .revocations_sent
            .inc_by(u64::try_from(ended.len()).unwrap_or(u64::MAX));
        self.audit.record(
            Entry::new(AuditKind::PasswordResetCompleted, now, caller)
                .user(&user)
                .detail("sessions_ended", ended.len().to_string()),
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_tokens_are_256_bit_and_digests_are_hex_sha256() {
        let a = random_base64url::<32>().unwrap();
        let b = random_base64url::<32>().unwrap();
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
        assert_eq!(
            token_digest_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(token_digest_hex(" abc\n"), token_digest_hex("abc"));
    }
}
