//! Measuring: a process-wide clock, a lock-free latency histogram, per-device sequence sets
//! (for duplicates, gaps and "every acknowledged message arrived"), live counters and a tiny
//! random number generator for jitter.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

static BASE: OnceLock<Instant> = OnceLock::new();

/// The instant all timestamps count from (the first call fixes it).
pub fn base() -> Instant {
    *BASE.get_or_init(Instant::now)
}

/// Nanoseconds since [`base`]: what travels in payloads. Sender and receiver are in this
/// process, so the monotonic clock is shared and no clock synchronisation is needed.
pub fn now_ns() -> u64 {
    nanos(base().elapsed())
}

/// A duration in whole nanoseconds, saturating.
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Sub-buckets per power of two: 2^7 = 128, so a bucket is at most 1/128 (0.8 %) wide.
const PRECISION: u32 = 7;
const SUB: usize = 1 << PRECISION;
const BUCKETS: usize = SUB + (64 - PRECISION as usize) * SUB;

/// A log-linear histogram of nanosecond values (HDR style), recorded with one relaxed atomic
/// add, so every task can share one without a lock.
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum: AtomicU64,
    max: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }
}

fn bucket_index(v: u64) -> usize {
    if v < SUB as u64 {
        return v as usize;
    }
    let exponent = 63 - v.leading_zeros();
    let shift = exponent - PRECISION;
    let sub = (v >> shift) as usize - SUB;
    SUB + shift as usize * SUB + sub
}

/// The middle of a bucket.
fn bucket_value(index: usize) -> u64 {
    if index < SUB {
        return index as u64;
    }
    let shift = ((index - SUB) / SUB) as u32;
    let sub = ((index - SUB) % SUB) as u64;
    let low = (SUB as u64 + sub) << shift;
    low + ((1u64 << shift) >> 1)
}

impl Histogram {
    /// Records one value (nanoseconds).
    pub fn record(&self, v: u64) {
        self.buckets[bucket_index(v)].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        self.sum.fetch_add(v, Relaxed);
        self.max.fetch_max(v, Relaxed);
    }

    /// Number of values recorded.
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// The largest value recorded.
    pub fn max(&self) -> u64 {
        self.max.load(Relaxed)
    }

    /// The mean value.
    pub fn mean(&self) -> u64 {
        self.sum
            .load(Relaxed)
            .checked_div(self.count())
            .unwrap_or(0)
    }

    /// The value at quantile `q` (0..=1), within the bucket precision, never above the maximum.
    pub fn quantile(&self, q: f64) -> u64 {
        let n = self.count();
        if n == 0 {
            return 0;
        }
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Relaxed);
            if seen >= rank {
                return bucket_value(i).min(self.max());
            }
        }
        self.max()
    }

    /// "p50 1.2 ms  p90 ...  p99 ...  max ...  (n samples)" or "no samples".
    pub fn summary(&self) -> String {
        if self.count() == 0 {
            return "no samples".to_string();
        }
        format!(
            "p50 {}  p90 {}  p99 {}  max {}  mean {}  ({} samples)",
            fmt_ns(self.quantile(0.50)),
            fmt_ns(self.quantile(0.90)),
            fmt_ns(self.quantile(0.99)),
            fmt_ns(self.max()),
            fmt_ns(self.mean()),
            self.count()
        )
    }
}

/// A duration in nanoseconds for people: "850 ns", "42.1 µs", "3.25 ms", "1.50 s".
pub fn fmt_ns(ns: u64) -> String {
    let v = ns as f64;
    if ns < 1_000 {
        format!("{ns} ns")
    } else if ns < 1_000_000 {
        format!("{:.1} µs", v / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.2} ms", v / 1e6)
    } else {
        format!("{:.2} s", v / 1e9)
    }
}

/// A set of sequence numbers (a growable bitset).
#[derive(Debug, Default, Clone)]
pub struct SeqSet {
    words: Vec<u64>,
    len: u64,
}

impl SeqSet {
    /// Adds `seq`; false if it was already there.
    pub fn insert(&mut self, seq: u32) -> bool {
        let (word, bit) = (seq as usize / 64, seq % 64);
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        let mask = 1u64 << bit;
        let new = self.words[word] & mask == 0;
        self.words[word] |= mask;
        if new {
            self.len += 1;
        }
        new
    }

