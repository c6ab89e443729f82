//! What `store.url` may name: `sqlite:` for one replica, `postgres://` or `postgresql://` for
//! several sharing one database. The config checks a URL with this when it loads, and the
//! store opens it with the same rules, so a URL `check-config` accepts is one the store opens.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;

/// Default of `store.timeout`: how long a query waits for a database connection.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The problem with a URL of no known scheme.
pub const UNKNOWN_SCHEME: &str = "expected sqlite:, postgres:// or postgresql://";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreBackend {
    Sqlite,
    Postgres,
}

impl StoreBackend {
    /// The backend `url` names by its scheme, if any.
    pub fn of(url: &str) -> Option<StoreBackend> {
        if url.starts_with("sqlite:") {
            Some(StoreBackend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(StoreBackend::Postgres)
        } else {
            None
        }
    }
}

/// Checks a store URL without connecting, for configuration validation: the problem, never
/// echoing the URL (it may carry a password).
pub fn check(url: &str) -> Result<(), String> {
    match StoreBackend::of(url) {
        Some(StoreBackend::Sqlite) => Ok(()),
        Some(StoreBackend::Postgres) => postgres_options(url).map(drop),
        None => Err(UNKNOWN_SCHEME.to_owned()),
    }
}

/// Parses `url`; the error says what is wrong without repeating the URL.
pub fn postgres_options(url: &str) -> Result<PgConnectOptions, String> {
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
