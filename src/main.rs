//! The `mqttsn-gateway` command line: parses arguments, dispatches to the subcommands, and maps
//! failures to one clear line on stderr and an exit code (2 for bad usage or configuration).

use clap::{Args, Parser, Subcommand, ValueEnum};
use mqttsn_gateway::codec::DecodeOptions;
use mqttsn_gateway::config::{Config, Framing, Mode, UdpConfig, UpstreamUrl};
use mqttsn_gateway::decode_tool::{decode_frames, DecodeFormat};
use mqttsn_gateway::driver::Recording;
use mqttsn_gateway::record::snlog::{RecordLimits, Recorder};
use mqttsn_gateway::transcript::Transcript;
use std::io::{self, BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// MQTT-SN v1.2 gateway: UDP and serial radios in, MQTT to a broker out.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Options of `run`, also accepted without the subcommand.
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default when no subcommand is given).
    Run(RunArgs),
    /// Decode MQTT-SN frames given in hex, one frame per argument (quote frames with spaces), or
    /// the conversation in a recording (.snlog transcript or .pcap file).
    Decode {
        /// Frames in hex, e.g. "09 0C 20 00 01 00 01 68 69"; `-` reads one frame per line of
        /// stdin; a file name decodes the recording.
        #[arg(required = true, value_name = "HEX")]
        frames: Vec<String>,
        /// Print one JSON object per frame instead of text.
        #[arg(long)]
        json: bool,
        /// Decode QoS -1 PUBLISH with a normal topic id type as the nonstandard long-topic form.
        #[arg(long)]
        long_topic: bool,
    },
    /// Play the device side of a recording (.snlog transcript or .pcap) against a running
    /// gateway over UDP and compare its answers with the recorded ones.
    Replay {
        /// The recording: a transcript written with --record, or a pcap written with --pcap.
        file: PathBuf,
        /// The gateway to test.
        #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:1884")]
        gateway: SocketAddr,
        /// Play this many times faster than recorded.
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Send each device's next frame as soon as its previous answers arrived.
        #[arg(long)]
        as_fast_as_possible: bool,
        /// How long to wait for each expected answer, in milliseconds.
        #[arg(long, value_name = "MS", default_value_t = 2000)]
        timeout: u64,
        /// The UDP port the gateway used in a pcap recording.
        #[arg(long, value_name = "PORT", default_value_t = 1884)]
        pcap_port: u16,
        /// Replay over this serial port (the gateway's radio line) instead of UDP.
        #[arg(long, value_name = "PORT")]
        serial: Option<String>,
        /// Serial framing: raw, slip or xbee-api.
        #[arg(long, default_value = "raw", requires = "serial")]
        framing: String,
        /// Serial baud rate.
        #[arg(long, default_value_t = 115_200, requires = "serial")]
        baud: u32,
        /// SLIP frames carry a CRC-16.
        #[arg(long, requires = "serial")]
        slip_crc: bool,
        /// XBee API mode (1 or 2).
        #[arg(long, default_value_t = 1, requires = "serial")]
        xbee_api_mode: u8,
    },
    /// Validate a configuration file and print the effective configuration (defaults filled in).
    CheckConfig {
        /// The configuration file, e.g. gateway.toml.
        file: PathBuf,
    },
    /// Print what a session store holds (sessions, topic ids, subscriptions, held messages):
    /// DIR/sessions.log (read only: the gateway may be running).
    State {
        /// The store file, e.g. /var/lib/mqttsn-gateway/sessions.log (or its directory).
        file: PathBuf,
    },
}

#[derive(Args, Clone, Default)]
struct RunArgs {
    /// Configuration file; without it, the built-in defaults (see gateway.toml).
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// UDP address to listen on, replacing the configured listeners (repeatable).
    #[arg(long, value_name = "ADDR")]
    udp: Vec<SocketAddr>,
    /// Broker URL (mqtt://host:port, mqtts://host:port or embedded), replacing upstream.url.
    #[arg(long, value_name = "URL")]
    broker: Option<String>,
    /// Start an in-process MQTT broker and connect to it (same as --broker embedded).
    #[arg(long)]
    embedded_broker: bool,
    /// Gateway mode, replacing gateway.mode.
    #[arg(long, value_enum)]
    mode: Option<CliMode>,
    /// State directory: sessions survive restarts and power cuts (replaces storage.dir).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Record every frame to and from devices and the broker in this transcript file (.snlog).
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
    /// Also write the traffic as a pcap file for Wireshark/tshark (MQTT-SN needs
    /// `-d udp.port==1884,mqttsn`; MQTT on port 1883 is decoded automatically).
    #[arg(long, value_name = "FILE")]
    pcap: Option<PathBuf>,
    /// Rotate the recording when it reaches this many bytes (FILE -> FILE.1 ...).
    #[arg(long, value_name = "BYTES", requires = "record")]
    record_max_size: Option<u64>,
    /// Rotate the recording when it covers this long, e.g. 1h.
    #[arg(long, value_name = "DURATION", requires = "record")]
    record_max_age: Option<String>,
    /// Rotated recordings to keep.
    #[arg(long, value_name = "N", default_value_t = 5, requires = "record")]
    record_keep: usize,
    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Less log output (-q warnings only, -qq errors only).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    quiet: u8,
}

