//! Who a request is from: the address the login and reset throttles count by, the audit trail
//! records, the access log prints and the upstream's `X-Forwarded-For` ends with.
//!
//! That is the connection's peer — or the source its PROXY protocol header names
//! ([`super::proxy_protocol`]) — unless the peer is one of `server.trusted_proxies`: then it
//! is the right-most address of `X-Forwarded-For` that is not itself trusted (nginx's
//! `real_ip_recursive on`, Envoy's trusted hops by address). A client can write anything into
//! the header, but only to the left of what its own (trusted) proxies appended, and the walk
//! stops at the first address no trusted proxy vouches for. From an untrusted peer the header
//! changes nothing.
//!
//! The client is resolved once per request at the server edge into the request's
//! `ConnectInfo<SocketAddr>` (port 0 when it came from the header), which every consumer reads.
//! With nothing trusted that costs one branch: no header is looked at.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use http::{HeaderMap, HeaderValue};
use ipnet::IpNet;

use super::proxy_protocol::Refusal;
use crate::proxy::headers::X_FORWARDED_FOR;
use crate::telemetry::metrics::ClientAddrMetrics;

/// `server.trusted_proxies`: the networks whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Arc<[IpNet]>);

impl TrustedProxies {
    pub fn new(networks: &[IpNet]) -> TrustedProxies {
        TrustedProxies(networks.into())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Is `ip` in one of the networks? An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, what a
    /// dual-stack listener reports for an IPv4 peer) is also taken as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let canonical = ip.to_canonical();
        self.0
            .iter()
            .any(|net| net.contains(&canonical) || net.contains(&ip))
    }
}

/// How a listener tells its clients apart (from `[server]`); the admin listener's is the
/// default: nothing trusted, no PROXY protocol.
#[derive(Debug, Clone, Default)]
pub struct Addressing {
    pub trusted: TrustedProxies,
    /// `server.proxy_protocol`.
    pub proxy_protocol: bool,
    /// `server.access_log`: refused connections are logged there too.
    pub access_log: bool,
    pub metrics: ClientAddrMetrics,
}

impl Addressing {
    /// The client of a request whose peer is `peer`. When it is read from `X-Forwarded-For`,
    /// the header is cut to the hops left of the client, so that the data plane's append (the
    /// client's address) leaves the upstream a list whose right-most entry is the client and
    /// whose trusted hops are gone.
    #[inline]
    pub fn client(&self, peer: SocketAddr, headers: &mut HeaderMap) -> SocketAddr {
        if self.trusted.is_empty() {
            return peer;
        }
        self.forwarded_client(peer, headers)
    }

    fn forwarded_client(&self, peer: SocketAddr, headers: &mut HeaderMap) -> SocketAddr {
        if !self.trusted.contains(peer.ip()) {
            return peer;
        }
        let lines = headers.get_all(&X_FORWARDED_FOR);
        let Some(hop) = walk(lines.iter().map(HeaderValue::as_bytes), &self.trusted) else {
            return peer;
        };
        let left = left_of(lines.iter().map(HeaderValue::as_bytes), hop);
        match HeaderValue::from_bytes(&left) {
            Ok(value) if !left.is_empty() => {
                headers.insert(&X_FORWARDED_FOR, value);
            }
            _ => {
                headers.remove(&X_FORWARDED_FOR);
            }
        }
        self.metrics.forwarded.inc();
        SocketAddr::new(hop.client, 0)
    }

    /// Counts and logs a connection closed for its PROXY header (never a byte of what it sent).
    pub fn refused(&self, peer: SocketAddr, refusal: Refusal) {
        self.metrics.refused(refusal.as_str()).inc();
        if self.access_log {
            tracing::info!(
                target: "meiro_gate::access",
                peer = %peer,
                refused = refusal.as_str(),
                "connection refused: PROXY protocol header"
            );
        }
    }
}

/// Where the walk found the client: its address, and where its entry starts (the header line,
/// counted from the last, and the byte offset in it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hop {
    pub client: IpAddr,
    line_from_end: usize,
    at: usize,
}

/// Walks `X-Forwarded-For` (its lines in order: one list) from the right: the first address
/// that is not trusted is the client; if every address is trusted, the left-most. An entry
/// that is not an address (`unknown`, garbage, an empty one) ends the walk at the hop to its
/// right: only a trusted proxy could have put it right of that hop, and what lies left of it
/// is not vouched for. `None`: the right-most entry is not an address (or there is no header),
/// so the client is the peer.
pub fn walk<'a, I>(lines: I, trusted: &TrustedProxies) -> Option<Hop>
where
    I: DoubleEndedIterator<Item = &'a [u8]>,
{
    let mut last: Option<Hop> = None;
    for (line_from_end, line) in lines.rev().enumerate() {
        let mut end = line.len();
        loop {
            let start = line[..end]
                .iter()
                .rposition(|&b| b == b',')
                .map_or(0, |comma| comma + 1);
            let Some(ip) = entry_address(&line[start..end]) else {
                return last;
            };
            let hop = Hop {
                client: ip,
                line_from_end,
                at: start,
            };
            if !trusted.contains(ip) {
                return Some(hop);
            }
            last = Some(hop);
            if start == 0 {
                break;
            }
            end = start - 1;
        }
    }
    last
}

/// The entries of `lines` left of `hop`, as one `, `-separated list (empty when none).
pub fn left_of<'a, I>(lines: I, hop: Hop) -> Vec<u8>
where
    I: DoubleEndedIterator<Item = &'a [u8]>,
{
    let mut lines: Vec<&[u8]> = lines.rev().skip(hop.line_from_end).collect();
    lines.reverse();
    let mut out = Vec::new();
    let Some((client_line, earlier)) = lines.split_last() else {
        return out;
    };
    let parts = earlier.iter().copied().chain([&client_line[..hop.at]]);
    for part in parts {
        let part = trim_list(part);
        if !part.is_empty() {
            if !out.is_empty() {
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(part);
        }
    }
    out
}

/// Without surrounding whitespace and trailing commas.
fn trim_list(part: &[u8]) -> &[u8] {
    let is_filler = |b: &u8| b.is_ascii_whitespace() || *b == b',';
    let end = part
        .iter()
        .rposition(|b| !is_filler(b))
        .map_or(0, |i| i + 1);
    let start = part[..end]
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(end);
    &part[start..end]
}

/// One `X-Forwarded-For` entry's address: `1.2.3.4`, `2001:db8::1`, and with a port as some
/// balancers write it (Azure's Application Gateway): `1.2.3.4:5678`, `[2001:db8::1]:443`, or
/// bracketed without one. Surrounding whitespace is allowed; anything else is not an address.
pub fn entry_address(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?.trim_matches([' ', '\t']);
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = text.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        let ip: Ipv6Addr = ip.parse().ok()?;
        return (after.is_empty() || after.strip_prefix(':').is_some_and(is_port))
            .then_some(IpAddr::V6(ip));
    }
    let (ip, port) = text.split_once(':')?;
    is_port(port).then_some(())?;
    ip.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// 1 to 5 decimal digits, at most 65535 (`u16::from_str` would also take a `+`).
pub(crate) fn is_port(text: &str) -> bool {
    (1..=5).contains(&text.len())
        && text.bytes().all(|b| b.is_ascii_digit())
        && text.parse::<u16>().is_ok()
}

#[cfg(test)]
mod tests;
