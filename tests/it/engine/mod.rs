//! The engine on virtual time: every transcript in `tests/fixtures/engine/` is replayed against
//! a fresh [`Gateway`] configured by the transcript's `@config` lines. Set `MQTTSN_BLESS=1` to
//! rewrite a transcript's expected lines from the engine's actual output (then review the diff).
//! The conventions of these transcripts are those of [`GatewayHarness`].

mod chaos;
mod identity;
mod limits;

use mqttsn_gateway::config::Config;
use mqttsn_gateway::engine::Gateway;
use mqttsn_gateway::hash::HashSeed;
use mqttsn_gateway::mqtt_v4::MQTT_V4;
use mqttsn_gateway::transcript::harness::GatewayHarness;
use mqttsn_gateway::transcript::replay::{replay, replay_file, ReplayOutcome};
use mqttsn_gateway::transcript::Transcript;
use std::path::{Path, PathBuf};

/// A fresh gateway configured by the transcript's `@config`, with a fixed hash seed.
pub fn harness(transcript: &Transcript) -> GatewayHarness {
    harness_seeded(transcript, HashSeed(0x5eed, 1))
}

/// [`harness`] with the engine's hash maps keyed by `seed`.
pub fn harness_seeded(transcript: &Transcript, seed: HashSeed) -> GatewayHarness {
    let config = Config::from_toml_str(&transcript.config_toml(), "@config")
        .unwrap_or_else(|e| panic!("transcript @config: {e}"));
    let mut gateway = Gateway::new(config.engine_settings(seed), &MQTT_V4);
    // The PSK identities of the transcript's DTLS peers are those of a psk_file.
    let psk_identities = transcript
        .peers
        .iter()
        .filter_map(|p| match &p.identity {
            Some(mqttsn_gateway::engine::auth::Identity::Psk(id)) => Some(id.clone()),
            _ => None,
        })
        .collect();
    let policy = config
        .auth
        .load_policy(seed, psk_identities)
        .unwrap_or_else(|e| panic!("transcript @config auth: {e}"));
    gateway.set_auth(mqttsn_gateway::time::Instant::ZERO, policy);
    GatewayHarness::new(transcript, gateway)
}

fn transcripts() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/engine");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "snlog"))
        .collect();
    files.sort();
    files
}

#[test]
fn engine_transcripts() {
    let files = transcripts();
    assert!(!files.is_empty());
    let mut failures = Vec::new();
    for path in &files {
        match replay_file(path, harness) {
            Ok(ReplayOutcome::Passed) => {}
            Ok(ReplayOutcome::Blessed) => eprintln!("blessed {}", path.display()),
            Err(e) => failures.push(format!("{}:\n{e}", path.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// What a store holds is all a restarted engine needs: every transcript is replayed with the
/// engine persisting after every input (as the driver does), and after each persist an engine
/// restored from the store must store exactly the same again. So no state a restart keeps is
/// lost or changed by restoring it, at any moment of any exchange the transcripts cover.
#[test]
fn every_stored_state_restores_to_the_same_state() {
    let files = transcripts();
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let transcript = Transcript::parse(&text, &path.display().to_string()).unwrap();
        let mut harness = harness(&transcript).check_restores();
        if let Err(e) = replay(&transcript, &mut harness) {
            panic!("{}: with persistence on:\n{e}", path.display());
        }
        let store = harness.store().expect("persisting");
        eprintln!(
            "{}: {} commits, {} sessions and {} messages stored at the end",
            path.display(),
            store.commits,
            store.sessions(),
            store.messages()
        );
    }
}

/// The engine's output must not depend on its hash seed: each transcript is replayed under two
/// different seeds, both runs must pass, and their outputs must be identical line for line.
#[test]
fn engine_output_does_not_depend_on_the_hash_seed() {
    let files = transcripts();
    assert!(files.len() >= 40, "only {} transcripts", files.len());
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let transcript = Transcript::parse(&text, &path.display().to_string()).unwrap();
        let mut runs = Vec::new();
        for seed in [HashSeed(1, 2), HashSeed(0xdead_beef, 0x0123_4567_89ab_cdef)] {
            let mut harness = harness_seeded(&transcript, seed);
            if let Err(e) = replay(&transcript, &mut harness) {
                panic!("{} under {seed:?}:\n{e}", path.display());
            }
            runs.push(harness.outputs().to_vec());
        }
        assert!(!runs[0].is_empty(), "{}: no output", path.display());
        assert_eq!(
            runs[0],
            runs[1],
            "{}: output differs by seed",
            path.display()
        );
    }
}
