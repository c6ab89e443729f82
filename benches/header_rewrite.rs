//! Request header rewriting for the upstream (`proxy::headers::prepare_headers`) on what a
//! browser sends through the gateway: 12 headers, including a token and cookies. The map is
//! cloned outside the timed part; `clone_only` shows what that clone costs.
//!
//! Run: `cargo bench --bench header_rewrite`.

use std::net::SocketAddr;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue};
use meiro_gate::auth::Principal;
use meiro_gate::proxy::headers::{Downstream, prepare_headers};
use meiro_gate::store::{Role, UserId};

fn browser_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("host", "app.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        ),
        ("accept", "application/json, text/plain, */*"),
        ("accept-language", "en-US,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("referer", "https://app.example.com/segments/42"),
        ("origin", "https://app.example.com"),
        ("connection", "keep-alive"),
        (
            "cookie",
            "meiro_access_token=eyJhbGciOiJFUzI1NiJ9.e30.sig; _ga=GA1.1.1234567890.1700000000",
        ),
        (
            "x-access-token",
            "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6IjAwMDE3MzI4NjQwMDAwMC1hYmNkZWYwMSJ9.eyJpc3MiOiJodHRwOi8vMTI3LjAuMC4xOjgwODAifQ.c2lnbmF0dXJl",
        ),
        ("sec-fetch-mode", "cors"),
        ("x-forwarded-for", "203.0.113.7"),
    ] {
        headers.append(name, HeaderValue::from_static(value));
    }
    headers
}

fn header_rewrite(c: &mut Criterion) {
    let template = browser_headers();
    let principal = Principal::new(UserId::new_random(), "someone@example.com", Role::User);
    let client: SocketAddr = "198.51.100.23:54321".parse().unwrap();
    let host = template.get("host").cloned();

    c.bench_function("header_rewrite/clone_only", |b| b.iter(|| template.clone()));

    c.bench_function("header_rewrite/prepare_headers_12_headers", |b| {
        b.iter_batched(
            || template.clone(),
            |mut headers| {
                prepare_headers(
                    &mut headers,
                    Downstream {
                        client,
                        proto: "http",
                        host: host.clone(),
                        principal: Some(&principal),
                        upgrade: None,
                        underscores_allowed: true,
                    },
                );
                headers
            },
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, header_rewrite);
criterion_main!(benches);
