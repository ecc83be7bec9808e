//! Storage for client sessions: slots addressed by a small integer key, allocated in fixed-size
//! chunks so that growing never copies the sessions and never leaves more than one chunk unused
//! (a plain `Vec` doubling its capacity would waste up to half of it at 100,000 clients).

/// Slots per chunk.
const CHUNK: usize = 256;

/// A slab of `T` in chunks of [`CHUNK`] slots; freed keys are reused.
#[derive(Debug)]
pub struct Slab<T> {
    chunks: Vec<Box<[Option<T>]>>,
    free: Vec<u32>,
    next: u32,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            chunks: Vec::new(),
            free: Vec::new(),
            next: 0,
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    fn slot(&self, key: u32) -> Option<&Option<T>> {
        let key = key as usize;
        self.chunks.get(key / CHUNK)?.get(key % CHUNK)
    }

    fn slot_mut(&mut self, key: u32) -> Option<&mut Option<T>> {
        let key = key as usize;
        self.chunks.get_mut(key / CHUNK)?.get_mut(key % CHUNK)
    }

    /// The value at `key`, if occupied.
    pub fn get(&self, key: u32) -> Option<&T> {
        self.slot(key)?.as_ref()
    }

    /// The value at `key`, if occupied.
    pub fn get_mut(&mut self, key: u32) -> Option<&mut T> {
        self.slot_mut(key)?.as_mut()
    }

    /// Stores `value` and returns its key (a freed key first, lowest-numbered new one else).
    pub fn insert(&mut self, value: T) -> u32 {
        let key = match self.free.pop() {
            Some(key) => key,
            None => {
                let key = self.next;
                self.next += 1;
                if key as usize / CHUNK >= self.chunks.len() {
                    self.chunks.push((0..CHUNK).map(|_| None).collect());
                }
                key
            }
        };
        if let Some(slot) = self.slot_mut(key) {
            *slot = Some(value);
        }
        self.len += 1;
        key
    }

    /// Takes the value at `key` out, freeing the key.
    pub fn remove(&mut self, key: u32) -> Option<T> {
        let value = self.slot_mut(key)?.take()?;
        self.free.push(key);
        self.len -= 1;
        Some(value)
    }

    /// Occupied slots with their keys, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &T)> + '_ {
        self.chunks.iter().enumerate().flat_map(|(c, chunk)| {
            chunk
                .iter()
                .enumerate()
                .filter_map(move |(i, slot)| Some(((c * CHUNK + i) as u32, slot.as_ref()?)))
        })
    }

    /// Number of occupied slots.
    pub fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_reused_and_values_stay_put() {
        let mut slab = Slab::default();
        let keys: Vec<u32> = (0..600).map(|i| slab.insert(i)).collect();
        assert_eq!(keys, (0..600).collect::<Vec<u32>>());
        assert_eq!(slab.len(), 600);
        assert_eq!(slab.remove(300), Some(300));
        assert_eq!(slab.remove(300), None);
        assert_eq!(slab.get(300), None);
        assert_eq!(slab.insert(7), 300);
        assert_eq!(slab.get(300), Some(&7));
        assert_eq!(slab.get(599), Some(&599));
        assert_eq!(slab.get(100_000), None);
        *slab.get_mut(0).unwrap() = 42;
        assert_eq!(slab.get(0), Some(&42));
        assert_eq!(slab.len(), 600);
    }
}
