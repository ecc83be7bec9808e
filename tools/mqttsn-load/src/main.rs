//! `mqttsn-load`: load generator and benchmark for the MQTT-SN gateway.
//!
//! Modes:
//! - `publish`: N simulated MQTT-SN devices (one UDP socket each) publish through the gateway;
//!   an MQTT subscriber on the broker counts arrivals, duplicates and gaps and measures latency.
//! - `direct`: the same load published straight to the broker over MQTT, for comparison.
//! - `connect-storm`: N devices CONNECT at once; connects/s, CONNECT->CONNACK latency, memory.
//! - `downstream`: N devices subscribe through the gateway; an MQTT publisher sends to them.
//!
//! Every run prints the exact parameters, a results block and one `summary:` line.

mod common;
mod direct;
mod downstream;
mod payload;
mod publish;
mod sn;
mod soak;
mod stats;
mod storm;
mod subscriber;

use clap::{Args, Parser, Subcommand};
use common::{parse_broker, RunLength, Watched};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

/// Load generator and benchmark for mqttsn-gateway.
#[derive(Parser)]
#[command(name = "mqttsn-load", version)]
struct Cli {
    /// Tokio worker threads of the load generator.
    #[arg(long, global = true, default_value_t = 2)]
    threads: usize,
    /// No per-second progress lines on stderr.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// publish, direct: also write the results as JSON to this file (rates, counts, and the
    /// latency distributions for CDF plots).
    #[arg(long, global = true)]
    json: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// MQTT-SN devices publish through the gateway; an MQTT subscriber counts arrivals.
    Publish(PublishArgs),
    /// MQTT clients publish straight to the broker (the same load, for comparison).
    Direct(DirectArgs),
    /// N devices CONNECT at once; connects/s and CONNECT->CONNACK latency.
    ConnectStorm(StormArgs),
    /// MQTT-SN devices subscribe through the gateway; an MQTT publisher sends to them.
    Downstream(DownstreamArgs),
    /// Many devices for a long time: QoS 0 and 1 messages, sleep cycles, the gateway's VmRSS.
    Soak(SoakArgs),
}

#[derive(Args, Clone)]
struct SoakArgs {
    /// The gateway's UDP address.
    #[arg(long)]
    gateway: SocketAddr,
    /// The broker, HOST:PORT, for the subscriber.
    #[arg(long)]
    broker: String,
    /// Simulated devices, each with its own UDP socket.
    #[arg(long, default_value_t = 10_000)]
    devices: u32,
    /// Seconds to run.
    #[arg(long, default_value_t = 1800.0)]
    duration: f64,
    /// Seconds between two messages of one device (±20 %).
    #[arg(long, default_value_t = 10.0)]
    period: f64,
    /// Seconds a sleeping device (every third) sleeps per cycle.
    #[arg(long, default_value_t = 20.0)]
    sleep: f64,
    /// Payload bytes per message (at least 16).
    #[arg(long, default_value_t = 32)]
    payload: usize,
    /// Seconds between two samples of the gateway's VmRSS.
    #[arg(long, default_value_t = 60.0)]
    sample: f64,
    /// Seconds before the RSS samples count (the sessions are being built up).
    #[arg(long, default_value_t = 300.0)]
    warm_up: f64,
    #[command(flatten)]
    device: DeviceOpts,
    #[command(flatten)]
    observe: Observe,
}

#[derive(Args, Clone)]
struct Length {
    /// Seconds to send for (default 10 unless --messages is given).
    #[arg(long, conflicts_with = "messages")]
    duration: Option<f64>,
    /// Messages to send in total.
    #[arg(long)]
    messages: Option<u64>,
}

impl Length {
    fn get(&self) -> RunLength {
        match (self.messages, self.duration) {
            (Some(m), _) => RunLength::Messages(m),
            (None, Some(d)) => RunLength::Duration(d),
            (None, None) => RunLength::Duration(10.0),
        }
    }
}

