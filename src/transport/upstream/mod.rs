//! Broker-side IO: one small tokio task per upstream MQTT connection that only moves bytes
//! between its TCP or TLS socket and the driver, and reconnects with backoff. All MQTT state
//! (CONNECT, packet ids, subscriptions) stays in the engine.
//!
//! The driver owns an [`UpstreamPool`] and the receiver of its events channel. It turns the
//! engine's commands into calls: `Open` → [`UpstreamPool::open`], `Send` →
//! [`UpstreamPool::send`], `Close` → [`UpstreamPool::close`], `Abort` → [`UpstreamPool::abort`],
//! and feeds each `(ConnId, ConnEvent)` it receives back to the engine.
//!
//! Per connection, events come in this order: `Connected`, any number of `Data`, then
//! `Disconnected` when the connection breaks, after which the task reconnects by itself (with
//! exponential backoff and jitter) and reports `Connected` again; the engine answers every
//! `Connected` with its MQTT CONNECT. A broker that cannot be reached is reported once per outage
//! (including when the very first attempt fails), not once per retry.
//!
//! Bytes are only ever written to the connection that is up when the task takes them from its
//! queue, and never to a later one: sends while disconnected, and sends still queued when a
//! connection comes up, are discarded, because they belong to an MQTT session the broker has
//! already forgotten and the broker must see CONNECT first. The engine re-sends what matters
//! after `Connected`. One race remains: bytes the engine sends for the old connection after the
//! task has already reported the new `Connected` (the engine has not yet seen `Disconnected`)
//! reach the new connection before its CONNECT. The broker then drops the connection and the
//! normal reconnect follows; with `reconnect_min` far above the driver's event latency (the
//! default is one second) this does not happen in practice.
//!
//! Events still in the channel when the driver calls `close` or `abort` are delivered; the
//! driver should ignore events for connections it no longer has.

mod backoff;
mod task;
mod tls;

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rustls_pki_types::ServerName;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tracing::{debug, warn, Instrument};

use crate::config::{UpstreamConfig, UpstreamUrl};
use crate::engine::ConnId;
use backoff::Backoff;

pub use tls::UpstreamError;

/// How far past its bound a connection's queue may grow before the pool gives up on it: the
/// engine refuses devices once told the queue is congested, but learns it only after the batch
/// of inputs in progress (at most [`crate::driver`]'s 256 frames of up to 64 KiB), and its own
/// traffic (acknowledgements to the broker, pings) goes on meanwhile.
const HARD_BOUND_FACTOR: usize = 4;
const HARD_BOUND_SLACK: usize = 256 * 65_536;

/// Longest [`UpstreamPool::shutdown`] waits for connections to flush and close before it aborts
/// the rest.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how to connect, and how fast to retry.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// The broker.
    pub target: Target,
    /// First delay before reconnecting; it doubles after each failed attempt. It starts again
    /// from here only after a connection that stayed up at least `reconnect_max`. Each delay is
    /// varied by ±20% so that many connections do not retry in lockstep.
    pub reconnect_min: Duration,
    /// Longest delay before reconnecting (before the ±20%).
    pub reconnect_max: Duration,
    /// Bytes queued for one connection at which [`UpstreamPool::send`] reports it congested;
    /// it is reported drained ([`ConnEvent::Drained`]) once back under half of this.
    pub max_queued_bytes: usize,
}

/// The broker's address and transport.
#[derive(Debug, Clone)]
pub enum Target {
    /// Plain TCP.
    Tcp {
        /// Host name or IP address; names are resolved on every connect, and each address is
        /// tried in turn.
        host: String,
        /// TCP port.
        port: u16,
    },
    /// TLS over TCP.
    Tls {
        /// Host name or IP address, as for [`Target::Tcp`].
        host: String,
        /// TCP port.
        port: u16,
        /// The client configuration, built once and shared by all connections.
        tls: Arc<rustls::ClientConfig>,
        /// The name the broker's certificate must match.
        server_name: ServerName<'static>,
    },
}

impl Target {
    fn host_port(&self) -> (&str, u16) {
        match self {
            Target::Tcp { host, port } | Target::Tls { host, port, .. } => (host, *port),
        }
    }
}

impl fmt::Display for Target {
    /// `mqtt://host:port` or `mqtts://host:port`, for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self {
            Target::Tcp { .. } => "mqtt",
            Target::Tls { .. } => "mqtts",
        };
        let (host, port) = self.host_port();
        if host.contains(':') {
            write!(f, "{scheme}://[{host}]:{port}")
        } else {
            write!(f, "{scheme}://{host}:{port}")
        }
    }
}

