//! The small value types shared by many messages: message type codes, QoS, topic id types,
//! return codes and the flags octet (§5.2.2, §5.3.4, §5.3.10).

use core::fmt;

/// An MQTT-SN message type code (§5.2.2). `Encapsulated` is the forwarder wrapper (§5.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum MsgType {
    Advertise = 0x00,
    SearchGw = 0x01,
    GwInfo = 0x02,
    Connect = 0x04,
    ConnAck = 0x05,
    WillTopicReq = 0x06,
    WillTopic = 0x07,
    WillMsgReq = 0x08,
    WillMsg = 0x09,
    Register = 0x0A,
    RegAck = 0x0B,
    Publish = 0x0C,
    PubAck = 0x0D,
    PubComp = 0x0E,
    PubRec = 0x0F,
    PubRel = 0x10,
    Subscribe = 0x12,
    SubAck = 0x13,
    Unsubscribe = 0x14,
    UnsubAck = 0x15,
    PingReq = 0x16,
    PingResp = 0x17,
    Disconnect = 0x18,
    WillTopicUpd = 0x1A,
    WillTopicResp = 0x1B,
    WillMsgUpd = 0x1C,
    WillMsgResp = 0x1D,
    Encapsulated = 0xFE,
}

impl MsgType {
    /// Maps a type octet to its message type; `None` for reserved codes.
    pub fn from_u8(code: u8) -> Option<MsgType> {
        use MsgType::*;
        Some(match code {
            0x00 => Advertise,
            0x01 => SearchGw,
            0x02 => GwInfo,
            0x04 => Connect,
            0x05 => ConnAck,
            0x06 => WillTopicReq,
            0x07 => WillTopic,
            0x08 => WillMsgReq,
            0x09 => WillMsg,
            0x0A => Register,
            0x0B => RegAck,
            0x0C => Publish,
            0x0D => PubAck,
            0x0E => PubComp,
            0x0F => PubRec,
            0x10 => PubRel,
            0x12 => Subscribe,
            0x13 => SubAck,
            0x14 => Unsubscribe,
            0x15 => UnsubAck,
            0x16 => PingReq,
            0x17 => PingResp,
            0x18 => Disconnect,
            0x1A => WillTopicUpd,
            0x1B => WillTopicResp,
            0x1C => WillMsgUpd,
            0x1D => WillMsgResp,
            0xFE => Encapsulated,
            _ => return None,
        })
    }

    /// The spec's name, upper case, as logs and the `decode` tool print it.
    pub fn name(self) -> &'static str {
        use MsgType::*;
        match self {
            Advertise => "ADVERTISE",
            SearchGw => "SEARCHGW",
            GwInfo => "GWINFO",
            Connect => "CONNECT",
            ConnAck => "CONNACK",
            WillTopicReq => "WILLTOPICREQ",
            WillTopic => "WILLTOPIC",
            WillMsgReq => "WILLMSGREQ",
            WillMsg => "WILLMSG",
            Register => "REGISTER",
            RegAck => "REGACK",
            Publish => "PUBLISH",
            PubAck => "PUBACK",
            PubComp => "PUBCOMP",
            PubRec => "PUBREC",
            PubRel => "PUBREL",
            Subscribe => "SUBSCRIBE",
            SubAck => "SUBACK",
            Unsubscribe => "UNSUBSCRIBE",
            UnsubAck => "UNSUBACK",
            PingReq => "PINGREQ",
            PingResp => "PINGRESP",
            Disconnect => "DISCONNECT",
            WillTopicUpd => "WILLTOPICUPD",
            WillTopicResp => "WILLTOPICRESP",
            WillMsgUpd => "WILLMSGUPD",
            WillMsgResp => "WILLMSGRESP",
            Encapsulated => "ENCAPSULATED",
        }
    }
}

impl fmt::Display for MsgType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Quality of service, including MQTT-SN's QoS -1 (publish without a connection, §6.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QoS {
    /// QoS -1: fire and forget from an unconnected client (flag bits `11`).
    MinusOne,
    /// At most once.
    Zero,
    /// At least once.
    One,
    /// Exactly once.
    Two,
}

impl QoS {
    /// The QoS as the number people write (-1, 0, 1, 2).
    pub fn level(self) -> i8 {
        match self {
            QoS::MinusOne => -1,
            QoS::Zero => 0,
            QoS::One => 1,
            QoS::Two => 2,
        }
    }

    /// The QoS for a number people write; `None` outside -1..=2.
    pub fn from_level(level: i8) -> Option<QoS> {
        match level {
            -1 => Some(QoS::MinusOne),
            0 => Some(QoS::Zero),
            1 => Some(QoS::One),
            2 => Some(QoS::Two),
            _ => None,
        }
    }

    fn bits(self) -> u8 {
        match self {
            QoS::Zero => 0b00,
            QoS::One => 0b01,
            QoS::Two => 0b10,
            QoS::MinusOne => 0b11,
        }
    }

    fn from_bits(bits: u8) -> QoS {
        match bits & 0b11 {
            0b00 => QoS::Zero,
            0b01 => QoS::One,
            0b10 => QoS::Two,
            _ => QoS::MinusOne,
        }
    }
}

/// The TopicIdType field of the flags octet (§5.3.4, bits 1-0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopicIdType {
    /// A normal topic id (PUBLISH) or a topic name (SUBSCRIBE/UNSUBSCRIBE).
    Normal,
    /// A predefined topic id, known to client and gateway beforehand.
    Predefined,
    /// A two-character short topic name carried in the TopicId field.
    Short,
    /// The reserved value `11`.
    Reserved,
}

