//! A [`SessionStore`] in memory: what the transcript harness and the engine's tests restart
//! from, and a model of what a store on disk must hold.

use std::collections::BTreeMap;
use std::ops::Range;

use super::{SessionStore, StoreError, StoredSession};

/// Sessions and held messages in ordered maps. Writes take effect at once; `commits` counts
/// the group commits the engine asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryStore {
    sessions: BTreeMap<String, Vec<u8>>,
    messages: BTreeMap<(String, u64), Vec<u8>>,
    /// How many times [`SessionStore::commit`] was called.
    pub commits: u64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything stored, as a restart reads it back.
    pub fn load(&self) -> Vec<StoredSession> {
        self.sessions
            .iter()
            .map(|(client_id, record)| StoredSession {
                client_id: client_id.clone(),
                record: record.clone(),
                messages: self
                    .messages
                    .range((client_id.clone(), 0)..=(client_id.clone(), u64::MAX))
                    .map(|((_, seq), bytes)| (*seq, bytes.clone()))
                    .collect(),
            })
            .collect()
    }

    /// How many sessions are stored.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// How many held messages are stored.
    pub fn messages(&self) -> usize {
        self.messages.len()
    }
}

impl SessionStore for MemoryStore {
    fn put_session(&mut self, client_id: &str, record: &[u8]) -> Result<(), StoreError> {
        self.sessions.insert(client_id.to_owned(), record.to_vec());
        Ok(())
    }

    fn remove_session(&mut self, client_id: &str) -> Result<(), StoreError> {
        self.sessions.remove(client_id);
        self.messages.retain(|(id, _), _| id.as_str() != client_id);
        Ok(())
    }

    fn put_message(&mut self, client_id: &str, seq: u64, record: &[u8]) -> Result<(), StoreError> {
        self.messages
            .insert((client_id.to_owned(), seq), record.to_vec());
        Ok(())
    }

    fn remove_messages(&mut self, client_id: &str, seqs: Range<u64>) -> Result<(), StoreError> {
        for seq in seqs {
            self.messages.remove(&(client_id.to_owned(), seq));
        }
        Ok(())
    }

    fn clear(&mut self) -> Result<(), StoreError> {
        self.sessions.clear();
        self.messages.clear();
        Ok(())
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        self.commits += 1;
        Ok(())
    }
}
