//! Backend-independent conformance checks for [`Store`] implementations: every backend's tests
//! run each check as a test of its own ([`conformance_tests`]) and all of them in a row on one
//! store ([`run_all`]), so all of them honour the same trait contract.

use std::collections::BTreeSet;
use std::sync::Arc;

use sqlx::migrate::{Migration, Migrator};
use tokio::sync::Barrier;
use uuid::Uuid;

use super::{
    AuditEvent, AuditFilter, Invitation, InvitationAcceptance, NewUser, PasswordReset,
    ResetCompletion, Role, Rotation, Session, SessionId, Store, StoreError, ThrottleAttempt,
    TokenSwap, UnixTime, User, UserId,
};

/// Base clock of the checks. `prune` works far below it so it never touches other checks' rows.
pub(crate) const T0: UnixTime = 1_700_000_000;
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
    invitation_round_trip(s).await;
    accept_invitation(s).await;
    concurrent_accepts_have_one_winner(store.clone()).await;
    password_reset_round_trip(s).await;
    new_reset_supersedes_older_ones(s).await;
    complete_password_reset(s).await;
    throttle_windows(s).await;
    concurrent_reservations_stop_at_the_limit(store.clone()).await;
    prune(s).await;
    audit_trail(s).await;
    prune_audit(s).await;
    users_pages_are_stable_and_complete(s).await;
    change_user_ends_or_updates_sessions(s).await;
    the_last_active_admin_remains(s).await;
    concurrent_demotions_leave_an_admin(store.clone()).await;
}

/// One test per check for a backend, named after the check (`…::conformance::prune`), so a
/// failure names its case. `$on_fresh_store` is an `async fn(&'static str, check)` of the
/// backend's tests that opens a store dedicated to the check (as [`run_all`] requires) and runs
/// `check(store)` on it; the `&str` is the case's name. Lists the same checks as [`run_all`]: a
/// new check goes in both.
macro_rules! conformance_tests {
    // `$attrs` is one bracketed group of attributes for every generated test (e.g. the
    // PostgreSQL backend's `#[cfg_attr(not(postgres_tests), ignore = ...)]`), taken as one
    // token tree so it can be repeated once per case.
    (@borrowing $attrs:tt $on_fresh_store:path; $($case:ident)*) => {$(
        $crate::store::suite::conformance_tests!(@one $attrs $on_fresh_store; $case; as_ref);
    )*};
    (@sharing $attrs:tt $on_fresh_store:path; $($case:ident)*) => {$(
        $crate::store::suite::conformance_tests!(@one $attrs $on_fresh_store; $case; clone);
    )*};
    (@one [$($attr:tt)*] $on_fresh_store:path; $case:ident; as_ref) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        $($attr)*
        async fn $case() {
            $on_fresh_store(concat!("conformance::", stringify!($case)), |store| async move {
                $crate::store::suite::$case(store.as_ref()).await
            })
            .await;
        }
    };
    (@one [$($attr:tt)*] $on_fresh_store:path; $case:ident; clone) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        $($attr)*
        async fn $case() {
            $on_fresh_store(concat!("conformance::", stringify!($case)), |store| async move {
                $crate::store::suite::$case(store).await
            })
            .await;
        }
    };
    ($on_fresh_store:path) => {
        $crate::store::suite::conformance_tests!($on_fresh_store, []);
    };
    ($on_fresh_store:path, $attrs:tt) => {
        $crate::store::suite::conformance_tests!(@borrowing $attrs $on_fresh_store;
            ping create_and_fetch_user duplicate_email_is_case_insensitive
            list_users_oldest_first record_login session_round_trip
            disable_revokes_sessions rotate_compare_and_swap revoke_session_is_idempotent
            revoke_user_sessions revocation_feed_cursor invitation_round_trip accept_invitation
            password_reset_round_trip new_reset_supersedes_older_ones complete_password_reset
            throttle_windows prune audit_trail prune_audit users_pages_are_stable_and_complete
            change_user_ends_or_updates_sessions the_last_active_admin_remains);
        $crate::store::suite::conformance_tests!(@sharing $attrs $on_fresh_store;
            concurrent_rotations_have_one_winner concurrent_accepts_have_one_winner
            concurrent_reservations_stop_at_the_limit concurrent_demotions_leave_an_admin);
    };
}

