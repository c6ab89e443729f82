//! The OpenAPI document (`src/api/openapi.rs`) kept honest against a real gateway:
//! - `docs/openapi.json` is the generated document (this is CI's "is it current" check);
//! - the document is OpenAPI 3.1 whose `$ref`s, security names and path parameters resolve;
//! - the (method, path) pairs it documents are exactly those the router serves;
//! - every status it documents for an operation is produced by a real request, every status
//!   those requests produce is documented, and each body matches the documented schema.
//!
//! Regenerate the committed file with `MEIRO_GATE_BLESS=1 cargo test --test openapi`.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::oidc::FakeIdp;
use common::{FakeUpstream, Gateway};
use meiro_gate::store::Role;
use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, HeaderMap};
use serde_json::{Value, json};

const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
const ROUTER_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/api/mod.rs");
const PATHS_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/auth/paths.rs");

/// The methods an OpenAPI path item can hold, as its lower-case keys.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn document() -> Value {
    serde_json::from_str(&meiro_gate::api::openapi::document_json()).expect("the document is JSON")
}

/// (METHOD, path template) → the documented status codes, `default` left out.
fn documented(doc: &Value) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            if let Some(op) = item.get(method) {
                let statuses = op["responses"]
                    .as_object()
                    .expect("responses")
                    .keys()
                    .filter(|s| *s != "default")
                    .cloned()
                    .collect();
                out.insert((method.to_uppercase(), path.clone()), statuses);
            }
        }
    }
    out
}

#[test]
fn the_committed_document_is_the_generated_one() {
    let generated = meiro_gate::api::openapi::document_json();
    if std::env::var_os("MEIRO_GATE_BLESS").is_some() {
        std::fs::write(COMMITTED, &generated).expect("writing docs/openapi.json");
    }
    let committed = std::fs::read_to_string(COMMITTED).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi.json is not the document the code generates (src/api/openapi.rs); \
         regenerate it with `MEIRO_GATE_BLESS=1 cargo test --test openapi` and commit it"
    );
}

#[test]
fn the_document_is_openapi_3_1_and_every_reference_resolves() {
    let doc = document();
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1.")),
        "openapi version {}",
        doc["openapi"]
    );
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());

    // Every `$ref` points at something in this document.
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(
        refs.len() > 10,
        "the bodies are referenced schemas: {refs:?}"
    );
    for r in &refs {
        assert!(resolve(&doc, r).is_some(), "unresolved $ref {r}");
    }

    let schemes = doc["components"]["securitySchemes"]
        .as_object()
        .expect("security schemes");
    assert_eq!(
        schemes.keys().collect::<Vec<_>>(),
        ["access_token", "bearer", "cookie"]
    );
    assert_eq!(schemes["access_token"]["in"], "header");
    assert_eq!(schemes["access_token"]["name"], "X-Access-Token");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["cookie"]["in"], "cookie");

    let mut operation_ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let templated: BTreeSet<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        for method in METHODS {
            let Some(op) = item.get(method) else { continue };
            let id = op["operationId"].as_str().expect("an operationId");
            assert!(operation_ids.insert(id.to_owned()), "duplicate {id}");
            // Each `{name}` in the path is a required path parameter, and only those.
            let params: BTreeSet<&str> = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "path")
                .inspect(|p| assert_eq!(p["required"], true, "{method} {path}"))
                .map(|p| p["name"].as_str().unwrap())
                .collect();
            assert_eq!(params, templated, "{method} {path}");
            for requirement in op["security"].as_array().into_iter().flatten() {
                for name in requirement.as_object().unwrap().keys() {
                    assert!(schemes.contains_key(name), "{method} {path}: {name}");
                }
            }
            let responses = op["responses"].as_object().unwrap();
            assert!(!responses.is_empty(), "{method} {path}");
            for (status, response) in responses {
                assert!(
                    status == "default"
                        || status.parse::<u16>().is_ok_and(|s| (100..600).contains(&s)),
                    "{method} {path}: status {status}"
                );
                assert!(
                    response["description"].is_string(),
                    "{method} {path} {status}"
                );
            }
        }
    }
}

fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                out.push(r.clone());
            }
            map.values().for_each(|v| collect_refs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

/// A local `$ref` (`#/components/schemas/User`) as a JSON pointer into the document.
fn resolve<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
    doc.pointer(reference.strip_prefix('#')?)
}

// ---------------------------------------------------------------------------------------
// Routes: documented = served

/// The paths `api::router` declares, read from its `.route(…, …)` calls, whose paths are
/// literals or `paths::NAME` constants of `auth::paths`: axum cannot list a router's routes,
/// and this catches a route added without documenting it.
fn router_paths() -> BTreeSet<String> {
    let constants = std::fs::read_to_string(PATHS_SOURCE).unwrap();
    let constant = |name: &str| -> String {
        let declared = format!("pub const {name}: &str = \"");
        let at = constants
            .find(&declared)
            .unwrap_or_else(|| panic!("{name} is not declared in {PATHS_SOURCE}"));
        let rest = &constants[at + declared.len()..];
        rest[..rest.find('"').unwrap()].to_owned()
    };
    let source = std::fs::read_to_string(ROUTER_SOURCE).unwrap();
    source
        .split(".route(")
        .skip(1)
        // Only calls with a literal or a `paths::` path declare a route (`metrics.route(name)`
        // does not).
        .filter_map(|rest| {
            let rest = rest.trim_start();
            if let Some(literal) = rest.strip_prefix('"') {
                Some(literal[..literal.find('"').unwrap()].to_owned())
            } else {
                let name = rest.strip_prefix("paths::")?;
                let end = name
                    .find(|c: char| !(c.is_ascii_uppercase() || c == '_'))
                    .unwrap_or(name.len());
                Some(constant(&name[..end]))
            }
        })
        .collect()
}

/// A gateway whose data plane forwards everything (`/` route) to `FakeUpstream`, which marks
/// its answers with `x-upstream: fake`: a request the router does not serve shows it.
async fn gateway(upstream: &FakeUpstream, extra: &str) -> Gateway {
    let layers = [
        "[auth.login_throttle]\nper_account = 1\n[auth.reset_throttle]\nper_account = 1\n",
        extra,
    ];
    Gateway::start_with_layers(&upstream.url(), &layers).await
}

fn concrete(path: &str) -> String {
    path.replace("{user_id}", "0b8e7f3c-4d5a-4e6b-9c7d-8e9f0a1b2c3d")
}

