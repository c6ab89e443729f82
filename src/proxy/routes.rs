//! The route table: longest path prefix wins, matched on segment boundaries of the
//! normalized path (`/api` matches `/api` and `/api/x`, never `/apix`); for the same prefix a
//! route for the request's host wins over one for any host.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use http::uri::PathAndQuery;

use super::error::ProxyError;
use super::path;
use super::policy::RoutePolicy;
use super::upstream::Cluster;
use super::user_limits::UserLimiter;
use crate::config::RouteConfig;
use crate::telemetry::metrics::{Metrics, RouteMetrics};

pub struct Route {
    pub prefix: String,
    /// Lower-case host without port; `None` matches any host.
    pub host: Option<String>,
    pub public: bool,
    pub strip_prefix: bool,
    pub max_body: Option<u64>,
    pub timeout: Option<Duration>,
    /// Protocols a client may switch to here (lower case; see `proxy::upgrade`).
    pub upgrades: Vec<String>,
    pub cluster: Arc<Cluster>,
    /// Requests and durations under the route's name (`name`, else its upstream's).
    pub metrics: RouteMetrics,
    /// `allow_roles` and `methods`.
    pub policy: RoutePolicy,
}

impl Route {
    /// `shared_limiter`: `[limits]`' per-user budget, for a route without its own.
    pub fn new(
        config: &RouteConfig,
        cluster: Arc<Cluster>,
        shared_limiter: Option<&Arc<UserLimiter>>,
        metrics: &Metrics,
    ) -> Route {
        let name = config.name.as_deref().unwrap_or(&config.upstream);
        Route {
            metrics: metrics.route(name),
            policy: RoutePolicy::new(config, name, shared_limiter, metrics),
            prefix: config.prefix.trim_end_matches('/').to_owned(),
            host: config.host.clone(),
            public: config.public,
            strip_prefix: config.strip_prefix,
            max_body: config.max_body.map(|b| b.as_u64()),
            timeout: config.timeout,
            upgrades: config.upgrades.clone(),
            cluster,
        }
    }

    /// The path the upstream receives: with the prefix removed when `strip_prefix` is set.
    /// `path` is the normalized path, segment parameters included; the route matched its
    /// [`path::without_params`] form.
    pub fn upstream_path<'p>(&self, path: &'p str) -> &'p str {
        if !self.strip_prefix {
            return path;
        }
        if path.contains(';') {
            return path::strip_segments(path, &self.prefix);
        }
        match path.strip_prefix(self.prefix.as_str()) {
            Some("") | None => "/",
            Some(rest) => rest,
        }
    }
}

pub struct RouteTable {
    // Most specific first: longer prefix, then host-bound before any-host.
    routes: Vec<Route>,
}

impl RouteTable {
    pub fn new(mut routes: Vec<Route>) -> RouteTable {
        routes.sort_by_key(|r| (std::cmp::Reverse(r.prefix.len()), r.host.is_none()));
        RouteTable { routes }
    }

    /// `host` is the request's host (any case, port allowed, a trailing dot ignored: DNS reads
    /// `admin.example.` as `admin.example`, and so must a host route); `path` is the routing
    /// form of the normalized path ([`path::without_params`]).
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        let host = host.map(|h| {
            let h = strip_port(h);
            h.strip_suffix('.').unwrap_or(h)
        });
        self.routes.iter().find(|r| {
            prefix_matches(&r.prefix, path)
                && r.host
                    .as_deref()
                    .is_none_or(|want| host.is_some_and(|h| h.eq_ignore_ascii_case(want)))
        })
    }
}

/// `example.com:8080` → `example.com`; `[::1]:80` → `[::1]`.
fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port))
            if !name.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && !name.ends_with(':') =>
        {
            name
        }
        _ => host,
    }
}

/// Pure rule: does `prefix` (without a trailing slash) cover `path` on a segment boundary?
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// `path` with the query of `uri`, as the upstream receives them.
pub fn path_and_query(uri: &Uri, path: &str) -> Result<PathAndQuery, ProxyError> {
    let target = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    PathAndQuery::try_from(target).map_err(|_| ProxyError::BadPath)
}

