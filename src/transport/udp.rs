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

/// What [`UdpTransport::recv_batch`] reads into: one buffer, cut for each read into equal
/// slots one byte longer than the listener's `max_frame` (so that a datagram cut to its slot
/// shows it was too long), and what arrived in them.
pub struct RecvBatch {
    buf: Vec<u8>,
    /// The listener of the last read, and its `max_frame`.
    listener: usize,
    limit: usize,
    /// Slot, sender and length of each datagram of the last read.
    filled: Vec<(usize, SocketAddr, usize)>,
}

impl RecvBatch {
    /// The datagrams of the last read, in arrival order.
    pub fn datagrams(&self) -> impl Iterator<Item = Datagram<'_>> {
        let slot = self.limit + 1;
        self.filled.iter().map(move |&(index, from, len)| Datagram {
            from,
            listener: self.listener,
            frame: match self.buf.get(index * slot..index * slot + len) {
                Some(bytes) if len <= self.limit => Ok(bytes),
                _ => Err(TooLong { limit: self.limit }),
            },
        })
    }
}

/// All UDP listeners.
pub struct UdpTransport {
    listeners: Vec<Listener>,
    /// Which listener last heard from a peer, where that is not the first listener of its
    /// address family, so that a reply leaves from the socket the device talks to. Only kept
    /// when several listeners share a family, and for at most `max_peers` addresses (a full
    /// table forgets one to make room: that peer's replies leave from the first listener until
    /// it is heard again).
    last_listener: HashMap<SocketAddr, usize>,
    track_peers: bool,
    max_peers: usize,
    /// Peers forgotten to make room in `last_listener`.
    peers_forgotten: u64,
    /// Send failures (counted, not fatal).
    send_errors: u64,
    /// The listener [`UdpTransport::recv_batch`] tries first: each in turn, so that a busy one
    /// cannot starve the others.
    next_read: usize,
}

fn socket_error(addr: SocketAddr, what: &'static str) -> impl FnOnce(io::Error) -> UdpError {
    move |source| UdpError::Socket { addr, what, source }
}

