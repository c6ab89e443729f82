//! Upstream clusters: their instances with health and load state, the balancer, the retry
//! budget, counters, and one pooled keep-alive client each (HTTP/1.1 or HTTP/2, plain or TLS).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Body;
use futures_util::future::BoxFuture;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;

use super::balance::{self, RoundRobin};
use super::health::{ActiveHealth, Ejection};
use super::pool::Http1Pool;
use super::retry::RetryBudget;
use crate::auth::introspect;
use crate::config::{Balance, HealthCheckConfig, UpstreamConfig, UpstreamProtocol};
use crate::telemetry::metrics::{ClusterMetrics, InstanceHealth, Metrics};

pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, Body>;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("upstream {cluster}: instance {instance} is not a usable URL")]
    BadInstance { cluster: String, instance: String },
    #[error("upstream {cluster}: CA bundle {path}: {reason}")]
    CaFile {
        cluster: String,
        path: String,
        reason: String,
    },
    #[error("upstream {cluster}: TLS setup: {reason}")]
    Tls { cluster: String, reason: String },
}

/// Health and ejection bookkeeping, changed only on failures, checks and recoveries.
#[derive(Debug, Default)]
pub struct InstanceState {
    pub active: ActiveHealth,
    pub ejection: Ejection,
}

/// One backend instance, with its URI parts pre-parsed for the hot path.
#[derive(Debug)]
pub struct Instance {
    pub scheme: Scheme,
    pub authority: Authority,
    /// Requests in flight (head sent, body not yet finished), for `least_request`.
    pub in_flight: AtomicUsize,
    /// Plain-HTTP/1.1 instances: the data plane's own keep-alive pool (others use the
    /// cluster's client).
    pub pool: Option<Arc<Http1Pool>>,
    /// Mirrors of `state` read on every pick without taking the lock.
    available_flag: AtomicBool,
    ejected_until_ms: AtomicU64,
    state: Mutex<InstanceState>,
}

impl Instance {
    /// `target` on this instance as an absolute URI, the form hyper-util's client (and a
    /// tunnel's or a health check's request) needs to pick its connection. Fails only on a
    /// target that is not a valid path and query.
    pub fn absolute_uri<T>(&self, target: T) -> Result<Uri, http::Error>
    where
        PathAndQuery: TryFrom<T>,
        <PathAndQuery as TryFrom<T>>::Error: Into<http::Error>,
    {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(target)
            .build()
    }

    pub fn state(&self) -> StateGuard<'_> {
        StateGuard {
            instance: self,
            state: self.state.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }
}

/// Write access to an instance's state; on drop the lock-free mirrors are refreshed.
pub struct StateGuard<'a> {
    instance: &'a Instance,
    state: MutexGuard<'a, InstanceState>,
}

impl std::ops::Deref for StateGuard<'_> {
    type Target = InstanceState;
    fn deref(&self) -> &InstanceState {
        &self.state
    }
}

impl std::ops::DerefMut for StateGuard<'_> {
    fn deref_mut(&mut self) -> &mut InstanceState {
        &mut self.state
    }
}

impl Drop for StateGuard<'_> {
    fn drop(&mut self) {
        self.instance
            .available_flag
            .store(self.state.active.healthy, Ordering::Release);
        let until = self
            .state
            .ejection
            .ejected_until
            .map_or(0, |t| millis_since(*EPOCH.get_or_init(Instant::now), t));
        self.instance
            .ejected_until_ms
            .store(until, Ordering::Release);
    }
}

/// Shared reference point for the millisecond mirrors of ejection deadlines.
static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn millis_since(epoch: Instant, t: Instant) -> u64 {
    // +1 so "ejected until the epoch itself" is not confused with "not ejected" (0).
    t.saturating_duration_since(epoch).as_millis() as u64 + 1
}

fn now_ms() -> u64 {
    millis_since(*EPOCH.get_or_init(Instant::now), Instant::now())
}

