//! The task behind one upstream connection: connect, pump bytes between the socket and the
//! driver, report connects and disconnects, reconnect with backoff. It holds no MQTT state.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::backoff::{self, Backoff};
use super::{ConnEvent, Target, UpstreamSettings};
use crate::engine::ConnId;

/// Room made in the read buffer before each read. MQTT packets from a broker are mostly small;
/// larger ones simply arrive as several `Data` chunks.
const READ_CHUNK: usize = 4096;
/// Room made for the first reads: an idle connection (most of them, in transparent mode with
/// thousands of devices) keeps only this much; a read that fills it grows the room up to
/// [`READ_CHUNK`].
const FIRST_READ_CHUNK: usize = 512;

/// Most queued bytes gathered into one write. Batching saves syscalls (and TLS records) when
/// the engine sends many small packets in a burst; the bound keeps one connection's write buffer
/// small.
const MAX_BATCH: usize = 64 * 1024;

/// Longest wait for one address to accept the TCP connection and finish the TLS handshake. The
/// operating system's own SYN timeout is minutes, which would hold up trying the next address.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest a closing connection spends flushing and waiting for the broker's end of the
/// connection.
pub(super) const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// What every task of a pool reads.
pub(super) struct Shared {
    pub(super) settings: UpstreamSettings,
    pub(super) events: mpsc::Sender<(ConnId, ConnEvent)>,
    /// Connections being set up at once are limited, from the first SYN until the broker's
    /// first bytes (its CONNACK): thousands at once (a transparent-mode CONNECT storm) overflow
    /// the broker's accept queue, and every dropped handshake costs a 1-2-4 s retransmission.
    pub(super) connect_slots: Arc<tokio::sync::Semaphore>,
}

/// Connection attempts allowed at the same time (see [`Shared::connect_slots`]).
pub(super) const CONCURRENT_CONNECTS: usize = 64;

/// Out-of-band signals from the pool to one task, for when the command queue cannot carry
/// them: it is full (reset), or the task is not reading it because a write to a slow broker is
/// pending (close).
#[derive(Debug, Default)]
pub(super) struct Control {
    /// Bytes sent to the channel and not yet taken by the task.
    pub(super) queued: AtomicUsize,
    /// The pool reported the queue congested; the task reports it drained.
    pub(super) congested: AtomicBool,
    reset: AtomicBool,
    close: AtomicBool,
    wake: Notify,
}

