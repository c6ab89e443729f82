//! The delivery queue: one worker sends queued messages in order, retrying transient failures
//! with capped exponential backoff until `give_up_after`, and stops when shutdown is signalled.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::{DropReason, Kind, Message, OnUndelivered, Transport, Undelivered, recipient_domain};
use crate::config::MailConfig;
use crate::telemetry::metrics::MailMetrics;

/// When to retry a message whose delivery failed transiently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay after the first failure; doubled after each further one.
    pub initial: Duration,
    /// Cap on the delay.
    pub max: Duration,
    /// A message not delivered this long after it was queued is dropped.
    pub give_up_after: Duration,
}

impl RetryPolicy {
    pub fn from_config(config: &MailConfig) -> Self {
        Self {
            initial: config.retry_initial,
            max: config.retry_max,
            give_up_after: config.give_up_after,
        }
    }
}

/// The delay before the next attempt after `failures` (≥ 1) consecutive transient failures:
/// `initial · 2^(failures-1)`, capped at `max`.
pub fn backoff(policy: &RetryPolicy, failures: u32) -> Duration {
    // 2^31 · any useful `initial` is far beyond any useful `max`; the shift must not overflow.
    let exponent = failures.saturating_sub(1).min(31);
    policy.initial.saturating_mul(1 << exponent).min(policy.max)
}

/// What to do after a transient failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    RetryIn(Duration),
    GiveUp,
}

/// `elapsed`: time since the message was queued. The last delay is shortened so that one final
/// attempt happens right at `give_up_after` instead of being skipped.
pub fn after_failure(policy: &RetryPolicy, failures: u32, elapsed: Duration) -> Next {
    match policy.give_up_after.checked_sub(elapsed) {
        Some(left) if !left.is_zero() => Next::RetryIn(backoff(policy, failures).min(left)),
        _ => Next::GiveUp,
    }
}

/// A message waiting in the queue.
pub(crate) struct Queued {
    kind: Kind,
    message: Message,
    queued_at: Instant,
    on_undelivered: OnUndelivered,
}

impl Queued {
    pub(crate) fn new(kind: Kind, message: Message, on_undelivered: OnUndelivered) -> Self {
        Self {
            kind,
            message,
            queued_at: Instant::now(),
            on_undelivered,
        }
    }
}

/// The worker. Ends when shutdown is signalled (dropping what is still queued, counted in the
/// log) or when every sender is gone and the queue is drained.
pub(crate) async fn run(
    transport: Arc<dyn Transport>,
    policy: RetryPolicy,
    mut queue: mpsc::UnboundedReceiver<Queued>,
    shutdown: watch::Receiver<bool>,
    metrics: MailMetrics,
) {
    let stop = shutdown_requested(shutdown);
    tokio::pin!(stop);
    loop {
        let queued = tokio::select! {
            biased;
            () = &mut stop => {
                log_dropped(queue.len());
                return;
            }
            queued = queue.recv() => queued,
        };
        let Some(Queued {
            kind,
            message,
            queued_at,
            on_undelivered,
        }) = queued
        else {
            tracing::debug!("mail queue closed; worker exiting");
            return;
        };
        // Delivery (including its backoff sleeps) is abandoned at shutdown: an SMTP
        // conversation cut short is not accepted by the server, so nothing half-sent remains.
        tokio::select! {
            biased;
            () = &mut stop => {
                log_dropped(1 + queue.len());
                return;
            }
            outcome = deliver(transport.as_ref(), &policy, kind, &message, queued_at) => {
                metrics.queue_depth.dec();
                match outcome {
                    Ok(()) => {
                        metrics.sent.inc();
                    }
                    Err((reason, attempts)) => {
                        metrics.failed(kind.as_str(), reason.as_str()).inc();
                        on_undelivered(Undelivered {
                            kind,
                            recipient_domain: recipient_domain(&message.to).to_owned(),
                            reason,
                            attempts,
                        });
                    }
                }
            }
        }
    }
}

