//! The auth API's one translator to HTTP: every failure — the handlers', the extractors'
//! (body, path) and the router's own (405; 404 on the admin listener) — becomes
//! `{"message": …}` with the contract's status, as `application/json`. Details go to the log,
//! never to the client, and no message repeats a value the client sent.

use std::borrow::Cow;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::auth::AuthError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("expected application/json")]
    UnsupportedMediaType,
    /// No route has this path (on a listener all of whose paths are the gateway's own).
    #[error("no such route")]
    NotFound,
    /// The path has routes, none for this method; axum adds the `Allow` header.
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error(transparent)]
    Auth(#[from] AuthError),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message, retry_after): (StatusCode, Cow<'_, str>, Option<u64>) = match &self {
            ApiError::BadRequest(msg) => (StatusCode::BAD_REQUEST, msg.into(), None),
            ApiError::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "Request body is too large".into(),
                None,
            ),
            // The contract's general rules: a wrong content type is a 400 like any bad input.
            ApiError::UnsupportedMediaType => (
                StatusCode::BAD_REQUEST,
                "Content-Type must be application/json".into(),
                None,
            ),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "Not found".into(), None),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "Method not allowed".into(),
                None,
            ),
            ApiError::Auth(e) => match e {
                AuthError::InvalidCredentials => (
                    StatusCode::UNAUTHORIZED,
                    "Invalid credentials have been provided".into(),
                    None,
                ),
                AuthError::Throttled { retry_after_secs } => (
                    StatusCode::TOO_MANY_REQUESTS,
                    "Too many attempts; try again later".into(),
                    Some(*retry_after_secs),
                ),
                AuthError::Overloaded => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Server is busy; try again".into(),
                    Some(1),
                ),
                AuthError::MissingToken => (
                    StatusCode::UNAUTHORIZED,
                    "Missing access token".into(),
                    None,
                ),
                AuthError::InvalidToken => (
                    StatusCode::UNAUTHORIZED,
                    "Invalid or expired access token".into(),
                    None,
                ),
                AuthError::TokenTooOld => (
                    StatusCode::UNAUTHORIZED,
                    "Token is too old for refresh".into(),
                    None,
                ),
                AuthError::TokenReused => (
                    StatusCode::UNAUTHORIZED,
                    "Token has already been refreshed; the session has ended".into(),
                    None,
                ),
                AuthError::SessionTooOld => (
                    StatusCode::UNAUTHORIZED,
                    "Session has reached its maximum age; log in again".into(),
                    None,
                ),
                AuthError::Forbidden => (
                    StatusCode::FORBIDDEN,
                    "Insufficient permissions".into(),
                    None,
                ),
                // The rule that failed, never the address (`crate::email::InvalidEmail`).
                AuthError::InvalidEmail(rule) => (
                    StatusCode::BAD_REQUEST,
                    format!("Invalid email address: {rule}").into(),
                    None,
                ),
                AuthError::UserExists => (
                    StatusCode::CONFLICT,
                    "A user with this email already exists".into(),
                    None,
                ),
                AuthError::NoPendingInvitation => (
                    StatusCode::NOT_FOUND,
                    "No pending invitation for this user".into(),
                    None,
                ),
                AuthError::NotFound => (StatusCode::NOT_FOUND, "User not found".into(), None),
                AuthError::OktaDisabled => (
                    StatusCode::NOT_FOUND,
                    "Okta login is not enabled".into(),
                    None,
                ),
                AuthError::InvalidOneTimeToken => (
                    StatusCode::BAD_REQUEST,
                    "Invalid or expired token".into(),
                    None,
                ),
                AuthError::WeakPassword(rule) => (StatusCode::BAD_REQUEST, rule.into(), None),
                AuthError::LastAdmin => (
                    StatusCode::CONFLICT,
                    "At least one active admin must remain".into(),
                    None,
                ),
                // The contract's 400 (not login's 401): the caller's token is fine.
                AuthError::WrongPassword => (
                    StatusCode::BAD_REQUEST,
                    "Invalid credentials have been provided".into(),
                    None,
                ),
                AuthError::Store(_) => {
                    tracing::error!(error = %e, "store failure in the auth API");
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Service temporarily unavailable".into(),
                        Some(1),
                    )
                }
                AuthError::Internal(_) => {
                    tracing::error!(error = %e, "internal failure in the auth API");
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "Internal error".into(),
                        None,
                    )
                }
            },
        };
        // `Json` says `application/json`, without a charset: RFC 8259 §11 defines none.
        let mut response =
            (status, Json(serde_json::json!({ "message": message }))).into_response();
        let headers = response.headers_mut();
        if let Some(secs) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        // RFC 9110 §11.6.1: a 401 carries a challenge. The API's credentials are bearer
        // tokens (RFC 6750 §3), the login's 401 included, as on the data plane.
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::BadRequest("Could not read the request body".into())
        }
    }
}

