//! The command line as a user runs it: output, exit codes and error messages of `decode`,
//! `check-config` and `state`.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn gateway(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mqttsn-gateway"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn decode_prints_one_line_per_frame_and_fails_on_a_bad_one() {
    let out = gateway(
        &[
            "decode",
            "09 0C 20 00 01 00 01 68 69",
            "02 03",
            "04 18 01 2C",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stdout(&out),
        "PUBLISH qos=1 retain=false dup=false topic_id=1(normal) msg_id=1 payload=\"hi\" (2 bytes)\n\
         error: reserved message type 0x03 [02 03]\n\
         DISCONNECT duration=300\n"
    );
}

#[test]
fn decode_reads_stdin_and_writes_json() {
    let out = gateway(
        &["decode", "--json", "-"],
        Some("03 05 00\n\n08 12 20 00 02 73 2F 23\n"),
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["type"], "CONNACK");
    assert_eq!(lines[1]["type"], "SUBSCRIBE");
    assert_eq!(lines[1]["topic_name"], "s/#");
    assert_eq!(lines[1]["qos"], 1);
}

#[test]
fn decode_long_topic_switch() {
    let frame = "0C 0C 60 00 03 00 00 61 2F 62 68 69";
    let plain = stdout(&gateway(&["decode", frame], None));
    let long = stdout(&gateway(&["decode", "--long-topic", frame], None));
    assert!(plain.contains("topic_id=3(normal)"), "{plain}");
    assert!(long.contains("topic=\"a/b\"(long name)"), "{long}");
}

#[test]
fn check_config_prints_the_effective_config() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.toml");
    let out = gateway(&["check-config", shipped], None);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.contains("[gateway]") && text.contains("1884"),
        "{text}"
    );
}

