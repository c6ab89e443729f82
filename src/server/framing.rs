//! A read-side watch over HTTP/1.1 request framing, for the one ambiguity hyper settles
//! silently: a request with both `Content-Length` and `Transfer-Encoding`.
//!
//! hyper follows RFC 9112 §6.3 (Transfer-Encoding wins, the Content-Length header is removed,
//! the connection is closed after the response), so the service never sees the conflict and
//! cannot refuse it. Such a request is the classic smuggling probe; a gateway should answer
//! `400` and forward nothing, as nginx and Envoy do. [`Watched`] copies nothing and changes
//! nothing on the wire: it re-reads the request heads hyper is about to parse, follows the body
//! framing to find the next head, and records the 1-based number of the first conflicting
//! request in the connection's [`Verdicts`]. The service counts the requests it is handed (in
//! order, on HTTP/1) and refuses the flagged one.
//!
//! Whenever the watch is unsure of where the next head starts (HTTP/2, a head httparse
//! refuses, malformed chunking) it stops watching for the rest of the connection. It can
//! therefore miss a conflict hyper would then handle as above, but never flag a request that
//! has none. A request asking to switch protocols (`Upgrade`, `CONNECT`) is followed like any
//! other: the gateway switches only for a route's allowed upgrades, and hyper reads on as
//! HTTP/1 after every other answer; once a switch did happen, the bytes that follow belong to
//! the tunnel and whatever the watch makes of them is never asked for (no request follows).

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// More header lines than hyper accepts (100 by default); a head with more is refused by hyper.
const MAX_HEADERS: usize = 128;

/// What the watch learned about a connection, shared with the service serving it.
#[derive(Debug, Default)]
pub struct Verdicts {
    /// Requests handed to the service so far.
    served: AtomicU64,
    /// Number of the first request with both `Content-Length` and `Transfer-Encoding`; 0: none.
    conflicting: AtomicU64,
}

impl Verdicts {
    /// Called once per request, in order: whether this one declared both lengths.
    pub fn next_request_is_conflicting(&self) -> bool {
        let number = self.served.fetch_add(1, Ordering::Relaxed) + 1;
        // The head was read (and flagged) before hyper could hand its request over.
        self.conflicting.load(Ordering::Relaxed) == number
    }
}

/// An HTTP/1 connection's byte stream, with its request framing watched.
pub struct Watched<T> {
    io: T,
    scanner: Scanner,
    verdicts: Arc<Verdicts>,
}

