//! Sessions that survive a restart: what the engine writes to a store, when, and how it
//! rebuilds itself from what was stored.
//!
//! The store is reached through [`SessionStore`], which the driver implements on a crash-safe
//! file (and [`MemoryStore`] in memory, for tests), so the engine stays pure.
//!
//! **What is kept**, per ClientId: the session ([`record::SessionImage`]: state, clean flag,
//! keep-alive and sleep duration, address with forwarder node, topic ids with their pending
//! flag, refused topics, subscriptions, will, QoS 2 publishes towards the broker, the exchange
//! in flight towards the device), and each held message as a record of its own, numbered, so
//! that one more message for a sleeper writes that message, not the whole buffer again.
//! A session in the middle of a CONNECT handshake is written only if that CONNECT keeps it
//! (CleanSession=0), as a session not connected. Timers, budgets and counters are not kept:
//! after a restart every device gets a fresh keep-alive or sleep period from the restart.
//!
//! **When.** Every change to a session marks it, once (`Gateway::client_mut` is the only way
//! to change one); [`Gateway::persist`] writes the marked sessions whose stored form changed
//! and commits. The driver persists after every batch of inputs and holds back what the batch
//! produced that depends on it (everything for the broker, and the device frames that confirm a
//! change: [`super::Transmit::after_commit`]) until the store has committed, so nothing is
//! acknowledged that a crash could lose. A batch that changed nothing a restart keeps (QoS 0
//! and QoS 1 publishes towards the broker, pings) writes nothing.

pub mod memory;
pub mod record;

use std::ops::Range;
use std::sync::Arc;

use siphasher::sip::SipHasher13;
use thiserror::Error;

use super::client::{Inflight, State};
use super::gateway::{Gateway, Timer};
use super::{ClientKey, ConnId};
use crate::codec::QoS;
use crate::hash::HashMap;
use crate::settings::Mode;
use crate::time::Instant;
use record::RecordError;

pub use memory::MemoryStore;

/// A store failed (disk full, I/O error, damaged file): what it said.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct StoreError(pub String);

/// Where the engine keeps sessions across restarts. Calls between two [`SessionStore::commit`]s
/// form one transaction: all of them take effect, or (after a crash) none.
pub trait SessionStore {
    /// Stores (or replaces) the session record of `client_id`.
    fn put_session(&mut self, client_id: &str, record: &[u8]) -> Result<(), StoreError>;
    /// Deletes the session of `client_id` and every message held for it.
    fn remove_session(&mut self, client_id: &str) -> Result<(), StoreError>;
    /// Stores message number `seq` held for `client_id`.
    fn put_message(&mut self, client_id: &str, seq: u64, record: &[u8]) -> Result<(), StoreError>;
    /// Deletes the messages numbered `seqs` held for `client_id`.
    fn remove_messages(&mut self, client_id: &str, seqs: Range<u64>) -> Result<(), StoreError>;
    /// Deletes everything (before the engine writes all of its state again).
    fn clear(&mut self) -> Result<(), StoreError>;
    /// Makes everything since the last commit durable; when it returns `Ok`, a crash no longer
    /// loses it.
    fn commit(&mut self) -> Result<(), StoreError>;
}

/// One session as read back from a store, with its held messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    /// The ClientId.
    pub client_id: String,
    /// The record [`SessionStore::put_session`] was given.
    pub record: Vec<u8>,
    /// The messages, by number.
    pub messages: Vec<(u64, Vec<u8>)>,
}

/// What one [`Gateway::persist`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PersistStats {
    /// Whether it committed (false: nothing had changed).
    pub committed: bool,
    /// Session records written.
    pub sessions: usize,
    /// Message records written.
    pub messages: usize,
    /// Sessions deleted.
    pub removed: usize,
    /// Bytes of records written.
    pub bytes: usize,
    /// Everything was written afresh (after a failed commit).
    pub rewrite: bool,
}

