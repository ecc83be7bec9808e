//! Topic ids (MQTT-SN §7.3): each client's table of normal topic ids, the configured predefined
//! ids, and the interner that lets all clients share one allocation per topic name.

use std::sync::Arc;

use thiserror::Error;

use crate::hash::{HashMap, HashSeed, HashSet};
use crate::settings::PredefinedTopic;

/// Why a topic could not be registered; the engine answers REGACK "congestion" for both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RegistryError {
    /// All ids 0x0001..=0xFFFE are taken.
    #[error("no free topic id left")]
    Exhausted,
    /// The client already holds as many topics as the gateway allows.
    #[error("too many topics registered (limit {max})")]
    TooManyTopics {
        /// The limit in force.
        max: u16,
    },
}

/// The highest normal topic id; 0x0000 and 0xFFFF are reserved.
const MAX_ID: u16 = 0xFFFE;

/// One client's normal topic ids, allocated 1, 2, 3, ... in registration order and only
/// released all at once by [`clear`](Self::clear) (a new clean session), so that the same
/// sequence of REGISTERs always yields the same ids.
///
/// An id the gateway proposes in its own REGISTER ([`propose`](Self::propose)) is held for its
/// topic but *pending*: [`id`](Self::id) does not give it out until the device's REGACK accepts
/// it ([`confirm`](Self::confirm)), so a session kept or restored across a lost REGISTER never
/// publishes under an id the device may not know.
///
/// Kept to 32 bytes because there is one per client: entry `i` holds the name of id `i + 1`, and
/// its otherwise wasted padding holds the `i`-th element of the permutation that sorts the
/// entries by name. So `name(id)` is an index and `id(name)` a binary search, without a second
/// allocation or a per-client hash map.
#[derive(Debug, Clone)]
pub struct TopicRegistry {
    entries: Vec<Entry>,
    max_topics: u16,
}

#[derive(Debug, Clone)]
struct Entry {
    name: Arc<str>,
    /// Not about this entry: position `i` of the by-name order holds the index of the entry
    /// with the `i`-th smallest name.
    sorted: u16,
    /// Proposed by the gateway, not yet accepted by the device's REGACK.
    pending: bool,
}

impl Default for TopicRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl TopicRegistry {
    /// An empty registry allowing every id (65534 topics). Does not allocate.
    pub fn new() -> Self {
        Self::with_max_topics(usize::from(MAX_ID))
    }

    /// An empty registry that refuses more than `max_topics` topics (capped at 65534).
    pub fn with_max_topics(max_topics: usize) -> Self {
        TopicRegistry {
            entries: Vec::new(),
            max_topics: u16::try_from(max_topics).unwrap_or(MAX_ID).min(MAX_ID),
        }
    }

    /// Whether [`Self::register`] would accept `name` (known already, or room for one more), so
    /// that a caller can refuse before it stores anything for the name.
    ///
    /// # Errors
    /// As [`Self::register`].
    pub fn check_room(&self, name: &str) -> Result<(), RegistryError> {
        if self.search(name).is_ok() {
            return Ok(());
        }
        let len = self.entries.len();
        if len >= usize::from(MAX_ID) {
            return Err(RegistryError::Exhausted);
        }
        if len >= usize::from(self.max_topics) {
            return Err(RegistryError::TooManyTopics {
                max: self.max_topics,
            });
        }
        Ok(())
    }

    /// The id of `name`, allocating the next one if it is new. Registering a name again returns
    /// its existing id (clients re-REGISTER after reconnecting); a pending id becomes accepted,
    /// since the device itself named the topic.
    ///
    /// # Errors
    /// [`RegistryError::TooManyTopics`] past the limit, [`RegistryError::Exhausted`] when no id
    /// is left.
    pub fn register(&mut self, name: &Arc<str>) -> Result<u16, RegistryError> {
        let (id, index) = self.allocate(name, false)?;
        self.entries[index].pending = false;
        Ok(id)
    }

