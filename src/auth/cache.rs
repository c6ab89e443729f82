//! The validated-token cache on the per-request path: moka, keyed by a digest of the token
//! (fixed size, and a collision cannot forge a hit). A hit checks the token's `exp` and its
//! session's revocation flag; [`TokenCache::sweep`] (periodically) frees the entries either
//! has ended, and moka's size bound evicts the least useful. The digest also covers who
//! vouched for the token (this gateway's own verification, or a named upstream's
//! introspection), so an entry one validator wrote can never satisfy another (the class of
//! bug of Oathkeeper CVE-2026-33496).
//!
//! An entry is small because what tokens have in common is shared, not copied: a cached
//! token is a [`Grant`] of two words — its `exp` and its [`CachedSession`] (one per
//! session), which points to its user's [`Principal`] with the pre-built identity headers
//! (one per user); most of what an entry costs is moka's own bookkeeping (the README's
//! benchmarks have the measured figure).
//!
//! Revocation does not scan the cache: every cached token of a session shares one
//! [`CachedSession`], so ending a session is one atomic store that all its tokens see at once.
//! The flag also holds when the session is next due for a re-check against the store (the
//! safety net behind the revocation feed, see `auth::check`), so a hit pays one more atomic
//! load and comparison, and a session is re-checked once per interval however many tokens
//! and requests it has.
//!
//! Open connections (WebSockets, streamed responses) wait on [`CachedSession::ended`]: the
//! change that ends the session wakes them, so they close the moment the cache learns of it.
//! A session nobody keeps a connection open for pays nothing for this: the waiters are listed
//! beside the sessions (`auth::watchers`), and a session only carries one bit saying it has
//! some.

use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use aws_lc_rs::digest;
use http::HeaderValue;
use moka::future::Cache;

use super::registry::{Registered, Registry};
use super::tokens::is_expired;
use super::watchers;
use crate::store::{Role, SessionId, UnixTime, UserId};

/// The first 128 bits of SHA-256 over the validator's tag and the token. Finding a token
/// whose digest equals a cached one's is a second preimage on 128 bits (~2^128 hashes), so
/// the truncation cannot forge a hit; it halves the key moka stores twice per entry.
pub type TokenDigest = u128;

/// The tag of tokens this gateway signed and verifies itself.
pub const VOUCHED_LOCALLY: &[u8] = b"local";

pub fn token_digest(vouched_by: &[u8], token: &[u8]) -> TokenDigest {
    let mut context = digest::Context::new(&digest::SHA256);
    context.update(vouched_by);
    // NUL cannot occur in a tag or a token header value: tag and token stay separable.
    context.update(&[0]);
    context.update(token);
    let mut first = [0u8; 16];
    first.copy_from_slice(&context.finish().as_ref()[..16]);
    u128::from_le_bytes(first)
}

/// One session as the cache knows it, shared by every cached token of it: who it speaks
/// for, and the flag set when it ends.
#[derive(Debug)]
pub struct CachedSession {
    /// `None` for tokens an upstream vouched for: this gateway knows no session of theirs.
    id: Option<SessionId>,
    /// [`Standing`] as bits (stale: 1, revoked: 2, both only ever set) and [`WATCHED`]: the
    /// one load a hit pays for it.
    standing: AtomicU8,
    /// Unix time from which a cache hit re-checks the session in the store. Starts at
    /// "never": the miss that caches the first token sets it after reading the store.
    next_check: AtomicI64,
    /// Set once the store has named the session's user: the session is registered before
    /// that read (see [`TokenCache::session`]). A session never changes users; when the
    /// user's role or email changes, the session is marked [`Standing::Stale`] and its tokens
    /// are loaded again with a new one.
    principal: OnceLock<Arc<Principal>>,
}

/// The bit of [`CachedSession::standing`] set once a connection has waited on the session's
/// end: only then does ending it look for waiters to wake.
const WATCHED: u8 = 0x80;

impl CachedSession {
    fn new(id: Option<SessionId>) -> CachedSession {
        CachedSession {
            id,
            standing: AtomicU8::new(Standing::Live as u8),
            next_check: AtomicI64::new(UnixTime::MAX),
            principal: OnceLock::new(),
        }
    }

    /// Who the session speaks for; `principal` unless one is set already.
    pub fn bind(&self, principal: impl FnOnce() -> Arc<Principal>) {
        self.principal.get_or_init(principal);
    }

    pub fn principal(&self) -> Option<&Principal> {
        self.principal.get().map(|p| &**p)
    }

    pub fn standing(&self) -> Standing {
        Standing::of(self.standing.load(Ordering::Acquire))
    }

