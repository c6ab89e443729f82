//! The audit trail: one [`AuditEvent`] per security-relevant action (logins and their failures,
//! refreshes, refresh reuse, logouts, Okta logins, invitations, password resets, mail the
//! queue could not deliver, users created, changed, enabled or disabled, deleted or restored,
//! password changes, key rotation), each with its time, user, client IP and request id, and never a
//! token, password or link secret. [`Audit::record`] writes it to the log under target `audit`
//! and persists it through the store (`meiro-gate audit tail` reads it back); records older
//! than `audit.retention` are pruned by the periodic store maintenance (`revocation::follow`).
//!
//! Persisting is queued, not awaited: the request that caused an event answers without waiting
//! for the audit row. A login already makes three store writes, and on SQLite every writer
//! queues behind one lock, so an awaited fourth write would sit on the login's p99 for nothing
//! the client needs. One writer task drains the queue in batches (one transaction each). A
//! failed write, or a full queue, is logged and never fails the request; the event's log line
//! is written synchronously either way, so the log stays complete.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use crate::request_id::RequestId;
use crate::store::{AuditEvent, SessionId, Store, UnixTime, User, UserId};

/// Events waiting for the writer; beyond this a burst is only logged (never blocks a request).
const QUEUE: usize = 4096;
/// Rows per write transaction.
const BATCH: usize = 256;

/// What happened. The names are what the log and the store say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditKind {
    LoginSucceeded,
    /// Credentials login refused; the reason is in `detail`, never in the response.
    LoginFailed,
    TokenRefreshed,
    /// A token refreshed twice: the session was ended.
    RefreshReused,
    Logout,
    OktaLogin,
    OktaLoginFailed,
    InvitationCreated,
    InvitationResent,
    InvitationAccepted,
    PasswordResetRequested,
    PasswordResetCompleted,
    /// An invitation or reset mail the queue dropped: refused permanently or undelivered
    /// for `mail.give_up_after`. Kind, recipient domain, reason and attempts; never the link.
    MailFailed,
    UserEnabled,
    UserDisabled,
    /// Created by an admin (`POST /users`, `users add`); `actor` names who.
    UserCreated,
    /// Changed by an admin; `changed` lists the fields (never their values).
    UserModified,
    /// Moved to the trash.
    UserDeleted,
    /// Back from the trash.
    UserRestored,
    /// The user changed their own password.
    PasswordChanged,
    /// A password change with the wrong current password.
    PasswordChangeFailed,
    KeyRotated,
}

impl AuditKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::LoginSucceeded => "login_succeeded",
            AuditKind::LoginFailed => "login_failed",
            AuditKind::TokenRefreshed => "token_refreshed",
            AuditKind::RefreshReused => "refresh_reused",
            AuditKind::Logout => "logout",
            AuditKind::OktaLogin => "okta_login",
            AuditKind::OktaLoginFailed => "okta_login_failed",
            AuditKind::InvitationCreated => "invitation_created",
            AuditKind::InvitationResent => "invitation_resent",
            AuditKind::InvitationAccepted => "invitation_accepted",
            AuditKind::PasswordResetRequested => "password_reset_requested",
            AuditKind::PasswordResetCompleted => "password_reset_completed",
            AuditKind::MailFailed => "mail_failed",
            AuditKind::UserEnabled => "user_enabled",
            AuditKind::UserDisabled => "user_disabled",
            AuditKind::UserCreated => "user_created",
            AuditKind::UserModified => "user_modified",
            AuditKind::UserDeleted => "user_deleted",
            AuditKind::UserRestored => "user_restored",
            AuditKind::PasswordChanged => "password_changed",
            AuditKind::PasswordChangeFailed => "password_change_failed",
            AuditKind::KeyRotated => "key_rotated",
        }
    }
}

/// Who asked: the connection's peer address (the gateway trusts no forwarded-for header) and
/// the request's id. Empty for the command line.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub client_ip: Option<IpAddr>,
    pub request_id: Option<RequestId>,
}

/// Builds one [`AuditEvent`].
#[derive(Debug, Clone)]
pub struct Entry(AuditEvent);