/// axum's own text would quote the parameter's value (`Invalid URL: … "\xFF"`).
impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        match rejection {
            PathRejection::MissingPathParams(_) => {
                ApiError::Auth(AuthError::Internal(rejection.body_text()))
            }
            _ => ApiError::BadRequest("Invalid path parameter".into()),
        }
    }
}

/// A JSON object body, parsed like `axum::Json` but with the contract's `{"message"}`
/// rejections: 400 for a wrong content type, bad syntax, trailing bytes, a non-object (serde
/// would read a struct from an array) or ill-typed fields; 413 past `limits.api_max_body`.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(request.headers()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let body = Bytes::from_request(request, state).await?;
        parse_body(&body).map(ApiJson)
    }
}

const NOT_JSON: &str = "Request body is not valid JSON";

/// The body as `T`, or the 400 that says what is wrong with it.
pub(super) fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        let message = match well_formed(body) {
            true => "Request body must be a JSON object",
            false => NOT_JSON,
        };
        return Err(ApiError::BadRequest(message.into()));
    }
    let mut json = serde_json::Deserializer::from_slice(body);
    let value =
        serde_path_to_error::deserialize(&mut json).map_err(|e| json_error::<T>(body, &e))?;
    // serde stops reading after the object: `{…} junk` must not pass as `{…}`.
    json.end()
        .map_err(|_| ApiError::BadRequest(NOT_JSON.into()))?;
    Ok(value)
}

/// Is `body` one JSON value, whatever its shape? (A `Value`, not `IgnoredAny`: skipping a
/// string does not check its escapes, and `"\ud800"` is not text.) Only on the error path.
fn well_formed(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body).is_ok()
}

/// A body that failed to deserialize, as the contract's 400: syntax errors say so, data
/// errors name the field and the kind of problem (`password: invalid type: integer, expected
/// a string`), never the value, and name only fields that `T` declares.
fn json_error<T: DeserializeOwned>(
    body: &[u8],
    e: &serde_path_to_error::Error<serde_json::Error>,
) -> ApiError {
    use serde_json::error::Category;
    let declared = declared_fields::<T>();
    let problem = match e.inner().classify() {
        Category::Data => describe(&e.inner().to_string(), declared),
        // Valid JSON by the grammar, beyond what serde_json represents (RFC 8259 §6 lets a
        // parser limit the range); a string field given `1e400` lands here.
        Category::Syntax if e.inner().to_string().starts_with("number out of range") => {
            "number out of range".to_owned()
        }
        // serde_json reports some shape errors as syntax (a derived enum given a number or
        // an array: "expected value"); for a body that parses, it is the field's type.
        Category::Syntax if well_formed(body) => "invalid type".to_owned(),
        _ => return ApiError::BadRequest(NOT_JSON.into()),
    };
    ApiError::BadRequest(match field_of(e.path(), declared) {
        Some(field) => format!("Invalid request body: {field}: {problem}"),
        None => format!("Invalid request body: {problem}"),
    })
}

/// The field an error is about, when it is one `T` declares. The path's keys are the client's
/// text (an ignored unknown key can hold an out-of-range number), so an undeclared one is
/// not repeated. Request bodies are flat: the first segment is the field.
fn field_of<'a>(path: &serde_path_to_error::Path, declared: &[&'a str]) -> Option<&'a str> {
    match path.iter().next()? {
        serde_path_to_error::Segment::Map { key } => declared
            .iter()
            .find(|field| **field == key.as_str())
            .copied(),
        _ => None,
    }
}

