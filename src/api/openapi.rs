//! The auth API's OpenAPI 3.1 document, served at `GET /openapi.json` and committed as
//! `docs/openapi.json`.
//!
//! The operations are declared here, on documentation-only functions, rather than on the
//! handlers: the handlers stay plain axum functions and this file is the one place that says
//! what each route answers. Request and response bodies are the real types (`ToSchema` derives
//! on them), so a field renamed in code is renamed here too. What keeps the routes and
//! statuses honest is `tests/openapi.rs`: it compares the documented (method, path) pairs with
//! what the router serves, drives every documented status through a real gateway, and fails
//! when `docs/openapi.json` is not the document generated here.

use bytes::Bytes;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoResponses, Modify, OpenApi, ToSchema};

use super::login::{LoginBody, LogoutBody, TokenBody};
use super::okta::OktaLoginBody;
use super::password::{ForgotPasswordBody, ResetPasswordBody};
use crate::store::Role;

/// The document, pretty-printed with a final newline: byte for byte what `docs/openapi.json`
/// holds and what `GET /openapi.json` answers.
pub fn document_json() -> String {
    render(ApiDoc::openapi())
}

fn render(doc: utoipa::openapi::OpenApi) -> String {
    let mut json = doc
        .to_pretty_json()
        .expect("the OpenAPI document serializes");
    json.push('\n');
    json
}

/// `GET /openapi.json`: generated when the router is built, then served from memory. Under
/// `server.api_prefix` the document names it as its server, so paths resolve below it.
#[derive(Clone)]
pub(super) struct Document(Bytes);

impl Document {
    pub(super) fn mounted_at(prefix: &str) -> Document {
        let mut doc = ApiDoc::openapi();
        if !prefix.is_empty() {
            doc.servers = Some(vec![utoipa::openapi::Server::new(prefix)]);
        }
        Document(Bytes::from(render(doc)))
    }

    pub(super) async fn serve(self) -> Response {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            self.0,
        )
            .into_response()
    }
}

mod users;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "meiro-gate auth API",
        description = "The Meiro Authentication API as meiro-gate serves it on its main listener \
            (local auth mode). Every response is `application/json`, every error body \
            `{\"message\": \"…\"}`; a message never repeats a value the client sent. Bodies \
            are one JSON object: a wrong content type, malformed JSON, trailing bytes or \
            missing/ill-typed fields are a 400 whose message names the field. Every 401 \
            carries `WWW-Authenticate: Bearer`."
    ),
    paths(
        auth_options,
        login,
        refresh,
        logout,
        okta_login,
        users::invite,
        users::reinvite,
        users::invitation_link,
        users::get_user,
        users::list_users,
        users::list_trash,
        users::create_user,
        users::create_or_restore,
        users::modify_user,
        users::delete_user,
        users::change_password,
        forgot_password,
        reset_password,
        jwks,
        openapi_json,
    ),
    components(schemas(AuthOptions, InvitationLink, Message, Error, Jwks, Role)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "session", description = "Login, refresh, logout"),
        (name = "users", description = "Users (local mode): list, page, create, modify, delete to the trash and restore, invitations (admin only); reading a user (an admin, or that user); changing one's own password"),
        (name = "password", description = "Forgotten password and setting a password"),
        (name = "discovery", description = "Public documents: login options, keys, this document"),
    )
)]
struct ApiDoc;

/// The three places a caller's access token may travel, tried in this order.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "access_token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Access-Token",
                "The access token (a JWT) from login; checked first.",
            ))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "`Authorization: Bearer <token>`, when there is no X-Access-Token.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                "meiro_access_token",
                "The session cookie set by login (its name is `auth.cookie_name`); \
                 used when neither header is sent.",
            ))),
        );
    }
}

// ---------------------------------------------------------------------------------------
// Bodies the handlers build with `json!`: their shapes, as the contract names them.

/// Which login methods a client should offer.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // a schema only
struct AuthOptions {
    /// Always `true`.
    is_credentials_login_enabled: bool,
    /// `true` while Okta is configured and its provider could be discovered.
    is_okta_login_enabled: bool,
    /// Where to send the browser for Okta login; `null` when Okta login is not offered.
    #[schema(required = true)]
    okta_auth_link: Option<String>,
}

/// The invitation link that was e-mailed to a pending user.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
struct InvitationLink {
    /// `<frontend_url>/set_password/?email=…&reset_token=…&referrer=invitation-link`
    #[schema(format = "uri")]
    user_invitation_link: String,
}

/// A success without data: `{"message": "ok"}` or `{"message": "Successfully logged-out"}`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
struct Message {
    message: String,
}

/// Every error: a human-readable reason, never a secret or an echoed value.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
struct Error {
    message: String,
}

/// The public verification keys of the gateway's tokens (RFC 7517).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
struct Jwks {
    /// One JWK per key that may have signed a live token.
    #[schema(value_type = Vec<Object>)]
    keys: Vec<serde_json::Value>,
}

// ---------------------------------------------------------------------------------------
// The operations. The bodies are empty: these functions exist for their attributes.
// Statuses beyond the listed ones (503 store unavailable or busy hashing, 500) are the
// `default` response of every operation.

const DEFAULT: &str = "Service unavailable (store down, or too many password hashes queued; \
    `Retry-After` says when to retry) or an internal error";

/// Declares the responses several operations share, each a type that `responses(...)` lists by
/// name: `Name(Body): status, description` (optionally with `headers(...)`).
macro_rules! shared_responses {
    ($($name:ident($body:ty): $status:tt, $description:tt $(, headers $headers:tt)?;)*) => {$(
        #[derive(IntoResponses)]
        #[response(status = $status, description = $description $(, headers $headers)?)]
        #[allow(dead_code)]
        struct $name($body);
    )*};
}