/// Why a stored session was not restored.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RestoreError {
    /// Its record could not be read.
    #[error("unreadable session record: {0}")]
    Record(#[from] RecordError),
    /// Another session with the same ClientId was restored already.
    #[error("the same ClientId twice")]
    Duplicate,
    /// `gateway.max_clients` sessions were restored already.
    #[error("gateway.max_clients sessions restored already")]
    Full,
}

/// What [`Gateway::restore`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// Sessions restored.
    pub sessions: usize,
    /// Held messages restored.
    pub messages: usize,
    /// Held messages that could not be read, or did not fit the buffers any more.
    pub messages_dropped: usize,
    /// Sessions not restored, with why.
    pub skipped: Vec<(String, RestoreError)>,
}

/// What the store holds for one ClientId, as far as the engine knows.
#[derive(Debug, Clone, Copy)]
struct Mark {
    /// Hash of the stored session record.
    hash: u64,
    /// The held messages stored: numbers `head..tail`.
    head: u64,
    tail: u64,
}

/// The engine's side of persistence (present only when a store is in use).
pub(super) struct Persistence {
    /// Sessions changed since the last persist (with repeats; sorted out when written).
    dirty: Vec<ClientKey>,
    /// ClientIds whose sessions were deleted since the last persist.
    removed: Vec<Arc<str>>,
    marks: HashMap<Arc<str>, Mark>,
    /// The last commit failed: what the store holds is unknown, so the next persist writes
    /// everything afresh (and nothing is tracked until then).
    rewrite: bool,
    scratch: Vec<u8>,
}

impl Persistence {
    fn new(seed: crate::hash::HashSeed) -> Self {
        Persistence {
            dirty: Vec::new(),
            removed: Vec::new(),
            marks: HashMap::with_hasher(seed),
            rewrite: false,
            scratch: Vec::new(),
        }
    }

    /// `client` (in `key`) is about to change: listed once until the next persist.
    pub(super) fn touch(&mut self, key: ClientKey, client: &mut super::client::Client) {
        if !self.rewrite && !client.unpersisted {
            client.unpersisted = true;
            self.dirty.push(key);
        }
    }

    pub(super) fn forget(&mut self, client_id: &Arc<str>) {
        if !self.rewrite {
            self.removed.push(Arc::clone(client_id));
        }
    }
}

/// Whether a restart keeps the session. One half-way through a CONNECT is kept only if that
/// CONNECT keeps the session (CleanSession=0): then it is written as a session of a device
/// that is not connected, with what it holds (broker messages keep coming for it, and were
/// acknowledged). With CleanSession=1 the CONNECT has discarded the old session and the new
/// one begins only once the handshake completes.
fn is_kept(client: &super::client::Client) -> bool {
    match client.state {
        State::Active | State::Asleep | State::Awake | State::Disconnected => true,
        State::WillTopic | State::WillMsg | State::Connecting => !client.clean_session,
    }
}

fn record_hash(bytes: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = SipHasher13::new_with_keys(0x6d71_7474_736e, 0x7374_6f72_6521);
    h.write(bytes);
    h.finish()
}

impl Gateway {
    /// From now on the engine tracks what a restart must keep; [`Gateway::persist`] writes it.
    /// Call it before [`Gateway::restore`] and before the first input.
    pub fn enable_persistence(&mut self) {
        if self.persist.is_none() {
            self.persist = Some(Box::new(Persistence::new(self.settings.hash_seed)));
        }
    }

    /// Whether [`Gateway::persist`] has something to write.
    pub fn persist_pending(&self) -> bool {
        self.persist
            .as_ref()
            .is_some_and(|p| p.rewrite || !p.dirty.is_empty() || !p.removed.is_empty())
    }

    /// Writes what changed since the last call and commits it, once. Call it before sending
    /// the outputs of the inputs that caused the change. On an error the store is written
    /// afresh on the next call.
    pub fn persist(&mut self, store: &mut dyn SessionStore) -> Result<PersistStats, StoreError> {
        let Some(mut p) = self.persist.take() else {
            return Ok(PersistStats::default());
        };
        if p.rewrite {
            p.dirty = self.clients.iter().map(|(k, _)| ClientKey(k)).collect();
        }
        // From here on, a change lists its session again for the next persist.
        for key in &p.dirty {
            if let Some(client) = self.clients.get_mut(key.0) {
                client.unpersisted = false;
            }
        }
        let result = self.write_changes(&mut p, store);
        self.persist = Some(p);
        match result {
            Ok(_) => {
                if let Some(p) = self.persist.as_mut() {
                    p.rewrite = false;
                }
            }
            Err(_) => self.persist_failed(),
        }
        result
    }

