//! The contract's `User` JSON shape (ME fields plus ours), shared by the API and the CLI.

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::store::{Role, UnixTime, User, UserId};

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = User)]
pub struct UserBody {
    #[schema(value_type = String, format = "uuid")]
    pub id: UserId,
    pub email: String,
    pub deleted: bool,
    pub sso_enabled: bool,
    pub role: Role,
    pub disabled: bool,
    pub invitation_pending: bool,
    #[schema(format = DateTime, required = true)]
    pub last_login: Option<String>,
    #[schema(format = DateTime)]
    pub created: String,
}

impl From<&User> for UserBody {
    fn from(u: &User) -> Self {
        UserBody {
            id: u.id,
            email: u.email.clone(),
            deleted: u.deleted,
            sso_enabled: u.sso_enabled,
            role: u.role,
            disabled: u.disabled,
            invitation_pending: u.invitation_pending,
            last_login: u.last_login.map(rfc3339),
            created: rfc3339(u.created),
        }
    }
}

pub fn rfc3339(t: UnixTime) -> String {
    OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
