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
//!
//! # Events
//!
//! Every byte position from the stream start up to the last event is covered
//! exactly once, in order, by either a `Data` chunk or a `Gap`. After that
//! comes at most one `Fin` (only once the FIN's position is reached in order,
//! or on [`Reassembler::flush`], which declares the holes before it) and at
//! most one `Reset`. A `Reset` may follow a `Fin`; nothing else follows
//! either.
//!
//! # Where the stream starts
//!
//! With a SYN, at ISN + 1 (data carried in the SYN, TCP Fast Open, is
//! delivered). Without one (the capture began mid-connection, or lost the
//! SYN) at whichever comes first: the first segment that carries payload,
//! or the other direction's first acknowledgement ([`Reassembler::peer_ack`]:
//! the peer had every byte before it). Bytes before the start that arrive
//! later count as duplicates, and segments without payload seen before it
//! (pure ACKs, a lone FIN) are ignored. Starting at the peer's
//! acknowledgement is what makes loss visible in a direction the capture
//! holds none of (asymmetric routing, a one-way SPAN port): the peer's
//! later acknowledgements of bytes never seen become gaps. An
//! acknowledgement is weaker evidence than the direction's own bytes: until
//! something was placed or declared, this direction's SYN, or a payload
//! farther than [`SEQ_WINDOW`] from it, sets the start instead. (Picked up
//! mid-connection, an acknowledgement captured ahead of the data it
//! acknowledges starts the stream after that data, as if the capture had
//! begun a segment later.)
//!
//! # Loss policy
//!
//! A hole is always at [`Reassembler::next_seq`]. It becomes a `Gap` when:
//!
//! - (acknowledged) [`Reassembler::peer_ack`] saw the other direction
//!   acknowledge past `next_seq`, and then `ack_reorder_allowance` further
//!   calls to [`Reassembler::tick`] passed without the hole filling, or a
//!   tick came `ack_reorder_micros` of capture time after the count began. The gap
//!   then covers the holes up to the acknowledgement that armed the count;
//!   if later acknowledgements reach further, a fresh count starts for them
//!   (so no hole is declared before it has had the full allowance), its
//!   time counted from the furthest one. When
//!   nothing is buffered, the acknowledged tail we never saw is declared the
//!   same way, except a single byte: that is the peer acknowledging a FIN we
//!   have not seen yet, not data.
//! - (buffer full) keeping a segment would exceed `max_buffered_bytes` or
//!   `max_buffered_segments`: the first hole is declared and what follows it
//!   is delivered, until the segment fits (or is itself in order).
//! - (snaplen) a segment says `missing > 0`: those bytes never come in this
//!   capture, so the gap follows its captured bytes at once (in stream order:
//!   immediately when in order, when it is reached if buffered).
//! - (end) [`Reassembler::flush`], or a RST.
//!
//! Bytes that arrive after their hole was declared are duplicates.
//!
//! A segment that carries data and acknowledges past a hole of the other
//! direction makes that hole a gap at once ([`Reassembler::declare_before`]):
//! the peer had those bytes before it sent the data, so they are read first
//! or declared lost, never read after it.
//!
//! A connection that goes quiet gets no ticks: a sweep that finds it due
//! calls [`Reassembler::declare_overdue`], which declares every hole (before
//! held bytes or acknowledgements) once the connection has been quiet for
//! `ack_reorder_micros` (a response lost, or held behind a hole, before a
//! keep-alive connection went idle is then read before its request would
//! time out; captures that hold no ACKs have nothing else to go by).
//!
//! Per packet of the connection the caller first feeds the segment to its
//! direction ([`Reassembler::segment`]) and its ACK to the other direction
//! ([`Reassembler::peer_ack`]), then calls [`Reassembler::tick`] on both, so
//! the packet that carries an acknowledgement does not count against its own
//! allowance.
//!
//! # RST
//!
//! A RST in the window ends the direction: what is buffered out of order is
//! delivered first (the sender did send it, and a parser gets more from a
//! truncated body than from none), with its holes declared as gaps (and a
//! `Fin` if that reaches a FIN seen out of order), and so is the
//! acknowledged tail (the peer had it); then `Reset`. A RST before the
//! stream start (a refused connection) still emits `Reset`. Payload in a RST
//! is ignored.
//!
//! # Garbage
//!
//! Segments and acknowledgements farther than [`SEQ_WINDOW`] from
//! `next_seq` (either way) are counted in `garbage_segments` and dropped
//! without allocating.
//!
//! # Memory
//!
//! Idle, a [`Reassembler`] is 24 bytes and owns no heap memory. The first
//! thing that arrives out of order (data ahead of a hole, an ACK ahead of the
//! data, a FIN ahead of the data) allocates one small side structure; it is
//! freed again when nothing is pending. The counters ([`StreamStats`]) are
//! allocated at the first thing counted (most directions count nothing)
//! and kept to the end. A byte that arrives out of order is
//! copied once into that buffer; in-order bytes are never copied. Held
//! captured bytes never exceed `max_buffered_bytes`, held pieces never exceed
//! `max_buffered_segments`.

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
    /// `truncated`: snaplen cut them from segments the capture holds: no
    /// segment of the stream was lost there, only its bytes.
    Gap {
        seq: u32,
        len: u32,
        ts: Timestamp,
        truncated: bool,
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
    /// … and how much capture time, whichever runs out first (checked at
    /// the connection's next segment): on a quiet connection sixteen
    /// segments can take minutes, and what waits behind the hole (a
    /// response) would come after its request had timed out.
    pub ack_reorder_micros: i64,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            max_buffered_bytes: 256 * 1024,
            max_buffered_segments: 256,
            ack_reorder_allowance: 16,
            ack_reorder_micros: 1_000_000,
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
    /// Segments and acknowledgements dropped because their sequence number
    /// was wildly outside the window (see [`SEQ_WINDOW`]).
    pub garbage_segments: u64,
}

