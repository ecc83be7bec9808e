//! A simulated MQTT-SN device: its own UDP socket (so its own address at the gateway), the
//! setup exchanges (CONNECT with congestion retry, REGISTER, SUBSCRIBE, DISCONNECT) with
//! retransmission, and allocation-free encoding of PUBLISH into a reused buffer. With a PSK
//! (`--dtls-psk`) the device first shakes hands with a `[[dtls]]` listener and its frames
//! travel as DTLS records.

use crate::payload::{self, Stamp};
use crate::stats::{Histogram, Rng};
use mqttsn_codec::{
    Connect, Message, Publish, QoS, Register, ReturnCode, Subscribe, TopicFilter, TopicRef,
};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;
use tokio::time::{sleep, timeout_at, Instant};

use mqttsn_dtls_client::{PskClient, State as DtlsState};

/// How devices retry during setup.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Resend a request that got no answer after this long.
    pub retry: Duration,
    /// Wait about this long (±50 %) before trying CONNECT again after "rejected: congestion".
    pub backoff: Duration,
    /// Give up on one setup step (all retries included) after this long.
    pub deadline: Duration,
    /// Keep-alive announced in CONNECT, seconds (0: no supervision by the gateway).
    pub keep_alive: u16,
}

/// Counts of setup trouble, shared by all devices.
#[derive(Debug, Default)]
pub struct SetupCounters {
    /// CONNACKs saying "rejected: congestion".
    pub congestion: AtomicU64,
    /// Requests resent because no answer came in time.
    pub resends: AtomicU64,
}

/// Why a device could not be set up.
#[derive(Debug)]
pub enum SetupError {
    /// A socket error.
    Io(io::Error),
    /// No (acceptable) answer before the deadline.
    Timeout(&'static str),
    /// The gateway answered with a refusal.
    Refused(&'static str, ReturnCode),
    /// A frame could not be encoded (e.g. a too long topic).
    Encode(String),
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetupError::Io(e) => write!(f, "socket: {e}"),
            SetupError::Timeout(what) => write!(f, "no {what} before the deadline"),
            SetupError::Refused(what, rc) => write!(f, "{what} refused: {}", rc.name()),
            SetupError::Encode(e) => write!(f, "cannot encode: {e}"),
        }
    }
}

impl From<io::Error> for SetupError {
    fn from(e: io::Error) -> Self {
        SetupError::Io(e)
    }
}

fn encode(msg: Message<'_>) -> Result<Vec<u8>, SetupError> {
    msg.to_vec().map_err(|e| SetupError::Encode(e.to_string()))
}

/// One simulated device.
pub struct Device {
    /// Index among the run's devices (also in every payload it sends).
    pub index: u32,
    /// Its socket, connected to the gateway.
    pub sock: UdpSocket,
    /// Its ClientId.
    pub client_id: String,
    /// The topic id it publishes to, or got in SUBACK for its own topic.
    pub topic_id: u16,
    last_msg_id: u16,
    /// Encoded frame to send (reused).
    tx: Vec<u8>,
    /// The payload (header + zero padding), reused.
    payload: Vec<u8>,
    /// Receive buffer.
    pub rx: Box<[u8]>,
    /// Over DTLS: the association.
    dtls: Option<Box<PskClient>>,
}

/// Sends `frame` on `sock`, as a DTLS record when there is an association: at once if the
/// socket has room, else once it has.
async fn send_on(
    sock: &UdpSocket,
    dtls: &mut Option<Box<PskClient>>,
    frame: &[u8],
) -> io::Result<()> {
    match dtls {
        Some(client) => Device::send_frame(sock, &client.send(frame)).await,
        None => Device::send_frame(sock, frame).await,
    }
}

