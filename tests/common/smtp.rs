//! `SmtpSink`: a small real SMTP server (RFC 5321, no TLS, no AUTH) on 127.0.0.1 that records
//! what it receives, plus MIME helpers to pull the text body (and its links) out of a message.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::{JoinHandle, JoinSet};

// Declared here, not beside it in `common/mod.rs` (which re-exports it): `src/mail` includes
// this file on its own for its unit tests, and the sink's tasks are watched there too.
#[path = "fake.rs"]
pub mod fake;

use fake::Tasks;

/// Longest command or data line accepted (RFC 5321 §4.5.3.1.6 allows 1000 with CRLF; some
/// slack for clients that fold late).
const MAX_LINE: usize = 8192;

/// One message as the sink received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMail {
    /// Reverse path of `MAIL FROM` (without `<>`).
    pub from: String,
    /// Forward paths of every accepted `RCPT TO`.
    pub to: Vec<String>,
    /// The message as sent after `DATA`, dot-unstuffed, CRLF line endings, without the final
    /// `.` line.
    pub data: String,
}

impl ReceivedMail {
    /// The decoded `text/plain` body (see [`text_body_of`]).
    pub fn text_body(&self) -> Option<String> {
        text_body_of(&self.data)
    }

    /// The decoded `text/html` body.
    pub fn html_body(&self) -> Option<String> {
        body_of_type(&self.data, "text/html")
    }

    /// The unfolded value of the first top-level header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        let (head, _) = split_head(&self.data);
        header_value(head, name)
    }

    /// The first whitespace-delimited word of the text body that starts with `prefix`, e.g.
    /// `mail.link_starting_with("http://127.0.0.1:")`.
    pub fn link_starting_with(&self, prefix: &str) -> Option<String> {
        link_in(&self.text_body()?, prefix)
    }
}

/// The first whitespace-delimited word of `text` starting with `prefix`.
pub fn link_in(text: &str, prefix: &str) -> Option<String> {
    text.split_whitespace()
        .find(|word| word.starts_with(prefix))
        .map(str::to_owned)
}

/// The decoded `text/plain` part of a raw RFC 5322 message (also an `.eml` file from the file
/// outbox): the first such part of a multipart tree, or the body of a single-part message
/// without a `Content-Type` (RFC 2045 default). Decodes quoted-printable and base64.
pub fn text_body_of(raw: &str) -> Option<String> {
    body_of_type(raw, "text/plain")
}

/// The decoded first part of MIME type `mime` (e.g. `text/html`) in a raw message.
pub fn body_of_type(raw: &str, mime: &str) -> Option<String> {
    let (head, body) = split_head(raw);
    let content_type = header_value(head, "content-type").unwrap_or_else(|| "text/plain".into());
    let (type_, params) = match content_type.split_once(';') {
        Some((t, p)) => (t.trim().to_ascii_lowercase(), p),
        None => (content_type.trim().to_ascii_lowercase(), ""),
    };
    if type_.starts_with("multipart/") {
        let boundary = param(params, "boundary")?;
        return parts(body, &boundary).find_map(|part| body_of_type(part, mime));
    }
    if type_ != mime {
        return None;
    }
    let encoding = header_value(head, "content-transfer-encoding")
        .unwrap_or_else(|| "7bit".into())
        .to_ascii_lowercase();
    let bytes = match encoding.as_str() {
        "quoted-printable" => decode_quoted_printable(body),
        "base64" => {
            let compact: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
            base64::engine::general_purpose::STANDARD
                .decode(compact)
                .ok()?
        }
        _ => body.as_bytes().to_vec(),
    };
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// Head and body, split at the first empty line (`\r\n\r\n`, or `\n\n` for LF-only input).
fn split_head(raw: &str) -> (&str, &str) {
    if let Some(i) = raw.find("\r\n\r\n") {
        (&raw[..i], &raw[i + 4..])
    } else if let Some(i) = raw.find("\n\n") {
        (&raw[..i], &raw[i + 2..])
    } else {
        (raw, "")
    }
}

/// The unfolded value of header `name` in `head` (RFC 5322 §2.2.3).
fn header_value(head: &str, name: &str) -> Option<String> {
    let mut found: Option<String> = None;
    for line in head.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with([' ', '\t']) {
            if let Some(value) = found.as_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
            continue;
        }
        if found.is_some() {
            break;
        }
        if let Some((key, value)) = line.split_once(':')
            && key.trim().eq_ignore_ascii_case(name)
        {
            found = Some(value.trim().to_owned());
        }
    }
    found
}

/// Parameter `name` of a header value's `; a=b; c="d"` list.
fn param(params: &str, name: &str) -> Option<String> {
    params.split(';').find_map(|p| {
        let (key, value) = p.split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then(|| value.trim().trim_matches('"').to_owned())
    })
}

