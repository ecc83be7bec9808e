//! The sleeping-client buffer (MQTT-SN §6.14): a bounded FIFO of messages held for a client while
//! it sleeps, delivered when it wakes. Bounded in messages and bytes; what gives way on overflow
//! is handed back to the engine, which counts it and settles any QoS 1/2 obligations.

use std::collections::VecDeque;

/// What a full buffer does with one more message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Drop the oldest messages until the new one fits: a sleeper wakes to the latest data.
    DropOldest,
    /// Refuse the new message: a sleeper wakes to what was held first.
    DropNewest,
}

/// The bounds of one client's buffer (the same for all clients; kept out of the buffer so that
/// each client does not store a copy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SleepLimits {
    /// Most messages held.
    pub max_messages: usize,
    /// Most bytes held (the sum of the sizes given to [`SleepBuffer::push`]).
    pub max_bytes: usize,
    /// What gives way when full.
    pub overflow: Overflow,
}

/// What became of a pushed message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum PushOutcome<T> {
    /// Held, nothing dropped.
    Stored,
    /// Held after dropping these older messages (oldest first) to make room.
    StoredAfterDropping(Vec<T>),
    /// Not held and given back: the buffer is full under [`Overflow::DropNewest`], or the
    /// message alone is larger than `max_bytes` (or `max_messages` is 0) under either policy.
    Refused(T),
}

/// A FIFO of messages for one sleeping client. Empty, it owns no heap memory (and it gives its
/// memory back whenever it becomes empty, since most clients are awake most of the time).
#[derive(Debug, Clone)]
pub struct SleepBuffer<T> {
    items: VecDeque<(T, usize)>,
    bytes: usize,
    dropped: u64,
}

impl<T> Default for SleepBuffer<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> SleepBuffer<T> {
    /// An empty buffer; does not allocate.
    pub fn new() -> Self {
        SleepBuffer {
            items: VecDeque::new(),
            bytes: 0,
            dropped: 0,
        }
    }

    /// Appends `item`, which counts as `size` bytes, within `limits`.
    pub fn push(&mut self, item: T, size: usize, limits: &SleepLimits) -> PushOutcome<T> {
        if size > limits.max_bytes || limits.max_messages == 0 {
            // Cannot fit even in an empty buffer: emptying it would lose data for nothing.
            self.dropped += 1;
            return PushOutcome::Refused(item);
        }
        let fits = |this: &Self| {
            this.items.len() < limits.max_messages && this.bytes + size <= limits.max_bytes
        };
        let mut evicted = Vec::new();
        if !fits(self) {
            match limits.overflow {
                Overflow::DropNewest => {
                    self.dropped += 1;
                    return PushOutcome::Refused(item);
                }
                Overflow::DropOldest => {
                    // Terminates: an empty buffer fits (checked above).
                    while !fits(self) {
                        let Some((old, old_size)) = self.items.pop_front() else {
                            break;
                        };
                        self.bytes -= old_size;
                        evicted.push(old);
                    }
                    self.dropped += evicted.len() as u64;
                }
            }
        }
        self.items.push_back((item, size));
        self.bytes += size;
        if evicted.is_empty() {
            PushOutcome::Stored
        } else {
            PushOutcome::StoredAfterDropping(evicted)
        }
    }

    /// Removes and returns the oldest message.
    pub fn pop_front(&mut self) -> Option<T> {
        let (item, size) = self.items.pop_front()?;
        self.bytes -= size;
        if self.items.is_empty() {
            self.items = VecDeque::new();
        }
        Some(item)
    }

    /// The oldest message, left in place (delivered but not yet acknowledged).
    pub fn front(&self) -> Option<&T> {
        self.items.front().map(|(item, _)| item)
    }

