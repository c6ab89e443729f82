//! Invitations over real sockets and a real SMTP server on loopback, as api-contract.md fixes
//! them: `POST /users/invite`, `PATCH /users/invite`, `GET /users/{user_id}/invitation_link`,
//! and accepting an invitation through `PATCH /users/password`.

mod common;

use std::time::{Duration, Instant};

use common::accounts::{
    INVALID_ONE_TIME_TOKEN, LINK_PREFIX, MAIL_WAIT, NEW_PASSWORD, assert_login_refused,
    assert_no_more_mail, assert_password_set, assert_spent_once_under_concurrent_use,
    assert_token_refused, login_with, set_password,
};
use common::smtp::{ReceivedMail, SmtpSink};
use common::{
    FakeUpstream, Gateway, MailingGateway, PASSWORD, smtp_toml, status_json, status_message,
    status_message_of,
};
use meiro_gate::store::Role;
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use url::Url;

const ADMIN: &str = "admin@example.com";
const INVITATION_TTL: u64 = 5 * 86_400;
// ---------------------------------------------------------------------------------------
// helpers

/// A gateway delivering over SMTP to `sink`, with an admin logged in.
struct Env {
    upstream: FakeUpstream,
    sink: SmtpSink,
    gw: Gateway,
    admin_id: String,
    admin: String,
}

async fn setup() -> Env {
    let MailingGateway { upstream, sink, gw } = MailingGateway::start(&[]).await;
    let admin_user = gw.add_user(ADMIN, Role::Admin).await;
    let admin = gw.login(ADMIN).await;
    Env {
        upstream,
        sink,
        gw,
        admin_id: admin_user.id.to_string(),
        admin,
    }
}

async fn invite(gw: &Gateway, admin: &str, body: Value) -> reqwest::Response {
    gw.http
        .post(gw.url("/users/invite"))
        .header("x-access-token", admin)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// `POST /users/invite`, asserting the 200, returning the User body.
async fn invite_ok(env: &Env, email: &str) -> Value {
    let (status, body) =
        status_json(invite(&env.gw, &env.admin, json!({ "email": email })).await).await;
    assert_eq!(status, StatusCode::OK, "invite {email}: {body}");
    body
}

async fn reinvite(gw: &Gateway, admin: &str, email: &str) -> reqwest::Response {
    gw.http
        .patch(gw.url("/users/invite"))
        .header("x-access-token", admin)
        .json(&json!({ "email": email }))
        .send()
        .await
        .unwrap()
}

async fn get_link(gw: &Gateway, admin: &str, user_id: &str) -> reqwest::Response {
    gw.http
        .get(gw.url(&format!("/users/{user_id}/invitation_link")))
        .header("x-access-token", admin)
        .send()
        .await
        .unwrap()
}

/// The `user_invitation_link` of a `GET /users/{id}/invitation_link` that must succeed.
async fn get_link_ok(gw: &Gateway, admin: &str, user_id: &str) -> String {
    let (status, body) = status_json(get_link(gw, admin, user_id).await).await;
    assert_eq!(status, StatusCode::OK, "invitation link: {body}");
    assert_eq!(body.as_object().unwrap().len(), 1, "only the link: {body}");
    body["user_invitation_link"]
        .as_str()
        .expect("a link")
        .to_owned()
}

/// Asserts `GET /users/{id}/invitation_link` is a 404 with a JSON message.
async fn assert_no_link(gw: &Gateway, admin: &str, user_id: &str) {
    let (status, msg) = status_message(get_link(gw, admin, user_id).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{user_id}: {msg}");
    assert!(!msg.is_empty());
}

/// A set-password link, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Link {
    raw: String,
    email: String,
    token: String,
    referrer: String,
}

/// Parses a link of the contract's shape:
/// `<frontend_url>/set_password/?email=<urlencoded>&reset_token=<token>&referrer=<r>`.
fn parse_link(raw: &str) -> Link {
    let url = Url::parse(raw).unwrap_or_else(|e| panic!("{raw:?} is not a URL: {e}"));
    assert_eq!(url.scheme(), "http", "{raw}");
    assert_eq!(url.host_str(), Some("gateway.test"), "{raw}");
    assert_eq!(url.port(), None, "{raw}");
    assert_eq!(url.path(), "/set_password/", "{raw}");
    assert_eq!(url.fragment(), None, "{raw}");
    let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["email", "reset_token", "referrer"], "{raw}");
    let token = pairs[1].1.clone();
    assert!(
        token.len() >= 22,
        "a token of at least 128 bits (22 base64 characters): {token:?}"
    );
    assert!(
        token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "a URL-safe token needs no encoding: {token:?}"
    );
    Link {
        raw: raw.to_owned(),
        email: pairs[0].1.clone(),
        token,
        referrer: pairs[2].1.clone(),
    }
}

