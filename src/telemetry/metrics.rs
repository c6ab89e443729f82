//! Prometheus metrics: the one long-lived registry ([`Metrics`], created by `App::start`) and
//! the handles each subsystem resolves from it once — per route, cluster and instance when a
//! `Proxy` is built, per outcome when `Auth` is — so the request path only does atomic adds.
//! A rebuilt `Proxy` resolves the same label sets again and keeps counting into the same
//! series. Labels are bounded: configured route, upstream and instance names and fixed words,
//! never a request path, user or token. Rendered as Prometheus text (0.0.4) for `GET /metrics`.

use std::borrow::Cow;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use http::{Method, StatusCode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub use super::histogram::Histogram;
pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// A series' labels: fixed names, values that are configured names or fixed words.
type Labels = Vec<(&'static str, Cow<'static, str>)>;

type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// The registry and every metric family in it.
pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    request_duration: HistogramFamily,
    upstream_duration: HistogramFamily,
    upstream_errors: Family<Labels, Counter>,
    upstream_retries: Family<Labels, Counter>,
    upstream_no_instance: Family<Labels, Counter>,
    upstream_ejections: Family<Labels, Counter>,
    policy_refusals: Family<Labels, Counter>,
    session_closures: SessionClosures,
    instance_healthy: Family<Labels, Gauge>,
    instance_ejected: Family<Labels, Gauge>,
    token_cache_entries: Gauge,
    /// Its `tokens` are also the data plane's token-check counters ([`Metrics::token_checks`]).
    auth: AuthMetrics,
    mail: MailMetrics,
    client_addr: ClientAddrMetrics,
    /// Scrapes refresh the scrape-time gauges and encode under this lock, so two concurrent
    /// scrapes never see each other's half-refreshed instance list.
    scrape: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("meiro_gate");
        let r = &mut registry;
        let histograms = || HistogramFamily::new_with_constructor(Histogram::default);

        let requests = Family::default();
        r.register(
            "requests",
            "Requests answered, by route name, method and status class (1xx..5xx)",
            requests.clone(),
        );
        let request_duration = histograms();
        r.register(
            "request_duration_seconds",
            "Time from a request's arrival to its response head, by route name",
            request_duration.clone(),
        );
        let upstream_duration = histograms();
        r.register(
            "upstream_request_duration_seconds",
            "Time from sending an attempt upstream to its response head, by upstream and instance",
            upstream_duration.clone(),
        );
        let upstream_errors = Family::default();
        r.register(
            "upstream_errors",
            "Failed upstream attempts by kind: connect, timeout, broken (after sending), 5xx",
            upstream_errors.clone(),
        );
        let upstream_retries = Family::default();
        r.register(
            "upstream_retries",
            "Attempts sent again to another instance, by upstream",
            upstream_retries.clone(),
        );
        let upstream_no_instance = Family::default();
        r.register(
            "upstream_no_healthy_instance",
            "Requests refused because the upstream had no available instance",
            upstream_no_instance.clone(),
        );
        let upstream_ejections = Family::default();
        r.register(
            "upstream_ejections",
            "Passive ejections of an instance after a connect failure or timeout",
            upstream_ejections.clone(),
        );
        let policy_refusals = Family::default();
        r.register(
            "policy_refusals",
            "Requests a route's rules refused after authentication, by route and reason: role \
             (403, routes.allow_roles) or method (405, routes.methods)",
            policy_refusals.clone(),
        );
        let session_closures = SessionClosures::default();
        r.register(
            "session_closures",
            "Open connections closed because the session that opened them ended, by kind \
             (websocket: any upgraded tunnel; stream: a streamed response cut) and reason \
             (session_ended, identity_changed)",
            session_closures.0.clone(),
        );
        let instance_healthy = Family::default();
        r.register(
            "upstream_instance_healthy",
            "1 while the active health checks find the instance healthy (read at scrape time)",
            instance_healthy.clone(),
        );
        let instance_ejected = Family::default();
        r.register(
            "upstream_instance_ejected",
            "1 while the instance is passively ejected (read at scrape time)",
            instance_ejected.clone(),
        );
        let token_cache_entries = Gauge::default();
        r.register(
            "token_cache_entries",
            "Entries of the validated-token cache (read at scrape time)",
            token_cache_entries.clone(),
        );

        let token_checks_family: Family<Labels, Counter> = Family::default();
        r.register(
            "token_checks",
            "Token checks (data plane and the API's own) by outcome: cache_hit, verified, rejected (with a reason), unavailable",
            token_checks_family.clone(),
        );

        let logins: Family<Labels, Counter> = Family::default();
        r.register(
            "logins",
            "Credentials logins by outcome: success, failure, rate_limited, error",
            logins.clone(),
        );
        let login = |outcome: &'static str| logins.get_or_create_owned(&label("outcome", outcome));
        let auth = AuthMetrics {
            tokens: TokenCheckMetrics::resolve(&token_checks_family),
            login_success: login("success"),
            login_failure: login("failure"),
            login_rate_limited: login("rate_limited"),
            login_error: login("error"),
            revocations_sent: Counter::default(),
            revocations_received: Counter::default(),
        };
        r.register(
            "revocations_sent",
            "Sessions this replica ended and appended to the revocation feed",
            auth.revocations_sent.clone(),
        );
        r.register(
            "revocations_received",
            "Revocation feed entries this replica applied to its cache (its own included)",
            auth.revocations_received.clone(),
        );

        let mail = MailMetrics::default();
        r.register(
            "mail_queue_depth",
            "Messages queued or being delivered",
            mail.queue_depth.clone(),
        );
        r.register("mail_sent", "Messages delivered", mail.sent.clone());
        r.register(
            "mail_failed",
            "Messages dropped, by kind (invitation, password_reset) and reason: refused \
             (permanently, by the server or the address rule) or expired (undelivered for \
             give_up_after)",
            mail.failed.clone(),
        );

        let client_addr = ClientAddrMetrics::default();
        r.register(
            "client_forwarded",
            "Requests whose client address was taken from X-Forwarded-For (a trusted peer)",
            client_addr.forwarded.clone(),
        );
        r.register(
            "proxy_header_refused",
            "Connections closed for their PROXY protocol header, by reason: missing, invalid, \
             timeout, untrusted_peer",
            client_addr.refused.clone(),
        );

        Metrics {
            registry,
            requests,
            request_duration,
            upstream_duration,
            upstream_errors,
            upstream_retries,
            upstream_no_instance,
            upstream_ejections,
            policy_refusals,
            session_closures,
            instance_healthy,
            instance_ejected,
            token_cache_entries,
            auth,
            mail,
            client_addr,
            scrape: Mutex::new(()),
        }
    }

    /// The handles of one route (or of a fixed name such as [`UNMATCHED_ROUTE`]).
    pub fn route(&self, name: &str) -> RouteMetrics {
        let name: Cow<'static, str> = Cow::Owned(name.to_owned());
        RouteMetrics {
            duration: self
                .request_duration
                .get_or_create_owned(&vec![("route", name.clone())]),
            requests: self.requests.clone(),
            name,
            by_method_and_status: Default::default(),
        }
    }

    /// The counter of one route's refusals for `reason` (`role`, `method`).
    pub fn policy_refusals(&self, route: &str, reason: &'static str) -> Counter {
        self.policy_refusals.get_or_create_owned(&vec![
            ("route", Cow::Owned(route.to_owned())),
            ("reason", Cow::Borrowed(reason)),
        ])
    }

    pub fn session_closures(&self) -> &SessionClosures {
        &self.session_closures
    }

    /// The handles of one upstream cluster and its instances (`host:port` each).
    pub fn cluster<'a>(
        &self,
        name: &str,
        instances: impl IntoIterator<Item = &'a str>,
    ) -> ClusterMetrics {
        let upstream = || ("upstream", Cow::Owned(name.to_owned()));
        let instances = instances
            .into_iter()
            .map(|instance| {
                let labels = vec![upstream(), ("instance", Cow::Owned(instance.to_owned()))];
                let error = |kind: &'static str| {
                    let mut labels = labels.clone();
                    labels.push(("kind", Cow::Borrowed(kind)));
                    self.upstream_errors.get_or_create_owned(&labels)
                };
                InstanceMetrics {
                    duration: self.upstream_duration.get_or_create_owned(&labels),
                    connect_errors: error("connect"),
                    timeouts: error("timeout"),
                    broken: error("broken"),
                    server_errors: error("5xx"),
                    ejections: self.upstream_ejections.get_or_create_owned(&labels),
                }
            })
            .collect();
        ClusterMetrics {
            retries: self.upstream_retries.get_or_create_owned(&vec![upstream()]),
            no_healthy_instance: self
                .upstream_no_instance
                .get_or_create_owned(&vec![upstream()]),
            instances,
        }
    }

    pub fn token_checks(&self) -> &TokenCheckMetrics {
        &self.auth.tokens
    }

    pub fn auth(&self) -> &AuthMetrics {
        &self.auth
    }

    pub fn mail(&self) -> &MailMetrics {
        &self.mail
    }

    pub fn client_addr(&self) -> &ClientAddrMetrics {
        &self.client_addr
    }

    /// The text exposition, after setting the gauges that are read at scrape time.
    pub fn render(&self, state: &ScrapeState) -> Result<String, std::fmt::Error> {
        let _scrape = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        self.token_cache_entries
            .set(i64::try_from(state.token_cache_entries).unwrap_or(i64::MAX));
        // Cleared first: an instance a reload removed must not linger with its last value.
        self.instance_healthy.clear();
        self.instance_ejected.clear();
        for instance in &state.instances {
            let labels = vec![
                ("upstream", Cow::Owned(instance.upstream.clone())),
                ("instance", Cow::Owned(instance.instance.clone())),
            ];
            self.instance_healthy
                .get_or_create(&labels)
                .set(i64::from(instance.healthy));
            self.instance_ejected
                .get_or_create(&labels)
                .set(i64::from(instance.ejected));
        }
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// What is read at scrape time instead of being counted on the request path.
#[derive(Debug, Default)]
pub struct ScrapeState {
    pub token_cache_entries: u64,
    pub instances: Vec<InstanceHealth>,
}

#[derive(Debug)]
pub struct InstanceHealth {
    pub upstream: String,
    pub instance: String,
    pub healthy: bool,
    pub ejected: bool,
}

/// `session_closures`: counted when a connection is closed, which is rare enough to look the
/// series up then.
#[derive(Clone, Default)]
pub struct SessionClosures(Family<Labels, Counter>);

impl SessionClosures {
    pub fn closed(&self, kind: &'static str, reason: &'static str) {
        self.0
            .get_or_create(&vec![
                ("kind", Cow::Borrowed(kind)),
                ("reason", Cow::Borrowed(reason)),
            ])
            .inc();
    }
}

fn label(name: &'static str, value: &'static str) -> Labels {
    vec![(name, Cow::Borrowed(value))]
}

/// The route name of requests no route matched (and of paths that cannot be normalized).
pub const UNMATCHED_ROUTE: &str = "unmatched";
/// The route name of the auth API passed through to the backend in upstream mode.
pub const AUTH_API_ROUTE: &str = "auth_api";

/// Methods as a label: the common ones by name, everything else (extensions too) as `other`,
/// so a client inventing methods cannot grow the series.
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other",
];
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Index into [`METHODS`]; taken before the request is consumed.
#[derive(Debug, Clone, Copy)]
pub struct MethodIndex(u8);

