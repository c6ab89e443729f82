//! Backend-independent conformance checks for [`Store`] implementations: every backend's tests
//! call [`run_all`] on a freshly opened store, so all of them honour the same trait contract.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::Barrier;
use uuid::Uuid;

use super::{NewUser, Role, Rotation, Session, SessionId, Store, StoreError, UnixTime, UserId};

/// Base clock of the checks. `prune` works far below it so it never touches other checks' rows.
const T0: UnixTime = 1_700_000_000;
const HOUR: i64 = 3_600;

/// Runs every check in order. The store must be dedicated to the run (no other writers), since
/// the revocation-feed and prune checks assert exact contents; it may already hold data,
/// including from an earlier run.
pub async fn run_all(store: Arc<dyn Store>) {
    let s = store.as_ref();
    ping(s).await;
    create_and_fetch_user(s).await;
    duplicate_email_is_case_insensitive(s).await;
    list_users_oldest_first(s).await;
    record_login(s).await;
    session_round_trip(s).await;
    disable_revokes_sessions(s).await;
    rotate_compare_and_swap(s).await;
    concurrent_rotations_have_one_winner(store.clone()).await;
    revoke_session_is_idempotent(s).await;
    revoke_user_sessions(s).await;
    revocation_feed_cursor(s).await;
    prune(s).await;
}

/// An email no other check (or earlier run) uses.
fn unique_email(tag: &str) -> String {
    format!("{tag}-{}@example.test", Uuid::new_v4())
}

fn new_user(email: &str, created: UnixTime) -> NewUser {
    NewUser {
        email: email.to_owned(),
        password_hash: None,
        role: Role::User,
        invitation_pending: false,
        created,
    }
}

async fn user(store: &dyn Store, tag: &str) -> UserId {
    store
        .create_user(new_user(&unique_email(tag), T0))
        .await
        .expect("create_user")
        .id
}

fn new_session(user: UserId, created: UnixTime, expires_at: UnixTime) -> Session {
    Session {
        id: SessionId::new_random(),
        user_id: user,
        created,
        expires_at,
        revoked_at: None,
        current_jti: Uuid::new_v4(),
        refresh_count: 0,
        last_refresh_at: None,
    }
}

async fn open_session(store: &dyn Store, user: UserId) -> Session {
    let session = new_session(user, T0, T0 + 24 * HOUR);
    store
        .create_session(&session)
        .await
        .expect("create_session");
    session
}

async fn fetch_session(store: &dyn Store, id: SessionId) -> Session {
    store
        .session(id)
        .await
        .expect("session")
        .unwrap_or_else(|| panic!("session {id} should exist"))
}

async fn feed_ids_since(store: &dyn Store, after: i64) -> Vec<SessionId> {
    store
        .revocations_since(after, 10_000)
        .await
        .expect("revocations_since")
        .into_iter()
        .map(|r| r.session_id)
        .collect()
}

fn set<T: Ord + Copy>(items: &[T]) -> BTreeSet<T> {
    items.iter().copied().collect()
}

pub async fn ping(store: &dyn Store) {
    store.ping().await.expect("ping");
}

