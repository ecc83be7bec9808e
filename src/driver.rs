//! The driver: one tokio task owns the [`Gateway`] engine and runs a `select!` over the UDP
//! listeners, the broker connections and the engine's next deadline. After every input it
//! drains the engine's outputs into the transports. It is the only place that reads the clock.
//!
//! It also owns every task the transports start. On stop it closes the broker connections
//! (MQTT DISCONNECT), fires the [`crate::transport::shutdown`] signal, awaits every task and
//! finishes the recording, so that when [`run`] or [`Running::stop`] returns, no socket, tty or
//! file of the gateway's is left open.

use crate::config::{Config, UpstreamUrl};
use crate::engine::persist::StoredSession;
use crate::engine::{
    ConnId, Counters, Destination, Event, Gateway, Link, PeerAddr, UpstreamCommand, UpstreamEvent,
};
use crate::mqtt_v4::MQTT_V4;
use crate::record::snlog::{Endpoint, Payload, RecordEvent, Recorder};
use crate::storage::group_commit::{GroupCommit, Outputs};
use crate::storage::StorageError;
use crate::time::Instant;
use crate::transcript::Control;
use crate::transport::dtls::DtlsCounters;
use crate::transport::dtls_io::DtlsTransport;
use crate::transport::serial::port::{SerialInbound, SerialTransport};
use crate::transport::shutdown::{self, Trigger};
use crate::transport::udp::{TooLong, UdpError, UdpTransport};
use crate::transport::upstream::{
    ConnEvent, Pressure, UpstreamError, UpstreamPool, UpstreamSettings,
};
use mqttsn_core::hash::HashSeed;
use std::future::Future;
use std::net::SocketAddr;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Inputs taken in one go (from a socket or a channel) before the outputs are flushed:
/// amortizes the flush under load without delaying a lone datagram.
const BATCH: usize = 256;
/// Channel depths: bounded, so a flood applies backpressure instead of growing memory. (UDP
/// has no channel: the loop reads the sockets itself.)
const SERIAL_QUEUE: usize = 8192;
const UPSTREAM_QUEUE: usize = 8192;