pub(crate) use conformance_tests;

/// The per-account limit's counter: counts up to the limit, refuses with the seconds left,
/// takes a refund back, and starts over once the window has ended.
pub async fn throttle_windows(store: &dyn Store) {
    let key = unique_email("throttle");
    let t0: UnixTime = 1_700_000_000;
    let login = ThrottleAttempt {
        scope: "login",
        key: &key,
        limit: 2,
        window: 60,
    };
    let reset = ThrottleAttempt {
        scope: "reset",
        ..login
    };
    let reserve = |now| store.throttle_reserve(login, now);
    assert_eq!(reserve(t0).await.unwrap(), Ok(t0));
    assert_eq!(reserve(t0 + 10).await.unwrap(), Ok(t0), "same window");
    assert_eq!(
        reserve(t0 + 20).await.unwrap(),
        Err(40),
        "full until t0 + 60"
    );
    assert_eq!(
        store.throttle_reserve(reset, t0 + 20).await.unwrap(),
        Ok(t0 + 20),
        "scopes are separate"
    );
    store.throttle_refund("login", &key, t0).await.unwrap();
    assert_eq!(
        reserve(t0 + 30).await.unwrap(),
        Ok(t0),
        "the refund freed one"
    );
    assert_eq!(reserve(t0 + 59).await.unwrap(), Err(1));
    assert_eq!(reserve(t0 + 60).await.unwrap(), Ok(t0 + 60), "a new window");
    store.throttle_refund("login", &key, t0).await.unwrap();
    assert_eq!(reserve(t0 + 61).await.unwrap(), Ok(t0 + 60));
    assert_eq!(
        reserve(t0 + 62).await.unwrap(),
        Err(58),
        "a refund for an ended window changes nothing"
    );
}

/// Many concurrent reservations of one key (replicas racing): exactly `limit` pass.
pub async fn concurrent_reservations_stop_at_the_limit(store: Arc<dyn Store>) {
    let key = unique_email("throttle-race");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (store, key) = (store.clone(), key.clone());
        tasks.spawn(async move {
            let attempt = ThrottleAttempt {
                scope: "login",
                key: &key,
                limit: 5,
                window: 900,
            };
            store
                .throttle_reserve(attempt, 1_700_000_000)
                .await
                .unwrap()
        });
    }
    let passed = tasks.join_all().await.iter().filter(|r| r.is_ok()).count();
    assert_eq!(passed, 5);
}

/// An email no other check (or earlier run) uses.
fn unique_email(tag: &str) -> String {
    format!("{tag}-{}@example.test", Uuid::new_v4())
}

pub(crate) fn new_user(email: &str, created: UnixTime) -> NewUser {
    NewUser {
        email: email.to_owned(),
        password_hash: None,
        role: Role::User,
        invitation_pending: false,
        invitation: None,
        sso_enabled: false,
        created,
    }
}

/// The number a `SELECT COUNT(*)` statement answers.
pub(crate) async fn count_rows<'c, E>(executor: E, count: &'static str) -> i64
where
    E: sqlx::Executor<'c>,
    (i64,): for<'r> sqlx::FromRow<'r, <E::Database as sqlx::Database>::Row>,
    <E::Database as sqlx::Database>::Arguments: sqlx::IntoArguments<E::Database>,
{
    sqlx::query_scalar(count).fetch_one(executor).await.unwrap()
}

/// A pool of one connection to the database of `options` with only the first of `migrations`
/// applied, as the first release left it.
pub(crate) async fn first_release_pool<DB>(
    options: <DB::Connection as sqlx::Connection>::Options,
    migrations: Vec<Migration>,
) -> sqlx::Pool<DB>
where
    DB: sqlx::Database,
    DB::Connection: sqlx::migrate::Migrate,
{
    let pool = sqlx::pool::PoolOptions::<DB>::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap();
    Migrator::with_migrations(migrations.into_iter().take(1).collect())
        .run(&pool)
        .await
        .unwrap();
    pool
}

