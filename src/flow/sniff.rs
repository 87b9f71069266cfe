//! Telling what a connection carries before parsing it.
//!
//! Contract: a [`Sniffer`] watches one direction's in-order bytes until the
//! connection is known to be HTTP/1.x (a request line or a status line at a
//! plausible place: the stream start, a line start or a segment start), TLS
//! (a handshake record at the stream start), or neither within a byte
//! budget. It holds at most [`HOLD_BYTES`] of the latest bytes, so that when
//! the *other* direction proves the connection is HTTP, this direction's
//! parser still sees them (a malformed request answered by a 400 is then
//! logged as malformed, not lost).

use crate::clock::Timestamp;
use crate::flow::reassembly::Chunk;
use crate::http::parser::{sniff_request_start, sniff_response_start, Sniff};

/// Most bytes held per undecided direction.
pub const HOLD_BYTES: usize = 8 * 1024;

#[derive(Debug, Default)]
pub struct Sniffer {
    /// The latest bytes of the direction, at most HOLD_BYTES.
    held: Vec<u8>,
    /// Sequence number of `held[0]`.
    held_seq: u32,
    /// `held` starts at the stream's first byte (SYN seen, nothing dropped).
    from_start: bool,
    started: bool,
    /// Where in `held` scanning goes on (candidates before it were tried).
    scan_from: usize,
    /// Where each segment starts in `held`, with its ACK field and time
    /// (ascending), so held bytes can be replayed as they came.
    segments: Vec<(usize, u32, Timestamp)>,
    /// Bytes seen in all.
    pub seen: u64,
    /// Bytes of the direction were lost (a gap) before a verdict.
    gapped: bool,
}

/// What a sniffer concluded from the bytes so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A request (`true`) or response starts at sequence number `seq`.
    Http {
        seq: u32,
        is_request: bool,
    },
    Tls,
    Undecided,
}

impl Sniffer {
    /// Feed in-order bytes starting at `seq`; `stream_start`: the SYN of this
    /// direction was seen and these are its first bytes; `from_client`: the
    /// direction's role when the handshake told it (then only a request
    /// start, or only a status line, is a verdict: the other kind is text
    /// inside a body, found after a gap).
    pub fn push(
        &mut self,
        chunk: &Chunk<'_>,
        stream_start: bool,
        from_client: Option<bool>,
    ) -> Verdict {
        let (seq, data) = (chunk.seq, chunk.data);
        if !self.started {
            self.started = true;
            self.from_start = stream_start;
            self.held_seq = seq;
            if stream_start && looks_like_tls(data) {
                return Verdict::Tls;
            }
        }
        self.seen += data.len() as u64;
        let expected = self.held_seq.wrapping_add(self.held.len() as u32);
        if expected != seq {
            self.gap_at(seq);
        }
        self.segments.push((self.held.len(), chunk.ack, chunk.ts));
        self.held.extend_from_slice(data);
        let verdict = self.scan(from_client);
        // A verdict is followed by a replay of what is held from the start
        // it found: keep it all (a first segment can be far larger than
        // the bound: 64 KiB over loopback, more with offloads).
        if verdict == Verdict::Undecided && self.held.len() > HOLD_BYTES {
            let cut = self.held.len() - HOLD_BYTES;
            self.held.drain(..cut);
            self.held_seq = self.held_seq.wrapping_add(cut as u32);
            self.scan_from = self.scan_from.saturating_sub(cut);
            let first_kept = self
                .segments
                .partition_point(|s| s.0 <= cut)
                .saturating_sub(1);
            self.segments.drain(..first_kept);
            for s in &mut self.segments {
                s.0 = s.0.saturating_sub(cut);
            }
            self.from_start = false;
        }
        verdict
    }

    /// Bytes were lost: what is held no longer leads up to what comes next.
    pub fn gap_at(&mut self, next_seq: u32) {
        self.held.clear();
        self.segments.clear();
        self.scan_from = 0;
        self.held_seq = next_seq;
        self.from_start = false;
        self.started = true;
        self.gapped = true;
    }

    /// Were bytes of the direction lost before the verdict?
    pub fn had_gap(&self) -> bool {
        self.gapped
    }

    /// Does the first held byte look like the start of a text protocol?
    pub fn starts_with_letter(&self) -> bool {
        self.held.first().is_some_and(u8::is_ascii_alphabetic)
    }

    /// Where a possible message start waits for more bytes, if anywhere.
    pub fn pending_candidate_seq(&self) -> Option<u32> {
        (self.scan_from < self.held.len())
            .then(|| self.held_seq.wrapping_add(self.scan_from as u32))
    }

    /// Bytes this direction carried before `seq` (a held position): what
    /// sniffing skipped before the message start found there.
    pub fn seen_before(&self, seq: u32) -> u64 {
        let from_seq_on = self
            .held
            .len()
            .saturating_sub(seq.wrapping_sub(self.held_seq) as usize);
        self.seen.saturating_sub(from_seq_on as u64)
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.held.capacity()
            + self.segments.capacity() * std::mem::size_of::<(usize, u32, Timestamp)>()
    }

    /// Sequence number of the first held byte.
    pub fn held_start_seq(&self) -> u32 {
        self.held_seq
    }

    /// Do the held bytes begin at the stream's first byte?
    pub fn is_from_start(&self) -> bool {
        self.from_start
    }

