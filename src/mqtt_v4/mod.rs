//! MQTT 3.1.1 on the wire, for the core's upstream session: the [`MqttWire`] implementation on
//! rumqttc's v4 packet codec. The only module that knows rumqttc's types; MQTT 5 can come as a
//! sibling on its v5 codec.

use bytes::BytesMut;
use mqttsn_core::engine::mqtt::wire::{
    fixed_header, FixedHeader, Incoming, MqttWire, Outgoing, MAX_PACKET_SIZE,
};
use mqttsn_core::engine::mqtt::{ConnectOptions, ConnectRefusal, MqttError, QoS};
use rumqttc::mqttbytes::{self, v4 as wire};

#[cfg(test)]
mod session_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use mqttsn_core::engine::mqtt::wire::{PublishPacket, SubscribePacket, UnsubscribePacket};

    #[test]
    fn computed_sizes_match_the_encoded_packets() {
        for (topic_len, payload_len) in [
            (1, 0),
            (3, 100),
            (10, 16_370),
            (200, 70_000),
            (5, 2_100_000),
        ] {
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                let p = PublishPacket {
                    topic: "t".repeat(topic_len),
                    payload: Bytes::from(vec![0u8; payload_len]),
                    qos,
                    retain: false,
                    dup: false,
                    pid: 9,
                };
                let mut tx = BytesMut::new();
                MQTT_V4.write(Outgoing::Publish(&p), &mut tx).unwrap();
                assert_eq!(MQTT_V4.encoded_len(Outgoing::Publish(&p)), tx.len());
            }
        }
        let s = SubscribePacket {
            pid: 3,
            filters: vec![
                ("a/+".into(), QoS::AtLeastOnce),
                ("#".into(), QoS::AtMostOnce),
            ],
        };
        let u = UnsubscribePacket {
            pid: 4,
            filters: vec!["a/+".into(), "x".repeat(300)],
        };
        for packet in [
            Outgoing::Subscribe(&s),
            Outgoing::Unsubscribe(&u),
            Outgoing::PubRel(5),
        ] {
            let mut tx = BytesMut::new();
            MQTT_V4.write(packet, &mut tx).unwrap();
            assert_eq!(MQTT_V4.encoded_len(packet), tx.len());
        }
    }
}

/// MQTT 3.1.1 (protocol level 4).
#[derive(Debug, Clone, Copy, Default)]
pub struct MqttV4;

/// The codec every broker connection uses.
pub static MQTT_V4: MqttV4 = MqttV4;

fn to_wire(qos: QoS) -> mqttbytes::QoS {
    match qos {
        QoS::AtMostOnce => mqttbytes::QoS::AtMostOnce,
        QoS::AtLeastOnce => mqttbytes::QoS::AtLeastOnce,
        QoS::ExactlyOnce => mqttbytes::QoS::ExactlyOnce,
    }
}

