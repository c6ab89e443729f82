//! `GET /users` and `GET /users/trash`: a page of users, ordered and paged by the query.

use std::sync::Arc;

use axum::Json;
use axum::extract::{RawQuery, State};
use serde::Serialize;

use super::admin::Admin;
use super::error::ApiError;
use super::users::UserBody;
use crate::auth::Auth;
use crate::store::{UserOrder, UserPage};

/// `limit` when the query has none (Meiro's default).
const DEFAULT_LIMIT: i64 = 20;
/// The largest page: a bigger one would let one request read the whole table.
pub const MAX_LIMIT: i64 = 100;
/// Far beyond any user count; keeps the offset a plain integer on both databases.
const MAX_OFFSET: i64 = 1_000_000_000;

/// The contract's `UserList`.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = UserList)]
pub struct UserListBody {
    users: Vec<UserBody>,
    selection_settings: SelectionSettings,
}

/// The paging and order a list was read with (defaults filled in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SelectionSettings {
    limit: i64,
    offset: i64,
    /// `id`, `email` or `created`.
    order_by: &'static str,
    /// `ASC` or `DESC`.
    order_dir: &'static str,
}

impl SelectionSettings {
    fn page(&self, trash: bool) -> UserPage {
        UserPage {
            trash,
            order: match self.order_by {
                "email" => UserOrder::Email,
                "created" => UserOrder::Created,
                _ => UserOrder::Id,
            },
            descending: self.order_dir == "DESC",
            limit: self.limit,
            offset: self.offset,
        }
    }
}

/// `GET /users`: users not in the trash (pending invitations included).
pub async fn list_users(
    State(auth): State<Arc<Auth>>,
    Admin(_): Admin,
    RawQuery(query): RawQuery,
) -> Result<Json<UserListBody>, ApiError> {
    list(&auth, query.as_deref(), false).await
}

/// `GET /users/trash`: the deleted users.
pub async fn list_trash(
    State(auth): State<Arc<Auth>>,
    Admin(_): Admin,
    RawQuery(query): RawQuery,
) -> Result<Json<UserListBody>, ApiError> {
    list(&auth, query.as_deref(), true).await
}

async fn list(
    auth: &Auth,
    query: Option<&str>,
    trash: bool,
) -> Result<Json<UserListBody>, ApiError> {
    let settings = selection(query.unwrap_or(""))?;
    let users = auth.users_page(&settings.page(trash)).await?;
    Ok(Json(UserListBody {
        users: users.iter().map(UserBody::from).collect(),
        selection_settings: settings,
    }))
}

/// The query's paging and order; other parameters are ignored. A value out of range, or a
/// parameter given twice, is a 400 that names the parameter (never its value).
fn selection(query: &str) -> Result<SelectionSettings, ApiError> {
    let mut settings = SelectionSettings {
        limit: DEFAULT_LIMIT,
        offset: 0,
        order_by: "id",
        order_dir: "ASC",
    };
    let mut seen: Vec<&'static str> = Vec::new();
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        let (name, parsed): (&'static str, Option<()>) = match &*name {
            "limit" => (
                "limit",
                integer(&value, 1, MAX_LIMIT).map(|n| settings.limit = n),
            ),
            "offset" => (
                "offset",
                integer(&value, 0, MAX_OFFSET).map(|n| settings.offset = n),
            ),
            "order_by" => (
                "order_by",
                ["id", "email", "created"]
                    .into_iter()
                    .find(|o| *o == value)
                    .map(|o| settings.order_by = o),
            ),
            "order_dir" => (
                "order_dir",
                ["ASC", "DESC"]
                    .into_iter()
                    .find(|d| d.eq_ignore_ascii_case(&value))
                    .map(|d| settings.order_dir = d),
            ),
            _ => continue,
        };
        if seen.contains(&name) {
            return Err(ApiError::BadRequest(format!(
                "{name} is given more than once"
            )));
        }
        seen.push(name);
        if parsed.is_none() {
            return Err(ApiError::BadRequest(expected(name).into()));
        }
    }
    Ok(settings)
}

fn expected(name: &str) -> &'static str {
    match name {
        "limit" => "limit must be an integer from 1 to 100",
        "offset" => "offset must be a non-negative integer",
        "order_by" => "order_by must be id, email or created",
        _ => "order_dir must be ASC or DESC",
    }
}

/// Digits only (no sign, no spaces), within `min..=max`.
fn integer(text: &str, min: i64, max: i64) -> Option<i64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|n| (min..=max).contains(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(query: &str) -> String {
        match selection(query) {
            Err(ApiError::BadRequest(message)) => message,
            other => panic!("{query}: {other:?}"),
        }
    }

    #[test]
    fn defaults_and_every_setting() {
        let default = selection("").unwrap();
        assert_eq!(
            (
                default.limit,
                default.offset,
                default.order_by,
                default.order_dir
            ),
            (20, 0, "id", "ASC")
        );
        let all = selection("limit=100&offset=40&order_by=email&order_dir=desc&x=1").unwrap();
        assert_eq!(
            (all.limit, all.offset, all.order_by, all.order_dir),
            (100, 40, "email", "DESC")
        );
        let page = all.page(true);
        assert!(page.trash && page.descending && page.order == UserOrder::Email);
        assert_eq!(
            selection("order_by=created").unwrap().page(false).order,
            UserOrder::Created
        );
    }

    #[test]
    fn bad_values_name_the_parameter_not_the_value() {
        for (query, parameter) in [
            ("limit=0", "limit"),
            ("limit=101", "limit"),
            ("limit=-1", "limit"),
            ("limit=%2B5", "limit"),
            ("limit=1e2", "limit"),
            ("limit=99999999999999999999", "limit"),
            ("offset=-1", "offset"),
            ("offset=", "offset"),
            ("order_by=password_hash", "order_by"),
            ("order_by=ID", "order_by"),
            ("order_dir=sideways", "order_dir"),
            ("limit=5&limit=6", "limit"),
        ] {
            let message = message(query);
            assert!(message.starts_with(parameter), "{query}: {message}");
            assert!(!message.contains("password_hash") && !message.contains("sideways"));
        }
    }
}
