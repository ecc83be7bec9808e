//! Every frame in every fixture transcript is a codec test: it decodes, re-encodes to the same
//! bytes, and every truncated prefix is an error (not a panic).
//!
//! Real clients sometimes set flag bits that mean nothing for a message (the `mqttsn` client
//! sets CleanSession on every PUBLISH); the codec ignores those on decode and writes them as
//! zero, so for the flags octet only the bits the message uses must survive the round trip.
//!
//! Lines whose comment starts with `malformed` are deliberately broken input (hostile-input
//! transcripts): for those, decoding must fail, with an error rather than a panic.

use mqttsn_gateway::codec::{wire, DecodeOptions, Frame, MsgType};
use mqttsn_gateway::transcript::{PeerKind, Transcript};
use std::path::{Path, PathBuf};

fn fixture_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            fixture_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "snlog") {
            out.push(path);
        }
    }
}

/// Flag bits each message type gives meaning to (§5.3.4); `None` if it has no flags octet.
fn meaningful_flag_bits(msg_type: MsgType) -> Option<u8> {
    match msg_type {
        MsgType::Connect => Some(0x0C),
        MsgType::Publish => Some(0xF3),
        MsgType::Subscribe => Some(0xE3),
        MsgType::SubAck => Some(0x60),
        MsgType::Unsubscribe => Some(0x03),
        MsgType::WillTopic | MsgType::WillTopicUpd => Some(0x70),
        _ => None,
    }
}

/// Checks one frame; returns a description of the problem, if any. `quirk` frames (real but
/// nonstandard, under `fixtures/quirks/`) must decode, but need only re-encode to an equal
/// message, not to the same bytes.
fn check_frame(bytes: &[u8], opts: &DecodeOptions, quirk: bool) -> Result<(), String> {
    let frame = Frame::decode_with(bytes, opts).map_err(|e| format!("does not decode: {e}"))?;
    let again = frame
        .to_vec()
        .map_err(|e| format!("does not encode: {e}"))?;
    if quirk {
        if Frame::decode_with(&again, opts) != Ok(frame) {
            return Err("re-encoded quirk decodes differently".into());
        }
    } else if again != bytes {
        // Tolerate only differences in the flags octet's unused bits.
        let header = if Frame::is_encapsulated(bytes) {
            usize::from(bytes[0])
        } else {
            0
        };
        let len = wire::peek_length(&bytes[header..])
            .ok()
            .flatten()
            .ok_or("bad length")?;
        let flags_at = header + len.field_len + 1;
        let mask = meaningful_flag_bits(frame.message.msg_type());
        let only_unused_flag_bits = again.len() == bytes.len()
            && mask.is_some_and(|mask| {
                bytes
                    .iter()
                    .zip(&again)
                    .enumerate()
                    .all(|(i, (a, b))| a == b || (i == flags_at && (a & mask) == (b & mask)))
            });
        if !only_unused_flag_bits {
            return Err(format!(
                "re-encodes differently: {}",
                mqttsn_gateway::hex::format(&again)
            ));
        }
    }
    for cut in 0..bytes.len() {
        if Frame::decode_with(&bytes[..cut], opts).is_ok() {
            return Err(format!("its {cut}-byte prefix decodes"));
        }
    }
    Ok(())
}

#[test]
fn every_fixture_frame_round_trips() {
    let mut files = Vec::new();
    fixture_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"),
        &mut files,
    );
    files.sort();
    assert!(files.len() >= 3, "fixtures found: {files:?}");
    let mut failures = Vec::new();
    let mut checked = 0;
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let transcript = Transcript::parse(&text, &path.display().to_string()).unwrap();
        // A fixture that enables the nonstandard long-topic form decodes with it.
        let opts = DecodeOptions {
            qos_minus1_long_topic: transcript
                .config
                .iter()
                .any(|(k, v)| k == "gateway.qos_minus1_long_topic" && v.trim() == "true"),
        };
        for entry in &transcript.entries {
            let broker = matches!(
                transcript.peer(entry.peer()).map(|p| &p.kind),
                Some(PeerKind::Broker { .. })
            );
            let Some(bytes) = entry.exact_bytes() else {
                continue; // wildcards: not one concrete frame
            };
            if broker {
                continue; // MQTT, not MQTT-SN
            }
            checked += 1;
            let malformed = entry
                .comment
                .as_deref()
                .is_some_and(|c| c.trim_start().starts_with("malformed"));
            if malformed {
                if Frame::decode_with(&bytes, &opts).is_ok() {
                    failures.push(format!(
                        "{}:{}: marked malformed but decodes",
                        path.display(),
                        entry.line
                    ));
                }
                continue;
            }
            let quirk = path.components().any(|c| c.as_os_str() == "quirks");
            if let Err(why) = check_frame(&bytes, &opts, quirk) {
                failures.push(format!("{}:{}: {why}", path.display(), entry.line));
            }
        }
    }
    assert!(checked >= 100, "only {checked} frames checked");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
