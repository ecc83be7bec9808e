//! The engine's [`SessionStore`] on a redb file: one table of session records by ClientId, one
//! of held messages by (ClientId, number), one of metadata (the format version). Each group
//! commit is one redb write transaction, opened at its first write, durable once `commit`
//! returns.

use std::ops::Range;
use std::path::Path;

use mqttsn_core::engine::persist::{SessionStore, StoreError, StoredSession};
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
/// The key in `meta` holding the layout version of the file.
const FORMAT_KEY: &str = "format";

/// A redb database holding the engine's sessions.
pub struct RedbStore {
    db: Database,
    /// The transaction of the group commit being written, if any write came since the last
    /// commit.
    txn: Option<WriteTransaction>,
}

/// The layout version a file says it has: `None` for a file that holds no table yet (a new
/// file), `Some(0)` for tables without this gateway's metadata.
pub fn format_of(db: &impl ReadableDatabase) -> Result<Option<u64>, redb::Error> {
    let read = db.begin_read()?;
    if read.list_tables()?.next().is_none() {
        return Ok(None);
    }
    let meta = match read.open_table(META) {
        Ok(meta) => meta,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Some(0)),
        Err(e) => return Err(e.into()),
    };
    let format = meta.get(FORMAT_KEY)?.map_or(0, |v| v.value());
    Ok(Some(format))
}

/// Everything stored, as the engine restores it. Every record is read, so that a damaged page
/// shows up at start, not in the middle of traffic.
pub fn load_from(db: &impl ReadableDatabase) -> Result<Vec<StoredSession>, redb::Error> {
    let read = db.begin_read()?;
    let sessions = read.open_table(SESSIONS)?;
    let messages = read.open_table(MESSAGES)?;
    let mut out = Vec::with_capacity(usize::try_from(sessions.len()?).unwrap_or(0));
    for entry in sessions.iter()? {
        let (client_id, record) = entry?;
        let client_id = client_id.value();
        let mut held = Vec::new();
        for entry in messages.range((client_id, 0)..=(client_id, u64::MAX))? {
            let (key, bytes) = entry?;
            held.push((key.value().1, bytes.value().to_vec()));
        }
        out.push(StoredSession {
            client_id: client_id.to_owned(),
            record: record.value().to_vec(),
            messages: held,
        });
    }
    Ok(out)
}

fn store_error(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("{what}: {e}"))
}

impl RedbStore {
    /// Opens (or creates) the database file at `path`.
    pub fn open(path: &Path) -> Result<RedbStore, redb::DatabaseError> {
        Ok(RedbStore {
            db: Database::create(path)?,
            txn: None,
        })
    }

    /// The layout version the file says it has (see [`format_of`]).
    pub fn format(&self) -> Result<Option<u64>, redb::Error> {
        format_of(&self.db)
    }

    /// Writes the layout version into a new file (and the empty tables), durably.
    pub fn initialise(&mut self, format: u64) -> Result<(), redb::Error> {
        let txn = self.db.begin_write()?;
        txn.open_table(META)?.insert(FORMAT_KEY, format)?;
        txn.open_table(SESSIONS)?;
        txn.open_table(MESSAGES)?;
        txn.commit()?;
        Ok(())
    }

    /// Everything stored (see [`load_from`]).
    pub fn load(&self) -> Result<Vec<StoredSession>, redb::Error> {
        load_from(&self.db)
    }

    /// Drops the group commit in progress (after a failed write): none of it takes effect.
    pub fn abort(&mut self) {
        if let Some(txn) = self.txn.take() {
            let _ = txn.abort();
        }
    }

    fn txn(&mut self) -> Result<&WriteTransaction, StoreError> {
        if self.txn.is_none() {
            let txn = self.db.begin_write().map_err(|e| store_error("begin", e))?;
            self.txn = Some(txn);
        }
        self.txn
            .as_ref()
            .ok_or_else(|| StoreError("no transaction".into()))
    }
}

impl SessionStore for RedbStore {
    fn put_session(&mut self, client_id: &str, record: &[u8]) -> Result<(), StoreError> {
        let txn = self.txn()?;
        let mut table = txn
            .open_table(SESSIONS)
            .map_err(|e| store_error("sessions", e))?;
        table
            .insert(client_id, record)
            .map_err(|e| store_error("write session", e))?;
        Ok(())
    }

    fn remove_session(&mut self, client_id: &str) -> Result<(), StoreError> {
        let txn = self.txn()?;
        txn.open_table(SESSIONS)
            .and_then(|mut t| Ok(t.remove(client_id).map(|_| ())?))
            .map_err(|e| store_error("delete session", e))?;
        let mut messages = txn
            .open_table(MESSAGES)
            .map_err(|e| store_error("messages", e))?;
        messages
            .retain_in((client_id, 0)..=(client_id, u64::MAX), |_, _| false)
            .map_err(|e| store_error("delete messages", e))
    }

    fn put_message(&mut self, client_id: &str, seq: u64, record: &[u8]) -> Result<(), StoreError> {
        let txn = self.txn()?;
        let mut table = txn
            .open_table(MESSAGES)
            .map_err(|e| store_error("messages", e))?;
        table
            .insert((client_id, seq), record)
            .map_err(|e| store_error("write message", e))?;
        Ok(())
    }

    fn remove_messages(&mut self, client_id: &str, seqs: Range<u64>) -> Result<(), StoreError> {
        let txn = self.txn()?;
        let mut table = txn
            .open_table(MESSAGES)
            .map_err(|e| store_error("messages", e))?;
        table
            .retain_in((client_id, seqs.start)..(client_id, seqs.end), |_, _| false)
            .map_err(|e| store_error("delete messages", e))
    }

    fn clear(&mut self) -> Result<(), StoreError> {
        let txn = self.txn()?;
        for result in [
            txn.open_table(SESSIONS)
                .and_then(|mut t| Ok(t.retain(|_, _| false)?)),
            txn.open_table(MESSAGES)
                .and_then(|mut t| Ok(t.retain(|_, _| false)?)),
        ] {
            result.map_err(|e| store_error("clear", e))?;
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        match self.txn.take() {
            Some(txn) => txn.commit().map_err(|e| store_error("commit", e)),
            None => Ok(()),
        }
    }
}
