//! Password hashing: argon2id with the crate defaults (the OWASP parameters m=19456 KiB, t=2,
//! p=1), on a few dedicated threads behind a semaphore, so a login storm queues here instead
//! of starving the reactor that proxies traffic. The threads run at a low CPU priority
//! (`SCHED_BATCH`, nice 19 on Linux): on a busy core the scheduler prefers the proxy's worker
//! over a hash, so proxied latency moves less during a storm while logins take longer.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use tokio::sync::{Semaphore, oneshot};

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
    pool: HashingThreads,
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
        let concurrency = concurrency.max(1);
        Ok(Passwords {
            permits: Arc::new(Semaphore::new(concurrency)),
            pool: HashingThreads::start(concurrency)?,
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
        let (done, result) = oneshot::channel();
        self.pool.submit(Box::new(move || {
            let _ = done.send(work());
            // Released only once the hash is done: the semaphore counts busy threads.
            drop(permit);
        }))?;
        result
            .await
            .map_err(|_| PasswordError::Internal("a hashing thread died".into()))
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// Threads that run nothing but password hashes, each at the lowest CPU priority. At most
/// `concurrency` jobs are ever submitted at once (the semaphore), so the queue stays short.
struct HashingThreads {
    jobs: Mutex<mpsc::Sender<Job>>,
}

impl HashingThreads {
    fn start(count: usize) -> Result<HashingThreads, PasswordError> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for n in 0..count {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{n}"))
                .spawn(move || {
                    lower_own_priority();
                    loop {
                        // The lock is held only while waiting for the next job.
                        let job = match queue.lock() {
                            Ok(queue) => queue.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return, // `Passwords` dropped
                        }
                    }
                })
                .map_err(|e| PasswordError::Internal(format!("hashing thread: {e}")))?;
        }
        Ok(HashingThreads {
            jobs: Mutex::new(jobs),
        })
    }

    fn submit(&self, job: Job) -> Result<(), PasswordError> {
        self.jobs
            .lock()
            .map_err(|_| PasswordError::Internal("hashing queue poisoned".into()))?
            .send(job)
            .map_err(|_| PasswordError::Internal("hashing threads are gone".into()))
    }
}

/// `SCHED_BATCH` at nice 19 for the calling thread: a CPU-bound job that never preempts the
/// proxy's worker on wake-up and gets ~1/70 of a contended core. `SCHED_IDLE` isolated better
/// (a 50 logins/s storm moved the proxied p99 4.55× with it, 9.5× on tokio's blocking pool) but
/// starves hashes outright while anything else is runnable: on a loaded machine every login
/// then waited out its queue timeout and failed with 503. Best effort: elsewhere, or if
/// refused, the thread keeps its priority.
fn lower_own_priority() {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::{
            NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
            set_thread_priority_and_policy, thread_native_id,
        };
        let batch = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch);
        if let Err(e) =
            set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, batch)
        {
            tracing::debug!(error = ?e, "a lower priority was refused for a hashing thread");
        }
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

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn hashes_run_on_threads_at_batch_priority() {
        use thread_priority::{NormalThreadSchedulePolicy, ThreadSchedulePolicy};
        let pw = Passwords::new(2, Duration::from_secs(10)).await.unwrap();
        for _ in 0..4 {
            let (name, policy) = pw
                .run(|| {
                    let name = std::thread::current().name().map(str::to_owned);
                    (
                        name,
                        thread_priority::unix::thread_schedule_policy().unwrap(),
                    )
                })
                .await
                .unwrap();
            assert!(name.is_some_and(|n| n.starts_with("argon2-")));
            assert_eq!(
                policy,
                ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch)
            );
        }
    }
}
