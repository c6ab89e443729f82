//! PostgreSQL-only tests: migrations, the schema's own checks, the feed's ordering across
//! replicas, connections killed under the pool, TLS and URL forms. The backend-independent
//! contract is `store::suite`'s, run here on a scratch schema.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sqlx::AssertSqlSafe;
use sqlx::postgres::PgSslMode;

use super::feed::append_revocations;
use super::replay::{ConnectionLoss, Stage, is_dead_connection};
use super::*;
use sqlx::postgres::PgConnection;
use uuid::Uuid;

use crate::store::backend::Replay;
use crate::store::suite::{T0, new_user};
use crate::store::{
    AuditEvent, AuditFilter, FeedKind, FeedWakeup, Invitation, InvitationAcceptance, NewUser,
    PasswordReset, ResetCompletion, Role, Rotation, Session, SessionId, Store, StoreError,
    ThrottleAttempt, TokenSwap, UnixTime, UserChanges, UserId, UserOrder, UserPage, suite,
};

mod plans;

const URL_VAR: &str = "MEIRO_GATE_TEST_POSTGRES_URL";

/// The test server's URL, or `None` after saying clearly that `test` is skipped.
fn test_url(test: &str) -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!(
                "SKIPPED store::postgres::{test}: {URL_VAR} is not set \
                 (CI sets it, e.g. postgres://postgres@127.0.0.1:5432/test)"
            );
            None
        }
    }
}

/// Runs `body` with connect options whose `search_path` is a fresh schema of its own, so
/// parallel tests and runs never see each other's rows; the schema is dropped afterwards,
/// also when `body` panics. Skips (returning) when the server's URL is not set.
async fn with_scratch_schema<F, Fut>(test: &str, body: F)
where
    F: FnOnce(PgConnectOptions) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(url) = test_url(test) else {
        return;
    };
    let base = connect_options(&url).expect("test database URL");
    let schema = format!("mg_test_{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect_with(&base)
        .await
        .unwrap_or_else(|e| panic!("connecting to {URL_VAR}: {e}"));
    sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut admin)
        .await
        .expect("create scratch schema");
    let options = base.options([("search_path", schema.as_str())]);
    // Spawned so a panic comes back as a JoinError and the schema is still dropped.
    let outcome = tokio::spawn(body(options)).await;
    sqlx::query(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&mut admin)
        .await
        .expect("drop scratch schema");
    admin.close().await.ok();
    if let Err(e) = outcome {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("test task failed: {e}"),
        }
    }
}

async fn open(options: &PgConnectOptions) -> PostgresStore {
    PostgresStore::open_with(options.clone())
        .await
        .expect("open PostgresStore")
}

fn new_session(user: UserId) -> Session {
    Session {
        id: SessionId::new_random(),
        user_id: user,
        created: 1_700_000_000,
        expires_at: 1_700_086_400,
        revoked_at: None,
        current_jti: Uuid::new_v4(),
        refresh_count: 0,
        last_refresh_at: None,
    }
}

async fn sessions_of_new_user(store: &PostgresStore, email: &str, n: usize) -> Vec<Session> {
    let user = store.create_user(new_user(email, T0)).await.unwrap();
    let mut sessions = Vec::new();
    for _ in 0..n {
        let s = new_session(user.id);
        store.create_session(&s).await.unwrap();
        sessions.push(s);
    }
    sessions
}

async fn applied_migrations(store: &PostgresStore) -> i64 {
    let successful = "SELECT COUNT(*) FROM _sqlx_migrations WHERE success";
    suite::count_rows(store.pool(), successful).await
}

