//! The driver's side of durability: when the engine's changes are committed, and what waits
//! for them.
//!
//! After every batch of inputs the engine's changes are staged in memory. They are
//! committed, as one append to the log (one fdatasync), at most once per `storage.commit_interval`:
//! at once when the last commit is older than that (an idle gateway adds no latency), else
//! when the interval is up. Until the commit the driver holds back everything for the broker
//! (its acknowledgements among it) and the device frames that confirm a change
//! (`Transmit::after_commit`), keeping the order of what each device gets, so nothing is
//! acknowledged that a crash could lose. When the disk fails (full, read-only, I/O errors) the error is logged and
//! counted, traffic goes on with sessions in memory, and the store is tried again, written
//! afresh, every [`RETRY_AFTER`].

use std::collections::HashMap;
use std::ops::Range;

use mqttsn_core::engine::persist::{SessionStore, StoreError};
use mqttsn_core::engine::Gateway;
use mqttsn_core::time::{Duration, Instant};

use super::LogStore;

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
    /// Times the log was written afresh (compacted).
    pub compactions: u64,
    /// Bytes of the log file now.
    pub file_bytes: u64,
}

/// One change for the store, kept until the commit.
enum Op {
    PutSession(String, Vec<u8>),
    RemoveSession(String),
    PutMessage(String, u64, Vec<u8>),
    RemoveMessages(String, Range<u64>),
    Clear,
}

/// The engine's changes since the last commit, in order, with what a later change makes moot
/// taken out: the engine stages after every batch, so within one commit interval a session can
/// be written many times and a message held and taken again; only the last version of a
/// session, and only messages still held, reach the disk.
#[derive(Default)]
struct Staged {
    ops: Vec<Option<Op>>,
    /// Where the latest `PutSession` of each ClientId is in `ops`.
    sessions: HashMap<String, usize>,
    /// Where each `PutMessage` is in `ops`.
    messages: HashMap<(String, u64), usize>,
}

impl Staged {
    fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    fn take(&mut self) -> Vec<Op> {
        self.sessions.clear();
        self.messages.clear();
        std::mem::take(&mut self.ops)
            .into_iter()
            .flatten()
            .collect()
    }
}