fn from_wire(qos: mqttbytes::QoS) -> QoS {
    match qos {
        mqttbytes::QoS::AtMostOnce => QoS::AtMostOnce,
        mqttbytes::QoS::AtLeastOnce => QoS::AtLeastOnce,
        mqttbytes::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

/// The CONNECT packet for options the session has validated.
fn connect(options: &ConnectOptions) -> wire::Connect {
    // rumqttc leaves out empty credentials, so an empty username is the same as none.
    let username = options.username.clone().unwrap_or_default();
    let password = options.password.clone().unwrap_or_default();
    let login = (!username.is_empty()).then_some(wire::Login { username, password });
    wire::Connect {
        protocol: mqttbytes::Protocol::V4,
        keep_alive: u16::try_from(options.keep_alive.as_millis() / 1000).unwrap_or(u16::MAX),
        client_id: options.client_id.clone(),
        clean_session: options.clean_session,
        last_will: options.will.as_ref().map(|will| wire::LastWill {
            topic: will.topic.clone(),
            message: will.payload.clone(),
            qos: to_wire(will.qos),
            retain: will.retain,
        }),
        login,
    }
}

/// rumqttc's packet for one of the session's.
enum Packet {
    Connect(wire::Connect),
    Publish(wire::Publish),
    Subscribe(wire::Subscribe),
    Unsubscribe(wire::Unsubscribe),
    PubAck(wire::PubAck),
    PubRec(wire::PubRec),
    PubRel(wire::PubRel),
    PubComp(wire::PubComp),
    PingReq,
    Disconnect,
}

impl Packet {
    fn from_outgoing(packet: Outgoing<'_>) -> Packet {
        match packet {
            Outgoing::Connect(options) => Packet::Connect(connect(options)),
            Outgoing::Publish(p) => Packet::Publish(wire::Publish {
                dup: p.dup,
                qos: to_wire(p.qos),
                retain: p.retain,
                topic: p.topic.clone(),
                pkid: if p.qos == QoS::AtMostOnce { 0 } else { p.pid },
                payload: p.payload.clone(),
            }),
            Outgoing::Subscribe(s) => Packet::Subscribe(wire::Subscribe {
                pkid: s.pid,
                filters: s
                    .filters
                    .iter()
                    .map(|(path, qos)| wire::SubscribeFilter::new(path.clone(), to_wire(*qos)))
                    .collect(),
            }),
            Outgoing::Unsubscribe(u) => Packet::Unsubscribe(wire::Unsubscribe {
                pkid: u.pid,
                topics: u.filters.clone(),
            }),
            Outgoing::PubAck(pid) => Packet::PubAck(wire::PubAck::new(pid)),
            Outgoing::PubRec(pid) => Packet::PubRec(wire::PubRec::new(pid)),
            Outgoing::PubRel(pid) => Packet::PubRel(wire::PubRel::new(pid)),
            Outgoing::PubComp(pid) => Packet::PubComp(wire::PubComp::new(pid)),
            Outgoing::PingReq => Packet::PingReq,
            Outgoing::Disconnect => Packet::Disconnect,
        }
    }

    fn size(&self) -> usize {
        match self {
            Packet::Connect(p) => p.size(),
            Packet::Publish(p) => p.size(),
            Packet::Subscribe(p) => p.size(),
            Packet::Unsubscribe(p) => p.size(),
            Packet::PubAck(p) => p.size(),
            Packet::PubRec(p) => p.size(),
            Packet::PubRel(p) => p.size(),
            Packet::PubComp(p) => p.size(),
            Packet::PingReq => wire::PingReq.size(),
            Packet::Disconnect => wire::Disconnect.size(),
        }
    }

    fn write(&self, tx: &mut BytesMut) -> Result<usize, mqttbytes::Error> {
        match self {
            Packet::Connect(p) => p.write(tx),
            Packet::Publish(p) => p.write(tx),
            Packet::Subscribe(p) => p.write(tx),
            Packet::Unsubscribe(p) => p.write(tx),
            Packet::PubAck(p) => p.write(tx),
            Packet::PubRec(p) => p.write(tx),
            Packet::PubRel(p) => p.write(tx),
            Packet::PubComp(p) => p.write(tx),
            Packet::PingReq => wire::PingReq.write(tx),
            Packet::Disconnect => wire::Disconnect.write(tx),
        }
    }
}

impl MqttWire for MqttV4 {
    /// Computed without building rumqttc's packet for what the session sizes on every message,
    /// so a publish does not copy its topic just to be measured.
    fn encoded_len(&self, packet: Outgoing<'_>) -> usize {
        let remaining = match packet {
            Outgoing::Publish(p) => {
                let pid = if p.qos == QoS::AtMostOnce { 0 } else { 2 };
                2 + p.topic.len() + pid + p.payload.len()
            }
            Outgoing::Subscribe(s) => 2 + s.filters.iter().map(|(f, _)| 3 + f.len()).sum::<usize>(),
            Outgoing::Unsubscribe(u) => 2 + u.filters.iter().map(|f| 2 + f.len()).sum::<usize>(),
            other => return Packet::from_outgoing(other).size(),
        };
        // Fixed header: the type byte and 1 to 4 bytes of remaining length (MQTT §2.2.3).
        let length_bytes = match remaining {
            0..=127 => 1,
            128..=16_383 => 2,
            16_384..=2_097_151 => 3,
            _ => 4,
        };
        1 + length_bytes + remaining
    }

    /// rumqttc writes the first bytes before it can fail, so a failed write is cut off again
    /// rather than leaving half a packet in the stream.
    fn write(&self, packet: Outgoing<'_>, tx: &mut BytesMut) -> Result<(), MqttError> {
        let packet = Packet::from_outgoing(packet);
        let size = packet.size();
        if size > MAX_PACKET_SIZE {
            return Err(MqttError::PacketTooLarge { size });
        }
        let mark = tx.len();
        tx.reserve(size);
        packet.write(tx).map(drop).map_err(|e| {
            tx.truncate(mark);
            MqttError::Encode(e.to_string())
        })
    }

    fn read(&self, rx: &mut BytesMut, max_remaining: usize) -> Result<Option<Incoming>, String> {
        read(rx, max_remaining)
    }
}

/// Checks the first byte of a packet before waiting for the rest of it: packets only a client
/// sends, reserved types and wrong fixed-header flags (§2.2.2: the receiver must close the
/// connection) are refused at once instead of after buffering up to the size limit.
fn check_first_byte(byte1: u8) -> Result<(), String> {
    let flags = byte1 & 0x0F;
    let (name, expected_flags) = match byte1 >> 4 {
        2 => ("CONNACK", 0),
        // PUBLISH flags are DUP/QoS/RETAIN; rumqttc rejects QoS 3.
        3 => return Ok(()),
        4 => ("PUBACK", 0),
        5 => ("PUBREC", 0),
        6 => ("PUBREL", 0b0010),
        7 => ("PUBCOMP", 0),
        9 => ("SUBACK", 0),
        11 => ("UNSUBACK", 0),
        13 => ("PINGRESP", 0),
        1 => return Err("broker sent CONNECT, which only a client sends".into()),
        8 => return Err("broker sent SUBSCRIBE, which only a client sends".into()),
        10 => return Err("broker sent UNSUBSCRIBE, which only a client sends".into()),
        12 => return Err("broker sent PINGREQ, which only a client sends".into()),
        14 => return Err("broker sent DISCONNECT, which only a client sends".into()),
        reserved => return Err(format!("reserved packet type {reserved}")),
    };
    if flags == expected_flags {
        Ok(())
    } else {
        Err(format!(
            "{name} with invalid fixed-header flags {flags:#06b}"
        ))
    }
}

/// A PUBLISH over the size limit: too large for any device, so it is dropped, not the
/// connection. Only its topic length, topic and packet id are read (at most 65,539 bytes, so
/// the buffer stays bounded); the rest is consumed as it arrives (`skip`), which keeps the stream
/// in step. The session acknowledges it so the broker does not resend it forever.
fn skip_publish(
    rx: &mut BytesMut,
    byte1: u8,
    header: FixedHeader,
) -> Result<Option<Incoming>, String> {
    let qos = match (byte1 >> 1) & 0b11 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        _ => return Err("PUBLISH with QoS 3".into()),
    };
    let start = header.header_len;
    let Some(len) = rx.get(start..start + 2) else {
        return Ok(None);
    };
    let topic_len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    let pid_at = start + 2 + topic_len;
    let needed = pid_at + if qos == QoS::AtMostOnce { 0 } else { 2 };
    if needed > header.packet_len() {
        return Err("PUBLISH whose topic runs past its end".into());
    }
    if rx.len() < needed {
        rx.reserve(needed - rx.len());
        return Ok(None);
    }
    let pid = match qos {
        QoS::AtMostOnce => 0,
        _ => u16::from_be_bytes([rx[pid_at], rx[pid_at + 1]]),
    };
    let have = rx.len().min(header.packet_len());
    let _ = rx.split_to(have);
    Ok(Some(Incoming::TooLarge {
        size: header.packet_len(),
        qos,
        pid,
        skip: header.packet_len() - have,
    }))
}

/// Takes the next whole packet off the front of `rx`. `Ok(None)` means more bytes are needed
/// (and room for them is reserved); `Err` is a protocol error after which the stream cannot be
/// resynchronised. `max_remaining` bounds the remaining length, checked from the fixed header so
/// an oversize packet is refused before it is buffered.
fn read(rx: &mut BytesMut, max_remaining: usize) -> Result<Option<Incoming>, String> {
    let Some(&byte1) = rx.first() else {
        return Ok(None);
    };
    check_first_byte(byte1)?;
    let header = match fixed_header(rx) {
        Ok(Some(header)) => header,
        Ok(None) => return Ok(None),
        Err(e) => return Err(format!("malformed packet: {e}")),
    };
    if header.remaining > max_remaining {
        if byte1 >> 4 == 3 {
            return skip_publish(rx, byte1, header);
        }
        return Err(format!(
            "packet with remaining length {} exceeds the limit of {max_remaining}",
            header.remaining
        ));
    }
    if rx.len() < header.packet_len() {
        // Bounded by the size limit just checked.
        rx.reserve(header.packet_len() - rx.len());
        return Ok(None);
    }
    let packet = match wire::Packet::read(rx, max_remaining) {
        Ok(packet) => packet,
        Err(e) => return Err(format!("malformed packet: {e}")),
    };
    Ok(Some(match packet {
        wire::Packet::ConnAck(ack) => Incoming::ConnAck {
            session_present: ack.session_present,
            refused: match ack.code {
                wire::ConnectReturnCode::Success => None,
                wire::ConnectReturnCode::RefusedProtocolVersion => {
                    Some(ConnectRefusal::UnacceptableProtocolVersion)
                }
                wire::ConnectReturnCode::BadClientId => Some(ConnectRefusal::IdentifierRejected),
                wire::ConnectReturnCode::ServiceUnavailable => {
                    Some(ConnectRefusal::ServerUnavailable)
                }
                wire::ConnectReturnCode::BadUserNamePassword => {
                    Some(ConnectRefusal::BadUserNameOrPassword)
                }
                wire::ConnectReturnCode::NotAuthorized => Some(ConnectRefusal::NotAuthorized),
            },
        },
        wire::Packet::Publish(p) => Incoming::Publish {
            topic: p.topic,
            payload: p.payload,
            qos: from_wire(p.qos),
            retain: p.retain,
            dup: p.dup,
            pid: p.pkid,
        },
        wire::Packet::PubAck(ack) => Incoming::PubAck(ack.pkid),
        wire::Packet::PubRec(ack) => Incoming::PubRec(ack.pkid),
        wire::Packet::PubRel(ack) => Incoming::PubRel(ack.pkid),
        wire::Packet::PubComp(ack) => Incoming::PubComp(ack.pkid),
        wire::Packet::SubAck(ack) => Incoming::SubAck {
            pid: ack.pkid,
            granted: ack
                .return_codes
                .iter()
                .map(|code| match code {
                    wire::SubscribeReasonCode::Success(qos) => Some(from_wire(*qos)),
                    wire::SubscribeReasonCode::Failure => None,
                })
                .collect(),
        },
        wire::Packet::UnsubAck(ack) => Incoming::UnsubAck(ack.pkid),
        wire::Packet::PingResp => Incoming::PingResp,
        // Unreachable after `check_first_byte`, but a wrong packet is the broker's fault, never
        // a reason to panic.
        _ => return Err("broker sent a packet only a client sends".into()),
    }))
}
