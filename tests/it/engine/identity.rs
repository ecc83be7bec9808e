//! Session takeover rules on the engine itself (issue 12, and a hostile review of it): a
//! session opened over DTLS belongs to the identity that opened it, whatever else arrives
//! from its address or names its ClientId; a listed device is not pushed aside by another
//! ClientId from its address; a PSK identity no psk_file holds any more proves nothing; QoS -1
//! from an address whose session has ended is connectionless.

use super::*;
use mqttsn_gateway::codec::{Connect, Message, Publish, QoS, TopicRef};
use mqttsn_gateway::engine::auth::Identity;
use mqttsn_gateway::engine::{ConnId, Link, PeerAddr, UpstreamCommand, UpstreamEvent};
use mqttsn_gateway::time::Instant;
use std::sync::Arc;

const CONNACK_OK: [u8; 3] = [0x03, 0x05, 0x00];
const CONNACK_REFUSED: [u8; 3] = [0x03, 0x05, 0x03];

fn gateway(toml: &str, psk_identities: &[&str]) -> Gateway {
    let config = Config::from_toml_str(toml, "test").unwrap();
    let seed = HashSeed(7, 7);
    let mut gw = Gateway::new(config.engine_settings(seed), &MQTT_V4);
    let ids = psk_identities.iter().map(|id| Arc::from(*id)).collect();
    let _ = gw.set_auth(Instant::ZERO, config.auth.load_policy(seed, ids).unwrap());
    gw.handle_upstream(Instant::ZERO, ConnId::GATEWAY, UpstreamEvent::Connected);
    gw.handle_upstream(
        Instant::ZERO,
        ConnId::GATEWAY,
        UpstreamEvent::Data(&[0x20, 0x02, 0x00, 0x00]),
    );
    let _ = drain(&mut gw);
    gw
}

/// The frames sent to devices and the bytes sent to the broker since the last call.
fn drain(gw: &mut Gateway) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let upstream = std::iter::from_fn(|| gw.poll_upstream())
        .filter_map(|c| match c {
            UpstreamCommand::Send(_, bytes) => Some(bytes.to_vec()),
            _ => None,
        })
        .collect();
    while gw.poll_event().is_some() {}
    let down = std::iter::from_fn(|| gw.poll_transmit())
        .map(|t| t.bytes)
        .collect();
    (down, upstream)
}

fn frame(
    gw: &mut Gateway,
    peer: PeerAddr,
    id: Option<&Identity>,
    msg: Message<'_>,
) -> Vec<Vec<u8>> {
    let bytes = msg.to_vec().unwrap();
    match id {
        Some(id) => gw.handle_secured_frame(Instant::from_millis(1), peer, id, &bytes),
        None => gw.handle_frame(Instant::from_millis(1), peer, &bytes),
    }
    drain(gw).0
}

fn connect(client_id: &str) -> Message<'_> {
    Message::Connect(Connect {
        will: false,
        clean_session: false,
        duration: 60,
        client_id,
    })
}

fn dtls(addr: &str) -> PeerAddr {
    PeerAddr::direct(Link::Dtls(addr.parse().unwrap()))
}

fn udp(addr: &str) -> PeerAddr {
    PeerAddr::udp(addr.parse().unwrap())
}

#[test]
fn another_association_at_the_same_address_does_not_inherit_the_session() {
    let mut gw = gateway("[auth]\nallow_anonymous = true\n", &["victim", "evil"]);
    let at = dtls("10.0.0.7:50000");
    let victim = Identity::Psk("victim".into());
    let evil = Identity::Psk("evil".into());
    assert_eq!(
        frame(&mut gw, at, Some(&victim), connect("victim")),
        [CONNACK_OK]
    );
    // The victim's association ended; another one at its address (NAT port reuse).
    let ping = Message::PingReq { client_id: None };
    let disconnect = Message::Disconnect { duration: None }.to_vec().unwrap();
    assert_eq!(
        frame(&mut gw, at, Some(&evil), ping),
        [disconnect],
        "not the victim's"
    );
    let named = Message::PingReq {
        client_id: Some("victim"),
    };
    assert_eq!(
        frame(&mut gw, at, Some(&evil), named),
        Vec::<Vec<u8>>::new()
    );
    // Its own CONNECT would push the victim aside: refused.
    assert_eq!(
        frame(&mut gw, at, Some(&evil), connect("evil")),
        [CONNACK_REFUSED]
    );
    // The victim still holds its session.
    let ping = Message::PingReq { client_id: None };
    assert_eq!(frame(&mut gw, at, Some(&victim), ping), [vec![0x02, 0x17]]);
    assert_eq!(gw.counters().not_authorized, 3);
}

