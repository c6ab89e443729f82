//! The audit trail over real sockets, a real SMTP sink and a fake OpenID provider: every
//! audited action of the auth API is recorded in the store and logged under target `audit`,
//! with the user, the client IP and the request id the client sent; a failed login's reason
//! is recorded but never answered; and no persisted record or log line holds a token, a
//! password or a link secret.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::accounts::{INVALID_CREDENTIALS, LINK_PREFIX, NEW_PASSWORD};
use common::oidc::{CLIENT_SECRET, FakeIdp};
use common::smtp::SmtpSink;
use common::thread_log;
use common::{FakeUpstream, Gateway, MailingGateway, PASSWORD};
use meiro_gate::store::{AuditEvent, AuditFilter, Role, UserId};
use serde_json::{Value, json};
use url::Url;

const ADMIN: &str = "admin@example.com";
const ALICE: &str = "alice@example.com";
const CAROL: &str = "carol@example.com";
const CAROL_PASSWORD: &str = "carol's first passphrase";
/// Typed into the email field by mistake: must never be recorded.
const PASSWORD_AS_EMAIL: &str = "hunter2-typed-in-the-wrong-field";

/// Sends `request` with `X-Request-Id: id`.
async fn send(request: reqwest::RequestBuilder, id: &str) -> reqwest::Response {
    let response = request.header("x-request-id", id).send().await.unwrap();
    assert_eq!(response.headers()["x-request-id"], id);
    response
}

async fn token_of(response: reqwest::Response) -> String {
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["token"].as_str().expect("a token").to_owned()
}

