//! The conformance checks of user administration ([`Store::users_page`],
//! [`Store::change_user`]), part of `suite` (which re-exports them): the same on every backend.

use std::sync::Arc;

use uuid::Uuid;

use super::suite::{T0, new_user};
use super::{
    ChangeRefused, ChangedUser, FeedKind, Invitation, NewUser, Role, Session, SessionId, Store,
    UnixTime, User, UserChanges, UserId, UserOrder, UserPage,
};

/// When the checks' changes happen: their sessions are open then.
const AT: UnixTime = T0 + 100;

fn email(tag: &str) -> String {
    format!("{tag}-{}@example.test", Uuid::new_v4())
}

async fn create(store: &dyn Store, user: NewUser) -> User {
    store.create_user(user).await.expect("create_user")
}

async fn admin(store: &dyn Store, tag: &str) -> User {
    create(
        store,
        NewUser {
            role: Role::Admin,
            ..new_user(&email(tag), T0)
        },
    )
    .await
}

async fn session_of(store: &dyn Store, user: UserId) -> Session {
    let session = Session {
        id: SessionId::new_random(),
        user_id: user,
        created: T0,
        expires_at: T0 + 86_400,
        revoked_at: None,
        current_jti: Uuid::new_v4(),
        refresh_count: 0,
        last_refresh_at: None,
    };
    store
        .create_session(&session)
        .await
        .expect("create_session");
    session
}

async fn change(
    store: &dyn Store,
    id: UserId,
    changes: UserChanges,
) -> Result<ChangedUser, ChangeRefused> {
    store
        .change_user(id, &changes, AT)
        .await
        .expect("change_user")
}

async fn revoked_at(store: &dyn Store, id: SessionId) -> Option<UnixTime> {
    store
        .session(id)
        .await
        .expect("session")
        .expect("exists")
        .revoked_at
}

async fn feed_since(store: &dyn Store, cursor: i64) -> Vec<(SessionId, FeedKind)> {
    let entries = store.revocations_since(cursor, 10_000).await.expect("feed");
    entries.iter().map(|r| (r.session_id, r.kind)).collect()
}

/// A first page of each list in each order: the shapes whose plans the backends' tests read.
pub(crate) fn every_page_shape() -> Vec<UserPage> {
    let mut pages = Vec::new();
    for order in [UserOrder::Id, UserOrder::Email, UserOrder::Created] {
        for descending in [false, true] {
            for trash in [false, true] {
                pages.push(UserPage {
                    trash,
                    order,
                    descending,
                    limit: 20,
                    offset: 40,
                });
            }
        }
    }
    pages
}

/// Every page of one list in one order, `limit` at a time.
async fn every_page(
    store: &dyn Store,
    trash: bool,
    order: UserOrder,
    descending: bool,
) -> Vec<User> {
    let mut all = Vec::new();
    for offset in (0..).step_by(3) {
        let page = UserPage {
            trash,
            order,
            descending,
            limit: 3,
            offset,
        };
        let users = store.users_page(&page).await.expect("users_page");
        assert!(users.len() <= 3, "a page holds at most `limit`");
        let last = users.len() < 3;
        all.extend(users);
        if last {
            return all;
        }
    }
    unreachable!()
}

/// Pages in every order are the list sorted by that order's key then id, whole and without a
/// user twice; the trash holds exactly the deleted users, and a pending user is listed.
pub async fn users_pages_are_stable_and_complete(store: &dyn Store) {
    // Equal `created` on purpose: only the id can order those.
    let mut mine = Vec::new();
    for i in 0..7 {
        let created = T0 + i64::from(i % 2);
        mine.push(
            create(store, new_user(&email(&format!("page{i}")), created))
                .await
                .id,
        );
    }
    let pending = create(
        store,
        NewUser {
            invitation_pending: true,
            ..new_user(&email("page-pending"), T0)
        },
    )
    .await;
    let deleted = [mine[1], mine[4]];
    for id in deleted {
        let trash = UserChanges {
            deleted: Some(true),
            ..UserChanges::default()
        };
        change(store, id, trash).await.expect("deleted");
    }
    let everyone = store.list_users().await.expect("list_users");
    for order in [UserOrder::Id, UserOrder::Email, UserOrder::Created] {
        for descending in [false, true] {
            for trash in [false, true] {
                let mut expected: Vec<User> = everyone
                    .iter()
                    .filter(|u| u.deleted == trash)
                    .cloned()
                    .collect();
                expected.sort_by(|a, b| {
                    let by_key = match order {
                        UserOrder::Id => std::cmp::Ordering::Equal,
                        UserOrder::Email => a.email.as_bytes().cmp(b.email.as_bytes()),
                        UserOrder::Created => a.created.cmp(&b.created),
                    };
                    by_key.then(a.id.0.cmp(&b.id.0))
                });
                if descending {
                    expected.reverse();
                }
                let paged = every_page(store, trash, order, descending).await;
                let ids = |users: &[User]| users.iter().map(|u| u.id).collect::<Vec<_>>();
                assert_eq!(
                    ids(&paged),
                    ids(&expected),
                    "{order:?} descending={descending} trash={trash}"
                );
            }
        }
    }
    let trash = every_page(store, true, UserOrder::Id, false).await;
    for id in deleted {
        assert!(
            trash.iter().any(|u| u.id == id),
            "deleted users are in the trash"
        );
    }
    let live = every_page(store, false, UserOrder::Id, false).await;
    assert!(
        live.iter().any(|u| u.id == pending.id),
        "pending users are listed"
    );
    assert!(!live.iter().any(|u| deleted.contains(&u.id)));
}

