//! Tests of the queue with scripted transports, and end-to-end runs through the file outbox
//! and real SMTP (lettre against `SmtpSink` from `tests/common/smtp.rs`).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::test_smtp_sink::{SmtpSink, text_body_of};
use super::*;
use crate::config::{MailConfig, MailTransport, Secret};
use crate::telemetry::metrics::MailMetrics;

const WAIT: Duration = Duration::from_secs(10);

/// Answers each attempt from a script (then succeeds), or always fails transiently for
/// recipients in `stuck`; records every attempt.
#[derive(Default)]
struct Scripted {
    script: Mutex<VecDeque<SendError>>,
    stuck: Vec<String>,
    attempts: Mutex<Vec<(String, Instant)>>,
    delivered: MemoryTransport,
}

impl Scripted {
    fn failing(errors: impl IntoIterator<Item = SendError>) -> Arc<Self> {
        Arc::new(Self {
            script: Mutex::new(errors.into_iter().collect()),
            ..Self::default()
        })
    }

    fn stuck_on(recipient: &str) -> Arc<Self> {
        Arc::new(Self {
            stuck: vec![recipient.to_owned()],
            ..Self::default()
        })
    }

    fn attempts(&self) -> Vec<(String, Instant)> {
        self.attempts.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl Transport for Scripted {
    async fn send(&self, message: &Message) -> Result<(), SendError> {
        self.attempts
            .lock()
            .unwrap()
            .push((message.to.clone(), Instant::now()));
        if self.stuck.contains(&message.to) {
            return Err(SendError::transient("421 stuck"));
        }
        let next = self.script.lock().unwrap().pop_front();
        match next {
            Some(error) => Err(error),
            None => self.delivered.send(message).await,
        }
    }
}

/// Polls `cond` every 10 ms for up to [`WAIT`].
async fn eventually(cond: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "condition not met within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn policy(initial_ms: u64, max_ms: u64, give_up_ms: u64) -> RetryPolicy {
    RetryPolicy {
        initial: Duration::from_millis(initial_ms),
        max: Duration::from_millis(max_ms),
        give_up_after: Duration::from_millis(give_up_ms),
    }
}

fn start(
    transport: Arc<Scripted>,
    policy: RetryPolicy,
) -> (Mail, JoinHandle<()>, watch::Sender<bool>) {
    start_counted(transport, policy, MailMetrics::default())
}

/// [`start`], counting into `metrics`.
fn start_counted(
    transport: Arc<Scripted>,
    policy: RetryPolicy,
    metrics: MailMetrics,
) -> (Mail, JoinHandle<()>, watch::Sender<bool>) {
    let (stop, shutdown) = watch::channel(false);
    let (mail, worker) =
        Mail::with_transport(transport, Templates::default(), policy, shutdown, metrics);
    (mail, worker, stop)
}

#[tokio::test]
async fn transient_failures_are_retried_with_backoff_then_delivered() {
    let transport = Scripted::failing([
        SendError::transient("421 busy"),
        SendError::transient("connection refused"),
    ]);
    let (mail, _worker, _stop) = start(transport.clone(), policy(40, 1000, 10_000));
    mail.send_invitation("ann@example.com", "https://meiro.example/i/abc", |_| {});

    let delivered = transport.delivered.wait_for(1, WAIT).await;
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].to, "ann@example.com");
    assert!(delivered[0].text.contains("https://meiro.example/i/abc"));
    let attempts = transport.attempts();
    assert_eq!(attempts.len(), 3);
    // 40 ms after the first failure, 80 ms after the second.
    assert!(attempts[1].1 - attempts[0].1 >= Duration::from_millis(40));
    assert!(attempts[2].1 - attempts[1].1 >= Duration::from_millis(80));
}

