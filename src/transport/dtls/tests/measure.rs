//! Measurements, run by hand in release mode:
//! `cargo test --release --lib transport::dtls::tests::measure -- --ignored --nocapture --test-threads=1`
//! The client is `PskClient`, in the same process, on virtual time; the listener's share of
//! the time is measured separately from the client's.

use std::time::{Duration, Instant};

use super::*;
use mqttsn_dtls_client::{PskClient, State};

/// Completes one PSK handshake and returns the time spent inside the listener.
fn timed_handshake(gw: &mut DtlsListener, peer: SocketAddr, seed: u8, now: Instant) -> Duration {
    let mut client = PskClient::new("dev1", &DEV1_KEY, seed);
    let mut to_listener = vec![client.start()];
    let mut inside = Duration::ZERO;
    while !to_listener.is_empty() {
        let started = Instant::now();
        for datagram in to_listener.drain(..) {
            gw.handle_datagram(now, peer, &datagram);
        }
        let replies: Vec<Vec<u8>> =
            std::iter::from_fn(|| gw.poll_transmit().map(|(_, d)| d)).collect();
        while gw.poll_event().is_some() {}
        inside += started.elapsed();
        for reply in replies {
            to_listener.extend(client.handle(&reply));
        }
    }
    assert_eq!(client.state, State::Connected);
    inside
}

#[test]
#[ignore = "a measurement: run by hand in release mode"]
fn psk_handshakes_per_second() {
    const N: u32 = 3000;
    let now = Instant::now();
    let mut gw = listener(DtlsSettings {
        max_associations: N as usize + 1,
        ..settings()
    });
    let started = Instant::now();
    let mut inside = Duration::ZERO;
    for n in 0..N {
        inside += timed_handshake(&mut gw, addr(n), n as u8, now);
    }
    let total = started.elapsed();
    assert_eq!(gw.associations(), N as usize);
    println!(
        "{N} PSK handshakes: {:.0}/s with the client in the loop, {:.0}/s of listener time ({:.1} µs each)",
        f64::from(N) / total.as_secs_f64(),
        f64::from(N) / inside.as_secs_f64(),
        inside.as_secs_f64() * 1e6 / f64::from(N),
    );
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
#[ignore = "a measurement: run by hand in release mode"]
fn memory_per_established_association() {
    const N: u32 = 10_000;
    let now = Instant::now();
    let mut gw = listener(DtlsSettings {
        max_associations: N as usize + 1,
        ..settings()
    });
    // Warm up the allocator and the listener's own buffers first.
    timed_handshake(&mut gw, addr(N + 1), 0, now);
    let before = rss_kib();
    for n in 0..N {
        timed_handshake(&mut gw, addr(n), n as u8, now);
    }
    let after = rss_kib();
    assert_eq!(gw.associations(), N as usize + 1);
    println!(
        "VmRSS {before} KiB -> {after} KiB for {N} established PSK associations: about {:.1} KiB each",
        (after.saturating_sub(before)) as f64 / f64::from(N)
    );
    // Idle ones, half-open ones: how much a cookie-verified handshake holds.
    let before = rss_kib();
    let mut half = listener(DtlsSettings {
        max_associations: N as usize,
        max_handshakes: N as usize,
        ..settings()
    });
    for n in 0..N {
        let mut client = PskClient::new("dev1", &DEV1_KEY, n as u8);
        let hello = client.start();
        half.handle_datagram(now, addr(n), &hello);
        let (_, reply) = half.poll_transmit().expect("HelloVerifyRequest");
        let second = client.handle(&reply).pop().expect("second hello");
        half.handle_datagram(now, addr(n), &second);
        while half.poll_transmit().is_some() {}
    }
    let after = rss_kib();
    assert_eq!(half.associations(), N as usize);
    println!(
        "VmRSS {before} KiB -> {after} KiB for {N} half-open handshakes: about {:.1} KiB each",
        (after.saturating_sub(before)) as f64 / f64::from(N)
    );
}

#[test]
#[ignore = "a measurement: run by hand in release mode"]
fn listener_construction_cost() {
    let started = Instant::now();
    for _ in 0..20 {
        let _ = listener(settings());
    }
    println!(
        "DtlsListener::new: {:.2} ms each",
        started.elapsed().as_secs_f64() * 1e3 / 20.0
    );
}
