//! Forgotten and reset passwords over real sockets and a real SMTP server on loopback, as
//! api-contract.md fixes them: `POST /users/password` (always the same answer, throttled)
//! and `PATCH /users/password` with a reset token (single-use, expiring, ends every session).

mod common;

use std::time::{Duration, Instant};

use common::accounts::{
    INVALID_ONE_TIME_TOKEN, LINK_PREFIX, MAIL_WAIT, NEW_PASSWORD, assert_login_refused,
    assert_no_more_mail, assert_password_set, assert_proxied, assert_rejected,
    assert_spent_once_under_concurrent_use, assert_token_refused, login_with, set_password,
};
use common::smtp::{ReceivedMail, SmtpSink};
use common::{
    FakeUpstream, Gateway, MailingGateway, PASSWORD, assert_json, assert_throttled, status_json,
    status_message,
};
use meiro_gate::store::{AuditFilter, NewUser, Role};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use serde_json::{Value, json};
use url::Url;

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";
const RESET_TTL: u64 = 3600;
const THROTTLE_WINDOW: u64 = 15 * 60;

// ---------------------------------------------------------------------------------------
// helpers

/// A gateway delivering over SMTP to `sink`, with alice and bob as active users.
struct Env {
    _upstream: FakeUpstream,
    sink: SmtpSink,
    gw: Gateway,
}

async fn setup_with(extra_toml: &str) -> Env {
    let MailingGateway { upstream, sink, gw } = MailingGateway::start(&[extra_toml]).await;
    gw.add_user(ALICE, Role::User).await;
    gw.add_user(BOB, Role::User).await;
    Env {
        _upstream: upstream,
        sink,
        gw,
    }
}

impl Env {
    /// Alice asks for a reset; the link of the `n`th message (asserting no more arrived).
    async fn reset_alice(&self, n: usize) -> Link {
        forgot_ok(&self.gw, ALICE).await;
        nth_reset(&self.sink, n, ALICE).await
    }
}

async fn setup() -> Env {
    setup_with("").await
}

async fn forgot(gw: &Gateway, email: &str) -> reqwest::Response {
    gw.http
        .post(gw.url("/users/password"))
        .json(&json!({ "email": email }))
        .send()
        .await
        .unwrap()
}

/// `POST /users/password`, asserting the contract's one answer.
async fn forgot_ok(gw: &Gateway, email: &str) {
    assert_forgot_answered(forgot(gw, email).await, &format!("{email:?}")).await;
}

/// Asserts the contract's one answer to `POST /users/password`, whatever was asked.
async fn assert_forgot_answered(response: reqwest::Response, what: &str) {
    let (status, body) = status_json(response).await;
    assert_eq!(status, StatusCode::OK, "forgot {what}: {body}");
    assert_eq!(body, json!({ "message": "ok" }));
}

/// Alice sets `password` with a reset token (`email` is her address as the request writes
/// it), and then logs in with it.
async fn assert_alice_reset_to(gw: &Gateway, email: &str, password: &str, token: &str) {
    assert_password_set(gw, email, password, token).await;
    login_with(gw, ALICE, password).await;
}

async fn refresh_ok(gw: &Gateway, token: &str) -> String {
    let (status, body) = status_json(gw.refresh_response(token).await).await;
    assert_eq!(status, StatusCode::OK, "refresh: {body}");
    body["token"].as_str().expect("a token").to_owned()
}

/// A reset link from an e-mail, taken apart.
#[derive(Debug, Clone)]
struct Link {
    raw: String,
    email: String,
    token: String,
}

