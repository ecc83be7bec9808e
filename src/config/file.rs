//! The configuration file as written: a serde mirror of `gateway.toml` that rejects unknown keys
//! and keeps each value's position, and the checks that turn it into a typed [`Config`].
//!
//! Every key is optional here (required ones excepted) so that "absent" stays visible: defaults are
//! filled in by the checks, from the typed config's `Default` impls, and some keys are an error
//! merely by being present where they do not apply. Numbers are read as `i64` and range-checked
//! here, so that every out-of-range value gets the same kind of message with its allowed range.

use std::net::SocketAddr;
use std::ops::{Range, RangeInclusive};
use std::path::PathBuf;

use serde::Deserialize;
use serde_path_to_error::Segment;
use toml::Spanned;

use super::error::line_and_column;
use super::value::DURATION_EXPECTED;
use super::{
    Config, ConfigError, DropPolicy, Framing, GatewayConfig, LimitsConfig, Mode,
    MulticastInterface, Parity, PredefinedTopic, SerialConfig, SessionsConfig, SleepConfig,
    StorageConfig, TimersConfig, UdpConfig, UpstreamConfig, UpstreamUrl,
};
use crate::time::Duration;

/// An optional key with its position in the file.
type Field<T> = Option<Spanned<T>>;

/// `gateway.mode` as the file spells it (the core's [`Mode`] knows no serde).
#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
enum ModeName {
    Transparent,
    Aggregating,
}