/// A bound, non-blocking UDP socket for `config`, with large kernel buffers (the DTLS
/// listeners use it too).
pub(crate) fn open(config: &UdpConfig) -> Result<std::net::UdpSocket, UdpError> {
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
    /// Binds every listener; remembers which listener talks to a peer for up to `max_peers`
    /// peers. Must be called within a tokio runtime.
    pub fn bind(configs: &[UdpConfig], max_peers: usize) -> Result<Self, UdpError> {
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
            max_peers,
            peers_forgotten: 0,
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

    /// A batch to read into: `BATCH_BYTES`, or one slot of the longest `max_frame` if that
    /// is more.
    pub fn batch(&self) -> RecvBatch {
        let longest = self
            .listeners
            .iter()
            .map(|l| l.max_frame + 1)
            .max()
            .unwrap_or(0);
        RecvBatch {
            buf: vec![0; longest.max(BATCH_BYTES)],
            listener: 0,
            limit: 0,
            filled: Vec::with_capacity(BATCH_SLOTS),
        }
    }

    /// Reads what one listener has, up to a batch, without waiting; returns how many
    /// datagrams arrived (see [`RecvBatch::datagrams`]), 0 when no listener has any now. The
    /// listeners take turns, so a busy one cannot starve the others. Errors the system reports
    /// on receiving (an ICMP port unreachable, say) are skipped, a few at most per listener
    /// and call, so that one that keeps coming cannot hold the loop.
    pub fn recv_batch(&mut self, batch: &mut RecvBatch) -> usize {
        batch.filled.clear();
        let n = self.listeners.len();
        for step in 0..n {
            let index = (self.next_read + step) % n;
            let listener = &self.listeners[index];
            batch.listener = index;
            batch.limit = listener.max_frame;
            for _ in 0..BATCH_SLOTS {
                match read_batch(&listener.socket, batch) {
                    Ok(()) if batch.filled.is_empty() => break,
                    Ok(()) => {
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

    /// Peers forgotten to make room in the table of which listener talks to whom.
    pub fn peers_forgotten(&self) -> u64 {
        self.peers_forgotten
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
        if !self.track_peers {
            return;
        }
        if Some(listener) == self.first_listener(from) {
            // The default: nothing to remember.
            self.last_listener.remove(&from);
            return;
        }
        if self.last_listener.len() >= self.max_peers && !self.last_listener.contains_key(&from) {
            let Some(&forget) = self.last_listener.keys().next() else {
                return; // max_peers is 0: remember nobody
            };
            self.last_listener.remove(&forget);
            self.peers_forgotten += 1;
        }
        self.last_listener.insert(from, listener);
    }

    /// The first listener of `to`'s address family.
    fn first_listener(&self, to: SocketAddr) -> Option<usize> {
        self.listeners
            .iter()
            .position(|l| l.local.is_ipv4() == to.is_ipv4())
    }

    fn listener_for(&self, to: SocketAddr) -> Option<&Listener> {
        let index = match self.last_listener.get(&to) {
            Some(&i) => Some(i),
            None => self.first_listener(to),
        };
        index.and_then(|i| self.listeners.get(i))
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
        buf, filled, limit, ..
    } = batch;
    let slot = *limit + 1;
    let fd = socket.as_raw_fd();
    socket.try_io(tokio::io::Interest::READABLE, || {
        // Made for each call: it holds raw pointers, so it cannot live in the batch, which
        // the driver's future (sent between threads) holds across awaits.
        let count = (buf.len() / slot).min(BATCH_SLOTS);
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(count, None);
        let mut slots: Vec<[IoSliceMut<'_>; 1]> = buf
            .chunks_exact_mut(slot)
            .take(count)
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
        for (index, message) in received.enumerate() {
            // UDP always has a sender; an address of another family cannot occur.
            if let Some(from) = message.address.and_then(|a| socket_addr(&a)) {
                filled.push((index, from, message.bytes));
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
    let slot = batch.limit + 1;
    let chunks = batch.buf.chunks_exact_mut(slot).take(BATCH_SLOTS);
    for (index, chunk) in chunks.enumerate() {
        match socket.try_recv_from(chunk) {
            Ok((len, from)) => batch.filled.push((index, from, len)),
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
        let mut udp = UdpTransport::bind(&[loopback()], 100).unwrap();
        udp.send_to("[::1]:1884".parse().unwrap(), &[0x02, 0x16])
            .await;
        assert_eq!(udp.send_errors(), 1);
    }

    /// Datagrams are read where the driver wants them, in turn from each listener, and what
    /// is not read stays in the kernel.
    #[tokio::test]
    async fn datagrams_are_taken_in_turn_from_every_listener() {
        let mut udp = UdpTransport::bind(&[loopback(), loopback()], 100).unwrap();
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

    /// Reads everything that is sent (`count` datagrams).
    async fn read_all(
        udp: &mut UdpTransport,
        count: usize,
    ) -> Vec<(SocketAddr, usize, Result<Vec<u8>, TooLong>)> {
        let mut batch = udp.batch();
        let mut got = Vec::new();
        while got.len() < count {
            tokio::time::timeout(PATIENCE, udp.readable())
                .await
                .unwrap();
            while udp.recv_batch(&mut batch) > 0 {
                for d in batch.datagrams() {
                    got.push((d.from, d.listener, d.frame.map(<[u8]>::to_vec)));
                }
            }
        }
        got
    }

    /// Each listener has its own `max_frame`: a datagram over it is reported too long (never
    /// taken as a frame cut short), one at it is taken whole, and in a batch of several
    /// senders each datagram keeps its own sender.
    #[tokio::test]
    async fn each_listener_takes_datagrams_up_to_its_own_max_frame() {
        let small = UdpConfig {
            max_frame: 100,
            ..loopback()
        };
        let mut udp = UdpTransport::bind(&[small, loopback()], 100).unwrap();
        let addrs = udp.local_addrs();
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        a.send_to(&[1; 101], addrs[0]).unwrap();
        b.send_to(&[2; 100], addrs[0]).unwrap();
        a.send_to(&[3; 100], addrs[0]).unwrap();
        b.send_to(&[4; 4096], addrs[1]).unwrap();
        a.send_to(&[5; 4097], addrs[1]).unwrap();
        let got = read_all(&mut udp, 5).await;
        let (a, b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let mut on_first: Vec<_> = got.iter().filter(|d| d.1 == 0).cloned().collect();
        let mut on_second: Vec<_> = got.iter().filter(|d| d.1 == 1).cloned().collect();
        on_first.sort_by_key(|d| d.2.clone().map(|v| v[0]).unwrap_or(0));
        on_second.sort_by_key(|d| d.2.clone().map(|v| v[0]).unwrap_or(0));
        assert_eq!(
            on_first,
            [
                (a, 0, Err(TooLong { limit: 100 })),
                (b, 0, Ok(vec![2; 100])),
                (a, 0, Ok(vec![3; 100])),
            ]
        );
        assert_eq!(
            on_second,
            [
                (a, 1, Err(TooLong { limit: 4096 })),
                (b, 1, Ok(vec![4; 4096])),
            ]
        );
    }

    /// IPv6 senders come with their addresses, beside IPv4 ones on another listener.
    #[tokio::test]
    async fn ipv6_datagrams_come_with_their_sender() {
        let v6 = UdpConfig {
            bind: "[::1]:0".parse().unwrap(),
            ..UdpConfig::default()
        };
        let Ok(device6) = std::net::UdpSocket::bind("[::1]:0") else {
            eprintln!("no IPv6 loopback on this machine: not tested");
            return;
        };
        let mut udp = UdpTransport::bind(&[loopback(), v6], 100).unwrap();
        let addrs = udp.local_addrs();
        let device4 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        device6.send_to(&[0x02, 0x16], addrs[1]).unwrap();
        device4.send_to(&[0x02, 0x17], addrs[0]).unwrap();
        let mut got = read_all(&mut udp, 2).await;
        got.sort_by_key(|d| d.1);
        assert_eq!(
            got,
            [
                (device4.local_addr().unwrap(), 0, Ok(vec![0x02, 0x17])),
                (device6.local_addr().unwrap(), 1, Ok(vec![0x02, 0x16])),
            ]
        );
    }

    /// The table of which listener talks to whom holds at most `max_peers` addresses, and
    /// none for peers of the first listener (the default).
    #[tokio::test]
    async fn the_peer_table_is_bounded() {
        let mut udp = UdpTransport::bind(&[loopback(), loopback()], 2).unwrap();
        let peers: Vec<SocketAddr> = (1..=3)
            .map(|i| SocketAddr::from((Ipv4Addr::LOCALHOST, 40_000 + i)))
            .collect();
        for &peer in &peers {
            udp.heard(1, peer);
        }
        assert_eq!(udp.last_listener.len(), 2);
        assert_eq!(udp.peers_forgotten(), 1);
        assert_eq!(
            udp.local_for(peers[2]),
            Some(udp.local_addrs()[1]),
            "the newest is kept"
        );
        udp.heard(0, peers[2]);
        assert_eq!(udp.last_listener.len(), 1, "back on the default listener");
        assert_eq!(udp.local_for(peers[2]), Some(udp.local_addrs()[0]));
    }

    #[tokio::test]
    async fn dropping_the_transport_frees_the_port() {
        let udp = UdpTransport::bind(&[loopback()], 100).unwrap();
        let addr = udp.local_addrs()[0];
        drop(udp);
        std::net::UdpSocket::bind(addr).unwrap();
    }
}
