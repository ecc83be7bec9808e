//! `[auth]`: who may connect as whom and which topics they may use (issue 12). The section
//! names the files (`clients_file`, `acl_file`); small setups and tests can list devices
//! (`[[auth.client]]`) and rules (`acl_rules`) inline. [`AuthConfig::load_policy`] reads the
//! files and builds the engine's [`AuthPolicy`], at start and on every SIGHUP.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use super::error::Origin;
use super::ConfigError;
use crate::engine::acl::Acl;
use crate::engine::auth::{AuthPolicy, DeviceEntry, Network};
use crate::hash::HashSeed;

/// `[auth]` as configured.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AuthConfig {
    /// A TOML file of `[[client]]` tables: the listed devices.
    pub clients_file: Option<PathBuf>,
    /// Devices listed in `gateway.toml` itself (`[[auth.client]]`), in addition.
    pub clients: Vec<DeviceEntry>,
    /// Topic rules in Mosquitto's `acl_file` format.
    pub acl_file: Option<PathBuf>,
    /// Rules written inline, one line of the format each, in addition.
    pub acl_rules: Vec<String>,
    /// Whether ClientIds nobody listed may connect; `None`: yes, unless devices are listed.
    pub allow_anonymous: Option<bool>,
    /// Networks QoS -1 publishes are taken from; `None`: anywhere while anonymous devices
    /// are allowed, nowhere otherwise.
    pub qos_minus1_from: Option<Vec<Network>>,
    /// Refuse to start (or reload) when a file holding secrets may be read by others.
    pub strict: bool,
}

impl AuthConfig {
    /// Whether any device is listed (or a file of them named).
    pub fn lists_devices(&self) -> bool {
        self.clients_file.is_some() || !self.clients.is_empty()
    }

    /// `allow_anonymous` in force.
    pub fn allows_anonymous(&self) -> bool {
        self.allow_anonymous.unwrap_or(!self.lists_devices())
    }

    /// Reads the clients and ACL files and builds the policy the engine enforces;
    /// `psk_identities` are those of the DTLS listeners (bound to their ClientIds).
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, line and key of the first problem.
    pub fn load_policy(
        &self,
        seed: HashSeed,
        psk_identities: Vec<Arc<str>>,
    ) -> Result<AuthPolicy, ConfigError> {
        let mut clients = self.clients.clone();
        if let Some(path) = &self.clients_file {
            let text = read(path)?;
            let name = path.display().to_string();
            for entry in parse_clients_file(&text, &name)? {
                if clients.iter().any(|c| c.client_id == entry.client_id) {
                    return Err(ConfigError::Invalid {
                        file: name,
                        line: 0,
                        column: 0,
                        key: "client_id".into(),
                        message: format!(
                            "{:?} is listed both here and in [[auth.client]]",
                            &*entry.client_id
                        ),
                    });
                }
                clients.push(entry);
            }
        }
        let mut rules = String::new();
        if let Some(path) = &self.acl_file {
            rules = read(path)?;
        }
        if !rules.is_empty() && !rules.ends_with('\n') {
            rules.push('\n');
        }
        let inline_from = rules.lines().count();
        for rule in &self.acl_rules {
            rules.push_str(rule);
            rules.push('\n');
        }
        let has_acl = self.acl_file.is_some() || !self.acl_rules.is_empty();
        let acl = if has_acl {
            Some(Acl::parse(&rules, seed).map_err(|e| {
                let (file, line) = match &self.acl_file {
                    Some(path) if e.line <= inline_from => (path.display().to_string(), e.line),
                    _ => ("auth.acl_rules".to_owned(), e.line - inline_from),
                };
                ConfigError::Invalid {
                    file,
                    line,
                    column: 1,
                    key: String::new(),
                    message: e.reason,
                }
            })?)
        } else {
            None
        };
        let anonymous = self.allows_anonymous();
        let qos_minus1_from = match &self.qos_minus1_from {
            Some(networks) => networks.clone(),
            None if anonymous => Network::ANY.to_vec(),
            None => Vec::new(),
        };
        Ok(AuthPolicy::new(
            seed,
            clients,
            psk_identities,
            anonymous,
            acl,
            qos_minus1_from,
        ))
    }

    /// The files of this section that hold secrets (broker passwords).
    pub fn secret_files(&self) -> Vec<&Path> {
        self.clients_file.iter().map(PathBuf::as_path).collect()
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|error| ConfigError::Io {
        file: path.to_path_buf(),
        error,
    })
}