/// Runs `check` on a store of its own in a scratch schema; skips when the server's URL is not set.
async fn on_fresh_store<F, Fut>(case: &'static str, check: F)
where
    F: FnOnce(Arc<dyn Store>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    with_scratch_schema(case, |options| async move {
        check(Arc::new(open(&options).await)).await;
    })
    .await;
}

mod conformance {
    crate::store::suite::conformance_tests!(
        super::on_fresh_store,
        [#[cfg_attr(not(postgres_tests), ignore = "set MEIRO_GATE_TEST_POSTGRES_URL to run it")]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "set MEIRO_GATE_TEST_POSTGRES_URL to run it"
)]
async fn conformance_suite() {
    with_scratch_schema("conformance_suite", |options| async move {
        suite::run_all(Arc::new(open(&options).await)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "set MEIRO_GATE_TEST_POSTGRES_URL to run it"
)]
async fn conformance_suite_reruns_on_a_used_schema() {
    with_scratch_schema(
        "conformance_suite_reruns_on_a_used_schema",
        |options| async move {
            let store = Arc::new(open(&options).await);
            suite::run_all(store.clone()).await;
            suite::run_all(store).await;
        },
    )
    .await;
}

#[tokio::test]
#[cfg_attr(
    not(postgres_tests),
    ignore = "set MEIRO_GATE_TEST_POSTGRES_URL to run it"
)]
async fn reopening_keeps_data_and_does_not_reapply_migrations() {
    with_scratch_schema(
        "reopening_keeps_data_and_does_not_reapply_migrations",
        |options| async move {
            let store = open(&options).await;
            let user = store
                .create_user(new_user("keep@example.test", T0))
                .await
                .unwrap();
            assert_eq!(applied_migrations(&store).await, migrations().len() as i64);
            store.pool().close().await;

            // Two replicas starting at once: the migrator's lock lets one apply, none twice.
            let (a, b) = tokio::join!(open(&options), open(&options));
            for store in [&a, &b] {
                let found = store.user_by_email("keep@example.test").await.unwrap();
                assert_eq!(found.as_ref(), Some(&user), "user survives reopening");
                assert_eq!(
                    applied_migrations(store).await,
                    migrations().len() as i64,
                    "each migration recorded once"
                );
            }
        },
    )
    .await;
}

#[tokio::test]
#[cfg_attr(
    not(postgres_tests),
    ignore = "set MEIRO_GATE_TEST_POSTGRES_URL to run it"
)]
async fn database_from_first_migration_upgrades() {
    with_scratch_schema(
        "database_from_first_migration_upgrades",
        |options| async move {
            // A schema with only migration 1 applied.
            let pool = suite::first_release_pool::<Postgres>(options.clone(), migrations()).await;
            let id = Uuid::new_v4();
            sqlx::query(
                "INSERT INTO users (id, email, password_hash, role, invitation_pending, created) \
             VALUES ($1, 'old@example.test', 'hash', 'admin', true, 42)",
            )
            .bind(id)
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;

            let store = open(&options).await;
            suite::upgraded_user(&store, id).await;
            assert_eq!(applied_migrations(&store).await, migrations().len() as i64);
        },
    )
    .await;
}

#[tokio::test]
#[cfg_attr(
    not(postgres_tests),
    ignore = "set MEIRO_GATE_TEST_POSTGRES_URL to run it"
)]
async fn schema_rejects_half_an_invitation_and_unknown_roles() {
    with_scratch_schema(
        "schema_rejects_half_an_invitation_and_unknown_roles",
        |options| async move {
            let store = open(&options).await;
            for (email, role, nonce, expires_at) in [
                ("nonce-only@example.test", "user", Some("n"), None),
                ("expiry-only@example.test", "user", None, Some(5_i64)),
                ("root@example.test", "root", None, None),
            ] {
                let err = sqlx::query(
                    "INSERT INTO users (id, email, role, created, invitation_pending, \
                     invitation_nonce, invitation_expires_at) \
                     VALUES ($1, $2, $3, 0, true, $4, $5)",
                )
                .bind(Uuid::new_v4())
                .bind(email)
                .bind(role)
                .bind(nonce)
                .bind(expires_at)
                .execute(store.pool())
                .await
                .unwrap_err();
                let is_check = matches!(
                    &err,
                    sqlx::Error::Database(e) if e.is_check_violation()
                );
                assert!(is_check, "{email}: {err}");
            }
        },
    )
    .await;
}

