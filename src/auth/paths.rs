//! The Authentication API's paths, kept in one place: the local router registers them, the
//! listener sends every path the router cannot serve straight to the data plane, and upstream
//! mode passes them through to the backend (watching logins and logouts on the way).

pub const AUTH_OPTIONS: &str = "/auth_options";
pub const LOGIN: &str = "/users/login";
pub const OKTA_LOGIN: &str = "/users/okta_login";
pub const INVITE: &str = "/users/invite";
/// An axum route pattern: `{user_id}` is the path parameter.
pub const INVITATION_LINK: &str = "/users/{user_id}/invitation_link";
pub const PASSWORD: &str = "/users/password";
pub const JWKS: &str = "/.well-known/jwks.json";
pub const OPENAPI: &str = "/openapi.json";

/// Could the local auth API's router have a route for `path`? Every path above is under one
/// of these; more is harmless (the router's fallback is the data plane), fewer is not.
pub fn local_api_may_serve(path: &str) -> bool {
    path == AUTH_OPTIONS
        || path == OPENAPI
        || path.starts_with("/users/")
        || path.starts_with("/.well-known/")
}

/// The paths upstream mode passes through to the backend's auth API, whatever the route table
/// says: Meiro's `/auth_options` and everything under `/users`.
pub fn upstream_auth_api(path: &str) -> bool {
    path == AUTH_OPTIONS || path == "/users" || path.starts_with("/users/")
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
        ] {
            assert!(local_api_may_serve(path), "{path}");
        }
        for path in [
            "/",
            "/api/users/login",
            "/users",
            "/auth_options/x",
            "/usersx/login",
        ] {
            assert!(!local_api_may_serve(path), "{path}");
        }
    }

    #[test]
    fn upstream_mode_passes_the_auth_api_through_and_nothing_else() {
        for path in [AUTH_OPTIONS, LOGIN, OKTA_LOGIN, "/users", "/users/42"] {
            assert!(upstream_auth_api(path), "{path}");
        }
        for path in [
            "/",
            "/usersx",
            "/api/users",
            JWKS,
            OPENAPI,
            "/auth_options/x",
        ] {
            assert!(!upstream_auth_api(path), "{path}");
        }
    }
}