    /// The held messages, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.items.iter().map(|(item, _)| item)
    }

    /// Removes all messages, oldest first, and frees the buffer's memory.
    pub fn drain(&mut self) -> impl Iterator<Item = T> {
        self.bytes = 0;
        std::mem::take(&mut self.items)
            .into_iter()
            .map(|(item, _)| item)
    }

    /// How many messages are held.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether no message is held.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The total size of the held messages.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// How many messages this buffer has dropped or refused over its lifetime.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits(max_messages: usize, max_bytes: usize, overflow: Overflow) -> SleepLimits {
        SleepLimits {
            max_messages,
            max_bytes,
            overflow,
        }
    }

    #[test]
    fn empty_buffer_is_small_and_unallocated() {
        let b: SleepBuffer<u32> = SleepBuffer::new();
        assert_eq!(b.items.capacity(), 0);
        println!(
            "size_of::<SleepBuffer<_>>() = {}",
            std::mem::size_of::<SleepBuffer<u32>>()
        );
        assert!(std::mem::size_of::<SleepBuffer<u32>>() <= 48);
    }

    #[test]
    fn fifo_and_byte_accounting() {
        let l = limits(10, 100, Overflow::DropOldest);
        let mut b = SleepBuffer::new();
        for i in 1..=3u32 {
            assert_eq!(b.push(i, i as usize * 10, &l), PushOutcome::Stored);
        }
        assert_eq!((b.len(), b.bytes()), (3, 60));
        assert_eq!(b.front(), Some(&1));
        assert_eq!(b.pop_front(), Some(1));
        assert_eq!((b.len(), b.bytes()), (2, 50));
        assert_eq!(b.pop_front(), Some(2));
        assert_eq!(b.pop_front(), Some(3));
        assert_eq!(b.pop_front(), None);
        assert_eq!(b.bytes(), 0);
        assert!(b.is_empty());
        assert_eq!(b.items.capacity(), 0);
        assert_eq!(b.dropped(), 0);
    }

    #[test]
    fn drain_empties_in_order() {
        let l = limits(10, 100, Overflow::DropOldest);
        let mut b = SleepBuffer::new();
        for i in 0..4u32 {
            assert_eq!(b.push(i, 1, &l), PushOutcome::Stored);
        }
        assert_eq!(b.drain().collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert!(b.is_empty());
        assert_eq!(b.bytes(), 0);
        assert_eq!(b.items.capacity(), 0);
    }

    #[test]
    fn message_limit_drop_oldest() {
        let l = limits(2, 1000, Overflow::DropOldest);
        let mut b = SleepBuffer::new();
        assert_eq!(b.push('a', 1, &l), PushOutcome::Stored);
        assert_eq!(b.push('b', 1, &l), PushOutcome::Stored);
        assert_eq!(
            b.push('c', 1, &l),
            PushOutcome::StoredAfterDropping(vec!['a'])
        );
        assert_eq!(b.drain().collect::<String>(), "bc");
        assert_eq!(b.dropped(), 1);
    }

    #[test]
    fn message_limit_drop_newest() {
        let l = limits(2, 1000, Overflow::DropNewest);
        let mut b = SleepBuffer::new();
        assert_eq!(b.push('a', 1, &l), PushOutcome::Stored);
        assert_eq!(b.push('b', 1, &l), PushOutcome::Stored);
        assert_eq!(b.push('c', 1, &l), PushOutcome::Refused('c'));
        assert_eq!(b.drain().collect::<String>(), "ab");
        assert_eq!(b.dropped(), 1);
    }

    #[test]
    fn byte_limit_drop_oldest_drops_several() {
        let l = limits(10, 10, Overflow::DropOldest);
        let mut b = SleepBuffer::new();
        assert_eq!(b.push('a', 3, &l), PushOutcome::Stored);
        assert_eq!(b.push('b', 3, &l), PushOutcome::Stored);
        assert_eq!(b.push('c', 3, &l), PushOutcome::Stored);
        assert_eq!(
            b.push('d', 6, &l),
            PushOutcome::StoredAfterDropping(vec!['a', 'b'])
        );
        assert_eq!(b.bytes(), 9);
        assert_eq!(b.push('e', 1, &l), PushOutcome::Stored);
        assert_eq!(b.bytes(), 10);
        assert_eq!(b.dropped(), 2);
        assert_eq!(b.drain().collect::<String>(), "cde");
    }

    #[test]
    fn byte_limit_drop_newest() {
        let l = limits(10, 10, Overflow::DropNewest);
        let mut b = SleepBuffer::new();
        assert_eq!(b.push('a', 6, &l), PushOutcome::Stored);
        assert_eq!(b.push('b', 5, &l), PushOutcome::Refused('b'));
        assert_eq!(b.push('c', 4, &l), PushOutcome::Stored);
        assert_eq!(b.bytes(), 10);
        assert_eq!(b.drain().collect::<String>(), "ac");
    }

    #[test]
    fn oversize_item_refused_under_both_policies() {
        for overflow in [Overflow::DropOldest, Overflow::DropNewest] {
            let l = limits(10, 10, overflow);
            let mut b = SleepBuffer::new();
            assert_eq!(b.push('a', 5, &l), PushOutcome::Stored);
            assert_eq!(b.push('x', 11, &l), PushOutcome::Refused('x'));
            assert_eq!((b.len(), b.bytes(), b.dropped()), (1, 5, 1));
        }
        let mut b = SleepBuffer::new();
        let none = limits(0, 10, Overflow::DropOldest);
        assert_eq!(b.push('a', 1, &none), PushOutcome::Refused('a'));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push(usize),
        Pop,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0usize..40).prop_map(Op::Push),
            1 => Just(Op::Pop),
        ]
    }

    proptest! {
        #[test]
        fn invariants_hold(
            ops in proptest::collection::vec(op(), 0..60),
            max_messages in 0usize..6,
            max_bytes in 0usize..100,
            oldest in any::<bool>(),
        ) {
            let overflow = if oldest { Overflow::DropOldest } else { Overflow::DropNewest };
            let l = limits(max_messages, max_bytes, overflow);
            let mut b = SleepBuffer::new();
            // A model: the items are their own sizes, tagged with a sequence number.
            let mut model: VecDeque<(u32, usize)> = VecDeque::new();
            let mut seq = 0u32;
            let mut dropped = 0u64;
            for op in ops {
                match op {
                    Op::Push(size) => {
                        seq += 1;
                        match b.push((seq, size), size, &l) {
                            PushOutcome::Stored => model.push_back((seq, size)),
                            PushOutcome::StoredAfterDropping(gone) => {
                                prop_assert!(oldest);
                                for g in &gone {
                                    prop_assert_eq!(model.pop_front(), Some(*g));
                                }
                                dropped += gone.len() as u64;
                                model.push_back((seq, size));
                            }
                            PushOutcome::Refused(back) => {
                                prop_assert_eq!(back, (seq, size));
                                prop_assert!(!oldest || size > max_bytes || max_messages == 0);
                                dropped += 1;
                            }
                        }
                    }
                    Op::Pop => prop_assert_eq!(b.pop_front(), model.pop_front()),
                }
                let sum: usize = model.iter().map(|m| m.1).sum();
                prop_assert_eq!(b.bytes(), sum);
                prop_assert!(b.bytes() <= max_bytes);
                prop_assert!(b.len() <= max_messages);
                prop_assert_eq!(b.len(), model.len());
                prop_assert_eq!(b.dropped(), dropped);
            }
            prop_assert!(b.drain().eq(model.into_iter()));
        }
    }
}
