//! A small sans-IO DTLS 1.2 PSK client (TLS_PSK_WITH_AES_128_CCM_8 with extended master
//! secret): the peer of the gateway's DTLS tests on virtual time and of its load generator.
//! dimpl's own client cannot be: it follows one HelloVerifyRequest only, and the gateway's
//! handshakes take two (see the gateway's `transport/dtls/association.rs`). Written from RFC
//! 6347, 4279, 6655 and 7627; just enough for a handshake without loss (the caller resends
//! the first flight if nothing comes back). Record crypto is dimpl's RustCrypto AES-CCM-8,
//! the PRF and transcript hash are ring's. Not for devices: it checks what it must to talk to
//! a gateway it trusts, no more.

use dimpl::crypto::{Aad, Buf, Cipher, Dtls12CipherSuite, Nonce, TmpBuf};
use ring::{digest, hmac};

const HANDSHAKE: u8 = 22;
const CHANGE_CIPHER_SPEC: u8 = 20;
const ALERT: u8 = 21;
const APPLICATION_DATA: u8 = 23;
const DTLS_1_2: [u8; 2] = [0xfe, 0xfd];

fn prf(secret: &[u8], label: &[u8], seed: &[u8], len: usize) -> Vec<u8> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut label_seed = label.to_vec();
    label_seed.extend_from_slice(seed);
    let mut a = hmac::sign(&key, &label_seed).as_ref().to_vec();
    let mut out = Vec::new();
    while out.len() < len {
        let mut ctx = hmac::Context::with_key(&key);
        ctx.update(&a);
        ctx.update(&label_seed);
        out.extend_from_slice(ctx.sign().as_ref());
        a = hmac::sign(&key, &a).as_ref().to_vec();
    }
    out.truncate(len);
    out
}

fn sha256(data: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA256, data).as_ref().to_vec()
}

fn ccm(key: &[u8]) -> Box<dyn Cipher> {
    let provider = dimpl::crypto::rust_crypto::default_provider();
    let suite = provider
        .cipher_suites
        .iter()
        .find(|s| s.suite() == Dtls12CipherSuite::PSK_AES128_CCM_8)
        .expect("the RustCrypto provider has AES-CCM-8");
    suite.create_cipher(key).expect("a 16-byte key")
}

struct Keys {
    master: Vec<u8>,
    client: Box<dyn Cipher>,
    server: Box<dyn Cipher>,
    client_iv: [u8; 4],
    server_iv: [u8; 4],
}

/// Where the handshake is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    AwaitServerHello,
    AwaitServerHelloDone,
    AwaitServerFinished,
    Connected,
    Failed,
}

/// One client association; feed it the server's datagrams with [`PskClient::handle`].
pub struct PskClient {
    identity: Vec<u8>,
    psk: Vec<u8>,
    random: [u8; 32],
    server_random: [u8; 32],
    cookie: Vec<u8>,
    message_seq: u16,
    /// The server's next handshake message_seq (earlier ones are retransmissions).
    server_seq: u16,
    epoch0_seq: u64,
    epoch1_seq: u64,
    server_epoch: u16,
    transcript: Vec<u8>,
    keys: Option<Keys>,
    pub state: State,
    /// Decrypted application data, in order.
    pub received: Vec<Vec<u8>>,
    /// HelloVerifyRequests followed.
    pub hello_verifies: usize,
    /// Alerts received (level, description).
    pub alerts: Vec<(u8, u8)>,
}

impl PskClient {
    /// A client that will authenticate as `identity` with `psk`; `seed` makes its random
    /// (and so its handshake) reproducible.
    pub fn new(identity: &str, psk: &[u8], seed: u8) -> Self {
        let mut random = [seed; 32];
        random[0] = 0x60;
        random[31] = seed.wrapping_mul(31).wrapping_add(7);
        PskClient {
            identity: identity.as_bytes().to_vec(),
            psk: psk.to_vec(),
            random,
            server_random: [0; 32],
            cookie: Vec::new(),
            message_seq: 0,
            server_seq: 0,
            epoch0_seq: 0,
            epoch1_seq: 0,
            server_epoch: 0,
            transcript: Vec::new(),
            keys: None,
            state: State::AwaitServerHello,
            received: Vec::new(),
            hello_verifies: 0,
            alerts: Vec::new(),
        }
    }

    /// The first ClientHello (also usable as a raw ClientHello for flood tests).
    pub fn start(&mut self) -> Vec<u8> {
        self.client_hello()
    }

