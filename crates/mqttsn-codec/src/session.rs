//! Connection and will messages: CONNECT, WILLTOPIC/WILLTOPICUPD and their fields (§5.4.4-§5.4.9,
//! §5.4.22-§5.4.23). The tiny messages of this family (CONNACK, WILLTOPICREQ, ...) live directly
//! in [`super::Message`].

use super::error::DecodeError;
use super::types::{Flags, MsgType, QoS};
use super::wire::Reader;
use crate::wire::Put;

/// The only protocol id MQTT-SN v1.2 defines (§5.3.8).
pub const PROTOCOL_ID: u8 = 0x01;

/// CONNECT (§5.4.4): a client opens (or resumes) its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connect<'a> {
    /// The client wants to set a will (WILLTOPICREQ/WILLMSGREQ follow).
    pub will: bool,
    /// Discard the previous session (subscriptions, registrations, will).
    pub clean_session: bool,
    /// Keep-alive period in seconds.
    pub duration: u16,
    /// The client's identifier (1-23 octets in the spec; the gateway's limit is configurable).
    pub client_id: &'a str,
}

impl<'a> Connect<'a> {
    pub(super) fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(MsgType::Connect, body, "at least 4");
        let flags = Flags(r.u8()?);
        let protocol_id = r.u8()?;
        let duration = r.u16()?;
        if protocol_id != PROTOCOL_ID {
            return Err(DecodeError::BadProtocolId(protocol_id));
        }
        Ok(Connect {
            will: flags.will(),
            clean_session: flags.clean_session(),
            duration,
            client_id: r.rest_str("client id")?,
        })
    }

    pub(super) fn body_len(&self) -> usize {
        4 + self.client_id.len()
    }

    pub(super) fn write_body(&self, out: &mut impl Put) {
        let flags = Flags::default()
            .with_will(self.will)
            .with_clean_session(self.clean_session);
        out.put_u8(flags.0);
        out.put_u8(PROTOCOL_ID);
        out.put_u16(self.duration);
        out.put_slice(self.client_id.as_bytes());
    }
}

/// The content of WILLTOPIC and WILLTOPICUPD (§5.4.7, §5.4.22) when not empty. An empty message
/// (no flags, no topic) means "delete the will" and decodes to `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WillTopic<'a> {
    /// QoS of the will message.
    pub qos: QoS,
    /// Whether the will is published retained.
    pub retain: bool,
    /// Topic the will is published to.
    pub topic: &'a str,
}

impl<'a> WillTopic<'a> {
    pub(super) fn decode(msg_type: MsgType, body: &'a [u8]) -> Result<Option<Self>, DecodeError> {
        let mut r = Reader::new(msg_type, body, "0, or at least 1");
        if r.is_empty() {
            return Ok(None);
        }
        let flags = Flags(r.u8()?);
        Ok(Some(WillTopic {
            qos: flags.qos(),
            retain: flags.retain(),
            topic: r.rest_str("will topic")?,
        }))
    }

    pub(super) fn body_len(this: &Option<Self>) -> usize {
        this.map_or(0, |w| 1 + w.topic.len())
    }

    pub(super) fn write_body(this: &Option<Self>, out: &mut impl Put) {
        if let Some(w) = this {
            let flags = Flags::default().with_qos(w.qos).with_retain(w.retain);
            out.put_u8(flags.0);
            out.put_slice(w.topic.as_bytes());
        }
    }
}
