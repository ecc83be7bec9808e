//! Integration tests, one binary with a module per area (faster to build than one binary each).
#![allow(clippy::unwrap_used)]

mod cli;
mod codec_props;
mod codec_vectors;
mod config;
mod dtls;
mod e2e;
mod engine;
mod fixture_frames;
mod interop;
mod overload;
mod record;
mod replay;
mod restart;
mod security;
mod serial;
mod shutdown;
mod support;
mod transcript;
