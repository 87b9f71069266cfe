//! The fast path for classic pcap files: memory-mapped, zero-copy.
//!
//! Contract: [`MappedPcap`] yields the same packets as
//! [`FileSource`](super::file::FileSource) for a classic (libpcap) capture
//! file on disk, but borrows each packet straight from the mapped file: no
//! read() copy, no buffer refill. Records are parsed by pcap-parser's slice
//! parsers. A file that is not a classic pcap (pcapng, stdin, a pipe) is
//! for `FileSource`. A record cut by the end of the file or with an
//! impossible length ends the capture with a note, like `FileSource`.
//!
//! Memory: only a window of the file around the reader is in the process's
//! resident set ([`Window`]: mapped in ahead, given back behind), whatever
//! the file's size; the window moves on the reading thread, or on a thread
//! of its own ([`MappedPcap::page_on_thread`]). Threads that read payloads
//! behind the reader (offline workers) keep what they still need mapped
//! with a [`Hold`]: pages are given back only before it.

use super::{Backing, LinkType, RawPacket, SourceStats};
use crate::clock::Timestamp;
use pcap_parser::pcap::{
    parse_pcap_frame, parse_pcap_frame_be, parse_pcap_header, LegacyPcapBlock,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How much is read between two releases of the pages behind the reader.
const RELEASE_EVERY: usize = 16 << 20;

/// How far behind the reader pages stay mapped when released.
const RELEASE_LAG: usize = 4 << 20;

/// How far behind the reader a [`Hold`] keeps pages mapped at most: past
/// it, a worker that reads them faults them back in (a lane so quiet that
/// its open batch would otherwise pin everything read since).
pub(crate) const HOLD_MAX: usize = 12 << 20;

/// The page size madvise ranges are aligned to.
const PAGE: usize = 4096;

/// How far ahead of the reader pages are mapped in.
const POPULATE_AHEAD: usize = 16 << 20;

/// How often the reader tells the pager where it is.
const NOTICE_EVERY: usize = 2 << 20;

/// A record longer than both the file's snaplen and this is corrupt (as
/// libpcap judges it).
const MAX_SANE_RECORD: u32 = 256 * 1024;

/// How far ahead of the reader the file is prefetched: a few records.
/// Measured on the benchmark capture: 5 % faster with one worker and 4-10 %
/// with two (the reading thread, which then touches no payload, is their
/// bottleneck); the next record alone gained less, 32 KiB no more.
const PREFETCH_AHEAD: usize = 8 << 10;

/// Hint the CPU to load the cache line at `off` of `map`.
#[inline(always)]
fn prefetch(map: &[u8], off: usize) {
    if let Some(b) = map.get(off) {
        crate::hint::prefetch(b);
    }
}

/// Where in a mapped file readers behind the reader still read: pages from
/// this offset on stay mapped (`usize::MAX`, as it starts: nothing held). Set
/// by whoever hands payloads to other threads (see
/// `workers::Sharded::holding`); without it, pages a worker reads after
/// they were given back would be faulted in again and stay resident.
#[derive(Clone, Debug)]
pub struct Hold(Arc<AtomicUsize>);

impl Default for Hold {
    /// Nothing held.
    fn default() -> Hold {
        Hold(Arc::new(AtomicUsize::new(usize::MAX)))
    }
}

impl Hold {
    /// Keep the pages from `from` on mapped (`usize::MAX`: none).
    pub fn set(&self, from: usize) {
        self.0.store(from, Ordering::Relaxed);
    }

    /// Where the pages held start.
    pub fn from(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

pub struct MappedPcap {
    /// Shared with worker threads, which read payloads by offset.
    map: Arc<memmap2::Mmap>,
    hold: Hold,
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
    /// Maps pages in ahead of the reader and gives them back behind it.
    pager: Pager,
    /// The offset at which the pager hears from the reader next.
    next_notice: usize,
    /// Lines before this offset were prefetched.
    prefetched: usize,
}

/// The pages of the map in this process's resident set: a window around the
/// reader, so RSS does not grow with the file. Mapping pages in one call
/// (MADV_POPULATE_READ) costs less than a page fault at a time; giving them
/// back (MADV_DONTNEED) keeps the window.
struct Window {
    map: Arc<memmap2::Mmap>,
    /// Pages before this offset were given back (shared with the reader,
    /// which gives pages back itself when a pager thread falls behind).
    released: Arc<AtomicUsize>,
    /// Pages before this offset were mapped in ahead of use.
    populated: usize,
    hold: Hold,
}

impl Window {
    fn new(map: Arc<memmap2::Mmap>, hold: Hold) -> Self {
        Window {
            map,
            released: Arc::default(),
            populated: 0,
            hold,
        }
    }

    /// The reader is at `off`: map in up to [`POPULATE_AHEAD`] past it, give
    /// back what is more than [`RELEASE_LAG`] behind, by
    /// [`RELEASE_EVERY`] at a time. At most the sum of the three (plus two
    /// [`NOTICE_EVERY`] when on the pager thread, and what a [`Hold`] keeps
    /// past [`RELEASE_LAG`], up to [`HOLD_MAX`]) stays resident.
    fn advance(&mut self, off: usize) {
        if off + POPULATE_AHEAD / 2 >= self.populated {
            let end = (off + POPULATE_AHEAD).min(self.map.len());
            let start = self.populated.max(off) / PAGE * PAGE;
            if end > start {
                // Older kernels refuse it: faults then do the work.
                let _ = self
                    .map
                    .advise_range(memmap2::Advice::PopulateRead, start, end - start);
            }
            self.populated = end;
        }
        if off.saturating_sub(self.released.load(Ordering::Relaxed)) >= RELEASE_EVERY + RELEASE_LAG
        {
            release(&self.map, &self.released, off, &self.hold);
        }
    }
}

/// Give back the pages of `map` from `released` up to [`RELEASE_LAG`]
/// behind `off`, and not past `hold` (where worker threads still read
/// payloads; past it they would only fault the pages back in) unless that
/// is more than [`HOLD_MAX`] behind.
fn release(map: &memmap2::Mmap, released: &AtomicUsize, off: usize, hold: &Hold) {
    let held = hold.from().max(off.saturating_sub(HOLD_MAX));
    let upto = off.saturating_sub(RELEASE_LAG).min(held) / PAGE * PAGE;
    let from = released.fetch_max(upto, Ordering::Relaxed);
    if upto <= from {
        return;
    }
    // SAFETY: MADV_DONTNEED on a read-only file mapping only drops this
    // process's page table entries; the bytes read back the same from the
    // file (the map is never written), so a reader elsewhere still holding
    // a slice of these pages reads the same bytes after a fault.
    let _ = unsafe {
        map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, from, upto - from)
    };
}

/// The [`Window`] moved by the reader, or by a thread of its own (see
/// [`MappedPcap::page_on_thread`]).
enum Pager {
    Thread(PagerThread),
    Inline(Window),
}

/// Where the reader is, for the pager thread, which looks now and then
/// (every [`PagerThread::POLL`] while it moves); stops it when dropped.
struct PagerThread {
    /// The reader's offset; `usize::MAX`: stop.
    at: Arc<AtomicUsize>,
    handle: Option<JoinHandle<()>>,
    map: Arc<memmap2::Mmap>,
    /// The window's.
    released: Arc<AtomicUsize>,
    hold: Hold,
}

impl PagerThread {
    /// How long the pager sleeps between looks while the reader moves (the
    /// reader reads a few MB in that time; the window reaches 16 MiB
    /// ahead), and at most while it does not (a paced replay). A look costs
    /// the reader nothing: telling a sleeping thread each time instead
    /// (a futex wake) cost the reader about 20 µs a time, 1-2 % of a run.
    const POLL: Duration = Duration::from_millis(1);
    const POLL_IDLE: Duration = Duration::from_millis(50);

    fn run(mut window: Window, at: &AtomicUsize) {
        let mut seen = 0;
        let mut nap = Self::POLL;
        loop {
            let off = at.load(Ordering::Relaxed);
            if off == usize::MAX {
                return;
            }
            if off != seen {
                seen = off;
                window.advance(off);
                nap = Self::POLL;
            } else {
                nap = (nap * 2).min(Self::POLL_IDLE);
            }
            std::thread::park_timeout(nap);
        }
    }
}

impl Pager {
    /// `window`, moved by a thread of its own; by the reader if the thread
    /// cannot start.
    fn spawn(window: Window) -> Pager {
        let at = Arc::new(AtomicUsize::new(0));
        let map = window.map.clone();
        let (released, populated) = (window.released.clone(), window.populated);
        let hold = window.hold.clone();
        let seen = at.clone();
        let spawned = std::thread::Builder::new()
            .name("apitap-pager".into())
            .spawn(move || PagerThread::run(window, &seen));
        match spawned {
            Ok(handle) => Pager::Thread(PagerThread {
                at,
                handle: Some(handle),
                map,
                released,
                hold,
            }),
            Err(_) => Pager::Inline(Window {
                map,
                released,
                populated,
                hold,
            }),
        }
    }

    fn notice(&mut self, off: usize) {
        match self {
            Pager::Thread(t) => {
                t.at.store(off.min(usize::MAX - 1), Ordering::Relaxed);
                // A pager thread starved of CPU (a busy machine) would let
                // the resident window grow with the file: past its usual
                // lag, the reader gives the pages back itself.
                let behind = off.saturating_sub(t.released.load(Ordering::Relaxed));
                if behind >= RELEASE_EVERY + RELEASE_LAG + 2 * NOTICE_EVERY {
                    release(&t.map, &t.released, off, &t.hold);
                }
            }
            Pager::Inline(w) => w.advance(off),
        }
    }
}

impl Drop for PagerThread {
    fn drop(&mut self) {
        self.at.store(usize::MAX, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.thread().unpark();
            let _ = h.join();
        }
    }
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
        let map = Arc::new(map);
        let hold = Hold::default();
        Ok(Some(MappedPcap {
            // The upper 16 bits of the link type may carry FCS information.
            link: LinkType(header.network.0 as u32 & 0xffff),
            snaplen: header.snaplen,
            pager: Pager::Inline(Window::new(map.clone(), hold.clone())),
            map,
            hold,
            off: 24,
            big_endian,
            nanos,
            current: None,
            stats: SourceStats::default(),
            truncation: None,
            next_notice: 0,
            prefetched: 0,
        }))
    }

    /// The next packet, or None at the end (see `truncation`).
    pub fn next_packet(&mut self) -> Option<RawPacket<'_>> {
        self.current = None;
        if self.off >= self.next_notice {
            self.pager.notice(self.off);
            self.next_notice = self.off + NOTICE_EVERY;
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
        // As FileSource: a frame is never shorter on the wire than captured.
        self.current = Some((start, len, ts, block.origlen.max(len as u32)));
        self.current()
    }

    /// Map pages in and give them back on a thread of its own rather than
    /// on the reading thread (which then only reads): worth it when a second
    /// core can run it.
    pub fn page_on_thread(&mut self) {
        if let Pager::Inline(w) = &mut self.pager {
            let window = std::mem::replace(w, Window::new(self.map.clone(), self.hold.clone()));
            self.pager = Pager::spawn(window);
        }
    }

    /// The mapped file, for readers on other threads.
    pub fn backing(&self) -> Backing {
        self.map.clone()
    }

    /// What those readers set to keep the pages they still read mapped.
    pub fn hold(&self) -> Hold {
        self.hold.clone()
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A classic pcap file of `records` Ethernet frames of `len` bytes,
    /// each frame's first bytes its index.
    fn write_pcap(path: &std::path::Path, records: u32, len: u32) {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
        // Magic, version 2.4, zone, sigfigs, snaplen, Ethernet.
        for v in [0xa1b2_c3d4u32, 2 | (4 << 16), 0, 0, 65535, 1] {
            f.write_all(&v.to_le_bytes()).unwrap();
        }
        let mut frame = vec![0u8; len as usize];
        for i in 0..records {
            for v in [i, 0, len, len] {
                f.write_all(&v.to_le_bytes()).unwrap();
            }
            frame[..4].copy_from_slice(&i.to_le_bytes());
            f.write_all(&frame).unwrap();
        }
        f.flush().unwrap();
    }

    /// Resident pages (KiB) of this process's mappings of `path`.
    fn resident_kib(path: &str) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
        let mut ours = false;
        let mut kib = 0;
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or_default();
            if first.contains('-') && !first.ends_with(':') {
                // A mapping's header line: its path comes last.
                ours = line.ends_with(path);
            } else if let (true, Some(v)) = (ours, line.strip_prefix("Rss:")) {
                kib += v
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0);
            }
        }
        kib
    }

    /// How the window moves in a test run.
    #[derive(Clone, Copy, Debug)]
    enum Paging {
        Inline,
        Thread,
        /// A pager thread that never runs (the worst a busy machine does).
        Starved,
    }

    fn read_all(path: &str, paging: Paging, mut each: impl FnMut(u32)) -> u32 {
        let mut m = MappedPcap::open(path).unwrap().expect("a classic pcap");
        match paging {
            Paging::Inline => {}
            Paging::Thread => m.page_on_thread(),
            Paging::Starved => {
                m.pager = Pager::Thread(PagerThread {
                    at: Arc::default(),
                    handle: None,
                    map: m.map.clone(),
                    released: Arc::default(),
                    hold: m.hold.clone(),
                })
            }
        }
        let mut n = 0;
        while let Some(p) = m.next_packet() {
            let idx = u32::from_le_bytes(p.data[..4].try_into().unwrap());
            assert_eq!(idx, n, "packets in order, none lost");
            n += 1;
            each(n);
        }
        assert!(m.truncation().is_none());
        n
    }

    /// Records in [`big_pcap`].
    const BIG_RECORDS: u32 = 44_000;

    /// A 64 MiB capture in `dir` (several times the window); its path.
    fn big_pcap(dir: &tempfile::TempDir) -> String {
        let path = dir.path().join("big.pcap");
        write_pcap(&path, BIG_RECORDS, 1500);
        path.to_str().unwrap().to_string()
    }

    #[test]
    fn paging_inline_or_on_a_thread_yields_every_packet_and_keeps_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let path = &big_pcap(&dir);
        let records = BIG_RECORDS;
        let window_kib =
            ((POPULATE_AHEAD + RELEASE_EVERY + RELEASE_LAG + 2 * NOTICE_EVERY) >> 10) as u64;
        for paging in [Paging::Inline, Paging::Thread, Paging::Starved] {
            let mut worst = 0;
            let n = read_all(path, paging, |n| {
                if n % 2000 == 0 {
                    // A pager thread runs behind the reader: give it a
                    // moment to catch up before judging.
                    let mut rss = resident_kib(path);
                    for _ in 0..100 {
                        if rss <= window_kib {
                            break;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(10));
                        rss = resident_kib(path);
                    }
                    worst = worst.max(rss);
                }
            });
            assert_eq!(n, records);
            eprintln!("{paging:?}: file resident at most {worst} KiB (window {window_kib} KiB)");
            assert!(
                worst <= window_kib,
                "{paging:?}: mapped file resident {worst} KiB, window {window_kib} KiB"
            );
            assert!(
                worst > 0,
                "the mapping was not found: the check measures nothing"
            );
        }
    }

    #[test]
    fn a_hold_keeps_what_workers_still_read_up_to_hold_max() {
        let dir = tempfile::tempdir().unwrap();
        let path = &big_pcap(&dir);
        let m = MappedPcap::open(path).unwrap().expect("a classic pcap");
        let size = m.map.len();
        m.map
            .advise_range(memmap2::Advice::PopulateRead, 0, size)
            .unwrap();
        let resident = || resident_kib(path) << 10;
        assert!(resident() as usize > size - (1 << 20), "populated");
        let released = AtomicUsize::new(0);
        let hold = Hold::default();
        const MIB: usize = 1 << 20;
        // (reader at, hold from, given back up to): the usual lag; a hold
        // that keeps more; one further back than HOLD_MAX allows.
        for (off, from, upto) in [
            (20 * MIB, usize::MAX, 16 * MIB),
            (40 * MIB, 30 * MIB, 30 * MIB),
            (60 * MIB, 10 * MIB, 60 * MIB - HOLD_MAX),
        ] {
            hold.set(from);
            release(&m.map, &released, off, &hold);
            assert_eq!(released.load(Ordering::Relaxed), upto, "reader at {off}");
            let kept = resident() as usize;
            eprintln!("reader at {off}, hold {from}: {} KiB resident", kept >> 10);
            assert!(
                kept <= size - upto + MIB && kept + MIB >= size - upto,
                "pages before {upto} given back, the rest kept: {kept} of {size}"
            );
        }
    }

    /// The contract: the same packets as `FileSource` (the streaming
    /// reader), field by field, and the same end, for each byte order and
    /// timestamp resolution, with the records a writer gets wrong: captured
    /// longer than on the wire, longer than the snaplen (yet sane), and a
    /// file that ends mid-record or in a record of impossible length.
    #[test]
    fn reads_what_the_streaming_reader_reads() {
        use crate::capture::file::FileSource;
        use crate::capture::{PacketSource, SourceEvent};
        // (caplen, origlen) of each record.
        let records = [(60u32, 60u32), (60, 50), (200, 300), (0, 0), (14, 1514)];
        let dir = tempfile::tempdir().unwrap();
        for (big_endian, nanos) in [(false, false), (false, true), (true, false), (true, true)] {
            // The end: none, cut mid-record, a record of impossible length.
            for end in 0..3 {
                let word = |v: u32| {
                    if big_endian {
                        v.to_be_bytes()
                    } else {
                        v.to_le_bytes()
                    }
                };
                let magic = if nanos { 0xa1b2_3c4d } else { 0xa1b2_c3d4 };
                let mut file = Vec::new();
                // snaplen 100: the third record is longer, but sane.
                for v in [magic, 2 | (4 << 16), 0, 0, 100, 1] {
                    file.extend_from_slice(&word(v));
                }
                for (i, (caplen, origlen)) in records.iter().enumerate() {
                    let frac = 999_999 + i as u32 * 123;
                    for v in [1_700_000_000 + i as u32, frac, *caplen, *origlen] {
                        file.extend_from_slice(&word(v));
                    }
                    file.extend((0..*caplen).map(|b| (b as u8) ^ (i as u8)));
                }
                match end {
                    1 => file.extend_from_slice(&word(1_700_000_099)[..3]),
                    2 => {
                        for v in [1_700_000_099, 0, 300 << 10, 300 << 10] {
                            file.extend_from_slice(&word(v));
                        }
                    }
                    _ => {}
                }
                let path = dir.path().join(format!("{big_endian}-{nanos}-{end}.pcap"));
                std::fs::write(&path, &file).unwrap();
                let path = path.to_str().unwrap();
                let case = format!("big endian {big_endian}, ns {nanos}, end {end}");

                let mut stream = FileSource::open(path).unwrap();
                let mut streamed = Vec::new();
                while let Some(SourceEvent::Packet(p)) = stream.next_event().unwrap() {
                    streamed.push((p.ts, p.link, p.data.to_vec(), p.wire_len));
                }
                let mut m = MappedPcap::open(path).unwrap().expect("a classic pcap");
                let mut mapped = Vec::new();
                while let Some(p) = m.next_packet() {
                    mapped.push((p.ts, p.link, p.data.to_vec(), p.wire_len));
                }
                assert_eq!(mapped.len(), records.len(), "{case}");
                assert_eq!(mapped, streamed, "{case}");
                assert_eq!(
                    m.truncation().is_some(),
                    end != 0,
                    "{case}: {:?}",
                    m.truncation()
                );
                assert_eq!(
                    stream.truncation().is_some(),
                    end != 0,
                    "{case}: {:?}",
                    stream.truncation()
                );
                assert_eq!(m.stats(), stream.stats(), "{case}");
            }
        }
    }
}