#[tokio::test]
async fn the_documented_routes_are_exactly_the_served_ones() {
    let doc = document();
    let documented: BTreeSet<(String, String)> = documented(&doc).into_keys().collect();
    let documented_paths: BTreeSet<String> = documented.iter().map(|(_, p)| p.clone()).collect();
    assert_eq!(
        router_paths(),
        documented_paths,
        "the router's paths (src/api/mod.rs) and the documented ones (src/api/openapi.rs) differ"
    );

    let upstream = FakeUpstream::start().await;
    let gw = gateway(&upstream, "").await;
    gw.add_user("admin@example.com", Role::Admin).await;
    let mut token = gw.login("admin@example.com").await;

    // Every method on every documented path: served (by the router, not passed to the data
    // plane, not 405) exactly when documented. A GET route also answers HEAD (axum), so HEAD
    // counts as documented with GET.
    let mut served = BTreeSet::new();
    for path in &documented_paths {
        for method in METHODS {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let response = gw
                .http
                .request(method.clone(), gw.url(&concrete(path)))
                .header("x-access-token", &token)
                .send()
                .await
                .unwrap();
            assert!(
                !response.headers().contains_key("x-upstream"),
                "{method} {path} reached the data plane instead of the auth API"
            );
            if response.status() == 405 {
                assert!(response.headers().contains_key("allow"), "{method} {path}");
                assert_eq!(
                    response.headers()[CONTENT_TYPE],
                    "application/json",
                    "{method} {path}"
                );
                if method != Method::HEAD {
                    assert_eq!(
                        common::message(response).await,
                        "Method not allowed",
                        "{method} {path}"
                    );
                }
            } else if method == Method::HEAD {
                assert!(
                    documented.contains(&("GET".to_owned(), path.clone())),
                    "HEAD {path} is served without a documented GET"
                );
            } else {
                served.insert((method.to_string(), path.clone()));
            }
            if method == Method::DELETE {
                // A logout may have ended the session: later probes need a live token, or a
                // request that fell through to the data plane would not reach the upstream.
                token = gw.login("admin@example.com").await;
            }
        }
    }
    assert_eq!(served, documented, "served (left) vs documented (right)");
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Statuses: documented = produced

/// One real request and the status it must get.
struct Case {
    method: Method,
    /// The documented path template.
    path: &'static str,
    /// The request's path, when it differs from the template.
    url_path: Option<String>,
    token: Option<String>,
    body: Body,
    expect: u16,
    /// Sent to the gateway without Okta (the others go to the one with Okta).
    without_okta: bool,
}

enum Body {
    None,
    Json(Value),
    Raw(&'static str),
    Large,
}

fn case(method: Method, path: &'static str, body: Body, expect: u16) -> Case {
    Case {
        method,
        path,
        url_path: None,
        token: None,
        body,
        expect,
        without_okta: false,
    }
}

impl Case {
    fn token(mut self, token: &str) -> Case {
        self.token = Some(token.to_owned());
        self
    }

    fn at(mut self, url_path: String) -> Case {
        self.url_path = Some(url_path);
        self
    }

    fn without_okta(mut self) -> Case {
        self.without_okta = true;
        self
    }
}

/// A body past `limits.api_max_body` (64 KiB by default) that is otherwise valid JSON.
fn large_body() -> String {
    format!(r#"{{"email": "{}@example.com"}}"#, "a".repeat(100 * 1024))
}

#[tokio::test]
async fn every_documented_status_is_produced_and_every_produced_status_is_documented() {
    let doc = document();
    let documented = documented(&doc);

    let upstream = FakeUpstream::start().await;
    let idp = FakeIdp::start().await;
    let okta = gateway(&upstream, &idp.okta_toml("")).await;
    let plain = gateway(&upstream, "").await;
    let gw = &okta;

    let admin_path = format!(
        "/users/{}",
        gw.add_user("admin@example.com", Role::Admin).await.id
    );
    let user_path = format!(
        "/users/{}",
        gw.add_user("user@example.com", Role::User).await.id
    );
    let admin = gw.login("admin@example.com").await;
    let user = gw.login("user@example.com").await;
    // The Users API's own: a user to modify, one to delete, one who changes their password
    // and one who guesses it wrong (the account limit is 1).
    let target_path = format!(
        "/users/{}",
        gw.add_user("target@example.com", Role::User).await.id
    );
    let victim_path = format!(
        "/users/{}",
        gw.add_user("victim@example.com", Role::User).await.id
    );
    let changer_path = format!(
        "/users/{}/change_password",
        gw.add_user("changer@example.com", Role::User).await.id
    );
    let guesser_path = format!(
        "/users/{}/change_password",
        gw.add_user("guesser@example.com", Role::User).await.id
    );
    let changer = gw.login("changer@example.com").await;
    let guesser = gw.login("guesser@example.com").await;
    let own_password = format!("{admin_path}/change_password");
    let to_refresh = gw.login("user@example.com").await;
    let to_end = gw.login("user@example.com").await;
    let to_end_too = gw.login("user@example.com").await;

    // Two pending users: one whose link is read and renewed, one who sets a password.
    let invite = |email: &'static str| {
        gw.http
            .post(gw.url("/users/invite"))
            .header("x-access-token", &admin)
            .json(&json!({ "email": email }))
            .send()
    };
    let pending: Value = invite("pending@example.com")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pending_id = pending["id"].as_str().unwrap().to_owned();
    let invited: Value = invite("invited@example.com")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let link = common::get_json(
        gw.http
            .get(gw.url(&format!(
                "/users/{}/invitation_link",
                invited["id"].as_str().unwrap()
            )))
            .header("x-access-token", &admin),
    )
    .await;
    let link = url::Url::parse(link["user_invitation_link"].as_str().unwrap()).unwrap();
    let invitation_token = link
        .query_pairs()
        .find(|(k, _)| k == "reset_token")
        .unwrap()
        .1
        .into_owned();
    let link_path = format!("/users/{pending_id}/invitation_link");
    let unknown_path = concrete("/users/{user_id}/invitation_link");

    use Method as M;
    let cases = vec![
        case(M::GET, "/auth_options", Body::None, 200),
        case(M::GET, "/.well-known/jwks.json", Body::None, 200),
        case(M::GET, "/openapi.json", Body::None, 200),
        // Login
        case(
            M::POST,
            "/users/login",
            Body::Json(json!({"email": "user@example.com", "password": common::PASSWORD})),
            200,
        ),
        case(M::POST, "/users/login", Body::Raw("{"), 400),
        case(
            M::POST,
            "/users/login",
            Body::Json(json!({"email": "nobody@example.com", "password": "x"})),
            401,
        ),
        // `login_throttle.per_account = 1`: the second failure for the account is refused.
        case(
            M::POST,
            "/users/login",
            Body::Json(json!({"email": "nobody@example.com", "password": "x"})),
            429,
        ),
        case(M::POST, "/users/login", Body::Large, 413),
        // Refresh
        case(
            M::PATCH,
            "/users/login",
            Body::Json(json!({"token": to_refresh})),
            200,
        ),
        case(
            M::PATCH,
            "/users/login",
            Body::Json(json!({"token": 5})),
            400,
        ),
        case(
            M::PATCH,
            "/users/login",
            Body::Json(json!({"token": "not-a-token"})),
            401,
        ),
        case(M::PATCH, "/users/login", Body::Large, 413),
        // Logout
        case(M::DELETE, "/users/login", Body::None, 200).token(&to_end),
        // An oversized body is ignored like any other that is not `{"token"}`: still a logout.
        case(M::DELETE, "/users/login", Body::Large, 200).token(&to_end_too),
        case(
            M::DELETE,
            "/users/login",
            Body::Json(json!({"token": "unknown"})),
            200,
        ),
        // Okta
        case(
            M::POST,
            "/users/okta_login",
            Body::Json(json!({"code": idp.login_code("user@example.com")})),
            200,
        ),
        case(M::POST, "/users/okta_login", Body::Json(json!({})), 400),
        case(
            M::POST,
            "/users/okta_login",
            Body::Json(json!({"code": "unknown-code"})),
            401,
        ),
        case(
            M::POST,
            "/users/okta_login",
            Body::Json(json!({"code": "any"})),
            404,
        )
        .without_okta(),
        case(M::POST, "/users/okta_login", Body::Large, 413),
        // Invite
        case(
            M::POST,
            "/users/invite",
            Body::Json(json!({"email": "new@example.com", "role": "admin"})),
            200,
        )
        .token(&admin),
        case(
            M::POST,
            "/users/invite",
            Body::Json(json!({"email": "not an email"})),
            400,
        )
        .token(&admin),
        case(
            M::POST,
            "/users/invite",
            Body::Json(json!({"email": "x@example.com"})),
            401,
        ),
        case(
            M::POST,
            "/users/invite",
            Body::Json(json!({"email": "x@example.com"})),
            403,
        )
        .token(&user),
        case(
            M::POST,
            "/users/invite",
            Body::Json(json!({"email": "user@example.com"})),
            409,
        )
        .token(&admin),
        case(M::POST, "/users/invite", Body::Large, 413).token(&admin),
        // Re-invite
        case(
            M::PATCH,
            "/users/invite",
            Body::Json(json!({"email": "pending@example.com"})),
            200,
        )
        .token(&admin),
        case(
            M::PATCH,
            "/users/invite",
            Body::Json(json!({"mail": "pending@example.com"})),
            400,
        )
        .token(&admin),
        case(
            M::PATCH,
            "/users/invite",
            Body::Json(json!({"email": "pending@example.com"})),
            401,
        )
        .token("forged"),
        case(
            M::PATCH,
            "/users/invite",
            Body::Json(json!({"email": "pending@example.com"})),
            403,
        )
        .token(&user),
        case(
            M::PATCH,
            "/users/invite",
            Body::Json(json!({"email": "user@example.com"})),
            404,
        )
        .token(&admin),
        case(M::PATCH, "/users/invite", Body::Large, 413).token(&admin),
        // Invitation link
        case(M::GET, "/users/{user_id}/invitation_link", Body::None, 200)
            .at(link_path.clone())
            .token(&admin),
        case(M::GET, "/users/{user_id}/invitation_link", Body::None, 401).at(link_path.clone()),
        case(M::GET, "/users/{user_id}/invitation_link", Body::None, 403)
            .at(link_path)
            .token(&user),
        case(M::GET, "/users/{user_id}/invitation_link", Body::None, 404)
            .at(unknown_path)
            .token(&admin),
        // Not UTF-8 once decoded: axum's own rejection would be a text/plain 400.
        case(M::GET, "/users/{user_id}/invitation_link", Body::None, 404)
            .at("/users/%FF/invitation_link".to_owned())
            .token(&admin),
        // Reading a user: an admin anyone, a user themself only.
        case(M::GET, "/users/{user_id}", Body::None, 200)
            .at(user_path.clone())
            .token(&admin),
        case(M::GET, "/users/{user_id}", Body::None, 200)
            .at(user_path.clone())
            .token(&user),
        case(M::GET, "/users/{user_id}", Body::None, 401).at(user_path),
        case(M::GET, "/users/{user_id}", Body::None, 403)
            .at(admin_path.clone())
            .token(&user),
        case(M::GET, "/users/{user_id}", Body::None, 404)
            .at(concrete("/users/{user_id}"))
            .token(&admin),
        case(M::GET, "/users/{user_id}", Body::None, 404)
            .at("/users/not-a-uuid".to_owned())
            .token(&admin),
        // Listing users and the trash.
        case(M::GET, "/users", Body::None, 200).token(&admin),
        case(M::GET, "/users", Body::None, 400).at("/users?limit=0".to_owned()).token(&admin),
        case(M::GET, "/users", Body::None, 401),
        case(M::GET, "/users", Body::None, 403).token(&user),
        case(M::GET, "/users/trash", Body::None, 200).token(&admin),
        case(M::GET, "/users/trash", Body::None, 400)
            .at("/users/trash?order_dir=up".to_owned())
            .token(&admin),
        case(M::GET, "/users/trash", Body::None, 401),
        case(M::GET, "/users/trash", Body::None, 403).token(&user),
        // Creating, and creating or restoring.
        case(
            M::POST,
            "/users",
            Body::Json(json!({"email": "created@example.com", "password": common::PASSWORD})),
            201,
        )
        .token(&admin),
        case(M::POST, "/users", Body::Raw("{"), 400).token(&admin),
        case(M::POST, "/users", Body::None, 401),
        case(M::POST, "/users", Body::Raw("{}"), 403).token(&user),
        case(
            M::POST,
            "/users",
            Body::Json(json!({"email": "user@example.com", "password": common::PASSWORD})),
            409,
        )
        .token(&admin),
        case(M::POST, "/users", Body::Large, 413).token(&admin),
        case(
            M::POST,
            "/users/create_or_restore",
            Body::Json(json!({"email": "restored@example.com", "password": common::PASSWORD})),
            201,
        )
        .token(&admin),
        case(M::POST, "/users/create_or_restore", Body::Raw("[]"), 400).token(&admin),
        case(M::POST, "/users/create_or_restore", Body::None, 401),
        case(M::POST, "/users/create_or_restore", Body::Raw("{}"), 403).token(&user),
        case(
            M::POST,
            "/users/create_or_restore",
            Body::Json(json!({"email": "user@example.com", "password": common::PASSWORD})),
            409,
        )
        .token(&admin),
        case(M::POST, "/users/create_or_restore", Body::Large, 413).token(&admin),
        // Modifying: the only admin cannot step down (409).
        case(M::PATCH, "/users/{user_id}", Body::Json(json!({"sso_enabled": false})), 200)
            .at(target_path.clone())
            .token(&admin),
        case(M::PATCH, "/users/{user_id}", Body::Json(json!({"role": "root"})), 400)
            .at(target_path.clone())
            .token(&admin),
        case(M::PATCH, "/users/{user_id}", Body::Json(json!({})), 401).at(target_path.clone()),
        case(M::PATCH, "/users/{user_id}", Body::Json(json!({})), 403)
            .at(target_path.clone())
            .token(&user),
        case(M::PATCH, "/users/{user_id}", Body::Json(json!({})), 404)
            .at(concrete("/users/{user_id}"))
            .token(&admin),
        case(M::PATCH, "/users/{user_id}", Body::Json(json!({"email": "user@example.com"})), 409)
            .at(target_path.clone())
            .token(&admin),
        case(M::PATCH, "/users/{user_id}", Body::Large, 413)
            .at(target_path.clone())
            .token(&admin),
        // Deleting.
        case(M::DELETE, "/users/{user_id}", Body::None, 200)
            .at(victim_path.clone())
            .token(&admin),
        case(M::DELETE, "/users/{user_id}", Body::None, 401).at(target_path.clone()),
        case(M::DELETE, "/users/{user_id}", Body::None, 403)
            .at(target_path.clone())
            .token(&user),
        case(M::DELETE, "/users/{user_id}", Body::None, 404)
            .at(victim_path)
            .token(&admin),
        case(M::DELETE, "/users/{user_id}", Body::None, 409)
            .at(admin_path.clone())
            .token(&admin),
        // Changing one's own password (`login_throttle.per_account = 1`).
        case(
            M::POST,
            "/users/{user_id}/change_password",
            Body::Json(json!({"old_password": common::PASSWORD, "new_password": "a long enough passphrase"})),
            200,
        )
        .at(changer_path)
        .token(&changer),
        case(
            M::POST,
            "/users/{user_id}/change_password",
            Body::Json(json!({"old_password": "wrong", "new_password": "a long enough passphrase"})),
            400,
        )
        .at(guesser_path.clone())
        .token(&guesser),
        case(M::POST, "/users/{user_id}/change_password", Body::Raw("{}"), 401).at(own_password.clone()),
        case(M::POST, "/users/{user_id}/change_password", Body::Raw("{}"), 403)
            .at(own_password.clone())
            .token(&user),
        case(M::POST, "/users/{user_id}/change_password", Body::Large, 413)
            .at(own_password)
            .token(&admin),
        case(
            M::POST,
            "/users/{user_id}/change_password",
            Body::Json(json!({"old_password": "wrong", "new_password": "a long enough passphrase"})),
            429,
        )
        .at(guesser_path)
        .token(&guesser),
        // Forgotten password (`reset_throttle.per_account = 1`)
        case(
            M::POST,
            "/users/password",
            Body::Json(json!({"email": "user@example.com"})),
            200,
        ),
        case(
            M::POST,
            "/users/password",
            Body::Json(json!({"email": "user@example.com"})),
            429,
        ),
        case(M::POST, "/users/password", Body::Raw("[]"), 400),
        case(M::POST, "/users/password", Body::Large, 413),
        // Setting a password
        case(
            M::PATCH,
            "/users/password",
            Body::Json(
                json!({"email": "invited@example.com", "password": "a long enough passphrase", "token": invitation_token}),
            ),
            200,
        ),
        case(
            M::PATCH,
            "/users/password",
            Body::Json(
                json!({"email": "user@example.com", "password": "a long enough passphrase", "token": "wrong"}),
            ),
            400,
        ),
        case(M::PATCH, "/users/password", Body::Large, 413),
    ];

    let mut observed: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for case in cases {
        let gw = if case.without_okta { &plain } else { &okta };
        let url_path = case
            .url_path
            .clone()
            .unwrap_or_else(|| case.path.to_owned());
        let mut request = gw.http.request(case.method.clone(), gw.url(&url_path));
        if let Some(token) = &case.token {
            request = request.header("x-access-token", token);
        }
        request = match case.body {
            Body::None => request,
            Body::Json(value) => request.json(&value),
            Body::Raw(text) => request.header(CONTENT_TYPE, "application/json").body(text),
            Body::Large => request
                .header(CONTENT_TYPE, "application/json")
                .body(large_body()),
        };
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let what = format!("{} {url_path} (documented as {})", case.method, case.path);
        assert_eq!(status, case.expect, "{what}");
        let headers = response.headers().clone();
        // Exactly: RFC 8259 defines no charset parameter, and the API never sends one.
        assert_eq!(headers[CONTENT_TYPE], "application/json", "{what}");
        let body: Value = response.json().await.expect("a JSON body");
        let key = (case.method.to_string(), case.path.to_owned());
        let spec = &doc["paths"][case.path][case.method.as_str().to_lowercase()]["responses"]
            [status.to_string()];
        if spec.is_object() {
            check_response(&doc, spec, &headers, &body, &format!("{what} → {status}"));
        }
        observed.entry(key).or_default().insert(status.to_string());
    }

    let mut problems = Vec::new();
    for (op, statuses) in &documented {
        let seen = observed.get(op).cloned().unwrap_or_default();
        let undocumented: Vec<_> = seen.difference(statuses).collect();
        let unobserved: Vec<_> = statuses.difference(&seen).collect();
        if !undocumented.is_empty() {
            problems.push(format!(
                "{op:?}: produced but not documented {undocumented:?}"
            ));
        }
        if !unobserved.is_empty() {
            problems.push(format!(
                "{op:?}: documented but never produced {unobserved:?}"
            ));
        }
    }
    for op in observed.keys().filter(|op| !documented.contains_key(*op)) {
        problems.push(format!("{op:?}: requested but not documented"));
    }
    assert!(problems.is_empty(), "{problems:#?}");

    for ended in [&to_end, &to_end_too] {
        let through = okta.get_with_token("/reports", ended).await;
        assert_eq!(through.status(), 401, "the logged-out token still works");
    }

    okta.shutdown().await;
    plain.shutdown().await;
}

/// The response carries the documented headers and its body fits the documented schema.
fn check_response(doc: &Value, spec: &Value, headers: &HeaderMap, body: &Value, what: &str) {
    for name in spec["headers"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, _)| k)
    {
        assert!(
            headers.contains_key(name.as_str()),
            "{what}: no {name} header"
        );
    }
    let schema = &spec["content"]["application/json"]["schema"];
    assert!(schema.is_object(), "{what}: no JSON schema documented");
    if let Err(e) = fits(doc, schema, body) {
        panic!("{what}: body {body} does not fit the documented schema: {e}");
    }
}

/// A small JSON Schema check, enough for the document's own schemas: `$ref`, `type` (one or
/// several), `properties`, `required`, `enum`, `oneOf`/`anyOf`, `items`.
fn fits(doc: &Value, schema: &Value, value: &Value) -> Result<(), String> {
    if let Some(r) = schema["$ref"].as_str() {
        let target = resolve(doc, r).ok_or(format!("unresolved {r}"))?;
        return fits(doc, target, value);
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(alternatives) = schema[key].as_array()
            && !alternatives.iter().any(|s| fits(doc, s, value).is_ok())
        {
            return Err(format!("{value} fits none of {key} {schema}"));
        }
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        return Err(format!("{value} is not one of {allowed:?}"));
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let kind = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let typed = types.is_empty()
        || types.contains(&kind)
        || (kind == "integer" && types.contains(&"number"));
    if !typed {
        return Err(format!("{value} is {kind}, documented {types:?}"));
    }
    if let Value::Object(map) = value {
        for name in schema["required"].as_array().into_iter().flatten() {
            let name = name.as_str().unwrap();
            if !map.contains_key(name) {
                return Err(format!("required property {name} missing"));
            }
        }
        for (name, property) in schema["properties"].as_object().into_iter().flatten() {
            if let Some(v) = map.get(name) {
                fits(doc, property, v).map_err(|e| format!("{name}: {e}"))?;
            }
        }
    }
    if let (Value::Array(items), Some(item_schema)) = (value, schema.get("items")) {
        for item in items {
            fits(doc, item_schema, item)?;
        }
    }
    Ok(())
}

/// Upstream mode: the backend serves the auth API, so the gateway does not describe it;
/// `/openapi.json` is an ordinary data-plane path, forwarded by the route table like any other.
#[tokio::test]
async fn upstream_mode_leaves_openapi_json_to_the_route_table() {
    let backend = FakeUpstream::start().await;
    let gw = Gateway::start_with(
        &backend.url(),
        "[auth]\nmode = \"upstream\"\n[auth.upstream]\nupstream = \"backend\"\n\
         introspect_path = \"/introspect\"\n",
    )
    .await;
    // The `/` route is protected: no token, no document.
    let anonymous = gw.http.get(gw.url("/openapi.json")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert!(!anonymous.headers().contains_key("x-upstream"));
    // With a token the backend vouches for, the request reaches the backend.
    let response = gw.get_with_token("/openapi.json", "backend-token").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-upstream"], "fake");
    assert_eq!(backend.last().uri.path(), "/openapi.json");
    gw.shutdown().await;
}
