//! IP fragment reassembly in a bounded pool (IPv4 and IPv6 alike).
//!
//! Policy:
//! - A datagram is keyed by (version, source, destination, protocol or
//!   next header, identification).
//! - Overlaps: the bytes already held win ("first copy wins"), for IPv6 too
//!   (RFC 5722 tells hosts to drop such datagrams; a passive monitor prefers
//!   to see what a lenient receiver would). A fragment bringing no new byte
//!   (a duplicate) is counted as dropped. A fragment
//!   that contradicts the datagram's end (a second, different last fragment,
//!   or data beyond the end a last fragment set) drops the whole datagram.
//! - A datagram larger than 65535 bytes, or a non-last fragment whose length
//!   is not a multiple of 8, is dropped.
//! - Time is capture time: a datagram still incomplete `timeout` after its
//!   first fragment is dropped when a later fragment arrives.
//! - Bounds: at most `max_datagrams` datagrams and `max_bytes` bytes of
//!   buffers; making room evicts the oldest datagrams (by first fragment).
//! - Every fragment that never becomes part of a reassembled datagram is
//!   counted once in `fragments_dropped`.
//!
//! The completed datagram's payload stays in the pool (`done`) until the
//! next fragment arrives, which is why the decoder hands out `&'a` views.

use super::{DecodeStats, DecoderConfig};
use ahash::AHashMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct FragKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub id: u32,
    pub proto: u8,
    pub v6: bool,
}

#[derive(Debug)]
struct Datagram {
    first_ts: i64,
    /// Arrival order, to find the oldest.
    serial: u64,
    data: Vec<u8>,
    /// Received byte ranges, sorted and disjoint (merged when touching).
    have: Vec<(u32, u32)>,
    /// The end set by the last fragment (more-fragments clear).
    total: Option<u32>,
    fragments: u64,
}

const MAX_DATAGRAM: u32 = 65535;

#[derive(Debug)]
pub(super) struct FragmentPool {
    map: AHashMap<FragKey, Datagram>,
    bytes: usize,
    serial: u64,
    /// Earliest capture time at which some datagram times out.
    next_expiry: i64,
    done: Vec<u8>,
    max_bytes: usize,
    max_datagrams: usize,
    timeout: i64,
}

impl FragmentPool {
    pub fn new(cfg: &DecoderConfig) -> Self {
        FragmentPool {
            map: AHashMap::default(),
            bytes: 0,
            serial: 0,
            next_expiry: i64::MAX,
            done: Vec::new(),
            max_bytes: cfg.max_fragment_bytes,
            max_datagrams: cfg.max_fragment_datagrams.max(1),
            timeout: cfg.fragment_timeout_micros.max(0),
        }
    }

    /// (datagrams, bytes) held.
    pub fn usage(&self) -> (usize, usize) {
        (self.map.len(), self.bytes)
    }

    fn remove(&mut self, key: &FragKey) -> Option<Datagram> {
        let d = self.map.remove(key)?;
        self.bytes -= d.data.len();
        Some(d)
    }

    fn drop_datagram(&mut self, key: &FragKey, stats: &mut DecodeStats) {
        if let Some(d) = self.remove(key) {
            stats.fragments_dropped += d.fragments;
        }
    }

    fn expire(&mut self, now: i64, stats: &mut DecodeStats) {
        if now < self.next_expiry {
            return;
        }
        let timeout = self.timeout;
        let mut freed = 0usize;
        let mut next = i64::MAX;
        self.map.retain(|_, d| {
            if now.saturating_sub(d.first_ts) > timeout {
                stats.fragments_dropped += d.fragments;
                stats.fragments_timed_out += d.fragments;
                freed += d.data.len();
                false
            } else {
                next = next.min(d.first_ts.saturating_add(timeout));
                true
            }
        });
        self.bytes -= freed;
        self.next_expiry = next;
    }

    /// Evicts the oldest datagram other than `keep`; false if there is none.
    fn evict_oldest(&mut self, keep: &FragKey, stats: &mut DecodeStats) -> bool {
        let oldest = self
            .map
            .iter()
            .filter(|(k, _)| *k != keep)
            .min_by_key(|(_, d)| d.serial)
            .map(|(k, _)| *k);
        match oldest {
            Some(k) => {
                if let Some(d) = self.remove(&k) {
                    stats.fragments_dropped += d.fragments;
                    stats.fragments_evicted += d.fragments;
                }
                true
            }
            None => false,
        }
    }

