//! mqttsn-core: the MQTT-SN gateway's protocol core, deterministic and free of IO.
//!
//! Nothing here opens a socket, reads a clock, draws a random number or knows tokio: every input
//! carries `now`, outputs are drained by polling, and hash seeds come from the caller. The crate's
//! dependencies keep it that way (the compiler refuses an import of tokio, serde or toml), so the
//! same transcript replayed twice gives the same output, byte for byte.
//!
//! # Where each concept lives
//! - [`codec`]: the MQTT-SN v1.2 wire format (the `mqttsn-codec` crate, re-exported).
//! - [`settings`]: what the engine is configured with ([`Settings`]), built by the gateway from
//!   its `gateway.toml`.
//! - [`engine`]: the gateway state machine: sessions ([`engine::Gateway`]), the topic-id registry
//!   ([`engine::registry`]), sleep buffers ([`engine::sleep`]), subscriptions
//!   ([`engine::subscriptions`]) and the upstream MQTT session ([`engine::mqtt`]).
//! - [`time`]: virtual time (milliseconds since start).
//! - [`hash`]: seeded hash maps for keys that devices choose.
//! - [`transcript`]: the text format of timestamped frames, its replay harness on virtual time,
//!   and the mapping between the engine's inputs and outputs and transcript lines.
//! - [`hex`]: hex text <-> bytes for transcripts and tools.

pub use mqttsn_codec as codec;

pub mod engine;
pub mod hash;
pub mod hex;
pub mod settings;
pub mod time;
pub mod transcript;

pub use settings::{Limits, Mode, PredefinedTopic, Settings};
