//! The session store on disk: an append-only log of group commits in one file.
//!
//! Layout: a 16-byte header (magic, format version), then one frame per commit: a frame marker,
//! its length and CRC-32 (4 bytes each, big-endian), then its changes (put or remove a session,
//! put held messages, remove a range of them, clear). A commit is one `write` at the end of the
//! file and one `fdatasync`; it counts once the sync returns. At start the frames are replayed
//! in order. A bad frame (cut short, wrong marker, failing its checksum, or zeros where a file
//! system kept the size of a write it lost) with no good frame after it is the commit a crash
//! interrupted: it never counted, and it is cut off the file; that is what makes commits
//! atomic. A bad frame with a good one after it is damage (the marker is what lets the rest of
//! the file be searched). The file is locked through a lock file of its own, which is never
//! renamed, so a second gateway is kept off even while the log is compacted.
//!
//! Each change is written once, next to the previous one, so an SD card sees about the bytes
//! of the records themselves (a copy-on-write B-tree rewrites a page per changed key and its
//! path to the root on every commit). When the file has grown to more than twice what it held
//! after the last compaction, the gateway writes its whole state into a new file and renames it
//! over the old one ([`LogStore::replace`]).

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use mqttsn_core::engine::persist::{MemoryStore, SessionStore, StoreError};

/// The first eight bytes of a store file.
pub const MAGIC: &[u8; 8] = b"MQSNLOG\0";
const HEADER_LEN: u64 = 16;
/// A frame longer than this is neither written nor read (the gateway's state is bounded well
/// below: `gateway.max_clients` sessions and `sleep.max_total_bytes` of held messages).
const MAX_FRAME: u64 = 1 << 30;
/// The first bytes of every frame.
const FRAME_MARKER: [u8; 4] = *b"MQSC";
/// Marker, length, CRC-32.
const FRAME_HEAD: u64 = 12;

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

/// Applies one commit's changes, as [`Frame`] encodes them, to `store`.
fn apply(store: &mut MemoryStore, mut ops: &[u8]) -> Result<(), &'static str> {
    let stored = |result: Result<(), StoreError>| result.map_err(|_| "cannot apply");
    while let Some((&tag, rest)) = ops.split_first() {
        ops = rest;
        match tag {
            PUT_SESSION => {
                let id = text(&mut ops)?;
                let record = bytes(&mut ops)?;
                stored(store.put_session(&id, record))?;
            }
            REMOVE_SESSION => stored(store.remove_session(&text(&mut ops)?))?,
            PUT_MESSAGE => {
                let id = text(&mut ops)?;
                let seq = u64::from_be_bytes(take(&mut ops)?);
                let record = bytes(&mut ops)?;
                stored(store.put_message(&id, seq, record))?;
            }
            REMOVE_MESSAGES => {
                let id = text(&mut ops)?;
                let start = u64::from_be_bytes(take(&mut ops)?);
                let end = u64::from_be_bytes(take(&mut ops)?);
                stored(store.remove_messages(&id, start..end))?;
            }
            CLEAR => stored(store.clear())?,
            _ => return Err("unknown change"),
        }
    }
    Ok(())
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
    pub contents: MemoryStore,
    /// Commits read.
    pub commits: u64,
    /// Bytes of an unfinished last commit (a crash during its write), dropped.
    pub torn: u64,
    /// Where the last complete commit ends.
    pub end: u64,
}

