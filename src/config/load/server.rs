//! `[server]` (with `[server.tls]`) and `[limits]`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use url::Url;

use super::convert::{
    byte_size, cidr_list, duration, flag, path, socket_addr, text, web_url, whole,
};
use super::reader::Section;
use super::{POSITIVE, secs};
use crate::config::{ByteSize, LimitsConfig, ServerConfig, TlsConfig};

pub(super) fn read_server(mut s: Section<'_>) -> ServerConfig {
    let listen = s.get(
        "listen",
        SocketAddr::from(([127, 0, 0, 1], 8080)),
        socket_addr,
    );
    let public_url = match s.opt("public_url", web_url) {
        Some(url) => url,
        None => default_public_url(listen).unwrap_or_else(|| {
            s.problem(
                "public_url",
                format!("cannot derive a default from server.listen {listen}; set it explicitly"),
            );
            fallback_url()
        }),
    };
    let frontend_url = s
        .opt("frontend_url", web_url)
        .unwrap_or_else(|| public_url.clone());
    let drain_timeout = s.get("drain_timeout", secs(30), duration);
    let access_log = s.get("access_log", true, flag);
    let config_watch_interval = s.get("config_watch_interval", secs(2), duration);
    let worker_threads = s.opt("worker_threads", whole::<usize>);
    let underscores_in_headers = s.get("underscores_in_headers", true, flag);
    let api_prefix = s.get("api_prefix", String::new(), text);
    let trusted_proxies = s.get("trusted_proxies", Vec::new(), cidr_list);
    let proxy_protocol = s.get("proxy_protocol", false, flag);
    s.check(
        "api_prefix",
        is_api_prefix(&api_prefix),
        "must be empty or a path such as \"/api\": '/'-led segments of letters, digits and '-_.~', no '.' or '..' segment, no trailing '/'",
    );
    if let Some(n) = worker_threads {
        s.check("worker_threads", n >= 1, "must be at least 1");
    }
    let tls = s.has("tls").then(|| {
        let mut t = s.section("tls");
        let cert = t.required("cert", path);
        let key = t.required("key", path);
        TlsConfig {
            cert: cert.unwrap_or_default(),
            key: key.unwrap_or_default(),
        }
    });
    ServerConfig {
        listen,
        public_url,
        frontend_url,
        drain_timeout,
        access_log,
        worker_threads,
        underscores_in_headers,
        api_prefix,
        tls,
        config_watch_interval,
        trusted_proxies,
        proxy_protocol,
    }
}

/// `http://<listen>`, with a wildcard address replaced by loopback so the URL is reachable.
fn default_public_url(listen: SocketAddr) -> Option<Url> {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    // `SocketAddr::new` drops any IPv6 zone id (URLs cannot express one), so this parses; it
    // stays fallible because `listen` is operator input and must never cause a panic.
    Url::parse(&format!("http://{}", SocketAddr::new(ip, listen.port()))).ok()
}

/// Placeholder where a URL is needed but the real one was invalid; the problem is reported, so
/// this never reaches a returned `Config`.
fn fallback_url() -> Url {
    Url::parse("http://127.0.0.1/").expect("constant URL is valid")
}

pub(super) fn read_limits(mut s: Section<'_>) -> LimitsConfig {
    let max_connections = s.get("max_connections", 10_000, whole::<usize>);
    let header_read_timeout = s.get("header_read_timeout", secs(10), duration);
    let max_header_bytes = s.get("max_header_bytes", 16_384, whole::<usize>);
    let api_max_body = s.get("api_max_body", ByteSize::new(64 * 1024), byte_size);
    let idle_timeout = s.get("idle_timeout", secs(60), duration);
    let body_read_timeout = s.get("body_read_timeout", secs(60), duration);
    let http2_keepalive_interval = s.get("http2_keepalive_interval", secs(30), duration);
    let http2_keepalive_timeout = s.get("http2_keepalive_timeout", secs(20), duration);
    let per_user_rate = s.get("per_user_rate", 0, whole::<u32>);
    let per_user_burst = s.get("per_user_burst", 0, whole::<u32>);
    s.check("max_connections", max_connections > 0, POSITIVE);
    s.check("idle_timeout", !idle_timeout.is_zero(), POSITIVE);
    s.check("body_read_timeout", !body_read_timeout.is_zero(), POSITIVE);
    s.check(
        "http2_keepalive_timeout",
        !http2_keepalive_timeout.is_zero(),
        POSITIVE,
    );
    s.check(
        "header_read_timeout",
        !header_read_timeout.is_zero(),
        POSITIVE,
    );
    s.check(
        "max_header_bytes",
        max_header_bytes >= 1024,
        "must be at least 1024",
    );
    s.check("api_max_body", api_max_body.as_u64() > 0, POSITIVE);
    LimitsConfig {
        max_connections,
        header_read_timeout,
        max_header_bytes,
        api_max_body,
        idle_timeout,
        body_read_timeout,
        http2_keepalive_interval,
        http2_keepalive_timeout,
        per_user_rate,
        per_user_burst,
    }
}

/// `""`, or `/seg(/seg)*` whose segments are unreserved characters (RFC 3986) and not dot
/// segments: a prefix the path normalizer leaves as it is, so it matches the normalized path.
pub(crate) fn is_api_prefix(prefix: &str) -> bool {
    prefix.is_empty()
        || prefix.strip_prefix('/').is_some_and(|rest| {
            rest.split('/').all(|segment| {
                !segment.is_empty()
                    && segment != "."
                    && segment != ".."
                    && segment
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b))
            })
        })
}
