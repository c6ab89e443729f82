//! Targets `token_extraction` and `cookies`: `auth::check::extract_token` on arbitrary
//! request headers, against a reference reading of api-contract.md's rule
//! (`X-Access-Token`, else `Authorization: Bearer`, else the session cookie).

use http::{HeaderMap, HeaderName, HeaderValue};

use super::Input;
use crate::auth::check::extract_token;

const COOKIE_NAMES: &[&str] = &["meiro_access_token", "t", "token", "a=b", ""];
const NAMES: [&str; 4] = ["x-access-token", "authorization", "cookie", "x-other"];

/// Bytes `HeaderValue::to_str` accepts: visible ASCII, space, tab.
fn visible(value: &[u8]) -> Option<&str> {
    if value
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
    {
        std::str::from_utf8(value).ok()
    } else {
        None
    }
}

fn trim_ows(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

/// The session cookie in `values` (each a `Cookie` header, in order): the first `name=value`
/// pair, split on `;`, whose name is exactly `cookie_name` and whose value is not empty.
fn reference_cookie<'h>(values: &[&'h [u8]], cookie_name: &str) -> Option<&'h str> {
    for value in values {
        let Some(value) = visible(value) else {
            continue;
        };
        let mut start = 0;
        for end in value
            .match_indices(';')
            .map(|(i, _)| i)
            .chain([value.len()])
        {
            let pair = trim_ows(&value[start..end]);
            start = end + 1;
            if let Some(eq) = pair.find('=')
                && &pair[..eq] == cookie_name
                && eq + 1 < pair.len()
            {
                return Some(&pair[eq + 1..]);
            }
        }
    }
    None
}

/// The token api-contract.md names, from headers given in order.
fn reference_token<'h>(headers: &[(usize, &'h [u8])], cookie_name: &str) -> Option<&'h str> {
    let first = |kind: usize| headers.iter().find(|(k, _)| *k == kind).map(|(_, v)| *v);
    if let Some(token) = first(0).and_then(visible).map(trim_ows)
        && !token.is_empty()
    {
        return Some(token);
    }
    if let Some(value) = first(1).and_then(visible)
        && let Some(space) = value.find(' ')
    {
        let token = trim_ows(&value[space + 1..]);
        if value[..space].eq_ignore_ascii_case("bearer") && !token.is_empty() {
            return Some(token);
        }
    }
    let cookies: Vec<&[u8]> = headers
        .iter()
        .filter(|(k, _)| *k == 2)
        .map(|(_, v)| *v)
        .collect();
    reference_cookie(&cookies, cookie_name)
}

/// Runs `extract_token` on `headers` (pairs of a `NAMES` index and a value; values
/// `HeaderValue` refuses are left out) and checks it against the reference.
fn check(headers: &[(usize, &[u8])], cookie_name: &str) -> Option<String> {
    let headers: Vec<(usize, &[u8])> = headers
        .iter()
        .copied()
        .filter(|(_, v)| HeaderValue::from_bytes(v).is_ok())
        .collect();
    let mut map = HeaderMap::new();
    for &(kind, value) in &headers {
        let value = HeaderValue::from_bytes(value).expect("filtered");
        map.append(HeaderName::from_static(NAMES[kind]), value);
    }
    let token = extract_token(&map, cookie_name);
    assert_eq!(
        token,
        reference_token(&headers, cookie_name),
        "headers {headers:?}, cookie {cookie_name:?}"
    );
    if let Some(token) = token {
        assert!(!token.is_empty());
        // A view into one of the request's header values, never a copy or a mix.
        let inside = map.iter().any(|(_, v)| {
            let range = v.as_bytes().as_ptr_range();
            range.start <= token.as_ptr() && token.as_bytes().as_ptr_range().end <= range.end
        });
        assert!(inside, "{token:?} is not a slice of a header value");
    }
    token.map(str::to_owned)
}

/// Input: a byte choosing the cookie name, then headers: a byte choosing the name
/// (x-access-token, authorization, cookie, other), a length byte, the value.
pub fn token_extraction(data: &[u8]) {
    let mut input = Input::new(data);
    let cookie_name = COOKIE_NAMES[usize::from(input.byte()) % COOKIE_NAMES.len()];
    let mut headers = Vec::new();
    while !input.is_empty() && headers.len() < 16 {
        let kind = usize::from(input.byte()) % NAMES.len();
        headers.push((kind, input.chunk()));
    }
    check(&headers, cookie_name);
}

/// Input: a mode byte. Mode even: the cookie name (length-prefixed), then raw `Cookie` header
/// values (length-prefixed). Mode odd: the cookie name, then `name=value` pairs
/// (length-prefixed each) joined into one header as a browser does (`; `).
pub fn cookies(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.byte();
    let cookie_name = String::from_utf8_lossy(input.chunk()).into_owned();
    if mode.is_multiple_of(2) {
        let mut headers = Vec::new();
        while !input.is_empty() && headers.len() < 8 {
            headers.push((2, input.chunk()));
        }
        check(&headers, &cookie_name);
        return;
    }
    // Pairs as a browser sends them: names are tokens, values have no `;` and no whitespace.
    let is_token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
    };
    let is_value = |s: &str| s.bytes().all(|b| b.is_ascii_graphic() && b != b';');
    let mut pairs: Vec<(String, String)> = Vec::new();
    while !input.is_empty() && pairs.len() < 8 {
        let name = String::from_utf8_lossy(input.chunk()).into_owned();
        let value = String::from_utf8_lossy(input.chunk()).into_owned();
        if is_token(&name) && is_value(&value) {
            pairs.push((name, value));
        }
    }
    let header: Vec<String> = pairs.iter().map(|(n, v)| format!("{n}={v}")).collect();
    let header = header.join("; ");
    let found = check(&[(2, header.as_bytes())], &cookie_name);
    // The first pair named so, with a value, is the session cookie.
    let expected = pairs
        .iter()
        .find(|(n, v)| *n == cookie_name && !v.is_empty())
        .map(|(_, v)| v.clone());
    assert_eq!(found, expected, "{header:?}");
}
