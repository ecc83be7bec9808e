//! Pool tests against real sockets on 127.0.0.1: a `TcpListener` (or a tokio-rustls acceptor)
//! plays the broker. Tests synchronise on events and socket reads; the time limits only turn a
//! hang into a failure.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

use super::*;

const C: ConnId = ConnId(7);

/// A safety net so that a broken test fails instead of hanging; never used to synchronise.
const LIMIT: Duration = Duration::from_secs(10);

type Events = mpsc::Receiver<(ConnId, ConnEvent)>;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn tcp_settings(port: u16) -> UpstreamSettings {
    UpstreamSettings {
        target: Target::Tcp {
            host: "127.0.0.1".to_owned(),
            port,
        },
        reconnect_min: ms(2),
        reconnect_max: ms(20),
        max_queued_bytes: 256 * 1024,
    }
}

fn new_pool(settings: UpstreamSettings) -> (UpstreamPool, Events) {
    let (events, receiver) = mpsc::channel(64);
    (UpstreamPool::new(settings, events), receiver)
}

async fn listen() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

async fn accept(listener: &TcpListener) -> TcpStream {
    let (stream, _) = timeout(LIMIT, listener.accept())
        .await
        .expect("the pool did not connect")
        .unwrap();
    stream
}

async fn next(events: &mut Events) -> (ConnId, ConnEvent) {
    timeout(LIMIT, events.recv())
        .await
        .expect("no event")
        .expect("events channel closed")
}

/// Gathers `Data` events for `C` until `n` bytes have arrived.
async fn data(events: &mut Events, n: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < n {
        match next(events).await {
            (C, ConnEvent::Data(chunk)) => got.extend_from_slice(&chunk),
            other => panic!("expected data, got {other:?}"),
        }
    }
    assert_eq!(got.len(), n);
    got
}

async fn read_n(stream: &mut (impl AsyncRead + Unpin), n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    timeout(LIMIT, stream.read_exact(&mut buf))
        .await
        .expect("broker read timed out")
        .unwrap();
    buf
}

/// Reads everything the pool writes until it closes its side, then drops the broker's socket
/// (which lets a closing task finish at once instead of waiting for its close timeout).
fn read_to_end<S: AsyncRead + Unpin + Send + 'static>(
    mut stream: S,
) -> tokio::task::JoinHandle<Vec<u8>> {
    tokio::spawn(async move {
        let mut all = Vec::new();
        timeout(LIMIT, stream.read_to_end(&mut all))
            .await
            .expect("the pool did not close")
            .unwrap();
        all
    })
}

