//! Target `framing_watch`: the HTTP/1 framing watch (`server::framing::Scanner`) on a whole
//! connection's bytes, against itself split into reads and against a reference walk of the
//! stream that mirrors how hyper 1.x frames requests.

use super::Input;
use super::chunked::{Decoded, reference_chunked};
use crate::server::framing::{Scanner, State};

/// Larger than any input, so the head-size limit never differs between splits.
const MAX_HEAD: usize = 1 << 20;
/// hyper's default header count limit: a head with more is refused.
const HYPER_MAX_HEADERS: usize = 100;

/// How the reference walk ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Every byte consumed, at a head boundary.
    Clean,
    /// In the middle of a head or body.
    Incomplete,
    /// hyper answers 400 (or 431) and closes: nothing after this point is served.
    Refused,
    /// Not HTTP/1 at all (the HTTP/2 preface, garbage). A request asking to switch protocols
    /// (CONNECT, HTTP/1.1 `Upgrade`) does not end the walk: the gateway grants only a route's
    /// allowed upgrades, hyper reads on after any other answer, and after a granted one no
    /// further request is served, whatever the watch thinks of the bytes.
    Switched,
    /// The last head declared both lengths (the gateway refuses it; hyper closes after it).
    Conflict,
}

#[derive(Debug, Clone, Copy)]
struct Head {
    content_length: bool,
    transfer_encoding: bool,
}

/// The heads hyper would read from `stream`, in order, and why it stopped.
fn reference_walk(stream: &[u8]) -> (Vec<Head>, End) {
    let mut heads = Vec::new();
    let mut at = 0;
    loop {
        if at == stream.len() {
            return (heads, End::Clean);
        }
        let mut headers = vec![httparse::EMPTY_HEADER; HYPER_MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        let len = match request.parse(&stream[at..]) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return (heads, End::Incomplete),
            Err(httparse::Error::TooManyHeaders) => return (heads, End::Refused),
            // The HTTP/2 preface, or garbage hyper refuses.
            Err(_) => return (heads, End::Switched),
        };
        let http11 = request.version == Some(1);
        let mut is_cl = false;
        let mut is_te = false;
        let mut chunked = false;
        let mut length: Option<u64> = None;
        for header in request.headers.iter() {
            let name = header.name.to_ascii_lowercase();
            match name.as_str() {
                "transfer-encoding" => {
                    if !http11 {
                        return (heads, End::Refused);
                    }
                    is_te = true;
                    chunked = visible_ascii(header.value).is_some_and(|v| {
                        let last = v.split(',').next_back().unwrap_or("");
                        last.trim().eq_ignore_ascii_case("chunked")
                    });
                }
                "content-length" => {
                    is_cl = true;
                    if is_te {
                        continue;
                    }
                    let Some(value) = visible_ascii(header.value).and_then(content_length) else {
                        return (heads, End::Refused);
                    };
                    if length.is_some_and(|previous| previous != value) {
                        return (heads, End::Refused);
                    }
                    length = Some(value);
                }
                _ => {}
            }
        }
        if is_te && !chunked {
            return (heads, End::Refused);
        }
        heads.push(Head {
            content_length: is_cl,
            transfer_encoding: is_te,
        });
        if is_cl && is_te {
            return (heads, End::Conflict);
        }
        at += len;
        if chunked {
            match reference_chunked(&stream[at..]) {
                Decoded::End(n) => at += n,
                Decoded::Incomplete => return (heads, End::Incomplete),
                Decoded::Invalid(_) => return (heads, End::Refused),
            }
        } else if let Some(length) = length {
            match usize::try_from(length) {
                Ok(length) if length <= stream.len() - at => at += length,
                _ => return (heads, End::Incomplete),
            }
        }
    }
}

/// A header value as `HeaderValue::to_str` accepts it (visible ASCII, space, tab).
fn visible_ascii(value: &[u8]) -> Option<&str> {
    value
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
}