/// The path and query the upstream receives: the normalized path (minus the prefix when the
/// route strips it), the query untouched. Reuses the original (no allocation) when nothing
/// changed.
pub fn upstream_target(
    uri: &Uri,
    normalized: Cow<'_, str>,
    route: &Route,
) -> Result<PathAndQuery, ProxyError> {
    if let (Cow::Borrowed(_), false, Some(pq)) =
        (&normalized, route.strip_prefix, uri.path_and_query())
    {
        return Ok(pq.clone());
    }
    path_and_query(uri, route.upstream_path(&normalized))
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::Figment;
    use figment::providers::{Format, Toml};
    use proptest::prelude::*;

    #[test]
    fn segment_boundaries() {
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/", "/"));
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/x"));
        assert!(prefix_matches("/api/", "/api/x"));
        assert!(!prefix_matches("/api", "/apix"));
        assert!(!prefix_matches("/api", "/"));
    }

    #[test]
    fn a_host_route_matches_its_host_with_a_trailing_dot_and_any_port() {
        let table = |hosts: &[Option<&str>]| {
            let metrics = Metrics::new();
            let config = crate::config::load_from_figment(&figment::Figment::from(
                <figment::providers::Toml as figment::providers::Format>::string(
                    "[[upstreams]]\nname = \"u\"\ninstances = [\"http://127.0.0.1:9\"]\n",
                ),
            ))
            .unwrap();
            let cluster = Arc::new(Cluster::new(&config.upstreams[0], &metrics).unwrap());
            let routes = hosts
                .iter()
                .map(|host| {
                    let mut rc = crate::config::RouteConfig {
                        name: None,
                        prefix: "/".into(),
                        upstream: "u".into(),
                        public: host.is_none(),
                        host: host.map(str::to_owned),
                        strip_prefix: false,
                        max_body: None,
                        timeout: None,
                        upgrades: vec![],
                        allow_roles: None,
                        methods: None,
                        per_user_rate: None,
                    };
                    rc.name = host.map(str::to_owned);
                    Route::new(&rc, cluster.clone(), None, &metrics)
                })
                .collect();
            RouteTable::new(routes)
        };
        let t = table(&[None, Some("admin.example")]);
        for host in [
            "admin.example",
            "ADMIN.example",
            "admin.example.",
            "admin.example.:443",
        ] {
            assert!(!t.find(Some(host), "/").unwrap().public, "{host}");
        }
        assert!(t.find(Some("other.example"), "/").unwrap().public);
    }

    #[test]
    fn ports_are_ignored_in_host_matching() {
        assert_eq!(strip_port("api.example.com:8443"), "api.example.com");
        assert_eq!(strip_port("api.example.com"), "api.example.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }

    /// Routes whose prefixes nest and overlap, each with `strip_prefix` as given.
    fn route_table(strip: [bool; 5]) -> RouteTable {
        let prefixes = ["/", "/api", "/api/admin", "/public", "/api/v1.0"];
        let mut toml =
            String::from("[[upstreams]]\nname = \"u\"\ninstances = [\"http://127.0.0.1:9\"]\n");
        for (prefix, strip) in prefixes.iter().zip(strip) {
            toml.push_str(&format!(
                "[[routes]]\nprefix = \"{prefix}\"\nupstream = \"u\"\nstrip_prefix = {strip}\n"
            ));
        }
        let config = crate::config::load_from_figment(&Figment::from(Toml::string(&toml)))
            .expect("valid config");
        let metrics = Metrics::new();
        let cluster = Arc::new(Cluster::new(&config.upstreams[0], &metrics).unwrap());
        RouteTable::new(
            config
                .routes
                .iter()
                .map(|r| Route::new(r, cluster.clone(), None, &metrics))
                .collect(),
        )
    }

    /// Segments chosen to trip a normalizer: dots plain and escaped, escaped separators, case,
    /// escaped unreserved characters, and the prefixes themselves.
    fn segment() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "", ".", "..", "%2e", "%2E%2e", ".%2e", "%2e.", "api", "API", "admin", "public",
            "v1.0", "v1%2e0", "%61pi", "%61dmin", "a%2fb", "a%5Cb", "x", "%7e", "~", ";", "%20",
            "%25", "api;x", "%",
        ])
    }

    fn request_path() -> impl Strategy<Value = String> {
        prop::collection::vec(segment(), 0..8).prop_map(|segments| {
            let mut path = String::new();
            for s in segments {
                path.push('/');
                path.push_str(s);
            }
            if path.is_empty() {
                path.push('/');
            }
            path
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whatever path the gateway matched a route on is exactly the path the upstream
        /// receives (after `strip_prefix`), and that path is already normal: the upstream
        /// cannot read it as another one.
        #[test]
        fn the_path_that_routes_is_the_path_that_is_forwarded(
            path in request_path(),
            query in prop::option::of(prop::sample::select(vec!["a=1", "x=%2e%2e/..", ""])),
            strip in any::<[bool; 5]>(),
        ) {
            let table = route_table(strip);
            let target = match query {
                Some(q) => format!("{path}?{q}"),
                None => path.clone(),
            };
            let Ok(uri) = target.parse::<Uri>() else { return Ok(()) };
            let Ok(normalized) = path::normalize(uri.path()) else { return Ok(()) };
            // As the data plane does: routes see the path without segment parameters.
            let routing = path::without_params(&normalized);
            let route = table.find(None, &routing).expect("\"/\" matches every path");
            prop_assert!(prefix_matches(&route.prefix, &routing));
            // The longest matching prefix won.
            for other in ["/", "/api", "/api/admin", "/public", "/api/v1.0"] {
                if prefix_matches(other, &routing) {
                    prop_assert!(other.trim_end_matches('/').len() <= route.prefix.len());
                }
            }
            let sent = upstream_target(&uri, normalized.clone(), route).unwrap();
            let forwarded = sent.path();
            if route.strip_prefix {
                // What the upstream routes on is the matched path minus the prefix.
                let remainder = routing.strip_prefix(route.prefix.as_str()).unwrap();
                let expected = if remainder.is_empty() { "/" } else { remainder };
                prop_assert_eq!(
                    &*path::without_params(forwarded), expected,
                    "{} → {} on {}", normalized, forwarded, route.prefix
                );
            } else {
                prop_assert_eq!(forwarded, &*normalized);
            }
            // Already normal, so no reading of it climbs elsewhere: no dot segment, with or
            // without parameters, survives.
            let renormalized = path::normalize(forwarded).unwrap();
            prop_assert_eq!(&*renormalized, forwarded, "not normal");
            prop_assert_eq!(sent.query(), uri.query());
        }
    }
}
