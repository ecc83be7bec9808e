//! Pieces every mode uses: pacing, run length, the progress printer, waiting for stragglers,
//! CPU and memory of other processes, and argument helpers.

use crate::stats::{fmt_ns, Histogram, Live, Rng};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};

/// Paces sends to a rate: the k-th send is due at `start + k / rate`. A sender that falls behind
/// catches up as fast as it can, so the offered rate is kept on average.
#[derive(Debug, Clone)]
pub struct Pacer {
    start: Instant,
    /// Seconds between sends; 0 means no pacing.
    interval: f64,
    issued: u64,
}

impl Pacer {
    /// A pacer for `rate` sends per second (0 = unlimited) starting at `start`.
    pub fn new(rate: f64, start: Instant) -> Pacer {
        Pacer {
            start,
            interval: if rate > 0.0 { 1.0 / rate } else { 0.0 },
            issued: 0,
        }
    }

    /// When the next send is due (`None` without pacing).
    pub fn next_at(&self) -> Option<Instant> {
        (self.interval > 0.0)
            .then(|| self.start + Duration::from_secs_f64(self.interval * self.issued as f64))
    }

    /// Whether the next send is due at `now`.
    pub fn ready(&self, now: Instant) -> bool {
        self.next_at().is_none_or(|at| at <= now)
    }

    /// Counts one send as issued.
    pub fn take(&mut self) {
        self.issued += 1;
    }

    /// Waits until the next send is due and counts it; true if it had to sleep.
    pub async fn wait(&mut self) -> bool {
        let at = self.next_at();
        self.issued += 1;
        match at {
            Some(at) if at > Instant::now() => {
                sleep_until(at).await;
                true
            }
            _ => false,
        }
    }
}

/// When a sender stops.
#[derive(Debug, Clone, Copy)]
pub enum Limit {
    /// At this instant.
    Until(Instant),
    /// After this many messages.
    Count(u64),
}

impl Limit {
    /// Whether a sender that has sent `sent` messages must stop at `now`.
    pub fn reached(&self, sent: u64, now: Instant) -> bool {
        match *self {
            Limit::Until(at) => now >= at,
            Limit::Count(n) => sent >= n,
        }
    }

    /// This limit for sender `i` of `n` (a message count is shared out).
    pub fn share(&self, i: usize, n: usize) -> Limit {
        match *self {
            Limit::Until(at) => Limit::Until(at),
            Limit::Count(total) => {
                let (n, i) = (n.max(1) as u64, i as u64);
                Limit::Count(total / n + u64::from(i < total % n))
            }
        }
    }
}

/// How long to send: a duration or a message count.
#[derive(Debug, Clone, Copy)]
pub enum RunLength {
    /// Seconds.
    Duration(f64),
    /// Messages in total.
    Messages(u64),
}

impl RunLength {
    /// The limit for a run starting at `start`.
    pub fn limit(&self, start: Instant) -> Limit {
        match *self {
            RunLength::Duration(s) => Limit::Until(start + Duration::from_secs_f64(s)),
            RunLength::Messages(m) => Limit::Count(m),
        }
    }

    /// For the parameter line.
    pub fn describe(&self) -> String {
        match *self {
            RunLength::Duration(s) => format!("duration={s}s"),
            RunLength::Messages(m) => format!("messages={m}"),
        }
    }
}

/// Prints a progress line to stderr every second until dropped or stopped.
pub struct Progress {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Progress {
    /// Starts printing `live`'s counters (unless `quiet`).
    pub fn start(live: Arc<Live>, quiet: bool) -> Progress {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            if quiet {
                let _ = stopped.changed().await;
                return;
            }
            let start = Instant::now();
            let mut last = (0u64, 0u64, 0u64);
            let mut tick =
                tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = stopped.changed() => return,
                    _ = tick.tick() => {}
                }
                let now = (
                    Live::get(&live.sent),
                    Live::get(&live.acked),
                    Live::get(&live.received),
                );
                eprintln!(
                    "  {:6.1} s  sent {:>10} ({:>7}/s)  acked {:>10} ({:>7}/s)  received {:>10} ({:>7}/s)  errors {}",
                    start.elapsed().as_secs_f64(),
                    now.0,
                    now.0 - last.0,
                    now.1,
                    now.1 - last.1,
                    now.2,
                    now.2 - last.2,
                    Live::get(&live.errors),
                );
                last = now;
            }
        });
        Progress { stop, task }
    }

    /// Stops printing.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Waits until `done()` holds, or nothing changed in `received` for `idle`. Returns whether
/// `done()` held.
pub async fn drain(live: &Live, idle: Duration, done: impl Fn() -> bool) -> bool {
    let mut last = Live::get(&live.received);
    let mut last_change = Instant::now();
    loop {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = Live::get(&live.received);
        if now != last {
            last = now;
            last_change = Instant::now();
        } else if last_change.elapsed() >= idle {
            return done();
        }
    }
}

