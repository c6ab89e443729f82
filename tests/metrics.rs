//! `GET /metrics` after a scripted mix of traffic through a real gateway: cache hits, forged,
//! missing, revoked and expired tokens, logins that succeed, fail and are rate-limited, an
//! upstream that refuses connections, a 5xx, a retry, an invitation e-mail and a logout. The
//! Prometheus text is parsed and exact values asserted; no label may carry a path, an e-mail
//! address or a token.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{FakeUpstream, Gateway, PASSWORD};
use meiro_gate::store::Role;

/// One sample line: `name{label="value",...} value`.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A small parser of the text exposition format (0.0.4): comments skipped, label values
/// unescaped (`\\`, `\"`, `\n`).
fn parse(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a value after the series");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("labels end with }");
                (name.to_owned(), parse_labels(body))
            }
        };
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    samples
}

fn parse_labels(body: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut chars = body.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        assert_eq!(chars.next(), Some('"'), "label {key} is quoted");
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => panic!("dangling escape"),
                },
                c => value.push(c),
            }
        }
        labels.insert(key, value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    labels
}

struct Scrape(Vec<Sample>);

impl Scrape {
    /// The value of the series with exactly these labels; 0 when absent (a counter not yet
    /// touched), so "never happened" and "happened zero times" read the same.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let found: Vec<&Sample> = self
            .0
            .iter()
            .filter(|s| s.name == name && s.labels == want)
            .collect();
        assert!(found.len() <= 1, "{name} {labels:?} appears twice");
        found.first().map_or(0.0, |s| s.value)
    }

    /// Sum over every series of `name` whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }
}

