//! The SQLite backend of [`Store`](super::Store) (one replica): connection setup, the embedded
//! schema migrations, UUIDs stored as text, and its [`Backend`] part of the shared
//! implementation (`backend`).

use std::str::FromStr;
use std::time::Duration;

use sqlx::Row;
use sqlx::error::DatabaseError;
use sqlx::migrate::{Migration, Migrator};
use sqlx::query::Query;
use sqlx::sqlite::{
    Sqlite, SqliteArguments, SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool,
    SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use uuid::Uuid;

use super::backend::{Backend, BoxFuture, Conn, Replay, Run, statement_runners};
use super::rows::UuidColumns;
use super::schema::sqlite_migrations;
use super::sql::{
    Dialect, Statement, active_admins, audit_columns, params, user_columns, users_page,
};
use super::{FeedKind, SessionId, StoreError, StoreResult, UnixTime, UserId};

/// Writers queue behind SQLite's single write lock; this bounds how long one waits.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A file database serves concurrent readers (WAL) but only one writer at a time, so a few
/// connections are plenty.
const FILE_POOL_SIZE: u32 = 4;

/// Read and write transactions that must not interleave with other writers take the write lock
/// up front: a deferred transaction that reads first and writes later can fail with
/// `SQLITE_BUSY` without waiting for `busy_timeout`.
const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

// The statements that differ from PostgreSQL's; the rest are in `sql`.
const DIALECT: Dialect = Dialect {
    // `email` is declared COLLATE NOCASE, so `=` is case-insensitive and uses the index.
    user_by_email: concat!("SELECT ", user_columns!(), " FROM users WHERE email = $1"),
    // rowid breaks ties in insertion order.
    list_users: concat!(
        "SELECT ",
        user_columns!(),
        " FROM users ORDER BY created, rowid"
    ),
    // `email` is declared COLLATE NOCASE, and so is its index; on lower-cased addresses that
    // is byte order.
    users_by_email: [users_page!("email ASC"), users_page!("email DESC")],
    // The write lock of `BEGIN_WRITE` already keeps other writers out; no row locks needed.
    lock_active_admins: active_admins!(),
    revoke_open_sessions: "UPDATE sessions SET revoked_at = $1 \
         WHERE user_id = $2 AND revoked_at IS NULL AND id <> $3 RETURNING id",
    prune_sessions: "DELETE FROM sessions WHERE expires_at < $1",
    // SQLite infers a bound NULL's type, so the filters need no casts.
    audit_events: concat!(
        "SELECT ",
        audit_columns!(),
        " FROM audit_events WHERE at >= $1 \
         AND (($2 IS NULL AND $3 IS NULL) OR user_id = $2 OR email = $3) \
         ORDER BY at DESC, seq DESC LIMIT $4"
    ),
};

const APPEND_REVOCATION: &str = "INSERT INTO session_revocations \
     (session_id, revoked_at, identity_changed) VALUES ($1, $2, $3)";

/// [`Store`] backed by one SQLite database (a file, or `sqlite::memory:` for tests).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating file and parent directory if needed) and migrates the database at `url`:
    /// `sqlite://relative/path.db`, `sqlite:///abs/path.db` or `sqlite::memory:`.
    pub async fn open(url: &str) -> StoreResult<SqliteStore> {
        let (options, memory) = connect_options(url)?;
        let pool_options = if memory {
            // Shared-cache connections to one in-memory database lock whole tables against each
            // other (SQLITE_LOCKED, which busy_timeout does not cover), and the database vanishes
            // with its last connection: keep exactly one connection, forever.
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        } else {
            if let Some(dir) = options.get_filename().parent()
                && !dir.as_os_str().is_empty()
            {
                tokio::fs::create_dir_all(dir).await?;
            }
            SqlitePoolOptions::new().max_connections(FILE_POOL_SIZE)
        };
        let pool = pool_options.connect_with(options).await?;
        migrator().run(&pool).await?;
        Ok(SqliteStore { pool })
    }

    /// The underlying pool, for tests and diagnostics.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// Connection options for `url`, and whether it names an in-memory database.
fn connect_options(url: &str) -> StoreResult<(SqliteConnectOptions, bool)> {
    let memory = is_memory_url(url);
    let options = SqliteConnectOptions::from_str(url)
        .map_err(|e| StoreError::InvalidUrl(format!("{url}: {e}")))?
        .create_if_missing(true)
        .foreign_keys(true)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(BUSY_TIMEOUT);
    // An in-memory database has no WAL; asking for one would be silently ignored anyway.
    let options = if memory {
        options
    } else {
        options.journal_mode(SqliteJournalMode::Wal)
    };
    Ok((options, memory))
}

/// Mirrors how sqlx recognises in-memory URLs (`:memory:` or `mode=memory`), which it does not
/// expose on the parsed options.
fn is_memory_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    let (database, params) = rest.split_once('?').unwrap_or((rest, ""));
    database == ":memory:" || params.split('&').any(|p| p == "mode=memory")
}

