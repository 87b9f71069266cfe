//! Request/response pairing for one connection.
//!
//! Contract: [`HttpSession`] receives both parsers' events (it is their
//! [`MessageSink`]) and turns them into [`Exchange`]s, FIFO, one per request
//! seen (or per response whose request was not seen). Interim 1xx responses
//! never end an exchange. A request keeps its pipelining slot after it timed
//! out, so a late response pairs with it and writes no second record. A
//! response that ends while its request's body is still being read (an
//! early `201` or `413`, or the request's end waits behind a hole) is
//! written when the request ends, with its body size and any loss in it, or
//! a transaction timeout after the response ended (a body that streams on).
//!
//! Pairing never crosses a gap it cannot account for. Every pairing is
//! checked against TCP causality, using the ACK fields the reassembler
//! carries: a response R can answer request Q only if the server had
//! received Q when it sent R (`R.ack > Q.seq`) and the client had not yet
//! received R when it sent Q (`Q.ack <= R.seq`). After a gap in the response
//! stream several pending requests may pass that test; the first whose ACK
//! equals R's first sequence number (the client sent it right after the
//! previous response ended) is the answered one, the earlier ones lost their
//! responses in the gap (later ones with that ACK were pipelined behind it:
//! their responses follow R). When the evidence does not single one out, the
//! candidates are logged without a response and R as an orphan, all marked
//! `capture_loss`, rather than guessed.
//!
//! Nor does a gap make a failure. A request left unanswered (at its timeout
//! or the connection's end) is logged as unknown with `capture_loss`, not as
//! timed out or cut off, when its answer may have been lost: a gap in the
//! response stream (or a response framed without its request, or in doubt,
//! whose body ran on or did not end) with no response paired for sure since,
//! a pairing in doubt that may have taken its answer, a response in doubt
//! still being read, a response logged alone that the server sent once it had
//! the request, or when it was found by resynchronising the request stream
//! and no response has been paired since (it may be text inside a body whose
//! start was lost, such as a batch request's parts). Pairings across requests
//! lost in a gap (a placeholder stands for any number of them) are guesses,
//! flagged with `capture_loss`, and so are the ones after them until no
//! request waits. What is found right after a gap may be text of a body: a
//! response head there is flagged, a malformed message there is what the gap
//! left (unknown), not a malformed message the endpoint sent. So is what
//! follows a response framed in doubt (it may begin inside that response's
//! body, or after a body it did not have), unless the request it answers
//! acknowledges exactly its first byte; a response in doubt whose body cannot
//! be framed is unknown, not malformed. After a request that asked to switch
//! protocols (Upgrade, CONNECT) was logged without its answer for loss, the
//! rest of the connection may be the tunnel's bytes: every later exchange is
//! flagged, and unanswered ones are unknown.
//!
//! A response that began, lost segments to the capture (not bytes cut by
//! snaplen) and shows nothing more by its request's deadline is held, not
//! logged: its end and the ACKs that prove it may be lost too, and a slow
//! response looks the same until more of it comes. More of it after the
//! deadline makes it a timeout; an end the capture saw by the deadline, what
//! it is; an end after the deadline through lost bytes (an ACK says they came,
//! not when), unknown with `capture_loss`; no end, a timeout.

use super::exchange::{Exchange, Outcome};
use super::{
    Direction, MessageEnd, MessageSink, Method, ParseError, RequestHead, RequestKind, ResponseHead,
    StreamPos,
};
use crate::clock::Timestamp;
use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::num::NonZeroU64;

/// The addresses of an exchange not yet drained.
const UNSET_ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));

/// Most requests waiting for responses on one connection; past it the oldest
/// is logged without a response (a flood of pipelined requests costs bounded
/// memory).
pub const MAX_PENDING: usize = 256;

/// Largest output and queue (in exchanges, requests) the spare buffers keep.
const SPARE_OUT_MAX: usize = 64;
const SPARE_PENDING_MAX: usize = 64;

/// Room for a session's finished exchanges and waiting requests, lent to
/// one session at a time: one per flow table (see
/// [`HttpSession::borrow_buffers`]). Always empty between uses.
#[derive(Debug, Default)]
pub struct SpareBuffers {
    out: Vec<Exchange>,
    pending: VecDeque<Pending>,
}

impl SpareBuffers {
    /// Heap bytes held (counted with the flow table).
    pub fn heap_bytes(&self) -> usize {
        self.out.capacity() * std::mem::size_of::<Exchange>()
            + self.pending.capacity() * std::mem::size_of::<Pending>()
    }
}

/// Why a connection's streams ended, which decides what an unanswered
/// request failed of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// FIN or RST: the connection ended before a complete response.
    Closed,
    /// End of the capture file or flow expiry: the answer is unknown.
    CaptureEnded,
}

/// Deferred commands for the parsers, applied by the connection after the
/// parser call that produced them returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParserCommands {
    pub request_enter_tunnel: bool,
    pub request_resume: bool,
}

#[derive(Clone, Debug)]
struct Pending {
    /// None: a request we know was there but could not read (malformed), or
    /// a placeholder for one lost in a capture gap (`placeholder`).
    head: Option<RequestHead>,
    start: StreamPos,
    body_bytes: u64,
    body_prefix: Vec<u8>,
    /// Already written as timed out; the slot stays for pairing.
    logged: bool,
    capture_loss: bool,
    malformed: bool,
    placeholder: bool,
    id: u64,
}

impl Pending {
    /// When it times out.
    fn deadline(&self, timeout_micros: i64) -> Timestamp {
        self.start.ts.saturating_add_micros(timeout_micros)
    }

    /// Still owed a record: neither written as timed out nor a placeholder.
    fn waits(&self) -> bool {
        !self.logged && !self.placeholder
    }

    /// A placeholder for requests lost in a gap of the request stream.
    fn stands_for_lost(&self) -> bool {
        self.placeholder && self.capture_loss
    }
}

/// What came back for a request, as far as it is known.
#[derive(Debug)]
struct Answer {
    response: Option<ResponseHead>,
    end_ts: Option<Timestamp>,
    body_bytes: u64,
    body_prefix: Vec<u8>,
    outcome: Outcome,
    capture_loss: bool,
}

impl Answer {
    /// No (complete) response: only how and when the exchange ended.
    fn nothing(outcome: Outcome, end_ts: Option<Timestamp>, capture_loss: bool) -> Self {
        Answer {
            response: None,
            end_ts,
            body_bytes: 0,
            body_prefix: Vec::new(),
            outcome,
            capture_loss,
        }
    }
}

#[derive(Debug)]
struct InFlight {
    head: ResponseHead,
    /// The head's first byte; for interim responses, the first interim's
    /// since the last final response (where the answer began). An interim
    /// response stays in flight after its end, until the next head.
    start: StreamPos,
    request: Option<Pending>,
    interim: bool,
    capture_loss: bool,
    /// Segments of it were lost to the capture (not bytes cut by snaplen):
    /// its end, and the ACK that proves it came, may be lost too.
    segments_lost: bool,
    /// Its request's deadline passed with it unfinished and nothing of it
    /// seen since: whether it timed out is decided when it ends, or when
    /// more of it comes ([`HttpSession::expire`]).
    overdue: bool,
}

