//! The state directory (`[storage] dir`): opening the session store at start, and what happens
//! when it cannot be used. A damaged, foreign or newer-format file is moved aside (kept for
//! inspection) and the gateway starts empty; a directory it cannot write makes it run in
//! memory. Only a store another running gateway holds stops the start.

pub mod group_commit;
pub mod inspect;
mod redb_store;

use std::path::{Path, PathBuf};

use mqttsn_core::engine::persist::StoredSession;
use thiserror::Error;

pub use redb_store::RedbStore;

/// The store's file in the state directory.
pub const FILE_NAME: &str = "sessions.redb";

/// The layout version of the file (its tables and keys; each session record carries its own
/// version too). A file of another version is moved aside, never misread.
pub const STORE_FORMAT: u64 = 1;

/// Why the gateway must not start with this state directory.
#[derive(Debug, Error)]
pub enum StorageError {
    /// Another process has the store open: two gateways must not serve the same sessions.
    #[error("{}: in use by another process (is another gateway running with this state directory?)", .0.display())]
    InUse(PathBuf),
}

/// What opening the state directory gave.
pub struct Opened {
    /// The store, or `None` when the gateway runs with sessions in memory only.
    pub store: Option<RedbStore>,
    /// The sessions to restore.
    pub sessions: Vec<StoredSession>,
    /// Files moved aside because they could not be used (0 or 1).
    pub moved_aside: u64,
}

/// Opens the store in `dir`, creating both if needed. See the module documentation for what
/// happens to a store that cannot be used; each case is logged as an error naming the file.
pub fn open(dir: &Path) -> Result<Opened, StorageError> {
    let in_memory = |moved_aside| Opened {
        store: None,
        sessions: Vec::new(),
        moved_aside,
    };
    if let Err(e) = std::fs::create_dir_all(dir) {
        tracing::error!(dir = %dir.display(), error = %e,
            "cannot create the state directory; sessions are kept in memory only");
        return Ok(in_memory(0));
    }
    let path = dir.join(FILE_NAME);
    let reason = match try_open(&path) {
        Ok(opened) => return Ok(opened),
        Err(Failure::InUse) => return Err(StorageError::InUse(path)),
        Err(Failure::Unwritable(e)) => {
            tracing::error!(file = %path.display(), error = %e,
                "cannot write the session store; sessions are kept in memory only");
            return Ok(in_memory(0));
        }
        Err(Failure::Unusable(reason)) => reason,
    };
    let aside = aside_name(&path, std::time::SystemTime::now());
    if let Err(e) = std::fs::rename(&path, &aside) {
        tracing::error!(file = %path.display(), %reason, error = %e,
            "the session store cannot be used and cannot be moved aside; sessions are kept in memory only");
        return Ok(in_memory(0));
    }
    tracing::error!(file = %path.display(), moved_to = %aside.display(), %reason,
        "the session store cannot be used; moved aside, starting with no sessions");
    match try_open(&path) {
        Ok(opened) => Ok(Opened {
            moved_aside: 1,
            ..opened
        }),
        Err(Failure::InUse) => Err(StorageError::InUse(path)),
        Err(Failure::Unwritable(e) | Failure::Unusable(e)) => {
            tracing::error!(file = %path.display(), error = %e,
                "cannot create a new session store; sessions are kept in memory only");
            Ok(in_memory(1))
        }
    }
}

enum Failure {
    InUse,
    /// The directory or file cannot be written (permissions, read-only file system).
    Unwritable(String),
    /// The file is damaged, not a store, or of another format.
    Unusable(String),
}

/// Runs `f`, turning a panic inside the store library into an error: redb has been seen to
/// panic ("entered unreachable code") on a file whose pages are inconsistent, and a damaged
/// file must never stop the gateway (or the `state` tool).
pub(crate) fn guarded<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(format!("the store library failed on this file: {what}"))
    })
}

fn try_open(path: &Path) -> Result<Opened, Failure> {
    let mut failure = None;
    let opened = guarded(|| {
        open_and_load(path).map_err(|f| {
            failure = Some(f);
            String::new()
        })
    });
    match (opened, failure) {
        (Ok(opened), _) => Ok(opened),
        (Err(_), Some(failure)) => Err(failure),
        (Err(panic), None) => Err(Failure::Unusable(panic)),
    }
}

fn open_and_load(path: &Path) -> Result<Opened, Failure> {
    let mut store = RedbStore::open(path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen | redb::DatabaseError::LockProtocolMismatch => {
            Failure::InUse
        }
        redb::DatabaseError::Storage(redb::StorageError::Io(io)) if unwritable(&io) => {
            Failure::Unwritable(io.to_string())
        }
        other => Failure::Unusable(other.to_string()),
    })?;
    match store
        .format()
        .map_err(|e| Failure::Unusable(e.to_string()))?
    {
        None => {
            store
                .initialise(STORE_FORMAT)
                .map_err(|e| Failure::Unwritable(e.to_string()))?;
        }
        Some(STORE_FORMAT) => {}
        Some(0) => {
            return Err(Failure::Unusable(
                "not a session store of this gateway".into(),
            ))
        }
        Some(other) => {
            // No older layout exists yet; a newer one comes from a later version of the
            // gateway (a downgrade) and cannot be read safely.
            return Err(Failure::Unusable(format!(
                "store format {other}, this version reads {STORE_FORMAT}"
            )));
        }
    }
    let sessions = store.load().map_err(|e| Failure::Unusable(e.to_string()))?;
    Ok(Opened {
        store: Some(store),
        sessions,
        moved_aside: 0,
    })
}

fn unwritable(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
    )
}

/// `<file>.damaged-<UTC time>`, e.g. `sessions.redb.damaged-20261204T183012Z`.
fn aside_name(path: &Path, now: std::time::SystemTime) -> PathBuf {
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".damaged-{}", utc_timestamp(secs)));
    PathBuf::from(name)
}

/// Seconds since 1970 as `YYYYMMDDTHHMMSSZ` (the proleptic Gregorian calendar, by the usual
/// days-to-civil arithmetic).
fn utc_timestamp(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Shift the epoch to 0000-03-01 so that leap days fall at the end of a year.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(utc_timestamp(0), "19700101T000000Z");
        assert_eq!(utc_timestamp(951_782_400), "20000229T000000Z");
        assert_eq!(utc_timestamp(1_796_403_661), "20261204T170101Z");
        assert_eq!(utc_timestamp(4_107_542_399), "21000228T235959Z");
    }
}
