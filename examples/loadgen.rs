//! A small HTTP/1.1 load generator for `benches/compare/run.sh`, for what wrk cannot do here
//! (Debian has no wrk2):
//!
//! - `fixed`: open loop at a fixed rate. Request `i` is due at `start + i / rate`, spread
//!   round-robin over `--connections` keep-alive connections. When its connection was still
//!   busy with the previous response at the due time, the latency is measured from the due
//!   time, so a stalled server is charged for the requests queued behind the stall (no
//!   coordinated omission); otherwise from the moment it is sent, so the timer's millisecond
//!   granularity is not charged to the server.
//! - `once`: closed loop, every token of `--tokens` sent exactly once (fills a cache).
//!
//! Prints one JSON line. Latencies in microseconds.
//!
//! `cargo run --release --example loadgen -- fixed --url http://127.0.0.1:8080/ --rate 2000`

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http::{HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

#[derive(Parser)]
#[command(about = "Fixed-rate and token-sweep HTTP/1.1 load generator")]
struct Args {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Parser, Clone)]
struct Target {
    /// `http://host:port/path` (plain HTTP only).
    #[arg(long)]
    url: Uri,
    #[arg(long, default_value = "GET")]
    method: Method,
    /// `Name: value`, repeatable.
    #[arg(long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Request body (sent with `content-length`).
    #[arg(long, default_value = "")]
    body: String,
    /// One token per line; each request carries the next one (round-robin) in `--token-header`.
    #[arg(long)]
    tokens: Option<PathBuf>,
    #[arg(long, default_value = "x-access-token")]
    token_header: HeaderName,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 16)]
    connections: usize,
}

#[derive(Subcommand)]
enum Mode {
    /// Open loop at `--rate` requests per second.
    Fixed {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        rate: f64,
        /// Seconds of measured load.
        #[arg(long, default_value_t = 8.0)]
        duration: f64,
        /// Seconds of load before the measured part (latencies discarded).
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
    },
    /// Every token of `--tokens` exactly once, as fast as `--connections` allow.
    Once {
        #[command(flatten)]
        target: Target,
    },
}

/// What every connection needs to build its requests.
struct Plan {
    authority: String,
    addr: String,
    method: Method,
    path: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
    tokens: Vec<HeaderValue>,
    token_header: HeaderName,
}

impl Plan {
    fn new(target: &Target) -> Result<Plan> {
        if target.url.scheme_str() != Some("http") {
            bail!("only http:// URLs");
        }
        let authority = target
            .url
            .authority()
            .context("URL without host")?
            .to_string();
        let port = target.url.port_u16().unwrap_or(80);
        let host = target.url.host().context("URL without host")?;
        let mut headers = Vec::new();
        for h in &target.headers {
            let (name, value) = h
                .split_once(':')
                .with_context(|| format!("header {h:?} is not `Name: value`"))?;
            headers.push((
                HeaderName::from_bytes(name.trim().as_bytes())?,
                HeaderValue::from_str(value.trim())?,
            ));
        }
        let tokens = match &target.tokens {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| HeaderValue::from_str(l.trim()))
                .collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        if target.tokens.is_some() && tokens.is_empty() {
            bail!("the token file is empty");
        }
        Ok(Plan {
            addr: format!("{host}:{port}"),
            authority,
            method: target.method.clone(),
            path: target
                .url
                .path_and_query()
                .map_or("/".to_owned(), |p| p.to_string()),
            headers,
            body: Bytes::from(target.body.clone()),
            tokens,
            token_header: target.token_header.clone(),
        })
    }

    fn request(&self, i: usize) -> Request<Full<Bytes>> {
        let mut request = Request::builder()
            .method(self.method.clone())
            .uri(self.path.as_str())
            .header(http::header::HOST, self.authority.as_str());
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        if !self.tokens.is_empty() {
            request = request.header(
                &self.token_header,
                self.tokens[i % self.tokens.len()].clone(),
            );
        }
        if !self.body.is_empty() {
            request = request.header(http::header::CONTENT_LENGTH, self.body.len());
        }
        request
            .body(Full::new(self.body.clone()))
            .expect("a valid request")
    }
}

/// One keep-alive connection, reopened when the server closes it.
struct Connection {
    plan: Arc<Plan>,
    sender: Option<http1::SendRequest<Full<Bytes>>>,
}

impl Connection {
    /// `Ok(status)`, or `Err` when no response came (connection failure).
    async fn send(&mut self, i: usize) -> Result<u16> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = TcpStream::connect(&self.plan.addr)
                .await
                .with_context(|| format!("connecting to {}", self.plan.addr))?;
            stream.set_nodelay(true)?;
            let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            self.sender = Some(sender);
        }
        let sender = self.sender.as_mut().expect("connected above");
        sender.ready().await?;
        let response = sender.send_request(self.plan.request(i)).await?;
        let status = response.status().as_u16();
        response.into_body().collect().await?;
        Ok(status)
    }
}