/// The reset link of a received message to `to`, checked against the contract's shape:
/// `<frontend_url>/set_password/?email=<urlencoded>&reset_token=<token>&referrer=reset-password`.
fn reset_link_in(mail: &ReceivedMail, to: &str) -> Link {
    assert_eq!(mail.to, [to], "envelope recipient");
    assert_eq!(
        mail.header("subject").as_deref(),
        Some("Reset your Meiro password")
    );
    let raw = mail
        .link_starting_with(LINK_PREFIX)
        .unwrap_or_else(|| panic!("no link in the text body: {:?}", mail.text_body()));
    let url = Url::parse(&raw).unwrap();
    assert_eq!(url.host_str(), Some("gateway.test"));
    assert_eq!(url.path(), "/set_password/");
    let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["email", "reset_token", "referrer"], "{raw}");
    assert_eq!(pairs[0].1, to, "{raw}");
    assert_eq!(pairs[2].1, "reset-password", "{raw}");
    let token = pairs[1].1.clone();
    assert!(token.len() >= 22, "at least 128 bits: {token:?}");
    assert!(
        token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{token:?}"
    );
    let html = mail.html_body().expect("an HTML body");
    assert!(html.contains(&raw.replace('&', "&amp;")), "{html}");
    Link {
        email: pairs[0].1.clone(),
        raw,
        token,
    }
}

/// Waits for the `n`th message (1-based), asserting no more arrived, and returns its link.
async fn nth_reset(sink: &SmtpSink, n: usize, to: &str) -> Link {
    let mails = sink.wait_for(n, MAIL_WAIT).await;
    assert_eq!(mails.len(), n, "exactly {n} message(s): {mails:#?}");
    reset_link_in(&mails[n - 1], to)
}

/// The `q`-quantile (0..=1) of sorted durations, nearest rank.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[rank]
}

/// `a` and `b` are close: within a factor of `factor` of each other, or less than `slack`
/// apart (sub-millisecond timings jitter by more than their ratio says).
fn comparable(a: Duration, b: Duration, factor: f64, slack: Duration) -> bool {
    let ratio = a.as_secs_f64() / b.as_secs_f64().max(1e-9);
    a.abs_diff(b) < slack || (1.0 / factor..factor).contains(&ratio)
}

// ---------------------------------------------------------------------------------------
// the whole flow

#[tokio::test]
async fn forgotten_password_is_reset_through_the_emailed_link_and_sessions_end() {
    let env = setup().await;
    let gw = &env.gw;
    // Two sessions, each token used once so that it sits in the validation cache.
    let first = gw.login(ALICE).await;
    let second = gw.login(ALICE).await;
    let bob = gw.login(BOB).await;
    for token in [&first, &second, &bob] {
        assert_proxied(gw, token).await;
    }

    forgot_ok(gw, "  Alice@EXAMPLE.com ").await;
    let link = nth_reset(&env.sink, 1, ALICE).await;
    assert_eq!(
        link.raw,
        format!(
            "http://gateway.test/set_password/?email=alice%40example.com\
             &reset_token={}&referrer=reset-password",
            link.token
        )
    );
    // Asking does not change anything yet.
    for token in [&first, &second] {
        assert_proxied(gw, token).await;
    }
    login_with(gw, ALICE, PASSWORD).await;

    assert_password_set(gw, &link.email, NEW_PASSWORD, &link.token).await;
    // Every earlier session of alice ends at once, cache or not; bob's does not.
    assert_rejected(gw, &first).await;
    assert_rejected(gw, &second).await;
    assert_proxied(gw, &bob).await;
    assert_login_refused(gw, ALICE, PASSWORD).await;
    let fresh = login_with(gw, ALICE, NEW_PASSWORD).await;
    assert_proxied(gw, &fresh).await;

    // Single use: the token cannot set another password, nor end the new session.
    assert_token_refused(gw, ALICE, "another new passphrase", &link.token).await;
    assert_proxied(gw, &fresh).await;
    login_with(gw, ALICE, NEW_PASSWORD).await;
    assert_no_more_mail(&env.sink, 1).await;
}

