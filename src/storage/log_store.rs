//! The session store on disk: an append-only log of group commits in one file.
//!
//! Layout: a 16-byte header (magic, format version), then one frame per commit: its length
//! and CRC-32 (4 bytes each, big-endian), then its changes (put or remove a session, put
//! held messages, remove a range of them, clear). A commit is one `write` at the end of the
//! file and one `fdatasync`; it counts once the sync returns. At start the frames are replayed
//! in order. A frame cut short at the end of the file is a commit a crash interrupted: it is
//! dropped and the file truncated, which is what makes commits atomic. A complete frame whose
//! checksum fails is damage.
//!
//! Each change is written once, next to the previous one, so an SD card sees about the bytes
//! of the records themselves (a copy-on-write B-tree rewrites a page per changed key and its
//! path to the root on every commit). When the file has grown to more than twice what it held
//! after the last compaction, the gateway writes its whole state into a new file and renames it
//! over the old one ([`LogStore::replace`]).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use mqttsn_core::engine::persist::{SessionStore, StoreError, StoredSession};

/// The first eight bytes of a store file.
pub const MAGIC: &[u8; 8] = b"MQSNLOG\0";
const HEADER_LEN: u64 = 16;
/// A frame longer than this is not one this gateway writes (its state is bounded well below:
/// `gateway.max_clients` sessions and `sleep.max_total_bytes` of held messages).
const MAX_FRAME: u64 = 1 << 31;

const PUT_SESSION: u8 = 1;
const REMOVE_SESSION: u8 = 2;
const PUT_MESSAGE: u8 = 3;
const REMOVE_MESSAGES: u8 = 4;
const CLEAR: u8 = 5;

/// Why a store file could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// Another process holds its lock.
    InUse,
    /// It cannot be created or written (permissions, read-only file system).
    Unwritable(std::io::Error),
    /// It is not a store file, or a commit in it fails its checksum.
    Damaged(String),
    /// A store of another format version.
    Format(u32),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::InUse => write!(f, "in use by another process"),
            OpenError::Unwritable(e) => write!(f, "{e}"),
            OpenError::Damaged(what) => write!(f, "{what}"),
            OpenError::Format(v) => write!(
                f,
                "store format {v}, this version reads {}",
                super::STORE_FORMAT
            ),
        }
    }
}

/// What the store holds: sessions and held messages, as the engine wrote them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Contents {
    sessions: BTreeMap<String, Vec<u8>>,
    messages: BTreeMap<(String, u64), Vec<u8>>,
}

impl Contents {
    /// The sessions, each with its held messages, as the engine restores them.
    pub fn into_sessions(self) -> Vec<StoredSession> {
        let mut messages = self.messages.into_iter().peekable();
        let mut out = Vec::with_capacity(self.sessions.len());
        for (client_id, record) in self.sessions {
            // Messages of ClientIds without a session (none are written) are skipped.
            while messages
                .peek()
                .is_some_and(|((id, _), _)| id.as_str() < client_id.as_str())
            {
                messages.next();
            }
            let mut held = Vec::new();
            while let Some(((_, seq), bytes)) = messages.next_if(|((id, _), _)| *id == client_id) {
                held.push((seq, bytes));
            }
            out.push(StoredSession {
                client_id,
                record,
                messages: held,
            });
        }
        out
    }

    /// Bytes of the records held (what a compacted file needs, about).
    fn bytes(&self) -> u64 {
        let sessions: usize = self.sessions.iter().map(|(k, v)| k.len() + v.len()).sum();
        let messages: usize = self.messages.iter().map(|(k, v)| k.0.len() + v.len()).sum();
        (sessions + messages) as u64
    }

    fn apply(&mut self, mut ops: &[u8]) -> Result<(), &'static str> {
        while let Some((&tag, rest)) = ops.split_first() {
            ops = rest;
            match tag {
                PUT_SESSION => {
                    let id = text(&mut ops)?;
                    let record = bytes(&mut ops)?;
                    self.sessions.insert(id, record.to_vec());
                }
                REMOVE_SESSION => {
                    let id = text(&mut ops)?;
                    self.sessions.remove(&id);
                    let held: Vec<(String, u64)> = self
                        .messages
                        .range((id.clone(), 0)..=(id.clone(), u64::MAX))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for key in held {
                        self.messages.remove(&key);
                    }
                }
                PUT_MESSAGE => {
                    let id = text(&mut ops)?;
                    let seq = u64::from_be_bytes(take(&mut ops)?);
                    let record = bytes(&mut ops)?;
                    self.messages.insert((id, seq), record.to_vec());
                }
                REMOVE_MESSAGES => {
                    let id = text(&mut ops)?;
                    let start = u64::from_be_bytes(take(&mut ops)?);
                    let end = u64::from_be_bytes(take(&mut ops)?);
                    if start < end {
                        let gone: Vec<(String, u64)> = self
                            .messages
                            .range((id.clone(), start)..(id.clone(), end))
                            .map(|(k, _)| k.clone())
                            .collect();
                        for key in gone {
                            self.messages.remove(&key);
                        }
                    }
                }
                CLEAR => {
                    self.sessions.clear();
                    self.messages.clear();
                }
                _ => return Err("unknown change"),
            }
        }
        Ok(())
    }
}

