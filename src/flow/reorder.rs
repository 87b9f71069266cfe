//! Segments held back for the other direction of their connection.
//!
//! Contract: a capture may show a segment before one its sender had
//! already received from the other side (a response before its request,
//! when two tap ports or a mirror port merge the directions with a little
//! skew). A data segment that acknowledges bytes of the other direction the
//! capture has not shown yet is held here, copied, for its connection's
//! next segments: one of the other side's that carries the first byte it
//! waited for goes first, then the held one; bare ACKs of the other side's
//! pass and it waits on; anything else (its own side's next segment, the
//! other side's data past that byte, a FIN or RST, a sweep, the end of the
//! capture) lets it go first, at its own time, as the capture had it. A
//! side whose held segment went on without what it waited for holds no more
//! until the other side shows data (that side may not be captured at all:
//! no copy per segment then). At most [`MAX_HELD`] segments are held at
//! once, over all connections (past it, none is): bounded memory, counted by
//! the table, and nothing done on a capture in causal order.

use super::FlowKey;
use crate::clock::Timestamp;
use crate::decode::TcpSegment;

/// Most segments held at once, over all connections.
pub const MAX_HELD: usize = 64;

/// A segment held, with the key of its connection.
pub struct Held {
    pub key: FlowKey,
    /// The capture time it came at.
    pub now: Timestamp,
    /// The first byte of the other direction it acknowledged unseen.
    awaited: u32,
    /// The segment but its payload (empty here), which `payload` holds.
    pub head: TcpSegment<'static>,
    payload: Vec<u8>,
}

impl Held {
    pub fn of(key: FlowKey, seg: &TcpSegment<'_>, now: Timestamp, awaited: u32) -> Self {
        Held {
            key,
            now,
            awaited,
            head: TcpSegment {
                payload: &[],
                ..*seg
            },
            payload: seg.payload.to_vec(),
        }
    }

    pub fn segment(&self) -> TcpSegment<'_> {
        TcpSegment {
            payload: &self.payload,
            ..self.head
        }
    }

    /// Whether `seg` (of the other direction) carries the byte awaited.
    pub fn filled_by(&self, seg: &TcpSegment<'_>) -> bool {
        let len = (seg.payload.len() as u32).wrapping_add(seg.missing);
        len > 0 && self.awaited.wrapping_sub(seg.seq) < len
    }

    /// Heap bytes and the record itself, for the memory account.
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Held>() + self.payload.capacity() + super::ALLOC_OVERHEAD
    }
}