    pub fn is_revoked(&self) -> bool {
        self.standing() == Standing::Revoked
    }

    /// Every token of the session is rejected from now on, and its open connections close.
    pub fn revoke(&self) {
        self.move_to(Standing::Revoked);
    }

    /// Who the session speaks for has changed: its cached tokens are loaded again on their
    /// next use, and the connections opened under the old identity close. A revoked session
    /// stays revoked.
    pub fn mark_stale(&self) {
        self.move_to(Standing::Stale);
    }

    /// Sets `standing`'s bit (a session only moves up, so OR-ing is the whole transition),
    /// and wakes the waiters if there may be some.
    fn move_to(&self, standing: Standing) {
        let before = self.standing.fetch_or(standing as u8, Ordering::AcqRel);
        if before & WATCHED != 0 {
            watchers::wake(self.address());
        }
    }

    fn address(&self) -> usize {
        std::ptr::from_ref(self) as usize
    }

    /// Resolves once the session is no longer live: why, for the connection that waited. For
    /// the long-lived connections a session opened (tunnels, streamed responses) — never for
    /// an ordinary request, which checked the standing when it was authenticated.
    pub async fn ended(self: Arc<Self>) -> Ending {
        let watch = watchers::watch(self.address());
        loop {
            // Both sides read-modify-write the one byte, so they are ordered: either the
            // session ends after this sets WATCHED (and then wakes `woken`, which counts from
            // its creation, polled or not), or this sees it ended.
            let woken = watch.notify.notified();
            let before = self.standing.fetch_or(WATCHED, Ordering::AcqRel);
            match Standing::of(before) {
                Standing::Live => woken.await,
                Standing::Stale => return Ending::IdentityChanged,
                Standing::Revoked => return Ending::SessionEnded,
            }
        }
    }

    /// The per-hit test: one load and one comparison.
    #[inline]
    pub fn recheck_due(&self, now: UnixTime) -> bool {
        now >= self.next_check.load(Ordering::Relaxed)
    }

    /// Of the hits that found a re-check due, exactly one gets `true` and must run it; the
    /// others go on with the cached verdict. Until the re-check reports with
    /// [`CachedSession::checked_until`], the next one is due at `retry_at`.
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

/// Where a [`CachedSession`] stands. A session only moves up (live → stale → revoked), never
/// back; the values are bits, and revoked wins over stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Standing {
    Live = 0,
    /// Its user's identity (email, role) changed: the tokens' next use loads the session
    /// again, under a fresh [`CachedSession`].
    Stale = 1,
    Revoked = 2,
}

impl Standing {
    fn of(bits: u8) -> Standing {
        if bits & Standing::Revoked as u8 != 0 {
            Standing::Revoked
        } else if bits & Standing::Stale as u8 != 0 {
            Standing::Stale
        } else {
            Standing::Live
        }
    }
}

/// Why a session's open connections were closed (the `reason` of their metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Logout, refresh-token reuse, the user disabled or deleted, a password reset or change.
    SessionEnded,
    /// The user's role or email changed: what the connection was allowed as no longer holds.
    IdentityChanged,
}

impl Ending {
    pub fn as_str(self) -> &'static str {
        match self {
            Ending::SessionEnded => "session_ended",
            Ending::IdentityChanged => "identity_changed",
        }
    }
}

impl Registered for CachedSession {
    type Key = SessionId;
    fn key(&self) -> Option<SessionId> {
        self.id
    }
}

/// The identity behind a token this gateway issued itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalIdentity {
    pub user_id: UserId,
    pub session_id: SessionId,
    pub role: Role,
}

/// Who tokens speak for, with the identity headers pre-built so forwarding a request clones
/// a few `HeaderValue`s (reference counts) instead of formatting strings. One per user,
/// shared by all the user's cached tokens.
#[derive(Debug)]
pub struct Principal {
    /// Set for users of local mode; `None` for identities an upstream vouched for.
    pub local: Option<(UserId, Role)>,
    pub user_id_header: Option<HeaderValue>,
    pub email_header: Option<HeaderValue>,
    pub role_header: Option<HeaderValue>,
}

impl Principal {
    /// A user of this gateway.
    pub fn new(user_id: UserId, email: &str, role: Role) -> Principal {
        Principal {
            local: Some((user_id, role)),
            user_id_header: HeaderValue::try_from(user_id.to_string()).ok(),
            // An email with control characters cannot be a header; the upstream then gets
            // no email header rather than a broken one.
            email_header: HeaderValue::from_str(email).ok(),
            role_header: Some(HeaderValue::from_static(role.as_str())),
        }
    }

