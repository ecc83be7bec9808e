//! Integration tests, one binary with a module per area (faster to build than one binary each).

mod config;
mod transcript;
mod codec_props;
mod codec_vectors;