/// `[auth]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawAuth {
    clients_file: Option<Spanned<String>>,
    #[serde(default)]
    client: Vec<RawClient>,
    acl_file: Option<Spanned<String>>,
    #[serde(default)]
    acl_rules: Vec<String>,
    allow_anonymous: Option<bool>,
    qos_minus1_from: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    strict: bool,
}

/// One `[[client]]` table (of the clients file, or `[[auth.client]]`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawClient {
    client_id: Spanned<String>,
    psk_identity: Option<String>,
    cert_cn: Option<String>,
    #[serde(default)]
    networks: Vec<Spanned<String>>,
    radio: Option<Spanned<OneOrMany>>,
    username: Option<String>,
    password: Option<String>,
}

/// `radio = "0013A200..."` or `radio = ["...", "..."]`.
#[derive(Deserialize)]
#[serde(untagged, expecting = "a radio address or a list of them")]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl Origin<'_> {
    fn networks(&self, list: &[Spanned<String>], key: &str) -> Result<Vec<Network>, ConfigError> {
        list.iter()
            .map(|n| {
                n.get_ref()
                    .parse()
                    .map_err(|e: String| self.invalid(n.span().start, key.to_owned(), e))
            })
            .collect()
    }

    fn client(&self, raw: RawClient, key: &str) -> Result<DeviceEntry, ConfigError> {
        let id = raw.client_id.get_ref();
        if id.is_empty() {
            return Err(self.invalid(
                raw.client_id.span().start,
                format!("{key}.client_id"),
                "must not be empty",
            ));
        }
        if raw.password.is_some() && raw.username.is_none() {
            return Err(self.invalid(
                raw.client_id.span().start,
                format!("{key}.password"),
                "a password needs a username",
            ));
        }
        let (radios, at) = match raw.radio {
            None => (Vec::new(), 0),
            Some(field) => {
                let at = field.span().start;
                match field.into_inner() {
                    OneOrMany::One(one) => (vec![one], at),
                    OneOrMany::Many(many) => (many, at),
                }
            }
        };
        let radios = radios
            .iter()
            .map(|r| {
                let hex = r.replace([':', ' '], "");
                u64::from_str_radix(&hex, 16)
                    .ok()
                    .filter(|_| hex.len() == 16)
                    .ok_or_else(|| {
                        self.invalid(
                            at,
                            format!("{key}.radio"),
                            format!(
                                "{r:?} is not an XBee 64-bit address (16 hex digits, e.g. 0013A20040A1B2C3)"
                            ),
                        )
                    })
            })
            .collect::<Result<Vec<u64>, _>>()?;
        Ok(DeviceEntry {
            client_id: Arc::from(id.as_str()),
            psk_identity: raw.psk_identity.map(Arc::from),
            cert_cn: raw.cert_cn.map(Arc::from),
            networks: self.networks(&raw.networks, &format!("{key}.networks"))?,
            radios,
            username: raw.username.map(Arc::from),
            password: raw.password.map(Arc::from),
        })
    }
}

fn unique(
    origin: &Origin,
    entries: &[DeviceEntry],
    spans: &[usize],
    key: &str,
) -> Result<(), ConfigError> {
    for (i, entry) in entries.iter().enumerate() {
        if let Some(j) = entries[..i]
            .iter()
            .position(|e| e.client_id == entry.client_id)
        {
            return Err(origin.invalid(
                spans[i],
                format!("{key}[{i}].client_id"),
                format!("{:?} is listed twice (also {key}[{j}])", &*entry.client_id),
            ));
        }
    }
    Ok(())
}