#[test]
fn check_config_warns_of_listeners_open_to_anonymous_devices() {
    let dir = std::env::temp_dir().join(format!("mqttsn-cli-anon-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let open = dir.join("open.toml");
    std::fs::write(&open, "[[udp]]\nbind = \"0.0.0.0:1884\"\n").unwrap();
    let out = gateway(&["check-config", open.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("warning: udp[0] 0.0.0.0:1884 accepts anonymous devices"),
        "{err}"
    );
    // On loopback, or with anonymous devices refused, nothing to warn about.
    for quiet in [
        "[[udp]]\nbind = \"127.0.0.1:1884\"\n",
        "[[udp]]\nbind = \"0.0.0.0:1884\"\n[auth]\nallow_anonymous = false\n",
    ] {
        std::fs::write(&open, quiet).unwrap();
        let out = gateway(&["check-config", open.to_str().unwrap()], None);
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(String::from_utf8(out.stderr).unwrap(), "", "{quiet}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A configuration file holding a password that others may read: refused with auth.strict.
#[cfg(unix)]
#[test]
fn a_readable_config_with_a_password_is_refused_when_strict() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("mqttsn-cli-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gw.toml");
    std::fs::write(
        &file,
        "[[udp]]\nbind = \"127.0.0.1:0\"\n[upstream]\nusername = \"u\"\npassword = \"hunter2\"\n\
         [auth]\nstrict = true\n",
    )
    .unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = gateway(&["run", "--config", file.to_str().unwrap()], None);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("chmod 600") && err.contains("gw.toml"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn check_config_reads_the_files_it_names() {
    let dir = std::env::temp_dir().join(format!("mqttsn-cli-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gw.toml");
    // A broken clients file is an error, as it would be at start.
    let clients = dir.join("clients.toml");
    std::fs::write(&clients, "[[client]]\nclientid = \"x\"\n").unwrap();
    std::fs::write(
        &file,
        format!("[auth]\nclients_file = \"{}\"\n", clients.display()),
    )
    .unwrap();
    let out = gateway(&["check-config", file.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("clients.toml:2:1") && err.contains("clientid"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn check_config_errors_exit_2_with_one_line() {
    let dir = std::env::temp_dir().join(format!("mqttsn-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[[predefined]]\nid = 5\ntopic = \"a\"\n[[predefined]]\nid = 5\ntopic = \"b\"\n",
    )
    .unwrap();
    let out = gateway(&["check-config", bad.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("bad.toml:5:"), "{err}");
    assert!(err.contains("duplicate predefined id 5"), "{err}");
    let missing = gateway(
        &["check-config", dir.join("nope.toml").to_str().unwrap()],
        None,
    );
    assert_eq!(missing.status.code(), Some(2));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_command_line_exits_2() {
    let out = gateway(&["decode", "--bogus"], None);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn run_stops_cleanly_on_sigterm_with_exit_code_0() {
    use std::io::{BufRead, BufReader};
    let dir = std::env::temp_dir().join(format!("mqttsn-sigterm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        "[[udp]]\nbind = \"127.0.0.1:0\"\n[upstream]\nurl = \"embedded\"\nembedded_bind = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mqttsn-gateway"))
        .args(["run", "-c", config.to_str().unwrap()])
        .env("RUST_LOG", "mqttsn_gateway=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Logs go to stdout; wait until the broker connection is up, i.e. fully started.
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    assert!(
        lines
            .by_ref()
            .map_while(Result::ok)
            .any(|l| l.contains("broker connection up")),
        "the gateway did not come up"
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let exit = child.wait().unwrap();
    assert_eq!(exit.code(), Some(0), "{rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("gateway stopped")),
        "{rest:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn run_with_a_bad_config_or_broker_url_exits_2() {
    let out = gateway(&["run", "-c", "/nonexistent/gateway.toml"], None);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("/nonexistent/gateway.toml"), "{err}");
    let out = gateway(&["run", "--broker", "http://example"], None);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("--broker http://example"), "{err}");
}

#[test]
fn decode_reads_a_recording() {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/mqtt-sn-12-session.snlog"
    );
    let out = gateway(&["decode", fixture], None);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.lines()
            .any(|l| l.contains("dev") && l.contains("CONNECT client_id=")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("gw >") && l.contains("CONNACK")),
        "{text}"
    );
}

#[test]
fn replay_reports_missing_answers_with_a_nonzero_exit() {
    // Nothing listens on the port: every expected answer is missing.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    drop(silent);
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/engine/05-disconnect-and-unknown-peers.snlog"
    );
    let out = gateway(
        &[
            "replay",
            fixture,
            "--gateway",
            &addr,
            "--as-fast-as-possible",
            "--timeout",
            "100",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stdout(&out).contains("no answer"), "{}", stdout(&out));
}

#[test]
fn state_reports_a_store_and_names_what_is_wrong_with_others() {
    let dir = std::env::temp_dir().join(format!("mqttsn-cli-state-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let dir_arg = dir.to_str().unwrap();
    // A directory without a store.
    let out = gateway(&["state", dir_arg], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such file"));
    // An empty store, given by its directory.
    let file = dir.join(mqttsn_gateway::storage::FILE_NAME);
    mqttsn_gateway::storage::log_store::create_empty(&file, 1).unwrap();
    let out = gateway(&["state", dir_arg], None);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout(&out).contains("store format 1, 0 commits, 0 sessions, 0 held messages"),
        "{}",
        stdout(&out)
    );
    // A store of another version is not misread.
    mqttsn_gateway::storage::log_store::create_empty(&file, 7).unwrap();
    let out = gateway(&["state", file.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("store format 7"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The log has no colour codes when it goes to a file or a pipe (issue 13: `run > gw.log`).
#[test]
fn the_log_has_no_escape_codes_in_a_pipe() {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_mqttsn-gateway"))
        .args([
            "run",
            "--udp",
            "127.0.0.1:0",
            "--broker",
            "mqtt://127.0.0.1:1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // Its first lines (listening, then the broker that is not there).
    let lines: Vec<String> = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .take(2)
        .collect();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines.iter().all(|l| !l.contains('\u{1b}')), "{lines:?}");
    assert!(lines[0].contains("INFO"), "{lines:?}");
}
