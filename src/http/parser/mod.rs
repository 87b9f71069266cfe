//! Incremental HTTP/1.x message parser: one per direction of a connection.
//!
//! Contract:
//! - Input is the reassembled stream in order: [`MessageParser::feed`] with
//!   each [`Chunk`], [`MessageParser::gap`] for bytes that will never arrive
//!   ([`MessageParser::cut`] for those the capture's snaplen cut),
//!   [`MessageParser::end_of_stream`] at FIN/RST/capture end/expiry.
//! - Output goes to a [`MessageSink`] in stream order: a head
//!   (`request_head`/`response_head`), then exactly one of `message_end`
//!   (body framed to its end, or stream/gap cut it: `complete`) or
//!   `malformed` (the body's chunked framing broke). `malformed` without a
//!   head before it means the head itself could not be framed. After a
//!   `malformed` or an unskippable gap the parser is out of sync; when it
//!   finds the next message start it reports `resync` and goes on.
//! - Heads are parsed across chunk boundaries: an incomplete head is kept
//!   (at most `max_head_bytes`); a head complete within one chunk is parsed
//!   straight from it. Bodies are never buffered: they are counted, skipped
//!   by length (including over gaps, when the framing allows), and only the
//!   first `body_prefix_bytes` (de-chunked) are kept.
//! - Body framing follows RFC 9112 §6.3 (see [`MessageParser`]).
//! - No input panics; memory is bounded by `max_head_bytes` + the body prefix.
//!
//! Positions: a message's start is the seq/ack/ts of the chunk holding its
//! first byte (seq offset to that byte); its end is that of its last byte.
//! A byte lost in a gap has the gap's ts and the last ack seen.

mod head;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use memchr::{memchr, memrchr};

pub use head::{sniff_request_start, sniff_response_start, Sniff};

use self::head::{find_head_end, parse_chunk_size_line, parse_head, FramingFields, ParsedHead};
use crate::clock::Timestamp;
use crate::flow::reassembly::Chunk;
use crate::http::{Direction, MessageEnd, MessageSink, Method, ParseError, RequestKind, StreamPos};

/// Bounds on what one parser holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParserLimits {
    /// Largest head (start line + fields + empty line), and largest trailer
    /// section. Past it: `malformed(HeadTooLarge)`.
    pub max_head_bytes: usize,
    /// Most header fields in one head. Past it: `malformed(HeadTooLarge)`
    /// (servers answer 431; the message cannot be framed reliably).
    pub max_headers: usize,
    /// How much of each de-chunked body is kept in `MessageEnd::body_prefix`.
    pub body_prefix_bytes: usize,
    /// Out of sync, also try the first byte of each chunk as a message start,
    /// not only line starts. Real traffic starts messages on segment
    /// boundaries after binary bodies; this makes what resync finds depend
    /// on segmentation, so the segmentation-invariance property is checked
    /// with it off.
    pub resync_at_chunk_starts: bool,
}

impl Default for ParserLimits {
    fn default() -> Self {
        ParserLimits {
            max_head_bytes: 64 * 1024,
            max_headers: 128,
            body_prefix_bytes: 2048,
            resync_at_chunk_starts: true,
        }
    }
}

/// Longest chunk-size line (size + extensions) accepted.
const MAX_CHUNK_LINE: usize = 1024;

/// What a parser tolerated, rejected and skipped. Each field counts events
/// (messages or lines), except `*_bytes`.
#[derive(Default, Clone, Debug, PartialEq, Eq)]
pub struct ParserStats {
    /// Heads reported (requests or responses, 1xx included).
    pub heads: u64,
    /// Messages ended with `complete: false` (stream end or gap).
    pub incomplete_messages: u64,
    // --- leniencies (message still framed) ---
    /// Heads or chunk lines with a line ended by LF alone.
    pub bare_lf: u64,
    /// Folded header lines joined to the previous field (obs-fold).
    pub obs_fold: u64,
    /// Whitespace-preceded lines before the first field, skipped.
    pub whitespace_line_skipped: u64,
    /// Header lines without a colon, skipped.
    pub header_without_colon: u64,
    /// Header lines whose name is empty or not a token, skipped.
    pub invalid_header_name: u64,
    /// Whitespace between a field name and its colon, tolerated.
    pub space_before_colon: u64,
    /// Field values holding control bytes, kept.
    pub control_in_header_value: u64,
    /// Request targets holding raw spaces or tabs.
    pub spaces_in_target: u64,
    /// Request targets holding control or non-ASCII bytes.
    pub control_or_non_ascii_in_target: u64,
    /// Start lines with runs of spaces as delimiters.
    pub multiple_spaces_in_start_line: u64,
    /// Status lines without a reason phrase.
    pub status_without_reason: u64,
    /// Content-Length repeated (fields or list) with one value: used.
    pub duplicate_identical_content_length: u64,
    /// Transfer-Encoding and Content-Length together: TE wins.
    pub te_and_cl: u64,
    /// Transfer-Encoding whose last coding is not chunked (responses:
    /// close-delimited; requests: malformed).
    pub unknown_transfer_encoding: u64,
    /// Empty lines (CR/LF bytes) skipped between messages.
    pub stray_crlf_bytes: u64,
    // --- errors (malformed reported) ---
    pub malformed: u64,
    pub bad_start_line: u64,
    pub conflicting_content_length: u64,
    pub invalid_content_length: u64,
    pub bad_chunk: u64,
    pub head_too_large: u64,
    pub too_many_headers: u64,
    // --- loss and resynchronisation ---
    /// Gaps skipped by length inside a body, parsing still in sync.
    pub body_gaps_skipped: u64,
    /// Gaps that lost sync (in a head, a chunk line, past a body's end...).
    pub gaps_lost_sync: u64,
    /// Message starts found after losing sync.
    pub resyncs: u64,
    /// Bytes dropped while looking for a message start.
    pub bytes_skipped_resync: u64,
    /// Heads cut short by the end of the stream (nothing is reported).
    pub incomplete_heads_at_end: u64,
    /// Heads the capture cut (snaplen) after their start line, reported
    /// from what it kept (see [`MessageParser::cut`]).
    pub heads_cut: u64,
    /// Bytes (and gap bytes) passed through in tunnel state.
    pub tunnel_bytes: u64,
}