/// The one persisted event of the request `id` (written in the background: waited for).
async fn event_of(gw: &Gateway, id: &str) -> AuditEvent {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut found: Vec<AuditEvent> = gw
            .audit_events()
            .await
            .into_iter()
            .filter(|e| e.request_id.as_deref() == Some(id))
            .collect();
        if !found.is_empty() {
            assert_eq!(found.len(), 1, "one event for {id}: {found:#?}");
            return found.pop().unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no audit event for request {id}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts the event of request `id`: its kind, user, and the client's address.
async fn assert_recorded(gw: &Gateway, id: &str, kind: &str, user: Option<UserId>) -> AuditEvent {
    let event = event_of(gw, id).await;
    assert_eq!(event.kind, kind, "{event:?}");
    assert_eq!(event.user_id, user, "{event:?}");
    assert_eq!(
        event.client_ip,
        Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        "{event:?}"
    );
    let now = gw.clock.now();
    assert!(event.at <= now && event.at > now - 60, "{event:?}");
    event
}

/// The `reset_token` of the newest mail to `to` (waiting for the `n`th message).
async fn link_token(sink: &SmtpSink, n: usize, to: &str) -> String {
    let mails = sink.wait_for(n, Duration::from_secs(10)).await;
    let mail = mails
        .iter()
        .rev()
        .find(|m| m.to == [to])
        .unwrap_or_else(|| panic!("no mail to {to}: {mails:#?}"));
    let link = mail.link_starting_with(LINK_PREFIX).expect("a link");
    Url::parse(&link)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "reset_token")
        .map(|(_, v)| v.into_owned())
        .expect("a reset_token")
}

#[tokio::test]
async fn every_audited_action_is_recorded_with_user_ip_and_request_id_and_no_secret() {
    thread_log::capture("info", thread_log::Format::Json);
    let idp = FakeIdp::start().await;
    let env = MailingGateway::start(&[&idp.okta_toml("")]).await;
    let gw = &env.gw;
    let admin = gw.add_user(ADMIN, Role::Admin).await;
    let alice = gw.add_user(ALICE, Role::User).await;
    let login = |email: &str, password: &str| {
        gw.http
            .post(gw.url("/users/login"))
            .json(&json!({ "email": email, "password": password }))
    };
    let mut secrets: Vec<String> = vec![
        PASSWORD.into(),
        NEW_PASSWORD.into(),
        CAROL_PASSWORD.into(),
        PASSWORD_AS_EMAIL.into(),
        "not the password".into(),
        CLIENT_SECRET.into(),
    ];

    // Credentials login: success, and failures whose reason only the record knows.
    let first = token_of(send(login(ALICE, PASSWORD), "req-login").await).await;
    assert_recorded(gw, "req-login", "login_succeeded", Some(alice.id)).await;
    let refused = send(login(ALICE, "not the password"), "req-login-wrong").await;
    assert_eq!(refused.status(), 401);
    let body = refused.text().await.unwrap();
    assert!(body.contains(INVALID_CREDENTIALS), "{body}");
    assert!(
        !body.contains("wrong_password"),
        "the reason is internal: {body}"
    );
    let event = assert_recorded(gw, "req-login-wrong", "login_failed", Some(alice.id)).await;
    assert_eq!(event.detail["reason"], "wrong_password");
    assert_eq!(event.email.as_deref(), Some(ALICE));
    send(login("Nobody@Example.com", PASSWORD), "req-login-unknown").await;
    let event = assert_recorded(gw, "req-login-unknown", "login_failed", None).await;
    assert_eq!(event.detail["reason"], "unknown_user");
    assert_eq!(event.email.as_deref(), Some("nobody@example.com"));
    send(login(PASSWORD_AS_EMAIL, PASSWORD), "req-login-garbage").await;
    let event = assert_recorded(gw, "req-login-garbage", "login_failed", None).await;
    assert_eq!(event.email, None, "not an address: not recorded");

    // Refresh, then the same token refreshed again (reuse ends the session).
    let refresh = |token: &str| {
        gw.http
            .patch(gw.url("/users/login"))
            .json(&json!({ "token": token }))
    };
    let second = token_of(send(refresh(&first), "req-refresh").await).await;
    assert_recorded(gw, "req-refresh", "token_refreshed", Some(alice.id)).await;
    let reuse = send(refresh(&first), "req-reuse").await;
    assert_eq!(reuse.status(), 401);
    assert_recorded(gw, "req-reuse", "refresh_reused", Some(alice.id)).await;

    // Logout.
    let third = token_of(send(login(ALICE, PASSWORD), "req-login-2").await).await;
    let logout = send(
        gw.http
            .delete(gw.url("/users/login"))
            .header("x-access-token", &third),
        "req-logout",
    )
    .await;
    assert_eq!(logout.status(), 200);
    let event = assert_recorded(gw, "req-logout", "logout", Some(alice.id)).await;
    assert!(event.detail.contains_key("session"), "{event:?}");

    // Okta login.
    let code = idp.login_code(ALICE);
    let okta = token_of(
        send(
            gw.http
                .post(gw.url("/users/okta_login"))
                .json(&json!({ "code": code })),
            "req-okta",
        )
        .await,
    )
    .await;
    assert_recorded(gw, "req-okta", "okta_login", Some(alice.id)).await;
    let refused = send(
        gw.http
            .post(gw.url("/users/okta_login"))
            .json(&json!({ "code": "an-unknown-code" })),
        "req-okta-bad",
    )
    .await;
    assert_eq!(refused.status(), 401);
    let event = assert_recorded(gw, "req-okta-bad", "okta_login_failed", None).await;
    assert!(event.detail.contains_key("reason"), "{event:?}");
    secrets.extend([code, "an-unknown-code".to_owned()]);

    // Invitations: created, re-sent, accepted.
    let admin_token = token_of(send(login(ADMIN, PASSWORD), "req-admin-login").await).await;
    let invite = send(
        gw.http
            .post(gw.url("/users/invite"))
            .header("x-access-token", &admin_token)
            .json(&json!({ "email": CAROL })),
        "req-invite",
    )
    .await;
    assert_eq!(invite.status(), 200);
    let carol: Value = invite.json().await.unwrap();
    let carol_id = UserId(carol["id"].as_str().unwrap().parse().unwrap());
    let event = assert_recorded(gw, "req-invite", "invitation_created", Some(carol_id)).await;
    assert_eq!(event.detail["by"], admin.id.to_string());
    let first_invitation = link_token(&env.sink, 1, CAROL).await;
    let reinvite = send(
        gw.http
            .patch(gw.url("/users/invite"))
            .header("x-access-token", &admin_token)
            .json(&json!({ "email": CAROL })),
        "req-reinvite",
    )
    .await;
    assert_eq!(reinvite.status(), 200);
    assert_recorded(gw, "req-reinvite", "invitation_resent", Some(carol_id)).await;
    let invitation = link_token(&env.sink, 2, CAROL).await;
    let set_password = |email: &str, password: &str, token: &str| {
        gw.http
            .patch(gw.url("/users/password"))
            .json(&json!({ "email": email, "password": password, "token": token }))
    };
    let accepted = send(
        set_password(CAROL, CAROL_PASSWORD, &invitation),
        "req-accept",
    )
    .await;
    assert_eq!(accepted.status(), 200);
    assert_recorded(gw, "req-accept", "invitation_accepted", Some(carol_id)).await;

    // Password reset: requested (in the background), completed.
    let forgot = send(
        gw.http
            .post(gw.url("/users/password"))
            .json(&json!({ "email": ALICE })),
        "req-forgot",
    )
    .await;
    assert_eq!(forgot.status(), 200);
    assert_recorded(gw, "req-forgot", "password_reset_requested", Some(alice.id)).await;
    let reset = link_token(&env.sink, 3, ALICE).await;
    let done = send(set_password(ALICE, NEW_PASSWORD, &reset), "req-reset").await;
    assert_eq!(done.status(), 200);
    assert_recorded(gw, "req-reset", "password_reset_completed", Some(alice.id)).await;
    secrets.extend([
        first,
        second,
        third,
        okta,
        admin_token,
        first_invitation,
        invitation,
        reset,
    ]);

    // Every event is in the log under target `audit`, with its request id.
    let logs = thread_log::logged();
    let audit_lines: Vec<Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["target"] == "audit")
        .collect();
    for event in gw.audit_events().await {
        let id = event
            .request_id
            .clone()
            .expect("every event here has a request id");
        assert!(
            audit_lines
                .iter()
                .any(|l| l["fields"]["request_id"] == id.as_str()
                    && l["fields"]["kind"] == event.kind.as_str()),
            "no audit log line for {event:?}"
        );
    }

    // No secret anywhere: not in the store, not in any log line.
    let persisted = serde_json::to_string(&gw.audit_events().await).unwrap();
    for secret in &secrets {
        assert!(secret.len() >= 8, "a meaningful needle: {secret:?}");
        assert!(
            !persisted.contains(secret.as_str()),
            "persisted: {secret:?} in {persisted}"
        );
        assert!(!logs.contains(secret.as_str()), "logged: {secret:?}");
    }
}

