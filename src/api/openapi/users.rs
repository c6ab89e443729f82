//! The `users` operations of the OpenAPI document (attributes only, like the parent's).

use utoipa::IntoParams;

use super::super::invite::InvitationBody;
use super::super::user_list::UserListBody;
use super::super::users::{ChangePasswordBody, UserBody, UserCreateBody, UserModifyBody};
use super::{Error, InvitationLink, NotAdmin, TooLarge, Unauthenticated, Unavailable};

/// Invite a user
///
/// Creates a pending user (or renews a still-pending one's invitation) and e-mails the link.
#[utoipa::path(
    post, path = "/users/invite", tag = "users",
    request_body = InvitationBody,
    responses(
        (status = 200, description = "The pending user", body = UserBody),
        (status = 400, description = "Malformed body, or an email address the gateway would not be able to deliver to (the message says which rule)", body = Error),
        Unauthenticated,
        NotAdmin,
        (status = 409, description = "A user with this email already exists", body = Error),
        TooLarge,
        Unavailable,
    ),
    security(("access_token" = []), ("bearer" = []), ("cookie" = []))
)]
#[allow(dead_code)]
fn invite() {}

/// Re-invite a pending user
///
/// Issues and e-mails a new link; the previous link stops working.
#[utoipa::path(
    patch, path = "/users/invite", tag = "users",
    request_body = InvitationBody,
    responses(
        (status = 200, description = "The pending user", body = UserBody),
        (status = 400, description = "Malformed body, or an email address the gateway would not be able to deliver to", body = Error),
        Unauthenticated,
        NotAdmin,
        (status = 404, description = "No pending invitation for this email", body = Error),
        TooLarge,
        Unavailable,
    ),
    security(("access_token" = []), ("bearer" = []), ("cookie" = []))
)]
#[allow(dead_code)]
fn reinvite() {}

/// The `{user_id}` of `/users/{user_id}…` paths.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
struct UserIdPath {
    /// The user's id: a UUID in its hyphenated form; anything else, including a segment that is not UTF-8 once decoded, is an unknown user (404)
    user_id: String,
}

/// A pending user's invitation link
#[utoipa::path(
    get, path = "/users/{user_id}/invitation_link", tag = "users",
    params(UserIdPath),
    responses(
        (status = 200, description = "The link that was e-mailed, until re-invite or use", body = InvitationLink),
        Unauthenticated,
        NotAdmin,
        (status = 404, description = "Unknown user, or no pending invitation", body = Error),
        Unavailable,
    ),
    security(("access_token" = []), ("bearer" = []), ("cookie" = []))
)]
#[allow(dead_code)]
fn invitation_link() {}

/// Read a user
///
/// An admin reads any user (one in the trash too), a user only themself.
#[utoipa::path(
    get, path = "/users/{user_id}", tag = "users",
    params(UserIdPath),
    responses(
        (status = 200, description = "The user", body = UserBody),
        Unauthenticated,
        (status = 403, description = "Insufficient permissions (neither an admin nor that user)", body = Error),
        (status = 404, description = "Unknown user (also a malformed id)", body = Error),
        Unavailable,
    ),
    security(("access_token" = []), ("bearer" = []), ("cookie" = []))
)]
#[allow(dead_code)]
fn get_user() {}

/// The query of `GET /users` and `GET /users/trash`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct ListQuery {
    /// Users per page, 1 to 100 (default 20)
    limit: Option<i64>,
    /// Users to skip (default 0)
    offset: Option<i64>,
    /// `id` (default), `email` or `created`; ties are ordered by id, so paging is stable
    order_by: Option<String>,
    /// `ASC` (default) or `DESC`
    order_dir: Option<String>,
}

/// List users
///
/// Users not in the trash (pending invitations included), one page in the order asked for.
#[utoipa::path(
    get, path = "/users", tag = "users",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of users and the settings used", body = UserListBody),
        (status = 400, description = "A query value out of range (the message names the parameter)", body = Error),
        Unauthenticated,
        NotAdmin,
        Unavailable,
    ),
    security(("access_token" = []), ("bearer" = []), ("cookie" = []))
)]
#[allow(dead_code)]
fn list_users() {}