/// Where the parser is. One exhaustive table: every handler matches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// In sync, between messages.
    Idle,
    /// Out of sync, looking for a message start at a line start. `lost`:
    /// bytes that may have held messages were lost to a gap. `line_start`:
    /// the next byte starts a line (after a gap, or after an LF).
    Resync {
        lost: bool,
        line_start: bool,
    },
    /// A head spanning chunks, kept in `buf`. `confirmed`: its start line
    /// sniffed `Yes` (else it is complete in `buf` only up to `NeedMore`).
    /// `resync`: `Some(lost)` when this is a candidate found in resync mode
    /// whose `resync` event is still to be reported once confirmed.
    Head {
        confirmed: bool,
        resync: Option<bool>,
    },
    /// Content-Length body.
    Length {
        remaining: u64,
    },
    /// A chunk-size line (partial line in `buf`).
    ChunkSize,
    ChunkData {
        remaining: u64,
    },
    /// The CRLF after chunk data.
    ChunkDataEnd {
        seen_cr: bool,
    },
    /// Trailer lines (partial line in `buf`); `bytes` so far.
    Trailers {
        bytes: usize,
    },
    /// Close-delimited body: everything until the stream ends.
    Close,
    /// After 101/CONNECT: bytes counted, not parsed. `bytes` since entered.
    Tunnel {
        bytes: u64,
    },
}

/// How a message's body is framed, once head, status and request kind are
/// known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Body {
    None,
    Length(u64),
    Chunked,
    Close,
}

/// Parses one direction. Body framing (RFC 9112 §6.3):
/// - requests: chunked if Transfer-Encoding's last coding is chunked (TE
///   wins over Content-Length), TE otherwise is malformed (servers answer
///   400), else Content-Length, else no body. A CONNECT request enters the
///   tunnel state after its head (the client may send tunnel bytes before
///   the answer); the session calls [`MessageParser::resume_from_tunnel`]
///   when the CONNECT is refused.
/// - responses: the sink's [`RequestKind`] decides HEAD and CONNECT. 1xx
///   (but 101), 204, 304, HEAD: no body. 101 and CONNECT 2xx: the message
///   ends with its head and the parser enters tunnel state. Chunked TE, then
///   other TE (close-delimited), then Content-Length, else close-delimited.
/// - Content-Length repeated with one value is used; differing or invalid
///   values are `malformed(BadContentLength)` (as servers do; one message is
///   never split into several).
///
/// Size: about 140 bytes, no heap while idle and in sync (what the stats
/// count beyond heads is allocated when first counted); `buf` holds a head only while
/// it spans chunks, and is freed when the head is done.
pub struct MessageParser {
    dir: Direction,
    /// Shared by every parser of a flow table (a copy in both parsers of a
    /// connection was an eighth of its HTTP state).
    limits: Arc<ParserLimits>,
    /// This chunk's first byte was already tried as a resync candidate.
    chunk_start_tried: bool,
    state: State,
    /// First byte of the message in progress (or of the candidate head).
    start: StreamPos,
    /// Last byte seen (data or gap): the end of a message cut by the stream.
    last: StreamPos,
    body_bytes: u64,
    body_missing: u64,
    body_prefix: Vec<u8>,
    /// A head, chunk-size line or trailer line spanning chunks.
    buf: Vec<u8>,
    /// Where in `buf` to resume looking for the end of the head.
    head_scan: u32,
    stats: LazyStats,
}