    /// What [`Gateway::persist`] wrote did not reach the store after all (the driver stages
    /// changes and commits them later, and that commit failed): the next persist writes
    /// everything afresh, and nothing is tracked until then.
    pub fn persist_failed(&mut self) {
        if let Some(p) = self.persist.as_mut() {
            p.rewrite = true;
            p.dirty = Vec::new();
            p.removed = Vec::new();
            p.marks.clear();
        }
    }

    /// Writes everything a restart keeps into `store`, without commit and without changing what
    /// the engine believes is stored: for a store that replaces one holding the same (a
    /// compaction, right after a commit).
    pub fn write_snapshot(&self, store: &mut dyn SessionStore) -> Result<PersistStats, StoreError> {
        let mut stats = PersistStats::default();
        let mut scratch = Vec::new();
        for (index, client) in self.clients.iter() {
            if !is_kept(client) {
                continue;
            }
            scratch.clear();
            record::encode_session(&mut scratch, client, self.filters_of(ClientKey(index)));
            store.put_session(&client.client_id, &scratch)?;
            stats.sessions += 1;
            stats.bytes += scratch.len();
            for (seq, down) in (client.queue_head..).zip(client.queued_messages()) {
                scratch.clear();
                record::encode_message(&mut scratch, down);
                store.put_message(&client.client_id, seq, &scratch)?;
                stats.messages += 1;
                stats.bytes += scratch.len();
            }
        }
        Ok(stats)
    }

    fn write_changes(
        &self,
        p: &mut Persistence,
        store: &mut dyn SessionStore,
    ) -> Result<PersistStats, StoreError> {
        let mut stats = PersistStats::default();
        if p.rewrite {
            store.clear()?;
            p.marks.clear();
            p.removed.clear();
            stats.rewrite = true;
        } else if p.dirty.is_empty() && p.removed.is_empty() {
            return Ok(stats);
        }
        // Deletions first: a ClientId deleted and connected again in the same batch is then
        // written afresh.
        for client_id in std::mem::take(&mut p.removed) {
            if p.marks.remove(&client_id).is_some() {
                store.remove_session(&client_id)?;
                stats.removed += 1;
            }
        }
        // Each session is listed once (`Client::unpersisted`); in key order, so that the
        // store sees the same writes for the same inputs.
        let mut dirty = std::mem::take(&mut p.dirty);
        dirty.sort_unstable();
        for key in dirty {
            let Some(client) = self.client(key) else {
                continue;
            };
            if !is_kept(client) {
                continue;
            }
            let id = &client.client_id;
            p.scratch.clear();
            record::encode_session(&mut p.scratch, client, self.filters_of(key));
            let hash = record_hash(&p.scratch);
            let mark = p.marks.get(id).copied();
            if mark.is_none_or(|m| m.hash != hash) {
                store.put_session(id, &p.scratch)?;
                stats.sessions += 1;
                stats.bytes += p.scratch.len();
            }
            let head = client.queue_head;
            let tail = head.saturating_add(client.queued() as u64);
            // Only ever taken from the front and added at the back: what left is below
            // `head`, what is new from the old tail on.
            let (old_head, old_tail) = mark.map_or((head, head), |m| (m.head, m.tail));
            if old_head < head.min(old_tail) {
                store.remove_messages(id, old_head..head.min(old_tail))?;
            }
            let first_new = old_tail.max(head);
            let skip = usize::try_from(first_new - head).unwrap_or(usize::MAX);
            for (seq, down) in (first_new..).zip(client.queued_messages().skip(skip)) {
                p.scratch.clear();
                record::encode_message(&mut p.scratch, down);
                store.put_message(id, seq, &p.scratch)?;
                stats.messages += 1;
                stats.bytes += p.scratch.len();
            }
            p.marks.insert(Arc::clone(id), Mark { hash, head, tail });
        }
        if stats.sessions + stats.messages + stats.removed > 0 || stats.rewrite {
            store.commit()?;
            stats.committed = true;
        }
        Ok(stats)
    }

