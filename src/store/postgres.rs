//! PostgreSQL implementation of [`Store`], so several gateway replicas can share users, sessions
//! and the revocation feed: connection setup, the embedded schema migrations and the queries
//! behind each trait method.
//!
//! Transactions run at PostgreSQL's default READ COMMITTED isolation:
//!
//! - The compare-and-swap methods (`rotate_session_token`, `accept_invitation`, `revoke_session`
//!   and spending a reset in `complete_password_reset`) decide with one conditional `UPDATE`. A
//!   concurrent `UPDATE` of the same row waits for the row lock and then re-checks its `WHERE`
//!   clause against the committed row, so of several racers exactly one matches.
//! - The multi-statement changes of a user's password resets (`create_password_reset`,
//!   `complete_password_reset`) first lock the user's row (`SELECT ... FOR NO KEY UPDATE`), which
//!   serializes them per user like SQLite's `BEGIN IMMEDIATE` does globally.
//! - Locks are always taken in the same order — the user row, then reset rows, then session rows
//!   (several of them in id order), then the feed lock of [`append_revocations`] — so these
//!   transactions cannot deadlock each other.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, Row, SqlSafeStr};
use uuid::Uuid;

use super::{
    AuditEvent, AuditFilter, DEFAULT_TIMEOUT, FeedListener, FeedWakeup, Invitation, NewUser,
    PasswordReset, Revocation, Role, Rotation, Session, SessionId, Store, StoreError, StoreResult,
    UnixTime, User, UserId, detail_from_json, detail_json, ip_from_text,
};

/// Embedded so the binary carries its schema without sqlx's `migrate!` macro. Versions are kept
/// parallel to `migrations/sqlite`.
const INIT_SQL: &str = include_str!("../../migrations/postgres/0001_init.sql");
const INVITATIONS_AND_RESETS_SQL: &str =
    include_str!("../../migrations/postgres/0002_invitations_and_resets.sql");
const THROTTLE_SQL: &str = include_str!("../../migrations/postgres/0003_throttle.sql");
const AUDIT_SQL: &str = include_str!("../../migrations/postgres/0004_audit.sql");

/// Connections per replica. Queries are short; argon2 and the network, not the database, bound
/// a gateway, and PostgreSQL's default `max_connections` (100) leaves room for several replicas.
const POOL_SIZE: u32 = 10;

/// A connection that sat idle this long is pinged before use (a restarted server or a NAT that
/// dropped it would otherwise fail the first query). Busy connections skip the round trip.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(30);

/// The unique index behind [`StoreError::DuplicateEmail`].
const EMAIL_INDEX: &str = "users_email_lower";

/// The channel feed appends are announced on, computed by the server so that writers and
/// listeners agree: suffixed with the feed table's oid (like [`FEED_LOCK_CLASS`]'s second key),
/// so stores in different schemas of one database (tests) do not wake each other.
macro_rules! feed_channel {
    () => {
        "'meiro_gate_feed_' || 'session_revocations'::regclass::oid"
    };
}

/// First key of the feed's advisory lock (two-key form, whose key space does not overlap the
/// one-key form sqlx's migrator locks with). The second key is the feed table's oid, so stores in
/// different schemas of one database (tests) do not contend.
const FEED_LOCK_CLASS: i32 = 0x4d47_4645; // "MGFE"

macro_rules! user_columns {
    () => {
        "id, email, password_hash, role, disabled, deleted, sso_enabled, invitation_pending, \
         invitation_nonce, invitation_expires_at, created, last_login"
    };
}

macro_rules! password_reset_columns {
    () => {
        "digest, user_id, created, expires_at, used_at"
    };
}

macro_rules! session_columns {
    () => {
        "id, user_id, created, expires_at, revoked_at, current_jti, refresh_count, last_refresh_at"
    };
}

/// [`Store`] backed by a PostgreSQL database that several replicas may share.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// One connection, outside `pool`, held by the revocation listener; connected lazily.
    listener_pool: PgPool,
}

impl PostgresStore {
    /// Connects to and migrates the database at `url` (`postgres://` or `postgresql://`, libpq
    /// style: `sslmode`, `sslrootcert`, `options`, `application_name`, ... in the query).
    /// `sslmode` defaults to `prefer`; TLS is rustls on aws-lc-rs.
    pub async fn open(url: &str) -> StoreResult<PostgresStore> {
        PostgresStore::open_with(connect_options(url)?).await
    }

