//! Admission of device traffic: each sender's frame budget (checked before a frame is decoded),
//! each client's publish budget towards the broker, and what a congested broker connection still
//! takes. Under pressure the device that pushes is the one slowed (MQTT-SN's "rejected:
//! congestion", or a dropped frame or QoS 0 message), never everyone.

use super::gateway::Gateway;
use super::{ClientKey, ConnId, Event, PeerAddr};
use crate::hash::HashSeed;
use crate::time::{Duration, Instant};
use std::hash::BuildHasher;

/// How often, at most, the engine reports refusals ([`Event::Overload`]): often enough to see
/// an overload begin, rarely enough that a flood does not become a log storm.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// A client's publish budget, as the generic cell rate algorithm keeps a token bucket: one
/// timestamp, the "theoretical arrival time" (µs of engine time) at which the bucket would be
/// full again. Each admitted request moves it on by the cost of one message (`1/rate`); a
/// request is admitted while it stays within one burst (`burst/rate`) of now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Budget {
    full_at_us: u64,
}

/// The sizes of every client's [`Budget`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetLimits {
    /// Messages per second, sustained; 0: no limit.
    pub rate: u32,
    /// Messages at once on top of the rate (the bucket's size), at least 1.
    pub burst: u32,
}

impl BudgetLimits {
    /// The cost of one message and the span of a full bucket, in µs; `None`: unlimited.
    fn costs(&self) -> Option<(u64, u64)> {
        if self.rate == 0 {
            return None;
        }
        let cost = (1_000_000 / u64::from(self.rate)).max(1);
        Some((cost, cost * u64::from(self.burst.max(1))))
    }
}

fn micros(at: Instant) -> u64 {
    at.as_millis().saturating_mul(1000)
}

impl Budget {
    /// Takes one message's worth if the budget has it.
    pub fn take(&mut self, now: Instant, limits: &BudgetLimits) -> bool {
        let Some((cost, span)) = limits.costs() else {
            return true;
        };
        let now = micros(now);
        let start = self.full_at_us.max(now);
        if start + cost - now > span {
            return false;
        }
        self.full_at_us = start + cost;
        true
    }

    /// The one of the two that is spent more.
    pub fn later(self, other: Budget) -> Budget {
        self.max(other)
    }

    /// Marks the budget used up (never more): a client refused for pushing stays a heavy user
    /// while it keeps pushing, instead of counting as light again after a short pause.
    pub fn exhaust(&mut self, now: Instant, limits: &BudgetLimits) {
        if let Some((_, span)) = limits.costs() {
            self.full_at_us = self.full_at_us.max(micros(now) + span);
        }
    }

    /// Whether the client has used at most half its bucket lately: a light user, served even
    /// while its broker connection is congested (within the connection's overdraft).
    pub fn is_light(&self, now: Instant, limits: &BudgetLimits) -> bool {
        match limits.costs() {
            None => true,
            Some((_, span)) => self.full_at_us.saturating_sub(micros(now)) * 2 <= span,
        }
    }
}

/// Address slots of the budgets of senders without a session.
const ADDRESS_SLOTS: usize = 2048;

/// Budgets of senders without a session, by address, in a fixed number of slots: the table
/// never grows, however many addresses a flood uses. Each address has two slots, picked by
/// seeded hashes (nobody can aim at a given device's slots), and its budget is the less spent
/// of the two; what it takes is charged to both (as a count-min sketch counts). Sharing a slot
/// with someone else can only make an address's budget look more spent, never less, and a flood
/// from k addresses (each draining its two slots) blocks a device only if both of the device's
/// slots are among the drained: about (2k/2048)^2 of the devices instead of k/2048 with one slot
/// each. Allocated at first use.
#[derive(Debug, Default)]
pub(super) struct AddressBudgets(Option<Box<[Budget]>>);

impl AddressBudgets {
    fn slots(&mut self) -> &mut [Budget] {
        self.0
            .get_or_insert_with(|| vec![Budget::default(); ADDRESS_SLOTS].into_boxed_slice())
    }

    /// The two slots of `from`. The tags keep these hashes apart from those of the gateway's
    /// maps, which use the same seed.
    fn pair(seed: &HashSeed, from: PeerAddr) -> [usize; 2] {
        [
            (seed.hash_one(("budget-a", from)) as usize) % ADDRESS_SLOTS,
            (seed.hash_one(("budget-b", from)) as usize) % ADDRESS_SLOTS,
        ]
    }

