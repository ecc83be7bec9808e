//! UDP towards devices: the `[[udp]]` listeners (IPv4 and IPv6, several at once), a reader task
//! per socket feeding datagrams to the driver, and sending (unicast, broadcast or multicast).
//!
//! Datagrams are read into a large shared `BytesMut` and split off as `Bytes`, so receiving
//! allocates a new buffer only every few hundred datagrams, not once per datagram.
//!
//! The reader tasks belong to the transport and end on the driver's shutdown signal; once
//! [`UdpTransport::shutdown`] has returned, the transport holds the last handle on each socket,
//! so dropping it closes them and the ports can be bound again at once.

use super::shutdown::Shutdown;
use crate::config::{MulticastInterface, UdpConfig};
use bytes::{Bytes, BytesMut};
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use thiserror::Error;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

/// Largest datagram accepted (the MQTT-SN 3-octet length allows 65535 bytes).
const MAX_DATAGRAM: usize = 65_535;
/// Receive buffer requested from the kernel, so bursts from thousands of devices are not dropped.
const RECV_BUFFER: usize = 8 * 1024 * 1024;
/// Receive chunk: datagrams are split off it until it runs low.
const CHUNK: usize = 256 * 1024;

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

/// A datagram from a device: the listener it arrived on, the sender and the bytes.
#[derive(Debug)]
pub struct Datagram {
    /// Index of the listener in [`UdpTransport::local_addrs`].
    pub listener: usize,
    /// The sender.
    pub from: SocketAddr,
    /// The frame.
    pub bytes: Bytes,
    /// Its share of the bytes that may wait for the driver; given back when it is dropped.
    _queued: OwnedSemaphorePermit,
}

/// How many bytes of datagrams may wait for the driver, over all listeners, and how often a
/// reader found that full.
#[derive(Debug, Clone)]
struct QueueBudget {
    bytes: Arc<Semaphore>,
    /// What one receive reserves: the largest datagram, or the whole budget if smaller.
    per_read: u32,
    waits: Arc<AtomicU64>,
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
    /// Times a reader found the bytes waiting for the driver at `limits.max_queued_frame_bytes`
    /// (datagrams then wait in the kernel's buffer, which drops what does not fit).
    queue_waits: Arc<AtomicU64>,
    /// One reader task per listener.
    readers: JoinSet<()>,
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
    pub fn bind(
        configs: &[UdpConfig],
        datagrams: mpsc::Sender<Datagram>,
        queue_bytes: usize,
        shutdown: &Shutdown,
    ) -> Result<Self, UdpError> {
        let capacity =
            u32::try_from(queue_bytes.clamp(1, Semaphore::MAX_PERMITS)).unwrap_or(u32::MAX);
        let budget = QueueBudget {
            bytes: Arc::new(Semaphore::new(capacity as usize)),
            per_read: capacity.min(MAX_DATAGRAM as u32),
            waits: Arc::default(),
        };
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
        let mut readers = JoinSet::new();
        for (index, listener) in listeners.iter().enumerate() {
            readers.spawn(read_loop(
                index,
                listener.socket.clone(),
                datagrams.clone(),
                budget.clone(),
                shutdown.clone(),
            ));
        }
        Ok(UdpTransport {
            listeners,
            last_listener: HashMap::new(),
            track_peers,
            send_errors: 0,
            queue_waits: budget.waits,
            readers,
        })
    }

    /// Waits for the reader tasks, which end once the shutdown signal has fired; fire it first.
    /// Afterwards the transport holds the only handle on each socket: dropping it closes them.
    pub async fn shutdown(&mut self) {
        while let Some(result) = self.readers.join_next().await {
            if let Err(error) = result {
                tracing::error!(%error, "udp reader task failed");
            }
        }
    }

    /// Datagrams that could not be sent (no listener for the peer's address family, or the
    /// system refused them: no route, buffer full, ...) since the start.
    pub fn send_errors(&self) -> u64 {
        self.send_errors
    }