impl Entry {
    pub fn new(kind: AuditKind, at: UnixTime, caller: &Caller) -> Entry {
        Entry(AuditEvent {
            at,
            kind: kind.as_str().to_owned(),
            user_id: None,
            email: None,
            client_ip: caller.client_ip,
            request_id: caller.request_id.as_ref().map(|id| id.as_str().to_owned()),
            detail: BTreeMap::new(),
        })
    }

    /// The user it concerns (id and email).
    pub fn user(mut self, user: &User) -> Entry {
        self.0.user_id = Some(user.id);
        self.0.email = Some(user.email.clone());
        self
    }

    pub fn user_id(mut self, id: UserId) -> Entry {
        self.0.user_id = Some(id);
        self
    }

    /// A session's user and the session itself (refresh, reuse, logout).
    pub fn session(self, user: UserId, session: SessionId) -> Entry {
        self.user_id(user).detail("session", session.to_string())
    }

    /// An address that names no user (a failed login). Only something shaped like an address
    /// is kept: people type passwords into the email field, and that must not be recorded.
    pub fn claimed_email(mut self, email: &str) -> Entry {
        if crate::email::is_valid(email) {
            self.0.email = Some(email.to_owned());
        }
        self
    }

    /// A short, non-secret fact (a reason, the acting admin, a key id).
    pub fn detail(mut self, key: &str, value: impl Into<String>) -> Entry {
        self.0.detail.insert(key.to_owned(), value.into());
        self
    }

    pub fn into_event(self) -> AuditEvent {
        self.0
    }
}

/// The running audit trail of a gateway: logs each event and queues it for the store.
pub struct Audit {
    queue: mpsc::Sender<AuditEvent>,
    stop: Arc<Notify>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Audit {
    /// Spawns the writer.
    pub fn start(store: Arc<dyn Store>) -> Audit {
        let (queue, events) = mpsc::channel(QUEUE);
        let stop = Arc::new(Notify::new());
        let writer = tokio::spawn(write(store, events, stop.clone()));
        Audit {
            queue,
            stop,
            writer: Mutex::new(Some(writer)),
        }
    }

    /// Logs the event now and queues it for the store.
    pub fn record(&self, entry: Entry) {
        let event = entry.into_event();
        log(&event);
        if let Err(e) = self.queue.try_send(event) {
            tracing::error!(target: "audit", kind = %e.into_inner().kind, "audit queue full or closed; this event is in the log only");
        }
    }

    /// Writes what is queued and stops the writer; for shutdown, after the listeners drained.
    pub async fn close(&self) {
        self.stop.notify_one();
        let writer = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(writer) = writer {
            let _ = writer.await;
        }
    }
}

/// Logs and persists one event at once, for the command line (no writer task there). A failed
/// write is reported on stderr and does not fail the command, whose action already happened.
pub async fn record_now(store: &dyn Store, entry: Entry) {
    let event = entry.into_event();
    log(&event);
    if let Err(e) = store.append_audit(std::slice::from_ref(&event)).await {
        tracing::error!(target: "audit", error = %e, kind = %event.kind, "audit write failed; this event is in the log only");
    }
}

fn log(e: &AuditEvent) {
    let detail = (!e.detail.is_empty()).then(|| crate::store::detail_json(&e.detail));
    tracing::info!(
        target: "audit",
        kind = e.kind.as_str(),
        at = e.at,
        user = e.user_id.map(tracing::field::display),
        email = e.email.as_deref(),
        client_ip = e.client_ip.map(tracing::field::display),
        request_id = e.request_id.as_deref(),
        detail = detail.as_deref(),
    );
}

async fn write(store: Arc<dyn Store>, mut events: mpsc::Receiver<AuditEvent>, stop: Arc<Notify>) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            received = events.recv_many(&mut batch, BATCH) => {
                if received == 0 {
                    return;
                }
                persist(store.as_ref(), &mut batch).await;
            }
            () = stop.notified() => {
                // Whatever is still queued, then stop (a later event is logged as refused).
                events.close();
                while events.recv_many(&mut batch, BATCH).await > 0 {
                    persist(store.as_ref(), &mut batch).await;
                }
                return;
            }
        }
    }
}

async fn persist(store: &dyn Store, batch: &mut Vec<AuditEvent>) {
    if batch.is_empty() {
        return;
    }
    if let Err(e) = store.append_audit(batch).await {
        tracing::error!(target: "audit", error = %e, count = batch.len(), "audit write failed; these events are in the log only");
    }
    batch.clear();
}
