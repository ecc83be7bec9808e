//! Tests of config loading and validation.
