//! The Users API of local mode (api-contract.md, "Users"): list and page, the trash, modify,
//! delete, create, create or restore, change password — each row of the contract's table, who
//! may call it, and the rules behind it (sessions end or follow the change at once, the last
//! admin stays, every change is audited with its actor). Each test runs on SQLite and on
//! PostgreSQL (`sqlite::…`, `postgres::…`); `tests/replicas.rs` has the changes crossing
//! replicas, `src/store/suite_users.rs` the store's rules on both.

mod common;

use common::accounts::{
    INVALID_CREDENTIALS, assert_login_refused, assert_proxied, assert_rejected, login_with,
};
use common::replicas::PgSchema;
use common::{FakeUpstream, Gateway, PASSWORD, assert_json, header, status_json, status_message};
use meiro_gate::store::{AuditEvent, Role, User, UserId};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const UNKNOWN_ID: &str = "0b8e7f3c-4d5a-4e6b-9c7d-8e9f0a1b2c3d";
const NEW_PASSWORD: &str = "another long passphrase";

/// The store a test's gateway runs on.
#[derive(Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

/// Each test as `sqlite::name` and `postgres::name` (ignored when no PostgreSQL test server
/// is set, so the summary says it did not run).
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Backend::Sqlite).await
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[cfg_attr(not(postgres_tests), ignore = "set MEIRO_GATE_TEST_POSTGRES_URL to run it")]
            async fn $name() {
                super::$name(super::Backend::Postgres).await
            })*
        }
    };
}

on_both_stores!(
    an_admin_runs_the_whole_lifecycle_over_http,
    only_admins_manage_users_and_a_user_changes_only_their_own_password,
    bad_input_gets_a_json_400_and_unknown_ids_a_404,
    taken_addresses_are_a_409_whether_active_pending_or_in_the_trash,
    a_role_or_email_change_reaches_the_next_proxied_request,
    sso_only_users_cannot_use_a_password_and_their_sessions_end,
    the_last_active_admin_cannot_be_removed,
    change_password_keeps_the_callers_session_and_ends_the_others,
);

/// A gateway with an admin (logged in) and alice, a user (logged in).
struct Admins {
    /// The PostgreSQL schema the gateway runs on, dropped with it.
    _schema: Option<PgSchema>,
    upstream: FakeUpstream,
    gw: Gateway,
    admin: User,
    admin_token: String,
    alice: User,
    alice_token: String,
}

async fn setup_with(backend: Backend, extra_toml: &str) -> Admins {
    let upstream = FakeUpstream::start().await;
    let (schema, store) = match backend {
        Backend::Sqlite => (None, String::new()),
        Backend::Postgres => {
            let schema = PgSchema::create("users_api")
                .await
                .expect("MEIRO_GATE_TEST_POSTGRES_URL");
            let store = format!("[store]\nurl = \"{}\"\n", schema.url());
            (Some(schema), store)
        }
    };
    let gw = Gateway::start_with_layers(&upstream.url(), &[&store, extra_toml]).await;
    let admin = gw.add_user("admin@example.com", Role::Admin).await;
    let alice = gw.add_user("alice@example.com", Role::User).await;
    let admin_token = gw.login("admin@example.com").await;
    let alice_token = gw.login("alice@example.com").await;
    Admins {
        _schema: schema,
        upstream,
        gw,
        admin,
        admin_token,
        alice,
        alice_token,
    }
}

async fn setup(backend: Backend) -> Admins {
    setup_with(backend, "").await
}