pub async fn create_and_fetch_user(store: &dyn Store) {
    let before = store.count_users().await.expect("count_users");
    let email = unique_email("create");
    let created = store
        .create_user(NewUser {
            email: email.clone(),
            password_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into()),
            role: Role::Admin,
            invitation_pending: true,
            created: T0 + 5,
        })
        .await
        .expect("create_user");
    assert_eq!(created.email, email);
    assert_eq!(created.role, Role::Admin);
    assert!(created.password_hash.is_some(), "password hash kept");
    assert!(created.invitation_pending, "invitation_pending kept");
    assert_eq!(created.created, T0 + 5);
    assert!(
        !created.disabled && !created.deleted && !created.sso_enabled,
        "flags default to false: {created:?}"
    );
    assert_eq!(created.last_login, None);
    assert_eq!(
        store.count_users().await.expect("count_users"),
        before + 1,
        "count_users counts the new user"
    );

    let by_email = store.user_by_email(&email).await.expect("user_by_email");
    assert_eq!(by_email.as_ref(), Some(&created), "fetch by exact email");
    let by_mixed_case = store
        .user_by_email(&email.to_uppercase())
        .await
        .expect("user_by_email");
    assert_eq!(
        by_mixed_case.as_ref(),
        Some(&created),
        "email lookup is case-insensitive"
    );
    let by_id = store.user_by_id(created.id).await.expect("user_by_id");
    assert_eq!(by_id.as_ref(), Some(&created), "fetch by id");

    assert_eq!(
        store
            .user_by_email(&unique_email("nobody"))
            .await
            .expect("user_by_email"),
        None,
        "unknown email"
    );
    assert_eq!(
        store
            .user_by_id(UserId::new_random())
            .await
            .expect("user_by_id"),
        None,
        "unknown id"
    );
}

pub async fn duplicate_email_is_case_insensitive(store: &dyn Store) {
    let email = unique_email("dup");
    store
        .create_user(new_user(&email, T0))
        .await
        .expect("first create_user");
    let before = store.count_users().await.expect("count_users");

    let same = store.create_user(new_user(&email, T0)).await;
    assert!(
        matches!(same, Err(StoreError::DuplicateEmail)),
        "same email: expected DuplicateEmail, got {same:?}"
    );
    let shouting = store.create_user(new_user(&email.to_uppercase(), T0)).await;
    assert!(
        matches!(shouting, Err(StoreError::DuplicateEmail)),
        "email differing only in case: expected DuplicateEmail, got {shouting:?}"
    );
    assert_eq!(
        store.count_users().await.expect("count_users"),
        before,
        "rejected users are not stored"
    );
}

pub async fn list_users_oldest_first(store: &dyn Store) {
    // Inserted out of creation order, so insertion order alone cannot pass the check.
    let emails = [
        (unique_email("list-c"), T0 + 30),
        (unique_email("list-a"), T0 + 10),
        (unique_email("list-b"), T0 + 20),
    ];
    for (email, created) in &emails {
        store
            .create_user(new_user(email, *created))
            .await
            .expect("create_user");
    }
    let ours: Vec<UnixTime> = store
        .list_users()
        .await
        .expect("list_users")
        .into_iter()
        .filter(|u| emails.iter().any(|(e, _)| *e == u.email))
        .map(|u| u.created)
        .collect();
    assert_eq!(
        ours,
        vec![T0 + 10, T0 + 20, T0 + 30],
        "list_users is oldest first"
    );
}

pub async fn record_login(store: &dyn Store) {
    let id = user(store, "login").await;
    store
        .record_login(id, T0 + 100)
        .await
        .expect("record_login");
    let u = store
        .user_by_id(id)
        .await
        .expect("user_by_id")
        .expect("user");
    assert_eq!(u.last_login, Some(T0 + 100));
    store
        .record_login(id, T0 + 200)
        .await
        .expect("record_login");
    let u = store
        .user_by_id(id)
        .await
        .expect("user_by_id")
        .expect("user");
    assert_eq!(u.last_login, Some(T0 + 200), "later login overwrites");
}

pub async fn session_round_trip(store: &dyn Store) {
    let owner = user(store, "session").await;
    let mut session = new_session(owner, T0, T0 + HOUR);
    session.refresh_count = 3;
    session.last_refresh_at = Some(T0 + 10);
    store
        .create_session(&session)
        .await
        .expect("create_session");
    assert_eq!(fetch_session(store, session.id).await, session);
    assert_eq!(
        store
            .session(SessionId::new_random())
            .await
            .expect("session"),
        None,
        "unknown session"
    );

    let orphan = new_session(UserId::new_random(), T0, T0 + HOUR);
    assert!(
        store.create_session(&orphan).await.is_err(),
        "a session must belong to an existing user"
    );
}

