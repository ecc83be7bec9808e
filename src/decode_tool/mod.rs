//! The `decode` subcommand: turns hex frames (as people copy them from radio logs) into one
//! readable line or one JSON object each, reporting bad frames without stopping.

pub mod json;

use crate::codec::{DecodeOptions, Frame};
use crate::hex;
use serde_json::json;
use std::io::{self, Write};

/// How to print decoded frames.
#[derive(Debug, Clone, Copy, Default)]
pub struct DecodeFormat {
    /// One JSON object per line instead of text.
    pub json: bool,
    /// Nonstandard forms to accept.
    pub options: DecodeOptions,
}

/// Decodes each input (hex text of one frame) and writes one line per input to `out`.
/// Returns the number of inputs that were not valid frames.
pub fn decode_frames<'a>(
    inputs: impl IntoIterator<Item = &'a str>,
    format: DecodeFormat,
    out: &mut impl Write,
) -> io::Result<usize> {
    let mut bad = 0;
    for input in inputs {
        if input.trim().is_empty() {
            continue;
        }
        let line = match hex::parse(input) {
            Err(e) => {
                bad += 1;
                error_line(format, input, &format!("not hex: {e}"))
            }
            Ok(bytes) => match Frame::decode_with(&bytes, &format.options) {
                Ok(frame) if format.json => json::frame_json(&frame).to_string(),
                Ok(frame) => frame.to_string(),
                Err(e) => {
                    bad += 1;
                    let mut why = e.to_string();
                    if bytes.len() == 1 {
                        // `decode 02 17` passes two one-byte frames; say how to pass one.
                        why.push_str(" (one frame per argument: quote frames that contain spaces)");
                    }
                    error_line(format, input, &why)
                }
            },
        };
        writeln!(out, "{line}")?;
    }
    Ok(bad)
}

fn error_line(format: DecodeFormat, input: &str, why: &str) -> String {
    if format.json {
        json!({ "error": why, "input": input.trim() }).to_string()
    } else {
        format!("error: {why} [{}]", input.trim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(inputs: &[&str], json: bool) -> (String, usize) {
        let mut out = Vec::new();
        let format = DecodeFormat {
            json,
            ..Default::default()
        };
        let bad = decode_frames(inputs.iter().copied(), format, &mut out).unwrap();
        (String::from_utf8(out).unwrap(), bad)
    }

    #[test]
    fn good_and_bad_frames_each_get_a_line() {
        let (text, bad) = run(
            &["09 0C 20 00 01 00 01 68 69", "05 17", "zz", "", "02 17"],
            false,
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(bad, 2);
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("PUBLISH qos=1"));
        assert_eq!(
            lines[1],
            "error: length field says 5 bytes but the frame has 2 [05 17]"
        );
        assert!(lines[2].starts_with("error: not hex: invalid hex character 'z'"));
        assert_eq!(lines[3], "PINGRESP");
    }

    #[test]
    fn json_lines_parse_as_json() {
        let (text, bad) = run(&["03 05 00", "02 03"], true);
        assert_eq!(bad, 1);
        let values: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(values[0]["type"], "CONNACK");
        assert_eq!(values[0]["return_code_name"], "accepted");
        assert_eq!(values[1]["error"], "reserved message type 0x03");
    }

    #[test]
    fn a_single_byte_frame_hints_at_quoting() {
        let (text, _) = run(&["02"], false);
        assert!(text.contains("quote frames that contain spaces"), "{text}");
    }
}
