//! Reconnect delays: exponential backoff with jitter. Pure: the caller supplies the seed of the
//! generator (`fastrand`'s wyrand, the same generator the load tool uses).

use std::time::Duration;

/// The shortest delay, whatever the settings say: a zero `reconnect_min` would otherwise never
/// grow and turn a broker outage into a busy loop.
const FLOOR: Duration = Duration::from_millis(1);

/// Delays between reconnect attempts: `min` doubling up to `max`, each drawn within ±20% of that
/// value so that many connections dropped at once (a broker restart in transparent mode) do not
/// come back in lockstep.
#[derive(Debug, Clone)]
pub(super) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    rng: fastrand::Rng,
}

impl Backoff {
    /// `max` below `min` is taken as `min`.
    pub(super) fn new(min: Duration, max: Duration, seed: u64) -> Self {
        let min = min.max(FLOOR);
        let max = max.max(min);
        Backoff {
            min,
            max,
            next: min,
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// Starts again from `min` (after a connection that stayed up).
    pub(super) fn reset(&mut self) {
        self.next = self.min;
    }

    /// The capped delay before the next attempt, before jitter.
    #[cfg(test)]
    fn base(&self) -> Duration {
        self.next
    }

    /// The delay to wait now; the following one is twice as long, up to `max`.
    pub(super) fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = base.saturating_mul(2).min(self.max);
        jitter(base, self.rng.u64(..))
    }
}

/// `base` scaled by a factor from 0.8 to 1.2 chosen by `random`. Jitter is applied after capping,
/// so a delay at the cap can exceed `max` by up to 20%; clamping instead would pile every
/// long-failing connection onto exactly `max` again.
fn jitter(base: Duration, random: u64) -> Duration {
    let permille = 800 + u128::from(random % 401);
    let nanos = base.as_nanos() * permille / 1000;
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// A seed that differs per connection and per run (from fastrand's per-thread generator, which
/// is seeded from the OS).
pub(super) fn seed(conn: u64) -> u64 {
    fastrand::u64(..) ^ conn
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn within_jitter(delay: Duration, base: Duration) -> bool {
        delay >= base * 4 / 5 && delay <= base * 6 / 5
    }

    #[test]
    fn doubles_up_to_the_cap_with_jitter() {
        let mut backoff = Backoff::new(ms(100), ms(1000), 42);
        let expected = [100, 200, 400, 800, 1000, 1000, 1000, 1000];
        for base in expected.map(ms) {
            assert_eq!(backoff.base(), base);
            let delay = backoff.next_delay();
            assert!(within_jitter(delay, base), "{delay:?} vs {base:?}");
        }
        backoff.reset();
        assert_eq!(backoff.base(), ms(100));
        assert!(within_jitter(backoff.next_delay(), ms(100)));
    }

    #[test]
    fn jitter_spreads_and_is_deterministic_per_seed() {
        let draw = |seed| {
            let mut backoff = Backoff::new(ms(1000), ms(1000), seed);
            (0..200).map(|_| backoff.next_delay()).collect::<Vec<_>>()
        };
        let a = draw(7);
        assert_eq!(a, draw(7));
        assert_ne!(a, draw(8));
        assert!(a.iter().all(|d| within_jitter(*d, ms(1000))));
        // Both halves of the range are used, so the jitter really spreads.
        assert!(a.iter().any(|d| *d < ms(900)));
        assert!(a.iter().any(|d| *d > ms(1100)));
    }

    #[test]
    fn degenerate_settings_still_back_off() {
        let mut backoff = Backoff::new(Duration::ZERO, Duration::ZERO, 1);
        assert_eq!(backoff.base(), FLOOR);
        let mut backoff2 = Backoff::new(ms(50), ms(10), 1);
        assert_eq!(backoff2.base(), ms(50));
        backoff2.next_delay();
        assert_eq!(backoff2.base(), ms(50));
        assert!(backoff.next_delay() > Duration::ZERO);
    }

    #[test]
    fn jitter_extremes() {
        assert_eq!(jitter(ms(1000), 0), ms(800));
        assert_eq!(jitter(ms(1000), 400), ms(1200));
        assert_eq!(jitter(Duration::MAX, 400), Duration::from_nanos(u64::MAX));
    }
}
