//! Virtual-time tests: no sockets, no sleeps; the client is `mqttsn_dtls_client::PskClient`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::transport::dtls::hello::{parse_client_hello, synthetic_client_hello};
use crate::transport::dtls::{DtlsEvent, Identity, PskFileError, PskTable};
use mqttsn_dtls_client::{PskClient, State};

fn psk_identity(name: &str) -> Arc<Identity> {
    Arc::new(Identity::Psk(Arc::from(name)))
}

#[test]
fn psk_handshake_then_frames_both_ways() {
    let now = Instant::now();
    let mut gw = listener(settings());
    let peer = addr(1);
    let mut client = PskClient::new("dev1", &DEV1_KEY, 1);
    let hello = client.start();
    let events = exchange(&mut gw, &mut client, peer, now, hello);
    assert_eq!(client.state, State::Connected);
    // Ours, then dimpl's (see association.rs).
    assert_eq!(client.hello_verifies, 2);
    assert_eq!(
        events,
        vec![DtlsEvent::Established {
            peer,
            identity: psk_identity("dev1")
        }]
    );
    assert_eq!(gw.identity(peer), Some(psk_identity("dev1")));

    // Frames starting with bytes an interactive client would take for commands.
    let up = client.send(b"Q\x04\x0c\x00");
    gw.handle_datagram(now, peer, &up);
    assert_eq!(
        events_of(&mut gw),
        vec![DtlsEvent::Frame {
            peer,
            identity: psk_identity("dev1"),
            frame: b"Q\x04\x0c\x00".to_vec()
        }]
    );
    gw.send(peer, b"R\x03\x05").expect("established");
    let (to, down) = gw.poll_transmit().expect("a record");
    assert_eq!(to, peer);
    assert!(client.handle(&down).is_empty());
    assert_eq!(client.received, vec![b"R\x03\x05".to_vec()]);

    let c = gw.counters();
    assert_eq!(c.hello_verify_sent, 1);
    assert_eq!(c.handshakes_started, 1);
    assert_eq!(c.handshakes_completed, 1);
    assert_eq!(c.handshakes_failed, 0);
    assert_eq!(c.frames_received, 1);
    assert_eq!(c.frames_sent, 1);
    assert_eq!((c.associations, c.handshaking), (1, 0));
}

fn events_of(gw: &mut DtlsListener) -> Vec<DtlsEvent> {
    events(gw)
}

fn failed_reason(events: &[DtlsEvent]) -> Option<&str> {
    events.iter().find_map(|e| match e {
        DtlsEvent::HandshakeFailed { reason, .. } => Some(reason.as_str()),
        _ => None,
    })
}

#[test]
fn wrong_key_fails() {
    let now = Instant::now();
    let mut gw = listener(settings());
    let mut client = PskClient::new("dev1", &DEV2_KEY, 2);
    let hello = client.start();
    let events = exchange(&mut gw, &mut client, addr(2), now, hello);
    assert_ne!(client.state, State::Connected);
    let reason = failed_reason(&events).expect("a HandshakeFailed event");
    assert!(reason.contains("dev1"), "{reason}");
    assert!(!events
        .iter()
        .any(|e| matches!(e, DtlsEvent::Established { .. })));
    assert_eq!(gw.associations(), 0);
    assert_eq!(gw.counters().handshakes_failed, 1);
    // The key is in no event.
    assert!(!format!("{events:?}").contains(&hex(&DEV1_KEY)));
}

#[test]
fn unknown_identity_fails() {
    let now = Instant::now();
    let mut gw = listener(settings());
    let mut client = PskClient::new("intruder", &DEV1_KEY, 3);
    let hello = client.start();
    let events = exchange(&mut gw, &mut client, addr(3), now, hello);
    assert_ne!(client.state, State::Connected);
    let reason = failed_reason(&events).expect("a HandshakeFailed event");
    assert!(
        reason.contains("unknown PSK identity \"intruder\""),
        "{reason}"
    );
    assert_eq!(gw.associations(), 0);
    assert_eq!(gw.counters().handshakes_failed, 1);
}