impl MethodIndex {
    #[inline]
    pub fn of(method: &Method) -> MethodIndex {
        MethodIndex(match *method {
            Method::GET => 0,
            Method::HEAD => 1,
            Method::POST => 2,
            Method::PUT => 3,
            Method::PATCH => 4,
            Method::DELETE => 5,
            Method::OPTIONS => 6,
            _ => 7,
        })
    }
}

fn status_class(status: StatusCode) -> usize {
    (usize::from(status.as_u16() / 100)).clamp(1, 5) - 1
}

/// One route's request counter and duration histogram.
pub struct RouteMetrics {
    name: Cow<'static, str>,
    requests: Family<Labels, Counter>,
    /// Resolved from `requests` on first use, so only the method and status combinations a
    /// route actually served appear; after that a request costs one load and one add.
    by_method_and_status: [[OnceLock<Counter>; STATUS_CLASSES.len()]; METHODS.len()],
    duration: Histogram,
}

impl RouteMetrics {
    /// Counts one answered request; `elapsed` runs to the response head.
    #[inline]
    pub fn record(&self, method: MethodIndex, status: StatusCode, elapsed: Duration) {
        let (m, s) = (usize::from(method.0), status_class(status));
        self.by_method_and_status[m][s]
            .get_or_init(|| {
                self.requests.get_or_create_owned(&vec![
                    ("route", self.name.clone()),
                    ("method", Cow::Borrowed(METHODS[m])),
                    ("status", Cow::Borrowed(STATUS_CLASSES[s])),
                ])
            })
            .inc();
        self.duration.observe(elapsed);
    }
}

