//! Token validation on the per-request path: a cache hit (digest + moka lookup + checks) and
//! a miss (Ed25519 signature verify + session and user lookup on SQLite).
//! Run: `cargo bench --bench token_validation`.

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use figment::Figment;
use figment::providers::{Format, Toml};
use meiro_gate::auth::cache::token_digest;
use meiro_gate::auth::passwords::hash_standalone;
use meiro_gate::auth::{Auth, Clock};
use meiro_gate::mail::Mail;
use meiro_gate::store::{self, NewUser, Role};

fn setup(rt: &tokio::runtime::Runtime) -> (Arc<Auth>, String, tempfile::TempDir) {
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let toml = format!(
            "[store]\nurl = \"sqlite://{d}/bench.db\"\n[auth]\nkeys_dir = \"{d}/keys\"\n\
             [mail]\ndir = \"{d}/outbox\"\n",
            d = dir.path().display()
        );
        let config = meiro_gate::config::load_from_figment(&Figment::from(Toml::string(&toml)))
            .expect("bench config");
        let store = store::open(config.store.url.expose()).await.unwrap();
        let clock = Clock::default();
        let user = store
            .create_user(NewUser {
                email: "bench@example.com".into(),
                password_hash: Some(hash_standalone("bench password 123".into()).await.unwrap()),
                role: Role::User,
                invitation_pending: false,
                invitation: None,
                created: clock.now(),
            })
            .await
            .unwrap();
        let (_, shutdown) = tokio::sync::watch::channel(false);
        let (mail, _) = Mail::start(&config.mail, shutdown).await.unwrap();
        let auth = Arc::new(Auth::new(&config, store, mail, clock).await.unwrap());
        let token = auth.start_session(&user).await.unwrap().token;
        (auth, token, dir)
    })
}

fn token_validation(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (auth, token, _dir) = setup(&rt);
    let digest = token_digest(token.as_bytes());

    c.bench_function("validate/cache_hit", |b| {
        b.to_async(&rt).iter(|| async {
            auth.authenticate(&token).await.unwrap();
        })
    });

    c.bench_function("validate/cache_miss_ed25519_sqlite", |b| {
        b.to_async(&rt).iter(|| async {
            auth.cache().entries().invalidate(&digest).await;
            auth.authenticate(&token).await.unwrap();
        })
    });
}

criterion_group!(benches, token_validation);
criterion_main!(benches);
