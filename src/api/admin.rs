//! [`Admin`], the extractor for auth API routes only an administrator may call: the same token
//! check as the data plane (`auth::check`), then a role check.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::error::ApiError;
use crate::auth::cache::LocalIdentity;
use crate::auth::{Auth, AuthError};
use crate::store::Role;

/// An authenticated admin: no token → 401, a non-admin → 403.
pub struct Admin(pub LocalIdentity);

impl FromRequestParts<Arc<Auth>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, auth: &Arc<Auth>) -> Result<Self, ApiError> {
        let grant = auth.check(&parts.headers).await?;
        match grant.local() {
            Some(identity) if identity.role == Role::Admin => Ok(Admin(identity)),
            _ => Err(AuthError::Forbidden.into()),
        }
    }
}
