//! Gateways acting as replicas of one deployment: a scratch PostgreSQL schema they share (like
//! the store tests, one schema per test so tests run in parallel), one keys directory, and a
//! TCP relay in front of PostgreSQL that a test can cut to simulate an outage.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, PgConnection};
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::{FakeUpstream, Gateway};

const URL_VAR: &str = "MEIRO_GATE_TEST_POSTGRES_URL";

/// The test server's URL, or `None` after saying clearly that `test` is skipped.
pub fn test_url(test: &str) -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!(
                "SKIPPED {test}: {URL_VAR} is not set \
                 (CI sets it, e.g. postgres://postgres@127.0.0.1:5432/test)"
            );
            None
        }
    }
}

/// A fresh schema, dropped (with everything in it) when this is dropped.
pub struct PgSchema {
    pub name: String,
    server: url::Url,
}

impl PgSchema {
    /// `None` (skipped) when the test server's URL is not set.
    pub async fn create(test: &str) -> Option<PgSchema> {
        let server = url::Url::parse(&test_url(test)?).expect("a valid test URL");
        let schema = PgSchema {
            name: format!("mg_test_{}", uuid::Uuid::new_v4().simple()),
            server,
        };
        execute_as_admin(&schema.server, &format!("CREATE SCHEMA {}", schema.name)).await;
        Some(schema)
    }

    /// The store URL of this schema on the test server.
    pub fn url(&self) -> String {
        self.url_via(None)
    }

    /// The store URL of this schema reached through `relay` (host and port replaced).
    pub fn url_via(&self, relay: Option<SocketAddr>) -> String {
        let mut url = self.server.clone();
        if let Some(relay) = relay {
            url.set_host(Some(&relay.ip().to_string())).unwrap();
            url.set_port(Some(relay.port())).unwrap();
        }
        url.query_pairs_mut()
            .append_pair("options", &format!("-c search_path={}", self.name));
        url.to_string()
    }

    /// The store URL of this schema whose connections carry `application_name = name`, so a
    /// test can find exactly those backends (see [`PgSchema::terminate_pooled`]).
    pub fn url_named(&self, name: &str) -> String {
        let mut url = url::Url::parse(&self.url()).unwrap();
        url.query_pairs_mut().append_pair("application_name", name);
        url.to_string()
    }

    /// Terminates the pooled connections of the replica whose store URL is
    /// [`PgSchema::url_named`]`(name)` (not its revocation listener), as a restart or a pooler
    /// dropping idle connections would, and waits until they are gone; returns how many.
    pub async fn terminate_pooled(&self, name: &str) -> usize {
        let mut conn = self.connect().await;
        let pids: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity \
             WHERE application_name = $1 AND query NOT LIKE 'LISTEN %'",
        )
        .bind(name)
        .fetch_all(&mut conn)
        .await
        .unwrap();
        // By pid only, in the select list: these backends and no other.
        sqlx::query("SELECT pg_terminate_backend(pid) FROM unnest($1::int4[]) AS t (pid)")
            .bind(&pids)
            .execute(&mut conn)
            .await
            .unwrap();
        let mut left = i64::MAX;
        for _ in 0..500 {
            left = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)")
                .bind(&pids)
                .fetch_one(&mut conn)
                .await
                .unwrap();
            if left == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(left, 0, "terminated backends still there");
        conn.close().await.ok();
        pids.len()
    }

    /// A plain connection to the schema, for statements the gateway's API does not offer.
    pub async fn connect(&self) -> PgConnection {
        PgConnectOptions::from_url(&url::Url::parse(&self.url()).unwrap())
            .unwrap()
            .connect()
            .await
            .expect("connect to the test schema")
    }

    /// Terminates the backends of this schema's revocation listeners (found by their last
    /// statement, the `LISTEN` on the feed's channel); returns how many.
    pub async fn terminate_listeners(&self) -> i64 {
        self.over_listeners("count(pg_terminate_backend(pid))")
            .await
    }

    /// How many revocation listeners of this schema are connected.
    pub async fn listeners(&self) -> i64 {
        self.over_listeners("count(*)").await
    }

    /// `aggregate` (one of the two constants above) over this schema's revocation-listener
    /// backends.
    async fn over_listeners(&self, aggregate: &'static str) -> i64 {
        let mut conn = self.connect().await;
        let n = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT {aggregate} FROM pg_stat_activity \
             WHERE pid <> pg_backend_pid() AND query LIKE \
             '%LISTEN \"meiro_gate_feed_' || 'session_revocations'::regclass::oid || '\"%'"
        )))
        .fetch_one(&mut conn)
        .await
        .unwrap();
        conn.close().await.ok();
        n
    }
}

