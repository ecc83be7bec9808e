//! Stands in for the XBee coordinator radio on the gateway's serial line (`replay --serial PORT
//! --framing xbee-api`): every replayed device is a remote node with a 64-bit radio address, its
//! frames reach the gateway as 0x90 Receive Packets from that address, and the gateway's 0x10
//! Transmit Requests go back to the device they address. Both directions use the gateway's own
//! XBee codec, from the radio's side of the line.

use std::collections::HashMap;
use std::io;

use bytes::{Bytes, BytesMut};

use crate::transcript::{Peer, PeerKind};
use crate::transport::serial::framing::xbee::{self, ApiMode, TxRequestDeframer};
use crate::transport::serial::framing::{EncodeError, Encoder, RadioAddr};

/// The first synthetic radio address, for device peers without a recorded one: the `n`th such
/// peer (from 1) is `0x0013A200_00000000 + n`, inside Digi's OUI like a real module's.
const SYNTHETIC_RADIO_BASE: u64 = 0x0013_A200_0000_0000;

/// The radio addresses of the replayed `devices`, in order (see [`radio_addr64`]). Two devices
/// with one address are rejected (`InvalidInput`): the gateway could not tell them apart.
pub(super) fn radio_addresses(devices: &[&Peer]) -> io::Result<Vec<u64>> {
    let mut synthetic = 0;
    let mut addresses: Vec<u64> = Vec::with_capacity(devices.len());
    for peer in devices {
        let addr = radio_addr64(peer, &mut synthetic);
        if let Some(other) = addresses.iter().position(|a| *a == addr) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "devices {} and {} have the same radio address {addr:016X}",
                    devices[other].name, peer.name
                ),
            ));
        }
        addresses.push(addr);
    }
    Ok(addresses)
}

/// A device peer's radio address: its recorded one (the first 8 bytes as the 64-bit address,
/// or fewer bytes right-aligned), else the next synthetic one.
fn radio_addr64(peer: &Peer, synthetic: &mut u64) -> u64 {
    if let PeerKind::Serial {
        radio: Some(radio), ..
    } = &peer.kind
    {
        if !radio.is_empty() {
            return radio
                .iter()
                .take(8)
                .fold(0u64, |a, &b| (a << 8) | u64::from(b));
        }
    }
    *synthetic += 1;
    SYNTHETIC_RADIO_BASE + *synthetic
}

/// One replayed device as the coordinator presents it to the gateway: each of its frames
/// becomes a Receive Packet from its radio (16-bit address unknown, as for a node the
/// coordinator has not resolved).
pub(super) struct Node {
    from: RadioAddr,
    mode: ApiMode,
}

impl Node {
    pub(super) fn new(addr64: u64, mode: ApiMode) -> Self {
        Node {
            from: RadioAddr::from_addr64(addr64),
            mode,
        }
    }
}

impl Encoder for Node {
    /// Ignores `to`: whatever a node sends through the coordinator goes to the gateway. An
    /// empty frame (a zero-length datagram in a pcap) writes nothing: a radio carries no empty
    /// packet, and the gateway would drop it anyway, so the replay goes on without it.
    fn encode(
        &mut self,
        payload: &[u8],
        _to: Option<RadioAddr>,
        out: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        if payload.is_empty() {
            return Ok(());
        }
        xbee::encode_rx_packet(self.mode, self.from, payload, out)
    }
}

/// What the gateway writes to the coordinator: its Transmit Requests, each routed to the
/// replayed device it addresses. Broadcasts and unknown addresses are dropped, as UDP
/// broadcasts are.
pub(super) struct Downlink {
    requests: TxRequestDeframer,
    /// Device index by 64-bit radio address.
    route: HashMap<u64, usize>,
}

impl Downlink {
    /// The downlink of a line in `mode` to the devices at `addresses` (index `i` for
    /// `addresses[i]`).
    pub(super) fn new(mode: ApiMode, addresses: &[u64]) -> Self {
        Downlink {
            requests: TxRequestDeframer::new(mode),
            route: addresses.iter().enumerate().map(|(i, a)| (*a, i)).collect(),
        }
    }

    /// Appends bytes read from the line.
    pub(super) fn push(&mut self, bytes: &[u8]) {
        self.requests.push(bytes);
    }