/// Reads a store file's commits (without changing the file), one frame at a time: memory is
/// what the file holds, not the file.
pub fn replay(file: &mut File) -> Result<Replayed, OpenError> {
    let len = file.metadata().map_err(OpenError::Unwritable)?.len();
    let mut reader = BufReader::new(file);
    let mut replayed = Replayed {
        contents: MemoryStore::new(),
        commits: 0,
        torn: 0,
        end: HEADER_LEN,
    };
    let mut head = [0u8; HEADER_LEN as usize];
    let got = read_up_to(&mut reader, &mut head)?;
    if got < HEADER_LEN as usize {
        // A file created by a start that stopped while writing its header holds part of it.
        if head[..got] == header()[..got] {
            replayed.torn = got as u64;
            replayed.end = 0;
            return Ok(replayed);
        }
        return Err(OpenError::Damaged(
            "not a session store of this gateway".into(),
        ));
    }
    if &head[..8] != MAGIC {
        return Err(OpenError::Damaged(
            "not a session store of this gateway".into(),
        ));
    }
    let format = u32::from_be_bytes([head[8], head[9], head[10], head[11]]);
    if u64::from(format) != super::STORE_FORMAT {
        return Err(OpenError::Format(format));
    }
    let mut at = HEADER_LEN;
    while at < len {
        let mut frame = [0u8; FRAME_HEAD as usize];
        let whole = len - at >= FRAME_HEAD && read_up_to(&mut reader, &mut frame)? == frame.len();
        let plen = u64::from(u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]));
        let crc = u32::from_be_bytes([frame[8], frame[9], frame[10], frame[11]]);
        let fits = whole
            && frame[..4] == FRAME_MARKER
            && plen > 0
            && plen <= MAX_FRAME
            && plen <= len - at - FRAME_HEAD;
        let payload = if fits {
            let mut payload = vec![0u8; plen as usize];
            reader
                .read_exact(&mut payload)
                .map_err(OpenError::Unwritable)?;
            Some(payload).filter(|p| crc32fast::hash(p) == crc)
        } else {
            None
        };
        let Some(payload) = payload else {
            return tail(reader.into_inner(), at, len, replayed);
        };
        apply(&mut replayed.contents, &payload)
            .map_err(|what| OpenError::Damaged(format!("commit at byte {at}: {what}")))?;
        replayed.commits += 1;
        at += FRAME_HEAD + plen;
        replayed.end = at;
    }
    Ok(replayed)
}

/// A bad frame at `at`: the end of a commit a crash cut short, unless a good frame follows
/// (then it is damage).
fn tail(file: &mut File, at: u64, len: u64, mut replayed: Replayed) -> Result<Replayed, OpenError> {
    let mut rest = Vec::new();
    file.seek(SeekFrom::Start(at))
        .and_then(|_| file.read_to_end(&mut rest))
        .map_err(OpenError::Unwritable)?;
    let good_later = (1..rest.len()).any(|i| is_good_frame(&rest[i..]));
    if good_later {
        return Err(OpenError::Damaged(format!(
            "commit at byte {at} is damaged, and commits follow it"
        )));
    }
    replayed.torn = len - at;
    Ok(replayed)
}

fn is_good_frame(bytes: &[u8]) -> bool {
    let Some((head, body)) = bytes.split_first_chunk::<{ FRAME_HEAD as usize }>() else {
        return false;
    };
    let plen = u64::from(u32::from_be_bytes([head[4], head[5], head[6], head[7]]));
    let crc = u32::from_be_bytes([head[8], head[9], head[10], head[11]]);
    head[..4] == FRAME_MARKER
        && plen > 0
        && plen <= body.len() as u64
        && crc32fast::hash(&body[..plen as usize]) == crc
}

/// Reads until `buf` is full or the file ends; how much was read.
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> Result<usize, OpenError> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(OpenError::Unwritable(e)),
        }
    }
    Ok(got)
}

/// The open store file, locked against a second gateway.
pub struct LogStore {
    file: File,
    path: PathBuf,
    /// Held locked for as long as the store is open (`<file>.lock`, never renamed).
    _lock: File,
    /// Where the next commit goes (the end of the last complete one).
    size: u64,
    /// The size after the last compaction (or what the contents needed at start).
    base: u64,
    /// The changes of the commit being built.
    pending: Frame,
}

/// A file that grows past twice its compacted size plus this is compacted.
const COMPACT_SLACK: u64 = 4 << 20;

fn unwritable_or_damaged(e: std::io::Error) -> OpenError {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
            OpenError::Unwritable(e)
        }
        _ => OpenError::Damaged(e.to_string()),
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

