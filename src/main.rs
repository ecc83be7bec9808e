//! The `mqttsn-gateway` command line.
fn main() {}
