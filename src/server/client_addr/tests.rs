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

#[test]
fn nothing_trusted_is_the_peer_and_leaves_the_header() {
    let (client, left) = resolve(&[], "10.0.0.1:5", &["1.1.1.1"]);
    assert_eq!(client, "10.0.0.1");
    assert_eq!(left.as_deref(), Some("1.1.1.1"));
}

#[test]
fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
    let (client, left) = resolve(&["10.0.0.0/8"], "192.0.2.9:5", &["10.0.0.1, 1.1.1.1"]);
    assert_eq!(client, "192.0.2.9");
    assert_eq!(left.as_deref(), Some("10.0.0.1, 1.1.1.1"));
}

#[test]
fn the_right_most_untrusted_hop_is_the_client_and_what_is_left_of_it_stays() {
    let (client, left) = resolve(
        &["10.0.0.0/8"],
        "10.0.0.1:5",
        &["6.6.6.6, 5.5.5.5", "10.2.2.2 , 203.0.113.7, 10.1.1.1"],
    );
    assert_eq!(client, "203.0.113.7");
    assert_eq!(left.as_deref(), Some("6.6.6.6, 5.5.5.5, 10.2.2.2"));
}

#[test]
fn a_client_alone_in_the_header_leaves_no_header() {
    let (client, left) = resolve(&["127.0.0.1/32"], "127.0.0.1:5", &["203.0.113.7"]);
    assert_eq!(client, "203.0.113.7");
    assert_eq!(left, None);
}

#[test]
fn all_trusted_is_the_left_most() {
    let (client, left) = resolve(&["10.0.0.0/8"], "10.0.0.1:5", &["10.9.9.9, 10.1.1.1"]);
    assert_eq!(client, "10.9.9.9");
    assert_eq!(left, None);
}

#[test]
fn a_garbage_entry_ends_the_walk_at_the_hop_right_of_it() {
    let (client, left) = resolve(&["10.0.0.0/8"], "10.0.0.1:5", &["1.1.1.1, junk, 10.1.1.1"]);
    assert_eq!(client, "10.1.1.1");
    assert_eq!(left.as_deref(), Some("1.1.1.1, junk"));
    // Right-most garbage, or no header: the peer, header untouched.
    let (client, left) = resolve(&["10.0.0.0/8"], "10.0.0.1:5", &["1.1.1.1, unknown"]);
    assert_eq!(
        (client.as_str(), left.as_deref()),
        ("10.0.0.1", Some("1.1.1.1, unknown"))
    );
    let (client, left) = resolve(&["10.0.0.0/8"], "10.0.0.1:5", &[]);
    assert_eq!((client.as_str(), left), ("10.0.0.1", None));
    let (client, _) = resolve(&["10.0.0.0/8"], "10.0.0.1:5", &["1.1.1.1,"]);
    assert_eq!(client, "10.0.0.1");
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
    let (client, _) = resolve(&["10.0.0.0/8"], "[::ffff:10.0.0.1]:5", &["203.0.113.7"]);
    assert_eq!(client, "203.0.113.7");
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