#[tokio::test]
async fn after_a_reset_old_tokens_cannot_be_refreshed() {
    let env = setup().await;
    let gw = &env.gw;
    let plain = gw.login(ALICE).await;
    let before_refresh = gw.login(ALICE).await;
    let refreshed = refresh_ok(gw, &before_refresh).await;
    assert_proxied(gw, &refreshed).await;

    let link = env.reset_alice(1).await;
    assert_password_set(gw, ALICE, NEW_PASSWORD, &link.token).await;

    for token in [&plain, &refreshed] {
        let (status, msg) = status_message(gw.refresh_response(token).await).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "refresh after reset: {msg}"
        );
        assert_rejected(gw, token).await;
    }
    // A session started after the reset refreshes as usual.
    let after = login_with(gw, ALICE, NEW_PASSWORD).await;
    let renewed = refresh_ok(gw, &after).await;
    assert_proxied(gw, &renewed).await;
}

// ---------------------------------------------------------------------------------------
// POST /users/password: who gets an e-mail

#[tokio::test]
async fn only_active_users_get_a_reset_email_and_everyone_gets_the_same_answer() {
    let env = setup().await;
    let gw = &env.gw;
    let store = gw.app().auth().store().clone();
    gw.add_user("disabled@example.com", Role::User).await;
    gw.disable_user("disabled@example.com")
        .await
        .expect("user exists");
    store
        .create_user(NewUser {
            email: "pending@example.com".into(),
            password_hash: None,
            role: Role::User,
            invitation_pending: true,
            invitation: None,
            sso_enabled: false,
            created: gw.clock.now(),
        })
        .await
        .unwrap();

    let mut bodies = Vec::new();
    for email in [
        "nobody@example.com",
        "disabled@example.com",
        "pending@example.com",
        "not an address",
        "",
        ALICE,
    ] {
        let response = forgot(gw, email).await;
        assert_eq!(response.status(), StatusCode::OK, "{email:?}");
        assert_json(response.headers());
        let body = response.bytes().await.unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&body).unwrap(),
            json!({ "message": "ok" }),
            "{email:?}"
        );
        bodies.push((email, body));
    }
    for (email, body) in &bodies {
        assert_eq!(body, &bodies[0].1, "{email:?}: byte-identical body");
    }
    // Exactly one e-mail, to the active user.
    nth_reset(&env.sink, 1, ALICE).await;
    assert_no_more_mail(&env.sink, 1).await;
    // The disabled user cannot get in through a reset either, and the pending one is not
    // activated by asking.
    assert_login_refused(gw, "disabled@example.com", PASSWORD).await;
    assert!(
        store
            .user_by_email("pending@example.com")
            .await
            .unwrap()
            .unwrap()
            .invitation_pending
    );
}

/// A user whose stored address the mail path cannot deliver to (a row from before the
/// gateway's address rule, or written by another tool) asks for a reset: the answer is the
/// contract's `ok`, but no reset token is created and nothing is queued; the request is
/// audited as `invalid_address`. Other users are unaffected.
#[tokio::test]
async fn an_address_the_rule_refuses_gets_no_reset_token_and_no_mail() {
    let env = setup().await;
    let gw = &env.gw;
    let store = gw.app().auth().store().clone();
    let legacy = store
        .create_user(NewUser {
            email: "le..gacy@example.com".into(),
            password_hash: None,
            role: Role::User,
            invitation_pending: false,
            invitation: None,
            sso_enabled: false,
            created: gw.clock.now(),
        })
        .await
        .unwrap();
    let response = gw
        .http
        .post(gw.url("/users/password"))
        .header("x-request-id", "forgot-legacy")
        .json(&json!({ "email": "le..gacy@example.com" }))
        .send()
        .await
        .unwrap();
    assert_forgot_answered(response, "the legacy address").await;
    forgot_ok(gw, ALICE).await;
    nth_reset(&env.sink, 1, ALICE).await;

    let filter = AuditFilter {
        user_id: None,
        email: None,
        since: None,
        limit: 1_000,
    };
    let event_of_request = || async {
        store
            .audit_events(&filter)
            .await
            .unwrap()
            .into_iter()
            .find(|e| e.request_id.as_deref() == Some("forgot-legacy"))
    };
    eventually!(
        event_of_request().await.is_some(),
        "no audit event for the request"
    );
    let event = event_of_request().await.unwrap();
    assert_eq!(event.kind, "password_reset_requested");
    assert_eq!(event.detail["outcome"], "invalid_address");
    assert_eq!(event.user_id, None, "not looked up");
    assert_ne!(event.user_id, Some(legacy.id));
    // Nothing was queued for it: no mail, and so no mail failure either.
    assert_no_more_mail(&env.sink, 1).await;
    let events = store.audit_events(&filter).await.unwrap();
    assert!(
        events.iter().all(|e| e.kind != "mail_failed"),
        "{events:#?}"
    );
}

