//! A transport that keeps every message in memory, for tests of the code that sends mail.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

use super::{Message, SendError, Transport};

/// Records messages instead of sending them; clones share the record.
#[derive(Clone, Default)]
pub struct MemoryTransport {
    messages: Arc<Mutex<Vec<Message>>>,
    arrived: Arc<Notify>,
}

impl MemoryTransport {
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything sent so far, oldest first.
    pub fn messages(&self) -> Vec<Message> {
        self.lock().clone()
    }

    /// Waits until at least `n` messages were sent, or `timeout` passes (then returns what there
    /// is, possibly fewer).
    pub async fn wait_for(&self, n: usize, timeout: std::time::Duration) -> Vec<Message> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            // Registered before the check, so a message arriving in between is not missed.
            arrived.as_mut().enable();
            let messages = self.messages();
            if messages.len() >= n {
                return messages;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return self.messages();
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Message>> {
        // The vector stays consistent even if a holder panicked: push is the only mutation.
        self.messages.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl Transport for MemoryTransport {
    async fn send(&self, message: &Message) -> Result<(), SendError> {
        self.lock().push(message.clone());
        self.arrived.notify_waiters();
        Ok(())
    }
}
