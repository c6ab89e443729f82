//! Protocol switches (HTTP/1.1 `Upgrade`, RFC 9110 §7.8): which ones a route tunnels, and the
//! tunnel an allowed one becomes once its upstream answers `101`.
//!
//! Only a route's `upgrades` (default `websocket`) are tunnelled. `h2c` above all must not be
//! ("h2c smuggling"): past the `101` the client would speak HTTP/2 straight to the upstream,
//! every request on it unchecked, with any identity header it likes, for as long as the
//! tunnel lives. A request for a protocol the route does not allow goes on as a plain request
//! without its `Upgrade` (as a server that ignores the header would answer it), and an
//! upstream that switches to a protocol it was not offered gets `502` instead of a tunnel.
//!
//! A tunnel lives no longer than the session that opened it ([`relay`]).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::header::{CONNECTION, UPGRADE};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version};

use super::ConnectionSlot;
use super::error::ProxyError;
use super::headers;
use super::relay::{Tunnelled, relay};
use super::upstream::Cluster;
use crate::auth::cache::CachedSession;
use crate::config::UpstreamProtocol;
use crate::request_id::{self, RequestId};
use crate::telemetry::metrics::SessionClosures;

/// The protocols the client asks to switch to (`Connection: upgrade` with `Upgrade`).
pub fn requested(headers: &HeaderMap) -> Option<&HeaderValue> {
    let connection_upgrade = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    if connection_upgrade {
        headers.get(UPGRADE)
    } else {
        None
    }
}

/// Does `allowed` (a route's `upgrades` entry: a name, or a name with a version) admit the
/// `protocol` token (`name` or `name/version`)? A bare name admits every version.
fn admits(allowed: &str, protocol: &str) -> bool {
    allowed.eq_ignore_ascii_case(protocol)
        || protocol
            .split_once('/')
            .is_some_and(|(name, _)| allowed.eq_ignore_ascii_case(name))
}

