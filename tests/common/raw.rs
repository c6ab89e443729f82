//! Raw HTTP/1.1 over TCP, for what a client library would not send: reading responses by
//! hand, whole or one at a time on a connection that stays open.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug)]
pub struct Raw {
    /// `HTTP/1.1`, as the status line says.
    pub version: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Raw {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| {
            panic!(
                "not JSON ({}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn message(&self) -> String {
        self.json()["message"]
            .as_str()
            .expect("an error message")
            .to_owned()
    }
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A de-chunked body, or `None` while incomplete.
pub fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = find(rest, b"\r\n")?;
        let size_line = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size_text = size_line.split(';').next()?.trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            // Trailers (if any) end with an empty line.
            find(rest, b"\r\n")?;
            return Some(out);
        }
        if rest.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// One complete response at the start of `buf`, if there is one. `eof`: the peer closed, so a
/// body without a length ends here.
pub fn parse_response(buf: &[u8], eof: bool) -> Option<Raw> {
    let end = find(buf, b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let mut status_line = lines.next()?.split(' ');
    let version = status_line.next()?.to_owned();
    let status: u16 = status_line.next()?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let rest = &buf[end + 4..];
    let body = if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(rest)?
    } else if let Some(len) = get("content-length") {
        let len: usize = len.parse().ok()?;
        if rest.len() < len {
            return None;
        }
        rest[..len].to_vec()
    } else if eof {
        rest.to_vec()
    } else if status < 200 || status == 204 || status == 304 {
        Vec::new()
    } else {
        return None;
    };
    Some(Raw {
        version,
        status,
        headers,
        body,
    })
}

/// Reads one response from a connection that stays open.
pub async fn read_response<S: AsyncRead + Unpin>(stream: &mut S) -> Raw {
    let mut buf = Vec::new();
    loop {
        if let Some(response) = parse_response(&buf, false) {
            return response;
        }
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .expect("a response within 5 s")
            .expect("read");
        assert!(
            n > 0,
            "closed mid-response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Everything the peer sends until it closes (a reset after data counts as closing).
pub async fn read_until_closed<S: AsyncRead + Unpin>(stream: &mut S) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk)).await {
            Err(_) => panic!(
                "neither answered nor closed within 5 s: {:?}",
                String::from_utf8_lossy(&buf)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return buf,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Writes `request` on a new connection and reads the answer until the gateway closes.
pub async fn raw(addr: SocketAddr, request: impl AsRef<[u8]>) -> Raw {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The gateway may answer and close before reading everything: a failed write is fine.
    let _ = stream.write_all(request.as_ref()).await;
    let bytes = read_until_closed(&mut stream).await;
    parse_response(&bytes, true).unwrap_or_else(|| {
        panic!(
            "no complete response in {:?}",
            String::from_utf8_lossy(&bytes)
        )
    })
}

/// Writes `request` on a new connection and reads one response; the connection stays open
/// for what the test does next.
pub async fn exchange(addr: SocketAddr, request: impl AsRef<[u8]>) -> (TcpStream, Raw) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_ref()).await.unwrap();
    let response = read_response(&mut stream).await;
    (stream, response)
}