pub async fn disable_revokes_sessions(store: &dyn Store) {
    let email = unique_email("disable");
    let owner = store
        .create_user(new_user(&email, T0))
        .await
        .expect("create_user")
        .id;
    let a = open_session(store, owner).await;
    let b = open_session(store, owner).await;
    let already = open_session(store, owner).await;
    assert!(
        store
            .revoke_session(already.id, T0 + 1)
            .await
            .expect("revoke_session")
    );
    let bystander = open_session(store, user(store, "bystander").await).await;
    let cursor = store.revocation_cursor().await.expect("revocation_cursor");

    let disabled = store
        .set_user_disabled(&email, true, T0 + 50)
        .await
        .expect("set_user_disabled")
        .expect("known user");
    assert!(disabled.disabled, "returned user is disabled");
    assert!(!disabled.is_active());
    let stored = store.user_by_id(owner).await.expect("user_by_id");
    assert_eq!(stored.as_ref(), Some(&disabled), "disabled flag persisted");

    for s in [&a, &b] {
        assert_eq!(
            fetch_session(store, s.id).await.revoked_at,
            Some(T0 + 50),
            "disabling revokes open session {}",
            s.id
        );
    }
    assert_eq!(
        fetch_session(store, already.id).await.revoked_at,
        Some(T0 + 1),
        "an already revoked session keeps its revocation time"
    );
    assert_eq!(
        fetch_session(store, bystander.id).await.revoked_at,
        None,
        "other users' sessions are untouched"
    );
    let fed = feed_ids_since(store, cursor).await;
    assert_eq!(fed.len(), 2, "one feed entry per revoked session: {fed:?}");
    assert_eq!(set(&fed), set(&[a.id, b.id]));

    let cursor = store.revocation_cursor().await.expect("revocation_cursor");
    let enabled = store
        .set_user_disabled(&email, false, T0 + 60)
        .await
        .expect("set_user_disabled")
        .expect("known user");
    assert!(!enabled.disabled, "returned user is enabled again");
    for s in [&a, &b] {
        assert_eq!(
            fetch_session(store, s.id).await.revoked_at,
            Some(T0 + 50),
            "enabling does not resurrect session {}",
            s.id
        );
    }
    assert_eq!(
        store.revocation_cursor().await.expect("revocation_cursor"),
        cursor,
        "enabling adds nothing to the feed"
    );

    assert!(
        store
            .set_user_disabled(&unique_email("ghost"), true, T0)
            .await
            .expect("set_user_disabled")
            .is_none(),
        "unknown email yields None"
    );
}

pub async fn rotate_compare_and_swap(store: &dyn Store) {
    let session = open_session(store, user(store, "rotate").await).await;
    let (j0, j1, j2) = (session.current_jti, Uuid::new_v4(), Uuid::new_v4());

    let r = store
        .rotate_session_token(session.id, j0, j1, T0 + 10)
        .await
        .expect("rotate");
    assert_eq!(r, Rotation::Rotated, "current jti rotates");
    let s = fetch_session(store, session.id).await;
    assert_eq!(s.current_jti, j1);
    assert_eq!(s.refresh_count, 1);
    assert_eq!(s.last_refresh_at, Some(T0 + 10));

    let r = store
        .rotate_session_token(session.id, j0, j2, T0 + 20)
        .await
        .expect("rotate");
    assert_eq!(r, Rotation::NotCurrent, "a replayed jti is not current");
    assert_eq!(
        fetch_session(store, session.id).await,
        s,
        "a failed rotation changes nothing"
    );

    let r = store
        .rotate_session_token(session.id, j1, j2, T0 + 30)
        .await
        .expect("rotate");
    assert_eq!(r, Rotation::Rotated, "the new jti rotates in turn");
    assert_eq!(fetch_session(store, session.id).await.refresh_count, 2);

    let r = store
        .rotate_session_token(SessionId::new_random(), j2, Uuid::new_v4(), T0 + 40)
        .await
        .expect("rotate");
    assert_eq!(r, Rotation::Gone, "unknown session");

    assert!(
        store
            .revoke_session(session.id, T0 + 50)
            .await
            .expect("revoke_session")
    );
    let r = store
        .rotate_session_token(session.id, j2, Uuid::new_v4(), T0 + 60)
        .await
        .expect("rotate");
    assert_eq!(
        r,
        Rotation::Gone,
        "revoked session, even with its current jti"
    );
    assert_eq!(fetch_session(store, session.id).await.current_jti, j2);
}