    /// The next frame for a replayed device, with the device's index; `None` when more bytes
    /// are needed.
    pub(super) fn next_frame(&mut self) -> Option<(usize, Bytes)> {
        for request in self.requests.by_ref() {
            if let Some(&device) = self.route.get(&request.to.addr64) {
                return Some((device, request.payload));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transcript::Transcript;
    use crate::transport::serial::framing::xbee::XbeeCodec;
    use crate::transport::serial::framing::{Deframer, Received};

    /// What the coordinator writes for a frame from the node `addr64`.
    fn xbee_rx_packet(addr64: u64, mode: ApiMode, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        Node::new(addr64, mode)
            .encode(payload, None, &mut out)
            .unwrap();
        out.to_vec()
    }

    #[test]
    fn rx_packets_decode_with_the_gateways_xbee_deframer() {
        // 0x13 and 0x11 in the address and payload need escaping in API mode 2.
        let payload = [5u8, 0x0C, 0x7E, 0x11, 0x13];
        for mode in [ApiMode::Unescaped, ApiMode::Escaped] {
            let bytes = xbee_rx_packet(0x0013_A200_4011_7D13, mode, &payload);
            let mut codec = XbeeCodec::new(mode);
            codec.push(&bytes);
            match codec.next() {
                Some(Received::Frame(frame)) => {
                    assert_eq!(&frame.payload[..], &payload, "{mode:?}");
                    let source = frame.source.expect("a source address");
                    assert_eq!(source.addr64, 0x0013_A200_4011_7D13, "{mode:?}");
                    assert_eq!(source.addr16, 0xFFFE, "{mode:?}");
                }
                other => panic!("{mode:?}: {other:?}"),
            }
        }
        // The Digi example layout in API mode 1: 7E, length, 0x90, ..., checksum.
        let bytes = xbee_rx_packet(1, ApiMode::Unescaped, &[2, 0x17]);
        assert_eq!(&bytes[..4], &[0x7E, 0x00, 0x0E, 0x90]);
        let sum = bytes[3..].iter().fold(0u8, |a, &b| a.wrapping_add(b));
        assert_eq!(sum, 0xFF);
    }

    #[test]
    fn tx_requests_from_the_gateways_xbee_encoder_are_parsed_in_any_split() {
        for mode in [ApiMode::Unescaped, ApiMode::Escaped] {
            let mut codec = XbeeCodec::new(mode);
            let mut out = BytesMut::new();
            out.extend_from_slice(&[0x00, 0x42]); // noise before the first frame
            let to = RadioAddr::new(0x0013_A200_1111_7E13, 0x1234);
            codec.encode(&[3, 0x05, 0x00], Some(to), &mut out).unwrap();
            // A frame of another type (Modem Status) is skipped.
            out.extend_from_slice(&[0x7E, 0x00, 0x02, 0x8A, 0x00, 0x75]);
            codec.encode(&[2, 0x17], None, &mut out).unwrap();
            let expected = vec![
                (0x0013_A200_1111_7E13, vec![3, 0x05, 0x00]),
                (0xFFFF, vec![2, 0x17]),
            ];
            for split in 0..out.len() {
                let mut reader = TxRequestDeframer::new(mode);
                let mut got = Vec::new();
                for chunk in [&out[..split], &out[split..]] {
                    reader.push(chunk);
                    for request in reader.by_ref() {
                        got.push((request.to.addr64, request.payload.to_vec()));
                    }
                }
                assert_eq!(got, expected, "{mode:?}, split at {split}");
            }
        }
    }

    #[test]
    fn the_downlink_routes_by_destination_and_drops_the_rest() {
        let (a, b) = (0x0013_A200_0000_0001, 0x0013_A200_0000_0002);
        let mut codec = XbeeCodec::new(ApiMode::Escaped);
        let mut out = BytesMut::new();
        for (to, payload) in [
            (Some(RadioAddr::from_addr64(b)), [2, 0x17]),
            (None, [2, 0x16]),
            (Some(RadioAddr::from_addr64(7)), [2, 0x18]),
            (Some(RadioAddr::new(a, 0x1234)), [2, 0x19]),
        ] {
            codec.encode(&payload, to, &mut out).unwrap();
        }
        let mut downlink = Downlink::new(ApiMode::Escaped, &[a, b]);
        downlink.push(&out);
        let mut got = Vec::new();
        while let Some((device, frame)) = downlink.next_frame() {
            got.push((device, frame.to_vec()));
        }
        assert_eq!(got, [(1, vec![2, 0x17]), (0, vec![2, 0x19])]);
    }

    #[test]
    fn radio_addresses_come_from_the_peer_or_are_synthetic() {
        let text = "@peer a serial serial0 0013A20040861234\n\
                    @peer b serial serial0\n\
                    @peer c udp 127.0.0.1:5000\n";
        let t = Transcript::parse(text, "t").expect("parses");
        let mut synthetic = 0;
        let addrs: Vec<u64> = t
            .peers
            .iter()
            .map(|p| radio_addr64(p, &mut synthetic))
            .collect();
        assert_eq!(
            addrs,
            [
                0x0013_A200_4086_1234,
                0x0013_A200_0000_0001,
                0x0013_A200_0000_0002
            ]
        );
    }

    #[test]
    fn two_devices_with_one_radio_address_are_rejected() {
        let text = "@peer a serial serial0 0013A20000000001\n\
                    @peer b serial serial0\n";
        let t = Transcript::parse(text, "t").expect("parses");
        let peers: Vec<&Peer> = t.peers.iter().collect();
        let e = radio_addresses(&peers).expect_err("b gets a's address");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("devices a and b"), "{e}");
        assert_eq!(
            radio_addresses(&peers[1..]).unwrap(),
            [0x0013_A200_0000_0001]
        );
    }
}
