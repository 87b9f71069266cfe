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
//! index of 8-byte slots (a quarter of a MB per 20,000 connections, so it
//! mostly stays in the core's cache), and the entry it leads to holds the
//! key and the connection together, so the key comparison loads the lines
//! the packet needs anyway. No connection costs an allocation of its own.
//!
//! Layout:
//! - the index: a power of two of slots, at most 3/4 used, linear probing,
//!   removal by shifting the following slots back (no tombstones, so probes
//!   stay short however many connections come and go). A used slot holds
//!   32 bits of the key's hash (the probe starts at those bits masked to the
//!   index size, and they are compared before the key) and the number of
//!   the entry. Growing the index re-places slots from those bits alone,
//!   without reading the entries.
//!   An index of 2 MiB or more is aligned to 2 MiB and asks for transparent
//!   huge pages: read at random, it would otherwise cost a page-table walk
//!   on nearly every lookup (dearer still in a virtual machine).
//! - the entries: chunks of [`CHUNK`] that never move (so a growing table
//!   never copies connections, and a connection's address is stable); a
//!   removed entry's place is reused by the next insertion.

use super::FlowKey;

/// Entries per chunk of the entry store.
const CHUNK: usize = 256;

/// An unused index slot (entry number `u32::MAX` is never given out).
const EMPTY: u64 = u64::MAX;

/// Index size from which it gets huge pages (their size on x86_64).
const HUGE_PAGE: usize = 2 << 20;

/// The index's slots: `buf[off..off + len]`, `off` placing a large index
/// on a huge-page boundary.
struct Index {
    buf: Vec<u64>,
    off: usize,
    len: usize,
}

impl Index {
    fn empty() -> Self {
        Index {
            buf: Vec::new(),
            off: 0,
            len: 0,
        }
    }

    /// `len` empty slots.
    fn new(len: usize) -> Self {
        let bytes = len * std::mem::size_of::<u64>();
        if bytes < HUGE_PAGE {
            return Index {
                buf: vec![EMPTY; len],
                off: 0,
                len,
            };
        }
        let mut buf: Vec<u64> = Vec::with_capacity(len + HUGE_PAGE / 8);
        let addr = buf.as_ptr() as usize;
        let aligned = addr.next_multiple_of(HUGE_PAGE);
        advise_huge_pages(aligned, bytes);
        let off = (aligned - addr) / 8;
        // Filled after the advice, so that the first touch faults huge pages in.
        buf.resize(off + len, EMPTY);
        Index { buf, off, len }
    }

    /// What [`Index::new`] allocates for `len` slots.
    fn bytes_for(len: usize) -> usize {
        let bytes = len * std::mem::size_of::<u64>();
        if bytes < HUGE_PAGE {
            bytes
        } else {
            bytes + HUGE_PAGE
        }
    }

    #[inline]
    fn get(&self, pos: usize) -> u64 {
        self.buf[self.off + pos]
    }

    #[inline]
    fn set(&mut self, pos: usize, slot: u64) {
        self.buf[self.off + pos] = slot;
    }

    fn used(&self) -> impl Iterator<Item = u64> + '_ {
        self.buf[self.off..].iter().copied().filter(|&s| s != EMPTY)
    }
}

