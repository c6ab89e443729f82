//! Request-path normalization: the one form of a path that route matching and the upstream
//! both see, so no public route can be used to reach a protected one
//! (`/public/../admin`, `/public/%2e%2e/admin`, `//admin`).
//!
//! Rules (RFC 3986 §2.3, §5.2.4): percent-encoded unreserved characters are decoded, other
//! escapes keep an upper-case form, empty segments collapse, dot segments are removed. Encoded
//! slashes or backslashes, literal backslashes, NUL, bad escapes and `..` above the root are
//! refused: no single reading of them is safe for every upstream.
//!
//! Segment parameters (`;…`, RFC 3986 §3.3) are kept on the way upstream, but routes are
//! matched on the path without them ([`without_params`]): servlet containers (Tomcat, Jetty)
//! serve `/admin;x` as `/admin`, so a route must see it as `/admin` too. A dot segment with
//! parameters (`/public/..;/admin`, which the same servers read as `..`) is refused.

use std::borrow::Cow;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("request path must start with '/'")]
    NotOriginForm,
    #[error("malformed percent-encoding in path")]
    BadEscape,
    #[error("encoded slash, backslash or NUL in path")]
    AmbiguousSeparator,
    #[error("path climbs above the root")]
    AboveRoot,
    #[error("dot segment with parameters in path")]
    ParameterizedDotSegment,
}

/// The normalized path; borrows the input when it is already normal (the common case, and
/// the only one that allocates nothing).
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotOriginForm);
    }
    if is_plainly_normal(bytes) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(bytes)?;
    Ok(Cow::Owned(remove_dot_segments(&decoded)?))
}

/// No escape, backslash, empty segment or dot segment: nothing to rewrite.
fn is_plainly_normal(bytes: &[u8]) -> bool {
    let mut prev_slash = false;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'%' | b'\\' => return false,
            b'/' if prev_slash => return false,
            b'.' if prev_slash => {
                // "/." starts a dot segment only when followed by '/', ';', end, or
                // ".[/|;|end]".
                let rest = &bytes[i + 1..];
                let ends_segment = |at: usize| rest.get(at).is_none_or(|&c| c == b'/' || c == b';');
                if ends_segment(0) || (rest[0] == b'.' && ends_segment(1)) {
                    return false;
                }
            }
            _ => {}
        }
        prev_slash = b == b'/';
    }
    true
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn decode_unreserved(bytes: &[u8]) -> Result<String, PathError> {
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => return Err(PathError::AmbiguousSeparator),
            b'%' => {
                let (hi, lo) = match (bytes.get(i + 1), bytes.get(i + 2)) {
                    (Some(&h), Some(&l)) => (h, l),
                    _ => return Err(PathError::BadEscape),
                };
                let value = match (hex(hi), hex(lo)) {
                    (Some(h), Some(l)) => h << 4 | l,
                    _ => return Err(PathError::BadEscape),
                };
                if matches!(value, b'/' | b'\\' | 0) {
                    return Err(PathError::AmbiguousSeparator);
                }
                if is_unreserved(value) {
                    out.push(value as char);
                } else {
                    out.push('%');
                    out.push(hi.to_ascii_uppercase() as char);
                    out.push(lo.to_ascii_uppercase() as char);
                }
                i += 3;
            }
            b => {
                // `path` came from a valid `http::Uri`, so every other byte is visible ASCII.
                out.push(b as char);
                i += 1;
            }
        }
    }
    Ok(out)
}

