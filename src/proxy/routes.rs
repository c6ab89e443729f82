//! The route table: longest path prefix wins, matched on segment boundaries of the
//! normalized path (`/api` matches `/api` and `/api/x`, never `/apix`); for the same prefix a
//! route for the request's host wins over one for any host.

use std::sync::Arc;
use std::time::Duration;

use super::path;
use super::upstream::Cluster;
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
}

impl Route {
    pub fn new(config: &RouteConfig, cluster: Arc<Cluster>, metrics: &Metrics) -> Route {
        Route {
            metrics: metrics.route(config.name.as_deref().unwrap_or(&config.upstream)),
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

#[cfg(test)]
mod tests {
    use super::*;

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
                    };
                    rc.name = host.map(str::to_owned);
                    Route::new(&rc, cluster.clone(), &metrics)
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
}