    /// The id to propose in a gateway REGISTER of `name`: its id if it has one (accepted or
    /// pending), else the next id, held as pending until [`Self::confirm`].
    ///
    /// # Errors
    /// As [`Self::register`].
    pub fn propose(&mut self, name: &Arc<str>) -> Result<u16, RegistryError> {
        self.allocate(name, true).map(|(id, _)| id)
    }

    /// The device's REGACK accepted `id`.
    pub fn confirm(&mut self, id: u16) {
        if let Some(entry) = usize::from(id)
            .checked_sub(1)
            .and_then(|i| self.entries.get_mut(i))
        {
            entry.pending = false;
        }
    }

    /// `(id, entry index)` of `name`, appending it (pending as given) if it is new.
    fn allocate(&mut self, name: &Arc<str>, pending: bool) -> Result<(u16, usize), RegistryError> {
        self.check_room(name)?;
        let pos = match self.search(name) {
            Ok(index) => return Ok((index_to_id(index), index)),
            Err(pos) => pos,
        };
        let len = self.entries.len();
        // `len < MAX_ID` (checked above), so it fits; the fallback is never taken.
        let index = u16::try_from(len).unwrap_or(MAX_ID);
        if len < 4 {
            // Grow one at a time while small: a Vec would jump straight to 4 entries, and
            // most clients register only one or two topics.
            self.entries.reserve_exact(1);
        }
        self.entries.push(Entry {
            name: Arc::clone(name),
            sorted: 0,
            pending,
        });
        // Open a slot at `pos` in the permutation by shifting the tail up one entry.
        for i in (pos + 1..=len).rev() {
            self.entries[i].sorted = self.entries[i - 1].sorted;
        }
        self.entries[pos].sorted = index;
        Ok((index_to_id(usize::from(index)), len))
    }

    /// The name registered under `id`.
    pub fn name(&self, id: u16) -> Option<&Arc<str>> {
        let index = usize::from(id).checked_sub(1)?;
        self.entries.get(index).map(|e| &e.name)
    }

    /// The id registered for `name`, once the device knows it (not while pending).
    pub fn id(&self, name: &str) -> Option<u16> {
        self.search(name)
            .ok()
            .filter(|&index| !self.entries[index].pending)
            .map(index_to_id)
    }

    /// Whether `name` has an id, accepted or pending.
    pub fn contains(&self, name: &str) -> bool {
        self.search(name).is_ok()
    }

    /// Binary search of the by-name permutation: `Ok(entry index)` or `Err(insert position)`.
    fn search(&self, name: &str) -> Result<usize, usize> {
        let (mut lo, mut hi) = (0, self.entries.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let index = usize::from(self.entries[mid].sorted);
            match (*self.entries[index].name).cmp(name) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(index),
            }
        }
        Err(lo)
    }

    /// Forgets every topic and frees the memory; ids start again at 1.
    pub fn clear(&mut self) {
        self.entries = Vec::new();
    }

    /// How many topics are registered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no topic is registered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The registered `(id, name)` pairs in id order.
    pub fn iter(&self) -> impl Iterator<Item = (u16, &Arc<str>)> + '_ {
        self.entries
            .iter()
            .enumerate()
            .map(|(i, e)| (index_to_id(i), &e.name))
    }

    /// Whether `id` was proposed by the gateway and not yet accepted.
    pub fn is_pending(&self, id: u16) -> bool {
        usize::from(id)
            .checked_sub(1)
            .and_then(|i| self.entries.get(i))
            .is_some_and(|e| e.pending)
    }
}

/// Entry index to topic id; indexes stay below `MAX_ID`, so this never saturates.
fn index_to_id(index: usize) -> u16 {
    u16::try_from(index + 1).unwrap_or(u16::MAX)
}