/// The kinds serde names in "invalid type/value: <kind> `<value>`" (`serde::de::Unexpected`,
/// with serde_json's `null`); the longest first where one starts another.
const UNEXPECTED_KINDS: &[&str] = &[
    "boolean",
    "integer",
    "floating point",
    "character",
    "string",
    "byte array",
    "unit value",
    "null",
    "Option value",
    "newtype struct",
    "sequence",
    "map",
    "enum",
    "unit variant",
    "newtype variant",
    "tuple variant",
    "struct variant",
];

/// serde's data-error message rebuilt from what is ours — the expected type, the names of
/// `declared` fields — and the kind of what came, never the client's text:
///
/// - `invalid type: integer `5`, expected a string` → `invalid type: integer, expected a string`
///   (`invalid value: …` alike; an unknown kind becomes `value`);
/// - `invalid length 3, expected …` → `invalid length, expected …`;
/// - `unknown variant `<script>`, expected `admin` or `user`` → `unknown variant, expected
///   `admin` or `user`` — the variant is the client's text;
/// - `unknown field `x`, expected …` → `unknown field, expected …` — a key the client wrote
///   is the client's text too (bodies ignore unknown fields, so this only guards the future);
/// - `missing field `email``, `duplicate field `email`` kept when `email` is declared;
/// - anything else → `invalid value`.
///
/// serde_json's ` at line L column C` is dropped: the field says where.
fn describe(message: &str, declared: &[&str]) -> String {
    let message = without_position(message);
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix) {
            let kind = UNEXPECTED_KINDS
                .iter()
                .find(|kind| {
                    rest.strip_prefix(**kind)
                        .is_some_and(|after| after.starts_with([' ', ',']))
                })
                .copied()
                .unwrap_or("value");
            return format!("{prefix}{kind}{}", expectation(rest));
        }
    }
    if let Some(rest) = message.strip_prefix("invalid length ") {
        return format!("invalid length{}", expectation(rest));
    }
    for (prefix, none) in [
        ("unknown variant", ", there are no variants"),
        ("unknown field", ", there are no fields"),
    ] {
        if let Some(rest) = message.strip_prefix(prefix) {
            let tail = match rest.ends_with(none) {
                true => none.to_owned(),
                false => expectation(rest),
            };
            return format!("{prefix}{tail}");
        }
    }
    for prefix in ["missing field", "duplicate field"] {
        if let Some(rest) = message.strip_prefix(prefix) {
            let field = rest.strip_prefix(" `").and_then(|r| r.strip_suffix('`'));
            return match field {
                Some(field) if declared.contains(&field) => format!("{prefix} `{field}`"),
                _ => prefix.to_owned(),
            };
        }
    }
    "invalid value".to_owned()
}

/// The `, expected …` that ends a serde message: the last one, since it describes our type,
/// while the client's text before it may contain the same words.
fn expectation(rest: &str) -> String {
    rest.rfind(", expected ")
        .map_or_else(String::new, |at| rest[at..].to_owned())
}

/// Without serde_json's ` at line L column C` suffix.
fn without_position(message: &str) -> &str {
    let Some(at) = message.rfind(" at line ") else {
        return message;
    };
    let position = &message[at + " at line ".len()..];
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match position.split_once(" column ") {
        Some((line, column)) if numeric(line) && numeric(column) => &message[..at],
        _ => message,
    }
}