#[test]
fn garbage_and_replayed_records_are_dropped() {
    let now = Instant::now();
    let mut gw = listener(settings());
    let peer = addr(4);
    let mut client = connect(&mut gw, peer, "dev1", &DEV1_KEY, 4, now);
    let _ = events(&mut gw);

    let record = client.send(b"\x02\x18");
    gw.handle_datagram(now, peer, &record);
    assert_eq!(events(&mut gw).len(), 1);
    let dropped = gw.counters().records_dropped;

    // The same record again: dimpl's replay window drops it.
    gw.handle_datagram(now, peer, &record);
    assert!(events(&mut gw).is_empty());
    assert_eq!(gw.counters().records_dropped, dropped + 1);

    // A flipped bit in the ciphertext: undecryptable.
    let mut forged = client.send(b"\x02\x18");
    let last = forged.len() - 1;
    forged[last] ^= 1;
    gw.handle_datagram(now, peer, &forged);
    // Garbage, truncated records, an empty datagram.
    gw.handle_datagram(now, peer, b"\x17\xfe\xfd\x00\x01\x00");
    gw.handle_datagram(now, peer, &record[..record.len() / 2]);
    gw.handle_datagram(now, peer, &[]);
    gw.handle_datagram(now, peer, &[0xff; 300]);
    assert!(events(&mut gw).is_empty());
    assert_eq!(gw.counters().records_dropped, dropped + 6);
    // Datagrams from a stranger that are not ClientHellos.
    gw.handle_datagram(now, addr(99), &record);
    gw.handle_datagram(now, addr(99), b"garbage");
    assert_eq!(gw.counters().records_dropped, dropped + 8);
    assert!(gw.poll_transmit().is_none());

    // The association survived all of it.
    let record = client.send(b"\x02\x18");
    gw.handle_datagram(now, peer, &record);
    assert_eq!(events(&mut gw).len(), 1);
    assert_eq!(gw.associations(), 1);
}

#[test]
fn spoofed_hello_flood_creates_no_state() {
    let now = Instant::now();
    let mut gw = listener(settings());
    let hello = PskClient::new("dev1", &DEV1_KEY, 5).start();
    for n in 0..10_000u32 {
        let peer = addr(n);
        gw.handle_datagram(now, peer, &hello);
        let (to, reply) = gw.poll_transmit().expect("a HelloVerifyRequest");
        assert_eq!(to, peer);
        assert_eq!(reply[13], 3, "a HelloVerifyRequest");
        assert!(reply.len() <= hello.len(), "no amplification");
        assert!(gw.poll_transmit().is_none(), "exactly one answer");
    }
    assert_eq!(gw.associations(), 0);
    let c = gw.counters();
    assert_eq!(c.hello_verify_sent, 10_000);
    assert_eq!(c.handshakes_started, 0);
    assert!(gw.poll_timeout().is_none());
    assert!(events(&mut gw).is_empty());
}

#[test]
fn a_cookie_is_bound_to_the_address_that_received_it() {
    let now = Instant::now();
    let mut gw = listener(settings());
    let mut client = PskClient::new("dev1", &DEV1_KEY, 6);
    let hello = client.start();
    gw.handle_datagram(now, addr(6), &hello);
    let (_, reply) = gw.poll_transmit().expect("a HelloVerifyRequest");
    let second = client
        .handle(&reply)
        .pop()
        .expect("ClientHello with cookie");
    // From another address: answered with a fresh HelloVerifyRequest, nothing kept.
    gw.handle_datagram(now, addr(7), &second);
    assert_eq!(gw.associations(), 0);
    assert_eq!(gw.counters().cookies_rejected, 1);
    assert_eq!(
        gw.poll_transmit().map(|(to, d)| (to, d[13])),
        Some((addr(7), 3))
    );
    // Too old: two rotation periods later.
    gw.handle_datagram(now + Duration::from_secs(61), addr(6), &second);
    assert_eq!(gw.associations(), 0);
    assert_eq!(gw.counters().cookies_rejected, 2);
    // In time, from the right address.
    let _ = gw.poll_transmit();
    gw.handle_datagram(now + Duration::from_secs(29), addr(6), &second);
    assert_eq!(gw.associations(), 1);
}

