//! The validated-token cache on the per-request path: moka, keyed by a SHA-256 digest of the
//! token (fixed size, and a collision cannot forge a hit), each entry living until its
//! token's `exp`. The digest also covers who vouched for the token (this gateway's own
//! verification, or a named upstream's introspection), so an entry one validator wrote can
//! never satisfy another (the class of bug of Oathkeeper CVE-2026-33496).
//!
//! Revocation does not scan the cache: every cached [`Principal`] of a session shares one
//! [`SessionFlag`], so ending a session is one atomic store that all its tokens see at once.
//! The flag also holds when the session is next due for a re-check against the store (the
//! safety net behind the revocation feed, see `auth::layer`), so a hit pays one more atomic
//! load and comparison, and a session is re-checked once per interval however many tokens
//! and requests it has.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use http::HeaderValue;
use moka::Expiry;
use moka::future::Cache;

use crate::store::{Role, SessionId, UnixTime, UserId};

/// SHA-256 over the validator's tag and the token.
pub type TokenDigest = [u8; 32];

/// The tag of tokens this gateway signed and verifies itself.
pub const VOUCHED_LOCALLY: &[u8] = b"local";

pub fn token_digest(vouched_by: &[u8], token: &[u8]) -> TokenDigest {
    let mut context = digest::Context::new(&digest::SHA256);
    context.update(vouched_by);
    // NUL cannot occur in a tag or a token header value: tag and token stay separable.
    context.update(&[0]);
    context.update(token);
    let mut out = [0u8; 32];
    out.copy_from_slice(context.finish().as_ref());
    out
}

/// Shared by every cached token of one session; set when the session ends.
#[derive(Debug)]
pub struct SessionFlag {
    revoked: AtomicBool,
    /// Unix time from which a cache hit re-checks the session in the store. Starts at
    /// "never": the miss that caches the first principal sets it after reading the store.
    next_check: AtomicI64,
}

impl Default for SessionFlag {
    fn default() -> Self {
        SessionFlag {
            revoked: AtomicBool::new(false),
            next_check: AtomicI64::new(UnixTime::MAX),
        }
    }
}

impl SessionFlag {
    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    /// Every token of the session is rejected from now on.
    pub fn revoke(&self) {
        self.revoked.store(true, Ordering::Release);
    }

    /// The per-hit test: one load and one comparison.
    #[inline]
    pub fn recheck_due(&self, now: UnixTime) -> bool {
        now >= self.next_check.load(Ordering::Relaxed)
    }

    /// Of the hits that found a re-check due, exactly one gets `true` and must run it; the
    /// others go on with the cached verdict. Until the re-check reports with
    /// [`SessionFlag::checked_until`], the next one is due at `retry_at`.
    pub fn claim_recheck(&self, now: UnixTime, retry_at: UnixTime) -> bool {
        let due = self.next_check.load(Ordering::Relaxed);
        due <= now
            && self
                .next_check
                .compare_exchange(due, retry_at, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// The store confirmed the session; the next re-check is due at `next`.
    pub fn checked_until(&self, next: UnixTime) {
        self.next_check.store(next, Ordering::Relaxed);
    }
}

/// The identity behind a token this gateway issued itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalIdentity {
    pub user_id: UserId,
    pub session_id: SessionId,
    pub role: Role,
}

/// Who a valid token speaks for, with the identity headers pre-built so forwarding a request
/// clones a few `HeaderValue`s (reference counts) instead of formatting strings.
#[derive(Debug)]
pub struct Principal {
    /// Set for tokens of local mode; `None` for tokens an upstream vouched for.
    pub local: Option<LocalIdentity>,
    pub exp: UnixTime,
    pub user_id_header: Option<HeaderValue>,
    pub email_header: Option<HeaderValue>,
    pub role_header: Option<HeaderValue>,
    pub session: Arc<SessionFlag>,
}

impl Principal {
    /// A principal of a token this gateway issued.
    pub fn new(
        user_id: UserId,
        email: &str,
        role: Role,
        session_id: SessionId,
        exp: UnixTime,
        session: Arc<SessionFlag>,
    ) -> Principal {
        Principal {
            local: Some(LocalIdentity {
                user_id,
                session_id,
                role,
            }),
            exp,
            user_id_header: HeaderValue::try_from(user_id.to_string()).ok(),
            // An email with control characters cannot be a header; the upstream then gets
            // no email header rather than a broken one.
            email_header: HeaderValue::from_str(email).ok(),
            role_header: Some(HeaderValue::from_static(role.as_str())),
            session,
        }
    }