/// The field names `T` declares: serde's derive hands them to `deserialize_struct`, which a
/// deserializer that refuses everything can read without any input.
fn declared_fields<T: DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{Error, Visitor, value};

    struct Fields<'a>(&'a mut &'static [&'static str]);

    impl<'de> serde::Deserializer<'de> for Fields<'_> {
        type Error = value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, value::Error> {
            Err(value::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, value::Error> {
            *self.0 = fields;
            Err(value::Error::custom("fields read"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Fields(&mut fields));
    fields
}

/// `application/json`, or any `application/*+json`, as axum's `Json` accepts.
fn is_json(headers: &axum::http::HeaderMap) -> bool {
    let Some(content_type) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = content_type.split(';').next().unwrap_or("").trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json")
            || subtype.len() > 5 && subtype[subtype.len() - 5..].eq_ignore_ascii_case("+json"))
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    const FIELDS: &[&str] = &["email", "password", "role"];

    /// Every message form of `serde::de::Error` (and serde_json's variant of two of them),
    /// with a value that must not come back.
    #[test]
    fn scrubbing_keeps_the_kind_and_drops_the_value() {
        let cases = [
            (
                "invalid type: integer `123`, expected a string at line 1 column 9",
                "invalid type: integer, expected a string",
            ),
            (
                r#"invalid type: string "s3cret, expected x", expected u32 at line 1 column 2"#,
                "invalid type: string, expected u32",
            ),
            (
                "invalid type: floating point `1.5`, expected a string",
                "invalid type: floating point, expected a string",
            ),
            (
                "invalid type: boolean `true`, expected a string",
                "invalid type: boolean, expected a string",
            ),
            (
                "invalid type: null, expected a string",
                "invalid type: null, expected a string",
            ),
            (
                "invalid type: map, expected a string",
                "invalid type: map, expected a string",
            ),
            (
                "invalid type: character `<`, expected a string",
                "invalid type: character, expected a string",
            ),
            (
                "invalid type: <script>alert(1)</script>, expected a string",
                "invalid type: value, expected a string",
            ),
            (
                r#"invalid value: string "<script>", expected `admin` or `user`"#,
                "invalid value: string, expected `admin` or `user`",
            ),
            (
                "invalid value: integer `-7`, expected a positive integer",
                "invalid value: integer, expected a positive integer",
            ),
            (
                "invalid length 31337, expected a tuple of size 2",
                "invalid length, expected a tuple of size 2",
            ),
            (
                "unknown variant `<script>`, expected `admin` or `user` at line 1 column 44",
                "unknown variant, expected `admin` or `user`",
            ),
            (
                "unknown variant `a, expected b`, expected one of `x`, `y`, `z`",
                "unknown variant, expected one of `x`, `y`, `z`",
            ),
            (
                "unknown variant `<script>`, there are no variants",
                "unknown variant, there are no variants",
            ),
            (
                "unknown field `<img src=x>`, expected `email` or `password`",
                "unknown field, expected `email` or `password`",
            ),
            (
                "unknown field `<img src=x>`, there are no fields",
                "unknown field, there are no fields",
            ),
            ("missing field `email`", "missing field `email`"),
            ("missing field `<b>`", "missing field"),
            (
                "duplicate field `password` at line 1 column 60",
                "duplicate field `password`",
            ),
            ("duplicate field `<b>`", "duplicate field"),
            ("something serde never says: <script>", "invalid value"),
        ];
        for (message, scrubbed) in cases {
            assert_eq!(describe(message, FIELDS), scrubbed, "{message}");
        }
    }

    #[test]
    fn positions_are_stripped_only_when_they_are_positions() {
        assert_eq!(without_position("x at line 1 column 9"), "x");
        assert_eq!(without_position("x at line one"), "x at line one");
        assert_eq!(without_position("x"), "x");
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Body {
        email: String,
        password: String,
        kind: Option<Kind>,
    }

    /// A derived enum: serde_json reports some of its wrong types as syntax errors.
    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "lowercase")]
    enum Kind {
        A,
    }

    fn message(body: &str) -> String {
        match parse_body::<Body>(body.as_bytes()) {
            Err(ApiError::BadRequest(message)) => message,
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn declared_fields_are_read_from_the_type() {
        assert_eq!(declared_fields::<Body>(), ["email", "password", "kind"]);
        assert!(declared_fields::<String>().is_empty());
    }

    #[test]
    fn bodies_that_are_not_one_json_object() {
        for body in [
            "",
            "  ",
            "{",
            r#"{"email": tru}"#,
            "\u{feff}{}",
            r#"{"email":"\ud800"}"#,
        ] {
            assert_eq!(message(body), NOT_JSON, "{body:?}");
        }
        for body in ["[]", "\"x\"", "1", "null"] {
            assert_eq!(
                message(body),
                "Request body must be a JSON object",
                "{body:?}"
            );
        }
        // Trailing bytes after a complete object: refused, not ignored.
        for body in [
            r#"{"email":"a@b.co","password":"p"} x"#,
            r#"{"email":"a@b.co","password":"p"}{}"#,
        ] {
            assert_eq!(message(body), NOT_JSON, "{body:?}");
        }
        let ok = parse_body::<Body>(br#" {"email":"a@b.co","password":"p"} "#).unwrap();
        assert_eq!(ok.email, "a@b.co");
    }

    #[test]
    fn wrong_types_name_the_field_never_the_value() {
        let cases = [
            (
                r#"{"email":"a@b.co","password":123456789}"#,
                "Invalid request body: password: invalid type: integer, expected a string",
            ),
            (
                r#"{"email":null,"password":"p"}"#,
                "Invalid request body: email: invalid type: null, expected a string",
            ),
            (
                r#"{"email":1e400,"password":"p"}"#,
                "Invalid request body: email: number out of range",
            ),
            // A derived enum given a number: serde_json says "expected value" (syntax).
            (
                r#"{"email":"a@b.co","password":"p","kind":7}"#,
                "Invalid request body: kind: invalid type",
            ),
            (
                r#"{"email":"a@b.co","password":"p","kind":"<script>"}"#,
                "Invalid request body: kind: unknown variant, expected `a`",
            ),
            (
                r#"{"email":"a@b.co"}"#,
                "Invalid request body: missing field `password`",
            ),
            (
                r#"{"email":"a@b.co","email":"c@d.co","password":"p"}"#,
                "Invalid request body: duplicate field `email`",
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(message(body), expected, "{body}");
        }
        // Unknown keys are ignored, whatever their values.
        parse_body::<Body>(br#"{"email":"a","password":"p","<x>":1e400,"y":{"z":[]}}"#).unwrap();
    }

    /// In a body whose keys are the client's (a map), the key an error is about is not
    /// repeated: only fields the type declares are named.
    #[test]
    fn keys_the_client_chose_are_not_repeated() {
        let body = br#"{"<script>alert(1)</script>":"x"}"#;
        match parse_body::<std::collections::BTreeMap<String, u32>>(body) {
            Err(ApiError::BadRequest(message)) => assert_eq!(
                message,
                "Invalid request body: invalid type: string, expected u32"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn every_error_is_json_and_every_401_has_a_bearer_challenge() {
        let errors = [
            ApiError::BadRequest("x".into()),
            ApiError::PayloadTooLarge,
            ApiError::UnsupportedMediaType,
            ApiError::NotFound,
            ApiError::MethodNotAllowed,
            AuthError::InvalidCredentials.into(),
            AuthError::Throttled {
                retry_after_secs: 3,
            }
            .into(),
            AuthError::Overloaded.into(),
            AuthError::MissingToken.into(),
            AuthError::InvalidToken.into(),
            AuthError::TokenTooOld.into(),
            AuthError::TokenReused.into(),
            AuthError::SessionTooOld.into(),
            AuthError::Forbidden.into(),
            AuthError::InvalidEmail(crate::email::InvalidEmail::Domain).into(),
            AuthError::UserExists.into(),
            AuthError::NoPendingInvitation.into(),
            AuthError::NotFound.into(),
            AuthError::OktaDisabled.into(),
            AuthError::InvalidOneTimeToken.into(),
            AuthError::WeakPassword("at least 12 characters".into()).into(),
            AuthError::Internal("secret detail".into()).into(),
        ];
        let mut unauthorized = 0;
        for error in errors {
            let what = format!("{error:?}");
            let response = error.into_response();
            assert_eq!(
                response.headers()[header::CONTENT_TYPE],
                "application/json",
                "{what}"
            );
            let challenge = response.headers().get(header::WWW_AUTHENTICATE);
            if response.status() == StatusCode::UNAUTHORIZED {
                unauthorized += 1;
                assert_eq!(
                    challenge.map(|v| v.as_bytes()),
                    Some(&b"Bearer"[..]),
                    "{what}"
                );
            } else {
                assert!(challenge.is_none(), "{what}");
            }
            let body = axum::body::to_bytes(response.into_body(), 1024)
                .await
                .unwrap();
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let message = body["message"].as_str().unwrap();
            assert!(!message.is_empty() && !message.contains("secret"), "{what}");
        }
        assert_eq!(unauthorized, 6);
    }

    #[test]
    fn json_content_types() {
        let with = |ct: &'static str| {
            let mut h = axum::http::HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            is_json(&h)
        };
        assert!(with("application/json"));
        assert!(with("application/json; charset=utf-8"));
        assert!(with("Application/JSON"));
        assert!(with("application/problem+json"));
        assert!(!with("text/plain"));
        assert!(!with("application/jsonx"));
        assert!(!is_json(&axum::http::HeaderMap::new()));
    }
}
