//! Marks builds whose PostgreSQL tests can run: with `MEIRO_GATE_TEST_POSTGRES_URL` set when
//! the tests are built, cfg `postgres_tests` is on; without it those tests are `#[ignore]`d,
//! so the summary shows them as ignored instead of passing without having run.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=MEIRO_GATE_TEST_POSTGRES_URL");
    println!("cargo::rustc-check-cfg=cfg(postgres_tests)");
    if std::env::var_os("MEIRO_GATE_TEST_POSTGRES_URL").is_some_and(|url| !url.is_empty()) {
        println!("cargo::rustc-cfg=postgres_tests");
    }
}
