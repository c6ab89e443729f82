//! Mints valid access tokens for load tests, without argon2: opens the store and keys named by
//! a gateway config file, finds or creates one active user, and opens `--count` sessions for it
//! through `Auth::start_session` (the code path a login takes after the password check),
//! printing one token per line. Optionally writes the signing key's public key as PEM, for
//! verifiers configured with a key file (HAProxy's `jwt_verify`).
//!
//! `cargo run --release --example mint_tokens -- --config gate.toml --count 10000 > tokens.txt`
//!
//! `Auth::start_session` writes one session at a time (~4,000 tokens/s here). `--bulk`, for
//! the million-token memory test, writes the same session rows in one SQLite transaction and
//! signs the same claims with the gateway's keys on every core (~50× faster); it then checks a
//! sample of the tokens with `Auth::authenticate`, so a drift from the real rules fails loudly.
//! Bulk mode writes SQLite directly and must run while no gateway uses the file.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::Parser;
use meiro_gate::auth::tokens::Claims;
use meiro_gate::auth::{Auth, Clock, normalize_email};
use meiro_gate::mail::Mail;
use meiro_gate::store::{self, NewUser, Role, SessionId, User};
use meiro_gate::telemetry::metrics::{AuthMetrics, MailMetrics};
use uuid::Uuid;

#[derive(Parser)]
#[command(about = "Mint access tokens for load tests (no argon2)")]
struct Args {
    /// Gateway config file: its store, keys directory and token settings are used.
    #[arg(long)]
    config: PathBuf,
    /// How many tokens (sessions) to mint.
    #[arg(long, default_value_t = 1)]
    count: usize,
    /// The user the sessions belong to; created (active, no password) when absent.
    #[arg(long, default_value = "loadtest@example.com")]
    email: String,
    /// Sessions written concurrently (through `Auth::start_session`).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Write the sessions in one SQLite transaction and sign on every core (see above).
    #[arg(long)]
    bulk: bool,
    /// Also write the signing key's public key (SubjectPublicKeyInfo PEM) to this file.
    /// Only for ES256 keys.
    #[arg(long)]
    public_key_pem: Option<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let config = meiro_gate::config::load(Some(&args.config))
        .map_err(|e| anyhow::anyhow!("configuration is invalid:\n{e}"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args, config))
}