impl Device {
    /// Binds a socket on the gateway's loopback (or any) address and connects it to the gateway.
    pub async fn open(
        index: u32,
        gateway: SocketAddr,
        client_id: String,
        payload_len: usize,
    ) -> io::Result<Device> {
        let ip = match gateway.ip() {
            ip if ip.is_loopback() => ip,
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let sock = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
        sock.connect(gateway).await?;
        let payload_len = payload_len.max(payload::HEADER);
        Ok(Device {
            index,
            sock,
            client_id,
            topic_id: 0,
            last_msg_id: 0,
            tx: Vec::with_capacity(payload_len + 8),
            payload: vec![0; payload_len],
            // Room for a DTLS record around the largest frame, and for a handshake flight.
            rx: vec![0; (payload_len + 128).max(2048)].into_boxed_slice(),
            dtls: None,
        })
    }

    /// Shakes hands with the gateway's DTLS listener as PSK identity `client_id` (the
    /// gateway binds the identity to that ClientId), resending the first flight after
    /// `timing.retry` until `timing.deadline`.
    pub async fn handshake(&mut self, psk: &[u8], timing: &Timing) -> Result<(), SetupError> {
        let until = Instant::now() + timing.deadline;
        let mut client = Box::new(PskClient::new(&self.client_id, psk, self.index as u8));
        let mut flight = vec![client.start()];
        loop {
            if Instant::now() >= until {
                return Err(SetupError::Timeout("DTLS handshake"));
            }
            for datagram in &flight {
                Self::send_frame(&self.sock, datagram).await?;
            }
            let resend_at = (Instant::now() + timing.retry).min(until);
            while let Ok(got) = timeout_at(resend_at, self.sock.recv(&mut self.rx)).await {
                let Ok(n) = got else { break };
                let replies = client.handle(&self.rx[..n]);
                match client.state {
                    DtlsState::Connected => {
                        for datagram in &replies {
                            Self::send_frame(&self.sock, datagram).await?;
                        }
                        self.dtls = Some(client);
                        return Ok(());
                    }
                    DtlsState::Failed => {
                        return Err(SetupError::Refused(
                            "DTLS handshake",
                            ReturnCode::NotSupported,
                        ))
                    }
                    _ if !replies.is_empty() => {
                        flight = replies;
                        for datagram in &flight {
                            Self::send_frame(&self.sock, datagram).await?;
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// The next frame from the gateway into `rx` (decrypted over DTLS): its length.
    pub async fn recv(&mut self) -> io::Result<usize> {
        loop {
            if let Some(client) = self.dtls.as_mut() {
                if !client.received.is_empty() {
                    let frame = client.received.remove(0);
                    let n = frame.len().min(self.rx.len());
                    self.rx[..n].copy_from_slice(&frame[..n]);
                    return Ok(n);
                }
            }
            let n = self.sock.recv(&mut self.rx).await?;
            match self.dtls.as_mut() {
                None => return Ok(n),
                Some(client) => {
                    for reply in client.handle(&self.rx[..n]) {
                        Self::send_frame(&self.sock, &reply).await?;
                    }
                }
            }
        }
    }

    /// The next MsgId (never 0).
    pub fn next_msg_id(&mut self) -> u16 {
        self.last_msg_id = self.last_msg_id.checked_add(1).unwrap_or(1);
        self.last_msg_id
    }

    /// Sends one frame: at once if the socket has room, else once it has.
    pub async fn send_frame(sock: &UdpSocket, frame: &[u8]) -> io::Result<()> {
        match sock.try_send(frame) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => sock.send(frame).await.map(drop),
            Err(e) => Err(e),
        }
    }

    /// Encodes `msg` into the reused buffer and sends it.
    pub async fn send_msg(&mut self, msg: Message<'_>) -> io::Result<()> {
        self.tx.clear();
        msg.encode(&mut self.tx)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        send_on(&self.sock, &mut self.dtls, &self.tx).await
    }

    /// Encodes a PUBLISH to the device's topic id, with `stamp` at the start of the payload, and
    /// sends it. No allocation.
    pub async fn publish(
        &mut self,
        qos: QoS,
        dup: bool,
        msg_id: u16,
        stamp: Stamp,
    ) -> io::Result<()> {
        payload::write(&mut self.payload, stamp);
        self.tx.clear();
        Message::Publish(Publish {
            dup,
            qos,
            retain: false,
            topic: TopicRef::Id(self.topic_id),
            msg_id,
            data: &self.payload,
        })
        .encode(&mut self.tx)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        send_on(&self.sock, &mut self.dtls, &self.tx).await
    }

    /// Sends `frame` and waits for the answer `accept` recognises, resending after
    /// `timing.retry` until `until`.
    async fn exchange<T>(
        &mut self,
        frame: &[u8],
        timing: &Timing,
        until: Instant,
        counters: &SetupCounters,
        what: &'static str,
        mut accept: impl FnMut(Message<'_>) -> Option<T>,
    ) -> Result<T, SetupError> {
        loop {
            if Instant::now() >= until {
                return Err(SetupError::Timeout(what));
            }
            send_on(&self.sock, &mut self.dtls, frame).await?;
            let resend_at = (Instant::now() + timing.retry).min(until);
            loop {
                match timeout_at(resend_at, self.recv()).await {
                    Err(_) => {
                        crate::stats::Live::add(&counters.resends, 1);
                        break;
                    }
                    // Nobody listening yet (ICMP port unreachable): wait for the resend.
                    Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        tokio::time::sleep_until(resend_at).await;
                    }
                    Ok(Err(e)) => return Err(SetupError::Io(e)),
                    Ok(Ok(n)) => {
                        if let Ok(msg) = Message::decode(&self.rx[..n]) {
                            if let Some(v) = accept(msg) {
                                return Ok(v);
                            }
                        }
                    }
                }
            }
        }
    }

    /// CONNECT (clean session, no will) until accepted; "rejected: congestion" is retried after
    /// a jittered backoff.
    pub async fn connect(
        &mut self,
        timing: &Timing,
        counters: &SetupCounters,
        rng: &mut Rng,
    ) -> Result<(), SetupError> {
        let until = Instant::now() + timing.deadline;
        let frame = encode(Message::Connect(Connect {
            will: false,
            clean_session: true,
            duration: timing.keep_alive,
            client_id: &self.client_id,
        }))?;
        loop {
            let rc = self
                .exchange(&frame, timing, until, counters, "CONNACK", |m| match m {
                    Message::ConnAck { return_code } => Some(return_code),
                    _ => None,
                })
                .await?;
            match rc {
                ReturnCode::Accepted => return Ok(()),
                ReturnCode::Congestion => {
                    crate::stats::Live::add(&counters.congestion, 1);
                    let wait = rng.jitter(timing.backoff, 0.5);
                    if Instant::now() + wait >= until {
                        return Err(SetupError::Refused("CONNECT", rc));
                    }
                    sleep(wait).await;
                }
                other => return Err(SetupError::Refused("CONNECT", other)),
            }
        }
    }

    /// REGISTER `topic`; sets and returns the topic id.
    pub async fn register(
        &mut self,
        topic: &str,
        timing: &Timing,
        counters: &SetupCounters,
    ) -> Result<u16, SetupError> {
        let until = Instant::now() + timing.deadline;
        let msg_id = self.next_msg_id();
        let frame = encode(Message::Register(Register {
            topic_id: 0,
            msg_id,
            topic_name: topic,
        }))?;
        let (id, rc) = self
            .exchange(&frame, timing, until, counters, "REGACK", |m| match m {
                Message::RegAck(a) if a.msg_id == msg_id => Some((a.topic_id, a.return_code)),
                _ => None,
            })
            .await?;
        if rc != ReturnCode::Accepted {
            return Err(SetupError::Refused("REGISTER", rc));
        }
        self.topic_id = id;
        Ok(id)
    }

    /// SUBSCRIBE to the topic name `topic`; returns the topic id from SUBACK.
    pub async fn subscribe(
        &mut self,
        topic: &str,
        qos: QoS,
        timing: &Timing,
        counters: &SetupCounters,
    ) -> Result<u16, SetupError> {
        let until = Instant::now() + timing.deadline;
        let msg_id = self.next_msg_id();
        let frame = encode(Message::Subscribe(Subscribe {
            dup: false,
            qos,
            msg_id,
            topic: TopicFilter::Name(topic),
        }))?;
        let (id, rc) = self
            .exchange(&frame, timing, until, counters, "SUBACK", |m| match m {
                Message::SubAck(a) if a.msg_id == msg_id => Some((a.topic_id, a.return_code)),
                _ => None,
            })
            .await?;
        if rc != ReturnCode::Accepted {
            return Err(SetupError::Refused("SUBSCRIBE", rc));
        }
        Ok(id)
    }

    /// DISCONNECT and wait (briefly, one resend) for the gateway's DISCONNECT, so that the
    /// session is gone before the next run.
    pub async fn disconnect(&mut self) -> bool {
        let Ok(frame) = encode(Message::Disconnect { duration: None }) else {
            return false;
        };
        let timing = Timing {
            retry: Duration::from_secs(1),
            backoff: Duration::ZERO,
            deadline: Duration::from_millis(2500),
            keep_alive: 0,
        };
        let until = Instant::now() + timing.deadline;
        let counters = SetupCounters::default();
        self.exchange(&frame, &timing, until, &counters, "DISCONNECT", |m| {
            matches!(m, Message::Disconnect { .. }).then_some(())
        })
        .await
        .is_ok()
    }
}

/// What devices do after CONNECT during setup.
#[derive(Debug, Clone)]
pub enum Then {
    /// REGISTER `{prefix}{index}` (publishers).
    Register {
        /// Topic prefix.
        prefix: String,
    },
    /// SUBSCRIBE to `{prefix}{index}`, and to `shared` if set (downstream).
    Subscribe {
        /// Topic prefix.
        prefix: String,
        /// Also subscribe to this topic.
        shared: Option<String>,
        /// Requested QoS.
        qos: QoS,
    },
}

/// The ClientId prefix of a run: tagged with the run, or over DTLS the fixed `dtls-` (each
/// ClientId is a PSK identity, which the gateway's psk_file must list in advance).
pub fn client_prefix(run: &str, dtls: bool) -> String {
    if dtls {
        "dtls-".to_owned()
    } else {
        format!("l{run}-")
    }
}

/// How many devices and how to set them up.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The gateway.
    pub gateway: SocketAddr,
    /// Number of devices.
    pub devices: u32,
    /// ClientIds are `{client_prefix}{index}`.
    pub client_prefix: String,
    /// Payload size the devices use.
    pub payload_len: usize,
    /// Devices in setup at once.
    pub concurrency: usize,
    /// Retries.
    pub timing: Timing,
    /// After CONNECT.
    pub then: Then,
    /// Over DTLS with this PSK (each device's PSK identity is its ClientId).
    pub dtls_psk: Option<Arc<[u8]>>,
}

/// How setup went.
#[derive(Default)]
pub struct SetupReport {
    /// From the first CONNECT to the last device ready.
    pub elapsed: Duration,
    /// Devices that failed, and the first error.
    pub failed: u32,
    /// The first error seen.
    pub first_error: Option<String>,
    /// CONNECT to accepted CONNACK, per device (retries included).
    pub connect_latency: Histogram,
    /// CONNACK congestion answers and resends.
    pub counters: SetupCounters,
}

impl SetupReport {
    /// One line for the summary.
    pub fn line(&self, ready: usize) -> String {
        let mut s = format!(
            "{ready} devices ready in {:.2} s; CONNECT->CONNACK {}; congestion answers {}, resends {}",
            self.elapsed.as_secs_f64(),
            self.connect_latency.summary(),
            crate::stats::Live::get(&self.counters.congestion),
            crate::stats::Live::get(&self.counters.resends),
        );
        if self.failed > 0 {
            s.push_str(&format!(
                "; FAILED {} (first error: {})",
                self.failed,
                self.first_error.as_deref().unwrap_or("?")
            ));
        }
        s
    }
}

/// Sets up `plan.devices` devices, `plan.concurrency` at a time, each in its own task. Returns
/// the ready devices sorted by index.
pub async fn setup(plan: &Plan) -> (Vec<Device>, SetupReport) {
    let report = Arc::new(SetupReport::default());
    let permits = Arc::new(Semaphore::new(plan.concurrency.max(1)));
    let start = Instant::now();
    let mut handles = Vec::with_capacity(plan.devices as usize);
    for index in 0..plan.devices {
        let plan = plan.clone();
        let report = Arc::clone(&report);
        let permits = Arc::clone(&permits);
        handles.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await.ok();
            let client_id = format!("{}{index}", plan.client_prefix);
            let mut dev = Device::open(index, plan.gateway, client_id, plan.payload_len).await?;
            if let Some(psk) = &plan.dtls_psk {
                dev.handshake(psk, &plan.timing).await?;
            }
            let mut rng = Rng::new(u64::from(index));
            let t0 = Instant::now();
            dev.connect(&plan.timing, &report.counters, &mut rng)
                .await?;
            report
                .connect_latency
                .record(crate::stats::nanos(t0.elapsed()));
            match &plan.then {
                Then::Register { prefix } => {
                    let topic = format!("{prefix}{index}");
                    dev.register(&topic, &plan.timing, &report.counters).await?;
                }
                Then::Subscribe {
                    prefix,
                    shared,
                    qos,
                } => {
                    let topic = format!("{prefix}{index}");
                    dev.topic_id = dev
                        .subscribe(&topic, *qos, &plan.timing, &report.counters)
                        .await?;
                    if let Some(shared) = shared {
                        dev.subscribe(shared, *qos, &plan.timing, &report.counters)
                            .await?;
                    }
                }
            }
            Ok::<Device, SetupError>(dev)
        }));
    }
    let mut devices = Vec::with_capacity(handles.len());
    let mut failed = 0;
    let mut first_error = None;
    for h in handles {
        match h.await {
            Ok(Ok(dev)) => devices.push(dev),
            Ok(Err(e)) => {
                failed += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("task: {e}"));
            }
        }
    }
    let elapsed = start.elapsed();
    let mut report = Arc::try_unwrap(report).unwrap_or_default();
    report.elapsed = elapsed;
    report.failed = failed;
    report.first_error = first_error;
    (devices, report)
}

/// Disconnects every device, `concurrency` at a time; returns how many got no answer.
pub async fn disconnect_all(devices: Vec<Device>, concurrency: usize) -> usize {
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut handles = Vec::with_capacity(devices.len());
    for mut dev in devices {
        let permits = Arc::clone(&permits);
        handles.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await.ok();
            dev.disconnect().await
        }));
    }
    let mut unanswered = 0;
    for h in handles {
        if !matches!(h.await, Ok(true)) {
            unanswered += 1;
        }
    }
    unanswered
}

/// What every publishing mode starts with: a broker subscriber on `{topic_prefix}#` counting
/// into `e2e` and `live`, then `devices` devices (ClientIds `{client_prefix}{index}`) connected
/// and each registered to `{topic_prefix}{index}`. Fails if no device could be set up.
#[allow(clippy::too_many_arguments)]
pub async fn subscriber_and_publishers(
    broker: (&str, u16),
    subscriber_id: &str,
    qos: rumqttc::QoS,
    topic_prefix: &str,
    plan: Plan,
    e2e: &Arc<Histogram>,
    live: &Arc<crate::stats::Live>,
) -> Result<(crate::subscriber::Subscriber, Vec<Device>), String> {
    let sub = crate::subscriber::Subscriber::start(
        subscriber_id,
        broker,
        &format!("{topic_prefix}#"),
        qos,
        plan.devices as usize,
        Arc::clone(e2e),
        Arc::clone(live),
    )
    .await?;
    let (devices, setup) = setup(&plan).await;
    println!("setup: {}", setup.line(devices.len()));
    if devices.is_empty() {
        let _ = sub.finish().await;
        return Err("no device could be set up".to_string());
    }
    Ok((sub, devices))
}