/// Every schema migration, in order (see `schema`).
fn migrations() -> Vec<Migration> {
    sqlite_migrations()
}

fn migrator() -> Migrator {
    Migrator::with_migrations(migrations())
}

fn uuid_text(id: Uuid) -> String {
    id.hyphenated().to_string()
}

/// UUIDs are stored as their hyphenated text.
impl UuidColumns for SqliteRow {
    fn uuid(&self, column: &str) -> StoreResult<Uuid> {
        let text: String = self.try_get(column)?;
        parse_uuid(column, &text)
    }

    fn opt_uuid(&self, column: &str) -> StoreResult<Option<Uuid>> {
        let text: Option<String> = self.try_get(column)?;
        text.map(|text| parse_uuid(column, &text)).transpose()
    }
}

fn parse_uuid(column: &str, text: &str) -> StoreResult<Uuid> {
    Uuid::parse_str(text)
        .map_err(|e| StoreError::Corrupt(format!("{column} {text:?} is not a uuid: {e}")))
}

/// `statement` ready to run, UUIDs bound as their hyphenated text.
fn query(statement: Statement<'_>) -> StoreResult<Query<'static, Sqlite, SqliteArguments>> {
    let text = statement.text;
    let arguments = statement.arguments(uuid_text);
    Ok(sqlx::query_with(
        text,
        arguments.map_err(sqlx::Error::Encode)?,
    ))
}

/// One replica, one writer at a time (`BEGIN_WRITE`): no row locks, and the feed's seq order is
/// the commit order.
impl Backend for SqliteStore {
    statement_runners!(SqliteConnection, SqliteRow);

    const DIALECT: Dialect = DIALECT;

    /// No connection to lose here, so nothing runs again; a transaction takes the write lock
    /// up front.
    async fn run<'env, T, F>(&self, replay: Replay, mut op: F) -> StoreResult<T>
    where
        T: Send,
        F: for<'c> FnMut(Conn<'c, 'env, SqliteConnection>) -> BoxFuture<'c, StoreResult<T>> + Send,
    {
        if replay != Replay::Transaction {
            let mut conn = self.pool.acquire().await?;
            return op(Conn::new(&mut *conn)).await;
        }
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let value = op(Conn::new(&mut *tx)).await?;
        tx.commit().await?;
        Ok(value)
    }

    async fn lock_user(_: &mut SqliteConnection, _: UserId) -> StoreResult<()> {
        Ok(())
    }

    async fn append_revocations(
        conn: &mut SqliteConnection,
        ids: &[SessionId],
        at: UnixTime,
        kind: FeedKind,
    ) -> StoreResult<()> {
        let identity_changed = kind == FeedKind::IdentityChanged;
        for id in ids {
            query(Statement::new(
                APPEND_REVOCATION,
                params![*id, at, identity_changed],
            ))?
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }

    /// The only other unique key is the random id.
    fn is_duplicate_email(error: &dyn DatabaseError) -> bool {
        error.is_unique_violation()
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::store::suite::{self, T0, new_user};
    use crate::store::{Invitation, Role, Store};

    fn file_url(path: &Path) -> String {
        format!("sqlite://{}", path.display())
    }

    async fn temp_store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&file_url(&dir.path().join("gate.db")))
            .await
            .unwrap();
        (dir, store)
    }

    async fn applied_migrations(store: &SqliteStore) -> i64 {
        suite::count_rows(store.pool(), "SELECT COUNT(*) FROM _sqlx_migrations").await
    }

    /// Runs `check` on a store of its own in a fresh file.
    async fn on_fresh_store<F, Fut>(_case: &'static str, check: F)
    where
        F: FnOnce(Arc<dyn Store>) -> Fut,
        Fut: Future<Output = ()>,
    {
        let (_dir, store) = temp_store().await;
        check(Arc::new(store)).await;
    }

    mod conformance {
        crate::store::suite::conformance_tests!(super::on_fresh_store);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn conformance_suite_on_file() {
        let (_dir, store) = temp_store().await;
        suite::run_all(Arc::new(store)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn conformance_suite_reruns_on_a_used_store() {
        let (_dir, store) = temp_store().await;
        let store = Arc::new(store);
        suite::run_all(store.clone()).await;
        suite::run_all(store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn conformance_suite_in_memory() {
        let store = SqliteStore::open("sqlite::memory:").await.unwrap();
        suite::run_all(Arc::new(store)).await;
    }

    /// Every list order is read from an index, never sorted, and the last-admin rule reads
    /// only the active admins: the same work with 100,000 users as with 100
    /// (`examples/users_page_timing.rs` measures it).
    #[tokio::test]
    async fn user_lists_and_the_admin_lock_are_read_from_indexes() {
        let store = SqliteStore::open("sqlite::memory:").await.unwrap();
        let plan_of = |statement: Statement<'static>| {
            let pool = store.pool().clone();
            async move {
                let explain = statement.explained("QUERY PLAN ");
                let rows = query(explain).unwrap().fetch_all(&pool).await.unwrap();
                rows.iter()
                    .map(|row| row.get::<String, _>("detail"))
                    .collect::<Vec<_>>()
            }
        };
        for page in suite::every_page_shape() {
            let plan = plan_of(DIALECT.users_page(&page)).await;
            assert!(
                plan.iter().any(|step| step.contains("INDEX users_page_")),
                "{page:?}: {plan:?}"
            );
            assert!(
                !plan.iter().any(|step| step.contains("TEMP B-TREE")),
                "{page:?} is sorted: {plan:?}"
            );
        }
        let plan = plan_of(DIALECT.lock_active_admins()).await;
        assert!(
            plan.iter()
                .any(|step| step.contains("INDEX users_active_admins")),
            "{plan:?}"
        );
    }

    #[tokio::test]
    async fn in_memory_stores_are_independent() {
        let a = SqliteStore::open("sqlite::memory:").await.unwrap();
        let b = SqliteStore::open("sqlite::memory:").await.unwrap();
        a.create_user(new_user("a@example.test", T0)).await.unwrap();
        assert_eq!(a.count_users().await.unwrap(), 1);
        assert_eq!(b.count_users().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn first_open_creates_directory_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join("deeper").join("gate.db");
        assert!(!path.parent().unwrap().exists());
        let url = file_url(&path);
        assert!(url.starts_with("sqlite:///"), "absolute url form: {url}");
        let store = SqliteStore::open(&url).await.unwrap();
        store.ping().await.unwrap();
        assert!(path.is_file(), "database file {} created", path.display());
    }

    #[tokio::test]
    async fn reopening_keeps_data_and_does_not_reapply_migrations() {
        let dir = tempfile::tempdir().unwrap();
        let url = file_url(&dir.path().join("gate.db"));

        let store = SqliteStore::open(&url).await.unwrap();
        let user = store
            .create_user(new_user("keep@example.test", T0))
            .await
            .unwrap();
        store.pool().close().await;
        drop(store);

        let store = SqliteStore::open(&url).await.unwrap();
        let found = store.user_by_email("keep@example.test").await.unwrap();
        assert_eq!(found, Some(user), "user survives reopening");
        assert_eq!(
            applied_migrations(&store).await,
            migrations().len() as i64,
            "each migration recorded once"
        );
    }

    #[tokio::test]
    async fn database_from_first_migration_upgrades() {
        let dir = tempfile::tempdir().unwrap();
        let url = file_url(&dir.path().join("gate.db"));

        // A database as the previous release left it: only migration 1 applied.
        let (options, _) = connect_options(&url).unwrap();
        let pool = suite::first_release_pool::<Sqlite>(options, migrations()).await;
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO users (id, email, password_hash, role, invitation_pending, created) \
             VALUES (?, 'old@example.test', 'hash', 'admin', 1, 42)",
        )
        .bind(uuid_text(id))
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;

        let store = SqliteStore::open(&url).await.unwrap();
        let user = suite::upgraded_user(&store, id).await;
        assert_eq!(user.created, 42);
        assert_eq!(
            applied_migrations(&store).await,
            migrations().len() as i64,
            "later migrations applied on top of 1"
        );

        // The upgraded database takes the new data too.
        let invitation = Invitation {
            nonce: "n0nce".into(),
            expires_at: 100,
        };
        let renewed = store
            .renew_invitation(user.id, &invitation, Role::User)
            .await
            .unwrap()
            .expect("pending user");
        assert_eq!(renewed.invitation, Some(invitation));
    }

    #[tokio::test]
    async fn half_an_invitation_is_corrupt() {
        let (_dir, store) = temp_store().await;
        for (email, nonce, expires_at) in [
            ("nonce-only@example.test", Some("n"), None),
            ("expiry-only@example.test", None, Some(5_i64)),
        ] {
            sqlx::query(
                "INSERT INTO users (id, email, role, created, invitation_pending, \
                 invitation_nonce, invitation_expires_at) VALUES (?, ?, 'user', 0, 1, ?, ?)",
            )
            .bind(uuid_text(Uuid::new_v4()))
            .bind(email)
            .bind(nonce)
            .bind(expires_at)
            .execute(store.pool())
            .await
            .unwrap();
            let err = store.user_by_email(email).await.unwrap_err();
            assert!(
                matches!(err, StoreError::Corrupt(_)),
                "{email}: got {err:?}"
            );
        }
    }

    #[tokio::test]
    async fn connections_use_wal_normal_sync_and_foreign_keys() {
        let (_dir, store) = temp_store().await;
        let mut conn = store.pool().acquire().await.unwrap();
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(sync, 1, "synchronous = NORMAL");
        let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(fk, 1, "foreign_keys = ON");
        let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(busy, 5000, "busy_timeout in ms");
    }

    #[test]
    fn url_forms() {
        let (opts, memory) = connect_options("sqlite://relative/path.db").unwrap();
        assert!(!memory);
        assert_eq!(opts.get_filename(), Path::new("relative/path.db"));

        let (opts, memory) = connect_options("sqlite:///abs/path.db").unwrap();
        assert!(!memory);
        assert_eq!(opts.get_filename(), Path::new("/abs/path.db"));

        assert!(connect_options("sqlite::memory:").unwrap().1);
        assert!(connect_options("sqlite://?mode=memory").unwrap().1);

        assert!(matches!(
            connect_options("sqlite://x.db?mode=bogus"),
            Err(StoreError::InvalidUrl(_))
        ));
    }

    #[tokio::test]
    async fn malformed_uuid_is_corrupt() {
        let (_dir, store) = temp_store().await;
        sqlx::query(
            "INSERT INTO users (id, email, role, created) \
             VALUES ('not-a-uuid', 'bad@example.test', 'user', 0)",
        )
        .execute(store.pool())
        .await
        .unwrap();
        let err = store.user_by_email("bad@example.test").await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "got {err:?}");
    }
}