impl UpstreamSettings {
    /// Settings from `[upstream]`. For `mqtts://` this builds the TLS configuration once: trust
    /// `ca_file` (PEM) or else the system's root certificates, and present `client_cert` with
    /// `client_key` (PEM) if set.
    ///
    /// `url = "embedded"` becomes a plain TCP target at `embedded_bind`, with an unspecified
    /// address (`0.0.0.0`, `::`) replaced by the loopback address of the same family; the
    /// embedded broker must be listening there by the time the pool connects (or the first
    /// attempts fail and are retried like any broker outage).
    ///
    /// # Errors
    /// [`UpstreamError`], naming the setting and file: a file that cannot be read, is not PEM or
    /// holds no certificate or key, a key that does not match its certificate, no usable
    /// system roots, or a host that cannot be a TLS server name.
    pub fn from_config(cfg: &UpstreamConfig) -> Result<Self, UpstreamError> {
        let target = match &cfg.url {
            UpstreamUrl::Tcp { host, port } => Target::Tcp {
                host: host.clone(),
                port: *port,
            },
            UpstreamUrl::Tls { host, port } => Target::Tls {
                host: host.clone(),
                port: *port,
                tls: Arc::new(tls::client_config(
                    cfg.ca_file.as_deref(),
                    cfg.client_cert.as_deref(),
                    cfg.client_key.as_deref(),
                )?),
                server_name: tls::server_name(host)?,
            },
            UpstreamUrl::Embedded => {
                let ip = match cfg.embedded_bind.ip() {
                    IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
                    ip => ip,
                };
                Target::Tcp {
                    host: ip.to_string(),
                    port: cfg.embedded_bind.port(),
                }
            }
        };
        Ok(UpstreamSettings {
            target,
            reconnect_min: cfg.reconnect_min.to_std(),
            reconnect_max: cfg.reconnect_max.to_std(),
            max_queued_bytes: cfg.max_queued_bytes,
        })
    }
}

/// What happened on one upstream connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnEvent {
    /// The TCP (and TLS) connection is up; the engine now sends its MQTT CONNECT.
    Connected,
    /// Bytes from the broker, in order. Chunks follow the socket's reads, not MQTT packet
    /// boundaries.
    Data(Bytes),
    /// The connection broke or could not be made. The task keeps retrying until the connection
    /// is closed or aborted; reported once per outage.
    Disconnected,
    /// The queue that [`UpstreamPool::send`] reported congested ([`Pressure::Congested`]) is
    /// back under half of `max_queued_bytes`.
    Drained,
}

/// What [`UpstreamPool::send`] tells the driver about the connection's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pressure {
    /// There is room.
    Fine,
    /// This send took the queue over `max_queued_bytes`: the broker reads slower than the
    /// engine writes. Reported once; [`ConnEvent::Drained`] follows when it is down to half.
    Congested,
}

/// A connection the engine aborted, and the backoff its reopening goes through.
struct Aborted {
    backoff: Backoff,
    /// When it was last reopened (or first aborted).
    reopened: std::time::Instant,
    /// When it was last aborted.
    at: std::time::Instant,
}

/// Below this many remembered aborts the pool does not prune them.
const PRUNE_FLOOR: usize = 64;

/// The pool's handle on one running connection task.
struct Handle {
    /// Dropping this is how a connection is closed: the task writes what is queued, then sees
    /// the end of the channel. Unbounded as a channel; bounded in bytes by the congestion
    /// reports (see [`UpstreamPool::send`]).
    commands: mpsc::UnboundedSender<Bytes>,
    control: Arc<task::Control>,
    task: AbortHandle,
}

/// All upstream connections: one task each, all reporting to one events channel.
///
/// Call its methods from inside a tokio runtime. Every method but `shutdown` returns at once:
/// the driver's loop never waits on a broker.
///
/// Dropping the pool without [`UpstreamPool::shutdown`] aborts every connection, as
/// [`UpstreamPool::abort`] does.
pub struct UpstreamPool {
    shared: Arc<task::Shared>,
    conns: HashMap<ConnId, Handle>,
    /// Connections the engine aborted lately, so that reopening one goes through the backoff
    /// (see [`UpstreamPool::open`]).
    aborted: HashMap<ConnId, Aborted>,
    /// Size of `aborted` at which old entries are pruned next.
    prune_at: usize,
    /// Every task still running, including closed connections that are still flushing, so that
    /// `shutdown` can wait for them too.
    tasks: JoinSet<()>,
}

