//! The one token check of both planes: whoever vouches for tokens in this mode — the gateway
//! itself (local mode) or the Meiro backend asked through introspection (upstream mode) —
//! behind one `check(&HeaderMap)`, so the data plane neither finds the token nor classifies
//! failures itself.

use std::sync::Arc;

use http::HeaderMap;

use super::cache::Grant;
use super::introspect::{IntrospectError, Introspector};
use super::{Auth, AuthError};
use crate::request_id;

/// Who checks tokens.
pub enum Validator {
    /// Local mode: this gateway's own tokens, verified and looked up by [`Auth`].
    Local(Arc<Auth>),
    /// Upstream mode: the backend is asked (cached). Shared, so a reload that keeps the
    /// introspection backend keeps the answer cache too.
    Introspect(Arc<Introspector>),
}

/// Why a request's token grants nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    Missing,
    /// Forged, expired, revoked, or refused by the backend.
    Invalid,
    /// Nobody could say (store or backend unreachable): not the client's fault.
    Unavailable,
}

impl Validator {
    /// What the request's token grants, or why it grants nothing (counted in the token
    /// check metrics; an unavailable verdict is logged with the request's id).
    pub async fn check(&self, headers: &HeaderMap) -> Result<Grant, Denial> {
        match self {
            Validator::Local(auth) => auth.check(headers).await.map_err(|e| match e {
                AuthError::MissingToken => Denial::Missing,
                AuthError::Internal(_) | AuthError::Store(_) => {
                    tracing::error!(error = %e, request_id = request_id::field(headers), "token validation failed");
                    Denial::Unavailable
                }
                _ => Denial::Invalid,
            }),
            Validator::Introspect(introspector) => match introspector.check(headers).await {
                Ok(Some(grant)) => Ok(grant),
                Ok(None) => Err(Denial::Missing),
                Err(IntrospectError::Invalid) => Err(Denial::Invalid),
                Err(IntrospectError::Unavailable(reason)) => {
                    tracing::warn!(%reason, request_id = request_id::field(headers), "token introspection failed");
                    Err(Denial::Unavailable)
                }
            },
        }
    }

    /// Entries of the token cache (`/metrics`).
    pub async fn cache_entries(&self) -> u64 {
        match self {
            Validator::Local(auth) => auth.cache().entry_count().await,
            Validator::Introspect(introspector) => introspector.cache_entries().await,
        }
    }
}