/// Why the gateway could not start.
#[derive(Debug, Error)]
pub enum DriverError {
    /// A UDP listener could not be set up.
    #[error(transparent)]
    Udp(#[from] UdpError),
    /// The broker connection settings are unusable (e.g. a bad CA file).
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The embedded broker did not start.
    #[error("embedded broker: {0}")]
    Embedded(String),
    /// `upstream.url = "embedded"` in a build without the `embedded-broker` feature.
    #[error("this build has no embedded broker (feature `embedded-broker`)")]
    NoEmbeddedBroker,
    /// The state directory cannot be used by this gateway.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A `[[dtls]]` listener could not be set up.
    #[error(transparent)]
    Dtls(#[from] crate::transport::dtls_io::DtlsSetupError),
    /// A clients, ACL or key file is unreadable, invalid, or (with `auth.strict`) readable
    /// by others.
    #[error("{0}")]
    Auth(String),
}

/// A running gateway (see [`start`]).
pub struct Running {
    udp: Vec<SocketAddr>,
    dtls: Vec<SocketAddr>,
    broker: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    /// Asks the loop for the engine's and the DTLS listeners' counters (answered between two
    /// inputs).
    counters: mpsc::Sender<oneshot::Sender<(Counters, DtlsCounters)>>,
    /// Asks the loop to read the auth files again (SIGHUP).
    reload: mpsc::Sender<oneshot::Sender<Result<(), String>>>,
    task: JoinHandle<()>,
    #[cfg(feature = "embedded-broker")]
    _embedded: Option<crate::embedded::EmbeddedBroker>,
}

impl Running {
    /// The UDP addresses the gateway listens on (with the real port when configured as 0).
    pub fn udp_addrs(&self) -> &[SocketAddr] {
        &self.udp
    }

    /// The DTLS addresses the gateway listens on.
    pub fn dtls_addrs(&self) -> &[SocketAddr] {
        &self.dtls
    }

    /// The broker address in use, when it is a plain TCP address (embedded or `mqtt://`).
    pub fn broker_addr(&self) -> SocketAddr {
        self.broker
    }

    /// The engine's running totals now (drops and refusals among them). Costs the loop
    /// nothing until asked. `None` once the gateway has stopped.
    pub async fn counters(&self) -> Option<Counters> {
        self.totals().await.map(|(engine, _)| engine)
    }

    /// The `[[dtls]]` listeners' totals now (handshakes, cookies, associations, drops).
    pub async fn dtls_counters(&self) -> Option<DtlsCounters> {
        self.totals().await.map(|(_, dtls)| dtls)
    }

    async fn totals(&self) -> Option<(Counters, DtlsCounters)> {
        let (reply, answer) = oneshot::channel();
        self.counters.send(reply).await.ok()?;
        answer.await.ok()
    }

    /// Reads `auth.clients_file`, `auth.acl_file` and the DTLS key files again and puts
    /// them in force without dropping sessions; devices no longer allowed are disconnected
    /// (their wills published). A file that does not load keeps the old rules in force.
    ///
    /// # Errors
    /// What was wrong with the new files (`file:line:column: key: message`), or that the
    /// gateway has stopped.
    pub async fn reload(&self) -> Result<(), String> {
        let (reply, answer) = oneshot::channel();
        let stopped = || "the gateway has stopped".to_owned();
        self.reload.send(reply).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Stops the gateway cleanly: MQTT DISCONNECT on every broker connection, then waits for
    /// the loop and every transport task to finish. When it returns, the UDP sockets, serial
    /// ports, broker connections and recording files are closed. (Not the embedded broker's
    /// listener: rumqttd cannot be stopped, see the `embedded` module.)
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// What the gateway records while it runs (`--record`).
#[derive(Default)]
pub struct Recording {
    /// The recorder (transcript and/or pcap), if recording.
    pub snlog: Option<Recorder>,
}

/// Starts the gateway in the current tokio runtime and returns once it is listening.
pub async fn start(config: Config) -> Result<Running, DriverError> {
    start_with(config, Recording::default()).await
}

/// [`start`], recording the traffic as `recording` says.
pub async fn start_with(config: Config, recording: Recording) -> Result<Running, DriverError> {
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    // Only the embedded broker changes it.
    #[cfg_attr(not(feature = "embedded-broker"), allow(unused_mut))]
    let mut config = config;
    #[cfg(feature = "embedded-broker")]
    let mut embedded = None;
    if config.upstream.url == UpstreamUrl::Embedded {
        #[cfg(feature = "embedded-broker")]
        {
            let broker = crate::embedded::EmbeddedBroker::start(config.upstream.embedded_bind)
                .map_err(|e| DriverError::Embedded(e.to_string()))?;
            let addr = broker.local_addr();
            tracing::info!(%addr, "embedded MQTT broker listening");
            config.upstream.url = UpstreamUrl::Tcp {
                host: addr.ip().to_string(),
                port: addr.port(),
            };
            embedded = Some(broker);
        }
        #[cfg(not(feature = "embedded-broker"))]
        return Err(DriverError::NoEmbeddedBroker);
    }
    let broker = config.upstream.broker_addr();
    if config.gateway.mode == crate::config::Mode::Transparent {
        warn_if_few_file_descriptors(config.gateway.max_clients);
    }
    let settings = UpstreamSettings::from_config(&config.upstream)?;
    // Before any socket is bound: a state directory another gateway holds stops the start.
    let (storage, stored) = match &config.storage.dir {
        None => (None, Vec::new()),
        Some(dir) => {
            let opened = crate::storage::open(dir)?;
            let storage = opened.store.map(|store| {
                GroupCommit::new(store, config.storage.commit_interval, opened.moved_aside)
            });
            (storage, opened.sessions)
        }
    };
    let (trigger, shutdown) = shutdown::channel();
    // A peer table entry per session at most is plenty: devices without a session send
    // little that needs an answer from the right socket.
    let udp = UdpTransport::bind(&config.udp, config.gateway.max_clients)?;
    let addrs = udp.local_addrs();
    for addr in &addrs {
        tracing::info!(%addr, "listening for MQTT-SN over UDP");
    }
    let (serial_tx, serial_rx) = mpsc::channel(SERIAL_QUEUE);
    let serial = SerialTransport::start(&config.serial, serial_tx, &shutdown);
    let (events_tx, events_rx) = mpsc::channel(UPSTREAM_QUEUE);
    let pool = UpstreamPool::new(settings, events_tx);
    for warning in config.security_warnings() {
        tracing::warn!("{warning}");
    }
    let seed = random_hash_seed();
    let dtls = DtlsTransport::bind(&config.dtls)?;
    for addr in dtls.local_addrs() {
        tracing::info!(%addr, "listening for MQTT-SN over DTLS");
    }
    let dtls_addrs = dtls.local_addrs();
    let auth = Auth {
        config: config.auth.clone(),
        dtls_secrets: dtls.secret_files(),
        seed,
    };
    let policy = auth
        .load(dtls.psk_identities())
        .map_err(DriverError::Auth)?;
    if !policy.allows_anonymous() || auth.config.lists_devices() {
        tracing::info!(
            allow_anonymous = policy.allows_anonymous(),
            acl = policy.has_acl(),
            "device authentication in force"
        );
    }
    let mut engine = Gateway::new(config.engine_settings(seed), &MQTT_V4);
    engine.set_auth(Instant::ZERO, policy);
    if storage.is_some() {
        engine.enable_persistence();
    }
    let (counters_tx, counters_rx) = mpsc::channel(4);
    let (reload_tx, reload_rx) = mpsc::channel(4);
    let task = tokio::spawn(async move {
        let stop = async {
            let _ = stop_rx.await;
        };
        let io = Io {
            udp,
            dtls,
            dtls_closing: Vec::new(),
            serial,
            pool,
            recorder: recording.snlog,
            storage,
            held: Vec::new(),
            held_to: std::collections::HashSet::new(),
            shutdown: trigger,
        };
        let inputs = Inputs {
            serial: serial_rx,
            upstream: events_rx,
            counters: counters_rx,
            reload: reload_rx,
        };
        event_loop(engine, io, inputs, stored, auth, stop).await;
    });
    Ok(Running {
        udp: addrs,
        dtls: dtls_addrs,
        broker,
        stop: Some(stop_tx),
        counters: counters_tx,
        reload: reload_tx,
        task,
        #[cfg(feature = "embedded-broker")]
        _embedded: embedded,
    })
}

/// Runs the gateway until `shutdown` completes (SIGINT/SIGTERM in `main`), then stops cleanly.
pub async fn run(
    config: Config,
    recording: Recording,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DriverError> {
    let running = start_with(config, recording).await?;
    tokio::pin!(shutdown);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(mut hangup) => loop {
                tokio::select! {
                    () = &mut shutdown => break,
                    Some(()) = hangup.recv() => match running.reload().await {
                        Ok(()) => tracing::info!("SIGHUP: auth files reloaded"),
                        Err(e) => tracing::error!("SIGHUP: reload failed, the old rules stay in force: {e}"),
                    },
                }
            },
            Err(e) => {
                tracing::warn!("SIGHUP cannot be caught ({e}): no reload");
                (&mut shutdown).await;
            }
        }
    }
    #[cfg(not(unix))]
    (&mut shutdown).await;
    tracing::info!("shutting down");
    running.stop().await;
    Ok(())
}

/// Transparent mode holds one broker connection per device: say so at start if the open-file
/// limit cannot cover `max_clients` of them (raise it with `ulimit -n` or systemd's
/// `LimitNOFILE=`).
fn warn_if_few_file_descriptors(max_clients: usize) {
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else {
        return;
    };
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(soft) = soft {
        let needed = max_clients.saturating_add(64);
        if soft < needed {
            tracing::warn!(
                limit = soft,
                needed,
                "open-file limit too low for max_clients broker connections in transparent mode; \
                 raise it (ulimit -n, or LimitNOFILE= in the systemd unit)"
            );
        }
    }
}

/// Keys for the engine's hash maps that a device cannot guess, from the OS randomness behind
/// std's `RandomState` (so no randomness crate is needed).
fn random_hash_seed() -> HashSeed {
    use std::hash::BuildHasher;
    let state = std::collections::hash_map::RandomState::new();
    HashSeed(state.hash_one(0u8), state.hash_one(1u8))
}

/// The engine's clock: milliseconds since the loop started.
struct Clock(std::time::Instant);

impl Clock {
    fn now(&self) -> Instant {
        Instant::from_millis(u64::try_from(self.0.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    fn deadline(&self, at: Instant) -> tokio::time::Instant {
        (self.0 + std::time::Duration::from_millis(at.as_millis())).into()
    }
}

/// The transports the loop writes to.
struct Io {
    udp: UdpTransport,
    dtls: DtlsTransport,
    /// DTLS associations to close after this turn's frames have gone out (devices a reload
    /// disconnected).
    dtls_closing: Vec<SocketAddr>,
    serial: SerialTransport,
    pool: UpstreamPool,
    recorder: Option<Recorder>,
    /// The session store, when `[storage] dir` is set and usable.
    storage: Option<GroupCommit>,
    /// Frames for devices held until the next commit ([`flush_early`]); at most what one
    /// commit interval produces.
    held: Vec<crate::engine::Transmit>,
    /// Where the held frames go (so that later frames there wait too).
    held_to: std::collections::HashSet<Destination>,
    /// Stops the transports' tasks (see [`shut_down`]).
    shutdown: Trigger,
}

impl Io {
    /// Records an event when recording; costs one branch otherwise.
    fn record(&self, at: Instant, inbound: bool, peer: Endpoint, payload: Payload) {
        self.record_as(at, inbound, peer, payload, None);
    }

    /// [`Io::record`] of a frame from a DTLS association, with what it proved.
    fn record_as(
        &self,
        at: Instant,
        inbound: bool,
        peer: Endpoint,
        payload: Payload,
        identity: Option<&crate::engine::auth::Identity>,
    ) {
        if let Some(recorder) = &self.recorder {
            let local = match &peer {
                Endpoint::Device(PeerAddr {
                    link: Link::Udp(addr),
                    ..
                }) => self.udp.local_for(*addr),
                Endpoint::Device(PeerAddr {
                    link: Link::Dtls(addr),
                    ..
                }) => self.dtls.local_for(*addr),
                Endpoint::Broadcast => self.udp.local_addrs().first().copied(),
                _ => None,
            };
            recorder.record(RecordEvent {
                identity: identity.cloned(),
                at,
                inbound,
                peer,
                local,
                payload,
            });
        }
    }
}

/// Hands the frames the DTLS listeners decrypted to the engine (with what each association
/// proved) and sends what the listeners have to send.
fn take_dtls_frames(engine: &mut Gateway, io: &mut Io, now: Instant) {
    io.dtls.flush();
    while let Some(secured) = io.dtls.poll_frame() {
        let from = PeerAddr::direct(Link::Dtls(secured.peer));
        if io.recorder.is_some() {
            let bytes = bytes::Bytes::copy_from_slice(&secured.frame);
            let identity = secured.identity.as_ref();
            io.record_as(
                now,
                true,
                Endpoint::Device(from),
                Payload::Bytes(bytes),
                identity,
            );
        }
        match &secured.identity {
            Some(identity) => engine.handle_secured_frame(now, from, identity, &secured.frame),
            None => engine.handle_frame(now, from, &secured.frame),
        }
    }
}

/// What the recorder writes for an upstream command or event: its transcript control word (the
/// core's mapping, shared with the replay harness), else its bytes.
fn recorded(control: Option<Control>, data: Option<&bytes::Bytes>) -> Payload {
    match control {
        Some(control) => Payload::Control(control),
        None => Payload::Bytes(
            data.map(crate::record::redact::mask_connect_passwords)
                .unwrap_or_default(),
        ),
    }
}

/// The recorder's name for a broker connection: with its device in transparent mode.
fn broker_endpoint(engine: &Gateway, conn: ConnId) -> Endpoint {
    Endpoint::Broker {
        conn: conn.0,
        owner: engine.upstream_owner(conn).map(|(_, peer)| peer),
    }
}

/// What the loop waits on besides the clock and the stop signal.
struct Inputs {
    serial: mpsc::Receiver<SerialInbound>,
    upstream: mpsc::Receiver<(ConnId, ConnEvent)>,
    counters: mpsc::Receiver<oneshot::Sender<(Counters, DtlsCounters)>>,
    reload: mpsc::Receiver<oneshot::Sender<Result<(), String>>>,
}

/// Where the auth policy comes from, to build it again on reload.
struct Auth {
    config: crate::config::AuthConfig,
    /// The `[[dtls]]` key files (checked like the clients file).
    dtls_secrets: Vec<std::path::PathBuf>,
    seed: HashSeed,
}

impl Auth {
    /// Reads the files and builds the policy, `psk_identities` (of the DTLS listeners) bound
    /// to their ClientIds; checks the secret files' permissions first.
    fn load(
        &self,
        psk_identities: Vec<std::sync::Arc<str>>,
    ) -> Result<crate::engine::auth::AuthPolicy, String> {
        let files = self
            .config
            .secret_files()
            .into_iter()
            .chain(self.dtls_secrets.iter().map(std::path::PathBuf::as_path));
        crate::secrets::check(files, self.config.strict)?;
        self.config
            .load_policy(self.seed, psk_identities)
            .map_err(|e| e.to_string())
    }

    /// SIGHUP: the new auth and PSK files, or none of them. The DTLS associations of the
    /// devices it disconnects are closed once their DISCONNECT has gone out.
    fn reload(&self, engine: &mut Gateway, io: &mut Io, now: Instant) -> Result<(), String> {
        let tables = io.dtls.load_psk()?;
        let policy = self.load(tables.identities())?;
        io.dtls.apply_psk(tables);
        for peer in engine.set_auth(now, policy) {
            if let Link::Dtls(addr) = peer.link {
                io.dtls_closing.push(addr);
            }
        }
        Ok(())
    }
}

async fn event_loop(
    mut engine: Gateway,
    mut io: Io,
    inputs: Inputs,
    stored: Vec<StoredSession>,
    auth: Auth,
    stop: impl Future<Output = ()>,
) {
    let Inputs {
        mut serial,
        mut upstream,
        mut counters,
        mut reload,
    } = inputs;
    let clock = Clock(std::time::Instant::now());
    if io.storage.is_some() {
        restore(&mut engine, stored, clock.now());
        // Restored sessions of devices the policy no longer lets in go now.
        let policy = engine.auth().clone();
        engine.set_auth(clock.now(), policy);
    }
    // Every UDP datagram is read into this, then handed to the engine.
    let mut batch = io.udp.batch();
    tokio::pin!(stop);
    flush(&mut engine, &mut io, clock.now()).await;
    // While changes wait for their group commit, so does everything the gateway would send.
    let mut held_until: Option<Instant> = None;
    loop {
        let deadline = engine.poll_timeout();
        let sleep_until = clock.deadline(deadline.unwrap_or(Instant::from_millis(u64::MAX / 4)));
        let commit_at = clock.deadline(held_until.unwrap_or(Instant::from_millis(u64::MAX / 4)));
        let dtls_deadline = io.dtls.poll_timeout();
        let dtls_at = dtls_deadline.map_or(sleep_until, tokio::time::Instant::from_std);
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep_until(commit_at), if held_until.is_some() => {
                held_until = None;
                if let Some(storage) = io.storage.as_mut() {
                    storage.commit(&mut engine, clock.now());
                }
                flush(&mut engine, &mut io, clock.now()).await;
                continue;
            }
            () = io.udp.readable() => {
                // Batches straight from the sockets, up to BATCH datagrams before the engine's
                // output goes out; the rest waits in the kernel.
                let mut taken = 0;
                while taken < BATCH {
                    let got = io.udp.recv_batch(&mut batch);
                    if got == 0 {
                        break;
                    }
                    taken += got;
                    let now = clock.now();
                    for datagram in batch.datagrams() {
                        let from = PeerAddr::udp(datagram.from);
                        io.udp.heard(datagram.listener, datagram.from);
                        match datagram.frame {
                            Ok(frame) => {
                                if io.recorder.is_some() {
                                    let bytes = bytes::Bytes::copy_from_slice(frame);
                                    io.record(now, true, Endpoint::Device(from), Payload::Bytes(bytes));
                                }
                                engine.handle_frame(now, from, frame);
                            }
                            // Not recorded: the gateway never read it (a replay counts no
                            // such drop).
                            Err(TooLong { limit }) => engine.handle_too_long(now, from, limit),
                        }
                    }
                }
            }
            Some(frame) = serial.recv() => {
                let link = Link::Serial {
                    port: frame.port,
                    radio: frame.radio.map_or(0, |r| r.addr64),
                };
                let now = clock.now();
                io.record(now, true, Endpoint::Device(PeerAddr::direct(link)), Payload::Bytes(frame.bytes.clone()));
                engine.handle_frame(now, PeerAddr::direct(link), &frame.bytes);
            }
            Some(first) = upstream.recv() => {
                let mut next = Some(first);
                let mut taken = 0;
                while let Some((conn, event)) = next {
                    let now = clock.now();
                    // A drain reported before the queue congested again says nothing now.
                    if event == ConnEvent::Drained && io.pool.is_congested(conn) {
                        taken += 1;
                        next = if taken < BATCH { upstream.try_recv().ok() } else { None };
                        continue;
                    }
                    let (upstream_event, data) = match &event {
                        ConnEvent::Connected => (UpstreamEvent::Connected, None),
                        ConnEvent::Data(bytes) => (UpstreamEvent::Data(bytes), Some(bytes)),
                        ConnEvent::Disconnected => (UpstreamEvent::Disconnected, None),
                        ConnEvent::Drained => (UpstreamEvent::Drained, None),
                    };
                    if io.recorder.is_some() {
                        let payload = recorded(upstream_event.control(), data);
                        io.record(now, true, broker_endpoint(&engine, conn), payload);
                    }
                    engine.handle_upstream(now, conn, upstream_event);
                    taken += 1;
                    next = if taken < BATCH { upstream.try_recv().ok() } else { None };
                }
            }
            Some(reply) = counters.recv() => {
                let _ = reply.send((engine.counters(), io.dtls.counters()));
                continue;
            }
            Some(reply) = reload.recv() => {
                let _ = reply.send(auth.reload(&mut engine, &mut io, clock.now()));
            }
            () = io.dtls.readable() => {
                io.dtls.recv(std::time::Instant::now());
                take_dtls_frames(&mut engine, &mut io, clock.now());
            }
            _ = tokio::time::sleep_until(dtls_at), if dtls_deadline.is_some() => {
                io.dtls.handle_timeout(std::time::Instant::now());
                take_dtls_frames(&mut engine, &mut io, clock.now());
            }
            _ = tokio::time::sleep_until(sleep_until), if deadline.is_some() => {
                engine.handle_timeout(clock.now());
            }
        }
        let now = clock.now();
        match io.storage.as_mut().map(|s| s.after_batch(&mut engine, now)) {
            Some(Outputs::HeldUntil(at)) => {
                held_until = Some(at);
                flush_early(&mut engine, &mut io, now).await;
            }
            Some(Outputs::Ready) | None => {
                held_until = None;
                flush(&mut engine, &mut io, now).await;
            }
        }
        for peer in std::mem::take(&mut io.dtls_closing) {
            io.dtls.close(peer);
        }
    }
    shut_down(engine, io, upstream, &clock).await;
}

/// The end of the loop. The engine closes its broker connections (MQTT DISCONNECT) in a last
/// flush; then every transport task is told to stop and awaited, the recording is finished and
/// the totals are logged. When this returns, every socket, tty and file of the gateway's is
/// closed.
async fn shut_down(
    mut engine: Gateway,
    mut io: Io,
    mut upstream: mpsc::Receiver<(ConnId, ConnEvent)>,
    clock: &Clock,
) {
    engine.shutdown();
    if let Some(storage) = io.storage.as_mut() {
        storage.commit(&mut engine, clock.now());
    }
    flush(&mut engine, &mut io, clock.now()).await;
    // Only now, after the last flush: the serial ports still write what it queued for them.
    io.shutdown.fire();
    if !io.dtls.local_addrs().is_empty() {
        tracing::info!(
            totals = ?io.dtls.counters(),
            send_errors = io.dtls.send_errors,
            too_long = io.dtls.too_long,
            "dtls totals"
        );
    }
    let Io {
        udp,
        mut serial,
        pool,
        recorder,
        storage: io_storage,
        ..
    } = io;
    // The broker connections close through the pool (DISCONNECT written, FIN both ways). Their
    // tasks may be waiting to hand over an event meanwhile, so the channel is kept moving; the
    // events are dropped, the engine has shut down. `recv` ends once the pool, and with it the
    // last sender, is gone.
    let drain_upstream = async { while upstream.recv().await.is_some() {} };
    tokio::join!(pool.shutdown(), drain_upstream, serial.shutdown());
    if let Some(storage) = &io_storage {
        tracing::info!(totals = ?storage.totals(), "storage totals");
    }
    // Last: the writer thread writes what is queued and closes the files.
    if let Some(recorder) = recorder {
        let skipped = recorder.skipped();
        recorder.finish();
        if skipped > 0 {
            tracing::warn!(skipped, "recording could not keep up; events were skipped");
        }
    }
    for (port, stats) in serial.stats() {
        tracing::info!(%port, ?stats, "serial port totals");
    }
    tracing::info!(
        send_errors = udp.send_errors(),
        peers_forgotten = udp.peers_forgotten(),
        "udp totals"
    );
    // The transport holds the only handles on the sockets: the ports are free from here on.
    drop(udp);
    tracing::info!(counters = ?engine.counters(), "gateway stopped");
}

/// The sessions of before the restart, back in the engine.
fn restore(engine: &mut Gateway, stored: Vec<StoredSession>, now: Instant) {
    let report = engine.restore(now, stored);
    for (client, reason) in &report.skipped {
        tracing::error!(%client, %reason, "stored session not restored");
    }
    tracing::info!(
        sessions = report.sessions,
        held_messages = report.messages,
        messages_dropped = report.messages_dropped,
        not_restored = report.skipped.len(),
        "sessions restored from the state directory"
    );
}

/// Moves everything the engine produced into the transports and the log. With a store, only
/// once what the inputs changed is committed ([`GroupCommit`]).
async fn flush(engine: &mut Gateway, io: &mut Io, now: Instant) {
    while let Some(command) = engine.poll_upstream() {
        if io.recorder.is_some() {
            let data = match &command {
                UpstreamCommand::Send(_, bytes) => Some(bytes),
                _ => None,
            };
            let payload = recorded(command.control(), data);
            io.record(now, false, broker_endpoint(engine, command.conn()), payload);
        }
        match command {
            UpstreamCommand::Open(conn) => io.pool.open(conn),
            UpstreamCommand::Send(conn, bytes) => {
                if io.pool.send(conn, bytes) == Pressure::Congested {
                    // The engine hears of it now, before the next batch of inputs (it may have
                    // admitted one batch's worth past the bound); recorded as the input it is.
                    let event = UpstreamEvent::Congested;
                    if io.recorder.is_some() {
                        let payload = recorded(event.control(), None);
                        io.record(now, true, broker_endpoint(engine, conn), payload);
                    }
                    engine.handle_upstream(now, conn, event);
                }
            }
            UpstreamCommand::Close(conn) => io.pool.close(conn),
            UpstreamCommand::Abort(conn) => io.pool.abort(conn),
        }
    }
    io.held_to.clear();
    for transmit in std::mem::take(&mut io.held) {
        send_transmit(io, transmit, now).await;
    }
    while let Some(transmit) = engine.poll_transmit() {
        send_transmit(io, transmit, now).await;
    }
    while let Some(event) = engine.poll_event() {
        log_event(event);
    }
}

/// While changes wait for their group commit: sends what does not depend on them (see
/// [`crate::engine::Transmit::after_commit`]), in order for each device, and holds the rest,
/// and everything for the broker (acknowledgements of broker messages among it), for
/// [`flush`] after the commit.
async fn flush_early(engine: &mut Gateway, io: &mut Io, now: Instant) {
    while let Some(transmit) = engine.poll_transmit() {
        let waits = transmit.after_commit
            || io.held_to.contains(&transmit.to)
            || matches!(transmit.to, Destination::Broadcast { .. });
        if waits {
            io.held_to.insert(transmit.to);
            io.held.push(transmit);
        } else {
            send_transmit(io, transmit, now).await;
        }
    }
    while let Some(event) = engine.poll_event() {
        log_event(event);
    }
}

async fn send_transmit(io: &mut Io, transmit: crate::engine::Transmit, now: Instant) {
    if io.recorder.is_some() {
        let to = match transmit.to {
            Destination::Peer(peer) => Endpoint::Device(peer),
            Destination::Broadcast { .. } => Endpoint::Broadcast,
        };
        io.record(
            now,
            false,
            to,
            Payload::Bytes(bytes::Bytes::copy_from_slice(&transmit.bytes)),
        );
    }
    match transmit.to {
        Destination::Peer(peer) => match peer.link {
            Link::Udp(addr) => io.udp.send_to(addr, &transmit.bytes).await,
            Link::Serial { port, radio } => io.serial.send(port, radio, &transmit.bytes),
            Link::Dtls(addr) => io.dtls.send(addr, &transmit.bytes),
        },
        // ADVERTISE goes everywhere; GWINFO where the SEARCHGW came from.
        Destination::Broadcast { near: None } => {
            io.udp.broadcast(None, &transmit.bytes).await;
            io.serial.broadcast(None, &transmit.bytes);
        }
        Destination::Broadcast { near: Some(peer) } => match peer.link {
            Link::Udp(addr) => io.udp.broadcast(Some(addr), &transmit.bytes).await,
            Link::Serial { port, .. } => io.serial.broadcast(Some(port), &transmit.bytes),
            // A DTLS association has no broadcast: GWINFO goes to the device itself.
            Link::Dtls(addr) => io.dtls.send(addr, &transmit.bytes),
        },
    }
}

fn log_event(event: Event) {
    match event {
        Event::ClientConnected { client_id, peer } => {
            tracing::info!(client = %client_id, %peer, "client connected")
        }
        Event::ClientLost { client_id, reason } => {
            tracing::info!(client = %client_id, reason, "client lost")
        }
        Event::ClientDisconnected { client_id } => {
            tracing::debug!(client = %client_id, "client disconnected")
        }
        Event::ClientAsleep {
            client_id,
            duration,
        } => tracing::debug!(client = %client_id, duration, "client asleep"),
        Event::ClientAwake { client_id } => tracing::debug!(client = %client_id, "client awake"),
        Event::ClientRejected { peer, reason } => {
            tracing::info!(%peer, reason, "CONNECT rejected")
        }
        Event::WillPublished { client_id, topic } => {
            tracing::info!(client = %client_id, %topic, "will published")
        }
        Event::MessageDropped { client_id, reason } => {
            tracing::debug!(client = %client_id, reason, "message for client dropped")
        }
        Event::SessionExpired { client_id } => {
            tracing::info!(client = %client_id, "kept session expired")
        }
        Event::MessageTooLarge { size, total } => tracing::warn!(
            size,
            total,
            "broker message too large for any device; dropped (the connection goes on)"
        ),
        Event::FrameTooLong { peer, limit, total } => tracing::warn!(
            %peer,
            limit,
            total,
            "datagram longer than udp.max_frame dropped unread (reported at the 1st, 2nd, 4th, ...)"
        ),
        Event::Overload {
            frames_over_budget,
            over_budget,
            congestion_refused,
            congestion_dropped,
        } => tracing::warn!(
            frames_over_budget,
            over_budget,
            congestion_refused,
            congestion_dropped,
            "devices slowed: frames over their sender's budget dropped, requests refused with \
             \"rejected: congestion\" or QoS 0 dropped (totals so far; reported at most every 10 s)"
        ),
        Event::FrameDropped { peer, reason } => {
            tracing::debug!(%peer, %reason, "frame dropped")
        }
        Event::BrokerUp => tracing::info!("broker connection up"),
        Event::BrokerDown => tracing::info!("broker connection down"),
        Event::BrokerError { reason } => tracing::warn!(%reason, "broker"),
    }
}