impl Control {
    /// Tells the task that the pool has closed its queue, so that closing starts (and its time
    /// limit runs) even while a write is stuck.
    pub(super) fn request_close(&self) {
        self.close.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Marks the queue congested (see [`Control::congested`]); `false` if it already was. The
    /// task is woken to check whether it has drained meanwhile.
    pub(super) fn mark_congested(&self) -> bool {
        let newly = !self.congested.swap(true, Ordering::AcqRel);
        if newly {
            self.wake.notify_one();
        }
        newly
    }

    /// Asks the task to drop its connection and reconnect.
    pub(super) fn request_reset(&self) {
        self.reset.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// A reset was asked for and the task has not acted on it yet.
    pub(super) fn reset_pending(&self) -> bool {
        self.reset.load(Ordering::Acquire)
    }
}

/// Runs one connection until the pool closes it (drops the command sender), it is aborted, or
/// the driver goes away (the events receiver is dropped).
pub(super) async fn run(
    conn: ConnId,
    shared: Arc<Shared>,
    commands: mpsc::UnboundedReceiver<bytes::Bytes>,
    control: Arc<Control>,
    first_delay: Option<Duration>,
) {
    let backoff = Backoff::new(
        shared.settings.reconnect_min,
        shared.settings.reconnect_max,
        backoff::seed(conn.0),
    );
    let mut task = Task {
        conn,
        shared,
        commands,
        control,
        backoff,
    };
    if let Some(delay) = first_delay {
        if !task.idle(delay).await {
            return;
        }
    }
    task.run().await;
}

struct Task {
    conn: ConnId,
    shared: Arc<Shared>,
    commands: mpsc::UnboundedReceiver<bytes::Bytes>,
    control: Arc<Control>,
    backoff: Backoff,
}

/// How a connected phase ended.
enum Outcome {
    /// The pool closed the connection; the task ends.
    Closed,
    /// The driver dropped the events receiver; the task ends.
    DriverGone,
    /// The connection broke; the task reconnects.
    Lost(io::Error),
}

/// The events receiver is gone.
struct DriverGone;

enum Stream {
    Tcp(TcpStream),
    // Boxed: the TLS state is large and would bloat every plain TCP task's future otherwise.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

enum Step {
    Read(io::Result<usize>),
    Wrote(io::Result<Progress>),
    Command(Option<bytes::Bytes>),
    Wake,
}

impl Task {
    async fn run(mut self) {
        // Whether the engine already knows the broker is down, so that an outage is reported once
        // rather than once per failed attempt. Starts false: a first attempt that fails is
        // reported too, so the engine learns the broker is down.
        let mut down_reported = false;
        loop {
            let Some(attempt) = self.connect().await else {
                return;
            };
            match attempt {
                Ok((stream, addr, slot)) => {
                    // Anything still queued was sent for an earlier connection (the engine only
                    // sends for this one once it has seen `Connected`); the broker must see the
                    // engine's CONNECT first.
                    self.discard_queued();
                    self.control.reset.store(false, Ordering::Release);
                    info!(%addr, "broker connected");
                    if self.report(ConnEvent::Connected).await.is_err() {
                        return;
                    }
                    // No need to clear `down_reported`: every way out of a connection either
                    // ends the task or reports `Disconnected`.
                    let up_since = Instant::now();
                    let outcome = match stream {
                        Stream::Tcp(stream) => self.pump(stream, slot).await,
                        Stream::Tls(stream) => self.pump(stream, slot).await,
                    };
                    match outcome {
                        Outcome::Closed | Outcome::DriverGone => return,
                        Outcome::Lost(error) => {
                            info!(%addr, %error, "broker connection lost");
                            if self.report(ConnEvent::Disconnected).await.is_err() {
                                return;
                            }
                            down_reported = true;
                            // Only a connection that lasted restarts the backoff; one that a
                            // broker accepts and drops at once (refusing our CONNECT, say) keeps
                            // doubling, so such a broker is not hammered.
                            if up_since.elapsed() >= self.shared.settings.reconnect_max {
                                self.backoff.reset();
                            }
                        }
                    }
                }
                Err(error) => {
                    let broker = &self.shared.settings.target;
                    if down_reported {
                        debug!(%broker, %error, "reconnect failed");
                    } else {
                        info!(%broker, %error, "broker unreachable");
                        if self.report(ConnEvent::Disconnected).await.is_err() {
                            return;
                        }
                        down_reported = true;
                    }
                }
            }
            let delay = self.backoff.next_delay();
            debug!(?delay, "reconnecting after a delay");
            if !self.idle(delay).await {
                return;
            }
        }
    }

    /// Connects, meanwhile discarding whatever the engine sends. `None`: closed meanwhile.
    async fn connect(
        &mut self,
    ) -> Option<io::Result<(Stream, SocketAddr, Option<OwnedSemaphorePermit>)>> {
        let shared = Arc::clone(&self.shared);
        let attempt = async {
            // A closed semaphore cannot happen (it lives as long as `shared`); connect anyway.
            let slot = Arc::clone(&shared.connect_slots).acquire_owned().await.ok();
            open_stream(&shared.settings.target)
                .await
                .map(|(stream, addr)| (stream, addr, slot))
        };
        tokio::pin!(attempt);
        loop {
            tokio::select! {
                result = &mut attempt => return Some(result),
                // Bytes are dropped; the end of the queue means the connection was closed.
                command = self.commands.recv() => self.taken(&command?),
            }
        }
    }

    /// Waits `delay`, meanwhile discarding whatever the engine sends. `false`: closed meanwhile.
    async fn idle(&mut self, delay: Duration) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return true,
                command = self.commands.recv() => match command {
                    Some(bytes) => self.taken(&bytes),
                    None => return false,
                },
            }
        }
    }

    /// Accounts for bytes taken off the queue (written, or discarded).
    fn taken(&self, bytes: &bytes::Bytes) {
        self.control.queued.fetch_sub(bytes.len(), Ordering::AcqRel);
    }