    /// Like [`PostgresStore::open`], with options already parsed (tests set a `search_path`).
    pub async fn open_with(options: PgConnectOptions) -> StoreResult<PostgresStore> {
        PostgresStore::open_with_timeout(options, DEFAULT_TIMEOUT).await
    }

    /// `timeout` bounds waiting for a pooled connection, including opening a new one (TCP, TLS,
    /// authentication): an unreachable database fails requests and `/readyz` within it instead
    /// of hanging them.
    pub async fn open_with_timeout(
        options: PgConnectOptions,
        timeout: Duration,
    ) -> StoreResult<PostgresStore> {
        let listener_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(timeout)
            // Held for the life of the process; a dead one is replaced on re-subscribing.
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with(options.clone());
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(timeout)
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_IF_IDLE_FOR {
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(options)
            .await?;
        // sqlx's migrator holds a database-wide advisory lock while it runs, so replicas
        // starting together apply each migration once.
        migrator().run(&pool).await?;
        Ok(PostgresStore {
            pool,
            listener_pool,
        })
    }

    /// The underlying pool, for tests and diagnostics.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Parses `url`. Errors name the URL with its password redacted.
pub(crate) fn connect_options(url: &str) -> StoreResult<PgConnectOptions> {
    parse_url(url).map_err(|why| {
        let shown = crate::config::Secret::url(url.to_owned()).redacted_url();
        StoreError::InvalidUrl(format!("{shown}: {why}"))
    })
}

/// Parses `url`; the error says what is wrong without repeating the URL.
pub(crate) fn parse_url(url: &str) -> Result<PgConnectOptions, String> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err("expected postgres:// or postgresql://".to_owned());
    }
    let options = PgConnectOptions::from_str(url).map_err(|e| {
        // sqlx nests "error with configuration:" wrappers; the innermost error names the
        // offending value (an sslmode, a port), never the whole URL.
        let mut inner: &dyn std::error::Error = &e;
        while let Some(source) = inner.source() {
            inner = source;
        }
        format!("invalid PostgreSQL URL: {inner}")
    })?;
    // The migrator's `CREATE TABLE IF NOT EXISTS` would log a NOTICE (at info) on every start.
    // Warnings still come through; a `client_min_messages` in the URL's `options` is kept.
    let quiet = !options
        .get_options()
        .is_some_and(|o| o.contains("client_min_messages"));
    Ok(if quiet {
        options.options([("client_min_messages", "warning")])
    } else {
        options
    })
}

/// Every schema migration, in order. Applied ones must never change: sqlx checksums them.
fn migrations() -> Vec<Migration> {
    [
        (1, "init", INIT_SQL),
        (2, "invitations and resets", INVITATIONS_AND_RESETS_SQL),
        (3, "throttle", THROTTLE_SQL),
        (4, "audit", AUDIT_SQL),
    ]
    .into_iter()
    .map(|(version, description, sql)| {
        Migration::new(
            version,
            description.into(),
            MigrationType::Simple,
            sql.into_sql_str(),
            false,
        )
    })
    .collect()
}

fn migrator() -> Migrator {
    Migrator::with_migrations(migrations())
}

fn user_from_row(row: &PgRow) -> StoreResult<User> {
    let role: String = row.try_get("role")?;
    let nonce: Option<String> = row.try_get("invitation_nonce")?;
    let expires_at: Option<UnixTime> = row.try_get("invitation_expires_at")?;
    // The schema's CHECK keeps the two together; this only guards against a schema drift.
    let invitation = match (nonce, expires_at) {
        (Some(nonce), Some(expires_at)) => Some(Invitation { nonce, expires_at }),
        (None, None) => None,
        (nonce, expires_at) => {
            return Err(StoreError::Corrupt(format!(
                "invitation_nonce (set: {}) and invitation_expires_at ({expires_at:?}) \
                 must be set together",
                nonce.is_some()
            )));
        }
    };
    Ok(User {
        id: UserId(row.try_get("id")?),
        email: row.try_get("email")?,
        password_hash: row.try_get("password_hash")?,
        role: Role::parse(&role)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown role {role:?}")))?,
        disabled: row.try_get("disabled")?,
        deleted: row.try_get("deleted")?,
        sso_enabled: row.try_get("sso_enabled")?,
        invitation_pending: row.try_get("invitation_pending")?,
        invitation,
        created: row.try_get("created")?,
        last_login: row.try_get("last_login")?,
    })
}

