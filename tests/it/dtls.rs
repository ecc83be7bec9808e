//! `[[dtls]]` end to end with a third-party DTLS client: Debian's `openssl s_client -dtls1_2`
//! carries real MQTT-SN frames through the gateway to a real Mosquitto, with a PSK and with a
//! certificate, and the gateway binds the DTLS identity to the ClientId.

use crate::support::mosquitto::Mosquitto;
use crate::support::mqtt::Client;
use crate::support::process::temp_dir;
use crate::support::PATIENCE;
use mqttsn_gateway::codec::*;
use rumqttc::QoS as MqttQoS;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;

const KEY: &str = "00112233445566778899aabbccddeeff";
/// s_client's arguments for `dev-psk` with [`KEY`].
const PSK_ARGS: [&str; 6] = [
    "-psk_identity",
    "dev-psk",
    "-psk",
    KEY,
    "-cipher",
    "PSK-AES128-CCM8",
];

fn openssl_missing() -> bool {
    let missing = Command::new("openssl").arg("version").output().is_err();
    if missing {
        eprintln!("skipped: no openssl binary (apt-get install -y openssl)");
    }
    missing
}

/// An `openssl s_client` session: frames in through its stdin, frames out of its stdout.
struct SClient {
    child: Child,
    stdin: ChildStdin,
    frames: mpsc::Receiver<Vec<u8>>,
}

impl SClient {
    fn start(gateway: SocketAddr, auth: &[&str]) -> SClient {
        let mut child = Command::new("openssl")
            .args(["s_client", "-dtls1_2", "-quiet", "-nocommands", "-connect"])
            .arg(gateway.to_string())
            .args(auth)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl runs");
        let stdin = child.stdin.take().expect("piped");
        let mut stdout = child.stdout.take().expect("piped");
        let (tx, frames) = mpsc::channel();
        std::thread::spawn(move || {
            let mut pending = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                pending.extend_from_slice(&buf[..n]);
                // MQTT-SN frames carry their own length: split the byte stream into them.
                while let Some(len) = frame_len(&pending) {
                    if pending.len() < len {
                        break;
                    }
                    let rest = pending.split_off(len);
                    if tx.send(std::mem::replace(&mut pending, rest)).is_err() {
                        return;
                    }
                }
            }
        });
        SClient {
            child,
            stdin,
            frames,
        }
    }

    fn send(&mut self, msg: Message<'_>) {
        self.stdin
            .write_all(&msg.to_vec().expect("encodable"))
            .expect("s_client stdin");
        self.stdin.flush().expect("flush");
    }

    /// The next frame through the tunnel, or `None` when s_client ends or time runs out.
    fn recv(&self) -> Option<Vec<u8>> {
        self.frames.recv_timeout(PATIENCE).ok()
    }

    fn recv_message(&self) -> Vec<u8> {
        self.recv()
            .expect("a frame through the DTLS tunnel in time")
    }
}

impl Drop for SClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn frame_len(bytes: &[u8]) -> Option<usize> {
    match bytes.first()? {
        0 => None,
        1 => Some(usize::from(u16::from_be_bytes([
            *bytes.get(1)?,
            *bytes.get(2)?,
        ]))),
        &n => Some(usize::from(n)),
    }
}

fn connect(client_id: &str) -> Message<'_> {
    Message::Connect(Connect {
        will: false,
        clean_session: true,
        duration: 60,
        client_id,
    })
}

fn connack(rc: ReturnCode) -> Vec<u8> {
    Message::ConnAck { return_code: rc }.to_vec().unwrap()
}

/// CONNECT through the tunnel until the gateway's broker connection is up.
fn connect_through(client: &mut SClient, client_id: &str) -> Vec<u8> {
    for _ in 0..200 {
        client.send(connect(client_id));
        let reply = client.recv_message();
        if reply != connack(ReturnCode::Congestion) {
            return reply;
        }
        std::thread::yield_now();
    }
    panic!("the gateway's broker connection never came up");
}