/// One upstream cluster's handles; `instances` in the cluster's instance order.
pub struct ClusterMetrics {
    pub retries: Counter,
    pub no_healthy_instance: Counter,
    pub instances: Vec<InstanceMetrics>,
}

pub struct InstanceMetrics {
    pub duration: Histogram,
    pub connect_errors: Counter,
    pub timeouts: Counter,
    pub broken: Counter,
    pub server_errors: Counter,
    pub ejections: Counter,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The request carried none.
    Missing,
    /// Malformed, forged, signed by an unknown key, or refused by the backend (upstream mode).
    Invalid,
    Expired,
    /// Its session was ended, or its user disabled or deleted.
    Revoked,
}

/// Token-check outcomes, shared by local verification, introspection and the data plane (which
/// sees missing tokens). `Default` gives detached counters for code run without a registry.
#[derive(Debug, Clone, Default)]
pub struct TokenCheckMetrics {
    pub cache_hit: Counter,
    /// A cache miss whose token was verified (or vouched for) and cached.
    pub verified: Counter,
    /// The store or backend could not answer.
    pub unavailable: Counter,
    rejected: [Counter; 4],
}

impl TokenCheckMetrics {
    fn resolve(family: &Family<Labels, Counter>) -> TokenCheckMetrics {
        let outcome = |o: &'static str| family.get_or_create_owned(&label("outcome", o));
        let rejected = |reason: &'static str| {
            family.get_or_create_owned(&vec![
                ("outcome", Cow::Borrowed("rejected")),
                ("reason", Cow::Borrowed(reason)),
            ])
        };
        TokenCheckMetrics {
            cache_hit: outcome("cache_hit"),
            verified: outcome("verified"),
            unavailable: outcome("unavailable"),
            rejected: [
                rejected("missing"),
                rejected("invalid"),
                rejected("expired"),
                rejected("revoked"),
            ],
        }
    }

    #[inline]
    pub fn rejected(&self, why: Rejection) {
        self.rejected[why as usize].inc();
    }
}

