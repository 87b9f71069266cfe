//! The fast path for classic pcap files: memory-mapped, zero-copy.
//!
//! Contract: [`MappedPcap`] yields the same packets as
//! [`FileSource`](super::file::FileSource) for a classic (libpcap) capture
//! file on disk, but borrows each packet straight from the mapped file: no
//! read() copy, no buffer refill. Records are parsed by pcap-parser's slice
//! parsers. A file that is not a classic pcap (pcapng, stdin, a pipe) is
//! for `FileSource`. A record cut by the end of the file or with an
//! impossible length ends the capture with a note, like `FileSource`.

use super::{Backing, LinkType, RawPacket, SourceStats};
use crate::clock::Timestamp;
use pcap_parser::pcap::{
    parse_pcap_frame, parse_pcap_frame_be, parse_pcap_header, LegacyPcapBlock,
};
use std::sync::Arc;

/// How much is read between two releases of the pages behind the reader.
const RELEASE_EVERY: usize = 16 << 20;

/// How far behind the reader pages stay mapped when released.
const RELEASE_LAG: usize = 4 << 20;

/// A record longer than both the file's snaplen and this is corrupt (as
/// libpcap judges it).
const MAX_SANE_RECORD: u32 = 256 * 1024;

/// How far ahead of the reader the file is prefetched: a few records.
/// Measured on the benchmark capture: 5 % faster with one worker and 4-10 %
/// with two (the reading thread, which then touches no payload, is their
/// bottleneck); the next record alone gained less, 32 KiB no more.
const PREFETCH_AHEAD: usize = 8 << 10;