    /// A session's subscriptions: the shared table's in aggregating mode, its own list in
    /// transparent mode.
    fn filters_of(&self, key: ClientKey) -> &[(Arc<str>, QoS)] {
        match self.settings.mode {
            Mode::Aggregating => self.subscriptions.client_filters_ref(key),
            Mode::Transparent => self.client(key).map_or(&[], |c| c.filters()),
        }
    }

    /// Rebuilds the sessions a store held (call after [`Gateway::enable_persistence`], before
    /// any input). Every device gets a full keep-alive or sleep period from `now`; in
    /// transparent mode each connected device's broker connection is opened again.
    pub fn restore(&mut self, now: Instant, sessions: Vec<StoredSession>) -> RestoreReport {
        self.now = self.now.max(now);
        let mut report = RestoreReport::default();
        for stored in sessions {
            let client_id = stored.client_id.clone();
            match self.restore_one(now, stored, &mut report) {
                Ok(()) => report.sessions += 1,
                Err(e) => report.skipped.push((client_id, e)),
            }
        }
        if !report.skipped.is_empty() || report.messages_dropped > 0 {
            // The store holds records the engine did not take: write it afresh.
            if let Some(p) = self.persist.as_mut() {
                p.rewrite = true;
                p.dirty.clear();
            }
        }
        report
    }