impl InFlight {
    /// Framed without its request (a HEAD's response has no body whatever
    /// its fields say) or paired in doubt: its framing may be wrong.
    fn in_doubt(&self) -> bool {
        self.request.is_none() || self.capture_loss
    }
}

#[derive(Debug)]
pub struct HttpSession {
    timeout_micros: i64,
    pending: VecDeque<Pending>,
    /// The response being parsed (boxed: an idle connection has none).
    in_flight: Option<Box<InFlight>>,
    /// id of the request whose body is still being parsed.
    open_request: Option<NonZeroU64>,
    /// An exchange answered while its request's body was still being
    /// parsed (an early response, or a request whose end waits behind a
    /// hole): written once the request ends, so its body size and any loss
    /// in it are known, or a timeout after the response ended.
    parked: Option<Box<(Pending, Answer)>>,
    next_id: u64,
    /// A gap in the response stream since the last proven pairing (gaps in
    /// the request stream are placeholders in `pending`).
    uncertain: bool,
    /// Where the response stream resumed after its last gap, until a
    /// response pairs for sure: a request left unanswered meanwhile may
    /// have had its answer in the gap (or misframed after it), so it is
    /// unknown, not failed ([`Self::answer_may_be_lost`]).
    response_gap: Option<u32>,
    /// A pairing was guessed (across a placeholder, after a gap): the ones
    /// after it, and requests left unanswered, are in doubt (logged with
    /// `capture_loss`, unanswered ones as unknown) until no request waits.
    guessing: bool,
    /// A request that asked to switch protocols (Upgrade, CONNECT) was
    /// logged without its answer: the rest of the connection may be the
    /// tunnel's bytes, so everything after it is in doubt.
    maybe_tunnel: bool,
    /// Bytes of the request stream were lost since the last request head
    /// (or before the first): a response with no request to pair may
    /// have answered one of them, so it is logged with `capture_loss`.
    requests_lost: bool,
    /// The ACK of the last response logged without its request: the server
    /// had the client's bytes up to there. A request sent before that but
    /// parsed only later (it waited behind a hole in the client's stream)
    /// may have been answered by it.
    orphaned_to: Option<u32>,
    /// Per direction (requests, responses): resynchronised after a gap, and
    /// no message framed since.
    fresh_sync: [bool; 2],
    /// The last response was framed without its request or in doubt
    /// (capture loss): a malformed response next is likely our misframing.
    framing_in_doubt: bool,
    ending: StreamEnd,
    pub commands: ParserCommands,
    /// Messages that could not be framed since the last take, per direction
    /// ([requests, responses]); the flow table moves them into its stats.
    pub parse_errors: [u32; 2],
    /// Set once, when the connection's first request head is parsed (the
    /// flow layer labels the connection with it, and takes it).
    pub first_request: Option<Box<FirstRequest>>,
    /// A request head was parsed.
    first_seen: bool,
    out: Vec<Exchange>,
}

/// What the flow layer needs of a connection's first request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirstRequest {
    /// Its Host as [`crate::classify::host_of`] reads it (the same value the
    /// exchange metrics use); None when it named none.
    pub host: Option<String>,
    /// Its first byte.
    pub ts: Timestamp,
}

fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

impl HttpSession {
    /// Bytes of the request stream were lost before its first message was
    /// recognised (the flow layer saw the gap while sniffing the protocol).
    pub fn requests_lost_before_start(&mut self) {
        self.requests_lost = true;
    }

    /// The connection's addresses are given when exchanges are drained
    /// (the flow table has them in its key: the session does not keep them).
    pub fn new(timeout_micros: i64) -> Self {
        HttpSession {
            timeout_micros,
            pending: VecDeque::new(),
            in_flight: None,
            open_request: None,
            parked: None,
            next_id: 0,
            uncertain: false,
            response_gap: None,
            guessing: false,
            maybe_tunnel: false,
            requests_lost: false,
            orphaned_to: None,
            fresh_sync: [false; 2],
            framing_in_doubt: false,
            ending: StreamEnd::CaptureEnded,
            commands: ParserCommands::default(),
            parse_errors: [0; 2],
            first_request: None,
            first_seen: false,
            out: Vec::new(),
        }
    }