    /// The budget of `from`: the less spent of its slots.
    fn peek(&self, seed: &HashSeed, from: PeerAddr) -> Budget {
        let [a, b] = Self::pair(seed, from);
        self.0
            .as_ref()
            .map_or(Budget::default(), |slots| slots[a].min(slots[b]))
    }

    /// Makes both of `from`'s slots at least as spent as `budget`.
    fn charge(&mut self, seed: &HashSeed, from: PeerAddr, budget: Budget) {
        let pair = Self::pair(seed, from);
        let slots = self.slots();
        for i in pair {
            slots[i] = slots[i].later(budget);
        }
    }

    /// Hands the budget of a session that ends (or moves away) back to its address, so that
    /// a flood of CONNECTs and DISCONNECTs from one address meets the address's budget.
    pub(super) fn remember(&mut self, seed: &HashSeed, from: PeerAddr, budget: Budget) {
        if budget != Budget::default() {
            self.charge(seed, from, budget);
        }
    }

    /// Takes one from `from`'s budget, if it has it.
    fn take(
        &mut self,
        seed: &HashSeed,
        from: PeerAddr,
        now: Instant,
        limits: &BudgetLimits,
    ) -> bool {
        if limits.costs().is_none() {
            return true;
        }
        let mut budget = self.peek(seed, from);
        let fits = budget.take(now, limits);
        if fits {
            self.charge(seed, from, budget);
        }
        fits
    }
}

/// Light users share a congested connection's overdraft: none may take more than this
/// fraction of it (`upstream.max_queued_bytes` / 8) in one congestion episode.
pub const OVERDRAFT_SHARES: usize = 8;

/// What a client was let through while its connection was congested, in which episode (the
/// connection counts its congestions, so that an old share needs no reset).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OverdraftShare {
    /// The connection's congestion episode.
    pub episode: u32,
    /// Bytes let through in it.
    pub bytes: usize,
}

/// Why a device request was not let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The client used up its own budget (`limits.publish_rate`, `limits.publish_burst`).
    OverBudget,
    /// Its broker connection is congested and the client is not a light user, or the
    /// connection's overdraft is spent.
    Congested,
}

impl Gateway {
    /// Decides whether a request of `len` bytes from client `key` (`None`: a QoS -1 sender
    /// without a session, at address `from`) may go to the broker over `conn` now, and charges it if so. A refusal
    /// is counted here (`qos0`: as a dropped message, else as answered with congestion) and
    /// reported at most every [`REPORT_INTERVAL`]; the caller answers the device.
    pub(super) fn admit(
        &mut self,
        key: Option<ClientKey>,
        from: Option<PeerAddr>,
        conn: ConnId,
        len: usize,
        qos0: bool,
    ) -> Result<(), Refusal> {
        let now = self.now;
        let limits = self.settings.limits.budget;
        let allowance = self.settings.upstream_queue_bytes;
        let congested = self.upstreams.get(&conn).is_some_and(|u| u.congested);
        // What it costs on the wire: the MQTT PUBLISH header, topic length and packet id on
        // top of topic and payload.
        let len = len + 7;
        // QoS -1 senders without a session have budgets by address: unbounded they would be the
        // one way around the per-device limits, while a fleet of such sensors spreads over the
        // slots.
        if let (None, Some(from)) = (key, from) {
            let seed = self.settings.hash_seed;
            if !self.anonymous_budgets.take(&seed, from, now, &limits) {
                self.count_refusal(Refusal::OverBudget, qos0);
                return Err(Refusal::OverBudget);
            }
        }
        let (budget, share) = match key.and_then(|k| self.client(k)) {
            Some(c) => (Some(c.budget), Some(c.overdraft_share)),
            None => (None, None),
        };
        let episode = self.upstreams.get(&conn).map_or(0, |u| u.episode);
        // Bytes this client was let through in the current congestion episode.
        let used = share
            .filter(|s| s.episode == episode)
            .map_or(0, |s| s.bytes);
        // Refused for pushing (not merely for a spent overdraft): it stays heavy while it
        // keeps pushing, instead of counting as light again after a short pause.
        let mut pushing = true;
        let verdict = match budget {
            Some(budget) if !budget.clone().take(now, &limits) => Err(Refusal::OverBudget),
            _ if !congested => Ok(()),
            // While congested, only light users get through: each at most its share of the
            // overdraft (one message at least), and all together only until the writes queued
            // beyond the bound reach the bound again. A device that uses up its share is
            // pushing; one that finds the overdraft spent by the others is not.
            Some(budget) if budget.is_light(now, &limits) => {
                let fits_share = used == 0 || used + len <= allowance / OVERDRAFT_SHARES;
                match self.upstreams.get_mut(&conn) {
                    Some(up) if fits_share && up.overdraft + len <= allowance => {
                        up.overdraft += len;
                        Ok(())
                    }
                    _ => {
                        pushing = !fits_share;
                        Err(Refusal::Congested)
                    }
                }
            }
            _ => Err(Refusal::Congested),
        };
        if let Some(client) = key.and_then(|k| self.client_mut(k)) {
            match verdict {
                Ok(()) => {
                    client.budget.take(now, &limits);
                    if congested {
                        client.overdraft_share = OverdraftShare {
                            episode,
                            bytes: used + len,
                        };
                    }
                }
                Err(_) if pushing => client.budget.exhaust(now, &limits),
                Err(_) => {}
            }
        }
        if let Err(refusal) = verdict {
            self.count_refusal(refusal, qos0);
        }
        verdict
    }

