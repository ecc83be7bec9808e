//! The MQTT 3.1.1 wire format, through rumqttc's v4 packet codec. This is the only part of the
//! session that knows packet layouts and rumqttc's types, so MQTT 5 can later come as a sibling
//! module behind the same small set of functions.

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::{self, v4 as wire};

use super::{check_topic, ConnectOptions, ConnectRefusal, MqttError, QoS};

/// A CONNECT packet, built once per session and written on every transport (re)connection.
pub(super) type Connect = wire::Connect;
/// An outgoing PUBLISH as kept for resending.
pub(super) type Publish = wire::Publish;
/// An outgoing SUBSCRIBE as kept for resending.
pub(super) type Subscribe = wire::Subscribe;
/// An outgoing UNSUBSCRIBE as kept for resending.
pub(super) type Unsubscribe = wire::Unsubscribe;

/// The largest remaining length the 4-byte variable length integer can carry (§2.2.3).
const MAX_REMAINING_LENGTH: usize = 268_435_455;
/// The largest whole packet: fixed header byte, 4 length bytes, remaining length.
const MAX_PACKET_SIZE: usize = 1 + 4 + MAX_REMAINING_LENGTH;
/// Strings and binary fields carry a 16-bit length prefix (§1.5.3).
const MAX_FIELD: usize = u16::MAX as usize;

/// A packet from the broker, decoded into protocol-neutral terms.
#[derive(Debug)]
pub(super) enum Incoming {
    ConnAck {
        session_present: bool,
        refused: Option<ConnectRefusal>,
    },
    Publish {
        topic: String,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        dup: bool,
        /// Zero for QoS 0 (rumqttc rejects a zero id at QoS 1/2).
        pid: u16,
    },
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    SubAck {
        pid: u16,
        granted: Vec<Option<QoS>>,
    },
    UnsubAck(u16),
    PingResp,
}

impl Incoming {
    /// The packet's name as the specification writes it, for error messages.
    pub(super) fn name(&self) -> &'static str {
        match self {
            Incoming::ConnAck { .. } => "CONNACK",
            Incoming::Publish { .. } => "PUBLISH",
            Incoming::PubAck(_) => "PUBACK",
            Incoming::PubRec(_) => "PUBREC",
            Incoming::PubRel(_) => "PUBREL",
            Incoming::PubComp(_) => "PUBCOMP",
            Incoming::SubAck { .. } => "SUBACK",
            Incoming::UnsubAck(_) => "UNSUBACK",
            Incoming::PingResp => "PINGRESP",
        }
    }
}

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

/// Builds the CONNECT packet, refusing options that rumqttc would encode wrongly or that a
/// broker must reject, so that a bad configuration shows up at startup, not as a dropped
/// connection.
pub(super) fn connect(options: &ConnectOptions) -> Result<Connect, MqttError> {
    let invalid = MqttError::InvalidOptions;
    let millis = options.keep_alive.as_millis();
    if millis % 1000 != 0 {
        return Err(invalid("keep_alive must be a whole number of seconds"));
    }
    let keep_alive =
        u16::try_from(millis / 1000).map_err(|_| invalid("keep_alive exceeds 65535 s"))?;
    if options.client_id.len() > MAX_FIELD {
        return Err(invalid("client_id longer than 65535 bytes"));
    }
    // §3.1.3-7: a zero-byte client id is only allowed with a clean session.
    if options.client_id.is_empty() && !options.clean_session {
        return Err(invalid("an empty client_id requires clean_session"));
    }
    // rumqttc leaves out empty credentials, so an empty username is the same as none; a
    // password needs a username (§3.1.2-22) or the packet would be malformed.
    let username = options.username.clone().unwrap_or_default();
    let password = options.password.clone().unwrap_or_default();
    if username.len() > MAX_FIELD || password.len() > MAX_FIELD {
        return Err(invalid("username or password longer than 65535 bytes"));
    }
    if username.is_empty() && !password.is_empty() {
        return Err(invalid("a password requires a non-empty username"));
    }
    let login = (!username.is_empty()).then_some(wire::Login { username, password });
    let last_will = match &options.will {
        None => None,
        Some(will) => {
            check_topic(&will.topic).map_err(|_| invalid("invalid will topic"))?;
            if will.payload.len() > MAX_FIELD {
                return Err(invalid("will payload longer than 65535 bytes"));
            }
            Some(wire::LastWill {
                topic: will.topic.clone(),
                message: will.payload.clone(),
                qos: to_wire(will.qos),
                retain: will.retain,
            })
        }
    };
    Ok(Connect {
        protocol: mqttbytes::Protocol::V4,
        keep_alive,
        client_id: options.client_id.clone(),
        clean_session: options.clean_session,
        last_will,
        login,
    })
}

/// Builds an outgoing PUBLISH (`pid` is ignored at QoS 0) and checks it fits in one packet.
pub(super) fn publish(
    topic: &str,
    payload: Bytes,
    qos: QoS,
    retain: bool,
    pid: u16,
) -> Result<Publish, MqttError> {
    let packet = Publish {
        dup: false,
        qos: to_wire(qos),
        retain,
        topic: topic.to_owned(),
        pkid: if qos == QoS::AtMostOnce { 0 } else { pid },
        payload,
    };
    check_size(packet.size())?;
    Ok(packet)
}

