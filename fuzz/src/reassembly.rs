//! `reassembly`: one direction's [`Reassembler`] driven by a script of
//! segment, acknowledgement, tick and flush calls.
//!
//! Input: `[isn: u32 LE][bytes][segs]` then ops. `bytes` and `segs` size the
//! out-of-order buffer small (so the buffer-full policy runs) and set the
//! reorder allowance. Each op starts with a byte whose low 3 bits say what:
//!
//! | op | call | then |
//! |---|---|---|
//! | 0 | `segment`, seq = cursor + delta | `delta: i16`, `len: u16`, [`missing: u16`], [payload] |
//! | 1 | `segment`, seq = isn + offset | `offset: u32`, `len: u16`, [`missing: u16`], [payload] |
//! | 2 | `peer_ack`, ack = cursor + delta | `delta: i16` |
//! | 3 | `peer_ack`, ack = isn + offset | `offset: u32` |
//! | 4 | `flush` | |
//! | 5 | `declare_overdue`, a sweep after the op's bits 3-7 times 100 µs of quiet | |
//! | 6-7 | `tick` | |
//!
//! For segments the op's bits 3/4/5 are SYN/FIN/RST, bit 6 says the payload
//! comes from the input (else it is a fixed function of each byte's
//! sequence number, so delivered bytes can be checked), bit 7 that a
//! `missing` field follows. `cursor` is the highest segment end so far
//! (starting at `isn`). `len` is capped at 4096 (payload from the input:
//! what is left of it).
//!
//! Checked (the module doc's "Events" section): positions are covered once,
//! in order, by `Data` and `Gap`; then at most one `Fin`, at most one
//! `Reset`, a `Reset` may follow a `Fin` and nothing follows either; the gap
//! counters match the gaps; `next_seq` is where the events got to; held
//! memory stays within the limits; and, while every payload was the fixed
//! function, every delivered byte is the byte sent at its position.

use crate::{seq_diff, Reader};
use apitap::clock::Timestamp;
use apitap::flow::reassembly::{Reassembler, StreamEvent, StreamLimits};

/// The byte every generated payload carries at sequence number `seq`.
pub fn byte_at(seq: u32) -> u8 {
    (seq.wrapping_mul(0x9E37_79B1) >> 24) as u8
}

const MAX_LEN: usize = 4096;

#[derive(Debug, Default)]
struct Checker {
    /// Next stream position the events must start at, once one came.
    next: Option<u32>,
    fin: bool,
    reset: bool,
    gaps: u64,
    gap_bytes: u64,
    /// Every payload so far was generated: delivered bytes are checkable.
    content_known: bool,
}

impl Checker {
    fn event(&mut self, ev: StreamEvent<'_>) {
        assert!(!self.reset, "event after Reset: {ev:?}");
        match ev {
            StreamEvent::Data(c) => {
                assert!(!self.fin, "Data after Fin");
                self.advance(c.seq, c.data.len() as u32, "Data");
                if self.content_known {
                    for (i, &b) in c.data.iter().enumerate() {
                        let seq = c.seq.wrapping_add(i as u32);
                        assert_eq!(b, byte_at(seq), "wrong byte delivered at seq {seq}");
                    }
                }
            }
            StreamEvent::Gap { seq, len, .. } => {
                assert!(!self.fin, "Gap after Fin");
                self.advance(seq, len, "Gap");
                self.gaps += 1;
                self.gap_bytes += u64::from(len);
            }
            StreamEvent::Fin { .. } => {
                assert!(!self.fin, "second Fin");
                self.fin = true;
            }
            StreamEvent::Reset { .. } => self.reset = true,
        }
    }

    fn advance(&mut self, seq: u32, len: u32, what: &str) {
        if let Some(next) = self.next {
            assert_eq!(
                seq,
                next,
                "{what} at {seq} but the stream is at {next} (offset {})",
                seq_diff(seq, next)
            );
        }
        self.next = Some(seq.wrapping_add(len));
    }
}