    /// An identity an upstream vouched for: headers only as far as it told us.
    pub fn vouched(
        user_id: Option<HeaderValue>,
        email: Option<HeaderValue>,
        role: Option<HeaderValue>,
    ) -> Principal {
        Principal {
            local: None,
            user_id_header: user_id,
            email_header: email,
            role_header: role,
        }
    }

    /// The role the principal holds: this gateway's own for its users, the role header an
    /// upstream vouched with otherwise (`None` when it named none this gateway knows).
    pub fn role(&self) -> Option<Role> {
        match self.local {
            Some((_, role)) => Some(role),
            None => Role::parse(self.role_header.as_ref()?.to_str().ok()?),
        }
    }

    /// Does this principal still describe the user as the store does?
    pub fn same_identity(&self, user_id: UserId, email: &str, role: Role) -> bool {
        self.local == Some((user_id, role))
            && self.email_header.as_ref().map(HeaderValue::as_bytes) == Some(email.as_bytes())
    }
}

impl Registered for Principal {
    type Key = UserId;
    fn key(&self) -> Option<UserId> {
        self.local.map(|(user_id, _)| user_id)
    }
}

/// What a valid token grants: its session (and through it, who it speaks for) until `exp`.
/// The value of a cache entry: two words, because moka's per-entry allocation grows with
/// the value's size; cloning it takes one reference count.
#[derive(Debug, Clone)]
pub struct Grant {
    pub exp: UnixTime,
    pub session: Arc<CachedSession>,
}

impl Grant {
    /// A grant an upstream vouched for, until `exp`.
    pub fn vouched(principal: Principal, exp: UnixTime) -> Grant {
        // Never registered: upstream-mode logout evicts the cache entry itself.
        let session = CachedSession::new(None);
        session.bind(|| Arc::new(principal));
        Grant {
            exp,
            session: Arc::new(session),
        }
    }

    /// Who the token speaks for (always known for a grant the cache holds).
    pub fn principal(&self) -> Option<&Principal> {
        self.session.principal()
    }

    /// The user and session of a token this gateway issued.
    pub fn local(&self) -> Option<LocalIdentity> {
        let (user_id, role) = self.principal()?.local?;
        Some(LocalIdentity {
            user_id,
            session_id: self.session.id?,
            role,
        })
    }
}

/// The token cache and the registries of live [`CachedSession`]s and [`Principal`]s.
pub struct TokenCache {
    entries: Cache<TokenDigest, Grant>,
    sessions: Registry<CachedSession>,
    principals: Registry<Principal>,
}

impl TokenCache {
    pub fn new(max_entries: u64) -> TokenCache {
        TokenCache {
            // No per-entry expiry: moka's timer-wheel node would cost ~48 bytes per entry
            // (a tenth of it). A hit checks `exp` anyway; `sweep` drops the dead entries.
            entries: Cache::builder().max_capacity(max_entries).build(),
            sessions: Registry::new(),
            principals: Registry::new(),
        }
    }

    pub fn entries(&self) -> &Cache<TokenDigest, Grant> {
        &self.entries
    }

    /// Entries, settled first: moka maintains its counts lazily (`/metrics`).
    pub async fn entry_count(&self) -> u64 {
        self.entries.run_pending_tasks().await;
        self.entries.entry_count()
    }

    /// The state all tokens of `session` share (a fresh one in place of a stale one). Take it
    /// BEFORE reading the session from the store: a revocation that lands in between then
    /// still finds and sets its flag.
    pub fn session(&self, session: SessionId) -> Arc<CachedSession> {
        self.sessions.get_or_insert(
            session,
            |cached| cached.standing() != Standing::Stale,
            || CachedSession::new(Some(session)),
        )
    }

    /// The principal of a user as the store describes them now: the shared one while it
    /// still says the same, else a new one (tokens cached earlier keep the old one until
    /// they expire or are revoked).
    pub fn principal(&self, user_id: UserId, email: &str, role: Role) -> Arc<Principal> {
        self.principals.get_or_insert(
            user_id,
            |principal| principal.same_identity(user_id, email, role),
            || Principal::new(user_id, email, role),
        )
    }

    /// Every cached token of `session` is rejected from now on.
    pub fn revoke_session(&self, session: SessionId) {
        if let Some(flag) = self.sessions.get(session) {
            flag.revoke();
        }
    }

    /// The user of `session` changed email or role: its cached tokens are loaded again on
    /// their next use, so the identity headers follow.
    pub fn refresh_session(&self, session: SessionId) {
        if let Some(flag) = self.sessions.get(session) {
            flag.mark_stale();
        }
    }