    /// Whether a frame from `peer` fits its sender's frame budget (`limits.frame_rate`,
    /// `limits.frame_burst`): the client's own if `peer` has a session, else its address slot's.
    /// It is asked before the frame is decoded, so a flood costs one lookup per frame, and a
    /// frame over it is dropped unanswered (an answer would be more work for the flood to cause)
    /// and counted.
    pub(super) fn within_frame_budget(&mut self, peer: PeerAddr) -> bool {
        let now = self.now;
        let limits = self.settings.limits.frames;
        let session = self.by_peer.get(&peer).copied();
        let fits = match session.and_then(|key| self.client_mut(key)) {
            Some(client) => client.frame_budget.take(now, &limits),
            None => {
                let seed = self.settings.hash_seed;
                self.sessionless_frames.take(&seed, peer, now, &limits)
            }
        };
        if !fits {
            self.counters.frames_over_budget += 1;
            self.report_overload();
        }
        fits
    }

    /// What is left of the frame budget of address `peer`: its session's, or its slot's. A
    /// session that starts at, or moves to, an address takes it over, so that a CONNECT under a
    /// new ClientId does not come with a fresh budget.
    pub(super) fn address_frame_budget(&self, peer: PeerAddr) -> Budget {
        match self.by_peer.get(&peer).and_then(|&k| self.client(k)) {
            Some(client) => client.frame_budget,
            None => self.sessionless_frames.peek(&self.settings.hash_seed, peer),
        }
    }

    fn count_refusal(&mut self, refusal: Refusal, qos0: bool) {
        let c = &mut self.counters;
        match (refusal, qos0) {
            (Refusal::OverBudget, _) => c.over_budget += 1,
            (Refusal::Congested, true) => c.congestion_dropped += 1,
            (Refusal::Congested, false) => c.congestion_refused += 1,
        }
        self.report_overload();
    }

    /// Reports the refusals so far ([`Event::Overload`]), at most every [`REPORT_INTERVAL`].
    fn report_overload(&mut self) {
        let now = self.now;
        if self
            .overload_reported_at
            .is_none_or(|at| now.saturating_since(at) >= REPORT_INTERVAL)
        {
            self.overload_reported_at = Some(now);
            let c = &self.counters;
            self.events.push_back(Event::Overload {
                frames_over_budget: c.frames_over_budget,
                over_budget: c.over_budget,
                congestion_refused: c.congestion_refused,
                congestion_dropped: c.congestion_dropped,
            });
        }
    }

