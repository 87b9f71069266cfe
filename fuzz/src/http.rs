//! `http_request` / `http_response`: one [`MessageParser`] fed a stream cut
//! into chunks, some of them lost (gaps).
//!
//! Input: a 5-byte header, then the stream itself (raw HTTP, so mutations
//! and dictionaries work on it directly):
//!
//! - `[0]` bit 0 start in sync (else the parser looks for a message start
//!   first), bit 1 `resync_at_chunk_starts`, bit 2 end with a RST (else
//!   FIN), bits 3-4 chunk sizes (1-8, 1-64, 1-1460, all at once), bits 5-6
//!   how often a chunk is lost instead (never, 1/32, 1/8, 1/4), bit 7 tiny
//!   limits;
//! - `[1]` with tiny limits: max head bytes `16 + 4 * b`, max headers
//!   `1 + b % 32`; body prefix 0, 16 or 2048 bytes (`b % 3`);
//! - `[2..4]` seed of the chunk-size generator;
//! - `[4]` responses: what the sink says each response answers, two bits
//!   per response in turn (other, HEAD, CONNECT, unknown).
//!
//! Checked (the parser module's contract): every head is followed by
//! exactly one `message_end` or `malformed` before the next head and by the
//! end of the stream; events come from the parser's own direction; positions
//! lie in the bytes given so far, and a message ends at or after its start;
//! body prefixes and missing counts are within bounds; the head counter
//! matches; held memory stays within the limits after every call.

use crate::{seq_diff, Reader, Rng};
use apitap::clock::Timestamp;
use apitap::flow::reassembly::Chunk;
use apitap::http::parser::{MessageParser, ParserLimits};
use apitap::http::{
    Direction, MessageEnd, MessageSink, ParseError, RequestHead, RequestKind, ResponseHead,
    StreamPos,
};

const HEADER: usize = 5;

/// Longest chunk-size line the parser keeps (its `MAX_CHUNK_LINE`).
const CHUNK_LINE: usize = 1024;

struct Recorder {
    dir: Direction,
    base: u32,
    /// Stream bytes given so far (data and gaps).
    seen: u64,
    limits: ParserLimits,
    kinds: u8,
    responses: u32,
    heads: u64,
    /// Where the open message started.
    open: Option<u64>,
    /// Latest position reported, to check events come in stream order.
    last_pos: u64,
}

impl Recorder {
    fn offset(&self, pos: &StreamPos, what: &str) -> u64 {
        let off = seq_diff(pos.seq, self.base);
        assert!(
            off >= 0 && off as u64 <= self.seen,
            "{what} at offset {off}, outside the {} bytes given",
            self.seen
        );
        off as u64
    }

    fn head(&mut self, start: &StreamPos, dir: Direction) {
        assert_eq!(dir, self.dir, "head from the other direction");
        assert!(
            self.open.is_none(),
            "a second head before the first one ended"
        );
        let off = self.offset(start, "head");
        assert!(
            off >= self.last_pos,
            "head at {off} before an earlier event at {}",
            self.last_pos
        );
        self.last_pos = off;
        self.open = Some(off);
        self.heads += 1;
    }
}

impl MessageSink for Recorder {
    fn request_head(&mut self, _head: RequestHead, start: StreamPos) {
        self.head(&start, Direction::ToServer);
    }

    fn response_head(&mut self, head: ResponseHead, start: StreamPos) -> RequestKind {
        self.head(&start, Direction::ToClient);
        assert!((100..=999).contains(&head.status), "status {}", head.status);
        let k = (self.kinds >> ((self.responses % 4) * 2)) & 3;
        self.responses += 1;
        match k {
            0 => RequestKind::Other,
            1 => RequestKind::Head,
            2 => RequestKind::Connect,
            _ => RequestKind::Unknown,
        }
    }

    fn message_end(&mut self, dir: Direction, end: MessageEnd) {
        assert_eq!(dir, self.dir, "message_end from the other direction");
        let start = self.open.take().expect("message_end without a head");
        let off = self.offset(&end.end, "message_end");
        assert!(
            off >= start,
            "message ends at {off}, before its start {start}"
        );
        self.last_pos = self.last_pos.max(off);
        assert!(
            end.body_prefix.len() <= self.limits.body_prefix_bytes,
            "body prefix too long"
        );
        assert!(
            end.body_missing <= end.body_bytes,
            "more body missing than body"
        );
    }

