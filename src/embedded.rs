//! An in-process MQTT 3.1.1 broker (rumqttd) so the gateway runs with one command on a machine without a broker.
//!
//! `mqttsn-gateway run --embedded-broker` (or `upstream.url = "embedded"`) starts an
//! [`EmbeddedBroker`] before the gateway connects upstream; any MQTT client (for example
//! `mosquitto_sub -h 127.0.0.1 -t '#' -v`) can then watch the traffic.
//!
//! # Lifetime
//! rumqttd 0.20 has no shutdown API: its listener and router threads loop forever. The broker
//! therefore lives until the process exits; dropping the [`EmbeddedBroker`] handle does not stop
//! it. That suits its purpose (one broker for the life of `mqttsn-gateway run`); tests that start
//! several brokers simply leave them running until the test binary exits.
//!
//! # Logging
//! rumqttd logs through `tracing` and reports every ordinary client disconnect at ERROR level.
//! This module installs no subscriber; whoever configures logging can quieten it with a filter
//! directive such as `rumqttd=off`.
//!
//! # Limits
//! The broker accepts anonymous clients only (no authentication, plain TCP, no TLS, no
//! websocket), keeps everything in memory and does not persist sessions. Besides the broker's
//! own connection limit, the process's file-descriptor limit (`ulimit -n`) caps how many clients
//! can connect.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// Largest MQTT "remaining length" the broker accepts: a full 1 MiB payload plus the largest
/// possible topic (2-byte length prefix + 65,535 bytes) and a packet identifier, so that any
/// publish carrying up to 1 MiB of payload fits whatever its topic.
pub const MAX_PACKET_SIZE: usize = 1024 * 1024 + 2 + 65_535 + 2;

/// Maximum number of simultaneous client connections. Sized for 10,000 clients (the gateway may
/// open one upstream connection per device) plus headroom for the broker's internal links.
pub const MAX_CONNECTIONS: usize = 10_240;

/// How long [`EmbeddedBroker::start`] waits for the listener to accept TCP connections.
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on a single readiness probe, so a stuck connect cannot stretch `READY_TIMEOUT`.
const PROBE_CONNECT_TIMEOUT: Duration = Duration::from_millis(250);
/// Pause between readiness probes: short, because the listener usually comes up within a few
/// milliseconds.
const PROBE_RETRY_INTERVAL: Duration = Duration::from_millis(10);

/// Name of the thread that runs rumqttd's (blocking) `Broker::start`.
const BROKER_THREAD_NAME: &str = "embedded-broker";
/// Name of rumqttd's MQTT 3.1.1 server; rumqttd uses it as its listener thread's name and in its
/// logs.
const SERVER_NAME: &str = "embedded-v4";

/// Why the embedded broker could not be started. Every variant names the address involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmbeddedError {
    /// Something (often another MQTT broker such as mosquitto) already listens on the address.
    #[error(
        "cannot start the embedded MQTT broker on {addr}: the address is already in use \
         (is another MQTT broker running? stop it, or choose another port)"
    )]
    AddrInUse {
        /// The address that was asked for.
        addr: SocketAddr,
    },
    /// The operating system refused to let this process bind the address.
    #[error(
        "cannot start the embedded MQTT broker on {addr}: permission denied \
         (ports below 1024 usually need extra privileges; choose a port such as 1883): {source}"
    )]
    PermissionDenied {
        /// The address that was asked for.
        addr: SocketAddr,
        /// The operating system's error.
        source: io::Error,
    },
    /// Binding the address failed for another reason (for example no local interface has it).
    #[error("cannot start the embedded MQTT broker on {addr}: cannot bind the address: {source}")]
    Bind {
        /// The address that was asked for.
        addr: SocketAddr,
        /// The operating system's error.
        source: io::Error,
    },
    /// The thread that runs the broker could not be created.
    #[error("cannot start the embedded MQTT broker on {addr}: cannot spawn its thread: {source}")]
    Spawn {
        /// The address that was asked for.
        addr: SocketAddr,
        /// The operating system's error.
        source: io::Error,
    },
    /// rumqttd stopped while starting up, before it accepted connections.
    #[error("the embedded MQTT broker on {addr} stopped while starting: {reason}")]
    Exited {
        /// The address the broker was told to listen on.
        addr: SocketAddr,
        /// What is known about the cause.
        reason: String,
    },
    /// The broker did not accept TCP connections in time.
    #[error(
        "the embedded MQTT broker on {addr} did not accept TCP connections within {waited:?}; \
         last attempt: {source}"
    )]
    NotReady {
        /// The address the broker was told to listen on.
        addr: SocketAddr,
        /// How long `start` waited.
        waited: Duration,
        /// The error of the last connection attempt.
        source: io::Error,
    },
}