async fn gateway_with(
    broker: &Mosquitto,
    dtls: &str,
) -> (mqttsn_gateway::driver::Running, SocketAddr) {
    let config = broker.gateway_config(&format!("[gateway]\nmode = \"aggregating\"\n{dtls}"));
    let gw = mqttsn_gateway::driver::start(config).await.unwrap();
    let addr = gw.dtls_addrs()[0];
    (gw, addr)
}

fn psk_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("psk");
    std::fs::write(&path, format!("dev-psk:{KEY}\nother:{KEY}\n")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    path
}

/// A gateway on `broker` with a PSK listener whose psk_file (in a directory named after the
/// test) holds `dev-psk` and `other`.
async fn psk_gateway(
    broker: &Mosquitto,
    test: &str,
) -> (mqttsn_gateway::driver::Running, SocketAddr) {
    let psk = psk_file(&temp_dir(test));
    let listener = format!(
        "[[dtls]]\nbind = \"127.0.0.1:0\"\npsk_file = \"{}\"\n",
        psk.display()
    );
    gateway_with(broker, &listener).await
}

/// The PSK handshake, then CONNECT, PUBLISH and SUBSCRIBE through it to a real broker; a
/// ClientId that is not the PSK identity is refused, and so is a wrong key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_psk_client_publishes_and_subscribes_through_dtls() {
    if openssl_missing() {
        return;
    }
    let broker = Mosquitto::start();
    let (gw, addr) = psk_gateway(&broker, "dtls-psk").await;
    let mut app = Client::connect(broker.port(), "app").await;
    app.subscribe("dtls/#", MqttQoS::AtLeastOnce).await;
    let client = tokio::task::spawn_blocking(move || {
        let mut client = SClient::start(addr, &PSK_ARGS);
        // Another device's identity as ClientId: refused.
        assert_eq!(
            connect_through(&mut client, "other"),
            connack(ReturnCode::NotSupported)
        );
        assert_eq!(
            connect_through(&mut client, "dev-psk"),
            connack(ReturnCode::Accepted)
        );
        client.send(Message::Register(Register {
            topic_id: 0,
            msg_id: 1,
            topic_name: "dtls/temp",
        }));
        let Ok(Message::RegAck(regack)) = Message::decode(&client.recv_message()) else {
            panic!("expected REGACK");
        };
        client.send(Message::Publish(Publish {
            dup: false,
            qos: QoS::One,
            retain: false,
            topic: TopicRef::Id(regack.topic_id),
            msg_id: 2,
            data: b"21.5",
        }));
        let puback = client.recv_message();
        assert!(
            matches!(
                Message::decode(&puback),
                Ok(Message::PubAck(PubAck {
                    return_code: ReturnCode::Accepted,
                    ..
                }))
            ),
            "{puback:02X?}"
        );
        client.send(Message::Subscribe(Subscribe {
            dup: false,
            qos: QoS::Zero,
            msg_id: 3,
            topic: TopicFilter::Name("cmd/dev-psk"),
        }));
        let suback = client.recv_message();
        assert!(matches!(Message::decode(&suback), Ok(Message::SubAck(_))));
        client
    })
    .await
    .expect("the s_client session");
    let seen = app.next().await;
    assert_eq!(
        (seen.topic.as_str(), seen.payload.as_slice()),
        ("dtls/temp", &b"21.5"[..])
    );
    app.publish("cmd/dev-psk", MqttQoS::AtMostOnce, false, b"on")
        .await;
    let delivered = tokio::task::spawn_blocking(move || client.recv_message())
        .await
        .unwrap();
    let Ok(Message::Publish(p)) = Message::decode(&delivered) else {
        panic!("expected PUBLISH, got {delivered:02X?}");
    };
    assert_eq!(p.data, b"on");

    // A wrong key: no association, so nothing comes through.
    let wrong = tokio::task::spawn_blocking(move || {
        let mut client = SClient::start(
            addr,
            &[
                "-psk_identity",
                "dev-psk",
                "-psk",
                "ffeeddccbbaa99887766554433221100",
                "-cipher",
                "PSK-AES128-CCM8",
            ],
        );
        client.send(connect("dev-psk"));
        client.recv()
    })
    .await
    .unwrap();
    assert_eq!(wrong, None, "a wrong PSK must not get through");
    gw.stop().await;
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let status = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(status.success(), "openssl {args:?}");
}