/// The feed-ordering guarantee of `append_revocations`, step by step: an append that starts
/// while another is uncommitted waits for its commit, so its larger seq can never be read
/// before the smaller one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "set MEIRO_GATE_TEST_POSTGRES_URL to run it"
)]
async fn feed_appends_commit_in_seq_order() {
    with_scratch_schema("feed_appends_commit_in_seq_order", |options| async move {
        let store = open(&options).await;
        let reader = open(&options).await;
        let sessions = sessions_of_new_user(&store, "feed-order@example.test", 2).await;
        let (first, second) = (sessions[0].id, sessions[1].id);
        let cursor = reader.revocation_cursor().await.unwrap();

        // Transaction A appends `first` and stays open.
        let mut a = store.pool().begin().await.unwrap();
        append_revocations(&mut a, &[first], 10, FeedKind::Ended)
            .await
            .unwrap();

        // B revokes `second` meanwhile; without the lock it would commit with the larger seq
        // while A's smaller one is still invisible.
        let b = tokio::spawn({
            let store = store.clone();
            async move { store.revoke_session(second, 20).await.unwrap() }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!b.is_finished(), "B's append waits for A's commit");
        assert!(
            reader
                .revocations_since(cursor, 10)
                .await
                .unwrap()
                .is_empty(),
            "nothing uncommitted is visible"
        );

        a.commit().await.unwrap();
        assert!(b.await.unwrap(), "B revoked its session");
        let feed = reader.revocations_since(cursor, 10).await.unwrap();
        assert_eq!(
            feed.iter().map(|r| r.session_id).collect::<Vec<_>>(),
            vec![first, second],
            "commit order is seq order: {feed:?}"
        );
        assert!(feed[0].seq < feed[1].seq);
    })
    .await;
}

/// Many writers on two "replicas" revoke concurrently while a follower polls the way
/// `auth::revocation` does (moving its cursor to the last seq read): it must see every
/// revocation exactly once. Every other append dawdles a little before its commit, the
/// window in which an unserialized feed lets a later seq be read first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "set MEIRO_GATE_TEST_POSTGRES_URL to run it"
)]
async fn follower_misses_no_concurrent_revocation() {
    const WRITERS: usize = 8;
    const PER_WRITER: usize = 40;
    with_scratch_schema(
        "follower_misses_no_concurrent_revocation",
        |options| async move {
            let replicas = [open(&options).await, open(&options).await];
            let follower = open(&options).await;
            let start = follower.revocation_cursor().await.unwrap();

            // Everything is set up before anything races.
            let mut expected = Vec::new();
            let mut work = Vec::new();
            for w in 0..WRITERS {
                let store = replicas[w % 2].clone();
                let sessions =
                    sessions_of_new_user(&store, &format!("w{w}@example.test"), PER_WRITER).await;
                expected.extend(sessions.iter().map(|s| s.id));
                work.push((store, sessions));
            }

            let done = Arc::new(tokio::sync::Notify::new());
            let poller = tokio::spawn({
                let done = done.clone();
                async move {
                    let mut cursor = start;
                    let mut seen = Vec::new();
                    let mut finishing = false;
                    loop {
                        let batch = follower.revocations_since(cursor, 7).await.unwrap();
                        for r in &batch {
                            assert!(r.seq > cursor, "seqs increase: {r:?} after {cursor}");
                            seen.push(r.session_id);
                            cursor = r.seq;
                        }
                        if batch.is_empty() {
                            if finishing {
                                return seen;
                            }
                            tokio::select! {
                                _ = done.notified() => finishing = true,
                                _ = tokio::task::yield_now() => {}
                            }
                        }
                    }
                }
            });

            let mut writers = tokio::task::JoinSet::new();
            for (store, sessions) in work {
                writers.spawn(async move {
                    for (i, s) in sessions.into_iter().enumerate() {
                        if i % 2 == 0 {
                            assert!(store.revoke_session(s.id, 1_700_000_100).await.unwrap());
                        } else {
                            let mut tx = store.pool().begin().await.unwrap();
                            append_revocations(&mut tx, &[s.id], 1_700_000_100, FeedKind::Ended)
                                .await
                                .unwrap();
                            let dawdle = fastrand::u64(0..3_000);
                            tokio::time::sleep(Duration::from_micros(dawdle)).await;
                            tx.commit().await.unwrap();
                        }
                    }
                });
            }
            writers.join_all().await;
            done.notify_one();
            let seen = poller.await.unwrap();

            assert_eq!(seen.len(), expected.len(), "every revocation seen once");
            let mut seen_sorted = seen.clone();
            seen_sorted.sort();
            expected.sort();
            assert_eq!(seen_sorted, expected);
        },
    )
    .await;
}

/// Two stores on one database behave as replicas: what one writes, the other reads,
/// including through the revocation feed each one follows from its own cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "set MEIRO_GATE_TEST_POSTGRES_URL to run it"
)]
async fn replicas_share_users_sessions_and_the_revocation_feed() {
    with_scratch_schema(
        "replicas_share_users_sessions_and_the_revocation_feed",
        |options| async move {
            let a = open(&options).await;
            let b = open(&options).await;
            let cursor_a = a.revocation_cursor().await.unwrap();
            let cursor_b = b.revocation_cursor().await.unwrap();
            assert_eq!(cursor_a, cursor_b);

            let user = a
                .create_user(new_user("shared@example.test", T0))
                .await
                .unwrap();
            assert_eq!(
                b.user_by_email("SHARED@example.test").await.unwrap(),
                Some(user.clone())
            );
            assert!(matches!(
                b.create_user(new_user("shared@example.test", T0)).await,
                Err(StoreError::DuplicateEmail)
            ));
            let s1 = new_session(user.id);
            let s2 = new_session(user.id);
            let s3 = new_session(user.id);
            for s in [&s1, &s2, &s3] {
                a.create_session(s).await.unwrap();
            }

            // A logout on replica A reaches B's feed, and the other way round.
            assert!(a.revoke_session(s1.id, 100).await.unwrap());
            let on_b = b.revocations_since(cursor_b, 100).await.unwrap();
            assert_eq!(
                on_b.iter().map(|r| r.session_id).collect::<Vec<_>>(),
                [s1.id]
            );
            assert!(b.revoke_session(s2.id, 110).await.unwrap());
            assert!(
                !a.revoke_session(s2.id, 120).await.unwrap(),
                "B already did"
            );
            let on_a = a.revocations_since(cursor_a, 100).await.unwrap();
            assert_eq!(
                on_a.iter().map(|r| r.session_id).collect::<Vec<_>>(),
                [s1.id, s2.id]
            );
            assert_eq!(b.revocation_cursor().await.unwrap(), on_a[1].seq);
            assert_eq!(a.revocation_cursor().await.unwrap(), on_a[1].seq);

            // Disabling on B revokes the rest; A follows from where it was.
            b.set_user_disabled("shared@example.test", true, 130)
                .await
                .unwrap()
                .expect("known user");
            let rest = a.revocations_since(on_a[1].seq, 100).await.unwrap();
            assert_eq!(
                rest.iter().map(|r| r.session_id).collect::<Vec<_>>(),
                [s3.id]
            );
            assert_eq!(
                a.session(s3.id).await.unwrap().unwrap().revoked_at,
                Some(130)
            );
            assert!(a.user_by_id(user.id).await.unwrap().unwrap().disabled);
        },
    )
    .await;
}

