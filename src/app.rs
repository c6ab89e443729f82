//! Wires the subsystems together. [`App::start`] binds the listeners (port 0 works, so tests
//! run many gateways in one process) and reports the addresses actually bound;
//! [`RunningApp::reload`] swaps in what a new configuration may change live. Beside it:
//! `bootstrap` (the first admin), `admin_endpoints` (`/healthz`, `/readyz`, `/metrics`),
//! `reload_diff` (which keys need a restart), `reload_file` (SIGHUP and the file watch).

mod admin_endpoints;
mod bootstrap;
mod reload_diff;
mod reload_file;

use admin_endpoints::admin_router;
use bootstrap::bootstrap_admin;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::auth::{Auth, AuthInitError, Clock, revocation};
use crate::config::{AuthMode, Config};
use crate::mail::{Mail, MailError};
use crate::proxy::{Proxy, ProxyBuildError, ProxyService};
use crate::server::client_addr::{Addressing, TrustedProxies};
use crate::server::tls::{CertStore, TlsError};
use crate::server::{self, ConnectionLimits, LiveSite, Site};
use crate::store::{self, Store, StoreError};
use crate::telemetry::LogFilter;
use crate::telemetry::metrics::Metrics;

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

/// Why a reload was refused (the running configuration stays).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("proxy: {0}")]
    Proxy(#[from] ProxyBuildError),
}

/// The running config with every live-reloadable part taken from `new`; the rest stays as
/// it runs (and [`reload_diff::restart_needed`] names what differs).
fn live_part(running: &Config, new: Config) -> Config {
    let mut effective = running.clone();
    effective.upstreams = new.upstreams;
    effective.routes = new.routes;
    effective.cors = new.cors;
    effective.log = new.log;
    effective.server.access_log = new.server.access_log;
    effective.limits.api_max_body = new.limits.api_max_body;
    effective.limits.header_read_timeout = new.limits.header_read_timeout;
    effective.limits.max_header_bytes = new.limits.max_header_bytes;
    effective.limits.idle_timeout = new.limits.idle_timeout;
    effective.limits.body_read_timeout = new.limits.body_read_timeout;
    effective.limits.http2_keepalive_interval = new.limits.http2_keepalive_interval;
    effective.limits.http2_keepalive_timeout = new.limits.http2_keepalive_timeout;
    effective.server.underscores_in_headers = new.server.underscores_in_headers;
    effective.server.trusted_proxies = new.server.trusted_proxies;
    effective.server.proxy_protocol = new.server.proxy_protocol;
    effective
}

pub struct App;

/// A started gateway.
pub struct RunningApp {
    /// Main listener (auth API + data plane).
    pub addr: SocketAddr,
    /// Admin listener (`/healthz`, `/readyz`, `/metrics`).
    pub admin_addr: SocketAddr,
    /// The local auth subsystem and its store; `None` in upstream mode.
    local: Option<(Arc<Auth>, Arc<dyn Store>)>,
    clock: Clock,
    /// For the life of the process, so a reloaded data plane counts on in the same series.
    metrics: Arc<Metrics>,
    /// What the two listeners serve; [`RunningApp::reload`] replaces both.
    main_site: LiveSite,
    admin_site: LiveSite,
    /// The running generation; the lock also serializes reloads.
    generation: Mutex<Generation>,
    shutdown: watch::Sender<bool>,
    main: JoinHandle<bool>,
    admin: JoinHandle<bool>,
    /// The revocation follower and the mail queue (local mode only).
    background: Vec<JoinHandle<()>>,
    cert_store: Option<Arc<CertStore>>,
    /// The process's log filter, when this app owns the logging (the binary does; tests not).
    log_filter: Option<LogFilter>,
    /// The config file's contents as last loaded by a reload from the file (see
    /// `reload_file.rs`).
    seen_file: Mutex<Option<Vec<u8>>>,
}

/// The configuration in effect and the data plane built from it. Its health checks run until
/// `health` is dropped (replaced by a reload) or sent `true` (shutdown).
struct Generation {
    config: Config,
    proxy: Arc<Proxy>,
    health: watch::Sender<bool>,
}

