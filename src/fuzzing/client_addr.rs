//! Targets `forwarded_for` (`server::client_addr`: the client behind trusted proxies, and the
//! `X-Forwarded-For` left for the upstream) and `proxy_header` (`server::proxy_protocol::parse`
//! on any bytes, read whole or in pieces).

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderValue};

use super::Input;
use crate::proxy::headers::X_FORWARDED_FOR;
use crate::server::client_addr::{Addressing, TrustedProxies, entry_address};
use crate::server::proxy_protocol::{Parsed, V1_MAX, V2_MAX_BLOCK, V2_SIGNATURE, parse};

/// The networks a trusted set is chosen from (bit `i` of the choice byte takes `NETWORKS[i]`).
const NETWORKS: [&str; 6] = [
    "10.0.0.0/8",
    "127.0.0.1/32",
    "2001:db8::/32",
    "192.0.2.0/24",
    "::ffff:0:0/96",
    "0.0.0.0/0",
];

/// Peers: trusted by some choices, by none, mapped IPv4.
const PEERS: [&str; 4] = [
    "10.1.2.3:1000",
    "127.0.0.1:1000",
    "[::ffff:10.9.9.9]:1000",
    "203.0.113.5:1000",
];

/// The reference walk over a flat list of entries: from the right, the first untrusted
/// address; all trusted: the left-most; a non-address stops at the hop to its right. The
/// index of the client's entry.
fn reference(entries: &[&[u8]], trusted: &TrustedProxies) -> Option<(usize, IpAddr)> {
    let mut last = None;
    for (index, entry) in entries.iter().enumerate().rev() {
        let Some(ip) = entry_address(entry) else {
            return last;
        };
        if !trusted.contains(ip) {
            return Some((index, ip));
        }
        last = Some((index, ip));
    }
    last
}

fn trimmed(entry: &[u8]) -> &[u8] {
    entry.trim_ascii()
}

/// Input: a byte choosing the trusted networks, a byte choosing the peer, then up to four
/// `X-Forwarded-For` lines as chunks (lines a header value cannot hold are skipped).
///
/// - The client is the peer when nothing is trusted, when the peer is not trusted, or when
///   the right-most entry is no address; then the header is untouched.
/// - Otherwise it is the reference walk's choice over the lines as one list (never a trusted
///   address unless every address right of it is trusted and nothing left of it is
///   an address the walk could reach), and the header left holds exactly the entries left of
///   the client's.
pub fn forwarded_for(data: &[u8]) {
    let mut input = Input::new(data);
    let choice = input.byte();
    let networks: Vec<ipnet::IpNet> = (0..NETWORKS.len())
        .filter(|i| choice & (1 << i) != 0)
        .map(|i| NETWORKS[i].parse().expect("constant network"))
        .collect();
    let peer: SocketAddr = PEERS[usize::from(input.byte()) % PEERS.len()]
        .parse()
        .expect("constant peer");
    let mut headers = HeaderMap::new();
    for _ in 0..4 {
        if let Ok(value) = HeaderValue::from_bytes(input.chunk()) {
            headers.append(&X_FORWARDED_FOR, value);
        }
    }
    let before = headers.clone();
    let addressing = Addressing {
        trusted: TrustedProxies::new(&networks),
        ..Addressing::default()
    };
    let client = addressing.client(peer, &mut headers);

    let lines: Vec<&[u8]> = before
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    let entries: Vec<&[u8]> = lines.iter().flat_map(|l| l.split(|&b| b == b',')).collect();
    let expected = match networks.is_empty() || !addressing.trusted.contains(peer.ip()) {
        true => None,
        false => reference(&entries, &addressing.trusted),
    };
    let Some((index, ip)) = expected else {
        assert_eq!(client, peer, "the peer is the client");
        assert_eq!(headers, before, "the header is untouched");
        return;
    };
    assert_eq!(client, SocketAddr::new(ip, 0), "the walk's client");
    assert!(
        !addressing.trusted.contains(ip)
            || entries[index + 1..]
                .iter()
                .all(|e| entry_address(e).is_some_and(|a| addressing.trusted.contains(a))),
        "a trusted client only when all right of it are trusted"
    );
    let left: Vec<&[u8]> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(trimmed)
        .filter(|e| !e.is_empty())
        .collect();
    let expected_left: Vec<&[u8]> = entries[..index]
        .iter()
        .copied()
        .map(trimmed)
        .filter(|e| !e.is_empty())
        .collect();
    assert_eq!(left, expected_left, "the entries left of the client stay");
    assert!(headers.get_all(&X_FORWARDED_FOR).iter().count() <= 1);
}

/// Input: a connection's first bytes.
///
/// - `parse` never panics; a header's length is within the bytes, within the format's bound,
///   and the header starts with a v1 prefix or the v2 signature (v1: ends at its first CRLF).
/// - Every shorter prefix of a header, or of bytes still partial, is partial; bytes beyond a
///   header do not change the answer; a refusal is final (longer input, same refusal).
pub fn proxy_header(data: &[u8]) {
    let data = &data[..data.len().min(V1_MAX + 16 + V2_MAX_BLOCK + 64)];
    let whole = parse(data);
    if let Ok(Parsed::Header { len, .. }) = whole {
        assert!(len <= data.len(), "within the bytes");
        match data[0] {
            b'P' => {
                assert!(len <= V1_MAX && data[..len].ends_with(b"\r\n"));
                let first = data.windows(2).position(|w| w == b"\r\n");
                assert_eq!(first, Some(len - 2), "v1 ends at its first CRLF");
            }
            _ => {
                assert!(data.starts_with(V2_SIGNATURE) && len <= 16 + V2_MAX_BLOCK);
            }
        }
        for n in len..=data.len() {
            assert_eq!(
                parse(&data[..n]),
                whole,
                "bytes past the header change nothing"
            );
        }
    }
    let mut settled = false;
    for n in 0..data.len() {
        let prefix = parse(&data[..n]);
        match prefix {
            Ok(Parsed::Partial) => assert!(!settled, "partial after an answer at {n}"),
            other => {
                settled = true;
                assert_eq!(other, whole, "answer at {n} differs from the whole's");
            }
        }
    }
}