/// The devices of a clients file: `[[client]]` tables.
///
/// # Errors
/// [`ConfigError::Invalid`] naming the line and key.
pub fn parse_clients_file(text: &str, name: &str) -> Result<Vec<DeviceEntry>, ConfigError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        #[serde(default)]
        client: Vec<RawClient>,
    }
    let origin = Origin { text, name };
    let file: File = toml::from_str(text).map_err(|e| {
        origin.invalid(
            e.span().map_or(0, |s| s.start),
            String::new(),
            without_values(e.message()),
        )
    })?;
    let spans: Vec<usize> = file
        .client
        .iter()
        .map(|c| c.client_id.span().start)
        .collect();
    let entries = file
        .client
        .into_iter()
        .enumerate()
        .map(|(i, raw)| origin.client(raw, &format!("client[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    unique(&origin, &entries, &spans, "client")?;
    Ok(entries)
}

/// A TOML error message with the offending value left out: in a clients file it may be a
/// password (`invalid type: integer `12345678``), and errors reach logs.
fn without_values(message: &str) -> String {
    if !message.starts_with("invalid") {
        return message.to_owned();
    }
    let mut out = String::with_capacity(message.len());
    let mut quoted = false;
    for c in message.chars() {
        if c == '`' {
            quoted = !quoted;
            if quoted {
                out.push_str("(value not shown)");
            }
        } else if !quoted {
            out.push(c);
        }
    }
    out
}

impl RawAuth {
    pub(super) fn check(self, text: &str, name: &str) -> Result<AuthConfig, ConfigError> {
        let origin = Origin { text, name };
        let path = |field: Option<Spanned<String>>, key: &str| match field {
            Some(f) if f.get_ref().is_empty() => {
                Err(origin.invalid(f.span().start, key.to_owned(), "must not be empty"))
            }
            Some(f) => Ok(Some(PathBuf::from(f.into_inner()))),
            None => Ok(None),
        };
        let spans: Vec<usize> = self
            .client
            .iter()
            .map(|c| c.client_id.span().start)
            .collect();
        let clients = self
            .client
            .into_iter()
            .enumerate()
            .map(|(i, raw)| origin.client(raw, &format!("auth.client[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        unique(&origin, &clients, &spans, "auth.client")?;
        let qos_minus1_from = match &self.qos_minus1_from {
            Some(list) => Some(origin.networks(list, "auth.qos_minus1_from")?),
            None => None,
        };
        Ok(AuthConfig {
            clients_file: path(self.clients_file, "auth.clients_file")?,
            clients,
            acl_file: path(self.acl_file, "auth.acl_file")?,
            acl_rules: self.acl_rules,
            allow_anonymous: self.allow_anonymous,
            qos_minus1_from,
            strict: self.strict,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clients_file_lists_devices_and_their_proofs() {
        let text = r#"
[[client]]
client_id = "sensor-1"
networks = ["10.1.0.0/16", "fd00::/8"]
radio = "0013A200:40A1B2C3"
username = "sensors"
password = "s3cret"

[[client]]
client_id = "secure-1"
psk_identity = "psk-1"
"#;
        let entries = parse_clients_file(text, "clients.toml").unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].radios, [0x0013_A200_40A1_B2C3]);
        assert_eq!(entries[0].networks.len(), 2);
        assert_eq!(entries[1].psk_identity.as_deref(), Some("psk-1"));
        assert!(!format!("{entries:?}").contains("s3cret"));
    }

    #[test]
    fn clients_file_errors_name_line_and_key() {
        let cases = [
            (
                "[[client]]\nclient_id = \"a\"\nnetworks = [\"10.0.0.0/40\"]\n",
                "clients.toml:3:13: client[0].networks: \"10.0.0.0/40\": the prefix length must be 0 to 32",
            ),
            (
                "[[client]]\nclient_id = \"a\"\nradio = \"12\"\n",
                "clients.toml:3:9: client[0].radio: \"12\" is not an XBee 64-bit address",
            ),
            (
                "[[client]]\nclient_id = \"a\"\n[[client]]\nclient_id = \"a\"\n",
                "clients.toml:4:13: client[1].client_id: \"a\" is listed twice (also client[0])",
            ),
            (
                "[[client]]\nclient_id = \"a\"\npassword = \"x\"\n",
                "client[0].password: a password needs a username",
            ),
            ("[[client]]\nclientid = \"a\"\n", "unknown field `clientid`"),
            (
                "[[client]]\nclient_id = \"a\"\nusername = \"u\"\npassword = 12345678\n",
                "invalid type: integer (value not shown), expected a string",
            ),
        ];
        for (text, expected) in cases {
            let e = parse_clients_file(text, "clients.toml")
                .unwrap_err()
                .to_string();
            assert!(e.contains(expected), "{text:?}: {e}");
        }
    }

    #[test]
    fn anonymous_devices_are_allowed_until_devices_are_listed() {
        let mut auth = AuthConfig::default();
        assert!(auth.allows_anonymous());
        let policy = auth.load_policy(HashSeed(1, 2), Vec::new()).unwrap();
        assert!(policy.allows_anonymous() && !policy.has_acl());
        auth.clients.push(DeviceEntry {
            client_id: "x".into(),
            ..DeviceEntry::default()
        });
        assert!(!auth.allows_anonymous());
        auth.allow_anonymous = Some(true);
        assert!(auth.allows_anonymous());
    }

    #[test]
    fn inline_acl_errors_point_at_the_rule() {
        let auth = AuthConfig {
            acl_rules: vec!["topic read a/#".into(), "bogus".into()],
            ..AuthConfig::default()
        };
        let e = auth
            .load_policy(HashSeed(1, 2), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("auth.acl_rules:2:1: unknown keyword"), "{e}");
    }
}
