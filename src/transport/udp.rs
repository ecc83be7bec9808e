//! UDP towards devices: the `[[udp]]` listeners (IPv4 and IPv6, several at once), receiving
//! and sending (unicast, broadcast or multicast).
//!
//! The driver reads the sockets itself, in its own loop: it waits until a listener is
//! readable ([`UdpTransport::readable`]), then takes a batch of datagrams straight into one
//! buffer ([`UdpTransport::try_recv`]) and hands each to the engine. No task and no queue sit
//! in between: while the loop is busy, datagrams wait in the kernel's receive buffer (whose
//! drops the kernel counts), so a flood costs the gateway no memory, and a round trip saves
//! the hop from a reader task. Dropping the transport closes the sockets.

use crate::config::{MulticastInterface, UdpConfig};
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::task::Poll;
use thiserror::Error;
use tokio::net::UdpSocket;

/// Largest datagram accepted (the MQTT-SN 3-octet length allows 65535 bytes): the size of the
/// buffer [`UdpTransport::try_recv`] wants.
pub const MAX_DATAGRAM: usize = 65_535;
/// Receive buffer requested from the kernel, so bursts from thousands of devices are not dropped.
const RECV_BUFFER: usize = 8 * 1024 * 1024;

/// Why a listener could not be set up.
#[derive(Debug, Error)]
pub enum UdpError {
    /// Binding or configuring the socket failed.
    #[error("udp {addr}: {what}: {source}")]
    Socket {
        /// The configured address.
        addr: SocketAddr,
        /// The step that failed.
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

struct Listener {
    socket: Arc<UdpSocket>,
    broadcast: Option<SocketAddr>,
    local: SocketAddr,
}

/// All UDP listeners.
pub struct UdpTransport {
    listeners: Vec<Listener>,
    /// Which listener last heard from a peer; only tracked when several listeners share an
    /// address family, so a reply leaves from the socket the device talks to.
    last_listener: HashMap<SocketAddr, usize>,
    track_peers: bool,
    /// Send failures (counted, not fatal).
    send_errors: u64,
    /// The listener [`UdpTransport::try_recv`] tries first: each in turn, so that a busy one
    /// cannot starve the others.
    next_read: usize,
}

fn socket_error(addr: SocketAddr, what: &'static str) -> impl FnOnce(io::Error) -> UdpError {
    move |source| UdpError::Socket { addr, what, source }
}

fn open(config: &UdpConfig) -> Result<std::net::UdpSocket, UdpError> {
    let addr = config.bind;
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))
        .map_err(socket_error(addr, "cannot create socket"))?;
    if addr.is_ipv6() {
        // `[::]` listens to IPv6 only, so that an IPv4 listener can share the port.
        socket
            .set_only_v6(true)
            .map_err(socket_error(addr, "cannot set IPV6_V6ONLY"))?;
    }
    // Best effort: the kernel caps it at net.core.rmem_max.
    let _ = socket.set_recv_buffer_size(RECV_BUFFER);
    let _ = socket.set_send_buffer_size(RECV_BUFFER);
    if let Some(target) = config.broadcast {
        match target.ip() {
            IpAddr::V4(ip) if ip.is_multicast() => {
                let iface = match &config.multicast_interface {
                    Some(MulticastInterface::Name(name)) => {
                        name.parse::<Ipv4Addr>().unwrap_or(Ipv4Addr::UNSPECIFIED)
                    }
                    _ => Ipv4Addr::UNSPECIFIED,
                };
                socket
                    .join_multicast_v4(&ip, &iface)
                    .map_err(socket_error(addr, "cannot join the multicast group"))?;
                let _ = socket.set_multicast_loop_v4(false);
            }
            IpAddr::V6(ip) if ip.is_multicast() => {
                let index = match &config.multicast_interface {
                    Some(MulticastInterface::Index(i)) => *i,
                    _ => 0,
                };
                socket
                    .join_multicast_v6(&ip, index)
                    .map_err(socket_error(addr, "cannot join the multicast group"))?;
                let _ = socket.set_multicast_loop_v6(false);
            }
            _ => socket
                .set_broadcast(true)
                .map_err(socket_error(addr, "cannot enable broadcast"))?,
        }
    }
    socket
        .set_nonblocking(true)
        .map_err(socket_error(addr, "cannot make the socket non-blocking"))?;
    socket
        .bind(&addr.into())
        .map_err(socket_error(addr, "cannot bind"))?;
    Ok(socket.into())
}

impl UdpTransport {
    /// Binds every listener and starts a reader task for each, feeding `datagrams` until
    /// `shutdown` fires. Must be called within a tokio runtime.
    pub fn bind(configs: &[UdpConfig]) -> Result<Self, UdpError> {
        let mut listeners = Vec::with_capacity(configs.len());
        for config in configs {
            let std_socket = open(config)?;
            let socket = UdpSocket::from_std(std_socket)
                .map_err(socket_error(config.bind, "cannot register the socket"))?;
            let local = socket
                .local_addr()
                .map_err(socket_error(config.bind, "cannot read the bound address"))?;
            listeners.push(Listener {
                socket: Arc::new(socket),
                broadcast: config.broadcast,
                local,
            });
        }
        let v4 = listeners.iter().filter(|l| l.local.is_ipv4()).count();
        let track_peers = v4 > 1 || listeners.len() - v4 > 1;
        Ok(UdpTransport {
            listeners,
            last_listener: HashMap::new(),
            track_peers,
            send_errors: 0,
            next_read: 0,
        })
    }