pub fn run(data: &[u8]) {
    let mut r = Reader::new(data);
    let (Some(isn), Some(bytes), Some(segs)) = (r.u32(), r.u8(), r.u8()) else {
        return;
    };
    let limits = StreamLimits {
        max_buffered_bytes: (usize::from(bytes) + 1) * 64,
        max_buffered_segments: usize::from(segs % 32) + 1,
        ack_reorder_allowance: u32::from(segs >> 5),
        ack_reorder_micros: if bytes & 1 == 0 { i64::MAX } else { 1_000 },
    };
    // Generous bound on held memory: the captured bytes plus bookkeeping
    // per piece (a handful of words each) and the side structure.
    let memory_bound = limits.max_buffered_bytes + 4096 + limits.max_buffered_segments * 128;
    let mut ra = Reassembler::new();
    let mut check = Checker {
        content_known: true,
        ..Checker::default()
    };
    let mut cursor = isn;
    let mut ts = Timestamp::from_secs_micros(1_700_000_000, 0);
    let mut payload = Vec::with_capacity(MAX_LEN);
    while let Some(op) = r.u8() {
        ts = ts.saturating_add_micros(1000);
        match op & 7 {
            kind @ (0 | 1) => {
                let seq = if kind == 0 {
                    let Some(d) = r.i16() else { break };
                    cursor.wrapping_add(d as i32 as u32)
                } else {
                    let Some(o) = r.u32() else { break };
                    isn.wrapping_add(o)
                };
                let Some(len) = r.u16() else { break };
                let len = usize::from(len).min(MAX_LEN);
                let missing = if op & 0x80 != 0 {
                    let Some(m) = r.u16() else { break };
                    u32::from(m)
                } else {
                    0
                };
                let (syn, fin, rst) = (op & 0x08 != 0, op & 0x10 != 0, op & 0x20 != 0);
                let base = if syn { seq.wrapping_add(1) } else { seq };
                payload.clear();
                if op & 0x40 != 0 {
                    payload.extend_from_slice(r.bytes(len));
                    check.content_known = false;
                } else {
                    payload.extend((0..len as u32).map(|i| byte_at(base.wrapping_add(i))));
                }
                let end = base.wrapping_add(payload.len() as u32 + missing);
                if seq_diff(end, cursor) > 0 {
                    cursor = end;
                }
                ra.segment(
                    seq,
                    0,
                    ts,
                    syn,
                    fin,
                    rst,
                    &payload,
                    missing,
                    &limits,
                    &mut |ev| check.event(ev),
                );
            }
            kind @ (2 | 3) => {
                let ack = if kind == 2 {
                    let Some(d) = r.i16() else { break };
                    cursor.wrapping_add(d as i32 as u32)
                } else {
                    let Some(o) = r.u32() else { break };
                    isn.wrapping_add(o)
                };
                ra.peer_ack(ack, ts, &limits, &mut |ev| check.event(ev));
            }
            4 => ra.flush(ts, &mut |ev| check.event(ev)),
            5 => {
                let quiet = ts;
                ts = ts.saturating_add_micros(i64::from(op >> 3) * 100);
                ra.declare_overdue(ts, quiet, &limits, &mut |ev| check.event(ev));
            }
            _ => ra.tick(ts, &limits, &mut |ev| check.event(ev)),
        }
        assert!(
            ra.buffered_bytes() <= memory_bound,
            "holds {} bytes, bound {memory_bound}",
            ra.buffered_bytes()
        );
        if let (Some(ours), false) = (check.next, check.reset) {
            assert_eq!(
                ra.next_seq(),
                Some(ours),
                "next_seq is not where the events got to"
            );
        }
        let s = ra.stats();
        assert_eq!(s.gaps, check.gaps, "gap counter");
        assert_eq!(s.missing_bytes, check.gap_bytes, "missing_bytes counter");
    }
    ra.flush(ts, &mut |ev| check.event(ev));
    assert_eq!(ra.buffered_bytes(), 0, "memory held after flush");
}

/// One op of a seed script.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    /// A segment with a generated payload of `len` bytes.
    Segment {
        seq: u32,
        syn: bool,
        fin: bool,
        rst: bool,
        len: u16,
        missing: u16,
    },
    PeerAck(u32),
    /// A sweep after this many 100 µs of quiet (at most 31).
    Sweep(u8),
    Tick,
    Flush,
}

/// Writes a script in the format [`run`] reads, choosing the short forms
/// when the distance to the cursor fits.
pub fn encode(isn: u32, bytes: u8, segs: u8, ops: &[Op]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&isn.to_le_bytes());
    out.push(bytes);
    out.push(segs);
    let mut cursor = isn;
    for &op in ops {
        match op {
            Op::Segment {
                seq,
                syn,
                fin,
                rst,
                len,
                missing,
            } => {
                let flags = if syn { 0x08 } else { 0 }
                    | if fin { 0x10 } else { 0 }
                    | if rst { 0x20 } else { 0 }
                    | if missing > 0 { 0x80 } else { 0 };
                match i16::try_from(seq_diff(seq, cursor)) {
                    Ok(d) => {
                        out.push(flags);
                        out.extend_from_slice(&d.to_le_bytes());
                    }
                    Err(_) => {
                        out.push(1 | flags);
                        out.extend_from_slice(&seq.wrapping_sub(isn).to_le_bytes());
                    }
                }
                let len = len.min(MAX_LEN as u16);
                out.extend_from_slice(&len.to_le_bytes());
                if missing > 0 {
                    out.extend_from_slice(&missing.to_le_bytes());
                }
                let base = if syn { seq.wrapping_add(1) } else { seq };
                let end = base.wrapping_add(u32::from(len) + u32::from(missing));
                if seq_diff(end, cursor) > 0 {
                    cursor = end;
                }
            }
            Op::PeerAck(ack) => match i16::try_from(seq_diff(ack, cursor)) {
                Ok(d) => {
                    out.push(2);
                    out.extend_from_slice(&d.to_le_bytes());
                }
                Err(_) => {
                    out.push(3);
                    out.extend_from_slice(&ack.wrapping_sub(isn).to_le_bytes());
                }
            },
            Op::Sweep(q) => out.push(5 | (q.min(31) << 3)),
            Op::Tick => out.push(6),
            Op::Flush => out.push(4),
        }
    }
    out
}
