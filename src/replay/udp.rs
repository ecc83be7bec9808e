//! Replay over UDP: one socket per recorded device, so that each keeps its own address at the
//! gateway (the nodes behind one forwarder share their forwarder's socket).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::net::UdpSocket;

use super::{groups_by, Group, Link};
use crate::transcript::{Peer, PeerKind, Transcript};

/// One group's socket, talking to the gateway only.
pub(super) struct UdpLink {
    socket: UdpSocket,
    gateway: SocketAddr,
    buf: Vec<u8>,
}

impl UdpLink {
    pub(super) async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.socket.send_to(bytes, self.gateway).await.map(|_| ())
    }

    /// The next datagram. Cancel safe.
    pub(super) async fn recv(&mut self) -> io::Result<Vec<u8>> {
        loop {
            match self.socket.recv_from(&mut self.buf).await {
                // Some systems report an ICMP port unreachable for an earlier datagram (no
                // gateway listening yet) here; it is not an answer, so keep listening.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(e),
                Ok((n, _)) => return Ok(self.buf[..n].to_vec()),
            }
        }
    }
}

/// The transcript's socket groups, each with a freshly bound socket for talking to `gateway`.
pub(super) async fn connect(
    transcript: &Transcript,
    gateway: SocketAddr,
) -> io::Result<Vec<(Group, Link)>> {
    let groups = groups(transcript);
    let mut linked = Vec::with_capacity(groups.len());
    for group in groups {
        let link = UdpLink {
            socket: UdpSocket::bind(local_bind(gateway)).await?,
            gateway,
            buf: vec![0; 65_536],
        };
        linked.push((group, Link::Udp(link)));
    }
    Ok(linked)
}

/// Splits the transcript into socket groups: every UDP or forwarded peer that sends at least
/// one frame, grouped by address, with its inputs and expected answers in file order.
fn groups(transcript: &Transcript) -> Vec<Group> {
    groups_by(transcript, udp_address)
        .into_iter()
        .map(|(_, group)| group)
        .collect()
}

/// The socket address a peer's frames travel on, if it is a UDP device.
fn udp_address(peer: &Peer) -> Option<(SocketAddr, Option<Vec<u8>>)> {
    match &peer.kind {
        PeerKind::Udp(addr) => Some((*addr, None)),
        PeerKind::Forwarded { via, node_id } => Some((*via, Some(node_id.clone()))),
        // A DTLS device's frames were recorded decrypted: replaying them needs a handshake
        // this replayer does not make.
        PeerKind::Dtls(_) | PeerKind::Serial { .. } | PeerKind::Broker { .. } => None,
    }
}

/// The local address to bind for talking to `gateway`: loopback for a gateway on loopback (of
/// the same IP version), else the unspecified address.
fn local_bind(gateway: SocketAddr) -> SocketAddr {
    let ip = match (gateway.ip(), gateway.ip().is_loopback()) {
        (IpAddr::V4(_), true) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        (IpAddr::V6(_), true) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        (IpAddr::V4(_), false) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (IpAddr::V6(_), false) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    SocketAddr::new(ip, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_and_forwarded_peers_group_by_address() {
        let text = "@peer a udp 127.0.0.1:5000\n\
                    @peer n1 udp 127.0.0.1:6000 via-forwarder 01\n\
                    @peer n2 udp 127.0.0.1:6000 via-forwarder 02\n\
                    @peer bcast udp 255.255.255.255:1884\n\
                    @peer brk broker\n\
                    0.000 a > gw 02 16\n\
                    0.000 gw > a 02 17\n\
                    0.000 gw > bcast 03 00 01\n\
                    0.100 n1 > gw 04 FE 00 01 02 16\n\
                    0.100 gw > n1 04 FE 00 01 02 17\n\
                    0.200 n2 > gw 04 FE 00 02 02 16\n\
                    0.200 brk > gw !up\n";
        let t = Transcript::parse(text, "t").expect("parses");
        let groups = groups(&t);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].name(), "a");
        assert_eq!(groups[0].steps.len(), 2);
        assert_eq!(groups[1].name(), "n1+n2");
        assert_eq!(groups[1].steps.len(), 3);
        assert_eq!(groups[1].route(&[4, 0xFE, 0, 2, 2, 0x17]), 1);
        assert_eq!(groups[1].route(&[4, 0xFE, 0, 1, 2, 0x17]), 0);
    }
}