// Multi-threaded like the real gateway: on a single-threaded test runtime the background
// work for a known address (lookup, token, e-mail) would run on the very thread that measures
// the next response, and the test would time its own scheduling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgot_password_timing_does_not_reveal_whether_an_address_exists() {
    // File transport: the e-mails themselves are not the subject here.
    let upstream = FakeUpstream::start().await;
    let gw = Gateway::start_with(
        &upstream.url(),
        "[auth.reset_throttle]\nper_account = 1000\nper_ip = 1000\n",
    )
    .await;
    gw.add_user(ALICE, Role::User).await;

    async fn timed(gw: &Gateway, email: &str) -> (Duration, StatusCode, HeaderMap, Vec<u8>) {
        let started = Instant::now();
        let response = forgot(gw, email).await;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.unwrap().to_vec();
        (started.elapsed(), status, headers, body)
    }
    // Warm-up: connection set-up and first-use costs.
    for _ in 0..3 {
        timed(&gw, ALICE).await;
        timed(&gw, "nobody@example.com").await;
    }
    const N: usize = 40;
    let mut known = Vec::with_capacity(N);
    let mut unknown = Vec::with_capacity(N);
    let mut answers = Vec::new();
    for i in 0..N {
        // Alternate which goes first, so neither always runs right after the other's work.
        let order = if i % 2 == 0 {
            [ALICE, "nobody@example.com"]
        } else {
            ["nobody@example.com", ALICE]
        };
        for email in order {
            // What is compared is each response's own latency, not how much background work
            // the previous request left behind on a 2-core machine.
            tokio::time::sleep(Duration::from_millis(15)).await;
            let (elapsed, status, headers, body) = timed(&gw, email).await;
            if email == ALICE {
                known.push(elapsed);
            } else {
                unknown.push(elapsed);
            }
            answers.push((email, status, headers, body));
        }
    }
    // Identical answers: status, body bytes, and the headers a client could compare.
    let (_, status0, headers0, body0) = &answers[0];
    assert_eq!(*status0, StatusCode::OK);
    assert_eq!(body0.as_slice(), br#"{"message":"ok"}"#);
    for (email, status, headers, body) in &answers {
        assert_eq!(status, status0, "{email}");
        assert_eq!(body, body0, "{email}");
        for name in [CONTENT_TYPE.as_str(), "content-length", "set-cookie"] {
            assert_eq!(headers.get(name), headers0.get(name), "{email}: {name}");
        }
    }
    known.sort();
    unknown.sort();
    let (k50, u50) = (quantile(&known, 0.5), quantile(&unknown, 0.5));
    let (k25, u25) = (quantile(&known, 0.25), quantile(&unknown, 0.25));
    let (k75, u75) = (quantile(&known, 0.75), quantile(&unknown, 0.75));
    let report =
        format!("known p25/p50/p75 {k25:?}/{k50:?}/{k75:?}, unknown {u25:?}/{u50:?}/{u75:?}");
    assert!(
        comparable(k50, u50, 2.0, Duration::from_millis(2)),
        "medians differ: {report}"
    );
    assert!(
        comparable(k25, u25, 3.0, Duration::from_millis(3)),
        "25th percentiles differ: {report}"
    );
    assert!(
        comparable(k75, u75, 3.0, Duration::from_millis(3)),
        "75th percentiles differ: {report}"
    );
    // The known address really was being served: its reset e-mails are in the outbox.
    let outbox = gw.dir.path().join("outbox");
    eventually!(
        std::fs::read_dir(&outbox).map_or(0, |d| d.count()) >= N,
        "reset e-mails for the known address in {}",
        outbox.display()
    );
}