    /// Whether a queue reported congested is now down to half its bound; if so it is no longer
    /// congested, and the caller reports [`ConnEvent::Drained`].
    fn drained(&self) -> bool {
        let half = self.shared.settings.max_queued_bytes / 2;
        self.control.congested.load(Ordering::Acquire)
            && self.control.queued.load(Ordering::Acquire) <= half
            && self.control.congested.swap(false, Ordering::AcqRel)
    }

    fn discard_queued(&mut self) {
        let mut discarded = 0usize;
        while let Ok(bytes) = self.commands.try_recv() {
            self.taken(&bytes);
            discarded += 1;
        }
        // A new connection starts uncongested, for the engine too (it resets on `Connected`).
        self.control.congested.store(false, Ordering::Release);
        if discarded > 0 {
            debug!(
                discarded,
                "dropped sends queued before the connection was up"
            );
        }
    }

    async fn report(&self, event: ConnEvent) -> Result<(), DriverGone> {
        self.shared
            .events
            .send((self.conn, event))
            .await
            .map_err(|_| {
                debug!("driver gone; ending the upstream connection");
                DriverGone
            })
    }

    /// Moves bytes both ways until the connection breaks or is closed.
    /// `slot` is the connection's place among those being set up, given back when the broker
    /// first speaks.
    async fn pump<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        stream: S,
        mut slot: Option<OwnedSemaphorePermit>,
    ) -> Outcome {
        // Reading and writing are separate select! branches so that a broker that is slow to
        // read never stops us from reading what it sends (both sides blocked on full buffers
        // would deadlock).
        let (mut reader, mut writer) = tokio::io::split(stream);
        let mut room = FIRST_READ_CHUNK;
        let mut rbuf = BytesMut::with_capacity(room);
        let mut wbuf = BytesMut::new();
        let mut unflushed = false;
        loop {
            // After `split().freeze()` hands a chunk on, the tail of the allocation is reused;
            // without spare room `read_buf` would return 0, which looks like end of stream.
            rbuf.reserve(room);
            let writing = !wbuf.is_empty() || unflushed;
            let step = tokio::select! {
                read = reader.read_buf(&mut rbuf) => Step::Read(read),
                wrote = write_some(&mut writer, &mut wbuf), if writing => Step::Wrote(wrote),
                command = self.commands.recv(), if !writing => Step::Command(command),
                () = self.control.wake.notified() => Step::Wake,
            };
            match step {
                Step::Read(Ok(0)) => {
                    let error = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the broker closed the connection",
                    );
                    return Outcome::Lost(error);
                }
                Step::Read(Ok(n)) => {
                    drop(slot.take()); // the broker spoke: the handshake is over
                    if n >= room {
                        room = (room * 2).min(READ_CHUNK);
                    }
                    let chunk = rbuf.split().freeze();
                    if self.report(ConnEvent::Data(chunk)).await.is_err() {
                        return Outcome::DriverGone;
                    }
                }
                Step::Read(Err(error)) | Step::Wrote(Err(error)) => return Outcome::Lost(error),
                // Written bytes still have to be flushed once the buffer is empty: TLS holds
                // records back until then.
                Step::Wrote(Ok(Progress::Wrote)) => unflushed = true,
                Step::Wrote(Ok(Progress::Flushed)) => unflushed = false,
                Step::Command(Some(bytes)) => {
                    self.taken(&bytes);
                    wbuf.extend_from_slice(&bytes);
                    while wbuf.len() < MAX_BATCH {
                        match self.commands.try_recv() {
                            Ok(bytes) => {
                                self.taken(&bytes);
                                wbuf.extend_from_slice(&bytes);
                            }
                            Err(_) => break,
                        }
                    }
                    if self.drained() && self.report(ConnEvent::Drained).await.is_err() {
                        return Outcome::DriverGone;
                    }
                }
                Step::Command(None) => {
                    close(reader, writer, wbuf, rbuf).await;
                    return Outcome::Closed;
                }
                Step::Wake if self.control.close.load(Ordering::Acquire) => {
                    // The pool sent everything before closing, so what is still queued is
                    // complete; it goes out before the connection ends.
                    while let Ok(bytes) = self.commands.try_recv() {
                        self.taken(&bytes);
                        wbuf.extend_from_slice(&bytes);
                    }
                    close(reader, writer, wbuf, rbuf).await;
                    return Outcome::Closed;
                }
                Step::Wake => {
                    // A stale wake-up (a reset asked for while we were still connecting) finds
                    // the flag already cleared and is ignored.
                    if self.control.reset.swap(false, Ordering::AcqRel) {
                        let error = io::Error::other("send queue overflowed");
                        return Outcome::Lost(error);
                    }
                    // The pool marks a queue congested after queueing the bytes that took it
                    // over; by then this task may have taken them all already, and with the
                    // devices slowed nothing else would come to check.
                    if self.drained() && self.report(ConnEvent::Drained).await.is_err() {
                        return Outcome::DriverGone;
                    }
                }
            }
        }
    }
}