    /// Times the readers waited because received datagrams held `limits.max_queued_frame_bytes`.
    pub fn queue_waits(&self) -> u64 {
        self.queue_waits.load(Ordering::Relaxed)
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

/// Feeds the datagrams of one socket to the driver until shutdown (or the driver is gone).
async fn read_loop(
    listener: usize,
    socket: Arc<UdpSocket>,
    out: mpsc::Sender<Datagram>,
    budget: QueueBudget,
    mut shutdown: Shutdown,
) {
    // One shutdown future for the reader's whole life, not one per datagram. Cancelling
    // `forward` is safe at each of its awaits: see there.
    tokio::select! {
        () = shutdown.recv() => {}
        () = forward(listener, &socket, &out, &budget) => {}
    }
}

/// Moves datagrams from `socket` to the driver until the driver is gone.
async fn forward(
    listener: usize,
    socket: &UdpSocket,
    out: &mpsc::Sender<Datagram>,
    budget: &QueueBudget,
) {
    let mut buf = BytesMut::with_capacity(CHUNK);
    loop {
        // Room for the largest datagram in the byte budget and a place in the driver's queue
        // first, then the datagram: a full queue leaves the datagrams in the kernel's buffer,
        // and since these waits are cancel safe and nothing is awaited between receiving a
        // datagram and queueing it, a shutdown never loses one.
        if budget.bytes.available_permits() < budget.per_read as usize {
            budget.waits.fetch_add(1, Ordering::Relaxed);
        }
        let Ok(mut room) = Arc::clone(&budget.bytes)
            .acquire_many_owned(budget.per_read)
            .await
        else {
            return;
        };
        let Ok(permit) = out.reserve().await else {
            return; // the driver is gone
        };
        loop {
            if buf.capacity() - buf.len() < MAX_DATAGRAM {
                buf = BytesMut::with_capacity(CHUNK);
            }
            // Receive straight into the spare capacity of the chunk.
            match socket.recv_buf_from(&mut buf).await {
                Ok((len, from)) => {
                    let bytes = buf.split_to(len).freeze();
                    // The datagram keeps what it uses; the rest of the room goes back.
                    let take = u32::try_from(len)
                        .unwrap_or(u32::MAX)
                        .clamp(1, budget.per_read);
                    let queued = room.split(take as usize).unwrap_or(room);
                    permit.send(Datagram {
                        listener,
                        from,
                        bytes,
                        _queued: queued,
                    });
                    break;
                }
                // ICMP errors surface here on some systems (e.g. port unreachable): not fatal.
                Err(e) => tracing::debug!(error = %e, "udp receive error"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::transport::shutdown;
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
        let (datagrams, _rx) = mpsc::channel(1);
        let (_trigger, shutdown) = shutdown::channel();
        let mut udp = UdpTransport::bind(&[loopback()], datagrams, 1 << 20, &shutdown).unwrap();
        udp.send_to("[::1]:1884".parse().unwrap(), &[0x02, 0x16])
            .await;
        assert_eq!(udp.send_errors(), 1);
    }

    #[tokio::test]
    async fn shutdown_ends_an_idle_reader_and_frees_the_port() {
        let (datagrams, _rx) = mpsc::channel(1);
        let (trigger, shutdown) = shutdown::channel();
        let mut udp = UdpTransport::bind(&[loopback()], datagrams, 1 << 20, &shutdown).unwrap();
        let addr = udp.local_addrs()[0];
        // Let the reader start waiting for a datagram that never comes.
        tokio::task::yield_now().await;
        trigger.fire();
        tokio::time::timeout(PATIENCE, udp.shutdown())
            .await
            .expect("the reader ends on the signal");
        drop(udp);
        std::net::UdpSocket::bind(addr).unwrap();
    }

    #[tokio::test]
    async fn shutdown_ends_a_reader_waiting_for_room_in_the_queue() {
        // The driver's queue is full and stays so: the driver reads no more once it shuts down.
        let (datagrams, _rx) = mpsc::channel(1);
        let from = SocketAddr::from((Ipv4Addr::LOCALHOST, 1));
        let queued = Datagram {
            listener: 0,
            from,
            bytes: Bytes::from_static(&[0x02, 0x16]),
            _queued: Arc::new(Semaphore::new(2))
                .try_acquire_many_owned(2)
                .unwrap(),
        };
        datagrams.try_send(queued).unwrap();
        let (trigger, shutdown) = shutdown::channel();
        let mut udp = UdpTransport::bind(&[loopback()], datagrams, 1 << 20, &shutdown).unwrap();
        tokio::task::yield_now().await;
        trigger.fire();
        tokio::time::timeout(PATIENCE, udp.shutdown())
            .await
            .expect("the reader ends on the signal");
    }

    /// The bytes waiting for the driver are bounded: with room for one largest datagram, a
    /// second waits (in the kernel) until the first is handled, and the wait is counted.
    #[tokio::test]
    async fn received_bytes_waiting_for_the_driver_are_bounded() {
        let (datagrams, mut rx) = mpsc::channel(16);
        let (trigger, shutdown) = shutdown::channel();
        let mut udp =
            UdpTransport::bind(&[loopback()], datagrams, MAX_DATAGRAM, &shutdown).unwrap();
        let addr = udp.local_addrs()[0];
        let device = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        device.send_to(&[0x02, 0x16], addr).unwrap();
        device.send_to(&[0x02, 0x17], addr).unwrap();
        let first = tokio::time::timeout(PATIENCE, rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&first.bytes[..], [0x02, 0x16]);
        // The reader finds no room for another datagram while the first is held.
        tokio::time::timeout(PATIENCE, async {
            while udp.queue_waits() == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the reader waits for room");
        assert!(
            rx.try_recv().is_err(),
            "a second datagram got past the bound"
        );
        drop(first);
        let second = tokio::time::timeout(PATIENCE, rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&second.bytes[..], [0x02, 0x17]);
        trigger.fire();
        udp.shutdown().await;
    }
}
