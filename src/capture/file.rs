//! Capture files: legacy pcap (µs and ns, both byte orders) and pcapng.
//!
//! Contract: [`FileSource`] yields every packet record of the file in order,
//! as a [`RawPacket`] borrowing a large internal buffer (1 MiB, grown for a
//! bigger record up to [`MAX_RECORD_BYTES`]); nothing is copied. The previous
//! record is consumed lazily at the next call, which is what makes the
//! lending iterator safe.
//!
//! - Not a capture file (unknown magic, too short) → [`CaptureError::NotACapture`];
//!   missing or unreadable → [`CaptureError::Open`].
//! - A gzip or zstd stream (one layer) is decompressed as it is read; when
//!   the stream breaks off (cut short, corrupt) the file ends there as a cut
//!   file does, and the note gives the decompressor's reason; before the
//!   capture's own header that reason is the error ([`CaptureError::Read`]),
//!   and a stream that holds no capture is
//!   [`CaptureError::NotACaptureInside`]. xz, bzip2 and lz4 →
//!   [`CaptureError::Compressed`], naming the command to pipe through.
//! - A file that ends in the middle of a record, or holds a record whose
//!   length cannot be right (bigger than the cap, or disagreeing with its own
//!   framing), stops the source: `next_event` returns `Ok(None)` and
//!   [`PacketSource::truncation`] says after how many packets and bytes. Every
//!   record before it was delivered. Never a panic.
//! - pcapng: a block whose framing is intact (its length fits the file, is a
//!   multiple of 4 and is repeated in its trailer) but whose body cannot be
//!   read (a mangled name resolution or packet block) is skipped whole and
//!   counted ([`SourceStats::corrupt_blocks`]); reading goes on with the next
//!   block, as libpcap does. A Section Header Block is never skipped (the
//!   byte order of what follows hangs on it).
//! - pcapng: each Interface Description Block carries its own link type,
//!   snaplen and timestamp resolution (`if_tsresol`, `if_tsoffset`); a new
//!   Section Header Block forgets the interfaces of the previous section.
//!   Enhanced, Simple and (obsolete) Packet Blocks are packets; every other
//!   block is skipped. A packet naming an interface that was never described is
//!   skipped and counted in [`FileSource::orphan_packets`].
//! - Legacy pcap: a record longer than the file's snaplen and than 256 KiB
//!   (libpcap's bound) is corruption. pcapng: a block over 64 MiB is.
//! - Timestamps are converted to microseconds (truncating finer resolutions);
//!   a Simple Packet Block, which has none, gets the previous packet's.
//! - A pipe, FIFO or terminal (`tcpdump -w - | apitap -r -`) is waited on at
//!   most [`IDLE_WAIT`] at a time: when no bytes came by then, `next_event`
//!   returns a [`SourceEvent::Tick`] at the last packet's time, so the
//!   caller can hand on what it holds and see a stop request while the
//!   writer is quiet (a blocking read would hold both until its next write).

use super::{CaptureError, LinkType, PacketSource, RawPacket, SourceEvent, SourceStats};
use crate::clock::Timestamp;
use pcap_parser::pcapng::Block;
use pcap_parser::traits::PcapReaderIterator;
use pcap_parser::{LegacyPcapReader, PcapBlockOwned, PcapError, PcapNGReader};
use std::io::{Cursor, Read};
use std::sync::{Arc, OnceLock};

/// The longest a read of a pipe waits before `next_event` says so.
pub const IDLE_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// Initial buffer size: big reads are what make this reader fast.
const INITIAL_BUFFER: usize = 1 << 20;
/// A record bigger than this is treated as corruption.
pub const MAX_RECORD_BYTES: usize = 64 << 20;
/// libpcap's largest snaplen.
const LEGACY_MIN_MAX_CAPLEN: u32 = 256 << 10;

const PCAPNG_SHB: u32 = 0x0A0D_0D0A;
/// pcapng's obsolete Packet Block (superseded by the Enhanced one).
const OBSOLETE_PACKET_BLOCK: u32 = 2;
const PCAPNG_BOM: u32 = 0x1A2B_3C4D;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// Legacy pcap; `big_endian` for the record headers, `nanos` resolution.
    Legacy {
        big_endian: bool,
        nanos: bool,
        modified: bool,
    },
    Ng,
}

/// Timestamp units of one pcapng interface.
#[derive(Clone, Copy, Debug)]
enum TsUnit {
    /// 10^n units per second.
    Decimal(u32),
    /// 2^n units per second.
    Binary(u32),
}

#[derive(Clone, Copy, Debug)]
struct Interface {
    link: LinkType,
    snaplen: u32,
    unit: TsUnit,
    offset_secs: i64,
}

/// What one parsed block means, without borrowing the buffer.
enum Step {
    Packet {
        consumed: usize,
        start: usize,
        len: usize,
        ts: Timestamp,
        link: LinkType,
        wire_len: u32,
    },
    Skip(usize),
    Eof,
    Truncated,
    Corrupt(String),
    NeedMore(Option<usize>),
    TooSmall(Option<usize>),
    ReadError,
}

/// A pcap or pcapng file (or stdin) as a [`PacketSource`].
pub struct FileSource {
    label: String,
    reader: Box<dyn PcapReaderIterator + Send>,
    format: Format,
    /// Bytes of the block returned last time, consumed at the next call.
    pending: usize,
    /// Where the packet last returned lies in the buffer (until the next call).
    current: Option<(usize, usize, Timestamp, LinkType, u32)>,
    capacity: usize,
    legacy_link: LinkType,
    /// Legacy records above this captured length are corruption (libpcap's
    /// rule: the file's snaplen, but at least 256 KiB).
    legacy_max_caplen: u32,
    /// Simple Packet Blocks carry no timestamp: they get the previous one.
    last_ts: Timestamp,
    ng_big_endian: bool,
    interfaces: Vec<Interface>,
    stats: SourceStats,
    orphans: u64,
    truncation: Option<String>,
    finished: bool,
    /// The input when it is not a regular file: polled before each read.
    waiter: Option<std::os::fd::OwnedFd>,
    /// Why a compressed input's stream broke off, once it has
    /// ([`Decompressed`]); never set for a plain one.
    broken: Arc<OnceLock<String>>,
}