/// The invitation link of a received e-mail, checked against its recipient; the HTML body
/// carries the same link.
fn invitation_in(mail: &ReceivedMail, to: &str) -> Link {
    assert_eq!(mail.to, [to], "envelope recipient");
    let to_header = mail.header("to").expect("a To header");
    assert!(to_header.contains(to), "To: {to_header}");
    let raw = mail
        .link_starting_with(LINK_PREFIX)
        .unwrap_or_else(|| panic!("no link in the text body: {:?}", mail.text_body()));
    let link = parse_link(&raw);
    assert_eq!(link.email, to);
    assert_eq!(link.referrer, "invitation-link");
    let html = mail.html_body().expect("an HTML body");
    assert!(
        html.contains(&raw.replace('&', "&amp;")),
        "the HTML body carries the link: {html}"
    );
    link
}

/// Waits for the `n`th message (1-based) and returns the invitation link in it.
async fn nth_invitation(sink: &SmtpSink, n: usize, to: &str) -> Link {
    let mails = sink.wait_for(n, MAIL_WAIT).await;
    assert_eq!(mails.len(), n, "exactly {n} message(s): {mails:#?}");
    invitation_in(&mails[n - 1], to)
}

fn user_id(user: &Value) -> String {
    user["id"].as_str().expect("a user id").to_owned()
}

// ---------------------------------------------------------------------------------------
// the whole flow

#[tokio::test]
async fn invited_colleague_gets_a_real_email_sets_a_password_and_logs_in() {
    let env = setup().await;
    let gw = &env.gw;
    let before = gw.clock.now();
    let response = invite(
        gw,
        &env.admin,
        json!({ "email": "New.Colleague@Example.com", "role": "admin" }),
    )
    .await;
    let (status, user) = status_json(response).await;
    assert_eq!(status, StatusCode::OK, "{user}");
    let id = user_id(&user);
    uuid::Uuid::parse_str(&id).expect("the id is a UUID");
    let created = user["created"].as_str().expect("created is a string");
    let created = OffsetDateTime::parse(created, &Rfc3339).expect("created is RFC 3339");
    let created = created.unix_timestamp();
    assert!(
        (before - 1..=gw.clock.now() + 1).contains(&created),
        "created {created} vs now {before}"
    );
    assert_eq!(
        user,
        json!({
            "id": id,
            "email": "new.colleague@example.com",
            "deleted": false,
            "sso_enabled": false,
            "role": "admin",
            "disabled": false,
            "invitation_pending": true,
            "last_login": null,
            "created": user["created"],
        })
    );
    assert!(user.as_object().unwrap().contains_key("last_login"));

    // The e-mail: one message, to the lower-cased address, with the contract's link.
    let link = nth_invitation(&env.sink, 1, "new.colleague@example.com").await;
    assert_eq!(
        link.raw,
        format!(
            "http://gateway.test/set_password/?email=new.colleague%40example.com\
             &reset_token={}&referrer=invitation-link",
            link.token
        )
    );
    let mail = &env.sink.messages()[0];
    assert_eq!(
        mail.header("subject").as_deref(),
        Some("You have been invited to Meiro")
    );

    // Pending: no login yet, whatever the password.
    assert_login_refused(gw, "new.colleague@example.com", NEW_PASSWORD).await;
    assert_login_refused(gw, "new.colleague@example.com", "").await;

    assert_password_set(gw, &link.email, NEW_PASSWORD, &link.token).await;

    // Active now: logs in, and the data plane sees an admin.
    let token = login_with(gw, "New.Colleague@example.com", NEW_PASSWORD).await;
    let response = gw.get_with_token("/anything", &token).await;
    assert_eq!(response.status(), StatusCode::OK);
    let seen = env.upstream.last();
    assert_eq!(seen.headers["x-meiro-user-id"], id.as_str());
    assert_eq!(
        seen.headers["x-meiro-user-email"],
        "new.colleague@example.com"
    );
    assert_eq!(seen.headers["x-meiro-user-role"], "admin");
    // ... and so does the auth API: an admin endpoint answers 404 (no pending invitation),
    // not 403.
    assert_no_link(gw, &token, &id).await;

    // The link was single-use: it cannot set another password.
    assert_token_refused(gw, &link.email, "yet another passphrase", &link.token).await;
    assert_login_refused(gw, &link.email, "yet another passphrase").await;
    login_with(gw, &link.email, NEW_PASSWORD).await;
    assert_no_more_mail(&env.sink, 1).await;
}

