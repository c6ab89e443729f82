//! Rewriting a downstream request's headers for its upstream, and the upstream's response
//! headers for the client: hop-by-hop headers out (RFC 9110 §7.6.1), `X-Forwarded-*` in,
//! identity headers set only by the gateway, and no client header that a backend could read
//! as one of the gateway's own.

use std::net::SocketAddr;

use http::header::{CONNECTION, EXPECT, HOST, HeaderName, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderValue};

use crate::auth::Principal;
use crate::auth::check::X_ACCESS_TOKEN;
use crate::request_id::X_REQUEST_ID;

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
/// RFC 9113 §3.2.1's h2c upgrade settings: hop-by-hop by definition.
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// The headers whose value at the upstream is the gateway's word: identity, the forwarding
/// facts, the request id, and the token the gateway checked.
pub static GATEWAY_OWNED: [&HeaderName; 8] = [
    &X_MEIRO_USER_ID,
    &X_MEIRO_USER_EMAIL,
    &X_MEIRO_USER_ROLE,
    &X_FORWARDED_FOR,
    &X_FORWARDED_PROTO,
    &X_FORWARDED_HOST,
    &X_REQUEST_ID,
    &X_ACCESS_TOKEN,
];

/// Is `name` one of [`GATEWAY_OWNED`] in disguise: the same letters and digits, with some
/// other separator where it has `-` (`x_meiro_user_role`, `x.meiro.user-role`)? CGI, WSGI,
/// PHP and many Node setups read `_` and `-` alike, so a backend would see the client's copy
/// as the gateway's header. Names arrive lower-cased (`HeaderName`), so case cannot hide one.
pub fn disguises_gateway_header(name: &[u8]) -> bool {
    // Only names of the same length can be one in disguise: most are decided on the length.
    let candidates: &[&[u8]] = match name.len() {
        12 => &[b"x-request-id"],
        14 => &[b"x-access-token"],
        15 => &[b"x-meiro-user-id", b"x-forwarded-for"],
        16 => &[b"x-forwarded-host"],
        17 => &[b"x-meiro-user-role", b"x-forwarded-proto"],
        18 => &[b"x-meiro-user-email"],
        _ => return false,
    };
    candidates.iter().any(|owned| {
        // Equal but where the owned name has `-` and this one another separator; the owned
        // name itself is not in disguise.
        let mut exact = true;
        for (&o, &n) in owned.iter().zip(name) {
            if o != n {
                if o != b'-' || n.is_ascii_alphanumeric() {
                    return false;
                }
                exact = false;
            }
        }
        !exact
    })
}

/// Drops every client header [`disguises_gateway_header`], and with `underscores_allowed`
/// off every header whose name holds `_` (nginx's `underscores_in_headers off`). Allocates
/// only when there is something to drop.
pub fn drop_disguised_headers(headers: &mut HeaderMap, underscores_allowed: bool) {
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        let bytes = name.as_str().as_bytes();
        if (!underscores_allowed && bytes.contains(&b'_')) || disguises_gateway_header(bytes) {
            doomed.push(name.clone());
        }
    }
    for name in &doomed {
        headers.remove(name);
    }
}

/// The hop-by-hop headers of RFC 9110 §7.6.1 and their kin; `Connection` may name more.
static HOP_BY_HOP: [&HeaderName; 10] = [
    &CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &TE,
    &TRAILER,
    &TRANSFER_ENCODING,
    &UPGRADE,
    &PROXY_AUTHENTICATE,
    &PROXY_AUTHORIZATION,
    &HTTP2_SETTINGS,
];

/// Removes the hop-by-hop headers, including every header the `Connection` header names.
///
/// One pass over the message's few names finds them (a comparison each, mostly of standard
/// names, which compare as small integers) instead of a hash lookup per hop-by-hop name:
/// most requests carry none, and a response usually only `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut found: [Option<HeaderName>; 4] = Default::default();
    let mut count = 0;
    for name in headers.keys() {
        if HOP_BY_HOP.contains(&name) {
            if count == found.len() {
                // More than a message plausibly has: remove by name, the long way.
                count = usize::MAX;
                break;
            }
            found[count] = Some(name.clone());
            count += 1;
        }
    }
    if count == 0 {
        return;
    }
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
            // The request id is the gateway's, assigned at the edge before this strip (the
            // other owned headers are set after it): a client cannot name it away.
            if name != X_REQUEST_ID {
                headers.remove(name);
            }
        }
    }
    if count == usize::MAX {
        for name in HOP_BY_HOP {
            headers.remove(name);
        }
    } else {
        for name in found.iter().flatten() {
            headers.remove(name);
        }
    }
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
    /// `server.underscores_in_headers`.
    pub underscores_allowed: bool,
}