    fn restore_one(
        &mut self,
        now: Instant,
        stored: StoredSession,
        report: &mut RestoreReport,
    ) -> Result<(), RestoreError> {
        let image = record::decode_session(&stored.record)?;
        if self.by_client_id.contains_key(stored.client_id.as_str()) {
            return Err(RestoreError::Duplicate);
        }
        if self.clients.len() >= self.settings.max_clients {
            return Err(RestoreError::Full);
        }
        // The held messages are the numbered records, oldest first, without a gap (a commit
        // adds at the end and removes at the front). Numbers from a hostile or damaged file
        // near the end of the range are refused: they would overflow while counting on.
        let mut messages = stored.messages;
        messages.sort_unstable_by_key(|m| m.0);
        let queue_head = messages.first().map_or(0, |m| m.0);
        let mut downs = Vec::new();
        for (seq, bytes) in messages {
            let expected = queue_head.checked_add(downs.len() as u64);
            match record::decode_message(&bytes) {
                Ok(down) if Some(seq) == expected && seq < u64::MAX / 2 => downs.push(down),
                _ => report.messages_dropped += 1,
            }
        }
        let connected_there = self
            .by_peer
            .get(&image.peer)
            .copied()
            .filter(|&k| self.client(k).is_some_and(|c| c.state.is_connected()));
        let client_id: Arc<str> = Arc::from(stored.client_id);
        let key = self.insert_client(Arc::clone(&client_id), image.peer, now);
        if let Some(other) = connected_there {
            // A kept session of a departed device does not take the address of one that is
            // there.
            if image.state == State::Disconnected {
                self.by_peer.insert(image.peer, other);
            }
        }
        let mut limits = self.settings.sleep;
        limits.max_bytes = limits.max_bytes.min(
            self.settings
                .sleep_max_total
                .saturating_sub(self.held_bytes),
        );
        let topics: Vec<(Arc<str>, bool)> = image
            .topics
            .iter()
            .map(|(name, pending)| (self.interner.intern(name), *pending))
            .collect();
        let retry_at = now + self.settings.t_retry;
        let mut held = 0;
        let mut dropped = 0;
        let Some(client) = self.client_mut(key) else {
            return Ok(());
        };
        client.state = image.state;
        client.clean_session = image.clean_session;
        client.verified = image.verified;
        client.keep_alive_secs = image.keep_alive_secs;
        client.sleep_secs = image.sleep_secs;
        client.last_msg_id = image.last_msg_id;
        client.will = image.will.map(Box::new);
        for (name, pending) in &topics {
            let _ = if *pending {
                client.registry.propose(name)
            } else {
                client.registry.register(name)
            };
        }
        if !image.refused.is_empty() {
            client.extras_mut().refused = image.refused;
        }
        if !image.up.is_empty() {
            client.extras_mut().up = image.up;
        }
        client.inflight = image.inflight.map(|(kind, msg_id)| {
            Box::new(Inflight {
                kind,
                msg_id,
                retries: 0,
                retry_at,
            })
        });
        client.queue_head = queue_head;
        for down in downs {
            let size = down.size();
            match client.push_down(down, size, &limits) {
                super::sleep::PushOutcome::Stored => held += size,
                super::sleep::PushOutcome::StoredAfterDropping(old) => {
                    held += size;
                    dropped += old.len();
                    held -= old.iter().map(|d| d.size()).sum::<usize>();
                }
                super::sleep::PushOutcome::Refused(_) => dropped += 1,
            }
        }
        let generation = client.generation;
        let active_inflight = client.state == State::Active && client.inflight.is_some();
        let queued = client.queued();
        self.held_bytes += held;
        report.messages += queued;
        report.messages_dropped += dropped;
        match self.settings.mode {
            Mode::Aggregating => {
                for (filter, qos) in &image.filters {
                    // The gateway's own connection subscribes to every filter on CONNACK.
                    let _ = self.subscriptions.subscribe(key, filter, *qos);
                }
            }
            Mode::Transparent => {
                if let Some(client) = self.client_mut(key) {
                    if !image.filters.is_empty() {
                        client.extras_mut().filters = image.filters;
                    }
                }
                if image.state.is_connected() {
                    self.reopen_device_connection(key);
                }
            }
        }
        self.resume_releases(now, key);
        if active_inflight {
            self.schedule(retry_at, Timer::Retry(key, generation));
        }
        self.supervise(key);
        if let Some(p) = self.persist.as_mut() {
            let head = queue_head;
            p.marks.insert(
                client_id,
                Mark {
                    hash: record_hash(&stored.record),
                    head,
                    tail: head.saturating_add(queued as u64),
                },
            );
        }
        Ok(())
    }

    /// QoS 2 publishes the broker may still hold from an earlier connection of the session
    /// they went over, waiting for PUBREL: released after that session's next CONNACK, their
    /// packet ids kept from reuse until then. In transparent mode that is the device's own
    /// connection, so a device without one (not connected) has them released when it connects.
    pub(super) fn resume_releases(&mut self, now: Instant, key: ClientKey) {
        let Some(client) = self.client(key) else {
            return;
        };
        let conn = match self.settings.mode {
            Mode::Aggregating => ConnId::GATEWAY,
            Mode::Transparent => match client.conn {
                Some(conn) => conn,
                None => return,
            },
        };
        let generation = client.generation;
        let releases: Vec<(u16, u16)> = client
            .up()
            .iter()
            .filter(|u| u.pid != 0)
            .map(|u| (u.pid, u.msg_id))
            .collect();
        if let Some(up) = self.upstreams.get_mut(&conn) {
            for (pid, msg_id) in releases {
                let token = super::device::token(key, generation, msg_id);
                up.session.resume_release(now, pid, token);
            }
        }
    }

    /// Transparent mode, after a restart: the device's own broker connection again, with its
    /// identity, clean flag and will (so that a CleanSession=0 device resumes its broker
    /// session and gets what the broker kept for it).
    fn reopen_device_connection(&mut self, key: ClientKey) {
        let Some(client) = self.client(key) else {
            return;
        };
        let options = self.device_connect_options(client);
        let conn: ConnId = self.new_conn_id();
        if let Some(client) = self.client_mut(key) {
            client.conn = Some(conn);
        }
        if self.open_upstream(conn, options, Some(key)).is_err() {
            self.remove_client(key);
        }
    }
}