impl LogStore {
    /// Opens (or creates) the store at `path` and reads what it holds. An unfinished last
    /// commit is cut off the file.
    pub fn open(path: &Path) -> Result<(LogStore, Replayed), OpenError> {
        // The lock comes first: nothing of the store is looked at, moved or written while
        // another gateway has it.
        let lock = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(with_suffix(path, ".lock"))
            .map_err(unwritable_or_damaged)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(OpenError::InUse),
            Err(std::fs::TryLockError::Error(e)) => return Err(OpenError::Unwritable(e)),
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(unwritable_or_damaged)?;
        let replayed = replay(&mut file)?;
        let len = file.metadata().map_err(OpenError::Unwritable)?.len();
        if replayed.end < HEADER_LEN {
            file.set_len(0)
                .and_then(|()| file.write_all_at(&header(), 0))
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
            _lock: lock,
            size: replayed.end.max(HEADER_LEN),
            base: replayed.contents.record_bytes() + HEADER_LEN,
            pending: Frame(Vec::new()),
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
    /// as one commit), makes it durable, and renames it over this one. On an error before the
    /// rename the old file stays, complete; from the rename on, the new one is in use.
    pub fn replace(
        &mut self,
        write: impl FnOnce(&mut dyn SessionStore) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let io = |e: std::io::Error| StoreError(format!("compaction: {e}"));
        let next = with_suffix(&self.path, ".new");
        let mut fresh = File::create(&next).map_err(io)?;
        let written = (|| {
            let mut staging = Frame(Vec::new());
            write(&mut staging)?;
            let frame = framed(&staging.0)?;
            fresh.write_all(&header()).map_err(io)?;
            fresh.write_all(&frame).map_err(io)?;
            fresh.sync_all().map_err(io)?;
            Ok(HEADER_LEN + frame.len() as u64)
        })();
        let size = match written {
            Ok(size) => size,
            Err(e) => {
                let _ = std::fs::remove_file(&next);
                return Err(e);
            }
        };
        if let Err(e) = std::fs::rename(&next, &self.path) {
            let _ = std::fs::remove_file(&next);
            return Err(io(e));
        }
        self.file = fresh;
        self.size = size;
        self.base = size;
        // The rename itself is durable only once the directory is.
        match self.path.parent() {
            Some(dir) => File::open(dir).and_then(|d| d.sync_all()).map_err(io),
            None => Ok(()),
        }
    }

    /// Drops the commit being built.
    pub fn abort(&mut self) {
        self.pending.0.clear();
    }
}

/// The changes of one commit, encoded (what [`LogStore`] buffers until `commit`).
struct Frame(Vec<u8>);

/// One commit's changes as a frame: marker, length, CRC-32, changes.
fn framed(changes: &[u8]) -> Result<Vec<u8>, StoreError> {
    let len = u32::try_from(changes.len())
        .ok()
        .filter(|&len| u64::from(len) <= MAX_FRAME)
        .ok_or_else(|| StoreError(format!("a commit of {} bytes", changes.len())))?;
    let mut frame = Vec::with_capacity(FRAME_HEAD as usize + changes.len());
    frame.extend_from_slice(&FRAME_MARKER);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&crc32fast::hash(changes).to_be_bytes());
    frame.extend_from_slice(changes);
    Ok(frame)
}

impl SessionStore for Frame {
    fn put_session(&mut self, client_id: &str, record: &[u8]) -> Result<(), StoreError> {
        self.0.push(PUT_SESSION);
        put_text(&mut self.0, client_id);
        put_bytes(&mut self.0, record);
        Ok(())
    }

    fn remove_session(&mut self, client_id: &str) -> Result<(), StoreError> {
        self.0.push(REMOVE_SESSION);
        put_text(&mut self.0, client_id);
        Ok(())
    }

    fn put_message(&mut self, client_id: &str, seq: u64, record: &[u8]) -> Result<(), StoreError> {
        self.0.push(PUT_MESSAGE);
        put_text(&mut self.0, client_id);
        self.0.extend_from_slice(&seq.to_be_bytes());
        put_bytes(&mut self.0, record);
        Ok(())
    }

    fn remove_messages(&mut self, client_id: &str, seqs: Range<u64>) -> Result<(), StoreError> {
        self.0.push(REMOVE_MESSAGES);
        put_text(&mut self.0, client_id);
        self.0.extend_from_slice(&seqs.start.to_be_bytes());
        self.0.extend_from_slice(&seqs.end.to_be_bytes());
        Ok(())
    }

    fn clear(&mut self) -> Result<(), StoreError> {
        self.0.clear();
        self.0.push(CLEAR);
        Ok(())
    }

    /// The frame is written by its store; here it is only complete.
    fn commit(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}

impl SessionStore for LogStore {
    fn put_session(&mut self, client_id: &str, record: &[u8]) -> Result<(), StoreError> {
        self.pending.put_session(client_id, record)
    }

    fn remove_session(&mut self, client_id: &str) -> Result<(), StoreError> {
        self.pending.remove_session(client_id)
    }

    fn put_message(&mut self, client_id: &str, seq: u64, record: &[u8]) -> Result<(), StoreError> {
        self.pending.put_message(client_id, seq, record)
    }

    fn remove_messages(&mut self, client_id: &str, seqs: Range<u64>) -> Result<(), StoreError> {
        self.pending.remove_messages(client_id, seqs)
    }