/// A feed append by one replica wakes another replica's listener, on commit and not
/// before: a woken follower always finds the entries it was woken for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "set MEIRO_GATE_TEST_POSTGRES_URL to run it"
)]
async fn listener_is_woken_by_another_replicas_commit() {
    with_scratch_schema(
        "listener_is_woken_by_another_replicas_commit",
        |options| async move {
            let (a, b) = (open(&options).await, open(&options).await);
            let mut listener = b.revocation_listener().expect("PostgreSQL pushes");
            assert_eq!(listener.next().await.unwrap(), FeedWakeup::Subscribed);
            let sessions = sessions_of_new_user(&a, "listen@example.test", 2).await;

            let mut tx = a.pool().begin().await.unwrap();
            append_revocations(&mut tx, &[sessions[0].id], 10, FeedKind::Ended)
                .await
                .unwrap();
            let early = tokio::time::timeout(Duration::from_millis(300), listener.next());
            assert!(early.await.is_err(), "no wake-up before the commit");
            tx.commit().await.unwrap();
            let woken = tokio::time::timeout(Duration::from_secs(5), listener.next()).await;
            assert_eq!(woken.expect("woken").unwrap(), FeedWakeup::Appended);

            assert!(a.revoke_session(sessions[1].id, 11).await.unwrap());
            let woken = tokio::time::timeout(Duration::from_secs(5), listener.next()).await;
            assert_eq!(woken.expect("woken").unwrap(), FeedWakeup::Appended);
        },
    )
    .await;
}

/// Concurrent refreshes of one token through two replicas: exactly one wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "set MEIRO_GATE_TEST_POSTGRES_URL to run it"
)]
async fn rotations_across_replicas_have_one_winner() {
    with_scratch_schema(
        "rotations_across_replicas_have_one_winner",
        |options| async move {
            let replicas = [open(&options).await, open(&options).await];
            let session = sessions_of_new_user(&replicas[0], "rot@example.test", 1)
                .await
                .remove(0);
            let barrier = Arc::new(tokio::sync::Barrier::new(16));
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..16 {
                let (store, barrier) = (replicas[i % 2].clone(), barrier.clone());
                tasks.spawn(async move {
                    barrier.wait().await;
                    let swap = TokenSwap {
                        session: session.id,
                        presented_jti: session.current_jti,
                        new_jti: Uuid::new_v4(),
                    };
                    store.rotate_session_token(swap, 5).await.unwrap()
                });
            }
            let outcomes = tasks.join_all().await;
            let wins = outcomes.iter().filter(|o| **o == Rotation::Rotated).count();
            assert_eq!(wins, 1, "{outcomes:?}");
            assert!(
                outcomes
                    .iter()
                    .all(|o| matches!(o, Rotation::Rotated | Rotation::NotCurrent))
            );
        },
    )
    .await;
}

/// Revoking a user's sessions feeds them in id order, one seq each.
#[tokio::test]
#[cfg_attr(
    not(postgres_tests),
    ignore = "set MEIRO_GATE_TEST_POSTGRES_URL to run it"
)]
async fn bulk_revocation_feeds_in_id_order() {
    with_scratch_schema("bulk_revocation_feeds_in_id_order", |options| async move {
        let store = open(&options).await;
        let sessions = sessions_of_new_user(&store, "bulk@example.test", 12).await;
        let cursor = store.revocation_cursor().await.unwrap();
        let revoked = store
            .revoke_user_sessions(sessions[0].user_id, 50)
            .await
            .unwrap();
        let mut ids: Vec<SessionId> = sessions.iter().map(|s| s.id).collect();
        ids.sort();
        assert_eq!(revoked, ids);
        let feed = store.revocations_since(cursor, 100).await.unwrap();
        assert_eq!(
            feed.iter().map(|r| r.session_id).collect::<Vec<_>>(),
            ids,
            "feed order is the returned (sorted) order"
        );
        assert!(feed.windows(2).all(|w| w[0].seq < w[1].seq));
    })
    .await;
}

