//! The `gateway.toml` schema: the typed configuration, its defaults, loading with validation, and
//! printing the effective configuration back as TOML.
//!
//! Loading takes two steps. The text is first deserialized into a mirror of the file (`file`
//! module: every key optional, every value with its position), which is where unknown keys and
//! wrongly typed values are caught, named by key path and line. The mirror is then checked and
//! turned into [`Config`], whose values already have the types the gateway uses and whose
//! cross-key rules hold (a password needs a username, TLS files need `mqtts://`, ...). Defaults
//! are filled in during that second step from the `Default` impls and [`SerialConfig::new`] at the
//! end of this file, which are the only place defaults are written down.
//!
//! The shipped, commented example is `gateway.toml` at the repository root.

mod auth;
mod dtls;
mod engine_settings;
mod error;
mod file;
mod print;
mod value;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::time::Duration;

pub use auth::{parse_clients_file, AuthConfig};
pub use dtls::DtlsConfig;
pub use error::ConfigError;
pub use mqttsn_core::{Mode, PredefinedTopic};
pub use value::{parse_duration, UpstreamUrl, UrlError};

/// The whole gateway configuration, validated, with defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `[gateway]`: identity and client-facing behaviour.
    pub gateway: GatewayConfig,
    /// `[[udp]]`: UDP listeners. Never empty unless serial ports are configured.
    pub udp: Vec<UdpConfig>,
    /// `[[serial]]`: serial ports with radios or directly attached devices.
    pub serial: Vec<SerialConfig>,
    /// `[upstream]`: the MQTT broker side.
    pub upstream: UpstreamConfig,
    /// `[[predefined]]`: topic ids known to clients without registering.
    pub predefined: Vec<PredefinedTopic>,
    /// `[timers]`: protocol timers.
    pub timers: TimersConfig,
    /// `[sleep]`: buffering for sleeping clients.
    pub sleep: SleepConfig,
    /// `[sessions]`: how long sessions without supervision are kept.
    pub sessions: SessionsConfig,
    /// `[limits]`: what each device may ask for.
    pub limits: LimitsConfig,
    /// `[storage]`: where sessions are kept across restarts.
    pub storage: StorageConfig,
    /// `[auth]`: device identities and topic rules.
    pub auth: AuthConfig,
    /// `[[dtls]]`: DTLS listeners.
    pub dtls: Vec<DtlsConfig>,
}

/// `[storage]`: the state directory. Without one, sessions live in memory only and a restart
/// forgets them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    /// The directory of the session store (`sessions.log` in it), created if missing.
    pub dir: Option<PathBuf>,
    /// At most one commit (one fsync) per this interval: changes that come sooner wait for
    /// it, together with everything the gateway would send meanwhile. 0: a commit after every
    /// batch of work.
    pub commit_interval: Duration,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            dir: None,
            commit_interval: Duration::from_millis(10),
        }
    }
}

/// `[limits]`: per-device bounds, so that one device cannot take what the others need.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitsConfig {
    /// Frames of any kind per second one device (or one address without a session) may send,
    /// sustained; 0: no limit. Over it, frames are dropped before they are decoded.
    pub frame_rate: u32,
    /// How many frames it may send at once on top of the rate.
    pub frame_burst: u32,
    /// PUBLISH, REGISTER and SUBSCRIBE per second one device may send towards the broker,
    /// sustained; 0: no limit. Over it, QoS 1/2 get "rejected: congestion" and QoS 0 is dropped.
    pub publish_rate: u32,
    /// How many of them a device may send at once on top of the rate.
    pub publish_burst: u32,
    /// Most subscriptions one device may hold; past that SUBSCRIBE gets "rejected: congestion".
    pub max_filters_per_client: usize,
    /// Most bytes of a will, topic and message together; a larger one gets CONNACK (or
    /// WILLTOPICRESP, WILLMSGRESP) "not supported".
    pub max_will_bytes: usize,
    /// Send a device address no more bytes than it sent until it shows it receives (PINGREQ,
    /// or an acknowledgement of a gateway message), so that forged source addresses cannot be
    /// flooded through the gateway.
    pub verify_return_path: bool,
    /// Bytes an unproven address may be sent for each byte it sent: 1 (the default) is the
    /// strict rule; 3 is QUIC's limit for unvalidated addresses (RFC 9000, 8.1).
    pub return_path_factor: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            frame_rate: 5000,
            frame_burst: 5000,
            publish_rate: 2000,
            publish_burst: 2000,
            max_filters_per_client: 256,
            max_will_bytes: 4096,
            verify_return_path: true,
            return_path_factor: 1,
        }
    }
}

