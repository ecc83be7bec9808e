//! Seeded hash maps for keys that devices choose (ClientIds, addresses, topic names).
//!
//! std's `RandomState` reads the OS for its keys, which would make the core depend on something
//! outside its inputs; a fixed hasher would let a device that knows it fill one bucket with
//! colliding names. So the driver passes a [`HashSeed`]: random in production, a constant in tests.
//! No output of the engine depends on iteration order over these maps.

use siphasher::sip::SipHasher13;
use std::hash::BuildHasher;

/// The two SipHash keys for every map of one engine. No `Default`: a map must be given its keys,
/// so none falls back to a well-known key pair by accident.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashSeed(pub u64, pub u64);

impl BuildHasher for HashSeed {
    type Hasher = SipHasher13;

    fn build_hasher(&self) -> SipHasher13 {
        SipHasher13::new_with_keys(self.0, self.1)
    }
}

/// A hash map keyed with a [`HashSeed`].
pub type HashMap<K, V> = std::collections::HashMap<K, V, HashSeed>;

/// A hash set keyed with a [`HashSeed`].
pub type HashSet<K> = std::collections::HashSet<K, HashSeed>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_change_the_hash_but_not_the_contents() {
        let a = HashSeed(1, 2).hash_one("client-1");
        let b = HashSeed(3, 4).hash_one("client-1");
        assert_ne!(a, b);
        assert_eq!(a, HashSeed(1, 2).hash_one("client-1"));
        let mut map: HashMap<&str, u32> = HashMap::with_hasher(HashSeed(5, 6));
        map.insert("x", 1);
        assert_eq!(map.get("x"), Some(&1));
    }
}