#[derive(Clone, Copy, ValueEnum)]
enum CliMode {
    Transparent,
    Aggregating,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Decode {
            frames,
            json,
            long_topic,
        }) => decode(
            &frames,
            DecodeFormat {
                json,
                options: DecodeOptions {
                    qos_minus1_long_topic: long_topic,
                },
            },
        ),
        Some(Command::CheckConfig { file }) => check_config(&file),
        Some(Command::State { file }) => state(&file),
        Some(Command::Replay {
            file,
            gateway,
            speed,
            as_fast_as_possible,
            timeout,
            pcap_port,
            serial,
            framing,
            baud,
            slip_crc,
            xbee_api_mode,
        }) => {
            let mut options = mqttsn_gateway::replay::ReplayOptions::new(gateway);
            options.speed = speed;
            options.as_fast_as_possible = as_fast_as_possible;
            options.answer_timeout = std::time::Duration::from_millis(timeout);
            let line = match serial {
                None => None,
                Some(port) => {
                    let framing = match framing.as_str() {
                        "raw" => Framing::Raw,
                        "slip" => Framing::Slip { crc: slip_crc },
                        "xbee-api" => Framing::XbeeApi {
                            api_mode: xbee_api_mode,
                        },
                        other => {
                            return fail(
                                &format!("--framing {other}: expected raw, slip or xbee-api"),
                                2,
                            )
                        }
                    };
                    Some((port, baud, framing))
                }
            };
            replay(&file, &options, pcap_port, line)
        }
        Some(Command::Run(args)) => run(args),
        None => run(cli.run),
    }
}

fn init_logging(verbose: u8, quiet: u8) {
    let level = match (i16::from(verbose) - i16::from(quiet)).clamp(-2, 2) {
        -2 => "error",
        -1 => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("mqttsn_gateway={level},rumqttd=off,warn"))
    });
    // Colour for a person at a terminal; none in a file, a pipe or the journal (issue 13).
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal())
        .init();
}

/// The configuration with the command line's overrides applied.
fn effective_config(args: &RunArgs) -> Result<Config, String> {
    let mut config = match &args.config {
        Some(path) => {
            let config = Config::load(path).map_err(|e| e.to_string())?;
            // A configuration holding a password is a secret file itself.
            if config.without_secrets() != config {
                mqttsn_gateway::secrets::check([path.as_path()], config.auth.strict)?;
            }
            config
        }
        None => Config::default(),
    };
    if !args.udp.is_empty() {
        config.udp = args
            .udp
            .iter()
            .map(|bind| UdpConfig {
                bind: *bind,
                ..UdpConfig::default()
            })
            .collect();
    }
    if let Some(url) = &args.broker {
        config.upstream.url = url
            .parse::<UpstreamUrl>()
            .map_err(|e| format!("--broker {url}: {e}"))?;
    }
    if args.embedded_broker {
        config.upstream.url = UpstreamUrl::Embedded;
    }
    if let Some(dir) = &args.state_dir {
        config.storage.dir = Some(dir.clone());
    }
    if let Some(mode) = args.mode {
        config.gateway.mode = match mode {
            CliMode::Transparent => Mode::Transparent,
            CliMode::Aggregating => Mode::Aggregating,
        };
    }
    Ok(config)
}

fn run(args: RunArgs) -> ExitCode {
    init_logging(args.verbose, args.quiet);
    let config = match effective_config(&args) {
        Ok(config) => config,
        Err(e) => return fail(&e, 2),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}"), 1),
    };
    let recording = match recording(&args, &config) {
        Ok(recording) => recording,
        Err(e) => return fail(&e, 2),
    };
    let result = runtime.block_on(mqttsn_gateway::driver::run(
        config,
        recording,
        shutdown_signal(),
    ));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string(), 2),
    }
}

/// The recorder the command line asks for. A file that cannot be created is reported and the
/// gateway runs without recording (recording is an aid, never a reason not to serve devices).
fn recording(args: &RunArgs, config: &Config) -> Result<Recording, String> {
    if args.record.is_none() && args.pcap.is_none() {
        return Ok(Recording::default());
    }
    let max_age = match &args.record_max_age {
        Some(text) => Some(mqttsn_gateway::config::parse_duration(text).ok_or_else(|| {
            format!("--record-max-age {text}: expected a duration like 10m or 1h")
        })?),
        None => None,
    };
    let limits = RecordLimits {
        max_bytes: args.record_max_size,
        max_age,
        keep: args.record_keep,
    };
    // Broker traffic appears in the pcap as TCP to the broker's address.
    let broker = config.upstream.broker_addr();
    let snlog = args.record.as_deref().map(|p| (p, limits));
    let pcap = args.pcap.as_deref().map(|p| (p, broker));
    match Recorder::start(snlog, pcap) {
        Ok(recorder) => Ok(Recording {
            snlog: Some(recorder),
        }),
        Err(e) => {
            tracing::error!(error = %e, "cannot record; running without recording");
            Ok(Recording::default())
        }
    }
}

