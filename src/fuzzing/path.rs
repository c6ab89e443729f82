//! Target `path_and_route`: `proxy::path::normalize`, then the route table and
//! `Route::upstream_path`, as the data plane chains them for every request.

use std::sync::{Arc, OnceLock};

use figment::Figment;
use figment::providers::{Format, Toml};

use super::Input;
use crate::config::{RouteConfig, load_from_figment};
use crate::proxy::path::{normalize, without_params};
use crate::proxy::routes::{Route, RouteTable};
use crate::proxy::upstream::Cluster;
use crate::telemetry::metrics::Metrics;

/// Prefixes and hosts routes are drawn from; the input may also bring its own.
const PREFIXES: &[&str] = &[
    "/", "/api", "/api/", "/api/v1", "/public", "/public/", "/users", "/admin", "/a/b", "/a.b",
    "/x-y", "/a;b",
];
const HOSTS: &[&str] = &[
    "api.example.com",
    "example.com",
    "[::1]",
    "xn--bcher-kva.example",
];

/// One upstream every route points at: building a cluster (and its HTTP client) per input
/// would dominate the run time, and routing never looks at it.
fn shared() -> &'static (Arc<Cluster>, Metrics) {
    static SHARED: OnceLock<(Arc<Cluster>, Metrics)> = OnceLock::new();
    SHARED.get_or_init(|| {
        let toml = "[[upstreams]]\nname = \"u\"\ninstances = [\"http://127.0.0.1:9\"]\n";
        let config = load_from_figment(&Figment::from(Toml::string(toml)))
            .expect("the fuzz upstream config is valid");
        let metrics = Metrics::new();
        let cluster = Cluster::new(&config.upstreams[0], &metrics).expect("the fuzz cluster");
        (Arc::new(cluster), metrics)
    })
}

/// A request path as `http::Uri::path` hands it over: visible ASCII without `?` and `#`.
/// Other bytes become `x`.
fn as_uri_path(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| match b {
            b'?' | b'#' => 'x',
            b'!'..=b'~' => b as char,
            _ => 'x',
        })
        .collect()
}

/// Does `prefix` (trailing slashes trimmed, as `Route::new` does) cover `path` on a segment
/// boundary? Written apart from `routes::prefix_matches`.
fn covers(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    path.len() >= prefix.len()
        && path.as_bytes()[..prefix.len()] == *prefix.as_bytes()
        && (path.len() == prefix.len() || path.as_bytes()[prefix.len()] == b'/')
}