    fn clear(&mut self) -> Result<(), StoreError> {
        self.pending.clear()
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        if self.pending.0.is_empty() {
            return Ok(());
        }
        let frame = framed(&self.pending.0);
        self.pending.0.clear();
        let written = frame.and_then(|frame| {
            self.file
                .write_all_at(&frame, self.size)
                .and_then(|()| self.file.sync_data())
                .map(|()| frame.len() as u64)
                .map_err(|e| StoreError(format!("write {}: {e}", self.path.display())))
        });
        match written {
            Ok(len) => {
                self.size += len;
                Ok(())
            }
            Err(e) => {
                // Whatever part of the frame reached the file is cut off again, so the file
                // still holds exactly the commits before (it would not count anyway: a start
                // drops a frame cut short). The gateway goes on in memory and retries.
                let _ = self
                    .file
                    .set_len(self.size)
                    .and_then(|()| self.file.sync_data());
                Err(e)
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
    use mqttsn_core::engine::persist::StoredSession;

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
        let sessions = replayed.contents.load();
        assert_eq!(
            sessions,
            vec![StoredSession {
                client_id: "a".into(),
                record: b"session a2".to_vec(),
                messages: vec![(8, b"m8".to_vec())],
            }]
        );
    }

    fn contents_of(bytes: &[u8], name: &str) -> Result<MemoryStore, OpenError> {
        let path = temp(name);
        std::fs::write(&path, bytes).unwrap();
        let mut file = File::open(&path).unwrap();
        replay(&mut file).map(|r| r.contents)
    }

    /// A crash can cut the file anywhere in the last commit's write: what is read back is
    /// always the state after some whole commit, and the file is repaired to it.
    #[test]
    fn a_commit_cut_anywhere_is_dropped_whole() {
        let path = temp("torn");
        let after = three_commits(&path);
        let states: Vec<MemoryStore> = after
            .iter()
            .map(|bytes| contents_of(bytes, "torn-state").unwrap())
            .collect();
        let full = after.last().unwrap().clone();
        for cut in 0..full.len() {
            std::fs::write(&path, &full[..cut]).unwrap();
            let (_, replayed) = LogStore::open(&path).unwrap();
            let whole = after.iter().rposition(|b| b.len() <= cut).unwrap_or(0);
            assert_eq!(replayed.contents, states[whole], "cut at {cut}");
            assert_eq!(
                std::fs::read(&path).unwrap(),
                after[whole],
                "repaired at {cut}"
            );
        }
    }

    /// A file system that kept the size of the last write but not its data (zeros, after a
    /// power cut): that commit's sync never returned, so it never counted.
    #[test]
    fn a_last_commit_of_zeros_is_dropped() {
        let path = temp("zeros");
        let after = three_commits(&path);
        let mut zeroed = after[3].clone();
        for byte in &mut zeroed[after[2].len()..] {
            *byte = 0;
        }
        assert_eq!(
            contents_of(&zeroed, "zeros-read").unwrap(),
            contents_of(&after[2], "zeros-expected").unwrap()
        );
        // Its marker intact and its changes garbled: the same.
        let mut garbled = after[3].clone();
        let last = garbled.len() - 1;
        garbled[last] ^= 0xFF;
        assert_eq!(
            contents_of(&garbled, "garbled-read").unwrap(),
            contents_of(&after[2], "garbled-expected").unwrap()
        );
    }

    /// A bad frame with good ones after it is damage, never an unfinished commit to cut off
    /// (which would throw the later commits away).
    #[test]
    fn damage_in_the_middle_is_never_taken_for_a_cut_short_commit() {
        let path = temp("middle");
        let after = three_commits(&path);
        let full = after[3].clone();
        let first = HEADER_LEN as usize;
        for at in [first, first + 4, first + 6, first + 9, first + 14] {
            let mut bad = full.clone();
            bad[at] ^= 0x40;
            assert!(
                matches!(contents_of(&bad, "middle-read"), Err(OpenError::Damaged(_))),
                "byte {at}"
            );
        }
    }

    #[test]
    fn a_second_opener_is_refused_while_the_first_holds_it() {
        let path = temp("locked");
        let (_first, _) = LogStore::open(&path).unwrap();
        assert!(matches!(LogStore::open(&path), Err(OpenError::InUse)));
    }

    #[test]
    fn the_lock_outlives_a_compaction() {
        let path = temp("locked-compact");
        let (mut first, _) = LogStore::open(&path).unwrap();
        first.replace(|fresh| fresh.put_session("a", b"a")).unwrap();
        assert!(matches!(LogStore::open(&path), Err(OpenError::InUse)));
        drop(first);
        assert!(LogStore::open(&path).is_ok());
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
            .load()
            .into_iter()
            .map(|s| s.client_id)
            .collect();
        assert_eq!(ids, ["y", "z"]);
    }
}