    /// Drops the entries of expired tokens and of ended sessions (a hit refuses them anyway;
    /// this frees their memory) and returns how many. The scan runs on a blocking thread, so
    /// a million entries (~0.1 s) never hold up a runtime worker.
    pub async fn sweep(&self, now: UnixTime) -> usize {
        let entries = self.entries.clone();
        let dead = tokio::task::spawn_blocking(move || {
            entries
                .iter()
                .filter(|(_, grant)| grant.session.is_revoked() || is_expired(grant.exp, now))
                .map(|(key, _)| *key)
                .collect::<Vec<TokenDigest>>()
        })
        .await
        .unwrap_or_default();
        for (i, key) in dead.iter().enumerate() {
            self.entries.invalidate(key).await;
            if i % 1024 == 1023 {
                tokio::task::yield_now().await;
            }
        }
        dead.len()
    }

    /// Drops registry entries no cached token refers to any more.
    pub fn prune_sessions(&self) {
        self.sessions.prune();
        self.principals.prune();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(cache: &TokenCache, sid: SessionId, user: UserId, exp: UnixTime) -> Grant {
        let session = cache.session(sid);
        session.bind(|| cache.principal(user, "a@example.com", Role::User));
        Grant { exp, session }
    }

    #[test]
    fn digest_is_fixed_size_and_distinguishes_tokens() {
        assert_ne!(token_digest(b"t", b"a.b.c"), token_digest(b"t", b"a.b.d"));
        assert_eq!(token_digest(b"t", b"a.b.c"), token_digest(b"t", b"a.b.c"));
        // The first half of SHA-256("t\0a.b.c"), little-endian.
        let full = digest::digest(&digest::SHA256, b"t\0a.b.c");
        assert_eq!(
            token_digest(b"t", b"a.b.c").to_le_bytes(),
            full.as_ref()[..16]
        );
    }

    #[tokio::test]
    async fn revoking_a_session_flags_every_cached_token_of_it() {
        let cache = TokenCache::new(100);
        let sid = SessionId::new_random();
        let other = SessionId::new_random();
        let user = UserId::new_random();
        let far = i64::MAX / 4;
        cache.entries.insert(1, grant(&cache, sid, user, far)).await;
        cache.entries.insert(2, grant(&cache, sid, user, far)).await;
        cache
            .entries
            .insert(3, grant(&cache, other, user, far))
            .await;

        cache.revoke_session(sid);
        let revoked = |g: Option<Grant>| g.expect("cached").session.is_revoked();
        assert!(revoked(cache.entries.get(&1).await));
        assert!(revoked(cache.entries.get(&2).await));
        assert!(!revoked(cache.entries.get(&3).await));
    }

    #[tokio::test]
    async fn a_flag_taken_before_revocation_sees_it() {
        let cache = TokenCache::new(100);
        let sid = SessionId::new_random();
        let session = cache.session(sid);
        cache.revoke_session(sid);
        assert!(session.is_revoked());
    }

    #[tokio::test]
    async fn open_connections_learn_when_their_session_ends_and_why() {
        let cache = TokenCache::new(10);
        let (sid, other) = (SessionId::new_random(), SessionId::new_random());
        let waiting = tokio::spawn(cache.session(sid).ended());
        let bystander = tokio::spawn(cache.session(other).ended());
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "live: still waiting");
        cache.revoke_session(sid);
        let why = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("woken by the revocation")
            .unwrap();
        assert_eq!(why, Ending::SessionEnded);
        assert!(
            !bystander.is_finished(),
            "another session's waiter sleeps on"
        );
        // A waiter that comes after the end returns at once.
        assert_eq!(cache.session(sid).ended().await, Ending::SessionEnded);
        cache.refresh_session(other);
        let why = tokio::time::timeout(std::time::Duration::from_secs(5), bystander)
            .await
            .expect("woken by the identity change")
            .unwrap();
        assert_eq!(why, Ending::IdentityChanged);
        // Done waiting: nothing of theirs is left in the list of waiters.
        for sid in [sid, other] {
            let session = cache.session(sid);
            assert!(!watchers::has_waiters(session.address()));
        }
    }

    #[test]
    fn a_session_only_moves_up_whatever_else_its_byte_holds() {
        let session = CachedSession::new(None);
        session.standing.fetch_or(WATCHED, Ordering::Relaxed);
        assert_eq!(session.standing(), Standing::Live);
        session.mark_stale();
        assert_eq!(session.standing(), Standing::Stale);
        session.revoke();
        assert_eq!(session.standing(), Standing::Revoked);
        session.mark_stale();
        assert_eq!(session.standing(), Standing::Revoked, "never back");
    }