/// A CA, a gateway certificate and a device certificate (CN dev-cert), all ECDSA P-256.
fn certificates(dir: &std::path::Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ];
    ca.extend(ec);
    openssl(dir, &ca);
    // X.509 v3 with the usages a device certificate has (webpki, like most verifiers, takes
    // no v1 certificates).
    std::fs::write(
        dir.join("v3.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth,serverAuth\n",
    )
    .unwrap();
    for name in ["gateway", "dev-cert"] {
        let subj = format!("/CN={name}");
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let pem = format!("{name}.pem");
        let mut req = vec!["req", "-new", "-subj", &subj, "-keyout", &key, "-out", &csr];
        req.extend(ec);
        openssl(dir, &req);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "v3.ext",
                "-out",
                &pem,
            ],
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let key = dir.join("gateway.key");
        std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

/// With require_certificate, a device certificate signed by the CA is accepted and its CN is
/// the ClientId it may use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_certificate_client_is_accepted_as_its_common_name() {
    if openssl_missing() {
        return;
    }
    let broker = Mosquitto::start();
    let dir = temp_dir("dtls-cert");
    certificates(&dir);
    let d = dir.display();
    let (gw, addr) = gateway_with(
        &broker,
        &format!(
            "[[dtls]]\nbind = \"127.0.0.1:0\"\ncert_file = \"{d}/gateway.pem\"\n\
             key_file = \"{d}/gateway.key\"\nca_file = \"{d}/ca.pem\"\nrequire_certificate = true\n"
        ),
    )
    .await;
    let cert = format!("{d}/dev-cert.pem");
    let key = format!("{d}/dev-cert.key");
    let ca = format!("{d}/ca.pem");
    tokio::task::spawn_blocking(move || {
        let mut client = SClient::start(addr, &["-cert", &cert, "-key", &key, "-CAfile", &ca]);
        assert_eq!(
            connect_through(&mut client, "someone-else"),
            connack(ReturnCode::NotSupported)
        );
        assert_eq!(
            connect_through(&mut client, "dev-cert"),
            connack(ReturnCode::Accepted)
        );
        // Without a certificate: refused by the handshake.
        let mut anonymous = SClient::start(addr, &["-CAfile", &ca]);
        anonymous.send(connect("dev-cert"));
        assert_eq!(anonymous.recv(), None);
    })
    .await
    .unwrap();
    gw.stop().await;
}