/// A parser's [`ParserStats`]: the count of heads inline, the rest (what
/// leniencies, errors and loss count) allocated when first counted, so a
/// connection that saw only well-formed messages holds none.
#[derive(Default)]
pub(crate) struct LazyStats {
    heads: u64,
    rest: crate::lazy::Lazy<ParserStats>,
}

impl LazyStats {
    pub(crate) fn get(&mut self) -> &mut ParserStats {
        self.rest.get()
    }

    fn snapshot(&self) -> ParserStats {
        let mut s = self.rest.peek().cloned().unwrap_or_default();
        s.heads = self.heads;
        s
    }

    fn heap_bytes(&self) -> usize {
        self.rest.heap_bytes()
    }
}

fn pos_in(chunk: &Chunk<'_>, off: usize) -> StreamPos {
    StreamPos {
        seq: chunk.seq.wrapping_add(off as u32),
        ack: chunk.ack,
        ts: chunk.ts,
    }
}

/// Where to resume looking for the end of a head kept in `buf`: `back`
/// bytes before its end (the end may straddle the chunks). Saturated: an
/// earlier start is only slower, never wrong.
fn scan_from(buf: &[u8], back: usize) -> u32 {
    u32::try_from(buf.len().saturating_sub(back)).unwrap_or(u32::MAX)
}

impl MessageParser {
    /// `in_sync = false`: the capture started mid-stream, so look for a
    /// message start first (reported as `resync` with `lost_message` false).
    pub fn new(dir: Direction, limits: impl Into<Arc<ParserLimits>>, in_sync: bool) -> Self {
        let zero = StreamPos {
            seq: 0,
            ack: 0,
            ts: Timestamp::ZERO,
        };
        MessageParser {
            dir,
            limits: limits.into(),
            chunk_start_tried: false,
            state: if in_sync {
                State::Idle
            } else {
                State::Resync {
                    lost: false,
                    line_start: true,
                }
            },
            start: zero,
            last: zero,
            body_bytes: 0,
            body_missing: 0,
            body_prefix: Vec::new(),
            buf: Vec::new(),
            head_scan: 0,
            stats: LazyStats::default(),
        }
    }

    /// Bytes before the first one fed were lost (a gap before the first
    /// message): look for a message start, reported as `resync` with
    /// `lost_message` true, as after any gap.
    pub fn start_after_gap(&mut self) {
        self.state = State::Resync {
            lost: true,
            line_start: true,
        };
    }

    pub fn stats(&self) -> ParserStats {
        self.stats.snapshot()
    }