fn take<const N: usize>(ops: &mut &[u8]) -> Result<[u8; N], &'static str> {
    let (head, rest) = ops.split_first_chunk::<N>().ok_or("change cut short")?;
    *ops = rest;
    Ok(*head)
}

fn bytes<'a>(ops: &mut &'a [u8]) -> Result<&'a [u8], &'static str> {
    let len = usize::try_from(u32::from_be_bytes(take(ops)?)).map_err(|_| "length")?;
    if ops.len() < len {
        return Err("change cut short");
    }
    let (head, rest) = ops.split_at(len);
    *ops = rest;
    Ok(head)
}

fn text(ops: &mut &[u8]) -> Result<String, &'static str> {
    let len = usize::from(u16::from_be_bytes(take(ops)?));
    if ops.len() < len {
        return Err("change cut short");
    }
    let (head, rest) = ops.split_at(len);
    *ops = rest;
    String::from_utf8(head.to_vec()).map_err(|_| "ClientId not UTF-8")
}

fn put_text(out: &mut Vec<u8>, s: &str) {
    // ClientIds are at most `gateway.client_id_max_len` bytes (at most 1024), far below this.
    let len = s.len().min(usize::from(u16::MAX));
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..len]);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(b);
}

fn header() -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&(super::STORE_FORMAT as u32).to_be_bytes());
    h
}

/// What reading a store file found.
pub struct Replayed {
    /// The state after the last complete commit.
    pub contents: Contents,
    /// Commits read.
    pub commits: u64,
    /// Bytes of an unfinished last commit (a crash during its write), dropped.
    pub torn: u64,
    /// Where the last complete commit ends.
    pub end: u64,
}

/// Reads a store file's commits (without changing the file).
pub fn replay(file: &mut File) -> Result<Replayed, OpenError> {
    let mut data = Vec::new();
    file.read_to_end(&mut data).map_err(OpenError::Unwritable)?;
    replay_bytes(&data)
}

fn replay_bytes(data: &[u8]) -> Result<Replayed, OpenError> {
    let mut replayed = Replayed {
        contents: Contents::default(),
        commits: 0,
        torn: 0,
        end: HEADER_LEN,
    };
    if data.is_empty() {
        return Ok(replayed);
    }
    if data.len() < HEADER_LEN as usize || &data[..8] != MAGIC {
        return Err(OpenError::Damaged(
            "not a session store of this gateway".into(),
        ));
    }
    let format = u32::from_be_bytes([data[8], data[9], data[10], data[11]]);
    if u64::from(format) != super::STORE_FORMAT {
        return Err(OpenError::Format(format));
    }
    let mut at = HEADER_LEN as usize;
    while at < data.len() {
        let rest = &data[at..];
        let Some((head, body)) = rest.split_first_chunk::<8>() else {
            replayed.torn = rest.len() as u64;
            break;
        };
        let len = u64::from(u32::from_be_bytes([head[0], head[1], head[2], head[3]]));
        let crc = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        if len > MAX_FRAME {
            return Err(OpenError::Damaged(format!(
                "commit at byte {at} has an impossible length"
            )));
        }
        let len = len as usize;
        if body.len() < len {
            // The write of the last commit did not finish: it never counted.
            replayed.torn = rest.len() as u64;
            break;
        }
        let payload = &body[..len];
        if crc32fast::hash(payload) != crc {
            return Err(OpenError::Damaged(format!(
                "commit at byte {at} fails its checksum"
            )));
        }
        replayed
            .contents
            .apply(payload)
            .map_err(|what| OpenError::Damaged(format!("commit at byte {at}: {what}")))?;
        replayed.commits += 1;
        at += 8 + len;
        replayed.end = at as u64;
    }
    Ok(replayed)
}

/// The open store file, locked against a second gateway.
pub struct LogStore {
    file: File,
    path: PathBuf,
    /// Where the next commit goes (the end of the last complete one).
    size: u64,
    /// The size after the last compaction (or what the contents needed at start).
    base: u64,
    /// The changes of the commit being built.
    pending: Vec<u8>,
}

/// A file that grows past twice its compacted size plus this is compacted.
const COMPACT_SLACK: u64 = 4 << 20;

