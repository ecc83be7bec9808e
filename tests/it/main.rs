//! Integration tests, one binary with a module per area (faster to build than one binary each).

mod config;
mod transcript;
