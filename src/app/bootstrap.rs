//! The first-admin rule: on the first start (a store with no user at all) the `[bootstrap]`
//! admin is created, so a fresh gateway can be logged into; later starts never touch users.

use super::StartError;
use crate::auth::passwords::hash_standalone;
use crate::auth::{Clock, normalize_email};
use crate::config::Config;
use crate::store::{NewUser, Role, Store};

/// Creates the `[bootstrap]` admin when the store has no user at all (first start only).
pub(super) async fn bootstrap_admin(
    config: &Config,
    store: &dyn Store,
    clock: &Clock,
) -> Result<(), StartError> {
    let b = &config.bootstrap;
    if b.admin_email.is_empty() || store.count_users().await? > 0 {
        return Ok(());
    }
    let hash = hash_standalone(b.admin_password.expose().to_owned())
        .await
        .map_err(|e| StartError::Bootstrap(e.to_string()))?;
    let user = store
        .create_user(NewUser {
            email: normalize_email(&b.admin_email),
            password_hash: Some(hash),
            role: Role::Admin,
            invitation_pending: false,
            invitation: None,
            sso_enabled: false,
            created: clock.now(),
        })
        .await?;
    tracing::info!(user = %user.id, email = %user.email, "bootstrap admin created");
    Ok(())
}