impl LogStore {
    /// Opens (or creates) the store at `path` and reads what it holds. An unfinished last
    /// commit is cut off the file.
    pub fn open(path: &Path) -> Result<(LogStore, Replayed), OpenError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
                    OpenError::Unwritable(e)
                }
                _ => OpenError::Damaged(e.to_string()),
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(OpenError::InUse),
            Err(std::fs::TryLockError::Error(e)) => return Err(OpenError::Unwritable(e)),
        }
        let replayed = replay(&mut file)?;
        let len = file.metadata().map_err(OpenError::Unwritable)?.len();
        if len == 0 {
            file.write_all_at(&header(), 0)
                .and_then(|()| file.sync_all())
                .map_err(OpenError::Unwritable)?;
        } else if replayed.end < len {
            file.set_len(replayed.end)
                .and_then(|()| file.sync_all())
                .map_err(OpenError::Unwritable)?;
        }
        let store = LogStore {
            file,
            path: path.to_path_buf(),
            size: replayed.end,
            base: replayed.contents.bytes() + HEADER_LEN,
            pending: Vec::new(),
        };
        Ok((store, replayed))
    }

    /// Whether the file has grown enough to be worth writing afresh ([`LogStore::replace`]).
    pub fn wants_compaction(&self) -> bool {
        self.size > 2 * self.base + COMPACT_SLACK
    }

    /// Bytes in the file.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Writes a new file holding exactly what `write` puts into it (the gateway's whole state,
    /// as one commit), makes it durable, and renames it over this one. On an error the old file
    /// stays, complete.
    pub fn replace(
        &mut self,
        write: impl FnOnce(&mut dyn SessionStore) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let io = |e: std::io::Error| StoreError(format!("compaction: {e}"));
        let mut next = self.path.clone().into_os_string();
        next.push(".new");
        let next = PathBuf::from(next);
        let file = File::create(&next).map_err(io)?;
        let mut fresh = LogStore {
            file,
            path: next.clone(),
            size: HEADER_LEN,
            base: 0,
            pending: Vec::new(),
        };
        let result = (|| {
            fresh
                .file
                .try_lock()
                .map_err(|e| StoreError(format!("compaction: {e}")))?;
            fresh.file.write_all_at(&header(), 0).map_err(io)?;
            write(&mut fresh)?;
            fresh.commit()?;
            fresh.file.sync_all().map_err(io)?;
            std::fs::rename(&next, &self.path).map_err(io)?;
            // The rename itself is durable only once the directory is.
            if let Some(dir) = self.path.parent() {
                File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                fresh.path = self.path.clone();
                fresh.base = fresh.size;
                *self = fresh;
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_file(&next);
                Err(e)
            }
        }
    }

    /// Drops the commit being built.
    pub fn abort(&mut self) {
        self.pending.clear();
    }
}

impl SessionStore for LogStore {
    fn put_session(&mut self, client_id: &str, record: &[u8]) -> Result<(), StoreError> {
        self.pending.push(PUT_SESSION);
        put_text(&mut self.pending, client_id);
        put_bytes(&mut self.pending, record);
        Ok(())
    }

    fn remove_session(&mut self, client_id: &str) -> Result<(), StoreError> {
        self.pending.push(REMOVE_SESSION);
        put_text(&mut self.pending, client_id);
        Ok(())
    }

    fn put_message(&mut self, client_id: &str, seq: u64, record: &[u8]) -> Result<(), StoreError> {
        self.pending.push(PUT_MESSAGE);
        put_text(&mut self.pending, client_id);
        self.pending.extend_from_slice(&seq.to_be_bytes());
        put_bytes(&mut self.pending, record);
        Ok(())
    }

    fn remove_messages(&mut self, client_id: &str, seqs: Range<u64>) -> Result<(), StoreError> {
        self.pending.push(REMOVE_MESSAGES);
        put_text(&mut self.pending, client_id);
        self.pending.extend_from_slice(&seqs.start.to_be_bytes());
        self.pending.extend_from_slice(&seqs.end.to_be_bytes());
        Ok(())
    }

    fn clear(&mut self) -> Result<(), StoreError> {
        self.pending.clear();
        self.pending.push(CLEAR);
        Ok(())
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut frame = Vec::with_capacity(8 + self.pending.len());
        let len = u32::try_from(self.pending.len())
            .map_err(|_| StoreError("a commit over 4 GiB".into()))?;
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(&crc32fast::hash(&self.pending).to_be_bytes());
        frame.extend_from_slice(&self.pending);
        self.pending.clear();
        let written = self
            .file
            .write_all_at(&frame, self.size)
            .and_then(|()| self.file.sync_data());
        match written {
            Ok(()) => {
                self.size += frame.len() as u64;
                Ok(())
            }
            Err(e) => {
                // The file no longer matches the gateway's state, and will not until it is
                // written afresh: a start from it would restore what is stale (sessions deleted
                // since, topic ids a device has registered anew since). So it is emptied (which
                // also frees space on a full disk); the gateway retries with all of its state.
                let _ = self
                    .file
                    .set_len(HEADER_LEN)
                    .and_then(|()| self.file.sync_data());
                self.size = HEADER_LEN;
                self.base = HEADER_LEN;
                Err(StoreError(format!("write {}: {e}", self.path.display())))
            }
        }
    }
}

