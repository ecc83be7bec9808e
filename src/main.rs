//! The `mqttsn-gateway` command line: parses arguments, dispatches to the subcommands, and maps
//! failures to one clear line on stderr and an exit code (2 for bad usage or configuration).

use clap::{Parser, Subcommand};
use mqttsn_gateway::codec::DecodeOptions;
use mqttsn_gateway::config::Config;
use mqttsn_gateway::decode_tool::{decode_frames, DecodeFormat};
use std::io::{self, BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

/// MQTT-SN v1.2 gateway: UDP and serial radios in, MQTT to a broker out.
#[derive(Parser)]
#[command(version, about, arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Decode MQTT-SN frames given in hex, one frame per argument (quote frames with spaces).
    Decode {
        /// Frames in hex, e.g. "09 0C 20 00 01 00 01 68 69"; `-` reads one frame per line of stdin.
        #[arg(required = true, value_name = "HEX")]
        frames: Vec<String>,
        /// Print one JSON object per frame instead of text.
        #[arg(long)]
        json: bool,
        /// Decode QoS -1 PUBLISH with a normal topic id type as the nonstandard long-topic form.
        #[arg(long)]
        long_topic: bool,
    },
    /// Validate a configuration file and print the effective configuration (defaults filled in).
    CheckConfig {
        /// The configuration file, e.g. gateway.toml.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Decode {
            frames,
            json,
            long_topic,
        } => decode(
            &frames,
            DecodeFormat {
                json,
                options: DecodeOptions {
                    qos_minus1_long_topic: long_topic,
                },
            },
        ),
        Command::CheckConfig { file } => check_config(&file),
    }
}

fn decode(frames: &[String], format: DecodeFormat) -> ExitCode {
    let mut out = io::stdout().lock();
    let mut bad = 0;
    for arg in frames {
        let result = if arg == "-" {
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

fn check_config(file: &std::path::Path) -> ExitCode {
    match Config::load(file) {
        Ok(config) => {
            print!("{}", config.to_toml_string());
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e.to_string(), 2),
    }
}

fn fail(message: &str, code: u8) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(code)
}
