//! The contract's `User` JSON shape (ME fields plus ours), shared by the API and the CLI, the
//! `{user_id}` of `/users/{user_id}/…` paths, and the Users API of one user: read, create,
//! modify, delete, restore, change password (listing is `user_list`).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use super::admin::{Admin, Signed};
use super::error::{ApiError, ApiJson};
use super::invite::role_name;
use crate::auth::audit::Caller;
use crate::auth::cache::LocalIdentity;
use crate::auth::users::{AccountRequest, Modification};
use crate::auth::{Auth, AuthError};
use crate::store::{Role, UnixTime, User, UserId};

/// The contract's `User modify`: every field optional (`null` = absent).
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = UserModify)]
pub struct UserModifyBody {
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    password: Option<String>,
    /// `true`: Okta login only (credentials login is refused); ends the user's sessions.
    #[serde(default)]
    sso_enabled: Option<bool>,
    #[serde(default, deserialize_with = "role_name")]
    role: Option<Role>,
    #[serde(default)]
    disabled: Option<bool>,
}

/// The contract's `User create` / `User create or restore`.
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = UserCreate)]
pub struct UserCreateBody {
    email: String,
    password: String,
    #[serde(default)]
    sso_enabled: Option<bool>,
    /// `"admin"` or `"user"`; absent or `null`: `user`.
    #[serde(default, deserialize_with = "role_name")]
    role: Option<Role>,
}

impl From<UserCreateBody> for AccountRequest {
    fn from(body: UserCreateBody) -> Self {
        AccountRequest {
            email: body.email,
            password: body.password,
            sso_enabled: body.sso_enabled.unwrap_or(false),
            role: body.role.unwrap_or(Role::User),
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = ChangePassword)]
pub struct ChangePasswordBody {
    old_password: String,
    new_password: String,
}

/// `PATCH /users/{user_id}` (admin).
pub async fn modify_user(
    State(auth): State<Arc<Auth>>,
    Admin(admin): Admin,
    UserIdParam(user_id): UserIdParam,
    caller: Caller,
    ApiJson(body): ApiJson<UserModifyBody>,
) -> Result<Json<UserBody>, ApiError> {
    let modification = Modification {
        email: body.email,
        password: body.password,
        sso_enabled: body.sso_enabled,
        role: body.role,
        disabled: body.disabled,
    };
    let user = auth
        .modify_user(&admin, user_id, modification, &caller)
        .await?;
    Ok(Json(UserBody::from(&user)))
}

/// `DELETE /users/{user_id}` (admin): to the trash.
pub async fn delete_user(
    State(auth): State<Arc<Auth>>,
    Admin(admin): Admin,
    UserIdParam(user_id): UserIdParam,
    caller: Caller,
) -> Result<Json<UserBody>, ApiError> {
    let user = auth.delete_user(&admin, user_id, &caller).await?;
    Ok(Json(UserBody::from(&user)))
}

/// `POST /users` (admin).
pub async fn create_user(
    State(auth): State<Arc<Auth>>,
    Admin(admin): Admin,
    caller: Caller,
    ApiJson(body): ApiJson<UserCreateBody>,
) -> Result<(StatusCode, Json<UserBody>), ApiError> {
    let user = auth.create_account(&admin, body.into(), &caller).await?;
    Ok((StatusCode::CREATED, Json(UserBody::from(&user))))
}

/// `POST /users/create_or_restore` (admin).
pub async fn create_or_restore(
    State(auth): State<Arc<Auth>>,
    Admin(admin): Admin,
    caller: Caller,
    ApiJson(body): ApiJson<UserCreateBody>,
) -> Result<(StatusCode, Json<UserBody>), ApiError> {
    let user = auth.create_or_restore(&admin, body.into(), &caller).await?;
    Ok((StatusCode::CREATED, Json(UserBody::from(&user))))
}

/// The caller, on a `/users/{user_id}/…` path of their own: checked before the body is read,
/// so another user's id is a 403 whatever the body.
pub struct Themself(LocalIdentity);

impl FromRequestParts<Arc<Auth>> for Themself {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, auth: &Arc<Auth>) -> Result<Self, ApiError> {
        let Signed(identity) = Signed::from_request_parts(parts, auth).await?;
        let UserIdParam(user_id) = UserIdParam::from_request_parts(parts, auth).await?;
        if identity.user_id != user_id {
            return Err(AuthError::Forbidden.into());
        }
        Ok(Themself(identity))
    }
}

