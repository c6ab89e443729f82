//! Okta (OpenID Connect) login over real sockets, against `FakeIdp` (tests/common/oidc.rs):
//! `POST /users/okta_login`, the Okta fields of `GET /auth_options`, every id_token validation
//! rule, key rotation, and a provider that is down when the gateway starts.

mod common;

use std::time::Duration;

use common::oidc::{
    CLIENT_ID, CLIENT_SECRET, ClientAuth, FakeIdp, REDIRECT_URI, Signer, jwt, unix_now,
    unpublished_key,
};
use common::thread_log;
use common::{FakeUpstream, Gateway, PASSWORD, message};
use meiro_gate::store::{Invitation, NewUser, Role, User};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, SET_COOKIE};
use serde_json::{Value, json};

const INVALID_CREDENTIALS: &str = "Invalid credentials have been provided";
const TTL: i64 = 8 * 3600;

// ---------------------------------------------------------------------------------------
// helpers

/// A gateway whose `[okta]` points at `idp`, with `okta_extra` lines in that table.
async fn gateway(idp: &FakeIdp, okta_extra: &str) -> (FakeUpstream, Gateway) {
    thread_log::capture("meiro_gate=warn", thread_log::Format::Text);
    let upstream = FakeUpstream::start().await;
    let gw = Gateway::start_with(&upstream.url(), &idp.okta_toml(okta_extra)).await;
    (upstream, gw)
}

async fn okta_login(gw: &Gateway, code: &str) -> reqwest::Response {
    gw.http
        .post(gw.url("/users/okta_login"))
        .json(&json!({ "code": code }))
        .send()
        .await
        .unwrap()
}

/// Asserts a 200 with a token and returns the token.
async fn okta_login_ok(gw: &Gateway, code: &str) -> String {
    thread_log::take();
    let response = okta_login(gw, code).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "okta login should succeed; the log says: {}",
        thread_log::take()
    );
    let body: Value = response.json().await.unwrap();
    body["token"].as_str().expect("a token").to_owned()
}

/// Asserts the contract's 401 for a refused Okta login, and that the log says why: the
/// refusal line must contain `reason`.
async fn assert_refused(gw: &Gateway, code: &str, why: &str, reason: &str) {
    thread_log::take();
    let response = okta_login(gw, code).await;
    let logs = thread_log::take();
    let refusal = logs
        .lines()
        .find(|l| l.contains("okta login refused"))
        .unwrap_or_else(|| panic!("{why}: no refusal logged in {logs:?}"));
    assert!(
        refusal.contains(reason),
        "{why}: expected {reason:?} in {refusal:?}"
    );
    for secret in [CLIENT_SECRET, code] {
        assert!(
            secret.is_empty() || !logs.contains(secret),
            "{why}: the log shows a secret: {logs}"
        );
    }
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{why}");
    assert_json(&response);
    assert!(
        response.headers().get(SET_COOKIE).is_none(),
        "{why}: no cookie"
    );
    assert_eq!(message(response).await, INVALID_CREDENTIALS, "{why}");
}

fn assert_json(response: &reqwest::Response) {
    let ct = response.headers()[CONTENT_TYPE].to_str().unwrap();
    assert!(ct.starts_with("application/json"), "content type {ct}");
}