    fn record(&mut self, content_type: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![content_type, DTLS_1_2[0], DTLS_1_2[1], 0, 0];
        out.extend_from_slice(&self.epoch0_seq.to_be_bytes()[2..]);
        self.epoch0_seq += 1;
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn handshake_message(&mut self, msg_type: u8, body: &[u8]) -> Vec<u8> {
        let len = (body.len() as u32).to_be_bytes();
        let mut out = vec![msg_type, len[1], len[2], len[3]];
        out.extend_from_slice(&self.message_seq.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, len[1], len[2], len[3]]);
        out.extend_from_slice(body);
        self.message_seq += 1;
        out
    }

    fn client_hello(&mut self) -> Vec<u8> {
        let mut body = DTLS_1_2.to_vec();
        body.extend_from_slice(&self.random);
        body.push(0);
        body.push(self.cookie.len() as u8);
        body.extend_from_slice(&self.cookie);
        body.extend_from_slice(&[0, 2, 0xc0, 0xa8, 1, 0]);
        body.extend_from_slice(&[0, 4, 0x00, 0x17, 0, 0]);
        let message = self.handshake_message(1, &body);
        // RFC 6347 §4.2.1: the transcript starts again with each ClientHello.
        self.transcript = message.clone();
        self.record(HANDSHAKE, &message)
    }

    fn nonce_aad(
        iv: [u8; 4],
        epoch: u16,
        seq: u64,
        content_type: u8,
        len: usize,
    ) -> ([u8; 8], Nonce, Aad) {
        let mut explicit = [0u8; 8];
        explicit[..2].copy_from_slice(&epoch.to_be_bytes());
        explicit[2..].copy_from_slice(&seq.to_be_bytes()[2..]);
        let mut nonce = [0u8; 12];
        nonce[..4].copy_from_slice(&iv);
        nonce[4..].copy_from_slice(&explicit);
        let mut aad = explicit.to_vec();
        aad.push(content_type);
        aad.extend_from_slice(&DTLS_1_2);
        aad.extend_from_slice(&(len as u16).to_be_bytes());
        (explicit, Nonce(nonce), Aad(aad.into_iter().collect()))
    }

    fn encrypted(&mut self, content_type: u8, plaintext: &[u8]) -> Vec<u8> {
        let seq = self.epoch1_seq;
        self.epoch1_seq += 1;
        let keys = self.keys.as_mut().expect("keys before encrypting");
        let (explicit, nonce, aad) =
            Self::nonce_aad(keys.client_iv, 1, seq, content_type, plaintext.len());
        let mut buf = Buf::new();
        buf.extend_from_slice(plaintext);
        keys.client.encrypt(&mut buf, aad, nonce).expect("encrypt");
        let sealed = buf.into_vec();
        let mut out = vec![content_type, DTLS_1_2[0], DTLS_1_2[1], 0, 1];
        out.extend_from_slice(&seq.to_be_bytes()[2..]);
        out.extend_from_slice(&((8 + sealed.len()) as u16).to_be_bytes());
        out.extend_from_slice(&explicit);
        out.extend_from_slice(&sealed);
        out
    }

    /// One application data record.
    pub fn send(&mut self, data: &[u8]) -> Vec<u8> {
        self.encrypted(APPLICATION_DATA, data)
    }

    /// An encrypted close_notify alert.
    pub fn close_notify(&mut self) -> Vec<u8> {
        self.encrypted(ALERT, &[1, 0])
    }

    fn decrypt(&mut self, content_type: u8, seq: u64, fragment: &[u8]) -> Option<Vec<u8>> {
        let keys = self.keys.as_mut()?;
        let (explicit, rest) = fragment.split_at_checked(8)?;
        let len = rest.len().checked_sub(8)?;
        let (_, _, aad) = Self::nonce_aad(keys.server_iv, 1, seq, content_type, len);
        // The explicit nonce is the sender's choice (dimpl's is random), so take it as sent.
        let mut nonce = [0u8; 12];
        nonce[..4].copy_from_slice(&keys.server_iv);
        nonce[4..].copy_from_slice(explicit);
        let nonce = Nonce(nonce);
        let mut data = rest.to_vec();
        let mut tmp = TmpBuf::new(&mut data);
        keys.server.decrypt(&mut tmp, aad, nonce).ok()?;
        let plain_len = tmp.len();
        data.truncate(plain_len);
        Some(data)
    }