/// `[sessions]`: limits on sessions the protocol itself never ends.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionsConfig {
    /// A device that connected with keep-alive 0 (no supervision, §5.4.4) is lost after this
    /// long without a frame, so that a flood of such CONNECTs cannot fill the session table
    /// for ever.
    pub max_idle: Duration,
    /// A CleanSession=0 session kept for a device that is gone is deleted after this long
    /// without the device coming back (with its subscriptions, topic ids and held messages).
    pub expiry: Duration,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        SessionsConfig {
            max_idle: Duration::from_secs(3600),
            expiry: Duration::from_secs(24 * 3600),
        }
    }
}

impl Config {
    /// Reads and validates the configuration file at `path`.
    ///
    /// # Errors
    /// [`ConfigError::Io`] if the file cannot be read, [`ConfigError::Invalid`] (naming the
    /// file, line, column and key) if it is not a valid configuration.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Io {
            file: path.to_path_buf(),
            error,
        })?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// Parses and validates configuration text; `origin` names it in error messages (usually
    /// the file name).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for bad TOML, an unknown key, a value of the wrong type or out of
    /// range, or keys that do not go together.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        file::parse(text, origin)
    }

    /// The effective configuration as TOML: every key with the value in force, defaults included,
    /// unset optional keys as comments.
    ///
    /// Passwords are left out (a comment says whether one is set), so loading the output
    /// gives back [`Config::without_secrets`].
    pub fn to_toml_string(&self) -> String {
        print::to_toml(self)
    }

    /// What an operator should know before exposing this configuration: each listener off
    /// loopback that lets devices in without proof (`auth.allow_anonymous`, plain UDP, or a
    /// certificate listener that checks no certificate), as a sentence naming it.
    pub fn security_warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if !self.auth.allows_anonymous() {
            return warnings;
        }
        let open = "accepts anonymous devices (auth.allow_anonymous): anyone who reaches it may \
                    connect as any unlisted ClientId and use every topic the ACL allows";
        for (i, udp) in self.udp.iter().enumerate() {
            if !udp.bind.ip().is_loopback() {
                warnings.push(format!("udp[{i}] {} {open}", udp.bind));
            }
        }
        for (i, dtls) in self.dtls.iter().enumerate() {
            if !dtls.bind.ip().is_loopback() && dtls.cert_file.is_some() && dtls.ca_file.is_none() {
                warnings.push(format!(
                    "dtls[{i}] {} checks no client certificate (no ca_file) and {open}",
                    dtls.bind
                ));
            }
        }
        warnings
    }

    /// This configuration without its passwords (what [`Config::to_toml_string`] shows).
    pub fn without_secrets(&self) -> Config {
        let mut config = self.clone();
        config.upstream.password = None;
        for client in &mut config.auth.clients {
            client.password = None;
        }
        config
    }
}

/// `[gateway]`.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    /// The gateway id sent in ADVERTISE and GWINFO.
    pub id: u8,
    /// How clients map to broker connections.
    pub mode: Mode,
    /// Most clients connected (or asleep) at once; more CONNECTs are refused with "congestion".
    pub max_clients: usize,
    /// Longest accepted client id in bytes. The spec says 1 to 23; most clients and brokers
    /// accept more.
    pub client_id_max_len: u16,
    /// Most topic names one client may REGISTER (or have registered for it); past that,
    /// REGISTER gets "rejected: congestion" and nothing is stored for the name.
    pub max_topics_per_client: u16,
    /// Accept the nonstandard QoS -1 PUBLISH that carries a long topic name (topic id type
    /// "normal" with the name in place of the id) some client libraries send.
    pub qos_minus1_long_topic: bool,
    /// Broadcast ADVERTISE every `timers.t_adv` on the listeners that have a broadcast address.
    pub advertise: bool,
}

/// One `[[udp]]` listener.
#[derive(Debug, Clone, PartialEq)]
pub struct UdpConfig {
    /// Local address to receive datagrams on.
    pub bind: SocketAddr,
    /// Where ADVERTISE and GWINFO broadcasts go: an IPv4 broadcast or an IPv4 or IPv6 multicast
    /// address, of the same family as `bind`. `None`: this listener does not broadcast.
    pub broadcast: Option<SocketAddr>,
    /// The interface multicast broadcasts leave by; only with a multicast `broadcast`. `None`:
    /// the operating system's choice.
    pub multicast_interface: Option<MulticastInterface>,
    /// Longest datagram accepted, in bytes; a longer one is dropped unread and counted.
    pub max_frame: usize,
}

/// `udp.max_frame` by default: far above what constrained devices send (most frames fit one
/// radio or Ethernet packet), and small enough that a batch of receive slots stays small.
pub const DEFAULT_MAX_FRAME: usize = 4096;

/// A network interface, as `udp.multicast_interface` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MulticastInterface {
    /// An interface index (as `ip link` shows it).
    Index(u32),
    /// An interface name like `eth0`, or for IPv4 the interface's address.
    Name(String),
}