async fn auth_options(gw: &Gateway) -> Value {
    let response = gw.http.get(gw.url("/auth_options")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

async fn user(gw: &Gateway, email: &str) -> Option<User> {
    gw.app().auth().store().user_by_email(email).await.unwrap()
}

/// `claims` with some fields replaced (`Value::Null` removes one).
fn with(mut claims: Value, changes: Value) -> Value {
    for (key, value) in changes.as_object().unwrap() {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(key);
        } else {
            claims[key] = value.clone();
        }
    }
    claims
}

/// A code redeeming to an id_token over `claims` signed by the provider's current key.
fn code_with_claims(idp: &FakeIdp, claims: &Value) -> String {
    idp.code_for(idp.sign(claims))
}

// ---------------------------------------------------------------------------------------
// success

#[tokio::test]
async fn a_code_of_a_known_user_gives_a_working_token_and_cookie() {
    let idp = FakeIdp::start().await;
    let (upstream, gw) = gateway(&idp, "").await;
    let ann = gw.add_user("ann@example.com", Role::User).await;
    assert!(!ann.sso_enabled && ann.last_login.is_none());

    // The provider's email differs in case: emails compare case-insensitively.
    let response = okta_login(&gw, &idp.login_code("Ann@Example.COM")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_json(&response);
    let cookies: Vec<String> = response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let body: Value = response.json().await.unwrap();
    let token = body["token"].as_str().unwrap().to_owned();
    assert_eq!(
        cookies,
        [format!(
            "meiro_access_token={token}; Path=/; Max-Age={TTL}; HttpOnly; SameSite=Lax"
        )]
    );

    // The same kind of token as a credentials login: it works on the data plane…
    let through = gw.get_with_token("/reports", &token).await;
    assert_eq!(through.status(), StatusCode::OK);
    let seen = upstream.last();
    assert_eq!(seen.headers["x-meiro-user-email"], "ann@example.com");
    assert_eq!(seen.headers["x-meiro-user-id"], ann.id.to_string().as_str());
    // …and refreshes like one.
    let refreshed = gw.refresh_response(&token).await;
    assert_eq!(refreshed.status(), StatusCode::OK);

    let ann = user(&gw, "ann@example.com").await.unwrap();
    assert!(!ann.sso_enabled, "not made SSO-only by an Okta login");
    assert!(ann.last_login.is_some(), "last_login recorded");
    assert!(ann.password_hash.is_some(), "the password still works");
    gw.login("ann@example.com").await;

    // client_secret_basic: the secret travels in the header, never in the body.
    let requests = idp.token_requests();
    assert_eq!(requests.len(), 1);
    assert!(
        requests[0]
            .authorization
            .as_deref()
            .unwrap()
            .starts_with("Basic ")
    );
    assert!(!requests[0].form.contains_key("client_secret"));
    assert_eq!(requests[0].form["redirect_uri"], REDIRECT_URI);
    assert_eq!(requests[0].form["grant_type"], "authorization_code");

    // Discovery and the JWKS are cached: a second login only redeems its code.
    let before = idp.hits();
    okta_login_ok(&gw, &idp.login_code("ann@example.com")).await;
    let after = idp.hits();
    assert_eq!((after.discovery, after.jwks), (1, 1), "{after:?}");
    assert_eq!(after.token, before.token + 1);
}

#[tokio::test]
async fn client_secret_post_sends_the_secret_in_the_body() {
    let idp = FakeIdp::start_with(ClientAuth::Post).await;
    let (_upstream, gw) = gateway(&idp, "").await;
    gw.add_user("bob@example.com", Role::User).await;
    okta_login_ok(&gw, &idp.login_code("bob@example.com")).await;
    let request = &idp.token_requests()[0];
    assert!(request.authorization.is_none(), "no Basic header");
    assert_eq!(request.form["client_id"], CLIENT_ID);
    assert_eq!(request.form["client_secret"], CLIENT_SECRET);
}

#[tokio::test]
async fn auto_provision_creates_an_active_user_with_the_default_role() {
    let idp = FakeIdp::start().await;
    let (_upstream, gw) = gateway(&idp, "auto_provision = true\ndefault_role = \"admin\"").await;
    assert!(user(&gw, "new@example.com").await.is_none());
    let token = okta_login_ok(&gw, &idp.login_code("New@Example.com")).await;
    let new = user(&gw, "new@example.com").await.expect("provisioned");
    assert_eq!(new.email, "new@example.com", "stored lower-cased");
    assert_eq!(new.role, Role::Admin);
    assert!(new.is_active() && new.sso_enabled && new.last_login.is_some());
    assert!(new.password_hash.is_none(), "no password: SSO only");
    assert_eq!(
        gw.get_with_token("/x", &token).await.status(),
        StatusCode::OK
    );
    // Next time the same user is found, not created again.
    okta_login_ok(&gw, &idp.login_code("new@example.com")).await;
    let users = gw.app().auth().store().list_users().await.unwrap();
    assert_eq!(users.len(), 1);
    // An existing but disabled user is refused, not provisioned again.
    gw.add_user("off@example.com", Role::User).await;
    gw.disable_user("off@example.com").await;
    assert_refused(
        &gw,
        &idp.login_code("off@example.com"),
        "disabled user",
        "no active user",
    )
    .await;
    assert_eq!(gw.app().auth().store().list_users().await.unwrap().len(), 2);
    // Provisioning still needs a verified email.
    let unverified = with(
        idp.claims("other@example.com"),
        json!({ "email_verified": false }),
    );
    assert_refused(
        &gw,
        &code_with_claims(&idp, &unverified),
        "unverified",
        "is not verified",
    )
    .await;
    assert!(user(&gw, "other@example.com").await.is_none());
    // Nor a user whose address the mail path could not deliver to (the gateway's one address
    // rule, `meiro_gate::email`): a provisioned user gets password-reset mail like any other.
    for address in ["a..b@example.com", "x@[127.0.0.1]", "x(y)@example.com"] {
        assert_refused(
            &gw,
            &idp.login_code(address),
            address,
            "not an email address the gateway accepts",
        )
        .await;
    }
    assert_eq!(gw.app().auth().store().list_users().await.unwrap().len(), 2);
}

// ---------------------------------------------------------------------------------------
// identity mapping

#[tokio::test]
async fn unknown_disabled_or_pending_users_are_refused() {
    let idp = FakeIdp::start().await;
    let (_upstream, gw) = gateway(&idp, "").await;
    assert_refused(
        &gw,
        &idp.login_code("nobody@example.com"),
        "unknown user",
        "no active user",
    )
    .await;
    assert!(
        user(&gw, "nobody@example.com").await.is_none(),
        "no auto_provision by default"
    );

    gw.add_user("gone@example.com", Role::User).await;
    gw.disable_user("gone@example.com").await;
    assert_refused(
        &gw,
        &idp.login_code("gone@example.com"),
        "disabled user",
        "no active user",
    )
    .await;
    assert!(!user(&gw, "gone@example.com").await.unwrap().sso_enabled);

    // Invited, but has not accepted yet: Okta does not activate the account.
    gw.app()
        .auth()
        .store()
        .create_user(NewUser {
            email: "invited@example.com".into(),
            password_hash: None,
            role: Role::User,
            invitation_pending: true,
            invitation: Some(Invitation {
                nonce: "pending-invitation-nonce".into(),
                expires_at: gw.clock.now() + 3600,
            }),
            sso_enabled: false,
            created: gw.clock.now(),
        })
        .await
        .unwrap();
    assert_refused(
        &gw,
        &idp.login_code("invited@example.com"),
        "pending user",
        "no active user",
    )
    .await;
    let invited = user(&gw, "invited@example.com").await.unwrap();
    assert!(invited.invitation_pending && !invited.sso_enabled);
}

#[tokio::test]
async fn missing_or_unverified_email_is_refused() {
    let idp = FakeIdp::start().await;
    let (_upstream, gw) = gateway(&idp, "").await;
    gw.add_user("eve@example.com", Role::User).await;
    let claims = idp.claims("eve@example.com");
    for (why, changes, reason) in [
        ("no email claim", json!({ "email": null }), "no email claim"),
        (
            "email_verified false",
            json!({ "email_verified": false }),
            "is not verified",
        ),
        (
            "no email_verified claim",
            json!({ "email_verified": null }),
            "is not verified",
        ),
        (
            "not an email",
            json!({ "email": "eve at example" }),
            "not an email address",
        ),
    ] {
        let code = code_with_claims(&idp, &with(claims.clone(), changes));
        assert_refused(&gw, &code, why, reason).await;
    }
    okta_login_ok(&gw, &code_with_claims(&idp, &claims)).await;
}

#[tokio::test]
async fn unverified_email_is_accepted_when_configured() {
    let idp = FakeIdp::start().await;
    let (_upstream, gw) = gateway(&idp, "require_verified_email = false").await;
    gw.add_user("eve@example.com", Role::User).await;
    let claims = idp.claims("eve@example.com");
    let unverified = with(claims.clone(), json!({ "email_verified": false }));
    okta_login_ok(&gw, &code_with_claims(&idp, &unverified)).await;
    let absent = with(claims.clone(), json!({ "email_verified": null }));
    okta_login_ok(&gw, &code_with_claims(&idp, &absent)).await;
    // The email itself is still required.
    let no_email = with(claims, json!({ "email": null }));
    assert_refused(
        &gw,
        &code_with_claims(&idp, &no_email),
        "no email",
        "no email claim",
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// the code

#[tokio::test]
async fn used_expired_and_unknown_codes_are_refused() {
    let idp = FakeIdp::start().await;
    let (_upstream, gw) = gateway(&idp, "").await;
    gw.add_user("cat@example.com", Role::User).await;
    let code = idp.login_code("cat@example.com");
    okta_login_ok(&gw, &code).await;
    assert_refused(&gw, &code, "used code", "invalid_grant").await;

    let expired = idp.expired_code_for(idp.sign(&idp.claims("cat@example.com")));
    assert_refused(&gw, &expired, "expired code", "invalid_grant").await;
    assert_refused(&gw, "never-issued", "unknown code", "invalid_grant").await;
    assert_refused(&gw, "", "empty code", "empty or oversized").await;
    let huge = "x".repeat(5000);
    assert_refused(&gw, &huge, "oversized code", "empty or oversized").await;
    // Each redemption was tried exactly once (codes are never retried); the empty one never.
    assert_eq!(idp.hits().token, 4);
}

#[tokio::test]
async fn wrong_client_secret_is_refused() {
    let idp = FakeIdp::start().await;
    let (_upstream, gw) = gateway(&idp, "").await;
    gw.add_user("dan@example.com", Role::User).await;
    // The same provider, and a gateway configured with the wrong secret.
    let upstream = FakeUpstream::start().await;
    let toml = idp.okta_toml("client_secret = \"not-the-client-secret\"");
    let wrong = Gateway::start_with(&upstream.url(), &toml).await;
    wrong.add_user("dan@example.com", Role::User).await;
    assert_refused(
        &wrong,
        &idp.login_code("dan@example.com"),
        "wrong secret",
        "invalid_client",
    )
    .await;
    // A gateway that authenticates another way than the provider expects fails the same.
    let post_toml = idp.okta_toml("client_auth = \"client_secret_post\"");
    let mismatched = Gateway::start_with(&upstream.url(), &post_toml).await;
    mismatched.add_user("dan@example.com", Role::User).await;
    assert_refused(
        &mismatched,
        &idp.login_code("dan@example.com"),
        "post vs basic",
        "invalid_client",
    )
    .await;
    // The right one works.
    okta_login_ok(&gw, &idp.login_code("dan@example.com")).await;
}

#[tokio::test]
async fn the_token_request_is_bounded_and_never_retried() {
    let idp = FakeIdp::start().await;
    let (_upstream, gw) = gateway(&idp, "http_timeout = \"300ms\"").await;
    gw.add_user("ola@example.com", Role::User).await;
    okta_login_ok(&gw, &idp.login_code("ola@example.com")).await;
    idp.delay_token_endpoint(Duration::from_secs(3));
    let started = std::time::Instant::now();
    assert_refused(
        &gw,
        &idp.login_code("ola@example.com"),
        "slow token endpoint",
        "code exchange failed",
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "http_timeout applies"
    );
    assert_eq!(idp.hits().token, 2, "the code was sent once, not retried");
}

#[tokio::test]
async fn redirects_from_the_provider_are_not_followed() {
    let idp = FakeIdp::start().await;
    idp.move_token_endpoint();
    let (_upstream, gw) = gateway(&idp, "").await;
    gw.add_user("pat@example.com", Role::User).await;
    assert_refused(
        &gw,
        &idp.login_code("pat@example.com"),
        "token endpoint redirects",
        "empty error response",
    )
    .await;
    assert_eq!(idp.hits().token, 0, "the code and secret were not replayed");
}

#[tokio::test]
async fn a_missing_code_is_a_bad_request() {
    let idp = FakeIdp::start().await;
    let (_upstream, gw) = gateway(&idp, "").await;
    for body in [json!({}), json!({ "code": 42 }), json!({ "cod": "x" })] {
        let response = gw
            .http
            .post(gw.url("/users/okta_login"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        assert_json(&response);
        assert!(message(response).await.contains("code"), "{body}");
    }
    assert_eq!(idp.hits().token, 0);
}

// ---------------------------------------------------------------------------------------
// id_token validation

#[tokio::test]
async fn a_bad_signature_is_refused() {
    let idp = FakeIdp::start().await;
    let (_upstream, gw) = gateway(&idp, "").await;
    gw.add_user("fay@example.com", Role::User).await;
    let claims = idp.claims("fay@example.com");

    // Signed by a key the provider never published, under the published kid.
    let forged = jwt(&idp.header(), &claims, Signer::Rsa(unpublished_key()));
    assert_refused(&gw, &idp.code_for(forged), "foreign key", "bad signature").await;

    // A genuine token whose payload was swapped afterwards.
    let genuine = idp.sign(&idp.claims("someone@example.com"));
    let other_payload = idp.sign(&claims);
    let parts: Vec<&str> = genuine.split('.').collect();
    let swapped = format!(
        "{}.{}.{}",
        parts[0],
        other_payload.split('.').nth(1).unwrap(),
        parts[2]
    );
    assert_refused(
        &gw,
        &idp.code_for(swapped),
        "tampered payload",
        "bad signature",
    )
    .await;

    // Not a JWT at all.
    assert_refused(
        &gw,
        &idp.code_for("not.a.jwt".into()),
        "garbage",
        "does not parse",
    )
    .await;

    okta_login_ok(&gw, &code_with_claims(&idp, &claims)).await;
}

#[tokio::test]
async fn hmac_and_unsigned_id_tokens_are_refused() {
    let idp = FakeIdp::start().await;
    let (_upstream, gw) = gateway(&idp, "").await;
    gw.add_user("gus@example.com", Role::User).await;
    let claims = idp.claims("gus@example.com");
    let kid = idp.signing_kid();

    // HS256 keyed with the client secret: what a confidential-client verifier would accept.
    let hs256 = jwt(
        &json!({ "alg": "HS256", "kid": kid }),
        &claims,
        Signer::Hmac(CLIENT_SECRET.as_bytes()),
    );
    assert_refused(
        &gw,
        &idp.code_for(hs256),
        "HS256 with the client secret",
        "algorithm `HS256` is not one of: RS256",
    )
    .await;
    // HS256 keyed with the public key's JWK text (the classic RS/HS confusion).
    let jwks: Value = reqwest::get(idp.url("/v1/keys"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let public = jwks["keys"][0]["n"].as_str().unwrap().to_owned();
    let confused = jwt(
        &json!({ "alg": "HS256", "kid": kid }),
        &claims,
        Signer::Hmac(public.as_bytes()),
    );
    assert_refused(
        &gw,
        &idp.code_for(confused),
        "HS256 with the public key",
        "algorithm `HS256` is not one of: RS256",
    )
    .await;

    for header in [
        json!({ "alg": "none" }),
        json!({ "alg": "none", "kid": kid }),
    ] {
        let unsigned = jwt(&header, &claims, Signer::Unsigned);
        assert_refused(&gw, &idp.code_for(unsigned), "alg none", "No signature").await;
    }
    // A genuine RS256 signature under a header claiming another algorithm.
    let genuine = idp.sign(&claims);
    let relabeled = format!(
        "{}.{}",
        jwt(
            &json!({ "alg": "RS512", "kid": kid }),
            &claims,
            Signer::Unsigned
        )
        .rsplit_once('.')
        .unwrap()
        .0,
        genuine.rsplit('.').next().unwrap()
    );
    assert_refused(
        &gw,
        &idp.code_for(relabeled),
        "RS512 not allowed",
        "algorithm `RS512` is not one of: RS256",
    )
    .await;
}

#[tokio::test]
async fn issuer_and_audience_must_match() {
    let idp = FakeIdp::start().await;
    let (_upstream, gw) = gateway(&idp, "").await;
    gw.add_user("hal@example.com", Role::User).await;
    let claims = idp.claims("hal@example.com");
    let issuer = idp.issuer();
    let cases = [
        (
            "another issuer",
            json!({ "iss": "https://evil.example/oauth2/default" }),
            "Invalid issuer",
        ),
        (
            "issuer with a trailing slash",
            json!({ "iss": format!("{issuer}/") }),
            "Invalid issuer",
        ),
        ("no issuer", json!({ "iss": null }), "missing field `iss`"),
        (
            "another audience",
            json!({ "aud": "someone-else" }),
            "Invalid audiences",
        ),
        (
            "audience list without us",
            json!({ "aud": ["a", "b"] }),
            "Invalid audiences",
        ),
        ("no audience", json!({ "aud": null }), "Invalid audiences"),
        (
            "azp naming another client",
            json!({ "azp": "someone-else" }),
            "is not this client",
        ),
    ];
    for (why, changes, reason) in cases {
        let code = code_with_claims(&idp, &with(claims.clone(), changes));
        assert_refused(&gw, &code, why, reason).await;
    }
    okta_login_ok(&gw, &code_with_claims(&idp, &claims)).await;
}

#[tokio::test]
async fn several_audiences_need_azp_naming_this_client() {
    let idp = FakeIdp::start().await;
    let (_upstream, gw) = gateway(&idp, "").await;
    gw.add_user("ivy@example.com", Role::User).await;
    let claims = with(
        idp.claims("ivy@example.com"),
        json!({ "aud": [CLIENT_ID, "api://reports"] }),
    );
    assert_refused(
        &gw,
        &code_with_claims(&idp, &claims),
        "no azp",
        "several audiences but no azp",
    )
    .await;
    let other = with(claims.clone(), json!({ "azp": "api://reports" }));
    assert_refused(
        &gw,
        &code_with_claims(&idp, &other),
        "azp of another",
        "is not this client",
    )
    .await;
    let ours = with(claims, json!({ "azp": CLIENT_ID }));
    okta_login_ok(&gw, &code_with_claims(&idp, &ours)).await;
    // One audience as a list, with or without azp, is plain.
    let single = with(idp.claims("ivy@example.com"), json!({ "aud": [CLIENT_ID] }));
    okta_login_ok(&gw, &code_with_claims(&idp, &single)).await;
}

#[tokio::test]
async fn expiry_and_issue_time_allow_one_minute_of_skew() {
    let idp = FakeIdp::start().await;
    let (_upstream, gw) = gateway(&idp, "").await;
    gw.add_user("jon@example.com", Role::User).await;
    let claims = idp.claims("jon@example.com");
    let now = unix_now();
    for (why, changes, reason) in [
        (
            "expired two minutes ago",
            json!({ "iat": now - 3600, "exp": now - 120 }),
            "ID token expired",
        ),
        (
            "issued ten minutes ahead",
            json!({ "iat": now + 600 }),
            "s in the future",
        ),
        ("no exp", json!({ "exp": null }), "missing field `exp`"),
        ("no iat", json!({ "iat": null }), "missing field `iat`"),
    ] {
        let code = code_with_claims(&idp, &with(claims.clone(), changes));
        assert_refused(&gw, &code, why, reason).await;
    }
    for changes in [
        json!({ "iat": now - 3600, "exp": now - 20 }),
        json!({ "iat": now + 20 }),
    ] {
        let code = code_with_claims(&idp, &with(claims.clone(), changes.clone()));
        assert_eq!(
            okta_login(&gw, &code).await.status(),
            StatusCode::OK,
            "within the leeway: {changes}"
        );
    }
    // The gateway's clock decides: an hour later the provider's fresh token has expired.
    gw.clock.advance(Duration::from_secs(2 * 3600));
    assert_refused(
        &gw,
        &idp.login_code("jon@example.com"),
        "clock moved past exp",
        "ID token expired",
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// the provider's keys and availability

#[tokio::test]
async fn key_rotation_at_the_provider_needs_no_restart() {
    let idp = FakeIdp::start().await;
    let (_upstream, gw) = gateway(&idp, "jwks_min_refresh = \"100ms\"").await;
    gw.add_user("kim@example.com", Role::User).await;
    okta_login_ok(&gw, &idp.login_code("kim@example.com")).await;
    assert_eq!(idp.hits().jwks, 1);

    idp.rotate_key();
    tokio::time::sleep(Duration::from_millis(150)).await;
    okta_login_ok(&gw, &idp.login_code("kim@example.com")).await;
    assert_eq!(
        idp.hits().jwks,
        2,
        "the unknown kid refetched the JWKS once"
    );
    okta_login_ok(&gw, &idp.login_code("kim@example.com")).await;
    assert_eq!(idp.hits().jwks, 2, "the new key is cached");

    // Still unknown after the refetch: refused, and not fetched again right away.
    let forged = jwt(
        &json!({ "alg": "RS256", "kid": "never-published" }),
        &idp.claims("kim@example.com"),
        Signer::Rsa(unpublished_key()),
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_refused(
        &gw,
        &idp.code_for(forged.clone()),
        "unknown kid",
        "No matching key found",
    )
    .await;
    assert_refused(
        &gw,
        &idp.code_for(forged),
        "unknown kid again",
        "not in the provider's JWKS",
    )
    .await;
    assert_eq!(idp.hits().jwks, 3, "one refetch per jwks_min_refresh");
}

#[tokio::test]
async fn jwks_refetches_are_rate_limited() {
    let idp = FakeIdp::start().await;
    // Default jwks_min_refresh (30 s): the JWKS fetched at discovery is too recent.
    let (_upstream, gw) = gateway(&idp, "").await;
    gw.add_user("lou@example.com", Role::User).await;
    okta_login_ok(&gw, &idp.login_code("lou@example.com")).await;
    idp.rotate_key();
    for _ in 0..3 {
        assert_refused(
            &gw,
            &idp.login_code("lou@example.com"),
            "rate-limited",
            "not in the provider's JWKS",
        )
        .await;
    }
    assert_eq!(idp.hits().jwks, 1);
}

#[tokio::test]
async fn a_provider_down_at_start_does_not_stop_the_gateway() {
    let idp = FakeIdp::start().await;
    idp.stop();
    let (_upstream, gw) = gateway(&idp, "").await;
    gw.add_user("max@example.com", Role::User).await;

    // Credentials login is unaffected.
    let response = gw.login_response("max@example.com", PASSWORD).await;
    assert_eq!(response.status(), StatusCode::OK);
    // Okta is not offered while its provider cannot be discovered…
    let options = auth_options(&gw).await;
    assert_eq!(options["is_credentials_login_enabled"], true);
    assert_eq!(options["is_okta_login_enabled"], false);
    assert_eq!(options["okta_auth_link"], Value::Null);
    // …and a login through it is refused like bad credentials.
    let code = idp.login_code("max@example.com");
    assert_refused(&gw, &code, "provider down", "the provider is unreachable").await;

    idp.restart().await;
    // Discovery is retried after `discovery_retry` (200 ms in these tests).
    let started = std::time::Instant::now();
    eventually!(
        okta_login(&gw, &code).await.status() == StatusCode::OK,
        "okta login never recovered"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(idp.hits().discovery, 1, "discovered once, then cached");
    assert_eq!(idp.hits().token, 1, "no code was sent while undiscovered");
    assert_eq!(auth_options(&gw).await["is_okta_login_enabled"], true);
    assert!(!user(&gw, "max@example.com").await.unwrap().sso_enabled);

    // Down again after discovery: the exchange fails, credentials login still works.
    idp.stop();
    assert_refused(
        &gw,
        &idp.login_code("max@example.com"),
        "token endpoint down",
        "Connection refused",
    )
    .await;
    assert_eq!(
        gw.login_response("max@example.com", PASSWORD)
            .await
            .status(),
        StatusCode::OK
    );
}

// ---------------------------------------------------------------------------------------
// auth_options

#[tokio::test]
async fn auth_options_links_to_the_authorization_endpoint() {
    let idp = FakeIdp::start().await;
    let (_upstream, gw) = gateway(&idp, "scopes = \"openid email\"").await;
    let options = auth_options(&gw).await;
    assert_eq!(options["is_credentials_login_enabled"], true);
    assert_eq!(options["is_okta_login_enabled"], true);
    let link = url::Url::parse(options["okta_auth_link"].as_str().unwrap()).unwrap();
    let endpoint = url::Url::parse(&idp.url("/v1/authorize")).unwrap();
    assert_eq!(
        (link.scheme(), link.host_str(), link.port(), link.path()),
        (
            endpoint.scheme(),
            endpoint.host_str(),
            endpoint.port(),
            endpoint.path()
        )
    );
    let pairs: Vec<(String, String)> = link.query_pairs().into_owned().collect();
    let names: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "client_id",
            "response_type",
            "scope",
            "redirect_uri",
            "state"
        ]
    );
    let param = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(param("client_id"), CLIENT_ID);
    assert_eq!(param("response_type"), "code");
    assert_eq!(param("scope"), "openid email");
    assert_eq!(param("redirect_uri"), REDIRECT_URI);
    let state = param("state");
    assert!(state.len() >= 22, "at least 128 random bits: {state}");
    assert!(
        state
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    );
    // A fresh state each time.
    let again = auth_options(&gw).await;
    assert_ne!(again["okta_auth_link"], options["okta_auth_link"]);
}

#[tokio::test]
async fn okta_disabled_is_404_and_not_offered() {
    let upstream = FakeUpstream::start().await;
    let gw = Gateway::start(&upstream).await;
    let options = auth_options(&gw).await;
    assert_eq!(
        options,
        json!({
            "is_credentials_login_enabled": true,
            "is_okta_login_enabled": false,
            "okta_auth_link": null,
        })
    );
    let response = okta_login(&gw, "some-code").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_json(&response);
    assert_eq!(message(response).await, "Okta login is not enabled");
}
