//! The contract's `User` JSON shape (ME fields plus ours), shared by the API and the CLI, the
//! `{user_id}` of `/users/{user_id}/…` paths, and `GET /users/{user_id}`.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use super::admin::Signed;
use super::error::ApiError;
use crate::auth::{Auth, AuthError};
use crate::store::{Role, UnixTime, User, UserId};

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
