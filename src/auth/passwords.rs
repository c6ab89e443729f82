//! Password hashing: argon2id with the crate defaults (the OWASP parameters m=19456 KiB, t=2,
//! p=1), always on the blocking pool behind a small semaphore so a login storm queues here
//! instead of starving the reactor that proxies traffic.

use std::sync::Arc;
use std::time::Duration;

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use tokio::sync::Semaphore;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// Every hashing slot stayed busy for the whole queue timeout.
    #[error("password hashing is overloaded")]
    Busy,
    #[error("password hashing failed: {0}")]
    Internal(String),
}

pub struct Passwords {
    permits: Arc<Semaphore>,
    queue_timeout: Duration,
    /// Verified against when the account does not exist or has no password, so such
    /// attempts cost the same time as a wrong password.
    dummy_hash: Arc<str>,
}

impl Passwords {
    pub async fn new(concurrency: usize, queue_timeout: Duration) -> Result<Self, PasswordError> {
        let dummy_hash = tokio::task::spawn_blocking(|| hash_now(b"meiro-gate timing equaliser"))
            .await
            .map_err(|e| PasswordError::Internal(e.to_string()))??;
        Ok(Passwords {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            queue_timeout,
            dummy_hash: dummy_hash.into(),
        })
    }

    /// A PHC string (`$argon2id$v=19$m=19456,t=2,p=1$…`).
    pub async fn hash(&self, password: String) -> Result<String, PasswordError> {
        self.run(move || hash_now(password.as_bytes())).await?
    }

    /// `hash: None` (unknown user, or no password set) still spends one verification.
    pub async fn verify(
        &self,
        password: String,
        hash: Option<String>,
    ) -> Result<bool, PasswordError> {
        let dummy = self.dummy_hash.clone();
        self.run(move || {
            let (phc, real) = match &hash {
                Some(h) => (h.as_str(), true),
                None => (&*dummy, false),
            };
            let ok = Argon2::default()
                .verify_password(password.as_bytes(), phc)
                .is_ok();
            ok && real
        })
        .await
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PasswordError> {
        let permit = tokio::time::timeout(self.queue_timeout, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| PasswordError::Busy)?
            .map_err(|e| PasswordError::Internal(e.to_string()))?;
        tokio::task::spawn_blocking(move || {
            let result = work();
            drop(permit);
            result
        })
        .await
        .map_err(|e| PasswordError::Internal(e.to_string()))
    }
}

/// Hashes once on the blocking pool, outside the login semaphore: for the CLI and bootstrap,
/// which run before or beside the gateway, never per request.
pub async fn hash_standalone(password: String) -> Result<String, PasswordError> {
    tokio::task::spawn_blocking(move || hash_now(password.as_bytes()))
        .await
        .map_err(|e| PasswordError::Internal(e.to_string()))?
}

/// The password policy (`auth.password_min_length`, and not the email); `Err` says which
/// rule failed, in words for the user.
pub fn check_password_policy(password: &str, email: &str, min_length: usize) -> Result<(), String> {
    if password.chars().count() < min_length {
        return Err(format!(
            "Password must be at least {min_length} characters long"
        ));
    }
    if password.trim().eq_ignore_ascii_case(email.trim()) {
        return Err("Password must not be the same as the email".into());
    }
    Ok(())
}

fn hash_now(password: &[u8]) -> Result<String, PasswordError> {
    Argon2::default()
        .hash_password(password)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_with_owasp_argon2id_parameters_and_verifies() {
        let pw = Passwords::new(1, Duration::from_secs(10)).await.unwrap();
        let hash = pw.hash("correct horse battery".into()).await.unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(
            pw.verify("correct horse battery".into(), Some(hash.clone()))
                .await
                .unwrap()
        );
        assert!(!pw.verify("wrong".into(), Some(hash)).await.unwrap());
    }

    #[tokio::test]
    async fn a_missing_hash_never_verifies() {
        let pw = Passwords::new(1, Duration::from_secs(10)).await.unwrap();
        assert!(
            !pw.verify("meiro-gate timing equaliser".into(), None)
                .await
                .unwrap()
        );
    }

    #[test]
    fn policy_requires_length_and_differs_from_email() {
        assert!(check_password_policy("short", "a@b.c", 12).is_err());
        assert!(check_password_policy("longenough@x.io", "LongEnough@x.io", 12).is_err());
        assert!(check_password_policy("a sufficiently long one", "a@b.c", 12).is_ok());
        assert!(check_password_policy("eight ch", "a@b.c", 8).is_ok());
    }

    #[tokio::test]
    async fn a_full_queue_answers_busy() {
        let pw = Passwords::new(1, Duration::from_millis(10)).await.unwrap();
        let _held = pw.permits.clone().acquire_owned().await.unwrap();
        assert!(matches!(
            pw.hash("x".into()).await,
            Err(PasswordError::Busy)
        ));
    }
}