    /// The driver's report on a connection's send queue: congested (over its bound) or
    /// drained (back under half of it). A connection that comes up or goes down starts
    /// uncongested.
    pub(super) fn set_congested(&mut self, conn: ConnId, congested: bool) {
        if let Some(up) = self.upstreams.get_mut(&conn) {
            if congested && !up.congested {
                up.episode = up.episode.wrapping_add(1);
            }
            up.congested = congested;
            up.overdraft = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: BudgetLimits = BudgetLimits { rate: 10, burst: 3 };

    fn ms(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn addr(i: u32) -> PeerAddr {
        let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
        PeerAddr::udp(std::net::SocketAddr::from((ip, 5000)))
    }

    /// An address gets its own budget and no more, whichever of its two slots it draws on.
    #[test]
    fn an_address_gets_one_budget_from_its_two_slots() {
        let seed = HashSeed(3, 4);
        let mut budgets = AddressBudgets::default();
        let t = ms(1_000);
        let taken = (0..10)
            .filter(|_| budgets.take(&seed, addr(1), t, &LIMITS))
            .count();
        assert_eq!(taken, 3, "one burst");
        assert!(budgets.take(&seed, addr(2), t, &LIMITS), "another address");
        assert!(budgets.take(&seed, addr(1), ms(1_100), &LIMITS), "refilled");
    }

    /// An address that shares one slot with a flooder still gets its whole budget: only an
    /// address whose two slots are both drained is held back.
    #[test]
    fn sharing_one_slot_with_a_flooder_costs_nothing() {
        let seed = HashSeed(3, 4);
        let flooder = addr(0);
        let flooder_slots = AddressBudgets::pair(&seed, flooder);
        let neighbour = (1..1_000_000)
            .map(addr)
            .find(|&a| {
                let slots = AddressBudgets::pair(&seed, a);
                let shared = slots.iter().filter(|s| flooder_slots.contains(s)).count();
                shared == 1
            })
            .expect("an address with one slot in common");
        let mut budgets = AddressBudgets::default();
        let t = ms(1_000);
        for _ in 0..1000 {
            budgets.take(&seed, flooder, t, &LIMITS);
        }
        assert!(
            !budgets.take(&seed, flooder, t, &LIMITS),
            "the flooder is held"
        );
        let taken = (0..3)
            .filter(|_| budgets.take(&seed, neighbour, t, &LIMITS))
            .count();
        assert_eq!(taken, 3, "the neighbour's whole burst");
    }

    #[test]
    fn a_burst_then_the_rate() {
        let mut b = Budget::default();
        let t = ms(1_000);
        assert!(
            (0..3).all(|_| b.take(t, &LIMITS)),
            "a full bucket gives a burst"
        );
        assert!(!b.take(t, &LIMITS), "then it is empty");
        assert!(
            !b.take(ms(1_099), &LIMITS),
            "one message per 100 ms comes back"
        );
        assert!(b.take(ms(1_100), &LIMITS));
        assert!(!b.take(ms(1_100), &LIMITS));
        // A long pause refills it, but never beyond one burst.
        let later = ms(60_000);
        assert!((0..3).all(|_| b.take(later, &LIMITS)));
        assert!(!b.take(later, &LIMITS));
    }

    #[test]
    fn light_means_at_most_half_used() {
        let mut b = Budget::default();
        let t = ms(1_000);
        assert!(b.is_light(t, &LIMITS));
        b.take(t, &LIMITS);
        assert!(b.is_light(t, &LIMITS), "100 ms of a 300 ms bucket used");
        b.take(t, &LIMITS);
        assert!(!b.is_light(t, &LIMITS), "200 ms used");
        assert!(b.is_light(ms(1_050), &LIMITS), "150 ms used");
    }

    #[test]
    fn a_refused_client_stays_heavy_while_it_pushes() {
        let mut b = Budget::default();
        b.exhaust(ms(1_000), &LIMITS);
        assert!(!b.is_light(ms(1_100), &LIMITS), "used up: heavy");
        assert!(!b.take(ms(1_000), &LIMITS));
        assert!(
            b.is_light(ms(1_150), &LIMITS),
            "half refilled after a pause"
        );
        b.exhaust(ms(1_150), &LIMITS);
        b.exhaust(ms(1_150), &LIMITS);
        assert!(
            b.take(ms(1_250), &LIMITS),
            "never more than one bucket of debt"
        );
    }

    #[test]
    fn rate_zero_is_unlimited() {
        let limits = BudgetLimits { rate: 0, burst: 1 };
        let mut b = Budget::default();
        assert!((0..100_000).all(|_| b.take(ms(5), &limits)));
        assert!(b.is_light(ms(5), &limits));
    }
}