/// The pool's side of `stream` is gone: end of stream or a reset.
async fn assert_dropped(stream: &mut TcpStream) {
    let mut buf = [0; 64];
    loop {
        match timeout(LIMIT, stream.read(&mut buf))
            .await
            .expect("the connection stayed open")
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Shuts the pool down and checks that no event was left unread: in particular no
/// `Disconnected` after a close or abort.
async fn shutdown_quietly(pool: UpstreamPool, mut events: Events) {
    timeout(LIMIT, pool.shutdown())
        .await
        .expect("shutdown hung");
    assert_eq!(events.recv().await, None);
}

#[tokio::test]
async fn connects_and_moves_bytes_both_ways_in_order() {
    let (listener, port) = listen().await;
    let (mut pool, mut events) = new_pool(tcp_settings(port));
    assert!(pool.is_empty());
    pool.open(C);
    pool.open(C);
    assert_eq!(pool.len(), 1);
    let mut broker = accept(&listener).await;
    assert_eq!(next(&mut events).await, (C, ConnEvent::Connected));

    pool.send(C, Bytes::from_static(b"hello "));
    pool.send(C, Bytes::from_static(b"world"));
    pool.send(ConnId(99), Bytes::from_static(b"nobody"));
    assert_eq!(read_n(&mut broker, 11).await, b"hello world");

    broker.write_all(b"abc").await.unwrap();
    broker.write_all(b"def").await.unwrap();
    assert_eq!(data(&mut events, 6).await, b"abcdef");
    // More than one read's worth arrives complete and in order.
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    broker.write_all(&big).await.unwrap();
    assert_eq!(data(&mut events, big.len()).await, big);

    let rest = read_to_end(broker);
    pool.close(C);
    assert!(pool.is_empty());
    assert_eq!(rest.await.unwrap(), b"");
    shutdown_quietly(pool, events).await;
}

#[tokio::test]
async fn broker_close_reports_disconnected_then_reconnects() {
    let (listener, port) = listen().await;
    let (mut pool, mut events) = new_pool(tcp_settings(port));
    pool.open(C);
    let first = accept(&listener).await;
    assert_eq!(next(&mut events).await, (C, ConnEvent::Connected));
    drop(first);
    assert_eq!(next(&mut events).await, (C, ConnEvent::Disconnected));

    let mut second = accept(&listener).await;
    assert_eq!(next(&mut events).await, (C, ConnEvent::Connected));
    pool.send(C, Bytes::from_static(b"again"));
    assert_eq!(read_n(&mut second, 5).await, b"again");
    second.write_all(b"ok").await.unwrap();
    assert_eq!(data(&mut events, 2).await, b"ok");

    let rest = read_to_end(second);
    pool.close(C);
    assert_eq!(rest.await.unwrap(), b"");
    shutdown_quietly(pool, events).await;
}

#[tokio::test]
async fn unreachable_broker_is_reported_once_then_connects() {
    // A port nobody listens on, that we can listen on later.
    let (listener, port) = listen().await;
    drop(listener);
    let (mut pool, mut events) = new_pool(tcp_settings(port));
    pool.open(C);
    assert_eq!(next(&mut events).await, (C, ConnEvent::Disconnected));

    // Let several retries (2 ms, 4 ms, ... apart) fail. This sleep creates the situation under
    // test; nothing waits on it for synchronisation.
    tokio::time::sleep(ms(60)).await;
    // Nothing is up, so this is discarded rather than sent once the broker appears.
    pool.send(C, Bytes::from_static(b"stale"));

    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let broker = accept(&listener).await;
    // The failed retries were not reported: the next event is the connect.
    assert_eq!(next(&mut events).await, (C, ConnEvent::Connected));
    pool.send(C, Bytes::from_static(b"fresh"));
    let received = read_to_end(broker);
    pool.close(C);
    assert_eq!(received.await.unwrap(), b"fresh");
    shutdown_quietly(pool, events).await;
}

#[tokio::test]
async fn close_while_down_stops_retrying() {
    let (listener, port) = listen().await;
    drop(listener);
    let (mut pool, mut events) = new_pool(tcp_settings(port));
    pool.open(C);
    assert_eq!(next(&mut events).await, (C, ConnEvent::Disconnected));
    pool.close(C);
    shutdown_quietly(pool, events).await;
}

#[tokio::test]
async fn close_flushes_everything_queued_then_ends() {
    let (listener, port) = listen().await;
    let (mut pool, mut events) = new_pool(tcp_settings(port));
    pool.open(C);
    let broker = accept(&listener).await;
    assert_eq!(next(&mut events).await, (C, ConnEvent::Connected));

    let mut expected = Vec::new();
    for i in 0..100u8 {
        let chunk = vec![i; 1000];
        expected.extend_from_slice(&chunk);
        pool.send(C, Bytes::from(chunk));
    }
    // Closed while (most of) those bytes are still queued.
    pool.close(C);
    assert!(pool.is_empty());
    let received = read_to_end(broker).await.unwrap();
    assert!(received == expected, "got {} bytes", received.len());
    shutdown_quietly(pool, events).await;
}

#[tokio::test]
async fn abort_drops_the_connection_without_reconnecting() {
    let (listener, port) = listen().await;
    let (mut pool, mut events) = new_pool(tcp_settings(port));
    pool.open(C);
    let mut broker = accept(&listener).await;
    assert_eq!(next(&mut events).await, (C, ConnEvent::Connected));
    pool.abort(C);
    assert!(pool.is_empty());
    assert_dropped(&mut broker).await;
    // No Disconnected, and no reconnect (which would report Connected).
    shutdown_quietly(pool, events).await;
}

#[tokio::test]
async fn a_slow_broker_congests_the_queue_then_it_drains_without_a_reconnect() {
    let (listener, port) = listen().await;
    let (mut pool, mut events) = new_pool(tcp_settings(port));
    pool.open(C);
    // This broker reads nothing at first: the socket buffers fill, then the task's queue.
    let mut broker = accept(&listener).await;
    assert_eq!(next(&mut events).await, (C, ConnEvent::Connected));

    let chunk = Bytes::from(vec![0x55; 16 * 1024]);
    let mut sent = 0usize;
    loop {
        let pressure = pool.send(C, chunk.clone());
        sent += chunk.len();
        if pressure == Pressure::Congested {
            break;
        }
        assert!(sent < 64 * 1024 * 1024, "the queue never congested");
        tokio::task::yield_now().await;
    }
    assert!(pool.is_congested(C));
    // Reported once: more sends while congested say nothing new.
    assert_eq!(pool.send(C, chunk.clone()), Pressure::Fine);
    sent += chunk.len();
    assert!(events.try_recv().is_err(), "no event (no reconnect) yet");

    // The broker catches up: every byte arrives, in order, on the same connection, and the
    // queue is reported drained.
    let reader = tokio::spawn(async move {
        let mut got = vec![0u8; sent];
        broker.read_exact(&mut got).await.map(|_| (broker, got))
    });
    assert_eq!(next(&mut events).await, (C, ConnEvent::Drained));
    assert!(!pool.is_congested(C), "a Drained the driver can trust");
    let (broker, got) = timeout(LIMIT, reader).await.unwrap().unwrap().unwrap();
    assert!(got.iter().all(|&b| b == 0x55));
    pool.close(C);
    drop(broker);
    shutdown_quietly(pool, events).await;
}

#[tokio::test]
async fn a_queue_far_over_its_bound_drops_the_connection_and_reconnects_clean() {
    let (listener, port) = listen().await;
    let (mut pool, mut events) = new_pool(tcp_settings(port));
    pool.open(C);
    // This broker never reads, and the sender ignores the congestion report.
    let stuck = accept(&listener).await;
    assert_eq!(next(&mut events).await, (C, ConnEvent::Connected));

    let chunk = Bytes::from(vec![0x55; 64 * 1024]);
    let mut sends = 0;
    loop {
        pool.send(C, chunk.clone());
        sends += 1;
        assert!(sends < 20_000, "the queue was never given up on");
        match events.try_recv() {
            Ok((C, ConnEvent::Disconnected)) => break,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => tokio::task::yield_now().await,
        }
    }

    let broker = accept(&listener).await;
    assert_eq!(next(&mut events).await, (C, ConnEvent::Connected));
    // Nothing queued for the dropped connection leaks into the new one.
    pool.send(C, Bytes::from_static(b"CONNECT"));
    let received = read_to_end(broker);
    pool.close(C);
    assert_eq!(received.await.unwrap(), b"CONNECT");
    drop(stuck);
    shutdown_quietly(pool, events).await;
}

#[tokio::test]
async fn task_ends_when_the_driver_is_gone() {
    let (listener, port) = listen().await;
    let (mut pool, mut events) = new_pool(tcp_settings(port));
    pool.open(C);
    let mut broker = accept(&listener).await;
    assert_eq!(next(&mut events).await, (C, ConnEvent::Connected));
    drop(events);
    // The task cannot report this, so it ends and its socket closes.
    broker.write_all(b"x").await.unwrap();
    assert_dropped(&mut broker).await;
    timeout(LIMIT, pool.shutdown())
        .await
        .expect("shutdown hung");
}

#[tokio::test]
async fn shutdown_flushes_and_closes_every_connection() {
    let (listener, port) = listen().await;
    let (mut pool, mut events) = new_pool(tcp_settings(port));
    let (a, b) = (ConnId(1), ConnId(2));
    pool.open(a);
    pool.open(b);
    let first = accept(&listener).await;
    let second = accept(&listener).await;
    let mut connected = vec![next(&mut events).await, next(&mut events).await];
    connected.sort_by_key(|(conn, _)| *conn);
    assert_eq!(
        connected,
        [(a, ConnEvent::Connected), (b, ConnEvent::Connected)]
    );
    pool.send(a, Bytes::from_static(b"to a"));
    pool.send(b, Bytes::from_static(b"to b"));
    let (first, second) = (read_to_end(first), read_to_end(second));
    shutdown_quietly(pool, events).await;
    let mut received = vec![first.await.unwrap(), second.await.unwrap()];
    received.sort();
    assert_eq!(received, [b"to a".to_vec(), b"to b".to_vec()]);
}

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/transport/upstream/testdata")
        .join(name)
}

/// A TLS broker: certificate for `localhost` and 127.0.0.1 from the test CA, and client
/// certificates required from the same CA.
fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(testdata("ca.pem")).unwrap())
        .unwrap();
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone())
            .build()
            .unwrap();
    let chain = vec![CertificateDer::from_pem_file(testdata("leaf.pem")).unwrap()];
    let key = PrivateKeyDer::from_pem_file(testdata("leaf.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

#[tokio::test]
async fn tls_with_ca_file_and_client_certificate() {
    let (listener, port) = listen().await;
    let config = UpstreamConfig {
        // A name, not an address: it must resolve, and match the certificate. If it also
        // resolves to ::1, where nothing listens, the next address is tried.
        url: UpstreamUrl::Tls {
            host: "localhost".to_owned(),
            port,
        },
        ca_file: Some(testdata("ca.pem")),
        client_cert: Some(testdata("leaf.pem")),
        client_key: Some(testdata("leaf.key")),
        reconnect_min: crate::time::Duration::from_millis(2),
        reconnect_max: crate::time::Duration::from_millis(20),
        ..UpstreamConfig::default()
    };
    let settings = UpstreamSettings::from_config(&config).unwrap();
    let (mut pool, mut events) = new_pool(settings);
    pool.open(C);
    let tcp = accept(&listener).await;
    let mut broker = timeout(LIMIT, tls_acceptor().accept(tcp))
        .await
        .expect("handshake hung")
        .unwrap();
    assert!(broker.get_ref().1.peer_certificates().is_some());
    assert_eq!(next(&mut events).await, (C, ConnEvent::Connected));

    pool.send(C, Bytes::from_static(b"ping"));
    assert_eq!(read_n(&mut broker, 4).await, b"ping");
    broker.write_all(b"pong").await.unwrap();
    broker.flush().await.unwrap();
    assert_eq!(data(&mut events, 4).await, b"pong");

    pool.send(C, Bytes::from_static(b"bye"));
    pool.close(C);
    // Ends cleanly: the client's close_notify makes this an end of stream, not an error.
    assert_eq!(read_to_end(broker).await.unwrap(), b"bye");
    shutdown_quietly(pool, events).await;
}

#[test]
fn settings_from_config() {
    let tcp = UpstreamConfig {
        url: UpstreamUrl::Tcp {
            host: "broker.local".to_owned(),
            port: 1884,
        },
        reconnect_min: crate::time::Duration::from_millis(250),
        reconnect_max: crate::time::Duration::from_secs(30),
        ..UpstreamConfig::default()
    };
    let settings = UpstreamSettings::from_config(&tcp).unwrap();
    assert_eq!(settings.reconnect_min, ms(250));
    assert_eq!(settings.reconnect_max, Duration::from_secs(30));
    assert!(matches!(settings.target, Target::Tcp { port: 1884, .. }));
    assert_eq!(settings.target.to_string(), "mqtt://broker.local:1884");

    let embedded = |bind: &str| {
        let config = UpstreamConfig {
            url: UpstreamUrl::Embedded,
            embedded_bind: bind.parse().unwrap(),
            ..UpstreamConfig::default()
        };
        UpstreamSettings::from_config(&config)
            .unwrap()
            .target
            .to_string()
    };
    assert_eq!(embedded("0.0.0.0:1883"), "mqtt://127.0.0.1:1883");
    assert_eq!(embedded("[::]:1885"), "mqtt://[::1]:1885");
    assert_eq!(embedded("10.1.2.3:1886"), "mqtt://10.1.2.3:1886");

    // System roots: whatever the host trusts.
    let tls = UpstreamConfig {
        url: UpstreamUrl::Tls {
            host: "broker.example.com".to_owned(),
            port: 8883,
        },
        ..UpstreamConfig::default()
    };
    let settings = UpstreamSettings::from_config(&tls).unwrap();
    match &settings.target {
        Target::Tls { server_name, .. } => {
            assert_eq!(server_name.to_str(), "broker.example.com");
        }
        other => panic!("expected TLS, got {other:?}"),
    }
    assert_eq!(
        settings.target.to_string(),
        "mqtts://broker.example.com:8883"
    );

    let missing_ca = UpstreamConfig {
        ca_file: Some(testdata("absent.pem")),
        ..tls
    };
    let err = UpstreamSettings::from_config(&missing_ca).unwrap_err();
    assert!(err.to_string().contains("absent.pem"), "{err}");
}

/// A connection the engine aborts and reopens (a protocol error from the broker) comes back
/// through the backoff, doubling each time, not at once: a broker that keeps sending garbage is
/// not reconnected to in a loop.
#[test]
fn reopening_an_aborted_connection_goes_through_the_backoff() {
    let settings = UpstreamSettings {
        reconnect_min: ms(100),
        reconnect_max: Duration::from_secs(60),
        ..tcp_settings(1)
    };
    let (mut pool, _events) = new_pool(settings);
    // Never aborted: no delay.
    assert_eq!(pool.reopen_delay(C), None);
    let mut delays = Vec::new();
    for _ in 0..6 {
        pool.abort(C);
        delays.push(pool.reopen_delay(C).expect("a delay after an abort"));
    }
    // 100 ms, 200 ms, ... each within the ±20% jitter, capped at reconnect_max.
    for (i, delay) in delays.iter().enumerate() {
        let base = ms(100 * (1 << i));
        assert!(
            *delay >= base * 4 / 5 && *delay <= base * 6 / 5,
            "delay {i}: {delay:?} for a base of {base:?}"
        );
    }
    // Another connection has a backoff of its own.
    pool.abort(ConnId(8));
    let other = pool.reopen_delay(ConnId(8)).unwrap();
    assert!(other <= ms(120), "{other:?}");
}

/// The aborts remembered for the backoff are bounded: old ones are pruned as the map grows.
#[test]
fn remembered_aborts_are_pruned() {
    let settings = UpstreamSettings {
        reconnect_min: ms(1),
        reconnect_max: ms(1),
        ..tcp_settings(1)
    };
    let (mut pool, _events) = new_pool(settings);
    for i in 0..10_000 {
        pool.abort(ConnId(1000 + i));
        if i % 100 == 0 {
            // Let the earlier ones age past twice reconnect_max.
            std::thread::sleep(ms(3));
        }
    }
    assert!(
        pool.aborted.len() < 400,
        "{} aborts remembered",
        pool.aborted.len()
    );
}