/// The 401s: `Name: description`, each with the `WWW-Authenticate` challenge.
macro_rules! challenges {
    ($($name:ident: $description:tt;)*) => {
        shared_responses! {$(
            $name(Error): 401, $description, headers(
                ("WWW-Authenticate" = String, description = "`Bearer` (RFC 9110 §11.6.1)"),
            );
        )*}
    };
}

shared_responses! {
    LoggedIn(TokenBody): 200, "Logged in", headers(
        ("Set-Cookie" = String, description = "The session cookie with the same token"),
    );
    MalformedBody(Error): 400, "Malformed body";
    NotAdmin(Error): 403, "Insufficient permissions (not an admin)";
    TooLarge(Error): 413, "Body larger than `limits.api_max_body`";
    Unavailable(Error): "default", DEFAULT;
}

challenges! {
    BadCredentials: "Invalid credentials have been provided";
    Unauthenticated: "Missing, invalid or expired access token";
    RefreshRefused: "Too old for refresh, forged, revoked or already refreshed";
}

/// Login options
#[utoipa::path(
    get, path = "/auth_options", tag = "discovery",
    responses(
        (status = 200, description = "The login options", body = AuthOptions),
        Unavailable,
    )
)]
#[allow(dead_code)]
fn auth_options() {}

/// Log in with email and password
///
/// The token is also set as the session cookie. Every refusal (unknown email, wrong
/// password, disabled, deleted or not-yet-activated user) is the same 401, at the same speed.
#[utoipa::path(
    post, path = "/users/login", tag = "session",
    request_body = LoginBody,
    responses(
        LoggedIn,
        MalformedBody,
        BadCredentials,
        TooLarge,
        (status = 429, description = "Too many failed attempts for this account or client", body = Error, headers(
            ("Retry-After" = u64, description = "Seconds until the next attempt is allowed"),
        )),
        Unavailable,
    )
)]
#[allow(dead_code)]
fn login() {}

/// Refresh a token
///
/// Accepts a token that is valid or expired by at most `auth.refresh_window`; answers a new
/// token of the same session (also set as the cookie). A token refreshes once: a second
/// refresh ends the session.
#[utoipa::path(
    patch, path = "/users/login", tag = "session",
    request_body = TokenBody,
    responses(
        (status = 200, description = "A new token", body = TokenBody, headers(
            ("Set-Cookie" = String, description = "The session cookie with the new token"),
        )),
        MalformedBody,
        RefreshRefused,
        TooLarge,
        Unavailable,
    )
)]
#[allow(dead_code)]
fn refresh() {}

/// Log out
///
/// Ends the session of every token presented: the header or cookie one and the optional
/// body's. Idempotent: an unknown or expired token gets the same answer.
#[utoipa::path(
    delete, path = "/users/login", tag = "session",
    request_body(content = Option<LogoutBody>, description = "Optional. Any other body, or one past `limits.api_max_body`, is ignored: the logout still happens"),
    responses(
        (status = 200, description = "`{\"message\": \"Successfully logged-out\"}`", body = Message, headers(
            ("Set-Cookie" = String, description = "Deletes the session cookie"),
        )),
        Unavailable,
    ),
    security((), ("access_token" = []), ("bearer" = []), ("cookie" = []))
)]
#[allow(dead_code)]
fn logout() {}

/// Log in with an Okta authorization code
#[utoipa::path(
    post, path = "/users/okta_login", tag = "session",
    request_body = OktaLoginBody,
    responses(
        LoggedIn,
        MalformedBody,
        BadCredentials,
        (status = 404, description = "Okta login is not enabled", body = Error),
        TooLarge,
        Unavailable,
    )
)]
#[allow(dead_code)]
fn okta_login() {}

/// Request a password-reset e-mail
///
/// The same answer for every address, known or not; the e-mail goes only to an active user.
#[utoipa::path(
    post, path = "/users/password", tag = "password",
    request_body = ForgotPasswordBody,
    responses(
        (status = 200, description = "`{\"message\": \"ok\"}`", body = Message),
        MalformedBody,
        TooLarge,
        (status = 429, description = "Too many requests for this account or client", body = Error, headers(
            ("Retry-After" = u64, description = "Seconds until the next request is allowed"),
        )),
        Unavailable,
    )
)]
#[allow(dead_code)]
fn forgot_password() {}

/// Set a password with an invitation or reset token
///
/// An invitation token activates the pending user; a reset token ends every session of the
/// user. The token is spent either way.
#[utoipa::path(
    patch, path = "/users/password", tag = "password",
    request_body = ResetPasswordBody,
    responses(
        (status = 200, description = "`{\"message\": \"ok\"}`", body = Message),
        (status = 400, description = "Malformed body; invalid or expired token (wrong, used, expired, or not this email's); password too weak (the message says the rule)", body = Error),
        TooLarge,
        Unavailable,
    )
)]
#[allow(dead_code)]
fn reset_password() {}

/// The public verification keys
#[utoipa::path(
    get, path = "/.well-known/jwks.json", tag = "discovery",
    responses((status = 200, description = "The JWK set", body = Jwks))
)]
#[allow(dead_code)]
fn jwks() {}

/// This document
#[utoipa::path(
    get, path = "/openapi.json", tag = "discovery",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", body = Object))
)]
#[allow(dead_code)]
fn openapi_json() {}