/// Builds an outgoing SUBSCRIBE and checks it fits in one packet.
pub(super) fn subscribe(pid: u16, filters: Vec<(String, QoS)>) -> Result<Subscribe, MqttError> {
    let packet = Subscribe {
        pkid: pid,
        filters: filters
            .into_iter()
            .map(|(path, qos)| wire::SubscribeFilter::new(path, to_wire(qos)))
            .collect(),
    };
    check_size(packet.size())?;
    Ok(packet)
}

/// How many filters a SUBSCRIBE carries, to check the SUBACK against.
pub(super) fn subscribe_filters(packet: &Subscribe) -> usize {
    packet.filters.len()
}

/// Builds an outgoing UNSUBSCRIBE for one filter.
pub(super) fn unsubscribe(pid: u16, filter: &str) -> Unsubscribe {
    Unsubscribe {
        pkid: pid,
        topics: vec![filter.to_owned()],
    }
}

/// Marks a PUBLISH as a redelivery (DUP flag) or not.
pub(super) fn set_dup(packet: &mut Publish, dup: bool) {
    packet.dup = dup;
}

/// Frees a QoS 2 PUBLISH's topic and payload once the broker has it (PUBREC): only the id is
/// needed for PUBREL from then on.
pub(super) fn release_body(packet: &mut Publish) {
    packet.topic = String::new();
    packet.payload = Bytes::new();
}

/// The packet id of a kept PUBLISH.
pub(super) fn publish_pid(packet: &Publish) -> u16 {
    packet.pkid
}

fn check_size(size: usize) -> Result<(), MqttError> {
    if size > MAX_PACKET_SIZE {
        Err(MqttError::PacketTooLarge { size })
    } else {
        Ok(())
    }
}

/// Appends one packet to `tx`. rumqttc writes the first bytes before it can fail, so a failed
/// write is cut off again rather than leaving half a packet in the stream.
fn append(
    tx: &mut BytesMut,
    size: usize,
    write: impl FnOnce(&mut BytesMut) -> Result<usize, mqttbytes::Error>,
) -> Result<(), MqttError> {
    check_size(size)?;
    let mark = tx.len();
    tx.reserve(size);
    write(tx).map(drop).map_err(|e| {
        tx.truncate(mark);
        MqttError::Encode(e.to_string())
    })
}

pub(super) fn write_connect(tx: &mut BytesMut, packet: &Connect) -> Result<(), MqttError> {
    append(tx, packet.size(), |tx| packet.write(tx))
}

pub(super) fn write_publish(tx: &mut BytesMut, packet: &Publish) -> Result<(), MqttError> {
    append(tx, packet.size(), |tx| packet.write(tx))
}

pub(super) fn write_subscribe(tx: &mut BytesMut, packet: &Subscribe) -> Result<(), MqttError> {
    append(tx, packet.size(), |tx| packet.write(tx))
}

pub(super) fn write_unsubscribe(tx: &mut BytesMut, packet: &Unsubscribe) -> Result<(), MqttError> {
    append(tx, packet.size(), |tx| packet.write(tx))
}

pub(super) fn write_puback(tx: &mut BytesMut, pid: u16) -> Result<(), MqttError> {
    let packet = wire::PubAck::new(pid);
    append(tx, packet.size(), |tx| packet.write(tx))
}

pub(super) fn write_pubrec(tx: &mut BytesMut, pid: u16) -> Result<(), MqttError> {
    let packet = wire::PubRec::new(pid);
    append(tx, packet.size(), |tx| packet.write(tx))
}

pub(super) fn write_pubrel(tx: &mut BytesMut, pid: u16) -> Result<(), MqttError> {
    let packet = wire::PubRel::new(pid);
    append(tx, packet.size(), |tx| packet.write(tx))
}

pub(super) fn write_pubcomp(tx: &mut BytesMut, pid: u16) -> Result<(), MqttError> {
    let packet = wire::PubComp::new(pid);
    append(tx, packet.size(), |tx| packet.write(tx))
}

pub(super) fn write_pingreq(tx: &mut BytesMut) -> Result<(), MqttError> {
    append(tx, wire::PingReq.size(), |tx| wire::PingReq.write(tx))
}

pub(super) fn write_disconnect(tx: &mut BytesMut) -> Result<(), MqttError> {
    append(tx, wire::Disconnect.size(), |tx| wire::Disconnect.write(tx))
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

/// Takes the next whole packet off the front of `rx`. `Ok(None)` means more bytes are needed
/// (and room for them is reserved); `Err` is a protocol error after which the stream cannot be
/// resynchronised. `max_remaining` bounds the remaining length, checked from the fixed header so
/// an oversize packet is refused before it is buffered.
pub(super) fn read(rx: &mut BytesMut, max_remaining: usize) -> Result<Option<Incoming>, String> {
    let Some(&byte1) = rx.first() else {
        return Ok(None);
    };
    check_first_byte(byte1)?;
    let packet = match wire::Packet::read(rx, max_remaining) {
        Ok(packet) => packet,
        Err(mqttbytes::Error::InsufficientBytes(more)) => {
            // `more` is bounded by the size limit: the fixed header was checked first.
            rx.reserve(more);
            return Ok(None);
        }
        Err(mqttbytes::Error::PayloadSizeLimitExceeded(len)) => {
            return Err(format!(
                "packet with remaining length {len} exceeds the limit of {max_remaining}"
            ));
        }
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