/// Collects what the queue reports through `on_undelivered`, tagged by the sender.
#[derive(Clone, Default)]
struct Reports(Arc<Mutex<Vec<(&'static str, Undelivered)>>>);

impl Reports {
    fn hook(&self, tag: &'static str) -> impl FnOnce(Undelivered) + Send + 'static {
        let reports = self.0.clone();
        move |undelivered| reports.lock().unwrap().push((tag, undelivered))
    }

    fn get(&self) -> Vec<(&'static str, Undelivered)> {
        self.0.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn permanent_failure_drops_the_message_at_once_and_reports_it() {
    let transport = Scripted::failing([SendError::permanent("550 no such user")]);
    let reports = Reports::default();
    let (mail, _worker, _stop) = start(transport.clone(), policy(10, 10, 10_000));
    mail.send_invitation("gone@example.com", "https://x/1", reports.hook("gone"));
    mail.send_password_reset("bob@example.com", "https://x/2", reports.hook("bob"));

    let delivered = transport.delivered.wait_for(1, WAIT).await;
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].to, "bob@example.com");
    assert_eq!(delivered[0].subject, "Reset your Meiro password");
    let tried: Vec<String> = transport.attempts().into_iter().map(|(to, _)| to).collect();
    assert_eq!(tried, ["gone@example.com", "bob@example.com"]);
    // Reported once, for the dropped message only, with nothing but kind, domain and why.
    assert_eq!(
        reports.get(),
        [(
            "gone",
            Undelivered {
                kind: Kind::Invitation,
                recipient_domain: "example.com".into(),
                reason: DropReason::Refused,
                attempts: 1,
            }
        )]
    );
}

/// An address the rule refuses is refused by every transport before anything is sent (a
/// row stored before the rule existed): permanent, reported, never rewritten.
#[tokio::test]
async fn an_address_the_rule_refuses_is_a_permanent_failure() {
    let from: Mailbox = "Meiro <no-reply@meiro.example>".parse().unwrap();
    let message = |to: &str| Message {
        to: to.into(),
        subject: "s".into(),
        text: "t".into(),
        html: "h".into(),
    };
    for to in [
        "a..b@example.com",
        "a@[127.0.0.1]",
        "\"ab\"@example.com",
        "ü@example.com",
    ] {
        let error = compose(&from, &message(to)).unwrap_err();
        assert!(error.permanent, "{to}");
        assert!(!error.detail.contains(to), "{to}: {}", error.detail);
    }
    assert!(compose(&from, &message("a.b@example.com")).is_ok());
}

#[tokio::test]
async fn gives_up_after_the_deadline_and_moves_on() {
    let transport = Scripted::stuck_on("stuck@example.com");
    let reports = Reports::default();
    let (mail, _worker, _stop) = start(transport.clone(), policy(10, 40, 300));
    let queued = Instant::now();
    mail.send_invitation("stuck@example.com", "https://x/1", reports.hook("stuck"));
    mail.send_invitation("next@example.com", "https://x/2", reports.hook("next"));

    let delivered = transport.delivered.wait_for(1, WAIT).await;
    assert_eq!(delivered[0].to, "next@example.com");
    let stuck: Vec<Instant> = transport
        .attempts()
        .into_iter()
        .filter(|(to, _)| to == "stuck@example.com")
        .map(|(_, at)| at)
        .collect();
    let last = *stuck.last().unwrap();
    // Delays 10, 20, 40, 40, ... until 300 ms: at most 10 attempts (fewer on a loaded
    // machine, where sleeps overshoot), the last one at the deadline.
    assert!((2..=10).contains(&stuck.len()), "{} attempts", stuck.len());
    assert!(last - queued >= Duration::from_millis(300));
    assert!(last - queued < Duration::from_secs(5));
    let reports = reports.get();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].0, "stuck");
    assert_eq!(reports[0].1.reason, DropReason::Expired);
    assert_eq!(reports[0].1.attempts as usize, stuck.len());
}

#[tokio::test]
async fn messages_are_delivered_in_order() {
    let transport = Scripted::failing([SendError::transient("421 busy")]);
    let (mail, _worker, _stop) = start(transport.clone(), policy(20, 20, 10_000));
    for i in 0..5 {
        mail.send_invitation(&format!("user{i}@example.com"), "https://x/", |_| {});
    }
    let delivered = transport.delivered.wait_for(5, WAIT).await;
    let order: Vec<&str> = delivered.iter().map(|m| m.to.as_str()).collect();
    assert_eq!(
        order,
        [
            "user0@example.com",
            "user1@example.com",
            "user2@example.com",
            "user3@example.com",
            "user4@example.com"
        ]
    );
}

#[tokio::test]
async fn shutdown_stops_the_worker_promptly_even_while_retrying() {
    let transport = Scripted::stuck_on("stuck@example.com");
    // An hour of backoff: only the shutdown signal can end the worker in time.
    let (mail, worker, stop) = start(transport.clone(), policy(3_600_000, 3_600_000, 86_400_000));
    let reports = Reports::default();
    mail.send_invitation("stuck@example.com", "https://x/1", reports.hook("stuck"));
    mail.send_invitation(
        "pending@example.com",
        "https://x/2",
        reports.hook("pending"),
    );
    eventually(|| !transport.attempts().is_empty()).await;

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(2), worker)
        .await
        .expect("worker stopped")
        .unwrap();
    // After shutdown the queue is closed: sending logs an error but neither blocks nor panics.
    mail.send_invitation("late@example.com", "https://x/3", reports.hook("late"));
    assert_eq!(transport.attempts().len(), 1);
    // Dropped by the shutdown, not refused: not reported as undelivered (the log counts them).
    assert!(reports.get().is_empty());
}

