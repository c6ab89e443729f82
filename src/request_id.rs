//! Request ids (`X-Request-Id`): taken from the client when it sends a sane one, generated
//! otherwise, set once per request at the server edge (`server`), returned on every response,
//! and named on the request's log lines.
//!
//! After [`assign`] the request's own `X-Request-Id` header *is* the id: the upstream gets it
//! without any extra work, and the auth API reads it from there ([`of`]) rather than from a
//! copy in the request extensions, which would cost the data plane one more allocation per
//! request.
//!
//! Log lines: the auth API's handlers run in a `request` span naming the id (`api`), so every
//! line they log carries it. The data plane does not: a span per request is a measurable
//! share of the cache-hit path (the README's instruction counts), where nothing is logged
//! at all unless something fails or the access log is on; instead its few log lines
//! (access log, token-check and upstream failures) name the id as a field ([`field`]), read
//! from the headers only when the line is actually written.
//!
//! Generation is a per-process random prefix and an atomic counter: unique across replicas
//! (64 random bits per process) and across a process's life (64-bit counter), with no syscall,
//! lock or random-number generation per request — one small shared buffer, cloned by
//! reference count into the request and the response.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client-sent id kept; a longer one is replaced (it would bloat every log line and
/// audit row, and no tracing system needs more).
pub const MAX_LEN: usize = 128;

/// The id of one request, as its header value (cloning it shares the bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// Only ids that pass [`is_valid`] or were generated exist, so the text is visible ASCII.
    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or_default()
    }

    pub fn into_header_value(self) -> HeaderValue {
        self.0
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A client's id is kept when it is 1..=[`MAX_LEN`] bytes of visible ASCII (no spaces or
/// controls): safe to log, store and send on as is.
pub fn is_valid(value: &[u8]) -> bool {
    !value.is_empty() && value.len() <= MAX_LEN && value.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// The request's id: its one valid `X-Request-Id`, otherwise a generated one, which replaces
/// whatever the client sent so the upstream sees the same id as the logs.
pub fn assign(headers: &mut HeaderMap) -> RequestId {
    let mut sent = headers.get_all(&X_REQUEST_ID).iter();
    if let (Some(value), None) = (sent.next(), sent.next())
        && is_valid(value.as_bytes())
    {
        return RequestId(value.clone());
    }
    let id = generate();
    headers.insert(X_REQUEST_ID.clone(), id.0.clone());
    id
}

/// The id [`assign`] gave a request, read back from its headers.
pub fn of(headers: &HeaderMap) -> Option<RequestId> {
    headers
        .get(&X_REQUEST_ID)
        .filter(|v| is_valid(v.as_bytes()))
        .map(|v| RequestId(v.clone()))
}

/// The id as a log field, straight from the headers (no copy); empty if there is none.
pub fn field(headers: &HeaderMap) -> &str {
    headers
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// As [`field`], preferring `taken`: the id set aside when the headers were moved on.
pub fn field_of<'a>(taken: Option<&'a HeaderValue>, headers: &'a HeaderMap) -> &'a str {
    match taken {
        Some(id) => id.to_str().unwrap_or_default(),
        None => field(headers),
    }
}

/// A new id: 32 lower-case hex digits, the process prefix then the counter.
pub fn generate() -> RequestId {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // A v4 UUID's randomness (the OS's, once per process).
    let prefix = *PREFIX.get_or_init(|| uuid::Uuid::new_v4().as_u64_pair().0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut text = [0u8; 32];
    hex(prefix, &mut text[..16]);
    hex(n, &mut text[16..]);
    // One allocation that every clone shares (a copied buffer would be copied again, into a
    // shared one, at its first clone). Hex digits are always a valid header value.
    RequestId(
        HeaderValue::from_maybe_shared(Bytes::from_owner(text))
            .unwrap_or_else(|_| HeaderValue::from_static("-")),
    )
}

fn hex(mut n: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(n & 0xf) as usize];
        n >>= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_unique_fixed_width_hex() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 32);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a.as_str()[..16], b.as_str()[..16], "one prefix per process");
        let mut h = HeaderMap::new();
        let assigned = assign(&mut h);
        assert_eq!(of(&h), Some(assigned), "read back from the headers");
    }

    #[test]
    fn a_sane_client_id_is_kept_anything_else_replaced() {
        let mut h = HeaderMap::new();
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123_X.y:z"));
        assert_eq!(assign(&mut h).as_str(), "abc-123_X.y:z");
        assert_eq!(h[&X_REQUEST_ID], "abc-123_X.y:z");

        let long = "a".repeat(MAX_LEN + 1);
        for bad in ["", "has space", "tab\there", long.as_str()] {
            let mut h = HeaderMap::new();
            h.insert(&X_REQUEST_ID, HeaderValue::from_str(bad).unwrap());
            let id = assign(&mut h);
            assert_ne!(id.as_str(), bad);
            assert_eq!(id.as_str().len(), 32);
            assert_eq!(
                h[&X_REQUEST_ID],
                id.as_str(),
                "the upstream sees the new id"
            );
        }
        let mut h = HeaderMap::new();
        h.insert(
            &X_REQUEST_ID,
            HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        );
        assert_eq!(assign(&mut h).as_str().len(), 32, "non-ASCII");

        let mut two = HeaderMap::new();
        two.append(&X_REQUEST_ID, HeaderValue::from_static("one"));
        two.append(&X_REQUEST_ID, HeaderValue::from_static("two"));
        let id = assign(&mut two);
        assert_eq!(id.as_str().len(), 32, "ambiguous: two ids");
        assert_eq!(two.get_all(&X_REQUEST_ID).iter().count(), 1);

        assert_eq!(assign(&mut HeaderMap::new()).as_str().len(), 32);
        assert!(is_valid("a".repeat(MAX_LEN).as_bytes()));
    }
}
