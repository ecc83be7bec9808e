//! mqttsn-gateway: an MQTT-SN v1.2 gateway between constrained devices (UDP, serial radios) and an
//! MQTT broker.
//!
//! # Architecture
//! A pure, deterministic protocol core (no sockets, no clock reads: time comes in with every
//! input) surrounded by thin IO adapters:
//!
//! ```text
//!  UDP / serial adapters ──frames + peer + now──▶ engine ◀──bytes──▶ upstream MQTT connection(s)
//!                        ◀──frames to send, timers, events──
//! ```
//!
//! # Module map
//! - [`codec`]: the MQTT-SN v1.2 wire format (every message, both length forms, forwarder
//!   encapsulation); total decoding with typed errors.
//! - [`config`]: the `gateway.toml` schema, defaults and validation with errors naming file, key and line.
//! - [`time`]: the core's own virtual clock types (milliseconds since start).
//! - [`transcript`]: the text format of timestamped frames between named peers, used for recordings
//!   and for tests replayed on virtual time.
//! - [`decode_tool`]: the `decode` subcommand (hex frames to text or JSON).
//! - [`engine`]: the deterministic gateway core (sessions, topic ids, sleep buffers, upstream MQTT state).
//! - [`driver`]: the tokio event loop that owns the engine and runs the transports.
//! - [`transport`]: UDP towards devices, TCP/TLS towards the broker.
//! - `embedded`: an in-process MQTT broker for zero-setup starts (feature `embedded-broker`).
//! - [`record`]: recordings while running: transcripts (`--record`) and pcap files for Wireshark.
//! - [`replay_tool`]: the `replay` subcommand: a recording's device side against a running gateway.
//! - [`hex`]: hex parsing and formatting shared by the CLI and transcripts.

pub mod codec;
pub mod config;
pub mod decode_tool;
pub mod driver;
#[cfg(feature = "embedded-broker")]
pub mod embedded;
pub mod engine;
pub mod hex;
pub mod record;
pub mod replay_tool;
pub mod time;
pub mod transcript;
pub mod transport;