#[tokio::test]
async fn worker_ends_when_every_handle_is_dropped_not_when_the_signal_sender_is() {
    let transport = Arc::new(Scripted::default());
    let (mail, worker, stop) = start(transport.clone(), policy(10, 10, 1000));
    // A lost sender is no shutdown signal: mail keeps flowing.
    drop(stop);
    let copy = mail.clone();
    copy.send_invitation("ann@example.com", "https://x/1", |_| {});
    transport.delivered.wait_for(1, WAIT).await;
    assert_eq!(transport.delivered.messages().len(), 1);

    drop(mail);
    drop(copy);
    tokio::time::timeout(Duration::from_secs(2), worker)
        .await
        .expect("worker ended with the queue")
        .unwrap();
}

#[tokio::test]
async fn shutdown_already_signalled_means_no_delivery() {
    let transport = Arc::new(Scripted::default());
    let (stop, shutdown) = watch::channel(true);
    let (mail, worker) = Mail::with_transport(
        transport.clone(),
        Templates::default(),
        policy(10, 10, 1000),
        shutdown,
        MailMetrics::default(),
    );
    mail.send_invitation("ann@example.com", "https://x/1", |_| {});
    tokio::time::timeout(Duration::from_secs(2), worker)
        .await
        .expect("worker stopped")
        .unwrap();
    assert!(transport.attempts().is_empty());
    drop(stop);
}

#[test]
fn recipient_domain_for_logs() {
    assert_eq!(recipient_domain("ann@example.com"), "example.com");
    assert_eq!(recipient_domain("a@b@example.org"), "example.org");
    assert_eq!(recipient_domain("nobody"), "<invalid>");
    assert_eq!(recipient_domain("nobody@"), "<invalid>");
}

fn config(transport: MailTransport, dir: &Path, smtp_url: &str) -> MailConfig {
    MailConfig {
        transport,
        dir: dir.to_owned(),
        smtp_url: Secret::url(smtp_url.to_owned()),
        from: "Meiro Test <no-reply@meiro.example>".to_owned(),
        templates_dir: None,
        smtp_timeout: Duration::from_secs(5),
        retry_initial: Duration::from_millis(100),
        retry_max: Duration::from_millis(200),
        give_up_after: Duration::from_secs(60),
    }
}