/// Handle to a running in-process MQTT 3.1.1 broker.
///
/// The broker keeps running when the handle is dropped (see the module documentation).
#[derive(Debug)]
pub struct EmbeddedBroker {
    local_addr: SocketAddr,
    thread: JoinHandle<String>,
}

impl EmbeddedBroker {
    /// Starts a broker listening on `bind` (for example `127.0.0.1:1883`) and returns once it
    /// accepts TCP connections, or with an error after about 5 seconds.
    ///
    /// Port 0 picks a free port; [`local_addr`](Self::local_addr) tells which. rumqttd cannot
    /// report the port it bound, so this function binds a listener itself first — which also
    /// detects an address already in use with a clear error — then closes it and hands the
    /// resulting concrete address to rumqttd. In the short window between the two binds another
    /// process could take the port; if that makes rumqttd fail before it is seen accepting
    /// connections, `start` returns [`EmbeddedError::Exited`], but if the intruder is the one
    /// accepting, `start` cannot tell the difference and succeeds.
    ///
    /// # Errors
    /// [`EmbeddedError`] names the address and the cause (address in use, permission denied,
    /// broker thread failure, not ready in time).
    pub fn start(bind: SocketAddr) -> Result<EmbeddedBroker, EmbeddedError> {
        let local_addr = reserve_address(bind)?;
        let thread = thread::Builder::new()
            .name(BROKER_THREAD_NAME.to_owned())
            .spawn(move || run_broker(broker_config(local_addr)))
            .map_err(|source| EmbeddedError::Spawn { addr: bind, source })?;
        wait_until_ready(local_addr, thread)
    }

    /// The address the broker listens on, with the actual port when port 0 was requested. An
    /// unspecified IP (`0.0.0.0`, `::`) stays unspecified: the broker listens on all interfaces.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Whether the broker's threads are still running. rumqttd stops only when its listener
    /// fails, so `false` means clients can no longer connect.
    pub fn is_running(&self) -> bool {
        !self.thread.is_finished()
    }
}

/// Binds `bind` once to detect an unusable address early and to learn the port when 0 was
/// asked for, then releases it for rumqttd.
fn reserve_address(bind: SocketAddr) -> Result<SocketAddr, EmbeddedError> {
    let listener = TcpListener::bind(bind).map_err(|source| match source.kind() {
        io::ErrorKind::AddrInUse => EmbeddedError::AddrInUse { addr: bind },
        io::ErrorKind::PermissionDenied => EmbeddedError::PermissionDenied { addr: bind, source },
        _ => EmbeddedError::Bind { addr: bind, source },
    })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| EmbeddedError::Bind { addr: bind, source })?;
    // Dropping closes the socket; both std and tokio set SO_REUSEADDR on Unix, so rumqttd can
    // bind the same address straight away.
    drop(listener);
    Ok(local_addr)
}

/// rumqttd configuration: one MQTT 3.1.1 listener on `listen`, anonymous clients, everything in
/// memory, no console, metrics, prometheus or bridge (they would open more ports and threads).
fn broker_config(listen: SocketAddr) -> Config {
    let connections = ConnectionSettings {
        // Time a client has to send CONNECT after the TCP connect; real clients send it at once,
        // and a limit frees slots held by idle sockets.
        connection_timeout_ms: 10_000,
        // rumqttd applies this to the remaining length of every incoming packet.
        max_payload_size: MAX_PACKET_SIZE,
        // Packets read from one connection per batch before handing them to the router (the
        // QoS 1/2 outgoing in-flight window is fixed at 100 inside rumqttd); 100 matches
        // rumqttd's own examples.
        max_inflight_count: 100,
        // No credentials configured and no auth callback: anonymous clients are accepted.
        auth: None,
        external_auth: None,
        // Without dynamic filters rumqttd disconnects a client that publishes to a topic nobody
        // subscribed to yet, which is normal for the gateway.
        dynamic_filters: true,
    };
    let server = ServerSettings {
        name: SERVER_NAME.to_owned(),
        listen,
        tls: None,
        // rumqttd sleeps this long after each accept to throttle connection storms; a local
        // development broker should accept thousands of clients quickly instead.
        next_connection_delay_ms: 0,
        connections,
    };
    let router = RouterConfig {
        max_connections: MAX_CONNECTIONS,
        // Upper bound of QoS 0 publishes the router hands to one subscriber per pass.
        max_outgoing_packet_count: 200,
        // rumqttd keeps an in-memory log per subscription filter (and per topic nobody matches,
        // because of dynamic filters). Subscribers read from it, so it only needs to cover their
        // lag: 4 segments of 128 KiB bound it to about 512 KiB per filter (a segment may exceed
        // its size by one packet), which keeps memory modest even with thousands of topics.
        max_segment_size: 128 * 1024,
        max_segment_count: 4,
        custom_segment: None,
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    };
    Config {
        id: 0,
        router,
        v4: Some(HashMap::from([("1".to_owned(), server)])),
        v5: None,
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    }
}