/// Counters of the local auth subsystem.
#[derive(Debug, Clone, Default)]
pub struct AuthMetrics {
    pub tokens: TokenCheckMetrics,
    pub login_success: Counter,
    pub login_failure: Counter,
    pub login_rate_limited: Counter,
    /// Logins that failed for another reason (store down, hashing overloaded).
    pub login_error: Counter,
    pub revocations_sent: Counter,
    pub revocations_received: Counter,
}

/// Counters of the mail queue.
#[derive(Debug, Clone, Default)]
pub struct MailMetrics {
    pub queue_depth: Gauge,
    pub sent: Counter,
    /// Dropped messages by `kind` and `reason`; see [`MailMetrics::failed`].
    failed: Family<Labels, Counter>,
}

impl MailMetrics {
    /// The dropped-message counter of one message kind and reason (fixed words from `mail`).
    /// Resolved when a message is dropped, which is rare: the family's lock is no concern.
    pub fn failed(&self, kind: &'static str, reason: &'static str) -> Counter {
        self.failed.get_or_create_owned(&vec![
            ("kind", Cow::Borrowed(kind)),
            ("reason", Cow::Borrowed(reason)),
        ])
    }
}

/// Counters of the client address (`server::client_addr`).
#[derive(Debug, Clone, Default)]
pub struct ClientAddrMetrics {
    pub forwarded: Counter,
    /// By `reason`; see [`ClientAddrMetrics::refused`].
    refused: Family<Labels, Counter>,
}

