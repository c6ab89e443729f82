//! The account flows of the auth API as the tests drive them: setting a password with a
//! one-time token, logging in with a given password, refreshing, what the data plane makes of
//! a token, and the quiet after the last expected e-mail.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::smtp::SmtpSink;
use super::{Gateway, INVALID, status_json, status_message};

/// Where set-password links (invitations and resets) point.
pub const LINK_PREFIX: &str = "http://gateway.test/set_password/";
pub const INVALID_ONE_TIME_TOKEN: &str = "Invalid or expired token";
pub const INVALID_CREDENTIALS: &str = "Invalid credentials have been provided";
pub const NEW_PASSWORD: &str = "a brand new passphrase";
pub const MAIL_WAIT: Duration = Duration::from_secs(10);

/// How long a test waits before asserting that no (further) e-mail arrived: mail is sent
/// in a background task and the queue delivers to loopback in milliseconds.
pub const QUIET: Duration = Duration::from_millis(400);

/// `PATCH /users/password` with a one-time token.
pub async fn set_password(
    gw: &Gateway,
    email: &str,
    password: &str,
    token: &str,
) -> reqwest::Response {
    gw.http
        .patch(gw.url("/users/password"))
        .json(&json!({ "email": email, "password": password, "token": token }))
        .send()
        .await
        .unwrap()
}

/// Asserts the contract's success answer of `PATCH /users/password`.
pub async fn assert_password_set(gw: &Gateway, email: &str, password: &str, token: &str) {
    let (status, body) = status_json(set_password(gw, email, password, token).await).await;
    assert_eq!(status, StatusCode::OK, "set password of {email}: {body}");
    assert_eq!(body, json!({ "message": "ok" }));
}

/// Asserts `PATCH /users/password` is refused with exactly `400 {"message": "Invalid or
/// expired token"}`.
pub async fn assert_token_refused(gw: &Gateway, email: &str, password: &str, token: &str) {
    let (status, body) = status_json(set_password(gw, email, password, token).await).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "{email} / {token:?}: {body}"
    );
    assert_eq!(body, json!({ "message": INVALID_ONE_TIME_TOKEN }));
}

/// Logs in with `password` and returns the token.
pub async fn login_with(gw: &Gateway, email: &str, password: &str) -> String {
    let response = gw.login_response(email, password).await;
    assert_eq!(response.status(), StatusCode::OK, "login of {email}");
    let body: Value = response.json().await.unwrap();
    body["token"].as_str().unwrap().to_owned()
}

/// Asserts a login is refused with the contract's one credential failure.
pub async fn assert_login_refused(gw: &Gateway, email: &str, password: &str) {
    let (status, msg) = status_message(gw.login_response(email, password).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "login of {email}");
    assert_eq!(msg, INVALID_CREDENTIALS);
}

/// The token works on the data plane: 200 from the fake upstream.
pub async fn assert_proxied(gw: &Gateway, token: &str) {
    let response = gw.get_with_token("/anything", token).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "token should pass the proxy"
    );
    assert_eq!(response.headers()["x-upstream"], "fake");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["path"], "/anything");
}

/// The token is refused on the data plane with the contract's 401.
pub async fn assert_rejected(gw: &Gateway, token: &str) {
    let response = gw.get_with_token("/anything", token).await;
    assert!(response.headers().get("x-upstream").is_none());
    let (status, msg) = status_message(response).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(msg, INVALID);
}

/// Asserts that no message beyond the first `n` arrives.
pub async fn assert_no_more_mail(sink: &SmtpSink, n: usize) {
    tokio::time::sleep(QUIET).await;
    let mails = sink.messages();
    assert_eq!(mails.len(), n, "unexpected e-mail: {mails:#?}");
}

/// Four concurrent `PATCH /users/password` with one one-time token: exactly one succeeds, the
/// others get the token's 400, and only the winner's password logs in afterwards.
pub async fn assert_spent_once_under_concurrent_use(gw: &Gateway, email: &str, token: &str) {
    let passwords: Vec<String> = (0..4)
        .map(|i| format!("concurrent passphrase {i}"))
        .collect();
    let attempt = |i: usize| set_password(gw, email, &passwords[i], token);
    let (a, b, c, d) = tokio::join!(attempt(0), attempt(1), attempt(2), attempt(3));
    let responses = [a, b, c, d];
    let mut winners = Vec::new();
    for (password, response) in passwords.iter().zip(responses) {
        let (status, body) = status_json(response).await;
        match status {
            StatusCode::OK => winners.push(password),
            StatusCode::BAD_REQUEST => {
                assert_eq!(body, json!({ "message": INVALID_ONE_TIME_TOKEN }));
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one use succeeds: {winners:?}");
    for password in &passwords {
        if password == winners[0] {
            login_with(gw, email, password).await;
        } else {
            assert_login_refused(gw, email, password).await;
        }
    }
}