impl Admins {
    /// One API call with `token` (and a JSON body), as status and JSON body.
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.gw.http.request(method, self.gw.url(path));
        if let Some(token) = token {
            request = request.header("x-access-token", token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        assert_json(response.headers());
        status_json(response).await
    }

    async fn as_admin(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call(method, path, Some(&self.admin_token), body).await
    }

    async fn list(&self, path: &str) -> Value {
        let (status, body) = self.as_admin(Method::GET, path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        body
    }

    /// The user as the store has them now.
    async fn stored(&self, id: UserId) -> User {
        let store = self.gw.app().auth().store();
        store.user_by_id(id).await.unwrap().expect("stored")
    }

    /// The role header the upstream saw on `token`'s next proxied request.
    async fn proxied_identity(&self, token: &str) -> (String, String) {
        assert_proxied(&self.gw, token).await;
        let seen = self.upstream.last();
        (
            header(&seen, "x-meiro-user-role").concat(),
            header(&seen, "x-meiro-user-email").concat(),
        )
    }
}

/// The persisted audit trail once it holds each of `kinds` (written in the background).
async fn audit_with(gw: &Gateway, kinds: &[&str]) -> Vec<AuditEvent> {
    eventually!(
        {
            let events = gw.audit_events().await;
            kinds.iter().all(|k| events.iter().any(|e| e.kind == *k))
        },
        "audit events {kinds:?}"
    );
    gw.audit_events().await
}

fn emails(list: &Value) -> Vec<&str> {
    list["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["email"].as_str().unwrap())
        .collect()
}

fn user_path(user: &User) -> String {
    format!("/users/{}", user.id)
}

async fn an_admin_runs_the_whole_lifecycle_over_http(backend: Backend) {
    let s = setup(backend).await;
    // Create: 201, active at once.
    let (status, created) = s
        .as_admin(
            Method::POST,
            "/users",
            Some(json!({ "email": " Bob@Example.com ", "password": PASSWORD })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["email"], "bob@example.com");
    assert_eq!(created["role"], "user");
    assert_eq!(
        (created["deleted"].clone(), created["disabled"].clone()),
        (json!(false), json!(false))
    );
    let bob_path = format!("/users/{}", created["id"].as_str().unwrap());
    let bob_token = s.gw.login("bob@example.com").await;
    assert_proxied(&s.gw, &bob_token).await;

    // List: everyone not in the trash, with the settings used.
    let list = s.list("/users").await;
    assert_eq!(
        list["selection_settings"],
        json!({ "limit": 20, "offset": 0, "order_by": "id", "order_dir": "ASC" })
    );
    let mut all = emails(&list);
    all.sort_unstable();
    assert_eq!(
        all,
        ["admin@example.com", "alice@example.com", "bob@example.com"]
    );
    // Page by email.
    let page = s
        .list("/users?limit=2&offset=1&order_by=email&order_dir=DESC")
        .await;
    assert_eq!(emails(&page), ["alice@example.com", "admin@example.com"]);
    assert_eq!(
        page["selection_settings"],
        json!({ "limit": 2, "offset": 1, "order_by": "email", "order_dir": "DESC" })
    );

    // Promote, then demote.
    let (status, body) = s
        .as_admin(Method::PATCH, &bob_path, Some(json!({ "role": "admin" })))
        .await;
    assert_eq!(
        (status, body["role"].clone()),
        (StatusCode::OK, json!("admin")),
        "{body}"
    );
    let (status, body) = s.as_admin(Method::GET, "/users", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Disable: refused at once, and back.
    let (status, body) = s
        .as_admin(Method::PATCH, &bob_path, Some(json!({ "disabled": true })))
        .await;
    assert_eq!(
        (status, body["disabled"].clone()),
        (StatusCode::OK, json!(true)),
        "{body}"
    );
    assert_rejected(&s.gw, &bob_token).await;
    assert_login_refused(&s.gw, "bob@example.com", PASSWORD).await;
    let (status, _) = s
        .as_admin(Method::PATCH, &bob_path, Some(json!({ "disabled": false })))
        .await;
    assert_eq!(status, StatusCode::OK);
    let bob_token = s.gw.login("bob@example.com").await;

    // Delete: to the trash, sessions ended, found there, not in the list.
    let (status, body) = s.as_admin(Method::DELETE, &bob_path, None).await;
    assert_eq!(
        (status, body["deleted"].clone()),
        (StatusCode::OK, json!(true)),
        "{body}"
    );
    assert_rejected(&s.gw, &bob_token).await;
    assert_login_refused(&s.gw, "bob@example.com", PASSWORD).await;
    assert_eq!(emails(&s.list("/users/trash").await), ["bob@example.com"]);
    assert!(!emails(&s.list("/users").await).contains(&"bob@example.com"));
    let (status, _) = s.as_admin(Method::DELETE, &bob_path, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "already in the trash");
    let (status, _) = s
        .as_admin(Method::PATCH, &bob_path, Some(json!({ "disabled": true })))
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a user in the trash is not modified"
    );
    // The admin still reads a deleted user.
    let (status, body) = s.as_admin(Method::GET, &bob_path, None).await;
    assert_eq!(
        (status, body["deleted"].clone()),
        (StatusCode::OK, json!(true))
    );

    // Restore with a new password: the same user, active, only the new password works.
    let (status, restored) = s
        .as_admin(
            Method::POST,
            "/users/create_or_restore",
            Some(json!({ "email": "bob@example.com", "password": NEW_PASSWORD, "role": "user" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{restored}");
    assert_eq!(
        format!("/users/{}", restored["id"].as_str().unwrap()),
        bob_path
    );
    assert_eq!(
        (restored["deleted"].clone(), restored["role"].clone()),
        (json!(false), json!("user"))
    );
    assert!(emails(&s.list("/users/trash").await).is_empty());
    assert_login_refused(&s.gw, "bob@example.com", PASSWORD).await;
    login_with(&s.gw, "bob@example.com", NEW_PASSWORD).await;

    // Every change is audited with the acting admin.
    let kinds = [
        "user_created",
        "user_modified",
        "user_disabled",
        "user_enabled",
        "user_deleted",
        "user_restored",
    ];
    let events = audit_with(&s.gw, &kinds).await;
    let actor = s.admin.id.to_string();
    for kind in kinds {
        let event = events
            .iter()
            .find(|e| e.kind == kind)
            .unwrap_or_else(|| panic!("no {kind} in {events:#?}"));
        assert_eq!(event.detail.get("actor"), Some(&actor), "{kind}");
        assert_eq!(event.email.as_deref(), Some("bob@example.com"), "{kind}");
        assert!(
            event.request_id.is_some() && event.client_ip.is_some(),
            "{kind}"
        );
    }
    let promoted = events.iter().find(|e| e.kind == "user_modified").unwrap();
    assert_eq!(
        promoted.detail.get("changed").map(String::as_str),
        Some("role")
    );
    s.gw.shutdown().await;
}

async fn only_admins_manage_users_and_a_user_changes_only_their_own_password(backend: Backend) {
    let s = setup(backend).await;
    let alice_path = user_path(&s.alice);
    let admin_path = user_path(&s.admin);
    let body = json!({ "email": "x@example.com", "password": PASSWORD });
    for (method, path, body) in [
        (Method::GET, "/users".to_owned(), None),
        (Method::GET, "/users/trash".to_owned(), None),
        (Method::POST, "/users".to_owned(), Some(body.clone())),
        (
            Method::POST,
            "/users/create_or_restore".to_owned(),
            Some(body),
        ),
        (
            Method::PATCH,
            alice_path.clone(),
            Some(json!({ "role": "admin" })),
        ),
        (Method::DELETE, alice_path.clone(), None),
        (
            Method::POST,
            format!("{admin_path}/change_password"),
            Some(json!({ "old_password": PASSWORD, "new_password": NEW_PASSWORD })),
        ),
    ] {
        let (status, answer) = s
            .call(method.clone(), &path, Some(&s.alice_token), body.clone())
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {answer}");
        let (status, _) = s.call(method.clone(), &path, None, body).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {path} without a token"
        );
    }
    // Even an admin changes only their own password.
    let (status, _) = s
        .as_admin(
            Method::POST,
            &format!("{alice_path}/change_password"),
            Some(json!({ "old_password": PASSWORD, "new_password": NEW_PASSWORD })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let alice = s.stored(s.alice.id).await;
    assert_eq!(
        alice,
        s.gw.app()
            .auth()
            .store()
            .user_by_email("alice@example.com")
            .await
            .unwrap()
            .unwrap()
    );
    assert!(
        !alice.deleted && alice.role == Role::User,
        "nothing changed"
    );
    assert_proxied(&s.gw, &s.alice_token).await;
    s.gw.shutdown().await;
}

async fn bad_input_gets_a_json_400_and_unknown_ids_a_404(backend: Backend) {
    let s = setup(backend).await;
    for query in [
        "limit=0",
        "limit=101",
        "limit=abc",
        "offset=-1",
        "order_by=password_hash",
        "order_dir=up",
        "limit=1&limit=2",
    ] {
        for list in ["/users", "/users/trash"] {
            let (status, body) = s
                .as_admin(Method::GET, &format!("{list}?{query}"), None)
                .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{list}?{query}: {body}");
            assert!(
                body["message"]
                    .as_str()
                    .is_some_and(|m| !m.contains("password_hash"))
            );
        }
    }
    let alice = user_path(&s.alice);
    for (method, path, body, expected) in [
        (
            Method::PATCH,
            alice.clone(),
            json!({ "email": "not an address" }),
            "Invalid email address",
        ),
        (
            Method::PATCH,
            alice.clone(),
            json!({ "password": "short" }),
            "",
        ),
        (
            Method::PATCH,
            alice.clone(),
            json!({ "role": "root" }),
            "role",
        ),
        (
            Method::PATCH,
            alice.clone(),
            json!({ "disabled": "yes" }),
            "disabled",
        ),
        (Method::PATCH, alice.clone(), json!(["role"]), ""),
        (
            Method::POST,
            "/users".into(),
            json!({ "email": "new@example.com" }),
            "password",
        ),
        (
            Method::POST,
            "/users".into(),
            json!({ "email": "new@example.com", "password": "short" }),
            "",
        ),
        (
            Method::POST,
            "/users".into(),
            json!({ "email": "@", "password": PASSWORD }),
            "Invalid email address",
        ),
        (
            Method::POST,
            "/users/create_or_restore".into(),
            json!({ "password": PASSWORD }),
            "email",
        ),
    ] {
        let (status, answer) = s.as_admin(method.clone(), &path, Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {path}: {answer}");
        let message = answer["message"].as_str().unwrap();
        assert!(message.contains(expected), "{method} {path}: {message}");
    }
    let own = format!("{}/change_password", user_path(&s.admin));
    for body in [
        json!({ "old_password": PASSWORD }),
        json!({ "old_password": PASSWORD, "new_password": "short" }),
    ] {
        let (status, answer) = s.as_admin(Method::POST, &own, Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    }
    for id in [UNKNOWN_ID, "not-a-uuid", "%FF"] {
        let path = format!("/users/{id}");
        for (method, body) in [
            (Method::PATCH, Some(json!({ "disabled": true }))),
            (Method::DELETE, None),
        ] {
            let (status, _) = s.as_admin(method.clone(), &path, body).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
        }
    }
    // Nothing was changed by any of it.
    let alice_now = s.stored(s.alice.id).await;
    assert_eq!(
        (alice_now.email.as_str(), alice_now.role, alice_now.disabled),
        ("alice@example.com", Role::User, false)
    );
    assert_proxied(&s.gw, &s.alice_token).await;
    s.gw.shutdown().await;
}

async fn taken_addresses_are_a_409_whether_active_pending_or_in_the_trash(backend: Backend) {
    let s = setup(backend).await;
    let invite = s
        .as_admin(
            Method::POST,
            "/users/invite",
            Some(json!({ "email": "pending@example.com" })),
        )
        .await;
    assert_eq!(invite.0, StatusCode::OK, "{}", invite.1);
    let (_, carol) = s
        .as_admin(
            Method::POST,
            "/users",
            Some(json!({ "email": "carol@example.com", "password": PASSWORD })),
        )
        .await;
    let carol_path = format!("/users/{}", carol["id"].as_str().unwrap());
    assert_eq!(
        s.as_admin(Method::DELETE, &carol_path, None).await.0,
        StatusCode::OK
    );

    for email in [
        "ALICE@example.com",
        "pending@example.com",
        "carol@example.com",
    ] {
        let body = json!({ "email": email, "password": PASSWORD });
        let (status, answer) = s.as_admin(Method::POST, "/users", Some(body)).await;
        assert_eq!(
            status,
            StatusCode::CONFLICT,
            "POST /users {email}: {answer}"
        );
        let (status, _) = s
            .as_admin(
                Method::PATCH,
                &user_path(&s.admin),
                Some(json!({ "email": email })),
            )
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "PATCH to {email}");
    }
    // create_or_restore: 409 for an active or pending user, a restore for the trash.
    for email in ["alice@example.com", "pending@example.com"] {
        let body = json!({ "email": email, "password": NEW_PASSWORD });
        let (status, _) = s
            .as_admin(Method::POST, "/users/create_or_restore", Some(body))
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "create_or_restore {email}");
    }
    let (status, created) = s
        .as_admin(
            Method::POST,
            "/users/create_or_restore",
            Some(
                json!({ "email": "dora@example.com", "password": PASSWORD, "sso_enabled": false }),
            ),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "an unknown address is created: {created}"
    );
    // The admin's own address did not change along the way.
    login_with(&s.gw, "admin@example.com", PASSWORD).await;
    s.gw.shutdown().await;
}

async fn a_role_or_email_change_reaches_the_next_proxied_request(backend: Backend) {
    let s = setup(backend).await;
    let second = s.gw.add_user("second@example.com", Role::Admin).await;
    let second_token = s.gw.login("second@example.com").await;
    assert_eq!(
        s.proxied_identity(&second_token).await,
        ("admin".into(), "second@example.com".into())
    );

    let (status, body) = s
        .as_admin(
            Method::PATCH,
            &user_path(&second),
            Some(json!({ "role": "user", "email": "renamed@example.com" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The same token, still valid, now speaks for a user with the new address.
    assert_eq!(
        s.proxied_identity(&second_token).await,
        ("user".into(), "renamed@example.com".into())
    );
    // And the API sees the demotion too.
    let (status, _) = s
        .call(Method::GET, "/users", Some(&second_token), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Other users' sessions were not touched.
    assert_eq!(
        s.proxied_identity(&s.alice_token).await,
        ("user".into(), "alice@example.com".into())
    );
    s.gw.shutdown().await;
}

async fn sso_only_users_cannot_use_a_password_and_their_sessions_end(backend: Backend) {
    let s = setup(backend).await;
    let (status, body) = s
        .as_admin(
            Method::PATCH,
            &user_path(&s.alice),
            Some(json!({ "sso_enabled": true })),
        )
        .await;
    assert_eq!(
        (status, body["sso_enabled"].clone()),
        (StatusCode::OK, json!(true)),
        "{body}"
    );
    assert_rejected(&s.gw, &s.alice_token).await;
    assert_login_refused(&s.gw, "alice@example.com", PASSWORD).await;
    let events = audit_with(&s.gw, &["login_failed"]).await;
    let failure = events.iter().find(|e| e.kind == "login_failed").unwrap();
    assert_eq!(
        failure.detail.get("reason").map(String::as_str),
        Some("sso_only")
    );
    // An admin-set password ends sessions too (and works for login once SSO is off).
    let (status, _) = s
        .as_admin(
            Method::PATCH,
            &user_path(&s.alice),
            Some(json!({ "sso_enabled": false, "password": NEW_PASSWORD })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let token = login_with(&s.gw, "alice@example.com", NEW_PASSWORD).await;
    let (status, _) = s
        .as_admin(
            Method::PATCH,
            &user_path(&s.alice),
            Some(json!({ "password": PASSWORD })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_rejected(&s.gw, &token).await;
    s.gw.shutdown().await;
}

async fn the_last_active_admin_cannot_be_removed(backend: Backend) {
    let s = setup(backend).await;
    let admin = user_path(&s.admin);
    for (method, body) in [
        (Method::PATCH, Some(json!({ "role": "user" }))),
        (Method::PATCH, Some(json!({ "disabled": true }))),
        (Method::DELETE, None),
    ] {
        let (status, answer) = s.as_admin(method.clone(), &admin, body).await;
        assert_eq!(status, StatusCode::CONFLICT, "{method}: {answer}");
        assert_eq!(
            answer,
            json!({ "message": "At least one active admin must remain" })
        );
    }
    assert_proxied(&s.gw, &s.admin_token).await;
    // With a second active admin, the first may step down.
    let (status, _) = s
        .as_admin(
            Method::PATCH,
            &user_path(&s.alice),
            Some(json!({ "role": "admin" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = s
        .as_admin(Method::PATCH, &admin, Some(json!({ "role": "user" })))
        .await;
    assert_eq!(
        (status, body["role"].clone()),
        (StatusCode::OK, json!("user"))
    );
    // Now alice is the last one.
    let (status, _) = s
        .call(
            Method::DELETE,
            &user_path(&s.alice),
            Some(&s.alice_token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    s.gw.shutdown().await;
}

async fn change_password_keeps_the_callers_session_and_ends_the_others(backend: Backend) {
    let s = setup_with(backend, "[auth.login_throttle]\nper_account = 3\n").await;
    let other_session = s.gw.login("alice@example.com").await;
    let path = format!("{}/change_password", user_path(&s.alice));
    let change = |old: &str, new: &str| {
        s.call(
            Method::POST,
            &path,
            Some(&s.alice_token),
            Some(json!({ "old_password": old, "new_password": new })),
        )
    };

    let (status, body) = change("wrong password!!", NEW_PASSWORD).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::BAD_REQUEST,
            json!({ "message": INVALID_CREDENTIALS })
        )
    );
    let (status, body) = change(PASSWORD, NEW_PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["email"], "alice@example.com");
    assert_proxied(&s.gw, &s.alice_token).await;
    assert_rejected(&s.gw, &other_session).await;
    assert_login_refused(&s.gw, "alice@example.com", PASSWORD).await;
    login_with(&s.gw, "alice@example.com", NEW_PASSWORD).await;
    let events = audit_with(&s.gw, &["password_change_failed", "password_changed"]).await;
    let changed = events
        .iter()
        .find(|e| e.kind == "password_changed")
        .expect("audited");
    assert_eq!(changed.detail.get("actor"), Some(&s.alice.id.to_string()));

    // Wrong old passwords are throttled like logins (three per account per window; the
    // refused login above counted one).
    let mut throttled = None;
    for _ in 0..4 {
        let response =
            s.gw.http
                .post(s.gw.url(&path))
                .header("x-access-token", &s.alice_token)
                .json(&json!({ "old_password": "still wrong!!", "new_password": PASSWORD }))
                .send()
                .await
                .unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            throttled = Some(response);
            break;
        }
        assert_eq!(status_message(response).await.0, StatusCode::BAD_REQUEST);
    }
    let throttled = throttled.expect("wrong old passwords are throttled");
    common::assert_throttled(throttled, 900, "change_password").await;
    s.gw.shutdown().await;
}
