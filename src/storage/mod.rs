//! The state directory (`[storage] dir`): opening the session store at start, and what happens
//! when it cannot be used. A damaged, foreign or newer-format file is moved aside (kept for
//! inspection) and the gateway starts empty; a directory it cannot write makes it run in
//! memory. Only a store another running gateway holds stops the start.

pub mod group_commit;
pub mod inspect;
pub mod log_store;

use std::path::{Path, PathBuf};

use mqttsn_core::engine::persist::StoredSession;
use thiserror::Error;

pub use log_store::LogStore;
use log_store::OpenError;

/// The store's file in the state directory.
pub const FILE_NAME: &str = "sessions.log";

/// The layout version of the file (its framing and change records; each session record
/// carries its own version too). A file of another version is moved aside, never misread.
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
    pub store: Option<LogStore>,
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
        Err(OpenError::InUse) => return Err(StorageError::InUse(path)),
        Err(OpenError::Unwritable(e)) => {
            tracing::error!(file = %path.display(), error = %e,
                "cannot write the session store; sessions are kept in memory only");
            return Ok(in_memory(0));
        }
        Err(reason @ (OpenError::Damaged(_) | OpenError::Format(_))) => reason,
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
        Err(OpenError::InUse) => Err(StorageError::InUse(path)),
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e,
                "cannot create a new session store; sessions are kept in memory only");
            Ok(in_memory(1))
        }
    }
}

fn try_open(path: &Path) -> Result<Opened, OpenError> {
    let (store, replayed) = LogStore::open(path)?;
    if replayed.torn > 0 {
        tracing::info!(file = %path.display(), bytes = replayed.torn,
            "the last commit was cut short (the gateway stopped while writing it) and is dropped");
    }
    Ok(Opened {
        store: Some(store),
        sessions: replayed.contents.load(),
        moved_aside: 0,
    })
}

/// `<file>.damaged-<UTC time>`, e.g. `sessions.log.damaged-20261204T183012Z`.
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