    /// Handles one datagram from the server and returns the datagrams to send back.
    pub fn handle(&mut self, datagram: &[u8]) -> Vec<Vec<u8>> {
        let mut replies = Vec::new();
        let mut rest = datagram;
        while rest.len() >= 13 {
            let content_type = rest[0];
            let epoch = u16::from_be_bytes([rest[3], rest[4]]);
            let mut seq_bytes = [0u8; 8];
            seq_bytes[2..].copy_from_slice(&rest[5..11]);
            let seq = u64::from_be_bytes(seq_bytes);
            let len = usize::from(u16::from_be_bytes([rest[11], rest[12]]));
            let Some(fragment) = rest.get(13..13 + len) else {
                break;
            };
            rest = &rest[13 + len..];
            let plain = if epoch == 0 {
                fragment.to_vec()
            } else if epoch == self.server_epoch {
                match self.decrypt(content_type, seq, fragment) {
                    Some(plain) => plain,
                    None => continue,
                }
            } else {
                continue;
            };
            match content_type {
                HANDSHAKE => self.handshake(&plain, &mut replies),
                CHANGE_CIPHER_SPEC => self.server_epoch = 1,
                ALERT if plain.len() >= 2 => {
                    self.alerts.push((plain[0], plain[1]));
                    if plain[0] == 2 {
                        self.state = State::Failed;
                    }
                }
                APPLICATION_DATA if self.state == State::Connected => self.received.push(plain),
                _ => {}
            }
        }
        replies
    }

    fn handshake(&mut self, mut messages: &[u8], replies: &mut Vec<Vec<u8>>) {
        while messages.len() >= 12 {
            let msg_type = messages[0];
            let len = usize::from(messages[1]) << 16
                | usize::from(messages[2]) << 8
                | usize::from(messages[3]);
            let Some(whole) = messages.get(..12 + len) else {
                return;
            };
            let body = &whole[12..];
            messages = &messages[12 + len..];
            // A message already handled is the server retransmitting its flight (ours was
            // lost, or late): taking a repeated HelloVerifyRequest again would answer it with a
            // ClientHello the server does not expect. Our own resend timer covers the loss.
            let seq = u16::from_be_bytes([whole[4], whole[5]]);
            if seq < self.server_seq {
                continue;
            }
            self.server_seq = seq + 1;
            match (msg_type, self.state) {
                (3, State::AwaitServerHello) => {
                    // HelloVerifyRequest: version(2) cookie<0..255>
                    let Some(&cookie_len) = body.get(2) else {
                        return;
                    };
                    let Some(cookie) = body.get(3..3 + usize::from(cookie_len)) else {
                        return;
                    };
                    self.cookie = cookie.to_vec();
                    self.hello_verifies += 1;
                    let hello = self.client_hello();
                    replies.push(hello);
                }
                (2, State::AwaitServerHello) => {
                    let Some(random) = body.get(2..34) else {
                        return;
                    };
                    self.transcript.extend_from_slice(whole);
                    self.server_random.copy_from_slice(random);
                    self.state = State::AwaitServerHelloDone;
                }
                (12, State::AwaitServerHelloDone) => self.transcript.extend_from_slice(whole),
                (14, State::AwaitServerHelloDone) => {
                    self.transcript.extend_from_slice(whole);
                    replies.push(self.key_exchange_flight());
                    self.state = State::AwaitServerFinished;
                }
                (20, State::AwaitServerFinished) => {
                    let keys = self.keys.as_ref().expect("keys");
                    let expected = prf(
                        &keys.master,
                        b"server finished",
                        &sha256(&self.transcript),
                        12,
                    );
                    self.state = if body == expected.as_slice() {
                        State::Connected
                    } else {
                        State::Failed
                    };
                }
                _ => {}
            }
        }
    }

    fn key_exchange_flight(&mut self) -> Vec<u8> {
        let mut cke = (self.identity.len() as u16).to_be_bytes().to_vec();
        cke.extend_from_slice(&self.identity.clone());
        let cke = self.handshake_message(16, &cke);
        self.transcript.extend_from_slice(&cke);

        let n = self.psk.len() as u16;
        let mut premaster = n.to_be_bytes().to_vec();
        premaster.extend(std::iter::repeat_n(0u8, self.psk.len()));
        premaster.extend_from_slice(&n.to_be_bytes());
        premaster.extend_from_slice(&self.psk);
        let master = prf(
            &premaster,
            b"extended master secret",
            &sha256(&self.transcript),
            48,
        );
        let mut seed = self.server_random.to_vec();
        seed.extend_from_slice(&self.random);
        let block = prf(&master, b"key expansion", &seed, 40);
        let mut client_iv = [0u8; 4];
        client_iv.copy_from_slice(&block[32..36]);
        let mut server_iv = [0u8; 4];
        server_iv.copy_from_slice(&block[36..40]);
        let verify = prf(&master, b"client finished", &sha256(&self.transcript), 12);
        self.keys = Some(Keys {
            master,
            client: ccm(&block[0..16]),
            server: ccm(&block[16..32]),
            client_iv,
            server_iv,
        });
        let finished = self.handshake_message(20, &verify);
        self.transcript.extend_from_slice(&finished);

        let mut flight = self.record(HANDSHAKE, &cke);
        let ccs = self.record(CHANGE_CIPHER_SPEC, &[1]);
        flight.extend_from_slice(&ccs);
        let sealed = self.encrypted(HANDSHAKE, &finished);
        flight.extend_from_slice(&sealed);
        flight
    }
}