    /// Adds one fragment (`data` at byte `offset`; `more` = more fragments
    /// follow). Returns the reassembled payload when this completes it.
    pub fn insert(
        &mut self,
        key: FragKey,
        offset: u32,
        more: bool,
        data: &[u8],
        now: i64,
        stats: &mut DecodeStats,
    ) -> Option<&[u8]> {
        self.expire(now, stats);
        let end = offset + data.len() as u32;
        if end > MAX_DATAGRAM || (more && (data.is_empty() || !data.len().is_multiple_of(8))) {
            stats.fragments_dropped += 1;
            self.drop_datagram(&key, stats);
            return None;
        }

        // Find or make room for the datagram.
        if !self.map.contains_key(&key) {
            while self.map.len() >= self.max_datagrams {
                if !self.evict_oldest(&key, stats) {
                    break;
                }
            }
            self.serial += 1;
            self.map.insert(
                key,
                Datagram {
                    first_ts: now,
                    serial: self.serial,
                    data: Vec::new(),
                    have: Vec::new(),
                    total: None,
                    fragments: 0,
                },
            );
            self.next_expiry = self.next_expiry.min(now.saturating_add(self.timeout));
        }

        // Consistency with the datagram's end.
        let (held_end, total, cur_len) = {
            let d = &self.map[&key];
            (d.have.last().map_or(0, |r| r.1), d.total, d.data.len())
        };
        let conflict = match (more, total) {
            (false, Some(t)) => t != end,
            (false, None) => end < held_end,
            (true, Some(t)) => end > t,
            (true, None) => false,
        };
        if conflict {
            stats.fragments_dropped += 1;
            self.drop_datagram(&key, stats);
            return None;
        }

        // Byte budget.
        let growth = (end as usize).saturating_sub(cur_len);
        while self.bytes + growth > self.max_bytes {
            if !self.evict_oldest(&key, stats) {
                stats.fragments_dropped += 1;
                self.drop_datagram(&key, stats);
                return None;
            }
        }

        let d = self.map.get_mut(&key)?;
        if !more {
            d.total = Some(end);
        }
        if d.data.len() < end as usize {
            d.data.resize(end as usize, 0);
        }
        self.bytes += growth;
        let added = fill_holes(d, offset, end, data);
        if added == 0 && !data.is_empty() {
            // A duplicate: nothing new.
            stats.fragments_dropped += 1;
        } else {
            d.fragments += 1;
        }

        let complete = matches!(d.total, Some(t) if d.have.as_slice() == [(0, t)])
            || (d.total == Some(0) && d.have.is_empty());
        if !complete {
            return None;
        }
        let d = self.remove(&key)?;
        stats.fragments_reassembled += 1;
        self.done = d.data;
        Some(&self.done)
    }
}

/// Copies the parts of `[offset, end)` not yet held; returns how many bytes
/// were new, and records the range.
fn fill_holes(d: &mut Datagram, offset: u32, end: u32, data: &[u8]) -> u32 {
    if offset >= end {
        return 0;
    }
    let mut added = 0;
    let mut pos = offset;
    for &(s, e) in &d.have {
        if e <= pos {
            continue;
        }
        if s >= end {
            break;
        }
        if s > pos {
            let (a, b) = (pos, s.min(end));
            d.data[a as usize..b as usize]
                .copy_from_slice(&data[(a - offset) as usize..(b - offset) as usize]);
            added += b - a;
        }
        pos = pos.max(e);
        if pos >= end {
            break;
        }
    }
    if pos < end {
        d.data[pos as usize..end as usize].copy_from_slice(&data[(pos - offset) as usize..]);
        added += end - pos;
    }
    // Merge [offset, end) into the sorted range list.
    let mut merged: Vec<(u32, u32)> = Vec::with_capacity(d.have.len() + 1);
    let mut cur = (offset, end);
    let mut placed = false;
    for &(s, e) in &d.have {
        if e < cur.0 {
            merged.push((s, e));
        } else if s > cur.1 {
            if !placed {
                merged.push(cur);
                placed = true;
            }
            merged.push((s, e));
        } else {
            cur = (cur.0.min(s), cur.1.max(e));
        }
    }
    if !placed {
        merged.push(cur);
    }
    d.have = merged;
    added
}