#[tokio::test]
async fn the_link_encodes_the_email_and_works_for_plus_addresses() {
    let env = setup().await;
    invite_ok(&env, "first+tag@example.com").await;
    let link = nth_invitation(&env.sink, 1, "first+tag@example.com").await;
    assert!(
        link.raw
            .starts_with("http://gateway.test/set_password/?email=first%2Btag%40example.com&"),
        "{}",
        link.raw
    );
    assert_password_set(&env.gw, &link.email, NEW_PASSWORD, &link.token).await;
    login_with(&env.gw, "first+tag@example.com", NEW_PASSWORD).await;
}

// ---------------------------------------------------------------------------------------
// who may call the admin endpoints

#[tokio::test]
async fn admin_endpoints_need_an_admin_token() {
    let env = setup().await;
    let gw = &env.gw;
    let pending = invite_ok(&env, "pending@example.com").await;
    let pending_id = user_id(&pending);
    let link = nth_invitation(&env.sink, 1, "pending@example.com").await;
    gw.add_user("plain@example.com", Role::User).await;
    let user_token = gw.login("plain@example.com").await;

    let endpoints: Vec<(reqwest::Method, String, Option<Value>)> = vec![
        (
            reqwest::Method::POST,
            "/users/invite".into(),
            Some(json!({ "email": "intruder@example.com", "role": "admin" })),
        ),
        (
            reqwest::Method::PATCH,
            "/users/invite".into(),
            Some(json!({ "email": "pending@example.com" })),
        ),
        (
            reqwest::Method::GET,
            format!("/users/{pending_id}/invitation_link"),
            None,
        ),
    ];
    for (method, path, body) in &endpoints {
        let request = |token: Option<&str>| {
            let mut request = gw.http.request(method.clone(), gw.url(path));
            if let Some(body) = body {
                request = request.json(body);
            }
            if let Some(token) = token {
                request = request.header("x-access-token", token);
            }
            request
        };
        let case = format!("{method} {path}");
        let (status, msg) = status_message(request(None).send().await.unwrap()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{case} without a token");
        assert_eq!(msg, "Missing access token", "{case}");
        let (status, msg) =
            status_message(request(Some("not-a-token")).send().await.unwrap()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{case} with garbage");
        assert_eq!(msg, "Invalid or expired access token", "{case}");
        let (status, body) = status_json(request(Some(&user_token)).send().await.unwrap()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{case} as a user");
        assert_eq!(
            body,
            json!({ "message": "Insufficient permissions" }),
            "{case}"
        );
        // The same user token as a bearer token.
        let response = request(None)
            .header("authorization", format!("Bearer {user_token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::FORBIDDEN,
            "{case} as a bearer"
        );
    }
    // None of it reached the upstream, created a user, renewed a link or sent mail.
    assert!(
        env.upstream.recorded().is_empty(),
        "{:?}",
        env.upstream.recorded()
    );
    let (status, _) = status_message(reinvite(gw, &env.admin, "intruder@example.com").await).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "no intruder user was created"
    );
    assert_eq!(get_link_ok(gw, &env.admin, &pending_id).await, link.raw);
    assert_no_more_mail(&env.sink, 1).await;
}

// ---------------------------------------------------------------------------------------
// POST /users/invite

#[tokio::test]
async fn invite_validates_the_request() {
    let env = setup().await;
    let gw = &env.gw;

    // An active user has that address (compared case-insensitively, trimmed).
    for email in [ADMIN, "  ADMIN@Example.COM "] {
        let (status, msg) =
            status_message(invite(gw, &env.admin, json!({ "email": email })).await).await;
        assert_eq!(status, StatusCode::CONFLICT, "{email:?}: {msg}");
        assert!(!msg.is_empty());
    }
    // A disabled user still holds the address.
    gw.add_user("disabled@example.com", Role::User).await;
    gw.disable_user("disabled@example.com")
        .await
        .expect("user exists");
    let (status, _) =
        status_message(invite(gw, &env.admin, json!({ "email": "disabled@example.com" })).await)
            .await;
    assert_eq!(status, StatusCode::CONFLICT);

    // Issue 14, hole 7: these were invited (200) and the mail then dropped as undeliverable.
    // The API now applies the mail path's own rule (`meiro_gate::email`).
    let undeliverable = ["a..b", "dot.", ".dot", "a(b)", "a:b", "a[b]", "a\\b"]
        .map(|local| format!("{local}@example.com"));
    let cases = [
        "not-an-email",
        "a@b",
        "",
        "   ",
        "@example.com",
        "a@",
        "two words@example.com",
        "a@b@example.com",
        // Issue 14, hole 7 (with `undeliverable` below).
        "a@[127.0.0.1]",
        // Accepted by lettre, refused by the rule on purpose.
        "\"ab\"@example.com",
        "a@localhost",
        "ü@example.com",
    ];
    for email in cases
        .into_iter()
        .chain(undeliverable.iter().map(String::as_str))
    {
        let (status, msg) =
            status_message(invite(gw, &env.admin, json!({ "email": email, "role": "user" })).await)
                .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{email:?}: {msg}");
        assert!(
            msg.starts_with("Invalid email address: "),
            "{email:?}: {msg}"
        );
        assert!(
            email.trim().is_empty() || !msg.contains(email),
            "{email:?} echoed: {msg}"
        );
        // Re-invite applies the same rule.
        let (status, msg) = status_message(reinvite(gw, &env.admin, email).await).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "re-invite {email:?}: {msg}"
        );
    }

    let raw = |content_type: &'static str, body: &'static str| {
        gw.http
            .post(gw.url("/users/invite"))
            .header("x-access-token", &env.admin)
            .header(CONTENT_TYPE, content_type)
            .body(body)
            .send()
    };
    let json_ct = "application/json";
    for (case, content_type, body) in [
        ("malformed JSON", json_ct, r#"{"email": "x@example.com""#),
        ("empty body", json_ct, ""),
        ("a string", json_ct, r#""x@example.com""#),
        ("missing email", json_ct, r#"{"role":"user"}"#),
        ("email is a number", json_ct, r#"{"email":5}"#),
        ("email is null", json_ct, r#"{"email":null}"#),
        (
            "unknown role",
            json_ct,
            r#"{"email":"x@example.com","role":"superuser"}"#,
        ),
        (
            "role is a number",
            json_ct,
            r#"{"email":"x@example.com","role":1}"#,
        ),
        (
            "role in capitals",
            json_ct,
            r#"{"email":"x@example.com","role":"ADMIN"}"#,
        ),
        ("text/plain", "text/plain", r#"{"email":"x@example.com"}"#),
    ] {
        let (status, msg) = status_message(raw(content_type, body).await.unwrap()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{case}: {msg}");
        assert!(!msg.is_empty(), "{case}");
    }
    // None of those created x@example.com.
    let (status, _) = status_message(reinvite(gw, &env.admin, "x@example.com").await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The role defaults to "user"; unknown fields are ignored.
    let (status, user) = status_json(
        invite(
            gw,
            &env.admin,
            json!({ "email": "default-role@example.com", "colour": "blue" }),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{user}");
    assert_eq!(user["role"], "user");
    assert_eq!(user["invitation_pending"], true);
    let (status, user) = status_json(
        invite(
            gw,
            &env.admin,
            json!({ "email": "explicit-user@example.com", "role": "user" }),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{user}");
    assert_eq!(user["role"], "user");

    // Only the two successful invitations sent mail, in order.
    let mails = env.sink.wait_for(2, MAIL_WAIT).await;
    invitation_in(&mails[0], "default-role@example.com");
    invitation_in(&mails[1], "explicit-user@example.com");
    assert_no_more_mail(&env.sink, 2).await;
    assert!(env.upstream.recorded().is_empty());
}

#[tokio::test]
async fn inviting_a_pending_user_again_replaces_the_link() {
    let env = setup().await;
    let first_user = invite_ok(&env, "again@example.com").await;
    let first = nth_invitation(&env.sink, 1, "again@example.com").await;
    let second_user = invite_ok(&env, "Again@Example.com").await;
    assert_eq!(second_user["id"], first_user["id"], "the same pending user");
    assert_eq!(second_user["invitation_pending"], true);
    let second = nth_invitation(&env.sink, 2, "again@example.com").await;
    assert_ne!(second.token, first.token);

    assert_token_refused(&env.gw, &first.email, NEW_PASSWORD, &first.token).await;
    assert_password_set(&env.gw, &second.email, NEW_PASSWORD, &second.token).await;
    login_with(&env.gw, "again@example.com", NEW_PASSWORD).await;
    // Accepted: inviting again is now a conflict.
    let (status, _) =
        status_message(invite(&env.gw, &env.admin, json!({ "email": "again@example.com" })).await)
            .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_no_more_mail(&env.sink, 2).await;
}

// ---------------------------------------------------------------------------------------
// PATCH /users/invite

#[tokio::test]
async fn reinvite_issues_a_new_link_and_retires_the_old_one() {
    let env = setup().await;
    let gw = &env.gw;
    let (status, invited) = status_json(
        invite(
            gw,
            &env.admin,
            json!({ "email": "resend@example.com", "role": "admin" }),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let id = user_id(&invited);
    let first = nth_invitation(&env.sink, 1, "resend@example.com").await;

    let (status, user) = status_json(reinvite(gw, &env.admin, " RESEND@example.com").await).await;
    assert_eq!(status, StatusCode::OK, "{user}");
    // The same user, unchanged apart from the link: still pending, still an admin.
    assert_eq!(user, invited);
    let second = nth_invitation(&env.sink, 2, "resend@example.com").await;
    assert_ne!(second.token, first.token);
    assert_eq!(get_link_ok(gw, &env.admin, &id).await, second.raw);

    assert_token_refused(gw, &first.email, NEW_PASSWORD, &first.token).await;
    assert_password_set(gw, &second.email, NEW_PASSWORD, &second.token).await;
    let token = login_with(gw, "resend@example.com", NEW_PASSWORD).await;
    gw.get_with_token("/x", &token).await;
    assert_eq!(env.upstream.last().headers["x-meiro-user-role"], "admin");

    // No pending invitation: an active user, the user just activated, an unknown address.
    for email in [ADMIN, "resend@example.com", "nobody@example.com"] {
        let (status, msg) = status_message(reinvite(gw, &env.admin, email).await).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{email}: {msg}");
        assert!(!msg.is_empty());
    }
    // A bad body is a 400, not a 404.
    let response = gw
        .http
        .patch(gw.url("/users/invite"))
        .header("x-access-token", &env.admin)
        .json(&json!({ "mail": "resend@example.com" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_no_more_mail(&env.sink, 2).await;
}

// ---------------------------------------------------------------------------------------
// GET /users/{user_id}/invitation_link

#[tokio::test]
async fn invitation_link_is_the_emailed_link_while_it_is_valid() {
    let env = setup().await;
    let gw = &env.gw;
    let id = user_id(&invite_ok(&env, "linked@example.com").await);
    let first = nth_invitation(&env.sink, 1, "linked@example.com").await;
    assert_eq!(get_link_ok(gw, &env.admin, &id).await, first.raw);
    // Stable: asking again does not issue a new one.
    assert_eq!(get_link_ok(gw, &env.admin, &id).await, first.raw);
    // The id in upper case is the same UUID.
    assert_eq!(
        get_link_ok(gw, &env.admin, &id.to_uppercase()).await,
        first.raw
    );

    invite_ok(&env, "linked@example.com").await;
    let second = nth_invitation(&env.sink, 2, "linked@example.com").await;
    assert_ne!(second.raw, first.raw);
    assert_eq!(get_link_ok(gw, &env.admin, &id).await, second.raw);

    // Unknown user, not a UUID, an active user.
    assert_no_link(gw, &env.admin, &uuid::Uuid::new_v4().to_string()).await;
    assert_no_link(gw, &env.admin, "not-a-uuid").await;
    assert_no_link(gw, &env.admin, &env.admin_id).await;
    // Not even text once decoded (axum's own rejection was a text/plain 400), and the other
    // spellings of this very UUID: a malformed id is an unknown user, in the contract's JSON.
    let simple = id.replace('-', "");
    for malformed in [
        "%FF".to_owned(),
        "%C3%28".to_owned(),
        format!("urn:uuid:{id}"),
        format!("%7B{id}%7D"),
        simple,
    ] {
        let response = get_link(gw, &env.admin, &malformed).await;
        let (status, msg) = status_message_of(response, &malformed).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{malformed}: {msg}");
        assert_eq!(msg, "User not found", "{malformed}");
    }

    // The link from the API is the e-mailed one: it sets the password.
    let link = parse_link(&get_link_ok(gw, &env.admin, &id).await);
    assert_password_set(gw, &link.email, NEW_PASSWORD, &link.token).await;
    assert_no_link(gw, &env.admin, &id).await;
    assert_no_more_mail(&env.sink, 2).await;
}

/// A mail the server refuses for good (550) cannot be foreseen by the API: the admin is told
/// "invited". It must not be lost silently: an audit event and a metric say so, and the link
/// stays retrievable for the admin to pass on another way.
#[tokio::test]
async fn a_refused_invitation_mail_is_audited_counted_and_its_link_still_works() {
    let env = setup().await;
    let gw = &env.gw;
    env.sink.reply_to_rcpt(Some("550 5.1.1 no such mailbox"));
    let response = gw
        .http
        .post(gw.url("/users/invite"))
        .header("x-access-token", &env.admin)
        .header("x-request-id", "invite-bounced")
        .json(&json!({ "email": "bounced@example.com" }))
        .send()
        .await
        .unwrap();
    let (status, user) = status_json(response).await;
    assert_eq!(status, StatusCode::OK, "{user}");
    let id = user_id(&user);

    // The audit event, under the invitation's request, naming the user and what failed.
    let failed = || async {
        gw.audit_events()
            .await
            .into_iter()
            .filter(|e| e.kind == "mail_failed")
            .collect::<Vec<_>>()
    };
    eventually!(!failed().await.is_empty(), "no mail_failed audit event");
    let failed = failed().await;
    assert_eq!(failed.len(), 1, "{failed:#?}");
    let event = &failed[0];
    assert_eq!(event.user_id.map(|u| u.to_string()), Some(id.clone()));
    assert_eq!(event.request_id.as_deref(), Some("invite-bounced"));
    assert_eq!(event.detail["kind"], "invitation");
    assert_eq!(event.detail["recipient_domain"], "example.com");
    assert_eq!(event.detail["reason"], "refused");
    assert_eq!(event.detail["attempts"], "1");

    // Counted by kind and reason.
    let metrics = gw.metrics_text().await;
    for (series, value) in [
        (
            r#"meiro_gate_mail_failed_total{kind="invitation",reason="refused"}"#,
            "1",
        ),
        (
            r#"meiro_gate_mail_failed_total{kind="invitation",reason="expired"}"#,
            "0",
        ),
        (
            r#"meiro_gate_mail_failed_total{kind="password_reset",reason="refused"}"#,
            "0",
        ),
    ] {
        assert!(
            metrics.lines().any(|l| l == format!("{series} {value}")),
            "{series} {value} not in:\n{metrics}"
        );
    }

    // The link is still there, and it works: the admin can hand it over another way.
    let link = parse_link(&get_link_ok(gw, &env.admin, &id).await);
    assert_eq!(link.email, "bounced@example.com");
    // Never in the audit trail.
    let recorded = format!("{event:?}");
    assert!(!recorded.contains(&link.token), "{recorded}");
    assert!(!recorded.contains("set_password"), "{recorded}");
    assert_password_set(gw, &link.email, NEW_PASSWORD, &link.token).await;
    login_with(gw, "bounced@example.com", NEW_PASSWORD).await;
    assert!(env.sink.messages().is_empty());
}

// ---------------------------------------------------------------------------------------
// expiry and binding

#[tokio::test]
async fn invitations_expire_after_five_days_and_a_reinvite_revives_them() {
    let env = setup().await;
    let gw = &env.gw;
    let id = user_id(&invite_ok(&env, "late@example.com").await);
    let link = nth_invitation(&env.sink, 1, "late@example.com").await;

    // Five seconds before the end it is still shown (the admin's 8-hour token has long
    // expired: log in again).
    gw.clock.advance(Duration::from_secs(INVITATION_TTL - 5));
    let admin = gw.login(ADMIN).await;
    assert_eq!(get_link_ok(gw, &admin, &id).await, link.raw);

    gw.clock.advance(Duration::from_secs(6));
    assert_token_refused(gw, &link.email, NEW_PASSWORD, &link.token).await;
    assert_no_link(gw, &admin, &id).await;
    assert_login_refused(gw, "late@example.com", NEW_PASSWORD).await;

    let (status, user) = status_json(reinvite(gw, &admin, "late@example.com").await).await;
    assert_eq!(status, StatusCode::OK, "{user}");
    assert_eq!(user["invitation_pending"], true);
    let fresh = nth_invitation(&env.sink, 2, "late@example.com").await;
    assert_eq!(get_link_ok(gw, &admin, &id).await, fresh.raw);
    // The expired link stays dead; the new one works.
    assert_token_refused(gw, &link.email, NEW_PASSWORD, &link.token).await;
    assert_password_set(gw, &fresh.email, NEW_PASSWORD, &fresh.token).await;
    login_with(gw, "late@example.com", NEW_PASSWORD).await;
}

#[tokio::test]
async fn an_invitation_token_is_bound_to_its_email() {
    let env = setup().await;
    let gw = &env.gw;
    invite_ok(&env, "first@example.com").await;
    let a = nth_invitation(&env.sink, 1, "first@example.com").await;
    let b_id = user_id(&invite_ok(&env, "second@example.com").await);
    let b = nth_invitation(&env.sink, 2, "second@example.com").await;

    assert_token_refused(gw, "second@example.com", NEW_PASSWORD, &a.token).await;
    assert_token_refused(gw, "first@example.com", NEW_PASSWORD, &b.token).await;
    assert_token_refused(gw, "nobody@example.com", NEW_PASSWORD, &a.token).await;
    assert_token_refused(gw, ADMIN, NEW_PASSWORD, &a.token).await;
    // A tampered token is refused too.
    let mut tampered = a.token.clone().into_bytes();
    tampered[5] = if tampered[5] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    assert_token_refused(gw, "first@example.com", NEW_PASSWORD, &tampered).await;
    assert_token_refused(gw, "first@example.com", NEW_PASSWORD, "").await;

    // None of that spent or changed anything: the admin's password is intact, the second
    // user is still pending with the same link, and each token works for its own address
    // (written any case).
    gw.login(ADMIN).await;
    assert_eq!(get_link_ok(gw, &env.admin, &b_id).await, b.raw);
    assert_password_set(gw, " First@EXAMPLE.com ", NEW_PASSWORD, &a.token).await;
    assert_password_set(gw, "second@example.com", PASSWORD, &b.token).await;
    login_with(gw, "first@example.com", NEW_PASSWORD).await;
    login_with(gw, "second@example.com", PASSWORD).await;
}

#[tokio::test]
async fn the_password_policy_applies_and_a_refusal_does_not_spend_the_token() {
    let env = setup().await;
    let gw = &env.gw;
    let email = "policy.person@example.com";
    invite_ok(&env, email).await;
    let link = nth_invitation(&env.sink, 1, email).await;

    for (case, password, rule) in [
        ("11 characters", "abcdefghijk", "at least 12"),
        ("11 two-byte characters", "ééééééééééé", "at least 12"),
        ("the email", email, "email"),
        (
            "the email in capitals",
            "POLICY.PERSON@EXAMPLE.COM",
            "email",
        ),
    ] {
        let (status, msg) =
            status_message(set_password(gw, email, password, &link.token).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{case}: {msg}");
        assert!(msg.contains(rule), "{case}: {msg:?} should name the rule");
        assert_ne!(msg, INVALID_ONE_TIME_TOKEN, "{case}");
        assert_login_refused(gw, email, password).await;
    }
    // Exactly 12 characters is enough, with the very same token.
    assert_password_set(gw, email, "abcdefghijkl", &link.token).await;
    login_with(gw, email, "abcdefghijkl").await;
}

// ---------------------------------------------------------------------------------------
// delivery off the request path

#[tokio::test]
async fn an_invitation_sent_while_smtp_is_down_arrives_when_it_returns() {
    // Take a free port and close it again: the gateway's SMTP server is down.
    let down = SmtpSink::start().await;
    let addr = down.addr;
    down.stop().await;
    let upstream = FakeUpstream::start().await;
    let gw = Gateway::start_with(&upstream.url(), &smtp_toml(addr)).await;
    gw.add_user(ADMIN, Role::Admin).await;
    let admin = gw.login(ADMIN).await;

    let started = Instant::now();
    let response = invite(&gw, &admin, json!({ "email": "patient@example.com" })).await;
    let elapsed = started.elapsed();
    let (status, user) = status_json(response).await;
    assert_eq!(status, StatusCode::OK, "{user}");
    assert!(
        elapsed < Duration::from_secs(1),
        "the API call waited for SMTP: {elapsed:?}"
    );
    // Let a few delivery attempts fail.
    tokio::time::sleep(Duration::from_millis(700)).await;

    let sink = SmtpSink::start_on(addr).await;
    let link = nth_invitation(&sink, 1, "patient@example.com").await;
    assert_eq!(
        get_link_ok(&gw, &admin, &user_id(&user)).await,
        link.raw,
        "the delivered link is the current one"
    );
    assert_password_set(&gw, &link.email, NEW_PASSWORD, &link.token).await;
    login_with(&gw, "patient@example.com", NEW_PASSWORD).await;
    assert_no_more_mail(&sink, 1).await;
}

#[tokio::test]
async fn an_invitation_is_accepted_once_even_under_concurrent_use() {
    let env = setup().await;
    let gw = &env.gw;
    invite_ok(&env, "racer@example.com").await;
    let link = nth_invitation(&env.sink, 1, "racer@example.com").await;
    assert_spent_once_under_concurrent_use(gw, "racer@example.com", &link.token).await;
}

#[tokio::test]
async fn a_pending_invitation_keeps_its_role_unless_a_new_one_is_given() {
    let env = setup().await;
    let (status, first) = status_json(
        invite(
            &env.gw,
            &env.admin,
            json!({ "email": "boss@example.com", "role": "admin" }),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(first["role"], "admin");
    // Inviting again without a role refreshes the link but does not downgrade the role.
    let again = invite_ok(&env, "boss@example.com").await;
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["role"], "admin");
    let (_, changed) = status_json(
        invite(
            &env.gw,
            &env.admin,
            json!({ "email": "boss@example.com", "role": "user" }),
        )
        .await,
    )
    .await;
    assert_eq!(changed["role"], "user");
}

#[tokio::test]
async fn a_json_array_is_not_an_invitation() {
    let env = setup().await;
    let response = env
        .gw
        .http
        .post(env.gw.url("/users/invite"))
        .header("x-access-token", &env.admin)
        .header("content-type", "application/json")
        .body(r#"["x@example.com"]"#)
        .send()
        .await
        .unwrap();
    let (status, msg) = status_message(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(msg, "Request body must be a JSON object");
    // Nothing was created: the address can be invited normally afterwards.
    let user = invite_ok(&env, "x@example.com").await;
    assert_eq!(user["invitation_pending"], true);
}
