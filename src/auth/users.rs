//! User administration: the Users API of local mode and the `users` command line run the same
//! operations. Each is one store change (with the sessions it ends or updates, see
//! [`Store::change_user`]) and one audit record naming the acting user; a running gateway also
//! applies the change to its own cache at once, the other replicas follow the feed.

use crate::auth::audit::{AuditKind, Caller, Entry};
use crate::auth::cache::LocalIdentity;
use crate::auth::{Auth, AuthError, normalize_email};
use crate::store::{
    ChangeRefused, ChangedUser, NewUser, Role, Store, StoreError, UnixTime, User, UserChanges,
    UserId, UserPage,
};

/// Who makes a change: a user of the API, or the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    User(UserId),
    CommandLine,
}

impl Actor {
    /// The audit record's `actor`.
    fn name(self) -> String {
        match self {
            Actor::User(id) => id.to_string(),
            Actor::CommandLine => "cli".to_owned(),
        }
    }
}

/// A user to create (`POST /users`, `POST /users/create_or_restore`, `users add`), the
/// password already checked and hashed by the caller.
pub struct NewAccount {
    /// Lower-cased and checked with [`valid_email`].
    pub email: String,
    pub password_hash: Option<String>,
    pub role: Role,
    pub sso_enabled: bool,
}

/// The address as stored (trimmed, lower-cased), if it is one the mail path can deliver to.
pub fn valid_email(email: &str) -> Result<String, AuthError> {
    let email = normalize_email(email);
    crate::email::parse(&email)?;
    Ok(email)
}

/// Creates an active user; [`AuthError::UserExists`] if the address is taken (by an active,
/// pending or deleted user).
pub async fn create(
    store: &dyn Store,
    account: NewAccount,
    actor: Actor,
    caller: &Caller,
    at: UnixTime,
) -> Result<(User, Entry), AuthError> {
    let created = store
        .create_user(NewUser {
            email: account.email,
            password_hash: account.password_hash,
            role: account.role,
            invitation_pending: false,
            invitation: None,
            sso_enabled: account.sso_enabled,
            created: at,
        })
        .await;
    let user = match created {
        Ok(user) => user,
        Err(StoreError::DuplicateEmail) => return Err(AuthError::UserExists),
        Err(e) => return Err(e.into()),
    };
    let entry = Entry::new(AuditKind::UserCreated, at, caller)
        .user(&user)
        .detail("actor", actor.name())
        .detail("role", user.role.as_str());
    Ok((user, entry))
}

/// Changes a user (see [`Store::change_user`]) and describes it for the audit trail.
pub async fn change(
    store: &dyn Store,
    id: UserId,
    changes: &UserChanges,
    actor: Actor,
    caller: &Caller,
    at: UnixTime,
) -> Result<(ChangedUser, Entry), AuthError> {
    let changed = store
        .change_user(id, changes, at)
        .await?
        .map_err(|refused| match refused {
            ChangeRefused::NotFound => AuthError::NotFound,
            ChangeRefused::LastAdmin => AuthError::LastAdmin,
            ChangeRefused::DuplicateEmail => AuthError::UserExists,
        })?;
    let entry = change_entry(&changed, actor, caller, at);
    Ok((changed, entry))
}

/// `user_deleted`, `user_restored`, `user_disabled`, `user_enabled` for those changes alone,
/// else `user_modified` with the fields that changed (names, never values, but the role and
/// the previous address).
fn change_entry(changed: &ChangedUser, actor: Actor, caller: &Caller, at: UnixTime) -> Entry {
    let (before, after) = (&changed.before, &changed.user);
    let mut fields = Vec::new();
    if before.email != after.email {
        fields.push("email");
    }
    if before.password_hash != after.password_hash {
        fields.push("password");
    }
    if before.sso_enabled != after.sso_enabled {
        fields.push("sso_enabled");
    }
    if before.role != after.role {
        fields.push("role");
    }
    if before.disabled != after.disabled {
        fields.push("disabled");
    }
    let kind = match (before.deleted, after.deleted, fields.as_slice()) {
        (false, true, _) => AuditKind::UserDeleted,
        (true, false, _) => AuditKind::UserRestored,
        (_, _, ["disabled"]) if after.disabled => AuditKind::UserDisabled,
        (_, _, ["disabled"]) => AuditKind::UserEnabled,
        (_, _, ["password"]) if actor == Actor::User(after.id) => AuditKind::PasswordChanged,
        _ => AuditKind::UserModified,
    };
    let mut entry = Entry::new(kind, at, caller)
        .user(after)
        .detail("actor", actor.name())
        .detail("sessions_ended", changed.ended.len().to_string());
    if !fields.is_empty() {
        entry = entry.detail("changed", fields.join(","));
    }
    if before.role != after.role {
        entry = entry.detail("role", after.role.as_str());
    }
    if before.email != after.email {
        entry = entry.detail("previous_email", before.email.clone());
    }
    entry
}

/// What `PATCH /users/{user_id}` asks for: the contract's `User modify`.
#[derive(Default)]
pub struct Modification {
    pub email: Option<String>,
    pub password: Option<String>,
    pub sso_enabled: Option<bool>,
    pub role: Option<Role>,
    pub disabled: Option<bool>,
}

/// `POST /users` and `POST /users/create_or_restore`: who to create, password in clear.
pub struct AccountRequest {
    pub email: String,
    pub password: String,
    pub sso_enabled: bool,
    pub role: Role,
}

impl Auth {
    /// A page of `GET /users` or `GET /users/trash`.
    pub async fn users_page(&self, page: &UserPage) -> Result<Vec<User>, AuthError> {
        Ok(self.store.users_page(page).await?)
    }

