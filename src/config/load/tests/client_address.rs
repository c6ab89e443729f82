//! `server.trusted_proxies` and `server.proxy_protocol`: networks, bare addresses, the
//! environment's list form, and every mistake named by its key.

use super::{assert_problems, env, ok};
use crate::config::load::load_from_figment;

#[test]
fn off_by_default() {
    let c = ok("");
    assert!(c.server.trusted_proxies.is_empty());
    assert!(!c.server.proxy_protocol);
}

#[test]
fn networks_and_bare_addresses() {
    let c = ok(r#"
        [server]
        trusted_proxies = ["10.0.0.0/8", "192.0.2.7", "fd00::/8", "2001:db8::1"]
        proxy_protocol = true
        "#);
    let nets: Vec<String> = c
        .server
        .trusted_proxies
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(
        nets,
        ["10.0.0.0/8", "192.0.2.7/32", "fd00::/8", "2001:db8::1/128"]
    );
    assert!(c.server.proxy_protocol);
    // check-config prints them as they are read back.
    let printed = toml::to_string(&c.server).unwrap();
    assert!(
        printed.contains(
            r#"trusted_proxies = ["10.0.0.0/8", "192.0.2.7/32", "fd00::/8", "2001:db8::1/128"]"#
        ),
        "{printed}"
    );
}

#[test]
fn the_environment_gives_a_list_as_one_string() {
    let figment = figment::Figment::new().merge(env(&[
        (
            "MEIRO_GATE_SERVER__TRUSTED_PROXIES",
            "10.0.0.0/8, 172.16.0.0/12 192.168.0.1",
        ),
        ("MEIRO_GATE_SERVER__PROXY_PROTOCOL", "true"),
    ]));
    let c = load_from_figment(&figment).unwrap();
    assert_eq!(c.server.trusted_proxies.len(), 3);
    assert_eq!(c.server.trusted_proxies[2].to_string(), "192.168.0.1/32");
    assert!(c.server.proxy_protocol);
}

#[test]
fn mistakes_are_named_by_their_key() {
    assert_problems(&[
        (
            r#"server.trusted_proxies = ["10.0.0.0/33"]"#,
            "server.trusted_proxies",
            r#"invalid network "10.0.0.0/33""#,
        ),
        (
            r#"server.trusted_proxies = ["ingress.local"]"#,
            "server.trusted_proxies",
            "expected a CIDR such as",
        ),
        (
            r#"server.trusted_proxies = ["10.1.2.3/8"]"#,
            "server.trusted_proxies",
            "the network is 10.0.0.0/8",
        ),
        (
            "server.trusted_proxies = [[1]]",
            "server.trusted_proxies",
            "expected a string",
        ),
        (
            r#"server.proxy_protocol = "v2""#,
            "server.proxy_protocol",
            "expected true or false",
        ),
    ]);
}
