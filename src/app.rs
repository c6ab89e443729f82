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
use tokio_rustls::TlsAcceptor;

use crate::auth::passwords::hash_standalone;
use crate::auth::{Auth, AuthInitError, Clock, normalize_email, revocation};
use crate::config::{AuthMode, Config};
use crate::mail::{Mail, MailError};
use crate::proxy::{Proxy, ProxyBuildError, ProxyService};
use crate::server::tls::{CertStore, TlsError};
use crate::server::{self, ConnectionLimits};
use crate::store::{self, NewUser, Role, Store, StoreError};
use crate::telemetry::metrics::{self, Metrics};

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
    #[error("mail: {0}")]
    Mail(#[from] MailError),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
}

pub struct App;

/// A started gateway.
pub struct RunningApp {
    /// Main listener (auth API + data plane).
    pub addr: SocketAddr,
    /// Admin listener (`/healthz`, `/readyz`, `/metrics`).
    pub admin_addr: SocketAddr,
    /// The local auth subsystem; `None` in upstream mode.
    local_auth: Option<Arc<Auth>>,
    shutdown: watch::Sender<bool>,
    main: JoinHandle<bool>,
    admin: JoinHandle<bool>,
    /// The revocation follower and the mail queue (local mode only).
    background: Vec<JoinHandle<()>>,
    cert_store: Option<Arc<CertStore>>,
}

/// What local mode runs besides the data plane.
struct Local {
    auth: Arc<Auth>,
    store: Arc<dyn Store>,
    background: Vec<JoinHandle<()>>,
}

impl App {
    pub async fn start(config: Config) -> Result<RunningApp, StartError> {
        Self::start_with_clock(config, Clock::default()).await
    }

    /// As [`App::start`], with the clock the auth rules read (tests move it forward).
    pub async fn start_with_clock(config: Config, clock: Clock) -> Result<RunningApp, StartError> {
        let (shutdown, shutdown_rx) = watch::channel(false);
        // For the life of the process: subsystems rebuilt later count into the same series.
        let metrics = Arc::new(Metrics::new());
        // Upstream mode needs no store, keys or mail: the backend owns users and tokens.
        let local = match config.auth.mode {
            AuthMode::Local => {
                Some(start_local(&config, clock.clone(), &shutdown_rx, &metrics).await?)
            }
            AuthMode::Upstream => None,
        };
        let proxy = Arc::new(Proxy::new(
            &config,
            local.as_ref().map(|l| l.auth.clone()),
            clock,
            &metrics,
        )?);
        proxy.spawn_health_checks(&shutdown_rx);
        let (mut router, is_api): (Router, fn(&str) -> bool) = match &local {
            Some(local) => (
                crate::api::router(
                    local.auth.clone(),
                    config.limits.api_max_body.as_usize(),
                    ProxyService(proxy.clone()),
                    &metrics,
                ),
                crate::api::may_serve,
            ),
            // Upstream mode: the data plane itself passes the auth API through.
            None => (
                Router::new().fallback_service(ProxyService(proxy.clone())),
                |_| false,
            ),
        };
        let mut direct = Some(server::DirectDataPlane {
            proxy: proxy.clone(),
            is_api,
        });
        if let Some(cors) = &config.cors {
            // Outermost: a preflight is answered before any route, token check or proxying,
            // so every request goes through the router.
            router = router.layer(axum::middleware::from_fn_with_state(
                Arc::new(server::cors::Cors::new(cors)),
                server::cors::apply,
            ));
            direct = None;
        }
        let (tls, cert_store) = match &config.server.tls {
            Some(tls) => {
                let (server_config, store) = server::tls::server_config(tls)?;
                tokio::spawn(server::tls::watch_files(store.clone(), shutdown_rx.clone()));
                (Some(TlsAcceptor::from(server_config)), Some(store))
            }
            None => (None, None),
        };

        let main_listener = bind(config.server.listen).await?;
        let admin_listener = bind(config.admin.listen).await?;
        let addr = local_addr(&main_listener, config.server.listen)?;
        let admin_addr = local_addr(&admin_listener, config.admin.listen)?;

        let limits = ConnectionLimits {
            max_connections: config.limits.max_connections,
            header_read_timeout: config.limits.header_read_timeout,
            max_header_bytes: config.limits.max_header_bytes,
        };
        let drain = config.server.drain_timeout;
        let main = tokio::spawn(server::serve(
            main_listener,
            server::Routing { router, direct },
            limits.clone(),
            tls,
            shutdown_rx.clone(),
            drain,
        ));
        let admin = tokio::spawn(server::serve(
            admin_listener,
            admin_router(local.as_ref().map(|l| l.store.clone()), proxy, metrics).into(),
            limits,
            None,
            shutdown_rx,
            drain,
        ));
        tracing::info!(%addr, %admin_addr, mode = ?config.auth.mode, "meiro-gate listening");
        let (local_auth, background) = match local {
            Some(local) => (Some(local.auth), local.background),
            None => (None, Vec::new()),
        };
        Ok(RunningApp {
            addr,
            admin_addr,
            local_auth,
            shutdown,
            main,
            admin,
            background,
            cert_store,
        })
    }
}

