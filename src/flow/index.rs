//! The connection table's index: 32 bits of a key's hash (its tag) → the
//! number of its entry, with a prefetch for a lookup to come.
//!
//! Contract: [`Index::find`] visits the entries inserted with a tag until
//! its `eq` accepts one; [`Index::insert`] adds one (never already there:
//! the caller looked first); [`Index::remove`] takes out the one `eq`
//! accepts. [`Index::prefetch`] starts loading the cache line a lookup of
//! a tag begins with, so a caller that knows its next keys can have the
//! line arrive while it works on something else.
//!
//! Layout: open addressing with linear probing over a power of two of
//! 8-byte slots, at most 3/4 of them used. A slot is 0 (vacant) or the tag
//! in its high half and the entry number + 1 in its low half. A tag's home
//! slot is taken from the top bits of the tag times a 64-bit odd constant
//! (Fibonacci hashing), so the position is known without reading anything
//! (which hashbrown's table does not expose: why this is not one). Removal
//! shifts the rest of the run back instead of leaving a tombstone, so
//! lookups do not slow down as connections come and go.

/// Slots in the smallest index.
const MIN_SLOTS: usize = 8;

pub(super) struct Index {
    /// INVARIANT: empty, or a power of two long with at least a quarter
    /// vacant; every used slot lies in the run that starts at its tag's
    /// home (no vacant slot between the two).
    slots: Box<[u64]>,
    /// 64 - log2(slots.len()).
    shift: u32,
    len: usize,
}

/// The tag spread over 64 bits; the index takes a position from the top.
fn spread(tag: u32) -> u64 {
    u64::from(tag).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn slot(tag: u32, n: u32) -> u64 {
    u64::from(tag) << 32 | (u64::from(n) + 1)
}

fn slot_tag(s: u64) -> u32 {
    (s >> 32) as u32
}

fn slot_entry(s: u64) -> u32 {
    (s as u32).wrapping_sub(1)
}

impl Index {
    pub fn new() -> Index {
        Index {
            slots: Box::new([]),
            shift: 64,
            len: 0,
        }
    }

    /// Entries held without growing.
    pub fn capacity(&self) -> usize {
        self.slots.len() / 4 * 3
    }

    /// Bytes of its slots.
    pub fn bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<u64>()
    }

    /// Bytes of an index with room for `n` entries.
    pub fn bytes_for(n: usize) -> usize {
        slots_for(n) * std::mem::size_of::<u64>()
    }

    /// `tag`'s home slot (the slots must not be empty).
    fn home(&self, tag: u32) -> usize {
        (spread(tag) >> self.shift) as usize
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// Start loading the slot a lookup of `tag` reads first.
    pub fn prefetch(&self, tag: u32) {
        if !self.slots.is_empty() {
            crate::hint::prefetch(&self.slots[self.home(tag)]);
        }
    }

    /// The first entry inserted with `tag` that `eq` accepts.
    pub fn find(&self, tag: u32, mut eq: impl FnMut(u32) -> bool) -> Option<u32> {
        self.position(tag, &mut eq)
            .map(|i| slot_entry(self.slots[i]))
    }

    fn position(&self, tag: u32, eq: &mut impl FnMut(u32) -> bool) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.mask();
        let mut i = self.home(tag);
        // Ends: at least a quarter of the slots are vacant.
        loop {
            let s = self.slots[i];
            if s == 0 {
                return None;
            }
            if slot_tag(s) == tag && eq(slot_entry(s)) {
                return Some(i);
            }
            i = (i + 1) & mask;
        }
    }

    /// Add entry `n` (< u32::MAX) under `tag`; grows the slots if full.
    pub fn insert(&mut self, tag: u32, n: u32) {
        if self.len + 1 > self.capacity() {
            self.grow();
        }
        self.place(slot(tag, n));
        self.len += 1;
    }

    fn place(&mut self, s: u64) {
        let mask = self.mask();
        let mut i = self.home(slot_tag(s));
        while self.slots[i] != 0 {
            i = (i + 1) & mask;
        }
        self.slots[i] = s;
    }

    /// Take out the entry under `tag` that `eq` accepts; its number.
    pub fn remove(&mut self, tag: u32, mut eq: impl FnMut(u32) -> bool) -> Option<u32> {
        let at = self.position(tag, &mut eq)?;
        let n = slot_entry(self.slots[at]);
        // Shift back every slot of the run after the hole that may move
        // into it: one whose home is not between the hole and itself.
        let mask = self.mask();
        let mut hole = at;
        let mut j = (at + 1) & mask;
        loop {
            let s = self.slots[j];
            if s == 0 {
                break;
            }
            let home = self.home(slot_tag(s));
            if j.wrapping_sub(home) & mask >= j.wrapping_sub(hole) & mask {
                self.slots[hole] = s;
                hole = j;
            }
            j = (j + 1) & mask;
        }
        self.slots[hole] = 0;
        self.len -= 1;
        Some(n)
    }

    fn grow(&mut self) {
        let slots = (self.slots.len() * 2).max(MIN_SLOTS);
        let old = std::mem::replace(&mut self.slots, vec![0; slots].into_boxed_slice());
        self.shift = 64 - slots.trailing_zeros();
        for s in old.iter().copied().filter(|&s| s != 0) {
            self.place(s);
        }
    }
}

/// Slots for room for `n` entries.
fn slots_for(n: usize) -> usize {
    (n * 4).div_ceil(3).next_power_of_two().max(MIN_SLOTS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn agrees_with_a_hash_map_through_collisions_wraps_and_removals() {
        // Few distinct tags, so runs are long, collide and wrap around the
        // end; entries under one tag are told apart by `eq`.
        let mut index = Index::new();
        let mut model: HashMap<u32, u32> = HashMap::new();
        let tag_of = |n: u32| n % 37;
        let mut x = 7u64;
        for _ in 0..100_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let n = (x >> 33) as u32 % 3000;
            let tag = tag_of(n);
            let found = index.find(tag, |e| e == n);
            assert_eq!(found, model.get(&n).copied());
            if (x >> 20).is_multiple_of(2) {
                if found.is_none() {
                    index.insert(tag, n);
                    model.insert(n, n);
                }
            } else {
                assert_eq!(index.remove(tag, |e| e == n), model.remove(&n));
            }
            assert_eq!(index.len, model.len());
            assert!(index.len <= index.capacity());
        }
        for n in 0..3000 {
            assert_eq!(index.find(tag_of(n), |e| e == n), model.get(&n).copied());
        }
    }

    #[test]
    fn grows_to_a_power_of_two_a_quarter_vacant() {
        let mut index = Index::new();
        assert_eq!((index.capacity(), index.bytes()), (0, 0));
        for n in 0..10_000u32 {
            index.insert(n.wrapping_mul(2_654_435_761), n);
            assert!(index.slots.len().is_power_of_two());
            assert!(index.len * 4 <= index.slots.len() * 3);
        }
        assert_eq!(index.bytes(), Index::bytes_for(index.len));
        assert!((0..10_000u32)
            .all(|n| index.find(n.wrapping_mul(2_654_435_761), |e| e == n) == Some(n)));
    }
}
