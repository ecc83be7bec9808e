//! `mqttsn-gateway state FILE`: what a session store holds, for a person debugging a field
//! unit. Opens the file read-only; the gateway that owns it must be stopped (or the file copied).

use std::fmt::Write as _;
use std::path::Path;

use mqttsn_core::engine::persist::record::{decode_message, decode_session, SessionImage};
use mqttsn_core::engine::persist::StoredSession;

use super::redb_store::{format_of, load_from};
use super::STORE_FORMAT;

/// The report on the store at `path`, or why it cannot be read.
pub fn describe(path: &Path) -> Result<String, String> {
    super::guarded(|| read_report(path))
}

fn read_report(path: &Path) -> Result<String, String> {
    match redb::ReadOnlyDatabase::open(path) {
        Ok(db) => report(path, &db, ""),
        // Not closed cleanly (the gateway was killed, or lost power): redb repairs such a file
        // when it is next opened for writing, which this tool must not do to the original.
        Err(redb::DatabaseError::RepairAborted) => {
            let copy = std::env::temp_dir()
                .join(format!("mqttsn-gateway-state-{}.redb", std::process::id()));
            std::fs::copy(path, &copy).map_err(|e| format!("{}: {e}", path.display()))?;
            let result = redb::Database::create(&copy)
                .map_err(|e| format!("{}: {e}", path.display()))
                .and_then(|db| {
                    report(
                        path,
                        &db,
                        " (not closed cleanly: read from a repaired copy; the gateway repairs the file itself when it starts)",
                    )
                });
            let _ = std::fs::remove_file(&copy);
            result
        }
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => Err(format!(
            "{}: in use by a running gateway; stop it, or copy the file and inspect the copy",
            path.display()
        )),
        Err(other) => Err(format!("{}: {other}", path.display())),
    }
}

fn report(path: &Path, db: &impl redb::ReadableDatabase, note: &str) -> Result<String, String> {
    let format = format_of(db).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = String::new();
    match format {
        None => {
            let _ = writeln!(out, "{}: empty store", path.display());
            return Ok(out);
        }
        Some(STORE_FORMAT) => {}
        Some(other) => {
            return Err(format!(
                "{}: store format {other}; this version reads {STORE_FORMAT}",
                path.display()
            ))
        }
    }
    let sessions = load_from(db).map_err(|e| format!("{}: {e}", path.display()))?;
    let held: usize = sessions.iter().map(|s| s.messages.len()).sum();
    let _ = writeln!(
        out,
        "{}: store format {STORE_FORMAT}, {} sessions, {held} held messages{note}",
        path.display(),
        sessions.len()
    );
    for stored in &sessions {
        describe_session(&mut out, stored);
    }
    Ok(out)
}

fn describe_session(out: &mut String, stored: &StoredSession) {
    let image = match decode_session(&stored.record) {
        Ok(image) => image,
        Err(e) => {
            let _ = writeln!(out, "\n{:?}: unreadable record: {e}", stored.client_id);
            return;
        }
    };
    let SessionImage {
        state,
        clean_session,
        keep_alive_secs,
        sleep_secs,
        peer,
        ..
    } = &image;
    let _ = writeln!(
        out,
        "\n{:?}: {state:?} at {peer}, clean session {clean_session}, keep-alive {keep_alive_secs}s, sleep {sleep_secs}s",
        stored.client_id
    );
    let pending = image.topics.iter().filter(|t| t.1).count();
    let _ = write!(out, "  topic ids: {}", image.topics.len());
    if pending > 0 {
        let _ = write!(out, " ({pending} awaiting REGACK)");
    }
    out.push('\n');
    for (index, (name, is_pending)) in image.topics.iter().enumerate() {
        let mark = if *is_pending { " (pending)" } else { "" };
        let _ = writeln!(out, "    {} = {name}{mark}", index + 1);
    }
    for (filter, qos) in &image.filters {
        let _ = writeln!(out, "  subscribed: {filter} (QoS {})", qos.level());
    }
    if let Some(will) = &image.will {
        let _ = writeln!(
            out,
            "  will: {} ({} bytes, QoS {}{})",
            will.topic,
            will.payload.len(),
            will.qos.level(),
            if will.retain { ", retained" } else { "" }
        );
    }
    if !image.up.is_empty() {
        let _ = writeln!(
            out,
            "  QoS 2 publishes towards the broker: {}",
            image.up.len()
        );
    }
    if let Some((kind, msg_id)) = &image.inflight {
        let _ = writeln!(
            out,
            "  awaiting the device's answer to MsgId {msg_id}: {kind:?}"
        );
    }
    let bytes: usize = stored.messages.iter().map(|m| m.1.len()).sum();
    let _ = writeln!(
        out,
        "  held messages: {} ({bytes} bytes stored)",
        stored.messages.len()
    );
    for (seq, record) in &stored.messages {
        match decode_message(record) {
            Ok(down) => {
                let _ = writeln!(
                    out,
                    "    #{seq} {} QoS {} ({} bytes)",
                    down.topic,
                    down.qos.level(),
                    down.payload.len()
                );
            }
            Err(e) => {
                let _ = writeln!(out, "    #{seq} unreadable: {e}");
            }
        }
    }
}