impl std::fmt::Debug for FileSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSource")
            .field("label", &self.label)
            .field("format", &self.format)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl FileSource {
    /// Opens `path` (`-` = stdin) and checks its magic number.
    pub fn open(path: &str) -> Result<FileSource, CaptureError> {
        use std::os::fd::AsFd;
        if path == "-" {
            let waiter = waiter(std::io::stdin().as_fd());
            return Ok(Self::from_reader(path, Box::new(std::io::stdin()))?.waiting_on(waiter));
        }
        let file = std::fs::File::open(path).map_err(|source| CaptureError::Open {
            path: path.to_string(),
            source,
        })?;
        if file.metadata().map(|m| m.is_dir()).unwrap_or(false) {
            return Err(CaptureError::Open {
                path: path.to_string(),
                source: std::io::Error::other("is a directory"),
            });
        }
        let waiter = waiter(file.as_fd());
        Ok(Self::from_reader(path, Box::new(file))?.waiting_on(waiter))
    }

    /// Poll `fd` (the reader's input) before each read; see [`IDLE_WAIT`].
    pub fn waiting_on(mut self, fd: Option<std::os::fd::OwnedFd>) -> Self {
        self.waiter = fd;
        self
    }

    /// Whether a read would not block (bytes, the end, or an error to
    /// report), waiting at most [`IDLE_WAIT`]. A signal cuts the wait short
    /// and counts as not ready, so the caller looks at its stop flag.
    fn input_ready(&self) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let Some(fd) = &self.waiter else {
            return true;
        };
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        let wait = PollTimeout::try_from(IDLE_WAIT).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, wait) {
            Ok(n) => n > 0,
            Err(nix::errno::Errno::EINTR) => false,
            Err(_) => true,
        }
    }

    /// A source over any reader; `label` names it in errors.
    pub fn from_reader(
        label: &str,
        input: Box<dyn Read + Send>,
    ) -> Result<FileSource, CaptureError> {
        Self::from_input(label, input, true)
    }

    /// `from_reader`; a gzip or zstd stream is decompressed when
    /// `decompress` (once: a compressed file inside is not a capture, and
    /// a stream that decompresses to itself must not recurse).
    fn from_input(
        label: &str,
        mut input: Box<dyn Read + Send>,
        decompress: bool,
    ) -> Result<FileSource, CaptureError> {
        let not_a_capture = || CaptureError::NotACapture {
            path: label.to_string(),
        };
        let read_err = |e: std::io::Error| CaptureError::Read {
            path: label.to_string(),
            reason: e.to_string(),
        };
        // Read the file header completely before handing over to the
        // parser: a pipe may deliver it in pieces, and the parser insists on
        // seeing all of it in its first read.
        let mut prefix = Vec::with_capacity(256);
        fill_to(&mut input, &mut prefix, 12).map_err(read_err)?;
        if prefix.len() < 4 {
            return Err(not_a_capture());
        }
        if let Some(c) = Compression::of(&prefix) {
            let whole = Cursor::new(prefix).chain(input);
            let plain: Box<dyn Read + Send> = match c {
                _ if !decompress => return Err(not_a_capture()),
                Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(whole)),
                Compression::Zstd => Box::new(zstd::Decoder::new(whole).map_err(read_err)?),
                other => {
                    return Err(CaptureError::Compressed {
                        path: label.to_string(),
                        how: other.name(),
                        tool: other.tool(),
                    })
                }
            };
            tracing::debug!(compression = c.name(), "decompressing the capture file");
            let broken = Arc::new(OnceLock::new());
            let plain = Decompressed {
                inner: plain,
                how: c,
                broken: broken.clone(),
            };
            let mut source = match Self::from_input(label, Box::new(plain), false) {
                Ok(source) => source,
                // Before the capture's header: the decompressor's reason is
                // the one to give (a corrupt gzip header, say).
                Err(CaptureError::NotACapture { path }) => {
                    return Err(match broken.get() {
                        Some(reason) => CaptureError::Read {
                            path,
                            reason: reason.clone(),
                        },
                        None => CaptureError::NotACaptureInside {
                            path,
                            how: c.name(),
                        },
                    })
                }
                Err(e) => return Err(e),
            };
            source.broken = broken;
            return Ok(source);
        }
        let magic_le = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        let format = match magic_le {
            0xa1b2_c3d4 => Format::Legacy {
                big_endian: false,
                nanos: false,
                modified: false,
            },
            0xa1b2_3c4d => Format::Legacy {
                big_endian: false,
                nanos: true,
                modified: false,
            },
            0xa1b2_cd34 => Format::Legacy {
                big_endian: false,
                nanos: false,
                modified: true,
            },
            0xd4c3_b2a1 => Format::Legacy {
                big_endian: true,
                nanos: false,
                modified: false,
            },
            0x4d3c_b2a1 => Format::Legacy {
                big_endian: true,
                nanos: true,
                modified: false,
            },
            PCAPNG_SHB => Format::Ng,
            _ => return Err(not_a_capture()),
        };
        let header_len = match format {
            Format::Legacy { .. } => 24,
            Format::Ng => {
                if prefix.len() < 12 {
                    return Err(not_a_capture());
                }
                let big_endian = match read_u32(&prefix[8..12], false) {
                    PCAPNG_BOM => false,
                    v if v.swap_bytes() == PCAPNG_BOM => true,
                    _ => return Err(not_a_capture()),
                };
                let len = read_u32(&prefix[4..8], big_endian) as usize;
                if !(28..=INITIAL_BUFFER).contains(&len) {
                    return Err(not_a_capture());
                }
                len
            }
        };
        fill_to(&mut input, &mut prefix, header_len).map_err(read_err)?;
        if prefix.len() < header_len {
            return Err(not_a_capture());
        }
        let chained = Cursor::new(prefix).chain(input);
        let reader: Box<dyn PcapReaderIterator + Send> = match format {
            Format::Legacy { .. } => Box::new(
                LegacyPcapReader::new(INITIAL_BUFFER, chained).map_err(|_| not_a_capture())?,
            ),
            Format::Ng => {
                Box::new(PcapNGReader::new(INITIAL_BUFFER, chained).map_err(|_| not_a_capture())?)
            }
        };
        Ok(FileSource {
            label: label.to_string(),
            reader,
            format,
            pending: 0,
            current: None,
            capacity: INITIAL_BUFFER,
            legacy_link: LinkType::ETHERNET,
            legacy_max_caplen: LEGACY_MIN_MAX_CAPLEN,
            last_ts: Timestamp::ZERO,
            ng_big_endian: false,
            interfaces: Vec::new(),
            stats: SourceStats::default(),
            orphans: 0,
            truncation: None,
            finished: false,
            waiter: None,
            broken: Arc::default(),
        })
    }

    /// Packets skipped because their pcapng interface was never described.
    /// The packet the last `next_event` returned, again (None after the
    /// end). Lets a wrapper inspect a packet before handing it on.
    pub fn current(&self) -> Option<RawPacket<'_>> {
        let (start, len, ts, link, wire_len) = self.current?;
        Some(RawPacket {
            ts,
            link,
            data: &self.reader.data()[start..start + len],
            wire_len,
        })
    }

    pub fn orphan_packets(&self) -> u64 {
        self.orphans
    }

    /// The length of the pcapng block at the start of `data` when its
    /// framing is intact though its body may not be (see the module doc):
    /// it can be skipped whole.
    fn intact_ng_block(&self, data: &[u8]) -> Option<usize> {
        if !matches!(self.format, Format::Ng) || data.len() < 12 {
            return None;
        }
        if read_u32(&data[0..4], false) == PCAPNG_SHB {
            return None;
        }
        let n = read_u32(&data[4..8], self.ng_big_endian) as usize;
        let framed = n >= 12 && n.is_multiple_of(4) && n <= data.len();
        (framed && read_u32(&data[n - 4..n], self.ng_big_endian) == n as u32).then_some(n)
    }

    /// Skip a block [`Self::intact_ng_block`] vouches for; false when it
    /// does not.
    fn skip_corrupt_block(&mut self) -> bool {
        match self.intact_ng_block(self.reader.data()) {
            Some(n) => {
                self.reader.consume(n);
                self.stats.corrupt_blocks += 1;
                true
            }
            None => false,
        }
    }

    /// The length the record at the start of `data` declares for itself
    /// (header included), when enough of it is there to tell.
    fn declared_len(&self, data: &[u8]) -> Option<usize> {
        match self.format {
            Format::Legacy {
                big_endian,
                modified,
                ..
            } => {
                let hdr = if modified { 24 } else { 16 };
                if data.len() < 12 {
                    return None;
                }
                Some(hdr + read_u32(&data[8..12], big_endian) as usize)
            }
            Format::Ng => {
                if data.len() < 8 {
                    return None;
                }
                let mut be = self.ng_big_endian;
                if read_u32(&data[0..4], false) == PCAPNG_SHB {
                    if data.len() < 12 {
                        return None;
                    }
                    be = read_u32(&data[8..12], false) != PCAPNG_BOM;
                }
                Some(read_u32(&data[4..8], be) as usize)
            }
        }
    }

    /// Parses the next block into a [`Step`] (the borrow of the buffer ends here).
    fn step(&mut self) -> Step {
        let base = self.reader.data().as_ptr() as usize;
        let result = self.reader.next();
        match result {
            Ok((consumed, block)) => match block {
                PcapBlockOwned::LegacyHeader(h) => {
                    // The upper 16 bits may carry FCS information.
                    self.legacy_link = LinkType(h.network.0 as u32 & 0xFFFF);
                    self.legacy_max_caplen = h.snaplen.max(LEGACY_MIN_MAX_CAPLEN);
                    Step::Skip(consumed)
                }
                PcapBlockOwned::Legacy(b) => {
                    let Format::Legacy { nanos, .. } = self.format else {
                        return Step::Corrupt("legacy record in a pcapng file".into());
                    };
                    if b.caplen > self.legacy_max_caplen {
                        return Step::Corrupt(format!("record length {}", b.caplen));
                    }
                    let micros = if nanos {
                        i64::from(b.ts_usec) / 1000
                    } else {
                        i64::from(b.ts_usec)
                    };
                    Step::Packet {
                        consumed,
                        start: b.data.as_ptr() as usize - base,
                        len: b.data.len(),
                        ts: Timestamp::from_secs_micros(i64::from(b.ts_sec), micros),
                        link: self.legacy_link,
                        wire_len: b.origlen.max(b.caplen),
                    }
                }
                PcapBlockOwned::NG(Block::SectionHeader(shb)) => {
                    self.ng_big_endian = shb.big_endian();
                    self.interfaces.clear();
                    Step::Skip(consumed)
                }
                PcapBlockOwned::NG(Block::InterfaceDescription(idb)) => {
                    let r = idb.if_tsresol;
                    let unit = if r & 0x80 != 0 && (r & 0x7f) < 64 {
                        TsUnit::Binary(u32::from(r & 0x7f))
                    } else if r & 0x80 == 0 && r <= 19 {
                        TsUnit::Decimal(u32::from(r))
                    } else {
                        TsUnit::Decimal(6)
                    };
                    self.interfaces.push(Interface {
                        link: LinkType(u32::from(idb.linktype.0 as u16)),
                        snaplen: idb.snaplen,
                        unit,
                        offset_secs: idb.if_tsoffset,
                    });
                    Step::Skip(consumed)
                }
                PcapBlockOwned::NG(Block::EnhancedPacket(epb)) => {
                    let start = epb.data.as_ptr() as usize - base;
                    let len = (epb.caplen as usize).min(epb.data.len());
                    Self::ng_packet(
                        &self.interfaces,
                        &mut self.orphans,
                        consumed,
                        epb.if_id,
                        (u64::from(epb.ts_high) << 32) | u64::from(epb.ts_low),
                        start..start + len,
                        epb.origlen,
                    )
                }
                // The obsolete Packet Block: an EPB with a 16-bit interface
                // id and a drop count (older writers; libpcap and Wireshark
                // read it). pcap-parser gives an unknown block's type as
                // read little-endian.
                PcapBlockOwned::NG(Block::Unknown(b))
                    if read_u32(&b.block_type.to_le_bytes(), self.ng_big_endian)
                        == OBSOLETE_PACKET_BLOCK =>
                {
                    let Some(head) = b.data.get(..20) else {
                        self.stats.corrupt_blocks += 1;
                        return Step::Skip(consumed);
                    };
                    let be = self.ng_big_endian;
                    let if_id = if be {
                        u16::from_be_bytes([head[0], head[1]])
                    } else {
                        u16::from_le_bytes([head[0], head[1]])
                    };
                    let raw = (u64::from(read_u32(&head[4..8], be)) << 32)
                        | u64::from(read_u32(&head[8..12], be));
                    let start = b.data.as_ptr() as usize + 20 - base;
                    let len = (read_u32(&head[12..16], be) as usize).min(b.data.len() - 20);
                    Self::ng_packet(
                        &self.interfaces,
                        &mut self.orphans,
                        consumed,
                        u32::from(if_id),
                        raw,
                        start..start + len,
                        read_u32(&head[16..20], be),
                    )
                }
                PcapBlockOwned::NG(Block::SimplePacket(spb)) => {
                    let Some(iface) = self.interfaces.first().copied() else {
                        self.orphans += 1;
                        return Step::Skip(consumed);
                    };
                    let mut caplen = (spb.origlen as usize).min(spb.data.len());
                    if iface.snaplen != 0 {
                        caplen = caplen.min(iface.snaplen as usize);
                    }
                    Step::Packet {
                        consumed,
                        start: spb.data.as_ptr() as usize - base,
                        len: caplen,
                        ts: self.last_ts,
                        link: iface.link,
                        wire_len: spb.origlen.max(caplen as u32),
                    }
                }
                PcapBlockOwned::NG(_) => Step::Skip(consumed),
            },
            Err(PcapError::Eof) => Step::Eof,
            Err(PcapError::UnexpectedEof) => Step::Truncated,
            Err(PcapError::Incomplete(_)) => Step::NeedMore(self.declared_len(self.reader.data())),
            Err(PcapError::BufferTooSmall) => Step::TooSmall(self.declared_len(self.reader.data())),
            Err(PcapError::ReadError) => Step::ReadError,
            Err(e) => Step::Corrupt(format!("{e:?}").chars().take(80).collect()),
        }
    }

    /// A packet of a pcapng packet block: `data`, where its captured bytes
    /// lie in the buffer; skipped (and counted) when its interface was
    /// never described.
    fn ng_packet(
        interfaces: &[Interface],
        orphans: &mut u64,
        consumed: usize,
        if_id: u32,
        raw_ts: u64,
        data: std::ops::Range<usize>,
        origlen: u32,
    ) -> Step {
        let (start, len) = (data.start, data.len());
        let Some(iface) = interfaces.get(if_id as usize).copied() else {
            *orphans += 1;
            return Step::Skip(consumed);
        };
        Step::Packet {
            consumed,
            start,
            len,
            ts: ng_timestamp(raw_ts, iface.unit, iface.offset_secs),
            link: iface.link,
            wire_len: origlen.max(len as u32),
        }
    }

    fn stop(&mut self, what: &str) {
        self.finished = true;
        let (what, of) = match self.broken.get() {
            // The cause, rather than what it looked like after it.
            Some(broken) => (broken.as_str(), "decompressed"),
            None => (what, "of the file"),
        };
        self.truncation = Some(format!(
            "{}: {what} after {} packets ({} bytes {of})",
            self.label,
            self.stats.packets,
            self.reader.consumed()
        ));
    }
}

