use super::*;

fn trusted(nets: &[&str]) -> TrustedProxies {
    let nets: Vec<IpNet> = nets.iter().map(|n| n.parse().unwrap()).collect();
    TrustedProxies::new(&nets)
}

fn addressing(nets: &[&str]) -> Addressing {
    Addressing {
        trusted: trusted(nets),
        ..Addressing::default()
    }
}

fn headers(lines: &[&str]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for line in lines {
        h.append(&X_FORWARDED_FOR, HeaderValue::from_str(line).unwrap());
    }
    h
}

/// The client and the `X-Forwarded-For` left for the data plane to append to.
fn resolve(nets: &[&str], peer: &str, lines: &[&str]) -> (String, Option<String>) {
    let mut h = headers(lines);
    let client = addressing(nets).client(peer.parse().unwrap(), &mut h);
    let left = h
        .get(&X_FORWARDED_FOR)
        .map(|v| v.to_str().unwrap().to_owned());
    (client.ip().to_string(), left)
}

/// Each case: trusted networks, peer, `X-Forwarded-For` lines; then the client and the
/// header left for the data plane to append the client to.
#[test]
fn the_client_and_the_header_left() {
    let trusted = &["10.0.0.0/8"][..];
    for (nets, peer, lines, client, left) in [
        // Nothing trusted: the peer, header untouched.
        (
            &[][..],
            "10.0.0.1:5",
            &["1.1.1.1"][..],
            "10.0.0.1",
            Some("1.1.1.1"),
        ),
        // An untrusted peer, whatever it forwards.
        (
            trusted,
            "192.0.2.9:5",
            &["10.0.0.1, 1.1.1.1"],
            "192.0.2.9",
            Some("10.0.0.1, 1.1.1.1"),
        ),
        // The right-most untrusted hop; lines are one list; what is left of it stays.
        (
            trusted,
            "10.0.0.1:5",
            &["6.6.6.6, 5.5.5.5", "10.2.2.2 , 203.0.113.7, 10.1.1.1"],
            "203.0.113.7",
            Some("6.6.6.6, 5.5.5.5, 10.2.2.2"),
        ),
        // A client alone in the header leaves no header.
        (
            &["127.0.0.1/32"],
            "127.0.0.1:5",
            &["203.0.113.7"],
            "203.0.113.7",
            None,
        ),
        // All trusted: the left-most.
        (
            trusted,
            "10.0.0.1:5",
            &["10.9.9.9, 10.1.1.1"],
            "10.9.9.9",
            None,
        ),
        // A non-address ends the walk at the hop right of it.
        (
            trusted,
            "10.0.0.1:5",
            &["1.1.1.1, junk, 10.1.1.1"],
            "10.1.1.1",
            Some("1.1.1.1, junk"),
        ),
        // Right-most garbage, an empty entry, or no header: the peer, header untouched.
        (
            trusted,
            "10.0.0.1:5",
            &["1.1.1.1, unknown"],
            "10.0.0.1",
            Some("1.1.1.1, unknown"),
        ),
        (
            trusted,
            "10.0.0.1:5",
            &["1.1.1.1,"],
            "10.0.0.1",
            Some("1.1.1.1,"),
        ),
        (trusted, "10.0.0.1:5", &[], "10.0.0.1", None),
        // A mapped IPv4 peer is in an IPv4 network.
        (
            trusted,
            "[::ffff:10.0.0.1]:5",
            &["203.0.113.7"],
            "203.0.113.7",
            None,
        ),
    ] {
        let case = format!("{nets:?} {peer} {lines:?}");
        let (got, got_left) = resolve(nets, peer, lines);
        assert_eq!(
            (got.as_str(), got_left.as_deref()),
            (client, left),
            "{case}"
        );
    }
}

#[test]
fn entries_with_ports_and_brackets_are_addresses() {
    for (entry, ip) in [
        ("1.2.3.4", "1.2.3.4"),
        (" 1.2.3.4:5678 ", "1.2.3.4"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
    ] {
        assert_eq!(
            entry_address(entry.as_bytes()),
            Some(ip.parse().unwrap()),
            "{entry}"
        );
    }
    for entry in [
        "",
        "unknown",
        "1.2.3.4:",
        "1.2.3.4:+1",
        "1.2.3.4:65536",
        "[1.2.3.4]",
        "[::1]x",
        "[::1]:",
        "::1]:80",
        "1.2.3",
        "_hidden",
        "1.2.3.4 5.6.7.8",
    ] {
        assert_eq!(entry_address(entry.as_bytes()), None, "{entry:?}");
    }
}

#[test]
fn mapped_ipv4_peers_match_ipv4_networks() {
    let set = trusted(&["10.0.0.0/8", "2001:db8::/32"]);
    assert!(set.contains("::ffff:10.0.0.1".parse().unwrap()));
    assert!(set.contains("10.255.0.1".parse().unwrap()));
    assert!(set.contains("2001:db8::5".parse().unwrap()));
    assert!(!set.contains("11.0.0.1".parse().unwrap()));
    assert!(!set.contains("::ffff:11.0.0.1".parse().unwrap()));
}

#[test]
fn a_client_from_the_header_is_counted() {
    let a = addressing(&["127.0.0.1/32"]);
    let mut h = headers(&["203.0.113.7"]);
    a.client("127.0.0.1:1".parse().unwrap(), &mut h);
    let mut h = headers(&["junk"]);
    a.client("127.0.0.1:1".parse().unwrap(), &mut h);
    assert_eq!(a.metrics.forwarded.get(), 1);
}