impl From<ModeName> for Mode {
    fn from(name: ModeName) -> Mode {
        match name {
            ModeName::Transparent => Mode::Transparent,
            ModeName::Aggregating => Mode::Aggregating,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default, expecting = "a table")]
struct RawConfig {
    gateway: RawGateway,
    // Spanned so that an explicitly empty `udp = []` can be pointed at.
    udp: Field<Vec<RawUdp>>,
    serial: Vec<RawSerial>,
    upstream: RawUpstream,
    predefined: Vec<RawPredefined>,
    timers: RawTimers,
    sleep: RawSleep,
    sessions: RawSessions,
    limits: RawLimits,
    storage: RawStorage,
    auth: super::auth::RawAuth,
    dtls: Vec<super::dtls::RawDtls>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawStorage {
    dir: Field<String>,
    commit_interval: Field<toml::Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawGateway {
    id: Field<i64>,
    mode: Field<ModeName>,
    max_clients: Field<i64>,
    client_id_max_len: Field<i64>,
    max_topics_per_client: Field<i64>,
    qos_minus1_long_topic: Field<bool>,
    advertise: Field<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawUdp {
    bind: Spanned<String>,
    broadcast: Field<String>,
    // A name (string) or an index (integer).
    multicast_interface: Field<toml::Value>,
    max_frame: Field<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawSerial {
    port: Spanned<String>,
    baud: Field<i64>,
    data_bits: Field<i64>,
    parity: Field<Parity>,
    stop_bits: Field<i64>,
    framing: Field<FramingKind>,
    slip_crc: Field<bool>,
    xbee_api_mode: Field<i64>,
    max_payload: Field<i64>,
}

/// `serial.framing` alone; the typed [`Framing`] also holds the framing's own options.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum FramingKind {
    Raw,
    Slip,
    XbeeApi,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawUpstream {
    url: Field<String>,
    embedded_bind: Field<String>,
    client_id_prefix: Field<String>,
    username: Field<String>,
    password: Field<String>,
    // Durations are an integer (seconds) or a string with a unit.
    keep_alive: Field<toml::Value>,
    ca_file: Field<String>,
    client_cert: Field<String>,
    client_key: Field<String>,
    reconnect_min: Field<toml::Value>,
    reconnect_max: Field<toml::Value>,
    max_queued_bytes: Field<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawPredefined {
    id: Spanned<i64>,
    topic: Spanned<String>,
    client_id: Field<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawTimers {
    keep_alive_tolerance: Field<f64>,
    t_retry: Field<toml::Value>,
    n_retry: Field<i64>,
    t_adv: Field<toml::Value>,
    gwinfo_interval: Field<toml::Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawSessions {
    max_idle: Field<toml::Value>,
    expiry: Field<toml::Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawLimits {
    frame_rate: Field<i64>,
    frame_burst: Field<i64>,
    publish_rate: Field<i64>,
    publish_burst: Field<i64>,
    max_filters_per_client: Field<i64>,
    max_will_bytes: Field<i64>,
    verify_return_path: Field<bool>,
    return_path_factor: Field<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawSleep {
    max_messages: Field<i64>,
    max_bytes: Field<i64>,
    max_total_bytes: Field<i64>,
    drop_policy: Field<DropPolicy>,
}

/// Parses and checks `text`; see [`Config::from_toml_str`].
pub(super) fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let cx = Cx { text, origin };
    let document = toml::Deserializer::parse(text).map_err(|e| cx.toml_error(&e, String::new()))?;
    let raw: RawConfig = serde_path_to_error::deserialize(document).map_err(|e| {
        let mut path: Vec<&Segment> = e.path().iter().collect();
        // The path of an unknown key ends with that key; the message names it already, and
        // the error is about the table that does not have it.
        if e.inner().message().starts_with("unknown field") {
            path.pop();
        }
        cx.toml_error(e.inner(), key_path(&path))
    })?;
    raw.check(&cx)
}

/// The key path of a serde error, like `predefined[1].id`.
fn key_path(path: &[&Segment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            // `Spanned` reads its value through a map with private keys; they are not the user's.
            Segment::Map { key } if key.starts_with("$__") => {}
            Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    out
}

/// Rewords serde's messages in the file's terms: keys rather than fields, quoted user input.
fn reword(message: &str, key: &str) -> String {
    // serde quotes names with backticks: "unknown field `x`, expected one of `a`, `b`".
    let quoted = |prefix: &str| {
        let rest = message.strip_prefix(prefix)?;
        rest.split_once('`')
    };
    if let Some((name, expected)) = quoted("unknown field `") {
        return format!("unknown key \"{name}\"{}", expected.replace('`', ""));
    }
    if let Some((name, expected)) = quoted("unknown variant `") {
        return format!("unknown value \"{name}\"{}", expected.replace('`', "\""));
    }
    if let Some((name, _)) = quoted("missing field `") {
        return format!("missing required key \"{name}\"");
    }
    // Integers and floats are read as i64 and f64, which is not what the reader wrote.
    if let Some(found) = message.strip_suffix(", expected i64") {
        return format!("{found}, expected an integer");
    }
    if let Some(found) = message.strip_suffix(", expected f64") {
        return format!("{found}, expected a number");
    }
    match message {
        "invalid type: map, expected a sequence" => {
            format!("expected an array of tables: write [[{key}]], not [{key}]")
        }
        "wanted string or table" => "invalid type, expected a string".to_owned(),
        _ => message.to_owned(),
    }
}

/// What the checks need to report errors: the text (for line numbers) and its name.
struct Cx<'a> {
    text: &'a str,
    origin: &'a str,
}

impl Cx<'_> {
    fn invalid(&self, span: Range<usize>, key: &str, message: impl Into<String>) -> ConfigError {
        let (line, column) = line_and_column(self.text, span.start);
        ConfigError::Invalid {
            file: self.origin.to_owned(),
            line,
            column,
            key: key.to_owned(),
            message: message.into(),
        }
    }

    fn toml_error(&self, error: &toml::de::Error, key: String) -> ConfigError {
        let message = reword(error.message(), &key);
        match error.span() {
            Some(span) => self.invalid(span, &key, message),
            None => ConfigError::Invalid {
                file: self.origin.to_owned(),
                line: 0,
                column: 0,
                key,
                message,
            },
        }
    }

    /// An integer in `range`, converted to the type the config holds. An upper bound of
    /// `i64::MAX` means "no upper bound" (short of the target type's).
    fn int<T: TryFrom<i64>>(
        &self,
        field: &Field<i64>,
        key: &str,
        range: RangeInclusive<i64>,
    ) -> Result<Option<T>, ConfigError> {
        let Some(field) = field else { return Ok(None) };
        let value = *field.get_ref();
        let fail = || {
            let message = if *range.end() == i64::MAX {
                format!("must be at least {}, got {value}", range.start())
            } else {
                format!(
                    "must be between {} and {}, got {value}",
                    range.start(),
                    range.end()
                )
            };
            self.invalid(field.span(), key, message)
        };
        if !range.contains(&value) {
            return Err(fail());
        }
        T::try_from(value).map(Some).map_err(|_| fail())
    }

    /// A duration: an integer number of seconds or a string with a unit.
    fn duration(
        &self,
        field: &Field<toml::Value>,
        key: &str,
    ) -> Result<Option<(Duration, Range<usize>)>, ConfigError> {
        let Some(field) = field else { return Ok(None) };
        let parsed = match field.get_ref() {
            toml::Value::Integer(secs) => u64::try_from(*secs).ok().map(Duration::from_secs),
            toml::Value::String(text) => super::parse_duration(text),
            _ => None,
        };
        let bad = || match field.get_ref() {
            toml::Value::String(text) => format!("invalid duration {text:?}: {DURATION_EXPECTED}"),
            other => format!("invalid duration {other}: {DURATION_EXPECTED}"),
        };
        match parsed {
            Some(duration) => Ok(Some((duration, field.span()))),
            None => Err(self.invalid(field.span(), key, bad())),
        }
    }

    /// A duration in whole seconds within `secs`, as the protocol fields that carry it need.
    fn seconds(
        &self,
        field: &Field<toml::Value>,
        key: &str,
        secs: RangeInclusive<u64>,
    ) -> Result<Option<Duration>, ConfigError> {
        let Some((duration, span)) = self.duration(field, key)? else {
            return Ok(None);
        };
        let ms = duration.as_millis();
        if ms % 1000 != 0 || !secs.contains(&(ms / 1000)) {
            let message = format!(
                "must be whole seconds from {}s to {}s, got {duration}",
                secs.start(),
                secs.end()
            );
            return Err(self.invalid(span, key, message));
        }
        Ok(Some(duration))
    }

    fn socket_addr(&self, field: &Spanned<String>, key: &str) -> Result<SocketAddr, ConfigError> {
        field.get_ref().parse().map_err(|_| {
            let message = format!(
                "invalid socket address {:?} (expected e.g. 0.0.0.0:1884 or [::]:1884)",
                field.get_ref()
            );
            self.invalid(field.span(), key, message)
        })
    }

    fn path(&self, field: &Field<String>, key: &str) -> Result<Option<PathBuf>, ConfigError> {
        let Some(field) = field else { return Ok(None) };
        if field.get_ref().is_empty() {
            return Err(self.invalid(field.span(), key, "must not be empty"));
        }
        Ok(Some(PathBuf::from(field.get_ref())))
    }
}

/// The value of a key that needs no checking.
fn value<T: Clone>(field: &Field<T>) -> Option<T> {
    field.as_ref().map(|f| f.get_ref().clone())
}

impl RawConfig {
    fn check(self, cx: &Cx) -> Result<Config, ConfigError> {
        let udp = match &self.udp {
            Some(list) => check_udp(list.get_ref(), cx)?,
            // No `[[udp]]` at all means the default listener; `udp = []` means none.
            None => Config::default().udp,
        };
        let serial = check_serial(&self.serial, cx)?;
        let dtls = super::dtls::check(self.dtls, cx.text, cx.origin)?;
        if let (Some(list), true, true, true) = (
            &self.udp,
            udp.is_empty(),
            serial.is_empty(),
            dtls.is_empty(),
        ) {
            return Err(cx.invalid(
                list.span(),
                "udp",
                "no transport left: configure at least one [[udp]], [[dtls]] or [[serial]]",
            ));
        }
        Ok(Config {
            gateway: self.gateway.check(cx)?,
            udp,
            serial,
            upstream: self.upstream.check(cx)?,
            predefined: check_predefined(&self.predefined, cx)?,
            timers: self.timers.check(cx)?,
            sleep: self.sleep.check(cx)?,
            sessions: self.sessions.check(cx)?,
            limits: self.limits.check(cx)?,
            storage: self.storage.check(cx)?,
            auth: self.auth.check(cx.text, cx.origin)?,
            dtls,
        })
    }
}

impl RawGateway {
    fn check(&self, cx: &Cx) -> Result<GatewayConfig, ConfigError> {
        let d = GatewayConfig::default();
        Ok(GatewayConfig {
            id: cx.int(&self.id, "gateway.id", 0..=255)?.unwrap_or(d.id),
            mode: value(&self.mode).map_or(d.mode, Mode::from),
            max_clients: cx
                .int(&self.max_clients, "gateway.max_clients", 1..=i64::MAX)?
                .unwrap_or(d.max_clients),
            client_id_max_len: cx
                .int(
                    &self.client_id_max_len,
                    "gateway.client_id_max_len",
                    1..=65535,
                )?
                .unwrap_or(d.client_id_max_len),
            max_topics_per_client: cx
                .int(
                    &self.max_topics_per_client,
                    "gateway.max_topics_per_client",
                    1..=65534,
                )?
                .unwrap_or(d.max_topics_per_client),
            qos_minus1_long_topic: value(&self.qos_minus1_long_topic)
                .unwrap_or(d.qos_minus1_long_topic),
            advertise: value(&self.advertise).unwrap_or(d.advertise),
        })
    }
}

fn check_udp(list: &[RawUdp], cx: &Cx) -> Result<Vec<UdpConfig>, ConfigError> {
    let mut out: Vec<UdpConfig> = Vec::with_capacity(list.len());
    for (i, raw) in list.iter().enumerate() {
        let key = |name: &str| format!("udp[{i}].{name}");
        let bind = cx.socket_addr(&raw.bind, &key("bind"))?;
        if let Some(first) = out.iter().position(|udp| udp.bind == bind) {
            let message = format!("duplicate bind address {bind} (also udp[{first}].bind)");
            return Err(cx.invalid(raw.bind.span(), &key("bind"), message));
        }
        let broadcast = match &raw.broadcast {
            Some(field) => {
                let address = cx.socket_addr(field, &key("broadcast"))?;
                if address.is_ipv4() != bind.is_ipv4() {
                    let message = format!(
                        "broadcast address {address} and bind address {bind} must both be IPv4 or both IPv6"
                    );
                    return Err(cx.invalid(field.span(), &key("broadcast"), message));
                }
                if address.is_ipv6() && !address.ip().is_multicast() {
                    let message = format!(
                        "IPv6 has no broadcast: {address} must be a multicast address like [ff02::1]:1884"
                    );
                    return Err(cx.invalid(field.span(), &key("broadcast"), message));
                }
                Some(address)
            }
            None => None,
        };
        let multicast_interface = match &raw.multicast_interface {
            Some(field) => {
                let key = key("multicast_interface");
                if !broadcast.is_some_and(|address| address.ip().is_multicast()) {
                    let message = "only applies with a multicast broadcast address (like [ff02::1]:1884 or 224.0.0.1:1884)";
                    return Err(cx.invalid(field.span(), &key, message));
                }
                let interface = match field.get_ref() {
                    toml::Value::Integer(index) => {
                        u32::try_from(*index).ok().map(MulticastInterface::Index)
                    }
                    toml::Value::String(name) if !name.is_empty() => {
                        Some(MulticastInterface::Name(name.clone()))
                    }
                    _ => None,
                };
                let message = "expected an interface name like \"eth0\" or an interface index";
                Some(interface.ok_or_else(|| cx.invalid(field.span(), &key, message))?)
            }
            None => None,
        };
        let max_frame = cx
            .int(&raw.max_frame, &key("max_frame"), 2..=65_535)?
            .unwrap_or(super::DEFAULT_MAX_FRAME);
        out.push(UdpConfig {
            bind,
            broadcast,
            multicast_interface,
            max_frame,
        });
    }
    Ok(out)
}

fn check_serial(list: &[RawSerial], cx: &Cx) -> Result<Vec<SerialConfig>, ConfigError> {
    let mut out: Vec<SerialConfig> = Vec::with_capacity(list.len());
    for (i, raw) in list.iter().enumerate() {
        let key = |name: &str| format!("serial[{i}].{name}");
        let port = raw.port.get_ref();
        if port.is_empty() {
            return Err(cx.invalid(raw.port.span(), &key("port"), "must not be empty"));
        }
        if let Some(first) = out.iter().position(|serial| serial.port == *port) {
            let message = format!("duplicate port {port:?} (also serial[{first}].port)");
            return Err(cx.invalid(raw.port.span(), &key("port"), message));
        }
        let d = SerialConfig::new(port.clone());

        let mut framing = match value(&raw.framing) {
            Some(FramingKind::Raw) => Framing::Raw,
            Some(FramingKind::Slip) => Framing::SLIP,
            Some(FramingKind::XbeeApi) => Framing::XBEE_API,
            None => d.framing,
        };
        // A framing's own options are an error with any other framing rather than silently
        // unused: whoever wrote them expected them to do something.
        let only_with = |span, name: &str, framing: &str| {
            let message = format!("only applies with framing = \"{framing}\"");
            cx.invalid(span, &key(name), message)
        };
        if let Some(field) = &raw.slip_crc {
            let Framing::Slip { crc } = &mut framing else {
                return Err(only_with(field.span(), "slip_crc", "slip"));
            };
            *crc = *field.get_ref();
        }
        if let Some(field) = &raw.xbee_api_mode {
            let Framing::XbeeApi { api_mode } = &mut framing else {
                return Err(only_with(field.span(), "xbee_api_mode", "xbee-api"));
            };
            if let Some(mode) = cx.int(&raw.xbee_api_mode, &key("xbee_api_mode"), 1..=2)? {
                *api_mode = mode;
            }
        }

        out.push(SerialConfig {
            baud: cx
                .int(&raw.baud, &key("baud"), 1..=i64::from(u32::MAX))?
                .unwrap_or(d.baud),
            data_bits: cx
                .int(&raw.data_bits, &key("data_bits"), 5..=8)?
                .unwrap_or(d.data_bits),
            parity: value(&raw.parity).unwrap_or(d.parity),
            stop_bits: cx
                .int(&raw.stop_bits, &key("stop_bits"), 1..=2)?
                .unwrap_or(d.stop_bits),
            framing,
            // The shortest MQTT-SN message is 2 bytes.
            max_payload: match cx.int(&raw.max_payload, &key("max_payload"), 2..=i64::MAX)? {
                Some(limit) => Some(limit),
                None => framing.default_max_payload(),
            },
            ..d
        });
    }
    Ok(out)
}

impl RawUpstream {
    fn check(&self, cx: &Cx) -> Result<UpstreamConfig, ConfigError> {
        let d = UpstreamConfig::default();
        let url = match &self.url {
            Some(field) => field
                .get_ref()
                .parse::<UpstreamUrl>()
                .map_err(|e| cx.invalid(field.span(), "upstream.url", e.to_string()))?,
            None => d.url,
        };
        let embedded_bind = match &self.embedded_bind {
            Some(field) => cx.socket_addr(field, "upstream.embedded_bind")?,
            None => d.embedded_bind,
        };
        if let (Some(password), None) = (&self.password, &self.username) {
            let message = "a password needs a username";
            return Err(cx.invalid(password.span(), "upstream.password", message));
        }

        let ca_file = cx.path(&self.ca_file, "upstream.ca_file")?;
        let client_cert = cx.path(&self.client_cert, "upstream.client_cert")?;
        let client_key = cx.path(&self.client_key, "upstream.client_key")?;
        let tls_files = [
            (&self.ca_file, "ca_file"),
            (&self.client_cert, "client_cert"),
            (&self.client_key, "client_key"),
        ];
        for (field, name) in tls_files {
            if let (Some(field), false) = (field, url.is_tls()) {
                let message = format!("only applies to mqtts:// urls, but url is {url}");
                return Err(cx.invalid(field.span(), &format!("upstream.{name}"), message));
            }
        }
        match (&self.client_cert, &self.client_key) {
            (Some(cert), None) => {
                let message = "a client certificate needs its client_key";
                return Err(cx.invalid(cert.span(), "upstream.client_cert", message));
            }
            (None, Some(key)) => {
                let message = "a client key needs its client_cert";
                return Err(cx.invalid(key.span(), "upstream.client_key", message));
            }
            _ => {}
        }

        // MQTT carries the keep-alive as a 16-bit number of seconds; below 5s the gateway would
        // spend its time pinging.
        let keep_alive = cx
            .seconds(&self.keep_alive, "upstream.keep_alive", 5..=65535)?
            .unwrap_or(d.keep_alive);

        let reconnect_min = match cx.duration(&self.reconnect_min, "upstream.reconnect_min")? {
            Some((duration, span)) if duration == Duration::ZERO => {
                let message = "must be more than 0s, or a lost broker is retried in a busy loop";
                return Err(cx.invalid(span, "upstream.reconnect_min", message));
            }
            Some((duration, _)) => duration,
            None => d.reconnect_min,
        };
        let reconnect_max = cx.duration(&self.reconnect_max, "upstream.reconnect_max")?;
        if reconnect_max
            .as_ref()
            .map_or(d.reconnect_max, |(max, _)| *max)
            < reconnect_min
        {
            // Point at whichever of the two the file sets (the max, if both).
            let (key, span, message) = match (&reconnect_max, &self.reconnect_min) {
                (Some((max, span)), _) => (
                    "upstream.reconnect_max",
                    span.clone(),
                    format!("must be at least reconnect_min ({reconnect_min}), got {max}"),
                ),
                (None, min) => (
                    "upstream.reconnect_min",
                    min.as_ref().map_or(0..0, Spanned::span),
                    format!(
                        "must be at most reconnect_max ({}), got {reconnect_min}",
                        d.reconnect_max
                    ),
                ),
            };
            return Err(cx.invalid(span, key, message));
        }

        Ok(UpstreamConfig {
            url,
            embedded_bind,
            client_id_prefix: value(&self.client_id_prefix).unwrap_or(d.client_id_prefix),
            username: value(&self.username),
            password: value(&self.password),
            keep_alive,
            ca_file,
            client_cert,
            client_key,
            reconnect_min,
            reconnect_max: reconnect_max.map_or(d.reconnect_max, |(max, _)| max),
            // At least one largest MQTT-SN message, so that a single PUBLISH always fits.
            max_queued_bytes: cx
                .int(
                    &self.max_queued_bytes,
                    "upstream.max_queued_bytes",
                    65536..=i64::MAX,
                )?
                .unwrap_or(d.max_queued_bytes),
        })
    }
}

fn check_predefined(list: &[RawPredefined], cx: &Cx) -> Result<Vec<PredefinedTopic>, ConfigError> {
    let mut out: Vec<PredefinedTopic> = Vec::with_capacity(list.len());
    for (i, raw) in list.iter().enumerate() {
        let key = |name: &str| format!("predefined[{i}].{name}");

        let id = match *raw.id.get_ref() {
            0 => Err("predefined topic id 0 is reserved".to_owned()),
            0xFFFF => Err("predefined topic id 65535 (0xFFFF) is reserved".to_owned()),
            id => u16::try_from(id).map_err(|_| format!("must be between 1 and 65534, got {id}")),
        }
        .map_err(|message| cx.invalid(raw.id.span(), &key("id"), message))?;

        let topic = raw.topic.get_ref();
        let problem = if topic.is_empty() {
            Some("must not be empty".to_owned())
        } else if topic.contains(['+', '#']) {
            Some(format!(
                "topic {topic:?} contains a wildcard (+ or #), but clients publish to predefined topics"
            ))
        } else if topic.len() > usize::from(u16::MAX) {
            Some(format!(
                "is {} bytes long, the most MQTT allows is 65535",
                topic.len()
            ))
        } else {
            None
        };
        if let Some(message) = problem {
            return Err(cx.invalid(raw.topic.span(), &key("topic"), message));
        }

        let client_id = value(&raw.client_id);
        // The same id may be given once globally and once per client (the client's wins), but
        // not twice in the same scope.
        let same_scope = |p: &PredefinedTopic| p.id == id && p.client_id == client_id;
        if let Some(first) = out.iter().position(same_scope) {
            let scope = match &client_id {
                Some(client) => format!(" for client {client:?}"),
                None => String::new(),
            };
            let message = format!("duplicate predefined id {id}{scope} (also predefined[{first}])");
            return Err(cx.invalid(raw.id.span(), &key("id"), message));
        }
        out.push(PredefinedTopic {
            id,
            topic: topic.clone(),
            client_id,
        });
    }
    Ok(out)
}

impl RawTimers {
    fn check(&self, cx: &Cx) -> Result<TimersConfig, ConfigError> {
        let d = TimersConfig::default();
        let keep_alive_tolerance = match &self.keep_alive_tolerance {
            Some(field) => {
                let factor = *field.get_ref();
                // Below 1.0 clients would be dropped before their keep-alive is due.
                if !(1.0..=10.0).contains(&factor) {
                    let message = format!("must be between 1.0 and 10.0, got {factor}");
                    return Err(cx.invalid(field.span(), "timers.keep_alive_tolerance", message));
                }
                factor
            }
            None => d.keep_alive_tolerance,
        };
        let t_retry = match cx.duration(&self.t_retry, "timers.t_retry")? {
            Some((duration, span)) if duration == Duration::ZERO => {
                return Err(cx.invalid(span, "timers.t_retry", "must be more than 0s"));
            }
            Some((duration, _)) => duration,
            None => d.t_retry,
        };
        Ok(TimersConfig {
            keep_alive_tolerance,
            t_retry,
            n_retry: cx
                .int(&self.n_retry, "timers.n_retry", 0..=255)?
                .unwrap_or(d.n_retry),
            // ADVERTISE carries the interval as a 16-bit number of seconds.
            t_adv: cx
                .seconds(&self.t_adv, "timers.t_adv", 1..=65535)?
                .unwrap_or(d.t_adv),
            gwinfo_interval: cx
                .duration(&self.gwinfo_interval, "timers.gwinfo_interval")?
                .map_or(d.gwinfo_interval, |(interval, _)| interval),
        })
    }
}

impl RawSessions {
    fn check(&self, cx: &Cx) -> Result<SessionsConfig, ConfigError> {
        let d = SessionsConfig::default();
        let positive = |field: &Field<toml::Value>, key: &str, default: Duration| match cx
            .duration(field, key)?
        {
            Some((duration, span)) if duration == Duration::ZERO => {
                Err(cx.invalid(span, key, "must be more than 0s"))
            }
            Some((duration, _)) => Ok(duration),
            None => Ok(default),
        };
        Ok(SessionsConfig {
            max_idle: positive(&self.max_idle, "sessions.max_idle", d.max_idle)?,
            expiry: positive(&self.expiry, "sessions.expiry", d.expiry)?,
        })
    }
}

impl RawStorage {
    fn check(&self, cx: &Cx) -> Result<StorageConfig, ConfigError> {
        let d = StorageConfig::default();
        let commit_interval = match cx.duration(&self.commit_interval, "storage.commit_interval")? {
            Some((interval, span)) if interval > Duration::from_secs(1) => {
                return Err(cx.invalid(
                    span,
                    "storage.commit_interval",
                    "must be at most 1s (everything the gateway sends waits for it)",
                ))
            }
            Some((interval, _)) => interval,
            None => d.commit_interval,
        };
        Ok(StorageConfig {
            dir: cx.path(&self.dir, "storage.dir")?,
            commit_interval,
        })
    }
}

impl RawLimits {
    fn check(&self, cx: &Cx) -> Result<LimitsConfig, ConfigError> {
        let d = LimitsConfig::default();
        Ok(LimitsConfig {
            frame_rate: cx
                .int(&self.frame_rate, "limits.frame_rate", 0..=1_000_000)?
                .unwrap_or(d.frame_rate),
            frame_burst: cx
                .int(&self.frame_burst, "limits.frame_burst", 1..=1_000_000)?
                .unwrap_or(d.frame_burst),
            publish_rate: cx
                .int(&self.publish_rate, "limits.publish_rate", 0..=1_000_000)?
                .unwrap_or(d.publish_rate),
            publish_burst: cx
                .int(&self.publish_burst, "limits.publish_burst", 1..=1_000_000)?
                .unwrap_or(d.publish_burst),
            max_filters_per_client: cx
                .int(
                    &self.max_filters_per_client,
                    "limits.max_filters_per_client",
                    1..=i64::MAX,
                )?
                .unwrap_or(d.max_filters_per_client),
            max_will_bytes: cx
                .int(&self.max_will_bytes, "limits.max_will_bytes", 1..=i64::MAX)?
                .unwrap_or(d.max_will_bytes),
            verify_return_path: value(&self.verify_return_path).unwrap_or(d.verify_return_path),
            return_path_factor: cx
                .int(
                    &self.return_path_factor,
                    "limits.return_path_factor",
                    1..=10,
                )?
                .unwrap_or(d.return_path_factor),
        })
    }
}

impl RawSleep {
    fn check(&self, cx: &Cx) -> Result<SleepConfig, ConfigError> {
        let d = SleepConfig::default();
        Ok(SleepConfig {
            max_messages: cx
                .int(&self.max_messages, "sleep.max_messages", 1..=i64::MAX)?
                .unwrap_or(d.max_messages),
            max_bytes: cx
                .int(&self.max_bytes, "sleep.max_bytes", 1..=i64::MAX)?
                .unwrap_or(d.max_bytes),
            max_total_bytes: cx
                .int(&self.max_total_bytes, "sleep.max_total_bytes", 1..=i64::MAX)?
                .unwrap_or(d.max_total_bytes),
            drop_policy: value(&self.drop_policy).unwrap_or(d.drop_policy),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_are_reworded_in_file_terms() {
        assert_eq!(
            reword(
                "unknown field `colour`, expected one of `id`, `mode`",
                "gateway"
            ),
            "unknown key \"colour\", expected one of id, mode"
        );
        assert_eq!(
            reword(
                "unknown variant `x`, expected `raw` or `slip`",
                "serial[0].framing"
            ),
            "unknown value \"x\", expected \"raw\" or \"slip\""
        );
        assert_eq!(
            reword("missing field `port`", "serial[0]"),
            "missing required key \"port\""
        );
        assert_eq!(
            reword("invalid type: map, expected a sequence", "udp"),
            "expected an array of tables: write [[udp]], not [udp]"
        );
        assert_eq!(
            reword("invalid type: string \"x\", expected i64", "gateway.id"),
            "invalid type: string \"x\", expected an integer"
        );
        assert_eq!(reword("something else", "k"), "something else");
    }
}
