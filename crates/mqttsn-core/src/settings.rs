//! What the engine is configured with. The gateway builds a [`Settings`] from its `gateway.toml`
//! (parsing, defaults and validation live there); the core only consumes plain values.

use crate::codec::DecodeOptions;
use crate::engine::admission::BudgetLimits;
use crate::engine::sleep::SleepLimits;
use crate::hash::HashSeed;
use crate::time::Duration;
use std::fmt;

/// How clients map to broker connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// One broker connection per client, under the client's own id (plus the prefix).
    Transparent,
    /// All clients share one broker connection.
    Aggregating,
}

impl Mode {
    /// The name the configuration file uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Transparent => "transparent",
            Mode::Aggregating => "aggregating",
        }
    }
}

/// A predefined topic id (`[[predefined]]`), known to the gateway and its clients in advance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PredefinedTopic {
    /// The topic id, 1 to 0xFFFE (0 and 0xFFFF are reserved).
    pub id: u16,
    /// The topic name it stands for; no wildcards, since clients publish to it.
    pub topic: String,
    /// The only client the id applies to; `None`: every client. A client's own entry for an id
    /// takes precedence over the global one.
    pub client_id: Option<String>,
}

/// Everything the engine consults, resolved once.
#[derive(Clone)]
pub struct Settings {
    /// GwId in ADVERTISE, GWINFO and the gateway's own broker client id.
    pub gw_id: u8,
    /// Transparent or aggregating.
    pub mode: Mode,
    /// Most sessions held (connected, sleeping, or kept for CleanSession=0).
    pub max_clients: usize,
    /// Longest ClientId accepted in CONNECT.
    pub client_id_max_len: usize,
    /// Most topic names in one client's registry.
    pub max_topics_per_client: usize,
    /// Nonstandard frame forms accepted.
    pub decode: DecodeOptions,
    /// Broadcast ADVERTISE every `t_adv`.
    pub advertise: bool,
    /// A client is lost after its keep-alive (or sleep duration) times this factor of silence.
    pub keep_alive_tolerance: f64,
    /// T_RETRY: wait for an acknowledgement before retransmitting to a client.
    pub t_retry: Duration,
    /// N_RETRY: retransmissions before giving up on a client.
    pub n_retry: u8,
    /// T_ADV: interval between ADVERTISE broadcasts.
    pub t_adv: Duration,
    /// Shortest time between two GWINFO answers to SEARCHGW.
    pub gwinfo_interval: Duration,
    /// Bounds of each sleeping client's buffer.
    pub sleep: SleepLimits,
    /// Most bytes held for all clients together.
    pub sleep_max_total: usize,
    /// Prefix of every broker client id the gateway uses.
    pub client_id_prefix: String,
    /// Broker user name.
    pub username: Option<String>,
    /// Broker password.
    pub password: Option<String>,
    /// Keep-alive of the broker connections.
    pub upstream_keep_alive: Duration,
    /// Predefined topic ids.
    pub predefined: Vec<PredefinedTopic>,
    /// Longest silence of a device connected with keep-alive 0.
    pub max_idle: Duration,
    /// How long a kept (CleanSession=0) session of a departed device survives.
    pub session_expiry: Duration,
    /// Bounds on what each client may ask for.
    pub limits: Limits,
    /// Bytes a broker connection's send queue holds before the driver reports it congested
    /// (`upstream.max_queued_bytes`); while congested, light users may add as much again.
    pub upstream_queue_bytes: usize,
    /// Keys of the engine's hash maps: random in production, fixed in tests.
    pub hash_seed: HashSeed,
    /// Sessions are kept in a store across restarts (`[storage] dir`): the gateway's own
    /// broker connection then keeps its broker session too (clean_session=false), so the
    /// broker holds QoS 1/2 messages for it while it is down.
    pub durable: bool,
}

/// Per-client bounds (`[limits]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Each device's budget of frames of any kind (an address's, for senders without a
    /// session), checked before decoding.
    pub frames: BudgetLimits,
    /// Each client's budget of PUBLISH, REGISTER and SUBSCRIBE towards the broker.
    pub budget: BudgetLimits,
    /// Most subscriptions one client holds.
    pub max_filters_per_client: usize,
    /// Most bytes of a will: topic plus message.
    pub max_will_bytes: usize,
    /// Send an address no more than it sent until it has shown it receives (see
    /// [`crate::engine::Gateway`]'s return-path check).
    pub verify_return_path: bool,
    /// How many bytes an unproven address may get for each byte it sent (1: no more than it
    /// sent).
    pub return_path_factor: u32,
}

impl fmt::Debug for Settings {
    // Hand-written so that logging the settings never prints the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("gw_id", &self.gw_id)
            .field("mode", &self.mode)
            .field("max_clients", &self.max_clients)
            .field("client_id_max_len", &self.client_id_max_len)
            .field("max_topics_per_client", &self.max_topics_per_client)
            .field("decode", &self.decode)
            .field("advertise", &self.advertise)
            .field("keep_alive_tolerance", &self.keep_alive_tolerance)
            .field("t_retry", &self.t_retry)
            .field("n_retry", &self.n_retry)
            .field("t_adv", &self.t_adv)
            .field("gwinfo_interval", &self.gwinfo_interval)
            .field("sleep", &self.sleep)
            .field("sleep_max_total", &self.sleep_max_total)
            .field("client_id_prefix", &self.client_id_prefix)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("upstream_keep_alive", &self.upstream_keep_alive)
            .field("predefined", &self.predefined)
            .field("max_idle", &self.max_idle)
            .field("session_expiry", &self.session_expiry)
            .field("limits", &self.limits)
            .field("upstream_queue_bytes", &self.upstream_queue_bytes)
            .field("durable", &self.durable)
            .finish_non_exhaustive()
    }
}