/// hyper's reading of one `Content-Length` value: a comma list of equal decimal numbers.
fn content_length(value: &str) -> Option<u64> {
    let mut length = None;
    for part in value.split(',') {
        let part = part.trim();
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n = part.parse::<u64>().ok()?;
        if length.is_some_and(|l| l != n) {
            return None;
        }
        length = Some(n);
    }
    length
}

struct Outcome {
    flagged: Vec<u64>,
    requests: u64,
    state: State,
}

fn scan(reads: &[&[u8]]) -> Outcome {
    let mut scanner = Scanner::new(MAX_HEAD);
    let mut flagged = Vec::new();
    for read in reads {
        // As `Watched` does: a stopped watch is not fed.
        if scanner.state != State::Done {
            flagged.extend(scanner.feed(read));
        }
    }
    Outcome {
        flagged,
        requests: scanner.requests,
        state: scanner.state,
    }
}

fn assert_same(what: &str, a: &Outcome, b: &Outcome) {
    assert_eq!(a.flagged, b.flagged, "flagged differs ({what})");
    assert_eq!(a.requests, b.requests, "request count differs ({what})");
    assert_eq!(a.state, b.state, "state differs ({what})");
}

/// Input: one byte `k`, then `k % 4` little-endian u16 split points, then the connection's
/// bytes (as a client sends them).
pub fn framing_watch(data: &[u8]) {
    let mut input = Input::new(data);
    let splits = usize::from(input.byte() % 4);
    let mut points: Vec<usize> = (0..splits).map(|_| usize::from(input.u16())).collect();
    let stream = input.rest();
    let whole = scan(&[stream]);

    // 1. The same verdicts however the bytes arrive.
    for point in &mut points {
        *point = if stream.is_empty() {
            0
        } else {
            *point % (stream.len() + 1)
        };
    }
    points.sort_unstable();
    let mut reads = Vec::new();
    let mut from = 0;
    for &point in &points {
        reads.push(&stream[from..point]);
        from = point;
    }
    reads.push(&stream[from..]);
    assert_same(&format!("split at {points:?}"), &whole, &scan(&reads));
    if stream.len() <= 512 {
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_same("one byte per read", &whole, &scan(&bytes));
    }

    // 2. Against what hyper reads from the same bytes.
    let (heads, end) = reference_walk(stream);
    let refused = end == End::Refused;
    assert!(whole.flagged.len() <= 1, "flags after the watch stopped");
    if let Some(&n) = whole.flagged.first() {
        assert!(
            n >= 1 && n <= whole.requests,
            "flagged {n} of {}",
            whole.requests
        );
        match heads.get(n as usize - 1) {
            Some(head) => assert!(
                head.content_length && head.transfer_encoding,
                "flagged request {n} does not declare both lengths"
            ),
            // The watch followed a stream hyper refuses earlier: the flag is never used.
            None => assert!(
                refused,
                "flagged request {n} of {} heads ({end:?})",
                heads.len()
            ),
        }
        assert_eq!(whole.state, State::Done, "a flag stops the watch");
    }
    if !refused {
        assert!(
            whole.requests <= heads.len() as u64,
            "the watch counted {} heads, hyper reads {} ({end:?})",
            whole.requests,
            heads.len()
        );
    }
    // Every conflicting request hyper would serve is flagged...
    if end == End::Conflict {
        assert_eq!(
            whole.flagged,
            [heads.len() as u64],
            "hyper serves a conflicting request the watch did not flag"
        );
    }
    // ...because the watch does not stop on a stream hyper keeps reading.
    if matches!(end, End::Clean | End::Incomplete) {
        assert_ne!(
            whole.state,
            State::Done,
            "the watch stopped on a stream hyper reads on"
        );
        assert_eq!(whole.requests, heads.len() as u64, "head counts differ");
        if end == End::Clean {
            assert_eq!(whole.state, State::Head);
        }
    }
}