/// The body parts between `--boundary` lines; the CRLF before each delimiter belongs to the
/// delimiter (RFC 2046 §5.1.1).
fn parts<'a>(body: &'a str, boundary: &str) -> impl Iterator<Item = &'a str> {
    let delimiter = format!("--{boundary}");
    let mut sections: Vec<&'a str> = Vec::new();
    let mut rest = body;
    while let Some(i) = rest.find(&delimiter) {
        sections.push(&rest[..i]);
        rest = &rest[i + delimiter.len()..];
        if rest.starts_with("--") {
            break;
        }
    }
    // The first section is the preamble.
    sections.into_iter().skip(1).map(|part| {
        let part = part
            .strip_prefix("\r\n")
            .or_else(|| part.strip_prefix('\n'))
            .unwrap_or(part);
        part.strip_suffix("\r\n")
            .or_else(|| part.strip_suffix('\n'))
            .unwrap_or(part)
    })
}

/// RFC 2045 §6.7: `=XX` is a byte, `=` at the end of a line is a soft line break; trailing
/// whitespace on a line was added in transport and is dropped.
pub fn decode_quoted_printable(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut lines = text.split('\n').peekable();
    while let Some(line) = lines.next() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let line = line.trim_end_matches([' ', '\t']);
        let (line, soft_break) = match line.strip_suffix('=') {
            Some(line) => (line, true),
            None => (line, false),
        };
        let bytes = line.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'='
                && let Some(byte) = bytes
                    .get(i + 1..i + 3)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            {
                out.push(byte);
                i += 3;
                continue;
            }
            out.push(bytes[i]);
            i += 1;
        }
        if !soft_break && lines.peek().is_some() {
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

/// A real SMTP server on 127.0.0.1 for integration tests. Accepts every message unless told
/// otherwise with [`SmtpSink::reply_to_rcpt`].
pub struct SmtpSink {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<ReceivedMail>>>,
    arrived: Arc<Notify>,
    rcpt_reply: Arc<Mutex<Option<String>>>,
    stop: watch::Sender<bool>,
    tasks: Tasks,
    task: Option<JoinHandle<()>>,
}

impl SmtpSink {
    /// On a free port of 127.0.0.1.
    pub async fn start() -> SmtpSink {
        Self::start_on("127.0.0.1:0".parse().expect("literal address")).await
    }

    /// On `addr`, e.g. the address of a sink stopped earlier, to simulate a server coming back.
    pub async fn start_on(addr: SocketAddr) -> SmtpSink {
        // Tokio sets SO_REUSEADDR, so the port of a stopped sink can be taken again at once
        // despite its connections in TIME_WAIT.
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("SmtpSink: cannot bind {addr}: {e}"));
        let addr = listener
            .local_addr()
            .expect("bound listener has an address");
        let received: Arc<Mutex<Vec<ReceivedMail>>> = Arc::default();
        let arrived: Arc<Notify> = Arc::default();
        let rcpt_reply: Arc<Mutex<Option<String>>> = Arc::default();
        let (stop, stopped) = watch::channel(false);
        let shared = Shared {
            received: received.clone(),
            arrived: arrived.clone(),
            rcpt_reply: rcpt_reply.clone(),
        };
        let tasks = Tasks::default();
        let task = tasks.spawn(accept_loop(listener, shared, stopped, tasks.clone()));
        SmtpSink {
            addr,
            received,
            arrived,
            rcpt_reply,
            stop,
            tasks,
            task: Some(task),
        }
    }

    /// Closes the listener and every open connection; returns once the port is free.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Everything received so far, oldest first.
    pub fn messages(&self) -> Vec<ReceivedMail> {
        self.tasks.check();
        lock(&self.received).clone()
    }

    /// Waits until at least `n` messages arrived; panics after `timeout` with what did.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<ReceivedMail> {
        let enough = async {
            // `notify_waiters` wakes every `Notified` created before it, polled or not: one
            // made before the count is read misses no message arriving in between.
            loop {
                let arrived = self.arrived.notified();
                if self.messages().len() >= n {
                    break;
                }
                arrived.await;
            }
        };
        let _ = tokio::time::timeout(timeout, enough).await;
        let got = self.messages();
        assert!(
            got.len() >= n,
            "SmtpSink {}: expected {n} message(s) within {timeout:?}, got {}: {got:#?}",
            self.addr,
            got.len()
        );
        got
    }

    /// Makes every later `RCPT TO` answer `reply` (e.g. `"550 5.1.1 no such user"` or
    /// `"451 4.3.0 try again later"`); `None` accepts again.
    pub fn reply_to_rcpt(&self, reply: Option<&str>) {
        *lock(&self.rcpt_reply) = reply.map(str::to_owned);
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        // A sink dropped without `stop` still closes its port and connections.
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.tasks.check_on_drop();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Clone)]
struct Shared {
    received: Arc<Mutex<Vec<ReceivedMail>>>,
    arrived: Arc<Notify>,
    rcpt_reply: Arc<Mutex<Option<String>>>,
}