/// Rewrites request headers in place for the upstream.
pub fn prepare_headers(headers: &mut HeaderMap, downstream: Downstream<'_>) {
    drop_disguised_headers(headers, downstream.underscores_allowed);
    // The token the gateway checks is the first `X-Access-Token` (`extract_token`): a second
    // one must not reach a backend that reads the last. (A map without repeated names, the
    // common case, is told apart by its two counts alone.)
    if headers.len() != headers.keys_len() {
        let mut tokens = headers.get_all(&X_ACCESS_TOKEN).iter();
        if let (Some(first), Some(_)) = (tokens.next(), tokens.next()) {
            let first = first.clone();
            headers.insert(&X_ACCESS_TOKEN, first);
        }
    }
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

/// The received `X-Forwarded-For` (its lines as one list) and the client, right-most: the
/// edge (`server::client_addr`) already cut the list after the client when it took the
/// client from it, so the upstream can always believe the last entry.
fn append_forwarded_for(headers: &mut HeaderMap, client: SocketAddr) {
    let mut value = String::new();
    let prior = headers.get_all(&X_FORWARDED_FOR).iter();
    for line in prior.filter_map(|v| v.to_str().ok()).map(str::trim) {
        if !line.is_empty() {
            value.push_str(line);
            value.push_str(", ");
        }
    }
    use std::fmt::Write as _;
    let _ = write!(value, "{}", client.ip());
    if let Ok(v) = HeaderValue::try_from(value) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
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

    /// Found by the `header_rewrite` fuzz target: `Connection: x-request-id` removed the id the
    /// edge had assigned, so the upstream never saw it.
    #[test]
    fn connection_cannot_name_away_the_gateways_request_id() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("x-request-id, x-secret-hop"),
        );
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("gw-assigned-1"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h[&X_REQUEST_ID], "gw-assigned-1");
    }

    #[test]
    fn more_hop_by_hop_headers_than_the_quick_path_holds_are_all_removed() {
        let mut h = HeaderMap::new();
        for hop in HOP_BY_HOP {
            h.insert(hop, HeaderValue::from_static("1"));
        }
        h.insert(CONNECTION, HeaderValue::from_static("x-named"));
        h.insert("x-named", HeaderValue::from_static("1"));
        h.insert("x-end-to-end", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut h);
        assert_eq!(
            h.keys().map(HeaderName::as_str).collect::<Vec<_>>(),
            ["x-end-to-end"]
        );
    }

    fn downstream(upgrade: Option<&'static str>) -> Downstream<'static> {
        Downstream {
            client: "10.1.2.3:5555".parse().unwrap(),
            proto: "https",
            host: Some(HeaderValue::from_static("app.example.com")),
            principal: None,
            upgrade: upgrade.map(HeaderValue::from_static),
            underscores_allowed: true,
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
    fn an_allowed_upgrade_keeps_connection_and_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        prepare_headers(&mut h, downstream(Some("websocket")));
        assert_eq!(h[CONNECTION], "upgrade");
        assert_eq!(h[UPGRADE], "websocket");
    }

    #[test]
    fn an_upgrade_not_passed_on_leaves_no_trace() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static("h2c"));
        h.insert(
            "http2-settings",
            HeaderValue::from_static("AAMAAABkAAQCAAAAAAIAAAAA"),
        );
        prepare_headers(&mut h, downstream(None));
        for name in ["connection", "upgrade", "http2-settings"] {
            assert!(!h.contains_key(name), "{name} survived: {h:?}");
        }
    }

    #[test]
    fn gateway_headers_in_disguise_are_recognised() {
        for disguised in [
            "x_meiro_user_role",
            "x-meiro_user-role",
            "x.meiro.user.role",
            "x~meiro~user~id",
            "x_forwarded_for",
            "x_forwarded_host",
            "x_forwarded_proto",
            "x_request_id",
            "x_access_token",
            "x_meiro_user_email",
        ] {
            assert!(
                disguises_gateway_header(disguised.as_bytes()),
                "{disguised}"
            );
        }
        for other in [
            "x-meiro-user-role",
            "x-access-token",
            "x_meiro_user_roles",
            "x_meiro_user_rol",
            "xameiroauseraid",
            "x_custom_header",
            "content-type",
        ] {
            assert!(!disguises_gateway_header(other.as_bytes()), "{other}");
        }
    }

    #[test]
    fn the_length_table_of_disguises_holds_every_owned_name() {
        // `disguises_gateway_header` compares a name with the owned names of its length, which
        // it lists by hand: each owned name, with one separator changed, must be recognised.
        for owned in GATEWAY_OWNED {
            let disguised = owned.as_str().replacen('-', "_", 1);
            assert!(disguises_gateway_header(disguised.as_bytes()), "{owned}");
            assert!(
                !disguises_gateway_header(owned.as_str().as_bytes()),
                "{owned}"
            );
        }
    }

    #[test]
    fn disguised_headers_are_dropped_and_underscores_optionally_all() {
        let mut h = HeaderMap::new();
        h.insert("x_meiro_user_role", HeaderValue::from_static("admin"));
        h.insert("x-meiro_user_id", HeaderValue::from_static("other"));
        h.insert("x_custom", HeaderValue::from_static("kept"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        drop_disguised_headers(&mut h, true);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "x_custom"]);
        drop_disguised_headers(&mut h, false);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["accept"]);
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        let addr: SocketAddr = "10.1.2.3:5555".parse().unwrap();
        append_forwarded_for(&mut h, addr);
        assert_eq!(h[&X_FORWARDED_FOR], "10.1.2.3");
        append_forwarded_for(&mut h, "10.9.9.9:1".parse().unwrap());
        assert_eq!(h[&X_FORWARDED_FOR], "10.1.2.3, 10.9.9.9");
        // Several lines are one list, in order.
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static(" 10.5.5.5 "));
        append_forwarded_for(&mut h, "[2001:db8::1]:1".parse().unwrap());
        assert_eq!(
            h[&X_FORWARDED_FOR],
            "10.1.2.3, 10.9.9.9, 10.5.5.5, 2001:db8::1"
        );
        assert_eq!(h.get_all(&X_FORWARDED_FOR).iter().count(), 1);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Names a client might send: the gateway's own, each with its separators swapped
        /// at random for another token character, hop-by-hop names, and ordinary ones.
        fn header_name() -> impl Strategy<Value = String> {
            let owned =
                prop::sample::select(GATEWAY_OWNED.iter().map(|n| n.as_str()).collect::<Vec<_>>());
            let disguised = (
                owned.clone(),
                prop::collection::vec(
                    prop::sample::select(vec!['-', '_', '.', '~', '!', '*', '\'', '+', '|']),
                    4,
                ),
            )
                .prop_map(|(name, seps)| {
                    let mut n = 0;
                    name.chars()
                        .map(|c| {
                            if c == '-' {
                                n += 1;
                                seps[(n - 1) % seps.len()]
                            } else {
                                c
                            }
                        })
                        .collect::<String>()
                });
            let other = prop::sample::select(vec![
                "connection",
                "keep-alive",
                "te",
                "upgrade",
                "http2-settings",
                "proxy-authorization",
                "x_custom",
                "accept",
                "host",
                "cookie",
                "x-meiro-user-roles",
                "x-forwarded-hostx",
            ])
            .prop_map(str::to_owned);
            prop_oneof![owned.prop_map(str::to_owned), disguised, other]
        }

        fn header_value() -> impl Strategy<Value = String> {
            prop::sample::select(vec![
                "admin",
                "user",
                "10.0.0.1",
                "https",
                "evil.example",
                "x-meiro-user-role",
                "upgrade, x-forwarded-for",
                "trailers",
                "h2c",
                "",
            ])
            .prop_map(str::to_owned)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(3000))]

            /// For any header list, nothing the gateway owns survives from the client: identity
            /// and forwarding headers carry the gateway's values only, no disguised copy of any
            /// owned header reaches the upstream, and no hop-by-hop header passes.
            #[test]
            fn nothing_gateway_owned_survives_from_the_client(
                sent in prop::collection::vec((header_name(), header_value()), 0..16),
                authenticated in any::<bool>(),
                underscores_allowed in any::<bool>(),
            ) {
                let mut headers = HeaderMap::new();
                for (name, value) in &sent {
                    headers.append(
                        HeaderName::from_bytes(name.as_bytes()).unwrap(),
                        HeaderValue::from_str(value).unwrap(),
                    );
                }
                // The invariants, shared with the `header_rewrite` fuzz target.
                crate::fuzzing::rewrite_and_check(headers, authenticated, underscores_allowed);
            }
        }
    }
}
