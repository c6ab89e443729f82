//! `/users/invite` (POST invite, PATCH re-invite) and `/users/{user_id}/invitation_link`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::admin::Admin;
use super::error::{ApiError, ApiJson};
use super::users::{UserBody, UserIdParam};
use crate::auth::Auth;
use crate::auth::audit::Caller;
use crate::store::Role;

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = Invitation)]
pub struct InvitationBody {
    email: String,
    /// `"admin"` or `"user"`; absent or `null`: `user`.
    #[serde(default, deserialize_with = "role_name")]
    role: Option<Role>,
}

/// Exactly the string `"admin"` or `"user"` (or `null`). `Role`'s derived `Deserialize` also
/// takes serde's externally tagged map form, so `{"admin": null}` would make an admin.
pub(super) fn role_name<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Role>, D::Error> {
    struct Name;

    impl<'de> Visitor<'de> for Name {
        type Value = Option<Role>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("`admin` or `user`")
        }

        fn visit_str<E: de::Error>(self, name: &str) -> Result<Option<Role>, E> {
            Role::parse(name)
                .map(Some)
                .ok_or_else(|| E::unknown_variant(name, &["admin", "user"]))
        }

        fn visit_none<E: de::Error>(self) -> Result<Option<Role>, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, inner: D) -> Result<Option<Role>, D::Error> {
            inner.deserialize_str(self)
        }
    }

    deserializer.deserialize_option(Name)
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

/// The admin check comes first: a caller without a token learns nothing about ids.
pub async fn invitation_link(
    State(auth): State<Arc<Auth>>,
    Admin(_): Admin,
    UserIdParam(user_id): UserIdParam,
) -> Result<Json<serde_json::Value>, ApiError> {
    let link = auth.invitation_link(user_id).await?;
    Ok(Json(serde_json::json!({ "user_invitation_link": link })))
}