async fn accept_loop(
    listener: TcpListener,
    shared: Shared,
    mut stopped: watch::Receiver<bool>,
    tasks: Tasks,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                connections.spawn(tasks.watch(serve(stream, shared.clone())));
            }
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    // Aborting drops each connection's stream, which closes the socket.
    connections.shutdown().await;
}

/// One SMTP session. Protocol errors end it quietly: the sink is for tests, the client under
/// test reports its own failures.
async fn serve(stream: TcpStream, shared: Shared) {
    let _ = session(stream, &shared).await;
}

async fn session(stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    write
        .write_all(b"220 smtp-sink.test ESMTP ready\r\n")
        .await?;

    let mut from: Option<String> = None;
    let mut to: Vec<String> = Vec::new();
    loop {
        let Some(line) = read_line(&mut read).await? else {
            return Ok(());
        };
        let (verb, arg) = match line.split_once(' ') {
            Some((verb, arg)) => (verb.to_ascii_uppercase(), arg.trim()),
            None => (line.to_ascii_uppercase(), ""),
        };
        let reply: String = match verb.as_str() {
            "EHLO" => {
                from = None;
                to.clear();
                // No STARTTLS, no AUTH: the sink is plain text only.
                format!("250-smtp-sink.test greets {arg}\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")
            }
            "HELO" => {
                from = None;
                to.clear();
                "250 smtp-sink.test\r\n".into()
            }
            "MAIL" if from.is_some() => "503 5.5.1 nested MAIL command\r\n".into(),
            "MAIL" => match path_after(arg, "FROM:") {
                Some(path) => {
                    from = Some(path);
                    "250 2.1.0 OK\r\n".into()
                }
                None => "501 5.5.4 syntax: MAIL FROM:<address>\r\n".into(),
            },
            "RCPT" if from.is_none() => "503 5.5.1 need MAIL before RCPT\r\n".into(),
            "RCPT" => match path_after(arg, "TO:") {
                Some(path) => match lock(&shared.rcpt_reply).clone() {
                    Some(reply) => format!("{reply}\r\n"),
                    None => {
                        to.push(path);
                        "250 2.1.5 OK\r\n".into()
                    }
                },
                None => "501 5.5.4 syntax: RCPT TO:<address>\r\n".into(),
            },
            "DATA" if to.is_empty() => "503 5.5.1 need RCPT before DATA\r\n".into(),
            "DATA" => {
                write
                    .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                let Some(data) = read_data(&mut read).await? else {
                    return Ok(());
                };
                let mail = ReceivedMail {
                    from: from.take().unwrap_or_default(),
                    to: std::mem::take(&mut to),
                    data,
                };
                lock(&shared.received).push(mail);
                shared.arrived.notify_waiters();
                "250 2.0.0 OK queued\r\n".into()
            }
            "RSET" => {
                from = None;
                to.clear();
                "250 2.0.0 OK\r\n".into()
            }
            "NOOP" => "250 2.0.0 OK\r\n".into(),
            "QUIT" => {
                write.write_all(b"221 2.0.0 Bye\r\n").await?;
                return Ok(());
            }
            _ => "502 5.5.2 command not implemented\r\n".into(),
        };
        write.write_all(reply.as_bytes()).await?;
    }
}

/// `<path>` after `prefix` (case-insensitive), ignoring ESMTP parameters such as `BODY=8BITMIME`.
fn path_after(arg: &str, prefix: &str) -> Option<String> {
    let head = arg.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = arg[prefix.len()..].trim_start();
    let rest = rest.strip_prefix('<')?;
    let end = rest.find('>')?;
    Some(rest[..end].to_owned())
}

/// One line without its line ending; `None` at end of stream.
async fn read_line<R: AsyncBufReadExt + Unpin>(read: &mut R) -> std::io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = read.read_until(b'\n', &mut buf).await?;
    if n == 0 {
        return Ok(None);
    }
    if buf.len() > MAX_LINE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "line too long",
        ));
    }
    while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        buf.pop();
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

/// The message after `354`, up to the `.` line, with dot-stuffing removed (RFC 5321 §4.5.2).
async fn read_data<R: AsyncBufReadExt + Unpin>(read: &mut R) -> std::io::Result<Option<String>> {
    let mut data = String::new();
    loop {
        let Some(line) = read_line(read).await? else {
            return Ok(None);
        };
        if line == "." {
            return Ok(Some(data));
        }
        data.push_str(line.strip_prefix('.').unwrap_or(&line));
        data.push_str("\r\n");
    }
}