/// Input: a byte with the route count, per route a byte of choices (and the input's own
/// prefix when chosen), a byte choosing the request host, then the request path.
pub fn path_and_route(data: &[u8]) {
    let mut input = Input::new(data);
    let route_count = usize::from(input.byte() % 6);
    let mut configs: Vec<RouteConfig> = Vec::new();
    for _ in 0..route_count {
        let choice = input.byte();
        let prefix = if choice & 0x80 != 0 {
            // Config only requires a leading '/'.
            format!("/{}", as_uri_path(input.chunk()))
        } else {
            PREFIXES[usize::from(choice) % PREFIXES.len()].to_owned()
        };
        let host = (choice & 0x40 != 0).then(|| HOSTS[usize::from(choice >> 4) % HOSTS.len()]);
        // Config refuses a prefix twice for the same host, and one not written plainly (no
        // empty or dot segment, no `;`, `%` or `\\`); so does this.
        let plain = prefix
            .trim_end_matches('/')
            .split('/')
            .skip(1)
            .all(|segment| {
                !matches!(segment, "" | "." | "..") && !segment.contains([';', '%', '\\'])
            });
        if !plain
            || configs
                .iter()
                .any(|c| c.prefix == prefix && c.host.as_deref() == host)
        {
            continue;
        }
        configs.push(RouteConfig {
            name: None,
            prefix,
            upstream: "u".to_owned(),
            public: choice & 0x20 != 0,
            host: host.map(str::to_owned),
            strip_prefix: choice & 0x10 != 0,
            max_body: None,
            timeout: None,
            upgrades: Vec::new(),
            allow_roles: None,
            methods: None,
            per_user_rate: None,
        });
    }
    let host_choice = input.byte();
    let request_host = match host_choice % 4 {
        0 => None,
        1 => Some(HOSTS[usize::from(host_choice >> 2) % HOSTS.len()].to_owned()),
        2 => Some(format!(
            "{}:8443",
            HOSTS[usize::from(host_choice >> 2) % HOSTS.len()].to_ascii_uppercase()
        )),
        _ => Some(as_uri_path(input.chunk())),
    };
    let raw = as_uri_path(input.rest());
    check_normalize(&raw);
    let Ok(path) = normalize(&raw) else { return };

    let (cluster, metrics) = shared();
    let routes: Vec<Route> = configs
        .iter()
        .map(|c| Route::new(c, cluster.clone(), None, metrics))
        .collect();
    // Routes are matched on the path without segment parameters, as the data plane does.
    let routing = without_params(&path);
    assert_normal(&routing);
    assert!(!routing.contains(';'), "{routing:?}");
    // The reference choice: among the routes covering the path for this host, the longest
    // prefix, then a host-bound route before an any-host one.
    let host_only = request_host
        .as_deref()
        .map(without_port)
        .map(|h| h.strip_suffix('.').unwrap_or(h));
    let best = routes
        .iter()
        .filter(|r| covers(&r.prefix, &routing))
        .filter(|r| match (&r.host, host_only) {
            (None, _) => true,
            (Some(want), Some(have)) => want.eq_ignore_ascii_case(have),
            (Some(_), None) => false,
        })
        .map(|r| (r.prefix.len(), r.host.is_some()))
        .max();
    let table = RouteTable::new(routes);
    let found = table.find(request_host.as_deref(), &routing);
    assert_eq!(
        found.map(|r| (r.prefix.len(), r.host.is_some())),
        best,
        "route for {routing:?} on {request_host:?}"
    );
    let Some(route) = found else { return };
    assert!(
        covers(&route.prefix, &routing),
        "{:?} does not cover {routing:?}",
        route.prefix
    );

    // What the upstream receives: the matched path (parameters included), minus the prefix's
    // segments when stripping; what it routes on is the matched path minus the prefix.
    let upstream = route.upstream_path(&path);
    if route.strip_prefix {
        let rest = &routing[route.prefix.len()..];
        let expected = if rest.is_empty() { "/" } else { rest };
        assert_eq!(
            &*without_params(upstream),
            expected,
            "prefix {:?} of {path:?}",
            route.prefix
        );
        assert!(
            upstream == "/" || path.ends_with(upstream),
            "{upstream:?} is not the end of {path:?}"
        );
    } else {
        assert_eq!(upstream, &*path);
    }
    assert!(upstream.starts_with('/'), "{upstream:?}");
    assert_normal(upstream);
}

/// `example.com:8080` → `example.com`; `[::1]:80` → `[::1]`; anything else as is.
fn without_port(host: &str) -> &str {
    if let Some(colon) = host.rfind(':') {
        let (name, port) = (&host[..colon], &host[colon + 1..]);
        let bracketed_or_plain =
            name.starts_with('[') && name.ends_with(']') || !name.contains(':');
        if !name.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && bracketed_or_plain {
            return name;
        }
    }
    host
}

fn check_normalize(raw: &str) {
    let Ok(once) = normalize(raw) else {
        // A refusal is for a reason present in the input.
        return;
    };
    assert_normal(&once);
    let twice = normalize(&once).expect("a normalized path normalizes");
    assert_eq!(twice, once, "normalize is not idempotent for {raw:?}");
    // Only escapes (kept upper-case) make a normal path take the slow way again.
    if !once.contains('%') {
        assert!(
            matches!(twice, std::borrow::Cow::Borrowed(_)),
            "a normalized path is not recognized as normal: {once:?}"
        );
    }
}

/// What every path an upstream or the route table sees looks like.
fn assert_normal(path: &str) {
    assert!(path.starts_with('/'), "{path:?}");
    assert!(!path.contains("//"), "{path:?}");
    assert!(!path.contains('\\'), "{path:?}");
    for segment in path.split('/') {
        // A dot segment, with or without parameters (`..;x`, which servlet containers read
        // as `..`).
        let name = segment.split(';').next().unwrap_or("");
        assert!(name != "." && name != "..", "dot segment in {path:?}");
    }
    let upper = path.to_ascii_uppercase();
    for bad in ["%2F", "%5C", "%00", "%2E"] {
        assert!(!upper.contains(bad), "{bad} in {path:?}");
    }
    // Escapes left are well formed, upper-case, and not of unreserved characters.
    let bytes = path.as_bytes();
    for (i, _) in path.match_indices('%') {
        let escape = bytes.get(i + 1..i + 3).expect("a complete escape");
        assert!(
            escape
                .iter()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b)),
            "escape {:?} in {path:?}",
            String::from_utf8_lossy(escape)
        );
        let value = u8::from_str_radix(std::str::from_utf8(escape).unwrap(), 16).unwrap();
        assert!(
            !(value.is_ascii_alphanumeric() || b"-._~".contains(&value)),
            "escaped unreserved {value:#x} in {path:?}"
        );
    }
}
