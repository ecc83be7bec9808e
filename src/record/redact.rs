//! Keeps the broker password out of recordings and pcaps: every MQTT CONNECT in bytes the
//! gateway sends upstream has its password overwritten with `*` before it is recorded (same
//! length, so that the recording still decodes and its framing is untouched).

use bytes::Bytes;

/// `bytes` (one or more whole MQTT packets, as the gateway writes them) with the password of
/// every CONNECT among them masked. Bytes that do not parse are returned as they are.
pub fn mask_connect_passwords(bytes: &Bytes) -> Bytes {
    let mut masked: Option<Vec<u8>> = None;
    let mut at = 0;
    while let Some((start, end)) = packet(bytes, at) {
        if bytes[at] >> 4 == 1 {
            if let Some(range) = password(&bytes[start..end]) {
                let out = masked.get_or_insert_with(|| bytes.to_vec());
                out[start + range.start..start + range.end].fill(b'*');
            }
        }
        at = end;
    }
    masked.map_or_else(|| bytes.clone(), Bytes::from)
}

/// The body of the packet whose fixed header starts at `at`: (start, end) in `bytes`.
fn packet(bytes: &[u8], at: usize) -> Option<(usize, usize)> {
    let mut len = 0usize;
    for i in 0..4 {
        let byte = *bytes.get(at + 1 + i)?;
        len |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            let start = at + 2 + i;
            let end = start.checked_add(len)?;
            return (end <= bytes.len()).then_some((start, end));
        }
    }
    None
}

/// Where the password is in a CONNECT body (MQTT 3.1.1 §3.1), if it has one.
fn password(body: &[u8]) -> Option<std::ops::Range<usize>> {
    let field = |at: usize| -> Option<(usize, usize)> {
        let len = usize::from(u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]));
        let end = at + 2 + len;
        (end <= body.len()).then_some((at + 2, end))
    };
    let (_, name_end) = field(0)?;
    let flags = *body.get(name_end + 1)?;
    // Protocol level, flags, keep-alive, then the client id.
    let (_, mut at) = field(name_end + 4)?;
    if flags & 0x04 != 0 {
        at = field(at)?.1; // will topic
        at = field(at)?.1; // will message
    }
    if flags & 0x80 != 0 {
        at = field(at)?.1; // username
    }
    if flags & 0x40 == 0 {
        return None;
    }
    let (start, end) = field(at)?;
    Some(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::mqtt::wire::{MqttWire, Outgoing};
    use crate::engine::mqtt::ConnectOptions;

    fn connect(password: Option<&str>, will: bool) -> Vec<u8> {
        let options = ConnectOptions {
            username: Some("gw-user".into()),
            password: password.map(str::to_owned),
            will: will.then(|| crate::engine::mqtt::LastWill {
                topic: "w/t".into(),
                payload: Bytes::from_static(b"bye"),
                qos: crate::engine::mqtt::QoS::AtMostOnce,
                retain: false,
            }),
            ..ConnectOptions::new("c1")
        };
        let mut buf = bytes::BytesMut::new();
        crate::mqtt_v4::MQTT_V4
            .write(Outgoing::Connect(&options), &mut buf)
            .expect("encodes");
        buf.to_vec()
    }

    #[test]
    fn the_password_of_every_connect_is_masked_and_nothing_else() {
        for will in [false, true] {
            let mut bytes = connect(Some("hunter2"), will);
            let subscribe = [0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'#', 0x00];
            bytes.extend_from_slice(&subscribe);
            let masked = mask_connect_passwords(&Bytes::from(bytes.clone()));
            assert_eq!(masked.len(), bytes.len());
            let text = String::from_utf8_lossy(&masked);
            assert!(
                !text.contains("hunter2") && text.contains("*******"),
                "{text}"
            );
            assert!(text.contains("gw-user"));
            assert!(masked.ends_with(&subscribe));
        }
        let plain = Bytes::from(connect(None, false));
        assert_eq!(mask_connect_passwords(&plain), plain);
        let garbage = Bytes::from_static(&[0x10, 0xFF, 0xFF]);
        assert_eq!(mask_connect_passwords(&garbage), garbage);
    }
}
