//! The table of pre-shared keys for PSK clients, read from a file in Mosquitto's `psk_file`
//! format: one `identity:hexkey` per line, `#` comments and blank lines allowed. Keys never
//! leave this module except into the DTLS engine: not in `Debug`, not in errors.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The longest identity and key accepted, in bytes. RFC 4279 allows more, but nothing a
/// sensor uses comes close, and the bound keeps a hostile file from costing memory.
pub const MAX_IDENTITY_LEN: usize = 128;
pub const MAX_KEY_LEN: usize = 64;

/// Identities and their keys. Cheap to share (`Arc<PskTable>`) and replaced whole on reload.
#[derive(Default, Clone, PartialEq, Eq)]
pub struct PskTable {
    // Sorted, so that `identities()` and everything derived from it is deterministic.
    keys: BTreeMap<Arc<str>, Key>,
}

/// A key's bytes, kept out of `Debug`.
#[derive(Clone, PartialEq, Eq)]
struct Key(Box<[u8]>);

/// Why a PSK file was refused. Names the line; never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum PskFileError {
    #[error("cannot read PSK file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("line {line}: expected `identity:hexkey`")]
    MissingSeparator { line: usize },
    #[error("line {line}: the identity is empty")]
    EmptyIdentity { line: usize },
    #[error("line {line}: the identity is longer than {MAX_IDENTITY_LEN} bytes")]
    IdentityTooLong { line: usize },
    #[error("line {line}: the key of identity {identity:?} is not an even number of hex digits")]
    BadKey { line: usize, identity: String },
    #[error(
        "line {line}: the key of identity {identity:?} is empty or longer than {MAX_KEY_LEN} bytes"
    )]
    KeyLength { line: usize, identity: String },
    #[error("line {line}: identity {identity:?} was already given on line {first}")]
    Duplicate {
        line: usize,
        first: usize,
        identity: String,
    },
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    let digits = text.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks_exact(2)
        .map(|pair| Some(hex_value(pair[0])? << 4 | hex_value(pair[1])?))
        .collect()
}

impl PskTable {
    /// Parses the text of a PSK file. As in Mosquitto, the identity ends at the first `:`.
    pub fn parse(text: &str) -> Result<PskTable, PskFileError> {
        let mut keys = BTreeMap::new();
        let mut first_seen: BTreeMap<Arc<str>, usize> = BTreeMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let entry = raw.trim();
            if entry.is_empty() || entry.starts_with('#') {
                continue;
            }
            let Some((identity, hex)) = entry.split_once(':') else {
                return Err(PskFileError::MissingSeparator { line });
            };
            if identity.is_empty() {
                return Err(PskFileError::EmptyIdentity { line });
            }
            if identity.len() > MAX_IDENTITY_LEN {
                return Err(PskFileError::IdentityTooLong { line });
            }
            let Some(key) = decode_hex(hex.trim()) else {
                return Err(PskFileError::BadKey {
                    line,
                    identity: identity.to_owned(),
                });
            };
            if key.is_empty() || key.len() > MAX_KEY_LEN {
                return Err(PskFileError::KeyLength {
                    line,
                    identity: identity.to_owned(),
                });
            }
            let identity: Arc<str> = Arc::from(identity);
            if let Some(first) = first_seen.get(&identity) {
                return Err(PskFileError::Duplicate {
                    line,
                    first: *first,
                    identity: identity.to_string(),
                });
            }
            first_seen.insert(identity.clone(), line);
            keys.insert(identity, Key(key.into_boxed_slice()));
        }
        Ok(PskTable { keys })
    }

    /// Reads and parses a PSK file.
    pub fn load(path: &Path) -> Result<PskTable, PskFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| PskFileError::Io {
            path: path.to_owned(),
            source,
        })?;
        PskTable::parse(&text)
    }

    /// The identities, in sorted order.
    pub fn identities(&self) -> impl Iterator<Item = &str> + '_ {
        self.keys.keys().map(|identity| &**identity)
    }

    /// Whether `identity` has a key.
    pub fn contains(&self, identity: &str) -> bool {
        self.keys.contains_key(identity)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The table's own copy of an identity's name, so events share it instead of copying.
    pub(crate) fn identity(&self, identity: &[u8]) -> Option<Arc<str>> {
        let identity = std::str::from_utf8(identity).ok()?;
        self.keys
            .get_key_value(identity)
            .map(|(name, _)| name.clone())
    }

    /// The key of `identity`, for the DTLS engine only.
    pub(crate) fn key(&self, identity: &[u8]) -> Option<&[u8]> {
        let identity = std::str::from_utf8(identity).ok()?;
        self.keys.get(identity).map(|key| &*key.0)
    }

    /// Whether `identity` has the same key in both tables (after a reload).
    pub(crate) fn same_key(&self, other: &PskTable, identity: &str) -> bool {
        match (self.keys.get(identity), other.keys.get(identity)) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        }
    }
}

impl fmt::Debug for PskTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Identities are not secret; the keys are.
        f.debug_struct("PskTable")
            .field("identities", &self.keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<key>")
    }
}