/// List the trash
///
/// Deleted users, paged like `GET /users`.
#[utoipa::path(
    get, path = "/users/trash", tag = "users",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of deleted users and the settings used", body = UserListBody),
        (status = 400, description = "A query value out of range", body = Error),
        Unauthenticated,
        NotAdmin,
        Unavailable,
    ),
    security(("access_token" = []), ("bearer" = []), ("cookie" = []))
)]
#[allow(dead_code)]
fn list_trash() {}

/// Create a user
///
/// Active at once: the user can log in with the password.
#[utoipa::path(
    post, path = "/users", tag = "users",
    request_body = UserCreateBody,
    responses(
        (status = 201, description = "The new user", body = UserBody),
        (status = 400, description = "Malformed body, an undeliverable email address or a password the policy refuses", body = Error),
        Unauthenticated,
        NotAdmin,
        (status = 409, description = "A user with this email already exists (active, pending or in the trash)", body = Error),
        TooLarge,
        Unavailable,
    ),
    security(("access_token" = []), ("bearer" = []), ("cookie" = []))
)]
#[allow(dead_code)]
fn create_user() {}

/// Create a user or restore one from the trash
///
/// A user in the trash with this email comes back active, with the new password, role and
/// `sso_enabled`; otherwise a user is created.
#[utoipa::path(
    post, path = "/users/create_or_restore", tag = "users",
    request_body = UserCreateBody,
    responses(
        (status = 201, description = "The restored or new user", body = UserBody),
        (status = 400, description = "Malformed body, an undeliverable email address or a password the policy refuses", body = Error),
        Unauthenticated,
        NotAdmin,
        (status = 409, description = "An active or pending user has this email", body = Error),
        TooLarge,
        Unavailable,
    ),
    security(("access_token" = []), ("bearer" = []), ("cookie" = []))
)]
#[allow(dead_code)]
fn create_or_restore() {}

/// Modify a user
///
/// Disabling, a new email, role or password, and `sso_enabled: true` take effect at once on
/// every replica: sessions end (disabled, password, SSO only) or carry the new identity.
#[utoipa::path(
    patch, path = "/users/{user_id}", tag = "users",
    params(UserIdPath),
    request_body = UserModifyBody,
    responses(
        (status = 200, description = "The user as changed", body = UserBody),
        (status = 400, description = "Malformed body, an undeliverable email address or a password the policy refuses", body = Error),
        Unauthenticated,
        NotAdmin,
        (status = 404, description = "Unknown user (also a malformed id), or in the trash", body = Error),
        (status = 409, description = "The email is another user's, or the change would leave no active admin", body = Error),
        TooLarge,
        Unavailable,
    ),
    security(("access_token" = []), ("bearer" = []), ("cookie" = []))
)]
#[allow(dead_code)]
fn modify_user() {}

/// Delete a user
///
/// Moves the user to the trash and ends every session of theirs.
#[utoipa::path(
    delete, path = "/users/{user_id}", tag = "users",
    params(UserIdPath),
    responses(
        (status = 200, description = "The user, `deleted: true`", body = UserBody),
        Unauthenticated,
        NotAdmin,
        (status = 404, description = "Unknown user (also a malformed id), or already in the trash", body = Error),
        (status = 409, description = "The last active admin", body = Error),
        Unavailable,
    ),
    security(("access_token" = []), ("bearer" = []), ("cookie" = []))
)]
#[allow(dead_code)]
fn delete_user() {}

/// Change one's own password
///
/// Needs the current password (wrong ones count against the account's login limit). Every
/// other session of the user ends; the caller's stays.
#[utoipa::path(
    post, path = "/users/{user_id}/change_password", tag = "users",
    params(UserIdPath),
    request_body = ChangePasswordBody,
    responses(
        (status = 200, description = "The user", body = UserBody),
        (status = 400, description = "Malformed body, a new password the policy refuses, or the wrong current password (`Invalid credentials have been provided`)", body = Error),
        Unauthenticated,
        (status = 403, description = "Another user's id", body = Error),
        TooLarge,
        (status = 429, description = "Too many wrong passwords for this account or client", body = Error, headers(
            ("Retry-After" = u64, description = "Seconds until the next attempt is allowed"),
        )),
        Unavailable,
    ),
    security(("access_token" = []), ("bearer" = []), ("cookie" = []))
)]
#[allow(dead_code)]
fn change_password() {}