/// Three clients through the cookie exchange, none further.
fn half_open(gw: &mut DtlsListener, clients: u32, now: Instant) {
    for n in 0..clients {
        let mut client = PskClient::new("dev1", &DEV1_KEY, 10 + n as u8);
        let hello = client.start();
        gw.handle_datagram(now, addr(100 + n), &hello);
        let (_, reply) = gw.poll_transmit().expect("HelloVerifyRequest");
        let second = client.handle(&reply).pop().expect("second hello");
        gw.handle_datagram(now, addr(100 + n), &second);
        while gw.poll_transmit().is_some() {}
    }
}

#[test]
fn max_handshakes_bounds_half_open_associations() {
    let now = Instant::now();
    let mut gw = listener(DtlsSettings {
        max_handshakes: 2,
        ..settings()
    });
    half_open(&mut gw, 3, now);
    assert_eq!(gw.associations(), 2);
    let c = gw.counters();
    assert_eq!(c.handshakes_refused_busy, 1);
    assert_eq!(c.handshaking, 2);
}

#[test]
fn max_associations_bounds_established_ones() {
    let now = Instant::now();
    let mut gw = listener(DtlsSettings {
        max_associations: 2,
        ..settings()
    });
    connect(&mut gw, addr(1), "dev1", &DEV1_KEY, 1, now);
    connect(&mut gw, addr(2), "dev2", &DEV2_KEY, 2, now);
    let mut third = PskClient::new("dev1", &DEV1_KEY, 3);
    let hello = third.start();
    exchange(&mut gw, &mut third, addr(3), now, hello);
    assert_ne!(third.state, State::Connected);
    assert_eq!(gw.associations(), 2);
    assert_eq!(gw.counters().associations_refused_full, 1);
}

#[test]
fn idle_associations_are_closed() {
    let now = Instant::now();
    let mut gw = listener(settings());
    let peer = addr(8);
    let mut client = connect(&mut gw, peer, "dev1", &DEV1_KEY, 8, now);
    let _ = events(&mut gw);
    let deadline = gw.poll_timeout().expect("an idle deadline");
    assert!(deadline <= now + Duration::from_secs(60));

    // Traffic at +30 s moves the deadline.
    let later = now + Duration::from_secs(30);
    gw.handle_timeout(later);
    let record = client.send(b"\x02\x16");
    gw.handle_datagram(later, peer, &record);
    let _ = events(&mut gw);
    gw.handle_timeout(now + Duration::from_secs(61));
    assert_eq!(gw.associations(), 1);

    // Spurious and early calls are harmless.
    gw.handle_timeout(now + Duration::from_secs(61));
    let idle = later + Duration::from_secs(60);
    gw.handle_timeout(idle);
    assert_eq!(
        events(&mut gw),
        vec![DtlsEvent::Closed {
            peer,
            reason: "idle timeout"
        }]
    );
    assert_eq!(gw.associations(), 0);
    assert_eq!(gw.counters().idle_closed, 1);
    // The peer was told.
    let (_, notify) = gw.poll_transmit().expect("close_notify");
    client.handle(&notify);
    assert_eq!(client.alerts, vec![(1, 0)]);
    assert!(gw.poll_timeout().is_none());
}

