//! Wires the subsystems together. [`App::start`] binds the listeners (port 0 works, so tests
//! run many gateways in one process) and reports the addresses actually bound.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::passwords::hash_standalone;
use crate::auth::{Auth, AuthInitError, Clock, normalize_email, revocation};
use crate::config::Config;
use crate::proxy::{Proxy, ProxyBuildError, ProxyService};
use crate::server::{self, ConnectionLimits};
use crate::store::{self, NewUser, Role, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("auth: {0}")]
    Auth(#[from] AuthInitError),
    #[error("proxy: {0}")]
    Proxy(#[from] ProxyBuildError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("bootstrap admin: {0}")]
    Bootstrap(String),
}

pub struct App;

/// A started gateway.
pub struct RunningApp {
    /// Main listener (auth API + data plane).
    pub addr: SocketAddr,
    /// Admin listener (`/healthz`, `/readyz`).
    pub admin_addr: SocketAddr,
    pub auth: Arc<Auth>,
    shutdown: watch::Sender<bool>,
    main: JoinHandle<bool>,
    admin: JoinHandle<bool>,
    follower: JoinHandle<()>,
}

impl App {
    pub async fn start(config: Config) -> Result<RunningApp, StartError> {
        Self::start_with_clock(config, Clock::default()).await
    }

    /// As [`App::start`], with the clock the auth rules read (tests move it forward).
    pub async fn start_with_clock(config: Config, clock: Clock) -> Result<RunningApp, StartError> {
        let store = store::open(config.store.url.expose()).await?;
        bootstrap_admin(&config, store.as_ref(), &clock).await?;
        let auth = Arc::new(
            Auth::new(
                &config.auth,
                config.server.public_url.as_str().trim_end_matches('/'),
                store.clone(),
                clock,
            )
            .await?,
        );
        let proxy = Arc::new(Proxy::new(&config, auth.clone())?);
        let router = crate::api::router(
            auth.clone(),
            config.limits.api_max_body.as_usize(),
            ProxyService(proxy),
        );

        let main_listener = bind(config.server.listen).await?;
        let admin_listener = bind(config.admin.listen).await?;
        let addr = local_addr(&main_listener, config.server.listen)?;
        let admin_addr = local_addr(&admin_listener, config.admin.listen)?;

        let (shutdown, shutdown_rx) = watch::channel(false);
        let cursor = store.revocation_cursor().await?;
        let follower = tokio::spawn(revocation::follow(
            auth.clone(),
            cursor,
            shutdown_rx.clone(),
        ));

        let limits = ConnectionLimits {
            max_connections: config.limits.max_connections,
            header_read_timeout: config.limits.header_read_timeout,
            max_header_bytes: config.limits.max_header_bytes,
        };
        let drain = config.server.drain_timeout;
        let main = tokio::spawn(server::serve(
            main_listener,
            router,
            limits.clone(),
            shutdown_rx.clone(),
            drain,
        ));
        let admin = tokio::spawn(server::serve(
            admin_listener,
            admin_router(store),
            limits,
            shutdown_rx,
            drain,
        ));
        tracing::info!(%addr, %admin_addr, "meiro-gate listening");
        Ok(RunningApp {
            addr,
            admin_addr,
            auth,
            shutdown,
            main,
            admin,
            follower,
        })
    }
}

impl RunningApp {
    /// Stops accepting, drains in-flight requests (up to `server.drain_timeout`) and returns
    /// whether everything drained in time.
    pub async fn shutdown(self) -> bool {
        let _ = self.shutdown.send(true);
        let main = self.main.await.unwrap_or(false);
        let admin = self.admin.await.unwrap_or(false);
        let _ = self.follower.await;
        main && admin
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

fn local_addr(listener: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, StartError> {
    listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })
}

/// Creates the `[bootstrap]` admin when the store has no user at all (first start only).
async fn bootstrap_admin(
    config: &Config,
    store: &dyn Store,
    clock: &Clock,
) -> Result<(), StartError> {
    let b = &config.bootstrap;
    if b.admin_email.is_empty() || store.count_users().await? > 0 {
        return Ok(());
    }
    let hash = hash_standalone(b.admin_password.expose().to_owned())
        .await
        .map_err(|e| StartError::Bootstrap(e.to_string()))?;
    let user = store
        .create_user(NewUser {
            email: normalize_email(&b.admin_email),
            password_hash: Some(hash),
            role: Role::Admin,
            invitation_pending: false,
            created: clock.now(),
        })
        .await?;
    tracing::info!(user = %user.id, email = %user.email, "bootstrap admin created");
    Ok(())
}

fn admin_router(store: Arc<dyn Store>) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readyz))
        .with_state(store)
}

async fn readyz(State(store): State<Arc<dyn Store>>) -> (StatusCode, Json<serde_json::Value>) {
    match store.ping().await {
        Ok(()) => (StatusCode::OK, Json(serde_json::json!({"status": "ready"}))),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: store unreachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({"message": "store unreachable"})),
            )
        }
    }
}
