//! `/users/password`: forgotten password (POST) and setting a password from an invitation or
//! reset token (PATCH).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use serde::Deserialize;

use super::error::{ApiError, ApiJson};
use crate::auth::Auth;

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
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    ApiJson(body): ApiJson<ForgotPasswordBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    auth.request_password_reset(&body.email, Some(client.ip()))
        .await?;
    Ok(ok())
}

pub async fn reset(
    State(auth): State<Arc<Auth>>,
    ApiJson(body): ApiJson<ResetPasswordBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    auth.set_password(&body.email, body.password, &body.token)
        .await?;
    Ok(ok())
}
