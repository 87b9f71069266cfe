//! One direction of a TCP connection, put back in order.
//!
//! Contract: [`Reassembler`] takes the segments of one direction in capture
//! order and emits [`StreamEvent`]s in stream order: in-order data (borrowed
//! straight from the segment on the fast path, from its own buffer only for
//! data that arrived out of order), gaps for bytes that will never arrive
//! (with their length, so parsers can skip bodies by length), and the end of
//! the direction (FIN or RST). Retransmitted and overlapping bytes are
//! delivered once, first copy wins; conflicting overlaps are counted.
//! Sequence numbers wrap. Memory is bounded by [`StreamLimits`].
//!
//! Loss is judged by what never arrives, not by the first sign of a hole:
//! a hole is declared a gap only when the peer has acknowledged past it and
//! the reorder allowance has passed, when the out-of-order buffer is full, or
//! when the direction ends or is flushed.

use crate::clock::Timestamp;

/// In-order bytes of one direction, with where and when they were seen.
#[derive(Clone, Copy, Debug)]
pub struct Chunk<'a> {
    /// Sequence number of `data[0]`.
    pub seq: u32,
    /// The ACK field of the segment that carried these bytes (what this
    /// side had received of the other direction when it sent them).
    pub ack: u32,
    /// Capture time of the segment that carried these bytes.
    pub ts: Timestamp,
    pub data: &'a [u8],
}

#[derive(Clone, Copy, Debug)]
pub enum StreamEvent<'a> {
    Data(Chunk<'a>),
    /// `len` bytes starting at `seq` were lost; the stream goes on after them.
    Gap {
        seq: u32,
        len: u32,
        ts: Timestamp,
    },
    /// The direction ended cleanly (FIN, in order).
    Fin {
        ts: Timestamp,
    },
    /// A RST was seen for this direction.
    Reset {
        ts: Timestamp,
    },
}

/// Bounds for one direction's out-of-order buffer.
#[derive(Clone, Copy, Debug)]
pub struct StreamLimits {
    /// Most bytes held out of order; past it the oldest hole becomes a gap.
    pub max_buffered_bytes: usize,
    /// Most segments held out of order.
    pub max_buffered_segments: usize,
    /// How many further segments (either direction) a hole may wait after the
    /// peer acknowledged past it, before it is declared lost. Mirror ports
    /// reorder ACKs ahead of data; this is the allowance for that.
    pub ack_reorder_allowance: u32,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            max_buffered_bytes: 256 * 1024,
            max_buffered_segments: 256,
            ack_reorder_allowance: 16,
        }
    }
}

/// Counters a [`Reassembler`] keeps; the flow table sums them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Bytes declared lost (sum of `Gap` lengths).
    pub missing_bytes: u64,
    pub gaps: u64,
    /// Bytes received again that had already been delivered or buffered.
    pub duplicate_bytes: u64,
    /// Overlapping bytes whose content differed from the first copy.
    pub conflicting_overlap_bytes: u64,
    /// Segments that arrived ahead of a hole and were buffered.
    pub out_of_order_segments: u64,
}

// TEMPORARY STUB (replaced by the reassembler branch).
#[derive(Debug, Default)]
pub struct Reassembler {
    stats: StreamStats,
}
#[allow(clippy::too_many_arguments, unused_variables)]
impl Reassembler {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn segment<'a>(
        &mut self,
        seq: u32,
        ack: u32,
        ts: Timestamp,
        syn: bool,
        fin: bool,
        rst: bool,
        payload: &'a [u8],
        missing: u32,
        limits: &StreamLimits,
        out: &mut impl FnMut(StreamEvent<'_>),
    ) {
        unimplemented!()
    }
    pub fn peer_ack(
        &mut self,
        ack: u32,
        ts: Timestamp,
        limits: &StreamLimits,
        out: &mut impl FnMut(StreamEvent<'_>),
    ) {
    }
    pub fn tick(
        &mut self,
        ts: Timestamp,
        limits: &StreamLimits,
        out: &mut impl FnMut(StreamEvent<'_>),
    ) {
    }
    pub fn flush(&mut self, ts: Timestamp, out: &mut impl FnMut(StreamEvent<'_>)) {}
    pub fn buffered_bytes(&self) -> usize {
        0
    }
    pub fn stats(&self) -> &StreamStats {
        &self.stats
    }
    pub fn next_seq(&self) -> Option<u32> {
        None
    }
    pub fn is_closed(&self) -> bool {
        false
    }
}