#[test]
fn half_open_handshakes_time_out() {
    let now = Instant::now();
    let mut gw = listener(settings());
    half_open(&mut gw, 1, now);
    assert_eq!(gw.associations(), 1);
    let mut t = now;
    // dimpl retransmits its HelloVerifyRequest meanwhile; the listener's deadline ends it.
    while let Some(at) = gw.poll_timeout() {
        assert!(
            at <= now + Duration::from_secs(10),
            "deadline {:?}",
            at - now
        );
        t = at;
        gw.handle_timeout(t);
        while gw.poll_transmit().is_some() {}
    }
    assert_eq!(t, now + Duration::from_secs(10));
    assert_eq!(gw.associations(), 0);
    let events = events(&mut gw);
    assert_eq!(
        failed_reason(&events),
        Some("handshake timed out"),
        "{events:?}"
    );
    let c = gw.counters();
    assert_eq!(
        (c.handshakes_failed, c.handshakes_timed_out, c.handshaking),
        (1, 1, 0)
    );
}

#[test]
fn peer_close_notify_ends_the_association() {
    let now = Instant::now();
    let mut gw = listener(settings());
    let peer = addr(9);
    let mut client = connect(&mut gw, peer, "dev2", &DEV2_KEY, 9, now);
    let _ = events(&mut gw);
    let alert = client.close_notify();
    gw.handle_datagram(now, peer, &alert);
    assert_eq!(
        events(&mut gw),
        vec![DtlsEvent::Closed {
            peer,
            reason: "the peer sent close_notify"
        }]
    );
    assert_eq!(gw.associations(), 0);
    assert_eq!(
        gw.send(peer, b"x"),
        Err(crate::transport::dtls::SendError::NotConnected(peer))
    );
}

#[test]
fn close_sends_close_notify_and_forgets() {
    let now = Instant::now();
    let mut gw = listener(settings());
    let peer = addr(10);
    let mut client = connect(&mut gw, peer, "dev1", &DEV1_KEY, 10, now);
    let _ = events(&mut gw);
    gw.close(peer);
    assert_eq!(gw.associations(), 0);
    assert!(events(&mut gw).is_empty());
    let (_, notify) = gw.poll_transmit().expect("close_notify");
    client.handle(&notify);
    assert_eq!(client.alerts, vec![(1, 0)]);
    // Unknown peers are harmless.
    gw.close(addr(11));
}

#[test]
fn psk_reload_closes_revoked_identities() {
    let now = Instant::now();
    let mut gw = listener(settings());
    connect(&mut gw, addr(1), "dev1", &DEV1_KEY, 1, now);
    connect(&mut gw, addr(2), "dev2", &DEV2_KEY, 2, now);
    let _ = events(&mut gw);
    let reloaded = PskTable::parse(&format!(
        "dev2:{}\ndev3:{}\n",
        hex(&DEV2_KEY),
        hex(&DEV1_KEY)
    ))
    .expect("valid table");
    gw.set_psk(Arc::new(reloaded));
    assert_eq!(
        events(&mut gw),
        vec![DtlsEvent::Closed {
            peer: addr(1),
            reason: "PSK identity removed or its key changed"
        }]
    );
    assert_eq!(gw.associations(), 1);
    assert_eq!(gw.counters().psk_revoked, 1);
    assert_eq!(
        gw.poll_transmit().map(|(to, _)| to),
        Some(addr(1)),
        "close_notify"
    );
    // New handshakes use the new table.
    let mut old = PskClient::new("dev1", &DEV1_KEY, 3);
    let hello = old.start();
    exchange(&mut gw, &mut old, addr(3), now, hello);
    assert_ne!(old.state, State::Connected);
    connect(&mut gw, addr(4), "dev3", &DEV1_KEY, 4, now);
}

