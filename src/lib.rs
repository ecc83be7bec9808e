//! mqttsn-gateway: an MQTT-SN v1.2 gateway between constrained devices (UDP, serial radios) and an
//! MQTT broker.
//!
//! # Architecture
//! A pure, deterministic protocol core (the `mqttsn-core` crate: no sockets, no clock reads, time
//! comes in with every input) surrounded by thin IO adapters in this crate:
//!
//! ```text
//!  UDP / serial adapters ──frames + peer + now──▶ engine ◀──bytes──▶ upstream MQTT connection(s)
//!                        ◀──frames to send, timers, events──
//! ```
//!
//! # Where each concept lives
//! - [`codec`]: the MQTT-SN v1.2 wire format (crate `mqttsn-codec`, `no_std`).
//! - [`engine`], [`time`], [`transcript`], [`hex`]: the protocol core (crate `mqttsn-core`):
//!   sessions, the topic-id registry, sleep buffers, the upstream MQTT session, virtual time and
//!   transcripts with their replay harness.
//! - [`mqtt_v4`]: MQTT 3.1.1 packets for the core's upstream session, on rumqttc's codec.
//! - [`config`]: the `gateway.toml` schema, defaults and validation with errors naming file, key
//!   and line, and the core's settings built from it.
//! - [`driver`]: the tokio event loop that owns the engine, reads the clock and runs the
//!   transports under one shutdown signal.
//! - [`transport`]: UDP and serial radios towards devices, TCP/TLS towards the broker.
//! - `embedded`: an in-process MQTT broker for zero-setup starts (feature `embedded-broker`).
//! - [`record`]: recordings while running (transcripts with `--record`, pcap files for
//!   Wireshark) and the pcap reader.
//! - [`storage`]: the state directory: the session store on disk (a log of group commits), what happens to a
//!   damaged one, and the `state` subcommand's report.
//! - [`replay`]: the `replay` subcommand: a recording's device side against a running gateway.
//! - [`decode_tool`]: the `decode` subcommand (hex frames to text or JSON).

pub use mqttsn_codec as codec;
pub use mqttsn_core::{engine, hash, hex, time, transcript};

pub mod config;
pub mod decode_tool;
pub mod driver;
#[cfg(feature = "embedded-broker")]
pub mod embedded;
pub mod mqtt_v4;
pub mod record;
pub mod replay;
pub mod secrets;
pub mod storage;
pub mod transport;