/// The user a backend's upgrade test inserted (`old@example.test`, id `id`, password `hash`,
/// an admin, pending) as the upgraded store reads it back.
pub(crate) async fn upgraded_user(store: &dyn Store, id: Uuid) -> User {
    let user = store
        .user_by_email("old@example.test")
        .await
        .unwrap()
        .expect("user survives the upgrade");
    assert_eq!(user.id, UserId(id));
    assert_eq!(user.password_hash.as_deref(), Some("hash"));
    assert_eq!(user.role, Role::Admin);
    assert!(user.invitation_pending);
    assert_eq!(user.invitation, None, "no invitation before migration 2");
    user
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

async fn fetch_user(store: &dyn Store, id: UserId) -> User {
    store
        .user_by_id(id)
        .await
        .expect("user_by_id")
        .unwrap_or_else(|| panic!("user {id} should exist"))
}

/// A fresh invitation: nonces are random, like the real ones.
fn invitation(expires_at: UnixTime) -> Invitation {
    Invitation {
        nonce: Uuid::new_v4().simple().to_string(),
        expires_at,
    }
}

async fn invited_user(store: &dyn Store, tag: &str, invitation: &Invitation) -> User {
    store
        .create_user(NewUser {
            email: unique_email(tag),
            password_hash: None,
            role: Role::User,
            invitation_pending: true,
            invitation: Some(invitation.clone()),
            sso_enabled: false,
            created: T0,
        })
        .await
        .expect("create_user")
}

async fn user_with_password(store: &dyn Store, tag: &str, password_hash: &str) -> User {
    store
        .create_user(NewUser {
            password_hash: Some(password_hash.to_owned()),
            ..new_user(&unique_email(tag), T0)
        })
        .await
        .expect("create_user")
}

/// A reset with a random digest shaped like the real ones (64 lower-case hex digits).
fn new_reset(user: UserId, created: UnixTime, expires_at: UnixTime) -> PasswordReset {
    PasswordReset {
        digest: format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple()),
        user_id: user,
        created,
        expires_at,
        used_at: None,
    }
}

async fn fetch_reset(store: &dyn Store, digest: &str) -> PasswordReset {
    store
        .password_reset(digest)
        .await
        .expect("password_reset")
        .unwrap_or_else(|| panic!("reset {digest} should exist"))
}

/// The checks after a bulk revocation of a user's two open sessions: the user's session revoked
/// earlier (at `T0 + 1`) and another user's are untouched, and the feed since `cursor` holds
/// exactly two entries, which it returns.
async fn others_untouched_and_two_fed(
    store: &dyn Store,
    already: &Session,
    bystander: &Session,
    cursor: i64,
) -> Vec<SessionId> {
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
    fed
}

pub(crate) use super::suite_users::*;