/// Long enough to be folded by quoted-printable, with characters QP and HTML both escape.
const LINK: &str = "http://127.0.0.1:8080/invitation/accept?token=Zm9vYmFyYmF6cXV4cXV1eHF1dXhxdXV4cXV1eA&email=ann%40example.com&x=1";

#[tokio::test]
async fn file_transport_end_to_end() {
    let root = tempfile::tempdir().unwrap();
    let outbox = root.path().join("outbox");
    let (mail, _worker, _stop) = start_configured(config(MailTransport::File, &outbox, "")).await;
    mail.send_password_reset("ann@example.com", LINK, |_| {});

    let read_outbox = || -> Vec<String> {
        std::fs::read_dir(&outbox)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".eml"))
                    .map(|e| std::fs::read_to_string(e.path()).unwrap())
                    .collect()
            })
            .unwrap_or_default()
    };
    eventually(|| read_outbox().len() == 1).await;
    let eml = &read_outbox()[0];
    let text = text_body_of(eml).expect("text/plain part");
    assert!(text.contains(LINK), "{text}");
    assert!(eml.contains("Subject: Reset your Meiro password"), "{eml}");
}

#[tokio::test]
async fn start_refuses_bad_settings() {
    let root = tempfile::tempdir().unwrap();
    let (_stop, shutdown) = watch::channel(false);

    let mut bad_from = config(MailTransport::File, root.path(), "");
    bad_from.from = "not a mailbox".to_owned();
    let err = Mail::start(&bad_from, shutdown.clone(), MailMetrics::default())
        .await
        .err()
        .unwrap();
    assert!(matches!(err, MailError::From { .. }), "{err}");

    let bad_url = config(
        MailTransport::Smtp,
        root.path(),
        "smtp://u:hunter2@mail?tls=x",
    );
    let err = Mail::start(&bad_url, shutdown.clone(), MailMetrics::default())
        .await
        .err()
        .unwrap();
    assert!(matches!(err, MailError::SmtpUrl(_)), "{err}");
    assert!(!err.to_string().contains("hunter2"), "{err}");

    let mut bad_templates = config(MailTransport::File, root.path(), "");
    bad_templates.templates_dir = Some(root.path().join("missing"));
    let err = Mail::start(&bad_templates, shutdown.clone(), MailMetrics::default())
        .await
        .err()
        .unwrap();
    assert!(matches!(err, MailError::Templates(_)), "{err}");

    // The outbox path is a file, so it cannot be created as a directory.
    let file = root.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let err = Mail::start(
        &config(MailTransport::File, &file, ""),
        shutdown,
        MailMetrics::default(),
    )
    .await
    .err()
    .unwrap();
    assert!(matches!(err, MailError::Outbox { .. }), "{err}");
}

/// A started `Mail` on `config`, with its worker and the sender that would stop it.
async fn start_configured(config: MailConfig) -> (Mail, JoinHandle<()>, watch::Sender<bool>) {
    let (stop, shutdown) = watch::channel(false);
    let (mail, worker) = Mail::start(&config, shutdown, MailMetrics::default())
        .await
        .unwrap();
    (mail, worker, stop)
}

#[tokio::test]
async fn smtp_round_trip_through_a_real_server() {
    let sink = SmtpSink::start().await;
    let url = format!("smtp://{}", sink.addr);
    let (mail, _worker, _stop) =
        start_configured(config(MailTransport::Smtp, Path::new("."), &url)).await;
    mail.send_invitation("ann@example.com", LINK, |_| {});

    let received = sink.wait_for(1, WAIT).await;
    let got = &received[0];
    assert_eq!(got.from, "no-reply@meiro.example");
    assert_eq!(got.to, ["ann@example.com"]);
    assert_eq!(
        got.header("subject").as_deref(),
        Some("You have been invited to Meiro")
    );
    let text = got.text_body().expect("text/plain part");
    assert!(text.contains(LINK), "{text}\n---\n{}", got.data);
    assert_eq!(
        got.link_starting_with("http://127.0.0.1:8080/").as_deref(),
        Some(LINK)
    );
    let html = got.html_body().expect("text/html part");
    assert!(html.contains(&LINK.replace('&', "&amp;")), "{html}");
}