async fn scrape(gw: &Gateway) -> (Scrape, String) {
    let response = gw.http.get(gw.admin_url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    (Scrape(parse(&text)), text)
}

/// An address nothing listens on: bound, then released.
async fn refusing_address() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

#[tokio::test]
async fn metrics_count_a_scripted_mix_of_traffic() {
    let backend = FakeUpstream::start().await;
    let refused = refusing_address().await;
    let config = format!(
        r#"
        [auth.login_throttle]
        per_account = 2
        [[upstreams]]
        name = "backend"
        instances = ["{backend}"]
        [[upstreams]]
        name = "down"
        instances = ["{refused}"]
        retries = 0
        eject_base = "60s"
        [[upstreams]]
        name = "flaky"
        instances = ["{refused}", "{backend}"]
        retries = 1
        eject_base = "60s"
        [[routes]]
        name = "main"
        prefix = "/api"
        upstream = "backend"
        [[routes]]
        prefix = "/down"
        upstream = "down"
        public = true
        [[routes]]
        prefix = "/flaky"
        upstream = "flaky"
        public = true
        "#,
        backend = backend.url(),
    );
    let gw = Gateway::start_with(&backend.url(), &config).await;
    gw.add_user("user@example.com", Role::User).await;
    gw.add_user("admin@example.com", Role::Admin).await;

    // Logins: three successes, two failures, then the account is over its limit.
    let token = gw.login("user@example.com").await;
    let second = gw.login("user@example.com").await;
    let admin = gw.login("admin@example.com").await;
    for _ in 0..2 {
        let r = gw.login_response("victim@example.com", "wrong").await;
        assert_eq!(r.status(), 401);
    }
    let r = gw.login_response("victim@example.com", PASSWORD).await;
    assert_eq!(r.status(), 429);

    // The first use verifies the token, the next four are cache hits; the path and query
    // carry words that must not become labels.
    for _ in 0..5 {
        let r = gw
            .get_with_token("/api/things/42?secret=path-word", &token)
            .await;
        assert_eq!(r.status(), 200);
    }
    let r = gw.get_with_token("/api/broken?status=503", &token).await;
    assert_eq!(r.status(), 503);
    let r = gw.get_with_token("/api/x", "forged.token.value").await;
    assert_eq!(r.status(), 401);
    let r = gw.http.get(gw.url("/api/x")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = gw.get_with_token("/api/x", &second).await;
    assert_eq!(r.status(), 200);
    gw.logout(&second).await;
    let r = gw.get_with_token("/api/x", &second).await;
    assert_eq!(r.status(), 401);
    let r = gw.http.get(gw.url("/nowhere")).send().await.unwrap();
    assert_eq!(r.status(), 404);

    // Upstreams: a refused connection (ejected), then no instance left; a retry that lands.
    let r = gw.http.get(gw.url("/down/x")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let r = gw.http.get(gw.url("/down/x")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let r = gw.http.get(gw.url("/flaky/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // An invitation goes out by mail (file outbox).
    let r = gw
        .http
        .post(gw.url("/users/invite"))
        .header("x-access-token", &admin)
        .json(&serde_json::json!({"email": "new@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Past the token's 8 h lifetime, its cached entry is refused as expired.
    gw.clock.advance(Duration::from_secs(9 * 3600));
    let r = gw.get_with_token("/api/x", &token).await;
    assert_eq!(r.status(), 401);

    // Background work (mail delivery, the revocation feed) lands within moments.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (m, text) = loop {
        let (m, text) = scrape(&gw).await;
        let settled = m.get("meiro_gate_mail_sent_total", &[]) == 1.0
            && m.get("meiro_gate_revocations_received_total", &[]) >= 1.0;
        if settled || std::time::Instant::now() > deadline {
            break (m, text);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let requests = |route: &str, method: &str, status: &str| {
        m.get(
            "meiro_gate_requests_total",
            &[("route", route), ("method", method), ("status", status)],
        )
    };
    assert_eq!(requests("main", "GET", "2xx"), 6.0, "{text}");
    assert_eq!(requests("main", "GET", "5xx"), 1.0);
    assert_eq!(requests("main", "GET", "4xx"), 4.0);
    assert_eq!(requests("down", "GET", "5xx"), 2.0);
    assert_eq!(requests("flaky", "GET", "2xx"), 1.0);
    assert_eq!(requests("unmatched", "GET", "4xx"), 1.0);
    assert_eq!(requests("api_login", "POST", "2xx"), 3.0);
    assert_eq!(requests("api_login", "POST", "4xx"), 3.0);
    assert_eq!(requests("api_login", "DELETE", "2xx"), 1.0);
    assert_eq!(requests("api_invite", "POST", "2xx"), 1.0);
    assert_eq!(
        m.get(
            "meiro_gate_request_duration_seconds_count",
            &[("route", "main")]
        ),
        11.0
    );
    assert!(
        m.get(
            "meiro_gate_request_duration_seconds_sum",
            &[("route", "main")]
        ) > 0.0
    );

    let checks = |labels: &[(&str, &str)]| m.get("meiro_gate_token_checks_total", labels);
    // `second` and the admin's token (the invite) were verified once each, as was `token`.
    assert_eq!(checks(&[("outcome", "verified")]), 3.0);
    assert_eq!(checks(&[("outcome", "cache_hit")]), 5.0);
    let rejected = |reason| checks(&[("outcome", "rejected"), ("reason", reason)]);
    assert_eq!(rejected("invalid"), 1.0);
    assert_eq!(rejected("missing"), 1.0);
    assert_eq!(rejected("revoked"), 1.0);
    assert_eq!(rejected("expired"), 1.0);
    assert_eq!(checks(&[("outcome", "unavailable")]), 0.0);
    assert_eq!(m.get("meiro_gate_token_cache_entries", &[]), 3.0);

    let logins = |outcome| m.get("meiro_gate_logins_total", &[("outcome", outcome)]);
    assert_eq!(logins("success"), 3.0);
    assert_eq!(logins("failure"), 2.0);
    assert_eq!(logins("rate_limited"), 1.0);
    assert_eq!(logins("error"), 0.0);

    let refused_instance = refused.trim_start_matches("http://");
    let backend_instance = backend.addr.to_string();
    let upstream_error = |upstream, instance, kind| {
        m.get(
            "meiro_gate_upstream_errors_total",
            &[
                ("upstream", upstream),
                ("instance", instance),
                ("kind", kind),
            ],
        )
    };
    assert_eq!(upstream_error("down", refused_instance, "connect"), 1.0);
    assert_eq!(upstream_error("flaky", refused_instance, "connect"), 1.0);
    assert_eq!(upstream_error("backend", &backend_instance, "5xx"), 1.0);
    assert_eq!(upstream_error("backend", &backend_instance, "connect"), 0.0);
    assert_eq!(upstream_error("backend", &backend_instance, "timeout"), 0.0);
    assert_eq!(
        m.get(
            "meiro_gate_upstream_retries_total",
            &[("upstream", "flaky")]
        ),
        1.0
    );
    assert_eq!(
        m.sum("meiro_gate_upstream_retries_total", &[]),
        1.0,
        "only flaky retried"
    );
    assert_eq!(
        m.get(
            "meiro_gate_upstream_no_healthy_instance_total",
            &[("upstream", "down")]
        ),
        1.0
    );
    for upstream in ["down", "flaky"] {
        let labels = [("upstream", upstream), ("instance", refused_instance)];
        assert_eq!(m.get("meiro_gate_upstream_ejections_total", &labels), 1.0);
        assert_eq!(m.get("meiro_gate_upstream_instance_ejected", &labels), 1.0);
    }
    let backend_labels = [
        ("upstream", "backend"),
        ("instance", backend_instance.as_str()),
    ];
    assert_eq!(
        m.get("meiro_gate_upstream_instance_ejected", &backend_labels),
        0.0
    );
    assert_eq!(
        m.get("meiro_gate_upstream_instance_healthy", &backend_labels),
        1.0
    );
    // Every response head from the backend cluster was timed: 6 + 1 on `main`.
    assert_eq!(
        m.get(
            "meiro_gate_upstream_request_duration_seconds_count",
            &backend_labels
        ),
        7.0
    );

    assert_eq!(m.get("meiro_gate_mail_sent_total", &[]), 1.0, "{text}");
    // By kind and reason, every series present from the start at 0.
    for kind in ["invitation", "password_reset"] {
        for reason in ["refused", "expired"] {
            let labels = [("kind", kind), ("reason", reason)];
            assert_eq!(m.get("meiro_gate_mail_failed_total", &labels), 0.0);
            assert!(
                text.contains(&format!(
                    "meiro_gate_mail_failed_total{{kind=\"{kind}\",reason=\"{reason}\"}} 0"
                )),
                "{text}"
            );
        }
    }
    assert_eq!(m.sum("meiro_gate_mail_failed_total", &[]), 0.0);
    assert_eq!(m.get("meiro_gate_mail_queue_depth", &[]), 0.0);
    assert_eq!(m.get("meiro_gate_revocations_sent_total", &[]), 1.0);
    assert_eq!(m.get("meiro_gate_revocations_received_total", &[]), 1.0);

    // Bounded labels only: nothing from a path, a query, an address or a token.
    for sample in &m.0 {
        for (key, value) in &sample.labels {
            for bad in [
                "/",
                "@",
                "things",
                "path-word",
                "forged",
                &token,
                &second,
                &admin,
            ] {
                assert!(
                    !value.contains(bad),
                    "{}{{{key}={value:?}}} carries {bad:?}",
                    sample.name
                );
            }
        }
    }
}

#[tokio::test]
async fn metrics_are_served_on_the_admin_listener_only() {
    let backend = FakeUpstream::start().await;
    let gw = Gateway::start(&backend).await;
    let (m, _) = scrape(&gw).await;
    assert_eq!(m.get("meiro_gate_token_cache_entries", &[]), 0.0);
    // On the main listener `/metrics` is an ordinary data-plane path: it needs a token.
    let r = gw.http.get(gw.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(backend.recorded().is_empty());
}