impl StreamStats {
    pub fn merge(&mut self, o: &StreamStats) {
        self.missing_bytes += o.missing_bytes;
        self.gaps += o.gaps;
        self.duplicate_bytes += o.duplicate_bytes;
        self.conflicting_overlap_bytes += o.conflicting_overlap_bytes;
        self.out_of_order_segments += o.out_of_order_segments;
        self.garbage_segments += o.garbage_segments;
    }
}

/// How far (either way) from the next expected byte a sequence or
/// acknowledgement number may be before it is treated as garbage. Real
/// windows are far smaller (at most 1 GiB with the largest window scale), so
/// anything beyond is a corrupt or unrelated segment.
pub const SEQ_WINDOW: u32 = 1 << 30;

/// `a` comes before `b` in sequence space (RFC 793 modular comparison).
#[inline]
pub(super) fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

#[inline]
fn seq_le(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) <= 0
}

#[inline]
fn seq_min(a: u32, b: u32) -> u32 {
    if seq_lt(a, b) {
        a
    } else {
        b
    }
}

#[inline]
fn seq_max(a: u32, b: u32) -> u32 {
    if seq_lt(a, b) {
        b
    } else {
        a
    }
}

/// `|a - b|` in sequence space is below [`SEQ_WINDOW`].
#[inline]
fn seq_near(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32).unsigned_abs() < SEQ_WINDOW
}

/// Where a direction is in its life. The whole transition table:
///
/// | from                      | on                                  | to         |
/// |---------------------------|-------------------------------------|------------|
/// | `Unstarted`               | SYN, a segment with payload, or the peer's acknowledgement | `Open` |
/// | `Open`                    | FIN position reached (in order, by a declared gap, or on flush) | `Finished` |
/// | `Unstarted`, `Open`, `Finished` | RST (in the window once started) | `Reset` |
///
/// Anything else leaves the phase as it is. `Finished` ignores data,
/// acknowledgements, ticks and flushes; `Reset` ignores everything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Phase {
    #[default]
    Unstarted,
    Open,
    /// `Fin` was emitted.
    Finished,
    /// `Reset` was emitted.
    Reset,
}

/// A direction's counters, allocated at the first count: kept inline they
/// would be 48 of a tracked connection's bytes per direction, nearly all
/// of them zeros.
type Counters = crate::lazy::Lazy<StreamStats>;

/// What [`Reassembler::stats`] shows before anything was counted.
const NO_COUNTS: StreamStats = StreamStats {
    missing_bytes: 0,
    gaps: 0,
    duplicate_bytes: 0,
    conflicting_overlap_bytes: 0,
    out_of_order_segments: 0,
    garbage_segments: 0,
};

impl Counters {
    /// Add `n` to a counter; nothing is allocated for 0.
    fn add(&mut self, counter: fn(&mut StreamStats) -> &mut u64, n: u64) {
        if n > 0 {
            *counter(self.get()) += n;
        }
    }
}

