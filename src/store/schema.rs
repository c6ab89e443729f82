//! The schema migrations of both backends, embedded so the binary carries its schema without
//! sqlx's `migrate!` macro. Each backend has its own SQL under `migrations/`, with the versions
//! kept parallel; the list of versions and how they become sqlx migrations is written once here.

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType};

/// Every migration of the backend whose files are in `migrations/$dir`, in order. Applied ones
/// must never change: sqlx checksums them.
macro_rules! embedded {
    ($dir:literal) => {
        [
            (
                1,
                "init",
                include_str!(concat!("../../migrations/", $dir, "/0001_init.sql")),
            ),
            (
                2,
                "invitations and resets",
                include_str!(concat!(
                    "../../migrations/",
                    $dir,
                    "/0002_invitations_and_resets.sql"
                )),
            ),
            (
                3,
                "throttle",
                include_str!(concat!("../../migrations/", $dir, "/0003_throttle.sql")),
            ),
            (
                4,
                "audit",
                include_str!(concat!("../../migrations/", $dir, "/0004_audit.sql")),
            ),
            (
                5,
                "users api",
                include_str!(concat!("../../migrations/", $dir, "/0005_users_api.sql")),
            ),
        ]
    };
}

pub(super) fn sqlite_migrations() -> Vec<Migration> {
    migrations(embedded!("sqlite"))
}

pub(super) fn postgres_migrations() -> Vec<Migration> {
    migrations(embedded!("postgres"))
}

fn migrations<const N: usize>(sources: [(i64, &'static str, &'static str); N]) -> Vec<Migration> {
    sources
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