/// Hint the CPU to load the cache line at `off` (a no-op elsewhere).
#[inline(always)]
fn prefetch(map: &[u8], off: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(b) = map.get(off) {
        // SAFETY: a prefetch never faults and changes no state; the address
        // is inside the map anyway.
        unsafe {
            std::arch::x86_64::_mm_prefetch(
                std::ptr::from_ref(b).cast::<i8>(),
                std::arch::x86_64::_MM_HINT_T0,
            )
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (map, off);
}

pub struct MappedPcap {
    /// Shared with worker threads, which read payloads by offset.
    map: Arc<memmap2::Mmap>,
    /// Offset of the next record.
    off: usize,
    big_endian: bool,
    nanos: bool,
    link: LinkType,
    snaplen: u32,
    /// (offset, length, ts, wire length) of the packet last returned.
    current: Option<(usize, usize, Timestamp, u32)>,
    stats: SourceStats,
    truncation: Option<String>,
    /// Pages before this offset were given back.
    released: usize,
    /// Pages before this offset were mapped in ahead of use.
    populated: usize,
    /// Lines before this offset were prefetched.
    prefetched: usize,
}

impl MappedPcap {
    /// Map `path` if it is a classic pcap file; `Ok(None)` when it is not
    /// (the caller falls back to the streaming reader).
    pub fn open(path: &str) -> std::io::Result<Option<MappedPcap>> {
        let file = std::fs::File::open(path)?;
        if !file.metadata()?.is_file() {
            return Ok(None);
        }
        // SAFETY: the map is read-only and private to this process. If
        // another process truncates the file while it is mapped, reads past
        // the new end fault (SIGBUS); capture files are not truncated in
        // place by the tools that write them (they append or rename).
        let map = unsafe { memmap2::Mmap::map(&file)? };
        let (big_endian, nanos) = match map.get(..4) {
            Some([0xd4, 0xc3, 0xb2, 0xa1]) => (false, false),
            Some([0x4d, 0x3c, 0xb2, 0xa1]) => (false, true),
            Some([0xa1, 0xb2, 0xc3, 0xd4]) => (true, false),
            Some([0xa1, 0xb2, 0x3c, 0x4d]) => (true, true),
            _ => return Ok(None),
        };
        let Ok((_, header)) = parse_pcap_header(&map) else {
            return Ok(None);
        };
        let _ = map.advise(memmap2::Advice::Sequential);
        Ok(Some(MappedPcap {
            // The upper 16 bits of the link type may carry FCS information.
            link: LinkType(header.network.0 as u32 & 0xffff),
            snaplen: header.snaplen,
            map: Arc::new(map),
            off: 24,
            big_endian,
            nanos,
            current: None,
            stats: SourceStats::default(),
            truncation: None,
            released: 0,
            populated: 0,
            prefetched: 0,
        }))
    }

    /// The next packet, or None at the end (see `truncation`).
    pub fn next_packet(&mut self) -> Option<RawPacket<'_>> {
        self.current = None;
        if self.off >= self.populated {
            self.populate_ahead();
        }
        if self.off - self.released >= RELEASE_EVERY + RELEASE_LAG {
            self.release_behind();
        }
        let rest = self.map.get(self.off..)?;
        if rest.is_empty() || self.truncation.is_some() {
            return None;
        }
        let parsed: Result<(&[u8], LegacyPcapBlock<'_>), _> = if self.big_endian {
            parse_pcap_frame_be(rest)
        } else {
            parse_pcap_frame(rest)
        };
        let block = match parsed {
            Ok((_, b)) if b.caplen <= self.snaplen.max(MAX_SANE_RECORD) => b,
            Ok(_) => {
                self.stop("a record declares an impossible length");
                return None;
            }
            Err(_) => {
                self.stop("file ends in the middle of a record");
                return None;
            }
        };
        let frac = i64::from(block.ts_usec);
        let micros = if self.nanos { frac / 1000 } else { frac };
        let ts = Timestamp::from_secs_micros(i64::from(block.ts_sec), micros);
        let start = self.off + 16;
        let len = block.data.len();
        self.off = start + len;
        // The next record's header is the one load per packet that misses
        // the cache: where it is is known only once this one is read (a
        // chain of misses the hardware prefetcher does not follow). Ask for
        // it now, and for every line of the next PREFETCH_AHEAD bytes, so
        // the headers after it are on their way too.
        prefetch(&self.map, self.off);
        let ahead = (self.off + PREFETCH_AHEAD).min(self.map.len());
        let mut line = self.prefetched.max(self.off) & !63;
        while line < ahead {
            prefetch(&self.map, line);
            line += 64;
        }
        self.prefetched = line;
        self.stats.packets += 1;
        self.stats.bytes += len as u64;
        self.current = Some((start, len, ts, block.origlen));
        self.current()
    }

    /// The mapped file, for readers on other threads.
    pub fn backing(&self) -> Backing {
        self.map.clone()
    }

    /// The packet the last `next_packet` returned, again.
    pub fn current(&self) -> Option<RawPacket<'_>> {
        let (start, len, ts, wire_len) = self.current?;
        Some(RawPacket {
            ts,
            link: self.link,
            data: &self.map[start..start + len],
            wire_len,
        })
    }

    /// Map the next window in one call rather than a page fault at a time
    /// (MADV_POPULATE_READ; older kernels refuse it and faults do the work).
    fn populate_ahead(&mut self) {
        let end = (self.populated.max(self.off) + RELEASE_EVERY).min(self.map.len());
        let start = self.populated / 4096 * 4096;
        if end > start {
            let _ = self
                .map
                .advise_range(memmap2::Advice::PopulateRead, start, end - start);
        }
        self.populated = end;
    }

    /// Drop the mapped pages already read from this process's resident set
    /// (the page cache keeps them), so RSS does not grow with the file.
    fn release_behind(&mut self) {
        let page = 4096;
        // A little stays mapped behind the reader: worker threads may still
        // be reading payloads there (see `backing`; at most a few batches
        // behind); past it they would only fault the pages back in.
        let upto = self.off.saturating_sub(RELEASE_LAG) / page * page;
        if upto <= self.released {
            return;
        }
        // SAFETY: MADV_DONTNEED on a read-only file mapping only drops this
        // process's page table entries; the bytes read back the same from
        // the file (the map is never written), so a reader elsewhere still
        // holding a slice of these pages reads the same bytes after a fault.
        let _ = unsafe {
            self.map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                self.released,
                upto - self.released,
            )
        };
        self.released = upto;
    }

    fn stop(&mut self, what: &str) {
        self.truncation = Some(format!(
            "{what} after {} packets ({} bytes of the file)",
            self.stats.packets, self.off
        ));
    }

    pub fn stats(&self) -> SourceStats {
        self.stats.clone()
    }

    pub fn truncation(&self) -> Option<&str> {
        self.truncation.as_deref()
    }
}
