//! Outgoing e-mail (invitations, password resets): templates, a queue that delivers off the
//! request path with retries, and the transports behind it (SMTP via lettre, a file outbox,
//! an in-memory recorder for tests).

mod file;
#[cfg(test)]
mod memory;
mod queue;
mod smtp;
mod templates;

use std::sync::Arc;

use lettre::message::{Mailbox, MultiPart};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::{MailConfig, MailTransport};
use crate::telemetry::metrics::MailMetrics;

pub use file::FileTransport;
#[cfg(test)]
pub use memory::MemoryTransport;
pub use queue::RetryPolicy;
pub use smtp::{SmtpTransport, SmtpUrlError};
pub use templates::{Kind, TemplateError, Templates};

/// One rendered e-mail. The sender is the transport's (`mail.from`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Why a delivery attempt failed. `permanent`: retrying the same message cannot help (the
/// server refused it with a 5xx, the address is malformed); otherwise the queue retries.
/// `detail` is for logs: it never contains the message body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct SendError {
    pub permanent: bool,
    pub detail: String,
}

impl SendError {
    pub fn permanent(detail: impl Into<String>) -> Self {
        Self {
            permanent: true,
            detail: detail.into(),
        }
    }

    pub fn transient(detail: impl Into<String>) -> Self {
        Self {
            permanent: false,
            detail: detail.into(),
        }
    }
}

/// A message the queue dropped without delivering it. Only what may be recorded: the kind,
/// the recipient's domain and why — never the address, the link or the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undelivered {
    pub kind: Kind,
    pub recipient_domain: String,
    pub reason: DropReason,
    /// Delivery attempts made.
    pub attempts: u32,
}

/// Why a message was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Refused permanently: a 5xx from the server, or an address the rule refuses.
    Refused,
    /// Still failing transiently `mail.give_up_after` after it was queued.
    Expired,
}

impl DropReason {
    pub const ALL: [DropReason; 2] = [DropReason::Refused, DropReason::Expired];

    /// Stable name for logs, audit details and the `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Refused => "refused",
            DropReason::Expired => "expired",
        }
    }
}

/// What the sender of a message wants done if the queue drops it (it records an audit event);
/// called once, on the queue's worker, so it must not block. A message dropped because the
/// gateway shuts down is not reported: it was not refused, and the log counts it.
pub type OnUndelivered = Box<dyn FnOnce(Undelivered) + Send>;