impl UpstreamPool {
    /// A pool with no connections. Each task sends its events to `events`; when that channel is
    /// closed (the driver is gone), tasks end.
    pub fn new(settings: UpstreamSettings, events: mpsc::Sender<(ConnId, ConnEvent)>) -> Self {
        UpstreamPool {
            shared: Arc::new(task::Shared {
                settings,
                events,
                connect_slots: Arc::new(tokio::sync::Semaphore::new(task::CONCURRENT_CONNECTS)),
            }),
            conns: HashMap::new(),
            aborted: HashMap::new(),
            prune_at: PRUNE_FLOOR,
            tasks: JoinSet::new(),
        }
    }

    /// Starts connecting `conn`; [`ConnEvent::Connected`] or [`ConnEvent::Disconnected`]
    /// follows. Opening a connection that is already open does nothing.
    ///
    /// The engine drops a connection for a protocol error or a timeout by aborting and
    /// reopening it. Reopening one that was aborted lately waits the next delay of its own
    /// backoff first, doubling up to `reconnect_max`, so that a broker that keeps sending
    /// garbage (or a retained message too large to take) is not reconnected to thousands of
    /// times a second. The backoff restarts once a connection has stayed up `reconnect_max`.
    ///
    /// # Panics
    /// Outside a tokio runtime (the task cannot be spawned).
    pub fn open(&mut self, conn: ConnId) {
        self.reap();
        if self.conns.contains_key(&conn) {
            warn!(conn = conn.0, "upstream connection already open");
            return;
        }
        let first_delay = self.reopen_delay(conn);
        if let Some(delay) = first_delay {
            debug!(
                conn = conn.0,
                ?delay,
                "reopening an aborted connection after a delay"
            );
        }
        let (commands, queue) = mpsc::unbounded_channel();
        let control = Arc::new(task::Control::default());
        let span = tracing::info_span!("upstream", conn = conn.0);
        let future = task::run(
            conn,
            Arc::clone(&self.shared),
            queue,
            Arc::clone(&control),
            first_delay,
        );
        let task = self.tasks.spawn(future.instrument(span));
        self.conns.insert(
            conn,
            Handle {
                commands,
                control,
                task,
            },
        );
    }

    /// Queues `bytes` for `conn` without waiting.
    ///
    /// Bytes are discarded while the connection is down (see the module documentation). The
    /// queue is never refused for being slow: when it goes over `max_queued_bytes` the send
    /// returns [`Pressure::Congested`] (once), the driver tells the engine, and the engine
    /// slows the devices behind the connection until [`ConnEvent::Drained`]. Only a queue that
    /// still grows far past that (four times the bound plus one batch of the largest frames:
    /// the engine did not slow down) drops the connection, since the MQTT stream would
    /// otherwise miss a packet; it is reconnected and the engine resends what matters.
    pub fn send(&mut self, conn: ConnId, bytes: Bytes) -> Pressure {
        let Some(handle) = self.conns.get(&conn) else {
            debug!(
                conn = conn.0,
                "send on an upstream connection that is not open"
            );
            return Pressure::Fine;
        };
        let control = &handle.control;
        if control.reset_pending() {
            return Pressure::Fine;
        }
        let bound = self.shared.settings.max_queued_bytes;
        let len = bytes.len();
        let queued = control.queued.fetch_add(len, Ordering::AcqRel) + len;
        if queued > bound.saturating_mul(HARD_BOUND_FACTOR) + HARD_BOUND_SLACK {
            control.queued.fetch_sub(len, Ordering::AcqRel);
            tracing::error!(
                conn = conn.0,
                queued,
                "upstream send queue far over max_queued_bytes although the devices were \
                 slowed; dropping the broker connection"
            );
            control.request_reset();
            return Pressure::Fine;
        }
        if handle.commands.send(bytes).is_err() {
            // The task ended on its own, which it only does when the driver is gone.
            control.queued.fetch_sub(len, Ordering::AcqRel);
            return Pressure::Fine;
        }
        if queued > bound && control.mark_congested() {
            debug!(conn = conn.0, queued, "upstream send queue congested");
            return Pressure::Congested;
        }
        Pressure::Fine
    }

