//! Target `host_authority`: the edge's one-host rule (`server::edge::check_authority`) on any
//! version, target and `Host` lines, and its host grammar (`is_valid_host`) against an
//! independent reference.

use http::header::HOST;
use http::{HeaderMap, HeaderValue, Uri, Version};

use super::Input;
use crate::server::edge::{Refusal, check_authority, is_valid_host};

/// `uri-host [":" port]` written plainly: a registered name of letters, digits and `-._~`, or
/// an IPv6 address in brackets; a port that fits in 16 bits.
fn reference_host(value: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(value) else {
        return false;
    };
    let (host, port) = if text.starts_with('[') {
        match text.find(']') {
            Some(end) => (&text[..=end], &text[end + 1..]),
            None => return false,
        }
    } else {
        match text.find(':') {
            Some(colon) => (&text[..colon], &text[colon..]),
            None => (text, ""),
        }
    };
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(literal) => literal.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c))
        }
    };
    let port_ok = port.is_empty()
        || port.strip_prefix(':').is_some_and(|digits| {
            !digits.is_empty()
                && digits.len() <= 5
                && digits.bytes().all(|b| b.is_ascii_digit())
                && digits.parse::<u16>().is_ok()
        });
    host_ok && port_ok
}

/// Input: a byte of choices (version, whether the target is absolute, how many `Host`
/// lines), the target's authority and each `Host` value as chunks, then bytes for the
/// grammar alone.
pub fn host_authority(data: &[u8]) {
    let mut input = Input::new(data);
    let choice = input.byte();
    let version = match choice % 3 {
        0 => Version::HTTP_10,
        1 => Version::HTTP_11,
        _ => Version::HTTP_2,
    };
    let authority = (choice & 0x04 != 0).then(|| input.chunk());
    let uri: Uri = authority
        .and_then(|a| std::str::from_utf8(a).ok())
        .and_then(|a| format!("http://{a}/x").parse().ok())
        .unwrap_or_else(|| Uri::from_static("/x"));
    let mut headers = HeaderMap::new();
    for _ in 0..(choice >> 3) % 4 {
        if let Ok(value) = HeaderValue::from_bytes(input.chunk()) {
            headers.append(HOST, value);
        }
    }
    let hosts: Vec<&[u8]> = headers.get_all(HOST).iter().map(|v| v.as_bytes()).collect();
    let target = uri.authority().map(|a| a.as_str().as_bytes());
    let routed = hosts.first().copied().or(target);
    match check_authority(version, &uri, &headers) {
        Ok(()) => {
            assert!(hosts.len() <= 1, "two Hosts passed");
            assert!(
                version != Version::HTTP_11 || hosts.len() == 1,
                "no Host passed"
            );
            if let (Some(host), Some(target)) = (hosts.first(), target) {
                assert!(host.eq_ignore_ascii_case(target), "disagreeing Host passed");
            }
            if let Some(routed) = routed {
                assert!(
                    reference_host(routed),
                    "{:?} passed",
                    String::from_utf8_lossy(routed)
                );
                // What passes is a plain authority for every other parser too.
                let parsed = http::uri::Authority::try_from(routed).expect("an authority");
                assert!(!parsed.as_str().contains('@'));
            }
        }
        Err(Refusal::DuplicateHost) => assert!(hosts.len() >= 2),
        Err(Refusal::MissingHost) => {
            assert!(hosts.is_empty() && version == Version::HTTP_11)
        }
        Err(Refusal::HostMismatch) => {
            let (host, target) = (hosts[0], target.expect("a target authority"));
            assert!(!host.eq_ignore_ascii_case(target));
        }
        Err(Refusal::InvalidHost) => assert!(!reference_host(routed.expect("a host"))),
        Err(other) => panic!("check_authority refused with {other:?}"),
    }
    let rest = input.rest();
    assert_eq!(
        is_valid_host(rest),
        reference_host(rest),
        "{:?}",
        String::from_utf8_lossy(rest)
    );
}
