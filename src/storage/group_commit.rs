//! The driver's side of durability: one commit per batch of the event loop, before the batch's
//! outputs are sent, and what happens when the disk fails (full, read-only, I/O errors): the
//! error is logged and counted, traffic goes on with sessions in memory, and the store is
//! tried again, written afresh, every [`RETRY_AFTER`].

use mqttsn_core::engine::Gateway;
use mqttsn_core::time::{Duration, Instant};

use super::RedbStore;

/// How long the gateway runs in memory after a failed commit before it tries the store again.
pub const RETRY_AFTER: Duration = Duration::from_secs(30);

/// What the store was asked to do since the start, for the log (and metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageTotals {
    /// Group commits (each one fsync of the store).
    pub commits: u64,
    /// Session records written.
    pub sessions_written: u64,
    /// Held-message records written.
    pub messages_written: u64,
    /// Sessions deleted.
    pub sessions_removed: u64,
    /// Bytes of records written (before the store's own page overhead).
    pub bytes_written: u64,
    /// Commits that failed.
    pub errors: u64,
    /// Store files moved aside at start (damaged or of another format).
    pub moved_aside: u64,
}

/// The store and its commit policy.
pub struct GroupCommit {
    store: RedbStore,
    /// Set after a failure: no write is tried before then.
    retry_at: Option<Instant>,
    totals: StorageTotals,
}

impl GroupCommit {
    /// Commits into `store`; `moved_aside` is what opening it cost (see [`super::open`]).
    pub fn new(store: RedbStore, moved_aside: u64) -> Self {
        GroupCommit {
            store,
            retry_at: None,
            totals: StorageTotals {
                moved_aside,
                ..StorageTotals::default()
            },
        }
    }

    /// Writes what the engine changed since the last call, in one transaction, durably.
    /// Returns at once when nothing changed (an idle gateway writes nothing) and while waiting
    /// to retry after a failure.
    pub fn commit(&mut self, engine: &mut Gateway, now: Instant) {
        if !engine.persist_pending() || self.retry_at.is_some_and(|at| now < at) {
            return;
        }
        match engine.persist(&mut self.store) {
            Ok(stats) => {
                if self.retry_at.take().is_some() {
                    tracing::info!("the session store is written again");
                }
                let t = &mut self.totals;
                t.commits += u64::from(stats.committed);
                t.sessions_written += stats.sessions as u64;
                t.messages_written += stats.messages as u64;
                t.sessions_removed += stats.removed as u64;
                t.bytes_written += stats.bytes as u64;
            }
            Err(e) => {
                self.store.abort();
                self.totals.errors += 1;
                self.retry_at = Some(now + RETRY_AFTER);
                // At most one line per RETRY_AFTER: the next attempt waits that long.
                tracing::error!(error = %e, errors = self.totals.errors,
                    retry_in = %RETRY_AFTER,
                    "cannot write the session store; sessions are kept in memory until it works again");
            }
        }
    }

    /// The totals so far.
    pub fn totals(&self) -> StorageTotals {
        self.totals
    }
}
