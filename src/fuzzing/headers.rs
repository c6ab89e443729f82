//! Target `header_rewrite`: `proxy::headers::prepare_headers` on any header list, as the data
//! plane runs it on every request. The invariants are the ones the property test
//! `nothing_gateway_owned_survives_from_the_client` checks too ([`rewrite_and_check`]).

use http::{HeaderMap, HeaderName, HeaderValue};

use super::Input;
use crate::auth::Principal;
use crate::proxy::headers::{
    Downstream, GATEWAY_OWNED, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO,
    X_MEIRO_USER_EMAIL, X_MEIRO_USER_ID, X_MEIRO_USER_ROLE, prepare_headers,
};
use crate::store::{Role, UserId};

/// A header name as a CGI/WSGI-style backend reads it: lower case, any separator a `-`.
fn as_backend_reads(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                b.to_ascii_lowercase() as char
            } else {
                '-'
            }
        })
        .collect()
}

/// Rewrites `headers` as the server edge and the data plane do (request id, then
/// `prepare_headers`) and panics unless nothing the gateway owns survives from the client:
/// identity and forwarding headers carry the gateway's values only, no disguised copy of an
/// owned header and no hop-by-hop header passes, the checked (first) token and the assigned id
/// pass once.
pub(crate) fn rewrite_and_check(mut headers: HeaderMap, authenticated: bool, underscores: bool) {
    let client_token = headers.get(&crate::auth::check::X_ACCESS_TOKEN).cloned();
    let id = crate::request_id::assign(&mut headers).into_header_value();
    let principal = Principal::new(UserId::new_random(), "u@example.com", Role::User);
    prepare_headers(
        &mut headers,
        Downstream {
            client: "192.0.2.7:1234".parse().unwrap(),
            proto: "https",
            host: Some(HeaderValue::from_static("gateway.example")),
            principal: authenticated.then_some(&principal),
            upgrade: None,
            underscores_allowed: underscores,
        },
    );
    for name in headers.keys() {
        let name = name.as_str();
        let read_as = as_backend_reads(name);
        if GATEWAY_OWNED.iter().any(|o| o.as_str() == read_as) {
            assert_eq!(name, read_as, "a disguised copy survived");
        }
        assert!(underscores || !name.contains('_'), "{name} kept");
        for hop in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "upgrade",
            "http2-settings",
            "proxy-authorization",
            "proxy-authenticate",
            "transfer-encoding",
            "trailer",
        ] {
            assert_ne!(name, hop, "hop-by-hop header kept");
        }
    }
    for owned in GATEWAY_OWNED {
        assert!(headers.get_all(owned).iter().count() <= 1, "{owned} twice");
    }
    for (name, value) in [
        (&X_MEIRO_USER_ID, &principal.user_id_header),
        (&X_MEIRO_USER_EMAIL, &principal.email_header),
        (&X_MEIRO_USER_ROLE, &principal.role_header),
    ] {
        let expected = if authenticated { value.as_ref() } else { None };
        assert_eq!(headers.get(name), expected, "{name}");
    }
    assert_eq!(headers[&X_FORWARDED_PROTO], "https");
    assert_eq!(headers[&X_FORWARDED_HOST], "gateway.example");
    let forwarded_for = headers[&X_FORWARDED_FOR].to_str().unwrap_or("");
    assert!(
        forwarded_for.rsplit(", ").next() == Some("192.0.2.7"),
        "the right-most X-Forwarded-For is not the peer: {forwarded_for:?}"
    );
    assert_eq!(
        headers.get(&crate::auth::check::X_ACCESS_TOKEN),
        client_token.as_ref()
    );
    assert_eq!(headers.get(&crate::request_id::X_REQUEST_ID), Some(&id));
}

/// Input: a byte of flags (authenticated, underscores allowed), then headers as a name chunk
/// and a value chunk each (names and values the `http` crate refuses are skipped, as hyper
/// would have refused them). Names often come as one of the gateway's own with separators
/// swapped, the case that matters most.
pub fn header_rewrite(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.byte();
    let mut headers = HeaderMap::new();
    while !input.is_empty() {
        let choice = input.byte();
        let name = if choice & 0x80 != 0 {
            // An owned name with its separators replaced by bytes from the input.
            let owned = GATEWAY_OWNED[usize::from(choice) % GATEWAY_OWNED.len()].as_str();
            owned
                .bytes()
                .map(|b| if b == b'-' { input.byte() } else { b })
                .collect::<Vec<u8>>()
        } else {
            input.chunk().to_vec()
        };
        let value = input.chunk();
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&name),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(name, value);
        }
    }
    rewrite_and_check(headers, flags & 1 != 0, flags & 2 != 0);
}