    /// A principal an upstream vouched for: identity headers only as far as it told us.
    pub fn vouched(
        user_id: Option<HeaderValue>,
        email: Option<HeaderValue>,
        role: Option<HeaderValue>,
        exp: UnixTime,
    ) -> Principal {
        Principal {
            local: None,
            exp,
            user_id_header: user_id,
            email_header: email,
            role_header: role,
            // Never registered: upstream-mode logout evicts the cache entry itself.
            session: Arc::new(SessionFlag::default()),
        }
    }
}

/// What the cache remembers about a token.
#[derive(Debug, Clone)]
pub enum Verdict {
    Valid(Arc<Principal>),
    /// Refused by an upstream: trusted until `until` (unix seconds).
    Invalid {
        until: UnixTime,
    },
}

impl Verdict {
    fn expires_at(&self) -> UnixTime {
        match self {
            Verdict::Valid(p) => p.exp,
            Verdict::Invalid { until } => *until,
        }
    }
}

struct UntilTokenExpiry;

impl Expiry<TokenDigest, Verdict> for UntilTokenExpiry {
    fn expire_after_create(
        &self,
        _key: &TokenDigest,
        value: &Verdict,
        _created_at: Instant,
    ) -> Option<Duration> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        Some(Duration::from_secs(
            value.expires_at().saturating_sub(now).max(0) as u64,
        ))
    }
}

/// The token cache and the registry of live [`SessionFlag`]s.
pub struct TokenCache {
    entries: Cache<TokenDigest, Verdict>,
    // Weak: a flag lives exactly as long as some cached principal holds it. Only misses and
    // revocations take this lock, never a cache hit.
    sessions: Mutex<HashMap<SessionId, Weak<SessionFlag>>>,
}

impl TokenCache {
    pub fn new(max_entries: u64) -> TokenCache {
        TokenCache {
            entries: Cache::builder()
                .max_capacity(max_entries)
                .expire_after(UntilTokenExpiry)
                .build(),
            sessions: Mutex::new(HashMap::new()),
        }
    }

    pub fn entries(&self) -> &Cache<TokenDigest, Verdict> {
        &self.entries
    }

