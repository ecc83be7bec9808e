//! `mqttsn-gateway state FILE`: what a session store holds, for a person debugging a field
//! unit.

use std::fmt::Write as _;
use std::path::Path;

use mqttsn_core::engine::persist::record::{decode_message, decode_session, SessionImage};
use mqttsn_core::engine::persist::StoredSession;

use super::log_store::{replay, OpenError};
use super::STORE_FORMAT;

/// The report on the store at `path`, or why it cannot be read. The file is only read, so a
/// running gateway's store can be inspected too (a commit being written is left out).
pub fn describe(path: &Path) -> Result<String, String> {
    let mut file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let replayed = match replay(&mut file) {
        Ok(replayed) => replayed,
        Err(OpenError::Format(v)) => {
            return Err(format!(
                "{}: store format {v}; this version reads {STORE_FORMAT}",
                path.display()
            ))
        }
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let torn = if replayed.torn > 0 {
        format!(
            " (and {} bytes of a commit not finished, which does not count)",
            replayed.torn
        )
    } else {
        String::new()
    };
    let sessions = replayed.contents.load();
    let held: usize = sessions.iter().map(|s| s.messages.len()).sum();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: store format {STORE_FORMAT}, {} commits, {} sessions, {held} held messages{torn}",
        path.display(),
        replayed.commits,
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
        verified,
        ..
    } = &image;
    // An address that has not shown it receives gets nothing but answers to its own requests
    // (limits.verify_return_path), so this is the first thing to know about a quiet device.
    let proven = if *verified {
        "proven"
    } else {
        "not yet proven"
    };
    let _ = writeln!(
        out,
        "\n{:?}: {state:?} at {peer} (address {proven}), clean session {clean_session}, keep-alive {keep_alive_secs}s, sleep {sleep_secs}s",
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