fn tokens(value: &HeaderValue) -> impl Iterator<Item = &str> {
    value
        .to_str()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The part of a requested `Upgrade` the route allows, in the client's order; `None` when
/// nothing is left (the request then goes on without an upgrade). A value that is not
/// visible ASCII allows nothing.
pub fn permitted(requested: &HeaderValue, allowed: &[String]) -> Option<HeaderValue> {
    let allowed_token = |t: &&str| allowed.iter().any(|a| admits(a, t));
    let total = tokens(requested).count();
    let kept: Vec<&str> = tokens(requested).filter(allowed_token).collect();
    match kept.len() {
        0 => None,
        n if n == total => Some(requested.clone()),
        _ => HeaderValue::from_str(&kept.join(", ")).ok(),
    }
}

/// Does a `101`'s `Upgrade` name only protocols that were offered? (RFC 9110 §15.2.2: the
/// server says which protocol it switched to; anything else is not the tunnel we allowed.)
pub fn switched_as_offered(response: &HeaderMap, offered: &HeaderValue) -> bool {
    let Some(switched) = response.get(UPGRADE) else {
        return false;
    };
    let mut named = tokens(switched).peekable();
    named.peek().is_some() && named.all(|p| tokens(offered).any(|o| o.eq_ignore_ascii_case(p)))
}

/// The switch a request asks for, if its route allows it: only a protocol the route allows
/// is asked of the upstream; anything else goes on as a plain request, its `Upgrade` dropped
/// with the other hop-by-hop headers. Takes the connection's upgrade handle, which hyper
/// leaves in the extensions of HTTP/1.1 requests.
pub(super) fn take_switch(parts: &mut http::request::Parts, allowed: &[String]) -> Option<Switch> {
    if parts.version != Version::HTTP_11 {
        return None;
    }
    let offered = permitted(requested(&parts.headers)?, allowed)?;
    let downstream = parts.extensions.remove::<hyper::upgrade::OnUpgrade>()?;
    Some(Switch {
        offered,
        downstream,
        slot: parts.extensions.remove::<ConnectionSlot>(),
    })
}

/// What a tunnel needs of the request that opens it.
pub(super) struct Switch {
    pub offered: HeaderValue,
    pub downstream: hyper::upgrade::OnUpgrade,
    pub slot: Option<ConnectionSlot>,
}

/// Whose tunnel it is: it is closed when `session` ends (`None`: a public route's, which no
/// session holds open).
pub(super) struct Holder {
    pub session: Option<Arc<CachedSession>>,
    pub closures: SessionClosures,
}

/// Sends the upgrade request to an instance; on a `101` for an offered protocol, relays it
/// and copies bytes both ways until either side closes.
pub(super) async fn tunnel(
    cluster: Arc<Cluster>,
    parts: http::request::Parts,
    target: PathAndQuery,
    deadline: Duration,
    switch: Switch,
    holder: Holder,
    instance_tried: &mut Option<(Arc<Cluster>, usize)>,
) -> Result<Response<Body>, ProxyError> {
    if cluster.protocol == UpstreamProtocol::Http2 {
        return Err(ProxyError::UpstreamUnavailable);
    }
    let index = cluster.pick(None).ok_or(ProxyError::NoInstance)?;
    *instance_tried = Some((cluster.clone(), index));
    let instance = &cluster.instances[index];
    let id = request_id::of(&parts.headers);
    let mut request = Request::new(Body::empty());
    *request.method_mut() = parts.method;
    *request.uri_mut() = instance
        .absolute_uri(target)
        .map_err(|_| ProxyError::Internal)?;
    *request.headers_mut() = parts.headers;
    let response = match tokio::time::timeout(deadline, cluster.client.request(request)).await {
        Err(_) => return Err(ProxyError::UpstreamTimeout),
        Ok(Err(e)) => {
            tracing::warn!(upstream = %cluster.name, error = %e, request_id = id.as_ref().map(RequestId::as_str), "upgrade request failed");
            if e.is_connect() {
                cluster.eject(index);
            }
            return Err(ProxyError::UpstreamUnavailable);
        }
        Ok(Ok(response)) => response,
    };
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (mut head, incoming) = response.into_parts();
        headers::strip_hop_by_hop(&mut head.headers);
        head.version = Version::HTTP_11;
        return Ok(Response::from_parts(head, Body::new(incoming)));
    }
    if !switched_as_offered(response.headers(), &switch.offered) {
        tracing::warn!(upstream = %cluster.name, request_id = id.as_ref().map(RequestId::as_str), "upstream switched to a protocol it was not offered; refused");
        return Err(ProxyError::UpstreamUnavailable);
    }
    let websocket = response
        .headers()
        .get(UPGRADE)
        .is_some_and(|switched| tokens(switched).all(|p| admits("websocket", p)));
    let tunnelled = match websocket {
        true => Tunnelled::WebSocket,
        false => Tunnelled::Opaque,
    };
    let (head, incoming) = response.into_parts();
    let upstream = hyper::upgrade::on(Response::from_parts(head.clone(), incoming));
    let Switch {
        downstream, slot, ..
    } = switch;
    let Holder { session, closures } = holder;
    tokio::spawn(async move {
        // Held for the tunnel's life: it still occupies its connection's place.
        let _slot = slot;
        let (down, up) = match tokio::try_join!(downstream, upstream) {
            Ok(both) => both,
            Err(e) => return tracing::debug!(error = %e, "upgrade did not complete"),
        };
        let ending = async move {
            match session {
                Some(session) => session.ended().await,
                None => std::future::pending().await,
            }
        };
        let down = hyper_util::rt::TokioIo::new(down);
        let up = hyper_util::rt::TokioIo::new(up);
        if let Some(why) = relay(down, up, tunnelled, ending).await {
            closures.closed("websocket", why.as_str());
            tracing::info!(
                reason = why.as_str(),
                request_id = id.as_ref().map(RequestId::as_str),
                "tunnel closed: the session that opened it ended"
            );
        }
    });
    // The 101 keeps its Connection/Upgrade headers: they are the switch itself.
    Ok(Response::from_parts(head, Body::empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn only_allowed_protocols_are_passed_on() {
        let ws = allowed(&["websocket"]);
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(permitted(&v("websocket"), &ws), Some(v("websocket")));
        assert_eq!(permitted(&v("WebSocket"), &ws), Some(v("WebSocket")));
        assert_eq!(permitted(&v("websocket/13"), &ws), Some(v("websocket/13")));
        assert_eq!(permitted(&v("h2c"), &ws), None);
        assert_eq!(permitted(&v("h2c, websocket"), &ws), Some(v("websocket")));
        assert_eq!(permitted(&v("websocketx"), &ws), None);
        assert_eq!(permitted(&v("websocket"), &[]), None);
        assert_eq!(permitted(&v(", ,"), &ws), None);
        let versioned = allowed(&["foo/2"]);
        assert_eq!(permitted(&v("foo/2"), &versioned), Some(v("foo/2")));
        assert_eq!(permitted(&v("foo/3"), &versioned), None);
        assert_eq!(permitted(&v("foo"), &versioned), None);
    }

    #[test]
    fn a_switch_must_be_to_an_offered_protocol() {
        let offered = HeaderValue::from_static("websocket");
        let with = |upgrade: Option<&'static str>| {
            let mut h = HeaderMap::new();
            if let Some(u) = upgrade {
                h.insert(UPGRADE, HeaderValue::from_static(u));
            }
            switched_as_offered(&h, &offered)
        };
        assert!(with(Some("websocket")));
        assert!(with(Some("WebSocket")));
        assert!(!with(Some("h2c")));
        assert!(!with(Some("websocket, h2c")));
        assert!(!with(Some("")));
        assert!(!with(None));
    }

    #[test]
    fn an_upgrade_needs_connection_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert!(requested(&h).is_none());
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        assert_eq!(requested(&h).unwrap(), "websocket");
    }
}
