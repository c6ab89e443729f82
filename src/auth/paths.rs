//! The Authentication API's paths, kept in one place: the local router registers them, the
//! listener sends every path the router cannot serve straight to the data plane, and upstream
//! mode passes them through to the backend (watching logins and logouts on the way).

pub const AUTH_OPTIONS: &str = "/auth_options";
pub const LOGIN: &str = "/users/login";
pub const OKTA_LOGIN: &str = "/users/okta_login";
pub const INVITE: &str = "/users/invite";
/// `GET` lists, `POST` creates.
pub const USERS: &str = "/users";
pub const TRASH: &str = "/users/trash";
pub const CREATE_OR_RESTORE: &str = "/users/create_or_restore";
/// Axum route patterns: `{user_id}` is the path parameter.
pub const USER: &str = "/users/{user_id}";
pub const CHANGE_PASSWORD: &str = "/users/{user_id}/change_password";
pub const INVITATION_LINK: &str = "/users/{user_id}/invitation_link";
pub const PASSWORD: &str = "/users/password";
pub const JWKS: &str = "/.well-known/jwks.json";
pub const OPENAPI: &str = "/openapi.json";

/// Could the local auth API's router have a route for `path`, the API being mounted at
/// `prefix` (`server.api_prefix`; the JWKS stays at the root)? Every path above is under one
/// of these; more is harmless (the router's fallback is the data plane), fewer is not.
pub fn local_api_may_serve(prefix: &str, path: &str) -> bool {
    path.starts_with("/.well-known/")
        || under(prefix, path).is_some_and(|path| path == OPENAPI || is_meiro_auth_api(path))
}

/// The paths upstream mode passes through to the backend's auth API (mounted at `prefix`),
/// whatever the route table says: Meiro's `/auth_options` and everything under `/users`.
/// `Some`: the API's own path, the prefix taken off (what names the operation).
pub fn upstream_auth_api<'p>(prefix: &str, path: &'p str) -> Option<&'p str> {
    under(prefix, path).filter(|path| is_meiro_auth_api(path))
}

/// Meiro's Authentication and Users API below its mount point: `/auth_options` and
/// everything under `/users`.
fn is_meiro_auth_api(path: &str) -> bool {
    path == AUTH_OPTIONS || path == USERS || path.starts_with("/users/")
}

/// `path` below `prefix` (`""`: every path as it is), if it is below it.
fn under<'p>(prefix: &str, path: &'p str) -> Option<&'p str> {
    let rest = path.strip_prefix(prefix)?;
    (prefix.is_empty() || rest.starts_with('/')).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_api_claims_every_route_and_nothing_the_data_plane_owns() {
        for path in [
            AUTH_OPTIONS,
            LOGIN,
            OKTA_LOGIN,
            INVITE,
            "/users/42/invitation_link",
            PASSWORD,
            JWKS,
            OPENAPI,
            USERS,
            TRASH,
            CREATE_OR_RESTORE,
            "/users/42/change_password",
        ] {
            assert!(local_api_may_serve("", path), "{path}");
        }
        for path in ["/", "/api/users/login", "/auth_options/x", "/usersx/login"] {
            assert!(!local_api_may_serve("", path), "{path}");
        }
    }

    #[test]
    fn upstream_mode_passes_the_auth_api_through_and_nothing_else() {
        for path in [AUTH_OPTIONS, LOGIN, OKTA_LOGIN, "/users", "/users/42"] {
            assert!(upstream_auth_api("", path).is_some(), "{path}");
        }
        for path in [
            "/",
            "/usersx",
            "/api/users",
            JWKS,
            OPENAPI,
            "/auth_options/x",
        ] {
            assert!(upstream_auth_api("", path).is_none(), "{path}");
        }
    }

    #[test]
    fn under_a_prefix_the_api_is_there_and_only_there_but_the_jwks_stays_at_the_root() {
        for path in [
            "/api/auth_options",
            "/api/users/login",
            "/api/openapi.json",
            JWKS,
        ] {
            assert!(local_api_may_serve("/api", path), "{path}");
        }
        for path in [
            AUTH_OPTIONS,
            LOGIN,
            OPENAPI,
            "/apix/users/login",
            "/api",
            "/api/",
        ] {
            assert!(!local_api_may_serve("/api", path), "{path}");
        }
        for path in [
            "/api/auth_options",
            "/api/users",
            "/api/users/login",
            "/v1/api/users",
        ] {
            assert_eq!(
                upstream_auth_api("/api", path).is_some(),
                path.starts_with("/api/"),
                "{path}"
            );
        }
        for path in [
            AUTH_OPTIONS,
            LOGIN,
            "/users",
            "/apiusers/login",
            "/api/jwks",
        ] {
            assert!(upstream_auth_api("/api", path).is_none(), "{path}");
        }
    }
}
