//! Interoperability with a third-party client, `openssl s_client -dtls1_2`, over real UDP on
//! 127.0.0.1: PSK, a client certificate, and refusals. A small loop around the listener runs
//! in a thread and echoes every frame back. Skipped (with a message) without `openssl`.

use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::*;
use crate::transport::dtls::{ClientRoots, DtlsEvent, Identity, ServerCertificate};

/// How long any step may take before the test fails instead of hanging.
const DEADLINE: Duration = Duration::from_secs(15);

fn have_openssl() -> bool {
    let found = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("skipped: no `openssl` binary on this machine");
    }
    found
}

/// The listener on a UDP socket, in a thread, echoing frames.
struct Server {
    addr: SocketAddr,
    events: mpsc::Receiver<DtlsEvent>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(settings: DtlsSettings) -> Server {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = socket.local_addr().expect("local address");
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, events) = mpsc::channel();
        let mut gw = listener(settings);
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while !stopping.load(Ordering::Relaxed) {
                // Wake for the next datagram, the listener's next deadline, or the stop flag.
                let now = Instant::now();
                let wait = gw
                    .poll_timeout()
                    .map_or(Duration::from_millis(50), |at| {
                        at.saturating_duration_since(now)
                    })
                    .clamp(Duration::from_millis(1), Duration::from_millis(50));
                socket.set_read_timeout(Some(wait)).expect("read timeout");
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    gw.handle_datagram(Instant::now(), from, &buf[..n]);
                }
                gw.handle_timeout(Instant::now());
                while let Some(event) = gw.poll_event() {
                    if let DtlsEvent::Frame { peer, frame, .. } = &event {
                        gw.send(*peer, frame).expect("echo to an established peer");
                    }
                    let _ = tx.send(event);
                }
                while let Some((to, datagram)) = gw.poll_transmit() {
                    let _ = socket.send_to(&datagram, to);
                }
            }
        });
        Server {
            addr,
            events,
            stop,
            thread: Some(thread),
        }
    }

    /// Waits for an event that `wanted` accepts; the events before it are returned too.
    fn wait_for(&self, wanted: impl Fn(&DtlsEvent) -> bool) -> Vec<DtlsEvent> {
        let deadline = Instant::now() + DEADLINE;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(event) => {
                    let done = wanted(&event);
                    seen.push(event);
                    if done {
                        return seen;
                    }
                }
                Err(_) => panic!("no such event within {DEADLINE:?}; saw {seen:?}"),
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `openssl s_client`, killed when dropped; its stdout read by a thread.
struct Client {
    child: Child,
    output: mpsc::Receiver<Vec<u8>>,
}

impl Client {
    fn spawn(server: SocketAddr, args: &[&str]) -> Client {
        let connect = server.to_string();
        let mut child = Command::new("openssl")
            .args([
                "s_client",
                "-dtls1_2",
                "-connect",
                &connect,
                "-quiet",
                "-nocommands",
            ])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn openssl s_client");
        let mut stdout = child.stdout.take().expect("piped stdout");
        let (tx, output) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Client { child, output }
    }

    fn write(&mut self, bytes: &[u8]) {
        let stdin = self.child.stdin.as_mut().expect("piped stdin");
        stdin.write_all(bytes).expect("write to s_client");
        stdin.flush().expect("flush");
    }

    /// Reads stdout until it holds `expected`, failing at the deadline.
    fn read_until(&self, expected: &[u8]) {
        let deadline = Instant::now() + DEADLINE;
        let mut got = Vec::new();
        while !got.windows(expected.len()).any(|w| w == expected) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(chunk) => got.extend_from_slice(&chunk),
                Err(_) => panic!("s_client printed {got:?}, not {expected:?}, within {DEADLINE:?}"),
            }
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn established(event: &DtlsEvent) -> bool {
    matches!(event, DtlsEvent::Established { .. })
}

fn failed(event: &DtlsEvent) -> bool {
    matches!(event, DtlsEvent::HandshakeFailed { .. })
}

#[test]
fn openssl_psk_client_echo() {
    if !have_openssl() {
        return;
    }
    let server = Server::start(settings());
    let key = hex(&DEV1_KEY);
    let mut client = Client::spawn(
        server.addr,
        &[
            "-psk_identity",
            "dev1",
            "-psk",
            &key,
            "-cipher",
            "PSK-AES128-CCM8",
        ],
    );
    let events = server.wait_for(established);
    assert!(
        matches!(events.last(), Some(DtlsEvent::Established { identity, .. })
            if **identity == Identity::Psk(Arc::from("dev1"))),
        "{events:?}"
    );
    // Bytes s_client would take as commands ('Q' quits, 'R' renegotiates) without -nocommands.
    let frame = b"Q\x05\x0c\x00R\xffdtls\n";
    client.write(frame);
    client.read_until(frame);
}

#[test]
fn openssl_wrong_psk_is_refused() {
    if !have_openssl() {
        return;
    }
    let server = Server::start(settings());
    let key = hex(&DEV2_KEY);
    let _client = Client::spawn(
        server.addr,
        &[
            "-psk_identity",
            "dev1",
            "-psk",
            &key,
            "-cipher",
            "PSK-AES128-CCM8",
        ],
    );
    let events = server.wait_for(failed);
    assert!(!events.iter().any(established), "{events:?}");
}

/// A throwaway CA, a server certificate (SEC1 key) and client certificates (PKCS#8 keys),
/// made with the openssl command in a temporary directory.
struct Pki {
    dir: PathBuf,
}

const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
[client]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectAltName = DNS:dev-cert.example,IP:10.1.2.3
";

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("mqttsn-dtls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("openssl.cnf"), OPENSSL_CNF).expect("openssl.cnf");
        let pki = Pki { dir };
        pki.run(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "ca.key",
        ]);
        pki.run(&[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-subj",
            "/CN=test-ca",
            "-days",
            "2",
            "-config",
            "openssl.cnf",
            "-extensions",
            "ca",
            "-out",
            "ca.pem",
        ]);
        pki.run(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "server.key",
        ]);
        pki.signed("server", "server", "/CN=gateway", "ca");
        pki
    }

    fn run(&self, args: &[&str]) {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("run openssl");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// `name.pem`, signed by `issuer` (`issuer.pem`/`issuer.key`), for the key `name.key`.
    fn signed(&self, name: &str, profile: &str, subject: &str, issuer: &str) {
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        self.run(&[
            "req",
            "-new",
            "-key",
            &key,
            "-subj",
            subject,
            "-config",
            "openssl.cnf",
            "-out",
            &csr,
        ]);
        let (ca, ca_key) = (format!("{issuer}.pem"), format!("{issuer}.key"));
        self.run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "openssl.cnf",
            "-extensions",
            profile,
            "-out",
            &pem,
        ]);
    }

    /// A client key (PKCS#8) and certificate with subject CN `cn`, from `issuer`.
    fn client(&self, name: &str, cn: &str, issuer: &str) {
        self.run(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &format!("{name}.key"),
        ]);
        self.signed(name, "client", &format!("/CN={cn}"), issuer);
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    fn settings(&self) -> DtlsSettings {
        let dir: &Path = &self.dir;
        DtlsSettings {
            certificate: Some(
                ServerCertificate::load(&dir.join("server.pem"), &dir.join("server.key"))
                    .expect("server certificate"),
            ),
            client_roots: Some(ClientRoots::load(&dir.join("ca.pem")).expect("CA file")),
            require_certificate: true,
            ..settings()
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn openssl_certificate_client_echo() {
    if !have_openssl() {
        return;
    }
    let pki = Pki::new("cert");
    pki.client("client", "dev-cert", "ca");
    let server = Server::start(pki.settings());
    let (cert, key, ca) = (
        pki.path("client.pem"),
        pki.path("client.key"),
        pki.path("ca.pem"),
    );
    let mut client = Client::spawn(
        server.addr,
        &[
            "-cert",
            &cert,
            "-key",
            &key,
            "-CAfile",
            &ca,
            "-verify_return_error",
            "-cipher",
            "ECDHE-ECDSA-AES128-GCM-SHA256",
        ],
    );
    let events = server.wait_for(|e| established(e) || failed(e));
    let Some(DtlsEvent::Established { identity, .. }) = events.last() else {
        panic!("{events:?}");
    };
    let Identity::Certificate { names } = &**identity else {
        panic!("{identity:?}");
    };
    let names: Vec<&str> = names.iter().map(|n| &**n).collect();
    assert_eq!(names, vec!["dev-cert", "dev-cert.example", "10.1.2.3"]);
    let frame = b"\x04\x0c\x00\x01";
    client.write(frame);
    client.read_until(frame);
}

#[test]
fn openssl_certificate_from_another_ca_is_refused() {
    if !have_openssl() {
        return;
    }
    let pki = Pki::new("rogue");
    pki.run(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        "rogue.key",
    ]);
    pki.run(&[
        "req",
        "-x509",
        "-new",
        "-key",
        "rogue.key",
        "-subj",
        "/CN=rogue-ca",
        "-days",
        "2",
        "-config",
        "openssl.cnf",
        "-extensions",
        "ca",
        "-out",
        "rogue.pem",
    ]);
    pki.client("client", "dev-cert", "rogue");
    let server = Server::start(pki.settings());
    let (cert, key) = (pki.path("client.pem"), pki.path("client.key"));
    let _client = Client::spawn(
        server.addr,
        &[
            "-cert",
            &cert,
            "-key",
            &key,
            "-cipher",
            "ECDHE-ECDSA-AES128-GCM-SHA256",
        ],
    );
    let events = server.wait_for(|e| established(e) || failed(e));
    assert!(
        matches!(events.last(), Some(DtlsEvent::HandshakeFailed { reason, .. }) if reason.contains("refused")),
        "{events:?}"
    );
}

#[test]
fn openssl_certificate_listener_serves_psk_and_refuses_clients_without_certificate() {
    if !have_openssl() {
        return;
    }
    let pki = Pki::new("modes");
    let server = Server::start(pki.settings());
    let key = hex(&DEV2_KEY);
    // PSK first in the client's list: the PSK mode is picked.
    let mut psk = Client::spawn(
        server.addr,
        &[
            "-psk_identity",
            "dev2",
            "-psk",
            &key,
            "-cipher",
            "PSK-AES128-CCM8:ECDHE-ECDSA-AES128-GCM-SHA256",
        ],
    );
    let events = server.wait_for(|e| established(e) || failed(e));
    assert!(
        matches!(events.last(), Some(DtlsEvent::Established { identity, .. })
            if **identity == Identity::Psk(Arc::from("dev2"))),
        "{events:?}"
    );
    psk.write(b"psk\n");
    psk.read_until(b"psk\n");
    // A certificate-mode client without a certificate.
    let _anonymous = Client::spawn(server.addr, &["-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"]);
    let events = server.wait_for(|e| established(e) || failed(e));
    assert!(
        matches!(events.last(), Some(DtlsEvent::HandshakeFailed { .. })),
        "{events:?}"
    );
}