impl PacketSource for FileSource {
    fn next_event(&mut self) -> Result<Option<SourceEvent<'_>>, CaptureError> {
        if self.finished {
            return Ok(None);
        }
        if self.pending > 0 {
            self.reader.consume(self.pending);
            self.pending = 0;
        }
        self.current = None;
        // Each refill must make progress; a parse that asks for more bytes
        // than its record declares is corruption, not a short read.
        loop {
            match self.step() {
                Step::Packet {
                    consumed,
                    start,
                    len,
                    ts,
                    link,
                    wire_len,
                } => {
                    self.pending = consumed;
                    self.current = Some((start, len, ts, link, wire_len));
                    self.last_ts = ts;
                    self.stats.packets += 1;
                    self.stats.bytes += len as u64;
                    let data = &self.reader.data()[start..start + len];
                    return Ok(Some(SourceEvent::Packet(RawPacket {
                        ts,
                        link,
                        data,
                        wire_len,
                    })));
                }
                Step::Skip(n) => self.reader.consume(n),
                Step::Eof => {
                    self.finished = true;
                    // A compressed stream cut between two records (`stop`
                    // gives the decompressor's reason).
                    if self.broken.get().is_some() {
                        self.stop("");
                    }
                    return Ok(None);
                }
                Step::Truncated => {
                    self.stop("file ends in the middle of a record");
                    return Ok(None);
                }
                Step::Corrupt(_) if self.skip_corrupt_block() => {}
                Step::Corrupt(why) => {
                    self.stop(&format!("corrupt record ({why})"));
                    return Ok(None);
                }
                Step::ReadError => {
                    self.finished = true;
                    return Err(CaptureError::Read {
                        path: self.label.clone(),
                        reason: format!(
                            "read failed after {} packets ({} bytes)",
                            self.stats.packets,
                            self.reader.consumed()
                        ),
                    });
                }
                Step::NeedMore(declared) | Step::TooSmall(declared) => {
                    let have = self.reader.data().len();
                    let limit = match self.format {
                        Format::Legacy { modified, .. } => {
                            self.legacy_max_caplen as usize + if modified { 24 } else { 16 }
                        }
                        Format::Ng => MAX_RECORD_BYTES,
                    };
                    match declared {
                        Some(n) if n > limit => {
                            self.stop(&format!("corrupt record length {n}"));
                            return Ok(None);
                        }
                        Some(n) if n <= have && self.skip_corrupt_block() => continue,
                        Some(n) if n <= have => {
                            self.stop(&format!(
                                "corrupt record (declares {n} bytes but does not fit them)"
                            ));
                            return Ok(None);
                        }
                        Some(n) if n + 64 > self.capacity => {
                            let new = (n + 64).next_power_of_two().min(MAX_RECORD_BYTES + 64);
                            self.reader.grow(new);
                            self.capacity = new;
                        }
                        None if have + 64 > self.capacity => {
                            // Cannot happen (a record header is tiny), but
                            // never loop forever.
                            self.stop("unreadable record");
                            return Ok(None);
                        }
                        _ => {}
                    }
                    if !self.input_ready() {
                        return Ok(Some(SourceEvent::Tick(self.last_ts)));
                    }
                    if self.reader.refill().is_err() {
                        self.finished = true;
                        return Err(CaptureError::Read {
                            path: self.label.clone(),
                            reason: "read failed".into(),
                        });
                    }
                }
            }
        }
    }

    fn interface(&self) -> &str {
        "file"
    }

    fn stats(&self) -> SourceStats {
        self.stats.clone()
    }

    fn truncation(&self) -> Option<&str> {
        self.truncation.as_deref()
    }

    fn streamed(&self) -> bool {
        self.waiter.is_some()
    }
}