    /// Between messages (in sync or looking for one), nothing buffered.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Idle | State::Resync { .. }) && self.buf.is_empty()
    }

    pub fn in_tunnel(&self) -> bool {
        matches!(self.state, State::Tunnel { .. })
    }

    /// Heap held by the message in progress (head, chunk line, body prefix).
    pub fn buffered_bytes(&self) -> usize {
        self.buf.capacity() + self.body_prefix.capacity()
    }

    /// Every heap byte held: the message buffers and the stats, once some
    /// beyond heads were counted (for the flow table's memory account).
    pub fn heap_bytes(&self) -> usize {
        self.buffered_bytes() + self.stats.heap_bytes()
    }

    /// Stop parsing: from now on bytes are only counted. A message in
    /// progress is dropped without an event (the session decided).
    pub fn enter_tunnel(&mut self) {
        if !self.in_tunnel() {
            self.drop_buffers();
            self.reset_message();
            self.state = State::Tunnel { bytes: 0 };
        }
    }

    /// The tunnel was refused (CONNECT answered non-2xx): parse again. In
    /// sync if no byte went by in the tunnel, else look for a message start.
    pub fn resume_from_tunnel(&mut self) {
        if let State::Tunnel { bytes } = self.state {
            self.state = if bytes == 0 {
                State::Idle
            } else {
                State::Resync {
                    lost: false,
                    line_start: true,
                }
            };
        }
    }

    pub fn feed(&mut self, chunk: &Chunk<'_>, sink: &mut impl MessageSink) {
        self.chunk_start_tried = false;
        let len = chunk.data.len();
        let mut i = 0;
        // INVARIANT: each step either consumes bytes or moves to a state
        // whose step will (Idle/Resync hand over at the same offset only
        // towards a state that consumes).
        while i < len {
            let step_started_at_chunk_start = i == 0;
            i = match self.state {
                State::Idle => self.step_idle(chunk, i, sink),
                State::Resync { lost, line_start } => {
                    self.step_resync(chunk, i, lost, line_start, sink)
                }
                State::Head { confirmed, resync } => {
                    self.step_head(chunk, i, confirmed, resync, sink)
                }
                State::Length { remaining } => {
                    let n = remaining.min((len - i) as u64) as usize;
                    self.body(&chunk.data[i..i + n], remaining);
                    if n as u64 == remaining {
                        self.end_message(pos_in(chunk, i + n - 1), true, State::Idle, sink);
                    } else {
                        self.state = State::Length {
                            remaining: remaining - n as u64,
                        };
                    }
                    i + n
                }
                State::ChunkData { remaining } => {
                    let n = remaining.min((len - i) as u64) as usize;
                    self.body(&chunk.data[i..i + n], u64::MAX);
                    self.state = if n as u64 == remaining {
                        State::ChunkDataEnd { seen_cr: false }
                    } else {
                        State::ChunkData {
                            remaining: remaining - n as u64,
                        }
                    };
                    i + n
                }
                State::ChunkDataEnd { seen_cr } => match chunk.data[i] {
                    b'\r' if !seen_cr => {
                        self.state = State::ChunkDataEnd { seen_cr: true };
                        i + 1
                    }
                    b'\n' => {
                        if !seen_cr {
                            self.stats.get().bare_lf += 1;
                        }
                        self.state = State::ChunkSize;
                        i + 1
                    }
                    _ => self.body_malformed(ParseError::BadChunk, i, false, sink),
                },
                State::ChunkSize | State::Trailers { .. } => self.step_chunk_line(chunk, i, sink),
                State::Close => {
                    self.body(&chunk.data[i..], u64::MAX);
                    len
                }
                State::Tunnel { bytes } => {
                    self.stats.get().tunnel_bytes += (len - i) as u64;
                    self.state = State::Tunnel {
                        bytes: bytes + (len - i) as u64,
                    };
                    len
                }
            };
            // Only the step that began the chunk may try its first byte.
            if step_started_at_chunk_start {
                self.chunk_start_tried = true;
            }
        }
        if len > 0 {
            self.last = pos_in(chunk, len - 1);
        }
    }

    /// Between messages: skip empty lines, then parse a head in place if it
    /// is complete in this chunk, else start keeping it.
    fn step_idle(&mut self, chunk: &Chunk<'_>, i: usize, sink: &mut impl MessageSink) -> usize {
        let data = &chunk.data[i..];
        // RFC 9112 §2.2: empty lines before a start line are ignored.
        let crlf = data
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        if crlf > 0 {
            self.stats.get().stray_crlf_bytes += crlf as u64;
            return i + crlf;
        }
        self.start = pos_in(chunk, i);
        // The start line first: a bad one is skipped alone (the next line
        // may start a message), not with everything up to an empty line.
        let sniff = self.sniff(data);
        if sniff == Sniff::No {
            return self.head_malformed(self.bad_start(), i, false, sink);
        }
        let window = &data[..data.len().min(self.limits.max_head_bytes)];
        if sniff == Sniff::Yes {
            if let Some(end) = find_head_end(window, 0) {
                self.finish_head(&window[..end], pos_in(chunk, i + end - 1), sink);
                return i + end;
            }
        }
        if window.len() >= self.limits.max_head_bytes {
            return self.head_malformed(ParseError::HeadTooLarge, i, false, sink);
        }
        self.buf.extend_from_slice(data);
        self.head_scan = 0;
        self.state = State::Head {
            confirmed: sniff == Sniff::Yes,
            resync: None,
        };
        chunk.data.len()
    }

    /// Out of sync: try each line start, and the first byte of each chunk
    /// (a new message usually begins a new segment, right after the end of a
    /// binary body that has no line end), for a message start.
    fn step_resync(
        &mut self,
        chunk: &Chunk<'_>,
        i: usize,
        lost: bool,
        line_start: bool,
        sink: &mut impl MessageSink,
    ) -> usize {
        let data = chunk.data;
        // Once per chunk: a candidate that failed must not be tried again.
        let chunk_start = i == 0 && self.limits.resync_at_chunk_starts && !self.chunk_start_tried;
        let mut cand = if line_start || chunk_start {
            Some(i)
        } else {
            memchr(b'\n', &data[i..]).map(|p| i + p + 1)
        };
        while let Some(c) = cand {
            if c >= data.len() {
                break;
            }
            match self.sniff(&data[c..]) {
                Sniff::Yes => {
                    self.stats.get().bytes_skipped_resync += (c - i) as u64;
                    self.report_resync(pos_in(chunk, c), lost, sink);
                    self.state = State::Idle;
                    return c;
                }
                Sniff::NeedMore => {
                    // Keep the candidate; it is decided when its line ends.
                    self.stats.get().bytes_skipped_resync += (c - i) as u64;
                    self.start = pos_in(chunk, c);
                    return self.keep_candidate(chunk, c, lost);
                }
                Sniff::No => cand = memchr(b'\n', &data[c..]).map(|p| c + p + 1),
            }
        }
        // No start in this chunk; the next chunk starts a line only if this
        // one ended with LF.
        self.stats.get().bytes_skipped_resync += (data.len() - i) as u64;
        self.state = State::Resync {
            lost,
            line_start: data.last() == Some(&b'\n'),
        };
        data.len()
    }

    /// Buffer an undecided resync candidate (a line without its LF yet).
    fn keep_candidate(&mut self, chunk: &Chunk<'_>, c: usize, lost: bool) -> usize {
        let data = &chunk.data[c..];
        if data.len() > self.limits.max_head_bytes {
            self.stats.get().bytes_skipped_resync += data.len() as u64;
            self.state = State::Resync {
                lost,
                line_start: false,
            };
        } else {
            self.buf.extend_from_slice(data);
            self.head_scan = 0;
            self.state = State::Head {
                confirmed: false,
                resync: Some(lost),
            };
        }
        chunk.data.len()
    }

    /// A head spanning chunks: confirm its start line, then find its end.
    fn step_head(
        &mut self,
        chunk: &Chunk<'_>,
        i: usize,
        confirmed: bool,
        resync: Option<bool>,
        sink: &mut impl MessageSink,
    ) -> usize {
        let data = &chunk.data[i..];
        let room = self.limits.max_head_bytes.saturating_sub(self.buf.len());
        if !confirmed {
            // Only the rest of the start line is needed to decide.
            let (take, has_lf) = match memchr(b'\n', data) {
                Some(p) => (p + 1, true),
                None => (data.len(), false),
            };
            if take > room {
                return self.drop_head(ParseError::HeadTooLarge, i, resync, false, sink);
            }
            self.buf.extend_from_slice(&data[..take]);
            return match self.sniff(&self.buf) {
                Sniff::Yes => {
                    if let Some(lost) = resync {
                        self.report_resync(self.start, lost, sink);
                    }
                    self.state = State::Head {
                        confirmed: true,
                        resync: None,
                    };
                    // The empty line can't be in `buf` yet: it ends at the
                    // start line's LF. Go on with the rest of the chunk.
                    self.head_scan = scan_from(&self.buf, 1);
                    i + take
                }
                Sniff::No => self.drop_head(self.bad_start(), i + take, resync, has_lf, sink),
                Sniff::NeedMore => i + take,
            };
        }
        let old = self.buf.len();
        let take = data.len().min(room);
        self.buf.extend_from_slice(&data[..take]);
        match find_head_end(&self.buf, self.head_scan as usize) {
            Some(end) => {
                let head = std::mem::take(&mut self.buf);
                let used = end - old;
                self.finish_head(&head[..end], pos_in(chunk, i + used - 1), sink);
                i + used
            }
            None if self.buf.len() >= self.limits.max_head_bytes => {
                self.drop_head(ParseError::HeadTooLarge, i + take, None, false, sink)
            }
            None => {
                self.head_scan = scan_from(&self.buf, 2);
                i + take
            }
        }
    }

    /// Give up the kept head: a failed resync candidate is skipped quietly,
    /// an in-sync head is malformed. Resume looking at offset `i`.
    fn drop_head(
        &mut self,
        err: ParseError,
        i: usize,
        resync: Option<bool>,
        line_start: bool,
        sink: &mut impl MessageSink,
    ) -> usize {
        let kept = self.buf.len() as u64;
        self.buf = Vec::new();
        match resync {
            Some(lost) => {
                self.stats.get().bytes_skipped_resync += kept;
                self.state = State::Resync { lost, line_start };
                i
            }
            None => self.head_malformed(err, i, line_start, sink),
        }
    }

    /// A head could not be framed: report it where it began, look for the
    /// next start from offset `i` on.
    fn head_malformed(
        &mut self,
        err: ParseError,
        i: usize,
        line_start: bool,
        sink: &mut impl MessageSink,
    ) -> usize {
        self.count_error(err);
        sink.malformed(self.dir, err, self.start);
        self.state = State::Resync {
            lost: false,
            line_start,
        };
        i
    }

    /// The body's framing broke after the head was reported.
    fn body_malformed(
        &mut self,
        err: ParseError,
        i: usize,
        line_start: bool,
        sink: &mut impl MessageSink,
    ) -> usize {
        self.reset_message();
        self.buf = Vec::new();
        self.head_malformed(err, i, line_start, sink)
    }

    fn count_error(&mut self, err: ParseError) {
        self.stats.get().malformed += 1;
        match err {
            ParseError::HeadTooLarge => self.stats.get().head_too_large += 1,
            ParseError::BadRequestLine | ParseError::BadStatusLine => {
                self.stats.get().bad_start_line += 1
            }
            ParseError::BadChunk => self.stats.get().bad_chunk += 1,
            // Counted where found (conflicting/invalid CL, unknown TE).
            ParseError::BadHeader | ParseError::BadContentLength => {}
        }
    }

    /// A complete head (`end` = position of its last byte): report it and
    /// set up its body. The next state is set here.
    fn finish_head(&mut self, head: &[u8], end: StreamPos, sink: &mut impl MessageSink) {
        self.head_scan = 0;
        let parsed = match parse_head(self.dir, head, &self.limits, &mut self.stats) {
            Ok(parsed) => parsed,
            Err(err) => {
                // Skip the whole head: the next message can only start after it.
                self.head_malformed(err, 0, true, sink);
                return;
            }
        };
        let (body, tunnel) = match parsed {
            ParsedHead::Request(head, framing) => {
                let body = match self.request_body(&framing) {
                    Ok(body) => body,
                    Err(err) => {
                        self.head_malformed(err, 0, true, sink);
                        return;
                    }
                };
                // CONNECT has no content (RFC 9110 §9.3.6); what follows is
                // the tunnel.
                let connect = head.method == Method::Connect;
                self.stats.heads += 1;
                sink.request_head(head, self.start);
                (if connect { Body::None } else { body }, connect)
            }
            ParsedHead::Response(head, framing) => {
                let status = head.status;
                let bodiless = status < 200 || status == 204 || status == 304;
                if framing.chunked.is_none() && !bodiless {
                    // Checked before reporting the head: an unframeable
                    // response is one malformed event, not a head and then
                    // an error. (A HEAD answer with bad CL is malformed too.)
                    if let Err(err) = framing.length {
                        self.head_malformed(err, 0, true, sink);
                        return;
                    }
                }
                self.stats.heads += 1;
                let kind = sink.response_head(head, self.start);
                self.response_body(status, kind, &framing)
            }
        };
        let after = if tunnel {
            State::Tunnel { bytes: 0 }
        } else {
            State::Idle
        };
        match body {
            Body::None | Body::Length(0) => self.end_message(end, true, after, sink),
            Body::Length(n) => self.state = State::Length { remaining: n },
            Body::Chunked => self.state = State::ChunkSize,
            Body::Close => self.state = State::Close,
        }
        self.last = end;
    }

    fn request_body(&mut self, f: &FramingFields) -> Result<Body, ParseError> {
        match f.chunked {
            Some(true) => {
                if !matches!(f.length, Ok(None)) {
                    self.stats.get().te_and_cl += 1;
                }
                Ok(Body::Chunked)
            }
            Some(false) => {
                self.stats.get().unknown_transfer_encoding += 1;
                Err(ParseError::BadHeader)
            }
            None => Ok(f.length?.map_or(Body::None, Body::Length)),
        }
    }

    /// Returns the body and whether the tunnel follows the head.
    fn response_body(&mut self, status: u16, kind: RequestKind, f: &FramingFields) -> (Body, bool) {
        if status == 101 || (kind == RequestKind::Connect && (200..300).contains(&status)) {
            return (Body::None, true);
        }
        if status < 200 || status == 204 || status == 304 || kind == RequestKind::Head {
            return (Body::None, false);
        }
        let body = match f.chunked {
            Some(true) => {
                if !matches!(f.length, Ok(None)) {
                    self.stats.get().te_and_cl += 1;
                }
                Body::Chunked
            }
            Some(false) => {
                self.stats.get().unknown_transfer_encoding += 1;
                Body::Close
            }
            None => match f.length {
                Ok(Some(n)) => Body::Length(n),
                _ => Body::Close,
            },
        };
        (body, false)
    }

    /// A chunk-size or trailer line: complete in the chunk (parsed in
    /// place) or kept in `buf` until its LF arrives.
    fn step_chunk_line(
        &mut self,
        chunk: &Chunk<'_>,
        i: usize,
        sink: &mut impl MessageSink,
    ) -> usize {
        let data = &chunk.data[i..];
        let (limit, err) = match self.state {
            State::Trailers { bytes } => (
                self.limits.max_head_bytes.saturating_sub(bytes),
                ParseError::HeadTooLarge,
            ),
            _ => (MAX_CHUNK_LINE, ParseError::BadChunk),
        };
        let Some(lf) = memchr(b'\n', data) else {
            if self.buf.len() + data.len() > limit {
                return self.body_malformed(err, i, false, sink);
            }
            self.buf.extend_from_slice(data);
            return chunk.data.len();
        };
        if self.buf.len() + lf + 1 > limit {
            return self.body_malformed(err, i + lf + 1, true, sink);
        }
        let line_buf;
        let line: &[u8] = if self.buf.is_empty() {
            &data[..lf]
        } else {
            self.buf.extend_from_slice(&data[..lf]);
            line_buf = std::mem::take(&mut self.buf);
            &line_buf
        };
        if line.last() != Some(&b'\r') {
            self.stats.get().bare_lf += 1;
        }
        let next = i + lf + 1;
        match self.state {
            State::Trailers { bytes } => {
                if matches!(line, [] | [b'\r']) {
                    self.end_message(pos_in(chunk, next - 1), true, State::Idle, sink);
                } else {
                    self.state = State::Trailers {
                        bytes: bytes + line.len() + 1,
                    };
                }
                next
            }
            _ => match parse_chunk_size_line(line) {
                Some(0) => {
                    self.state = State::Trailers { bytes: 0 };
                    next
                }
                Some(n) => {
                    self.state = State::ChunkData { remaining: n };
                    next
                }
                None => self.body_malformed(ParseError::BadChunk, next, true, sink),
            },
        }
    }

    /// Body bytes: count them and keep the prefix. `hint`: how many body
    /// bytes are still to come, if known (sizes the prefix buffer once).
    /// The prefix stops at the first gap: it holds only the body's real
    /// first bytes.
    fn body(&mut self, bytes: &[u8], hint: u64) {
        self.body_bytes += bytes.len() as u64;
        let limit = self.limits.body_prefix_bytes;
        let have = self.body_prefix.len();
        if have < limit && !bytes.is_empty() && self.body_missing == 0 {
            if self.body_prefix.capacity() == 0 {
                let want = hint.min(limit as u64) as usize;
                self.body_prefix
                    .reserve_exact(want.max(bytes.len().min(limit)));
            }
            let n = bytes.len().min(limit - have);
            self.body_prefix.extend_from_slice(&bytes[..n]);
        }
    }

    fn end_message(
        &mut self,
        end: StreamPos,
        complete: bool,
        next: State,
        sink: &mut impl MessageSink,
    ) {
        if !complete {
            self.stats.get().incomplete_messages += 1;
        }
        let msg = MessageEnd {
            end,
            body_bytes: self.body_bytes,
            body_missing: self.body_missing,
            body_prefix: std::mem::take(&mut self.body_prefix),
            complete,
        };
        self.reset_message();
        self.buf = Vec::new();
        self.state = next;
        sink.message_end(self.dir, msg);
    }

    fn reset_message(&mut self) {
        self.body_bytes = 0;
        self.body_missing = 0;
        self.body_prefix = Vec::new();
        self.head_scan = 0;
    }

    fn drop_buffers(&mut self) {
        self.buf = Vec::new();
    }

    fn report_resync(&mut self, at: StreamPos, lost: bool, sink: &mut impl MessageSink) {
        self.stats.get().resyncs += 1;
        sink.resync(self.dir, at, lost);
    }

    fn sniff(&self, data: &[u8]) -> Sniff {
        match self.dir {
            Direction::ToServer => sniff_request_start(data),
            Direction::ToClient => sniff_response_start(data),
        }
    }

    fn bad_start(&self) -> ParseError {
        match self.dir {
            Direction::ToServer => ParseError::BadRequestLine,
            Direction::ToClient => ParseError::BadStatusLine,
        }
    }

    /// When the last byte (or gap) of this direction came.
    pub fn last_seen(&self) -> Timestamp {
        self.last.ts
    }

    /// `len` bytes from `seq` are lost. Inside a body whose framing covers
    /// them they are skipped by length (counted in `body_missing`); anywhere
    /// else the parser loses sync: a message in progress ends incomplete and
    /// the parser looks for the next start after the gap.
    pub fn gap(&mut self, seq: u32, len: u32, ts: Timestamp, sink: &mut impl MessageSink) {
        if len == 0 {
            return;
        }
        let ack = self.last.ack;
        let at = move |off: u64| StreamPos {
            seq: seq.wrapping_add(off as u32),
            ack,
            ts,
        };
        let len = u64::from(len);
        let mut off = 0u64;
        while off < len {
            let rest = len - off;
            match self.state {
                State::Tunnel { bytes } => {
                    self.stats.get().tunnel_bytes += rest;
                    self.state = State::Tunnel {
                        bytes: bytes + rest,
                    };
                    off = len;
                }
                State::Close => {
                    self.skip_body(rest);
                    off = len;
                }
                State::Length { remaining } => {
                    let n = remaining.min(rest);
                    self.skip_body(n);
                    off += n;
                    if n == remaining {
                        self.end_message(at(off - 1), true, State::Idle, sink);
                    } else {
                        self.state = State::Length {
                            remaining: remaining - n,
                        };
                    }
                }
                State::ChunkData { remaining } if rest <= remaining => {
                    self.skip_body(rest);
                    off = len;
                    self.state = if rest == remaining {
                        State::ChunkDataEnd { seen_cr: false }
                    } else {
                        State::ChunkData {
                            remaining: remaining - rest,
                        }
                    };
                }
                State::ChunkData { remaining } => {
                    // Crosses a chunk boundary: the next size is lost.
                    self.skip_body(remaining);
                    self.lose_sync(at(len), sink);
                    off = len;
                }
                State::ChunkSize | State::ChunkDataEnd { .. } | State::Trailers { .. } => {
                    self.lose_sync(at(len), sink);
                    off = len;
                }
                State::Head { .. } => {
                    self.stats.get().bytes_skipped_resync += self.buf.len() as u64;
                    self.lose_sync(at(len), sink);
                    off = len;
                }
                State::Idle | State::Resync { .. } => {
                    self.lose_sync(at(len), sink);
                    off = len;
                }
            }
        }
        self.last = at(len - 1);
    }

    /// `len` bytes from `seq` were captured short (cut by the snaplen),
    /// not lost on the way. A head they cut after its start line is
    /// reported from what the capture kept: the start line and the fields
    /// whose lines ended before the cut (a request's `cut` says so; an
    /// interim response's is not reported). It ends there, incomplete, its
    /// rest unknown (the cut may hold its body and further messages), and
    /// the parser looks for the next start after the gap. Anything else is
    /// a [`MessageParser::gap`].
    pub fn cut(&mut self, seq: u32, len: u32, ts: Timestamp, sink: &mut impl MessageSink) {
        if len == 0
            || !matches!(
                self.state,
                State::Head {
                    confirmed: true,
                    ..
                }
            )
        {
            return self.gap(seq, len, ts, sink);
        }
        let Some(head) = self.kept_head() else {
            return self.gap(seq, len, ts, sink);
        };
        let at = |off: u32| StreamPos {
            seq: seq.wrapping_add(off),
            ack: self.last.ack,
            ts,
        };
        let (end, resumes) = (at(len - 1), at(len));
        match head {
            ParsedHead::Request(mut head, _) => {
                head.cut = true;
                sink.request_head(head, self.start);
            }
            ParsedHead::Response(head, _) => {
                sink.response_head(head, self.start);
            }
        }
        self.stats.heads += 1;
        self.stats.get().heads_cut += 1;
        // Out of sync first (the sink's order: what the gap cut, then the
        // message it cut short ends), looking for a start after the gap.
        self.lose_sync(resumes, sink);
        let resync = self.state;
        self.end_message(end, false, resync, sink);
        self.last = end;
    }

    /// The head kept in `buf`, as far as it is in whole lines, if its start
    /// line is among them and parses (an interim response's is left out:
    /// what it leads to cannot be told without its fields).
    fn kept_head(&mut self) -> Option<ParsedHead> {
        let lf = memrchr(b'\n', &self.buf)?;
        let mut head = self.buf[..=lf].to_vec();
        // The empty line that would have ended it (after bare LFs too).
        head.extend_from_slice(b"\r\n");
        match parse_head(self.dir, &head, &self.limits, &mut self.stats).ok()? {
            ParsedHead::Response(h, _) if h.status < 200 => None,
            parsed => Some(parsed),
        }
    }

    fn skip_body(&mut self, n: u64) {
        if n > 0 {
            self.stats.get().body_gaps_skipped += 1;
        }
        self.body_bytes += n;
        self.body_missing += n;
    }

    /// A gap that framing cannot skip: end a reported message as incomplete
    /// and look for the next start right after the gap.
    fn lose_sync(&mut self, resumes: StreamPos, sink: &mut impl MessageSink) {
        self.stats.get().gaps_lost_sync += 1;
        sink.lost_sync(self.dir, resumes);
        if matches!(
            self.state,
            State::ChunkSize
                | State::ChunkData { .. }
                | State::ChunkDataEnd { .. }
                | State::Trailers { .. }
        ) {
            self.end_message(self.last, false, State::Idle, sink);
        }
        self.buf = Vec::new();
        self.reset_message();
        self.state = State::Resync {
            lost: true,
            line_start: true,
        };
    }

    /// FIN, RST, end of capture or flow expiry. A close-delimited body ends
    /// complete on FIN (and at capture end/expiry, `reset = false`) but not
    /// on RST, which may have cut the response short; any other message in
    /// progress ends incomplete. A head not yet complete is not reported
    /// (capture ends cut heads routinely; that is not a malformed message):
    /// it is counted in `incomplete_heads_at_end`. The end position is the
    /// last byte seen, not the FIN, so `_ts` is unused today.
    pub fn end_of_stream(&mut self, _ts: Timestamp, reset: bool, sink: &mut impl MessageSink) {
        match self.state {
            State::Close => self.end_message(self.last, !reset, State::Idle, sink),
            State::Length { .. }
            | State::ChunkSize
            | State::ChunkData { .. }
            | State::ChunkDataEnd { .. }
            | State::Trailers { .. } => self.end_message(self.last, false, State::Idle, sink),
            State::Head { resync, .. } => {
                // A resync candidate was never a message; an in-sync head was.
                if resync.is_none() {
                    self.stats.get().incomplete_heads_at_end += 1;
                }
                self.state = State::Idle;
            }
            State::Idle | State::Resync { .. } | State::Tunnel { .. } => {}
        }
        self.buf = Vec::new();
        self.reset_message();
    }
}
