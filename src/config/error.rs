//! Why a configuration could not be loaded, with enough position to fix the file.

use std::fmt::Write as _;
use std::path::PathBuf;

/// An error loading a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {error}", file.display())]
    Io {
        /// The file as given to [`Config::load`](super::Config::load).
        file: PathBuf,
        /// What the operating system said.
        error: std::io::Error,
    },
    /// The file was read but is not a valid configuration: bad TOML syntax, an unknown key, a
    /// value of the wrong type, or one that breaks a rule of the schema.
    ///
    /// Displays on one line as `file:line:column: key: message`.
    #[error("{}", invalid_to_string(file, *line, *column, key, message))]
    Invalid {
        /// The file name (the `origin` given to [`Config::from_toml_str`](super::Config::from_toml_str)).
        file: String,
        /// 1-based line of the offending key or value; 0 if unknown (which only TOML syntax
        /// errors without a position could give).
        line: usize,
        /// 1-based column, in characters; 0 if unknown.
        column: usize,
        /// Path of the offending key, like `predefined[1].id`; empty for the top level of the
        /// file (an unknown top-level key, a syntax error).
        key: String,
        /// What is wrong and what was expected.
        message: String,
    },
}

fn invalid_to_string(file: &str, line: usize, column: usize, key: &str, message: &str) -> String {
    let mut out = String::from(file);
    if line > 0 {
        // Writing to a String cannot fail.
        let _ = write!(out, ":{line}:{column}");
    }
    out.push_str(": ");
    if !key.is_empty() {
        out.push_str(key);
        out.push_str(": ");
    }
    out.push_str(message);
    out
}

/// A text being checked and its name, to point errors at a byte offset in it.
pub(super) struct Origin<'a> {
    pub text: &'a str,
    pub name: &'a str,
}

impl Origin<'_> {
    /// [`ConfigError::Invalid`] at byte `at`.
    pub fn invalid(&self, at: usize, key: String, message: impl Into<String>) -> ConfigError {
        let (line, column) = line_and_column(self.text, at);
        ConfigError::Invalid {
            file: self.name.to_owned(),
            line,
            column,
            key,
            message: message.into(),
        }
    }
}

/// The 1-based line and column (in characters) of byte `offset` in `text`.
pub(super) fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    // Spans from the TOML parser fall on character boundaries; clamp rather than trust that.
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let line = before.matches('\n').count() + 1;
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_lines_and_characters() {
        let text = "a = 1\n\nb = \"é\" x\n";
        assert_eq!(line_and_column(text, 0), (1, 1));
        assert_eq!(line_and_column(text, 4), (1, 5));
        assert_eq!(line_and_column(text, 6), (2, 1));
        assert_eq!(line_and_column(text, 7), (3, 1));
        // 'x' comes after a two-byte 'é': byte 16, character column 9.
        assert_eq!(line_and_column(text, 16), (3, 9));
        assert_eq!(line_and_column(text, 999), (4, 1));
    }

    #[test]
    fn invalid_displays_on_one_line() {
        let err = ConfigError::Invalid {
            file: "gateway.toml".into(),
            line: 12,
            column: 8,
            key: "predefined[1].id".into(),
            message: "predefined topic id 0 is reserved".into(),
        };
        assert_eq!(
            err.to_string(),
            "gateway.toml:12:8: predefined[1].id: predefined topic id 0 is reserved"
        );
        let err = ConfigError::Invalid {
            file: "x.toml".into(),
            line: 0,
            column: 0,
            key: String::new(),
            message: "bad".into(),
        };
        assert_eq!(err.to_string(), "x.toml: bad");
    }
}