/// Delivers one message, once; retrying is the queue's job.
#[async_trait::async_trait]
pub trait Transport: Send + Sync + 'static {
    async fn send(&self, message: &Message) -> Result<(), SendError>;
}

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("mail.from is not a valid mailbox such as \"Meiro <no-reply@example.com>\": {source}")]
    From {
        #[source]
        source: lettre::address::AddressError,
    },
    #[error("mail.templates_dir: {0}")]
    Templates(#[from] TemplateError),
    #[error("mail.smtp_url: {0}")]
    SmtpUrl(#[from] SmtpUrlError),
    #[error("mail.dir {}: {source}", .dir.display())]
    Outbox {
        dir: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The handle the rest of the gateway sends mail through. Cheap to clone; sending only
/// renders and enqueues, so it never blocks and never fails the caller.
#[derive(Clone)]
pub struct Mail {
    inner: Arc<Inner>,
}

struct Inner {
    templates: Templates,
    queue: mpsc::UnboundedSender<queue::Queued>,
    metrics: MailMetrics,
}

impl Mail {
    /// Builds the configured transport, loads the templates and spawns the queue worker, which
    /// runs until `shutdown` turns `true` or every `Mail` clone is dropped. A dropped
    /// `shutdown` sender does not stop it. Queue depth, sent and failed go to `metrics`.
    pub async fn start(
        config: &MailConfig,
        shutdown: watch::Receiver<bool>,
        metrics: MailMetrics,
    ) -> Result<(Mail, JoinHandle<()>), MailError> {
        let from: Mailbox = config
            .from
            .parse()
            .map_err(|source| MailError::From { source })?;
        let templates = Templates::load(config.templates_dir.as_deref())?;
        let transport: Arc<dyn Transport> = match config.transport {
            MailTransport::File => Arc::new(FileTransport::new(&config.dir, from).await.map_err(
                |source| MailError::Outbox {
                    dir: config.dir.clone(),
                    source,
                },
            )?),
            MailTransport::Smtp => Arc::new(SmtpTransport::new(
                config.smtp_url.expose(),
                config.smtp_timeout,
                from,
            )?),
        };
        tracing::info!(transport = ?config.transport, "mail queue started");
        Ok(Mail::with_transport(
            transport,
            templates,
            RetryPolicy::from_config(config),
            shutdown,
            metrics,
        ))
    }

    /// Like [`Mail::start`] with a given transport (tests inject failing or recording ones).
    /// Must be called inside a Tokio runtime.
    pub fn with_transport(
        transport: Arc<dyn Transport>,
        templates: Templates,
        policy: RetryPolicy,
        shutdown: watch::Receiver<bool>,
        metrics: MailMetrics,
    ) -> (Mail, JoinHandle<()>) {
        // Unbounded: the producers are rate-limited API calls, and a bound would force the
        // caller to either wait or drop mail.
        // Every kind × reason series exists from the start, at 0, so an alert on its rate
        // has a series to watch before the first failure.
        for kind in Kind::ALL {
            for reason in DropReason::ALL {
                metrics.failed(kind.as_str(), reason.as_str());
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let worker = tokio::spawn(queue::run(transport, policy, rx, shutdown, metrics.clone()));
        let mail = Mail {
            inner: Arc::new(Inner {
                templates,
                queue: tx,
                metrics,
            }),
        };
        (mail, worker)
    }

    /// Queues the invitation; `on_undelivered` runs if the queue drops it.
    pub fn send_invitation(
        &self,
        to: &str,
        link: &str,
        on_undelivered: impl FnOnce(Undelivered) + Send + 'static,
    ) {
        self.enqueue(Kind::Invitation, to, link, Box::new(on_undelivered));
    }

    /// Queues the password-reset mail; `on_undelivered` runs if the queue drops it.
    pub fn send_password_reset(
        &self,
        to: &str,
        link: &str,
        on_undelivered: impl FnOnce(Undelivered) + Send + 'static,
    ) {
        self.enqueue(Kind::PasswordReset, to, link, Box::new(on_undelivered));
    }

    fn enqueue(&self, kind: Kind, to: &str, link: &str, on_undelivered: OnUndelivered) {
        let message = self.inner.templates.render(kind, to, link);
        let queued = queue::Queued::new(kind, message, on_undelivered);
        match self.inner.queue.send(queued) {
            Ok(()) => {
                self.inner.metrics.queue_depth.inc();
                tracing::debug!(
                    kind = kind.as_str(),
                    recipient_domain = recipient_domain(to),
                    "mail queued"
                );
            }
            // The link is a credential: it is not logged, so this mail is lost.
            Err(_) => tracing::error!(
                kind = kind.as_str(),
                recipient_domain = recipient_domain(to),
                "mail queue is closed; message not sent"
            ),
        }
    }
}

/// What logs say about a recipient: the domain only (the address is personal data).
pub(crate) fn recipient_domain(to: &str) -> &str {
    match to.rsplit_once('@') {
        Some((_, domain)) if !domain.is_empty() => domain,
        _ => "<invalid>",
    }
}

/// The RFC 5322 message for `message`: multipart/alternative with the text part first, since
/// clients show the last part they can render.
pub(crate) fn compose(from: &Mailbox, message: &Message) -> Result<lettre::Message, SendError> {
    // The same rule the API applied when the address came in (`crate::email`): an address
    // stored before that rule, or by another path, is refused here, never rewritten.
    let to = crate::email::parse(&message.to)
        .map(|address| Mailbox::new(None, address))
        .map_err(|e| SendError::permanent(format!("invalid recipient address: {e}")))?;
    // Message-ID helps spam filters and threading; lettre adds none without its `hostname`
    // feature, so derive the domain from the sender.
    let message_id = format!("<{}@{}>", uuid::Uuid::new_v4(), from.email.domain());
    lettre::Message::builder()
        .from(from.clone())
        .to(to)
        .subject(message.subject.as_str())
        .message_id(Some(message_id))
        .multipart(MultiPart::alternative_plain_html(
            message.text.clone(),
            message.html.clone(),
        ))
        .map_err(|e| SendError::permanent(format!("cannot build message: {e}")))
}

#[cfg(test)]
#[path = "../../tests/common/smtp.rs"]
mod test_smtp_sink;

#[cfg(test)]
mod tests;