    /// Exchanges finished since the last call, between `client` and
    /// `server`.
    pub fn drain(
        &mut self,
        (client, server): (SocketAddr, SocketAddr),
    ) -> impl Iterator<Item = Exchange> + '_ {
        self.out.drain(..).map(move |e| Exchange {
            client,
            server,
            ..e
        })
    }

    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Heap bytes held: the waiting requests' queue (its whole capacity)
    /// and what they hold, an open response, finished exchanges not yet
    /// drained (not what they hold: the flow layer drains them after each
    /// call), the first request's Host (for the flow table's memory
    /// budget; an estimate, not an allocator count).
    pub fn heap_bytes(&self) -> usize {
        let request = |p: &Pending| {
            p.body_prefix.capacity()
                + p.head
                    .as_ref()
                    .map_or(0, |h| h.target.capacity() + h.headers.heap_bytes())
        };
        let in_flight = self.in_flight.as_ref().map_or(0, |f| {
            std::mem::size_of::<InFlight>()
                + f.head.headers.heap_bytes()
                + f.request.as_ref().map_or(0, request)
        });
        let host = self.first_request.as_ref().map_or(0, |f| {
            std::mem::size_of::<FirstRequest>() + f.host.as_ref().map_or(0, String::capacity)
        });
        let parked = self.parked.as_ref().map_or(0, |b| {
            let (p, a) = &**b;
            std::mem::size_of::<(Pending, Answer)>()
                + request(p)
                + a.body_prefix.capacity()
                + a.response.as_ref().map_or(0, |r| r.headers.heap_bytes())
        });
        self.pending.capacity() * std::mem::size_of::<Pending>()
            + self.pending.iter().map(request).sum::<usize>()
            + in_flight
            + parked
            + self.out.capacity() * std::mem::size_of::<Exchange>()
            + host
    }

    /// Before feeding the parsers: use the spare buffers' room for the
    /// queue and the output when this session holds none (so a connection
    /// that went quiet costs no room for them, and busy ones allocate
    /// nothing per exchange).
    pub fn borrow_buffers(&mut self, spare: &mut SpareBuffers) {
        if self.out.capacity() == 0 {
            std::mem::swap(&mut self.out, &mut spare.out);
        }
        if self.pending.capacity() == 0 {
            std::mem::swap(&mut self.pending, &mut spare.pending);
        }
    }

    /// After draining: hand empty buffers back to `spare` (the larger of
    /// its and ours is kept there, within bounds; the other is freed).
    /// What still holds something stays.
    pub fn return_buffers(&mut self, spare: &mut SpareBuffers) {
        // Usually the buffers were borrowed from an empty-handed spare and
        // go back whole, leaving nothing to free here (dropping even an
        // empty queue is a loop over its slices, once per segment).
        if self.out.is_empty() && self.out.capacity() > 0 {
            if self.out.capacity() <= SPARE_OUT_MAX && self.out.capacity() > spare.out.capacity() {
                std::mem::swap(&mut self.out, &mut spare.out);
            }
            if self.out.capacity() > 0 {
                self.out = Vec::new();
            }
        }
        if self.pending.is_empty() && self.pending.capacity() > 0 {
            if self.pending.capacity() <= SPARE_PENDING_MAX
                && self.pending.capacity() > spare.pending.capacity()
            {
                std::mem::swap(&mut self.pending, &mut spare.pending);
            }
            if self.pending.capacity() > 0 {
                self.pending = VecDeque::new();
            }
        }
    }

    /// Requests waiting for a response (including timed-out slots).
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// The earliest time at which [`HttpSession::expire`] has work to do,
    /// a response held overdue aside (see [`Self::holds_overdue`]).
    pub fn next_deadline(&self) -> Option<Timestamp> {
        let waiting = self
            .pending
            .iter()
            .chain(
                self.in_flight
                    .iter()
                    .filter(|f| !f.overdue)
                    .filter_map(|f| f.request.as_ref()),
            )
            .filter(|p| p.waits())
            .map(|p| p.start.ts);
        let parked = self.parked_since();
        waiting
            .chain(parked)
            .min()
            .map(|t| t.saturating_add_micros(self.timeout_micros))
    }

    /// A response is held overdue ([`Self::expire`]): no time decides it,
    /// only what comes of it, so call `expire` whenever the response stream
    /// moves.
    pub fn holds_overdue(&self) -> bool {
        self.in_flight.as_ref().is_some_and(|f| f.overdue)
    }

    /// Segments of the response stream were lost to the capture (a gap
    /// the response parser skipped or lost sync over). Call after feeding
    /// the gap to the parser.
    pub fn response_segments_lost(&mut self) {
        if let Some(f) = self.in_flight.as_mut() {
            f.segments_lost = true;
        }
    }

    /// Log every request whose transaction timeout has passed by `now`
    /// (as unknown, with capture loss, when its answer may have been lost:
    /// see the module doc). `response_seen`: when the response stream's
    /// last byte or gap came.
    ///
    /// A response that began but lost segments to the capture and has
    /// shown nothing since its request's deadline is not logged yet: a
    /// capture that lost its middle may have lost its end and the ACKs
    /// that prove it came, and a slow response looks the same until more
    /// of it comes. More of it after the deadline (a later call) makes it
    /// a timeout; its end decides otherwise ([`Self::finish_response`]).
    pub fn expire(&mut self, now: Timestamp, response_seen: Timestamp) {
        let timeout = self.timeout_micros;
        if self
            .parked_since()
            .is_some_and(|t| t.saturating_add_micros(timeout) <= now)
        {
            // The request's body goes on long after its answer: write what
            // is known of it.
            self.release_parked();
        }
        let mut expired = Vec::new();
        // A response whose head came but whose end did not: the status was
        // seen on the wire and is kept; the failure is still the timeout.
        if let Some(f) = self.in_flight.as_mut().filter(|f| !f.interim) {
            let head = f.head.clone();
            if let Some(p) = f.request.as_mut() {
                let deadline = p.deadline(timeout);
                if p.waits() && deadline <= now {
                    f.overdue = f.segments_lost && response_seen <= deadline;
                    if !f.overdue {
                        expired.push((p.clone(), Some(head), false));
                        p.logged = true;
                    }
                }
            }
        }
        let mut unproven = false;
        for p in self.pending.iter_mut() {
            unproven |= p.stands_for_lost();
            if p.waits() && p.deadline(timeout) <= now {
                expired.push((p.clone(), None, unproven));
                p.logged = true;
            }
        }
        for (p, response, unproven) in expired {
            let deadline = p.deadline(timeout);
            let answer = if response.is_none() && (unproven || self.answer_may_be_lost(&p)) {
                Answer::nothing(Outcome::Unknown, Some(deadline), true)
            } else {
                Answer {
                    response,
                    ..Answer::nothing(Outcome::TimedOut, Some(deadline), false)
                }
            };
            self.emit(Ok(p), answer);
        }
    }

    /// Both streams ended (the parsers' `end_of_stream` must come after this
    /// call, so an incomplete response learns why); then call
    /// [`HttpSession::close`].
    pub fn set_ending(&mut self, why: StreamEnd) {
        self.ending = why;
    }

    /// Log every request still waiting (as unknown, with capture loss, when
    /// its answer may have been lost). `now`: the time the end was seen.
    /// An answered exchange whose request is still open stays: the client's
    /// stream, which may outlive the server's, ends it.
    pub fn close(&mut self, now: Timestamp) {
        // What is still overdue is decided as its response is finished.
        self.expire(now, Timestamp::ZERO);
        if let Some(f) = self.in_flight.take().map(|f| *f) {
            // A head without an end: the parser already reported the end if
            // it could; whatever remains is unknown.
            let outcome = self.end_outcome();
            if f.interim {
                self.pending_restore(f.request);
            } else {
                self.finish_response(f, None, outcome);
            }
        }
        let mut unproven = false;
        while let Some(p) = self.pending.pop_front() {
            unproven |= p.stands_for_lost();
            if !p.waits() {
                continue;
            }
            let answer = if unproven || self.answer_may_be_lost(&p) {
                Answer::nothing(Outcome::Unknown, None, true)
            } else {
                let end = (self.ending == StreamEnd::Closed).then_some(now);
                Answer::nothing(self.end_outcome(), end, false)
            };
            self.emit(Ok(p), answer);
        }
    }

    fn end_outcome(&self) -> Outcome {
        match self.ending {
            StreamEnd::Closed => Outcome::ConnectionEnded,
            StreamEnd::CaptureEnded => Outcome::Unknown,
        }
    }

    fn pending_restore(&mut self, p: Option<Pending>) {
        if let Some(p) = p {
            self.pending.push_front(p);
        }
    }

    /// Write one record: a request (or, for `Err`, a response whose
    /// request was not seen, starting at the position given) and its answer.
    /// A request already written as timed out gets no second record; a
    /// malformed request makes the exchange malformed whatever came back.
    fn emit(&mut self, request: Result<Pending, StreamPos>, mut answer: Answer) {
        let (head, start, body_bytes, body_prefix) = match request {
            Ok(p) if p.logged => return,
            Ok(p) => {
                if p.malformed {
                    answer.outcome = Outcome::Malformed;
                }
                answer.capture_loss |= p.capture_loss;
                (p.head, p.start, p.body_bytes, p.body_prefix)
            }
            Err(at) => (None, at, 0, Vec::new()),
        };
        if self.maybe_tunnel {
            answer.capture_loss = true;
            if answer.response.is_none() {
                answer.outcome = Outcome::Unknown;
            }
        } else if answer.response.is_none() && answer.capture_loss {
            self.maybe_tunnel = head
                .as_ref()
                .is_some_and(|h| h.method == Method::Connect || h.headers.get("upgrade").is_some());
        }
        // Capture order can put a response's bytes before its request's
        // (reordering across directions): an exchange never ends before it
        // starts.
        let end_ts = answer.end_ts.map(|e| e.max(start.ts));
        self.out.push(Exchange {
            ts: start.ts,
            // Set by `drain`.
            client: UNSET_ADDR,
            server: UNSET_ADDR,
            request: head,
            response: answer.response,
            end_ts,
            request_body_bytes: body_bytes,
            response_body_bytes: answer.body_bytes,
            request_body_prefix: body_prefix,
            response_body_prefix: answer.body_prefix,
            outcome: answer.outcome,
            capture_loss: answer.capture_loss,
            failure: None,
            route: None,
            host: None,
            findings: Vec::new(),
        });
    }

    /// Could `r` (a response starting at `r`) answer `q`? Unknown ACKs
    /// (zero: a segment without ACK) prove nothing either way.
    fn causal(q: &Pending, r: &StreamPos) -> bool {
        if q.placeholder {
            return true;
        }
        let server_had_q = r.ack == 0 || seq_lt(q.start.seq, r.ack);
        let client_had_not_r = q.start.ack == 0 || !seq_lt(r.seq, q.start.ack);
        server_had_q && client_had_not_r
    }

    /// Pick the request a final response starting at `r` answers, logging the
    /// ones the evidence says lost their responses (module doc).
    fn select_request(&mut self, r: &StreamPos) -> (Option<Pending>, bool) {
        let (request, loss) = self.place(r);
        match (&request, self.orphaned_to) {
            (None, _) if r.ack != 0 => self.orphaned_to = Some(r.ack),
            (Some(p), Some(a)) if seq_lt(p.start.seq, a) => {
                // The server had this request when it sent a response we
                // logged alone: that may have been its answer, and this
                // one the next request's.
                self.guessing = true;
            }
            (Some(_), Some(_)) => self.orphaned_to = None,
            _ => {}
        }
        let guessed = self.guessing;
        if !self.pending.iter().any(Pending::waits) {
            self.guessing = false;
        }
        (request, loss || guessed)
    }

    /// [`Self::select_request`] but for the pairings a guess put in doubt.
    fn place(&mut self, r: &StreamPos) -> (Option<Pending>, bool) {
        let Some(front) = self.pending.front() else {
            return (None, self.uncertain || self.requests_lost);
        };
        if !Self::causal(front, r) {
            // The response precedes every request we have: its own was not seen.
            return (None, true);
        }
        // Requests lost in a gap of the request stream are a placeholder
        // in the queue: FIFO holds up to it, as long as the response
        // stream had no gap.
        if !self.uncertain && !front.placeholder {
            return (self.pending.pop_front(), false);
        }
        let candidates = self
            .pending
            .iter()
            .take_while(|q| Self::causal(q, r))
            .count();
        // A placeholder stands for any number of requests: passing one to
        // pair (or pairing it) is a guess, and so is every pairing after
        // it until no request waits. One after the request paired is not
        // passed: what it stands for was sent later, answered later.
        let guess_before = |n: usize| self.pending.iter().take(n).any(Pending::stands_for_lost);
        // Either way a response after the gaps is placed: pairing is by FIFO
        // again (the doubts it leaves are `guessing`'s).
        if candidates == 1 {
            let guess = guess_before(1);
            self.guessing |= guess;
            self.uncertain = false;
            return (self.pending.pop_front(), guess);
        }
        let exact: Vec<usize> = (0..candidates)
            .filter(|&i| {
                let q = &self.pending[i];
                !q.placeholder && q.start.ack != 0 && q.start.ack == r.seq
            })
            .collect();
        self.uncertain = false;
        // Of several such requests (pipelined: the client received nothing
        // between them) the first is answered: its response starts at or
        // after `r`, so it cannot lie in the gap, and it comes before the
        // later ones' responses.
        if let Some(&j) = exact.first() {
            let guess = guess_before(j);
            self.guessing |= guess;
            for _ in 0..j {
                let lost = self.pending.pop_front().expect("j < candidates <= len");
                self.log_lost(lost);
            }
            return (self.pending.pop_front(), guess);
        }
        self.guessing |= guess_before(candidates);
        for _ in 0..candidates {
            let lost = self.pending.pop_front().expect("candidates <= len");
            self.log_lost(lost);
        }
        (None, true)
    }

    /// Could `q`'s answer have been lost: in a gap of the response stream
    /// (or taken for text of a body, or a body for responses, as framing
    /// after a gap can) with no response paired for sure since, taken by a
    /// pairing in doubt (`guessing`), inside the body of a response in
    /// doubt still being read, or was it the response logged without
    /// request, sent once the server had `q` ([`HttpSession::orphaned_to`])?
    fn answer_may_be_lost(&self, q: &Pending) -> bool {
        self.maybe_tunnel
            || self.response_gap.is_some()
            || self.guessing
            || self.orphaned_to.is_some_and(|a| seq_lt(q.start.seq, a))
            || self
                .in_flight
                .as_ref()
                .is_some_and(|f| !f.interim && f.in_doubt())
    }

    /// A request whose response was lost in a capture gap.
    fn log_lost(&mut self, p: Pending) {
        if p.waits() {
            self.emit(Ok(p), Answer::nothing(Outcome::Unknown, None, true));
        }
    }

    /// The open request's body ended (or was given up on): an exchange
    /// answered meanwhile can be written.
    fn end_open_request(&mut self) {
        self.open_request = None;
        self.release_parked();
    }

    /// When the exchange waiting for its request's end was answered.
    fn parked_since(&self) -> Option<Timestamp> {
        self.parked.as_ref().and_then(|b| b.1.end_ts)
    }

    /// Write the exchange waiting for its request's end, if any (the
    /// request parser's end of stream does; call it after that, before
    /// dropping the session, in case the request had no body left open).
    pub fn release_parked(&mut self) {
        if let Some(b) = self.parked.take() {
            let (p, answer) = *b;
            self.emit(Ok(p), answer);
        }
    }

    fn finish_response(&mut self, f: InFlight, end: Option<MessageEnd>, outcome: Outcome) {
        // A response framed without its request (a HEAD's has no body
        // whatever its fields say) or paired in doubt (it may be text of a
        // body, or answer a HEAD we took for another request) whose body
        // ran on, or had not ended, may hold other responses: as unknown to
        // pairing as a gap.
        let in_doubt = f.in_doubt();
        if in_doubt && end.as_ref().is_none_or(|e| e.body_bytes > 0) {
            self.uncertain = true;
            self.response_gap = Some(
                end.as_ref()
                    .map_or(f.start.seq, |e| e.end.seq.wrapping_add(1)),
            );
        }
        if let Some(p) = f.request.as_ref().filter(|_| f.overdue) {
            // Its request's deadline passed with nothing of it seen since
            // (see `expire`): ended in time, it is what it is; ended later
            // through bytes the capture lost (the ACKs say it came, not
            // when), unknown; anything else, the timeout it looked like.
            let deadline = p.deadline(self.timeout_micros);
            let ended = end.as_ref().filter(|e| e.complete);
            if ended.is_none_or(|e| e.end.ts > deadline) {
                let outcome = match ended {
                    Some(e) if e.body_missing > 0 => Outcome::Unknown,
                    _ => Outcome::TimedOut,
                };
                let answer = Answer {
                    response: Some(f.head),
                    ..Answer::nothing(outcome, Some(deadline), outcome == Outcome::Unknown)
                };
                self.emit(f.request.ok_or(f.start), answer);
                return;
            }
        }
        // Cut short, such a response more likely ran past its real end
        // than was cut: how it ended is unknown, not a failure.
        let mut answer = if in_doubt && end.as_ref().is_none_or(|e| !e.complete) {
            Answer::nothing(Outcome::Unknown, None, true)
        } else {
            Answer::nothing(outcome, None, f.capture_loss)
        };
        answer.response = Some(f.head);
        if let Some(e) = end {
            answer.end_ts = Some(e.end.ts);
            answer.body_bytes = e.body_bytes;
            answer.body_prefix = e.body_prefix;
            answer.capture_loss |= e.body_missing > 0;
        }
        match f.request {
            Some(p) if self.open_request.map(NonZeroU64::get) == Some(p.id) && !p.logged => {
                self.release_parked();
                self.parked = Some(Box::new((p, answer)));
            }
            request => self.emit(request.ok_or(f.start), answer),
        }
    }

    fn push_pending(&mut self, p: Pending) {
        if self.pending.len() >= MAX_PENDING {
            if let Some(old) = self.pending.pop_front() {
                self.log_lost(old);
            }
        }
        if self.pending.capacity() == 0 {
            // Most connections have one request open at a time; the first
            // push would make room for four.
            self.pending.reserve_exact(1);
        }
        self.pending.push_back(p);
    }

    fn new_pending(&mut self, head: Option<RequestHead>, start: StreamPos) -> Pending {
        self.next_id += 1;
        Pending {
            head,
            start,
            body_bytes: 0,
            body_prefix: Vec::new(),
            logged: false,
            capture_loss: false,
            malformed: false,
            placeholder: false,
            id: self.next_id,
        }
    }

    fn open_request_mut(&mut self) -> Option<&mut Pending> {
        let id = self.open_request?.get();
        if let Some(p) = self.pending.iter_mut().find(|p| p.id == id) {
            return Some(p);
        }
        if let Some(b) = self.parked.as_mut().filter(|b| b.0.id == id) {
            return Some(&mut b.0);
        }
        self.in_flight
            .as_mut()
            .and_then(|f| f.request.as_mut())
            .filter(|p| p.id == id)
    }
}