#[derive(Args, Clone)]
struct DeviceOpts {
    /// Keep-alive the devices announce in CONNECT, seconds.
    #[arg(long, default_value_t = 600)]
    keep_alive: u16,
    /// Resend a setup request (CONNECT, REGISTER, SUBSCRIBE) or a QoS 1 PUBLISH after this many
    /// milliseconds without an answer [default: 10000 for connect-storm, else 3000].
    #[arg(long)]
    retry_ms: Option<u64>,
    /// Wait about this long (±50 %) before CONNECT again after "rejected: congestion", ms.
    #[arg(long, default_value_t = 200)]
    backoff_ms: u64,
    /// Give up on a device's setup step after this many seconds.
    #[arg(long, default_value_t = 120)]
    setup_timeout: u64,
    /// Devices being set up at once (publish, downstream).
    #[arg(long, default_value_t = 256)]
    setup_concurrency: usize,
    /// publish, downstream: talk DTLS 1.2 (TLS_PSK_WITH_AES_128_CCM_8) with this key, in hex,
    /// to a `[[dtls]]` listener given as --gateway. ClientIds, which are the PSK identities,
    /// are then `dtls-0`, `dtls-1`, ...: list them in the listener's psk_file.
    #[arg(long, value_name = "HEX", value_parser = parse_hex)]
    dtls_psk: Option<HexKey>,
}

/// A key given in hex (a newtype: clap would take a bare `Vec<u8>` as many values).
#[derive(Clone, Debug)]
struct HexKey(Vec<u8>);

fn parse_hex(text: &str) -> Result<HexKey, String> {
    let digits = text.trim();
    if digits.is_empty() || !digits.len().is_multiple_of(2) {
        return Err("expected an even number of hex digits".into());
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| {
            digits
                .get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| format!("{digits:?} is not hex"))
        })
        .collect::<Result<Vec<u8>, String>>()
        .map(HexKey)
}

impl DeviceOpts {
    fn timing(&self, default_retry_ms: u64) -> sn::Timing {
        sn::Timing {
            retry: Duration::from_millis(self.retry_ms.unwrap_or(default_retry_ms).max(1)),
            backoff: Duration::from_millis(self.backoff_ms),
            deadline: Duration::from_secs(self.setup_timeout),
            keep_alive: self.keep_alive,
        }
    }
}

#[derive(Args, Clone)]
struct Observe {
    /// PID of the gateway process: report its CPU use and VmRSS.
    #[arg(long)]
    gateway_pid: Option<u32>,
    /// PID of the broker process: report its CPU use and VmRSS.
    #[arg(long)]
    broker_pid: Option<u32>,
}

#[derive(Args, Clone)]
struct PublishArgs {
    /// The gateway's UDP address.
    #[arg(long)]
    gateway: SocketAddr,
    /// The broker, HOST:PORT, for the subscriber.
    #[arg(long)]
    broker: String,
    /// Simulated devices, each with its own UDP socket.
    #[arg(long, default_value_t = 1)]
    devices: u32,
    /// QoS of the PUBLISHes (0 or 1).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// Offered rate, messages per second over all devices; 0 = as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    #[command(flatten)]
    length: Length,
    /// Payload bytes per message (at least 16: timestamp, device, sequence number).
    #[arg(long, default_value_t = 32)]
    payload: usize,
    /// QoS 1: PUBLISHes in flight per device (1 = lock-step).
    #[arg(long, default_value_t = 1)]
    window: usize,
    /// QoS 0: sender tasks the devices are spread over [default: --threads].
    #[arg(long)]
    groups: Option<usize>,
    /// QoS 1: retransmissions of a PUBLISH before giving up on it.
    #[arg(long, default_value_t = 3)]
    max_retries: u32,
    /// After sending, wait at most this many seconds without arrivals for stragglers.
    #[arg(long, default_value_t = 3.0)]
    drain: f64,
    #[command(flatten)]
    device: DeviceOpts,
    #[command(flatten)]
    observe: Observe,
}

