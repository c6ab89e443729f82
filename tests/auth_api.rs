//! The auth API over real sockets, as api-contract.md fixes it: `/auth_options`, login,
//! refresh and logout on `/users/login`, the token lifetime rules, login throttling and
//! `/.well-known/jwks.json`.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::accounts::{INVALID_CREDENTIALS, assert_proxied, assert_rejected};
use common::{
    FakeUpstream, Gateway, PASSWORD, assert_json, assert_throttled, foreign_token, message,
    status_message, status_message_of,
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use meiro_gate::auth::passwords::hash_standalone;
use meiro_gate::store::{NewUser, Role};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER, SET_COOKIE};
use serde_json::{Value, json};

const INVALID_TOKEN: &str = "Invalid or expired access token";
const TOO_OLD: &str = "Token is too old for refresh";
const LOGGED_OUT: &str = "Successfully logged-out";
const TTL: u64 = 8 * 3600;
const WINDOW: u64 = 4 * 3600;
const DELETION_COOKIE: &str = "meiro_access_token=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax";

// ---------------------------------------------------------------------------------------
// helpers

async fn setup() -> (FakeUpstream, Gateway) {
    let upstream = FakeUpstream::start().await;
    let gw = Gateway::start(&upstream).await;
    (upstream, gw)
}

/// [`setup`] with alice as a user.
async fn with_alice() -> (FakeUpstream, Gateway) {
    let (upstream, gw) = setup().await;
    gw.add_user("alice@example.com", Role::User).await;
    (upstream, gw)
}

/// [`with_alice`] and a session of hers.
async fn alice_session() -> (FakeUpstream, Gateway, String) {
    let (upstream, gw) = with_alice().await;
    let token = gw.login("alice@example.com").await;
    (upstream, gw, token)
}

