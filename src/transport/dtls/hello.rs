//! The few DTLS 1.2 handshake messages the listener reads or writes itself, before any
//! association exists: it parses a ClientHello far enough to check its cookie and pick the
//! authentication mode, and it writes HelloVerifyRequests and the synthetic ClientHello that
//! brings a fresh dimpl server to the client's message_seq. Everything else is dimpl's.

/// Record content type of handshake records.
const CONTENT_HANDSHAKE: u8 = 22;
/// Handshake message types (RFC 5246 §7.4, RFC 6347 §4.3.2).
const MSG_CLIENT_HELLO: u8 = 1;
const MSG_HELLO_VERIFY_REQUEST: u8 = 3;
/// DTLS versions on the wire (one's complement of 1.0 and 1.2).
const DTLS_1_0: [u8; 2] = [0xfe, 0xff];
const DTLS_1_2: [u8; 2] = [0xfe, 0xfd];
/// type(1) version(2) epoch(2) sequence_number(6) length(2).
const RECORD_HEADER: usize = 13;
/// msg_type(1) length(3) message_seq(2) fragment_offset(3) fragment_length(3).
const HANDSHAKE_HEADER: usize = 12;
/// RFC 6347 §4.2.1: a cookie is at most 255 bytes.
const MAX_COOKIE: usize = 255;

/// The IANA numbers of the cipher suites the listener can negotiate through dimpl.
pub(crate) const PSK_AES128_CCM_8: u16 = 0xC0A8;
const ECDHE_ECDSA_SUITES: [u16; 3] = [0xC02B, 0xC02C, 0xCCA9];

/// Which dimpl server a ClientHello needs: dimpl builds a server for one authentication mode
/// only, so the listener picks it from the client's first acceptable suite, as dimpl's own
/// suite selection would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthMode {
    Psk,
    Certificate,
}

/// The fields of a ClientHello that the stateless path needs, borrowed from the datagram.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientHello<'a> {
    pub record_seq: [u8; 6],
    pub message_seq: u16,
    pub client_version: [u8; 2],
    pub random: &'a [u8],
    pub session_id: &'a [u8],
    pub cookie: &'a [u8],
    pub cipher_suites: &'a [u8],
}

impl ClientHello<'_> {
    /// The mode of the first suite in the client's preference order that this listener offers
    /// (`certificates` says whether a server certificate is configured).
    pub fn auth_mode(&self, certificates: bool) -> Option<AuthMode> {
        self.cipher_suites
            .chunks_exact(2)
            .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
            .find_map(|suite| {
                if suite == PSK_AES128_CCM_8 {
                    Some(AuthMode::Psk)
                } else if certificates && ECDHE_ECDSA_SUITES.contains(&suite) {
                    Some(AuthMode::Certificate)
                } else {
                    None
                }
            })
    }
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    let pair = bytes.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([pair[0], pair[1]]))
}

fn u24_at(bytes: &[u8], at: usize) -> Option<usize> {
    let triple = bytes.get(at..at.checked_add(3)?)?;
    Some(usize::from(triple[0]) << 16 | usize::from(triple[1]) << 8 | usize::from(triple[2]))
}

/// Splits `len`-prefixed bytes (a one-byte length when `wide` is false, two bytes otherwise)
/// off the front of `bytes`, returning (value, rest).
fn take_vector(bytes: &[u8], wide: bool) -> Option<(&[u8], &[u8])> {
    let (len, head): (usize, usize) = if wide {
        (usize::from(u16_at(bytes, 0)?), 2)
    } else {
        (usize::from(*bytes.first()?), 1)
    };
    let body = bytes.get(head..head.checked_add(len)?)?;
    let rest = bytes.get(head + len..)?;
    Some((body, rest))
}

