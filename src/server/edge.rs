//! Accept checks at the server edge, before any router or the data plane sees a request: what
//! RFC 9112 and RFC 9110 tell a server to refuse, and what this gateway refuses because a
//! backend behind it could read it differently than the gateway did. A refused request gets a
//! JSON error and is never forwarded.

use http::header::{ALLOW, CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};

/// Why a request was refused at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Both `Content-Length` and `Transfer-Encoding` (flagged by the framing watch).
    ConflictingFraming,
    /// A head over `limits.max_header_bytes` that hyper's buffer floor let through.
    HeadTooLarge,
    /// `CONNECT` (a tunnel to anywhere) or `TRACE` (echoes credentials back, "XST").
    MethodNotAllowed,
    /// RFC 9112 §3.2: more than one `Host` line. A gateway that routes on the first while a
    /// backend reads the last serves one host's content under another's policy.
    DuplicateHost,
    /// RFC 9112 §3.2: an HTTP/1.1 request must name its host.
    MissingHost,
    /// Not `host[:port]` (RFC 3986 reg-name or IP literal, no user info, no path).
    InvalidHost,
    /// `Host` disagrees with the absolute-form target (RFC 9112 §3.2.2) or the HTTP/2
    /// `:authority` (RFC 9113 §8.3.1): refused rather than choosing one of the two.
    HostMismatch,
}

/// The methods the gateway forwards, for the `Allow` header of a refused one.
const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

impl Refusal {
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Refusal::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::ConflictingFraming
            | Refusal::DuplicateHost
            | Refusal::MissingHost
            | Refusal::InvalidHost
            | Refusal::HostMismatch => StatusCode::BAD_REQUEST,
        }
    }

    fn body(self) -> &'static str {
        match self {
            Refusal::ConflictingFraming => {
                r#"{"message":"Request has both Content-Length and Transfer-Encoding"}"#
            }
            Refusal::HeadTooLarge => r#"{"message":"Request header fields too large"}"#,
            Refusal::MethodNotAllowed => r#"{"message":"Method not allowed"}"#,
            Refusal::DuplicateHost => r#"{"message":"Request has more than one Host header"}"#,
            Refusal::MissingHost => r#"{"message":"Request has no Host header"}"#,
            Refusal::InvalidHost => r#"{"message":"Request Host header is invalid"}"#,
            Refusal::HostMismatch => {
                r#"{"message":"Request Host header disagrees with the request target"}"#
            }
        }
    }

    /// The refusal in the API's JSON error shape.
    pub fn into_response<B: From<&'static str>>(self) -> Response<B> {
        let mut response = Response::new(B::from(self.body()));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if self == Refusal::MethodNotAllowed {
            headers.insert(ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
        }
        response
    }
}

/// The checks that need only the request head (the framing verdict and the head size are the
/// caller's: they come from the connection).
pub fn screen<B>(request: &Request<B>) -> Result<(), Refusal> {
    if matches!(*request.method(), Method::CONNECT | Method::TRACE) {
        return Err(Refusal::MethodNotAllowed);
    }
    check_authority(request.version(), request.uri(), request.headers())
}

/// One host per request: at most one `Host` line, valid, and equal to the target's authority
/// when the target carries one (absolute form, or HTTP/2's `:authority`).
pub fn check_authority(version: Version, uri: &Uri, headers: &HeaderMap) -> Result<(), Refusal> {
    // A map without repeated names (the common case) is told apart by its two counts alone.
    let host = if headers.len() == headers.keys_len() {
        headers.get(HOST)
    } else {
        let mut hosts = headers.get_all(HOST).iter();
        let first = hosts.next();
        if hosts.next().is_some() {
            return Err(Refusal::DuplicateHost);
        }
        first
    };
    let target = uri.authority().map(|a| a.as_str().as_bytes());
    if host.is_none() && version == Version::HTTP_11 {
        return Err(Refusal::MissingHost);
    }
    let routed = match (host.map(HeaderValue::as_bytes), target) {
        (Some(host), Some(target)) if !host.eq_ignore_ascii_case(target) => {
            return Err(Refusal::HostMismatch);
        }
        (Some(value), _) | (None, Some(value)) => value,
        (None, None) => return Ok(()),
    };
    if is_valid_host(routed) {
        Ok(())
    } else {
        Err(Refusal::InvalidHost)
    }
}

/// Bytes of a registered name (RFC 3986 unreserved: letters, digits, `-._~`).
const fn reg_name_bytes() -> [bool; 256] {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~');
        b += 1;
    }
    table
}
static REG_NAME: [bool; 256] = reg_name_bytes();

