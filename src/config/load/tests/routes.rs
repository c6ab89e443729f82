//! `[[routes]]`: prefixes and upstreams, upgrades, roles and methods, per-user rates.

use super::{UPSTREAM, assert_problems, ok};

#[test]
fn routes_need_a_prefix_and_a_known_upstream() {
    let routes = |routes: &str| format!("routes = [{routes}]\n{UPSTREAM}");
    assert_problems(&[
        (
            &routes(r#"{ upstream = "meiro" }"#),
            "routes[0].prefix",
            "missing (required)",
        ),
        (
            &routes(r#"{ prefix = "api", upstream = "meiro" }"#),
            "routes[0].prefix",
            r#"must start with "/""#,
        ),
        (
            &routes(r#"{ prefix = "/" }"#),
            "routes[0].upstream",
            "missing (required)",
        ),
        (
            &routes(r#"{ prefix = "/admin;x", upstream = "meiro" }"#),
            "routes[0].prefix",
            "must be a plain path",
        ),
        (
            &routes(r#"{ prefix = "/a/../admin", upstream = "meiro" }"#),
            "routes[0].prefix",
            "must be a plain path",
        ),
        (
            &routes(r#"{ prefix = "/a//b", upstream = "meiro" }"#),
            "routes[0].prefix",
            "must be a plain path",
        ),
        (
            &routes(r#"{ prefix = "/%61dmin", upstream = "meiro" }"#),
            "routes[0].prefix",
            "must be a plain path",
        ),
        (
            &routes(r#"{ prefix = "/", upstream = "other" }"#),
            "routes[0].upstream",
            r#"unknown upstream "other""#,
        ),
        (
            &routes(
                r#"{ prefix = "/", upstream = "meiro" }, { prefix = "/", upstream = "meiro" }"#,
            ),
            "routes[1].prefix",
            r#"duplicate prefix "/" (also routes[0].prefix)"#,
        ),
        // Found by the config_toml fuzz target's invariant: the route table trims the
        // trailing slash, so the second route was accepted and never used.
        (
            &routes(
                r#"{ prefix = "/api", upstream = "meiro" }, { prefix = "/api/", upstream = "meiro", public = true }"#,
            ),
            "routes[1].prefix",
            r#"duplicate prefix "/api/" (also routes[0].prefix)"#,
        ),
    ]);
    let c = ok(&routes(
        r#"{ prefix = "/public", upstream = "meiro", public = true }"#,
    ));
    assert!(c.routes[0].public);
}

#[test]
fn routes_tunnel_websocket_by_default_and_never_h2c() {
    let routes = |routes: &str| format!("routes = [{routes}]\n{UPSTREAM}");
    let c = ok(&routes(r#"{ prefix = "/", upstream = "meiro" }"#));
    assert_eq!(c.routes[0].upgrades, ["websocket"]);
    let c = ok(&routes(
        r#"{ prefix = "/", upstream = "meiro", upgrades = ["WebSocket", "x-custom/2"] }"#,
    ));
    assert_eq!(c.routes[0].upgrades, ["websocket", "x-custom/2"]);
    let c = ok(&routes(
        r#"{ prefix = "/", upstream = "meiro", upgrades = [] }"#,
    ));
    assert!(c.routes[0].upgrades.is_empty());
    assert_problems(&[
        (
            &routes(r#"{ prefix = "/", upstream = "meiro", upgrades = ["h2c"] }"#),
            "routes[0].upgrades",
            "h2c cannot be tunnelled",
        ),
        (
            &routes(r#"{ prefix = "/", upstream = "meiro", upgrades = ["H2C/1"] }"#),
            "routes[0].upgrades",
            "h2c cannot be tunnelled",
        ),
        (
            &routes(r#"{ prefix = "/", upstream = "meiro", upgrades = ["web socket"] }"#),
            "routes[0].upgrades",
            "not a protocol token",
        ),
    ]);
}

#[test]
fn route_roles_and_methods_are_checked_lists() {
    let routes = |routes: &str| format!("routes = [{routes}]\n{UPSTREAM}");
    let c = ok(&routes(r#"{ prefix = "/", upstream = "meiro" }"#));
    assert_eq!(
        (&c.routes[0].allow_roles, &c.routes[0].methods),
        (&None, &None)
    );
    let c = ok(&routes(
        r#"{ prefix = "/", upstream = "meiro", allow_roles = ["admin"], methods = ["get", "PATCH"] }"#,
    ));
    assert_eq!(
        c.routes[0].allow_roles,
        Some(vec![crate::types::Role::Admin])
    );
    assert_eq!(
        c.routes[0].methods,
        Some(vec!["GET".to_owned(), "PATCH".to_owned()])
    );
    assert_problems(&[
        (
            &routes(r#"{ prefix = "/", upstream = "meiro", allow_roles = ["root"] }"#),
            "routes[0].allow_roles",
            r#"one or more of "admin", "user""#,
        ),
        (
            &routes(r#"{ prefix = "/", upstream = "meiro", allow_roles = [] }"#),
            "routes[0].allow_roles",
            r#"one or more of "admin", "user""#,
        ),
        (
            &routes(
                r#"{ prefix = "/", upstream = "meiro", public = true, allow_roles = ["user"] }"#,
            ),
            "routes[0].allow_roles",
            "a public route has no user to check",
        ),
        (
            &routes(r#"{ prefix = "/", upstream = "meiro", methods = ["GE T"] }"#),
            "routes[0].methods",
            "one or more HTTP methods",
        ),
        (
            &routes(r#"{ prefix = "/", upstream = "meiro", methods = [] }"#),
            "routes[0].methods",
            "one or more HTTP methods",
        ),
    ]);
}

#[test]
fn per_user_rates_are_whole_numbers() {
    let c = ok("");
    assert_eq!((c.limits.per_user_rate, c.limits.per_user_burst), (0, 0));
    let c = ok(&format!(
        "routes = [{{ prefix = \"/\", upstream = \"meiro\", per_user_rate = 5 }}]\n{UPSTREAM}\n[limits]\nper_user_rate = 50\nper_user_burst = 100\n"
    ));
    assert_eq!((c.limits.per_user_rate, c.limits.per_user_burst), (50, 100));
    assert_eq!(c.routes[0].per_user_rate, Some(5));
    assert_problems(&[
        (
            "[limits]\nper_user_rate = -1",
            "limits.per_user_rate",
            "non-negative whole number",
        ),
        (
            "[limits]\nper_user_burst = 1.5",
            "limits.per_user_burst",
            "non-negative whole number",
        ),
        (
            &format!(
                "routes = [{{ prefix = \"/\", upstream = \"meiro\", per_user_rate = \"fast\" }}]\n{UPSTREAM}"
            ),
            "routes[0].per_user_rate",
            "non-negative whole number",
        ),
    ]);
}
