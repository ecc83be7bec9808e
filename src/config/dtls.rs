//! `[[dtls]]`: DTLS 1.2 listeners beside plain UDP (issue 12), for devices with a PSK
//! (`psk_file`, Mosquitto's `identity:hexkey` format) or a certificate (`cert_file`,
//! `key_file`, and `ca_file` to check the devices' own certificates).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::error::Origin;
use super::ConfigError;
use crate::time::Duration;

/// One `[[dtls]]` listener.
#[derive(Debug, Clone, PartialEq)]
pub struct DtlsConfig {
    /// Local address to receive datagrams on.
    pub bind: SocketAddr,
    /// Identities and keys of PSK devices (`identity:hexkey` per line). Reloaded on SIGHUP.
    pub psk_file: Option<PathBuf>,
    /// The gateway's certificate (PEM, ECDSA P-256), for ECDHE-ECDSA suites.
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM, PKCS#8 or SEC1).
    pub key_file: Option<PathBuf>,
    /// CA certificates (PEM) the devices' certificates must chain to.
    pub ca_file: Option<PathBuf>,
    /// Certificate devices must present a certificate that chains to `ca_file`.
    pub require_certificate: bool,
    /// Most associations (established and half-open together).
    pub max_associations: usize,
    /// Most handshakes in progress (after the cookie exchange).
    pub max_handshakes: usize,
    /// A handshake not complete after this long is dropped.
    pub handshake_timeout: Duration,
    /// An association silent for this long is closed (the device shakes hands again).
    pub idle_timeout: Duration,
}

impl DtlsConfig {
    /// A PSK listener on `bind` with the default bounds.
    pub fn new(bind: SocketAddr) -> Self {
        DtlsConfig {
            bind,
            psk_file: None,
            cert_file: None,
            key_file: None,
            ca_file: None,
            require_certificate: false,
            max_associations: 10_000,
            max_handshakes: 256,
            handshake_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(3600),
        }
    }
}

/// `[[dtls]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawDtls {
    bind: Spanned<String>,
    psk_file: Option<Spanned<String>>,
    cert_file: Option<Spanned<String>>,
    key_file: Option<Spanned<String>>,
    ca_file: Option<Spanned<String>>,
    require_certificate: Option<Spanned<bool>>,
    max_associations: Option<Spanned<i64>>,
    max_handshakes: Option<Spanned<i64>>,
    handshake_timeout: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
}

/// Checks the `[[dtls]]` tables.
pub(super) fn check(
    list: Vec<RawDtls>,
    text: &str,
    name: &str,
) -> Result<Vec<DtlsConfig>, ConfigError> {
    let origin = Origin { text, name };
    let mut out: Vec<DtlsConfig> = Vec::with_capacity(list.len());
    for (i, raw) in list.into_iter().enumerate() {
        let key = |field: &str| format!("dtls[{i}].{field}");
        let at = raw.bind.span().start;
        let bind: SocketAddr = raw.bind.get_ref().parse().map_err(|_| {
            origin.invalid(
                at,
                key("bind"),
                format!(
                    "invalid socket address {:?} (expected e.g. 0.0.0.0:1885)",
                    raw.bind.get_ref()
                ),
            )
        })?;
        if let Some(first) = out.iter().position(|d| d.bind == bind) {
            return Err(origin.invalid(
                at,
                key("bind"),
                format!("duplicate bind address {bind} (also dtls[{first}].bind)"),
            ));
        }
        let path = |field: Option<Spanned<String>>, name: &str| match field {
            Some(f) if f.get_ref().is_empty() => {
                Err(origin.invalid(f.span().start, key(name), "must not be empty"))
            }
            Some(f) => Ok(Some(PathBuf::from(f.into_inner()))),
            None => Ok(None),
        };
        let count = |field: Option<Spanned<i64>>, name: &str, default: usize| match field {
            Some(f) => usize::try_from(*f.get_ref())
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| {
                    origin.invalid(
                        f.span().start,
                        key(name),
                        format!("must be at least 1, got {}", f.get_ref()),
                    )
                }),
            None => Ok(default),
        };
        let duration = |field: Option<Spanned<String>>, name: &str, default: Duration| match field {
            Some(f) => super::parse_duration(f.get_ref())
                .filter(|d| d.as_millis() > 0)
                .ok_or_else(|| {
                    origin.invalid(
                        f.span().start,
                        key(name),
                        format!(
                            "invalid duration {:?}: {}",
                            f.get_ref(),
                            super::value::DURATION_EXPECTED
                        ),
                    )
                }),
            None => Ok(default),
        };
        let d = DtlsConfig::new(bind);
        let require = raw
            .require_certificate
            .as_ref()
            .map(|f| (*f.get_ref(), f.span().start));
        let config = DtlsConfig {
            bind,
            psk_file: path(raw.psk_file, "psk_file")?,
            cert_file: path(raw.cert_file, "cert_file")?,
            key_file: path(raw.key_file, "key_file")?,
            ca_file: path(raw.ca_file, "ca_file")?,
            require_certificate: require.is_some_and(|(r, _)| r),
            max_associations: count(raw.max_associations, "max_associations", d.max_associations)?,
            max_handshakes: count(raw.max_handshakes, "max_handshakes", d.max_handshakes)?,
            handshake_timeout: duration(
                raw.handshake_timeout,
                "handshake_timeout",
                d.handshake_timeout,
            )?,
            idle_timeout: duration(raw.idle_timeout, "idle_timeout", d.idle_timeout)?,
        };
        if config.cert_file.is_some() != config.key_file.is_some() {
            return Err(origin.invalid(
                at,
                key(if config.cert_file.is_some() {
                    "key_file"
                } else {
                    "cert_file"
                }),
                "cert_file and key_file go together",
            ));
        }
        if config.psk_file.is_none() && config.cert_file.is_none() {
            return Err(origin.invalid(
                at,
                key("psk_file"),
                "a DTLS listener needs psk_file, or cert_file and key_file",
            ));
        }
        if let Some((true, at)) = require {
            if config.ca_file.is_none() || config.cert_file.is_none() {
                return Err(origin.invalid(
                    at,
                    key("require_certificate"),
                    "needs ca_file (to check the devices' certificates) and cert_file",
                ));
            }
        }
        out.push(config);
    }
    Ok(out)
}