/// `options` with an `application_name` of their own: the backends of a store opened with
/// them, and only those, can be found (and killed) in `pg_stat_activity`.
fn named(options: &PgConnectOptions) -> (PgConnectOptions, String) {
    let name = format!("mg_test_{}", Uuid::new_v4().simple());
    (options.clone().application_name(&name), name)
}

/// A connection for the test itself, outside the store's pool and its name.
async fn admin_connection(options: &PgConnectOptions) -> PgConnection {
    PgConnection::connect_with(&options.clone().application_name("mg_test_admin"))
        .await
        .expect("admin connection")
}

/// Terminates the backends named `name` (all, or only those waiting on a lock) and waits
/// until they are gone; returns how many.
async fn terminate(admin: &mut PgConnection, name: &str, lock_waiters_only: bool) -> i64 {
    // The call in the select list, never in the WHERE: the planner may evaluate WHERE
    // conditions in any order, and a `pg_terminate_backend` there kills other backends.
    let killed: Vec<(i32, bool)> = sqlx::query_as(
        "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = $1 AND ($2 = false OR wait_event_type = 'Lock')",
    )
    .bind(name)
    .bind(lock_waiters_only)
    .fetch_all(&mut *admin)
    .await
    .unwrap();
    let killed: Vec<i32> = killed.into_iter().map(|(pid, _)| pid).collect();
    for _ in 0..500 {
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)")
                .bind(&killed)
                .fetch_one(&mut *admin)
                .await
                .unwrap();
        if left == 0 {
            return killed.len() as i64;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("backends of {name} still there after being terminated");
}

/// Fills `store`'s pool with `n` idle connections, then kills every one of them on the
/// server, as a restart or a pooler dropping idle connections would: whatever the store
/// takes from its pool next is dead.
async fn kill_idle_pool(store: &PostgresStore, n: u32, name: &str, admin: &mut PgConnection) {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(store.pool().acquire().await.unwrap());
    }
    drop(held);
    for _ in 0..500 {
        if store.pool().num_idle() >= n as usize {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let pooled = store.pool().size();
    assert!(pooled >= n, "{pooled} pooled");
    assert_eq!(
        store.pool().num_idle(),
        pooled as usize,
        "all pooled connections idle"
    );
    assert_eq!(
        terminate(admin, name, false).await,
        i64::from(pooled),
        "every pooled connection killed"
    );
}

/// Waits until a backend named `name` waits on a lock: its statement has reached the server.
async fn until_waiting_on_a_lock(admin: &mut PgConnection, name: &str) {
    for _ in 0..500 {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE application_name = $1 AND wait_event_type = 'Lock'",
        )
        .bind(name)
        .fetch_one(&mut *admin)
        .await
        .unwrap();
        if waiting > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no backend of {name} came to wait on the lock");
}

/// Every operation, each right after all of the pool's idle connections were killed, still
/// succeeds, and each write takes effect once: reads and idempotent writes are run again,
/// transactions failed before their commit, single writes were stopped by their ping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "set MEIRO_GATE_TEST_POSTGRES_URL to run it"
)]
async fn every_operation_survives_its_pooled_connections_being_killed() {
    with_scratch_schema(
        "every_operation_survives_its_pooled_connections_being_killed",
        |options| async move {
            let (named_options, name) = named(&options);
            let store = open(&named_options).await;
            let mut admin = admin_connection(&options).await;
            let t0: UnixTime = 1_700_000_000;
            macro_rules! after_kill {
                ($op:expr) => {{
                    kill_idle_pool(&store, 3, &name, &mut admin).await;
                    $op.await
                        .unwrap_or_else(|e| panic!("{} on a killed pool: {e:?}", stringify!($op)))
                }};
            }

            // Once (pinged first), then reads of what they wrote.
            let user = after_kill!(store.create_user(new_user("dead@example.test", T0)));
            let session = new_session(user.id);
            after_kill!(store.create_session(&session));
            assert_eq!(after_kill!(store.user_by_id(user.id)), Some(user.clone()));
            assert_eq!(
                after_kill!(store.user_by_email("DEAD@example.test")),
                Some(user.clone())
            );
            assert_eq!(
                after_kill!(store.session(session.id)),
                Some(session.clone())
            );
            assert_eq!(after_kill!(store.count_users()), 1);
            assert_eq!(after_kill!(store.list_users()), vec![user.clone()]);
            after_kill!(store.ping());
            let swap = TokenSwap {
                session: session.id,
                presented_jti: session.current_jti,
                new_jti: Uuid::new_v4(),
            };
            assert_eq!(
                after_kill!(store.rotate_session_token(swap, t0 + 1)),
                Rotation::Rotated
            );
            // Counted once each: the third attempt finds the window full.
            let login = ThrottleAttempt {
                scope: "login",
                key: "dead-throttle@example.test",
                limit: 2,
                window: 60,
            };
            assert_eq!(after_kill!(store.throttle_reserve(login, t0)), Ok(t0));
            assert_eq!(after_kill!(store.throttle_reserve(login, t0)), Ok(t0));
            assert_eq!(after_kill!(store.throttle_reserve(login, t0)), Err(60));
            after_kill!(store.throttle_refund(login.scope, login.key, t0));
            assert_eq!(after_kill!(store.throttle_reserve(login, t0)), Ok(t0));

            // Idempotent writes.
            after_kill!(store.record_login(user.id, t0 + 2));
            let found = store.user_by_id(user.id).await.unwrap().unwrap();
            assert_eq!(found.last_login, Some(t0 + 2));
            let page = UserPage {
                trash: false,
                order: UserOrder::Email,
                descending: false,
                limit: 100,
                offset: 0,
            };
            assert!(
                after_kill!(store.users_page(&page))
                    .iter()
                    .any(|u| u.id == user.id)
            );
            let invited = store
                .create_user(NewUser {
                    invitation_pending: true,
                    invitation: Some(Invitation {
                        nonce: "first".into(),
                        expires_at: t0 + 100,
                    }),
                    ..new_user("dead-invited@example.test", T0)
                })
                .await
                .unwrap();
            let renewed = Invitation {
                nonce: "second".into(),
                expires_at: t0 + 200,
            };
            let after = after_kill!(store.renew_invitation(invited.id, &renewed, Role::Admin));
            assert_eq!(after.and_then(|u| u.invitation), Some(renewed));
            let acceptance = InvitationAcceptance {
                user: invited.id,
                nonce: "second",
                password_hash: "hash",
            };
            assert!(after_kill!(store.accept_invitation(acceptance, t0 + 3)));

            // Transactions, and the feed they append to.
            let cursor = after_kill!(store.revocation_cursor());
            let others = sessions_of_new_user(&store, "dead-many@example.test", 2).await;
            assert!(after_kill!(store.revoke_session(session.id, t0 + 4)));
            let mut bulk: Vec<SessionId> = others.iter().map(|s| s.id).collect();
            bulk.sort();
            assert_eq!(
                after_kill!(store.revoke_user_sessions(others[0].user_id, t0 + 5)),
                bulk
            );
            let fed = after_kill!(store.revocations_since(cursor, 10));
            assert_eq!(
                fed.iter().map(|r| r.session_id).collect::<Vec<_>>(),
                [vec![session.id], bulk].concat(),
                "each revocation fed once"
            );
            let reset = PasswordReset {
                digest: "ab".repeat(32),
                user_id: user.id,
                created: t0,
                expires_at: t0 + 3600,
                used_at: None,
            };
            after_kill!(store.create_password_reset(&reset));
            assert_eq!(
                after_kill!(store.password_reset(&reset.digest)),
                Some(reset.clone())
            );
            let later = new_session(user.id);
            store.create_session(&later).await.unwrap();
            let completion = ResetCompletion {
                digest: &reset.digest,
                user: user.id,
                password_hash: "new hash",
            };
            assert_eq!(
                after_kill!(store.complete_password_reset(completion, t0 + 6)),
                Some(vec![later.id])
            );
            let disabled = after_kill!(store.set_user_disabled("dead@example.test", true, t0 + 7));
            assert!(disabled.is_some_and(|u| u.disabled));
            // A transaction: runs again when killed before its commit.
            let promote = UserChanges {
                role: Some(Role::Admin),
                ..UserChanges::default()
            };
            let changed = after_kill!(store.change_user(user.id, &promote, t0 + 8));
            assert_eq!(changed.map(|c| c.user.role), Ok(Role::Admin));
            let event = AuditEvent {
                at: t0,
                kind: "login_succeeded".into(),
                user_id: Some(user.id),
                email: None,
                client_ip: None,
                request_id: None,
                detail: Default::default(),
            };
            after_kill!(store.append_audit(std::slice::from_ref(&event)));
            let filter = AuditFilter {
                user_id: Some(user.id),
                email: None,
                since: None,
                limit: 10,
            };
            assert_eq!(after_kill!(store.audit_events(&filter)), vec![event]);
            assert_eq!(after_kill!(store.prune_audit(t0 + 1)), 1);
            after_kill!(store.prune(t0));

            // Many callers at once, each meeting a dead connection or a pinged one.
            kill_idle_pool(&store, POOL_SIZE, &name, &mut admin).await;
            let mut readers = tokio::task::JoinSet::new();
            for _ in 0..3 * POOL_SIZE {
                let store = store.clone();
                readers.spawn(async move { store.user_by_id(user.id).await.map(|u| u.is_some()) });
            }
            for read in readers.join_all().await {
                assert!(read.expect("a concurrent read on a killed pool"));
            }
            admin.close().await.ok();
        },
    )
    .await;
}