async fn setup_with(extra_toml: &str) -> (FakeUpstream, Gateway) {
    let upstream = FakeUpstream::start().await;
    let gw = Gateway::start_with(&upstream.url(), extra_toml).await;
    (upstream, gw)
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Every `Set-Cookie` header of a response.
fn set_cookies(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// The one `Set-Cookie` of a response (asserting there is exactly one).
fn the_cookie(headers: &HeaderMap) -> String {
    let cookies = set_cookies(headers);
    assert_eq!(cookies.len(), 1, "exactly one Set-Cookie: {cookies:?}");
    cookies.into_iter().next().unwrap()
}

fn session_cookie(token: &str, max_age: u64) -> String {
    format!("meiro_access_token={token}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax")
}

/// The payload of a JWT, decoded without verification (verification is pinned by the JWKS
/// test).
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn claim_i64(token: &str, name: &str) -> i64 {
    claims(token)[name].as_i64().unwrap()
}

fn claim_str(token: &str, name: &str) -> String {
    claims(token)[name].as_str().unwrap().to_owned()
}

async fn login_raw(
    gw: &Gateway,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    gw.http
        .post(gw.url("/users/login"))
        .header(CONTENT_TYPE, content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Refreshes and returns the new token, asserting the 200, the body and the cookie.
async fn refresh_ok(gw: &Gateway, token: &str) -> String {
    let response = gw.refresh_response(token).await;
    assert_eq!(response.status(), StatusCode::OK, "refresh");
    assert_json(response.headers());
    let cookie = the_cookie(response.headers());
    let body: Value = response.json().await.unwrap();
    let new = body["token"].as_str().expect("a token").to_owned();
    let max_age = (claim_i64(&new, "exp") - claim_i64(&new, "iat")) as u64;
    assert_eq!(cookie, session_cookie(&new, max_age));
    new
}

/// Asserts a refresh is refused with 401 and returns its message.
async fn refresh_refused(gw: &Gateway, token: &str) -> String {
    let (status, msg) = status_message(gw.refresh_response(token).await).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "refresh must be refused: {msg}"
    );
    msg
}

async fn send(request: reqwest::RequestBuilder) -> reqwest::Response {
    request.send().await.unwrap()
}

/// `DELETE /users/login` with `X-Access-Token`, asserting the contract's logout answer.
async fn log_out(gw: &Gateway, token: &str) {
    let response = send(
        gw.http
            .delete(gw.url("/users/login"))
            .header("x-access-token", token),
    )
    .await;
    assert_logged_out(response).await;
}

/// Asserts the contract's logout answer: 200, the message and the cookie deletion.
async fn assert_logged_out(response: reqwest::Response) {
    assert_eq!(response.status(), StatusCode::OK);
    assert_json(response.headers());
    assert_eq!(the_cookie(response.headers()), DELETION_COOKIE);
    assert_eq!(message(response).await, LOGGED_OUT);
}

/// Waits (under a second) for the wall clock to enter a new second, so that the next few
/// hundred milliseconds of work all read the same `now` — for exact-boundary assertions.
async fn align_to_second_start() {
    let into = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    tokio::time::sleep(
        Duration::from_nanos(u64::from(1_000_000_000 - into)) + Duration::from_millis(5),
    )
    .await;
}

/// Advances the gateway clock so that its `now` equals `target` (unix seconds).
fn advance_to(gw: &Gateway, target: i64) {
    let now = gw.clock.now();
    assert!(target >= now, "cannot move the clock back");
    gw.clock.advance(secs((target - now) as u64));
}

async fn create_user(gw: &Gateway, email: &str, password_hash: Option<String>, pending: bool) {
    gw.app()
        .auth()
        .store()
        .create_user(NewUser {
            email: email.into(),
            password_hash,
            role: Role::User,
            invitation_pending: pending,
            invitation: None,
            sso_enabled: false,
            created: gw.clock.now(),
        })
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------------------
// GET /auth_options

#[tokio::test]
async fn auth_options_are_flat_with_okta_off() {
    let (_up, gw) = setup().await;
    let response = gw.http.get(gw.url("/auth_options")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_json(response.headers());
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({
            "is_credentials_login_enabled": true,
            "is_okta_login_enabled": false,
            "okta_auth_link": null,
        })
    );
    assert!(body.as_object().unwrap().contains_key("okta_auth_link"));
}

// ---------------------------------------------------------------------------------------
// POST /users/login

#[tokio::test]
async fn login_returns_a_token_and_the_same_token_as_an_http_only_cookie() {
    let (_up, gw) = setup().await;
    let user = gw.add_user("alice@example.com", Role::User).await;
    let response = gw.login_response("alice@example.com", PASSWORD).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_json(response.headers());
    let cookie = the_cookie(response.headers());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body.as_object().unwrap().len(), 1, "only a token: {body}");
    let token = body["token"].as_str().unwrap();
    assert_eq!(token.split('.').count(), 3, "a JWT");
    assert_eq!(cookie, session_cookie(token, TTL));
    assert!(!cookie.contains("Secure"));
    assert_eq!(claim_str(token, "sub"), user.id.to_string());
    assert_proxied(&gw, token).await;
    // The cookie alone authenticates on the data plane too.
    let by_cookie = gw
        .http
        .get(gw.url("/anything"))
        .header("cookie", format!("meiro_access_token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(by_cookie.status(), StatusCode::OK);
}

#[tokio::test]
async fn login_cookie_is_secure_when_configured() {
    let (_up, gw) = setup_with("[auth]\ncookie_secure = true\n").await;
    gw.add_user("alice@example.com", Role::User).await;
    let response = gw.login_response("alice@example.com", PASSWORD).await;
    assert_eq!(response.status(), StatusCode::OK);
    let cookie = the_cookie(response.headers());
    let body: Value = response.json().await.unwrap();
    let token = body["token"].as_str().unwrap();
    assert_eq!(cookie, format!("{}; Secure", session_cookie(token, TTL)));
    // Logout deletes it with the same attributes.
    let out = gw
        .http
        .delete(gw.url("/users/login"))
        .header("x-access-token", token)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::OK);
    assert_eq!(
        the_cookie(out.headers()),
        format!("{DELETION_COOKIE}; Secure")
    );
}

#[tokio::test]
async fn login_email_is_case_insensitive_and_trimmed() {
    let (_up, gw) = setup().await;
    let user = gw.add_user("alice@example.com", Role::User).await;
    for email in [
        "ALICE@Example.COM",
        "  alice@example.com\t",
        " Alice@EXAMPLE.com ",
    ] {
        let response = gw.login_response(email, PASSWORD).await;
        assert_eq!(response.status(), StatusCode::OK, "{email:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            claim_str(body["token"].as_str().unwrap(), "sub"),
            user.id.to_string()
        );
    }
    // The password, unlike the email, is exact.
    let response = gw
        .login_response("alice@example.com", &PASSWORD.to_uppercase())
        .await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = gw
        .login_response("alice@example.com", &format!(" {PASSWORD}"))
        .await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn every_credential_failure_is_the_same_401() {
    let (_up, gw) = setup().await;
    let store = gw.app().auth().store().clone();
    let hash = hash_standalone(PASSWORD.into()).await.unwrap();
    gw.add_user("active@example.com", Role::User).await;
    gw.add_user("disabled@example.com", Role::User).await;
    gw.disable_user("disabled@example.com")
        .await
        .expect("user exists");
    gw.add_user("deleted@example.com", Role::User).await;
    // No store API deletes a user: mark the row the way a deletion would.
    let db = sqlx::SqlitePool::connect(&format!("sqlite://{}/gate.db", gw.dir.path().display()))
        .await
        .unwrap();
    let updated = sqlx::query("UPDATE users SET deleted = 1 WHERE email = 'deleted@example.com'")
        .execute(&db)
        .await
        .unwrap();
    assert_eq!(updated.rows_affected(), 1);
    db.close().await;
    assert!(
        store
            .user_by_email("deleted@example.com")
            .await
            .unwrap()
            .unwrap()
            .deleted
    );
    create_user(&gw, "pending@example.com", Some(hash), true).await;
    create_user(&gw, "nopassword@example.com", None, false).await;

    let cases = [
        ("unknown email", "nobody@example.com", PASSWORD),
        (
            "wrong password",
            "active@example.com",
            "not the password at all",
        ),
        ("empty password", "active@example.com", ""),
        ("disabled user", "disabled@example.com", PASSWORD),
        ("deleted user", "deleted@example.com", PASSWORD),
        ("invitation pending", "pending@example.com", PASSWORD),
        ("no password set", "nopassword@example.com", PASSWORD),
        (
            "no password set, empty password",
            "nopassword@example.com",
            "",
        ),
    ];
    let mut bodies = Vec::new();
    for (case, email, password) in cases {
        let response = gw.login_response(email, password).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{case}");
        assert_json(response.headers());
        assert!(
            set_cookies(response.headers()).is_empty(),
            "{case}: no cookie"
        );
        let body = response.bytes().await.unwrap();
        let value: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value, json!({ "message": INVALID_CREDENTIALS }), "{case}");
        bodies.push((case, body));
    }
    for (case, body) in &bodies {
        assert_eq!(body, &bodies[0].1, "{case}: byte-identical body");
    }
    // The active user is not locked out by the above (2 failures of 5).
    gw.login("active@example.com").await;
}

#[tokio::test]
async fn unknown_email_and_wrong_password_take_comparable_time() {
    let (_up, gw) = with_alice().await;
    async fn timed(gw: &Gateway, email: &str) -> Duration {
        let start = Instant::now();
        let response = gw.login_response(email, "wrong password here").await;
        let elapsed = start.elapsed();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        elapsed
    }
    // Warm-up: connection set-up and first-use costs.
    timed(&gw, "alice@example.com").await;
    timed(&gw, "nobody@example.com").await;
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    for _ in 0..3 {
        known.push(timed(&gw, "alice@example.com").await);
        unknown.push(timed(&gw, "nobody@example.com").await);
    }
    known.sort();
    unknown.sort();
    let ratio = unknown[1].as_secs_f64() / known[1].as_secs_f64();
    assert!(
        (0.33..3.0).contains(&ratio),
        "unknown {unknown:?} vs wrong password {known:?}: ratio {ratio}"
    );
}

#[tokio::test]
async fn malformed_login_requests_are_4xx_json_never_500() {
    let (_up, gw) = with_alice().await;
    let json_ct = "application/json";
    let big = format!(
        r#"{{"email":"alice@example.com","password":"{PASSWORD}","pad":"{}"}}"#,
        "x".repeat(70 * 1024)
    );
    let cases: Vec<(&str, &str, String, StatusCode)> = vec![
        (
            "malformed JSON",
            json_ct,
            r#"{"email": "alice@example.com", "#.into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "empty body",
            json_ct,
            String::new(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "not an object",
            json_ct,
            r#"["alice@example.com"]"#.into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "missing password",
            json_ct,
            r#"{"email":"alice@example.com"}"#.into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "missing email",
            json_ct,
            format!(r#"{{"password":"{PASSWORD}"}}"#),
            StatusCode::BAD_REQUEST,
        ),
        (
            "password is a number",
            json_ct,
            r#"{"email":"alice@example.com","password":5}"#.into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "email is null",
            json_ct,
            format!(r#"{{"email":null,"password":"{PASSWORD}"}}"#),
            StatusCode::BAD_REQUEST,
        ),
        (
            "text/plain",
            "text/plain",
            format!(r#"{{"email":"alice@example.com","password":"{PASSWORD}"}}"#),
            StatusCode::BAD_REQUEST,
        ),
        (
            "body over 64 KiB",
            json_ct,
            big,
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        // serde stops after the object; the rest must not be ignored.
        (
            "trailing bytes",
            json_ct,
            format!(r#"{{"email":"alice@example.com","password":"{PASSWORD}"}} trailing"#),
            StatusCode::BAD_REQUEST,
        ),
        (
            "two objects",
            json_ct,
            format!(r#"{{"email":"alice@example.com","password":"{PASSWORD}"}}{{}}"#),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (case, content_type, body, expected) in cases {
        let response = login_raw(&gw, content_type, body).await;
        let (status, msg) = status_message(response).await;
        assert_eq!(status, expected, "{case}: {msg}");
        assert!(!msg.is_empty(), "{case}");
        assert_ne!(msg, INVALID_CREDENTIALS, "{case}");
    }
    // No Content-Type at all is the same as a wrong one.
    let response = gw
        .http
        .post(gw.url("/users/login"))
        .body(format!(
            r#"{{"email":"alice@example.com","password":"{PASSWORD}"}}"#
        ))
        .send()
        .await
        .unwrap();
    let (status, msg) = status_message(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(msg.contains("Content-Type"), "{msg}");
    // The ill-typed value is not echoed back.
    let response = login_raw(
        &gw,
        json_ct,
        r#"{"email":"alice@example.com","password":123456789}"#,
    )
    .await;
    let (_, msg) = status_message(response).await;
    assert!(!msg.contains("123456789"), "{msg}");
    // None of that counted as a failed login: five real failures are still allowed.
    for _ in 0..5 {
        let response = gw.login_response("alice@example.com", "wrong").await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
}

/// Every field of every request body, given every wrong JSON type: a 400 naming the field
/// and the kind of problem — never "not valid JSON", never the value. (`role` given a number
/// fell into serde_json's syntax branch; `role: {"admin": null}` made an admin.)
#[tokio::test]
async fn every_field_of_every_body_refuses_every_wrong_type_and_names_itself() {
    let (_up, gw) = setup().await;
    gw.add_user("admin@example.com", Role::Admin).await;
    let admin = gw.login("admin@example.com").await;
    let bodies: [(&str, &str, Value, bool); 7] = [
        (
            "POST",
            "/users/login",
            json!({"email": "a@example.com", "password": PASSWORD}),
            false,
        ),
        ("PATCH", "/users/login", json!({"token": "t"}), false),
        ("POST", "/users/okta_login", json!({"code": "c"}), false),
        (
            "POST",
            "/users/invite",
            json!({"email": "new@example.com", "role": "user"}),
            true,
        ),
        (
            "PATCH",
            "/users/invite",
            json!({"email": "new@example.com", "role": "user"}),
            true,
        ),
        (
            "POST",
            "/users/password",
            json!({"email": "a@example.com"}),
            false,
        ),
        (
            "PATCH",
            "/users/password",
            json!({"email": "a@example.com", "password": PASSWORD, "token": "t"}),
            false,
        ),
    ];
    // Raw JSON for each wrong value; `role` alone may be null (documented: the default).
    let wrong: &[&str] = &[
        "5",
        "-1",
        "1.5",
        "1e400",
        "true",
        "false",
        "[]",
        r#"["admin"]"#,
        "{}",
        r#"{"admin":null}"#,
        r#"{"user":null}"#,
        "null",
    ];
    for (method, path, valid, as_admin) in &bodies {
        for field in valid.as_object().unwrap().keys() {
            for value in wrong {
                if field == "role" && *value == "null" {
                    continue;
                }
                let mut body = valid.clone();
                body[field] = json!("__WRONG__");
                let body = body.to_string().replace(r#""__WRONG__""#, value);
                let mut request = gw
                    .http
                    .request(method.parse().unwrap(), gw.url(path))
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone());
                if *as_admin {
                    request = request.header("x-access-token", &admin);
                }
                let response = request.send().await.unwrap();
                let what = format!("{method} {path} {body}");
                let (status, msg) = status_message_of(response, &what).await;
                assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {msg}");
                assert!(
                    msg.starts_with(&format!("Invalid request body: {field}: ")),
                    "{what}: {msg}"
                );
                assert!(!msg.contains("not valid JSON"), "{what}: {msg}");
            }
        }
    }
    // A string that is not a role: the field and what it may be, not what was sent.
    let invite = |role: Value| {
        gw.http
            .post(gw.url("/users/invite"))
            .header("x-access-token", &admin)
            .json(&json!({"email": "new@example.com", "role": role}))
            .send()
    };
    for role in ["<script>", "ADMIN", "Admin", "superuser", ""] {
        let response = invite(json!(role)).await.unwrap();
        let (status, msg) = status_message(response).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{role}");
        assert_eq!(
            msg,
            "Invalid request body: role: unknown variant, expected `admin` or `user`"
        );
    }
    // Nobody was invited by any of that, and `null` is the documented default.
    let response = invite(Value::Null).await.unwrap();
    let (status, user) = common::status_json(response).await;
    assert_eq!(status, StatusCode::OK, "{user}");
    assert_eq!(user["role"], "user");
    assert_eq!(user["invitation_pending"], true);
}

/// RFC 9110 §11.6.1: every 401 of the API carries `WWW-Authenticate: Bearer`, the credentials
/// login's included, as the data plane's do.
#[tokio::test]
async fn every_401_of_the_api_carries_a_bearer_challenge() {
    let (_up, gw) = with_alice().await;
    let responses = [
        gw.login_response("alice@example.com", "wrong password")
            .await,
        gw.login_response("nobody@example.com", "x").await,
        gw.refresh_response("forged.token.here").await,
        gw.http
            .post(gw.url("/users/invite"))
            .json(&json!({"email": "x@example.com"}))
            .send()
            .await
            .unwrap(),
        gw.http
            .get(gw.url("/users/0b8e7f3c-4d5a-4e6b-9c7d-8e9f0a1b2c3d/invitation_link"))
            .header("x-access-token", "not-a-token")
            .send()
            .await
            .unwrap(),
    ];
    for response in responses {
        let url = response.url().clone();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{url}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer", "{url}");
        assert_eq!(
            response.headers()[CONTENT_TYPE],
            "application/json",
            "{url}"
        );
    }
    // Not on other statuses.
    let ok = gw.login_response("alice@example.com", PASSWORD).await;
    assert!(!ok.headers().contains_key("www-authenticate"));
}

/// What the routers answer themselves — a method a path does not have, a path the admin
/// listener does not have — is the contract's JSON error like any other, never an empty or
/// `text/plain` body.
#[tokio::test]
async fn router_fallbacks_are_json_errors() {
    let (up, gw) = setup().await;
    for (method, path) in [
        ("PUT", "/users/login"),
        ("GET", "/users/login"),
        ("OPTIONS", "/users/login"),
        ("TRACE", "/users/invite"),
        ("FROBNICATE", "/users/password"),
        ("POST", "/auth_options"),
        ("DELETE", "/.well-known/jwks.json"),
        ("PATCH", "/openapi.json"),
        (
            "POST",
            "/users/0b8e7f3c-4d5a-4e6b-9c7d-8e9f0a1b2c3d/invitation_link",
        ),
    ] {
        let response = gw
            .http
            .request(method.parse().unwrap(), gw.url(path))
            .send()
            .await
            .unwrap();
        assert!(response.headers().contains_key("allow"), "{method} {path}");
        let (status, msg) = status_message_of(response, &format!("{method} {path}")).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_eq!(msg, "Method not allowed");
    }
    assert!(up.recorded().is_empty(), "never forwarded upstream");
    // The admin listener: every path is the gateway's own.
    for (method, path, expected) in [
        ("GET", "/nope", StatusCode::NOT_FOUND),
        ("GET", "/metrics/x", StatusCode::NOT_FOUND),
        ("POST", "/healthz", StatusCode::METHOD_NOT_ALLOWED),
        ("DELETE", "/metrics", StatusCode::METHOD_NOT_ALLOWED),
    ] {
        let response = gw
            .http
            .request(method.parse().unwrap(), gw.admin_url(path))
            .send()
            .await
            .unwrap();
        let (status, msg) = status_message_of(response, &format!("{method} {path}")).await;
        assert_eq!(status, expected, "{method} {path}");
        assert!(!msg.is_empty());
    }
}

#[tokio::test]
async fn login_ignores_unknown_fields() {
    let (_up, gw) = with_alice().await;
    let body = json!({
        "email": "alice@example.com",
        "password": PASSWORD,
        "remember_me": true,
        "nested": {"a": [1, 2]},
    });
    let response = login_raw(&gw, "application/json; charset=utf-8", body.to_string()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_proxied(&gw, body["token"].as_str().unwrap()).await;
}

#[tokio::test]
async fn wrong_method_on_login_is_not_a_server_error() {
    let (up, gw) = setup().await;
    for method in [reqwest::Method::GET, reqwest::Method::PUT] {
        let response = gw
            .http
            .request(method.clone(), gw.url("/users/login"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method}"
        );
        let allow = response.headers()["allow"].to_str().unwrap().to_owned();
        for m in ["POST", "PATCH", "DELETE"] {
            assert!(allow.contains(m), "Allow: {allow}");
        }
        let (_, msg) = status_message(response).await;
        assert!(!msg.is_empty());
    }
    assert!(up.recorded().is_empty(), "never forwarded upstream");
}

// ---------------------------------------------------------------------------------------
// login throttling

#[tokio::test]
async fn five_failures_block_the_account_even_for_the_right_password() {
    let (_up, gw) = with_alice().await;
    gw.add_user("bob@example.com", Role::User).await;
    for i in 0..5 {
        let response = gw.login_response("alice@example.com", "wrong").await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "failure {i}");
    }
    // Another spelling of the same account is the same account.
    let response = gw.login_response(" ALICE@example.com", PASSWORD).await;
    assert!(set_cookies(response.headers()).is_empty());
    let (retry_after, msg) = assert_throttled(response, 15 * 60, "another spelling").await;
    assert_eq!(msg, "Too many attempts; try again later");

    // Other accounts from the same client are unaffected (5 < per_ip 20).
    gw.login("bob@example.com").await;

    // When the window has passed, the right password works again.
    gw.clock.advance(secs(retry_after));
    gw.login("alice@example.com").await;
}

#[tokio::test]
async fn successful_logins_do_not_count_towards_the_account_limit() {
    let (_up, gw) = with_alice().await;
    for _ in 0..4 {
        let response = gw.login_response("alice@example.com", "wrong").await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    gw.login("alice@example.com").await;
    // If the success had counted, this would be the 6th attempt and refused.
    let response = gw.login_response("alice@example.com", "wrong").await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "5th failure");
    assert_eq!(message(response).await, INVALID_CREDENTIALS);
    // Now there are 5 failures: blocked.
    let response = gw.login_response("alice@example.com", PASSWORD).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key(RETRY_AFTER));
}

#[tokio::test]
async fn concurrent_failures_cannot_exceed_the_account_limit() {
    let (_up, gw) = with_alice().await;
    let attempts = (0..12).map(|_| gw.login_response("alice@example.com", "wrong"));
    let responses = futures_util::future::join_all(attempts).await;
    let mut statuses: Vec<u16> = responses.iter().map(|r| r.status().as_u16()).collect();
    statuses.sort();
    // Exactly the limit is checked against the password; the rest are refused up front.
    assert_eq!(statuses, [[401; 5].as_slice(), &[429; 7]].concat());
    let response = gw.login_response("alice@example.com", PASSWORD).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn per_ip_limit_spans_accounts_and_ignores_successes() {
    let (_up, gw) = setup_with("[auth.login_throttle]\nper_ip = 3\n").await;
    for name in ["a", "b", "c", "d"] {
        gw.add_user(&format!("{name}@example.com"), Role::User)
            .await;
    }
    gw.login("a@example.com").await;
    gw.login("b@example.com").await;
    let response = gw.login_response("a@example.com", "wrong").await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = gw.login_response("ghost@example.com", PASSWORD).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // Two failures and two successes so far: a success is still allowed...
    gw.login("c@example.com").await;
    // ...and a third failure (on a third account) too.
    let response = gw.login_response("b@example.com", "wrong").await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // Three failures from this client: every account is refused, even with its password.
    let response = gw.login_response("d@example.com", PASSWORD).await;
    assert_throttled(response, 15 * 60, "d, with its password").await;
}

// ---------------------------------------------------------------------------------------
// PATCH /users/login

#[tokio::test]
async fn refresh_issues_a_new_token_of_the_same_session() {
    let (_up, gw) = setup().await;
    let user = gw.add_user("alice@example.com", Role::User).await;
    let old = gw.login("alice@example.com").await;
    gw.clock.advance(secs(3600));
    let new = refresh_ok(&gw, &old).await;
    assert_ne!(new, old);
    assert_eq!(claim_str(&new, "sid"), claim_str(&old, "sid"));
    assert_eq!(claim_str(&new, "sub"), user.id.to_string());
    assert_ne!(claim_str(&new, "jti"), claim_str(&old, "jti"));
    assert_eq!(claim_i64(&new, "exp") - claim_i64(&new, "iat"), TTL as i64);
    assert!(claim_i64(&new, "exp") > claim_i64(&old, "exp"));
    assert_proxied(&gw, &new).await;
    // The old token keeps working until its own expiry...
    assert_proxied(&gw, &old).await;
    advance_to(&gw, claim_i64(&old, "exp"));
    assert_rejected(&gw, &old).await;
    // ...while the new one lives on.
    assert_proxied(&gw, &new).await;
}

#[tokio::test]
async fn refreshing_a_token_twice_ends_the_whole_session() {
    let (_up, gw, other_session) = alice_session().await;
    let old = gw.login("alice@example.com").await;
    let new = refresh_ok(&gw, &old).await;
    assert_proxied(&gw, &new).await; // cached now
    assert_proxied(&gw, &old).await;

    let msg = refresh_refused(&gw, &old).await;
    assert_ne!(msg, TOO_OLD);
    assert_eq!(
        msg,
        "Token has already been refreshed; the session has ended"
    );
    assert_rejected(&gw, &new).await;
    assert_rejected(&gw, &old).await;
    // Neither token of the ended session can be refreshed.
    assert_eq!(refresh_refused(&gw, &new).await, INVALID_TOKEN);
    // The user's other session is untouched.
    assert_proxied(&gw, &other_session).await;
    refresh_ok(&gw, &other_session).await;
}

#[tokio::test]
async fn refresh_accepts_a_token_exactly_at_the_end_of_its_window() {
    let (_up, gw, token) = alice_session().await;
    let exp = claim_i64(&token, "exp");
    assert_eq!(exp - claim_i64(&token, "iat"), TTL as i64);
    align_to_second_start().await;
    advance_to(&gw, exp + WINDOW as i64); // login + 8 h + 4 h
    let new = refresh_ok(&gw, &token).await;
    assert_proxied(&gw, &new).await;
}

#[tokio::test]
async fn refresh_refuses_a_token_one_second_past_its_window() {
    let (_up, gw, token) = alice_session().await;
    advance_to(&gw, claim_i64(&token, "exp") + WINDOW as i64 + 1); // login + 8 h + 4 h + 1 s
    assert_eq!(refresh_refused(&gw, &token).await, TOO_OLD);
    assert_rejected(&gw, &token).await;
}

#[tokio::test]
async fn refresh_refuses_forged_and_foreign_tokens_with_another_message() {
    let (up, gw, token) = alice_session().await;

    // A token from another gateway (another key, same issuer).
    let (_other, foreign) = foreign_token(&up, "alice@example.com").await;

    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    // Payload re-encoded with a later exp, original signature kept.
    let mut forged_claims = claims(&token);
    forged_claims["exp"] = json!(claim_i64(&token, "exp") + 365 * 86_400);
    let forged_payload = URL_SAFE_NO_PAD.encode(forged_claims.to_string());
    let mut tampered = parts.clone();
    tampered[1] = forged_payload;
    // Signature bytes changed.
    let mut sig = URL_SAFE_NO_PAD.decode(&parts[2]).unwrap();
    sig[0] ^= 1;
    parts[2] = URL_SAFE_NO_PAD.encode(sig);

    for (case, bad) in [
        ("garbage", "garbage".to_owned()),
        ("empty", String::new()),
        ("tampered payload", tampered.join(".")),
        ("bad signature", parts.join(".")),
        ("foreign key", foreign),
    ] {
        let msg = refresh_refused(&gw, &bad).await;
        assert_ne!(msg, TOO_OLD, "{case}");
        assert_eq!(msg, INVALID_TOKEN, "{case}");
    }
    // A missing token field is a bad request, not a 401.
    let response = gw
        .http
        .patch(gw.url("/users/login"))
        .json(&json!({ "tok": token }))
        .send()
        .await
        .unwrap();
    let (status, _) = status_message(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // The genuine token is still refreshable after all that.
    refresh_ok(&gw, &token).await;
}

#[tokio::test]
async fn an_expired_token_inside_the_window_refreshes_into_a_working_one() {
    let (_up, gw, token) = alice_session().await;
    assert_proxied(&gw, &token).await; // cached before it expires
    gw.clock.advance(secs(TTL + 1));
    assert_rejected(&gw, &token).await;
    let new = refresh_ok(&gw, &token).await;
    assert_eq!(claim_i64(&new, "exp") - claim_i64(&new, "iat"), TTL as i64);
    assert_proxied(&gw, &new).await;
    assert_rejected(&gw, &token).await;
}

#[tokio::test]
async fn session_max_age_caps_the_refresh_chain() {
    let (_up, gw) = setup_with("[auth]\nsession_max_age = \"9h\"\n").await;
    gw.add_user("alice@example.com", Role::User).await;
    let first = gw.login("alice@example.com").await;
    let started = claim_i64(&first, "iat");
    assert_eq!(claim_i64(&first, "exp"), started + TTL as i64);
    gw.clock.advance(secs(TTL + 1));
    // The refreshed token ends with the session, not 8 h later.
    let second = refresh_ok(&gw, &first).await;
    assert_eq!(claim_i64(&second, "exp"), started + 9 * 3600);
    assert_proxied(&gw, &second).await;
    advance_to(&gw, started + 9 * 3600 + 1);
    assert_rejected(&gw, &second).await;
    let msg = refresh_refused(&gw, &second).await;
    assert_eq!(msg, "Session has reached its maximum age; log in again");
    // A new login starts a new session.
    let fresh = gw.login("alice@example.com").await;
    assert_proxied(&gw, &fresh).await;
}

#[tokio::test]
async fn refresh_refuses_tokens_of_a_disabled_user() {
    let (_up, gw, token) = alice_session().await;
    assert_proxied(&gw, &token).await;
    gw.disable_user("alice@example.com").await;
    assert_eq!(refresh_refused(&gw, &token).await, INVALID_TOKEN);
    // The cached token stops working within the revocation feed's interval.
    crate::eventually!(
        gw.get_with_token("/anything", &token).await.status() == StatusCode::UNAUTHORIZED,
        "a disabled user's token kept passing the proxy"
    );
}

// ---------------------------------------------------------------------------------------
// DELETE /users/login

/// Logs in, uses the token (so the cache holds it), logs out with `carry`, and checks the
/// session is over everywhere.
async fn logout_ends_the_session(
    carry: fn(reqwest::RequestBuilder, &str) -> reqwest::RequestBuilder,
) {
    let (_up, gw, token) = alice_session().await;
    assert_proxied(&gw, &token).await;
    let response = send(carry(gw.http.delete(gw.url("/users/login")), &token)).await;
    assert_logged_out(response).await;
    assert_rejected(&gw, &token).await;
    assert_eq!(refresh_refused(&gw, &token).await, INVALID_TOKEN);
    // Again: still 200.
    let response = send(carry(gw.http.delete(gw.url("/users/login")), &token)).await;
    assert_logged_out(response).await;
}

#[tokio::test]
async fn logout_with_x_access_token() {
    logout_ends_the_session(|r, t| r.header("x-access-token", t)).await;
}

#[tokio::test]
async fn logout_with_bearer_token() {
    logout_ends_the_session(|r, t| r.header("authorization", format!("Bearer {t}"))).await;
}

#[tokio::test]
async fn logout_with_cookie() {
    logout_ends_the_session(|r, t| {
        r.header("cookie", format!("theme=dark; meiro_access_token={t}"))
    })
    .await;
}

#[tokio::test]
async fn logout_with_token_in_body() {
    logout_ends_the_session(|r, t| r.json(&json!({ "token": t }))).await;
}

#[tokio::test]
async fn logout_with_header_token_and_an_empty_json_body() {
    logout_ends_the_session(|r, t| r.header("x-access-token", t).json(&json!({}))).await;
}

#[tokio::test]
async fn logout_with_header_token_and_a_non_json_body_still_ends_the_session() {
    logout_ends_the_session(|r, t| r.header("x-access-token", t).body("not json")).await;
}

#[tokio::test]
async fn logout_ends_both_the_cookie_session_and_the_body_session() {
    let (_up, gw, stale) = alice_session().await;
    let current = gw.login("alice@example.com").await;
    assert_proxied(&gw, &current).await;
    let response = send(
        gw.http
            .delete(gw.url("/users/login"))
            .header("cookie", format!("meiro_access_token={stale}"))
            .json(&json!({ "token": current })),
    )
    .await;
    assert_logged_out(response).await;
    assert_rejected(&gw, &stale).await;
    assert_rejected(&gw, &current).await;
}

#[tokio::test]
async fn logout_is_idempotent_for_unknown_garbage_or_no_token() {
    let (up, gw, live) = alice_session().await;
    let (_other, foreign) = foreign_token(&up, "alice@example.com").await;
    let url = gw.url("/users/login");
    let requests = [
        ("no token", gw.http.delete(&url)),
        (
            "garbage header",
            gw.http.delete(&url).header("x-access-token", "garbage"),
        ),
        (
            "garbage bearer",
            gw.http
                .delete(&url)
                .header("authorization", "Bearer not.a.jwt"),
        ),
        (
            "garbage cookie",
            gw.http
                .delete(&url)
                .header("cookie", "meiro_access_token=zzz"),
        ),
        (
            "garbage body",
            gw.http.delete(&url).json(&json!({ "token": "garbage" })),
        ),
        (
            "foreign token",
            gw.http.delete(&url).header("x-access-token", &foreign),
        ),
    ];
    for (case, request) in requests {
        let response = send(request).await;
        assert_eq!(response.status(), StatusCode::OK, "{case}");
        assert_logged_out(response).await;
    }
    // None of that touched the live session.
    assert_proxied(&gw, &live).await;
    refresh_ok(&gw, &live).await;
}

#[tokio::test]
async fn logout_accepts_an_expired_but_refreshable_token_and_ends_its_session() {
    let (_up, gw, token) = alice_session().await;
    gw.clock.advance(secs(TTL + 60));
    assert_rejected(&gw, &token).await;
    log_out(&gw, &token).await;
    // Without the logout this refresh would succeed (see the expired-token refresh test).
    assert_eq!(refresh_refused(&gw, &token).await, INVALID_TOKEN);
}

#[tokio::test]
async fn logging_out_one_session_leaves_the_others_working() {
    let (_up, gw, laptop) = alice_session().await;
    let phone = gw.login("alice@example.com").await;
    assert_ne!(claim_str(&laptop, "sid"), claim_str(&phone, "sid"));
    assert_proxied(&gw, &laptop).await;
    assert_proxied(&gw, &phone).await;
    log_out(&gw, &laptop).await;
    assert_rejected(&gw, &laptop).await;
    assert_proxied(&gw, &phone).await;
    let phone2 = refresh_ok(&gw, &phone).await;
    assert_proxied(&gw, &phone2).await;
}

#[tokio::test]
async fn logout_of_a_refreshed_session_rejects_every_token_of_it() {
    let (_up, gw, old) = alice_session().await;
    let new = refresh_ok(&gw, &old).await;
    assert_proxied(&gw, &old).await;
    assert_proxied(&gw, &new).await;
    // Logging out with the older token ends the session the newer one belongs to.
    log_out(&gw, &old).await;
    assert_rejected(&gw, &old).await;
    assert_rejected(&gw, &new).await;
    assert_eq!(refresh_refused(&gw, &new).await, INVALID_TOKEN);
}

// ---------------------------------------------------------------------------------------
// GET /.well-known/jwks.json

#[tokio::test]
async fn jwks_verifies_login_tokens() {
    let (_up, gw) = setup().await;
    let user = gw.add_user("alice@example.com", Role::User).await;
    let response = gw
        .http
        .get(gw.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_json(response.headers());
    let jwks: Value = response.json().await.unwrap();
    let keys = jwks["keys"].as_array().expect("a key list");
    assert_eq!(keys.len(), 1, "{jwks}");
    let key = &keys[0];
    assert_eq!(key["kty"], "OKP");
    assert_eq!(key["crv"], "Ed25519");
    assert_eq!(key["alg"], "EdDSA");
    let kid = key["kid"].as_str().expect("a kid");
    assert!(!kid.is_empty());
    let x = key["x"].as_str().expect("an x");
    assert_eq!(URL_SAFE_NO_PAD.decode(x).unwrap().len(), 32);
    assert!(key.get("d").is_none(), "no private part");

    let before = gw.clock.now();
    let token = gw.login("alice@example.com").await;
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.alg, Algorithm::EdDSA);
    assert_eq!(header.kid.as_deref(), Some(kid));

    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.validate_aud = false;
    validation.set_issuer(&["http://gateway.test"]);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "sub"]);
    let decoding = DecodingKey::from_ed_components(x).unwrap();
    let data = jsonwebtoken::decode::<Value>(&token, &decoding, &validation).expect("verifies");
    let c = data.claims;
    assert_eq!(c["iss"], "http://gateway.test");
    assert_eq!(c["sub"], user.id.to_string());
    for name in ["sid", "jti"] {
        let v = c[name]
            .as_str()
            .unwrap_or_else(|| panic!("{name} is a string"));
        uuid::Uuid::parse_str(v).unwrap_or_else(|_| panic!("{name} is a UUID: {v}"));
    }
    let iat = c["iat"].as_i64().unwrap();
    let exp = c["exp"].as_i64().unwrap();
    assert!((before..=gw.clock.now()).contains(&iat), "iat {iat}");
    assert_eq!(exp - iat, 28_800);

    // The published key does not vouch for a tampered token, nor for another issuer.
    let mut parts: Vec<&str> = token.split('.').collect();
    let mut forged = c.clone();
    forged["sub"] = json!(uuid::Uuid::new_v4().to_string());
    let forged_payload = URL_SAFE_NO_PAD.encode(forged.to_string());
    parts[1] = &forged_payload;
    assert!(jsonwebtoken::decode::<Value>(&parts.join("."), &decoding, &validation).is_err());
    let mut wrong_iss = Validation::new(Algorithm::EdDSA);
    wrong_iss.validate_aud = false;
    wrong_iss.set_issuer(&["http://evil.test"]);
    assert!(jsonwebtoken::decode::<Value>(&token, &decoding, &wrong_iss).is_err());
    let refreshed = refresh_ok(&gw, &token).await;
    let again = jsonwebtoken::decode::<Value>(&refreshed, &decoding, &validation).unwrap();
    assert_eq!(again.claims["sid"], c["sid"]);
    assert_ne!(again.claims["jti"], c["jti"]);
}

/// `server.api_prefix = "/api"` (Meiro CDP's layout): the auth API answers under the prefix and
/// only there (at the root the request is the data plane's, which wants a token), the JWKS
/// stays at the root, and the OpenAPI document names the prefix as its server.
#[tokio::test]
async fn under_an_api_prefix_the_auth_api_answers_there_and_only_there() {
    let upstream = FakeUpstream::start().await;
    let gw = Gateway::start_with(&upstream.url(), "[server]\napi_prefix = \"/api\"\n").await;
    gw.add_user("alice@example.com", Role::User).await;
    let get = |path: &str| gw.http.get(gw.url(path)).send();
    let login = |path: &str| {
        gw.http
            .post(gw.url(path))
            .json(&json!({ "email": "alice@example.com", "password": PASSWORD }))
            .send()
    };

    let response = login("/api/users/login").await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let token = common::token_of_login(response, "alice@example.com").await;
    // The token works on the data plane as any other.
    let proxied = gw.get_with_token("/data", &token).await;
    assert_eq!(proxied.status(), StatusCode::OK);

    // At the root, the auth API's paths are the data plane's: no token, no entry.
    let forwarded_before = upstream.recorded().len();
    let at_root = login("/users/login").await.unwrap();
    assert_eq!(at_root.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(message(at_root).await, common::MISSING);
    let options = get("/auth_options").await.unwrap();
    assert_eq!(options.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(upstream.recorded().len(), forwarded_before);

    let options = get("/api/auth_options").await.unwrap();
    assert_eq!(options.status(), StatusCode::OK);
    // A known path under the prefix with another method: the API's JSON 405.
    let wrong_method = get("/api/users/login").await.unwrap();
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_json(wrong_method.headers());

    // The JWKS stays where backends fetch it.
    let jwks = get("/.well-known/jwks.json").await.unwrap();
    assert_eq!(jwks.status(), StatusCode::OK);
    let prefixed_jwks = get("/api/.well-known/jwks.json").await.unwrap();
    assert_ne!(prefixed_jwks.status(), StatusCode::OK);

    let document: Value = get("/api/openapi.json")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(document["servers"], json!([{ "url": "/api" }]));
    assert!(document["paths"]["/users/login"].is_object());
    gw.shutdown().await;
}

#[test]
fn an_api_prefix_must_be_a_plain_path() {
    use figment::providers::Format;
    for bad in ["api", "/api/", "/a/../b", "/.", "/a b", "/%61pi", "//api"] {
        let toml = format!("[server]\napi_prefix = \"{bad}\"\n");
        let figment = figment::Figment::from(figment::providers::Toml::string(&toml));
        let error = meiro_gate::config::load_from_figment(&figment)
            .expect_err(bad)
            .to_string();
        assert!(error.contains("server.api_prefix"), "{bad}: {error}");
    }
}

/// `GET /users/{user_id}`: an admin reads any user, a user reads themself and nobody else, and
/// the body is the contract's `User`; unknown and malformed ids are the same 404, and a caller
/// without a token learns nothing about ids.
#[tokio::test]
async fn a_user_is_read_by_an_admin_or_by_themself_only() {
    let (_upstream, gw) = setup().await;
    let admin = gw.add_user("admin@example.com", Role::Admin).await;
    let alice = gw.add_user("alice@example.com", Role::User).await;
    let admin_token = gw.login("admin@example.com").await;
    let alice_token = gw.login("alice@example.com").await;
    let read = |id: String, token: Option<&str>| {
        let mut request = gw.http.get(gw.url(&format!("/users/{id}")));
        if let Some(token) = token {
            request = request.header("x-access-token", token);
        }
        request.send()
    };

    for token in [&admin_token, &alice_token] {
        let response = read(alice.id.to_string(), Some(token)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_json(response.headers());
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["id"], json!(alice.id.to_string()));
        assert_eq!(body["email"], "alice@example.com");
        assert_eq!(body["role"], "user");
        assert_eq!(body["deleted"], false);
        assert_eq!(body["disabled"], false);
        assert_eq!(body["sso_enabled"], false);
        assert_eq!(body["invitation_pending"], false);
        assert!(body["last_login"].is_string(), "alice logged in: {body}");
        assert!(body["created"].is_string());
        assert!(body.get("password_hash").is_none(), "no secret in the body");
    }

    let (status, text) = common::status_message(
        read(admin.id.to_string(), Some(&alice_token))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(text, "Insufficient permissions");

    let unknown = "0b8e7f3c-4d5a-4e6b-9c7d-8e9f0a1b2c3d".to_owned();
    for id in [unknown.clone(), "not-a-uuid".to_owned()] {
        let response = read(id, Some(&admin_token)).await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_json(response.headers());
    }
    // Without a token: 401 for a known and an unknown id alike.
    for id in [alice.id.to_string(), unknown] {
        let response = read(id, None).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    gw.shutdown().await;
}
