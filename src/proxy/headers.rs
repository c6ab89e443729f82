//! Rewriting a downstream request for its upstream and the response for the client: hop-by-hop
//! headers out (RFC 9110 §7.6.1), `X-Forwarded-*` in, identity headers set only by us; and
//! the response body wrapper that keeps an instance's in-flight count until the body ends.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONNECTION, EXPECT, HOST, HeaderName, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderValue};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;

use super::pool::Checkout;
use super::upstream::InFlight;
use crate::auth::Principal;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_MEIRO_USER_ID: HeaderName = HeaderName::from_static("x-meiro-user-id");
pub static X_MEIRO_USER_EMAIL: HeaderName = HeaderName::from_static("x-meiro-user-email");
pub static X_MEIRO_USER_ROLE: HeaderName = HeaderName::from_static("x-meiro-user-role");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static PROXY_AUTHENTICATE: HeaderName = HeaderName::from_static("proxy-authenticate");
static PROXY_AUTHORIZATION: HeaderName = HeaderName::from_static("proxy-authorization");

/// Removes the hop-by-hop headers, including every header the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(CONNECTION) {
        // Collected first: removing while iterating would borrow the map twice.
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in [
        &CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &TE,
        &TRAILER,
        &TRANSFER_ENCODING,
        &UPGRADE,
        &PROXY_AUTHENTICATE,
        &PROXY_AUTHORIZATION,
    ] {
        headers.remove(name);
    }
}

/// Does the client ask for an HTTP/1.1 protocol switch (`Connection: upgrade` + `Upgrade`)?
/// Returns the requested protocol.
pub fn requested_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let connection_upgrade = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    connection_upgrade
        .then(|| headers.get(UPGRADE).cloned())
        .flatten()
}

/// Everything about the client the upstream is told.
pub struct Downstream<'a> {
    pub client: SocketAddr,
    pub proto: &'static str,
    /// `Host`, or the HTTP/2 `:authority`.
    pub host: Option<HeaderValue>,
    pub principal: Option<&'a Principal>,
    /// The protocol of an upgrade being proxied (then `Connection`/`Upgrade` are kept).
    pub upgrade: Option<HeaderValue>,
}

/// Rewrites request headers in place for the upstream.
pub fn prepare_headers(headers: &mut HeaderMap, downstream: Downstream<'_>) {
    // gRPC and other trailer users over HTTP/2 need `te: trailers` end to end.
    let wants_trailers = headers
        .get(TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    strip_hop_by_hop(headers);
    // The gateway answers `Expect: 100-continue` itself (hyper sends the 100 once the body is
    // read); passing it on would make the upstream wait for a continue nobody sends.
    headers.remove(EXPECT);
    if wants_trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
    if let Some(protocol) = downstream.upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, protocol);
    }

    // Identity comes only from the gateway: drop every client copy, on public routes too.
    headers.remove(&X_MEIRO_USER_ID);
    headers.remove(&X_MEIRO_USER_EMAIL);
    headers.remove(&X_MEIRO_USER_ROLE);
    if let Some(p) = downstream.principal {
        for (name, value) in [
            (&X_MEIRO_USER_ID, &p.user_id_header),
            (&X_MEIRO_USER_EMAIL, &p.email_header),
            (&X_MEIRO_USER_ROLE, &p.role_header),
        ] {
            if let Some(value) = value {
                headers.insert(name.clone(), value.clone());
            }
        }
    }

    append_forwarded_for(headers, downstream.client);
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(downstream.proto),
    );
    if let Some(host) = downstream.host {
        headers.insert(X_FORWARDED_HOST.clone(), host.clone());
        // HTTP/2 clients send :authority, not Host; the upstream sees the same host either way.
        headers.entry(HOST).or_insert(host);
    }
}

fn append_forwarded_for(headers: &mut HeaderMap, client: SocketAddr) {
    let ip = client.ip().to_string();
    let value = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) if !prior.trim().is_empty() => format!("{prior}, {ip}"),
        _ => ip,
    };
    if let Ok(v) = HeaderValue::try_from(value) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
}

/// The upstream's response body, streamed as is, holding the instance's in-flight count
/// until it ends or is dropped, and handing its pooled connection back once it has ended.
pub struct TrackedBody {
    inner: Incoming,
    _in_flight: InFlight,
    checkout: Option<Checkout>,
}

impl TrackedBody {
    pub fn new(inner: Incoming, in_flight: InFlight, checkout: Option<Checkout>) -> TrackedBody {
        let mut body = TrackedBody {
            inner,
            _in_flight: in_flight,
            checkout,
        };
        // A bodiless response may never be polled: its connection is free already.
        body.release_if_ended();
        body
    }

    fn release_if_ended(&mut self) {
        if self.inner.is_end_stream()
            && let Some(checkout) = self.checkout.take()
        {
            checkout.release();
        }
    }
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                if let Some(checkout) = self.checkout.take() {
                    checkout.release();
                }
            }
            // A failed body leaves the connection in an unknown state: it is dropped.
            Poll::Ready(Some(Err(_))) => self.checkout = None,
            Poll::Ready(Some(Ok(_))) => self.release_if_ended(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("close, x-secret-hop"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(TE, HeaderValue::from_static("trailers"));
        h.insert("x-end-to-end", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-end-to-end"], "kept");
    }

    fn downstream(upgrade: Option<&'static str>) -> Downstream<'static> {
        Downstream {
            client: "10.1.2.3:5555".parse().unwrap(),
            proto: "https",
            host: Some(HeaderValue::from_static("app.example.com")),
            principal: None,
            upgrade: upgrade.map(HeaderValue::from_static),
        }
    }

    #[test]
    fn prepared_headers_keep_trailers_drop_expect_and_spoofed_identity() {
        let mut h = HeaderMap::new();
        h.insert(TE, HeaderValue::from_static("trailers, deflate"));
        h.insert(EXPECT, HeaderValue::from_static("100-continue"));
        h.append(&X_MEIRO_USER_ID, HeaderValue::from_static("attacker"));
        h.append(&X_MEIRO_USER_ID, HeaderValue::from_static("attacker2"));
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("spoofed"));
        prepare_headers(&mut h, downstream(None));
        assert_eq!(h[TE], "trailers");
        assert!(!h.contains_key(EXPECT));
        assert!(!h.contains_key(&X_MEIRO_USER_ID));
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
        assert_eq!(h[&X_FORWARDED_FOR], "10.1.2.3");
        assert_eq!(h[&X_FORWARDED_HOST], "app.example.com");
        assert_eq!(h[HOST], "app.example.com");
    }

    #[test]
    fn upgrades_are_detected_and_kept() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        let protocol = requested_upgrade(&h).unwrap();
        assert_eq!(protocol, "websocket");
        prepare_headers(&mut h, downstream(Some("websocket")));
        assert_eq!(h[CONNECTION], "upgrade");
        assert_eq!(h[UPGRADE], "websocket");
        let mut no_connection = HeaderMap::new();
        no_connection.insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert!(requested_upgrade(&no_connection).is_none());
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        let addr: SocketAddr = "10.1.2.3:5555".parse().unwrap();
        append_forwarded_for(&mut h, addr);
        assert_eq!(h[&X_FORWARDED_FOR], "10.1.2.3");
        append_forwarded_for(&mut h, "10.9.9.9:1".parse().unwrap());
        assert_eq!(h[&X_FORWARDED_FOR], "10.1.2.3, 10.9.9.9");
    }
}
