//! The `meiro-gate` command line: `serve`, `check-config`, `users …`, `keys rotate`,
//! `audit tail`.
//! Loads config, builds the app, waits for a signal, drains.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use meiro_gate::api::users::{UserBody, rfc3339};
use meiro_gate::auth::audit::{self, AuditKind, Caller, Entry};
use meiro_gate::auth::passwords::{check_password_policy, hash_standalone};
use meiro_gate::auth::users::{self, Actor, NewAccount, valid_email};
use meiro_gate::auth::{AuthError, Clock, key_files, normalize_email};
use meiro_gate::store::{self, Role, UserChanges};
use meiro_gate::telemetry::{self, LogFormat};
use meiro_gate::{App, Config, RunningApp, config};

/// mimalloc instead of glibc malloc: the request path allocates small, short-lived buffers on
/// every request (header maps, futures, body frames), where mimalloc's thread-local free lists
/// cost fewer instructions (see README, "Benchmarks"). The library and tests keep the system
/// allocator; only the binary chooses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "meiro-gate",
    version,
    about = "Authenticating gateway for Meiro"
)]
struct Cli {
    /// Config file (default: $MEIRO_GATE_CONFIG, then config/meiro-gate.toml).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve,
    /// Validate and print the effective config (secrets redacted); exit 1 listing every problem.
    CheckConfig,
    /// Manage users (bootstrap, break-glass).
    #[command(subcommand)]
    Users(UsersCommand),
    /// Manage signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Read the audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Print audit events, oldest first, one per line: the newest --limit of them.
    Tail {
        /// Only this user's events (and failed logins naming this address).
        #[arg(long, value_name = "EMAIL")]
        user: Option<String>,
        /// Only events of the last DURATION (e.g. 30m, 1h, 7d).
        #[arg(long, value_name = "DURATION", value_parser = config::duration_serde::parse)]
        since: Option<std::time::Duration>,
        /// At most this many events.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        limit: u32,
        /// JSON lines instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Create a user. Without --password-stdin the account can only use SSO or a reset.
    Add {
        #[arg(long)]
        email: String,
        #[arg(long, default_value = "user", value_parser = ["admin", "user"])]
        role: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users as JSON lines.
    List,
    /// Disable a user and end all their sessions.
    Disable { email: String },
    /// Re-enable a user.
    Enable { email: String },
    /// Move a user to the trash and end all their sessions.
    Delete { email: String },
    /// Bring a user back from the trash (with the password they had).
    Restore { email: String },
    /// Change a user's role; their open sessions carry the new role from their next request.
    SetRole {
        email: String,
        #[arg(value_parser = ["admin", "user"])]
        role: String,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Generate a new signing key; older keys keep verifying their tokens.
    Rotate,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let log_filter = telemetry::init(cli.log_format);
    let config = match config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("configuration is invalid:\n{e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    log_filter.apply(&config.log.filter);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = config.server.worker_threads {
        runtime.worker_threads(threads);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let reload = Reload {
        config_path: cli.config,
        log_filter,
    };
    match runtime.block_on(run(cli.command, config, reload)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// What `serve` needs to reload: where the config came from and the log filter to change.
struct Reload {
    config_path: Option<PathBuf>,
    log_filter: telemetry::LogFilter,
}

async fn run(command: Command, config: Config, reload: Reload) -> Result<()> {
    match command {
        Command::Serve => serve(config, reload).await,
        Command::CheckConfig => {
            print!(
                "{}",
                toml::to_string_pretty(&config).context("printing the config")?
            );
            Ok(())
        }
        Command::Users(users) => users_command(users, &config).await,
        Command::Keys(KeysCommand::Rotate) => {
            let kid =
                key_files::generate_key(&config.auth.keys_dir, config.auth.signing_algorithm)?;
            let delay = humantime::format_duration(config.auth.key_activation_delay);
            println!(
                "new signing key {kid}; running gateways sign with it {delay} after their next key re-scan"
            );
            let entry = cli_entry(AuditKind::KeyRotated).detail("kid", kid.clone());
            match store::open(config.store.url.expose()).await {
                Ok(store) => audit::record_now(&*store, entry).await,
                // The key exists already; a store that cannot be reached must not hide that.
                Err(e) => {
                    tracing::error!(target: "audit", error = %e, "audit store unreachable; the key rotation is in this log only")
                }
            }
            Ok(())
        }
        Command::Audit(AuditCommand::Tail {
            user,
            since,
            limit,
            json,
        }) => audit_tail(&config, user, since, limit, json).await,
    }
}

/// An audit entry for something done on the command line: no client IP or request id.
fn cli_entry(kind: AuditKind) -> Entry {
    Entry::new(kind, Clock::default().now(), &Caller::default()).detail("actor", "cli")
}

async fn audit_tail(
    config: &Config,
    user: Option<String>,
    since: Option<std::time::Duration>,
    limit: u32,
    json: bool,
) -> Result<()> {
    let store = store::open(config.store.url.expose()).await?;
    let email = user.as_deref().map(normalize_email);
    if email.as_deref() == Some("") {
        bail!("--user must not be empty");
    }
    let user_id = match &email {
        Some(email) => store.user_by_email(email).await?.map(|u| u.id),
        None => None,
    };
    let now = Clock::default().now();
    let filter = store::AuditFilter {
        user_id,
        email,
        since: since.map(|d| now.saturating_sub(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))),
        limit: i64::from(limit),
    };
    let mut out = std::io::stdout().lock();
    for event in store.audit_events(&filter).await? {
        if json {
            let mut value = serde_json::to_value(&event)?;
            value["time"] = rfc3339(event.at).into();
            writeln!(out, "{value}")?;
        } else {
            writeln!(out, "{}", audit_line(&event))?;
        }
    }
    Ok(())
}

/// `2026-01-02T03:04:05Z login_failed user=… email=… ip=… request_id=… reason=…`; absent
/// fields are left out.
fn audit_line(e: &store::AuditEvent) -> String {
    let mut line = format!("{} {}", rfc3339(e.at), e.kind);
    let fields = [
        ("user", e.user_id.map(|u| u.to_string())),
        ("email", e.email.clone()),
        ("ip", e.client_ip.map(|ip| ip.to_string())),
        ("request_id", e.request_id.clone()),
    ];
    let present = fields
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_owned(), v?)));
    for (key, value) in present.chain(e.detail.clone()) {
        line.push_str(&format!(" {key}={value}"));
    }
    line
}

async fn serve(config: Config, reload: Reload) -> Result<()> {
    let watch_interval = config.server.config_watch_interval;
    let mut app = App::start(config).await.context("starting meiro-gate")?;
    app.set_log_filter(reload.log_filter);
    shutdown_signal(&app, reload.config_path.as_deref(), watch_interval).await;
    tracing::info!("shutdown requested; draining");
    if app.shutdown().await {
        tracing::info!("drained; bye");
    } else {
        tracing::warn!("drain timeout reached; exited with connections still open");
    }
    Ok(())
}

/// Waits for SIGTERM or SIGINT; SIGHUP or a change of the config file (checked every
/// `watch_interval`) meanwhile reloads the config.
async fn shutdown_signal(app: &RunningApp, config_path: Option<&Path>, watch_interval: Duration) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    // SIGHUP's default action would end the process, dropping every connection: caught, it
    // reloads the config, the TLS certificate and the key directory.
    #[cfg(unix)]
    let hangup = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            while s.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the certificate, the keys and the configuration");
                // The files first and whatever the config says: a rotated key or renewed
                // certificate must not wait for a config that validates.
                app.reload_files();
                app.reload_from_file(config_path);
            }
        }
        std::future::pending::<()>().await
    };
    #[cfg(not(unix))]
    let hangup = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
        _ = hangup => {},
        _ = app.watch_config_file(config_path, watch_interval) => {},
    }
}