    /// The flag all principals of `session` share. Take it BEFORE reading the session from
    /// the store: a revocation that lands in between then still finds and sets it.
    pub fn session_flag(&self, session: SessionId) -> Arc<SessionFlag> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(flag) = sessions.get(&session).and_then(Weak::upgrade) {
            return flag;
        }
        let flag = Arc::new(SessionFlag::default());
        sessions.insert(session, Arc::downgrade(&flag));
        flag
    }

    /// Every cached token of `session` is rejected from now on.
    pub fn revoke_session(&self, session: SessionId) {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(flag) = sessions.get(&session).and_then(Weak::upgrade) {
            flag.revoke();
        }
    }

    /// Drops registry entries no cached principal refers to any more.
    pub fn prune_sessions(&self) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|_, flag| flag.strong_count() > 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(cache: &TokenCache, sid: SessionId, exp: UnixTime) -> Arc<Principal> {
        Arc::new(Principal::new(
            UserId::new_random(),
            "a@example.com",
            Role::User,
            sid,
            exp,
            cache.session_flag(sid),
        ))
    }

    #[test]
    fn digest_is_fixed_size_and_distinguishes_tokens() {
        assert_ne!(token_digest(b"t", b"a.b.c"), token_digest(b"t", b"a.b.d"));
        assert_eq!(token_digest(b"t", b"a.b.c"), token_digest(b"t", b"a.b.c"));
    }

    #[tokio::test]
    async fn revoking_a_session_flags_every_cached_token_of_it() {
        let cache = TokenCache::new(100);
        let sid = SessionId::new_random();
        let other = SessionId::new_random();
        let far = i64::MAX / 4;
        let a = principal(&cache, sid, far);
        let b = principal(&cache, sid, far);
        let c = principal(&cache, other, far);
        cache.entries.insert([1; 32], Verdict::Valid(a)).await;
        cache.entries.insert([2; 32], Verdict::Valid(b)).await;
        cache.entries.insert([3; 32], Verdict::Valid(c)).await;

        cache.revoke_session(sid);
        let revoked = |v: Option<Verdict>| match v {
            Some(Verdict::Valid(p)) => p.session.is_revoked(),
            other => panic!("expected a valid entry, got {other:?}"),
        };
        assert!(revoked(cache.entries.get(&[1; 32]).await));
        assert!(revoked(cache.entries.get(&[2; 32]).await));
        assert!(!revoked(cache.entries.get(&[3; 32]).await));
    }

    #[tokio::test]
    async fn a_flag_taken_before_revocation_sees_it() {
        let cache = TokenCache::new(100);
        let sid = SessionId::new_random();
        let flag = cache.session_flag(sid);
        cache.revoke_session(sid);
        assert!(flag.is_revoked());
    }

    #[test]
    fn one_hit_claims_a_due_recheck_and_a_fresh_flag_is_never_due() {
        let flag = SessionFlag::default();
        assert!(
            !flag.recheck_due(i64::MAX - 1),
            "not due before the first check"
        );
        flag.checked_until(100);
        assert!(!flag.recheck_due(99));
        assert!(flag.recheck_due(100));
        assert!(!flag.claim_recheck(99, 105), "not yet due");
        assert!(flag.claim_recheck(100, 105));
        assert!(!flag.claim_recheck(100, 105), "claimed once");
        assert!(
            !flag.recheck_due(104),
            "the claim postponed it to the retry time"
        );
        assert!(flag.claim_recheck(105, 110), "a failed re-check is retried");
    }

    #[test]
    fn registry_forgets_sessions_nobody_holds() {
        let cache = TokenCache::new(100);
        let sid = SessionId::new_random();
        drop(cache.session_flag(sid));
        cache.prune_sessions();
        assert!(cache.sessions.lock().unwrap().is_empty());
    }

    #[test]
    fn identity_headers_are_prebuilt() {
        let cache = TokenCache::new(10);
        let p = principal(&cache, SessionId::new_random(), 10);
        assert_eq!(p.role_header.as_ref().unwrap(), "user");
        assert_eq!(p.email_header.as_ref().unwrap(), "a@example.com");
        let local = p.local.unwrap();
        assert_eq!(
            p.user_id_header.as_ref().unwrap().to_str().unwrap(),
            local.user_id.to_string()
        );
    }

    #[tokio::test]
    async fn an_entry_vouched_for_by_one_validator_never_serves_another() {
        let cache = TokenCache::new(10);
        let token = b"the.same.token";
        let by_upstream = token_digest(b"introspect:meiro", token);
        cache
            .entries
            .insert(
                by_upstream,
                Verdict::Valid(Arc::new(Principal::vouched(None, None, None, i64::MAX / 4))),
            )
            .await;
        assert!(cache.entries.get(&by_upstream).await.is_some());
        assert!(
            cache
                .entries
                .get(&token_digest(VOUCHED_LOCALLY, token))
                .await
                .is_none()
        );
        assert!(
            cache
                .entries
                .get(&token_digest(b"introspect:other", token))
                .await
                .is_none()
        );
    }
}