/// A single write whose statement reached the server before its backend was killed is not
/// run again: it may have taken effect (here it did not, and it is not counted twice either).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "set MEIRO_GATE_TEST_POSTGRES_URL to run it"
)]
async fn a_single_write_killed_on_the_server_is_not_run_again() {
    with_scratch_schema(
        "a_single_write_killed_on_the_server_is_not_run_again",
        |options| async move {
            let (named_options, name) = named(&options);
            let store = open(&named_options).await;
            let mut admin = admin_connection(&options).await;
            let key = "midflight@example.test";
            let login = ThrottleAttempt {
                scope: "login",
                key,
                limit: 5,
                window: 60,
            };
            let t0: UnixTime = 1_700_000_000;
            assert_eq!(store.throttle_reserve(login, t0).await.unwrap(), Ok(t0));

            // The window's row locked, so the store's statement waits on the server.
            let mut locker = admin_connection(&options).await;
            let mut lock = locker.begin().await.unwrap();
            sqlx::query("SELECT 1 FROM throttle_windows WHERE key = $1 FOR UPDATE")
                .bind(key)
                .execute(&mut *lock)
                .await
                .unwrap();
            let reserve = tokio::spawn({
                let store = store.clone();
                async move { store.throttle_reserve(login, t0 + 1).await }
            });
            until_waiting_on_a_lock(&mut admin, &name).await;
            assert_eq!(terminate(&mut admin, &name, true).await, 1);
            lock.rollback().await.unwrap();

            let outcome = reserve.await.unwrap();
            assert!(
                matches!(&outcome, Err(e) if is_dead_connection(e)),
                "the lost connection is reported, not run again: {outcome:?}"
            );
            let attempts: i32 =
                sqlx::query_scalar("SELECT attempts FROM throttle_windows WHERE key = $1")
                    .bind(key)
                    .fetch_one(&mut admin)
                    .await
                    .unwrap();
            assert_eq!(attempts, 1, "the killed statement was rolled back");
            // The store carries on.
            assert_eq!(store.throttle_reserve(login, t0 + 2).await.unwrap(), Ok(t0));
            admin.close().await.ok();
            locker.close().await.ok();
        },
    )
    .await;
}