#[test]
fn a_restarted_client_replaces_its_association_only_with_a_valid_cookie() {
    let now = Instant::now();
    let mut gw = listener(settings());
    let peer = addr(12);
    connect(&mut gw, peer, "dev1", &DEV1_KEY, 12, now);
    let _ = events(&mut gw);
    // A spoofed hello with another random: a HelloVerifyRequest, the association stays.
    let mut restarted = PskClient::new("dev1", &DEV1_KEY, 13);
    let hello = restarted.start();
    gw.handle_datagram(now, peer, &hello);
    assert_eq!(gw.associations(), 1);
    let (_, reply) = gw.poll_transmit().expect("HelloVerifyRequest");
    assert!(events(&mut gw).is_empty());
    // The real client answers it: the old association goes, the new one completes.
    let second = restarted.handle(&reply).pop().expect("second hello");
    let events = exchange(&mut gw, &mut restarted, peer, now, second);
    assert_eq!(restarted.state, State::Connected);
    assert_eq!(
        events,
        vec![
            DtlsEvent::Closed {
                peer,
                reason: "the client started a new handshake"
            },
            DtlsEvent::Established {
                peer,
                identity: psk_identity("dev1")
            }
        ]
    );
    assert_eq!(gw.associations(), 1);
}

#[test]
fn clienthello_parsing_is_total() {
    let hello = PskClient::new("dev1", &DEV1_KEY, 14).start();
    let parsed = parse_client_hello(&hello).expect("a ClientHello");
    assert_eq!(parsed.message_seq, 0);
    assert!(parsed.cookie.is_empty());
    for len in 0..hello.len() {
        // Every prefix is refused or parsed, never a panic.
        let _ = parse_client_hello(&hello[..len]);
    }
    let synthetic = synthetic_client_hello(3);
    assert_eq!(
        parse_client_hello(&synthetic).map(|h| h.message_seq),
        Some(3)
    );
    let mut gw = listener(settings());
    for len in 0..hello.len() {
        gw.handle_datagram(Instant::now(), addr(15), &hello[..len]);
    }
    assert_eq!(gw.associations(), 0);
}

#[test]
fn spurious_timeouts_are_harmless() {
    let mut gw = listener(settings());
    assert!(gw.poll_timeout().is_none());
    let now = Instant::now();
    gw.handle_timeout(now);
    gw.handle_timeout(now);
    assert!(gw.poll_transmit().is_none());
    assert!(events(&mut gw).is_empty());
}

#[test]
fn settings_dimpl_refuses_are_an_error() {
    let refused = DtlsListener::new(
        DtlsSettings {
            mtu: 10,
            ..settings()
        },
        [0; 32],
    );
    assert!(refused.is_err());
}

/// If this fails, dimpl's client learnt to follow a second HelloVerifyRequest: the handshake
/// tests could then use it instead of `PskClient`.
#[test]
fn dimpl_client_cannot_follow_a_second_hello_verify_request() {
    use dimpl::crypto::Dtls12CipherSuite;
    struct Key;
    impl dimpl::PskResolver for Key {
        fn resolve(&self, _identity: &[u8]) -> Option<Vec<u8>> {
            Some(DEV1_KEY.to_vec())
        }
    }
    let config = dimpl::Config::builder()
        .with_crypto_provider(dimpl::crypto::rust_crypto::default_provider())
        .with_psk_client(b"dev1".to_vec(), Arc::new(Key))
        .dtls12_cipher_suites(&[Dtls12CipherSuite::PSK_AES128_CCM_8])
        .build()
        .expect("client config");
    let mut now = Instant::now();
    let mut client = dimpl::Dtls::new_12_psk(Arc::new(config), now);
    client.set_active(true);
    let mut gw = listener(settings());
    let mut buf = vec![0u8; 4096];
    let mut connected = false;
    for _ in 0..20 {
        client.handle_timeout(now).expect("client clock");
        loop {
            match client.poll_output(&mut buf) {
                dimpl::Output::Packet(p) => gw.handle_datagram(now, addr(16), p),
                dimpl::Output::Connected => connected = true,
                dimpl::Output::Timeout(_) => break,
                _ => {}
            }
        }
        while let Some((_, datagram)) = gw.poll_transmit() {
            if client.handle_packet(&datagram).is_err() {
                break;
            }
        }
        now += Duration::from_secs(1);
        gw.handle_timeout(now);
    }
    assert!(
        !connected,
        "dimpl's client now follows a second HelloVerifyRequest"
    );
}