/// One direction of one connection (see the module doc).
#[derive(Debug, Default)]
pub struct Reassembler {
    stats: Counters,
    /// Out-of-line state, present only while something is pending.
    pending: Option<Box<Pending>>,
    /// The next expected sequence number, valid once not `Unstarted`.
    next: u32,
    phase: Phase,
    /// Started at the peer's acknowledgement and nothing placed or
    /// declared since: this direction's first SYN or payload far from it
    /// (a stale or bogus ACK) sets the start instead.
    from_ack: bool,
}

/// What waits for the stream to catch up.
#[derive(Debug, Default)]
struct Pending {
    /// INVARIANT: sorted by `seq`, non-overlapping, non-empty spans, every
    /// `seq` strictly after `Reassembler::next` (the first hole is at `next`),
    /// every end at or before `fin_seq` when that is known.
    held: Vec<Held>,
    /// Sum of `held[i].data.len()`.
    held_bytes: usize,
    /// Where the FIN sits, when it was seen ahead of `next`.
    fin_seq: Option<u32>,
    /// The peer acknowledged past `next`.
    watch: Option<AckWatch>,
}

/// A run of out-of-order stream positions: captured bytes, then possibly
/// bytes the capture cut off (known lost).
#[derive(Debug)]
struct Held {
    seq: u32,
    /// Span in sequence space; `data.len() <= len`, the rest is known lost.
    len: u32,
    ack: u32,
    ts: Timestamp,
    data: Box<[u8]>,
}

impl Held {
    fn end(&self) -> u32 {
        self.seq.wrapping_add(self.len)
    }
    fn data_end(&self) -> u32 {
        self.seq.wrapping_add(self.data.len() as u32)
    }
}

/// The peer acknowledged bytes we have not seen (see "Loss policy").
#[derive(Clone, Copy, Debug)]
struct AckWatch {
    /// The acknowledgement that started the count; holes before it are
    /// declared when the count runs out.
    armed_at: u32,
    /// The highest acknowledgement seen.
    acked: u32,
    /// Ticks left.
    countdown: u32,
    /// When the count started: when `armed_at` was acknowledged.
    armed_ts: Timestamp,
    /// When `acked` was reached.
    acked_ts: Timestamp,
}

/// The part of a segment still to place: stream positions `[start, end)`,
/// of which `[base, base + payload.len())` were captured.
#[derive(Clone, Copy)]
struct Incoming<'p> {
    base: u32,
    start: u32,
    end: u32,
    payload: &'p [u8],
    ack: u32,
    ts: Timestamp,
}

impl<'p> Incoming<'p> {
    fn data_end(&self) -> u32 {
        self.base.wrapping_add(self.payload.len() as u32)
    }

    /// Captured bytes in `[lo, hi)` (clipped to what was captured).
    fn captured(&self, lo: u32, hi: u32) -> &'p [u8] {
        let lo = seq_max(lo, self.base);
        let hi = seq_min(hi, self.data_end());
        if seq_lt(lo, hi) {
            let a = lo.wrapping_sub(self.base) as usize;
            let b = hi.wrapping_sub(self.base) as usize;
            &self.payload[a..b]
        } else {
            &[]
        }
    }
}

