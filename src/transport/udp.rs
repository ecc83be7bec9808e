//! UDP towards devices: the `[[udp]]` listeners (IPv4 and IPv6, several at once), receiving
//! and sending (unicast, broadcast or multicast).
//!
//! The driver reads the sockets itself, in its own loop: it waits until a listener is
//! readable ([`UdpTransport::readable`]), then takes a batch of datagrams straight into the
//! slots of one buffer ([`UdpTransport::recv_batch`]: one `recvmmsg` call on Linux) and hands
//! each to the engine. No task and no queue sit in between: while the loop is busy, datagrams
//! wait in the kernel's receive buffer (whose drops the kernel counts), so a flood costs the
//! gateway no memory, and a round trip saves the hop from a reader task. One system call per
//! batch rather than per datagram is what lets the loop drain a flood quickly, so that other
//! devices' datagrams wait behind it as little as possible. A datagram longer than its
//! listener's `max_frame` is reported as [`TooLong`], never read whole. Dropping the transport
//! closes the sockets.

use crate::config::{MulticastInterface, UdpConfig};
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::task::Poll;
use thiserror::Error;
use tokio::net::UdpSocket;

/// Memory of a batch's receive slots: the number of slots adapts to the largest `max_frame`,
/// so a batch costs about this much whatever the limit.
const BATCH_BYTES: usize = 128 * 1024;
/// Most datagrams read at once (one system call on Linux).
const BATCH_SLOTS: usize = 32;
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
    max_frame: usize,
}

/// A datagram was longer than its listener's `max_frame`: dropped unread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLong {
    /// The listener's `max_frame`.
    pub limit: usize,
}

/// One datagram of a [`RecvBatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram<'a> {
    /// The sender.
    pub from: SocketAddr,
    /// The listener it arrived on (an index into the configured listeners).
    pub listener: usize,
    /// Its bytes, or why they were not taken.
    pub frame: Result<&'a [u8], TooLong>,
}

/// What [`UdpTransport::recv_batch`] reads into: equal slots of one buffer, each one byte
/// longer than the largest `max_frame` (so that a datagram cut to the slot shows it was too
/// long), and what arrived in them.
pub struct RecvBatch {
    buf: Vec<u8>,
    slot: usize,
    /// Sender and length of each slot filled by the last read.
    filled: Vec<(SocketAddr, usize)>,
    /// The listener of the last read, and its `max_frame`.
    listener: usize,
    limit: usize,
}

impl RecvBatch {
    /// The datagrams of the last read, in arrival order.
    pub fn datagrams(&self) -> impl Iterator<Item = Datagram<'_>> {
        self.filled
            .iter()
            .zip(self.buf.chunks(self.slot))
            .map(|(&(from, len), slot)| Datagram {
                from,
                listener: self.listener,
                frame: if len > self.limit {
                    Err(TooLong { limit: self.limit })
                } else {
                    Ok(&slot[..len])
                },
            })
    }
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
    /// The listener [`UdpTransport::recv_batch`] tries first: each in turn, so that a busy one
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
                max_frame: config.max_frame,
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

    /// A batch to read into, with slots for the longest `max_frame` of the listeners.
    pub fn batch(&self) -> RecvBatch {
        let longest = self
            .listeners
            .iter()
            .map(|l| l.max_frame)
            .max()
            .unwrap_or(0);
        let slot = longest + 1;
        let slots = (BATCH_BYTES / slot).clamp(1, BATCH_SLOTS);
        RecvBatch {
            buf: vec![0; slot * slots],
            slot,
            filled: Vec::with_capacity(slots),
            listener: 0,
            limit: 0,
        }
    }

    /// Reads what one listener has, up to a batch, without waiting; returns how many
    /// datagrams arrived (see [`RecvBatch::datagrams`]), 0 when no listener has any now. The
    /// listeners take turns, so a busy one cannot starve the others. Errors the system reports
    /// on receiving (an ICMP port unreachable, say) are skipped.
    pub fn recv_batch(&mut self, batch: &mut RecvBatch) -> usize {
        batch.filled.clear();
        let n = self.listeners.len();
        for step in 0..n {
            let index = (self.next_read + step) % n;
            let listener = &self.listeners[index];
            loop {
                match read_batch(&listener.socket, batch) {
                    Ok(()) if batch.filled.is_empty() => break,
                    Ok(()) => {
                        batch.listener = index;
                        batch.limit = listener.max_frame;
                        self.next_read = (index + 1) % n;
                        return batch.filled.len();
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => tracing::debug!(error = %e, "udp receive error"),
                }
            }
        }
        0
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

/// Fills the batch's slots from `socket` with one `recvmmsg`.
#[cfg(target_os = "linux")]
fn read_batch(socket: &UdpSocket, batch: &mut RecvBatch) -> io::Result<()> {
    use nix::sys::socket::{recvmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
    use std::io::IoSliceMut;
    use std::os::fd::AsRawFd;
    let RecvBatch {
        buf, slot, filled, ..
    } = batch;
    let fd = socket.as_raw_fd();
    socket.try_io(tokio::io::Interest::READABLE, || {
        // Made for each call: it holds raw pointers, so it cannot live in the batch, which
        // the driver's future (sent between threads) holds across awaits.
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(buf.len() / *slot, None);
        let mut slots: Vec<[IoSliceMut<'_>; 1]> = buf
            .chunks_mut(*slot)
            .map(|chunk| [IoSliceMut::new(chunk)])
            .collect();
        let received = recvmmsg(
            fd,
            &mut headers,
            slots.iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        )
        .map_err(io::Error::from)?;
        for message in received {
            // UDP always has a sender; an address of another family cannot occur.
            if let Some(from) = message.address.and_then(|a| socket_addr(&a)) {
                filled.push((from, message.bytes));
            }
        }
        Ok(())
    })
}

#[cfg(target_os = "linux")]
fn socket_addr(addr: &nix::sys::socket::SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    addr.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6((*v6).into()))
}

/// Fills the batch's slots from `socket`, one datagram at a time (no `recvmmsg` here).
#[cfg(not(target_os = "linux"))]
fn read_batch(socket: &UdpSocket, batch: &mut RecvBatch) -> io::Result<()> {
    for chunk in batch.buf.chunks_mut(batch.slot) {
        match socket.try_recv_from(chunk) {
            Ok((len, from)) => batch.filled.push((from, len)),
            Err(e) if batch.filled.is_empty() => return Err(e),
            Err(_) => break,
        }
    }
    Ok(())
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
            ..UdpConfig::default()
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
        let mut batch = udp.batch();
        let mut got = Vec::new();
        while got.len() < 3 {
            tokio::time::timeout(PATIENCE, udp.readable())
                .await
                .unwrap();
            while udp.recv_batch(&mut batch) > 0 {
                for d in batch.datagrams() {
                    assert_eq!(d.from, device.local_addr().unwrap());
                    got.push((d.listener, d.frame.unwrap().to_vec()));
                }
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
        assert_eq!(udp.recv_batch(&mut batch), 0, "nothing more");
    }

    #[tokio::test]
    async fn dropping_the_transport_frees_the_port() {
        let udp = UdpTransport::bind(&[loopback()]).unwrap();
        let addr = udp.local_addrs()[0];
        drop(udp);
        std::net::UdpSocket::bind(addr).unwrap();
    }
}