// ---------------------------------------------------------------------------------------
// POST /users/password: throttling

#[tokio::test]
async fn reset_requests_are_limited_per_email() {
    let env = setup().await;
    let gw = &env.gw;
    // Five per address in 15 minutes, however the address is written.
    for email in [
        ALICE,
        "Alice@example.com",
        " alice@example.com",
        ALICE,
        "ALICE@EXAMPLE.COM",
    ] {
        forgot_ok(gw, email).await;
    }
    assert_throttled(forgot(gw, ALICE).await, THROTTLE_WINDOW, ALICE).await;
    // An unknown address is limited the same way, so the 429 reveals nothing either.
    for _ in 0..5 {
        forgot_ok(gw, "nobody@example.com").await;
    }
    let response = forgot(gw, "nobody@example.com").await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key(RETRY_AFTER));
    // Other addresses are unaffected.
    forgot_ok(gw, BOB).await;
    // The five accepted requests sent five e-mails to alice (each superseding the one
    // before), the refused one none; then bob's.
    // The lookups run in background tasks, so the order of arrival is not fixed.
    let mails = env.sink.wait_for(6, MAIL_WAIT).await;
    let (to_alice, to_bob): (Vec<&ReceivedMail>, Vec<&ReceivedMail>) =
        mails.iter().partition(|m| m.to == [ALICE]);
    assert_eq!((to_alice.len(), to_bob.len()), (5, 1), "{mails:#?}");
    let earlier: Vec<Link> = to_alice.iter().map(|m| reset_link_in(m, ALICE)).collect();
    reset_link_in(to_bob[0], BOB);
    assert_no_more_mail(&env.sink, 6).await;

    // Once the window has passed, alice may ask again; the new link supersedes all five.
    gw.clock.advance(Duration::from_secs(THROTTLE_WINDOW + 1));
    let newest = env.reset_alice(7).await;
    for link in &earlier {
        assert_token_refused(gw, ALICE, NEW_PASSWORD, &link.token).await;
    }
    assert_password_set(gw, ALICE, NEW_PASSWORD, &newest.token).await;
}

#[tokio::test]
async fn reset_requests_are_limited_per_client_ip_across_addresses() {
    let env = setup_with("[auth.reset_throttle]\nper_ip = 3\n").await;
    let gw = &env.gw;
    for email in ["one@example.com", "two@example.com", ALICE] {
        forgot_ok(gw, email).await;
    }
    for email in ["four@example.com", BOB] {
        assert_throttled(forgot(gw, email).await, THROTTLE_WINDOW, email).await;
    }
    // Only alice's accepted request sent mail.
    nth_reset(&env.sink, 1, ALICE).await;
    assert_no_more_mail(&env.sink, 1).await;
}

// ---------------------------------------------------------------------------------------
// PATCH /users/password: which tokens work

#[tokio::test]
async fn reset_tokens_expire_after_one_hour() {
    let env = setup().await;
    let gw = &env.gw;
    let early = env.reset_alice(1).await;
    // Still good five seconds before the hour is up.
    gw.clock.advance(Duration::from_secs(RESET_TTL - 5));
    assert_password_set(gw, ALICE, NEW_PASSWORD, &early.token).await;

    let late = env.reset_alice(2).await;
    gw.clock.advance(Duration::from_secs(RESET_TTL + 1));
    assert_token_refused(gw, ALICE, "too late passphrase", &late.token).await;
    assert_login_refused(gw, ALICE, "too late passphrase").await;
    login_with(gw, ALICE, NEW_PASSWORD).await;
    // A new request brings a working link again.
    let again = env.reset_alice(3).await;
    assert_alice_reset_to(gw, ALICE, "in time passphrase", &again.token).await;
}

