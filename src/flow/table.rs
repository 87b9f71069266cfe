//! The connection table: [`FlowKey`] → connection, built for a million
//! connections open at once.
//!
//! Contract: a map with insertion, lookup, removal and iteration (in no
//! particular order). Keys are hashed with a randomly keyed hash (ahash), so
//! no one can choose keys that pile up in one place. [`ConnTable::bytes`]
//! is what the table allocated, all of it, for the memory budget.
//!
//! Why not a `HashMap<FlowKey, Box<Connection>>`: with many connections
//! open, each packet's lookup misses the cache, and there the cost was the
//! bucket (a 40-byte key and a pointer, in a table of many MB) and then the
//! boxed connection elsewhere. Here the part a lookup walks at random is an
//! index of 8-byte slots, and the entry it leads to holds the key and the
//! connection together, so the key comparison loads the lines the packet
//! needs anyway. No connection costs an allocation of its own. Past a few
//! tens of thousands of connections the index outgrows the core's cache
//! too; a caller that knows its next keys hides both misses with
//! [`ConnTable::prefetch_slot`] and [`ConnTable::prefetch_entry`].
//!
//! Layout:
//! - the index ([`Index`]): 8-byte slots, each 32 bits of the key's hash
//!   and the number of its entry. A probe compares those bits before it
//!   reads an entry, and growing the index rehashes from them alone,
//!   without reading the entries.
//! - the entries: chunks of [`CHUNK`] that never move (so a growing table
//!   never copies connections, nor holds them twice while it grows); a
//!   removed entry's place is reused by the next insertion.
//! - the wakes: 4 bytes per entry, in chunks beside the entries', each a
//!   time by which the entry's owner wants it visited
//!   ([`ConnTable::for_each_due`]), so that a periodic sweep reads the
//!   entries that are due, not all of them.

use super::index::Index;
use super::FlowKey;

/// Entries per chunk of the entry store.
const CHUNK: usize = 256;

/// The wake of a vacant entry: no sweep visits it.
pub const ASLEEP: u32 = u32::MAX;

/// Cache lines of an entry [`ConnTable::prefetch_entry`] loads.
const PREFETCH_LINES: usize = 4;

pub(super) struct ConnTable<V> {
    hasher: ahash::RandomState,
    /// INVARIANT: every slot names a live entry, which no other slot names,
    /// and keeps 32 bits of its key's hash.
    slots: Index,
    /// INVARIANT: every chunk but the last is full (`CHUNK` long); each
    /// was allocated with room for exactly `CHUNK`.
    chunks: Vec<Vec<Option<(FlowKey, V)>>>,
    /// Each entry's wake ([`ConnTable::for_each_due`]), a chunk of them per
    /// chunk of entries: [`ASLEEP`] for a vacant entry, 0 for a new one.
    /// Boxed like the entries' chunks, so the list grows by pointers.
    #[allow(clippy::vec_box)]
    wakes: Vec<Box<[u32; CHUNK]>>,
    /// Numbers of the vacant entries (`None`), reused last-in first-out.
    free: Vec<u32>,
    len: usize,
}