/// A transaction whose backend is killed before its commit is run again on another
/// connection: the server rolled the first run back, so the revocations are fed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "set MEIRO_GATE_TEST_POSTGRES_URL to run it"
)]
async fn a_transaction_killed_before_its_commit_is_run_again() {
    with_scratch_schema(
        "a_transaction_killed_before_its_commit_is_run_again",
        |options| async move {
            let (named_options, name) = named(&options);
            let store = open(&named_options).await;
            let mut admin = admin_connection(&options).await;
            let sessions = sessions_of_new_user(&store, "midtx@example.test", 2).await;
            let cursor = store.revocation_cursor().await.unwrap();

            let mut locker = admin_connection(&options).await;
            let mut lock = locker.begin().await.unwrap();
            sqlx::query("SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE")
                .bind(sessions[0].id.0)
                .execute(&mut *lock)
                .await
                .unwrap();
            let revoke = tokio::spawn({
                let store = store.clone();
                let user = sessions[0].user_id;
                async move { store.revoke_user_sessions(user, 50).await }
            });
            until_waiting_on_a_lock(&mut admin, &name).await;
            assert_eq!(terminate(&mut admin, &name, true).await, 1);
            // The second run waits on the same lock, on a connection of its own.
            until_waiting_on_a_lock(&mut admin, &name).await;
            lock.commit().await.unwrap();

            let mut ids: Vec<SessionId> = sessions.iter().map(|s| s.id).collect();
            ids.sort();
            assert_eq!(revoke.await.unwrap().expect("run again"), ids);
            let fed = store.revocations_since(cursor, 10).await.unwrap();
            assert_eq!(
                fed.iter().map(|r| r.session_id).collect::<Vec<_>>(),
                ids,
                "fed once"
            );
            admin.close().await.ok();
            locker.close().await.ok();
        },
    )
    .await;
}