async fn execute_as_admin(server: &url::Url, sql: &str) {
    let options = PgConnectOptions::from_url(server).unwrap();
    let mut conn = options.connect().await.expect("connect to the test server");
    sqlx::query(AssertSqlSafe(sql.to_owned()))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    conn.close().await.ok();
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        // Drop cannot await: a thread of its own with its own runtime, also when a test's
        // runtime is unwinding from a panic.
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name);
        let server = self.server.clone();
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(execute_as_admin(&server, &sql))
        })
        .join();
        if dropped.is_err() {
            eprintln!("dropping test schema {} failed", self.name);
        }
    }
}

/// TOML layer pointing a gateway at `store_url` with the shared `keys_dir`. A short
/// `store.timeout` keeps outage tests quick.
pub fn replica_toml(store_url: &str, keys_dir: &std::path::Path) -> String {
    format!(
        "[store]\nurl = \"{store_url}\"\ntimeout = \"1s\"\n[auth]\nkeys_dir = \"{}\"\n",
        keys_dir.display()
    )
}

/// Two (or more) gateways sharing one PostgreSQL schema and one keys directory.
pub struct Replicas {
    pub schema: PgSchema,
    pub keys: TempDir,
    pub upstream: FakeUpstream,
}

impl Replicas {
    pub async fn new(test: &str) -> Option<Replicas> {
        Some(Replicas {
            schema: PgSchema::create(test).await?,
            keys: tempfile::tempdir().unwrap(),
            upstream: FakeUpstream::start().await,
        })
    }

    /// Starts a replica on the shared schema; `extra_toml` is merged last.
    pub async fn start(&self, extra_toml: &str) -> Gateway {
        self.start_via(None, extra_toml).await
    }

    /// Starts a replica whose database connections are named `name` (see
    /// [`PgSchema::terminate_pooled`]).
    pub async fn start_named(&self, name: &str, extra_toml: &str) -> Gateway {
        let shared = replica_toml(&self.schema.url_named(name), self.keys.path());
        Gateway::start_with_layers(&self.upstream.url(), &[&shared, extra_toml]).await
    }

    /// Starts a replica reaching PostgreSQL through `relay`.
    pub async fn start_via(&self, relay: Option<SocketAddr>, extra_toml: &str) -> Gateway {
        let shared = replica_toml(&self.schema.url_via(relay), self.keys.path());
        Gateway::start_with_layers(&self.upstream.url(), &[&shared, extra_toml]).await
    }
}

/// A TCP relay to a server: `cut` closes every relayed connection and refuses new ones (they
/// are accepted and closed at once) until `restore`.
pub struct Relay {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = tokio::spawn({
            let (cut, connections) = (cut.clone(), connections.clone());
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if cut.load(Ordering::SeqCst) {
                        continue; // dropped: closed at once
                    }
                    let relayed = tokio::spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(target).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    connections.lock().unwrap().push(relayed);
                }
            }
        });
        Relay {
            addr,
            cut,
            connections,
            accept,
        }
    }

    /// Relays to the host and port of the PostgreSQL URL `url`.
    pub async fn to_postgres(url: &str) -> Relay {
        let url = url::Url::parse(url).unwrap();
        let target = tokio::net::lookup_host((
            url.host_str().unwrap_or("127.0.0.1"),
            url.port().unwrap_or(5432),
        ))
        .await
        .unwrap()
        .next()
        .unwrap();
        Relay::start(target).await
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
