//! Packet sources: capture files (pcap, pcapng) and live interfaces (libpcap).
//!
//! Contract: a [`PacketSource`] yields [`SourceEvent`]s in capture order. A
//! packet borrows the source's buffer until the next call (a lending
//! iterator), so the file path copies nothing. Live sources also yield
//! [`SourceEvent::Tick`] carrying the wall clock when no packet arrived for a
//! while, so timeouts fire on a quiet link. Sources never interpret bytes
//! above the link layer: that is `decode`'s job.
//!
//! A live source also hands out a [`DropReader`]: its drop counters, read
//! from any thread at any time (a scrape) without touching the handle the
//! capture thread is using.

pub mod bpf;
pub mod file;
pub mod live;
pub mod mapped;
pub mod replay;

use crate::clock::Timestamp;
use std::sync::Arc;

/// A LINKTYPE_* value as found in pcap/pcapng headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkType(pub u32);

impl LinkType {
    pub const NULL: LinkType = LinkType(0);
    pub const ETHERNET: LinkType = LinkType(1);
    pub const RAW: LinkType = LinkType(101);
    pub const CHDLC: LinkType = LinkType(104);
    pub const IEEE802_11: LinkType = LinkType(105);
    pub const LOOP: LinkType = LinkType(108);
    pub const LINUX_SLL: LinkType = LinkType(113);
    pub const IEEE802_11_RADIOTAP: LinkType = LinkType(127);
    pub const IPV4: LinkType = LinkType(228);
    pub const IPV6: LinkType = LinkType(229);
    pub const NFLOG: LinkType = LinkType(239);
    pub const LINUX_SLL2: LinkType = LinkType(276);

    /// A short human name for reports.
    pub fn name(self) -> &'static str {
        match self.0 {
            0 => "null",
            1 => "ethernet",
            101 => "raw-ip",
            104 => "cisco-hdlc",
            105 => "ieee802.11",
            108 => "loop",
            113 => "linux-sll",
            127 => "ieee802.11-radiotap",
            228 => "ipv4",
            229 => "ipv6",
            239 => "nflog",
            276 => "linux-sll2",
            _ => "unknown",
        }
    }
}

/// Bytes a source's packets borrow from that other threads may read too
/// (the mapped capture file), so packets can be handed on by offset.
pub type Backing = std::sync::Arc<dyn AsRef<[u8]> + Send + Sync>;

/// One captured frame, borrowed from the source.
#[derive(Clone, Copy, Debug)]
pub struct RawPacket<'a> {
    pub ts: Timestamp,
    pub link: LinkType,
    /// Captured bytes (possibly fewer than `wire_len` when cut by snaplen).
    pub data: &'a [u8],
    /// Length of the frame on the wire.
    pub wire_len: u32,
}

#[derive(Debug)]
pub enum SourceEvent<'a> {
    Packet(RawPacket<'a>),
    /// Live mode only: no packet for a while; the wall clock now.
    Tick(Timestamp),
}

/// Counters a source keeps about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceStats {
    pub packets: u64,
    pub bytes: u64,
    /// Live: frames the kernel dropped because the capture buffer was full
    /// ([`DropCounts::kernel`]).
    pub dropped: u64,
    /// Live: frames the interface could not deliver
    /// ([`DropCounts::interface`]).
    pub if_dropped: u64,
    /// Files: pcapng blocks skipped whole because their body could not be
    /// read although their framing (length, trailer) was intact.
    pub corrupt_blocks: u64,
}

/// A live capture handle's drops, cumulative since it was opened (what
/// libpcap's `ps_drop` and `ps_ifdrop` mean on Linux).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropCounts {
    /// Frames the kernel dropped for this handle because its capture buffer
    /// was full (apitap did not read fast enough). Per handle: several
    /// handles' counts add up.
    pub kernel: u64,
    /// Frames the interface itself could not deliver to the host (its
    /// `rx_missed_errors + rx_fifo_errors`). Per interface: handles on the
    /// same interface each report the same loss.
    pub interface: u64,
}

/// Reads a live handle's [`DropCounts`] from any thread.
///
/// Contract: `read` is cheap enough for every scrape (a few system calls,
/// no waiting on the capture thread) and never returns less than an
/// earlier reading. After the source is closed it keeps returning the last
/// counts.
pub trait DropReader: Send + Sync {
    /// The interface the counts are about (the `interface` label).
    fn interface(&self) -> &str;
    fn read(&self) -> DropCounts;
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is {how}-compressed, which apitap does not read itself (it reads gzip and zstd); try `{tool} {path} | apitap -r -`")]
    Compressed {
        path: String,
        how: &'static str,
        tool: &'static str,
    },
    #[error("{path} is not a pcap or pcapng capture file")]
    NotACapture { path: String },
    #[error("{path} is {how}-compressed, but what it holds is not a pcap or pcapng capture file")]
    NotACaptureInside { path: String, how: &'static str },
    #[error("error reading {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{0}")]
    Live(String),
}

pub trait PacketSource {
    /// The next event, or `Ok(None)` at the end of a file (or when stopped).
    fn next_event(&mut self) -> Result<Option<SourceEvent<'_>>, CaptureError>;
    /// The interface name (live) or a label (`file`) for metrics.
    fn interface(&self) -> &str;
    fn stats(&self) -> SourceStats;
    /// Live sources: the drop counters, for the metrics to read at scrape
    /// time. Files have none.
    fn drop_reader(&self) -> Option<Arc<dyn DropReader>> {
        None
    }
    /// Every drop reader of the source (several handles: several readers).
    fn drop_readers(&self) -> Vec<Arc<dyn DropReader>> {
        self.drop_reader().into_iter().collect()
    }
    /// For files: set when the file ended in the middle of a record; the text
    /// says where. Processing of everything before it went on.
    fn truncation(&self) -> Option<&str> {
        None
    }
    /// What every packet's bytes lie in, when that is one shared buffer
    /// for the whole run (a mapped file), and what keeps the pages that
    /// other threads still read mapped; `None` otherwise.
    fn backing(&self) -> Option<(Backing, mapped::Hold)> {
        None
    }
    /// Whether this is a file read as it is written (a pipe or FIFO):
    /// its outputs are flushed as they come, as a live capture's are.
    fn streamed(&self) -> bool {
        false
    }
}