impl ClientAddrMetrics {
    /// The counter of connections closed for their PROXY header, for one fixed reason.
    pub fn refused(&self, reason: &'static str) -> Counter {
        self.refused
            .get_or_create_owned(&vec![("reason", Cow::Borrowed(reason))])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_le_and_encode_cumulatively() {
        let metrics = Metrics::new();
        let route = metrics.route("api");
        let ms = Duration::from_millis;
        route.record(MethodIndex::of(&Method::GET), StatusCode::OK, ms(1));
        route.record(MethodIndex::of(&Method::GET), StatusCode::OK, ms(3));
        route.record(
            MethodIndex::of(&Method::from_bytes(b"BREW").unwrap()),
            StatusCode::BAD_GATEWAY,
            Duration::from_secs(60),
        );
        let text = metrics.render(&ScrapeState::default()).unwrap();
        for line in [
            r#"meiro_gate_requests_total{route="api",method="GET",status="2xx"} 2"#,
            r#"meiro_gate_requests_total{route="api",method="other",status="5xx"} 1"#,
            r#"meiro_gate_request_duration_seconds_bucket{route="api",le="0.0005"} 0"#,
            r#"meiro_gate_request_duration_seconds_bucket{route="api",le="0.001"} 1"#,
            r#"meiro_gate_request_duration_seconds_bucket{route="api",le="0.005"} 2"#,
            r#"meiro_gate_request_duration_seconds_bucket{route="api",le="30"} 2"#,
            r#"meiro_gate_request_duration_seconds_bucket{route="api",le="+Inf"} 3"#,
            r#"meiro_gate_request_duration_seconds_sum{route="api"} 60.004"#,
            r#"meiro_gate_request_duration_seconds_count{route="api"} 3"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        // Combinations never served are not emitted.
        assert!(!text.contains(r#"method="POST""#), "{text}");
    }

    #[test]
    fn a_second_resolution_counts_into_the_same_series() {
        let metrics = Metrics::new();
        let first = metrics.cluster("backend", ["a:1"]);
        let second = metrics.cluster("backend", ["a:1"]);
        first.instances[0].server_errors.inc();
        second.instances[0].server_errors.inc();
        assert_eq!(first.instances[0].server_errors.get(), 2);
        let (a, b) = (metrics.route("r"), metrics.route("r"));
        a.record(
            MethodIndex::of(&Method::GET),
            StatusCode::OK,
            Duration::ZERO,
        );
        b.record(
            MethodIndex::of(&Method::GET),
            StatusCode::OK,
            Duration::ZERO,
        );
        assert_eq!(a.duration.count(), 2);
        let text = metrics.render(&ScrapeState::default()).unwrap();
        assert!(
            text.contains(r#"meiro_gate_requests_total{route="r",method="GET",status="2xx"} 2"#)
        );
    }

    #[test]
    fn scrape_time_gauges_follow_the_current_state() {
        let metrics = Metrics::new();
        let instance = |name: &str, healthy| InstanceHealth {
            upstream: "backend".into(),
            instance: name.into(),
            healthy,
            ejected: !healthy,
        };
        let state = ScrapeState {
            token_cache_entries: 7,
            instances: vec![instance("a:1", true), instance("b:1", false)],
        };
        let text = metrics.render(&state).unwrap();
        assert!(text.contains("meiro_gate_token_cache_entries 7"), "{text}");
        assert!(text.contains(
            r#"meiro_gate_upstream_instance_healthy{upstream="backend",instance="b:1"} 0"#
        ));
        let state = ScrapeState {
            token_cache_entries: 0,
            instances: vec![instance("a:1", true)],
        };
        let text = metrics.render(&state).unwrap();
        assert!(!text.contains("b:1"), "a removed instance lingers:\n{text}");
    }
}