/// `state FILE`: the store's report on stdout.
fn state(file: &Path) -> ExitCode {
    let path = if file.is_dir() {
        file.join(mqttsn_gateway::storage::FILE_NAME)
    } else {
        file.to_path_buf()
    };
    if !path.exists() {
        return fail(&format!("{}: no such file", path.display()), 1);
    }
    match mqttsn_gateway::storage::inspect::describe(&path) {
        Ok(report) => {
            // A closed stdout (piped into `head`) ends the report quietly, as with `decode`.
            let mut out = io::stdout().lock();
            let _ = out.write_all(report.as_bytes()).and_then(|()| out.flush());
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e, 1),
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM (systemd's stop).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn decode(frames: &[String], format: DecodeFormat) -> ExitCode {
    let mut out = io::stdout().lock();
    let mut bad = 0;
    for arg in frames {
        let path = Path::new(arg);
        let result = if arg != "-" && path.is_file() {
            // A recording: its conversation with the devices.
            match load_recording(path, mqttsn_gateway::config::DEFAULT_UDP_PORT) {
                Ok(transcript) => decode_recording(&transcript, format, &mut out),
                Err(e) => return fail(&e, 2),
            }
        } else if arg == "-" {
            let lines: Vec<String> = match io::stdin().lock().lines().collect() {
                Ok(lines) => lines,
                Err(e) => return fail(&format!("cannot read stdin: {e}"), 1),
            };
            decode_frames(lines.iter().map(String::as_str), format, &mut out)
        } else {
            decode_frames([arg.as_str()], format, &mut out)
        };
        match result {
            Ok(n) => bad += n,
            // stdout closed (e.g. piped into `head`): nothing more to say.
            Err(_) => return ExitCode::from(1),
        }
    }
    let _ = out.flush();
    if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Reads a recording: a pcap file (by its magic number) or a transcript.
fn load_recording(file: &Path, pcap_port: u16) -> Result<Transcript, String> {
    let bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    if mqttsn_gateway::record::pcap_reader::is_pcap(&bytes) {
        return mqttsn_gateway::record::pcap_reader::transcript_from_pcap(&bytes, pcap_port)
            .map_err(|e| format!("{}: {e}", file.display()));
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| format!("{}: neither a pcap file nor a transcript", file.display()))?;
    Transcript::parse(&text, &file.display().to_string()).map_err(|e| e.to_string())
}

fn replay(
    file: &Path,
    options: &mqttsn_gateway::replay::ReplayOptions,
    pcap_port: u16,
    serial: Option<(String, u32, Framing)>,
) -> ExitCode {
    let transcript = match load_recording(file, pcap_port) {
        Ok(t) => t,
        Err(e) => return fail(&e, 2),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}"), 1),
    };
    let result = runtime.block_on(async {
        match &serial {
            Some((port, baud, framing)) => {
                mqttsn_gateway::replay::replay_serial(&transcript, port, *baud, *framing, options)
                    .await
            }
            None => mqttsn_gateway::replay::replay(&transcript, options).await,
        }
    });
    match result {
        Ok(report) => {
            print!("{}", report.render());
            if report.differences() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => fail(&format!("replay: {e}"), 1),
    }
}

/// Prints the device side of a recording, one decoded frame per line; returns the number of
/// frames that did not decode.
fn decode_recording(
    transcript: &Transcript,
    format: DecodeFormat,
    out: &mut impl Write,
) -> io::Result<usize> {
    let mut bad = 0;
    for entry in &transcript.entries {
        let Some(bytes) = entry.exact_bytes() else {
            continue;
        };
        let kind = transcript.peer(entry.peer()).map(|p| &p.kind);
        if matches!(
            kind,
            Some(mqttsn_gateway::transcript::PeerKind::Broker { .. })
        ) {
            continue; // MQTT, not MQTT-SN
        }
        write!(
            out,
            "{:>9} {:<14} ",
            entry.at.to_string(),
            entry.direction.to_string()
        )?;
        bad += decode_frames([mqttsn_gateway::hex::format(&bytes).as_str()], format, out)?;
    }
    Ok(bad)
}

fn check_config(file: &Path) -> ExitCode {
    match Config::load(file) {
        Ok(config) => {
            // The files the configuration names are read too, as a start would read them.
            let mut identities = Vec::new();
            for dtls in &config.dtls {
                if let Some(path) = &dtls.psk_file {
                    match mqttsn_gateway::transport::dtls::PskTable::load(path) {
                        Ok(table) => identities.extend(table.identities().map(Into::into)),
                        Err(e) => return fail(&e.to_string(), 2),
                    }
                }
            }
            let seed = mqttsn_gateway::hash::HashSeed(0, 0);
            if let Err(e) = config.auth.load_policy(seed, identities) {
                return fail(&e.to_string(), 2);
            }
            print!("{}", config.to_toml_string());
            for warning in config.security_warnings() {
                eprintln!("warning: {warning}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e.to_string(), 2),
    }
}

fn fail(message: &str, code: u8) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(code)
}
