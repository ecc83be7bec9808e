//! Third-party MQTT-SN clients against the real gateway and a real Mosquitto: the command-line
//! tools of the PyPI `mqtt-sn-12` package (a port of the widely used mqtt-sn-tools), run as
//! child processes exactly as a user would run them. `.ci/run` installs the package.

use crate::support::mosquitto::Mosquitto;
use crate::support::mqtt::Client;
use mqttsn_gateway::driver;
use rumqttc::QoS as MqttQoS;
use std::process::Command;

fn python_tool(module: &str, args: &[String]) -> std::process::Output {
    let out = Command::new("python3")
        .arg("-m")
        .arg(module)
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{module} {args:?} failed: {}\n{}\n(is the client installed? python3 -m pip install mqtt-sn-12)",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

async fn start(broker: &Mosquitto) -> driver::Running {
    driver::start(broker.gateway_config("")).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_sn_pub_at_every_qos_reaches_the_broker() {
    let broker = Mosquitto::start();
    let mut sub = Client::connect(broker.port(), "interop-watch").await;
    sub.subscribe("#", MqttQoS::AtLeastOnce).await;
    let gw = start(&broker).await;
    let port = gw.udp_addrs()[0].port().to_string();
    for qos in ["0", "1", "2"] {
        let args: Vec<String> = [
            "-p",
            &port,
            "-t",
            "interop/temp",
            "-m",
            &format!("q{qos}"),
            "-q",
            qos,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // The tool blocks on its socket: run it off the async threads.
        tokio::task::spawn_blocking(move || python_tool("mqttsn12.mqtt_sn_pub", &args))
            .await
            .unwrap();
        let m = sub.next().await;
        assert_eq!(
            (m.topic.as_str(), m.payload),
            ("interop/temp", format!("q{qos}").into_bytes())
        );
    }
    // QoS -1 needs a short or predefined topic: a two-character name.
    let args: Vec<String> = ["-p", &port, "-t", "ab", "-m", "q-1", "-q", "-1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    tokio::task::spawn_blocking(move || python_tool("mqttsn12.mqtt_sn_pub", &args))
        .await
        .unwrap();
    let m = sub.next().await;
    assert_eq!((m.topic.as_str(), &m.payload[..]), ("ab", &b"q-1"[..]));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_sn_sub_receives_through_a_wildcard() {
    let broker = Mosquitto::start();
    let mut publisher = Client::connect(broker.port(), "interop-pub").await;
    // Retained, so it is delivered when the tool's subscription arrives, whenever that is.
    publisher
        .publish("interop/cmd/led", MqttQoS::AtLeastOnce, true, b"on")
        .await;
    let gw = start(&broker).await;
    let port = gw.udp_addrs()[0].port().to_string();
    let args: Vec<String> = ["-p", &port, "-t", "interop/cmd/#", "-1", "-q", "1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let out = tokio::task::spawn_blocking(move || python_tool("mqttsn12.mqtt_sn_sub", &args))
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "on");
    gw.stop().await;
}