/// Needs a store whose connections really run in parallel (a file, not a one-connection
/// in-memory pool) to be a meaningful race, but must hold for any store.
pub async fn concurrent_rotations_have_one_winner(store: Arc<dyn Store>) {
    const RACERS: usize = 8;
    let session = open_session(store.as_ref(), user(store.as_ref(), "race").await).await;
    let (id, presented) = (session.id, session.current_jti);
    let barrier = Arc::new(Barrier::new(RACERS));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..RACERS {
        let (store, barrier) = (store.clone(), barrier.clone());
        let new_jti = Uuid::new_v4();
        tasks.spawn(async move {
            barrier.wait().await;
            let outcome = store
                .rotate_session_token(id, presented, new_jti, T0 + 10)
                .await
                .expect("rotate");
            (outcome, new_jti)
        });
    }
    let outcomes = tasks.join_all().await;
    let winners: Vec<Uuid> = outcomes
        .iter()
        .filter(|(o, _)| *o == Rotation::Rotated)
        .map(|(_, jti)| *jti)
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "exactly one concurrent rotation wins: {outcomes:?}"
    );
    assert!(
        outcomes
            .iter()
            .all(|(o, _)| matches!(o, Rotation::Rotated | Rotation::NotCurrent)),
        "losers see NotCurrent: {outcomes:?}"
    );
    let s = fetch_session(store.as_ref(), id).await;
    assert_eq!(s.current_jti, winners[0], "the winner's jti is current");
    assert_eq!(s.refresh_count, 1, "only one refresh counted");
}

pub async fn revoke_session_is_idempotent(store: &dyn Store) {
    let session = open_session(store, user(store, "revoke").await).await;
    let cursor = store.revocation_cursor().await.expect("revocation_cursor");

    assert!(
        store
            .revoke_session(session.id, T0 + 10)
            .await
            .expect("revoke_session"),
        "first revocation revokes"
    );
    assert!(
        !store
            .revoke_session(session.id, T0 + 20)
            .await
            .expect("revoke_session"),
        "second revocation is a no-op"
    );
    assert_eq!(
        fetch_session(store, session.id).await.revoked_at,
        Some(T0 + 10),
        "the first revocation time sticks"
    );
    assert!(
        !store
            .revoke_session(SessionId::new_random(), T0)
            .await
            .expect("revoke_session"),
        "unknown session is a no-op"
    );
    assert_eq!(
        feed_ids_since(store, cursor).await,
        vec![session.id],
        "exactly one feed entry"
    );
}

pub async fn revoke_user_sessions(store: &dyn Store) {
    let owner = user(store, "revoke-all").await;
    let a = open_session(store, owner).await;
    let b = open_session(store, owner).await;
    let already = open_session(store, owner).await;
    store
        .revoke_session(already.id, T0 + 1)
        .await
        .expect("revoke_session");
    let bystander = open_session(store, user(store, "bystander").await).await;
    let cursor = store.revocation_cursor().await.expect("revocation_cursor");

    let revoked = store
        .revoke_user_sessions(owner, T0 + 10)
        .await
        .expect("revoke_user_sessions");
    assert_eq!(revoked.len(), 2, "only open sessions: {revoked:?}");
    assert_eq!(set(&revoked), set(&[a.id, b.id]));
    for s in [&a, &b] {
        assert_eq!(fetch_session(store, s.id).await.revoked_at, Some(T0 + 10));
    }
    assert_eq!(
        fetch_session(store, already.id).await.revoked_at,
        Some(T0 + 1)
    );
    assert_eq!(fetch_session(store, bystander.id).await.revoked_at, None);
    assert_eq!(set(&feed_ids_since(store, cursor).await), set(&revoked));

    assert!(
        store
            .revoke_user_sessions(owner, T0 + 20)
            .await
            .expect("revoke_user_sessions")
            .is_empty(),
        "nothing left to revoke"
    );
    assert!(
        store
            .revoke_user_sessions(UserId::new_random(), T0)
            .await
            .expect("revoke_user_sessions")
            .is_empty(),
        "unknown user"
    );
}