impl MessageSink for HttpSession {
    fn request_head(&mut self, head: RequestHead, start: StreamPos) {
        if head.method == Method::Connect {
            // Bytes after a CONNECT belong to the tunnel unless it is refused.
            self.commands.request_enter_tunnel = true;
        }
        if !self.first_seen {
            self.first_seen = true;
            self.first_request = Some(Box::new(FirstRequest {
                host: crate::classify::host_of(&head.target, &head.headers),
                ts: start.ts,
            }));
        }
        self.release_parked();
        self.requests_lost = false;
        let p = self.new_pending(Some(head), start);
        self.open_request = NonZeroU64::new(p.id);
        self.push_pending(p);
    }

    fn response_head(&mut self, head: ResponseHead, start: StreamPos) -> RequestKind {
        let interim = (100..200).contains(&head.status) && head.status != 101;
        // Where the answer began: at the first interim response before
        // this head, if any (it is pairing's evidence, see `select_request`).
        let mut began = start;
        if let Some(prev) = self.in_flight.take().map(|f| *f) {
            if prev.interim {
                began = prev.start;
                self.pending_restore(prev.request);
            } else {
                // A new head while a final one is open cannot happen with a
                // correct parser; keep the data rather than lose it.
                let outcome = self.end_outcome();
                self.finish_response(prev, None, outcome);
            }
        }
        let (request, capture_loss) = if interim {
            (None, false)
        } else {
            let (request, loss) = self.select_request(&began);
            // After a response framed in doubt, this one may start inside
            // its body, or after a body it did not have: unless the client
            // had received exactly up to here when it sent the request (the
            // previous response ended here).
            let confirmed = request
                .as_ref()
                .is_some_and(|q| q.start.ack != 0 && q.start.ack == began.seq);
            let doubt = loss || self.fresh_sync[1] || (self.framing_in_doubt && !confirmed);
            // A pairing in doubt may have taken another request's answer.
            self.guessing |= doubt && request.is_some() && self.pending.iter().any(Pending::waits);
            if request.is_some() && !doubt {
                // Proven in step again: what the gap held is behind us.
                self.response_gap = None;
            }
            (request, doubt)
        };
        let kind_of = |p: Option<&Pending>| match p.and_then(|p| p.head.as_ref()) {
            Some(h) if h.method == Method::Head => RequestKind::Head,
            Some(h) if h.method == Method::Connect => RequestKind::Connect,
            Some(_) => RequestKind::Other,
            None => RequestKind::Unknown,
        };
        let kind = if interim {
            kind_of(self.pending.front())
        } else {
            kind_of(request.as_ref())
        };
        self.in_flight = Some(Box::new(InFlight {
            head,
            start: if interim { began } else { start },
            request,
            interim,
            capture_loss,
            segments_lost: false,
            overdue: false,
        }));
        kind
    }