fn remove_dot_segments(path: &str) -> Result<String, PathError> {
    let mut segments: Vec<&str> = Vec::new();
    let mut parts = path[1..].split('/').peekable();
    let mut trailing_slash = false;
    while let Some(seg) = parts.next() {
        let last = parts.peek().is_none();
        if let Some((".." | ".", _)) = seg.split_once(';') {
            return Err(PathError::ParameterizedDotSegment);
        }
        match seg {
            "" => trailing_slash = last,
            "." => trailing_slash = true,
            ".." => {
                segments.pop().ok_or(PathError::AboveRoot)?;
                trailing_slash = true;
            }
            s => {
                segments.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// The path routes are matched on: a normalized path with each segment's parameters (`;…`)
/// removed and the segments left empty by that dropped (`/;x/admin;y` → `/admin`). Borrows
/// the input when it has no parameters (the common case).
pub fn without_params(path: &str) -> Cow<'_, str> {
    if !path.contains(';') {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    for name in path.split('/').map(segment_name).filter(|n| !n.is_empty()) {
        out.push('/');
        out.push_str(name);
    }
    if out.is_empty() || path.ends_with('/') {
        out.push('/');
    }
    Cow::Owned(out)
}

/// A segment without its parameters.
fn segment_name(segment: &str) -> &str {
    segment.split(';').next().unwrap_or("")
}

/// What is left of a normalized `path` after the segments that spell `prefix` in
/// [`without_params`] form, starting with `/` (or `/` alone): the path a route with
/// `strip_prefix` sends upstream. `prefix` must match `path`'s routing form.
pub fn strip_segments<'p>(path: &'p str, prefix: &str) -> &'p str {
    let mut to_skip = prefix.split('/').filter(|s| !s.is_empty()).count();
    let mut rest = path;
    while to_skip > 0 {
        // `rest` starts with '/': take one segment off.
        let end = rest[1..].find('/').map_or(rest.len(), |i| i + 1);
        if !segment_name(&rest[1..end]).is_empty() {
            to_skip -= 1;
        }
        rest = &rest[end..];
    }
    if rest.is_empty() { "/" } else { rest }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize(p).map(Cow::into_owned)
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for p in ["/", "/users/me", "/a/b/", "/a.b/c..d/.e", "/a/..b"] {
            assert!(matches!(normalize(p), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    #[test]
    fn dot_segments_and_empty_segments() {
        assert_eq!(n("/public/../users/invite").unwrap(), "/users/invite");
        assert_eq!(n("/a/./b").unwrap(), "/a/b");
        assert_eq!(n("/a/b/..").unwrap(), "/a/");
        assert_eq!(n("/a/.").unwrap(), "/a/");
        assert_eq!(n("//x").unwrap(), "/x");
        assert_eq!(n("/a//b///c").unwrap(), "/a/b/c");
        assert_eq!(n("/a/b/../../c").unwrap(), "/c");
    }

    #[test]
    fn encoded_dots_and_unreserved_are_decoded() {
        assert_eq!(n("/public/%2e%2e/x").unwrap(), "/x");
        assert_eq!(n("/public/%2E./x").unwrap(), "/x");
        assert_eq!(n("/%41%62c").unwrap(), "/Abc");
        assert_eq!(n("/a%20b").unwrap(), "/a%20b");
        assert_eq!(n("/a%3fb").unwrap(), "/a%3Fb");
    }

    #[test]
    fn ambiguous_or_broken_paths_are_refused() {
        assert_eq!(n("/public%2f..%2fx"), Err(PathError::AmbiguousSeparator));
        assert_eq!(n("/a%5cb"), Err(PathError::AmbiguousSeparator));
        assert_eq!(n("/a\\b"), Err(PathError::AmbiguousSeparator));
        assert_eq!(n("/a%00"), Err(PathError::AmbiguousSeparator));
        assert_eq!(n("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(n("/a%2"), Err(PathError::BadEscape));
        assert_eq!(n("/.."), Err(PathError::AboveRoot));
        assert_eq!(n("/a/../.."), Err(PathError::AboveRoot));
        assert_eq!(n("*"), Err(PathError::NotOriginForm));
    }

    #[test]
    fn dot_segments_with_parameters_are_refused() {
        for p in [
            "/public/..;/admin",
            "/public/..;x=1/admin",
            "/public/.;/admin",
            "/a/%2e%2e;/b",
            "/..;",
        ] {
            assert_eq!(n(p), Err(PathError::ParameterizedDotSegment), "{p}");
        }
        // Only whole dot segments: names that merely start with dots are names.
        assert_eq!(n("/a/..b;x").unwrap(), "/a/..b;x");
        assert_eq!(n("/a/.x;y").unwrap(), "/a/.x;y");
    }

    #[test]
    fn routes_see_paths_without_parameters() {
        assert!(matches!(without_params("/admin/x"), Cow::Borrowed(_)));
        assert_eq!(without_params("/admin;jsessionid=1"), "/admin");
        assert_eq!(without_params("/api;v=1/admin;x/y"), "/api/admin/y");
        assert_eq!(without_params("/;x/admin"), "/admin");
        assert_eq!(without_params("/admin;x/"), "/admin/");
        assert_eq!(without_params("/;x"), "/");
    }

    #[test]
    fn a_stripped_prefix_takes_its_segments_with_their_parameters() {
        assert_eq!(strip_segments("/api/x", "/api"), "/x");
        assert_eq!(strip_segments("/api", "/api"), "/");
        assert_eq!(strip_segments("/api/", "/api"), "/");
        assert_eq!(strip_segments("/api;v=1/x;y", "/api"), "/x;y");
        assert_eq!(strip_segments("/;x/api/admin/z", "/api/admin"), "/z");
        assert_eq!(strip_segments("/anything", "/"), "/anything");
    }
}
