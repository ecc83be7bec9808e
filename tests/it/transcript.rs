//! Tests of the transcript format, parser and replay harness.