/// `items` in order, for comparing lists whose order is not specified.
pub(crate) fn sorted<T: Ord + Copy>(items: &[T]) -> Vec<T> {
    let mut items = items.to_vec();
    items.sort();
    items
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
            invitation: None,
            sso_enabled: false,
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
    assert_eq!(created.invitation, None, "no invitation given, none stored");
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
    let u = fetch_user(store, id).await;
    assert_eq!(u.last_login, Some(T0 + 100));
    store
        .record_login(id, T0 + 200)
        .await
        .expect("record_login");
    let u = fetch_user(store, id).await;
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
    let fed = others_untouched_and_two_fed(store, &already, &bystander, cursor).await;
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
    let swap = |presented_jti, new_jti| TokenSwap {
        session: session.id,
        presented_jti,
        new_jti,
    };

    let r = store
        .rotate_session_token(swap(j0, j1), T0 + 10)
        .await
        .expect("rotate");
    assert_eq!(r, Rotation::Rotated, "current jti rotates");
    let s = fetch_session(store, session.id).await;
    assert_eq!(s.current_jti, j1);
    assert_eq!(s.refresh_count, 1);
    assert_eq!(s.last_refresh_at, Some(T0 + 10));

    let r = store
        .rotate_session_token(swap(j0, j2), T0 + 20)
        .await
        .expect("rotate");
    assert_eq!(r, Rotation::NotCurrent, "a replayed jti is not current");
    assert_eq!(
        fetch_session(store, session.id).await,
        s,
        "a failed rotation changes nothing"
    );

    let r = store
        .rotate_session_token(swap(j1, j2), T0 + 30)
        .await
        .expect("rotate");
    assert_eq!(r, Rotation::Rotated, "the new jti rotates in turn");
    assert_eq!(fetch_session(store, session.id).await.refresh_count, 2);

    let unknown = TokenSwap {
        session: SessionId::new_random(),
        ..swap(j2, Uuid::new_v4())
    };
    let r = store
        .rotate_session_token(unknown, T0 + 40)
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
        .rotate_session_token(swap(j2, Uuid::new_v4()), T0 + 60)
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
    let (id, presented_jti) = (session.id, session.current_jti);
    let barrier = Arc::new(Barrier::new(RACERS));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..RACERS {
        let (store, barrier) = (store.clone(), barrier.clone());
        let new_jti = Uuid::new_v4();
        let swap = TokenSwap {
            session: id,
            presented_jti,
            new_jti,
        };
        tasks.spawn(async move {
            barrier.wait().await;
            let outcome = store
                .rotate_session_token(swap, T0 + 10)
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

pub async fn invitation_round_trip(store: &dyn Store) {
    let first = invitation(T0 + HOUR);
    let invited = invited_user(store, "invite", &first).await;
    assert_eq!(invited.invitation, Some(first.clone()), "invitation kept");
    assert!(invited.invitation_pending);
    assert!(!invited.is_active(), "a pending user is not active");
    assert_eq!(invited.password_hash, None);
    assert_eq!(
        fetch_user(store, invited.id).await,
        invited,
        "fetch by id shows the invitation"
    );
    assert_eq!(
        store
            .user_by_email(&invited.email)
            .await
            .expect("user_by_email")
            .as_ref(),
        Some(&invited),
        "fetch by email shows the invitation"
    );
    assert!(
        store
            .list_users()
            .await
            .expect("list_users")
            .contains(&invited),
        "list_users shows the invitation"
    );

    let second = invitation(T0 + 2 * HOUR);
    let renewed = store
        .renew_invitation(invited.id, &second, Role::Admin)
        .await
        .expect("renew_invitation")
        .expect("a pending user can be re-invited");
    assert_eq!(
        renewed,
        User {
            role: Role::Admin,
            invitation: Some(second),
            ..invited.clone()
        },
        "renewal changes nonce, expiry and role, and nothing else"
    );
    assert_eq!(
        fetch_user(store, invited.id).await,
        renewed,
        "renewal stored"
    );

    let active = user_with_password(store, "not-invited", "$argon2id$active").await;
    assert_eq!(
        store
            .renew_invitation(active.id, &invitation(T0 + HOUR), Role::Admin)
            .await
            .expect("renew_invitation"),
        None,
        "a user who is not pending cannot be re-invited"
    );
    assert_eq!(
        fetch_user(store, active.id).await,
        active,
        "a refused renewal changes nothing"
    );
    assert_eq!(
        store
            .renew_invitation(UserId::new_random(), &invitation(T0 + HOUR), Role::User)
            .await
            .expect("renew_invitation"),
        None,
        "unknown user"
    );
}

pub async fn accept_invitation(store: &dyn Store) {
    const HASH: &str = "$argon2id$accepted";
    let inv = invitation(T0 + HOUR);
    let invited = invited_user(store, "accept", &inv).await;
    let other = invited_user(store, "accept-other", &invitation(T0 + HOUR)).await;

    let refused = [
        (invited.id, "wrong-nonce".to_owned(), T0 + 10, "wrong nonce"),
        (
            invited.id,
            other.invitation.clone().expect("invited").nonce,
            T0 + 10,
            "another user's nonce",
        ),
        (
            invited.id,
            inv.nonce.clone(),
            inv.expires_at,
            "expired exactly at expires_at",
        ),
        (invited.id, inv.nonce.clone(), inv.expires_at + 1, "expired"),
        (
            other.id,
            inv.nonce.clone(),
            T0 + 10,
            "nonce of another user's invitation",
        ),
        (
            UserId::new_random(),
            inv.nonce.clone(),
            T0 + 10,
            "unknown user",
        ),
    ];
    for (user, nonce, at, why) in refused {
        let acceptance = InvitationAcceptance {
            user,
            nonce: &nonce,
            password_hash: HASH,
        };
        assert!(
            !store
                .accept_invitation(acceptance, at)
                .await
                .expect("accept_invitation"),
            "{why}: refused"
        );
    }
    assert_eq!(
        fetch_user(store, invited.id).await,
        invited,
        "refused accepts change nothing"
    );
    assert_eq!(fetch_user(store, other.id).await, other);

    let acceptance = InvitationAcceptance {
        user: invited.id,
        nonce: &inv.nonce,
        password_hash: HASH,
    };
    assert!(
        store
            .accept_invitation(acceptance, inv.expires_at - 1)
            .await
            .expect("accept_invitation"),
        "the right nonce before expiry is accepted"
    );
    let accepted = fetch_user(store, invited.id).await;
    assert_eq!(
        accepted,
        User {
            password_hash: Some(HASH.to_owned()),
            invitation_pending: false,
            invitation: None,
            ..invited.clone()
        },
        "accepting sets the password and clears the invitation"
    );
    assert!(accepted.is_active(), "an accepted user is active");

    let again = InvitationAcceptance {
        password_hash: "$argon2id$again",
        ..acceptance
    };
    assert!(
        !store
            .accept_invitation(again, T0 + 20)
            .await
            .expect("accept_invitation"),
        "an invitation is spent once"
    );
    assert_eq!(
        fetch_user(store, invited.id).await,
        accepted,
        "a second accept changes nothing"
    );
    assert_eq!(
        store
            .renew_invitation(invited.id, &invitation(T0 + HOUR), Role::User)
            .await
            .expect("renew_invitation"),
        None,
        "an accepted user cannot be re-invited"
    );

    // Renewal makes the earlier link stop working.
    let old = other.invitation.clone().expect("invited");
    let new = invitation(T0 + HOUR);
    store
        .renew_invitation(other.id, &new, Role::User)
        .await
        .expect("renew_invitation")
        .expect("pending user");
    let with_old = InvitationAcceptance {
        user: other.id,
        nonce: &old.nonce,
        password_hash: HASH,
    };
    assert!(
        !store
            .accept_invitation(with_old, T0 + 10)
            .await
            .expect("accept_invitation"),
        "a renewed invitation's old nonce is refused"
    );
    let with_new = InvitationAcceptance {
        nonce: &new.nonce,
        ..with_old
    };
    assert!(
        store
            .accept_invitation(with_new, T0 + 10)
            .await
            .expect("accept_invitation"),
        "the renewed nonce is accepted"
    );
}

/// Like [`concurrent_rotations_have_one_winner`]: meaningful on a file store.
pub async fn concurrent_accepts_have_one_winner(store: Arc<dyn Store>) {
    const RACERS: usize = 8;
    let inv = invitation(T0 + HOUR);
    let id = invited_user(store.as_ref(), "accept-race", &inv).await.id;
    let barrier = Arc::new(Barrier::new(RACERS));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..RACERS {
        let (store, barrier, nonce) = (store.clone(), barrier.clone(), inv.nonce.clone());
        let hash = format!("$argon2id$racer-{i}");
        tasks.spawn(async move {
            barrier.wait().await;
            let acceptance = InvitationAcceptance {
                user: id,
                nonce: &nonce,
                password_hash: &hash,
            };
            let won = store
                .accept_invitation(acceptance, T0 + 10)
                .await
                .expect("accept_invitation");
            (won, hash)
        });
    }
    let outcomes = tasks.join_all().await;
    let winners: Vec<&String> = outcomes
        .iter()
        .filter(|(won, _)| *won)
        .map(|(_, hash)| hash)
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "exactly one concurrent accept wins: {outcomes:?}"
    );
    let u = fetch_user(store.as_ref(), id).await;
    assert_eq!(
        u.password_hash.as_ref(),
        Some(winners[0]),
        "the winner's password is set"
    );
    assert!(u.is_active());
}

pub async fn password_reset_round_trip(store: &dyn Store) {
    let owner = user(store, "reset").await;
    let mut reset = new_reset(owner, T0, T0 + HOUR);
    store
        .create_password_reset(&reset)
        .await
        .expect("create_password_reset");
    assert_eq!(fetch_reset(store, &reset.digest).await, reset);
    assert_eq!(
        store
            .password_reset(&new_reset(owner, T0, T0).digest)
            .await
            .expect("password_reset"),
        None,
        "unknown digest"
    );

    // A reset created already used (not something callers do) keeps its used_at.
    reset = new_reset(user(store, "reset-used").await, T0, T0 + HOUR);
    reset.used_at = Some(T0 + 1);
    store
        .create_password_reset(&reset)
        .await
        .expect("create_password_reset");
    assert_eq!(fetch_reset(store, &reset.digest).await, reset);
}

pub async fn new_reset_supersedes_older_ones(store: &dyn Store) {
    let owner = user(store, "supersede").await;
    let first = new_reset(owner, T0, T0 + HOUR);
    store
        .create_password_reset(&first)
        .await
        .expect("create_password_reset");
    let bystander = new_reset(user(store, "supersede-bystander").await, T0, T0 + HOUR);
    store
        .create_password_reset(&bystander)
        .await
        .expect("create_password_reset");

    let second = new_reset(owner, T0 + 10, T0 + 10 + HOUR);
    store
        .create_password_reset(&second)
        .await
        .expect("create_password_reset");
    assert_eq!(
        fetch_reset(store, &first.digest).await.used_at,
        Some(T0 + 10),
        "the newer reset marks the older one used at its creation"
    );
    assert_eq!(
        fetch_reset(store, &second.digest).await,
        second,
        "the newer reset is unused"
    );
    assert_eq!(
        fetch_reset(store, &bystander.digest).await,
        bystander,
        "other users' resets are untouched"
    );
    let superseded = ResetCompletion {
        digest: &first.digest,
        user: owner,
        password_hash: "$argon2id$superseded",
    };
    assert_eq!(
        store
            .complete_password_reset(superseded, T0 + 20)
            .await
            .expect("complete_password_reset"),
        None,
        "a superseded reset cannot be spent"
    );

    let third = new_reset(owner, T0 + 30, T0 + 30 + HOUR);
    store
        .create_password_reset(&third)
        .await
        .expect("create_password_reset");
    assert_eq!(
        fetch_reset(store, &first.digest).await.used_at,
        Some(T0 + 10),
        "an already used reset keeps its time"
    );
    assert_eq!(
        fetch_reset(store, &second.digest).await.used_at,
        Some(T0 + 30)
    );
    assert_eq!(fetch_user(store, owner).await.password_hash, None);

    let orphan = new_reset(UserId::new_random(), T0, T0 + HOUR);
    assert!(
        store.create_password_reset(&orphan).await.is_err(),
        "a reset must belong to an existing user"
    );
}

pub async fn complete_password_reset(store: &dyn Store) {
    const OLD: &str = "$argon2id$old";
    const NEW: &str = "$argon2id$new";
    let owner = user_with_password(store, "complete-reset", OLD).await;
    let a = open_session(store, owner.id).await;
    let b = open_session(store, owner.id).await;
    let already = open_session(store, owner.id).await;
    store
        .revoke_session(already.id, T0 + 1)
        .await
        .expect("revoke_session");
    let stranger = user_with_password(store, "complete-reset-stranger", OLD).await;
    let bystander = open_session(store, stranger.id).await;
    let reset = new_reset(owner.id, T0, T0 + HOUR);
    store
        .create_password_reset(&reset)
        .await
        .expect("create_password_reset");
    let cursor = store.revocation_cursor().await.expect("revocation_cursor");

    let refused = [
        (reset.digest.clone(), stranger.id, T0 + 10, "another user"),
        (
            reset.digest.clone(),
            owner.id,
            reset.expires_at,
            "expired exactly at expires_at",
        ),
        (
            reset.digest.clone(),
            owner.id,
            reset.expires_at + 1,
            "expired",
        ),
        (
            new_reset(owner.id, T0, T0).digest,
            owner.id,
            T0 + 10,
            "unknown digest",
        ),
    ];
    for (digest, user, at, why) in refused {
        let completion = ResetCompletion {
            digest: &digest,
            user,
            password_hash: NEW,
        };
        assert_eq!(
            store
                .complete_password_reset(completion, at)
                .await
                .expect("complete_password_reset"),
            None,
            "{why}: refused"
        );
    }
    assert_eq!(
        fetch_reset(store, &reset.digest).await,
        reset,
        "refused completions leave the reset unused"
    );
    assert_eq!(
        fetch_user(store, owner.id).await,
        owner,
        "password unchanged"
    );
    assert_eq!(fetch_user(store, stranger.id).await, stranger);
    for s in [&a, &b] {
        assert_eq!(fetch_session(store, s.id).await.revoked_at, None);
    }
    assert!(
        feed_ids_since(store, cursor).await.is_empty(),
        "refused completions revoke nothing"
    );

    let completion = ResetCompletion {
        digest: &reset.digest,
        user: owner.id,
        password_hash: NEW,
    };
    let revoked = store
        .complete_password_reset(completion, T0 + 20)
        .await
        .expect("complete_password_reset")
        .expect("an unused, unexpired reset of the user is spendable");
    assert_eq!(revoked.len(), 2, "only open sessions: {revoked:?}");
    assert_eq!(set(&revoked), set(&[a.id, b.id]));
    for s in [&a, &b] {
        assert_eq!(fetch_session(store, s.id).await.revoked_at, Some(T0 + 20));
    }
    let fed = others_untouched_and_two_fed(store, &already, &bystander, cursor).await;
    assert_eq!(set(&fed), set(&revoked));
    assert_eq!(
        fetch_reset(store, &reset.digest).await.used_at,
        Some(T0 + 20),
        "the reset is spent"
    );
    assert_eq!(
        fetch_user(store, owner.id).await,
        User {
            password_hash: Some(NEW.to_owned()),
            ..owner.clone()
        },
        "the password changed, nothing else"
    );
    assert_eq!(
        fetch_user(store, stranger.id)
            .await
            .password_hash
            .as_deref(),
        Some(OLD)
    );

    let cursor = store.revocation_cursor().await.expect("revocation_cursor");
    let again = open_session(store, owner.id).await;
    let second_use = ResetCompletion {
        password_hash: "$argon2id$again",
        ..completion
    };
    assert_eq!(
        store
            .complete_password_reset(second_use, T0 + 30)
            .await
            .expect("complete_password_reset"),
        None,
        "a reset is spent once"
    );
    assert_eq!(
        fetch_user(store, owner.id).await.password_hash.as_deref(),
        Some(NEW),
        "a second completion changes nothing"
    );
    assert_eq!(fetch_session(store, again.id).await.revoked_at, None);
    assert_eq!(
        fetch_reset(store, &reset.digest).await.used_at,
        Some(T0 + 20)
    );
    assert!(feed_ids_since(store, cursor).await.is_empty());
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
    // Resets: expired (pruned, used or not), exactly at the boundary and live (kept).
    let expired_used = new_reset(owner, 1_000, 1_400);
    let expired_reset = new_reset(owner, 1_100, 1_500);
    let boundary_reset = new_reset(owner, 1_200, BEFORE);
    let live_reset = new_reset(owner, 1_300, 3_000);
    for r in [&expired_used, &expired_reset, &boundary_reset, &live_reset] {
        store
            .create_password_reset(r)
            .await
            .expect("create_password_reset");
    }

    let deleted = store.prune(BEFORE).await.expect("prune");
    assert_eq!(
        deleted, 4,
        "one expired session, one old feed entry and two expired resets are deleted"
    );
    for r in [&expired_used, &expired_reset] {
        assert_eq!(
            store
                .password_reset(&r.digest)
                .await
                .expect("password_reset"),
            None,
            "expired reset pruned"
        );
    }
    for r in [&boundary_reset, &live_reset] {
        assert!(
            store
                .password_reset(&r.digest)
                .await
                .expect("password_reset")
                .is_some(),
            "a reset expiring at or after `before` is kept"
        );
    }
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

fn audit_event(at: UnixTime, kind: &str, user_id: Option<UserId>, email: &str) -> AuditEvent {
    AuditEvent {
        at,
        kind: kind.to_owned(),
        user_id,
        email: Some(email.to_owned()),
        client_ip: Some("2001:db8::7".parse().unwrap()),
        request_id: Some(format!("req-{at}")),
        detail: [("reason".to_owned(), "wrong_password".to_owned())].into(),
    }
}

fn audit_filter(
    user_id: Option<UserId>,
    email: Option<&str>,
    since: Option<UnixTime>,
) -> AuditFilter {
    AuditFilter {
        user_id,
        email: email.map(str::to_owned),
        since,
        limit: 100,
    }
}

/// Records come back as written, oldest first, filtered by user (id, or email for records
/// with no user), time and count; the limit keeps the newest.
pub async fn audit_trail(store: &dyn Store) {
    let owner = user(store, "audit").await;
    let email = unique_email("audit");
    let stranger = unique_email("audit-unknown");
    let first = audit_event(T0 + 10, "login_succeeded", Some(owner), &email);
    let mut bare = audit_event(T0 + 11, "user_disabled", Some(owner), &email);
    bare.email = None;
    bare.client_ip = None;
    bare.request_id = None;
    bare.detail.clear();
    let unknown = audit_event(T0 + 11, "login_failed", None, &stranger);
    let later = audit_event(T0 + 30, "logout", Some(owner), &email);
    store
        .append_audit(&[later.clone(), first.clone()])
        .await
        .expect("append_audit");
    store
        .append_audit(&[bare.clone(), unknown.clone()])
        .await
        .expect("append_audit");
    store.append_audit(&[]).await.expect("nothing to append");

    let everything_of_owner = audit_filter(Some(owner), None, None);
    let since_11 = audit_filter(Some(owner), None, Some(T0 + 11));
    assert_eq!(
        store
            .audit_events(&everything_of_owner)
            .await
            .expect("audit_events"),
        vec![first.clone(), bare.clone(), later.clone()],
        "by time, not by append order; other users' records left out"
    );
    assert_eq!(
        store.audit_events(&since_11).await.expect("audit_events"),
        vec![bare.clone(), later.clone()],
        "since is inclusive"
    );
    let mut newest_two = audit_filter(Some(owner), None, None);
    newest_two.limit = 2;
    assert_eq!(
        store.audit_events(&newest_two).await.expect("audit_events"),
        vec![bare.clone(), later.clone()],
        "the limit keeps the newest, still oldest first"
    );
    assert_eq!(
        store
            .audit_events(&audit_filter(None, Some(&stranger), None))
            .await
            .expect("audit_events"),
        vec![unknown.clone()],
        "a record without a user is found by its email"
    );
    assert_eq!(
        store
            .audit_events(&audit_filter(Some(owner), Some(&stranger), None))
            .await
            .expect("audit_events")
            .len(),
        4,
        "user id or email"
    );
    let everyone = store
        .audit_events(&audit_filter(None, None, Some(T0 + 10)))
        .await
        .expect("audit_events");
    for e in [&first, &bare, &unknown, &later] {
        assert!(everyone.contains(e), "no filter: every record ({e:?})");
    }
}

pub async fn prune_audit(store: &dyn Store) {
    // Far below every other check's times.
    const BEFORE: UnixTime = 2_000;
    let owner = user(store, "audit-prune").await;
    let email = unique_email("audit-prune");
    let old = audit_event(1_000, "login_succeeded", Some(owner), &email);
    let boundary = audit_event(BEFORE, "logout", Some(owner), &email);
    store
        .append_audit(&[old, boundary.clone()])
        .await
        .expect("append_audit");
    assert_eq!(store.prune_audit(BEFORE).await.expect("prune_audit"), 1);
    assert_eq!(
        store
            .audit_events(&audit_filter(Some(owner), None, None))
            .await
            .expect("audit_events"),
        vec![boundary],
        "a record exactly at `before` is kept"
    );
    assert_eq!(store.prune_audit(BEFORE).await.expect("prune_audit"), 0);
}
