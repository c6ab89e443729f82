//! Token validation on the per-request path, for both signing algorithms:
//! - a cache hit (digest + moka lookup + revocation/expiry checks), with the cache nearly
//!   empty and with 1,000,000 other entries in it;
//! - a miss (signature verify + session and user lookup on SQLite + cache insert);
//! - the signature check alone (`KeySet::verify`), the part of a miss the cache saves.
//!
//! Run: `cargo bench --bench token_validation`.

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use figment::Figment;
use figment::providers::{Format, Toml};
use meiro_gate::auth::cache::{Grant, VOUCHED_LOCALLY, token_digest};
use meiro_gate::auth::{Auth, Clock};
use meiro_gate::mail::Mail;
use meiro_gate::store::{self, NewUser, Role, SessionId, UserId};
use meiro_gate::telemetry::metrics::Metrics;

/// A gateway's auth subsystem on a temporary SQLite file with keys of `algorithm`, and
/// `tokens` valid tokens (sessions) of an active user.
fn setup(
    rt: &tokio::runtime::Runtime,
    algorithm: &str,
    tokens: usize,
) -> (Arc<Auth>, Vec<String>, tempfile::TempDir) {
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let toml = format!(
            "[store]\nurl = \"sqlite://{d}/bench.db\"\n\
             [auth]\nkeys_dir = \"{d}/keys\"\nsigning_algorithm = \"{algorithm}\"\n\
             [mail]\ndir = \"{d}/outbox\"\n",
            d = dir.path().display()
        );
        let config = meiro_gate::config::load_from_figment(&Figment::from(Toml::string(&toml)))
            .expect("bench config");
        let store = store::open(config.store.url.expose()).await.unwrap();
        let clock = Clock::default();
        // No password: sessions are opened directly, as after a successful login.
        let user = store
            .create_user(NewUser {
                email: "bench@example.com".into(),
                password_hash: None,
                role: Role::User,
                invitation_pending: false,
                invitation: None,
                sso_enabled: false,
                created: clock.now(),
            })
            .await
            .unwrap();
        let (_, shutdown) = tokio::sync::watch::channel(false);
        // Counted into a real registry, as the gateway does.
        let metrics = Metrics::new();
        let (mail, _) = Mail::start(&config.mail, shutdown, metrics.mail().clone())
            .await
            .unwrap();
        let auth = Arc::new(
            Auth::new(&config, store, mail, clock, metrics.auth().clone())
                .await
                .unwrap(),
        );
        let mut minted = Vec::with_capacity(tokens);
        for _ in 0..tokens {
            minted.push(auth.start_session(&user).await.unwrap().token);
        }
        (auth, minted, dir)
    })
}

/// Fills the token cache with `n` synthetic grants under random digests, each of its own
/// session and user, as a busy gateway's cache would be.
fn fill_cache(rt: &tokio::runtime::Runtime, auth: &Auth, n: usize) {
    rt.block_on(async {
        let exp = auth.clock().now() + 3600;
        let cache = auth.cache();
        for _ in 0..n {
            let session = cache.session(SessionId::new_random());
            session
                .bind(|| cache.principal(UserId::new_random(), "filler@example.com", Role::User));
            let grant = Grant { exp, session };
            let digest = token_digest(VOUCHED_LOCALLY, uuid::Uuid::new_v4().as_bytes());
            cache.entries().insert(digest, grant).await;
        }
        cache.entries().run_pending_tasks().await;
    });
}

fn token_validation(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    for (name, algorithm) in [("ed25519", "EdDSA"), ("es256", "ES256")] {
        let (auth, tokens, _dir) = setup(&rt, algorithm, 1_000);
        let token = tokens[0].clone();
        let digest = token_digest(VOUCHED_LOCALLY, token.as_bytes());

        c.bench_function(&format!("validate/cache_hit_{name}"), |b| {
            b.to_async(&rt).iter(|| async {
                auth.authenticate(&token).await.unwrap();
            })
        });

        c.bench_function(&format!("validate/cache_miss_{name}_sqlite"), |b| {
            b.to_async(&rt).iter(|| async {
                auth.cache().entries().invalidate(&digest).await;
                auth.authenticate(&token).await.unwrap();
            })
        });

        c.bench_function(&format!("verify_signature/{name}"), |b| {
            b.iter(|| auth.keys().verify(&token).unwrap())
        });

        if name == "es256" {
            // A hit costs more in a big cache, when moka's table and frequency sketch no
            // longer fit in the CPU caches: 1,000 tokens taken in turn among 1 M other entries.
            fill_cache(&rt, &auth, 1_000_000);
            for token in &tokens {
                rt.block_on(auth.authenticate(token)).unwrap();
            }
            let mut next = 0usize;
            let (auth, tokens) = (&auth, &tokens);
            c.bench_function("validate/cache_hit_1m_entries_1k_tokens_in_turn", |b| {
                b.to_async(&rt).iter(|| {
                    next = (next + 1) % tokens.len();
                    let token = &tokens[next];
                    async move {
                        auth.authenticate(token).await.unwrap();
                    }
                })
            });
        }
    }
}

criterion_group!(benches, token_validation);
criterion_main!(benches);