    /// `POST /users`: an active user who can log in at once.
    pub async fn create_account(
        &self,
        admin: &LocalIdentity,
        request: AccountRequest,
        caller: &Caller,
    ) -> Result<User, AuthError> {
        let account = self.new_account(request).await?;
        let at = self.clock.now();
        let actor = Actor::User(admin.user_id);
        let (user, entry) = create(self.store.as_ref(), account, actor, caller, at).await?;
        self.audit.record(entry);
        Ok(user)
    }

    /// `POST /users/create_or_restore`: a user in the trash with this address comes back
    /// (active, with the new password, role and `sso_enabled`), else one is created. An
    /// active or pending user with the address is [`AuthError::UserExists`].
    pub async fn create_or_restore(
        &self,
        admin: &LocalIdentity,
        request: AccountRequest,
        caller: &Caller,
    ) -> Result<User, AuthError> {
        let account = self.new_account(request).await?;
        let actor = Actor::User(admin.user_id);
        let at = self.clock.now();
        let Some(existing) = self.store.user_by_email(&account.email).await? else {
            let (user, entry) = create(self.store.as_ref(), account, actor, caller, at).await?;
            self.audit.record(entry);
            return Ok(user);
        };
        if !existing.deleted {
            return Err(AuthError::UserExists);
        }
        let restore = UserChanges {
            password_hash: account.password_hash,
            sso_enabled: Some(account.sso_enabled),
            role: Some(account.role),
            disabled: Some(false),
            deleted: Some(false),
            ..UserChanges::default()
        };
        // Restored by someone else meanwhile: the address is now an active user's.
        let restored = match self
            .apply_change(existing.id, &restore, actor, caller)
            .await
        {
            Err(AuthError::NotFound) => Err(AuthError::UserExists),
            other => other,
        }?;
        Ok(restored)
    }

    /// `PATCH /users/{user_id}`.
    pub async fn modify_user(
        &self,
        admin: &LocalIdentity,
        id: UserId,
        modification: Modification,
        caller: &Caller,
    ) -> Result<User, AuthError> {
        let current = self.user(id).await?;
        if current.deleted {
            return Err(AuthError::NotFound);
        }
        let email = modification.email.as_deref().map(valid_email).transpose()?;
        let password_hash = match modification.password {
            Some(password) => {
                let email = email.as_deref().unwrap_or(&current.email);
                self.check_password_policy(&password, email)?;
                Some(self.passwords.hash(password).await?)
            }
            None => None,
        };
        let changes = UserChanges {
            email,
            password_hash,
            sso_enabled: modification.sso_enabled,
            role: modification.role,
            disabled: modification.disabled,
            ..UserChanges::default()
        };
        self.apply_change(id, &changes, Actor::User(admin.user_id), caller)
            .await
    }

    /// `DELETE /users/{user_id}`: to the trash, every session ended.
    pub async fn delete_user(
        &self,
        admin: &LocalIdentity,
        id: UserId,
        caller: &Caller,
    ) -> Result<User, AuthError> {
        let changes = UserChanges {
            deleted: Some(true),
            ..UserChanges::default()
        };
        self.apply_change(id, &changes, Actor::User(admin.user_id), caller)
            .await
    }

    /// `POST /users/{user_id}/change_password`: the caller's own password (the API has made
    /// sure the path names them), given their current one (wrong ones count against the login
    /// limit of the account). Every other session of the user ends; the caller's stays.
    pub async fn change_password(
        &self,
        caller_identity: &LocalIdentity,
        old_password: String,
        new_password: String,
        caller: &Caller,
    ) -> Result<User, AuthError> {
        let id = caller_identity.user_id;
        let user = self.user(id).await?;
        self.check_password_policy(&new_password, &user.email)?;
        let now = self.clock.now();
        let attempt = self
            .login_throttle
            .begin(&user.email, caller.client_ip, now)
            .await?;
        let verified = self
            .passwords
            .verify(old_password, user.password_hash.clone())
            .await?;
        if !verified {
            attempt.keep();
            self.audit.record(
                Entry::new(AuditKind::PasswordChangeFailed, now, caller)
                    .user(&user)
                    .detail("reason", "wrong_password"),
            );
            return Err(AuthError::WrongPassword);
        }
        attempt.succeeded().await;
        let changes = UserChanges {
            password_hash: Some(self.passwords.hash(new_password).await?),
            keep_session: Some(caller_identity.session_id),
            ..UserChanges::default()
        };
        self.apply_change(id, &changes, Actor::User(id), caller)
            .await
    }

    /// The new user of a create request: a deliverable address, a password that passes the
    /// policy, hashed.
    async fn new_account(&self, request: AccountRequest) -> Result<NewAccount, AuthError> {
        let email = valid_email(&request.email)?;
        self.check_password_policy(&request.password, &email)?;
        Ok(NewAccount {
            email,
            password_hash: Some(self.passwords.hash(request.password).await?),
            role: request.role,
            sso_enabled: request.sso_enabled,
        })
    }

    /// Makes the change in the store, then in this replica's cache (the others follow the
    /// feed), and records it.
    async fn apply_change(
        &self,
        id: UserId,
        changes: &UserChanges,
        actor: Actor,
        caller: &Caller,
    ) -> Result<User, AuthError> {
        let now = self.clock.now();
        let (changed, entry) = change(self.store.as_ref(), id, changes, actor, caller, now).await?;
        for session in &changed.ended {
            self.cache.revoke_session(*session);
        }
        for session in &changed.updated {
            self.cache.refresh_session(*session);
        }
        self.metrics
            .revocations_sent
            .inc_by(u64::try_from(changed.ended.len()).unwrap_or(u64::MAX));
        self.audit.record(entry);
        Ok(changed.user)
    }
}