impl Generation {
    /// Builds the data plane and both sites from `config`, taking over what `previous` had
    /// for unchanged upstreams. Nothing runs until [`Generation::start_health_checks`].
    fn build(
        config: Config,
        local: Option<&(Arc<Auth>, Arc<dyn Store>)>,
        clock: &Clock,
        metrics: &Arc<Metrics>,
        previous: Option<&Proxy>,
    ) -> Result<(Generation, Site, Site), ProxyBuildError> {
        let proxy = Arc::new(Proxy::new(
            &config,
            local.map(|(auth, _)| auth.clone()),
            clock.clone(),
            metrics,
            previous,
        )?);
        let (mut router, local_api) = match local {
            Some((auth, _)) => (
                crate::api::router(
                    auth.clone(),
                    &config.server.api_prefix,
                    config.limits.api_max_body.as_usize(),
                    ProxyService(proxy.clone()),
                    metrics,
                ),
                true,
            ),
            // Upstream mode: the data plane itself passes the auth API through.
            None => (
                Router::new().fallback_service(ProxyService(proxy.clone())),
                false,
            ),
        };
        let mut direct = Some(server::DirectDataPlane {
            proxy: proxy.clone(),
            local_api,
            api_prefix: config.server.api_prefix.as_str().into(),
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
        let limits = ConnectionLimits {
            max_connections: config.limits.max_connections,
            header_read_timeout: config.limits.header_read_timeout,
            max_header_bytes: config.limits.max_header_bytes,
            idle_timeout: config.limits.idle_timeout,
            http2_keepalive: (!config.limits.http2_keepalive_interval.is_zero()).then_some((
                config.limits.http2_keepalive_interval,
                config.limits.http2_keepalive_timeout,
            )),
        };
        let addressing = Addressing {
            trusted: TrustedProxies::new(&config.server.trusted_proxies),
            proxy_protocol: config.server.proxy_protocol,
            access_log: config.server.access_log,
            metrics: metrics.client_addr().clone(),
        };
        let main = Site::new(
            server::Routing { router, direct },
            limits.clone(),
            addressing,
        );
        // Probes and scrapes reach the admin listener directly: its peer is its client.
        let admin = Site::new(
            admin_router(
                local.map(|(_, store)| store.clone()),
                proxy.clone(),
                metrics.clone(),
            )
            .into(),
            limits,
            Addressing::default(),
        );
        let (health, _) = watch::channel(false);
        Ok((
            Generation {
                config,
                proxy,
                health,
            },
            main,
            admin,
        ))
    }

    fn start_health_checks(&self) {
        self.proxy.spawn_health_checks(&self.health.subscribe());
    }
}

/// What a successful [`RunningApp::reload`] did.
#[derive(Debug, Clone, Default)]
pub struct ReloadReport {
    /// Keys whose new value needs a restart; the running value was kept for each.
    pub restart_needed: Vec<String>,
    /// Upstream clusters taken over unchanged (pools, health state kept).
    pub upstreams_kept: usize,
    /// Upstream clusters built anew (new or changed entries).
    pub upstreams_rebuilt: usize,
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
        let local_parts = local.as_ref().map(|l| (l.auth.clone(), l.store.clone()));
        let tls_config = config.server.tls.clone();
        let (listen, admin_listen, mode) =
            (config.server.listen, config.admin.listen, config.auth.mode);
        let drain = config.server.drain_timeout;
        let (generation, main_site, admin_site) =
            Generation::build(config, local_parts.as_ref(), &clock, &metrics, None)?;
        generation.start_health_checks();
        let (tls, cert_store) = match &tls_config {
            Some(tls) => {
                let (server_config, store) = server::tls::server_config(tls)?;
                tokio::spawn(server::tls::watch_files(store.clone(), shutdown_rx.clone()));
                (Some(TlsAcceptor::from(server_config)), Some(store))
            }
            None => (None, None),
        };

        let main_listener = bind(listen).await?;
        let admin_listener = bind(admin_listen).await?;
        let addr = local_addr(&main_listener, listen)?;
        let admin_addr = local_addr(&admin_listener, admin_listen)?;

        let main_site: LiveSite = Arc::new(ArcSwap::from_pointee(main_site));
        let admin_site: LiveSite = Arc::new(ArcSwap::from_pointee(admin_site));
        let main = tokio::spawn(server::serve(
            main_listener,
            main_site.clone(),
            tls,
            shutdown_rx.clone(),
            drain,
        ));
        let admin = tokio::spawn(server::serve(
            admin_listener,
            admin_site.clone(),
            None,
            shutdown_rx,
            drain,
        ));
        tracing::info!(%addr, %admin_addr, ?mode, "meiro-gate listening");
        let background = local.map(|l| l.background).unwrap_or_default();
        Ok(RunningApp {
            addr,
            admin_addr,
            local: local_parts,
            clock,
            metrics,
            main_site,
            admin_site,
            generation: Mutex::new(generation),
            shutdown,
            main,
            admin,
            background,
            cert_store,
            log_filter: None,
            seen_file: Mutex::new(None),
        })
    }
}

/// What local mode runs besides the data plane.
struct Local {
    auth: Arc<Auth>,
    store: Arc<dyn Store>,
    background: Vec<JoinHandle<()>>,
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
    /// Applies a new configuration (already loaded and validated by [`crate::config::load`])
    /// to the running gateway: routes, upstreams and their health checks, CORS, the auth API
    /// body limit, the head limits of new connections and the access log switch, and
    /// `log.filter` when [`RunningApp::set_log_filter`] was given the process's filter (the
    /// certificate and keys are re-read by [`RunningApp::reload_files`], which SIGHUP calls
    /// whether or not the config is valid). Requests in flight, open WebSockets
    /// and streams finish on the data plane they started on; keep-alive connections take the
    /// new one at their next request.
    ///
    /// Keys that cannot change while running (listeners, store, auth, mail, ...) keep their
    /// running value and are listed in the report, each logged as needing a restart. On an
    /// error (an upstream that cannot be built) nothing changes.
    pub fn reload(&self, new: Config) -> Result<ReloadReport, ReloadError> {
        let mut current = self.generation.lock().unwrap_or_else(|e| e.into_inner());
        let effective = live_part(&current.config, new.clone());
        let restart_needed = reload_diff::restart_needed(&effective, &new);
        for key in &restart_needed {
            tracing::warn!(
                key,
                "config change needs a restart; keeping the running value"
            );
        }
        let (next, main_site, admin_site) = Generation::build(
            effective,
            self.local.as_ref(),
            &self.clock,
            &self.metrics,
            Some(&current.proxy),
        )?;
        let kept = next
            .proxy
            .clusters()
            .iter()
            .filter(|c| {
                current
                    .proxy
                    .clusters()
                    .iter()
                    .any(|old| Arc::ptr_eq(c, old))
            })
            .count();
        next.start_health_checks();
        self.main_site.store(Arc::new(main_site));
        self.admin_site.store(Arc::new(admin_site));
        // Dropping the old generation's sender ends its health checks (those of kept clusters
        // carry on in the new generation's tasks).
        let report = ReloadReport {
            restart_needed,
            upstreams_kept: kept,
            upstreams_rebuilt: next.proxy.clusters().len() - kept,
        };
        if let Some(log_filter) = &self.log_filter {
            log_filter.apply(&next.config.log.filter);
        }
        *current = next;
        drop(current);
        tracing::info!(
            upstreams_kept = report.upstreams_kept,
            upstreams_rebuilt = report.upstreams_rebuilt,
            restart_needed = report.restart_needed.len(),
            "configuration reloaded"
        );
        Ok(report)
    }

    /// Lets [`RunningApp::reload`] apply `log.filter` to the process's logging.
    pub fn set_log_filter(&mut self, log_filter: LogFilter) {
        self.log_filter = Some(log_filter);
    }

    /// Re-reads the TLS certificate and key and the signing-key directory (a failure keeps
    /// the current ones).
    pub fn reload_files(&self) {
        if let Some(store) = &self.cert_store
            && let Err(e) = store.reload()
        {
            tracing::error!(error = %e, "TLS certificate reload failed; keeping the current one");
        }
        if let Some((auth, _)) = &self.local {
            auth.keys().rescan();
        }
    }

    /// Stops accepting, drains in-flight requests (up to `server.drain_timeout`) and returns
    /// whether everything drained in time.
    pub async fn shutdown(self) -> bool {
        let _ = self.shutdown.send(true);
        let _ = self
            .generation
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .health
            .send(true);
        let main = self.main.await.unwrap_or(false);
        let admin = self.admin.await.unwrap_or(false);
        if let Some((auth, _)) = &self.local {
            // After the drain, so the last requests' audit events are written too.
            auth.audit().close().await;
        }
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
        self.local
            .as_ref()
            .map(|(auth, _)| auth)
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
