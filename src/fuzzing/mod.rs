//! Fuzz targets: one function per target, taking the fuzzer's bytes and panicking when an
//! invariant of the code under test breaks (not merely when it panics by itself).
//!
//! The libFuzzer binaries in `fuzz/` call these, and `tests/fuzz_corpora.rs` replays every
//! committed corpus file through them, so `cargo test` keeps the fuzzers' findings fixed
//! without a fuzzer. Adding a target: see `fuzz/README.md`.

mod chunked;
mod client_addr;
mod config;
mod framing;
mod headers;
mod host;
mod jwt;
mod path;
mod tokens;
mod ws_frames;

pub use chunked::chunked;
pub use client_addr::{forwarded_for, proxy_header};
pub use config::config_toml;
pub use framing::framing_watch;
pub use headers::header_rewrite;
#[cfg(test)]
pub(crate) use headers::rewrite_and_check;
pub use host::host_authority;
pub use jwt::jwt_header;
pub use path::path_and_route;
pub use tokens::{cookies, token_extraction};
pub use ws_frames::ws_frames;

/// A fuzz target: takes any bytes, panics when an invariant breaks.
pub type Target = fn(&[u8]);

/// Every target, by the name of its fuzz binary and corpus directory (`fuzz/corpus/<name>/`).
pub const TARGETS: &[(&str, Target)] = &[
    ("framing_watch", framing_watch),
    ("chunked", chunked),
    ("path_and_route", path_and_route),
    ("token_extraction", token_extraction),
    ("jwt_header", jwt_header),
    ("cookies", cookies),
    ("config_toml", config_toml),
    ("host_authority", host_authority),
    ("header_rewrite", header_rewrite),
    ("ws_frames", ws_frames),
    ("forwarded_for", forwarded_for),
    ("proxy_header", proxy_header),
];

/// Reads structure (choices, lengths, split points) off the front of a fuzz input; every
/// reader returns a default once the bytes run out, so any input is a valid one.
pub(crate) struct Input<'a> {
    bytes: &'a [u8],
}

impl<'a> Input<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Input { bytes }
    }

    pub(crate) fn byte(&mut self) -> u8 {
        match self.bytes.split_first() {
            Some((&b, rest)) => {
                self.bytes = rest;
                b
            }
            None => 0,
        }
    }

    pub(crate) fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    /// Up to `n` bytes.
    pub(crate) fn take(&mut self, n: usize) -> &'a [u8] {
        let (taken, rest) = self.bytes.split_at(n.min(self.bytes.len()));
        self.bytes = rest;
        taken
    }

    /// A chunk prefixed by its one-byte length.
    pub(crate) fn chunk(&mut self) -> &'a [u8] {
        let n = usize::from(self.byte());
        self.take(n)
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}