/// `POST /users/{user_id}/change_password`: that user only.
pub async fn change_password(
    State(auth): State<Arc<Auth>>,
    Themself(identity): Themself,
    caller: Caller,
    ApiJson(body): ApiJson<ChangePasswordBody>,
) -> Result<Json<UserBody>, ApiError> {
    let user = auth
        .change_password(&identity, body.old_password, body.new_password, &caller)
        .await?;
    Ok(Json(UserBody::from(&user)))
}

/// `GET /users/{user_id}`: an admin reads anyone (a deleted user too), a user only themself.
/// The caller is checked first, so a caller without a token learns nothing about ids.
pub async fn get_user(
    State(auth): State<Arc<Auth>>,
    Signed(caller): Signed,
    UserIdParam(user_id): UserIdParam,
) -> Result<Json<UserBody>, ApiError> {
    if caller.role != Role::Admin && caller.user_id != user_id {
        return Err(AuthError::Forbidden.into());
    }
    let user = auth.user(user_id).await?;
    Ok(Json(UserBody::from(&user)))
}

/// The `{user_id}` path parameter. The contract answers a malformed id like an unknown one
/// (`404`), so anything but a UUID in its hyphenated form — including a segment that is not
/// UTF-8 once percent-decoded, such as `%FF`, which axum itself would refuse with a
/// `text/plain` 400 — is [`AuthError::NotFound`].
pub struct UserIdParam(pub UserId);

impl<S: Send + Sync> FromRequestParts<S> for UserIdParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(id)) => parse_user_id(&id)
                .map(UserIdParam)
                .ok_or(AuthError::NotFound.into()),
            Err(PathRejection::FailedToDeserializePathParams(_)) => Err(AuthError::NotFound.into()),
            Err(other) => Err(other.into()),
        }
    }
}

/// Only the 36-character hyphenated form: `Uuid::try_parse` also takes the simple, braced and
/// `urn:uuid:` forms, which would give one user several addresses.
fn parse_user_id(text: &str) -> Option<UserId> {
    (text.len() == 36)
        .then(|| Uuid::try_parse(text).ok())
        .flatten()
        .map(UserId)
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = User)]
pub struct UserBody {
    #[schema(value_type = String, format = "uuid")]
    pub id: UserId,
    pub email: String,
    pub deleted: bool,
    pub sso_enabled: bool,
    pub role: Role,
    pub disabled: bool,
    pub invitation_pending: bool,
    #[schema(format = DateTime, required = true)]
    pub last_login: Option<String>,
    #[schema(format = DateTime)]
    pub created: String,
}

impl From<&User> for UserBody {
    fn from(u: &User) -> Self {
        UserBody {
            id: u.id,
            email: u.email.clone(),
            deleted: u.deleted,
            sso_enabled: u.sso_enabled,
            role: u.role,
            disabled: u.disabled,
            invitation_pending: u.invitation_pending,
            last_login: u.last_login.map(rfc3339),
            created: rfc3339(u.created),
        }
    }
}

pub fn rfc3339(t: UnixTime) -> String {
    OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_hyphenated_uuids_only() {
        let id = "0b8e7f3c-4d5a-4e6b-9c7d-8e9f0a1b2c3d";
        assert_eq!(
            parse_user_id(id).map(|u| u.0.to_string()).as_deref(),
            Some(id)
        );
        assert!(parse_user_id(&id.to_uppercase()).is_some());
        for other in [
            "0b8e7f3c4d5a4e6b9c7d8e9f0a1b2c3d",
            "{0b8e7f3c-4d5a-4e6b-9c7d-8e9f0a1b2c3d}",
            "urn:uuid:0b8e7f3c-4d5a-4e6b-9c7d-8e9f0a1b2c3d",
            "0b8e7f3c-4d5a-4e6b-9c7d-8e9f0a1b2c3g",
            "",
            "\u{ff}",
        ] {
            assert!(parse_user_id(other).is_none(), "{other}");
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