fn read_u32(b: &[u8], big_endian: bool) -> u32 {
    let a = [b[0], b[1], b[2], b[3]];
    if big_endian {
        u32::from_be_bytes(a)
    } else {
        u32::from_le_bytes(a)
    }
}

/// A copy of `fd` to poll, when it is not a regular file (a pipe, FIFO,
/// terminal or socket, whose reads can block).
fn waiter(fd: std::os::fd::BorrowedFd<'_>) -> Option<std::os::fd::OwnedFd> {
    let dup = std::fs::File::from(fd.try_clone_to_owned().ok()?);
    let regular = dup.metadata().ok()?.is_file();
    (!regular).then(|| dup.into())
}

/// Compressed forms a capture file is kept in (`tcpdump -z gzip`, log
/// rotation, archives), told by their magic numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Compression {
    Gzip,
    Zstd,
    Xz,
    Bzip2,
    Lz4,
}

impl Compression {
    fn of(prefix: &[u8]) -> Option<Compression> {
        Some(match prefix {
            [0x1f, 0x8b, ..] => Compression::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
            [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => Compression::Xz,
            [b'B', b'Z', b'h', ..] => Compression::Bzip2,
            [0x04, 0x22, 0x4d, 0x18, ..] => Compression::Lz4,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::Xz => "xz",
            Compression::Bzip2 => "bzip2",
            Compression::Lz4 => "lz4",
        }
    }

    /// The command that writes the plain capture to stdout.
    fn tool(self) -> &'static str {
        match self {
            Compression::Gzip => "zcat",
            Compression::Zstd => "zstdcat",
            Compression::Xz => "xzcat",
            Compression::Bzip2 => "bzcat",
            Compression::Lz4 => "lz4cat",
        }
    }
}

/// A decompressing reader whose stream errors (an archive cut short, as a
/// download or a full disk leaves it, or corrupt) end the input as the end
/// of a cut plain file does: everything before is read, and the reason is
/// kept for the warning. Errors of the file itself (an OS error) pass.
struct Decompressed {
    inner: Box<dyn Read + Send>,
    how: Compression,
    broken: Arc<OnceLock<String>>,
}

impl Read for Decompressed {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.inner.read(buf) {
            Err(e) if e.raw_os_error().is_none() && e.kind() != std::io::ErrorKind::Interrupted => {
                let how = self.how.name();
                let _ = self
                    .broken
                    .set(format!("the {how} stream is cut short or corrupt ({e})"));
                Ok(0)
            }
            r => r,
        }
    }
}