/// One `[[serial]]` port.
#[derive(Debug, Clone, PartialEq)]
pub struct SerialConfig {
    /// The device, like `/dev/ttyUSB0` or `COM3`.
    pub port: String,
    /// Line speed in bits per second.
    pub baud: u32,
    /// Data bits per character, 5 to 8.
    pub data_bits: u8,
    /// Parity bit.
    pub parity: Parity,
    /// Stop bits, 1 or 2.
    pub stop_bits: u8,
    /// How MQTT-SN messages are delimited on the line.
    pub framing: Framing,
    /// Most bytes one frame on this port may carry (radio payload limit); `None`: no limit
    /// beyond MQTT-SN's own.
    pub max_payload: Option<usize>,
}

/// Serial parity (`serial.parity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Parity {
    /// No parity bit.
    None,
    /// Even parity.
    Even,
    /// Odd parity.
    Odd,
}

/// How MQTT-SN messages are delimited on a serial line (`serial.framing` and the keys that only
/// apply to one framing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Messages back to back, delimited by their own length field.
    Raw,
    /// SLIP (RFC 1055) frames.
    Slip {
        /// Each frame ends with a CRC-16 (`slip_crc`).
        crc: bool,
    },
    /// Digi XBee API frames; the device address is the radio's 64-bit address.
    XbeeApi {
        /// XBee API mode (`xbee_api_mode`): 1 unescaped, 2 with escaped control bytes.
        api_mode: u8,
    },
}

/// `[upstream]`: the connection to the MQTT broker.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    /// The broker.
    pub url: UpstreamUrl,
    /// Listen address of the embedded broker; used only when `url` is [`UpstreamUrl::Embedded`].
    pub embedded_bind: SocketAddr,
    /// Prepended to the client ids the gateway uses at the broker, so that they can be told
    /// apart from other clients (and kept out of their way).
    pub client_id_prefix: String,
    /// MQTT user name.
    pub username: Option<String>,
    /// MQTT password; only with a `username`.
    pub password: Option<String>,
    /// MQTT keep-alive of the gateway's own broker connections, in whole seconds from 5s to
    /// 65535s.
    pub keep_alive: Duration,
    /// CA certificates (PEM) to check the broker's certificate with; `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for TLS client authentication; comes with `client_key`.
    pub client_cert: Option<PathBuf>,
    /// Private key (PEM) of `client_cert`.
    pub client_key: Option<PathBuf>,
    /// First delay before reconnecting to the broker; it doubles on each failure...
    pub reconnect_min: Duration,
    /// ...up to this.
    pub reconnect_max: Duration,
    /// Bytes one broker connection may have queued for writing before the devices behind it
    /// are slowed (the connection is never dropped for being slow).
    pub max_queued_bytes: usize,
}

/// `[timers]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TimersConfig {
    /// A client is lost when nothing arrives from it within its keep-alive times this factor
    /// (1.0 to 10.0).
    pub keep_alive_tolerance: f64,
    /// T_RETRY: wait for an acknowledgement before retransmitting to a client.
    pub t_retry: Duration,
    /// N_RETRY: retransmissions before giving up on a client.
    pub n_retry: u8,
    /// T_ADV: interval between ADVERTISE broadcasts, in whole seconds from 1s to 65535s (it is
    /// sent as a 16-bit number of seconds).
    pub t_adv: Duration,
    /// Shortest time between two GWINFO answers to SEARCHGW: a flood of SEARCHGW (or a device
    /// stuck searching) gets one answer per interval, which reaches every device near it.
    pub gwinfo_interval: Duration,
}

/// `[sleep]`: messages held for sleeping clients.
#[derive(Debug, Clone, PartialEq)]
pub struct SleepConfig {
    /// Most messages held per client.
    pub max_messages: usize,
    /// Most payload bytes held per client.
    pub max_bytes: usize,
    /// Most bytes held for all clients together; when reached, the client's drop policy
    /// decides what gives way, as when its own buffer is full.
    pub max_total_bytes: usize,
    /// What gives way when a client's buffer is full.
    pub drop_policy: DropPolicy,
}

/// What a full sleep buffer does with one more message (`sleep.drop_policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DropPolicy {
    /// Drop the oldest held messages to make room: a sleeper wakes to the latest data.
    DropOldest,
    /// Refuse the new message: a sleeper wakes to what was held first.
    DropNewest,
}

impl Parity {
    /// The name the configuration file uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Parity::None => "none",
            Parity::Even => "even",
            Parity::Odd => "odd",
        }
    }
}

impl Framing {
    /// The name the configuration file uses for `serial.framing`.
    pub fn as_str(self) -> &'static str {
        match self {
            Framing::Raw => "raw",
            Framing::Slip { .. } => "slip",
            Framing::XbeeApi { .. } => "xbee-api",
        }
    }
}