async fn run(args: Args, config: meiro_gate::Config) -> Result<()> {
    let store = store::open(config.store.url.expose()).await?;
    let clock = Clock::default();
    // Mail is never sent here; the file transport only needs its directory.
    let (_shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
    // Counted nowhere: this tool serves no `/metrics`.
    let (mail, _mailer) = Mail::start(&config.mail, shutdown_rx, MailMetrics::default()).await?;
    let auth = Arc::new(
        Auth::new(
            &config,
            store.clone(),
            mail,
            clock.clone(),
            AuthMetrics::default(),
        )
        .await?,
    );
    let user = find_or_create_user(&*store, &normalize_email(&args.email), clock.now()).await?;
    let user = Arc::new(user);

    let started = std::time::Instant::now();
    if args.bulk {
        let tokens = mint_bulk(&auth, &user, config.store.url.expose(), args.count).await?;
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
        for token in &tokens {
            out.write_all(token.as_bytes())?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        eprintln!(
            "mint_tokens: {} tokens for {} in {:.1}s ({}, bulk)",
            tokens.len(),
            user.email,
            started.elapsed().as_secs_f64(),
            auth.keys().signing_algorithm().as_str(),
        );
        if let Some(path) = &args.public_key_pem {
            let token = tokens.first().context("--count 0")?;
            let pem = signing_public_key_pem(&auth.keys().jwks_json(), token)?;
            std::fs::write(path, pem).with_context(|| format!("writing {}", path.display()))?;
        }
        return Ok(());
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(4096);
    let workers = args.concurrency.clamp(1, args.count.max(1));
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..workers {
        // Worker `w` mints tokens w, w + workers, w + 2·workers, …
        let share = (args.count + workers - 1 - worker) / workers;
        let (auth, user, tx) = (auth.clone(), user.clone(), tx.clone());
        tasks.spawn(async move {
            for _ in 0..share {
                let token = auth.start_session(&user).await?.token;
                if tx.send(token).await.is_err() {
                    break;
                }
            }
            anyhow::Ok(())
        });
    }
    drop(tx);

    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    let mut first = None;
    let mut written = 0usize;
    while let Some(token) = rx.recv().await {
        out.write_all(token.as_bytes())?;
        out.write_all(b"\n")?;
        if first.is_none() {
            first = Some(token);
        }
        written += 1;
    }
    out.flush()?;
    while let Some(result) = tasks.join_next().await {
        result.context("a minting task panicked")??;
    }
    if written != args.count {
        bail!("minted {written} tokens, expected {}", args.count);
    }
    eprintln!(
        "mint_tokens: {written} tokens for {} in {:.1}s ({})",
        user.email,
        started.elapsed().as_secs_f64(),
        auth.keys().signing_algorithm().as_str(),
    );

    if let Some(path) = &args.public_key_pem {
        let token = match first {
            Some(token) => token,
            None => auth.start_session(&user).await?.token,
        };
        let pem = signing_public_key_pem(&auth.keys().jwks_json(), &token)?;
        std::fs::write(path, pem).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The rows `Auth::start_session` writes (without its `last_login` update), in one
/// transaction, and the claims it signs, signed on every core.
async fn mint_bulk(auth: &Auth, user: &User, url: &str, count: usize) -> Result<Vec<String>> {
    use sqlx::Connection;
    let now = auth.clock().now();
    let settings = auth.settings();
    let expires_at = now.saturating_add(settings.session_max_age);
    let exp = now
        .saturating_add(settings.access_token_ttl)
        .min(expires_at);
    let sessions: Vec<(SessionId, Uuid)> = (0..count)
        .map(|_| (SessionId::new_random(), Uuid::new_v4()))
        .collect();

    let mut db = sqlx::SqliteConnection::connect(url).await?;
    let mut tx = db.begin().await?;
    let user_id = user.id.0.hyphenated().to_string();
    // Multi-row statements: one round trip to SQLite's thread per 1,000 sessions.
    for batch in sessions.chunks(1000) {
        let rows = vec!["(?, ?, ?, ?, NULL, ?, 0, NULL)"; batch.len()].join(", ");
        let sql = format!(
            "INSERT INTO sessions (id, user_id, created, expires_at, revoked_at, current_jti, \
             refresh_count, last_refresh_at) VALUES {rows}"
        );
        // Only placeholders are generated; every value is bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (sid, jti) in batch {
            query = query
                .bind(sid.0.hyphenated().to_string())
                .bind(&user_id)
                .bind(now)
                .bind(expires_at)
                .bind(jti.hyphenated().to_string());
        }
        query.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    db.close().await?;

    let keys = auth.keys();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = count.div_ceil(threads).max(1);
    let tokens = std::thread::scope(|scope| {
        let workers: Vec<_> = sessions
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|(sid, jti)| {
                            keys.sign(&Claims {
                                iss: keys.issuer().to_owned(),
                                sub: user.id,
                                sid: *sid,
                                jti: *jti,
                                iat: now,
                                exp,
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a signing thread panicked"))
            .collect::<Result<Vec<Vec<String>>, _>>()
    })?;
    let tokens: Vec<String> = tokens.into_iter().flatten().collect();

    // The real rules must accept what was written around them.
    let step = (tokens.len() / 100).max(1);
    for token in tokens.iter().step_by(step) {
        auth.authenticate(token)
            .await
            .context("a bulk-minted token is not accepted by Auth::authenticate")?;
    }
    Ok(tokens)
}

async fn find_or_create_user(store: &dyn store::Store, email: &str, now: i64) -> Result<User> {
    if let Some(user) = store.user_by_email(email).await? {
        if !user.is_active() {
            bail!("user {email} exists but is not active");
        }
        return Ok(user);
    }
    Ok(store
        .create_user(NewUser {
            email: email.to_owned(),
            password_hash: None,
            role: Role::User,
            invitation_pending: false,
            invitation: None,
            sso_enabled: false,
            created: now,
        })
        .await?)
}

/// The P-256 public key that signed `token`, from the published JWKS, as a PEM
/// SubjectPublicKeyInfo (RFC 5480).
fn signing_public_key_pem(jwks: &[u8], token: &str) -> Result<String> {
    // SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (65-byte point) }
    const P256_SPKI_PREFIX: [u8; 26] = [
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    let kid = jsonwebtoken::decode_header(token)?
        .kid
        .context("token without kid")?;
    let jwks: serde_json::Value = serde_json::from_slice(jwks)?;
    let key = jwks["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["kid"] == kid.as_str()))
        .context("the signing key is not in the JWKS")?;
    if key["kty"] != "EC" || key["crv"] != "P-256" {
        bail!(
            "--public-key-pem needs an ES256 signing key (auth.signing_algorithm = \"ES256\" and a fresh keys_dir); the key is {}",
            key["alg"]
        );
    }
    let coordinate = |name: &str| -> Result<Vec<u8>> {
        let bytes = URL_SAFE_NO_PAD.decode(key[name].as_str().context("missing coordinate")?)?;
        if bytes.len() != 32 {
            bail!("{name} is {} bytes, expected 32", bytes.len());
        }
        Ok(bytes)
    };
    let mut der = P256_SPKI_PREFIX.to_vec();
    der.push(0x04);
    der.extend(coordinate("x")?);
    der.extend(coordinate("y")?);
    Ok(pem::encode(&pem::Pem::new("PUBLIC KEY", der)))
}