fn password_reset_from_row(row: &PgRow) -> StoreResult<PasswordReset> {
    Ok(PasswordReset {
        digest: row.try_get("digest")?,
        user_id: UserId(row.try_get("user_id")?),
        created: row.try_get("created")?,
        expires_at: row.try_get("expires_at")?,
        used_at: row.try_get("used_at")?,
    })
}

fn session_from_row(row: &PgRow) -> StoreResult<Session> {
    Ok(Session {
        id: SessionId(row.try_get("id")?),
        user_id: UserId(row.try_get("user_id")?),
        created: row.try_get("created")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
        current_jti: row.try_get("current_jti")?,
        refresh_count: row.try_get("refresh_count")?,
        last_refresh_at: row.try_get("last_refresh_at")?,
    })
}

/// Locks a user's row for the rest of the transaction; the first lock of every transaction that
/// changes the user's password resets. A no-op for an unknown user.
async fn lock_user(conn: &mut PgConnection, user: UserId) -> StoreResult<()> {
    sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE")
        .bind(user.0)
        .execute(conn)
        .await?;
    Ok(())
}

/// Appends revoked sessions to the feed, in the order given. Must be the last thing the
/// transaction does before it commits.
///
/// Replicas poll `seq > cursor` and move the cursor to the last seq they read, so no seq may
/// become visible after a higher one has been read. A sequence alone does not ensure that: two
/// transactions draw seqs 7 and 8, the one with 8 commits first, a replica polling in between reads
/// 8 and will never ask for 7 again. So appends are serialized by a transaction-level advisory
/// lock: seqs are drawn only while holding it, and it is held until the transaction has
/// committed (PostgreSQL releases locks after the commit is visible to others), so seqs commit in
/// increasing order and every snapshot of the feed is a prefix of it (with gaps only where a
/// transaction rolled back). Readers need nothing special.
///
/// The lock is taken after every row lock the transaction needs, and only this `INSERT` and
/// the `COMMIT` follow it, so a holder never waits on another transaction (no deadlock) and
/// holds it for about two round trips. The price is that all replicas' feed appends run one at
/// a time, which revocations (logout, refresh-token reuse, disabling, password resets) can
/// afford. The alternative — stamping each row with its transaction id and having readers stop
/// below the oldest transaction still running (`pg_snapshot_xmin`) — keeps appends parallel,
/// but any long transaction in the database, related or not, would then stall every replica's
/// feed.
async fn append_revocations(
    conn: &mut PgConnection,
    ids: &[SessionId],
    at: UnixTime,
) -> StoreResult<()> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "SELECT 1 FROM pg_advisory_xact_lock($1, 'session_revocations'::regclass::oid::int4)",
    )
    .bind(FEED_LOCK_CLASS)
    .execute(&mut *conn)
    .await?;
    let ids: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
    // unnest yields the array in order and the seq default is drawn row by row as they come.
    // The NOTIFY is queued by the transaction and delivered only when it commits, so a woken
    // listener always finds the entries; one statement keeps the lock's hold at two round trips.
    sqlx::query(concat!(
        "WITH appended AS (INSERT INTO session_revocations (session_id, revoked_at) \
         SELECT id, $2 FROM unnest($1::uuid[]) AS t (id)) \
         SELECT pg_notify(",
        feed_channel!(),
        ", '')"
    ))
    .bind(&ids)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Revokes the user's open sessions and feeds them to the revocation log; the caller owns the