/// What a change ends, updates and refuses: a new email or role feeds the open sessions as
/// updates; a new password ends all but the kept one; SSO-only, disabling and deleting end
/// them all; the trash takes only a restore; a taken email changes nothing.
pub async fn change_user_ends_or_updates_sessions(store: &dyn Store) {
    // Another active admin, so demoting this one is allowed.
    admin(store, "keeper").await;
    let user = admin(store, "change").await;
    let (a, b) = (
        session_of(store, user.id).await,
        session_of(store, user.id).await,
    );

    let cursor = store.revocation_cursor().await.expect("cursor");
    let new_email = email("changed");
    let changed = change(
        store,
        user.id,
        UserChanges {
            email: Some(new_email.clone()),
            role: Some(Role::User),
            ..UserChanges::default()
        },
    )
    .await
    .expect("changed");
    assert_eq!(
        (changed.user.email.as_str(), changed.user.role),
        (new_email.as_str(), Role::User)
    );
    assert_eq!(changed.before, user);
    assert!(changed.ended.is_empty());
    assert_eq!(
        crate::store::suite::sorted(&changed.updated),
        crate::store::suite::sorted(&[a.id, b.id])
    );
    assert_eq!(
        revoked_at(store, a.id).await,
        None,
        "an identity change keeps sessions"
    );
    let fed = feed_since(store, cursor).await;
    assert_eq!(fed.len(), 2);
    assert!(
        fed.iter()
            .all(|(_, kind)| *kind == FeedKind::IdentityChanged)
    );
    assert_eq!(
        store.user_by_id(user.id).await.unwrap().as_ref(),
        Some(&changed.user)
    );

    let taken = create(store, new_user(&email("taken"), T0)).await;
    let refused = change(
        store,
        user.id,
        UserChanges {
            email: Some(taken.email.to_uppercase()),
            sso_enabled: Some(true),
            ..UserChanges::default()
        },
    )
    .await;
    assert_eq!(refused.err(), Some(ChangeRefused::DuplicateEmail));
    assert_eq!(
        store.user_by_id(user.id).await.unwrap(),
        Some(changed.user.clone()),
        "nothing changed"
    );

    let cursor = store.revocation_cursor().await.expect("cursor");
    let password = UserChanges {
        password_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$bmV3$bmV3".into()),
        keep_session: Some(a.id),
        ..UserChanges::default()
    };
    let changed = change(store, user.id, password)
        .await
        .expect("new password");
    assert_eq!(changed.ended, vec![b.id], "all but the kept session end");
    assert_eq!(revoked_at(store, a.id).await, None);
    assert_eq!(revoked_at(store, b.id).await, Some(AT));
    assert_eq!(
        feed_since(store, cursor).await,
        vec![(b.id, FeedKind::Ended)]
    );

    let sso = UserChanges {
        sso_enabled: Some(true),
        ..UserChanges::default()
    };
    let changed = change(store, user.id, sso.clone()).await.expect("sso only");
    assert_eq!(
        changed.ended,
        vec![a.id],
        "SSO-only ends the password sessions"
    );
    let again = change(store, user.id, sso).await.expect("unchanged");
    assert!(again.ended.is_empty() && again.updated.is_empty());

    let c = session_of(store, user.id).await;
    let delete = UserChanges {
        deleted: Some(true),
        ..UserChanges::default()
    };
    let deleted = change(store, user.id, delete.clone())
        .await
        .expect("deleted");
    assert!(deleted.user.deleted && deleted.ended == vec![c.id]);
    assert_eq!(
        change(store, user.id, delete).await.err(),
        Some(ChangeRefused::NotFound)
    );
    let disable = UserChanges {
        disabled: Some(true),
        ..UserChanges::default()
    };
    assert_eq!(
        change(store, user.id, disable.clone()).await.err(),
        Some(ChangeRefused::NotFound),
        "a user in the trash is changed only by a restore"
    );
    let restore = UserChanges {
        deleted: Some(false),
        ..UserChanges::default()
    };
    assert!(
        !change(store, user.id, restore.clone())
            .await
            .expect("restored")
            .user
            .deleted
    );
    assert_eq!(
        change(store, user.id, restore).await.err(),
        Some(ChangeRefused::NotFound)
    );
    let d = session_of(store, user.id).await;
    assert_eq!(
        change(store, user.id, disable)
            .await
            .expect("disabled")
            .ended,
        vec![d.id]
    );
    assert_eq!(
        change(store, UserId::new_random(), UserChanges::default())
            .await
            .err(),
        Some(ChangeRefused::NotFound)
    );

    // An admin-set password lets a pending user in: the invitation is spent.
    let invited = create(
        store,
        NewUser {
            invitation_pending: true,
            invitation: Some(Invitation {
                nonce: "pending-nonce".into(),
                expires_at: T0 + 3_600,
            }),
            ..new_user(&email("invited"), T0)
        },
    )
    .await;
    let set = UserChanges {
        password_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2V0$c2V0".into()),
        ..UserChanges::default()
    };
    let active = change(store, invited.id, set)
        .await
        .expect("password set")
        .user;
    assert!(active.is_active() && active.invitation.is_none());
}

