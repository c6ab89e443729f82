//! Target `chunked`: the framing watch's byte-at-a-time chunked-body state machine against a
//! plain reference decoder of the grammar hyper accepts (RFC 9112 §7.1, hyper 1.x's
//! tolerances: whitespace before an extension, leading zeros in a size; no size limits).

use crate::server::framing::{Scanner, State};

const HEAD: &[u8] = b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";

/// Where the reference decoder says a chunked body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// The body is the first `n` bytes.
    End(usize),
    /// Valid so far; more bytes are needed.
    Incomplete,
    /// hyper refuses the byte at this index (and closes the connection).
    Invalid(usize),
}

/// The reference: reads `body` as chunks, then trailer lines up to an empty line.
pub(crate) fn reference_chunked(body: &[u8]) -> Decoded {
    use Decoded::{End, Incomplete, Invalid};
    let mut at = 0usize;
    loop {
        // chunk-size = 1*HEXDIG, whose value must fit in 64 bits.
        let mut size: u64 = 0;
        let digits_start = at;
        while let Some(digit) = body.get(at).and_then(|&b| (b as char).to_digit(16)) {
            size = match size
                .checked_mul(16)
                .and_then(|s| s.checked_add(u64::from(digit)))
            {
                Some(size) => size,
                None => return Invalid(at),
            };
            at += 1;
        }
        if at == body.len() {
            return Incomplete;
        }
        if at == digits_start {
            return Invalid(at);
        }
        // Optional whitespace, then an extension up to CR, or CR.
        while matches!(body.get(at), Some(b' ' | b'\t')) {
            at += 1;
        }
        match body.get(at) {
            None => return Incomplete,
            Some(b';') => loop {
                at += 1;
                match body.get(at) {
                    None => return Incomplete,
                    Some(b'\r') => break,
                    Some(b'\n') => return Invalid(at),
                    Some(_) => {}
                }
            },
            Some(b'\r') => {}
            Some(_) => return Invalid(at),
        }
        at += 1; // CR
        match body.get(at) {
            None => return Incomplete,
            Some(b'\n') => at += 1,
            Some(_) => return Invalid(at),
        }
        if size == 0 {
            break;
        }
        let left = (body.len() - at) as u64;
        if left < size {
            return Incomplete;
        }
        at += size as usize;
        for expected in [b'\r', b'\n'] {
            match body.get(at) {
                None => return Incomplete,
                Some(&b) if b == expected => at += 1,
                Some(_) => return Invalid(at),
            }
        }
    }
    // Trailer lines (any bytes up to CR, then LF), up to an empty line.
    loop {
        let line_start = at;
        while body.get(at).is_some_and(|&b| b != b'\r') {
            at += 1;
        }
        if at == body.len() {
            return Incomplete;
        }
        at += 1; // CR
        match body.get(at) {
            None => return Incomplete,
            Some(b'\n') => at += 1,
            Some(_) => return Invalid(at),
        }
        if at - line_start == 2 {
            return End(at);
        }
    }
}

/// Feeds a chunked request's body to a scanner one byte at a time. Returns how many body bytes
/// it took to end the body (back to `State::Head`) and how many to stop it (`State::Done`).
pub(crate) fn scan_body(body: &[u8]) -> (Option<usize>, Option<usize>) {
    let mut scanner = Scanner::new(1 << 20);
    assert_eq!(scanner.feed(HEAD), None);
    assert_eq!(scanner.requests, 1);
    assert!(
        matches!(scanner.state, State::Chunked(_)),
        "{:?}",
        scanner.state
    );
    for (i, &b) in body.iter().enumerate() {
        assert_eq!(scanner.feed(&[b]), None, "nothing in a body is a head");
        match scanner.state {
            State::Head => return (Some(i + 1), None),
            State::Done => return (None, Some(i + 1)),
            State::Chunked(_) => {}
            State::Body(_) => panic!("a chunked body became a Content-Length body"),
        }
    }
    (None, None)
}

/// The input is a chunked body (and whatever follows it on the connection).
pub fn chunked(data: &[u8]) {
    let reference = reference_chunked(data);
    let (ended, stopped) = scan_body(data);
    match reference {
        Decoded::End(n) => {
            // hyper reads the next head at `n`: so must the watch, or it desynchronizes.
            assert_eq!(
                ended,
                Some(n),
                "body end differs; watch stopped at {stopped:?}"
            );
        }
        Decoded::Incomplete => {
            assert_eq!(ended, None, "the watch ended a body hyper still reads");
            // Stopping here would blind the watch on a body hyper accepts.
            assert_eq!(stopped, None, "the watch stopped on a valid partial body");
        }
        Decoded::Invalid(at) => {
            // hyper reads bytes up to `at` as body; the watch must not look for a head there.
            // (Stopping early is harmless: hyper closes the connection at `at`.)
            assert!(
                ended.is_none_or(|n| n > at),
                "the watch ended the body at {ended:?}, before hyper's error at {at}"
            );
        }
    }
    // One read gives the same end state as one byte at a time.
    let mut whole = Scanner::new(1 << 20);
    let mut stream = HEAD.to_vec();
    stream.extend_from_slice(data);
    whole.feed(&stream);
    if let Some(n) = ended {
        let mut split = Scanner::new(1 << 20);
        split.feed(&stream[..HEAD.len() + n]);
        assert_eq!(split.state, State::Head);
        split.feed(&stream[HEAD.len() + n..]);
        assert_eq!((split.state, split.requests), (whole.state, whole.requests));
    } else if stopped.is_some() {
        assert_eq!(whole.state, State::Done);
    } else {
        assert!(
            matches!(whole.state, State::Chunked(_)),
            "{:?}",
            whole.state
        );
    }
}