/// `sslmode` from the URL is honoured, and TLS (rustls on aws-lc-rs) really connects when
/// the server offers it.
#[tokio::test]
#[cfg_attr(
    not(postgres_tests),
    ignore = "set MEIRO_GATE_TEST_POSTGRES_URL to run it"
)]
async fn sslmode_from_the_url_is_honoured() {
    let Some(url) = test_url("sslmode_from_the_url_is_honoured") else {
        return;
    };
    let with_mode = |mode: &str| {
        let mut url = url::Url::parse(&url).unwrap();
        let rest: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| k != "sslmode")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        url.query_pairs_mut()
            .clear()
            .extend_pairs(rest)
            .append_pair("sslmode", mode);
        url.to_string()
    };
    async fn uses_tls(url: &str) -> bool {
        let mut conn = PgConnection::connect_with(&connect_options(url).unwrap())
            .await
            .unwrap_or_else(|e| panic!("connect with {url}: {e}"));
        let ssl = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        conn.close().await.ok();
        ssl
    }

    assert!(!uses_tls(&with_mode("disable")).await, "sslmode=disable");
    let mut conn = PgConnection::connect_with(&connect_options(&url).unwrap())
        .await
        .unwrap();
    let server_ssl: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.ok();
    if server_ssl == "on" {
        assert!(uses_tls(&with_mode("require")).await, "sslmode=require");
    } else {
        eprintln!("sslmode_from_the_url_is_honoured: server has ssl off; require not tried");
        assert!(
            PgConnection::connect_with(&connect_options(&with_mode("require")).unwrap())
                .await
                .is_err(),
            "sslmode=require refuses a server without TLS"
        );
    }
}

#[test]
fn url_forms() {
    let opts = connect_options("postgres://gate:pw@db.internal:6432/gate").unwrap();
    assert_eq!(opts.get_host(), "db.internal");
    assert_eq!(opts.get_port(), 6432);
    assert_eq!(opts.get_username(), "gate");
    assert_eq!(opts.get_database(), Some("gate"));

    assert_eq!(opts.get_options(), Some("-c client_min_messages=warning"));

    let opts = connect_options("postgresql://db/gate?sslmode=verify-full").unwrap();
    assert!(matches!(opts.get_ssl_mode(), PgSslMode::VerifyFull));
    let opts =
        connect_options("postgres://db/gate?options=-c%20client_min_messages%3Dnotice").unwrap();
    assert_eq!(
        opts.get_options(),
        Some("-c client_min_messages=notice"),
        "the URL's own setting is kept"
    );
    let opts = connect_options("postgres://db/gate?sslmode=disable").unwrap();
    assert!(matches!(opts.get_ssl_mode(), PgSslMode::Disable));

    for bad in [
        "postgres://gate:s3cret@db/gate?sslmode=sometimes",
        "mysql://gate:s3cret@db/gate",
        "sqlite://gate.db",
    ] {
        match connect_options(bad) {
            Err(StoreError::InvalidUrl(message)) => {
                assert!(!message.contains("s3cret"), "{message}");
                assert!(!message.contains("error with configuration"), "{message}");
            }
            other => panic!("{bad}: expected InvalidUrl, got {other:?}"),
        }
    }
}

/// The replay rule: nothing is run again after a failed acquire, a transaction up to its
/// `COMMIT`, a single write only when its ping failed.
#[test]
fn which_failures_run_again() {
    use Replay::*;
    use Stage::*;
    for (replay, reruns) in [
        (Idempotent, [false, true, true, true]),
        (Transaction, [false, true, true, false]),
        (Once, [false, true, false, false]),
    ] {
        for (stage, rerun) in [Acquire, Check, Statements, Commit].into_iter().zip(reruns) {
            assert_eq!(replay.may_rerun(stage), rerun, "{replay:?} at {stage:?}");
        }
    }
}

#[test]
fn dead_connection_errors() {
    let io = |kind| StoreError::Database(sqlx::Error::Io(std::io::Error::from(kind)));
    for kind in [
        std::io::ErrorKind::UnexpectedEof,
        std::io::ErrorKind::BrokenPipe,
        std::io::ErrorKind::ConnectionReset,
    ] {
        assert!(is_dead_connection(&io(kind)), "{kind:?}");
    }
    for alive in [
        StoreError::Database(sqlx::Error::PoolTimedOut),
        StoreError::Database(sqlx::Error::PoolClosed),
        StoreError::Database(sqlx::Error::RowNotFound),
        StoreError::DuplicateEmail,
        StoreError::Corrupt("x".into()),
    ] {
        assert!(!is_dead_connection(&alive), "{alive:?}");
    }
}

#[test]
fn connections_idle_when_a_loss_was_seen_are_suspect() {
    let loss = ConnectionLoss::new();
    assert!(
        !loss.seen_while_idle(Duration::from_secs(3600)),
        "no loss yet"
    );
    std::thread::sleep(Duration::from_millis(2));
    loss.seen();
    std::thread::sleep(Duration::from_millis(2));
    assert!(loss.seen_while_idle(Duration::from_secs(3600)));
    assert!(
        !loss.seen_while_idle(Duration::from_micros(100)),
        "idle only since after the loss"
    );
}

/// A refused connection surfaces as an error within the acquire timeout, not a hang.
#[tokio::test]
async fn unreachable_server_fails_fast() {
    // Port 1 on localhost: nothing listens there.
    let started = std::time::Instant::now();
    let err = PostgresStore::open("postgres://gate@127.0.0.1:1/gate?sslmode=disable")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Database(_)), "got {err:?}");
    assert!(started.elapsed() <= DEFAULT_TIMEOUT + Duration::from_secs(5));
}