    fn message_end(&mut self, dir: Direction, end: MessageEnd) {
        self.fresh_sync[usize::from(dir == Direction::ToClient)] = false;
        if dir == Direction::ToClient {
            self.framing_in_doubt = false;
        }
        match dir {
            Direction::ToServer => {
                if let Some(p) = self.open_request_mut() {
                    p.body_bytes = end.body_bytes;
                    p.body_prefix = end.body_prefix;
                    p.capture_loss |= end.body_missing > 0;
                }
                self.end_open_request();
            }
            Direction::ToClient => {
                if self.in_flight.as_ref().is_some_and(|f| f.interim) {
                    // Kept until the next head: where the answer began.
                    return;
                }
                let Some(f) = self.in_flight.take().map(|f| *f) else {
                    return;
                };
                let status = f.head.status;
                if let Some(req) = f.request.as_ref().and_then(|p| p.head.as_ref()) {
                    let connect = req.method == Method::Connect;
                    let upgraded = status == 101 || (connect && (200..300).contains(&status));
                    if upgraded {
                        self.commands.request_enter_tunnel = true;
                    } else if connect {
                        self.commands.request_resume = true;
                    }
                } else if status == 101 {
                    self.commands.request_enter_tunnel = true;
                }
                let outcome = if end.complete {
                    Outcome::Complete
                } else {
                    self.end_outcome()
                };
                // A response whose request was not seen was framed without
                // knowing it (a HEAD's has no body whatever its fields say),
                // one in doubt may be text of a body: where the next one
                // starts is a guess too.
                self.framing_in_doubt = f.in_doubt() || end.body_missing > 0;
                self.finish_response(f, Some(end), outcome);
            }
        }
    }