/// The predefined topic ids from the configuration (`[[predefined]]`), global and per client.
#[derive(Debug, Clone)]
pub struct PredefinedTopics {
    /// Global entries sorted by id.
    global: Vec<(u16, Arc<str>)>,
    /// Reverse of `global`: the lowest id of each topic.
    global_ids: HashMap<Arc<str>, u16>,
    /// Client-specific entries, each list sorted by id.
    per_client: HashMap<Box<str>, Vec<(u16, Arc<str>)>>,
}

impl PredefinedTopics {
    /// Builds the tables from the configuration entries (which the config loader has checked:
    /// valid ids and names, no duplicate id within a scope).
    pub fn new(entries: &[PredefinedTopic], seed: HashSeed) -> Self {
        let mut this = PredefinedTopics {
            global: Vec::new(),
            global_ids: HashMap::with_hasher(seed),
            per_client: HashMap::with_hasher(seed),
        };
        // Entries of several clients often name the same topic; store it once.
        let mut interner = TopicInterner::new(seed);
        for entry in entries {
            let topic = interner.intern(&entry.topic);
            match &entry.client_id {
                None => this.global.push((entry.id, topic)),
                Some(client) => this
                    .per_client
                    .entry(client.as_str().into())
                    .or_default()
                    .push((entry.id, topic)),
            }
        }
        this.global.sort_by_key(|e| e.0);
        for list in this.per_client.values_mut() {
            list.sort_by_key(|e| e.0);
        }
        // Ascending ids, so `or_insert` keeps the lowest id of a topic listed twice.
        for (id, topic) in &this.global {
            this.global_ids.entry(Arc::clone(topic)).or_insert(*id);
        }
        this
    }

    /// Whether there are no predefined topics at all.
    pub fn is_empty(&self) -> bool {
        self.global.is_empty() && self.per_client.is_empty()
    }

    fn client_list(&self, client_id: &str) -> &[(u16, Arc<str>)] {
        // Skip hashing the client id on the publish path when no entry is client-specific.
        if self.per_client.is_empty() {
            return &[];
        }
        self.per_client.get(client_id).map_or(&[], Vec::as_slice)
    }

    /// The topic that predefined `id` stands for, for the client `client_id`: its own entry
    /// wins over a global one.
    pub fn name(&self, client_id: &str, id: u16) -> Option<&Arc<str>> {
        let own = self.client_list(client_id);
        find_id(own, id).or_else(|| find_id(&self.global, id))
    }

    /// The predefined id under which `client_id` knows `topic` (to deliver a broker message to
    /// a client that subscribed by predefined id). Its own entries come first; a global id is
    /// only returned if the client has not redefined that id to another topic. The lowest
    /// matching id wins.
    pub fn id_for(&self, client_id: &str, topic: &str) -> Option<u16> {
        let own = self.client_list(client_id);
        if let Some((id, _)) = own.iter().find(|e| &*e.1 == topic) {
            return Some(*id);
        }
        let id = *self.global_ids.get(topic)?;
        if own.binary_search_by_key(&id, |e| e.0).is_ok() {
            // Shadowed for this client. Another global id for the same topic may still be
            // visible (rare: only with duplicate topics in the config), so look further.
            return self
                .global
                .iter()
                .filter(|e| &*e.1 == topic)
                .map(|e| e.0)
                .find(|id| own.binary_search_by_key(id, |e| e.0).is_err());
        }
        Some(id)
    }
}

/// The topic of `id` in a list sorted by id.
fn find_id(list: &[(u16, Arc<str>)], id: u16) -> Option<&Arc<str>> {
    let index = list.binary_search_by_key(&id, |e| e.0).ok()?;
    Some(&list[index].1)
}