#[derive(Args, Clone)]
struct DirectArgs {
    /// The broker, HOST:PORT.
    #[arg(long)]
    broker: String,
    /// MQTT publishing clients (one TCP connection each).
    #[arg(long, default_value_t = 1)]
    clients: u32,
    /// QoS of the PUBLISHes (0 or 1).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// Offered rate, messages per second over all clients; 0 = as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    #[command(flatten)]
    length: Length,
    /// Payload bytes per message (at least 16).
    #[arg(long, default_value_t = 32)]
    payload: usize,
    /// QoS 1: PUBLISHes in flight per client (1 = lock-step).
    #[arg(long, default_value_t = 1)]
    inflight: u16,
    /// After sending, wait at most this many seconds without arrivals for stragglers.
    #[arg(long, default_value_t = 3.0)]
    drain: f64,
    #[command(flatten)]
    observe: Observe,
}

#[derive(Args, Clone)]
struct StormArgs {
    /// The gateway's UDP address.
    #[arg(long)]
    gateway: SocketAddr,
    /// Devices, each with its own UDP socket.
    #[arg(long, default_value_t = 10_000)]
    devices: u32,
    /// Keep the devices connected this many seconds after the storm (PINGREQ every
    /// keep-alive/2), then DISCONNECT them.
    #[arg(long, default_value_t = 0.0)]
    hold: f64,
    /// DISCONNECTs in progress at once at the end.
    #[arg(long, default_value_t = 500)]
    disconnect_concurrency: usize,
    #[command(flatten)]
    device: DeviceOpts,
    #[command(flatten)]
    observe: Observe,
}