impl TopicIdType {
    /// The two flag bits.
    pub fn bits(self) -> u8 {
        match self {
            TopicIdType::Normal => 0b00,
            TopicIdType::Predefined => 0b01,
            TopicIdType::Short => 0b10,
            TopicIdType::Reserved => 0b11,
        }
    }

    fn from_bits(bits: u8) -> TopicIdType {
        match bits & 0b11 {
            0b00 => TopicIdType::Normal,
            0b01 => TopicIdType::Predefined,
            0b10 => TopicIdType::Short,
            _ => TopicIdType::Reserved,
        }
    }

    /// Lower-case name as printed by the `decode` tool.
    pub fn name(self) -> &'static str {
        match self {
            TopicIdType::Normal => "normal",
            TopicIdType::Predefined => "predefined",
            TopicIdType::Short => "short",
            TopicIdType::Reserved => "reserved",
        }
    }
}

/// A return code (§5.3.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReturnCode {
    /// 0x00
    Accepted,
    /// 0x01: rejected, congestion (try again later).
    Congestion,
    /// 0x02: rejected, invalid topic id.
    InvalidTopicId,
    /// 0x03: rejected, not supported.
    NotSupported,
}

impl ReturnCode {
    /// The wire value.
    pub fn code(self) -> u8 {
        match self {
            ReturnCode::Accepted => 0x00,
            ReturnCode::Congestion => 0x01,
            ReturnCode::InvalidTopicId => 0x02,
            ReturnCode::NotSupported => 0x03,
        }
    }

    /// The return code for a wire value; `None` for the reserved values 0x04..=0xFF.
    pub fn from_code(code: u8) -> Option<ReturnCode> {
        match code {
            0x00 => Some(ReturnCode::Accepted),
            0x01 => Some(ReturnCode::Congestion),
            0x02 => Some(ReturnCode::InvalidTopicId),
            0x03 => Some(ReturnCode::NotSupported),
            _ => None,
        }
    }

    /// Short name as printed by the `decode` tool.
    pub fn name(self) -> &'static str {
        match self {
            ReturnCode::Accepted => "accepted",
            ReturnCode::Congestion => "congestion",
            ReturnCode::InvalidTopicId => "invalid topic id",
            ReturnCode::NotSupported => "not supported",
        }
    }
}

/// The flags octet (§5.3.4), decoded bit by bit. Each message reads the bits that mean something
/// for it; the codec ignores the others on decode and writes them as zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Flags(pub u8);

impl Flags {
    const DUP: u8 = 0x80;
    const RETAIN: u8 = 0x10;
    const WILL: u8 = 0x08;
    const CLEAN_SESSION: u8 = 0x04;

    pub fn dup(self) -> bool {
        self.0 & Self::DUP != 0
    }
    pub fn qos(self) -> QoS {
        QoS::from_bits(self.0 >> 5)
    }
    pub fn retain(self) -> bool {
        self.0 & Self::RETAIN != 0
    }
    pub fn will(self) -> bool {
        self.0 & Self::WILL != 0
    }
    pub fn clean_session(self) -> bool {
        self.0 & Self::CLEAN_SESSION != 0
    }
    pub fn topic_id_type(self) -> TopicIdType {
        TopicIdType::from_bits(self.0)
    }

    pub fn with_dup(self, on: bool) -> Flags {
        self.set(Self::DUP, on)
    }
    pub fn with_qos(self, qos: QoS) -> Flags {
        Flags((self.0 & !0x60) | (qos.bits() << 5))
    }
    pub fn with_retain(self, on: bool) -> Flags {
        self.set(Self::RETAIN, on)
    }
    pub fn with_will(self, on: bool) -> Flags {
        self.set(Self::WILL, on)
    }
    pub fn with_clean_session(self, on: bool) -> Flags {
        self.set(Self::CLEAN_SESSION, on)
    }
    pub fn with_topic_id_type(self, t: TopicIdType) -> Flags {
        Flags((self.0 & !0b11) | t.bits())
    }

    fn set(self, bit: u8, on: bool) -> Flags {
        if on {
            Flags(self.0 | bit)
        } else {
            Flags(self.0 & !bit)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_code_maps_back_to_itself() {
        let mut known = 0;
        for code in 0..=255u8 {
            if let Some(t) = MsgType::from_u8(code) {
                assert_eq!(t as u8, code);
                known += 1;
            }
        }
        // 27 message types plus the forwarder encapsulation.
        assert_eq!(known, 28);
        assert_eq!(MsgType::from_u8(0x03), None);
        assert_eq!(MsgType::from_u8(0x11), None);
        assert_eq!(MsgType::from_u8(0x19), None);
        assert_eq!(MsgType::from_u8(0xFF), None);
    }

    #[test]
    fn flags_bits_follow_section_5_3_4() {
        let f = Flags(0b1011_1110);
        assert!(f.dup());
        assert_eq!(f.qos(), QoS::One);
        assert!(f.retain());
        assert!(f.will());
        assert!(f.clean_session());
        assert_eq!(f.topic_id_type(), TopicIdType::Short);
        assert_eq!(Flags(0x60).qos(), QoS::MinusOne);
        assert_eq!(Flags(0x40).qos(), QoS::Two);
        let built = Flags::default()
            .with_dup(true)
            .with_qos(QoS::One)
            .with_retain(true)
            .with_will(true)
            .with_clean_session(true)
            .with_topic_id_type(TopicIdType::Short);
        assert_eq!(built, f);
    }

    #[test]
    fn qos_levels() {
        for q in [QoS::MinusOne, QoS::Zero, QoS::One, QoS::Two] {
            assert_eq!(QoS::from_level(q.level()), Some(q));
        }
        assert_eq!(QoS::from_level(3), None);
    }
}
