//! Tests of the DTLS listener: virtual-time tests against a small PSK client of our own
//! (the `mqttsn-dtls-client` crate), interoperability with `openssl s_client` (`interop.rs`), and `#[ignore]`d
//! measurements (`measure.rs`).

mod interop;
mod measure;
mod unit;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{DtlsEvent, DtlsListener, DtlsSettings, PskTable};
use mqttsn_dtls_client::PskClient;

pub(super) const DEV1_KEY: [u8; 16] = [0x11; 16];
pub(super) const DEV2_KEY: [u8; 16] = [0x22; 16];

pub(super) fn table() -> Arc<PskTable> {
    let text = format!(
        "# devices\ndev1:{}\n\ndev2:{}\n",
        hex(&DEV1_KEY),
        hex(&DEV2_KEY)
    );
    Arc::new(PskTable::parse(&text).expect("valid table"))
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn settings() -> DtlsSettings {
    DtlsSettings {
        handshake_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        ..DtlsSettings::psk_only(table())
    }
}

pub(super) fn listener(settings: DtlsSettings) -> DtlsListener {
    DtlsListener::new(settings, [7; 32]).expect("valid settings")
}

pub(super) fn addr(n: u32) -> SocketAddr {
    SocketAddr::from((
        Ipv4Addr::from(0x0a00_0000 | (n >> 8)),
        40_000 + (n & 0xff) as u16,
    ))
}

/// Drives a client and the listener against each other at `now` until neither has anything
/// more to send; returns the events.
pub(super) fn exchange(
    listener: &mut DtlsListener,
    client: &mut PskClient,
    peer: SocketAddr,
    now: Instant,
    first: Vec<u8>,
) -> Vec<DtlsEvent> {
    let mut to_listener = vec![first];
    for _ in 0..16 {
        if to_listener.is_empty() {
            break;
        }
        for datagram in to_listener.drain(..) {
            listener.handle_datagram(now, peer, &datagram);
        }
        while let Some((to, datagram)) = listener.poll_transmit() {
            assert_eq!(to, peer, "datagram for another peer");
            to_listener.extend(client.handle(&datagram));
        }
    }
    events(listener)
}

pub(super) fn events(listener: &mut DtlsListener) -> Vec<DtlsEvent> {
    std::iter::from_fn(|| listener.poll_event()).collect()
}

/// A PSK client connected to `listener` at `now`.
pub(super) fn connect(
    listener: &mut DtlsListener,
    peer: SocketAddr,
    identity: &str,
    key: &[u8],
    seed: u8,
    now: Instant,
) -> PskClient {
    let mut client = PskClient::new(identity, key, seed);
    let hello = client.start();
    let events = exchange(listener, &mut client, peer, now, hello);
    assert_eq!(
        client.state,
        mqttsn_dtls_client::State::Connected,
        "events: {events:?}"
    );
    client
}