/// Body of the broker thread. `Broker::start` blocks while the listener runs and returns only
/// when it has stopped; the returned text explains why, for [`EmbeddedError::Exited`].
fn run_broker(config: Config) -> String {
    let mut broker = Broker::new(config);
    match broker.start() {
        // rumqttd swallows its listener's error (it only logs it), so the cause is not known
        // here; failing to bind is by far the most likely one at start-up.
        Ok(()) => "rumqttd's listener stopped (most likely it could not bind the address, \
                   which another process may have just taken; rumqttd logs the cause)"
            .to_owned(),
        Err(error) => format!("rumqttd refused to start: {error}"),
    }
}

/// Probes the listener until it accepts a TCP connection, the broker thread ends, or
/// [`READY_TIMEOUT`] passes.
fn wait_until_ready(
    addr: SocketAddr,
    thread: JoinHandle<String>,
) -> Result<EmbeddedBroker, EmbeddedError> {
    let target = connect_target(addr);
    let started = Instant::now();
    loop {
        if thread.is_finished() {
            return Err(exited(addr, thread));
        }
        match TcpStream::connect_timeout(&target, PROBE_CONNECT_TIMEOUT) {
            Ok(probe) => {
                drop(probe);
                // A connection accepted right as rumqttd gave up would have reached another
                // process; re-checking narrows that window.
                if thread.is_finished() {
                    return Err(exited(addr, thread));
                }
                tracing::debug!(%addr, "embedded MQTT broker accepts connections");
                return Ok(EmbeddedBroker {
                    local_addr: addr,
                    thread,
                });
            }
            Err(source) => {
                let waited = started.elapsed();
                if waited >= READY_TIMEOUT {
                    return Err(EmbeddedError::NotReady {
                        addr,
                        waited,
                        source,
                    });
                }
            }
        }
        thread::sleep(PROBE_RETRY_INTERVAL);
    }
}

/// Turns a finished broker thread into an error, keeping its explanation.
fn exited(addr: SocketAddr, thread: JoinHandle<String>) -> EmbeddedError {
    let reason = thread
        .join()
        .unwrap_or_else(|_| "the broker thread panicked".to_owned());
    EmbeddedError::Exited { addr, reason }
}