#[tokio::test]
async fn a_throttled_login_is_recorded_as_a_failure() {
    thread_log::capture("info", thread_log::Format::Json);
    let upstream = FakeUpstream::start().await;
    let gw = Gateway::start_with(
        &upstream.url(),
        "[auth.login_throttle]\nper_account = 1\nper_ip = 100\nwindow = \"15m\"\n",
    )
    .await;
    let alice = gw.add_user(ALICE, Role::User).await;
    let login = || {
        gw.http
            .post(gw.url("/users/login"))
            .json(&json!({ "email": ALICE, "password": "not the password" }))
    };
    send(login(), "req-first").await;
    let throttled = send(login(), "req-throttled").await;
    assert_eq!(throttled.status(), 429);
    let event = assert_recorded(&gw, "req-throttled", "login_failed", None).await;
    assert_eq!(event.detail["reason"], "throttled");
    assert_eq!(event.email.as_deref(), Some(ALICE));
    let first = assert_recorded(&gw, "req-first", "login_failed", Some(alice.id)).await;
    assert_eq!(first.detail["reason"], "wrong_password");
}

#[tokio::test]
async fn events_queued_at_shutdown_are_written_and_old_ones_pruned() {
    thread_log::capture("info", thread_log::Format::Json);
    let upstream = FakeUpstream::start().await;
    let mut gw = Gateway::start_with(&upstream.url(), "").await;
    gw.add_user(ALICE, Role::User).await;
    let store = gw.app().auth().store().clone();
    let now = gw.clock.now();
    let old = |at, id: &str| AuditEvent {
        at,
        kind: "login_succeeded".into(),
        user_id: None,
        email: Some("old@example.com".into()),
        client_ip: None,
        request_id: Some(id.into()),
        detail: Default::default(),
    };
    store
        .append_audit(&[old(now - 7200, "req-old"), old(now - 60, "req-recent")])
        .await
        .unwrap();
    for i in 0..20 {
        gw.http
            .post(gw.url("/users/login"))
            .header("x-request-id", format!("req-burst-{i}"))
            .json(&json!({ "email": ALICE, "password": PASSWORD }))
            .send()
            .await
            .unwrap();
    }
    assert!(gw.app.take().unwrap().shutdown().await);
    let filter = AuditFilter {
        user_id: None,
        email: None,
        since: None,
        limit: 1000,
    };
    let ids = |events: Vec<AuditEvent>| -> Vec<String> {
        events.into_iter().filter_map(|e| e.request_id).collect()
    };
    let written = ids(store.audit_events(&filter).await.unwrap());
    let burst = written
        .iter()
        .filter(|r| r.starts_with("req-burst-"))
        .count();
    assert_eq!(
        burst, 20,
        "every event written by the time shutdown returns"
    );
    assert!(written.contains(&"req-old".to_owned()));

    // Restarted with a one-hour retention: the writer prunes as it starts.
    let replica = Gateway::start_with(
        &upstream.url(),
        &format!("{}\n[audit]\nretention = \"1h\"\n", gw.replica_toml("")),
    )
    .await;
    let store = replica.app().auth().store().clone();
    eventually!(
        !ids(store.audit_events(&filter).await.unwrap()).contains(&"req-old".to_owned()),
        "a record older than the retention is pruned"
    );
    let kept = ids(store.audit_events(&filter).await.unwrap());
    assert!(kept.contains(&"req-recent".to_owned()), "{kept:?}");
    assert_eq!(
        kept.iter().filter(|r| r.starts_with("req-burst-")).count(),
        20
    );
}
