//! Invitations: admins create pending users who set their first password through a link.
//!
//! The link's token is HMAC-SHA256, under a server secret, over the user id, the email and the
//! invitation record (random nonce + expiry). Nothing token-like is stored, yet the same link
//! can be shown again (`GET /users/{id}/invitation_link`); a re-invite draws a new nonce, so
//! every earlier link stops verifying. Verification is constant-time (`hmac::verify`).

use std::fs;
use std::path::Path;

use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::audit::{AuditKind, Caller, Entry};
use super::cache::LocalIdentity;
use super::key_files::{KeyError, write_private};
use super::tokens::random_base64url;
use super::{Auth, AuthError, normalize_email};
use crate::store::{
    Invitation, InvitationAcceptance, NewUser, Role, StoreError, UnixTime, User, UserId,
};

const SECRET_FILE: &str = "link-secret.key";
const SECRET_LEN: usize = 32;

/// The server secret behind invitation links. It lives next to the signing keys, so replicas
/// sharing `auth.keys_dir` produce and accept the same links.
pub struct LinkSecret {
    key: hmac::Key,
}

impl LinkSecret {
    pub fn load_or_generate(dir: &Path) -> Result<LinkSecret, KeyError> {
        let path = dir.join(SECRET_FILE);
        let io = |source| KeyError::Io {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(dir).map_err(io)?;
        if !path.exists() {
            let mut secret = [0u8; SECRET_LEN];
            SystemRandom::new()
                .fill(&mut secret)
                .map_err(|_| KeyError::Generate)?;
            // Another process may have created it meanwhile: create_new fails, we read theirs.
            if let Err(e) = write_private(&path, URL_SAFE_NO_PAD.encode(secret).as_bytes())
                && e.kind() != std::io::ErrorKind::AlreadyExists
            {
                return Err(io(e));
            }
        }
        let text = fs::read_to_string(&path).map_err(io)?;
        let secret = URL_SAFE_NO_PAD
            .decode(text.trim())
            .ok()
            .filter(|s| s.len() >= SECRET_LEN)
            .ok_or_else(|| KeyError::BadKey { path: path.clone() })?;
        Ok(LinkSecret {
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
        })
    }

    fn message(user: UserId, email: &str, invitation: &Invitation) -> String {
        // NUL separators: none of the fields can contain one, so the encoding is unambiguous.
        format!(
            "meiro-gate invitation v1\0{user}\0{email}\0{}\0{}",
            invitation.nonce, invitation.expires_at
        )
    }

    /// The token of the invitation link (256 bits, base64url).
    pub fn invitation_token(&self, user: UserId, email: &str, invitation: &Invitation) -> String {
        let tag = hmac::sign(&self.key, Self::message(user, email, invitation).as_bytes());
        URL_SAFE_NO_PAD.encode(tag.as_ref())
    }

    pub fn verify_invitation(
        &self,
        user: UserId,
        email: &str,
        invitation: &Invitation,
        token: &str,
    ) -> bool {
        let Ok(tag) = URL_SAFE_NO_PAD.decode(token.trim()) else {
            return false;
        };
        hmac::verify(
            &self.key,
            Self::message(user, email, invitation).as_bytes(),
            &tag,
        )
        .is_ok()
    }
}

impl Auth {
    fn new_invitation(&self, now: UnixTime) -> Result<Invitation, AuthError> {
        Ok(Invitation {
            // 128 bits: a re-invite must never repeat a nonce.
            nonce: random_base64url::<16>()?,
            expires_at: now.saturating_add(self.settings.invitation_ttl),
        })
    }

    /// `POST /users/invite`: a new pending user (`role` default `user`), or a fresh invitation
    /// for a still-pending one (keeping its role unless `role` is given); the invitation
    /// e-mail is queued either way.
    pub async fn invite(
        &self,
        admin: &LocalIdentity,
        email: &str,
        role: Option<Role>,
        caller: &Caller,
    ) -> Result<User, AuthError> {
        let email = normalize_email(email);
        // Only an address the mail path can deliver to: an invitation that cannot arrive
        // must be refused here, not dropped by the queue after a 200.
        crate::email::parse(&email)?;
        let now = self.clock.now();
        let invitation = self.new_invitation(now)?;
        let (user, event) = match self.store.user_by_email(&email).await? {
            Some(existing) if existing.invitation_pending => {
                let user = self
                    .store
                    .renew_invitation(existing.id, &invitation, role.unwrap_or(existing.role))
                    .await?
                    .ok_or(AuthError::UserExists)?;
                (user, AuditKind::InvitationResent)
            }
            Some(_) => return Err(AuthError::UserExists),
            None => {
                let created = self
                    .store
                    .create_user(NewUser {
                        email: email.clone(),
                        password_hash: None,
                        role: role.unwrap_or(Role::User),
                        invitation_pending: true,
                        invitation: Some(invitation),
                        sso_enabled: false,
                        created: now,
                    })
                    .await;
                match created {
                    Ok(user) => (user, AuditKind::InvitationCreated),
                    // Lost a race with a concurrent invite of the same address.
                    Err(StoreError::DuplicateEmail) => return Err(AuthError::UserExists),
                    Err(e) => return Err(e.into()),
                }
            }
        };
        self.mail_invitation(&user, caller)?;
        self.audit.record(
            Entry::new(event, now, caller)
                .user(&user)
                .detail("by", admin.user_id.to_string())
                .detail("role", user.role.as_str()),
        );
        Ok(user)
    }