/// Where to connect to reach a listener bound to `addr`: an unspecified IP cannot be connected
/// to portably, so use the loopback address of the same family.
fn connect_target(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use rumqttc::mqttbytes::v4::{Connect, ConnectReturnCode, Packet, Publish, Subscribe};
    use rumqttc::mqttbytes::{Error as MqttError, QoS};
    use std::io::{Read, Write};

    const IO_TIMEOUT: Duration = Duration::from_secs(5);

    fn loopback_any_port() -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
    }

    /// A minimal blocking MQTT 3.1.1 client over a raw socket.
    struct RawClient {
        stream: TcpStream,
        buffer: BytesMut,
    }

    impl RawClient {
        fn connect(addr: SocketAddr, client_id: &str) -> RawClient {
            let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap();
            stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
            let mut client = RawClient {
                stream,
                buffer: BytesMut::new(),
            };
            // rumqttd rejects keep-alive 0, so use a real one.
            let mut connect = Connect::new(client_id);
            connect.keep_alive = 60;
            client.send(Packet::Connect(connect));
            match client.receive() {
                Packet::ConnAck(ack) => assert_eq!(ack.code, ConnectReturnCode::Success),
                other => panic!("expected CONNACK, got {other:?}"),
            }
            client
        }

        fn send(&mut self, packet: Packet) {
            let mut bytes = BytesMut::new();
            packet.write(&mut bytes, 2 * MAX_PACKET_SIZE).unwrap();
            self.stream.write_all(&bytes).unwrap();
        }

        fn receive(&mut self) -> Packet {
            loop {
                match Packet::read(&mut self.buffer, 2 * MAX_PACKET_SIZE) {
                    Ok(packet) => return packet,
                    Err(MqttError::InsufficientBytes(_)) => {}
                    Err(error) => panic!("undecodable packet: {error}"),
                }
                let mut chunk = [0u8; 64 * 1024];
                let read = self.stream.read(&mut chunk).unwrap();
                assert!(read > 0, "broker closed the connection");
                self.buffer.extend_from_slice(&chunk[..read]);
            }
        }

        fn subscribe(&mut self, filter: &str) {
            let mut subscribe = Subscribe::new(filter, QoS::AtMostOnce);
            subscribe.pkid = 1;
            self.send(Packet::Subscribe(subscribe));
            match self.receive() {
                Packet::SubAck(ack) => {
                    assert_eq!(ack.pkid, 1);
                    assert_eq!(ack.return_codes.len(), 1);
                }
                other => panic!("expected SUBACK, got {other:?}"),
            }
        }
    }

    /// Subscribes with one client, publishes with another, and returns what the first received.
    fn round_trip(addr: SocketAddr, topic: &str, payload: Vec<u8>) -> Publish {
        let mut subscriber = RawClient::connect(addr, "embedded-test-sub");
        subscriber.subscribe("sensors/#");
        let mut publisher = RawClient::connect(addr, "embedded-test-pub");
        publisher.send(Packet::Publish(Publish::new(
            topic,
            QoS::AtMostOnce,
            payload,
        )));
        match subscriber.receive() {
            Packet::Publish(publish) => publish,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    #[test]
    fn port_zero_broker_relays_a_qos0_publish_between_two_clients() {
        let broker = EmbeddedBroker::start(loopback_any_port()).unwrap();
        let addr = broker.local_addr();
        assert_eq!(addr.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_ne!(addr.port(), 0);
        assert!(broker.is_running());

        let received = round_trip(addr, "sensors/t1", b"21.5".to_vec());
        assert_eq!(received.topic, "sensors/t1");
        assert_eq!(&received.payload[..], b"21.5");
        assert_eq!(received.qos, QoS::AtMostOnce);
    }

    #[test]
    fn relays_a_one_mebibyte_payload() {
        let broker = EmbeddedBroker::start(loopback_any_port()).unwrap();
        let payload: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
        let received = round_trip(broker.local_addr(), "sensors/big", payload.clone());
        assert_eq!(received.payload.len(), payload.len());
        assert!(received.payload[..] == payload[..]);
    }

    #[test]
    fn address_held_by_another_listener_is_reported_as_in_use() {
        let holder = TcpListener::bind(loopback_any_port()).unwrap();
        let taken = holder.local_addr().unwrap();
        let error = EmbeddedBroker::start(taken).unwrap_err();
        assert!(
            matches!(error, EmbeddedError::AddrInUse { addr } if addr == taken),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(message.contains(&taken.to_string()), "{message}");
        assert!(message.contains("already in use"), "{message}");
    }

    #[test]
    fn second_broker_on_the_same_address_is_reported_as_in_use() {
        let first = EmbeddedBroker::start(loopback_any_port()).unwrap();
        let error = EmbeddedBroker::start(first.local_addr()).unwrap_err();
        assert!(
            matches!(error, EmbeddedError::AddrInUse { .. }),
            "{error:?}"
        );
        assert!(first.is_running());
    }

    #[test]
    fn unspecified_addresses_are_probed_through_loopback() {
        assert_eq!(
            connect_target("0.0.0.0:1883".parse().unwrap()),
            "127.0.0.1:1883".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            connect_target("[::]:1883".parse().unwrap()),
            "[::1]:1883".parse::<SocketAddr>().unwrap()
        );
        let concrete: SocketAddr = "192.0.2.7:1883".parse().unwrap();
        assert_eq!(connect_target(concrete), concrete);
    }

    #[test]
    fn config_meets_the_documented_limits() {
        let listen: SocketAddr = "127.0.0.1:1883".parse().unwrap();
        let config = broker_config(listen);
        assert!(config.router.max_connections >= 10_000);
        let servers = config.v4.unwrap();
        assert_eq!(servers.len(), 1);
        let server = servers.values().next().unwrap();
        assert_eq!(server.listen, listen);
        assert!(server.tls.is_none());
        assert!(server.connections.max_payload_size >= 1024 * 1024);
        assert!(server.connections.auth.is_none());
        assert!(server.connections.external_auth.is_none());
        assert!(config.console.is_none() && config.prometheus.is_none());
    }
}