#[test]
fn psk_file_format() {
    let table = PskTable::parse("# comment\n\n  dev1:00FFaa \r\nweird id:01\n").expect("valid");
    assert_eq!(
        table.identities().collect::<Vec<_>>(),
        vec!["dev1", "weird id"]
    );
    assert!(table.contains("dev1"));
    let debug = format!("{table:?}");
    assert!(
        !debug.contains("00ff") && !debug.contains("00FF"),
        "{debug}"
    );

    type Check = fn(&PskFileError) -> bool;
    let cases: [(&str, Check); 5] = [
        ("dev1:0011\nno separator\n", |e| {
            matches!(e, PskFileError::MissingSeparator { line: 2 })
        }),
        (":0011\n", |e| {
            matches!(e, PskFileError::EmptyIdentity { line: 1 })
        }),
        ("# x\ndev1:0g\n", |e| {
            matches!(e, PskFileError::BadKey { line: 2, .. })
        }),
        ("dev1:\n", |e| {
            matches!(e, PskFileError::KeyLength { line: 1, .. })
        }),
        ("dev1:00\n\ndev1:01\n", |e| {
            matches!(
                e,
                PskFileError::Duplicate {
                    line: 3,
                    first: 1,
                    ..
                }
            )
        }),
    ];
    for (text, expected) in cases {
        let error = PskTable::parse(text).expect_err(text);
        assert!(expected(&error), "{text:?}: {error:?}");
    }
    // Keys never appear in errors.
    let error = PskTable::parse("dev1:abcdef0\n").expect_err("odd digits");
    assert!(!error.to_string().contains("abcdef0"), "{error}");
    assert!(error.to_string().contains("line 1"), "{error}");
}

#[test]
fn frames_larger_than_the_mtu_go_in_one_record_up_to_the_record_limit() {
    let now = Instant::now();
    let mut gw = listener(settings());
    let peer = addr(17);
    let mut client = connect(&mut gw, peer, "dev1", &DEV1_KEY, 17, now);
    let _ = events(&mut gw);
    // The MTU bounds handshake flights; a frame is one record, IP fragments it if need be.
    let big = vec![0x5a; 1500];
    gw.send(peer, &big).expect("established");
    let (_, record) = gw.poll_transmit().expect("one record");
    assert!(record.len() > 1500);
    client.handle(&record);
    assert_eq!(client.received, vec![big.clone()]);
    let up = client.send(&big);
    gw.handle_datagram(now, peer, &up);
    assert!(matches!(&events(&mut gw)[..], [DtlsEvent::Frame { frame, .. }] if *frame == big));
    // Beyond 2^14 bytes: refused, and the association is unharmed.
    let huge = vec![0; (1 << 14) + 1];
    assert_eq!(
        gw.send(peer, &huge),
        Err(crate::transport::dtls::SendError::TooLarge { len: huge.len() })
    );
    assert!(gw.poll_transmit().is_none());
    assert_eq!(gw.identity(peer), Some(psk_identity("dev1")));
}

#[test]
fn debug_output_has_no_keys() {
    let now = Instant::now();
    let mut gw = listener(settings());
    connect(&mut gw, addr(18), "dev1", &DEV1_KEY, 18, now);
    let happened = events(&mut gw);
    let shown = format!("{:?} {gw:?} {happened:?}", settings());
    for key in [hex(&DEV1_KEY), hex(&DEV2_KEY)] {
        assert!(!shown.contains(&key), "{shown}");
    }
    assert!(shown.contains("dev1"), "identities are not secret: {shown}");
}