pub struct Cluster {
    pub name: String,
    pub instances: Vec<Instance>,
    pub balance: Balance,
    pub protocol: UpstreamProtocol,
    pub response_timeout: Duration,
    pub retries: u32,
    pub eject_base: Duration,
    pub eject_max: Duration,
    pub health: Option<HealthCheckConfig>,
    pub client: UpstreamClient,
    pub budget: RetryBudget,
    /// Counters and histograms of the cluster and (by index) its instances.
    pub metrics: ClusterMetrics,
    round_robin: RoundRobin,
    /// The entry this cluster was built from, so a reload can tell whether to keep it.
    source: UpstreamConfig,
}

impl Cluster {
    pub fn new(config: &UpstreamConfig, metrics: &Metrics) -> Result<Cluster, ClusterError> {
        let instances = config
            .instances
            .iter()
            .map(|url| {
                let bad = || ClusterError::BadInstance {
                    cluster: config.name.clone(),
                    instance: url.to_string(),
                };
                let authority = url[url::Position::BeforeHost..url::Position::AfterPort]
                    .parse::<Authority>()
                    .map_err(|_| bad())?;
                let scheme = match url.scheme() {
                    "https" => Scheme::HTTPS,
                    "http" => Scheme::HTTP,
                    _ => return Err(bad()),
                };
                let pool = (scheme == Scheme::HTTP && config.protocol == UpstreamProtocol::Http1)
                    .then(|| {
                        Arc::new(Http1Pool::new(
                            authority.clone(),
                            config.connect_timeout,
                            config.idle_timeout,
                        ))
                    });
                Ok(Instance {
                    scheme,
                    authority,
                    pool,
                    in_flight: AtomicUsize::new(0),
                    available_flag: AtomicBool::new(true),
                    ejected_until_ms: AtomicU64::new(0),
                    state: Mutex::new(InstanceState::default()),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let metrics = metrics.cluster(
            &config.name,
            instances.iter().map(|i: &Instance| i.authority.as_str()),
        );
        Ok(Cluster {
            name: config.name.clone(),
            instances,
            balance: config.balance,
            protocol: config.protocol,
            response_timeout: config.response_timeout,
            retries: config.retries,
            eject_base: config.eject_base,
            eject_max: config.eject_max,
            health: config.health.clone(),
            client: build_client(config)?,
            budget: RetryBudget::new(config.retry_budget),
            metrics,
            round_robin: RoundRobin::default(),
            source: config.clone(),
        })
    }

    /// Was this cluster built from exactly `config`? (A reload then keeps it.)
    pub fn built_from(&self, config: &UpstreamConfig) -> bool {
        self.source == *config
    }

    fn is_available(&self, index: usize, now_ms: u64) -> bool {
        let instance = &self.instances[index];
        instance.available_flag.load(Ordering::Acquire)
            && now_ms >= instance.ejected_until_ms.load(Ordering::Acquire)
    }

    /// An available instance, other than `exclude` (the one a retry just failed on) when
    /// there is another; `None` when the cluster has no healthy instance.
    pub fn pick(&self, exclude: Option<usize>) -> Option<usize> {
        let now = now_ms();
        let available = |i: usize| self.is_available(i, now) && Some(i) != exclude;
        let choice = match self.balance {
            Balance::RoundRobin => self.round_robin.pick(self.instances.len(), available),
            Balance::LeastRequest => balance::least_request(
                self.instances.len(),
                available,
                |i| self.instances[i].in_flight.load(Ordering::Relaxed),
                |n| fastrand::usize(..n),
            ),
        };
        choice.or_else(|| exclude.filter(|&i| self.is_available(i, now)))
    }

    /// Each instance's health as `/metrics` reports it, from the lock-free mirrors.
    pub fn instance_states(&self) -> impl Iterator<Item = InstanceHealth> + '_ {
        let now = now_ms();
        self.instances.iter().map(move |instance| InstanceHealth {
            upstream: self.name.clone(),
            instance: instance.authority.to_string(),
            healthy: instance.available_flag.load(Ordering::Acquire),
            ejected: now < instance.ejected_until_ms.load(Ordering::Acquire),
        })
    }

    /// A connect failure or timeout: take the instance out for a while.
    pub fn eject(&self, index: usize) {
        let instance = &self.instances[index];
        let time = instance
            .state()
            .ejection
            .eject(Instant::now(), self.eject_base, self.eject_max);
        self.metrics.instances[index].ejections.inc();
        tracing::warn!(upstream = %self.name, instance = %instance.authority, ?time, "instance ejected");
    }

    /// A successful exchange ends an ejection streak (cheap when there was none).
    pub fn succeeded(&self, index: usize) {
        let instance = &self.instances[index];
        if instance.ejected_until_ms.load(Ordering::Relaxed) != 0 {
            instance.state().ejection.succeeded();
        }
    }
}

/// Upstream mode asks the backend's cluster to introspect tokens: any available instance,
/// within the cluster's response timeout, ejected when it cannot be reached.
impl introspect::Backend for Cluster {
    fn name(&self) -> &str {
        &self.name
    }

    fn deadline(&self) -> Duration {
        self.response_timeout
    }

    fn send(&self, mut request: Request<Body>) -> BoxFuture<'_, Result<Response<Body>, String>> {
        Box::pin(async move {
            let index = self
                .pick(None)
                .ok_or_else(|| "no healthy instance".to_owned())?;
            let instance = &self.instances[index];
            let target = request.uri().path_and_query().cloned();
            *request.uri_mut() = instance
                .absolute_uri(target.ok_or_else(|| "no target".to_owned())?)
                .map_err(|e| e.to_string())?;
            let timeout = self.response_timeout;
            match tokio::time::timeout(timeout, self.client.request(request)).await {
                Ok(Ok(response)) => Ok(response.map(Body::new)),
                Ok(Err(e)) => {
                    if e.is_connect() {
                        self.eject(index);
                    }
                    Err(e.to_string())
                }
                Err(_) => Err(format!("no answer in {timeout:?}")),
            }
        })
    }
}

/// Counts a request in flight on an instance until dropped (for `least_request`).
pub struct InFlight {
    cluster: Arc<Cluster>,
    index: usize,
}

impl InFlight {
    pub fn start(cluster: Arc<Cluster>, index: usize) -> InFlight {
        cluster.instances[index]
            .in_flight
            .fetch_add(1, Ordering::Relaxed);
        InFlight { cluster, index }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.cluster.instances[self.index]
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

fn build_client(config: &UpstreamConfig) -> Result<UpstreamClient, ClusterError> {
    let tls = tls_config(config)?;
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(config.connect_timeout));
    // Proxied requests are small and latency-bound: never wait for Nagle.
    http.set_nodelay(true);
    // The https connector needs to see https:// URIs.
    http.enforce_http(false);
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let connector = match config.protocol {
        UpstreamProtocol::Http1 => builder.enable_http1().wrap_connector(http),
        UpstreamProtocol::Http2 => builder.enable_http2().wrap_connector(http),
    };
    let mut client = Client::builder(TokioExecutor::new());
    client
        .pool_idle_timeout(config.idle_timeout)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new());
    if config.protocol == UpstreamProtocol::Http2 {
        // Prior knowledge over http://, ALPN h2 over https://.
        client.http2_only(true);
    }
    Ok(client.build(connector))
}

fn tls_config(config: &UpstreamConfig) -> Result<rustls::ClientConfig, ClusterError> {
    let tls_error = |reason: String| ClusterError::Tls {
        cluster: config.name.clone(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    match &config.ca_file {
        Some(path) => {
            let ca_error = |reason: String| ClusterError::CaFile {
                cluster: config.name.clone(),
                path: path.display().to_string(),
                reason,
            };
            use rustls::pki_types::CertificateDer;
            use rustls::pki_types::pem::PemObject;
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| ca_error(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ca_error(e.to_string()))?;
            if certs.is_empty() {
                return Err(ca_error("no certificate in the file".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
            }
        }
        None if config.instances.iter().any(|u| u.scheme() == "https") => {
            // Unreadable individual system certificates are skipped, as browsers do.
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
        None => {}
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    // ALPN is left to hyper-rustls: enable_http1/enable_http2 set it from the protocol.
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(e.to_string()))
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}
