//! `/users/password`: forgotten password (POST) and setting a password from an invitation or
//! reset token (PATCH).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Deserialize;

use super::error::{ApiError, ApiJson};
use crate::auth::Auth;
use crate::auth::audit::Caller;

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = ForgotPassword)]
pub struct ForgotPasswordBody {
    email: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = ResetPassword)]
pub struct ResetPasswordBody {
    email: String,
    password: String,
    token: String,
}

fn ok() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "message": "ok" }))
}

pub async fn forgot(
    State(auth): State<Arc<Auth>>,
    caller: Caller,
    ApiJson(body): ApiJson<ForgotPasswordBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    auth.request_password_reset(&body.email, &caller).await?;
    Ok(ok())
}

pub async fn reset(
    State(auth): State<Arc<Auth>>,
    caller: Caller,
    ApiJson(body): ApiJson<ResetPasswordBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    auth.set_password(&body.email, body.password, &body.token, &caller)
        .await?;
    Ok(ok())
}