fn emit_gap(
    stats: &mut Counters,
    seq: u32,
    len: u32,
    ts: Timestamp,
    truncated: bool,
    out: &mut impl FnMut(StreamEvent<'_>),
) {
    if len == 0 {
        return;
    }
    let stats = stats.get();
    stats.gaps += 1;
    stats.missing_bytes += u64::from(len);
    out(StreamEvent::Gap {
        seq,
        len,
        ts,
        truncated,
    });
}

/// Counts what `inc` repeats of `h` over `[lo, hi)`: every captured incoming
/// byte inside `h`'s span is a duplicate; where both copies were captured
/// and differ, a conflict (the held copy, the first, wins).
fn account_overlap(stats: &mut Counters, inc: &Incoming<'_>, lo: u32, hi: u32, h: &Held) {
    let lo = seq_max(lo, h.seq);
    let hi = seq_min(hi, h.end());
    if !seq_lt(lo, hi) {
        return;
    }
    let theirs = inc.captured(lo, hi);
    stats.add(|s| &mut s.duplicate_bytes, theirs.len() as u64);
    if theirs.is_empty() {
        return;
    }
    // `theirs` starts at max(lo, inc.base) because `captured` clips there.
    let t0 = seq_max(lo, inc.base);
    let t1 = t0.wrapping_add(theirs.len() as u32);
    let c1 = seq_min(t1, h.data_end());
    if seq_lt(t0, c1) {
        let n = c1.wrapping_sub(t0) as usize;
        let a = t0.wrapping_sub(h.seq) as usize;
        let mine = &h.data[a..a + n];
        let theirs = &theirs[..n];
        if mine != theirs {
            let differ = mine.iter().zip(theirs).filter(|(x, y)| x != y).count();
            stats.add(|s| &mut s.conflicting_overlap_bytes, differ as u64);
        }
    }
}

impl Reassembler {
    pub fn new() -> Self {
        Reassembler::default()
    }

    /// Feed one segment of this direction, in capture order.
    ///
    /// `syn`: the segment has SYN (`seq` is the ISN; data starts at
    /// `seq + 1`). `fin`/`rst` as on the wire. `payload`: the captured bytes;
    /// `missing`: bytes the capture cut off right after `payload` (snaplen),
    /// a gap of known length. `ack`: the segment's ACK field, passed through
    /// to the `Chunk`s. Emits events in stream order through `out`.
    // Eight plain fields of one segment; a struct just for this call would
    // be built and torn apart on every packet by the one caller.
    #[allow(clippy::too_many_arguments)]
    pub fn segment(
        &mut self,
        seq: u32,
        ack: u32,
        ts: Timestamp,
        syn: bool,
        fin: bool,
        rst: bool,
        payload: &[u8],
        missing: u32,
        limits: &StreamLimits,
        out: &mut impl FnMut(StreamEvent<'_>),
    ) {
        if rst {
            match self.phase {
                Phase::Reset => return,
                Phase::Open | Phase::Finished if !seq_near(seq, self.next) => {
                    self.stats.get().garbage_segments += 1;
                    return;
                }
                Phase::Open => self.deliver_what_was_sent(ts, out),
                Phase::Unstarted | Phase::Finished => {}
            }
            self.pending = None;
            self.phase = Phase::Reset;
            out(StreamEvent::Reset { ts });
            return;
        }
        let started = match self.phase {
            Phase::Unstarted => false,
            Phase::Open => true,
            Phase::Finished | Phase::Reset => return,
        };
        let base = if syn { seq.wrapping_add(1) } else { seq };
        let span = u32::try_from(payload.len())
            .ok()
            .and_then(|n| n.checked_add(missing))
            .filter(|&n| n < SEQ_WINDOW);
        let Some(span) = span else {
            self.stats.get().garbage_segments += 1;
            return;
        };
        if self.from_ack && (syn || span > 0) {
            self.from_ack = false;
            if syn || !seq_near(base, self.next) {
                // What was noted against the old start (an ACK watch, a
                // lone FIN's position) goes with it.
                self.next = base;
                self.pending = None;
            }
        }
        if !started {
            if !syn && span == 0 {
                return;
            }
            self.next = base;
            self.phase = Phase::Open;
        } else if !seq_near(base, self.next) {
            self.stats.get().garbage_segments += 1;
            return;
        }
        let end = base.wrapping_add(span);
        if span > 0 {
            let inc = Incoming {
                base,
                start: base,
                end,
                payload,
                ack,
                ts,
            };
            self.place(inc, ts, limits, out);
        }
        if fin {
            self.note_fin(end, ts, out);
        }
        self.settle(limits);
    }

    /// The other direction acknowledged up to `ack` (call it for every
    /// segment of the other direction that has ACK set). Starts the reorder
    /// allowance for a hole the peer says it already received; before this
    /// direction started, starts it at `ack` (see "Where the stream
    /// starts").
    ///
    /// It never emits today (the allowance runs out in [`Self::tick`]); it
    /// takes `ts` and `out` so a policy that declares at once needs no new
    /// signature.
    pub fn peer_ack(
        &mut self,
        ack: u32,
        ts: Timestamp,
        limits: &StreamLimits,
        _out: &mut impl FnMut(StreamEvent<'_>),
    ) {
        match self.phase {
            Phase::Open => {}
            Phase::Unstarted => {
                // The peer has every byte of this direction before `ack`:
                // the stream goes on from there, so what it acknowledges
                // later that never shows up is loss, even if not one byte
                // of this direction is ever captured (one-sided capture).
                self.next = ack;
                self.phase = Phase::Open;
                self.from_ack = true;
                return;
            }
            Phase::Finished | Phase::Reset => return,
        }
        if !seq_lt(self.next, ack) {
            return;
        }
        if !seq_near(ack, self.next) {
            self.stats.get().garbage_segments += 1;
            return;
        }
        let p = self.pending.get_or_insert_with(Default::default);
        match &mut p.watch {
            Some(w) => {
                if seq_lt(w.acked, ack) {
                    w.acked = ack;
                    w.acked_ts = ts;
                }
            }
            None => {
                p.watch = Some(AckWatch {
                    armed_at: ack,
                    acked: ack,
                    countdown: limits.ack_reorder_allowance.saturating_add(1),
                    armed_ts: ts,
                    acked_ts: ts,
                })
            }
        }
    }

    /// The peer sent data after it had received this direction up to
    /// `ack`: declare what is still missing before `ack` lost now, without
    /// the reorder allowance, so that the two directions are read in the
    /// order they were sent (a response is not read before the request it
    /// answers, held behind a hole). Call after [`Reassembler::peer_ack`].
    pub fn declare_before(
        &mut self,
        ack: u32,
        ts: Timestamp,
        limits: &StreamLimits,
        out: &mut impl FnMut(StreamEvent<'_>),
    ) {
        // Only what `peer_ack` would watch: open, something pending, the
        // ACK ahead of what was read and not garbage.
        if self.phase != Phase::Open
            || self.pending.is_none()
            || !seq_lt(self.next, ack)
            || !seq_near(ack, self.next)
        {
            return;
        }
        self.declare_up_to(ack, ts, out);
        self.settle(limits);
    }

    /// Called once per packet of the connection (either direction), after
    /// `segment`/`peer_ack` for that packet: counts the reorder allowance
    /// down and declares acknowledged holes whose allowance ran out.
    pub fn tick(
        &mut self,
        ts: Timestamp,
        limits: &StreamLimits,
        out: &mut impl FnMut(StreamEvent<'_>),
    ) {
        let Some(w) = self.pending.as_mut().and_then(|p| p.watch.as_mut()) else {
            return;
        };
        w.countdown = w.countdown.saturating_sub(1);
        if w.countdown > 0 && ts.micros_since(w.armed_ts) < limits.ack_reorder_micros {
            return;
        }
        let limit = w.armed_at;
        self.declare_up_to(limit, ts, out);
        self.settle(limits);
    }

    /// A sweep found the connection due and it has been quiet since
    /// `last_seen`: once that is `ack_reorder_micros` ago, nothing it lacks
    /// is still on its way, so everything pending is settled as
    /// [`Self::flush`] does: holes before held bytes (the sender sent them
    /// before what it sent after) and before acknowledgements are declared,
    /// and a FIN seen ahead is reached. This stands in for the
    /// [`Self::tick`]s a quiet connection does not get: a response lost, or
    /// held behind a hole, before a keep-alive connection went idle would
    /// otherwise wait until its request had timed out. Events are stamped
    /// when the connection went quiet (what came had come by then: a
    /// response's end, for its duration).
    pub fn declare_overdue(
        &mut self,
        now: Timestamp,
        last_seen: Timestamp,
        limits: &StreamLimits,
        out: &mut impl FnMut(StreamEvent<'_>),
    ) {
        if now.micros_since(last_seen) >= limits.ack_reorder_micros {
            self.flush(last_seen, out);
        }
    }

    /// The connection is being closed or expired, or the capture ended:
    /// deliver everything buffered, declaring the holes before it as gaps,
    /// then the acknowledged tail we never saw, then the FIN if one was seen.
    pub fn flush(&mut self, ts: Timestamp, out: &mut impl FnMut(StreamEvent<'_>)) {
        if self.phase != Phase::Open {
            return;
        }
        self.deliver_what_was_sent(ts, out);
        if let Some(f) = self.pending.as_deref().and_then(|p| p.fin_seq) {
            if self.phase == Phase::Open {
                // INVARIANT: `next` never passes a known FIN (data is cut
                // there, acknowledgements are clamped to it).
                debug_assert!(seq_le(self.next, f));
                let len = f.wrapping_sub(self.next);
                emit_gap(&mut self.stats, self.next, len, ts, false, out);
                self.next = f;
                self.finish(ts, out);
            }
        }
        self.pending = None;
    }

    /// Heap bytes this direction holds out of order: the copied payload plus
    /// the bookkeeping around it, each allocation with the allocator's own
    /// (for the global memory budget).
    pub fn buffered_bytes(&self) -> usize {
        self.pending.as_deref().map_or(0, |p| {
            let allocations = 1 + usize::from(p.held.capacity() > 0) + p.held.len();
            std::mem::size_of::<Pending>()
                + p.held.capacity() * std::mem::size_of::<Held>()
                + p.held_bytes
                + allocations * super::ALLOC_OVERHEAD
        })
    }

    pub fn stats(&self) -> &StreamStats {
        self.stats.peek().unwrap_or(&NO_COUNTS)
    }

    /// Heap bytes this direction holds in all: [`Reassembler::buffered_bytes`]
    /// and its counters, once allocated.
    pub fn heap_bytes(&self) -> usize {
        let counters = self.stats.peek().map_or(0, |_| {
            std::mem::size_of::<StreamStats>() + super::ALLOC_OVERHEAD
        });
        self.buffered_bytes() + counters
    }

    /// The next expected sequence number, once the stream start is known.
    pub fn next_seq(&self) -> Option<u32> {
        (self.phase != Phase::Unstarted).then_some(self.next)
    }

    /// FIN delivered in order, or RST seen.
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Finished | Phase::Reset)
    }

    /// Place the stream positions of `inc`: deliver what is in order (and
    /// what that makes contiguous), buffer what is ahead of a hole, drop what
    /// was seen before.
    fn place(
        &mut self,
        mut inc: Incoming<'_>,
        ts: Timestamp,
        limits: &StreamLimits,
        out: &mut impl FnMut(StreamEvent<'_>),
    ) {
        // Nothing at or after a FIN we know of is data.
        if let Some(f) = self.pending.as_deref().and_then(|p| p.fin_seq) {
            inc.end = seq_min(inc.end, f);
        }
        loop {
            if !seq_lt(self.next, inc.end) {
                // Entirely before the stream position: a retransmission.
                let n = inc.captured(inc.start, inc.end).len() as u64;
                self.stats.add(|s| &mut s.duplicate_bytes, n);
                return;
            }
            if seq_lt(inc.start, self.next) {
                let n = inc.captured(inc.start, self.next).len() as u64;
                self.stats.add(|s| &mut s.duplicate_bytes, n);
                inc.start = self.next;
            }
            if inc.start == self.next {
                self.advance(Some(&inc), ts, out);
                return;
            }
            // Ahead of a hole: keep a copy, if it fits.
            let p = self.pending.get_or_insert_with(Default::default);
            let (bytes, pieces) = p.hold(&inc, None);
            if p.held_bytes + bytes <= limits.max_buffered_bytes
                && p.held.len() + pieces <= limits.max_buffered_segments
            {
                p.hold(&inc, Some(&mut self.stats));
                if pieces > 0 {
                    self.stats.get().out_of_order_segments += 1;
                }
                return;
            }
            // Full: give up on the first hole, then try again.
            let gap_end = match p.held.first() {
                Some(h) if seq_lt(h.seq, inc.start) => h.seq,
                _ => inc.start,
            };
            let len = gap_end.wrapping_sub(self.next);
            emit_gap(&mut self.stats, self.next, len, ts, false, out);
            self.next = gap_end;
            self.advance(None, ts, out);
        }
    }

    /// `next` is at a filled position: emit the incoming bytes at `next` (if
    /// any) and held runs, alternating, as long as they are contiguous.
    fn advance(
        &mut self,
        inc: Option<&Incoming<'_>>,
        ts: Timestamp,
        out: &mut impl FnMut(StreamEvent<'_>),
    ) {
        let stats = &mut self.stats;
        let next = &mut self.next;
        let mut taken = 0;
        let mut taken_bytes = 0;
        let held: &[Held] = self.pending.as_deref().map_or(&[], |p| &p.held[..]);
        loop {
            if let Some(h) = held.get(taken).filter(|h| h.seq == *next) {
                if let Some(inc) = inc {
                    account_overlap(stats, inc, inc.start, inc.end, h);
                }
                if !h.data.is_empty() {
                    out(StreamEvent::Data(Chunk {
                        seq: h.seq,
                        ack: h.ack,
                        ts: h.ts,
                        data: &h.data,
                    }));
                }
                let de = h.data_end();
                emit_gap(stats, de, h.end().wrapping_sub(de), h.ts, true, out);
                *next = h.end();
                taken += 1;
                taken_bytes += h.data.len();
                continue;
            }
            let Some(inc) = inc.filter(|i| seq_lt(*next, i.end)) else {
                break;
            };
            // INVARIANT: held runs start after `next`, and the incoming span
            // is continuous, so the piece from `next` belongs to `inc`.
            let piece_end = held.get(taken).map_or(inc.end, |h| seq_min(h.seq, inc.end));
            let data = inc.captured(*next, piece_end);
            if !data.is_empty() {
                out(StreamEvent::Data(Chunk {
                    seq: *next,
                    ack: inc.ack,
                    ts: inc.ts,
                    data,
                }));
            }
            let gap_start = next.wrapping_add(data.len() as u32);
            emit_gap(
                stats,
                gap_start,
                piece_end.wrapping_sub(gap_start),
                inc.ts,
                true,
                out,
            );
            *next = piece_end;
        }
        if taken > 0 {
            if let Some(p) = self.pending.as_deref_mut() {
                p.held.drain(..taken);
                p.held_bytes -= taken_bytes;
            }
        }
        self.check_fin(ts, out);
    }

    /// Declare the hole(s) before `limit` (holes between held runs, then the
    /// tail), delivering held runs as they become contiguous.
    fn declare_up_to(&mut self, limit: u32, ts: Timestamp, out: &mut impl FnMut(StreamEvent<'_>)) {
        // The FIN takes a sequence number but is not data: an acknowledgement
        // of it covers data only up to it.
        let fin_seq = self.pending.as_deref().and_then(|p| p.fin_seq);
        let limit = fin_seq.map_or(limit, |f| seq_min(f, limit));
        while self.phase == Phase::Open && seq_lt(self.next, limit) {
            let first = self.pending.as_deref().and_then(|p| p.held.first());
            let gap_end = match first {
                Some(h) => seq_min(h.seq, limit),
                None => {
                    if fin_seq.is_none() && limit.wrapping_sub(self.next) == 1 {
                        // The peer acknowledged a FIN we have not seen.
                        if let Some(p) = self.pending.as_deref_mut() {
                            p.watch = None;
                        }
                        return;
                    }
                    limit
                }
            };
            self.from_ack = false;
            emit_gap(
                &mut self.stats,
                self.next,
                gap_end.wrapping_sub(self.next),
                ts,
                false,
                out,
            );
            self.next = gap_end;
            self.advance(None, ts, out);
        }
    }

    /// Deliver what the sender is known to have sent: every held run (the
    /// holes before each declared as gaps), then the acknowledged tail.
    fn deliver_what_was_sent(&mut self, ts: Timestamp, out: &mut impl FnMut(StreamEvent<'_>)) {
        self.deliver_held_with_gaps(ts, out);
        if let Some(w) = self.pending.as_deref().and_then(|p| p.watch) {
            self.declare_up_to(w.acked, ts, out);
        }
    }

    /// Deliver every held run, declaring the holes before each as gaps.
    fn deliver_held_with_gaps(&mut self, ts: Timestamp, out: &mut impl FnMut(StreamEvent<'_>)) {
        while let Some(first) = self.pending.as_deref().and_then(|p| p.held.first()) {
            let seq = first.seq;
            emit_gap(
                &mut self.stats,
                self.next,
                seq.wrapping_sub(self.next),
                ts,
                false,
                out,
            );
            self.next = seq;
            self.advance(None, ts, out);
            if self.phase != Phase::Open {
                break;
            }
        }
    }

    /// The segment had FIN at stream position `at`.
    fn note_fin(&mut self, at: u32, ts: Timestamp, out: &mut impl FnMut(StreamEvent<'_>)) {
        if self.phase != Phase::Open || seq_lt(at, self.next) {
            // Already closed, or data was delivered past it: not believable.
            return;
        }
        if at == self.next {
            self.finish(ts, out);
            return;
        }
        let p = self.pending.get_or_insert_with(Default::default);
        if p.fin_seq.is_some() {
            // First FIN wins, like first data.
            return;
        }
        p.fin_seq = Some(at);
        // Keep the invariant: nothing held at or after the FIN.
        let keep = p.held.partition_point(|h| seq_lt(h.seq, at));
        for h in p.held.drain(keep..) {
            p.held_bytes -= h.data.len();
        }
        if let Some(h) = p.held.last_mut() {
            if seq_lt(at, h.end()) {
                h.len = at.wrapping_sub(h.seq);
                let n = (h.len as usize).min(h.data.len());
                if n < h.data.len() {
                    p.held_bytes -= h.data.len() - n;
                    h.data = h.data[..n].into();
                }
            }
        }
    }

    fn check_fin(&mut self, ts: Timestamp, out: &mut impl FnMut(StreamEvent<'_>)) {
        if self.pending.as_deref().and_then(|p| p.fin_seq) == Some(self.next) {
            self.finish(ts, out);
        }
    }

    fn finish(&mut self, ts: Timestamp, out: &mut impl FnMut(StreamEvent<'_>)) {
        if self.phase == Phase::Open {
            self.phase = Phase::Finished;
            self.pending = None;
            out(StreamEvent::Fin { ts });
        }
    }

    /// After `next` moved: retire or re-arm the ACK watch, and free the side
    /// structure when nothing is pending.
    fn settle(&mut self, limits: &StreamLimits) {
        let Some(p) = self.pending.as_deref_mut() else {
            return;
        };
        if let Some(w) = &mut p.watch {
            if seq_le(w.acked, self.next) {
                p.watch = None;
            } else if seq_le(w.armed_at, self.next) || w.countdown == 0 {
                // The hole that started the count is resolved, but the peer
                // acknowledged further: those holes get their own allowance,
                // in time from when they were acknowledged (a connection
                // that went quiet meanwhile has waited it out already).
                w.armed_at = w.acked;
                w.countdown = limits.ack_reorder_allowance.saturating_add(1);
                w.armed_ts = w.acked_ts;
            }
        }
        if p.held.is_empty() {
            if p.fin_seq.is_none() && p.watch.is_none() {
                self.pending = None;
            } else if p.held.capacity() > 0 {
                p.held = Vec::new();
            }
        }
    }
}

impl Pending {
    /// Walk `inc` over the held runs. With `stats`, insert copies of the
    /// positions no run covers and account the overlaps; without, only
    /// measure what that would hold: (captured bytes, new runs).
    fn hold(&mut self, inc: &Incoming<'_>, mut stats: Option<&mut Counters>) -> (usize, usize) {
        let mut bytes = 0;
        let mut pieces = 0;
        let mut cur = inc.start;
        let mut i = self.held.partition_point(|h| seq_le(h.end(), cur));
        while seq_lt(cur, inc.end) {
            match self.held.get(i) {
                Some(h) if seq_le(h.seq, cur) => {
                    if let Some(stats) = stats.as_deref_mut() {
                        account_overlap(stats, inc, cur, inc.end, h);
                    }
                    cur = seq_min(inc.end, h.end());
                    i += 1;
                }
                next => {
                    let piece_end = next.map_or(inc.end, |h| seq_min(h.seq, inc.end));
                    let data = inc.captured(cur, piece_end);
                    bytes += data.len();
                    pieces += 1;
                    if stats.is_some() {
                        self.held.insert(
                            i,
                            Held {
                                seq: cur,
                                len: piece_end.wrapping_sub(cur),
                                ack: inc.ack,
                                ts: inc.ts,
                                data: data.into(),
                            },
                        );
                        self.held_bytes += data.len();
                        // Past the run just inserted.
                        i += 1;
                    }
                    cur = piece_end;
                }
            }
        }
        (bytes, pieces)
    }
}

/// An owned copy of a [`StreamEvent`], for tests here and in the flow table.
#[cfg(test)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum OwnedEvent {
    Data {
        seq: u32,
        ack: u32,
        ts: Timestamp,
        data: Vec<u8>,
    },
    Gap {
        seq: u32,
        len: u32,
        ts: Timestamp,
    },
    Fin {
        ts: Timestamp,
    },
    Reset {
        ts: Timestamp,
    },
}

#[cfg(test)]
impl From<StreamEvent<'_>> for OwnedEvent {
    fn from(e: StreamEvent<'_>) -> Self {
        match e {
            StreamEvent::Data(c) => OwnedEvent::Data {
                seq: c.seq,
                ack: c.ack,
                ts: c.ts,
                data: c.data.to_vec(),
            },
            StreamEvent::Gap { seq, len, ts, .. } => OwnedEvent::Gap { seq, len, ts },
            StreamEvent::Fin { ts } => OwnedEvent::Fin { ts },
            StreamEvent::Reset { ts } => OwnedEvent::Reset { ts },
        }
    }
}

/// Collects events into owned values: `let mut sink = collector(&mut v);`
/// then pass `&mut sink` as `out`.
#[cfg(test)]
pub(crate) fn collector(v: &mut Vec<OwnedEvent>) -> impl FnMut(StreamEvent<'_>) + '_ {
    move |e| v.push(e.into())
}

#[cfg(test)]
mod tests;