    #[test]
    fn one_hit_claims_a_due_recheck_and_a_fresh_flag_is_never_due() {
        let flag = CachedSession::new(None);
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
    fn registries_forget_sessions_and_users_nobody_holds() {
        let cache = TokenCache::new(100);
        let kept = grant(&cache, SessionId::new_random(), UserId::new_random(), 10);
        drop(grant(
            &cache,
            SessionId::new_random(),
            UserId::new_random(),
            10,
        ));
        cache.prune_sessions();
        assert_eq!(cache.sessions.len(), 1);
        assert_eq!(cache.principals.len(), 1);
        drop(kept);
        cache.prune_sessions();
        assert_eq!(cache.sessions.len(), 0);
        assert_eq!(cache.principals.len(), 0);
    }

    #[test]
    fn a_users_tokens_share_one_principal_until_the_user_changes() {
        let cache = TokenCache::new(100);
        let user = UserId::new_random();
        let a = cache.principal(user, "a@example.com", Role::User);
        let b = cache.principal(user, "a@example.com", Role::User);
        assert!(Arc::ptr_eq(&a, &b), "same user, same principal");
        let promoted = cache.principal(user, "a@example.com", Role::Admin);
        assert!(
            !Arc::ptr_eq(&a, &promoted),
            "a role change builds a new one"
        );
        assert_eq!(promoted.role_header.as_ref().unwrap(), "admin");
        let renamed = cache.principal(user, "b@example.com", Role::Admin);
        assert_eq!(renamed.email_header.as_ref().unwrap(), "b@example.com");
        let other = cache.principal(UserId::new_random(), "b@example.com", Role::Admin);
        assert!(!Arc::ptr_eq(&renamed, &other), "never shared across users");
    }

    #[tokio::test]
    async fn a_sweep_frees_expired_and_revoked_tokens_only() {
        let cache = TokenCache::new(100);
        let (user, ended) = (UserId::new_random(), SessionId::new_random());
        let now = 1_000;
        cache
            .entries
            .insert(1, grant(&cache, SessionId::new_random(), user, now - 1))
            .await;
        cache
            .entries
            .insert(2, grant(&cache, ended, user, now + 60))
            .await;
        cache
            .entries
            .insert(3, grant(&cache, SessionId::new_random(), user, now + 60))
            .await;
        cache.revoke_session(ended);
        cache.entries.run_pending_tasks().await;

        assert_eq!(cache.sweep(now).await, 2);
        cache.entries.run_pending_tasks().await;
        assert!(cache.entries.get(&1).await.is_none(), "expired");
        assert!(cache.entries.get(&2).await.is_none(), "revoked");
        assert!(cache.entries.get(&3).await.is_some(), "live");
        // moka frees a removed entry's value through epoch-based reclamation, which can lag a
        // moment behind the removal (seen on a loaded machine): prune until it has caught up.
        for _ in 0..200 {
            cache.entries.run_pending_tasks().await;
            cache.prune_sessions();
            if cache.sessions.len() == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(
            cache.sessions.len(),
            1,
            "only the live token's session stays"
        );
    }

    #[test]
    fn a_session_speaks_for_the_user_it_was_first_bound_to() {
        let cache = TokenCache::new(10);
        let sid = SessionId::new_random();
        let user = UserId::new_random();
        let first = grant(&cache, sid, user, 10);
        let later = cache.session(sid);
        later.bind(|| panic!("already bound: not rebuilt"));
        assert!(Arc::ptr_eq(&first.session, &later));
        assert_eq!(later.principal().unwrap().local, Some((user, Role::User)));
    }

    #[test]
    fn identity_headers_are_prebuilt_and_the_local_identity_joins_user_and_session() {
        let cache = TokenCache::new(10);
        let (sid, user) = (SessionId::new_random(), UserId::new_random());
        let g = grant(&cache, sid, user, 10);
        let principal = g.principal().expect("bound");
        assert_eq!(principal.role_header.as_ref().unwrap(), "user");
        assert_eq!(principal.email_header.as_ref().unwrap(), "a@example.com");
        assert_eq!(
            principal.user_id_header.as_ref().unwrap().to_str().unwrap(),
            user.to_string()
        );
        assert_eq!(
            g.local(),
            Some(LocalIdentity {
                user_id: user,
                session_id: sid,
                role: Role::User
            })
        );
        let vouched = Grant::vouched(Principal::vouched(None, None, None), 10);
        assert_eq!(vouched.local(), None);
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
                Grant::vouched(Principal::vouched(None, None, None), i64::MAX / 4),
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