pub async fn revocation_feed_cursor(store: &dyn Store) {
    let owner = user(store, "feed").await;
    let start = store.revocation_cursor().await.expect("revocation_cursor");
    assert!(start >= 0);
    assert!(
        store
            .revocations_since(start, 10)
            .await
            .expect("revocations_since")
            .is_empty(),
        "nothing after the cursor"
    );

    let mut sessions = Vec::new();
    for i in 0..3 {
        let s = open_session(store, owner).await;
        store
            .revoke_session(s.id, T0 + i)
            .await
            .expect("revoke_session");
        sessions.push(s.id);
    }

    let all = store
        .revocations_since(start, 10)
        .await
        .expect("revocations_since");
    assert_eq!(
        all.iter().map(|r| r.session_id).collect::<Vec<_>>(),
        sessions,
        "feed is in revocation order"
    );
    assert!(all[0].seq > start, "seqs are above the old cursor");
    assert!(
        all.windows(2).all(|w| w[0].seq < w[1].seq),
        "seqs strictly increase: {all:?}"
    );
    assert_eq!(
        store.revocation_cursor().await.expect("revocation_cursor"),
        all[2].seq,
        "cursor is the newest seq"
    );

    let limited = store
        .revocations_since(start, 2)
        .await
        .expect("revocations_since");
    assert_eq!(limited, all[..2], "limit keeps the oldest entries");
    let rest = store
        .revocations_since(limited[1].seq, 2)
        .await
        .expect("revocations_since");
    assert_eq!(rest, all[2..], "seq > after is exclusive");
    assert!(
        store
            .revocations_since(start, 0)
            .await
            .expect("revocations_since")
            .is_empty(),
        "limit 0 yields nothing"
    );
    assert!(
        store
            .revocations_since(all[2].seq, 10)
            .await
            .expect("revocations_since")
            .is_empty(),
        "caught up"
    );
}

pub async fn prune(store: &dyn Store) {
    // Times far below T0, so no other check's rows are old enough to be pruned.
    const BEFORE: UnixTime = 2_000;
    let owner = user(store, "prune").await;
    let cursor = store.revocation_cursor().await.expect("revocation_cursor");

    let expired = new_session(owner, 1_000, 1_500);
    let boundary = new_session(owner, 1_000, BEFORE);
    let live = new_session(owner, 1_000, 3_000);
    for s in [&expired, &boundary, &live] {
        store.create_session(s).await.expect("create_session");
    }
    // An old revocation entry (pruned) and one exactly at the boundary (kept).
    store
        .revoke_session(expired.id, 1_200)
        .await
        .expect("revoke_session");
    store
        .revoke_session(boundary.id, BEFORE)
        .await
        .expect("revoke_session");

    let deleted = store.prune(BEFORE).await.expect("prune");
    assert_eq!(
        deleted, 2,
        "one expired session and one old feed entry are deleted"
    );
    assert_eq!(
        store.session(expired.id).await.expect("session"),
        None,
        "expired session pruned"
    );
    assert!(
        store.session(boundary.id).await.expect("session").is_some(),
        "a session ending exactly at `before` is kept"
    );
    assert!(
        store.session(live.id).await.expect("session").is_some(),
        "live session kept"
    );
    assert_eq!(
        feed_ids_since(store, cursor).await,
        vec![boundary.id],
        "only the old feed entry is pruned"
    );
    assert!(
        store.user_by_id(owner).await.expect("user_by_id").is_some(),
        "users are never pruned"
    );
    assert_eq!(store.prune(BEFORE).await.expect("prune"), 0, "idempotent");
}