impl<T> Watched<T> {
    /// `max_head` bounds how much of a head split over several reads is kept; `verdicts` is
    /// what the connection's service reads.
    pub fn new(io: T, max_head: usize, verdicts: Arc<Verdicts>) -> Self {
        Watched {
            io,
            scanner: Scanner::new(max_head),
            verdicts,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        if !this.scanner.is_done()
            && let Some(number) = this.scanner.feed(&buf.filled()[before..])
        {
            this.verdicts.conflicting.store(number, Ordering::Relaxed);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Where the scanner is in the request stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Between requests or inside a head (partial bytes kept in `Scanner::head`).
    Head,
    /// Inside a `Content-Length` body: bytes left.
    Body(u64),
    /// Inside a chunked body.
    Chunked(Chunk),
    /// Not watching any more (see the module docs).
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunk {
    /// Hex digits of a chunk size (`digits` counts up to 255; leading zeros are allowed).
    Size {
        size: u64,
        digits: u8,
    },
    /// A chunk extension, up to CR.
    Extension {
        size: u64,
    },
    /// LF after the size line.
    SizeLf {
        size: u64,
    },
    /// Chunk data: bytes left.
    Data(u64),
    /// CR, then LF after chunk data.
    DataCr,
    DataLf,
    /// A trailer line (after the last chunk): `empty` while nothing but CR was seen.
    Trailer {
        empty: bool,
    },
    TrailerLf {
        empty: bool,
    },
}

/// Follows request heads and body framing through the bytes of one connection.
pub(crate) struct Scanner {
    pub(crate) state: State,
    /// A head split over reads, kept until it is complete.
    head: Vec<u8>,
    max_head: usize,
    /// Heads seen so far.
    pub(crate) requests: u64,
}

impl Scanner {
    pub(crate) fn new(max_head: usize) -> Self {
        Scanner {
            state: State::Head,
            head: Vec::new(),
            max_head,
            requests: 0,
        }
    }

    fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes the next bytes of the stream; returns the number of a request that declared
    /// both lengths, if these bytes completed its head.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) -> Option<u64> {
        while !bytes.is_empty() {
            match self.state {
                State::Done => return None,
                State::Head => {
                    let (consumed, flagged) = self.head_bytes(bytes);
                    if flagged.is_some() {
                        return flagged;
                    }
                    bytes = &bytes[consumed..];
                }
                State::Body(left) => {
                    let take = left.min(bytes.len() as u64);
                    bytes = &bytes[take as usize..];
                    self.state = if take == left {
                        State::Head
                    } else {
                        State::Body(left - take)
                    };
                }
                State::Chunked(Chunk::Data(left)) => {
                    let take = left.min(bytes.len() as u64);
                    bytes = &bytes[take as usize..];
                    self.state = State::Chunked(if take == left {
                        Chunk::DataCr
                    } else {
                        Chunk::Data(left - take)
                    });
                }
                State::Chunked(chunk) => {
                    self.state = chunked_step(chunk, bytes[0]);
                    bytes = &bytes[1..];
                }
            }
        }
        None
    }

    /// Parses a head from `bytes` (after any kept partial head): returns how many of `bytes`
    /// it consumed and the request number when the head declares both lengths.
    fn head_bytes(&mut self, bytes: &[u8]) -> (usize, Option<u64>) {
        // Left uninitialized (as hyper's own parser does): zeroing 4 KiB of header slots for
        // every head this watch reads would cost more than the parse.
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut []);
        let kept = self.head.len();
        let parsed = if kept == 0 {
            request.parse_with_uninit_headers(bytes, &mut headers)
        } else {
            self.head.extend_from_slice(bytes);
            request.parse_with_uninit_headers(&self.head, &mut headers)
        };
        match parsed {
            Ok(httparse::Status::Complete(end)) => {
                self.requests += 1;
                let framing = Framing::of(&request);
                self.state = framing.next_state();
                let flagged = framing.conflicting().then_some(self.requests);
                if flagged.is_some() {
                    self.state = State::Done;
                }
                self.head = Vec::new();
                (end - kept, flagged)
            }
            Ok(httparse::Status::Partial) => {
                if kept == 0 {
                    self.head.extend_from_slice(bytes);
                }
                if self.head.len() > self.max_head {
                    // hyper refuses such a head itself (431) and closes the connection.
                    self.stop();
                }
                (bytes.len(), None)
            }
            Err(_) => {
                // Not an HTTP/1.x head (the HTTP/2 preface, garbage): hyper answers or closes.
                self.stop();
                (bytes.len(), None)
            }
        }
    }

    fn stop(&mut self) {
        self.state = State::Done;
        self.head = Vec::new();
    }
}

/// One step of the chunked-body grammar (RFC 9112 §7.1) on one byte; anything unexpected
/// stops the watch (hyper refuses it, or the stream is no longer followed).
fn chunked_step(chunk: Chunk, byte: u8) -> State {
    let next = match (chunk, byte) {
        (Chunk::Size { size, digits }, b'\r') if digits > 0 => Chunk::SizeLf { size },
        // An extension, or whitespace before one (hyper tolerates it): skipped up to CR.
        (Chunk::Size { size, digits }, b';' | b' ' | b'\t') if digits > 0 => {
            Chunk::Extension { size }
        }
        // Any number of digits whose value fits 64 bits, as hyper reads them: a cap on the
        // digit count would stop the watch on `000…05` that hyper accepts. (hyper refuses an
        // overflowing size, and so does this.)
        (Chunk::Size { size, digits }, _) if size >> 60 == 0 => match (byte as char).to_digit(16) {
            Some(d) => Chunk::Size {
                size: size << 4 | u64::from(d),
                digits: digits.saturating_add(1),
            },
            None => return State::Done,
        },
        (Chunk::Extension { size }, b'\r') => Chunk::SizeLf { size },
        (Chunk::Extension { .. }, b'\n') => return State::Done,
        (Chunk::Extension { size }, _) => Chunk::Extension { size },
        (Chunk::SizeLf { size: 0 }, b'\n') => Chunk::Trailer { empty: true },
        (Chunk::SizeLf { size }, b'\n') => Chunk::Data(size),
        (Chunk::DataCr, b'\r') => Chunk::DataLf,
        (Chunk::DataLf, b'\n') => Chunk::Size { size: 0, digits: 0 },
        (Chunk::Trailer { empty }, b'\r') => Chunk::TrailerLf { empty },
        (Chunk::Trailer { .. }, _) => Chunk::Trailer { empty: false },
        (Chunk::TrailerLf { empty: true }, b'\n') => return State::Head,
        (Chunk::TrailerLf { empty: false }, b'\n') => Chunk::Trailer { empty: true },
        _ => return State::Done,
    };
    State::Chunked(next)
}

/// A `Content-Length` value as hyper reads it: a comma-separated list of equal decimal numbers
/// (RFC 9110 §8.6 allows `5, 5`); anything else is invalid (hyper refuses it).
fn content_length(value: &[u8]) -> Option<u64> {
    let mut length = None;
    for part in value.split(|b| *b == b',') {
        let digits = part.trim_ascii();
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = std::str::from_utf8(digits).ok()?.parse::<u64>().ok()?;
        if length.is_some_and(|previous| previous != n) {
            return None;
        }
        length = Some(n);
    }
    length
}

/// How a request head frames its body, as far as the watch needs to know.
struct Framing {
    content_length: Option<Option<u64>>,
    transfer_encoding: Option<bool>,
}

impl Framing {
    fn of(request: &httparse::Request<'_, '_>) -> Framing {
        let mut framing = Framing {
            content_length: None,
            transfer_encoding: None,
        };
        for header in request.headers.iter() {
            if header.name.eq_ignore_ascii_case("content-length") {
                let length = content_length(header.value);
                framing.content_length = Some(match framing.content_length {
                    // Repeats must agree (hyper refuses them otherwise).
                    Some(previous) if previous != length => None,
                    _ => length,
                });
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                // The final coding decides: `chunked` must be last (hyper refuses it otherwise).
                let chunked = header
                    .value
                    .rsplit(|b| *b == b',')
                    .next()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
                framing.transfer_encoding = Some(chunked);
            }
        }
        framing
    }

    fn conflicting(&self) -> bool {
        self.content_length.is_some() && self.transfer_encoding.is_some()
    }

    /// Where the stream goes after this head.
    fn next_state(&self) -> State {
        match (self.transfer_encoding, self.content_length) {
            (Some(true), _) => State::Chunked(Chunk::Size { size: 0, digits: 0 }),
            (Some(false), _) => State::Done,
            (None, Some(Some(0)) | None) => State::Head,
            (None, Some(Some(length))) => State::Body(length),
            (None, Some(None)) => State::Done,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> (Vec<u64>, Scanner) {
        let mut scanner = Scanner::new(8192);
        let flagged = chunks.iter().filter_map(|c| scanner.feed(c)).collect();
        (flagged, scanner)
    }

    /// Every split of `stream` into two reads gives the same result as one read.
    fn scan_all_splits(stream: &[u8]) -> (Vec<u64>, u64, State) {
        let (flagged, scanner) = scan(&[stream]);
        for at in 1..stream.len() {
            let (split_flagged, split) = scan(&[&stream[..at], &stream[at..]]);
            assert_eq!(split_flagged, flagged, "split at {at}");
            assert_eq!(split.requests, scanner.requests, "split at {at}");
            assert_eq!(split.state, scanner.state, "split at {at}");
        }
        (flagged, scanner.requests, scanner.state)
    }

    #[test]
    fn follows_keep_alive_requests_through_both_body_framings() {
        let stream = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
            POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
            5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nx-trailer: 1\r\n\r\n\
            GET /c HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(scan_all_splits(stream), (vec![], 3, State::Head));
    }

    #[test]
    fn flags_the_request_that_declares_both_lengths_in_either_order() {
        for both in [
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
            "content-length: 0\r\ntransfer-encoding: gzip, chunked\r\n",
        ] {
            let stream =
                format!("GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST / HTTP/1.1\r\n{both}\r\n0\r\n\r\n");
            let (flagged, requests, state) = scan_all_splits(stream.as_bytes());
            assert_eq!(flagged, vec![2], "{both:?}");
            assert_eq!((requests, state), (2, State::Done));
        }
    }

    #[test]
    fn a_body_that_looks_like_a_conflicting_head_is_not_flagged() {
        let body = "POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let stream = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}GET / HTTP/1.1\r\n\r\n",
            body.len()
        );
        assert_eq!(scan_all_splits(stream.as_bytes()), (vec![], 2, State::Head));
        let chunked = format!(
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        );
        assert_eq!(
            scan_all_splits(chunked.as_bytes()),
            (vec![], 1, State::Head)
        );
    }

    #[test]
    fn chunk_sizes_may_have_leading_zeros_but_not_overflow() {
        let padded = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
            00000000000000000005\r\nhello\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        assert_eq!(scan_all_splits(padded), (vec![], 2, State::Head));
        let overflow = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
            10000000000000000\r\nhello\r\n0\r\n\r\n";
        assert_eq!(scan_all_splits(overflow), (vec![], 1, State::Done));
    }

    #[test]
    fn stops_watching_where_the_next_head_is_unknown() {
        for stream in [
            // HTTP/2 prior knowledge.
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
            // Malformed chunking and lengths hyper refuses.
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        ] {
            let (flagged, _, state) = scan_all_splits(stream);
            assert_eq!((flagged, state), (vec![], State::Done), "{stream:?}");
        }
        // Once stopped, a conflicting head later on is not looked at.
        let (flagged, _) = scan(&[
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        ]);
        assert!(flagged.is_empty());
    }

    /// A client cannot switch the watch off by asking for a protocol switch the gateway will
    /// not grant (`Upgrade: x`, `h2c`, CONNECT): hyper reads on, and so does the watch.
    #[test]
    fn requests_asking_to_switch_protocols_are_followed() {
        let conflicting =
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        for asking in [
            "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "GET / HTTP/1.1\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\r\n",
            "CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n",
            "POST /x HTTP/1.1\r\nUpgrade: x\r\nContent-Length: 3\r\n\r\nabc",
        ] {
            let stream = format!("{asking}{conflicting}");
            assert_eq!(
                scan_all_splits(stream.as_bytes()),
                (vec![2], 2, State::Done),
                "{asking:?}"
            );
        }
    }

    /// Found by fuzzing (fuzz/regressions/chunked): hyper reads a chunk size with leading zeros
    /// past 16 digits; a watch that stopped there missed the conflicting request after it.
    #[test]
    fn chunk_sizes_with_many_leading_zeros_are_followed() {
        let conflicting =
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let stream = format!(
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
             {zeros}5\r\nhello\r\n0315425F425FF778;x\r\n",
            zeros = "0".repeat(40)
        );
        let (flagged, requests, state) = scan_all_splits(stream.as_bytes());
        assert_eq!((flagged, requests), (vec![], 1));
        assert_eq!(state, State::Chunked(Chunk::Data(0x0315_425F_425F_F778)));
        let stream = format!(
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
             00000000000000000000005\r\nhello\r\n0\r\n\r\n{conflicting}"
        );
        assert_eq!(
            scan_all_splits(stream.as_bytes()),
            (vec![2], 2, State::Done)
        );
        // A size that does not fit 64 bits is refused by hyper: the watch stops.
        let (_, scanner) = scan(&[b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
            10000000000000000\r\n"]);
        assert_eq!(scanner.state, State::Done);
    }

    /// Found by fuzzing (fuzz/regressions/framing_watch): hyper upgrades only HTTP/1.1
    /// requests, so after an HTTP/1.0 one with `Upgrade` the next head is still HTTP/1.
    #[test]
    fn an_upgrade_header_on_http_1_0_does_not_stop_the_watch() {
        let stream = "GET /ws HTTP/1.0\r\nUpgrade: websocket\r\nConnection: keep-alive\r\n\r\n\
            POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            scan_all_splits(stream.as_bytes()),
            (vec![2], 2, State::Done)
        );
    }

    /// Found by fuzzing (fuzz/regressions/framing_watch): hyper accepts a `Content-Length` list
    /// of equal values; a watch that stopped on it missed the conflicting request after it.
    #[test]
    fn content_length_lists_of_equal_values_are_followed() {
        for value in ["5, 5", "5,5", " 5 ,\t5", "000005,5"] {
            let stream = format!(
                "POST / HTTP/1.1\r\nContent-Length: {value}\r\n\r\nhello\
                 POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
            );
            assert_eq!(
                scan_all_splits(stream.as_bytes()),
                (vec![2], 2, State::Done),
                "{value:?}"
            );
        }
        // Lists hyper refuses stop the watch.
        for value in ["5, 6", "5,", ",5", "+5", "5 5", "0x5"] {
            let stream = format!("POST / HTTP/1.1\r\nContent-Length: {value}\r\n\r\nhello");
            let (flagged, _, state) = scan_all_splits(stream.as_bytes());
            assert_eq!((flagged, state), (vec![], State::Done), "{value:?}");
        }
    }

    #[test]
    fn an_oversized_partial_head_stops_the_watch_and_frees_its_buffer() {
        let mut scanner = Scanner::new(64);
        assert_eq!(scanner.feed(b"GET / HTTP/1.1\r\nx-long: "), None);
        assert_eq!(scanner.feed(&[b'a'; 100]), None);
        assert_eq!((scanner.state, scanner.head.capacity()), (State::Done, 0));
    }

    #[test]
    fn verdicts_refuse_only_the_flagged_request() {
        let verdicts = Verdicts::default();
        verdicts.conflicting.store(2, Ordering::Relaxed);
        let refused: Vec<bool> = (0..3)
            .map(|_| verdicts.next_request_is_conflicting())
            .collect();
        assert_eq!(refused, [false, true, false]);
    }
}