#[tokio::test]
async fn smtp_replies_are_classified() {
    let sink = SmtpSink::start().await;
    let from = "no-reply@meiro.example".parse().unwrap();
    let transport = SmtpTransport::new(
        &format!("smtp://{}", sink.addr),
        Duration::from_secs(5),
        from,
    )
    .unwrap();
    let message = Templates::default().render(Kind::Invitation, "ann@example.com", "https://x/");

    sink.reply_to_rcpt(Some("550 5.1.1 no such user"));
    let err = transport.send(&message).await.unwrap_err();
    assert!(err.permanent, "{err:?}");

    sink.reply_to_rcpt(Some("451 4.3.0 try again later"));
    let err = transport.send(&message).await.unwrap_err();
    assert!(!err.permanent, "{err:?}");

    sink.reply_to_rcpt(None);
    transport.send(&message).await.unwrap();
    assert_eq!(sink.messages().len(), 1);

    let mut bad = message.clone();
    bad.to = "no address".to_owned();
    assert!(transport.send(&bad).await.unwrap_err().permanent);
}

#[tokio::test]
async fn smtp_down_then_back_is_retried_until_delivered() {
    let first = SmtpSink::start().await;
    let addr = first.addr;
    first.stop().await;

    let url = format!("smtp://{addr}");
    let (mail, _worker, _stop) =
        start_configured(config(MailTransport::Smtp, Path::new("."), &url)).await;
    mail.send_password_reset("ann@example.com", LINK, |_| {});

    tokio::time::sleep(Duration::from_secs(1)).await;
    let back = SmtpSink::start_on(addr).await;
    let received = back.wait_for(1, WAIT).await;
    assert_eq!(received.len(), 1);
    assert!(received[0].text_body().unwrap().contains(LINK));
}

#[tokio::test]
async fn queue_depth_sent_and_failed_are_counted() {
    // The first message is refused permanently, the next two are delivered; the stuck
    // recipient stays in the queue (transient failures, long give-up time).
    let transport = Scripted::failing([SendError::permanent("550 no such user")]);
    let metrics = MailMetrics::default();
    let (mail, _worker, _stop) =
        start_counted(transport.clone(), policy(10, 10, 60_000), metrics.clone());
    mail.send_invitation("refused@example.com", "https://x/1", |_| {});
    mail.send_invitation("ann@example.com", "https://x/2", |_| {});
    mail.send_password_reset("bob@example.com", "https://x/3", |_| {});
    eventually(|| metrics.sent.get() == 2).await;
    assert_eq!(metrics.failed("invitation", "refused").get(), 1);
    assert_eq!(metrics.failed("invitation", "expired").get(), 0);
    assert_eq!(metrics.failed("password_reset", "refused").get(), 0);
    assert_eq!(metrics.queue_depth.get(), 0);

    let stuck = Scripted::stuck_on("stuck@example.com");
    let metrics = MailMetrics::default();
    let (mail, _worker, _stop) =
        start_counted(stuck.clone(), policy(10, 10, 60_000), metrics.clone());
    mail.send_invitation("stuck@example.com", "https://x/4", |_| {});
    mail.send_invitation("next@example.com", "https://x/5", |_| {});
    eventually(|| stuck.attempts().len() >= 2).await;
    assert_eq!(metrics.queue_depth.get(), 2, "one retrying, one waiting");
    let failed: u64 = Kind::ALL
        .iter()
        .flat_map(|kind| {
            DropReason::ALL.map(|reason| metrics.failed(kind.as_str(), reason.as_str()))
        })
        .map(|counter| counter.get())
        .sum();
    assert_eq!(metrics.sent.get() + failed, 0);
}