    fn malformed(&mut self, dir: Direction, _err: ParseError, at: StreamPos) {
        assert_eq!(dir, self.dir, "malformed from the other direction");
        let off = self.offset(&at, "malformed");
        if let Some(start) = self.open.take() {
            assert!(
                off >= start,
                "malformed at {off}, before its message's start {start}"
            );
        }
    }

    fn resync(&mut self, dir: Direction, at: StreamPos, _lost_message: bool) {
        assert_eq!(dir, self.dir, "resync from the other direction");
        self.offset(&at, "resync");
    }

    fn lost_sync(&mut self, dir: Direction, _resumes: StreamPos) {
        assert_eq!(dir, self.dir, "lost_sync from the other direction");
    }
}

pub fn run(dir: Direction, data: &[u8]) {
    let mut r = Reader::new(data);
    let h = r.bytes(HEADER);
    let &[flags, sizes, s0, s1, kinds] = h else {
        return;
    };
    let tiny = flags & 0x80 != 0;
    let limits = ParserLimits {
        max_head_bytes: if tiny {
            16 + 4 * usize::from(sizes)
        } else {
            64 * 1024
        },
        max_headers: if tiny {
            1 + usize::from(sizes % 32)
        } else {
            128
        },
        body_prefix_bytes: [0, 16, 2048][usize::from(sizes % 3)],
        resync_at_chunk_starts: flags & 0x02 != 0,
    };
    let max_chunk = match (flags >> 3) & 3 {
        0 => 8,
        1 => 64,
        2 => 1460,
        _ => usize::MAX,
    };
    let loss = match (flags >> 5) & 3 {
        0 => 0,
        1 => 32,
        2 => 8,
        _ => 4,
    };
    let mut rng = Rng::new(u32::from(u16::from_le_bytes([s0, s1])));
    let base = 0xFFFF_F000u32; // wraps within the first 4 KiB
    let mut parser = MessageParser::new(dir, limits, flags & 0x01 != 0);
    let mut sink = Recorder {
        dir,
        base,
        seen: 0,
        limits,
        kinds,
        responses: 0,
        heads: 0,
        open: None,
        last_pos: 0,
    };
    let bound = 2 * limits.max_head_bytes.max(CHUNK_LINE) + limits.body_prefix_bytes + 64;
    let mut ts = Timestamp::from_secs_micros(1_700_000_000, 0);
    while !r.is_empty() {
        let n = if max_chunk == usize::MAX {
            usize::MAX
        } else {
            rng.between_1_and(max_chunk)
        };
        let bytes = r.bytes(n);
        let seq = base.wrapping_add(sink.seen as u32);
        ts = ts.saturating_add_micros(100);
        sink.seen += bytes.len() as u64;
        if loss != 0 && rng.next_u32().is_multiple_of(loss) {
            // Half the time the capture's snaplen cut them, rather than lost them.
            if rng.next_u32() & 1 == 0 {
                parser.cut(seq, bytes.len() as u32, ts, &mut sink);
            } else {
                parser.gap(seq, bytes.len() as u32, ts, &mut sink);
            }
        } else {
            let chunk = Chunk {
                seq,
                ack: 1,
                ts,
                data: bytes,
            };
            parser.feed(&chunk, &mut sink);
        }
        assert!(
            parser.buffered_bytes() <= bound,
            "parser holds {} bytes, bound {bound}",
            parser.buffered_bytes()
        );
    }
    parser.end_of_stream(ts, flags & 0x04 != 0, &mut sink);
    assert!(
        sink.open.is_none(),
        "a head never ended, at the end of the stream"
    );
    assert_eq!(parser.stats().heads, sink.heads, "head counter");
    assert!(
        parser.buffered_bytes() <= limits.body_prefix_bytes,
        "buffers kept after the end"
    );
}

/// A seed: a real stream with the header bits that parse it as a capture
/// would (in sync, chunks of up to 1460 bytes, no loss, default limits).
pub fn encode(stream: &[u8], seed: u16) -> Vec<u8> {
    let mut out = vec![0x01 | 0x02 | (2 << 3), 0, 0, 0, 0];
    out[2..4].copy_from_slice(&seed.to_le_bytes());
    out.extend_from_slice(stream);
    out
}
