//! IO adapters around the engine: UDP sockets towards devices and TCP/TLS connections towards
//! the broker. They move bytes and report events; all protocol state stays in the engine.

pub mod serial;
pub mod udp;
pub mod upstream;