#[derive(Args, Clone)]
struct DownstreamArgs {
    /// The gateway's UDP address.
    #[arg(long)]
    gateway: SocketAddr,
    /// The broker, HOST:PORT, for the publisher.
    #[arg(long)]
    broker: String,
    /// Subscribing devices, each with its own UDP socket and topic.
    #[arg(long, default_value_t = 1)]
    devices: u32,
    /// QoS of the subscriptions and publishes (0 or 1).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// Publisher rate, messages per second; 0 = as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    #[command(flatten)]
    length: Length,
    /// Payload bytes per message (at least 16).
    #[arg(long, default_value_t = 32)]
    payload: usize,
    /// Devices also subscribe to one shared topic, and the publisher sends every message there
    /// (each message goes to every device) instead of round-robin to the devices' own topics.
    #[arg(long)]
    fan_out: bool,
    /// QoS 1: the publisher's messages in flight.
    #[arg(long, default_value_t = 100)]
    inflight: u16,
    /// After sending, wait at most this many seconds without deliveries for stragglers.
    #[arg(long, default_value_t = 3.0)]
    drain: f64,
    #[command(flatten)]
    device: DeviceOpts,
    #[command(flatten)]
    observe: Observe,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let _ = stats::base();
    let command: Vec<String> = std::env::args().collect();
    println!("mqttsn-load {}", command[1..].join(" "));
    let result = runtime.block_on(dispatch(cli));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn check_payload(payload: usize) -> Result<(), String> {
    if payload < payload::HEADER {
        return Err(format!(
            "--payload {payload}: at least {} bytes are needed for the timestamp, device and sequence number",
            payload::HEADER
        ));
    }
    Ok(())
}

async fn dispatch(cli: Cli) -> Result<(), String> {
    let quiet = cli.quiet;
    match cli.command {
        Command::Publish(a) => {
            check_payload(a.payload)?;
            let p = publish::Params {
                gateway: a.gateway,
                dtls_psk: a.device.dtls_psk.clone().map(|k| std::sync::Arc::from(k.0)),
                broker: parse_broker(&a.broker)?,
                devices: a.devices.max(1),
                qos1: a.qos == 1,
                rate: a.rate,
                length: a.length.get(),
                payload: a.payload,
                window: a.window,
                groups: a.groups.unwrap_or(cli.threads),
                timing: a.device.timing(3000),
                setup_concurrency: a.device.setup_concurrency,
                max_retries: a.max_retries,
                drain: Duration::from_secs_f64(a.drain),
                quiet,
                json: cli.json.clone(),
                watched: Watched::new(a.observe.gateway_pid, a.observe.broker_pid),
            };
            println!(
                "parameters: publish gateway={} broker={}:{} devices={} qos={} rate={} {} payload={} window={} groups={} threads={} retry={}ms keep_alive={}s",
                p.gateway, p.broker.0, p.broker.1, p.devices, a.qos, p.rate, p.length.describe(),
                p.payload, p.window, p.groups, cli.threads, p.timing.retry.as_millis(), p.timing.keep_alive
            );
            publish::run(p).await
        }
        Command::Direct(a) => {
            check_payload(a.payload)?;
            let p = direct::Params {
                broker: parse_broker(&a.broker)?,
                clients: a.clients.max(1),
                qos1: a.qos == 1,
                rate: a.rate,
                length: a.length.get(),
                payload: a.payload,
                inflight: a.inflight,
                drain: Duration::from_secs_f64(a.drain),
                quiet,
                json: cli.json.clone(),
                watched: Watched::new(a.observe.gateway_pid, a.observe.broker_pid),
            };
            println!(
                "parameters: direct broker={}:{} clients={} qos={} rate={} {} payload={} inflight={} threads={} (rumqttc client)",
                p.broker.0, p.broker.1, p.clients, a.qos, p.rate, p.length.describe(), p.payload,
                p.inflight, cli.threads
            );
            direct::run(p).await
        }
        Command::Soak(a) => {
            check_payload(a.payload)?;
            let p = soak::Params {
                gateway: a.gateway,
                broker: parse_broker(&a.broker)?,
                devices: a.devices.max(1),
                duration: Duration::from_secs_f64(a.duration),
                period: Duration::from_secs_f64(a.period),
                sleep: Duration::from_secs_f64(a.sleep),
                payload: a.payload,
                timing: a.device.timing(3000),
                setup_concurrency: a.device.setup_concurrency,
                gateway_pid: a.observe.gateway_pid,
                sample: Duration::from_secs_f64(a.sample.max(1.0)),
                warm_up: Duration::from_secs_f64(a.warm_up),
                quiet,
            };
            println!(
                "parameters: soak gateway={} broker={}:{} devices={} duration={}s period={}s sleep={}s payload={} sample={}s warm_up={}s",
                p.gateway, p.broker.0, p.broker.1, p.devices, a.duration, a.period, a.sleep,
                p.payload, a.sample, a.warm_up
            );
            soak::run(p).await
        }
        Command::ConnectStorm(a) => {
            let p = storm::Params {
                gateway: a.gateway,
                devices: a.devices.max(1),
                timing: a.device.timing(10_000),
                hold: Duration::from_secs_f64(a.hold),
                gateway_pid: a.observe.gateway_pid,
                disconnect_concurrency: a.disconnect_concurrency,
                quiet,
                watched: Watched::new(a.observe.gateway_pid, a.observe.broker_pid),
            };
            println!(
                "parameters: connect-storm gateway={} devices={} retry={}ms backoff={}ms keep_alive={}s hold={}s threads={}",
                p.gateway, p.devices, p.timing.retry.as_millis(), p.timing.backoff.as_millis(),
                p.timing.keep_alive, a.hold, cli.threads
            );
            storm::run(p).await
        }
        Command::Downstream(a) => {
            check_payload(a.payload)?;
            let p = downstream::Params {
                gateway: a.gateway,
                dtls_psk: a.device.dtls_psk.clone().map(|k| std::sync::Arc::from(k.0)),
                broker: parse_broker(&a.broker)?,
                devices: a.devices.max(1),
                qos1: a.qos == 1,
                rate: a.rate,
                length: a.length.get(),
                payload: a.payload,
                fan_out: a.fan_out,
                inflight: a.inflight,
                timing: a.device.timing(3000),
                setup_concurrency: a.device.setup_concurrency,
                drain: Duration::from_secs_f64(a.drain),
                quiet,
                watched: Watched::new(a.observe.gateway_pid, a.observe.broker_pid),
            };
            println!(
                "parameters: downstream gateway={} broker={}:{} devices={} qos={} rate={} {} payload={} fan_out={} inflight={} threads={}",
                p.gateway, p.broker.0, p.broker.1, p.devices, a.qos, p.rate, p.length.describe(),
                p.payload, p.fan_out, p.inflight, cli.threads
            );
            downstream::run(p).await
        }
    }
}