/// A UDP relay between s_client and the gateway, as an attacker on the path would sit: it
/// forwards both ways, keeps the client's last datagram, and can send anything to the gateway
/// from the client's apparent address (its own).
struct Relay {
    socket: std::net::UdpSocket,
    gateway: SocketAddr,
    last_from_client: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Relay {
    fn start(gateway: SocketAddr) -> Relay {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let inner = socket.try_clone().unwrap();
        let last = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = std::sync::Arc::clone(&last);
        std::thread::spawn(move || {
            let mut client = None;
            let mut buf = [0u8; 65_536];
            while let Ok((n, from)) = inner.recv_from(&mut buf) {
                if from == gateway {
                    if let Some(client) = client {
                        let _ = inner.send_to(&buf[..n], client);
                    }
                } else {
                    client = Some(from);
                    *keep.lock().unwrap() = buf[..n].to_vec();
                    let _ = inner.send_to(&buf[..n], gateway);
                }
            }
        });
        Relay {
            socket,
            gateway,
            last_from_client: last,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.socket.local_addr().unwrap()
    }

    fn inject(&self, datagram: &[u8]) {
        self.socket.send_to(datagram, self.gateway).unwrap();
    }
}

/// Garbage and a replayed record, sent from the client's own address into its association,
/// are dropped: the message is published once and the association goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_replayed_records_are_ignored() {
    if openssl_missing() {
        return;
    }
    let broker = Mosquitto::start();
    let (gw, addr) = psk_gateway(&broker, "dtls-replay").await;
    let mut app = Client::connect(broker.port(), "app").await;
    app.subscribe("dt", MqttQoS::AtLeastOnce).await;
    let relay = Relay::start(addr);
    let through = relay.addr();
    let client = tokio::task::spawn_blocking(move || {
        let mut client = SClient::start(through, &PSK_ARGS);
        assert_eq!(
            connect_through(&mut client, "dev-psk"),
            connack(ReturnCode::Accepted)
        );
        let publish = |client: &mut SClient, data: &'static [u8], msg_id| {
            client.send(Message::Publish(Publish {
                dup: false,
                qos: QoS::One,
                retain: false,
                topic: TopicRef::Short(*b"dt"),
                msg_id,
                data,
            }));
            let ack = client.recv_message();
            assert!(
                matches!(Message::decode(&ack), Ok(Message::PubAck(_))),
                "{ack:02X?}"
            );
        };
        publish(&mut client, b"once", 1);
        let record = relay.last_from_client.lock().unwrap().clone();
        relay.inject(&record); // the same record again
        let mut flipped = record.clone();
        if let Some(last) = flipped.last_mut() {
            *last ^= 0xFF; // a forged one
        }
        relay.inject(&flipped);
        relay.inject(b"\x17\xfe\xfd garbage"); // garbage
        relay.inject(&[]);
        // The association goes on.
        client.send(Message::PingReq { client_id: None });
        assert_eq!(client.recv_message(), Message::PingResp.to_vec().unwrap());
        publish(&mut client, b"after", 2);
        client
    })
    .await
    .unwrap();
    // Published once, then the next one: the replay reached nobody.
    for expected in [&b"once"[..], b"after"] {
        let seen = app.next().await;
        assert_eq!(
            (seen.topic.as_str(), seen.payload.as_slice()),
            ("dt", expected)
        );
    }
    let dtls = gw.dtls_counters().await.unwrap();
    assert!(dtls.records_dropped >= 3, "{dtls:?}");
    assert_eq!(dtls.associations, 1, "{dtls:?}");
    drop(client);
    gw.stop().await;
}

/// A minimal DTLS 1.2 ClientHello offering PSK_AES128_CCM_8, without a cookie.
fn client_hello(random: u8) -> Vec<u8> {
    let mut body = vec![0xfe, 0xfd];
    body.extend_from_slice(&[random; 32]);
    body.extend_from_slice(&[0, 0]); // no session id, no cookie
    body.extend_from_slice(&[0, 2, 0xc0, 0xa8]); // TLS_PSK_WITH_AES_128_CCM_8
    body.extend_from_slice(&[1, 0]); // null compression
    body.extend_from_slice(&[0, 4, 0x00, 0x17, 0, 0]); // extended_master_secret
    let len = body.len() as u32;
    let mut handshake = vec![1];
    handshake.extend_from_slice(&len.to_be_bytes()[1..]);
    handshake.extend_from_slice(&[0, 0, 0, 0, 0]); // message_seq 0, offset 0
    handshake.extend_from_slice(&len.to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut record = vec![22, 0xfe, 0xff, 0, 0, 0, 0, 0, 0, 0, 0];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

/// ClientHellos from 200 addresses, as a spoofed flood would come: each gets one
/// HelloVerifyRequest no larger than itself, and the gateway keeps no association for any.
#[tokio::test]
async fn a_client_hello_flood_gets_cookies_and_leaves_no_state() {
    let broker = Mosquitto::start();
    let (gw, addr) = psk_gateway(&broker, "dtls-flood").await;
    let mut senders = Vec::new();
    for i in 0..200u32 {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.send_to(&client_hello(i as u8), addr).await.unwrap();
        senders.push(socket);
    }
    for socket in &senders {
        let mut buf = [0u8; 2048];
        let (n, _) = tokio::time::timeout(PATIENCE, socket.recv_from(&mut buf))
            .await
            .expect("a HelloVerifyRequest in time")
            .unwrap();
        assert_eq!(buf[13], 3, "HelloVerifyRequest: {:02X?}", &buf[..n]);
        assert!(n <= client_hello(0).len(), "no amplification: {n} bytes");
    }
    let dtls = gw.dtls_counters().await.unwrap();
    assert_eq!(dtls.hello_verify_sent, 200, "{dtls:?}");
    assert_eq!(
        (dtls.associations, dtls.handshakes_started),
        (0, 0),
        "{dtls:?}"
    );
    gw.stop().await;
}
