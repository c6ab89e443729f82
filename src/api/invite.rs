//! `/users/invite` (POST invite, PATCH re-invite) and `/users/{user_id}/invitation_link`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use uuid::Uuid;

use super::error::{ApiError, ApiJson};
use super::principal::Admin;
use super::users::UserBody;
use crate::auth::audit::Caller;
use crate::auth::{Auth, AuthError};
use crate::store::{Role, UserId};

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = Invitation)]
pub struct InvitationBody {
    email: String,
    /// Default `user`.
    #[serde(default)]
    role: Option<Role>,
}

pub async fn invite(
    State(auth): State<Arc<Auth>>,
    Admin(admin): Admin,
    caller: Caller,
    ApiJson(body): ApiJson<InvitationBody>,
) -> Result<Json<UserBody>, ApiError> {
    let user = auth.invite(&admin, &body.email, body.role, &caller).await?;
    Ok(Json(UserBody::from(&user)))
}

pub async fn reinvite(
    State(auth): State<Arc<Auth>>,
    Admin(admin): Admin,
    caller: Caller,
    ApiJson(body): ApiJson<InvitationBody>,
) -> Result<Json<UserBody>, ApiError> {
    let user = auth.reinvite(&admin, &body.email, &caller).await?;
    Ok(Json(UserBody::from(&user)))
}

pub async fn invitation_link(
    State(auth): State<Arc<Auth>>,
    Admin(_): Admin,
    Path(user_id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    // Not a UUID: no such user, like an unknown one.
    let user_id = Uuid::parse_str(&user_id).map_err(|_| AuthError::NotFound)?;
    let link = auth.invitation_link(UserId(user_id)).await?;
    Ok(Json(serde_json::json!({ "user_invitation_link": link })))
}