    /// `PATCH /users/invite`: a new link for a pending user; earlier links stop working.
    pub async fn reinvite(
        &self,
        admin: &LocalIdentity,
        email: &str,
        caller: &Caller,
    ) -> Result<User, AuthError> {
        let email = normalize_email(email);
        crate::email::parse(&email)?;
        let existing = self
            .store
            .user_by_email(&email)
            .await?
            .filter(|u| u.invitation_pending)
            .ok_or(AuthError::NoPendingInvitation)?;
        let now = self.clock.now();
        let invitation = self.new_invitation(now)?;
        let user = self
            .store
            .renew_invitation(existing.id, &invitation, existing.role)
            .await?
            .ok_or(AuthError::NoPendingInvitation)?;
        self.mail_invitation(&user, caller)?;
        self.audit.record(
            Entry::new(AuditKind::InvitationResent, now, caller)
                .user(&user)
                .detail("by", admin.user_id.to_string()),
        );
        Ok(user)
    }

    /// `GET /users/{id}/invitation_link`: the link that was e-mailed, while it is valid.
    pub async fn invitation_link(&self, user: UserId) -> Result<String, AuthError> {
        let user = self.user(user).await?;
        self.current_invitation_link(&user)
            .ok_or(AuthError::NoPendingInvitation)
    }

    fn current_invitation_link(&self, user: &User) -> Option<String> {
        let invitation = user
            .invitation
            .as_ref()
            .filter(|_| user.invitation_pending)?;
        if super::tokens::is_expired(invitation.expires_at, self.clock.now()) {
            return None;
        }
        let token = self
            .link_secret
            .invitation_token(user.id, &user.email, invitation);
        Some(self.set_password_link(&user.email, &token, "invitation-link"))
    }

    /// Queues the invitation mail. If it cannot be delivered the invitation stays valid and
    /// its link can still be read (`GET /users/{id}/invitation_link`); the failure is audited.
    fn mail_invitation(&self, user: &User, caller: &Caller) -> Result<(), AuthError> {
        let link = self
            .current_invitation_link(user)
            .ok_or_else(|| AuthError::Internal("a fresh invitation has no link".into()))?;
        self.mail
            .send_invitation(&user.email, &link, self.on_undelivered(user, caller));
        Ok(())
    }

    /// `<frontend_url>/set_password/?email=…&reset_token=…&referrer=…`
    pub(super) fn set_password_link(&self, email: &str, token: &str, referrer: &str) -> String {
        let email: String = url::form_urlencoded::byte_serialize(email.as_bytes()).collect();
        format!(
            "{}/set_password/?email={email}&reset_token={token}&referrer={referrer}",
            self.settings.frontend_url.trim_end_matches('/')
        )
    }

    /// Sets the first password of a pending user from an invitation token; any token that is
    /// not this user's current, unexpired invitation is [`AuthError::InvalidOneTimeToken`].
    pub(super) async fn accept_invitation(
        &self,
        user: &User,
        password: String,
        token: &str,
        caller: &Caller,
    ) -> Result<(), AuthError> {
        let now = self.clock.now();
        let invitation = user
            .invitation
            .as_ref()
            .filter(|i| !super::tokens::is_expired(i.expires_at, now))
            .filter(|i| {
                self.link_secret
                    .verify_invitation(user.id, &user.email, i, token)
            })
            .ok_or(AuthError::InvalidOneTimeToken)?;
        self.check_password_policy(&password, &user.email)?;
        let hash = self.passwords.hash(password).await?;
        let acceptance = InvitationAcceptance {
            user: user.id,
            nonce: &invitation.nonce,
            password_hash: &hash,
        };
        if !self.store.accept_invitation(acceptance, now).await? {
            return Err(AuthError::InvalidOneTimeToken);
        }
        self.audit
            .record(Entry::new(AuditKind::InvitationAccepted, now, caller).user(user));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invitation(nonce: &str) -> Invitation {
        Invitation {
            nonce: nonce.into(),
            expires_at: 1_000,
        }
    }

    #[test]
    fn tokens_are_stable_and_bound_to_user_email_and_record() {
        let dir = tempfile::tempdir().unwrap();
        let secret = LinkSecret::load_or_generate(dir.path()).unwrap();
        let user = UserId::new_random();
        let inv = invitation("n1");
        let token = secret.invitation_token(user, "a@x.io", &inv);
        assert_eq!(token.len(), 43, "256-bit tag, base64url");
        assert_eq!(token, secret.invitation_token(user, "a@x.io", &inv));
        assert!(secret.verify_invitation(user, "a@x.io", &inv, &token));
        assert!(!secret.verify_invitation(user, "b@x.io", &inv, &token));
        assert!(!secret.verify_invitation(UserId::new_random(), "a@x.io", &inv, &token));
        assert!(!secret.verify_invitation(user, "a@x.io", &invitation("n2"), &token));
        let mut later = inv.clone();
        later.expires_at += 1;
        assert!(!secret.verify_invitation(user, "a@x.io", &later, &token));
        assert!(!secret.verify_invitation(user, "a@x.io", &inv, "not base64 !"));
    }

    #[test]
    fn the_secret_persists_and_differs_between_directories() {
        let dir = tempfile::tempdir().unwrap();
        let user = UserId::new_random();
        let inv = invitation("n");
        let first = LinkSecret::load_or_generate(dir.path())
            .unwrap()
            .invitation_token(user, "a@x.io", &inv);
        let again = LinkSecret::load_or_generate(dir.path())
            .unwrap()
            .invitation_token(user, "a@x.io", &inv);
        assert_eq!(first, again);
        let other = tempfile::tempdir().unwrap();
        let foreign = LinkSecret::load_or_generate(other.path())
            .unwrap()
            .invitation_token(user, "a@x.io", &inv);
        assert_ne!(first, foreign);
    }
}