    /// Waits until some listener has a datagram to read (or an error to report). Cancel
    /// safe. With no listener it never completes.
    pub async fn readable(&self) {
        std::future::poll_fn(|cx| {
            for listener in &self.listeners {
                if listener.socket.poll_recv_ready(cx).is_ready() {
                    return Poll::Ready(());
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Takes one datagram into `buf` without waiting: its length, sender and listener index,
    /// or `None` when no listener has one now. The listeners are tried in turn. A datagram
    /// larger than `buf` is cut to its size (the engine then finds it malformed); errors the
    /// system reports on receiving (an ICMP port unreachable, say) are skipped.
    pub fn try_recv(&mut self, buf: &mut [u8]) -> Option<(usize, SocketAddr, usize)> {
        let n = self.listeners.len();
        for step in 0..n {
            let index = (self.next_read + step) % n;
            loop {
                match self.listeners[index].socket.try_recv_from(buf) {
                    Ok((len, from)) => {
                        self.next_read = (index + 1) % n;
                        return Some((len, from, index));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => tracing::debug!(error = %e, "udp receive error"),
                }
            }
        }
        None
    }

    /// Datagrams that could not be sent (no listener for the peer's address family, or the
    /// system refused them: no route, buffer full, ...) since the start.
    pub fn send_errors(&self) -> u64 {
        self.send_errors
    }

    /// The addresses actually bound (useful with port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(|l| l.local).collect()
    }

    /// The address of the listener that talks to `peer` (for recordings).
    pub fn local_for(&self, peer: SocketAddr) -> Option<SocketAddr> {
        self.listener_for(peer).map(|l| l.local)
    }

    /// Notes which listener a peer talks to (call for every received datagram).
    pub fn heard(&mut self, listener: usize, from: SocketAddr) {
        if self.track_peers {
            self.last_listener.insert(from, listener);
        }
    }

    fn listener_for(&self, to: SocketAddr) -> Option<&Listener> {
        if let Some(&i) = self.last_listener.get(&to) {
            return self.listeners.get(i);
        }
        self.listeners
            .iter()
            .find(|l| l.local.is_ipv4() == to.is_ipv4())
    }

    /// Sends a frame to one device.
    pub async fn send_to(&mut self, to: SocketAddr, bytes: &[u8]) {
        let Some(listener) = self.listener_for(to) else {
            self.send_errors += 1;
            return;
        };
        let socket = listener.socket.clone();
        if let Err(e) = send(&socket, to, bytes).await {
            self.send_errors += 1;
            tracing::debug!(%to, error = %e, "udp send failed");
        }
    }

    /// Sends a frame to the broadcast (or multicast) address of every listener that has one,
    /// or, with `near`, of the listener `near` talks to, falling back to `near` itself.
    pub async fn broadcast(&mut self, near: Option<SocketAddr>, bytes: &[u8]) {
        let targets: Vec<(Arc<UdpSocket>, SocketAddr)> = match near {
            Some(peer) => match self.listener_for(peer) {
                Some(l) => vec![(l.socket.clone(), l.broadcast.unwrap_or(peer))],
                None => Vec::new(),
            },
            None => self
                .listeners
                .iter()
                .filter_map(|l| l.broadcast.map(|b| (l.socket.clone(), b)))
                .collect(),
        };
        for (socket, to) in targets {
            if let Err(e) = send(&socket, to, bytes).await {
                self.send_errors += 1;
                tracing::debug!(%to, error = %e, "udp broadcast failed");
            }
        }
    }
}

/// Sends without waiting when the socket has room (the usual case), else waits for room.
async fn send(socket: &UdpSocket, to: SocketAddr, bytes: &[u8]) -> io::Result<usize> {
    match socket.try_send_to(bytes, to) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => socket.send_to(bytes, to).await,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::time::Duration;

    /// Far beyond anything these tests wait for; reaching it is a failure.
    const PATIENCE: Duration = Duration::from_secs(15);

    fn loopback() -> UdpConfig {
        UdpConfig {
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            broadcast: None,
            multicast_interface: None,
        }
    }

    #[tokio::test]
    async fn a_send_with_no_listener_for_the_address_family_is_counted() {
        let mut udp = UdpTransport::bind(&[loopback()]).unwrap();
        udp.send_to("[::1]:1884".parse().unwrap(), &[0x02, 0x16])
            .await;
        assert_eq!(udp.send_errors(), 1);
    }

    /// Datagrams are read where the driver wants them, in turn from each listener, and what
    /// is not read stays in the kernel.
    #[tokio::test]
    async fn datagrams_are_taken_in_turn_from_every_listener() {
        let mut udp = UdpTransport::bind(&[loopback(), loopback()]).unwrap();
        let addrs = udp.local_addrs();
        let device = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for (i, frame) in [[0x02, 0x16], [0x02, 0x17], [0x02, 0x18]]
            .iter()
            .enumerate()
        {
            device.send_to(frame, addrs[i % 2]).unwrap();
        }
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut got = Vec::new();
        while got.len() < 3 {
            tokio::time::timeout(PATIENCE, udp.readable())
                .await
                .unwrap();
            while let Some((len, from, listener)) = udp.try_recv(&mut buf) {
                assert_eq!(from, device.local_addr().unwrap());
                got.push((listener, buf[..len].to_vec()));
            }
        }
        got.sort();
        assert_eq!(
            got,
            [
                (0, vec![0x02, 0x16]),
                (0, vec![0x02, 0x18]),
                (1, vec![0x02, 0x17])
            ]
        );
        assert!(udp.try_recv(&mut buf).is_none(), "nothing more");
    }

    #[tokio::test]
    async fn dropping_the_transport_frees_the_port() {
        let udp = UdpTransport::bind(&[loopback()]).unwrap();
        let addr = udp.local_addrs()[0];
        drop(udp);
        std::net::UdpSocket::bind(addr).unwrap();
    }
}
