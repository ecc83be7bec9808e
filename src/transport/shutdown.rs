//! The stop signal the driver gives to every transport task, after mini-redis's `Shutdown`: the
//! driver holds the one [`Trigger`], each task a [`Shutdown`] that it `select!`s on next to its
//! IO. The transports keep their tasks in a `JoinSet` and the driver awaits them after firing
//! the trigger, so that once the gateway has stopped no task is left holding a socket or a tty.
//!
//! This is only the signal: what a task does on it (a UDP reader ends at once, a serial port
//! first writes the frames still queued for it) is the transport's business.

use tokio::sync::watch;

/// The driver's end of the signal.
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

/// A task's end of the signal; clone one for each task.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A new signal, not fired yet.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    /// Tells every task to stop. Firing twice is harmless.
    pub fn fire(&self) {
        // `send_replace`, not `send`: it stores the value even when no task is listening (no
        // serial port configured, say), so a task started later still sees it.
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// Completes once the trigger has fired or is gone (dropping it means its owner is gone,
    /// so nobody would ever fire it); at once if that already happened, so it can be awaited
    /// again and again. Cancel safe: a `select!` branch that loses consumes nothing.
    pub async fn recv(&mut self) {
        // The error is the trigger being dropped, which means stop as well.
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fires_for_every_clone_and_keeps_firing() {
        let (trigger, shutdown) = channel();
        let mut first = shutdown.clone();
        let mut second = shutdown;
        trigger.fire();
        first.recv().await;
        first.recv().await;
        second.recv().await;
    }

    #[tokio::test]
    async fn a_dropped_trigger_counts_as_fired() {
        let (trigger, mut shutdown) = channel();
        drop(trigger);
        shutdown.recv().await;
    }

    #[tokio::test]
    async fn does_not_fire_by_itself() {
        let (_trigger, mut shutdown) = channel();
        let waited = tokio::time::timeout(std::time::Duration::ZERO, shutdown.recv()).await;
        assert!(waited.is_err());
    }
}