/// Shares one `Arc<str>` per distinct topic name across all clients, so that 100,000 clients
/// registering `sensors/temp` store the string once.
///
/// Names nobody else holds any more (a departed client's topics, the filter of an UNSUBSCRIBE
/// that matched nothing) are dropped by [`Self::purge`], which [`Self::intern`] runs itself each
/// time the set has doubled since the last purge: amortised O(1) per name, and the set never
/// holds more than twice what the sessions use (plus [`PURGE_FLOOR`]).
#[derive(Debug)]
pub struct TopicInterner {
    names: HashSet<Arc<str>>,
    /// Size at which `intern` purges next.
    purge_at: usize,
}

/// Below this many names the interner does not bother purging.
pub const PURGE_FLOOR: usize = 1024;

impl TopicInterner {
    /// An empty interner whose set is keyed with `seed`.
    pub fn new(seed: HashSeed) -> Self {
        TopicInterner {
            names: HashSet::with_hasher(seed),
            purge_at: PURGE_FLOOR,
        }
    }

    /// The shared `Arc` for `name`, creating it on first use.
    pub fn intern(&mut self, name: &str) -> Arc<str> {
        if let Some(shared) = self.names.get(name) {
            return Arc::clone(shared);
        }
        if self.names.len() >= self.purge_at {
            self.purge();
            self.purge_at = (2 * self.names.len()).max(PURGE_FLOOR);
        }
        let shared: Arc<str> = Arc::from(name);
        self.names.insert(Arc::clone(&shared));
        shared
    }

    /// Drops the names nobody else holds any more, so that the interner does not grow forever
    /// with topics of departed clients. Cost O(names): call it now and then, not per message.
    pub fn purge(&mut self) {
        self.names.retain(|name| Arc::strong_count(name) > 1);
        self.names.shrink_to_fit();
    }