/// CPU time (user + system) and resident memory of a process, from /proc.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    /// Seconds of CPU used so far.
    pub cpu: f64,
    /// VmRSS in KiB.
    pub rss_kib: u64,
    /// When sampled.
    pub at: Instant,
}

/// Samples `/proc/{pid}` (`self` for this process); `None` if it cannot be read.
pub fn sample(pid: &str) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at "state" (field 3).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux architecture that matters here.
    let cpu = (utime + stime) / 100.0;
    Some(ProcSample {
        cpu,
        rss_kib: rss_kib(pid)?,
        at: Instant::now(),
    })
}

/// VmRSS of a process in KiB.
pub fn rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The processes whose CPU and memory a run reports.
#[derive(Debug, Clone, Default)]
pub struct Watched {
    procs: Vec<(String, String)>,
}

impl Watched {
    /// This process plus the given gateway and broker processes.
    pub fn new(gateway_pid: Option<u32>, broker_pid: Option<u32>) -> Watched {
        let mut procs = vec![("mqttsn-load".to_string(), "self".to_string())];
        if let Some(p) = gateway_pid {
            procs.push(("gateway".to_string(), p.to_string()));
        }
        if let Some(p) = broker_pid {
            procs.push(("broker".to_string(), p.to_string()));
        }
        Watched { procs }
    }

    /// Samples every process.
    pub fn sample(&self) -> Vec<Option<ProcSample>> {
        self.procs.iter().map(|(_, pid)| sample(pid)).collect()
    }

    /// "CPU: gateway 95 % of a core, ...; RSS: gateway 12.3 MiB, ..." between two samples.
    pub fn describe(&self, before: &[Option<ProcSample>], after: &[Option<ProcSample>]) -> String {
        let mut cpu = Vec::new();
        let mut rss = Vec::new();
        for (i, (name, _)) in self.procs.iter().enumerate() {
            if let (Some(Some(b)), Some(Some(a))) = (before.get(i), after.get(i)) {
                let wall = a.at.duration_since(b.at).as_secs_f64();
                if wall >= 0.5 {
                    cpu.push(format!("{name} {:.0} %", 100.0 * (a.cpu - b.cpu) / wall));
                } else {
                    cpu.push(format!("{name} ? (window too short)"));
                }
                rss.push(format!("{name} {:.1} MiB", a.rss_kib as f64 / 1024.0));
            }
        }
        format!(
            "CPU (100 % = one core): {}; VmRSS at end: {}",
            cpu.join(", "),
            rss.join(", ")
        )
    }
}

/// "host:port" (an `mqtt://` prefix is allowed) into its parts.
pub fn parse_broker(s: &str) -> Result<(String, u16), String> {
    let s = s.strip_prefix("mqtt://").unwrap_or(s);
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("--broker {s}: expected HOST:PORT"))?;
    let port = port
        .parse()
        .map_err(|_| format!("--broker {s}: bad port {port:?}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((host.to_string(), port))
}

/// A short random run id, so topics and client ids of different runs never mix.
pub fn run_id() -> String {
    let mut rng = Rng::new(u64::from(std::process::id()));
    format!("{:06x}", rng.next_u64() & 0xFF_FFFF)
}

/// What reached the subscriber, as every mode that publishes reports it: arrivals, loss against
/// what was sent, and (QoS 1) whether every acknowledged message arrived.
pub fn print_arrivals(
    unique: u64,
    recv_time: Duration,
    lost: u64,
    sent: u64,
    drained: bool,
    acked_missing: Option<u64>,
) {
    println!(
        "  received            {unique} unique = {} (start to last arrival, {:.2} s)",
        per_sec(unique, recv_time),
        recv_time.as_secs_f64()
    );
    println!(
        "  lost                {lost} ({}){}",
        pct(lost, sent),
        if drained { "" } else { " [drain timed out]" }
    );
    if let Some(missing) = acked_missing {
        println!(
            "  acked but missing   {missing}{}",
            if missing == 0 {
                " (every PUBACKed message arrived)"
            } else {
                " (QoS 1 VIOLATION)"
            }
        );
    }
}

/// The totals a publishing mode reports at the end.
pub struct Totals<'a> {
    /// Whether the run used QoS 1 (acknowledgements and round trips are reported).
    pub qos1: bool,
    /// Messages sent, acknowledged, and received once each.
    pub sent: u64,
    pub acked: u64,
    pub unique: u64,
    /// Sent but never received; acknowledged but never received.
    pub lost: u64,
    pub acked_missing: u64,
    /// How long sending took, and the span of arrivals.
    pub send_time: Duration,
    pub recv_time: Duration,
    /// End-to-end latency, and PUBLISH->PUBACK round trips.
    pub e2e: &'a Histogram,
    pub rtt: &'a Histogram,
}