/// Reads until `buf` holds `want` bytes or the input ends.
fn fill_to(input: &mut dyn Read, buf: &mut Vec<u8>, want: usize) -> std::io::Result<()> {
    while buf.len() < want {
        let old = buf.len();
        buf.resize(want, 0);
        match input.read(&mut buf[old..]) {
            Ok(0) => {
                buf.truncate(old);
                return Ok(());
            }
            Ok(n) => buf.truncate(old + n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => buf.truncate(old),
            Err(e) => {
                buf.truncate(old);
                return Err(e);
            }
        }
    }
    Ok(())
}

fn ng_timestamp(raw: u64, unit: TsUnit, offset_secs: i64) -> Timestamp {
    let micros: i128 = match unit {
        TsUnit::Decimal(6) => i128::from(raw),
        TsUnit::Decimal(n) if n > 6 => i128::from(raw / 10u64.pow(n - 6)),
        TsUnit::Decimal(n) => i128::from(raw) * i128::from(10u64.pow(6 - n)),
        TsUnit::Binary(n) => (i128::from(raw) * 1_000_000) >> n,
    };
    let micros = micros + i128::from(offset_secs) * 1_000_000;
    Timestamp::from_micros(micros.clamp(i64::MIN as i128, i64::MAX as i128) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32b(v: u32, be: bool) -> [u8; 4] {
        if be {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    }

    fn u16b(v: u16, be: bool) -> [u8; 2] {
        if be {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    }

    /// Legacy pcap: records are (secs, fraction, data, original length).
    fn pcap(be: bool, nanos: bool, link: u32, recs: &[(u32, u32, &[u8], u32)]) -> Vec<u8> {
        let magic = if nanos { 0xa1b2_3c4d } else { 0xa1b2_c3d4 };
        let mut v = Vec::new();
        v.extend(u32b(magic, be));
        v.extend(u16b(2, be));
        v.extend(u16b(4, be));
        v.extend(u32b(0, be));
        v.extend(u32b(0, be));
        v.extend(u32b(65535, be));
        v.extend(u32b(link, be));
        for (s, f, d, orig) in recs {
            v.extend(u32b(*s, be));
            v.extend(u32b(*f, be));
            v.extend(u32b(d.len() as u32, be));
            v.extend(u32b(*orig, be));
            v.extend_from_slice(d);
        }
        v
    }

    fn block(ty: u32, body: &[u8], be: bool) -> Vec<u8> {
        let mut body = body.to_vec();
        while !body.len().is_multiple_of(4) {
            body.push(0);
        }
        let len = body.len() as u32 + 12;
        let mut v = Vec::new();
        v.extend(u32b(ty, be));
        v.extend(u32b(len, be));
        v.extend(body);
        v.extend(u32b(len, be));
        v
    }

    fn shb(be: bool) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(u32b(PCAPNG_BOM, be));
        b.extend(u16b(1, be));
        b.extend(u16b(0, be));
        b.extend([0xff; 8]);
        block(PCAPNG_SHB, &b, be)
    }

    fn idb(link: u16, snaplen: u32, tsresol: Option<u8>, be: bool) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(u16b(link, be));
        b.extend(u16b(0, be));
        b.extend(u32b(snaplen, be));
        if let Some(r) = tsresol {
            b.extend(u16b(9, be));
            b.extend(u16b(1, be));
            b.extend([r, 0, 0, 0]);
            b.extend([0; 4]); // opt_endofopt
        }
        block(1, &b, be)
    }

    fn epb(if_id: u32, ts: u64, data: &[u8], orig: u32, be: bool) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(u32b(if_id, be));
        b.extend(u32b((ts >> 32) as u32, be));
        b.extend(u32b(ts as u32, be));
        b.extend(u32b(data.len() as u32, be));
        b.extend(u32b(orig, be));
        b.extend_from_slice(data);
        block(6, &b, be)
    }

    /// The obsolete Packet Block (type 2).
    fn pb(if_id: u16, ts: u64, data: &[u8], orig: u32, be: bool) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(u16b(if_id, be));
        b.extend(u16b(0, be)); // drops
        b.extend(u32b((ts >> 32) as u32, be));
        b.extend(u32b(ts as u32, be));
        b.extend(u32b(data.len() as u32, be));
        b.extend(u32b(orig, be));
        b.extend_from_slice(data);
        block(2, &b, be)
    }

    fn spb(data: &[u8], orig: u32, be: bool) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(u32b(orig, be));
        b.extend_from_slice(data);
        block(3, &b, be)
    }

    /// (ts, link, data, wire_len) of every packet, and the truncation note.
    type Seen = Vec<(i64, u32, Vec<u8>, u32)>;

    fn read_all(bytes: Vec<u8>) -> (Seen, Option<String>) {
        let mut src = FileSource::from_reader("test", Box::new(Cursor::new(bytes))).unwrap();
        let mut out = Vec::new();
        while let Some(ev) = src.next_event().unwrap() {
            if let SourceEvent::Packet(p) = ev {
                out.push((p.ts.as_micros(), p.link.0, p.data.to_vec(), p.wire_len));
            }
        }
        assert_eq!(src.stats().packets, out.len() as u64);
        assert_eq!(src.interface(), "file");
        (out, src.truncation().map(str::to_string))
    }

    #[test]
    fn legacy_pcap_all_variants_read_packets_and_timestamps() {
        for be in [false, true] {
            for nanos in [false, true] {
                let frac = if nanos { 123_456_789 } else { 123_456 };
                let bytes = pcap(
                    be,
                    nanos,
                    113,
                    &[(10, frac, b"abc", 3), (11, 0, b"defg", 100)],
                );
                let (pkts, trunc) = read_all(bytes);
                assert_eq!(trunc, None);
                assert_eq!(pkts.len(), 2, "be={be} nanos={nanos}");
                assert_eq!(pkts[0], (10_123_456, 113, b"abc".to_vec(), 3));
                assert_eq!(pkts[1], (11_000_000, 113, b"defg".to_vec(), 100));
            }
        }
    }

    #[test]
    fn legacy_pcap_record_bigger_than_initial_buffer_grows() {
        let big = vec![7u8; INITIAL_BUFFER + 1000];
        let mut bytes = pcap(
            false,
            false,
            1,
            &[(1, 0, &big, big.len() as u32), (2, 0, b"x", 1)],
        );
        // The file's snaplen allows the big record.
        bytes[16..20].copy_from_slice(&(big.len() as u32).to_le_bytes());
        let (pkts, trunc) = read_all(bytes);
        assert_eq!(trunc, None);
        assert_eq!(pkts.len(), 2);
        assert_eq!(pkts[0].2.len(), big.len());
    }

    #[test]
    fn many_records_cross_buffer_boundaries() {
        let data = vec![1u8; 1500];
        let recs: Vec<_> = (0..2000).map(|i| (i, 0, &data[..], 1500)).collect();
        let (pkts, trunc) = read_all(pcap(false, false, 1, &recs));
        assert_eq!(trunc, None);
        assert_eq!(pkts.len(), 2000);
        assert_eq!(pkts[1999].0, 1_999_000_000);
    }

    #[test]
    fn pcapng_interfaces_have_own_link_and_resolution() {
        for be in [false, true] {
            let mut bytes = shb(be);
            bytes.extend(idb(1, 65535, None, be)); // µs
            bytes.extend(idb(113, 65535, Some(9), be)); // ns
            bytes.extend(idb(101, 65535, Some(0x80 | 20), be)); // 2^-20 s
            bytes.extend(block(0x0000_0004, &[0; 8], be)); // name resolution: skipped
            bytes.extend(epb(0, 5_000_001, b"one", 3, be));
            bytes.extend(epb(1, 7_000_000_123, b"two!", 60, be));
            bytes.extend(epb(2, 3 << 20 | 1 << 19, b"three", 5, be));
            bytes.extend(block(0x1234_5678, &[1, 2, 3, 4], be)); // unknown block
            bytes.extend(spb(b"simple", 6, be));
            let (pkts, trunc) = read_all(bytes);
            assert_eq!(trunc, None);
            assert_eq!(
                pkts,
                vec![
                    (5_000_001, 1, b"one".to_vec(), 3),
                    (7_000_000, 113, b"two!".to_vec(), 60),
                    (3_500_000, 101, b"three".to_vec(), 5),
                    (3_500_000, 1, b"simple".to_vec(), 6),
                ],
                "be={be}"
            );
        }
    }

    /// A reader that hands out at most 7 bytes per read, like a slow pipe.
    struct Trickle(Cursor<Vec<u8>>, usize);

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.1 = self.1 % 7 + 1;
            let n = buf.len().min(self.1);
            self.0.read(&mut buf[..n])
        }
    }

    #[test]
    fn slow_reader_delivers_every_record() {
        let data = vec![3u8; 300];
        let recs: Vec<_> = (0..50).map(|i| (i, 0, &data[..], 300)).collect();
        let mut ng = shb(true);
        ng.extend(idb(1, 0, None, true));
        for i in 0..50 {
            ng.extend(epb(0, i, &data, 300, true));
        }
        for bytes in [pcap(true, false, 1, &recs), ng] {
            let trickle = Trickle(Cursor::new(bytes), 0);
            let mut src = FileSource::from_reader("slow", Box::new(trickle)).unwrap();
            let mut n = 0;
            while let Some(SourceEvent::Packet(p)) = src.next_event().unwrap() {
                assert_eq!(p.data, &data[..]);
                n += 1;
            }
            assert_eq!(n, 50);
            assert_eq!(src.truncation(), None);
        }
    }

    #[test]
    fn pcapng_new_section_forgets_interfaces() {
        let mut bytes = shb(false);
        bytes.extend(idb(1, 0, None, false));
        bytes.extend(epb(0, 1, b"a", 1, false));
        bytes.extend(shb(true));
        bytes.extend(epb(0, 1, b"orphan", 6, true));
        bytes.extend(idb(276, 0, None, true));
        bytes.extend(epb(0, 2, b"b", 1, true));
        let (pkts, trunc) = read_all(bytes);
        assert_eq!(trunc, None);
        assert_eq!(pkts.iter().map(|p| p.1).collect::<Vec<_>>(), vec![1, 276]);
    }

    #[test]
    fn truncated_files_stop_with_a_note() {
        let full = pcap(
            false,
            false,
            1,
            &[(1, 0, b"hello", 5), (2, 0, b"world!", 6)],
        );
        // Cut inside the second record's data, and inside its header.
        for cut in [full.len() - 2, full.len() - 8] {
            let (pkts, trunc) = read_all(full[..cut].to_vec());
            assert_eq!(pkts.len(), 1);
            let note = trunc.expect("truncation note");
            assert!(note.contains("after 1 packets"), "{note}");
        }
        let mut ng = shb(false);
        ng.extend(idb(1, 0, None, false));
        ng.extend(epb(0, 1, b"abcd", 4, false));
        ng.extend(epb(0, 1, b"efgh", 4, false));
        let (pkts, trunc) = read_all(ng[..ng.len() - 3].to_vec());
        assert_eq!(pkts.len(), 1);
        assert!(trunc.unwrap().contains("middle of a record"));
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(bytes).unwrap();
        z.finish().unwrap()
    }

    fn zstd(bytes: &[u8]) -> Vec<u8> {
        zstd::encode_all(bytes, 1).unwrap()
    }

    /// A capture of 2,000 records, as written and as `compress` writes it:
    /// whole, and in two members (or frames) split mid-record, as
    /// concatenated archives and parallel compressors write them.
    #[test]
    fn gzip_and_zstd_captures_read_as_the_plain_file() {
        let data: Vec<u8> = (0..1500u32).map(|i| (i * 7 % 251) as u8).collect();
        let recs: Vec<_> = (0..2000).map(|i| (i, 0, &data[..], 1500)).collect();
        let plain = pcap(false, false, 1, &recs);
        let (want, none) = read_all(plain.clone());
        assert_eq!((want.len(), none), (2000, None));
        let split = plain.len() / 2 + 3;
        for compress in [gzip as fn(&[u8]) -> Vec<u8>, zstd] {
            let whole = compress(&plain);
            assert_ne!(whole[..4], plain[..4]);
            let mut two = compress(&plain[..split]);
            two.extend(compress(&plain[split..]));
            for bytes in [whole, two] {
                let (got, trunc) = read_all(bytes);
                assert_eq!(trunc, None);
                assert!(got == want, "{} of {} packets", got.len(), want.len());
            }
        }
    }

    /// A compressed capture cut short, or corrupt, ends as a cut plain
    /// file does (what came before is read) and the note says why.
    #[test]
    fn a_cut_or_corrupt_archive_stops_with_a_note_after_what_it_held() {
        // Bytes without repeats: a flipped bit below must change them (in
        // a run of one byte it can move a match to an equal one).
        let mut x = 0x9e37_79b9_u32;
        let data: Vec<u8> = (0..1000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let recs: Vec<_> = (0..3000).map(|i| (i, 0, &data[..], 1000)).collect();
        let plain = pcap(false, false, 1, &recs);
        for (name, compress) in [("gzip", gzip as fn(&[u8]) -> Vec<u8>), ("zstd", zstd)] {
            let whole = compress(&plain);
            let (pkts, trunc) = read_all(whole[..whole.len() * 2 / 3].to_vec());
            assert!((1..3000).contains(&pkts.len()), "{name}: {}", pkts.len());
            let note = trunc.expect("a note");
            assert!(
                note.contains(&format!("the {name} stream is cut short or corrupt"))
                    && note.contains("bytes decompressed"),
                "{note}"
            );
        }
        // Only gzip's trailer (checksum and length) is gone: every record
        // is read, and the stream is still not whole.
        let whole = gzip(&plain);
        let (pkts, trunc) = read_all(whole[..whole.len() - 4].to_vec());
        assert_eq!(pkts.len(), 3000);
        assert!(trunc.is_some_and(|n| n.contains("gzip stream")));
        // A flipped bit: never read as whole (the records it garbles, the
        // deflate stream or, at the end, gzip's checksum stop it).
        let mut bad = gzip(&plain);
        let at = bad.len() / 2;
        bad[at] ^= 0x10;
        let (pkts, trunc) = read_all(bad);
        assert!(trunc.is_some(), "{} packets", pkts.len());
    }

    /// Compressions apitap does not read are named, with the command that
    /// reads them; a compressed file inside a compressed file is not a
    /// capture (one layer is taken off, never more: a stream that
    /// decompresses to itself must not loop).
    #[test]
    fn other_compressions_are_named_and_one_layer_is_taken_off() {
        for (magic, how, tool) in [
            (&[0xfd, b'7', b'z', b'X', b'Z', 0][..], "xz", "xzcat"),
            (b"BZh9", "bzip2", "bzcat"),
            (&[0x04, 0x22, 0x4d, 0x18], "lz4", "lz4cat"),
        ] {
            let mut bytes = magic.to_vec();
            bytes.extend([0; 32]);
            let err =
                FileSource::from_reader("f.pcap.x", Box::new(Cursor::new(bytes))).unwrap_err();
            assert!(
                matches!(&err, CaptureError::Compressed { how: h, tool: t, .. } if *h == how && *t == tool),
                "{err}"
            );
            assert!(err
                .to_string()
                .contains(&format!("{tool} f.pcap.x | apitap -r -")));
        }
        let plain = pcap(false, false, 1, &[(1, 0, b"x", 1)]);
        let twice = gzip(&gzip(&plain));
        let err = FileSource::from_reader("g", Box::new(Cursor::new(twice))).unwrap_err();
        assert!(
            matches!(err, CaptureError::NotACaptureInside { how: "gzip", .. }),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "g is gzip-compressed, but what it holds is not a pcap or pcapng capture file"
        );
    }

    #[test]
    fn a_compressed_stream_broken_before_the_capture_header_says_why() {
        let plain = pcap(false, false, 1, &[(1, 0, b"x", 1)]);
        let mut bad_header = gzip(&plain);
        bad_header[3] = 0xe0; // reserved flag bits
        let cut = gzip(&plain)[..14].to_vec();
        let mut bad_zstd = vec![0x28, 0xb5, 0x2f, 0xfd];
        bad_zstd.extend(b"not a frame at all");
        for (bytes, how, reason) in [
            (bad_header, "gzip", "invalid gzip header"),
            (cut, "gzip", ""),
            (bad_zstd, "zstd", ""),
        ] {
            let err = FileSource::from_reader("z", Box::new(Cursor::new(bytes))).unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, CaptureError::Read { .. }), "{text}");
            assert!(
                text.starts_with(&format!(
                    "error reading z: the {how} stream is cut short or corrupt ("
                )),
                "{text}"
            );
            assert!(text.contains(reason), "{text}");
        }
    }

    #[test]
    fn corrupt_record_lengths_stop_with_a_note() {
        let mut bytes = pcap(false, false, 1, &[(1, 0, b"ok", 2)]);
        // A record header claiming 3 GiB.
        bytes.extend([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xc0, 0, 0, 0, 0]);
        bytes.extend([0u8; 100]);
        let (pkts, trunc) = read_all(bytes);
        assert_eq!(pkts.len(), 1);
        assert!(trunc.unwrap().contains("corrupt"));

        // pcapng EPB whose caplen is bigger than its block.
        let mut ng = shb(false);
        ng.extend(idb(1, 0, None, false));
        let mut bad = epb(0, 1, b"abcdefgh", 8, false);
        bad[20..24].copy_from_slice(&1000u32.to_le_bytes());
        ng.extend(bad);
        ng.extend(vec![0u8; 4000]);
        let (pkts, trunc) = read_all(ng);
        assert_eq!(pkts.len(), 0);
        assert!(trunc.is_some());
    }

    /// A pcapng block whose framing holds (its length in the file, a
    /// multiple of 4, repeated in its trailer) but whose body does not parse
    /// is skipped and counted, and the packets after it are read, as
    /// libpcap reads them; a block whose trailer disagrees stops the file.
    #[test]
    fn pcapng_blocks_that_do_not_parse_are_skipped_when_framed() {
        for be in [false, true] {
            let mut ng = shb(be);
            ng.extend(idb(1, 0, None, be));
            ng.extend(epb(0, 1, b"one", 3, be));
            // A name resolution record (IPv4) longer than its block.
            let mut nrb = u16b(1, be).to_vec();
            nrb.extend(u16b(200, be));
            nrb.extend([10, 0, 0, 1]);
            ng.extend(block(4, &nrb, be));
            // A packet block whose caplen is bigger than the block.
            let mut bad = epb(0, 2, b"abcdefgh", 8, be);
            bad[20..24].copy_from_slice(&u32b(1000, be));
            ng.extend(bad);
            ng.extend(epb(0, 3, b"two", 3, be));
            let mut broken = epb(0, 4, b"three", 5, be);
            let n = broken.len();
            broken[n - 4..].copy_from_slice(&u32b(n as u32 + 4, be));
            ng.extend(broken);
            ng.extend(epb(0, 5, b"lost", 4, be));

            let mut src = FileSource::from_reader("test", Box::new(Cursor::new(ng))).unwrap();
            let mut data = Vec::new();
            while let Some(SourceEvent::Packet(p)) = src.next_event().unwrap() {
                data.push(p.data.to_vec());
            }
            assert_eq!(data, [b"one".to_vec(), b"two".to_vec()], "big endian {be}");
            assert_eq!(src.stats().corrupt_blocks, 2, "big endian {be}");
            assert!(src.truncation().is_some(), "big endian {be}");
        }
    }

    /// Old writers' Packet Blocks are packets, read like Enhanced ones
    /// (libpcap and Wireshark read them too).
    #[test]
    fn pcapng_obsolete_packet_blocks_are_packets() {
        for be in [false, true] {
            let mut ng = shb(be);
            ng.extend(idb(1, 0, None, be));
            ng.extend(idb(113, 0, Some(9), be));
            ng.extend(pb(0, 1_700_000_000_123_456, b"abc", 60, be));
            ng.extend(pb(1, 1_700_000_000_123_456_789, b"defgh", 5, be));
            ng.extend(pb(7, 1, b"orphan", 6, be));
            let (pkts, trunc) = read_all(ng);
            assert_eq!(trunc, None);
            assert_eq!(
                pkts,
                vec![
                    (1_700_000_000_123_456, 1, b"abc".to_vec(), 60),
                    (1_700_000_000_123_456, 113, b"defgh".to_vec(), 5),
                ],
                "big endian {be}"
            );
        }
    }

    #[test]
    fn garbage_and_empty_inputs_are_not_captures() {
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            vec![0xd4, 0xc3, 0xb2],
            vec![0x0a, 0x0d, 0x0d, 0x0a, 0, 0, 0, 0, 1, 2, 3, 4],
        ];
        for c in cases {
            let r = FileSource::from_reader("g", Box::new(Cursor::new(c.clone())));
            assert!(matches!(r, Err(CaptureError::NotACapture { .. })), "{c:?}");
        }
        assert!(matches!(
            FileSource::open("/nonexistent/x.pcap"),
            Err(CaptureError::Open { .. })
        ));
    }

    #[test]
    fn random_bytes_after_valid_header_never_panic() {
        let mut seed = 0x1234_5678_u64;
        for len in (0..400).step_by(7) {
            let mut bytes = pcap(false, false, 1, &[]);
            let mut ng = shb(false);
            ng.extend(idb(1, 0, None, false));
            for _ in 0..len {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                bytes.push((seed >> 56) as u8);
                ng.push((seed >> 48) as u8);
            }
            let _ = read_all(bytes);
            let _ = read_all(ng);
        }
    }

    /// Reads every corpus capture when `APITAP_CORPUS` names the folder.
    #[test]
    fn corpus_packet_counts_match_manifest() {
        let Ok(dir) = std::env::var("APITAP_CORPUS") else {
            eprintln!("APITAP_CORPUS not set: skipping");
            return;
        };
        let manifest = std::fs::read_to_string(format!("{dir}/MANIFEST.jsonl")).unwrap();
        let mut checked = 0;
        for line in manifest.lines().filter(|l| !l.trim().is_empty()) {
            let rec: serde_json::Value = serde_json::from_str(line).unwrap();
            let file = rec["file"].as_str().unwrap();
            let want = rec["packets"].as_u64().unwrap();
            let mut src = FileSource::open(&format!("{dir}/{file}")).unwrap();
            let mut n = 0u64;
            while let Some(ev) = src.next_event().unwrap() {
                if matches!(ev, SourceEvent::Packet(_)) {
                    n += 1;
                }
            }
            assert_eq!(n, want, "{file}: {:?}", src.truncation());
            checked += 1;
        }
        assert!(checked > 0);
    }
}