#[derive(Default)]
struct Outcome {
    latencies_us: Vec<u32>,
    ok: usize,
    /// Non-2xx responses, by status.
    statuses: std::collections::BTreeMap<u16, usize>,
    failures: usize,
    first_failure: Option<String>,
}

impl Outcome {
    fn record(&mut self, result: Result<u16>) -> bool {
        match result {
            Ok(status) if (200..300).contains(&status) => {
                self.ok += 1;
                true
            }
            Ok(status) => {
                *self.statuses.entry(status).or_default() += 1;
                true
            }
            Err(e) => {
                self.failures += 1;
                self.first_failure.get_or_insert_with(|| format!("{e:#}"));
                false
            }
        }
    }

    fn merge(&mut self, other: Outcome) {
        self.latencies_us.extend(other.latencies_us);
        self.ok += other.ok;
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        self.failures += other.failures;
        if self.first_failure.is_none() {
            self.first_failure = other.first_failure;
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    // One thread: the generator shares its core with the origin and must stay light.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match args.mode {
            Mode::Fixed {
                target,
                rate,
                duration,
                warmup,
            } => fixed(target, rate, duration, warmup).await,
            Mode::Once { target } => once(target).await,
        }
    })
}

async fn fixed(target: Target, rate: f64, duration: f64, warmup: f64) -> Result<()> {
    if !(rate > 0.0 && duration > 0.0 && warmup >= 0.0) {
        bail!("--rate and --duration must be positive");
    }
    let plan = Arc::new(Plan::new(&target)?);
    let connections = target.connections.max(1);
    let total = ((warmup + duration) * rate).round() as usize;
    let measured_from = (warmup * rate).round() as usize;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..connections {
        let plan = plan.clone();
        tasks.spawn(async move {
            let mut connection = Connection { plan, sender: None };
            let mut outcome = Outcome::default();
            let mut previous_done = start;
            for i in (c..total).step_by(connections) {
                let due = start + interval.mul_f64(i as f64);
                tokio::time::sleep_until(due).await;
                let from = if previous_done > due {
                    due
                } else {
                    tokio::time::Instant::now()
                };
                let result = connection.send(i).await;
                previous_done = tokio::time::Instant::now();
                let latency = previous_done - from;
                let answered = outcome.record(result);
                if i >= measured_from && answered {
                    outcome
                        .latencies_us
                        .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
                }
                if !answered {
                    connection.sender = None;
                }
            }
            outcome
        });
    }
    let mut all = Outcome::default();
    while let Some(outcome) = tasks.join_next().await {
        all.merge(outcome?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    report("fixed", &all, total, elapsed, Some(rate));
    Ok(())
}

async fn once(target: Target) -> Result<()> {
    let plan = Arc::new(Plan::new(&target)?);
    if plan.tokens.is_empty() {
        bail!("`once` needs --tokens");
    }
    let total = plan.tokens.len();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..target.connections.max(1) {
        let (plan, next) = (plan.clone(), next.clone());
        tasks.spawn(async move {
            let mut connection = Connection { plan, sender: None };
            let mut outcome = Outcome::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let sent = Instant::now();
                let result = connection.send(i).await;
                let latency = sent.elapsed();
                if outcome.record(result) {
                    outcome
                        .latencies_us
                        .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
                } else {
                    connection.sender = None;
                }
            }
            outcome
        });
    }
    let mut all = Outcome::default();
    while let Some(outcome) = tasks.join_next().await {
        all.merge(outcome?);
    }
    report("once", &all, total, started.elapsed().as_secs_f64(), None);
    Ok(())
}

fn report(mode: &str, outcome: &Outcome, sent: usize, elapsed: f64, rate: Option<f64>) {
    let mut latencies = outcome.latencies_us.clone();
    latencies.sort_unstable();
    let pct = |p: f64| -> u32 {
        if latencies.is_empty() {
            return 0;
        }
        let rank = ((p / 100.0) * latencies.len() as f64).ceil() as usize;
        latencies[rank.clamp(1, latencies.len()) - 1]
    };
    let statuses: serde_json::Map<String, serde_json::Value> = outcome
        .statuses
        .iter()
        .map(|(s, n)| (s.to_string(), (*n).into()))
        .collect();
    let line = serde_json::json!({
        "mode": mode,
        "target_rate": rate,
        "sent": sent,
        "ok": outcome.ok,
        "non_2xx": statuses,
        "failures": outcome.failures,
        "first_failure": outcome.first_failure,
        "elapsed_s": (elapsed * 1000.0).round() / 1000.0,
        "rps": ((outcome.ok as f64 / elapsed) * 10.0).round() / 10.0,
        "measured": latencies.len(),
        "p50_us": pct(50.0),
        "p90_us": pct(90.0),
        "p99_us": pct(99.0),
        "p999_us": pct(99.9),
        "max_us": latencies.last().copied().unwrap_or(0),
    });
    println!("{line}");
}
