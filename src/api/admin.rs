//! The extractors of the auth API's callers: [`Signed`] for any logged-in user, [`Admin`] for
//! routes only an administrator may call — the same token check as the data plane
//! (`Auth::check`), then (for `Admin`) a role check.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::error::ApiError;
use crate::auth::cache::LocalIdentity;
use crate::auth::{Auth, AuthError};
use crate::store::Role;

/// A logged-in user, any role: no token, or one that is not valid → 401.
pub struct Signed(pub LocalIdentity);

impl FromRequestParts<Arc<Auth>> for Signed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, auth: &Arc<Auth>) -> Result<Self, ApiError> {
        let grant = auth.check(&parts.headers).await?;
        // Local mode's grants always name the local user; anything else vouches for no one here.
        let identity = grant.local().ok_or(AuthError::InvalidToken)?;
        Ok(Signed(identity))
    }
}

/// An authenticated admin: no token → 401, a non-admin → 403.
pub struct Admin(pub LocalIdentity);

impl FromRequestParts<Arc<Auth>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, auth: &Arc<Auth>) -> Result<Self, ApiError> {
        let Signed(identity) = Signed::from_request_parts(parts, auth).await?;
        match identity.role {
            Role::Admin => Ok(Admin(identity)),
            Role::User => Err(AuthError::Forbidden.into()),
        }
    }
}
