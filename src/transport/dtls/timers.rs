//! The listener's timer table: one entry per association, ordered by deadline, so that the
//! earliest deadline is found without walking the associations and an association's entry
//! moves in O(log n).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Instant;

/// Entries are keyed by (deadline, association id): ids are unique, so two associations due
/// at the same instant do not collide, and equal deadlines fire in creation order.
#[derive(Debug, Default)]
pub(crate) struct TimerTable {
    entries: BTreeMap<(Instant, u64), SocketAddr>,
}

impl TimerTable {
    /// Moves an association's entry from `old` (if any) to `new` (if any).
    pub fn reschedule(
        &mut self,
        id: u64,
        peer: SocketAddr,
        old: Option<Instant>,
        new: Option<Instant>,
    ) {
        if old == new {
            return;
        }
        if let Some(old) = old {
            self.entries.remove(&(old, id));
        }
        if let Some(new) = new {
            self.entries.insert((new, id), peer);
        }
    }

    pub fn earliest(&self) -> Option<Instant> {
        self.entries.first_key_value().map(|((at, _), _)| *at)
    }

    /// Takes out every entry due at or before `now`, earliest first.
    pub fn take_due(&mut self, now: Instant) -> Vec<(u64, SocketAddr)> {
        // Ids never reach u64::MAX, so this key sorts after every entry due at `now`.
        let later = self.entries.split_off(&(now, u64::MAX));
        let due = std::mem::replace(&mut self.entries, later);
        due.into_iter().map(|((_, id), peer)| (id, peer)).collect()
    }
}