/// What one step of writing did.
enum Progress {
    Wrote,
    Flushed,
}

/// One step of writing: a write while bytes are buffered, else a flush. One select! branch for
/// both because both need the writer.
async fn write_some<W: AsyncWrite + Unpin>(
    writer: &mut W,
    wbuf: &mut BytesMut,
) -> io::Result<Progress> {
    if wbuf.is_empty() {
        writer.flush().await?;
        return Ok(Progress::Flushed);
    }
    // `write_buf` is cancel safe (nothing is consumed unless written), unlike `write_all`.
    match writer.write_buf(wbuf).await? {
        0 => Err(io::ErrorKind::WriteZero.into()),
        _ => Ok(Progress::Wrote),
    }
}

/// Ends a connection the pool closed: write and flush what is left, send our FIN (TLS:
/// close_notify first) and wait for the broker's. Reading to the end matters: closing a socket
/// with unread data makes the kernel send a RST, and the broker may then throw away our last
/// packets (the DISCONNECT) unread. Bounded, as a broker that stops reading or never closes
/// must not keep the task alive.
async fn close<S: AsyncRead + AsyncWrite>(
    mut reader: ReadHalf<S>,
    mut writer: WriteHalf<S>,
    mut wbuf: BytesMut,
    mut rbuf: BytesMut,
) {
    let graceful = async {
        writer.write_all_buf(&mut wbuf).await?;
        writer.flush().await?;
        writer.shutdown().await?;
        loop {
            rbuf.clear();
            rbuf.reserve(READ_CHUNK);
            if reader.read_buf(&mut rbuf).await? == 0 {
                return Ok::<(), io::Error>(());
            }
        }
    };
    match tokio::time::timeout(CLOSE_TIMEOUT, graceful).await {
        Ok(Ok(())) => info!("broker connection closed"),
        Ok(Err(error)) => info!(%error, "broker connection closed with an error"),
        Err(_) => info!("broker connection closed; the broker did not finish in time"),
    }
}

/// Resolves the broker and connects to each address in turn until one works.
async fn open_stream(target: &Target) -> io::Result<(Stream, SocketAddr)> {
    let (host, port) = target.host_port();
    let mut last_error = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        match tokio::time::timeout(CONNECT_TIMEOUT, connect_to(target, addr)).await {
            Ok(Ok(stream)) => return Ok((stream, addr)),
            Ok(Err(error)) => {
                debug!(%addr, %error, "connect attempt failed");
                last_error = Some(io::Error::new(error.kind(), format!("{addr}: {error}")));
            }
            Err(_) => {
                debug!(%addr, "connect attempt timed out");
                let message = format!("{addr}: no connection within {CONNECT_TIMEOUT:?}");
                last_error = Some(io::Error::new(io::ErrorKind::TimedOut, message));
            }
        }
    }
    Err(last_error.unwrap_or_else(|| {
        let message = format!("{host} resolved to no address");
        io::Error::new(io::ErrorKind::NotFound, message)
    }))
}

async fn connect_to(target: &Target, addr: SocketAddr) -> io::Result<Stream> {
    let tcp = TcpStream::connect(addr).await?;
    // MQTT packets are small and often answer something (PUBACK, PINGRESP); Nagle would hold
    // them back waiting for more.
    if let Err(error) = tcp.set_nodelay(true) {
        warn!(%addr, %error, "cannot set TCP_NODELAY");
    }
    match target {
        Target::Tcp { .. } => Ok(Stream::Tcp(tcp)),
        Target::Tls {
            tls, server_name, ..
        } => {
            let connector = tokio_rustls::TlsConnector::from(Arc::clone(tls));
            let stream = connector.connect(server_name.clone(), tcp).await?;
            Ok(Stream::Tls(Box::new(stream)))
        }
    }
}
