//! Resident memory of the engine per idle client: 100,000 devices connected in aggregating mode,
//! each with 2 registered topics, in two scenarios run as separate processes: every device
//! registering the same two names (shared through the interner), and every device registering
//! names of its own. Reads VmRSS from /proc (Linux) before and after; prints bytes per client.
//! Run with `cargo bench --bench engine_memory`.

use mqttsn_gateway::codec::{Connect, Message, Register};
use mqttsn_gateway::config::Config;
use mqttsn_gateway::engine::{ConnId, Gateway, PeerAddr, UpstreamEvent};
use mqttsn_gateway::hash::HashSeed;
use mqttsn_gateway::mqtt_v4::MQTT_V4;
use mqttsn_gateway::time::Instant;

fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

const SCENARIO: &str = "MQTTSN_MEMORY_SCENARIO";

fn main() {
    match std::env::var(SCENARIO).as_deref() {
        Ok("shared") => measure(true),
        Ok("unique") => measure(false),
        _ => {
            // Each scenario in a fresh process, so one's freed memory cannot hide the other's.
            let me = std::env::current_exe().expect("own path");
            for scenario in ["shared", "unique"] {
                let out = std::process::Command::new(&me)
                    .env(SCENARIO, scenario)
                    .output()
                    .expect("run scenario");
                print!("{}", String::from_utf8_lossy(&out.stdout));
            }
        }
    }
}

fn measure(shared_names: bool) {
    const CLIENTS: u32 = 100_000;
    let mut config = Config::default();
    config.gateway.max_clients = CLIENTS as usize;
    let mut gw = Gateway::new(config.engine_settings(HashSeed(1, 2)), &MQTT_V4);
    let t = Instant::ZERO;
    gw.handle_upstream(t, ConnId::GATEWAY, UpstreamEvent::Connected);
    gw.handle_upstream(t, ConnId::GATEWAY, UpstreamEvent::Data(&[0x20, 2, 0, 0]));
    let mut buf = Vec::with_capacity(64);
    let drain = |gw: &mut Gateway| {
        while gw.poll_transmit().is_some() {}
        while gw.poll_upstream().is_some() {}
        while gw.poll_event().is_some() {}
    };
    drain(&mut gw);
    let before = rss_bytes();
    for i in 0..CLIENTS {
        let peer = PeerAddr::udp(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 40000).into());
        let id = format!("sensor-{i:06}");
        let connect = Message::Connect(Connect {
            will: false,
            clean_session: true,
            duration: 3600,
            client_id: &id,
        });
        buf.clear();
        connect.encode(&mut buf).expect("fits");
        gw.handle_frame(t, peer, &buf);
        for (n, kind) in ["temperature", "humidity"].iter().enumerate() {
            let name = if shared_names {
                format!("sensors/{kind}")
            } else {
                format!("sensors/{i:06}/{kind}")
            };
            let reg = Message::Register(Register {
                topic_id: 0,
                msg_id: n as u16 + 1,
                topic_name: &name,
            });
            buf.clear();
            reg.encode(&mut buf).expect("fits");
            gw.handle_frame(t, peer, &buf);
        }
        drain(&mut gw);
    }
    let after = rss_bytes();
    assert_eq!(gw.client_count(), CLIENTS as usize);
    match (before, after) {
        (Some(b), Some(a)) => {
            let per_client = (a.saturating_sub(b)) as f64 / f64::from(CLIENTS);
            println!(
                "engine memory: {CLIENTS} idle clients x 2 topics ({} names, aggregating): {:.1} MiB, {per_client:.0} bytes per client",
                if shared_names { "shared" } else { "per-device" },
                (a - b) as f64 / (1024.0 * 1024.0)
            );
        }
        _ => println!("engine memory: /proc/self/status not available on this system"),
    }
}
