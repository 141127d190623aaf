//! A cloneable shutdown signal shared by every task of the agent.

use tokio::sync::watch;

/// The sending half: triggers shutdown once.
#[derive(Debug)]
pub(crate) struct ShutdownTrigger {
    sender: watch::Sender<bool>,
}

/// The receiving half, cheap to clone into every task.
#[derive(Debug, Clone)]
pub(crate) struct Shutdown {
    receiver: watch::Receiver<bool>,
}

/// Creates a linked trigger and signal.
pub(crate) fn channel() -> (ShutdownTrigger, Shutdown) {
    let (sender, receiver) = watch::channel(false);
    (ShutdownTrigger { sender }, Shutdown { receiver })
}

impl ShutdownTrigger {
    /// Asks every holder of a [`Shutdown`] to stop.
    pub(crate) fn trigger(&self) {
        self.sender.send_replace(true);
    }
}

impl Shutdown {
    /// True once shutdown was requested.
    pub(crate) fn is_triggered(&self) -> bool {
        *self.receiver.borrow()
    }

    /// Resolves when shutdown is requested (at once if it already was).
    pub(crate) async fn triggered(&mut self) {
        // An error means the trigger was dropped: treat that as shutdown too.
        let _ = self.receiver.wait_for(|stopped| *stopped).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn triggered_resolves_after_trigger() {
        let (trigger, mut shutdown) = channel();
        assert!(!shutdown.is_triggered());
        trigger.trigger();
        shutdown.triggered().await;
        assert!(shutdown.is_triggered());
    }

    #[tokio::test]
    async fn dropped_trigger_counts_as_shutdown() {
        let (trigger, mut shutdown) = channel();
        drop(trigger);
        shutdown.triggered().await;
    }
}
