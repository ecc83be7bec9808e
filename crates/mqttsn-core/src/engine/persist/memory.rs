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

    /// Bytes of the stored records and their ClientIds.
    pub fn record_bytes(&self) -> u64 {
        let sessions: usize = self.sessions.iter().map(|(k, v)| k.len() + v.len()).sum();
        let messages: usize = self.messages.iter().map(|(k, v)| k.0.len() + v.len()).sum();
        (sessions + messages) as u64
    }
}

impl SessionStore for MemoryStore {
    fn put_session(&mut self, client_id: &str, record: &[u8]) -> Result<(), StoreError> {
        self.sessions.insert(client_id.to_owned(), record.to_vec());
        Ok(())
    }

    fn remove_session(&mut self, client_id: &str) -> Result<(), StoreError> {
        self.sessions.remove(client_id);
        self.remove_messages(client_id, 0..u64::MAX)?;
        self.messages.remove(&(client_id.to_owned(), u64::MAX));
        Ok(())
    }

    fn put_message(&mut self, client_id: &str, seq: u64, record: &[u8]) -> Result<(), StoreError> {
        self.messages
            .insert((client_id.to_owned(), seq), record.to_vec());
        Ok(())
    }

    fn remove_messages(&mut self, client_id: &str, seqs: Range<u64>) -> Result<(), StoreError> {
        if seqs.start < seqs.end {
            // Only what is there is visited, however wide the range (a hostile file can ask
            // for all of u64).
            let id = client_id.to_owned();
            let gone: Vec<(String, u64)> = self
                .messages
                .range((id.clone(), seqs.start)..(id, seqs.end))
                .map(|(key, _)| key.clone())
                .collect();
            for key in gone {
                self.messages.remove(&key);
            }
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