    /// How many distinct names are held.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether no name is held.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arc(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn per_client_cost_is_small() {
        println!(
            "size_of::<TopicRegistry>() = {}",
            std::mem::size_of::<TopicRegistry>()
        );
        assert!(std::mem::size_of::<TopicRegistry>() <= 32);
        assert_eq!(std::mem::size_of::<Entry>(), 24);
        let mut reg = TopicRegistry::new();
        reg.register(&arc("a")).unwrap();
        reg.register(&arc("b")).unwrap();
        // Two topics cost 48 heap bytes (plus the shared names), not a 4-entry block.
        assert_eq!(reg.entries.capacity(), 2);
    }

    #[test]
    fn allocates_in_order_and_looks_up_both_ways() {
        let mut reg = TopicRegistry::new();
        assert!(reg.is_empty());
        let names = ["m", "c", "x", "a", "c/d", "b"];
        for (i, n) in names.iter().enumerate() {
            assert_eq!(reg.register(&arc(n)), Ok(i as u16 + 1));
        }
        assert_eq!(reg.len(), names.len());
        for (i, n) in names.iter().enumerate() {
            let id = i as u16 + 1;
            assert_eq!(reg.id(n), Some(id));
            assert_eq!(reg.name(id).map(|s| &**s), Some(*n));
        }
        assert_eq!(reg.name(0), None);
        assert_eq!(reg.name(7), None);
        assert_eq!(reg.name(0xFFFF), None);
        assert_eq!(reg.id("zz"), None);
        assert_eq!(reg.id(""), None);
        let listed: Vec<(u16, &str)> = reg.iter().map(|(i, n)| (i, &**n)).collect();
        assert_eq!(listed[0], (1, "m"));
        assert_eq!(listed[5], (6, "b"));
    }

    #[test]
    fn re_register_is_idempotent() {
        let mut reg = TopicRegistry::new();
        assert_eq!(reg.register(&arc("a/b")), Ok(1));
        assert_eq!(reg.register(&arc("c")), Ok(2));
        assert_eq!(reg.register(&arc("a/b")), Ok(1));
        assert_eq!(reg.len(), 2);
        assert_eq!(reg.register(&arc("d")), Ok(3));
    }

    #[test]
    fn clear_restarts_at_one() {
        let mut reg = TopicRegistry::new();
        reg.register(&arc("a")).unwrap();
        reg.register(&arc("b")).unwrap();
        reg.clear();
        assert_eq!(reg.len(), 0);
        assert_eq!(reg.id("a"), None);
        assert_eq!(reg.register(&arc("b")), Ok(1));
    }

    #[test]
    fn limit() {
        let mut reg = TopicRegistry::with_max_topics(2);
        assert_eq!(reg.register(&arc("a")), Ok(1));
        assert_eq!(reg.register(&arc("b")), Ok(2));
        assert_eq!(
            reg.register(&arc("c")),
            Err(RegistryError::TooManyTopics { max: 2 })
        );
        // Already registered names still resolve at the limit.
        assert_eq!(reg.register(&arc("a")), Ok(1));
    }

    #[test]
    fn exhaustion() {
        let mut reg = TopicRegistry::with_max_topics(usize::MAX);
        // Names in ascending order keep each insertion at the end of the permutation.
        for i in 1..=0xFFFEu32 {
            let id = reg.register(&arc(&format!("t/{i:05}"))).unwrap();
            assert_eq!(u32::from(id), i);
        }
        assert_eq!(reg.register(&arc("z")), Err(RegistryError::Exhausted));
        assert_eq!(reg.register(&arc("t/00007")), Ok(7));
        assert_eq!(reg.id("t/65534"), Some(0xFFFE));
        assert_eq!(reg.name(0xFFFE).map(|s| &**s), Some("t/65534"));
        assert_eq!(reg.name(0xFFFF), None);
    }

    #[test]
    fn lookups_agree_under_random_order() {
        // Many names in a scrambled order exercise the permutation shifting.
        let mut reg = TopicRegistry::new();
        let names: Vec<String> = (0..500u32)
            .map(|i| format!("n/{}", i.wrapping_mul(7919) % 1000))
            .collect();
        for (i, n) in names.iter().enumerate() {
            assert_eq!(reg.register(&arc(n)), Ok(i as u16 + 1));
        }
        for (i, n) in names.iter().enumerate() {
            assert_eq!(reg.id(n), Some(i as u16 + 1));
        }
    }

    fn predef(id: u16, topic: &str, client: Option<&str>) -> PredefinedTopic {
        PredefinedTopic {
            id,
            topic: topic.to_owned(),
            client_id: client.map(str::to_owned),
        }
    }

    #[test]
    fn predefined_client_wins_over_global() {
        let p = PredefinedTopics::new(
            &[
                predef(5, "global/five", None),
                predef(1, "global/one", None),
                predef(5, "c1/five", Some("c1")),
                predef(9, "c1/nine", Some("c1")),
                predef(9, "c2/nine", Some("c2")),
            ],
            HashSeed(1, 2),
        );
        assert!(!p.is_empty());
        let name = |c: &str, id| p.name(c, id).map(|s| &**s);
        assert_eq!(name("c1", 5), Some("c1/five"));
        assert_eq!(name("c1", 1), Some("global/one"));
        assert_eq!(name("c1", 9), Some("c1/nine"));
        assert_eq!(name("c2", 9), Some("c2/nine"));
        assert_eq!(name("c2", 5), Some("global/five"));
        assert_eq!(name("other", 5), Some("global/five"));
        assert_eq!(name("other", 9), None);
        assert_eq!(name("other", 2), None);

        assert_eq!(p.id_for("c1", "c1/five"), Some(5));
        assert_eq!(p.id_for("c1", "global/one"), Some(1));
        // id 5 means something else to c1.
        assert_eq!(p.id_for("c1", "global/five"), None);
        assert_eq!(p.id_for("c2", "global/five"), Some(5));
        assert_eq!(p.id_for("c2", "c1/five"), None);
        assert_eq!(p.id_for("other", "nope"), None);
    }

    #[test]
    fn predefined_reverse_lookup_with_duplicate_topic() {
        let p = PredefinedTopics::new(
            &[
                predef(8, "t", None),
                predef(3, "t", None),
                predef(3, "other", Some("c1")),
            ],
            HashSeed(1, 2),
        );
        assert_eq!(p.id_for("c0", "t"), Some(3));
        assert_eq!(p.id_for("c1", "t"), Some(8));
    }

    #[test]
    fn predefined_empty() {
        let p = PredefinedTopics::new(&[], HashSeed(1, 2));
        assert!(p.is_empty());
        assert_eq!(p.name("c", 1), None);
        assert_eq!(p.id_for("c", "t"), None);
    }

    #[test]
    fn interning_shares_and_purges() {
        let mut interner = TopicInterner::new(HashSeed(1, 2));
        let a = interner.intern("sensors/temp");
        let b = interner.intern("sensors/temp");
        assert!(Arc::ptr_eq(&a, &b));
        let c = interner.intern("sensors/hum");
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(interner.len(), 2);

        let mut r1 = TopicRegistry::new();
        let mut r2 = TopicRegistry::new();
        r1.register(&a).unwrap();
        r2.register(&b).unwrap();
        assert!(Arc::ptr_eq(r1.name(1).unwrap(), r2.name(1).unwrap()));

        drop((a, b, c));
        interner.purge();
        // Still held by the registries.
        assert_eq!(interner.len(), 1);
        let again = interner.intern("sensors/temp");
        assert!(Arc::ptr_eq(&again, r1.name(1).unwrap()));
        drop(again);
        r1.clear();
        r2.clear();
        interner.purge();
        assert!(interner.is_empty());
    }

    #[test]
    fn the_interner_forgets_names_nobody_holds() {
        let mut interner = TopicInterner::new(HashSeed(3, 4));
        let kept = interner.intern("kept/topic");
        // A flood of names that nobody keeps (an UNSUBSCRIBE of unknown filters, say).
        for i in 0..20 * PURGE_FLOOR {
            let _ = interner.intern(&format!("gone/{i}"));
            assert!(
                interner.len() <= 2 * PURGE_FLOOR + 1,
                "{} names held",
                interner.len()
            );
        }
        // What is still held survives every purge, and is still shared.
        assert!(Arc::ptr_eq(&kept, &interner.intern("kept/topic")));
        interner.purge();
        assert_eq!(interner.len(), 1);
    }

    #[test]
    fn a_proposed_id_is_given_out_only_once_accepted() {
        let mut reg = TopicRegistry::new();
        assert_eq!(reg.propose(&arc("down/x")), Ok(1));
        // Held for its topic, but not yet usable towards the device.
        assert_eq!(reg.id("down/x"), None);
        assert!(reg.contains("down/x") && reg.is_pending(1));
        assert_eq!(reg.propose(&arc("down/x")), Ok(1));
        assert_eq!(reg.register(&arc("up/y")), Ok(2));
        reg.confirm(1);
        assert_eq!(reg.id("down/x"), Some(1));
        // A device REGISTER of a pending name accepts it.
        assert_eq!(reg.propose(&arc("down/z")), Ok(3));
        assert_eq!(reg.register(&arc("down/z")), Ok(3));
        assert_eq!(reg.id("down/z"), Some(3));
        assert!(!reg.is_pending(3));
    }

    #[test]
    fn check_room_says_what_register_would() {
        let mut r = TopicRegistry::with_max_topics(1);
        assert_eq!(r.check_room("a"), Ok(()));
        r.register(&Arc::from("a")).unwrap();
        assert_eq!(r.check_room("a"), Ok(()));
        assert_eq!(
            r.check_room("b"),
            Err(RegistryError::TooManyTopics { max: 1 })
        );
        assert_eq!(
            r.register(&Arc::from("b")),
            Err(RegistryError::TooManyTopics { max: 1 })
        );
    }
}
