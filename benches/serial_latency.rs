//! End-to-end latency over a serial line: a device on a pseudo-terminal (raw framing, port set
//! to 115200 baud) publishes QoS 1 through the gateway to its embedded broker, lock-step, and the
//! time from writing the PUBLISH to reading its PUBACK is measured. A pty does not pace bytes at
//! the baud rate, so the figure is the gateway's and the OS's share; the report adds what the
//! bytes would take on a real 115200-baud line (10 bits per byte). Run with
//! `cargo bench --bench serial_latency`.

use mqttsn_gateway::codec::{
    Connect, Message, PubAck, Publish, QoS, RegAck, Register, ReturnCode, TopicRef,
};
use mqttsn_gateway::config::Config;
use mqttsn_gateway::driver;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_serial::{SerialPort, SerialStream};

const ROUNDS: usize = 2000;

async fn read_frame(line: &mut SerialStream) -> Vec<u8> {
    let mut len = [0u8; 1];
    line.read_exact(&mut len).await.expect("read");
    let mut rest = vec![0u8; usize::from(len[0]) - 1];
    line.read_exact(&mut rest).await.expect("read");
    let mut frame = vec![len[0]];
    frame.extend_from_slice(&rest);
    frame
}

async fn reply(line: &mut SerialStream) -> Message<'static> {
    loop {
        let frame = read_frame(line).await;
        let msg = Message::decode(&frame)
            .expect("valid frame")
            .to_owned_static();
        if !matches!(msg, Message::Advertise(_)) {
            return msg;
        }
    }
}

trait Static {
    fn to_owned_static(self) -> Message<'static>;
}

impl Static for Message<'_> {
    /// Only the small acknowledgements are kept, which borrow nothing.
    fn to_owned_static(self) -> Message<'static> {
        match self {
            Message::ConnAck { return_code } => Message::ConnAck { return_code },
            Message::RegAck(a) => Message::RegAck(a),
            Message::PubAck(a) => Message::PubAck(a),
            Message::Advertise(a) => Message::Advertise(a),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (mut line, device) = SerialStream::pair().expect("openpty");
    let path = device.name().expect("pty name");
    let config = Config::from_toml_str(
        &format!(
            "udp = []\n[[serial]]\nport = \"{path}\"\nbaud = 115200\nframing = \"raw\"\n\
             [upstream]\nurl = \"embedded\"\nembedded_bind = \"127.0.0.1:0\"\n"
        ),
        "bench",
    )
    .expect("config");
    let gw = driver::start(config).await.expect("gateway");
    let connect = Message::Connect(Connect {
        will: false,
        clean_session: true,
        duration: 600,
        client_id: "pty-bench",
    })
    .to_vec()
    .expect("fits");
    loop {
        line.write_all(&connect).await.expect("write");
        if reply(&mut line).await
            == (Message::ConnAck {
                return_code: ReturnCode::Accepted,
            })
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let register = Message::Register(Register {
        topic_id: 0,
        msg_id: 1,
        topic_name: "bench/pty",
    });
    line.write_all(&register.to_vec().expect("fits"))
        .await
        .expect("write");
    let Message::RegAck(RegAck { topic_id, .. }) = reply(&mut line).await else {
        panic!("no REGACK")
    };
    let mut samples = Vec::with_capacity(ROUNDS);
    let mut frame_len = 0;
    for i in 0..ROUNDS {
        let msg_id = (i % 60_000) as u16 + 2;
        let publish = Message::Publish(Publish {
            dup: false,
            qos: QoS::One,
            retain: false,
            topic: TopicRef::Id(topic_id),
            msg_id,
            data: &[0x42; 16],
        })
        .to_vec()
        .expect("fits");
        frame_len = publish.len();
        let start = Instant::now();
        line.write_all(&publish).await.expect("write");
        let ack = reply(&mut line).await;
        samples.push(start.elapsed());
        assert!(matches!(
            ack,
            Message::PubAck(PubAck {
                return_code: ReturnCode::Accepted,
                ..
            })
        ));
    }
    samples.sort();
    let pct = |p: usize| samples[(samples.len() * p / 100).min(samples.len() - 1)];
    // On a real line: PUBLISH out and PUBACK (7 bytes) back, 10 bits per byte at 115200 baud.
    let wire = Duration::from_secs_f64((frame_len + 7) as f64 * 10.0 / 115_200.0);
    println!(
        "serial latency over a pty ({ROUNDS} lock-step QoS 1 PUBLISH -> PUBACK via the embedded broker): \
         p50 {:?}, p90 {:?}, p99 {:?}, max {:?}; add {:?} of wire time at 115200 baud for these {}+7 bytes",
        pct(50),
        pct(90),
        pct(99),
        samples[samples.len() - 1],
        wire,
        frame_len
    );
    drop(device);
    gw.stop().await;
}