#[tokio::test]
async fn a_newer_reset_supersedes_the_earlier_one() {
    let env = setup().await;
    let gw = &env.gw;
    let first = env.reset_alice(1).await;
    let second = env.reset_alice(2).await;
    assert_ne!(first.token, second.token);
    assert_token_refused(gw, ALICE, NEW_PASSWORD, &first.token).await;
    assert_login_refused(gw, ALICE, NEW_PASSWORD).await;
    assert_alice_reset_to(gw, ALICE, NEW_PASSWORD, &second.token).await;
}

#[tokio::test]
async fn a_reset_token_is_bound_to_its_user() {
    let env = setup().await;
    let gw = &env.gw;
    let link = env.reset_alice(1).await;
    // Another existing user, an unknown address: refused, and nothing changes.
    assert_token_refused(gw, BOB, NEW_PASSWORD, &link.token).await;
    assert_token_refused(gw, "nobody@example.com", NEW_PASSWORD, &link.token).await;
    login_with(gw, BOB, PASSWORD).await;
    assert_login_refused(gw, BOB, NEW_PASSWORD).await;
    // Still unspent for its own user, written in any case.
    assert_alice_reset_to(gw, " ALICE@example.com", NEW_PASSWORD, &link.token).await;
}

#[tokio::test]
async fn garbage_tokens_are_refused_without_spending_the_real_one() {
    let env = setup().await;
    let gw = &env.gw;
    let link = env.reset_alice(1).await;
    let mut tampered = link.token.clone().into_bytes();
    tampered[0] = if tampered[0] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let long = "x".repeat(2000);
    for token in [
        "",
        " ",
        "garbage",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        tampered.as_str(),
        &link.token[..link.token.len() - 1],
        "✓✓✓ not base64 ✓✓✓",
        long.as_str(),
    ] {
        assert_token_refused(gw, ALICE, NEW_PASSWORD, token).await;
        // The same for an unknown address: nothing tells the two apart.
        assert_token_refused(gw, "nobody@example.com", NEW_PASSWORD, token).await;
    }
    // A weak password with a wrong token is a token error: the policy is only revealed to
    // holders of a valid token.
    assert_token_refused(gw, ALICE, "short", "garbage").await;
    // Policy with the valid token: named, and the token survives it.
    let (status, msg) = status_message(set_password(gw, ALICE, "short", &link.token).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(msg.contains("at least 12"), "{msg}");
    let (status, msg) = status_message(set_password(gw, ALICE, ALICE, &link.token).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(msg.contains("email"), "{msg}");
    // Nothing above spent the token or touched alice's password.
    login_with(gw, ALICE, PASSWORD).await;
    assert_alice_reset_to(gw, ALICE, NEW_PASSWORD, &link.token).await;
}

// ---------------------------------------------------------------------------------------
// bad input

#[tokio::test]
async fn malformed_password_requests_are_400_json_never_500() {
    let env = setup().await;
    let gw = &env.gw;
    let json_ct = "application/json";
    let post_cases: Vec<(&str, &str, String)> = vec![
        ("malformed JSON", json_ct, r#"{"email": "#.into()),
        ("empty body", json_ct, String::new()),
        ("a string", json_ct, r#""alice@example.com""#.into()),
        ("null", json_ct, "null".into()),
        ("missing email", json_ct, "{}".into()),
        ("email is a number", json_ct, r#"{"email":5}"#.into()),
        ("email is null", json_ct, r#"{"email":null}"#.into()),
        ("email is an object", json_ct, r#"{"email":{"a":1}}"#.into()),
        (
            "text/plain",
            "text/plain",
            r#"{"email":"alice@example.com"}"#.into(),
        ),
    ];
    let full = |password: &str, token: &str| {
        format!(r#"{{"email":"alice@example.com","password":{password},"token":{token}}}"#)
    };
    let patch_cases: Vec<(&str, &str, String)> = vec![
        (
            "malformed JSON",
            json_ct,
            r#"{"email":"alice@example.com","#.into(),
        ),
        ("empty body", json_ct, String::new()),
        ("null", json_ct, "null".into()),
        ("missing everything", json_ct, "{}".into()),
        (
            "missing token",
            json_ct,
            r#"{"email":"alice@example.com","password":"a long enough one"}"#.into(),
        ),
        (
            "missing password",
            json_ct,
            r#"{"email":"alice@example.com","token":"t"}"#.into(),
        ),
        (
            "missing email",
            json_ct,
            r#"{"password":"a long enough one","token":"t"}"#.into(),
        ),
        (
            "password is a number",
            json_ct,
            full("123456789012345", r#""t""#),
        ),
        (
            "token is a number",
            json_ct,
            full(r#""a long enough one""#, "42"),
        ),
        (
            "token is null",
            json_ct,
            full(r#""a long enough one""#, "null"),
        ),
        (
            "password is a list",
            json_ct,
            full(r#"["hunter2hunter2"]"#, r#""t""#),
        ),
        (
            "text/plain",
            "text/plain",
            full(r#""a long enough one""#, r#""t""#),
        ),
    ];
    for (method, cases) in [
        (reqwest::Method::POST, post_cases),
        (reqwest::Method::PATCH, patch_cases),
    ] {
        for (case, content_type, body) in cases {
            let response = gw
                .http
                .request(method.clone(), gw.url("/users/password"))
                .header(CONTENT_TYPE, content_type)
                .body(body)
                .send()
                .await
                .unwrap();
            let (status, msg) = status_message(response).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {case}: {msg}");
            assert!(!msg.is_empty(), "{method} {case}");
            assert_ne!(msg, INVALID_ONE_TIME_TOKEN, "{method} {case}");
            assert!(!msg.contains("hunter2"), "{method} {case}: echoed {msg}");
            assert!(
                !msg.contains("123456789012345"),
                "{method} {case}: echoed {msg}"
            );
        }
        // No Content-Type at all.
        let response = gw
            .http
            .request(method.clone(), gw.url("/users/password"))
            .body(r#"{"email":"alice@example.com"}"#)
            .send()
            .await
            .unwrap();
        let (status, _) = status_message(response).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{method} without a Content-Type"
        );
    }
    // Unknown fields are ignored.
    let response = gw
        .http
        .post(gw.url("/users/password"))
        .json(&json!({ "email": ALICE, "locale": "cs" }))
        .send()
        .await
        .unwrap();
    assert_forgot_answered(response, "with an unknown field").await;
    let link = nth_reset(&env.sink, 1, ALICE).await;
    let response = gw
        .http
        .patch(gw.url("/users/password"))
        .json(&json!({
            "email": ALICE,
            "password": NEW_PASSWORD,
            "token": link.token,
            "password_confirmation": NEW_PASSWORD,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    login_with(gw, ALICE, NEW_PASSWORD).await;
    // Only that one e-mail: none of the malformed POSTs (one of which is text/plain with
    // alice's address) was acted on.
    assert_no_more_mail(&env.sink, 1).await;
}

#[tokio::test]
async fn a_reset_token_is_spent_once_even_under_concurrent_use() {
    let env = setup().await;
    let gw = &env.gw;
    let session = gw.login(ALICE).await;
    let link = env.reset_alice(1).await;
    assert_spent_once_under_concurrent_use(gw, ALICE, &link.token).await;
    assert_rejected(gw, &session).await;
}
