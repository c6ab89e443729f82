//! Rewriting a downstream request for its upstream and the response for the client: hop-by-hop
//! headers out (RFC 9110 §7.6.1), `X-Forwarded-*` in, identity headers set only by us.

use std::net::SocketAddr;

use axum::body::Body;
use http::header::{CONNECTION, HOST, HeaderName, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderValue, Request, Response, Uri};

use super::error::ProxyError;
use super::upstream::{Cluster, Instance};
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
    // Names listed in Connection are collected first: removing while iterating the map
    // would borrow it twice. Usually Connection is absent and this allocates nothing.
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

/// Rewrites the request in place for `instance`. `path_and_query` is the normalized target.
pub fn prepare_request(
    request: &mut Request<Body>,
    instance: &Instance,
    path_and_query: http::uri::PathAndQuery,
    client: SocketAddr,
    downstream_proto: &'static str,
    principal: Option<&Principal>,
) -> Result<(), ProxyError> {
    let original_host = request.headers().get(HOST).cloned().or_else(|| {
        request
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });

    *request.uri_mut() = Uri::builder()
        .scheme(instance.scheme.clone())
        .authority(instance.authority.clone())
        .path_and_query(path_and_query)
        .build()
        .map_err(|_| ProxyError::Internal)?;
    // The upstream always speaks the version its pool negotiates, not the client's.
    *request.version_mut() = http::Version::HTTP_11;

    let headers = request.headers_mut();
    strip_hop_by_hop(headers);

    // Identity comes only from the gateway: drop every client copy, on public routes too.
    headers.remove(&X_MEIRO_USER_ID);
    headers.remove(&X_MEIRO_USER_EMAIL);
    headers.remove(&X_MEIRO_USER_ROLE);
    if let Some(p) = principal {
        headers.insert(X_MEIRO_USER_ID.clone(), p.user_id_header.clone());
        if let Some(email) = &p.email_header {
            headers.insert(X_MEIRO_USER_EMAIL.clone(), email.clone());
        }
        headers.insert(X_MEIRO_USER_ROLE.clone(), p.role_header.clone());
    }

    append_forwarded_for(headers, client);
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(downstream_proto),
    );
    if let Some(host) = original_host {
        headers.insert(X_FORWARDED_HOST.clone(), host.clone());
        // HTTP/2 clients send :authority, not Host; the upstream sees the same host either way.
        headers.entry(HOST).or_insert(host);
    }
    Ok(())
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

/// Sends the request, bounded by the cluster's response-head timeout, and maps failures.
pub async fn send(
    cluster: &Cluster,
    request: Request<Body>,
) -> Result<Response<hyper::body::Incoming>, ProxyError> {
    match tokio::time::timeout(cluster.response_timeout, cluster.client.request(request)).await {
        Err(_) => Err(ProxyError::UpstreamTimeout),
        Ok(Ok(response)) => Ok(response),
        Ok(Err(e)) => {
            let timed_out = is_timeout(&e);
            tracing::warn!(upstream = %cluster.name, error = %e, connect = e.is_connect(), "upstream request failed");
            Err(if timed_out {
                ProxyError::UpstreamTimeout
            } else {
                ProxyError::UpstreamUnavailable
            })
        }
    }
}

/// A connect timeout surfaces as an error whose source chain holds `TimedOut`.
fn is_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(e) = source {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        source = e.source();
    }
    false
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
