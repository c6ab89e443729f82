//! `[[upstreams]]` with their `[upstreams.health]`.

use figment::value::Value;
use url::Url;

use super::convert::{choice, duration, fraction, non_empty_text, path, route_prefix, url, whole};
use super::reader::Section;
use super::{POSITIVE, secs};
use crate::config::{Balance, HealthCheckConfig, UpstreamConfig, UpstreamProtocol};

/// An upstream base URL: the proxy appends the request path, so it must be bare.
fn upstream_url(value: &Value) -> Result<Url, String> {
    let url = url(value)?;
    match url.scheme() {
        "http" => {}
        "https" => {}
        _ => return Err("must be an http:// or https:// URL".to_owned()),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain credentials".to_owned());
    }
    if url.path() != "/" {
        return Err(format!("must not have a path (found {:?})", url.path()));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment".to_owned());
    }
    Ok(url)
}

fn balance(value: &Value) -> Result<Balance, String> {
    choice(value, "balance")
}

pub(super) fn read_upstream(mut s: Section<'_>) -> UpstreamConfig {
    let name = s.required("name", non_empty_text).unwrap_or_default();
    let instances = s.required_list("instances", upstream_url);
    let balance = s.get("balance", Balance::RoundRobin, balance);
    let connect_timeout = s.get("connect_timeout", secs(2), duration);
    let response_timeout = s.get("response_timeout", secs(30), duration);
    let idle_timeout = s.get("idle_timeout", secs(90), duration);
    let retries = s.get("retries", 2, whole::<u32>);
    let retry_budget = s.get("retry_budget", 0.2, fraction);
    let protocol = s.get("protocol", UpstreamProtocol::Http1, upstream_protocol);
    let ca_file = s.opt("ca_file", path);
    let eject_base = s.get("eject_base", secs(5), duration);
    let eject_max = s.get("eject_max", secs(60), duration);
    let health = s.has("health").then(|| read_health(s.section("health")));
    for (key, value) in [
        ("connect_timeout", connect_timeout),
        ("response_timeout", response_timeout),
        ("idle_timeout", idle_timeout),
        ("eject_base", eject_base),
    ] {
        s.check(key, !value.is_zero(), POSITIVE);
    }
    if eject_max < eject_base {
        s.problem("eject_max", "must be at least eject_base");
    }
    s.check("retries", retries <= 10, "at most 10");
    if ca_file.is_some() && !instances.iter().any(|u| u.scheme() == "https") {
        s.problem("ca_file", "only used with https:// instances");
    }
    UpstreamConfig {
        name,
        instances,
        balance,
        connect_timeout,
        response_timeout,
        idle_timeout,
        retries,
        retry_budget,
        protocol,
        ca_file,
        eject_base,
        eject_max,
        health,
    }
}

fn read_health(mut s: Section<'_>) -> HealthCheckConfig {
    let path = s.get("path", "/healthz".to_owned(), route_prefix);
    let interval = s.get("interval", secs(5), duration);
    let timeout = s.get("timeout", secs(1), duration);
    let healthy_threshold = s.get("healthy_threshold", 2, whole::<u32>);
    let unhealthy_threshold = s.get("unhealthy_threshold", 3, whole::<u32>);
    s.check("interval", !interval.is_zero(), POSITIVE);
    s.check("timeout", !timeout.is_zero(), POSITIVE);
    s.check("healthy_threshold", healthy_threshold > 0, POSITIVE);
    s.check("unhealthy_threshold", unhealthy_threshold > 0, POSITIVE);
    HealthCheckConfig {
        path,
        interval,
        timeout,
        healthy_threshold,
        unhealthy_threshold,
    }
}

fn upstream_protocol(value: &Value) -> Result<UpstreamProtocol, String> {
    choice(value, "protocol")
}