impl DropPolicy {
    /// The name the configuration file uses.
    pub fn as_str(self) -> &'static str {
        match self {
            DropPolicy::DropOldest => "drop-oldest",
            DropPolicy::DropNewest => "drop-newest",
        }
    }
}

// Defaults: every default value of the schema is written here and nowhere else. The shipped
// `gateway.toml` states them too, and a test checks it agrees.

/// The UDP port MQTT-SN gateways conventionally listen on.
pub const DEFAULT_UDP_PORT: u16 = 1884;

impl Default for Config {
    fn default() -> Self {
        Config {
            gateway: GatewayConfig::default(),
            udp: vec![UdpConfig::default()],
            serial: Vec::new(),
            upstream: UpstreamConfig::default(),
            predefined: Vec::new(),
            timers: TimersConfig::default(),
            sleep: SleepConfig::default(),
            sessions: SessionsConfig::default(),
            limits: LimitsConfig::default(),
            storage: StorageConfig::default(),
            auth: AuthConfig::default(),
            dtls: Vec::new(),
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            id: 1,
            mode: Mode::Aggregating,
            max_clients: 10_000,
            client_id_max_len: 64,
            max_topics_per_client: 1024,
            qos_minus1_long_topic: false,
            advertise: true,
        }
    }
}

impl Default for UdpConfig {
    /// All IPv4 interfaces on the MQTT-SN port, no broadcasts.
    fn default() -> Self {
        UdpConfig {
            bind: SocketAddr::from((Ipv4Addr::UNSPECIFIED, DEFAULT_UDP_PORT)),
            broadcast: None,
            multicast_interface: None,
            max_frame: DEFAULT_MAX_FRAME,
        }
    }
}

impl SerialConfig {
    /// The defaults for a port: 9600 8N1, raw framing, no payload limit.
    pub fn new(port: impl Into<String>) -> Self {
        SerialConfig {
            port: port.into(),
            baud: 9600,
            data_bits: 8,
            parity: Parity::None,
            stop_bits: 1,
            framing: Framing::Raw,
            max_payload: None,
        }
    }
}

impl Framing {
    /// SLIP framing with the default options (no CRC).
    pub const SLIP: Framing = Framing::Slip { crc: false };
    /// XBee API framing with the default options (API mode 1).
    pub const XBEE_API: Framing = Framing::XbeeApi { api_mode: 1 };

    /// The payload limit of a port with this framing when `max_payload` is not set.
    pub fn default_max_payload(self) -> Option<usize> {
        match self {
            // What an XBee (802.15.4) radio carries in one unencrypted frame.
            Framing::XbeeApi { .. } => Some(72),
            Framing::Raw | Framing::Slip { .. } => None,
        }
    }
}

impl UpstreamConfig {
    /// The broker's address as far as the configuration tells it without a name lookup: the IP
    /// address and port of the url, `0.0.0.0` with the port for a host name, `embedded_bind`
    /// for the embedded broker. For logs, tests and the pcap recording's synthetic TCP stream.
    pub fn broker_addr(&self) -> SocketAddr {
        match &self.url {
            UpstreamUrl::Tcp { host, port } | UpstreamUrl::Tls { host, port } => {
                host.parse::<std::net::IpAddr>().map_or_else(
                    |_| SocketAddr::from((Ipv4Addr::UNSPECIFIED, *port)),
                    |ip| SocketAddr::new(ip, *port),
                )
            }
            UpstreamUrl::Embedded => self.embedded_bind,
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            url: UpstreamUrl::Tcp {
                host: Ipv4Addr::LOCALHOST.to_string(),
                port: UpstreamUrl::DEFAULT_TCP_PORT,
            },
            embedded_bind: SocketAddr::from((Ipv4Addr::LOCALHOST, UpstreamUrl::DEFAULT_TCP_PORT)),
            client_id_prefix: String::new(),
            username: None,
            password: None,
            keep_alive: Duration::from_secs(60),
            ca_file: None,
            client_cert: None,
            client_key: None,
            reconnect_min: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(60),
            max_queued_bytes: 1024 * 1024,
        }
    }
}

impl Default for TimersConfig {
    fn default() -> Self {
        TimersConfig {
            keep_alive_tolerance: 1.5,
            t_retry: Duration::from_secs(10),
            n_retry: 3,
            t_adv: Duration::from_secs(15 * 60),
            gwinfo_interval: Duration::from_secs(1),
        }
    }
}

impl Default for SleepConfig {
    fn default() -> Self {
        SleepConfig {
            max_messages: 100,
            max_bytes: 65_536,
            max_total_bytes: 64 * 1024 * 1024,
            drop_policy: DropPolicy::DropOldest,
        }
    }
}