/// Local mode's subsystems: the store (migrated, bootstrapped), mail, auth, Okta discovery in
/// the background, and the revocation follower.
async fn start_local(
    config: &Config,
    clock: Clock,
    shutdown: &watch::Receiver<bool>,
    metrics: &Metrics,
) -> Result<Local, StartError> {
    let store = store::open_with_timeout(config.store.url.expose(), config.store.timeout).await?;
    bootstrap_admin(config, store.as_ref(), &clock).await?;
    let (mail, mailer) =
        Mail::start(&config.mail, shutdown.clone(), metrics.mail().clone()).await?;
    let auth =
        Arc::new(Auth::new(config, store.clone(), mail, clock, metrics.auth().clone()).await?);
    if let Some(okta) = auth.okta() {
        // In the background: a provider that is down must not keep the gateway from serving
        // credentials login; logins retry discovery after `okta.discovery_retry`.
        okta.prefetch();
    }
    // Read before serving: a revocation racing the first cached tokens is then never skipped.
    let cursor = store.revocation_cursor().await?;
    let follower = tokio::spawn(revocation::follow(auth.clone(), cursor, shutdown.clone()));
    // Keys added or removed by a rotation on another machine (a shared Secret) arrive here.
    let rescans = tokio::spawn(
        auth.keys()
            .clone()
            .rescan_periodically(config.auth.keys_rescan_interval, shutdown.clone()),
    );
    Ok(Local {
        auth,
        store,
        background: vec![mailer, follower, rescans],
    })
}

impl RunningApp {
    /// SIGHUP: re-reads the TLS certificate and key and the signing-key directory (a failure
    /// keeps the current ones). Routes and upstreams are fixed for the life of the process in
    /// this version.
    pub fn reload(&self) {
        if let Some(store) = &self.cert_store
            && let Err(e) = store.reload()
        {
            tracing::error!(error = %e, "TLS certificate reload failed; keeping the current one");
        }
        if let Some(auth) = &self.local_auth {
            auth.keys().rescan();
        }
    }

    /// Stops accepting, drains in-flight requests (up to `server.drain_timeout`) and returns
    /// whether everything drained in time.
    pub async fn shutdown(self) -> bool {
        let _ = self.shutdown.send(true);
        let main = self.main.await.unwrap_or(false);
        let admin = self.admin.await.unwrap_or(false);
        for task in self.background {
            let _ = task.await;
        }
        main && admin
    }

    /// The local auth subsystem (store, tokens, users).
    ///
    /// # Panics
    /// In upstream mode, which has none.
    pub fn auth(&self) -> &Arc<Auth> {
        self.local_auth
            .as_ref()
            .expect("the local auth subsystem exists in local mode only")
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
            invitation: None,
            created: clock.now(),
        })
        .await?;
    tracing::info!(user = %user.id, email = %user.email, "bootstrap admin created");
    Ok(())
}

#[derive(Clone)]
struct Readiness {
    /// Local mode's store; upstream mode has none.
    store: Option<Arc<dyn Store>>,
    proxy: Arc<Proxy>,
    metrics: Arc<Metrics>,
}

fn admin_router(store: Option<Arc<dyn Store>>, proxy: Arc<Proxy>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readyz))
        .route("/metrics", get(scrape))
        .with_state(Readiness {
            store,
            proxy,
            metrics,
        })
}

/// `GET /metrics`: the Prometheus text exposition.
async fn scrape(State(admin): State<Readiness>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let state = admin.proxy.scrape_state().await;
    match admin.metrics.render(&state) {
        Ok(text) => (
            [(axum::http::header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "encoding metrics failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(serde_json::json!({"message": "metrics unavailable"})),
            )
                .into_response()
        }
    }
}

/// Ready: the store answers and at least one upstream instance is available (or no
/// upstream is configured).
async fn readyz(State(ready): State<Readiness>) -> (StatusCode, Json<serde_json::Value>) {
    if let Some(store) = &ready.store
        && let Err(e) = store.ping().await
    {
        tracing::warn!(error = %e, "readiness: store unreachable");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"message": "store unreachable"})),
        );
    }
    if !ready.proxy.any_instance_available() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"message": "no healthy upstream instance"})),
        );
    }
    (StatusCode::OK, Json(serde_json::json!({"status": "ready"})))
}