/// The last active admin cannot be demoted, disabled or deleted; any other admin can.
pub async fn the_last_active_admin_remains(store: &dyn Store) {
    let first = admin(store, "first-admin").await;
    // Earlier checks (or runs) may have left active admins: disable them, so `first` is the
    // only one. Each is allowed, since `first` remains.
    for other in store.list_users().await.expect("list_users") {
        if other.is_active_admin() && other.id != first.id {
            let disable = UserChanges {
                disabled: Some(true),
                ..UserChanges::default()
            };
            change(store, other.id, disable)
                .await
                .expect("another admin remains");
        }
    }
    let removals = [
        UserChanges {
            role: Some(Role::User),
            ..UserChanges::default()
        },
        UserChanges {
            disabled: Some(true),
            ..UserChanges::default()
        },
        UserChanges {
            deleted: Some(true),
            ..UserChanges::default()
        },
    ];
    for removal in &removals {
        assert_eq!(
            change(store, first.id, removal.clone()).await.err(),
            Some(ChangeRefused::LastAdmin)
        );
    }
    assert!(
        fetch_admin(store, first.id).await.is_active_admin(),
        "unchanged"
    );
    // Other changes of the last admin are fine.
    let rename = UserChanges {
        email: Some(email("renamed-admin")),
        ..UserChanges::default()
    };
    change(store, first.id, rename).await.expect("renamed");

    let second = admin(store, "second-admin").await;
    for removal in &removals {
        change(store, first.id, removal.clone())
            .await
            .expect("the second admin remains");
        let undo = UserChanges {
            role: Some(Role::Admin),
            disabled: Some(false),
            deleted: removal.deleted.map(|_| false),
            ..UserChanges::default()
        };
        change(store, first.id, undo).await.expect("undone");
    }
    let demote = UserChanges {
        role: Some(Role::User),
        ..UserChanges::default()
    };
    change(store, second.id, demote.clone())
        .await
        .expect("first remains");
    assert_eq!(
        change(store, first.id, demote).await.err(),
        Some(ChangeRefused::LastAdmin)
    );
}

async fn fetch_admin(store: &dyn Store, id: UserId) -> User {
    store
        .user_by_id(id)
        .await
        .expect("user_by_id")
        .expect("exists")
}

/// Two admins demoting each other at the same moment (two replicas): one wins, the other is
/// refused, so an admin always remains.
pub async fn concurrent_demotions_leave_an_admin(store: Arc<dyn Store>) {
    for round in 0..5 {
        let a = admin(store.as_ref(), &format!("race-a{round}")).await;
        let b = admin(store.as_ref(), &format!("race-b{round}")).await;
        // The only active admins: everyone else is disabled.
        for other in store.list_users().await.expect("list_users") {
            if other.is_active_admin() && other.id != a.id && other.id != b.id {
                let disable = UserChanges {
                    disabled: Some(true),
                    ..UserChanges::default()
                };
                change(store.as_ref(), other.id, disable)
                    .await
                    .expect("disabled");
            }
        }
        let demote = |id: UserId| {
            let store = store.clone();
            async move {
                let changes = UserChanges {
                    role: Some(Role::User),
                    ..UserChanges::default()
                };
                store
                    .change_user(id, &changes, AT)
                    .await
                    .expect("change_user")
            }
        };
        let (first, second) = tokio::join!(demote(a.id), demote(b.id));
        let refused = [&first, &second]
            .iter()
            .filter(|r| r.as_ref().err() == Some(&ChangeRefused::LastAdmin))
            .count();
        assert_eq!(refused, 1, "round {round}: exactly one demotion is refused");
        let admins = [
            fetch_admin(store.as_ref(), a.id).await,
            fetch_admin(store.as_ref(), b.id).await,
        ];
        assert_eq!(admins.iter().filter(|u| u.is_active_admin()).count(), 1);
    }
}