/// transaction so this can be part of a larger change (as its last step, see
/// [`append_revocations`]).
async fn revoke_open_sessions(
    conn: &mut PgConnection,
    user: UserId,
    at: UnixTime,
) -> StoreResult<Vec<SessionId>> {
    // The rows are locked in id order so that two of these for one user (say a disable racing
    // a password reset) cannot deadlock; a session revoked meanwhile drops out of the sub-select
    // when its lock is granted and its `revoked_at` re-checked.
    let mut ids: Vec<SessionId> = sqlx::query_scalar(
        "UPDATE sessions SET revoked_at = $1 \
         WHERE id IN (SELECT id FROM sessions WHERE user_id = $2 AND revoked_at IS NULL \
                      ORDER BY id FOR UPDATE) \
         RETURNING id",
    )
    .bind(at)
    .bind(user.0)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(SessionId)
    .collect();
    // RETURNING order is unspecified; sort so the feed order is reproducible.
    ids.sort();
    append_revocations(conn, &ids, at).await?;
    Ok(ids)
}

/// Wakes the revocation follower on feed appends by any replica (`LISTEN` on the feed's
/// channel, on its own connection).
struct PgFeedListener {
    pool: PgPool,
    /// `None` until subscribed, and again after an error.
    listener: Option<PgListener>,
}

#[async_trait]
impl FeedListener for PgFeedListener {
    async fn next(&mut self) -> StoreResult<FeedWakeup> {
        let Some(listener) = self.listener.as_mut() else {
            self.listener = Some(subscribe(&self.pool).await?);
            return Ok(FeedWakeup::Subscribed);
        };
        match listener.try_recv().await {
            Ok(Some(_)) => Ok(FeedWakeup::Appended),
            // The connection was lost; sqlx has already reconnected and re-issued the LISTEN
            // (its `eager_reconnect`), and reports a failed reconnect as an error instead.
            Ok(None) => Ok(FeedWakeup::Subscribed),
            Err(e) => {
                // A terminated backend reports its FATAL error here before the socket closes;
                // either way, start over with a fresh connection on the next call, so that
                // the moment the subscription is back is reported as `Subscribed`.
                self.listener = None;
                Err(e.into())
            }
        }
    }
}

async fn subscribe(pool: &PgPool) -> StoreResult<PgListener> {
    let mut listener = PgListener::connect_with(pool).await?;
    let channel: String = sqlx::query_scalar(concat!("SELECT ", feed_channel!()))
        .fetch_one(&mut listener)
        .await?;
    listener.listen(&channel).await?;
    Ok(listener)
}