/// The end of a publishing mode's report: latencies, the watched processes, and the one-line
/// `summary:` that scripts parse, starting with `head` (mode and parameters).
pub fn print_tail(head: &str, t: &Totals<'_>, watched: &str, json: Option<&Path>) {
    if let Some(path) = json {
        match std::fs::write(path, results_json(head, t)) {
            Ok(()) => println!("  results written to {}", path.display()),
            Err(e) => eprintln!("cannot write {}: {e}", path.display()),
        }
    }
    println!("  latency end-to-end  {}", t.e2e.summary());
    if t.qos1 {
        println!("  PUBLISH->PUBACK     {}", t.rtt.summary());
    }
    println!("  {watched}");
    let qos1 = if t.qos1 {
        format!(
            " acked/s={:.0} rtt_p50={} rtt_p99={} acked_missing={}",
            t.acked as f64 / t.send_time.as_secs_f64(),
            fmt_ns(t.rtt.quantile(0.5)),
            fmt_ns(t.rtt.quantile(0.99)),
            t.acked_missing
        )
    } else {
        String::new()
    };
    println!(
        "summary: {head} sent/s={:.0} received/s={:.0} lost={} e2e_p50={} e2e_p99={}{qos1}",
        t.sent as f64 / t.send_time.as_secs_f64(),
        t.unique as f64 / t.recv_time.as_secs_f64(),
        t.lost,
        fmt_ns(t.e2e.quantile(0.5)),
        fmt_ns(t.e2e.quantile(0.99)),
    );
}

/// A rate for people.
pub fn per_sec(n: u64, d: Duration) -> String {
    let s = d.as_secs_f64();
    if s <= 0.0 {
        return "-".to_string();
    }
    format!("{:.0}/s", n as f64 / s)
}

/// A percentage of `part` in `whole`.
pub fn pct(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "-".to_string();
    }
    format!("{:.3} %", 100.0 * part as f64 / whole as f64)
}

/// Datagrams the kernel dropped for lack of receive buffer (`drops` in /proc/net/udp and
/// udp6): on the gateway's socket (bound to `gateway`'s port, no remote), and summed over the
/// sockets connected to it (this tool's devices).
#[derive(Debug, Clone, Copy, Default)]
pub struct UdpDrops {
    /// At the gateway's listening socket.
    pub gateway: u64,
    /// At the devices' sockets.
    pub devices: u64,
}

impl UdpDrops {
    /// Reads the counters now.
    pub fn read(gateway: std::net::SocketAddr) -> UdpDrops {
        let port = format!(":{:04X}", gateway.port());
        let mut drops = UdpDrops::default();
        for file in ["/proc/net/udp", "/proc/net/udp6"] {
            let Ok(text) = std::fs::read_to_string(file) else {
                continue;
            };
            for line in text.lines().skip(1) {
                let f: Vec<&str> = line.split_whitespace().collect();
                let (Some(local), Some(remote), Some(d)) = (f.get(1), f.get(2), f.last()) else {
                    continue;
                };
                let d: u64 = d.parse().unwrap_or(0);
                if local.ends_with(&port) && remote.ends_with(":0000") {
                    drops.gateway += d;
                } else if remote.ends_with(&port) {
                    drops.devices += d;
                }
            }
        }
        drops
    }

    /// The drops since `before`.
    pub fn since(&self, before: &UdpDrops) -> UdpDrops {
        UdpDrops {
            gateway: self.gateway.saturating_sub(before.gateway),
            devices: self.devices.saturating_sub(before.devices),
        }
    }
}

/// The results as JSON for scripts (`--json`): the rates and counts of the `summary:` line, and
/// each latency as a distribution (nanoseconds at quantiles 0, 0.01, ..., 0.99, 0.995, 0.999
/// and the maximum) for plotting CDFs.
pub fn results_json(head: &str, t: &Totals<'_>) -> String {
    let quantiles = |h: &Histogram| {
        let mut qs: Vec<f64> = (0..100).map(|i| f64::from(i) / 100.0).collect();
        qs.extend([0.995, 0.999]);
        let mut points: Vec<String> = qs
            .iter()
            .map(|&q| format!("[{q}, {}]", h.quantile(q)))
            .collect();
        points.push(format!("[1.0, {}]", h.max()));
        format!("[{}]", points.join(", "))
    };
    let rate = |n: u64, d: Duration| {
        let s = d.as_secs_f64();
        if s > 0.0 {
            n as f64 / s
        } else {
            0.0
        }
    };
    format!(
        "{{\"run\": \"{}\", \"qos1\": {}, \"sent\": {}, \"sent_per_s\": {:.1}, \
         \"received\": {}, \"received_per_s\": {:.1}, \"lost\": {}, \"acked\": {}, \
         \"acked_missing\": {}, \"e2e_count\": {}, \"e2e_ns\": {}, \"rtt_count\": {}, \
         \"rtt_ns\": {}}}\n",
        head.replace('"', "'"),
        t.qos1,
        t.sent,
        rate(t.sent, t.send_time),
        t.unique,
        rate(t.unique, t.recv_time),
        t.lost,
        t.acked,
        t.acked_missing,
        t.e2e.count(),
        quantiles(t.e2e),
        t.rtt.count(),
        quantiles(t.rtt),
    )
}
