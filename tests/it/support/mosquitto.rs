//! A real Mosquitto broker for a test: started on a free 127.0.0.1 port with a throw-away config,
//! ready once it logs that it is running, killed when dropped. It can be stopped and started
//! again on the same port (broker restart tests).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

/// A running (or stopped) Mosquitto instance.
pub struct Mosquitto {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    persistent: bool,
    /// Configuration lines that replace `allow_anonymous true` (a password file, an ACL).
    auth: Option<String>,
    /// Every "New client connected ... as ID" line of its log so far, as the ids.
    connects: Arc<Mutex<Vec<String>>>,
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

impl Mosquitto {
    /// Starts Mosquitto on a free port. Panics with a clear message if it is not installed.
    pub fn start() -> Mosquitto {
        Self::start_with(false)
    }

    /// Starts Mosquitto with persistence: sessions and queued messages survive a graceful stop
    /// ([`Mosquitto::stop_gracefully`]) and restart.
    pub fn start_persistent() -> Mosquitto {
        Self::start_with(true)
    }

    /// Starts Mosquitto with `auth` configuration lines (e.g. `password_file`, `acl_file`,
    /// `allow_anonymous false`) in place of its open default.
    pub fn start_secured(auth: &str) -> Mosquitto {
        Self::start_full(false, Some(auth.to_owned()))
    }

    fn start_with(persistent: bool) -> Mosquitto {
        Self::start_full(persistent, None)
    }

    fn start_full(persistent: bool, auth: Option<String>) -> Mosquitto {
        // Unique within the run: two brokers started at once may be handed the same free
        // port to try, and one's cleanup must not remove the other's directory.
        static STARTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("mqttsn-mosquitto-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        // Started as root, Mosquitto drops to its own user, which must be able to write its
        // persistence file here.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777));
        }
        // The port is free when picked; another process could take it before Mosquitto binds,
        // so retry with a new one if Mosquitto fails to start.
        for _ in 0..5 {
            let mut broker = Mosquitto {
                child: None,
                port: free_port(),
                dir: dir.clone(),
                persistent,
                auth: auth.clone(),
                connects: Arc::default(),
            };
            if broker.spawn() {
                return broker;
            }
        }
        panic!("mosquitto did not start (is it installed? `apt-get install -y mosquitto`)");
    }

    /// The broker's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// A gateway configuration for tests: UDP on a free loopback port, this broker upstream,
    /// and `extra` TOML (tables such as `[[serial]]`) appended.
    pub fn gateway_config(&self, extra: &str) -> mqttsn_gateway::config::Config {
        mqttsn_gateway::config::Config::from_toml_str(
            &format!(
                "[[udp]]\nbind = \"127.0.0.1:0\"\n[upstream]\nurl = \"{}\"\n{extra}",
                self.url()
            ),
            "test",
        )
        .expect("test configuration is valid")
    }

    /// A gateway on this broker (as [`Mosquitto::gateway_config`] with no extra settings)
    /// recording its traffic to the transcript `path`.
    pub async fn recording_gateway(
        &self,
        path: &std::path::Path,
    ) -> mqttsn_gateway::driver::Running {
        use mqttsn_gateway::record::snlog::{RecordLimits, Recorder};
        let recorder = Recorder::create(path, RecordLimits::default()).unwrap();
        let recording = mqttsn_gateway::driver::Recording {
            snlog: Some(recorder),
        };
        mqttsn_gateway::driver::start_with(self.gateway_config(""), recording)
            .await
            .unwrap()
    }

    /// How many times a client with this id has connected so far (from the broker's log).
    pub fn connects(&self, client_id: &str) -> usize {
        let connects = self.connects.lock().unwrap();
        connects.iter().filter(|id| *id == client_id).count()
    }

    /// Waits (at most [`super::PATIENCE`]) until the broker's log shows `client_id` connected
    /// `n` times: the log is read by a thread of its own, a moment after the fact.
    pub async fn await_connects(&self, client_id: &str, n: usize) {
        let deadline = std::time::Instant::now() + super::PATIENCE;
        while self.connects(client_id) < n {
            assert!(
                std::time::Instant::now() < deadline,
                "the broker's log never showed {client_id} connecting {n} times"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Stops the broker process (SIGSTOP) without closing anything: it reads nothing, so its
    /// clients' sockets fill up, as with a broker that cannot keep up.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused broker run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .arg(signal)
                .arg(child.id().to_string())
                .status()
                .expect("run kill");
            assert!(status.success(), "kill {signal} failed");
        }
    }

    /// Kills the broker (like a crash: connections reset, nothing persisted).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the broker with SIGTERM, so that it saves its persistent state.
    pub fn stop_gracefully(&mut self) {
        if let Some(child) = self.child.take() {
            super::terminate(child);
        }
    }

    /// Starts the broker again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn(),
            "mosquitto did not restart on port {}",
            self.port
        );
    }

    /// Spawns Mosquitto and waits until it reports running; false if it exited instead.
    fn spawn(&mut self) -> bool {
        let conf = self.dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\n{}\n\
                 max_queued_messages 100000\nlog_dest stderr\nlog_type error\nlog_type warning\n\
                 log_type notice\nlog_type information\n{}",
                self.port,
                self.auth.as_deref().unwrap_or("allow_anonymous true"),
                if self.persistent {
                    format!(
                        "persistence true\npersistence_location {}/\n",
                        self.dir.display()
                    )
                } else {
                    String::new()
                }
            ),
        )
        .expect("write mosquitto.conf");
        let binary = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto", "mosquitto"]
            .into_iter()
            .find(|p| !p.starts_with('/') || std::path::Path::new(p).exists())
            .unwrap_or("mosquitto");
        let mut child = match Command::new(binary)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(child) => child,
            Err(e) => {
                panic!("cannot run mosquitto ({e}); install it: apt-get install -y mosquitto")
            }
        };
        let stderr = child.stderr.take().expect("piped stderr");
        let mut lines = BufReader::new(stderr).lines();
        // Mosquitto logs "... running" once its listener is open; it exits on a bind error.
        let ready = lines
            .by_ref()
            .map_while(Result::ok)
            .any(|line| line.contains(" running"));
        if !ready {
            let _ = child.wait();
            return false;
        }
        // Keep draining its log so it never blocks on a full pipe, noting who connects.
        let connects = Arc::clone(&self.connects);
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Some((_, rest)) = line.split_once("New client connected from ") {
                    if let Some((_, id)) = rest.split_once(" as ") {
                        let id = id.split_whitespace().next().unwrap_or_default();
                        connects.lock().unwrap().push(id.to_owned());
                    }
                }
            }
        });
        self.child = Some(child);
        true
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        // In case a failing test left it paused.
        self.resume();
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
