//! Hardware-in-the-loop tests: run on a Raspberry Pi (or any Linux box) with a real radio, on
//! purpose, never in CI. See `hil/README.md`.
//!
//! ```sh
//! MQTTSN_HIL_PORT=/dev/xbee-coordinator MQTTSN_HIL_FRAMING=xbee-api MQTTSN_HIL_API_MODE=2 \
//!   MQTTSN_HIL_BAUD=9600 cargo test --test hil -- --ignored --nocapture --test-threads=1
//! ```
//! Environment: `MQTTSN_HIL_PORT` (required), `MQTTSN_HIL_FRAMING` (`xbee-api`, `slip` or `raw`;
//! default `xbee-api`), `MQTTSN_HIL_API_MODE` (1 or 2, default 2), `MQTTSN_HIL_BAUD` (default
//! 9600), `MQTTSN_HIL_WAIT` (seconds, default 120). The tests share the port: run them one at a
//! time (`--test-threads=1`).
#![allow(clippy::unwrap_used)]

use mqttsn_gateway::config::Config;
use mqttsn_gateway::driver;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::time::Duration;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// The gateway on the real port, with an embedded broker on a free loopback port.
async fn gateway() -> driver::Running {
    let port = std::env::var("MQTTSN_HIL_PORT")
        .expect("MQTTSN_HIL_PORT names the serial port of the radio (see hil/README.md)");
    let framing = env("MQTTSN_HIL_FRAMING", "xbee-api");
    let extra = match framing.as_str() {
        "xbee-api" => format!("xbee_api_mode = {}\n", env("MQTTSN_HIL_API_MODE", "2")),
        _ => String::new(),
    };
    let toml = format!(
        "udp = []\n[[serial]]\nport = \"{port}\"\nbaud = {}\nframing = \"{framing}\"\n{extra}\
         [upstream]\nurl = \"embedded\"\nembedded_bind = \"127.0.0.1:0\"\n",
        env("MQTTSN_HIL_BAUD", "9600")
    );
    let config = Config::from_toml_str(&toml, "hil").unwrap();
    driver::start(config).await.unwrap()
}

fn wait() -> Duration {
    Duration::from_secs(env("MQTTSN_HIL_WAIT", "120").parse().unwrap_or(120))
}

/// A node on the radio connects and publishes: whatever it publishes reaches the broker.
/// Reset or power-cycle a node after starting the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real radio: set MQTTSN_HIL_PORT (see hil/README.md)"]
async fn a_radio_node_publishes_through_the_gateway() {
    let gw = gateway().await;
    let mut options = MqttOptions::new("hil-watch", "127.0.0.1", gw.broker_addr().port());
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(options, 100);
    client.subscribe("#", QoS::AtLeastOnce).await.unwrap();
    eprintln!("waiting up to {:?} for a radio node to publish...", wait());
    let seen = tokio::time::timeout(wait(), async {
        loop {
            if let Ok(Event::Incoming(Packet::Publish(p))) = events.poll().await {
                return p;
            }
        }
    })
    .await
    .expect("a message from a radio node in time");
    eprintln!("received {} {:?}", seen.topic, seen.payload);
    gw.stop().await;
}

/// A node subscribed to `hil/cmd/#` gets a command published at the broker (retained, so it
/// arrives whenever the node subscribes). Check the node's output for `ping`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real radio: set MQTTSN_HIL_PORT (see hil/README.md)"]
async fn a_command_reaches_a_radio_node() {
    let gw = gateway().await;
    let options = MqttOptions::new("hil-cmd", "127.0.0.1", gw.broker_addr().port());
    let (client, mut events) = AsyncClient::new(options, 100);
    client
        .publish("hil/cmd/all", QoS::AtLeastOnce, true, "ping")
        .await
        .unwrap();
    eprintln!(
        "published retained 'ping' on hil/cmd/all; watch the node for {:?}",
        wait()
    );
    let _ = tokio::time::timeout(wait(), async {
        loop {
            let _ = events.poll().await;
        }
    })
    .await;
    gw.stop().await;
}