/// Writes an empty store of format `format` at `path` (for tests of other versions).
pub fn create_empty(path: &Path, format: u32) -> std::io::Result<()> {
    let mut h = header();
    h[8..12].copy_from_slice(&format.to_be_bytes());
    File::create(path)?.write_all(&h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("mqttsn-log-{name}-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        path
    }

    /// Three commits; returns the file's bytes after each.
    fn three_commits(path: &Path) -> Vec<Vec<u8>> {
        let (mut store, replayed) = LogStore::open(path).unwrap();
        assert_eq!(replayed.commits, 0);
        let mut sizes = vec![std::fs::read(path).unwrap()];
        store.put_session("a", b"session a").unwrap();
        store.put_message("a", 7, b"m7").unwrap();
        store.put_message("a", 8, b"m8").unwrap();
        store.commit().unwrap();
        sizes.push(std::fs::read(path).unwrap());
        store.put_session("b", b"session b").unwrap();
        store.remove_messages("a", 0..8).unwrap();
        store.commit().unwrap();
        sizes.push(std::fs::read(path).unwrap());
        store.remove_session("b").unwrap();
        store.put_session("a", b"session a2").unwrap();
        store.commit().unwrap();
        sizes.push(std::fs::read(path).unwrap());
        sizes
    }

    #[test]
    fn commits_replay_in_order() {
        let path = temp("replay");
        three_commits(&path);
        let (_, replayed) = LogStore::open(&path).unwrap();
        assert_eq!(replayed.commits, 3);
        let sessions = replayed.contents.into_sessions();
        assert_eq!(
            sessions,
            vec![StoredSession {
                client_id: "a".into(),
                record: b"session a2".to_vec(),
                messages: vec![(8, b"m8".to_vec())],
            }]
        );
    }

    /// A crash can cut the file anywhere in the last commit's write: what is read back is
    /// always the state after some whole commit, and the file is repaired to it.
    #[test]
    fn a_commit_cut_anywhere_is_dropped_whole() {
        let path = temp("torn");
        let after = three_commits(&path);
        let states: Vec<Contents> = after
            .iter()
            .map(|bytes| replay_bytes(bytes).unwrap().contents)
            .collect();
        let full = after.last().unwrap().clone();
        for cut in HEADER_LEN as usize..full.len() {
            std::fs::write(&path, &full[..cut]).unwrap();
            let (_, replayed) = LogStore::open(&path).unwrap();
            let whole = after.iter().rposition(|b| b.len() <= cut).unwrap();
            assert_eq!(replayed.contents, states[whole], "cut at {cut}");
            assert_eq!(
                std::fs::read(&path).unwrap(),
                after[whole],
                "repaired at {cut}"
            );
        }
    }

    #[test]
    fn a_damaged_commit_or_a_foreign_file_is_refused() {
        let path = temp("damaged");
        let full = three_commits(&path).pop().unwrap();
        let mut flipped = full.clone();
        flipped[HEADER_LEN as usize + 12] ^= 0x40;
        std::fs::write(&path, &flipped).unwrap();
        assert!(matches!(LogStore::open(&path), Err(OpenError::Damaged(_))));
        std::fs::write(&path, b"not a store at all, just text").unwrap();
        assert!(matches!(LogStore::open(&path), Err(OpenError::Damaged(_))));
        create_empty(&path, 99).unwrap();
        assert!(matches!(LogStore::open(&path), Err(OpenError::Format(99))));
    }

    #[test]
    fn a_second_opener_is_refused_while_the_first_holds_it() {
        let path = temp("locked");
        let (_first, _) = LogStore::open(&path).unwrap();
        assert!(matches!(LogStore::open(&path), Err(OpenError::InUse)));
    }

    #[test]
    fn replacing_keeps_only_what_is_written_anew() {
        let path = temp("compact");
        three_commits(&path);
        let (mut store, _) = LogStore::open(&path).unwrap();
        store
            .replace(|fresh| fresh.put_session("z", b"only this"))
            .unwrap();
        store.put_session("y", b"and this").unwrap();
        store.commit().unwrap();
        drop(store);
        let (_, replayed) = LogStore::open(&path).unwrap();
        let ids: Vec<String> = replayed
            .contents
            .into_sessions()
            .into_iter()
            .map(|s| s.client_id)
            .collect();
        assert_eq!(ids, ["y", "z"]);
    }
}
