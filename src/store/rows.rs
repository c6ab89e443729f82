//! Row-to-model mapping shared by both backends.
//!
//! The rows of the shared statements (`sql`) carry the same columns on both backends; the one
//! storage difference is how a UUID is kept (text on SQLite, a native `uuid` on PostgreSQL),
//! which each backend answers by implementing [`UuidColumns`] for its row type. Everything else
//! a row holds decodes alike, so the models are built here once.

use std::collections::BTreeMap;
use std::net::IpAddr;

use sqlx::{ColumnIndex, Decode, Row, Type};
use uuid::Uuid;

use super::{
    AuditEvent, FeedKind, Invitation, PasswordReset, Revocation, Role, Session, SessionId,
    StoreError, StoreResult, User, UserId,
};

/// The backend's reading of a UUID column.
pub(super) trait UuidColumns {
    fn uuid(&self, column: &str) -> StoreResult<Uuid>;
    fn opt_uuid(&self, column: &str) -> StoreResult<Option<Uuid>>;
}

/// Typed column reads, by name. Named methods rather than one generic `get::<T>` because a
/// generic function over the row type could not name the decoding bounds of each `T` without
/// repeating them at every use; the blanket impl below states them once.
pub(super) trait Columns: UuidColumns {
    fn text(&self, column: &str) -> StoreResult<String>;
    fn opt_text(&self, column: &str) -> StoreResult<Option<String>>;
    fn int(&self, column: &str) -> StoreResult<i64>;
    fn opt_int(&self, column: &str) -> StoreResult<Option<i64>>;
    fn flag(&self, column: &str) -> StoreResult<bool>;
}

impl<R> Columns for R
where
    R: Row + UuidColumns,
    for<'a> &'a str: ColumnIndex<R>,
    String: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    i64: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    bool: for<'r> Decode<'r, R::Database> + Type<R::Database>,
{
    fn text(&self, column: &str) -> StoreResult<String> {
        Ok(self.try_get(column)?)
    }

    fn opt_text(&self, column: &str) -> StoreResult<Option<String>> {
        Ok(self.try_get(column)?)
    }

    fn int(&self, column: &str) -> StoreResult<i64> {
        Ok(self.try_get(column)?)
    }

    fn opt_int(&self, column: &str) -> StoreResult<Option<i64>> {
        Ok(self.try_get(column)?)
    }

    fn flag(&self, column: &str) -> StoreResult<bool> {
        Ok(self.try_get(column)?)
    }
}

pub(super) fn user_from_row(row: &impl Columns) -> StoreResult<User> {
    let role = row.text("role")?;
    let nonce = row.opt_text("invitation_nonce")?;
    let expires_at = row.opt_int("invitation_expires_at")?;
    // PostgreSQL's CHECK keeps the two together; SQLite's schema cannot, so this is the guard
    // there.
    let invitation = match (nonce, expires_at) {
        (Some(nonce), Some(expires_at)) => Some(Invitation { nonce, expires_at }),
        (None, None) => None,
        (nonce, expires_at) => {
            return Err(StoreError::Corrupt(format!(
                "invitation_nonce (set: {}) and invitation_expires_at ({expires_at:?}) \
                 must be set together",
                nonce.is_some()
            )));
        }
    };
    Ok(User {
        id: UserId(row.uuid("id")?),
        email: row.text("email")?,
        password_hash: row.opt_text("password_hash")?,
        role: Role::parse(&role)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown role {role:?}")))?,
        disabled: row.flag("disabled")?,
        deleted: row.flag("deleted")?,
        sso_enabled: row.flag("sso_enabled")?,
        invitation_pending: row.flag("invitation_pending")?,
        invitation,
        created: row.int("created")?,
        last_login: row.opt_int("last_login")?,
    })
}

pub(super) fn password_reset_from_row(row: &impl Columns) -> StoreResult<PasswordReset> {
    Ok(PasswordReset {
        digest: row.text("digest")?,
        user_id: UserId(row.uuid("user_id")?),
        created: row.int("created")?,
        expires_at: row.int("expires_at")?,
        used_at: row.opt_int("used_at")?,
    })
}

pub(super) fn session_from_row(row: &impl Columns) -> StoreResult<Session> {
    Ok(Session {
        id: SessionId(row.uuid("id")?),
        user_id: UserId(row.uuid("user_id")?),
        created: row.int("created")?,
        expires_at: row.int("expires_at")?,
        revoked_at: row.opt_int("revoked_at")?,
        current_jti: row.uuid("current_jti")?,
        refresh_count: row.int("refresh_count")?,
        last_refresh_at: row.opt_int("last_refresh_at")?,
    })
}

pub(super) fn revocation_from_row(row: &impl Columns) -> StoreResult<Revocation> {
    Ok(Revocation {
        seq: row.int("seq")?,
        session_id: SessionId(row.uuid("session_id")?),
        kind: if row.flag("identity_changed")? {
            FeedKind::IdentityChanged
        } else {
            FeedKind::Ended
        },
    })
}

fn audit_event_from_row(row: &impl Columns) -> StoreResult<AuditEvent> {
    Ok(AuditEvent {
        at: row.int("at")?,
        kind: row.text("kind")?,
        user_id: row.opt_uuid("user_id")?.map(UserId),
        email: row.opt_text("email")?,
        client_ip: ip_from_text(row.opt_text("client_ip")?)?,
        request_id: row.opt_text("request_id")?,
        detail: detail_from_json(&row.text("detail")?)?,
    })
}

/// Audit records from rows selected newest first (the query's LIMIT keeps the newest), in the
/// oldest-first order [`super::Store::audit_events`] returns.
pub(super) fn audit_events_oldest_first(rows: &[impl Columns]) -> StoreResult<Vec<AuditEvent>> {
    let mut events = rows
        .iter()
        .map(audit_event_from_row)
        .collect::<StoreResult<Vec<_>>>()?;
    events.reverse();
    Ok(events)
}

fn detail_from_json(text: &str) -> StoreResult<BTreeMap<String, String>> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("audit detail: {e}")))
}

fn ip_from_text(text: Option<String>) -> StoreResult<Option<IpAddr>> {
    text.map(|t| {
        t.parse()
            .map_err(|_| StoreError::Corrupt(format!("audit client_ip {t:?}")))
    })
    .transpose()
}