#[test]
fn a_session_opened_with_a_certificate_is_not_taken_from_plain_udp() {
    let mut gw = gateway("[auth]\nallow_anonymous = true\n", &[]);
    let cam = Identity::Certificate(vec![Arc::from("cam-7")].into());
    let at = dtls("10.0.0.7:50000");
    assert_eq!(
        frame(&mut gw, at, Some(&cam), connect("cam-7")),
        [CONNACK_OK]
    );
    let plain = udp("10.9.9.9:4000");
    assert_eq!(
        frame(&mut gw, plain, None, connect("cam-7")),
        [CONNACK_REFUSED]
    );
    let other_cert = Identity::Certificate(vec![Arc::from("cam-7"), Arc::from("x")].into());
    assert_eq!(
        frame(
            &mut gw,
            dtls("10.0.0.8:1"),
            Some(&other_cert),
            connect("cam-7")
        ),
        [CONNACK_REFUSED],
        "another certificate naming the same ClientId"
    );
    // Its own identity from a new address (NAT rebinding): its session moves.
    assert_eq!(
        frame(
            &mut gw,
            dtls("10.0.0.7:50001"),
            Some(&cam),
            connect("cam-7")
        ),
        [CONNACK_OK]
    );
}

#[test]
fn a_listed_device_is_not_pushed_aside_by_another_client_id_from_its_address() {
    let mut gw = gateway(
        "[auth]\nallow_anonymous = true\n[[auth.client]]\nclient_id = \"meter\"\nnetworks = [\"10.0.0.0/24\"]\n",
        &[],
    );
    let at = udp("10.0.0.7:50000");
    assert_eq!(frame(&mut gw, at, None, connect("meter")), [CONNACK_OK]);
    assert_eq!(frame(&mut gw, at, None, connect("x")), [CONNACK_REFUSED]);
    let ping = Message::PingReq { client_id: None };
    assert_eq!(
        frame(&mut gw, at, None, ping),
        [vec![0x02, 0x17]],
        "still its session"
    );
}

#[test]
fn removing_a_psk_identity_disconnects_its_device() {
    let toml = "[auth]\nallow_anonymous = false\n";
    let mut gw = gateway(toml, &["dev-psk"]);
    let id = Identity::Psk("dev-psk".into());
    let at = dtls("10.0.0.7:50000");
    assert_eq!(
        frame(&mut gw, at, Some(&id), connect("dev-psk")),
        [CONNACK_OK]
    );
    let config = Config::from_toml_str(toml, "test").unwrap();
    let policy = config.auth.load_policy(HashSeed(7, 7), Vec::new()).unwrap();
    assert_eq!(gw.set_auth(Instant::from_millis(2), policy), [at]);
    let (down, _) = drain(&mut gw);
    assert_eq!(
        down,
        [Message::Disconnect { duration: None }.to_vec().unwrap()]
    );
}

#[test]
fn qos_minus1_from_an_ended_session_is_connectionless() {
    let mut gw = gateway(
        "[auth]\nallow_anonymous = true\nqos_minus1_from = [\"10.0.0.0/24\"]\n\
         [[predefined]]\nid = 2\ntopic = \"p/q\"\n",
        &[],
    );
    let far = udp("10.9.9.9:4000");
    assert_eq!(frame(&mut gw, far, None, connect("kept")), [CONNACK_OK]);
    let bye = Message::Disconnect { duration: None };
    let _ = frame(&mut gw, far, None, bye);
    let publish = Message::Publish(Publish {
        dup: false,
        qos: QoS::MinusOne,
        retain: false,
        topic: TopicRef::Predefined(2),
        msg_id: 0,
        data: b"x",
    });
    gw.handle_frame(Instant::from_millis(3), far, &publish.to_vec().unwrap());
    let (_, upstream) = drain(&mut gw);
    assert!(upstream.is_empty(), "forwarded: {upstream:02X?}");
    assert_eq!(gw.counters().acl_refused, 1);
}
