//! Hex text <-> bytes, as people type frames in a terminal or a transcript: pairs of hex digits,
//! with spaces, tabs, `:` or `-` between bytes allowed, and an optional `0x` prefix per byte.

use thiserror::Error;

/// Why a piece of text is not a hex byte string.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HexError {
    /// A character that is neither a hex digit nor a separator.
    #[error("invalid hex character {ch:?} at column {column}")]
    InvalidChar { ch: char, column: usize },
    /// An odd number of hex digits in a group.
    #[error("odd number of hex digits in {group:?}: each byte needs two digits")]
    OddDigits { group: String },
}

/// Parses text such as `"08 04 04 01"`, `"08040401"` or `"0x08 0x04"` into bytes.
pub fn parse(text: &str) -> Result<Vec<u8>, HexError> {
    let mut out = Vec::with_capacity(text.len() / 2);
    for group in text.split(|c: char| c.is_whitespace() || c == ':' || c == '-') {
        if group.is_empty() {
            continue;
        }
        let digits = group
            .strip_prefix("0x")
            .or_else(|| group.strip_prefix("0X"))
            .unwrap_or(group);
        if let Some((i, ch)) = digits.char_indices().find(|(_, c)| !c.is_ascii_hexdigit()) {
            let offset = group.len() - digits.len() + i;
            let column = group.as_ptr() as usize - text.as_ptr() as usize + offset + 1;
            return Err(HexError::InvalidChar { ch, column });
        }
        if digits.len() % 2 != 0 {
            return Err(HexError::OddDigits {
                group: group.to_string(),
            });
        }
        let raw = digits.as_bytes();
        for pair in raw.chunks_exact(2) {
            out.push((nibble(pair[0]) << 4) | nibble(pair[1]));
        }
    }
    Ok(out)
}

fn nibble(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => digit - b'A' + 10,
    }
}

/// Formats bytes as upper-case hex pairs separated by single spaces: `08 04 04 01`.
pub fn format(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(&format!("{b:02X}"));
    }
    s
}

/// Formats bytes as lower-case hex without separators: `08040401` (for JSON output).
pub fn format_compact(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_usual_spellings() {
        assert_eq!(parse("08 04 04 01").unwrap(), [8, 4, 4, 1]);
        assert_eq!(parse("08040401").unwrap(), [8, 4, 4, 1]);
        assert_eq!(parse("0x08 0X04\t04:01-ff").unwrap(), [8, 4, 4, 1, 0xff]);
        assert_eq!(parse("").unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn reports_what_is_wrong() {
        assert_eq!(
            parse("08 0g").unwrap_err(),
            HexError::InvalidChar { ch: 'g', column: 5 }
        );
        assert_eq!(
            parse("08 040").unwrap_err(),
            HexError::OddDigits {
                group: "040".into()
            }
        );
    }

    #[test]
    fn formats_round_trip() {
        let bytes = [0u8, 0x7e, 0xff, 0x10];
        assert_eq!(format(&bytes), "00 7E FF 10");
        assert_eq!(format_compact(&bytes), "007eff10");
        assert_eq!(parse(&format(&bytes)).unwrap(), bytes);
    }
}