impl<V> ConnTable<V> {
    pub fn new() -> Self {
        ConnTable {
            hasher: ahash::RandomState::new(),
            slots: Index::new(),
            chunks: Vec::new(),
            wakes: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Bytes the table holds: index, entries (whole chunks, vacant places
    /// included), the vacancy list, each allocation's overhead.
    pub fn bytes(&self) -> usize {
        if self.slots.bytes() == 0 && self.chunks.capacity() == 0 {
            return 0;
        }
        let vecs = 4 + 2 * self.chunks.len();
        self.slots.bytes()
            + self.chunks.len() * CHUNK * std::mem::size_of::<Option<(FlowKey, V)>>()
            + self.chunks.capacity() * std::mem::size_of::<Vec<Option<(FlowKey, V)>>>()
            + self.wakes.len() * std::mem::size_of::<[u32; CHUNK]>()
            + self.wakes.capacity() * std::mem::size_of::<Box<[u32; CHUNK]>>()
            + self.free.capacity() * std::mem::size_of::<u32>()
            + vecs * super::ALLOC_OVERHEAD
    }

    /// Connections the index holds without growing.
    pub fn capacity(&self) -> usize {
        self.slots.capacity()
    }

    /// Whether one more connection makes the index grow.
    pub fn full(&self) -> bool {
        self.len + 1 > self.capacity()
    }

    /// The most bytes the table holds while growing its index for one more
    /// connection: the new index is filled while the old one is still held.
    pub fn bytes_while_growing(&self) -> usize {
        let chunk =
            CHUNK * (std::mem::size_of::<Option<(FlowKey, V)>>() + std::mem::size_of::<u32>());
        // The lists of chunks may double too.
        let chunk_list = self.chunks.capacity().max(4)
            * (std::mem::size_of::<Vec<Option<(FlowKey, V)>>>()
                + std::mem::size_of::<Box<[u32; CHUNK]>>());
        self.bytes()
            + Index::bytes_for(self.capacity() + 1)
            + chunk
            + chunk_list
            + 7 * super::ALLOC_OVERHEAD
    }

    /// The key's 32 hash bits kept in its slot.
    fn tag(&self, key: &FlowKey) -> u32 {
        (self.hasher.hash_one(key) >> 32) as u32
    }

    fn entry(&self, n: u32) -> &(FlowKey, V) {
        let n = n as usize;
        self.chunks[n / CHUNK][n % CHUNK]
            .as_ref()
            .expect("a used slot names a live entry")
    }

    fn entry_mut(&mut self, n: u32) -> &mut (FlowKey, V) {
        let n = n as usize;
        self.chunks[n / CHUNK][n % CHUNK]
            .as_mut()
            .expect("a used slot names a live entry")
    }

    fn find(&self, key: &FlowKey) -> Option<u32> {
        let tag = self.tag(key);
        self.slots.find(tag, |n| self.entry(n).0 == *key)
    }

    /// Start loading the index slot a lookup of `key` reads first: the
    /// first of two hints for a lookup to come (see the module doc).
    pub fn prefetch_slot(&self, key: &FlowKey) {
        self.slots.prefetch(self.tag(key));
    }

    /// Start loading the first [`PREFETCH_LINES`] cache lines of `key`'s
    /// entry, if it has one: the second hint, once its slot had time to
    /// arrive. The probe compares hash bits only (it reads no entry); on
    /// the rare collision it loads the wrong one, which costs nothing but
    /// the hint.
    pub fn prefetch_entry(&self, key: &FlowKey) {
        let Some(n) = self.slots.find(self.tag(key), |_| true) else {
            return;
        };
        let n = n as usize;
        if let Some(entry) = self.chunks.get(n / CHUNK).and_then(|c| c.get(n % CHUNK)) {
            let p = std::ptr::from_ref(entry).cast::<u8>();
            let size = std::mem::size_of_val(entry);
            for line in (0..size.min(PREFETCH_LINES * 64)).step_by(64) {
                crate::hint::prefetch(p.wrapping_add(line));
            }
        }
    }

    pub fn contains_key(&self, key: &FlowKey) -> bool {
        self.find(key).is_some()
    }

    pub fn get(&self, key: &FlowKey) -> Option<&V> {
        let n = self.find(key)?;
        Some(&self.entry(n).1)
    }

    pub fn get_mut(&mut self, key: &FlowKey) -> Option<&mut V> {
        let n = self.find(key)?;
        Some(&mut self.entry_mut(n).1)
    }

    /// The value of `key`; if absent, `make(len)` may give one to insert
    /// (`len`: connections held before it).
    #[cfg(test)]
    pub fn get_or_insert_with(
        &mut self,
        key: FlowKey,
        make: impl FnOnce(usize) -> Option<V>,
    ) -> Option<&mut V> {
        self.entry_or_insert_with(key, make).map(|(_, v)| v)
    }

    /// [`ConnTable::get_or_insert_with`], with the entry's number (for
    /// [`ConnTable::wake_by`]).
    pub fn entry_or_insert_with(
        &mut self,
        key: FlowKey,
        make: impl FnOnce(usize) -> Option<V>,
    ) -> Option<(u32, &mut V)> {
        if let Some(n) = self.find(&key) {
            return Some((n, &mut self.entry_mut(n).1));
        }
        let value = make(self.len)?;
        let tag = self.tag(&key);
        let n = self.store(key, value);
        self.slots.insert(tag, n);
        self.len += 1;
        Some((n, &mut self.entry_mut(n).1))
    }

    /// Entry `n` is to be visited by the sweep of time `wake` or an earlier
    /// one (see [`ConnTable::for_each_due`]).
    pub fn wake_by(&mut self, n: u32, wake: u32) {
        let n = n as usize;
        let w = &mut self.wakes[n / CHUNK][n % CHUNK];
        *w = (*w).min(wake);
    }

    /// Put an entry in a vacant place; its number.
    fn store(&mut self, key: FlowKey, value: V) -> u32 {
        if let Some(n) = self.free.pop() {
            let i = n as usize;
            self.chunks[i / CHUNK][i % CHUNK] = Some((key, value));
            self.wakes[i / CHUNK][i % CHUNK] = 0;
            return n;
        }
        if self.chunks.last().is_none_or(|c| c.len() == CHUNK) {
            self.chunks.push(Vec::with_capacity(CHUNK));
            self.wakes.push(Box::new([ASLEEP; CHUNK]));
        }
        let n = (self.chunks.len() - 1) * CHUNK + self.chunks.last().map_or(0, Vec::len);
        assert!(n < u32::MAX as usize, "more than 2^32 - 1 connections");
        self.wakes[n / CHUNK][n % CHUNK] = 0;
        self.chunks
            .last_mut()
            .expect("pushed")
            .push(Some((key, value)));
        n as u32
    }

    pub fn remove(&mut self, key: &FlowKey) -> Option<V> {
        let tag = self.tag(key);
        let chunks = &self.chunks;
        let n = self.slots.remove(tag, |n| {
            chunks[n as usize / CHUNK][n as usize % CHUNK]
                .as_ref()
                .is_some_and(|(k, _)| k == key)
        })?;
        let i = n as usize;
        let (_, value) = self.chunks[i / CHUNK][i % CHUNK]
            .take()
            .expect("a slot names a live entry");
        self.wakes[i / CHUNK][i % CHUNK] = ASLEEP;
        self.free.push(i as u32);
        self.len -= 1;
        Some(value)
    }

    /// Give all memory back if no connection is held (not done on each
    /// removal: a table that keeps emptying would allocate again and again).
    pub fn release_if_empty(&mut self) {
        if self.len == 0 {
            *self = ConnTable {
                hasher: self.hasher.clone(),
                ..ConnTable::new()
            };
        }
    }

    /// The most a connection costs in the table: its entry, its share of
    /// an index just doubled (at 3/8 of its 8-byte slots), its vacancy-list
    /// place.
    #[cfg(test)]
    pub fn worst_bytes_per_entry() -> usize {
        std::mem::size_of::<Option<(FlowKey, V)>>()
            + std::mem::size_of::<u64>() * 8 / 3
            + 1
            + 2 * std::mem::size_of::<u32>()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&FlowKey, &V)> {
        self.chunks
            .iter()
            .flatten()
            .filter_map(|e| e.as_ref().map(|(k, v)| (k, v)))
    }

    /// Every connection whose wake is `now` or earlier, in no particular
    /// order; its wake becomes what `f` returns. The wakes lie apart from
    /// the entries, four bytes each, so a sweep over a million connections
    /// reads 4 MB in order and only the entries that are due, not every
    /// entry's lines.
    pub fn for_each_due(&mut self, now: u32, mut f: impl FnMut(&FlowKey, &mut V) -> u32) {
        for (chunk, wakes) in self.chunks.iter_mut().zip(self.wakes.iter_mut()) {
            for (entry, wake) in chunk.iter_mut().zip(wakes.iter_mut()) {
                if *wake <= now {
                    if let Some((k, v)) = entry {
                        *wake = f(k, v);
                    }
                }
            }
        }
    }

    /// Entry wakes, with their entries (for checks).
    #[cfg(debug_assertions)]
    pub fn wakes(&self) -> impl Iterator<Item = (u32, &FlowKey, &V)> {
        self.chunks
            .iter()
            .zip(&self.wakes)
            .flat_map(|(c, w)| c.iter().zip(w.iter()))
            .filter_map(|(e, w)| e.as_ref().map(|(k, v)| (*w, k, v)))
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::net::SocketAddr;

    fn key(i: u32) -> FlowKey {
        let a = SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 40000));
        let b = SocketAddr::from(([10, 0, 0, 1], 80));
        FlowKey::new(a, b).0
    }

    #[test]
    fn table_agrees_with_a_hash_map_through_inserts_and_removals() {
        let mut t = ConnTable::new();
        let mut m = HashMap::new();
        // A fixed pseudo-random walk over 5,000 keys: insert, look up,
        // remove, so probe runs grow, wrap and get shifted back.
        let mut x = 12345u64;
        for step in 0..200_000u32 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let k = key((x >> 33) as u32 % 5000);
            match (x >> 20) % 3 {
                0 => {
                    let v = t.get_or_insert_with(k, |_| Some(step)).copied();
                    assert_eq!(v, Some(*m.entry(k).or_insert(step)));
                }
                1 => assert_eq!(t.remove(&k), m.remove(&k)),
                _ => assert_eq!(t.get(&k), m.get(&k)),
            }
            assert_eq!(t.len(), m.len());
            assert!(t.len() <= t.capacity() || t.len() == 0);
        }
        let mut seen: Vec<(FlowKey, u32)> = t.iter().map(|(k, v)| (*k, *v)).collect();
        let mut want: Vec<(FlowKey, u32)> = m.into_iter().collect();
        seen.sort();
        want.sort();
        assert_eq!(seen, want);
        for (k, _) in want {
            assert!(t.remove(&k).is_some());
        }
        assert!(t.bytes() > 0);
        t.release_if_empty();
        assert_eq!(t.bytes(), 0, "an empty table holds nothing");
    }

    #[test]
    fn refused_insert_leaves_the_table_as_it_was() {
        let mut t: ConnTable<u8> = ConnTable::new();
        assert!(t.get_or_insert_with(key(1), |_| None).is_none());
        assert_eq!((t.len(), t.bytes()), (0, 0));
        assert_eq!(
            t.get_or_insert_with(key(1), |n| Some(n as u8)),
            Some(&mut 0)
        );
        assert_eq!(
            t.get_or_insert_with(key(2), |n| Some(n as u8)),
            Some(&mut 1)
        );
        assert_eq!(t.get_or_insert_with(key(1), |_| None), Some(&mut 0));
    }

    #[test]
    fn growing_the_index_keeps_every_entry_and_the_bytes_say_so() {
        let mut t = ConnTable::new();
        for i in 0..100_000u32 {
            if t.full() {
                let peak = t.bytes_while_growing();
                t.get_or_insert_with(key(i), |_| Some(i));
                assert!(t.bytes() <= peak);
            } else {
                t.get_or_insert_with(key(i), |_| Some(i));
            }
        }
        assert!((0..100_000).all(|i| t.get(&key(i)) == Some(&i)));
        let per_entry = std::mem::size_of::<Option<(FlowKey, u32)>>();
        assert!(t.bytes() >= 100_000 * per_entry + t.capacity() * 8);
        // Beyond entries and index: the list of chunks, allocation overhead.
        let extra = 64 * 1024;
        assert!(
            t.bytes()
                <= (100_000 + CHUNK) * (per_entry + 4) + Index::bytes_for(t.capacity()) + extra
        );
    }
}
