//! The query plans of the Users API's statements on PostgreSQL.

use sqlx::Row;
use sqlx::postgres::PgConnection;

use super::{open, with_scratch_schema};
use crate::store::postgres::{DIALECT, query};
use crate::store::sql::Statement;
use crate::store::suite;

/// The plan PostgreSQL makes for `statement` on `conn`, as text.
async fn plan(conn: &mut PgConnection, statement: Statement<'static>) -> String {
    let rows = query(statement.explained(""))
        .unwrap()
        .fetch_all(conn)
        .await
        .unwrap();
    let lines: Vec<String> = rows.iter().map(|row| row.get::<String, _>(0)).collect();
    lines.join("\n")
}

/// Every list order is read from an index: with sorting and sequential scans priced out,
/// PostgreSQL still plans no `Sort`, so an index delivers the order (on an empty table it
/// would pick a scan and a sort if it could). The last-admin rule locks only the active
/// admins, found through their partial index.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "set MEIRO_GATE_TEST_POSTGRES_URL to run it"
)]
async fn user_lists_and_the_admin_lock_are_read_from_indexes() {
    with_scratch_schema("users_page_plans", |options| async move {
        let store = open(&options).await;
        let mut conn = store.pool().acquire().await.unwrap();
        for setting in ["SET enable_sort = off", "SET enable_seqscan = off"] {
            sqlx::query(setting).execute(&mut *conn).await.unwrap();
        }
        for page in suite::every_page_shape() {
            let plan = plan(&mut conn, DIALECT.users_page(&page)).await;
            assert!(plan.contains("users_page_"), "{page:?}:\n{plan}");
            assert!(!plan.contains("Sort"), "{page:?} is sorted:\n{plan}");
        }
        let plan = plan(&mut conn, DIALECT.lock_active_admins()).await;
        assert!(plan.contains("users_active_admins"), "{plan}");
        // Not back into the pool with these settings.
        sqlx::Connection::close(conn.detach()).await.unwrap();
    })
    .await;
}
