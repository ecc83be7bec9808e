//! Fuzz target: the DTLS listener (`mqttsn_gateway::transport::dtls`). The input is a little
//! program: raw datagrams from four addresses, ClientHellos built from a template that echo
//! the last cookie the listener sent to that address (so that the fuzzer gets past the cookie
//! exchange into dimpl's handshake), steps in time, sends, closes and PSK reloads. The listener
//! must never panic, and its associations and half-open handshakes must stay within their
//! bounds. Run: `cargo fuzz run dtls`.
#![no_main]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use mqttsn_gateway::transport::dtls::{DtlsListener, DtlsSettings, PskTable};

const MAX_ASSOCIATIONS: usize = 3;
const MAX_HANDSHAKES: usize = 2;

fn peer(i: u8) -> SocketAddr {
    ([10, 0, 0, i % 4], 5000).into()
}

struct Program<'a>(&'a [u8]);

impl<'a> Program<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::from(self.byte()?).min(self.0.len());
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(taken)
    }
}

/// A DTLS 1.2 ClientHello offering the PSK and an ECDHE suite, with extended master secret.
fn client_hello(message_seq: u16, random_seed: u8, cookie: &[u8]) -> Vec<u8> {
    let mut body = vec![0xfe, 0xfd];
    body.extend((0..32u8).map(|i| i.wrapping_mul(random_seed)));
    body.push(0);
    body.push(cookie.len().min(255) as u8);
    body.extend_from_slice(&cookie[..cookie.len().min(255)]);
    body.extend_from_slice(&[0, 4, 0xc0, 0xa8, 0xc0, 0x2b, 1, 0, 0, 4, 0, 0x17, 0, 0]);
    let len = body.len() as u32;
    let mut out = vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, message_seq as u8];
    out.extend_from_slice(&((12 + body.len()) as u16).to_be_bytes());
    out.push(1);
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&message_seq.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&body);
    out
}

/// The cookie of a HelloVerifyRequest, if the datagram starts with one.
fn cookie_of(datagram: &[u8]) -> Option<Vec<u8>> {
    if datagram.len() < 28 || datagram[0] != 22 || datagram[13] != 3 {
        return None;
    }
    let len = usize::from(datagram[27]);
    datagram.get(28..28 + len).map(<[u8]>::to_vec)
}

fn check(gw: &mut DtlsListener, cookies: &mut [Vec<u8>; 4]) {
    while let Some((to, datagram)) = gw.poll_transmit() {
        if let (Some(cookie), std::net::IpAddr::V4(ip)) = (cookie_of(&datagram), to.ip()) {
            cookies[usize::from(ip.octets()[3] % 4)] = cookie;
        }
    }
    while gw.poll_event().is_some() {}
    assert!(gw.associations() <= MAX_ASSOCIATIONS);
    let counters = gw.counters();
    assert!(counters.handshaking as usize <= MAX_HANDSHAKES);
    assert_eq!(counters.associations as usize, gw.associations());
}

fuzz_target!(|data: &[u8]| {
    let tables = [
        Arc::new(PskTable::parse("dev1:00112233445566778899aabbccddeeff\n").expect("valid")),
        Arc::new(PskTable::parse("dev2:ffeeddccbbaa99887766554433221100\n").expect("valid")),
    ];
    let settings = DtlsSettings {
        max_associations: MAX_ASSOCIATIONS,
        max_handshakes: MAX_HANDSHAKES,
        handshake_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(20),
        ..DtlsSettings::psk_only(tables[0].clone())
    };
    let Ok(mut gw) = DtlsListener::new(settings, [3; 32]) else {
        return;
    };
    let start = Instant::now();
    let mut now = start;
    let mut cookies: [Vec<u8>; 4] = Default::default();
    let mut program = Program(data);
    while let Some(op) = program.byte() {
        let Some(who) = program.byte() else { break };
        let to = peer(who);
        match op % 7 {
            0 => {
                let Some(datagram) = program.bytes() else {
                    break;
                };
                gw.handle_datagram(now, to, datagram);
            }
            1 => {
                let Some(seed) = program.byte() else { break };
                let seq = u16::from(who >> 4 & 3);
                let cookie = cookies[usize::from(who % 4)].clone();
                gw.handle_datagram(now, to, &client_hello(seq, seed, &cookie));
            }
            2 => {
                // Up to about 25 s per step: through handshake and idle timeouts.
                now += Duration::from_millis(u64::from(who) * 100);
                gw.handle_timeout(now);
            }
            3 => {
                let Some(frame) = program.bytes() else { break };
                let _ = gw.send(to, frame);
            }
            4 => gw.close(to),
            5 => gw.set_psk(tables[usize::from(who % 2)].clone()),
            _ => {
                if let Some(at) = gw.poll_timeout() {
                    now = now.max(at);
                }
                gw.handle_timeout(now);
            }
        }
        check(&mut gw, &mut cookies);
    }
});