/// `uri-host [":" port]` (RFC 9110 §7.2), strictly: a registered name of letters, digits and
/// `-._~`, or an IPv6 address in brackets; a port that fits in 16 bits. No user info, percent-escapes or
/// sub-delimiters: real host names have none, and each is a way to make two parsers disagree.
pub fn is_valid_host(value: &[u8]) -> bool {
    let name_end = match value.first() {
        Some(b'[') => match value.iter().position(|&b| b == b']') {
            Some(end)
                if std::str::from_utf8(&value[1..end])
                    .is_ok_and(|literal| literal.parse::<std::net::Ipv6Addr>().is_ok()) =>
            {
                end + 1
            }
            _ => return false,
        },
        _ => {
            // One pass: the name runs up to the first byte outside it, which must be the
            // port's colon or the end.
            let end = value
                .iter()
                .position(|&b| !REG_NAME[usize::from(b)])
                .unwrap_or(value.len());
            if end == 0 {
                return false;
            }
            end
        }
    };
    match &value[name_end..] {
        [] => true,
        [b':', digits @ ..] => {
            (1..=5).contains(&digits.len())
                && digits.iter().all(u8::is_ascii_digit)
                && std::str::from_utf8(digits).is_ok_and(|d| d.parse::<u16>().is_ok())
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(version: Version, target: &str, hosts: &[&'static str]) -> Result<(), Refusal> {
        let mut headers = HeaderMap::new();
        for h in hosts {
            headers.append(HOST, HeaderValue::from_static(h));
        }
        check_authority(version, &target.parse().unwrap(), &headers)
    }

    #[test]
    fn one_valid_host_passes() {
        assert_eq!(head(Version::HTTP_11, "/x", &["api.example.com"]), Ok(()));
        assert_eq!(
            head(Version::HTTP_11, "/x", &["api.example.com:8443"]),
            Ok(())
        );
        assert_eq!(head(Version::HTTP_11, "/x", &["[::1]:80"]), Ok(()));
        assert_eq!(head(Version::HTTP_11, "/x", &["10.0.0.1"]), Ok(()));
        assert_eq!(head(Version::HTTP_10, "/x", &[]), Ok(()));
        assert_eq!(head(Version::HTTP_2, "/x", &[]), Ok(()));
        assert_eq!(
            head(
                Version::HTTP_11,
                "http://API.example.com/x",
                &["api.example.com"]
            ),
            Ok(())
        );
        assert_eq!(
            head(Version::HTTP_2, "http://a.example/x", &["a.example"]),
            Ok(())
        );
        assert_eq!(head(Version::HTTP_2, "http://a.example/x", &[]), Ok(()));
    }

    #[test]
    fn two_hosts_a_missing_one_or_a_disagreeing_one_are_refused() {
        assert_eq!(
            head(Version::HTTP_11, "/x", &["public.example", "admin.example"]),
            Err(Refusal::DuplicateHost)
        );
        assert_eq!(
            head(
                Version::HTTP_2,
                "http://a.example/x",
                &["a.example", "a.example"]
            ),
            Err(Refusal::DuplicateHost)
        );
        assert_eq!(head(Version::HTTP_11, "/x", &[]), Err(Refusal::MissingHost));
        assert_eq!(
            head(Version::HTTP_11, "http://public.example/x", &[]),
            Err(Refusal::MissingHost)
        );
        assert_eq!(
            head(
                Version::HTTP_11,
                "http://public.example/x",
                &["admin.example"]
            ),
            Err(Refusal::HostMismatch)
        );
        assert_eq!(
            head(
                Version::HTTP_2,
                "http://public.example/x",
                &["admin.example"]
            ),
            Err(Refusal::HostMismatch)
        );
    }

    #[test]
    fn host_values_are_strict() {
        for bad in [
            "",
            "user@host",
            "host/path",
            "host:",
            "host:123456",
            "host:65536",
            "host:8o",
            "ho st",
            "a%2eb",
            "a,b",
            "[::1",
            "[]",
            "[::g]",
            "[::1]x",
            ":80",
            "host:80:80",
        ] {
            assert!(!is_valid_host(bad.as_bytes()), "{bad:?}");
        }
        for good in [
            "a",
            "a.b-c_d~e",
            "A.EXAMPLE",
            "x:1",
            "[::ffff:10.0.0.1]:65535",
        ] {
            assert!(is_valid_host(good.as_bytes()), "{good:?}");
        }
    }

    #[test]
    fn connect_and_trace_are_refused_with_allow() {
        for method in [Method::CONNECT, Method::TRACE] {
            let mut request = Request::new(());
            *request.method_mut() = method.clone();
            request
                .headers_mut()
                .insert(HOST, HeaderValue::from_static("a"));
            assert_eq!(screen(&request), Err(Refusal::MethodNotAllowed), "{method}");
        }
        let response: Response<String> = Refusal::MethodNotAllowed.into_response();
        assert_eq!(response.status(), 405);
        assert_eq!(response.headers()[ALLOW], ALLOWED_METHODS);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
    }
}