    fn malformed(&mut self, dir: Direction, _err: ParseError, at: StreamPos) {
        let d = usize::from(dir == Direction::ToClient);
        self.parse_errors[d] += 1;
        // Right after a resync the "message" may be the rest of one whose
        // start was lost, or text inside a body: not a malformed message
        // the endpoint sent, but what the gap left.
        let guessed = std::mem::take(&mut self.fresh_sync[d])
            | (dir == Direction::ToClient && std::mem::take(&mut self.framing_in_doubt));
        match dir {
            Direction::ToServer => {
                let mut p = self.new_pending(None, at);
                p.malformed = !guessed;
                p.placeholder = guessed;
                p.capture_loss = guessed;
                self.end_open_request();
                self.push_pending(p);
            }
            Direction::ToClient => {
                let mut began = at;
                if let Some(f) = self.in_flight.take().map(|f| *f) {
                    if f.interim {
                        began = f.start;
                        self.pending_restore(f.request);
                    } else {
                        // Framed without its request or in doubt, the
                        // framing was likely ours to get wrong (a HEAD's
                        // response has no body whatever its fields say):
                        // it ends unknown (see `finish_response`), and
                        // where the parser resumes is a guess.
                        let mut f = f;
                        f.capture_loss |= guessed;
                        self.framing_in_doubt = f.in_doubt();
                        self.finish_response(f, None, Outcome::Malformed);
                        return;
                    }
                }
                let (req, loss) = self.select_request(&began);
                let answer = if guessed {
                    Answer::nothing(Outcome::Unknown, None, true)
                } else {
                    Answer::nothing(Outcome::Malformed, Some(at.ts), loss)
                };
                self.emit(req.ok_or(at), answer);
            }
        }
    }

    fn lost_sync(&mut self, dir: Direction, resumes: StreamPos) {
        match dir {
            Direction::ToServer => {
                self.requests_lost = true;
                if let Some(p) = self.open_request_mut() {
                    p.capture_loss = true;
                }
            }
            Direction::ToClient => {
                if let Some(f) = self.in_flight.as_mut() {
                    f.capture_loss = true;
                }
                self.uncertain = true;
                self.response_gap = Some(resumes.seq);
            }
        }
    }