    /// Whether `conn`'s queue counts as congested now. A [`ConnEvent::Drained`] that arrives
    /// after the queue was reported congested again is stale, and this tells.
    pub fn is_congested(&self, conn: ConnId) -> bool {
        self.conns
            .get(&conn)
            .is_some_and(|h| h.control.congested.load(Ordering::Acquire))
    }

    /// Closes `conn` for good: the bytes already sent are written, the connection is shut down
    /// (TLS close_notify, then FIN) and no event follows. Closing a connection that is down
    /// ends its retries.
    pub fn close(&mut self, conn: ConnId) {
        // Dropping the sender is the close signal: the task finds the end of its queue after
        // the last bytes sent. The control signal covers a task that is not reading its queue
        // because a write is stuck on a slow broker.
        match self.conns.remove(&conn) {
            Some(handle) => handle.control.request_close(),
            None => debug!(
                conn = conn.0,
                "close of an upstream connection that is not open"
            ),
        }
        self.reap();
    }

    /// Drops `conn` at once, without writing what is still queued and without reconnecting.
    /// The broker sees the connection end without an MQTT DISCONNECT, so it publishes the
    /// client's will.
    pub fn abort(&mut self, conn: ConnId) {
        match self.conns.remove(&conn) {
            Some(handle) => handle.task.abort(),
            None => debug!(
                conn = conn.0,
                "abort of an upstream connection that is not open"
            ),
        }
        self.remember_abort(conn);
        self.reap();
    }

    /// How long reopening `conn` must wait: the next delay of its backoff if it was aborted
    /// lately, else nothing.
    fn reopen_delay(&mut self, conn: ConnId) -> Option<Duration> {
        let aborted = self.aborted.get_mut(&conn)?;
        let delay = aborted.backoff.next_delay();
        // Up from when the connection is tried again, not from now: the wait is no uptime.
        aborted.reopened = std::time::Instant::now() + delay;
        Some(delay)
    }

    /// Notes an abort for [`UpstreamPool::open`]'s backoff. Entries older than twice
    /// `reconnect_max` are forgotten (pruned each time the map has doubled: amortised O(1)), so
    /// the map holds only connections aborted lately, never every connection ever aborted.
    fn remember_abort(&mut self, conn: ConnId) {
        let settings = &self.shared.settings;
        let now = std::time::Instant::now();
        let aborted = self.aborted.entry(conn).or_insert_with(|| Aborted {
            backoff: Backoff::new(
                settings.reconnect_min,
                settings.reconnect_max,
                backoff::seed(conn.0),
            ),
            reopened: now,
            at: now,
        });
        if now.saturating_duration_since(aborted.reopened) >= settings.reconnect_max {
            // The connection stayed up a while before this abort: start from the minimum.
            aborted.backoff.reset();
        }
        aborted.at = now;
        if self.aborted.len() >= self.prune_at {
            let window = settings.reconnect_max.saturating_mul(2);
            self.aborted
                .retain(|_, a| now.duration_since(a.at) < window);
            self.prune_at = (2 * self.aborted.len()).max(PRUNE_FLOOR);
        }
    }

    /// Number of open connections (connected or retrying), not counting closed ones that are
    /// still flushing.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// No connection is open.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Closes every connection as [`UpstreamPool::close`] does and waits for the tasks to
    /// finish, at most [`SHUTDOWN_TIMEOUT`]; whatever is left then is aborted. Tasks wait on
    /// the events channel when it is full, so keep receiving from it (or drop the receiver)
    /// meanwhile.
    pub async fn shutdown(mut self) {
        for (_, handle) in self.conns.drain() {
            handle.control.request_close();
        }
        let tasks = &mut self.tasks;
        let all_done = async {
            while let Some(result) = tasks.join_next().await {
                log_join(result);
            }
        };
        if tokio::time::timeout(SHUTDOWN_TIMEOUT, all_done)
            .await
            .is_err()
        {
            warn!(
                remaining = self.tasks.len(),
                "upstream connections did not close in time; aborting them"
            );
            self.tasks.shutdown().await;
        }
    }

    /// Collects finished tasks, so that the set does not grow with every closed connection.
    fn reap(&mut self) {
        while let Some(result) = self.tasks.try_join_next() {
            log_join(result);
        }
    }
}

fn log_join(result: Result<(), tokio::task::JoinError>) {
    if let Err(error) = result {
        // Cancellation is what `abort` asked for; anything else is a bug in the task.
        if !error.is_cancelled() {
            tracing::error!(%error, "upstream connection task failed");
        }
    }
}

#[cfg(test)]
mod tests;