    /// Whether `seq` is in the set.
    #[cfg(test)]
    pub fn contains(&self, seq: u32) -> bool {
        self.words
            .get(seq as usize / 64)
            .is_some_and(|w| w & (1u64 << (seq % 64)) != 0)
    }

    /// Number of members.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Members of `self` missing from `other`.
    pub fn missing_from(&self, other: &SeqSet) -> u64 {
        self.words
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let o = other.words.get(i).copied().unwrap_or(0);
                u64::from((w & !o).count_ones())
            })
            .sum()
    }

    /// Members below `n` (sequence numbers 0..n).
    pub fn count_below(&self, n: u64) -> u64 {
        let full = (n / 64) as usize;
        let mut total: u64 = self
            .words
            .iter()
            .take(full)
            .map(|w| u64::from(w.count_ones()))
            .sum();
        let rest = n % 64;
        if rest > 0 {
            if let Some(w) = self.words.get(full) {
                total += u64::from((w & ((1u64 << rest) - 1)).count_ones());
            }
        }
        total
    }
}

/// Counters every task updates as it goes, read by the progress printer and the drain logic.
#[derive(Debug, Default)]
pub struct Live {
    /// Messages handed to the network by publishers (devices or MQTT clients).
    pub sent: AtomicU64,
    /// Messages acknowledged to publishers (QoS 1).
    pub acked: AtomicU64,
    /// Messages that arrived at the receiving side (subscriber or devices), duplicates included.
    pub received: AtomicU64,
    /// Errors worth a look (send failures, rejections, timeouts).
    pub errors: AtomicU64,
    /// When the last message arrived (process clock, ns).
    pub last_arrival_ns: AtomicU64,
}

impl Live {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Relaxed)
    }

    /// Counts one arrival at `now` (process clock, ns).
    pub fn arrived(&self, now: u64) {
        self.received.fetch_add(1, Relaxed);
        self.last_arrival_ns.fetch_max(now, Relaxed);
    }

    /// From `start_ns` to the last arrival (at least 1 ns).
    pub fn arrival_span(&self, start_ns: u64) -> std::time::Duration {
        let last = self.last_arrival_ns.load(Relaxed);
        std::time::Duration::from_nanos(last.saturating_sub(start_ns).max(1))
    }
}

/// Jitter for retries (no cryptographic use), on `fastrand`'s wyrand like the gateway's backoff.
#[derive(Debug, Clone)]
pub struct Rng(fastrand::Rng);

impl Rng {
    /// A generator seeded from `seed` and the clock.
    pub fn new(seed: u64) -> Self {
        Rng(fastrand::Rng::with_seed(
            seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ now_ns(),
        ))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.u64(..)
    }

    /// A duration uniformly within ±`spread` (0..1) of `d`.
    pub fn jitter(&mut self, d: Duration, spread: f64) -> Duration {
        let unit = self.0.f64(); // [0, 1)
        d.mul_f64(1.0 + spread * (2.0 * unit - 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_round_trip_within_precision() {
        for v in [
            0u64,
            1,
            127,
            128,
            129,
            1000,
            123_456,
            9_999_999_999,
            u64::MAX / 3,
        ] {
            let back = bucket_value(bucket_index(v));
            let err = back.abs_diff(v) as f64 / (v.max(1) as f64);
            assert!(err <= 1.0 / 128.0, "{v} -> {back}");
        }
        assert!(bucket_index(u64::MAX) < BUCKETS);
    }

    #[test]
    fn quantiles() {
        let h = Histogram::default();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5);
        assert!((495_000..=505_000).contains(&p50), "{p50}");
        assert_eq!(h.max(), 1_000_000);
        assert!(h.quantile(1.0) <= 1_000_000);
    }

    #[test]
    fn seqset() {
        let mut s = SeqSet::default();
        assert!(s.insert(3));
        assert!(!s.insert(3));
        assert!(s.insert(200));
        assert_eq!(s.len(), 2);
        assert!(s.contains(200) && !s.contains(4));
        assert_eq!(s.count_below(4), 1);
        assert_eq!(s.count_below(201), 2);
        let mut t = SeqSet::default();
        t.insert(3);
        assert_eq!(s.missing_from(&t), 1);
    }
}
