//! `/users/okta_login`: an authorization code from the Okta redirect → the same token and
//! cookie as a credentials login.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;

use super::error::{ApiError, ApiJson};
use super::login::token_response;
use crate::auth::Auth;
use crate::auth::audit::Caller;

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = OktaLogin)]
pub struct OktaLoginBody {
    code: String,
}

pub async fn okta_login(
    State(auth): State<Arc<Auth>>,
    caller: Caller,
    ApiJson(body): ApiJson<OktaLoginBody>,
) -> Result<Response, ApiError> {
    let issued = auth.okta_login(&body.code, &caller).await?;
    Ok(token_response(auth.settings(), issued))
}