async fn users_command(command: UsersCommand, config: &Config) -> Result<()> {
    let store = store::open(config.store.url.expose()).await?;
    let now = Clock::default().now();
    let (email, changes) = match command {
        UsersCommand::Add {
            email,
            role,
            password_stdin,
        } => {
            // The API's rule (`meiro_gate::email`): this user gets reset mail like any other.
            let email = valid_email(&email).map_err(|e| anyhow::anyhow!("{e}"))?;
            let role = Role::parse(&role).context("role must be admin or user")?;
            let password_hash = if password_stdin {
                let mut line = String::new();
                std::io::stdin().lock().read_line(&mut line)?;
                let password = line.trim_end_matches(['\r', '\n']).to_owned();
                if let Err(rule) =
                    check_password_policy(&password, &email, config.auth.password_min_length)
                {
                    bail!("password rejected: {rule}");
                }
                Some(hash_standalone(password).await?)
            } else {
                None
            };
            let account = NewAccount {
                email,
                password_hash,
                role,
                sso_enabled: false,
            };
            let (user, entry) = users::create(
                &*store,
                account,
                Actor::CommandLine,
                &Caller::default(),
                now,
            )
            .await
            .map_err(cli_error)?;
            audit::record_now(&*store, entry).await;
            println!("{}", serde_json::to_string(&UserBody::from(&user))?);
            return Ok(());
        }
        UsersCommand::List => {
            for user in store.list_users().await? {
                println!("{}", serde_json::to_string(&UserBody::from(&user))?);
            }
            return Ok(());
        }
        UsersCommand::Disable { email } => (email, changes(|c| c.disabled = Some(true))),
        UsersCommand::Enable { email } => (email, changes(|c| c.disabled = Some(false))),
        UsersCommand::Delete { email } => (email, changes(|c| c.deleted = Some(true))),
        UsersCommand::Restore { email } => (email, changes(|c| c.deleted = Some(false))),
        UsersCommand::SetRole { email, role } => {
            let role = Role::parse(&role).context("role must be admin or user")?;
            (email, changes(|c| c.role = Some(role)))
        }
    };
    if email.trim().is_empty() {
        bail!("email must not be empty");
    }
    let user = store
        .user_by_email(&normalize_email(&email))
        .await?
        .with_context(|| format!("no user with email {email}"))?;
    let (changed, entry) = users::change(
        &*store,
        user.id,
        &changes,
        Actor::CommandLine,
        &Caller::default(),
        now,
    )
    .await
    .map_err(|e| match e {
        AuthError::NotFound if user.deleted => anyhow::anyhow!("{email} is in the trash"),
        AuthError::NotFound => anyhow::anyhow!("{email} is not in the trash"),
        other => cli_error(other),
    })?;
    audit::record_now(&*store, entry).await;
    println!("{}", serde_json::to_string(&UserBody::from(&changed.user))?);
    Ok(())
}

/// One change of `users …`: the API's [`UserChanges`], built by `set`.
fn changes(set: impl FnOnce(&mut UserChanges)) -> UserChanges {
    let mut changes = UserChanges::default();
    set(&mut changes);
    changes
}

/// What the operator reads when the shared operation refuses.
fn cli_error(e: AuthError) -> anyhow::Error {
    match e {
        AuthError::UserExists => anyhow::anyhow!("a user with this email exists"),
        AuthError::LastAdmin => anyhow::anyhow!("at least one active admin must remain"),
        other => anyhow::anyhow!("{other}"),
    }
}