fn log_dropped(count: usize) {
    if count > 0 {
        tracing::warn!(
            dropped = count,
            "mail queue stopped by shutdown; undelivered messages dropped"
        );
    } else {
        tracing::debug!("mail queue stopped by shutdown");
    }
}

/// Resolves once the value is `true`. If the sender is dropped first it never resolves: a
/// lost sender is not a shutdown signal, and the worker then ends with the queue instead.
async fn shutdown_requested(mut shutdown: watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Sends one message until it is delivered, refused permanently, or too old (then why, and
/// after how many attempts). Logs name the recipient's domain only: the address is personal
/// data and the body holds a credential.
async fn deliver(
    transport: &dyn Transport,
    policy: &RetryPolicy,
    kind: Kind,
    message: &Message,
    queued_at: Instant,
) -> Result<(), (DropReason, u32)> {
    let kind = kind.as_str();
    let domain = recipient_domain(&message.to);
    let mut failures: u32 = 0;
    loop {
        let error = match transport.send(message).await {
            Ok(()) => {
                tracing::info!(
                    kind,
                    recipient_domain = domain,
                    attempts = failures + 1,
                    "mail delivered"
                );
                return Ok(());
            }
            Err(error) => error,
        };
        failures = failures.saturating_add(1);
        if error.permanent {
            tracing::error!(
                kind,
                recipient_domain = domain,
                attempts = failures,
                error = %error.detail,
                "mail refused permanently; dropped"
            );
            return Err((DropReason::Refused, failures));
        }
        match after_failure(policy, failures, queued_at.elapsed()) {
            Next::RetryIn(delay) => {
                tracing::warn!(
                    kind,
                    recipient_domain = domain,
                    attempts = failures,
                    retry_in = ?delay,
                    error = %error.detail,
                    "mail delivery failed; will retry"
                );
                tokio::time::sleep(delay).await;
            }
            Next::GiveUp => {
                tracing::error!(
                    kind,
                    recipient_domain = domain,
                    attempts = failures,
                    give_up_after = ?policy.give_up_after,
                    error = %error.detail,
                    "mail undelivered for too long; dropped"
                );
                return Err((DropReason::Expired, failures));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(initial: u64, max: u64, give_up_after: u64) -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_secs(initial),
            max: Duration::from_secs(max),
            give_up_after: Duration::from_secs(give_up_after),
        }
    }

    #[test]
    fn backoff_doubles_from_initial_up_to_max() {
        let p = policy(1, 300, 86_400);
        let delays: Vec<u64> = (1..=12).map(|n| backoff(&p, n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        // Zero failures behaves like the first; huge counts saturate instead of overflowing.
        assert_eq!(backoff(&p, 0), Duration::from_secs(1));
        assert_eq!(backoff(&p, u32::MAX), Duration::from_secs(300));
        let p = RetryPolicy {
            initial: Duration::MAX,
            ..p
        };
        assert_eq!(backoff(&p, 40), Duration::from_secs(300));
    }

    #[test]
    fn backoff_with_max_equal_to_initial_is_constant() {
        let p = policy(5, 5, 60);
        assert!((1..10).all(|n| backoff(&p, n) == Duration::from_secs(5)));
    }

    #[test]
    fn last_retry_lands_on_the_deadline_then_gives_up() {
        let p = policy(10, 60, 100);
        let s = Duration::from_secs;
        assert_eq!(after_failure(&p, 1, s(0)), Next::RetryIn(s(10)));
        assert_eq!(after_failure(&p, 3, s(30)), Next::RetryIn(s(40)));
        // 60 s would overshoot the deadline by 5 s: retry at the deadline instead.
        assert_eq!(after_failure(&p, 4, s(45)), Next::RetryIn(s(55)));
        assert_eq!(after_failure(&p, 5, s(100)), Next::GiveUp);
        assert_eq!(after_failure(&p, 1, s(1000)), Next::GiveUp);
    }
}
