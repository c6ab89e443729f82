//! The PROXY protocol (haproxy's `proxy-protocol.txt`, versions 1 and 2), which L4 balancers
//! such as AWS NLB send ahead of a connection's own bytes to say whose connection it is. With
//! `server.proxy_protocol` every connection to the main listener must start with one — before
//! TLS — or it is closed; its source address is then the connection's peer
//! ([`super::client_addr`]). A header is believed only from a peer in `server.trusted_proxies`
//! when that list is set (else from any peer: the listener must then be reachable only through
//! the balancer).
//!
//! Read under the connection's first-request deadline in the connection's own task, into a
//! buffer of bounded size; whatever the peer sent after the header is handed on in front of
//! the stream ([`Prefixed`]). LOCAL (v2: the balancer's health check) and UNKNOWN (v1) headers,
//! and v2 headers of non-IP families, name no client: the TCP peer is kept.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use super::client_addr::is_port;

/// The 12 bytes a v2 header starts with.
pub const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// What a v1 header starts with.
const V1_PREFIX: &[u8; 6] = b"PROXY ";
/// The longest v1 header, CRLF included (the specification's bound).
pub const V1_MAX: usize = 107;
/// The longest v2 address block (addresses and TLVs) taken. Balancers add TLVs (AWS its VPC
/// endpoint id, others TLS facts) far below this; the format allows 64 KiB, which a
/// connection should not make us buffer before it is known to be anyone.
pub const V2_MAX_BLOCK: usize = 1024;
/// The v2 fixed part: signature, version and command, family, length.
const V2_FIXED: usize = 16;

/// Why a connection's PROXY header was refused (the `reason` of
/// `meiro_gate_proxy_header_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The connection started with something else (or ended first).
    Missing,
    /// It started like a header, but not a valid one.
    Invalid,
    /// No complete header within the first-request deadline.
    Timeout,
    /// A header from a peer outside `server.trusted_proxies`.
    UntrustedPeer,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Invalid => "invalid",
            Refusal::Timeout => "timeout",
            Refusal::UntrustedPeer => "untrusted_peer",
        }
    }
}

/// What the bytes read so far hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// The start of a header: read more.
    Partial,
    /// A header of `len` bytes; its source address, if it names one.
    Header {
        len: usize,
        source: Option<SocketAddr>,
    },
}

/// Parses the start of a connection. Never reads past `buf`, never asks for more than
/// [`V1_MAX`] or [`V2_FIXED`] + [`V2_MAX_BLOCK`] bytes.
pub fn parse(buf: &[u8]) -> Result<Parsed, Refusal> {
    let starts_with = |prefix: &[u8]| {
        let n = buf.len().min(prefix.len());
        buf[..n] == prefix[..n]
    };
    match buf.first() {
        None => Ok(Parsed::Partial),
        Some(b'\r') if starts_with(V2_SIGNATURE) => parse_v2(buf),
        Some(b'P') if starts_with(V1_PREFIX) => parse_v1(buf),
        Some(_) => Err(Refusal::Missing),
    }
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, Refusal> {
    if buf.len() < V2_FIXED {
        return Ok(Parsed::Partial);
    }
    let (version, command, family) = (buf[12] >> 4, buf[12] & 0x0f, buf[13]);
    let block = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if version != 2 || command > 1 || block > V2_MAX_BLOCK {
        return Err(Refusal::Invalid);
    }
    let len = V2_FIXED + block;
    let Some(block) = buf.get(V2_FIXED..len) else {
        return Ok(Parsed::Partial);
    };
    let source = match (command, family) {
        // LOCAL: the balancer speaking for itself (health checks); the family is ignored.
        (0, _) => None,
        // TCP over IPv4: source, destination addresses, then ports.
        (_, 0x11) => {
            let a = block.get(..12).ok_or(Refusal::Invalid)?;
            let ip = Ipv4Addr::from([a[0], a[1], a[2], a[3]]);
            Some(SocketAddr::new(
                IpAddr::V4(ip),
                u16::from_be_bytes([a[8], a[9]]),
            ))
        }
        (_, 0x21) => {
            let a = block.get(..36).ok_or(Refusal::Invalid)?;
            let mut octets = [0; 16];
            octets.copy_from_slice(&a[..16]);
            let ip = Ipv6Addr::from(octets);
            Some(SocketAddr::new(
                IpAddr::V6(ip),
                u16::from_be_bytes([a[32], a[33]]),
            ))
        }
        // UNSPEC and UNIX sockets name no IP client.
        (_, 0x00 | 0x31 | 0x32) => None,
        // UDP, or families the specification does not define: not a connection we serve.
        _ => return Err(Refusal::Invalid),
    };
    Ok(Parsed::Header { len, source })
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, Refusal> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return match window.len() < V1_MAX {
            true => Ok(Parsed::Partial),
            false => Err(Refusal::Invalid),
        };
    };
    let line = std::str::from_utf8(&buf[V1_PREFIX.len()..end]).map_err(|_| Refusal::Invalid)?;
    let len = end + 2;
    let fields: Vec<&str> = line.split(' ').collect();
    let source = match fields.as_slice() {
        // The balancer could not tell (or speaks for itself): the rest is to be ignored.
        ["UNKNOWN", ..] => None,
        ["TCP4", source, destination, port, dport] if is_port(dport) => {
            Some(v1_source::<Ipv4Addr>(source, destination, port)?)
        }
        ["TCP6", source, destination, port, dport] if is_port(dport) => {
            Some(v1_source::<Ipv6Addr>(source, destination, port)?)
        }
        _ => return Err(Refusal::Invalid),
    };
    Ok(Parsed::Header { len, source })
}

/// A v1 source of the family `A`, whose destination must be of that family too.
fn v1_source<A>(source: &str, destination: &str, port: &str) -> Result<SocketAddr, Refusal>
where
    A: std::str::FromStr + Into<IpAddr>,
{
    match (source.parse::<A>(), destination.parse::<A>(), is_port(port)) {
        (Ok(ip), Ok(_), true) => Ok(SocketAddr::new(ip.into(), port.parse().unwrap_or(0))),
        _ => Err(Refusal::Invalid),
    }
}

/// Reads the header a connection starts with: its source address (if it names one) and the
/// bytes read past it. The caller bounds the time it may take.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(Option<SocketAddr>, Bytes), Refusal> {
    let mut buf = BytesMut::with_capacity(256);
    loop {
        match parse(&buf)? {
            Parsed::Header { len, source } => {
                buf.advance(len);
                return Ok((source, buf.freeze()));
            }
            Parsed::Partial => {}
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) if buf.is_empty() => return Err(Refusal::Missing),
            Ok(0) | Err(_) => return Err(Refusal::Invalid),
            Ok(_) => {}
        }
    }
}

/// A stream with bytes already read from it put back in front.
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Bytes, inner: S) -> Prefixed<S> {
        Prefixed { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