/// Ask for transparent huge pages for `[addr, addr + len)`.
fn advise_huge_pages(addr: usize, len: usize) {
    #[cfg(target_os = "linux")]
    // SAFETY: the range lies inside an allocation of ours that holds nothing
    // yet; MADV_HUGEPAGE changes how the kernel backs it, never what it
    // holds. If the kernel refuses (no transparent huge pages), small pages
    // serve as before, so the result is not checked.
    unsafe {
        libc::madvise(addr as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (addr, len);
}

pub(super) struct ConnTable<V> {
    hasher: ahash::RandomState,
    /// INVARIANT: empty, or a power of two long with fewer than 3/4 used;
    /// every used slot names a live entry, which no other slot names, and
    /// lies between its home (its hash bits masked) and the first empty
    /// slot after that, cyclically.
    slots: Index,
    /// INVARIANT: every chunk but the last is full (`CHUNK` long); each
    /// was allocated with room for exactly `CHUNK`.
    chunks: Vec<Vec<Option<(FlowKey, V)>>>,
    /// Numbers of the vacant entries (`None`), reused last-in first-out.
    free: Vec<u32>,
    len: usize,
}

impl<V> ConnTable<V> {
    pub fn new() -> Self {
        ConnTable {
            hasher: ahash::RandomState::new(),
            slots: Index::empty(),
            chunks: Vec::new(),
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
        if self.slots.buf.capacity() == 0 && self.chunks.capacity() == 0 {
            return 0;
        }
        let vecs = 3 + self.chunks.len();
        self.slots.buf.capacity() * std::mem::size_of::<u64>()
            + self.chunks.len() * CHUNK * std::mem::size_of::<Option<(FlowKey, V)>>()
            + self.chunks.capacity() * std::mem::size_of::<Vec<Option<(FlowKey, V)>>>()
            + self.free.capacity() * std::mem::size_of::<u32>()
            + vecs * super::ALLOC_OVERHEAD
    }

    /// Connections the index holds without growing.
    pub fn capacity(&self) -> usize {
        self.slots.len / 4 * 3
    }

    /// Whether one more connection makes the index grow.
    pub fn full(&self) -> bool {
        self.len + 1 > self.capacity()
    }

    /// The most bytes the table holds while growing its index for one more
    /// connection: the new index is filled while the old one is still held.
    pub fn bytes_while_growing(&self) -> usize {
        let chunk = CHUNK * std::mem::size_of::<Option<(FlowKey, V)>>();
        // The list of chunks may double too.
        let chunk_list =
            self.chunks.capacity().max(4) * std::mem::size_of::<Vec<Option<(FlowKey, V)>>>();
        self.bytes()
            + Index::bytes_for(self.grown_len())
            + chunk
            + chunk_list
            + 5 * super::ALLOC_OVERHEAD
    }

    fn grown_len(&self) -> usize {
        (self.slots.len * 2).max(16)
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

    /// The slot holding `key`, or the empty slot where it would go.
    fn probe(&self, tag: u32, key: &FlowKey) -> Result<usize, usize> {
        let mask = self.slots.len - 1;
        let mut pos = tag as usize & mask;
        loop {
            let s = self.slots.get(pos);
            if s == EMPTY {
                return Err(pos);
            }
            if (s >> 32) as u32 == tag && self.entry(s as u32).0 == *key {
                return Ok(pos);
            }
            pos = (pos + 1) & mask;
        }
    }

    fn find(&self, key: &FlowKey) -> Option<u32> {
        if self.len == 0 {
            return None;
        }
        let pos = self.probe(self.tag(key), key).ok()?;
        Some(self.slots.get(pos) as u32)
    }

    /// Start loading the index line that a lookup of `key` reads first, so
    /// that a lookup a few packets later finds it in the cache (with many
    /// connections open, that line is the one a lookup waits for).
    pub fn prefetch(&self, key: &FlowKey) {
        if self.slots.len == 0 {
            return;
        }
        let pos = self.tag(key) as usize & (self.slots.len - 1);
        prefetch_line(&self.slots.buf[self.slots.off + pos]);
    }

    pub fn contains_key(&self, key: &FlowKey) -> bool {
        self.find(key).is_some()
    }

    pub fn get(&self, key: &FlowKey) -> Option<&V> {
        let n = self.find(key)?;
        Some(&self.entry(n).1)
    }

    /// The value of `key`; if absent, `make(len)` may give one to insert
    /// (`len`: connections held before it).
    pub fn get_or_insert_with(
        &mut self,
        key: FlowKey,
        make: impl FnOnce(usize) -> Option<V>,
    ) -> Option<&mut V> {
        let tag = self.tag(&key);
        if self.slots.len != 0 {
            if let Ok(pos) = self.probe(tag, &key) {
                let n = self.slots.get(pos) as u32;
                return Some(&mut self.entry_mut(n).1);
            }
        }
        let value = make(self.len)?;
        if self.full() {
            self.grow();
        }
        let pos = self.probe(tag, &key).expect_err("absent");
        let n = self.store(key, value);
        self.slots.set(pos, u64::from(tag) << 32 | u64::from(n));
        self.len += 1;
        Some(&mut self.entry_mut(n).1)
    }

    /// Put an entry in a vacant place; its number.
    fn store(&mut self, key: FlowKey, value: V) -> u32 {
        if let Some(n) = self.free.pop() {
            let i = n as usize;
            self.chunks[i / CHUNK][i % CHUNK] = Some((key, value));
            return n;
        }
        if self.chunks.last().is_none_or(|c| c.len() == CHUNK) {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        let n = (self.chunks.len() - 1) * CHUNK + self.chunks.last().map_or(0, Vec::len);
        assert!(n < u32::MAX as usize, "more than 2^32 - 1 connections");
        self.chunks
            .last_mut()
            .expect("pushed")
            .push(Some((key, value)));
        n as u32
    }

    /// Double the index (16 slots at first), re-placing the used slots by
    /// their hash bits.
    fn grow(&mut self) {
        let grown = Index::new(self.grown_len());
        let old = std::mem::replace(&mut self.slots, grown);
        let mask = self.slots.len - 1;
        for s in old.used() {
            let mut pos = (s >> 32) as usize & mask;
            while self.slots.get(pos) != EMPTY {
                pos = (pos + 1) & mask;
            }
            self.slots.set(pos, s);
        }
    }

    pub fn remove(&mut self, key: &FlowKey) -> Option<V> {
        if self.len == 0 {
            return None;
        }
        let mut hole = self.probe(self.tag(key), key).ok()?;
        let n = self.slots.get(hole) as u32;
        let i = n as usize;
        let (_, value) = self.chunks[i / CHUNK][i % CHUNK]
            .take()
            .expect("a used slot names a live entry");
        self.free.push(n);
        self.len -= 1;
        // Shift back every following slot (up to the next empty one) that
        // may stand in the hole: its home is not after the hole.
        let mask = self.slots.len - 1;
        let mut pos = hole;
        loop {
            pos = (pos + 1) & mask;
            let s = self.slots.get(pos);
            if s == EMPTY {
                break;
            }
            let home = (s >> 32) as usize & mask;
            if pos.wrapping_sub(home) & mask >= pos.wrapping_sub(hole) & mask {
                self.slots.set(hole, s);
                hole = pos;
            }
        }
        self.slots.set(hole, EMPTY);
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
    /// an index just doubled (at 3/8 of its slots), its vacancy-list place.
    #[cfg(test)]
    pub fn worst_bytes_per_entry() -> usize {
        std::mem::size_of::<Option<(FlowKey, V)>>()
            + std::mem::size_of::<u64>() * 8 / 3
            + std::mem::size_of::<u32>()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&FlowKey, &V)> {
        self.chunks
            .iter()
            .flatten()
            .filter_map(|e| e.as_ref().map(|(k, v)| (k, v)))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&FlowKey, &mut V)> {
        self.chunks
            .iter_mut()
            .flatten()
            .filter_map(|e| e.as_mut().map(|(k, v)| (&*k, v)))
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }
}

/// A hint to the processor to load `p`'s cache line; no effect on what
/// the program computes.
#[inline]
fn prefetch_line<T>(p: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing into the program and cannot fault;
    // `p` is a valid reference anyway. SSE is part of x86_64.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((p as *const T).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
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
        let slots = t.capacity() / 3 * 4;
        assert!(t.bytes() >= 100_000 * per_entry + slots * 8);
        // Beyond entries and index: the list of chunks, allocation overhead.
        let extra = 64 * 1024;
        assert!(t.bytes() <= (100_000 + CHUNK) * per_entry + Index::bytes_for(slots) + extra);
    }
}
