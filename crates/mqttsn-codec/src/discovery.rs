//! Gateway discovery: ADVERTISE, SEARCHGW and GWINFO (§5.4.1-§5.4.3).

use super::error::DecodeError;
use super::types::MsgType;
use super::wire::Reader;
use crate::wire::Put;

/// ADVERTISE (§5.4.1): a gateway announces itself and when the next announcement is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advertise {
    /// The gateway's id.
    pub gw_id: u8,
    /// Seconds until the next ADVERTISE.
    pub duration: u16,
}

impl Advertise {
    pub(super) fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(MsgType::Advertise, body, "exactly 3");
        let adv = Advertise {
            gw_id: r.u8()?,
            duration: r.u16()?,
        };
        r.finish()?;
        Ok(adv)
    }

    pub(super) fn write_body(&self, out: &mut impl Put) {
        out.put_u8(self.gw_id);
        out.put_u16(self.duration);
    }
}

/// GWINFO (§5.4.3): answer to SEARCHGW, from a gateway (no address) or from a client that
/// knows a gateway (with that gateway's address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GwInfo<'a> {
    /// The gateway's id.
    pub gw_id: u8,
    /// The gateway's address, only present when a client answers; its format depends on the network.
    pub gw_addr: &'a [u8],
}

impl<'a> GwInfo<'a> {
    pub(super) fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(MsgType::GwInfo, body, "at least 1");
        Ok(GwInfo {
            gw_id: r.u8()?,
            gw_addr: r.rest(),
        })
    }

    pub(super) fn body_len(&self) -> usize {
        1 + self.gw_addr.len()
    }

    pub(super) fn write_body(&self, out: &mut impl Put) {
        out.put_u8(self.gw_id);
        out.put_slice(self.gw_addr);
    }
}