#[async_trait]
impl Store for PostgresStore {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn count_users(&self) -> StoreResult<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(&self.pool)
            .await?)
    }

    async fn create_user(&self, user: NewUser) -> StoreResult<User> {
        let user = User {
            id: UserId::new_random(),
            email: user.email,
            password_hash: user.password_hash,
            role: user.role,
            disabled: false,
            deleted: false,
            sso_enabled: false,
            invitation_pending: user.invitation_pending,
            invitation: user.invitation,
            created: user.created,
            last_login: None,
        };
        let inserted = sqlx::query(concat!(
            "INSERT INTO users (",
            user_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        ))
        .bind(user.id.0)
        .bind(&user.email)
        .bind(&user.password_hash)
        .bind(user.role.as_str())
        .bind(user.disabled)
        .bind(user.deleted)
        .bind(user.sso_enabled)
        .bind(user.invitation_pending)
        .bind(user.invitation.as_ref().map(|i| i.nonce.as_str()))
        .bind(user.invitation.as_ref().map(|i| i.expires_at))
        .bind(user.created)
        .bind(user.last_login)
        .execute(&self.pool)
        .await;
        match inserted {
            Ok(_) => Ok(user),
            Err(sqlx::Error::Database(e))
                if e.is_unique_violation() && e.constraint() == Some(EMAIL_INDEX) =>
            {
                Err(StoreError::DuplicateEmail)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn user_by_email(&self, email: &str) -> StoreResult<Option<User>> {
        // Matches the expression of the unique index, which serves the lookup.
        sqlx::query(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE lower(email) = lower($1)"
        ))
        .bind(email)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(user_from_row)
        .transpose()
    }

    async fn user_by_id(&self, id: UserId) -> StoreResult<Option<User>> {
        sqlx::query(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE id = $1"
        ))
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(user_from_row)
        .transpose()
    }

    async fn list_users(&self) -> StoreResult<Vec<User>> {
        // insertion_seq breaks ties in insertion order.
        sqlx::query(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users ORDER BY created, insertion_seq"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(user_from_row)
        .collect()
    }

    async fn record_login(&self, id: UserId, at: UnixTime) -> StoreResult<()> {
        sqlx::query("UPDATE users SET last_login = $1 WHERE id = $2")
            .bind(at)
            .bind(id.0)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn set_sso_enabled(&self, user: UserId) -> StoreResult<()> {
        // `NOT sso_enabled`: every SSO login calls this; only the first one writes a row version.
        sqlx::query("UPDATE users SET sso_enabled = true WHERE id = $1 AND NOT sso_enabled")
            .bind(user.0)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn set_user_disabled(
        &self,
        email: &str,
        disabled: bool,
        at: UnixTime,
    ) -> StoreResult<Option<User>> {
        let mut tx = self.pool.begin().await?;
        // Locks the user row first, like the reset transactions.
        let row = sqlx::query(concat!(
            "UPDATE users SET disabled = $1 WHERE lower(email) = lower($2) RETURNING ",
            user_columns!()
        ))
        .bind(disabled)
        .bind(email)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let user = user_from_row(&row)?;
        if disabled {
            revoke_open_sessions(&mut tx, user.id, at).await?;
        }
        tx.commit().await?;
        Ok(Some(user))
    }

    async fn create_session(&self, session: &Session) -> StoreResult<()> {
        sqlx::query(concat!(
            "INSERT INTO sessions (",
            session_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(session.id.0)
        .bind(session.user_id.0)
        .bind(session.created)
        .bind(session.expires_at)
        .bind(session.revoked_at)
        .bind(session.current_jti)
        .bind(session.refresh_count)
        .bind(session.last_refresh_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn session(&self, id: SessionId) -> StoreResult<Option<Session>> {
        sqlx::query(concat!(
            "SELECT ",
            session_columns!(),
            " FROM sessions WHERE id = $1"
        ))
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(session_from_row)
        .transpose()
    }

    async fn rotate_session_token(
        &self,
        id: SessionId,
        presented_jti: Uuid,
        new_jti: Uuid,
        at: UnixTime,
    ) -> StoreResult<Rotation> {
        // The compare and the swap are one statement: a concurrent rotation waits for the row
        // lock, then re-checks `current_jti` against the winner's row and matches nothing.
        let swapped = sqlx::query(
            "UPDATE sessions \
             SET current_jti = $1, refresh_count = refresh_count + 1, last_refresh_at = $2 \
             WHERE id = $3 AND current_jti = $4 AND revoked_at IS NULL",
        )
        .bind(new_jti)
        .bind(at)
        .bind(id.0)
        .bind(presented_jti)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if swapped > 0 {
            return Ok(Rotation::Rotated);
        }
        // Only classifies the failure; it was decided atomically above.
        let revoked_at: Option<Option<UnixTime>> =
            sqlx::query_scalar("SELECT revoked_at FROM sessions WHERE id = $1")
                .bind(id.0)
                .fetch_optional(&self.pool)
                .await?;
        Ok(match revoked_at {
            Some(None) => Rotation::NotCurrent,
            None | Some(Some(_)) => Rotation::Gone,
        })
    }

    async fn revoke_session(&self, id: SessionId, at: UnixTime) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        let revoked =
            sqlx::query("UPDATE sessions SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(at)
                .bind(id.0)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                > 0;
        if !revoked {
            tx.rollback().await?;
            return Ok(false);
        }
        append_revocations(&mut tx, &[id], at).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn revoke_user_sessions(
        &self,
        user: UserId,
        at: UnixTime,
    ) -> StoreResult<Vec<SessionId>> {
        let mut tx = self.pool.begin().await?;
        let ids = revoke_open_sessions(&mut tx, user, at).await?;
        tx.commit().await?;
        Ok(ids)
    }

    async fn revocations_since(&self, after: i64, limit: i64) -> StoreResult<Vec<Revocation>> {
        // PostgreSQL rejects a negative LIMIT; SQLite reads it as "no limit". Both: nothing.
        if limit <= 0 {
            return Ok(Vec::new());
        }
        sqlx::query(
            "SELECT seq, session_id FROM session_revocations \
             WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok(Revocation {
                seq: row.try_get("seq")?,
                session_id: SessionId(row.try_get("session_id")?),
            })
        })
        .collect()
    }

    async fn revocation_cursor(&self) -> StoreResult<i64> {
        // Appends commit in seq order (see `append_revocations`), so nothing below this can
        // still appear.
        Ok(
            sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM session_revocations")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn prune(&self, before: UnixTime) -> StoreResult<u64> {
        let mut tx = self.pool.begin().await?;
        // Old feed rows are locked by no one else. Resets before sessions, and sessions in id
        // order: the lock order of the other transactions (an ended session may still be open
        // and be revoked meanwhile).
        let revocations = sqlx::query("DELETE FROM session_revocations WHERE revoked_at < $1")
            .bind(before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let resets = sqlx::query("DELETE FROM password_resets WHERE expires_at < $1")
            .bind(before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let sessions = sqlx::query(
            "DELETE FROM sessions WHERE id IN \
             (SELECT id FROM sessions WHERE expires_at < $1 ORDER BY id FOR UPDATE)",
        )
        .bind(before)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let windows = sqlx::query("DELETE FROM throttle_windows WHERE expires_at < $1")
            .bind(before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(revocations + sessions + resets + windows)
    }

    async fn throttle_reserve(
        &self,
        scope: &str,
        key: &str,
        limit: u32,
        window: i64,
        now: UnixTime,
    ) -> StoreResult<Result<UnixTime, u64>> {
        // One statement, so replicas racing on one key are serialized by its row: insert the
        // first window, or start a new window over an ended one, or count one more in a window
        // below the limit. A full, current window matches the WHERE of neither and returns
        // nothing. (SET expressions all read the row as it was.)
        let started: Option<UnixTime> = sqlx::query_scalar(
            "INSERT INTO throttle_windows AS t (scope, key, window_start, expires_at, attempts) \
             VALUES ($1, $2, $3, $3 + $4, 1) \
             ON CONFLICT (scope, key) DO UPDATE SET \
             window_start = CASE WHEN t.expires_at <= $3 THEN $3 ELSE t.window_start END, \
             expires_at = CASE WHEN t.expires_at <= $3 THEN $3 + $4 ELSE t.expires_at END, \
             attempts = CASE WHEN t.expires_at <= $3 THEN 1 ELSE t.attempts + 1 END \
             WHERE t.expires_at <= $3 OR t.attempts < $5 \
             RETURNING window_start",
        )
        .bind(scope)
        .bind(key)
        .bind(now)
        .bind(window)
        .bind(i64::from(limit))
        .fetch_optional(&self.pool)
        .await?;
        if let Some(started) = started {
            return Ok(Ok(started));
        }
        // Only the retry hint; the decision was made above.
        let ends: Option<UnixTime> = sqlx::query_scalar(
            "SELECT expires_at FROM throttle_windows WHERE scope = $1 AND key = $2",
        )
        .bind(scope)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        Ok(Err(ends.map_or(1, |ends| (ends - now).max(1) as u64)))
    }

    async fn throttle_refund(
        &self,
        scope: &str,
        key: &str,
        window_start: UnixTime,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE throttle_windows SET attempts = attempts - 1 \
             WHERE scope = $1 AND key = $2 AND window_start = $3 AND attempts > 0",
        )
        .bind(scope)
        .bind(key)
        .bind(window_start)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    fn revocation_listener(&self) -> Option<Box<dyn FeedListener>> {
        Some(Box::new(PgFeedListener {
            pool: self.listener_pool.clone(),
            listener: None,
        }))
    }

    async fn renew_invitation(
        &self,
        user: UserId,
        invitation: &Invitation,
        role: Role,
    ) -> StoreResult<Option<User>> {
        sqlx::query(concat!(
            "UPDATE users SET invitation_nonce = $1, invitation_expires_at = $2, role = $3 \
             WHERE id = $4 AND invitation_pending RETURNING ",
            user_columns!()
        ))
        .bind(&invitation.nonce)
        .bind(invitation.expires_at)
        .bind(role.as_str())
        .bind(user.0)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(user_from_row)
        .transpose()
    }

    async fn accept_invitation(
        &self,
        user: UserId,
        nonce: &str,
        password_hash: &str,
        at: UnixTime,
    ) -> StoreResult<bool> {
        // Check and spend are one statement, so of concurrent accepts of one link exactly one
        // wins (like `rotate_session_token`).
        let accepted = sqlx::query(
            "UPDATE users SET password_hash = $1, invitation_pending = false, \
             invitation_nonce = NULL, invitation_expires_at = NULL \
             WHERE id = $2 AND invitation_pending AND invitation_nonce = $3 \
             AND invitation_expires_at > $4",
        )
        .bind(password_hash)
        .bind(user.0)
        .bind(nonce)
        .bind(at)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(accepted > 0)
    }

    async fn create_password_reset(&self, reset: &PasswordReset) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        // Without it, two concurrent resets of one user would each miss the other's
        // uncommitted row below and both stay usable.
        lock_user(&mut tx, reset.user_id).await?;
        // Superseded: an earlier link stops working once a newer one is sent.
        sqlx::query(
            "UPDATE password_resets SET used_at = $1 WHERE user_id = $2 AND used_at IS NULL",
        )
        .bind(reset.created)
        .bind(reset.user_id.0)
        .execute(&mut *tx)
        .await?;
        sqlx::query(concat!(
            "INSERT INTO password_resets (",
            password_reset_columns!(),
            ") VALUES ($1, $2, $3, $4, $5)"
        ))
        .bind(&reset.digest)
        .bind(reset.user_id.0)
        .bind(reset.created)
        .bind(reset.expires_at)
        .bind(reset.used_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn password_reset(&self, digest: &str) -> StoreResult<Option<PasswordReset>> {
        sqlx::query(concat!(
            "SELECT ",
            password_reset_columns!(),
            " FROM password_resets WHERE digest = $1"
        ))
        .bind(digest)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(password_reset_from_row)
        .transpose()
    }

    async fn complete_password_reset(
        &self,
        digest: &str,
        user: UserId,
        password_hash: &str,
        at: UnixTime,
    ) -> StoreResult<Option<Vec<SessionId>>> {
        let mut tx = self.pool.begin().await?;
        // The user row before the reset row, in the same order as `create_password_reset`.
        lock_user(&mut tx, user).await?;
        let spent = sqlx::query(
            "UPDATE password_resets SET used_at = $1 \
             WHERE digest = $2 AND user_id = $3 AND used_at IS NULL AND expires_at > $1",
        )
        .bind(at)
        .bind(digest)
        .bind(user.0)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if spent == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
            .bind(password_hash)
            .bind(user.0)
            .execute(&mut *tx)
            .await?;
        let revoked = revoke_open_sessions(&mut tx, user, at).await?;
        tx.commit().await?;
        Ok(Some(revoked))
    }

    async fn append_audit(&self, events: &[AuditEvent]) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        for e in events {
            sqlx::query(
                "INSERT INTO audit_events \
                 (at, kind, user_id, email, client_ip, request_id, detail) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(e.at)
            .bind(&e.kind)
            .bind(e.user_id.map(|u| u.0))
            .bind(&e.email)
            .bind(e.client_ip.map(|ip| ip.to_string()))
            .bind(&e.request_id)
            .bind(detail_json(&e.detail))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn audit_events(&self, filter: &AuditFilter) -> StoreResult<Vec<AuditEvent>> {
        let rows = sqlx::query(
            "SELECT at, kind, user_id, email, client_ip, request_id, detail \
             FROM audit_events WHERE at >= $1 \
             AND (($2::uuid IS NULL AND $3::text IS NULL) OR user_id = $2 OR email = $3) \
             ORDER BY at DESC, seq DESC LIMIT $4",
        )
        .bind(filter.since.unwrap_or(UnixTime::MIN))
        .bind(filter.user_id.map(|u| u.0))
        .bind(&filter.email)
        .bind(filter.limit)
        .fetch_all(&self.pool)
        .await?;
        let mut events = rows
            .iter()
            .map(audit_event_from_row)
            .collect::<StoreResult<Vec<_>>>()?;
        events.reverse();
        Ok(events)
    }

    async fn prune_audit(&self, before: UnixTime) -> StoreResult<u64> {
        Ok(sqlx::query("DELETE FROM audit_events WHERE at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }
}

fn audit_event_from_row(row: &PgRow) -> StoreResult<AuditEvent> {
    let user_id: Option<Uuid> = row.try_get("user_id")?;
    let detail: String = row.try_get("detail")?;
    Ok(AuditEvent {
        at: row.try_get("at")?,
        kind: row.try_get("kind")?,
        user_id: user_id.map(UserId),
        email: row.try_get("email")?,
        client_ip: ip_from_text(row.try_get("client_ip")?)?,
        request_id: row.try_get("request_id")?,
        detail: detail_from_json(&detail)?,
    })
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::Arc;
    use std::time::Duration;

    use sqlx::AssertSqlSafe;
    use sqlx::postgres::PgSslMode;

    use super::*;
    use crate::store::suite;

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

    fn new_user(email: &str) -> NewUser {
        NewUser {
            email: email.to_owned(),
            password_hash: None,
            role: Role::User,
            invitation_pending: false,
            invitation: None,
            created: 1_700_000_000,
        }
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
        let user = store.create_user(new_user(email)).await.unwrap();
        let mut sessions = Vec::new();
        for _ in 0..n {
            let s = new_session(user.id);
            store.create_session(&s).await.unwrap();
            sessions.push(s);
        }
        sessions
    }

    async fn applied_migrations(store: &PostgresStore) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
            .fetch_one(store.pool())
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn conformance_suite() {
        with_scratch_schema("conformance_suite", |options| async move {
            suite::run_all(Arc::new(open(&options).await)).await;
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
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
    async fn reopening_keeps_data_and_does_not_reapply_migrations() {
        with_scratch_schema(
            "reopening_keeps_data_and_does_not_reapply_migrations",
            |options| async move {
                let store = open(&options).await;
                let user = store
                    .create_user(new_user("keep@example.test"))
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
    async fn database_from_first_migration_upgrades() {
        with_scratch_schema(
            "database_from_first_migration_upgrades",
            |options| async move {
                // A schema with only migration 1 applied.
                let pool = PgPoolOptions::new()
                    .max_connections(1)
                    .connect_with(options.clone())
                    .await
                    .unwrap();
                Migrator::with_migrations(migrations().into_iter().take(1).collect())
                    .run(&pool)
                    .await
                    .unwrap();
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
                assert_eq!(applied_migrations(&store).await, migrations().len() as i64);
            },
        )
        .await;
    }

    #[tokio::test]
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
    async fn feed_appends_commit_in_seq_order() {
        with_scratch_schema("feed_appends_commit_in_seq_order", |options| async move {
            let store = open(&options).await;
            let reader = open(&options).await;
            let sessions = sessions_of_new_user(&store, "feed-order@example.test", 2).await;
            let (first, second) = (sessions[0].id, sessions[1].id);
            let cursor = reader.revocation_cursor().await.unwrap();

            // Transaction A appends `first` and stays open.
            let mut a = store.pool().begin().await.unwrap();
            append_revocations(&mut a, &[first], 10).await.unwrap();

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
                        sessions_of_new_user(&store, &format!("w{w}@example.test"), PER_WRITER)
                            .await;
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
                                append_revocations(&mut tx, &[s.id], 1_700_000_100)
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
                    .create_user(new_user("shared@example.test"))
                    .await
                    .unwrap();
                assert_eq!(
                    b.user_by_email("SHARED@example.test").await.unwrap(),
                    Some(user.clone())
                );
                assert!(matches!(
                    b.create_user(new_user("shared@example.test")).await,
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
    async fn listener_is_woken_by_another_replicas_commit() {
        with_scratch_schema(
            "listener_is_woken_by_another_replicas_commit",
            |options| async move {
                let (a, b) = (open(&options).await, open(&options).await);
                let mut listener = b.revocation_listener().expect("PostgreSQL pushes");
                assert_eq!(listener.next().await.unwrap(), FeedWakeup::Subscribed);
                let sessions = sessions_of_new_user(&a, "listen@example.test", 2).await;

                let mut tx = a.pool().begin().await.unwrap();
                append_revocations(&mut tx, &[sessions[0].id], 10)
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
                        store
                            .rotate_session_token(
                                session.id,
                                session.current_jti,
                                Uuid::new_v4(),
                                5,
                            )
                            .await
                            .unwrap()
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

    /// `sslmode` from the URL is honoured, and TLS (rustls on aws-lc-rs) really connects when
    /// the server offers it.
    #[tokio::test]
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
            let ssl =
                sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
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
        let opts = connect_options("postgres://db/gate?options=-c%20client_min_messages%3Dnotice")
            .unwrap();
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
}