    fn resync(&mut self, dir: Direction, at: StreamPos, lost_message: bool) {
        // After a gap, what looks like a message start may be text inside
        // a body (a capture that starts mid-connection has no better bet).
        self.fresh_sync[usize::from(dir == Direction::ToClient)] =
            lost_message || (dir == Direction::ToClient && self.framing_in_doubt);
        match dir {
            Direction::ToServer => {
                if lost_message {
                    if let Some(p) = self.open_request_mut() {
                        p.capture_loss = true;
                    }
                }
                self.end_open_request();
                // Whatever the gap held may have been requests; their
                // responses must not be paired with the requests we see.
                let mut p = self.new_pending(None, at);
                p.placeholder = true;
                // A gap's, not the capture's start (requests sent before it
                // was answered before the first one seen was sent).
                p.capture_loss = lost_message;
                self.push_pending(p);
            }
            Direction::ToClient => {
                self.uncertain = true;
                if let Some(f) = self.in_flight.take().map(|f| *f) {
                    if f.interim {
                        self.pending_restore(f.request);
                    } else {
                        // The response began but its end was lost.
                        let mut f = f;
                        f.capture_loss = true;
                        self.finish_response(f, None, Outcome::Unknown);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Headers;

    fn pos(seq: u32, ack: u32, ms: i64) -> StreamPos {
        StreamPos {
            seq,
            ack,
            ts: Timestamp::from_micros(ms * 1000),
        }
    }

    fn req(method: &str, target: &str) -> RequestHead {
        RequestHead {
            method: Method::parse(method),
            target: target.as_bytes().to_vec(),
            version_minor: 1,
            cut: false,
            headers: Headers::default(),
        }
    }

    fn resp(status: u16) -> ResponseHead {
        ResponseHead {
            status,
            version_minor: 1,
            headers: Headers::default(),
        }
    }

    fn end(p: StreamPos, body: u64) -> MessageEnd {
        MessageEnd {
            end: p,
            body_bytes: body,
            body_missing: 0,
            body_prefix: Vec::new(),
            complete: true,
        }
    }

    fn session() -> HttpSession {
        HttpSession::new(30_000_000)
    }

    fn ends() -> (SocketAddr, SocketAddr) {
        (
            "10.0.0.2:40000".parse().unwrap(),
            "10.0.0.1:80".parse().unwrap(),
        )
    }

    /// (target or "-", status, outcome, capture_loss) of each exchange.
    fn summary(s: &mut HttpSession) -> Vec<(String, Option<u16>, Outcome, bool)> {
        s.drain(ends())
            .map(|e| {
                let t = e
                    .request
                    .as_ref()
                    .map(|r| String::from_utf8_lossy(&r.target).into_owned())
                    .unwrap_or_else(|| "-".into());
                (t, e.status(), e.outcome, e.capture_loss)
            })
            .collect()
    }

    /// Request `target` at client seq `seq` having seen server bytes up to
    /// `ack`, with no body.
    fn send(s: &mut HttpSession, target: &str, seq: u32, ack: u32, ms: i64) {
        s.request_head(req("GET", target), pos(seq, ack, ms));
        s.message_end(Direction::ToServer, end(pos(seq + 10, ack, ms), 0));
    }

    /// Response `status` at server seq `seq` having seen client bytes up to `ack`.
    fn answer(s: &mut HttpSession, status: u16, seq: u32, ack: u32, ms: i64) -> RequestKind {
        let k = s.response_head(resp(status), pos(seq, ack, ms));
        s.message_end(Direction::ToClient, end(pos(seq + 99, ack, ms), 5));
        k
    }

    #[test]
    fn simple_exchange_has_duration_to_last_byte() {
        let mut s = session();
        send(&mut s, "/a", 1000, 5000, 0);
        assert_eq!(answer(&mut s, 200, 5000, 1011, 12), RequestKind::Other);
        let ex: Vec<Exchange> = s.drain(ends()).collect();
        assert_eq!(ex.len(), 1);
        assert_eq!(ex[0].status(), Some(200));
        assert_eq!(ex[0].duration_micros(), Some(12_000));
        assert_eq!(ex[0].response_body_bytes, 5);
    }

    #[test]
    fn an_exchange_never_ends_before_it_starts() {
        // Found by the flow fuzz target: capture order put the response's
        // bytes (16 ms) before the request's (57 ms).
        let mut s = session();
        send(&mut s, "/a", 1000, 5000, 57);
        answer(&mut s, 200, 5000, 1011, 16);
        let ex: Vec<Exchange> = s.drain(ends()).collect();
        assert_eq!(ex[0].end_ts, Some(ex[0].ts));
        assert_eq!(ex[0].duration_micros(), Some(0));
    }

    #[test]
    fn interim_100_is_not_the_final_response() {
        let mut s = session();
        send(&mut s, "/upload", 1000, 5000, 0);
        answer(&mut s, 100, 5000, 1011, 1);
        assert!(!s.has_output());
        answer(&mut s, 201, 5100, 1011, 9);
        assert_eq!(
            summary(&mut s),
            vec![("/upload".into(), Some(201), Outcome::Complete, false)]
        );
    }

    #[test]
    fn pipelined_requests_pair_fifo() {
        let mut s = session();
        send(&mut s, "/1", 1000, 5000, 0);
        send(&mut s, "/2", 1011, 5000, 0);
        send(&mut s, "/3", 1022, 5000, 0);
        answer(&mut s, 200, 5000, 1033, 1);
        answer(&mut s, 404, 5100, 1033, 2);
        answer(&mut s, 500, 5200, 1033, 3);
        let got: Vec<_> = summary(&mut s).into_iter().map(|e| (e.0, e.1)).collect();
        assert_eq!(
            got,
            vec![
                ("/1".into(), Some(200)),
                ("/2".into(), Some(404)),
                ("/3".into(), Some(500))
            ]
        );
    }

    #[test]
    fn lost_response_is_not_paired_with_the_next_request() {
        // Keep-alive, not pipelined: /2 was sent after the client received
        // the (lost) response to /1, which ended at server seq 5100.
        let mut s = session();
        send(&mut s, "/1", 1000, 5000, 0);
        send(&mut s, "/2", 1011, 5100, 5);
        s.resync(Direction::ToClient, pos(5100, 1022, 6), false);
        answer(&mut s, 200, 5100, 1022, 6);
        assert_eq!(
            summary(&mut s),
            vec![
                ("/1".into(), None, Outcome::Unknown, true),
                ("/2".into(), Some(200), Outcome::Complete, false),
            ]
        );
    }

    #[test]
    fn ambiguous_after_gap_guesses_nothing() {
        // Pipelined /1 and /2 both sent before any response; a response
        // after a gap could answer either.
        let mut s = session();
        send(&mut s, "/1", 1000, 5000, 0);
        send(&mut s, "/2", 1011, 5000, 0);
        s.resync(Direction::ToClient, pos(5300, 1022, 6), false);
        answer(&mut s, 200, 5300, 1022, 6);
        let got = summary(&mut s);
        assert_eq!(got.len(), 3);
        assert!(got.iter().all(|e| e.3), "all marked capture_loss: {got:?}");
        assert_eq!(got[2].0, "-", "the response is logged as an orphan");
    }

    #[test]
    fn pipelined_requests_after_a_gap_pair_from_the_first_sent_before_the_response() {
        // Pipelined /1, /2 and /3; the client had received up to 5000 when
        // it sent /2 and /3. After a gap, a response at 5000: /1's was lost
        // (it could lie before 5000), /3's cannot come before /2's, and
        // /2's cannot lie in the gap (it starts at 5000 or later).
        let mut s = session();
        send(&mut s, "/1", 1000, 4000, 0);
        send(&mut s, "/2", 1011, 5000, 0);
        send(&mut s, "/3", 1022, 5000, 0);
        s.resync(Direction::ToClient, pos(5000, 1033, 6), false);
        answer(&mut s, 200, 5000, 1033, 6);
        answer(&mut s, 404, 5100, 1033, 7);
        assert_eq!(
            summary(&mut s),
            vec![
                ("/1".into(), None, Outcome::Unknown, true),
                ("/2".into(), Some(200), Outcome::Complete, false),
                ("/3".into(), Some(404), Outcome::Complete, false),
            ]
        );
    }

    #[test]
    fn after_a_gap_an_answer_is_placed_by_its_first_interim_response() {
        // As above with /2 and /3 only, and a 100 at 5000 before the final
        // response at 5025: the answer began at 5000, so it is /2's.
        let mut s = session();
        send(&mut s, "/2", 1011, 5000, 0);
        send(&mut s, "/3", 1022, 5000, 0);
        s.resync(Direction::ToClient, pos(5000, 1033, 6), false);
        s.response_head(resp(100), pos(5000, 1033, 6));
        s.message_end(Direction::ToClient, end(pos(5024, 1033, 6), 0));
        answer(&mut s, 200, 5025, 1033, 6);
        answer(&mut s, 404, 5125, 1033, 7);
        assert_eq!(
            summary(&mut s),
            vec![
                ("/2".into(), Some(200), Outcome::Complete, false),
                ("/3".into(), Some(404), Outcome::Complete, false),
            ]
        );
    }

    #[test]
    fn response_before_request_is_orphan() {
        let mut s = session();
        // Server had not received /1 (ack 1000 == its first byte).
        send(&mut s, "/1", 1000, 5000, 0);
        answer(&mut s, 200, 4000, 1000, 0);
        assert_eq!(
            summary(&mut s),
            vec![("-".into(), Some(200), Outcome::Complete, true)]
        );
        answer(&mut s, 204, 5000, 1011, 1);
        assert_eq!(
            summary(&mut s),
            vec![("/1".into(), Some(204), Outcome::Complete, false)]
        );
    }

    #[test]
    fn an_early_response_waits_for_the_rest_of_its_request() {
        // The server answers before the client has sent the body (a 201
        // after `100 Continue`, a 413): the record is written once the
        // request ends, with the body the client sent.
        let mut s = session();
        s.request_head(req("POST", "/upload"), pos(1000, 5000, 0));
        let waiting = s.heap_bytes();
        answer(&mut s, 201, 5000, 1150, 8);
        assert!(!s.has_output(), "written before its request ended");
        assert!(s.heap_bytes() > waiting, "what waits is counted");
        assert_eq!(s.next_deadline(), Some(Timestamp::from_micros(30_008_000)));
        s.message_end(Direction::ToServer, end(pos(5511, 5104, 10), 4361));
        let ex: Vec<Exchange> = s.drain(ends()).collect();
        assert_eq!(ex.len(), 1);
        assert_eq!(
            (ex[0].status(), ex[0].request_body_bytes),
            (Some(201), 4361)
        );
        assert_eq!(
            ex[0].duration_micros(),
            Some(8_000),
            "to the response's end"
        );
        assert!(!ex[0].capture_loss);
    }

    #[test]
    fn an_early_response_is_flagged_when_the_rest_of_its_request_is_lost() {
        let mut s = session();
        s.request_head(req("POST", "/upload"), pos(1000, 5000, 0));
        answer(&mut s, 201, 5000, 1150, 8);
        // The server's FIN: the client's body may still come.
        s.set_ending(StreamEnd::Closed);
        s.close(Timestamp::from_micros(9_000));
        assert!(!s.has_output());
        // The body's end was lost: the parser says so before ending it.
        s.lost_sync(Direction::ToServer, pos(3000, 5104, 10));
        let mut e = end(pos(2000, 5104, 10), 800);
        e.complete = false;
        s.message_end(Direction::ToServer, e);
        assert_eq!(
            summary(&mut s),
            vec![("/upload".into(), Some(201), Outcome::Complete, true)]
        );
    }

    #[test]
    fn an_early_response_is_written_a_timeout_after_it_ended() {
        // A request body that goes on and on (a stream) does not hold its
        // answer back for ever.
        let mut s = session();
        s.request_head(req("POST", "/stream"), pos(1000, 5000, 0));
        answer(&mut s, 200, 5000, 1150, 8);
        s.expire(Timestamp::from_micros(30_007_999), Timestamp::ZERO);
        assert!(!s.has_output());
        s.expire(Timestamp::from_micros(30_008_000), Timestamp::ZERO);
        assert_eq!(
            summary(&mut s),
            vec![("/stream".into(), Some(200), Outcome::Complete, false)]
        );
        // Its end later writes nothing more.
        s.message_end(Direction::ToServer, end(pos(90_000, 5104, 60_000), 88_000));
        assert!(!s.has_output());
    }

    #[test]
    fn a_request_timing_out_behind_a_response_in_doubt_is_unknown() {
        // A response logged alone (its request lost) is still being read
        // when a later request times out: its body, framed without the
        // request, may hold that request's answer.
        let mut s = session();
        s.response_head(resp(200), pos(5000, 1000, 0));
        send(&mut s, "/late", 1000, 5000, 1);
        s.expire(Timestamp::from_micros(30_001_000), Timestamp::ZERO);
        assert_eq!(
            summary(&mut s),
            vec![("/late".into(), None, Outcome::Unknown, true)]
        );
    }

    #[test]
    fn after_an_upgrade_whose_answer_was_lost_everything_is_in_doubt() {
        // The 101 fell in a gap: what follows may be the tunnel's bytes
        // (here a request line and a status line inside WebSocket frames).
        let mut s = session();
        let mut up = req("GET", "/socket");
        up.headers.push(b"Upgrade", b"websocket");
        s.request_head(up, pos(1000, 5000, 0));
        s.message_end(Direction::ToServer, end(pos(1060, 5000, 0), 0));
        s.lost_sync(Direction::ToClient, pos(5090, 1061, 2));
        send(&mut s, "/inside", 1061, 5090, 3);
        answer(&mut s, 200, 5090, 1072, 4);
        assert_eq!(
            summary(&mut s),
            vec![
                ("/socket".into(), None, Outcome::Unknown, true),
                ("/inside".into(), Some(200), Outcome::Complete, true),
            ]
        );
    }

    #[test]
    fn timeout_then_late_response_writes_one_record() {
        let mut s = session();
        send(&mut s, "/slow", 1000, 5000, 0);
        assert_eq!(s.next_deadline(), Some(Timestamp::from_micros(30_000_000)));
        s.expire(Timestamp::from_micros(29_999_999), Timestamp::ZERO);
        assert!(!s.has_output());
        s.expire(Timestamp::from_micros(30_000_000), Timestamp::ZERO);
        assert_eq!(
            summary(&mut s),
            vec![("/slow".into(), None, Outcome::TimedOut, false)]
        );
        answer(&mut s, 200, 5000, 1011, 40_000);
        assert!(!s.has_output(), "late response takes the slot silently");
        send(&mut s, "/next", 1011, 5099, 40_001);
        answer(&mut s, 200, 5099, 1022, 40_002);
        assert_eq!(summary(&mut s).len(), 1);
    }

    #[test]
    fn unanswered_request_at_the_end_fails_by_why_it_ended() {
        for (why, want) in [
            (StreamEnd::Closed, Outcome::ConnectionEnded),
            (StreamEnd::CaptureEnded, Outcome::Unknown),
        ] {
            let mut s = session();
            send(&mut s, "/a", 1000, 5000, 0);
            s.set_ending(why);
            s.close(Timestamp::from_micros(1000));
            assert_eq!(
                summary(&mut s),
                vec![("/a".into(), None, want, false)],
                "{why:?}"
            );
        }
    }

    #[test]
    fn malformed_request_pairs_with_its_400() {
        let mut s = session();
        s.malformed(
            Direction::ToServer,
            ParseError::BadRequestLine,
            pos(1000, 5000, 0),
        );
        answer(&mut s, 400, 5000, 1020, 1);
        assert_eq!(
            summary(&mut s),
            vec![("-".into(), Some(400), Outcome::Malformed, false)]
        );
    }

    #[test]
    fn lost_request_head_gets_a_placeholder() {
        // The head of a request was lost; its response must not pair with
        // the next request, which was sent after that response arrived.
        let mut s = session();
        s.resync(Direction::ToServer, pos(1200, 5100, 5), true);
        send(&mut s, "/b", 1200, 5100, 5);
        // Response to the lost request: the server had not yet got /b.
        answer(&mut s, 200, 5000, 1150, 4);
        answer(&mut s, 404, 5100, 1211, 6);
        let got = summary(&mut s);
        assert_eq!(got[0].0, "-");
        assert_eq!((got[1].0.as_str(), got[1].1), ("/b", Some(404)));
    }

    #[test]
    fn connect_refused_resumes_request_parsing() {
        let mut s = session();
        s.request_head(req("CONNECT", "h:443"), pos(1000, 5000, 0));
        assert!(s.commands.request_enter_tunnel);
        s.commands = ParserCommands::default();
        assert_eq!(answer(&mut s, 407, 5000, 1020, 1), RequestKind::Connect);
        assert!(s.commands.request_resume);
    }

    /// Of the session's empty buffer and the spare's, the spare keeps the
    /// larger; the session is left holding nothing either way.
    #[test]
    fn the_larger_empty_buffer_is_kept_and_the_other_freed() {
        for (ours, theirs) in [(4, 64), (64, 4), (8, 0)] {
            let mut spare = SpareBuffers {
                out: Vec::with_capacity(theirs),
                pending: VecDeque::with_capacity(theirs),
            };
            let mut s = session();
            s.out = Vec::with_capacity(ours);
            s.pending = VecDeque::with_capacity(ours);
            s.return_buffers(&mut spare);
            assert_eq!(s.heap_bytes(), 0, "ours {ours}, theirs {theirs}");
            assert_eq!(spare.out.capacity(), ours.max(theirs));
            assert!(spare.pending.capacity() >= ours.max(theirs));
        }
    }

    #[test]
    fn a_quiet_session_gives_its_buffers_back() {
        let mut spare = SpareBuffers::default();
        let mut s = session();
        s.borrow_buffers(&mut spare);
        send(&mut s, "/a", 1000, 5000, 0);
        s.return_buffers(&mut spare);
        assert!(s.heap_bytes() > 0, "a waiting request keeps its queue");
        answer(&mut s, 200, 5000, 1011, 1);
        assert_eq!(s.drain(ends()).count(), 1);
        s.return_buffers(&mut spare);
        assert!(s.first_request.take().is_some(), "the flow layer takes it");
        assert_eq!(s.heap_bytes(), 0, "quiet: no queue, no output room");
        let room = spare.heap_bytes();
        assert!(room > 0);
        // The next busy session uses that room instead of allocating.
        let mut t = session();
        t.borrow_buffers(&mut spare);
        assert_eq!(spare.heap_bytes(), 0);
        send(&mut t, "/b", 1000, 5000, 0);
        answer(&mut t, 200, 5000, 1011, 1);
        assert_eq!(t.drain(ends()).count(), 1);
        t.return_buffers(&mut spare);
        t.first_request = None;
        assert_eq!((t.heap_bytes(), spare.heap_bytes()), (0, room));
    }

    #[test]
    fn pending_is_bounded() {
        let mut s = session();
        for i in 0..(MAX_PENDING as u32 + 10) {
            send(&mut s, "/x", 1000 + i * 11, 5000, 0);
        }
        assert_eq!(s.pending_len(), MAX_PENDING);
        assert_eq!(s.drain(ends()).count(), 10);
    }
}
