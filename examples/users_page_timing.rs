//! How long a page of `GET /users` takes with 100 users and with 100,000 (issue 16: "list
//! queries are indexed and take the same time with 100,000 users as with 100").
//!
//! ```text
//! cargo run --release --example users_page_timing                       # SQLite (a temp file)
//! cargo run --release --example users_page_timing -- postgres://postgres@127.0.0.1:5432/test
//! ```
//!
//! On PostgreSQL it works in a schema of its own (dropped at the end). For each size it seeds
//! the users (a tenth of them in the trash), then times [`Store::users_page`] — the first page
//! of 20 in every order and direction, and a page deep in the list — and prints the median and
//! 95th percentile of 200 runs each.

use std::sync::Arc;
use std::time::Instant;

use meiro_gate::store::{
    self, NewUser, PostgresStore, Role, Store, UserChanges, UserOrder, UserPage,
};

const SIZES: [usize; 2] = [100, 100_000];
const RUNS: usize = 200;
const SCHEMA: &str = "users_page_timing";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::args().nth(1);
    for size in SIZES {
        let dir = tempfile::tempdir()?;
        let store: Arc<dyn Store> = match &url {
            Some(url) => fresh_postgres(url).await?,
            None => store::open(&format!("sqlite://{}/timing.db", dir.path().display())).await?,
        };
        let seeding = Instant::now();
        // SQLite has one writer at a time: parallel seeding only makes its writers wait.
        seed(&store, size, if url.is_some() { 8 } else { 1 }).await?;
        println!("\n{size} users (seeded in {:.1?})", seeding.elapsed());
        for order in [UserOrder::Id, UserOrder::Email, UserOrder::Created] {
            for descending in [false, true] {
                let first = UserPage {
                    trash: false,
                    order,
                    descending,
                    limit: 20,
                    offset: 0,
                };
                report(
                    &store,
                    &format!("{order:?} desc={descending} first page"),
                    &first,
                )
                .await?;
            }
        }
        let trash = UserPage {
            trash: true,
            order: UserOrder::Email,
            descending: false,
            limit: 20,
            offset: 0,
        };
        report(&store, "trash by email, first page", &trash).await?;
        let deep = UserPage {
            offset: (size as i64 * 9 / 10).saturating_sub(40),
            ..trash
        };
        let deep = UserPage {
            trash: false,
            ..deep
        };
        report(&store, &format!("Email asc, offset {}", deep.offset), &deep).await?;
    }
    if let Some(url) = &url {
        drop_schema(url).await?;
    }
    Ok(())
}

async fn report(store: &Arc<dyn Store>, what: &str, page: &UserPage) -> anyhow::Result<()> {
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let started = Instant::now();
        let users = store.users_page(page).await?;
        times.push(started.elapsed());
        // A full page, but for the trash of 100 users (10 in it).
        assert!(
            users.len() == 20 || (page.trash && users.len() == 10),
            "{what}: {}",
            users.len()
        );
    }
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    println!(
        "  {what:<32} median {:>9.1?}  p95 {:>9.1?}",
        at(0.5),
        at(0.95)
    );
    Ok(())
}

/// `size` users with distinct emails and a spread of `created`; every tenth is deleted.
async fn seed(store: &Arc<dyn Store>, size: usize, workers: usize) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..workers {
        let store = store.clone();
        tasks.spawn(async move {
            for i in (worker..size).step_by(workers) {
                // Emails not in id or creation order, so each order reads a different index.
                let scrambled = (i as u64).wrapping_mul(2_654_435_761) % (1 << 32);
                let email = format!("u{scrambled:08x}-{i}@example.com");
                let user = store
                    .create_user(NewUser {
                        email,
                        password_hash: None,
                        role: Role::User,
                        invitation_pending: false,
                        invitation: None,
                        sso_enabled: false,
                        created: 1_700_000_000 + (i as i64 % 5_000),
                    })
                    .await?;
                if i % 10 == 0 {
                    let trash = UserChanges {
                        deleted: Some(true),
                        ..UserChanges::default()
                    };
                    store
                        .change_user(user.id, &trash, 1_700_000_000)
                        .await?
                        .ok();
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

async fn fresh_postgres(url: &str) -> anyhow::Result<Arc<dyn Store>> {
    drop_schema(url).await?;
    admin(url, &format!("CREATE SCHEMA {SCHEMA}")).await?;
    let mut url = url::Url::parse(url)?;
    url.query_pairs_mut()
        .append_pair("options", &format!("-c search_path={SCHEMA}"));
    Ok(Arc::new(PostgresStore::open(url.as_str()).await?))
}

async fn drop_schema(url: &str) -> anyhow::Result<()> {
    admin(url, &format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")).await
}

async fn admin(url: &str, sql: &str) -> anyhow::Result<()> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await?;
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut conn)
        .await?;
    Ok(())
}
