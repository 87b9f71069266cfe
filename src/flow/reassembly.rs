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
