//! The real `mqttsn-gateway` binary as a child process: started on a free loopback UDP port
//! with a state directory, ready once it logs that its broker connection is up, killed with
//! SIGKILL (as a crash or a power cut would end it) and started again on the same port.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use super::PATIENCE;

/// A gateway process (or the recipe for one, between a kill and a restart).
pub struct GatewayProcess {
    child: Option<Child>,
    /// Where devices reach it.
    pub udp: SocketAddr,
    config: PathBuf,
    state_dir: PathBuf,
    /// Runs it as this user (to make a directory read-only for it when the tests run as root).
    uid: Option<u32>,
    /// Every line it logged, over all its runs, without colour codes.
    log: Arc<Mutex<Vec<String>>>,
    /// The threads reading its output; they end when it exits.
    readers: Vec<std::thread::JoinHandle<()>>,
}

fn free_udp_port() -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    socket.local_addr().expect("local addr").port()
}

/// Removes ANSI colour sequences (a log written to a terminal has them; one in a pipe, as here, no longer does).
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl GatewayProcess {
    /// Starts the gateway with `config` (TOML; a `[[udp]]` listener on a free port is added)
    /// and `--state-dir state_dir`, and waits until its broker connection is up.
    pub fn start(config: &str, state_dir: &Path) -> GatewayProcess {
        Self::start_as(config, state_dir, None)
    }

    /// [`GatewayProcess::start`] as user `uid`.
    pub fn start_as(config: &str, state_dir: &Path, uid: Option<u32>) -> GatewayProcess {
        let udp: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
        let file = std::env::temp_dir().join(format!(
            "mqttsn-gw-{}-{}.toml",
            std::process::id(),
            udp.port()
        ));
        std::fs::write(&file, format!("[[udp]]\nbind = \"{udp}\"\n{config}")).unwrap();
        let mut gateway = GatewayProcess {
            child: None,
            udp,
            config: file,
            state_dir: state_dir.to_path_buf(),
            uid,
            log: Arc::default(),
            readers: Vec::new(),
        };
        gateway.spawn();
        gateway
    }

    fn spawn(&mut self) {
        let from = self.log.lock().unwrap().len();
        let mut command = Command::new(self.binary());
        command
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .arg("--state-dir")
            .arg(&self.state_dir)
            // GATEWAY_LOG (e.g. `mqttsn_gateway=debug`) gives a failing test more to show.
            .env(
                "RUST_LOG",
                std::env::var("GATEWAY_LOG").unwrap_or_else(|_| "mqttsn_gateway=info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        #[cfg(unix)]
        if let Some(uid) = self.uid {
            use std::os::unix::process::CommandExt;
            command.uid(uid).gid(uid);
        }
        let mut child = command.spawn().expect("start mqttsn-gateway");
        // Logs go to stdout, errors of the command line to stderr: both are kept.
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = Arc::clone(&self.log);
            self.readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(plain(&line));
                }
            }));
        }
        self.child = Some(child);
        self.await_line_after(from, "broker connection up");
    }

    /// The binary to run: for another user, a copy in the temporary directory (the build's
    /// own directory may not be open to it, e.g. under /root).
    fn binary(&self) -> PathBuf {
        let built = PathBuf::from(env!("CARGO_BIN_EXE_mqttsn-gateway"));
        if self.uid.is_none() {
            return built;
        }
        let copy = std::env::temp_dir().join(format!("mqttsn-gateway-{}", std::process::id()));
        if !copy.exists() {
            std::fs::copy(&built, &copy).expect("copy the gateway binary");
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))
                    .expect("make the copy executable");
            }
        }
        copy
    }

    /// Waits until a line containing `needle` is logged, from line `from` on.
    fn await_line_after(&self, from: usize, needle: &str) -> String {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            if let Some(line) = self.log.lock().unwrap()[from..]
                .iter()
                .find(|l| l.contains(needle))
            {
                return line.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the gateway never logged {needle:?}; its log:\n{}",
                self.log().join("\n")
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Everything logged so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Sends SIGHUP (reload the auth files).
    pub fn hangup(&self) {
        if let Some(child) = &self.child {
            let _ = std::process::Command::new("kill")
                .arg("-HUP")
                .arg(child.id().to_string())
                .status();
        }
    }

    /// SIGKILL: no shutdown, no last write, as a crash or a power cut.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.join_readers();
    }

    /// Once the process is gone its pipes close and the readers end: its whole log is in.
    fn join_readers(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }

    /// Starts it again (same port, same state directory) and waits until it is up.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// SIGTERM, and waits for the clean stop (its totals are in the log then).
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            super::terminate(child);
        }
        self.join_readers();
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_file(&self.config);
        if self.uid.is_some() {
            let _ = std::fs::remove_file(self.binary());
        }
    }
}

/// A fresh directory for one test's state.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "mqttsn-state-{name}-{}-{}",
        std::process::id(),
        free_udp_port()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
