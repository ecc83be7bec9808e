//! IO adapters around the engine: UDP sockets towards devices and TCP/TLS connections towards
//! the broker. They move bytes and report events; all protocol state stays in the engine. The
//! device-side tasks stop on the driver's [`shutdown`] signal; the broker connections close
//! through [`upstream::UpstreamPool::shutdown`], which first writes the engine's DISCONNECTs.

pub mod dtls;
pub mod dtls_io;
pub mod serial;
pub mod shutdown;
pub mod udp;
pub mod upstream;