    /// Hand the held bytes from sequence number `from` on to `feed`, segment
    /// by segment as they came (same ACK and time), then forget them.
    pub fn replay(&mut self, from: u32, mut feed: impl FnMut(&Chunk<'_>)) {
        let skip = (from.wrapping_sub(self.held_seq) as usize).min(self.held.len());
        for (i, &(start, ack, ts)) in self.segments.iter().enumerate() {
            let end = self.segments.get(i + 1).map_or(self.held.len(), |s| s.0);
            let start = start.max(skip);
            if start >= end {
                continue;
            }
            feed(&Chunk {
                seq: self.held_seq.wrapping_add(start as u32),
                ack,
                ts,
                data: &self.held[start..end],
            });
        }
        self.held = Vec::new();
        self.segments = Vec::new();
    }

    /// Try every line start and segment start from `scan_from` on.
    fn scan(&mut self, from_client: Option<bool>) -> Verdict {
        let len = self.held.len();
        let mut p = self.scan_from;
        while p < len {
            let rest = &self.held[p..];
            let req = if from_client == Some(false) {
                Sniff::No
            } else {
                sniff_request_start(rest)
            };
            let resp = if from_client == Some(true) {
                Sniff::No
            } else {
                sniff_response_start(rest)
            };
            match (req, resp) {
                (Sniff::Yes, _) | (_, Sniff::Yes) => {
                    return Verdict::Http {
                        seq: self.held_seq.wrapping_add(p as u32),
                        is_request: req == Sniff::Yes,
                    };
                }
                (Sniff::NeedMore, _) | (_, Sniff::NeedMore) if rest.len() < HOLD_BYTES / 2 => {
                    // Wait for more bytes, then try here again.
                    self.scan_from = p;
                    return Verdict::Undecided;
                }
                _ => {}
            }
            let next_line = memchr::memchr(b'\n', rest).map_or(len, |i| p + i + 1);
            let k = self.segments.partition_point(|s| s.0 <= p);
            let next_segment = self.segments.get(k).map_or(len, |s| s.0);
            p = next_line.min(next_segment);
        }
        self.scan_from = len;
        Verdict::Undecided
    }
}

fn looks_like_tls(data: &[u8]) -> bool {
    data.len() >= 3 && data[0] == 0x16 && data[1] == 0x03 && data[2] <= 0x04
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(seq: u32, data: &[u8]) -> Chunk<'_> {
        Chunk {
            seq,
            ack: 7,
            ts: Timestamp::from_micros(1),
            data,
        }
    }

    #[test]
    fn finds_a_request_at_a_segment_start_after_a_binary_preamble() {
        let mut s = Sniffer::default();
        assert_eq!(
            s.push(&chunk(100, b"\x05\x01\x00"), true, None),
            Verdict::Undecided
        );
        let v = s.push(
            &chunk(103, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            false,
            None,
        );
        assert_eq!(
            v,
            Verdict::Http {
                seq: 103,
                is_request: true
            }
        );
        assert_eq!(s.seen_before(103), 3);
    }

    #[test]
    fn a_known_client_direction_has_no_response_start() {
        // After a gap, a status line in the client's bytes is body text.
        let mut s = Sniffer::default();
        let text = b"HTTP/1.1 200 OK\r\n\r\nGET /next HTTP/1.1\r\n\r\n";
        assert_eq!(
            s.push(&chunk(50, text), false, Some(true)),
            Verdict::Http {
                seq: 69,
                is_request: true
            }
        );
        let mut s = Sniffer::default();
        assert_eq!(
            s.push(&chunk(50, b"GET / HTTP/1.1\r\n\r\n"), false, Some(false)),
            Verdict::Undecided
        );
    }

    #[test]
    fn tls_at_the_stream_start() {
        let mut s = Sniffer::default();
        assert_eq!(
            s.push(&chunk(1, &[0x16, 3, 1, 0, 5]), true, None),
            Verdict::Tls
        );
    }

    #[test]
    fn a_start_split_over_segments_is_found_and_replayed_whole() {
        let mut s = Sniffer::default();
        assert_eq!(
            s.push(&chunk(10, b"tail\nHTTP/1.1 2"), false, None),
            Verdict::Undecided
        );
        let v = s.push(&chunk(25, b"00 OK\r\n\r\n"), false, None);
        assert_eq!(
            v,
            Verdict::Http {
                seq: 15,
                is_request: false
            }
        );
        let mut got = Vec::new();
        s.replay(15, |c| got.extend_from_slice(c.data));
        assert_eq!(got, b"HTTP/1.1 200 OK\r\n\r\n");
    }

    #[test]
    fn a_first_segment_larger_than_the_bound_is_replayed_whole() {
        let mut s = Sniffer::default();
        let mut data = b"POST /hello HTTP/1.1\r\nContent-Length: 40000\r\n\r\n".to_vec();
        data.resize(data.len() + 40_000, b'a');
        assert_eq!(
            s.push(&chunk(100, &data), true, None),
            Verdict::Http {
                seq: 100,
                is_request: true
            }
        );
        let mut got = Vec::new();
        s.replay(100, |c| got.extend_from_slice(c.data));
        assert_eq!(got, data);
    }

    #[test]
    fn held_bytes_stay_bounded() {
        let mut s = Sniffer::default();
        let junk = [b'x'; 1000];
        for i in 0..100u32 {
            s.push(&chunk(i * 1000, &junk), false, None);
        }
        assert!(s.held.len() <= HOLD_BYTES);
        assert_eq!(s.seen, 100_000);
    }
}