impl SessionStore for Staged {
    fn put_session(&mut self, client_id: &str, record: &[u8]) -> Result<(), StoreError> {
        if let Some(earlier) = self.sessions.insert(client_id.to_owned(), self.ops.len()) {
            self.ops[earlier] = None;
        }
        self.ops
            .push(Some(Op::PutSession(client_id.to_owned(), record.to_vec())));
        Ok(())
    }
    fn remove_session(&mut self, client_id: &str) -> Result<(), StoreError> {
        self.sessions.remove(client_id);
        self.ops.push(Some(Op::RemoveSession(client_id.to_owned())));
        Ok(())
    }
    fn put_message(&mut self, client_id: &str, seq: u64, record: &[u8]) -> Result<(), StoreError> {
        self.messages
            .insert((client_id.to_owned(), seq), self.ops.len());
        self.ops.push(Some(Op::PutMessage(
            client_id.to_owned(),
            seq,
            record.to_vec(),
        )));
        Ok(())
    }
    fn remove_messages(&mut self, client_id: &str, seqs: Range<u64>) -> Result<(), StoreError> {
        let ops = &mut self.ops;
        self.messages.retain(|(id, seq), at| {
            let moot = id == client_id && seqs.contains(seq);
            if moot {
                ops[*at] = None;
            }
            !moot
        });
        self.ops
            .push(Some(Op::RemoveMessages(client_id.to_owned(), seqs)));
        Ok(())
    }
    fn clear(&mut self) -> Result<(), StoreError> {
        self.ops.clear();
        self.sessions.clear();
        self.messages.clear();
        self.ops.push(Some(Op::Clear));
        Ok(())
    }
    fn commit(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Whether the outputs of the inputs so far may be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outputs {
    /// Now: everything they depend on is stored (or nothing needed storing).
    Ready,
    /// After the commit due at this time ([`GroupCommit::commit`]).
    HeldUntil(Instant),
}

/// The store and its commit policy.
pub struct GroupCommit {
    store: LogStore,
    staged: Staged,
    interval: Duration,
    last_commit: Option<Instant>,
    /// Set after a failure: nothing is staged or written before then.
    retry_at: Option<Instant>,
    /// Set after a failed compaction: none is tried before then.
    compact_after: Option<Instant>,
    totals: StorageTotals,
}

impl GroupCommit {
    /// Commits into `store` at most once per `interval`; `moved_aside` is what opening it
    /// cost (see [`super::open`]).
    pub fn new(store: LogStore, interval: Duration, moved_aside: u64) -> Self {
        GroupCommit {
            store,
            staged: Staged::default(),
            interval,
            last_commit: None,
            retry_at: None,
            compact_after: None,
            totals: StorageTotals {
                moved_aside,
                ..StorageTotals::default()
            },
        }
    }

    /// After a batch of inputs: stages what the engine changed and commits if one is due.
    pub fn after_batch(&mut self, engine: &mut Gateway, now: Instant) -> Outputs {
        if self.retry_at.is_some_and(|at| now < at) {
            return Outputs::Ready; // in memory until the retry
        }
        self.stage(engine);
        if self.staged.is_empty() {
            return Outputs::Ready;
        }
        match self.last_commit.map(|at| at + self.interval) {
            Some(due) if now < due => Outputs::HeldUntil(due),
            _ => {
                self.commit(engine, now);
                Outputs::Ready
            }
        }
    }

    /// Stages what is left and commits everything staged, in one transaction.
    pub fn commit(&mut self, engine: &mut Gateway, now: Instant) {
        if self.retry_at.is_some_and(|at| now < at) {
            return;
        }
        self.stage(engine);
        if self.staged.is_empty() {
            return;
        }
        self.last_commit = Some(now);
        let ops = self.staged.take();
        match self.write(ops) {
            Ok(()) => {
                self.totals.commits += 1;
                if self.retry_at.take().is_some() {
                    tracing::info!("the session store is written again");
                }
                if self.store.wants_compaction() && self.compact_after.is_none_or(|at| now >= at) {
                    self.compact(engine, now);
                }
                self.totals.file_bytes = self.store.size();
            }
            Err(e) => {
                self.store.abort();
                engine.persist_failed();
                self.totals.errors += 1;
                self.retry_at = Some(now + RETRY_AFTER);
                // At most one line per RETRY_AFTER: nothing is tried before then.
                tracing::error!(error = %e, errors = self.totals.errors,
                    retry_in = %RETRY_AFTER,
                    "cannot write the session store; sessions are kept in memory until it works again");
            }
        }
    }

    /// Writes the engine's whole state into a new file in place of the grown log. Right after a
    /// commit, so the old file holds the same state: if this fails, it is still good (and what
    /// the engine believes is stored is true of either), and the next try waits RETRY_AFTER.
    fn compact(&mut self, engine: &Gateway, now: Instant) {
        let before = self.store.size();
        match self
            .store
            .replace(|fresh| engine.write_snapshot(fresh).map(|_| ()))
        {
            Ok(()) => {
                self.compact_after = None;
                self.totals.compactions += 1;
                tracing::debug!(before, after = self.store.size(), "session store compacted");
            }
            Err(e) => {
                self.compact_after = Some(now + RETRY_AFTER);
                tracing::warn!(error = %e, retry_in = %RETRY_AFTER,
                    "cannot compact the session store; it goes on growing");
            }
        }
    }

    fn stage(&mut self, engine: &mut Gateway) {
        if engine.persist_pending() {
            // Staging into memory cannot fail.
            let _ = engine.persist(&mut self.staged);
        }
    }

    /// Writes the staged changes as one commit; the totals count what reached the file.
    fn write(&mut self, ops: Vec<Op>) -> Result<(), StoreError> {
        let store = &mut self.store;
        let (mut sessions, mut messages, mut removed, mut bytes) = (0, 0, 0, 0);
        for op in ops {
            match op {
                Op::PutSession(id, record) => {
                    sessions += 1;
                    bytes += record.len();
                    store.put_session(&id, &record)?
                }
                Op::RemoveSession(id) => {
                    removed += 1;
                    store.remove_session(&id)?
                }
                Op::PutMessage(id, seq, record) => {
                    messages += 1;
                    bytes += record.len();
                    store.put_message(&id, seq, &record)?
                }
                Op::RemoveMessages(id, seqs) => store.remove_messages(&id, seqs)?,
                Op::Clear => store.clear()?,
            }
        }
        store.commit()?;
        let t = &mut self.totals;
        t.sessions_written += sessions;
        t.messages_written += messages;
        t.sessions_removed += removed;
        t.bytes_written += bytes as u64;
        Ok(())
    }

    /// The totals so far.
    pub fn totals(&self) -> StorageTotals {
        self.totals
    }
}
