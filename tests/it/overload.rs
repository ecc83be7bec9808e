//! The gateway under a misbehaving broker: protocol errors end the connection, and the
//! reconnects go through the backoff instead of a tight loop.

use mqttsn_gateway::config::Config;
use mqttsn_gateway::driver;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::time::timeout;

use crate::support::PATIENCE;

/// A "broker" that answers every connection with bytes no MQTT broker sends (a reserved
/// packet type): each is a protocol error, so the gateway drops the connection. It must come
/// back through the backoff: 100, 200, 400, 800 ms (each within ±20%) before the 2nd to 5th
/// connection, so five connections take at least 1.2 s. Without the backoff they took a few
/// milliseconds (thousands of connections a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_sending_garbage_is_reconnected_to_through_the_backoff() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let broker = listener.local_addr().unwrap();
    let config = Config::from_toml_str(
        &format!(
            "[[udp]]\nbind = \"127.0.0.1:0\"\n[upstream]\nurl = \"mqtt://{broker}\"\n\
             reconnect_min = \"100ms\"\nreconnect_max = \"10s\"\n"
        ),
        "test",
    )
    .unwrap();
    let gw = driver::start(config).await.unwrap();
    let mut first = None;
    let mut conns = Vec::new();
    for _ in 0..5 {
        let (mut conn, _) = timeout(PATIENCE, listener.accept())
            .await
            .expect("the gateway reconnects")
            .unwrap();
        first.get_or_insert_with(Instant::now);
        // Reserved packet type 0: "reserved packet type" from the gateway's reader.
        let _ = conn.write_all(&[0x00, 0x00]).await;
        conns.push(conn);
    }
    let elapsed = first.map(|t| t.elapsed()).unwrap_or_default();
    assert!(
        elapsed >= Duration::from_millis(1200),
        "five connections in {elapsed:?}: the reconnects did not back off"
    );
    gw.stop().await;
}