/// Parses the first record of `datagram` as an epoch-0 ClientHello. Only the first fragment
/// is needed, as long as it reaches past the cipher suites (every real ClientHello's does);
/// anything else is `None`.
pub(crate) fn parse_client_hello(datagram: &[u8]) -> Option<ClientHello<'_>> {
    let header = datagram.get(..RECORD_HEADER)?;
    // Major version 0xfe is every DTLS version; clients may send the first ClientHello in a
    // DTLS 1.0 record.
    if header[0] != CONTENT_HANDSHAKE || header[1] != 0xfe || header[3..5] != [0, 0] {
        return None;
    }
    let mut record_seq = [0u8; 6];
    record_seq.copy_from_slice(&header[5..11]);
    let record_len = usize::from(u16_at(header, 11)?);
    let record = datagram.get(RECORD_HEADER..RECORD_HEADER.checked_add(record_len)?)?;

    let handshake = record.get(..HANDSHAKE_HEADER)?;
    if handshake[0] != MSG_CLIENT_HELLO {
        return None;
    }
    let length = u24_at(handshake, 1)?;
    let message_seq = u16_at(handshake, 4)?;
    let fragment_offset = u24_at(handshake, 6)?;
    let fragment_length = u24_at(handshake, 9)?;
    if fragment_offset != 0 || fragment_length > length {
        return None;
    }
    let body = record.get(HANDSHAKE_HEADER..HANDSHAKE_HEADER.checked_add(fragment_length)?)?;

    let client_version = [*body.first()?, *body.get(1)?];
    let random = body.get(2..34)?;
    let (session_id, rest) = take_vector(body.get(34..)?, false)?;
    let (cookie, rest) = take_vector(rest, false)?;
    let (cipher_suites, _) = take_vector(rest, true)?;
    if session_id.len() > 32 || cipher_suites.is_empty() || cipher_suites.len() % 2 != 0 {
        return None;
    }
    Some(ClientHello {
        record_seq,
        message_seq,
        client_version,
        random,
        session_id,
        cookie,
        cipher_suites,
    })
}

fn push_u24(out: &mut Vec<u8>, value: usize) {
    // Callers only pass lengths of messages they built, far below 2^24.
    let bytes = (value as u32).to_be_bytes();
    out.extend_from_slice(&bytes[1..]);
}

/// One unfragmented epoch-0 handshake record around `body`.
fn handshake_record(
    record_version: [u8; 2],
    record_seq: [u8; 6],
    msg_type: u8,
    message_seq: u16,
    body: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_HEADER + HANDSHAKE_HEADER + body.len());
    out.push(CONTENT_HANDSHAKE);
    out.extend_from_slice(&record_version);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&record_seq);
    // Bodies here are at most a few hundred bytes.
    out.extend_from_slice(&((HANDSHAKE_HEADER + body.len()) as u16).to_be_bytes());
    out.push(msg_type);
    push_u24(&mut out, body.len());
    out.extend_from_slice(&message_seq.to_be_bytes());
    push_u24(&mut out, 0);
    push_u24(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

/// A HelloVerifyRequest carrying `cookie`. RFC 6347 §4.2.1 has the server answer in the
/// ClientHello's record sequence number and version 1.0 (which every DTLS client accepts);
/// the message_seq mirrors the ClientHello's, as a server without state must.
pub(crate) fn hello_verify_request(
    record_seq: [u8; 6],
    message_seq: u16,
    cookie: &[u8],
) -> Vec<u8> {
    let cookie = cookie.get(..MAX_COOKIE).unwrap_or(cookie);
    let mut body = Vec::with_capacity(3 + cookie.len());
    body.extend_from_slice(&DTLS_1_0);
    body.push(cookie.len() as u8);
    body.extend_from_slice(cookie);
    handshake_record(
        DTLS_1_0,
        record_seq,
        MSG_HELLO_VERIFY_REQUEST,
        message_seq,
        &body,
    )
}

/// A minimal ClientHello without a cookie, at `message_seq`, that a fresh dimpl server answers
/// with a HelloVerifyRequest (which the listener throws away). It only exists to move dimpl's
/// expected message_seq forward; see `association.rs` for why.
pub(crate) fn synthetic_client_hello(message_seq: u16) -> Vec<u8> {
    let mut body = Vec::with_capacity(48);
    body.extend_from_slice(&DTLS_1_2);
    body.extend_from_slice(&[0u8; 32]); // random: dimpl only hashes it into its own cookie
    body.push(0); // session_id
    body.push(0); // cookie
    body.extend_from_slice(&2u16.to_be_bytes());
    body.extend_from_slice(&PSK_AES128_CCM_8.to_be_bytes());
    body.extend_from_slice(&[1, 0]); // compression: null
                                     // extended_master_secret, so the message is one dimpl would accept in every other respect.
    body.extend_from_slice(&4u16.to_be_bytes());
    body.extend_from_slice(&[0x00, 0x17, 0x00, 0x00]);
    handshake_record(DTLS_1_2, [0; 6], MSG_CLIENT_HELLO, message_seq, &body)
}
