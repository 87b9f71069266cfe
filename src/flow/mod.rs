//! TCP flows: connection tracking and per-direction reassembly, and the
//! hand-off of each connection's streams to the application layer.
//!
//! Contract: [`FlowTable::segment`] takes decoded TCP segments in capture
//! order and drives, per connection, two [`reassembly::Reassembler`]s and —
//! once the connection is known to carry HTTP/1.x — two HTTP parsers and a
//! pairing session. Finished exchanges go to the caller's closure. Who is the
//! client is learnt from the handshake when it was seen, else from what is
//! said (who sends a request line, who sends a status line), never from port
//! numbers. A connection that carries something else is counted as TLS or
//! other and costs nothing more. Idle flows expire by capture time; the
//! number of flows and the bytes they buffer are bounded, and what the
//! bounds refuse or evict is counted.
//!
//! Connections live in a table (`table`) laid out so that a lookup among a
//! million open connections walks a compact index of hash bits, then the
//! one entry that holds both the key and the connection.

mod index;
#[cfg(test)]
mod model_tests;
pub mod reassembly;
mod reorder;
mod sniff;
mod table;

use crate::classify::tls::{HandshakeReader, TlsHandshake};
use crate::clock::Timestamp;
use crate::decode::TcpSegment;
use crate::http::exchange::Exchange;
use crate::http::parser::{MessageParser, ParserLimits};
use crate::http::session::{HttpSession, SpareBuffers, StreamEnd};
use crate::http::Direction;
use reassembly::{Chunk, Reassembler, StreamEvent, StreamLimits, StreamStats};
use sniff::{Sniffer, Verdict};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use table::{ConnTable, ASLEEP};

/// A connection's identity, the same for both directions.
///
/// Compact (40 bytes, against 64 for two `SocketAddr`s): it is stored once
/// per tracked connection. Ordered like the `(lo, hi)` socket addresses it
/// stands for (IPv4 before IPv6, then address, then port).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct FlowKey {
    lo: Endpoint,
    hi: Endpoint,
}

/// A socket address without IPv6 flow label and scope (never in a packet's
/// TCP/IP headers as decoded). Field order gives `SocketAddr`'s ordering.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Endpoint {
    v6: bool,
    ip: [u8; 16],
    port: u16,
}

impl Endpoint {
    fn new(a: SocketAddr) -> Self {
        let mut ip = [0; 16];
        let v6 = match a.ip() {
            IpAddr::V4(v) => {
                ip[..4].copy_from_slice(&v.octets());
                false
            }
            IpAddr::V6(v) => {
                ip = v.octets();
                true
            }
        };
        Endpoint {
            v6,
            ip,
            port: a.port(),
        }
    }

    fn addr(&self) -> SocketAddr {
        let ip = if self.v6 {
            IpAddr::from(self.ip)
        } else {
            IpAddr::from([self.ip[0], self.ip[1], self.ip[2], self.ip[3]])
        };
        SocketAddr::new(ip, self.port)
    }
}

/// Three words, every field in one of them (a derived `Hash` feeds the
/// hasher eight pieces, and a flow-table lookup hashes once per packet).
impl Hash for FlowKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let ports = u64::from(self.lo.port) << 32
            | u64::from(self.hi.port) << 16
            | u64::from(self.lo.v6) << 1
            | u64::from(self.hi.v6);
        state.write_u128(u128::from_ne_bytes(self.lo.ip));
        state.write_u128(u128::from_ne_bytes(self.hi.ip));
        state.write_u64(ports);
    }
}

impl FlowKey {
    /// The key of a segment from `src` to `dst`, and whether `src` is `lo`.
    pub fn new(src: SocketAddr, dst: SocketAddr) -> (FlowKey, bool) {
        let (a, b) = (Endpoint::new(src), Endpoint::new(dst));
        if a <= b {
            (FlowKey { lo: a, hi: b }, true)
        } else {
            (FlowKey { lo: b, hi: a }, false)
        }
    }

    /// The lower of the two socket addresses.
    pub fn lo(&self) -> SocketAddr {
        self.lo.addr()
    }

    /// The higher of the two socket addresses.
    pub fn hi(&self) -> SocketAddr {
        self.hi.addr()
    }

    /// A hash that is the same for both directions and stable across runs
    /// and processes (for sharding flows over workers; not for hash maps).
    pub fn symmetric_hash(&self) -> u64 {
        FlowKey::symmetric_hash_of(&self.lo(), &self.hi())
    }

    /// [`FlowKey::symmetric_hash`] of the key of `a` and `b`, either way
    /// round, without building the key (the sum of the two ends' mixes does
    /// not depend on their order): what the reader computes per packet.
    pub fn symmetric_hash_of(a: &SocketAddr, b: &SocketAddr) -> u64 {
        fn mix(a: &SocketAddr) -> u64 {
            let ip = match a.ip() {
                IpAddr::V4(v) => u32::from(v) as u64,
                IpAddr::V6(v) => {
                    let x = u128::from(v);
                    (x as u64) ^ ((x >> 64) as u64)
                }
            };
            (ip.wrapping_mul(0x9E37_79B9_7F4A_7C15))
                ^ (a.port() as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
        }
        let h = mix(a).wrapping_add(mix(b));
        h ^ (h >> 29)
    }
}

/// What a connection carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http,
    Tls,
    Other,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Tls => "tls",
            Protocol::Other => "other",
        }
    }
}

#[derive(Clone, Debug)]
pub struct FlowConfig {
    pub stream_limits: StreamLimits,
    /// Shared by every HTTP parser of the table (one copy, not one each).
    pub parser_limits: Arc<ParserLimits>,
    pub transaction_timeout_micros: i64,
    /// A connection with no packet for this long is expired.
    pub idle_timeout_micros: i64,
    /// A connection that never carried data expires sooner (SYN floods).
    pub handshake_timeout_micros: i64,
    pub max_flows: usize,
    /// Most bytes all tracked connections may hold together (state, buffered
    /// out-of-order data, partial heads, waiting requests). Past it the
    /// connections idle longest are ended and counted as evicted.
    pub memory_budget_bytes: usize,
    /// How far into a direction to look for an HTTP message start when the
    /// capture began mid-connection, before calling the connection "other".
    pub sniff_limit_bytes: u32,
}

impl Default for FlowConfig {
    fn default() -> Self {
        FlowConfig {
            stream_limits: StreamLimits::default(),
            parser_limits: Arc::default(),
            transaction_timeout_micros: 30_000_000,
            idle_timeout_micros: 300_000_000,
            handshake_timeout_micros: 30_000_000,
            max_flows: 1 << 20,
            memory_budget_bytes: 512 << 20,
            sniff_limit_bytes: 64 * 1024,
        }
    }
}

/// What the flow layer learnt about a connection, for metrics and reports
/// (taken by the caller with [`FlowTable::take_events`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlowEvent {
    /// A connection, once per connection: for HTTP when its first request
    /// head is parsed (`host`: that request's Host), for TLS when the
    /// client's hello is read (`host`: its SNI), for other protocols when
    /// they are recognised (`host` None). A connection that ends first is
    /// reported as it ends, with whatever was learnt (often `host` None).
    Connection {
        server: SocketAddr,
        host: Option<String>,
        protocol: Protocol,
        ts: Timestamp,
    },
    /// A TLS connection's hellos were read (once per TLS connection).
    Tls(TlsHandshake),
}

/// Counters about flows (the reassemblers' are summed in at close).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    pub flows_created: u64,
    pub flows_closed: u64,
    pub flows_expired: u64,
    /// New flows refused because the table was full.
    pub flows_refused: u64,
    /// Connections ended early to stay within the memory budget.
    pub flows_evicted: u64,
    /// Bytes the tracked connections hold now (estimate; see `memory_budget_bytes`).
    pub memory_bytes: usize,
    /// Connections by what they carry (counted once, when known).
    pub connections: HashMap<Protocol, u64>,
    pub stream: StreamStats,
    /// Bytes skipped while looking for a message start.
    pub sniff_skipped_bytes: u64,
    /// HTTP messages that could not be framed: [requests, responses].
    pub http_parse_errors: [u64; 2],
    /// Segments held for the other direction's bytes they acknowledged
    /// (see `reorder`).
    pub segments_held: u64,
}

impl FlowStats {
    /// Add another table's counters (workers' tables are summed for
    /// reports and metrics).
    pub fn merge(&mut self, o: &FlowStats) {
        self.flows_created += o.flows_created;
        self.flows_closed += o.flows_closed;
        self.flows_expired += o.flows_expired;
        self.flows_refused += o.flows_refused;
        self.flows_evicted += o.flows_evicted;
        self.memory_bytes += o.memory_bytes;
        for (p, n) in &o.connections {
            *self.connections.entry(*p).or_insert(0) += n;
        }
        self.stream.merge(&o.stream);
        self.sniff_skipped_bytes += o.sniff_skipped_bytes;
        self.http_parse_errors[0] += o.http_parse_errors[0];
        self.http_parse_errors[1] += o.http_parse_errors[1];
        self.segments_held += o.segments_held;
    }
}

struct TlsConn {
    reader: HandshakeReader,
    /// The connection's first byte seen.
    ts: Timestamp,
    /// Its `FlowEvent::Connection` was sent.
    announced: bool,
}

impl TlsConn {
    /// Report the connection once the client's hello is decided (its SNI
    /// names the server).
    fn announce(&mut self, server: SocketAddr, ts: Timestamp, events: &mut Vec<FlowEvent>) {
        if !self.announced && self.reader.client_done() {
            self.announced = true;
            events.push(FlowEvent::Connection {
                server,
                host: self.reader.sni().map(str::to_string),
                protocol: Protocol::Tls,
                ts,
            });
        }
    }
}

struct HttpConn {
    /// Parser of the client's direction and of the server's.
    req: MessageParser,
    resp: MessageParser,
    session: HttpSession,
    /// Its `FlowEvent::Connection` was sent.
    announced: bool,
}

impl HttpConn {
    /// Report the connection once its first request head is parsed (its
    /// Host names the server); `end`: the connection ends, report it now.
    /// `server` is asked for only then (most calls have nothing to report).
    fn announce(
        &mut self,
        server: impl FnOnce() -> SocketAddr,
        end: Option<Timestamp>,
        events: &mut Vec<FlowEvent>,
    ) {
        if self.announced {
            return;
        }
        // Taken, not copied: it is not needed again.
        let (host, ts) = match (self.session.first_request.take(), end) {
            (Some(first), _) => (first.host, first.ts),
            (None, Some(now)) => (None, now),
            (None, None) => return,
        };
        self.announced = true;
        events.push(FlowEvent::Connection {
            server: server(),
            host,
            protocol: Protocol::Http,
            ts,
        });
    }
}

enum App {
    /// No byte seen yet (a handshake, or nothing but ACKs): nothing held.
    Fresh,
    /// Sniffing the first bytes of each side (boxed: most connections
    /// pass through this state quickly, or never leave `Fresh`).
    Undecided(Box<[Sniffer; 2]>),
    Http(Box<HttpConn>),
    /// TLS: reading the hellos (versions, SNI); then `Done`.
    Tls(Box<TlsConn>),
    /// Not HTTP (counted when decided): nothing more is done.
    Done,
}

/// One tracked connection (inline in the table's entry store, beside its
/// key: see [`table`]).
struct Connection {
    /// [lo→hi, hi→lo]
    streams: [Reassembler; 2],
    /// Some(true): `lo` is the client.
    client_is_lo: Option<bool>,
    syn_seen: [bool; 2],
    /// The side's SYN was lost to the capture, but its peer's SYN-ACK
    /// acknowledged it: `isn` holds it all the same.
    syn_acked: [bool; 2],
    /// Initial sequence number per side, from its first SYN (valid where
    /// `syn_seen` or `syn_acked`).
    isn: [u32; 2],
    ended: [bool; 2],
    app: App,
    last_seen: Timestamp,
    had_data: bool,
    /// Per side: a segment of its held for the other direction (see
    /// `reorder`) went on without it, and that direction has shown no data
    /// since (it may not be captured at all): hold none of its.
    hold_off: [bool; 2],
    /// What this connection last added to `FlowStats::memory_bytes`.
    accounted: usize,
    /// When the oldest request its HTTP session waits on times out, as of
    /// its last segment or sweep ([`NEVER`]: none waits). Segments and
    /// sweeps read it here instead of in the session, which lies elsewhere
    /// in memory: with a million connections open, those cache misses were
    /// most of their cost.
    deadline: Timestamp,
    /// The wake the table keeps for this connection (see
    /// [`ConnTable::for_each_due`]), kept here too so that a segment can
    /// tell whether to move it earlier without reading the table's.
    /// INVARIANT: at most [`wake_of`] of [`Connection::due`].
    wake: u32,
}

/// Index of a direction: 0 = lo→hi, 1 = hi→lo.
type Side = usize;

pub struct FlowTable {
    cfg: FlowConfig,
    flows: ConnTable<Connection>,
    /// Sum of every connection's `accounted` (the table itself aside).
    conns_bytes: usize,
    stats: FlowStats,
    events: Vec<FlowEvent>,
    /// Room for HTTP sessions' queues and output, lent to the connection
    /// being parsed, so idle connections hold none.
    spare: SpareBuffers,
    /// None: the caller sweeps (see [`FlowTable::with_caller_sweeps`]).
    sweeps: Option<SweepSchedule>,
    /// Segments held for their connection's other direction (see `reorder`).
    held: Vec<reorder::Held>,
    held_bytes: usize,
}

const SWEEP_INTERVAL_MICROS: i64 = 1_000_000;

/// A [`Connection::deadline`] that never comes.
const NEVER: Timestamp = Timestamp::from_micros(i64::MAX);

/// A time as a wake of the connection table: in units of 2^20 µs (about a
/// second), rounded down, so that whatever is due by `now` has a wake of
/// at most `wake_of(now)`. Never [`ASLEEP`].
fn wake_of(t: Timestamp) -> u32 {
    (t.as_micros().max(0) >> 20).min(i64::from(ASLEEP - 1)) as u32
}

/// Connections open from which a caller that knows its next segments
/// should give [`FlowTable::prefetch_slot`] and
/// [`FlowTable::prefetch_entry`] hints: about 4 MB of entries, a
/// core's L2 cache here, which the packets streaming through share. Below
/// that the hints cost more than they save.
pub const PREFETCH_FROM_FLOWS: usize = 8192;

/// How many segments ahead to hint: the index slot of the segment
/// `2 * PREFETCH_AHEAD` ahead, the connection of the one `PREFETCH_AHEAD`
/// ahead. Measured with 200,000 connections open: 2 to 8 hid the misses
/// alike.
pub const PREFETCH_AHEAD: usize = 4;

/// When sweeps run: at the first event at or after each whole second of
/// capture time. The boundaries are absolute, not counted from the first
/// packet, so tables that see different parts of one input agree on them.
#[derive(Clone, Debug, Default)]
pub struct SweepSchedule {
    next: Option<Timestamp>,
}

impl SweepSchedule {
    /// Whether a sweep is due at `now` (the first call only starts the
    /// schedule).
    pub fn due(&mut self, now: Timestamp) -> bool {
        let due = self.next.is_some_and(|t| now >= t);
        if due || self.next.is_none() {
            let second = now.as_micros().div_euclid(SWEEP_INTERVAL_MICROS);
            self.next = Some(Timestamp::from_micros(
                second
                    .saturating_add(1)
                    .saturating_mul(SWEEP_INTERVAL_MICROS),
            ));
        }
        due
    }
}

impl FlowTable {
    pub fn new(cfg: FlowConfig) -> Self {
        FlowTable {
            cfg,
            flows: ConnTable::new(),
            conns_bytes: 0,
            stats: FlowStats::default(),
            events: Vec::new(),
            spare: SpareBuffers::default(),
            sweeps: Some(SweepSchedule::default()),
            held: Vec::new(),
            held_bytes: 0,
        }
    }

    pub fn stats(&self) -> &FlowStats {
        &self.stats
    }

    /// Hand `f` the connection events since the last call, oldest first.
    /// Most packets raise none: then no drain is set up and torn down.
    pub fn take_events(&mut self, f: impl FnMut(FlowEvent)) {
        if !self.events.is_empty() {
            self.events.drain(..).for_each(f);
        }
    }

    pub fn active_flows(&self) -> usize {
        self.flows.len()
    }

    /// The first hint for a segment from `src` to `dst` to come: start
    /// loading the index slot its lookup begins with. Worth it only when
    /// many connections are open (see [`PREFETCH_FROM_FLOWS`]).
    pub fn prefetch_slot(&self, src: SocketAddr, dst: SocketAddr) {
        self.flows.prefetch_slot(&FlowKey::new(src, dst).0);
    }

    /// The second hint, [`PREFETCH_AHEAD`] segments later: start loading
    /// its connection.
    pub fn prefetch_entry(&self, src: SocketAddr, dst: SocketAddr) {
        self.flows.prefetch_entry(&FlowKey::new(src, dst).0);
    }

    /// One segment, in capture order. `now` is the pipeline's monotonic time.
    pub fn segment(
        &mut self,
        seg: &TcpSegment<'_>,
        now: Timestamp,
        emit: &mut impl FnMut(Exchange),
    ) {
        if self.held.is_empty() {
            return self.segment_now(seg, now, emit, true);
        }
        let key = FlowKey::new(seg.src, seg.dst).0;
        let Some(i) = self.held.iter().position(|h| h.key == key) else {
            return self.segment_now(seg, now, emit, true);
        };
        let h = &self.held[i];
        let (f, from_peer) = (seg.flags, h.head.src != seg.src);
        if from_peer && h.filled_by(seg) && !f.rst() {
            // What it waited for: first (but a reset, which would end the
            // connection before it).
            let held = self.release(i);
            self.segment_now(seg, now, emit, false);
            self.segment_now(&held.segment(), now, emit, false);
        } else if from_peer && seg.payload.is_empty() && !(f.syn() || f.fin() || f.rst()) {
            // A bare ACK of the other side's: it may still come.
            self.segment_now(seg, now, emit, false);
        } else {
            // Its own side's next segment, or the other side's going on
            // past what it waited for: in the capture's order.
            let held = self.release(i);
            self.release_alone(&held, emit);
            self.segment_now(seg, now, emit, true);
        }
    }

    /// A held segment goes on without what it waited for, at its own time
    /// (nothing of its connection came since); the connection holds no more.
    fn release_alone(&mut self, held: &reorder::Held, emit: &mut impl FnMut(Exchange)) {
        self.segment_now(&held.segment(), held.now, emit, false);
        let side: Side = usize::from(!FlowKey::new(held.head.src, held.head.dst).1);
        if let Some(c) = self.flows.get_mut(&held.key) {
            c.hold_off[side] = true;
        }
    }

    /// Take the held segment `i` out of the list and the memory account.
    fn release(&mut self, i: usize) -> reorder::Held {
        let held = self.held.remove(i);
        self.held_bytes -= held.bytes();
        self.update_memory();
        held
    }

    /// Every held segment, oldest first (a sweep, the end of the capture:
    /// what they waited for did not come). Into a vector: one closure type,
    /// which the sweep it may run calls this again with.
    fn release_all(&mut self, out: &mut Vec<Exchange>) {
        while !self.held.is_empty() {
            let held = self.release(0);
            self.release_alone(&held, &mut |ex| out.push(ex));
        }
    }

    /// [`FlowTable::segment`] without what is held; `may_hold`: this segment
    /// may be held itself.
    fn segment_now(
        &mut self,
        seg: &TcpSegment<'_>,
        now: Timestamp,
        emit: &mut impl FnMut(Exchange),
        may_hold: bool,
    ) {
        self.maybe_sweep(now, emit);
        let (key, src_is_lo) = FlowKey::new(seg.src, seg.dst);
        let side: Side = if src_is_lo { 0 } else { 1 };
        let flags = seg.flags;
        let syn_only = flags.syn() && !flags.ack();

        // A SYN with a new initial sequence number on a known connection
        // (port reuse) starts a new one; a repeated SYN is a retransmission.
        if syn_only {
            if let Some(c) = self.flows.get(&key) {
                let reused = (c.syn_seen[side] && c.isn[side] != seg.seq)
                    || (!c.syn_seen[side] && c.had_data)
                    || c.ended.iter().any(|&e| e);
                if reused {
                    let c = self.take(&key).expect("just seen");
                    self.finish(key, c, now, StreamEnd::Closed, emit);
                    self.stats.flows_closed += 1;
                }
            }
        }

        let starts = flags.syn() || !seg.payload.is_empty() || seg.missing > 0;
        if starts
            && self.flows.full()
            && self.flows.len() < self.cfg.max_flows
            && !self.flows.contains_key(&key)
        {
            self.make_room(now, emit);
        }
        let max_flows = self.cfg.max_flows;
        let stats = &mut self.stats;
        let conn = self.flows.entry_or_insert_with(key, |flows_len| {
            // Only a handshake or data starts tracking; stray ACKs, FINs
            // and RSTs of connections we never saw cost nothing.
            if !starts {
                return None;
            }
            if flows_len >= max_flows {
                stats.flows_refused += 1;
                return None;
            }
            stats.flows_created += 1;
            Some(Connection::new(now))
        });
        let Some((entry, conn)) = conn else {
            return;
        };
        let cfg = &self.cfg;
        let stats = &mut self.stats;
        let events = &mut self.events;
        let spare = &mut self.spare;
        let held = &mut self.held;
        conn.last_seen = now;
        if flags.syn() {
            if !conn.syn_seen[side] {
                conn.isn[side] = seg.seq;
            }
            conn.syn_seen[side] = true;
            if conn.client_is_lo.is_none() {
                // SYN comes from the client, SYN+ACK from the server.
                conn.client_is_lo = Some(src_is_lo == syn_only);
            }
        }
        let peer = 1 - side;
        if flags.syn()
            && flags.ack()
            && !conn.syn_seen[peer]
            && !conn.syn_acked[peer]
            && conn.streams[peer].next_seq().is_none()
        {
            // A SYN-ACK acknowledges exactly its peer's SYN: where the
            // peer's stream begins, though the capture lost that SYN (its
            // first request is then known to be one, malformed or not).
            conn.isn[peer] = seg.ack.wrapping_sub(1);
            conn.syn_acked[peer] = true;
        }
        if !seg.payload.is_empty() || seg.missing > 0 {
            conn.had_data = true;
            conn.hold_off[peer] = false;
        }

        let kept_deadline = conn.deadline;
        let hold_off = conn.hold_off[side];
        let streams_before = conn.streams_bytes();
        let (streams, mut ctx) = conn.split(key, cfg, stats, events, spare, emit);
        let [s0, s1] = streams;
        let (this, other) = if side == 0 { (s0, s1) } else { (s1, s0) };

        // An ACK from a side that has shown nothing of its own (no SYN, no
        // data) about a direction that began with a SYN answers another
        // incarnation of the connection (a challenge ACK to a SYN that met
        // stale state): its number says nothing of this one.
        let synced = ctx.syn_seen[side]
            || !ctx.syn_seen[1 - side]
            || !seg.payload.is_empty()
            || this.next_seq().is_some();
        // Data that acknowledges bytes of the other direction not seen yet:
        // the capture may show them next (see `reorder`).
        let awaited = if may_hold
            && !seg.payload.is_empty()
            && flags.ack()
            && !(flags.syn() || flags.fin() || flags.rst())
            && synced
            && !hold_off
            && held.len() < reorder::MAX_HELD
        {
            other.next_seq().filter(|&n| reassembly::seq_lt(n, seg.ack))
        } else {
            None
        };
        if let Some(awaited) = awaited {
            let h = reorder::Held::of(key, seg, now, awaited);
            self.held_bytes += h.bytes();
            held.push(h);
            stats.segments_held += 1;
            self.update_memory();
            return;
        }
        if flags.ack() && synced {
            other.peer_ack(seg.ack, now, &cfg.stream_limits, &mut |ev| {
                ctx.event(1 - side, ev)
            });
            if !seg.payload.is_empty() {
                other.declare_before(seg.ack, now, &cfg.stream_limits, &mut |ev| {
                    ctx.event(1 - side, ev)
                });
            }
        }
        if flags.rst() {
            // The connection ends here. What the other direction sent first
            // (held behind a hole, acknowledged, a FIN seen ahead) is read
            // before the reset ends what waits, so a response the client
            // had whole does not end "reset" for bytes the capture lost.
            other.flush(now, &mut |ev| ctx.event(1 - side, ev));
        }
        this.segment(
            seg.seq,
            seg.ack,
            // Monotonic capture time (SPEC: a timestamp that goes backwards
            // counts as the previous one), not the raw packet stamp.
            now,
            flags.syn(),
            flags.fin(),
            flags.rst(),
            seg.payload,
            seg.missing,
            &cfg.stream_limits,
            &mut |ev| ctx.event(side, ev),
        );
        this.tick(now, &cfg.stream_limits, &mut |ev| ctx.event(side, ev));
        other.tick(now, &cfg.stream_limits, &mut |ev| ctx.event(1 - side, ev));
        // A segment that fed the protocol state nothing (most often a bare
        // ACK) changed nothing there: unless a request is overdue, the
        // session is not visited, and of the memory account only the
        // streams' part is redone (all of it for a new connection). With
        // many connections open, that saves the session's cache misses.
        // Debug builds check that what is kept is what would be computed.
        let visited = ctx.fed || kept_deadline <= now;
        let deadline = if visited {
            ctx.expire(now)
        } else {
            debug_assert_eq!(ctx.next_deadline(), kept_deadline, "stale deadline");
            kept_deadline
        };

        let done = flags.rst() || (conn.ended[0] && conn.ended[1]);
        conn.deadline = deadline;
        // Most segments only put the connection's due time later, which its
        // wake need not follow (a sweep that finds it early sets it again);
        // a request that now waits may put it earlier.
        let wake = wake_of(conn.due(cfg));
        let earlier = wake < conn.wake;
        conn.wake = conn.wake.min(wake);
        let mem = if visited || conn.accounted == 0 {
            conn.mem_bytes()
        } else {
            let mem = (conn.accounted + conn.streams_bytes()).saturating_sub(streams_before);
            debug_assert_eq!(conn.mem_bytes(), mem, "stale account");
            mem
        };
        conn.account(mem, &mut self.conns_bytes);
        if earlier {
            self.flows.wake_by(entry, wake);
        }
        self.update_memory();
        if done {
            let c = self.take(&key).expect("present");
            self.finish(key, c, now, StreamEnd::Closed, emit);
            self.stats.flows_closed += 1;
        }
        if self.stats.memory_bytes > self.cfg.memory_budget_bytes {
            self.evict_for_memory(now, emit);
        }
    }

    /// Live mode: time passes without packets.
    pub fn tick(&mut self, now: Timestamp, emit: &mut impl FnMut(Exchange)) {
        self.maybe_sweep(now, emit);
    }

    /// End of capture: every connection ends, every open exchange is logged.
    pub fn finish_all(&mut self, now: Timestamp, emit: &mut impl FnMut(Exchange)) {
        let mut out = Vec::new();
        self.release_all(&mut out);
        // Deterministic order, the same as a sweep's: connections by last
        // activity, then addresses; exchanges by start, then addresses. Only
        // the keys are listed (their room is in each connection's account),
        // and each connection is freed as soon as it is finished.
        let mut order: Vec<(Timestamp, FlowKey)> =
            self.flows.iter().map(|(k, c)| (c.last_seen, *k)).collect();
        order.sort_unstable();
        for (_, key) in order {
            if let Some(c) = self.take(&key) {
                self.finish(key, c, now, StreamEnd::CaptureEnded, &mut |ex| out.push(ex));
            }
        }
        self.flows.release_if_empty();
        self.update_memory();
        out.sort_by_key(|ex| (ex.ts, ex.client, ex.server));
        out.into_iter().for_each(emit);
    }

    /// Remove a connection from the table and from the memory account.
    fn take(&mut self, key: &FlowKey) -> Option<Connection> {
        let c = self.flows.remove(key)?;
        self.conns_bytes = self.conns_bytes.saturating_sub(c.accounted);
        self.update_memory();
        Some(c)
    }

    /// `memory_bytes` = the connections' accounts plus the table (its
    /// index and the entries that hold the connections themselves).
    fn update_memory(&mut self) {
        self.stats.memory_bytes =
            self.conns_bytes + self.flows.bytes() + self.spare.heap_bytes() + self.held_bytes;
    }

    /// Over the memory budget: end the connections idle longest until the
    /// table holds at most 90 % of it (so eviction runs rarely, not per
    /// packet), and count them.
    fn evict_for_memory(&mut self, now: Timestamp, emit: &mut impl FnMut(Exchange)) {
        let target = self.cfg.memory_budget_bytes / 10 * 9;
        self.evict_oldest(target, usize::MAX, now, emit);
    }

    /// The table's index is full and a new connection comes. If doubling
    /// the index (while the old one is still held) would overrun the budget,
    /// end the connections idle longest instead, to half the index: then
    /// the table does not grow, and does not need to for a while.
    fn make_room(&mut self, now: Timestamp, emit: &mut impl FnMut(Exchange)) {
        let need = self.conns_bytes + self.flows.bytes_while_growing() + CONNECTION_BYTES;
        if need > self.cfg.memory_budget_bytes {
            let target = self.cfg.memory_budget_bytes / 10 * 9;
            self.evict_oldest(target, self.flows.capacity() / 2, now, emit);
        }
    }

    /// End the connections idle longest (oldest `last_seen`, then lowest
    /// key) until memory is at most `target` bytes and at most `max_flows`
    /// remain; count them as evicted.
    ///
    /// Linear, without listing every connection: a histogram of the bytes
    /// held by age finds the age below which enough is held; only those
    /// connections are listed and sorted.
    fn evict_oldest(
        &mut self,
        target: usize,
        max_flows: usize,
        now: Timestamp,
        emit: &mut impl FnMut(Exchange),
    ) {
        const BINS: usize = 64;
        let enough = |memory: usize, flows: usize| memory <= target && flows <= max_flows;
        if enough(self.stats.memory_bytes, self.flows.len()) {
            return;
        }
        let (mut lo, mut hi) = (i64::MAX, i64::MIN);
        for c in self.flows.values() {
            lo = lo.min(c.last_seen.as_micros());
            hi = hi.max(c.last_seen.as_micros());
        }
        let width = ((hi.saturating_sub(lo)) as u64 / BINS as u64).max(1);
        let bin = |c: &Connection| {
            ((c.last_seen.as_micros().saturating_sub(lo) as u64 / width) as usize).min(BINS - 1)
        };
        let mut bytes = [0usize; BINS];
        let mut count = [0usize; BINS];
        for c in self.flows.values() {
            bytes[bin(c)] += c.accounted;
            count[bin(c)] += 1;
        }
        // The first bin whose connections, with all older ones, are enough.
        let (mut freed, mut ended) = (0, 0);
        let mut last = BINS - 1;
        for b in 0..BINS {
            freed += bytes[b];
            ended += count[b];
            if enough(
                self.stats.memory_bytes.saturating_sub(freed),
                self.flows.len() - ended,
            ) {
                last = b;
                break;
            }
        }
        let mut victims: Vec<(Timestamp, FlowKey)> = self
            .flows
            .iter()
            .filter(|(_, c)| bin(c) <= last)
            .map(|(k, c)| (c.last_seen, *k))
            .collect();
        victims.sort_unstable();
        for (_, key) in victims {
            if enough(self.stats.memory_bytes, self.flows.len()) {
                break;
            }
            if let Some(c) = self.take(&key) {
                self.finish(key, c, now, StreamEnd::CaptureEnded, emit);
                self.stats.flows_evicted += 1;
            }
        }
    }

    fn maybe_sweep(&mut self, now: Timestamp, emit: &mut impl FnMut(Exchange)) {
        if self.sweeps.as_mut().is_some_and(|s| s.due(now)) {
            self.sweep(now, emit);
        }
    }

    /// Sweeping is left to the caller, who calls [`FlowTable::sweep`] when
    /// its own [`SweepSchedule`] says so (workers sharing one input sweep at
    /// the packets one table would have swept at).
    pub fn with_caller_sweeps(mut self) -> Self {
        self.sweeps = None;
        self
    }

    /// Expire idle connections and overdue requests as of `now`. What it
    /// emits comes in a fixed order (by exchange start, then addresses),
    /// whatever the hash map's order, so runs are reproducible.
    pub fn sweep(&mut self, now: Timestamp, emit: &mut impl FnMut(Exchange)) {
        let mut out = Vec::new();
        self.release_all(&mut out);
        self.sweep_into(now, &mut |ex| out.push(ex));
        out.sort_by_key(|ex| (ex.ts, ex.client, ex.server));
        out.into_iter().for_each(emit);
    }

    fn sweep_into(&mut self, now: Timestamp, emit: &mut impl FnMut(Exchange)) {
        let cfg = &self.cfg;
        let mut expired = Vec::new();
        let spare = &mut self.spare;
        let stats = &mut self.stats;
        let events = &mut self.events;
        let conns_bytes = &mut self.conns_bytes;
        // Only connections whose wake has come are visited; each leaves
        // with the wake of its next due time.
        self.flows.for_each_due(wake_of(now), |k, c| {
            if c.idle_until(cfg) <= now {
                expired.push(*k);
            } else if c.deadline <= now {
                c.overdue(*k, now, cfg, stats, events, spare, emit);
                c.account(c.mem_bytes(), conns_bytes);
            }
            #[cfg(debug_assertions)]
            if let App::Http(h) = &c.app {
                let cached = Some(c.deadline).filter(|&d| d != NEVER);
                debug_assert_eq!(cached, h.session.next_deadline(), "stale deadline");
            }
            c.wake = wake_of(c.due(cfg));
            c.wake
        });
        expired.sort();
        // What every connection's wake stands for: it comes no later than
        // the connection is due, and none left is due by now.
        #[cfg(debug_assertions)]
        for (wake, k, c) in self.flows.wakes() {
            debug_assert_eq!(wake, c.wake, "the table's wake is the connection's");
            debug_assert!(wake <= wake_of(c.due(cfg)), "wake after due");
            debug_assert!(
                c.due(cfg) > now || expired.binary_search(k).is_ok(),
                "a due connection was not visited"
            );
        }
        for k in expired {
            let c = self.take(&k).expect("listed");
            self.finish(k, c, now, StreamEnd::CaptureEnded, emit);
            self.stats.flows_expired += 1;
        }
    }

    fn finish(
        &mut self,
        key: FlowKey,
        conn: Connection,
        now: Timestamp,
        why: StreamEnd,
        emit: &mut impl FnMut(Exchange),
    ) {
        let mut conn = conn;
        let cfg = &self.cfg;
        let stats = &mut self.stats;
        let events = &mut self.events;
        let spare = &mut self.spare;
        {
            let (streams, mut ctx) = conn.split(key, cfg, stats, events, spare, emit);
            for (side, s) in streams.iter_mut().enumerate() {
                s.flush(now, &mut |ev| ctx.event(side, ev));
            }
            ctx.expire(now);
        }
        let Connection {
            streams,
            app,
            client_is_lo,
            ..
        } = conn;
        for s in &streams {
            stats.stream.merge(s.stats());
        }
        // The server as the connection knew it (the client is known once
        // HTTP or TLS was recognised).
        let server = match client_is_lo {
            Some(false) => key.lo(),
            _ => key.hi(),
        };
        match app {
            App::Http(mut h) => {
                h.session.set_ending(why);
                let reset = why == StreamEnd::Closed;
                h.req.end_of_stream(now, reset, &mut h.session);
                h.resp.end_of_stream(now, reset, &mut h.session);
                h.session.release_parked();
                h.session.close(now);
                h.announce(|| server, Some(now), events);
                for (total, n) in stats
                    .http_parse_errors
                    .iter_mut()
                    .zip(h.session.parse_errors)
                {
                    *total += u64::from(n);
                }
                for ex in h.session.drain(client_server(&key, client_is_lo)) {
                    emit(ex);
                }
            }
            App::Undecided(sn) => {
                if sn.iter().any(|s| s.seen > 0) {
                    *stats.connections.entry(Protocol::Other).or_default() += 1;
                    // Without a verdict the server is the side that did not
                    // open the connection, when that is known.
                    let server = match client_is_lo {
                        Some(true) | None => key.hi(),
                        Some(false) => key.lo(),
                    };
                    events.push(FlowEvent::Connection {
                        server,
                        host: None,
                        protocol: Protocol::Other,
                        ts: now,
                    });
                }
            }
            App::Tls(mut t) => {
                let client = if server == key.hi() {
                    key.lo()
                } else {
                    key.hi()
                };
                let hs = t.reader.finish(t.ts, client, server);
                if !t.announced {
                    events.push(FlowEvent::Connection {
                        server,
                        host: hs.sni().map(str::to_string),
                        protocol: Protocol::Tls,
                        ts: now,
                    });
                }
                events.push(FlowEvent::Tls(hs));
            }
            App::Fresh | App::Done => {}
        }
    }
}

/// What the allocator adds to each allocation, about (glibc: a size word
/// and rounding up to 16 bytes; jemalloc: rounding up to its size class).
const ALLOC_OVERHEAD: usize = 16;

/// A connection's own cost outside the table (whose entry holds the
/// connection itself, see [`ConnTable::bytes`]): the entry that lists it
/// when the capture ends or it is evicted (`finish_all`, `evict_oldest`).
const CONNECTION_BYTES: usize = std::mem::size_of::<(Timestamp, FlowKey)>();

impl Connection {
    /// Bytes this connection holds beyond its place in the table (counted
    /// with the table, see [`ConnTable::bytes`]): every buffer.
    fn mem_bytes(&self) -> usize {
        CONNECTION_BYTES + self.streams_bytes() + self.app_bytes()
    }

    /// The connection now holds `mem` bytes: move the table's total from
    /// what it last added to that.
    fn account(&mut self, mem: usize, total: &mut usize) {
        *total = (*total + mem).saturating_sub(self.accounted);
        self.accounted = mem;
    }

    /// A sweep found a request of this connection overdue. Once the
    /// connection has been quiet long enough, what the capture never showed
    /// (before the peers' acknowledgements, before bytes held out of order)
    /// is declared lost first ([`Reassembler::declare_overdue`]), so that a
    /// request whose response was lost is unknown, not timed out; then the
    /// overdue requests are logged.
    #[allow(clippy::too_many_arguments)]
    fn overdue(
        &mut self,
        key: FlowKey,
        now: Timestamp,
        cfg: &FlowConfig,
        stats: &mut FlowStats,
        events: &mut Vec<FlowEvent>,
        spare: &mut SpareBuffers,
        emit: &mut impl FnMut(Exchange),
    ) {
        let last_seen = self.last_seen;
        let (streams, mut ctx) = self.split(key, cfg, stats, events, spare, emit);
        for (side, s) in streams.iter_mut().enumerate() {
            s.declare_overdue(now, last_seen, &cfg.stream_limits, &mut |ev| {
                ctx.event(side, ev)
            });
        }
        self.deadline = ctx.expire(now);
    }

    /// The connection's streams, and the context their events go through
    /// (the rest of the connection, and the table's parts they touch).
    #[allow(clippy::too_many_arguments)]
    fn split<'a, E: FnMut(Exchange)>(
        &'a mut self,
        key: FlowKey,
        cfg: &'a FlowConfig,
        stats: &'a mut FlowStats,
        events: &'a mut Vec<FlowEvent>,
        spare: &'a mut SpareBuffers,
        emit: &'a mut E,
    ) -> (&'a mut [Reassembler; 2], Ctx<'a, E>) {
        let Connection {
            streams,
            app,
            client_is_lo,
            syn_seen,
            syn_acked,
            isn,
            ended,
            ..
        } = self;
        let ctx = Ctx {
            cfg,
            stats,
            app,
            client_is_lo,
            syn_seen,
            syn_acked,
            isn,
            ended,
            key,
            events,
            spare,
            emit,
            fed: false,
        };
        (streams, ctx)
    }

    /// When a sweep has something to do with this connection: it has been
    /// idle too long, or a request of it waits too long.
    fn due(&self, cfg: &FlowConfig) -> Timestamp {
        self.idle_until(cfg).min(self.deadline)
    }

    /// When it has been idle too long: the idle timeout after its last
    /// segment, or the handshake timeout before any data.
    fn idle_until(&self, cfg: &FlowConfig) -> Timestamp {
        let limit = if self.had_data {
            cfg.idle_timeout_micros
        } else {
            cfg.handshake_timeout_micros
        };
        self.last_seen.saturating_add_micros(limit)
    }

    /// What the two streams hold on the heap.
    fn streams_bytes(&self) -> usize {
        self.streams.iter().map(Reassembler::heap_bytes).sum()
    }

    /// What the protocol state holds: its box and what that holds.
    fn app_bytes(&self) -> usize {
        match &self.app {
            App::Fresh => 0,
            App::Undecided(sn) => {
                std::mem::size_of::<[Sniffer; 2]>()
                    + ALLOC_OVERHEAD
                    + sn.iter().map(Sniffer::heap_bytes).sum::<usize>()
            }
            App::Http(h) => {
                std::mem::size_of::<HttpConn>()
                    + ALLOC_OVERHEAD
                    + h.req.heap_bytes()
                    + h.resp.heap_bytes()
                    + h.session.heap_bytes()
            }
            App::Tls(t) => std::mem::size_of::<TlsConn>() + t.reader.heap_bytes(),
            App::Done => 0,
        }
    }

    fn new(now: Timestamp) -> Self {
        Connection {
            streams: [Reassembler::new(), Reassembler::new()],
            client_is_lo: None,
            syn_seen: [false; 2],
            syn_acked: [false; 2],
            isn: [0; 2],
            ended: [false; 2],
            app: App::Fresh,
            last_seen: now,
            had_data: false,
            hold_off: [false; 2],
            accounted: 0,
            wake: 0,
            deadline: NEVER,
        }
    }
}

/// (client, server) of a connection once the client is known; else (lo, hi).
fn client_server(key: &FlowKey, client_is_lo: Option<bool>) -> (SocketAddr, SocketAddr) {
    match client_is_lo {
        Some(false) => (key.hi(), key.lo()),
        _ => (key.lo(), key.hi()),
    }
}

/// Everything a stream event needs, borrowed apart from the reassemblers.
struct Ctx<'a, E: FnMut(Exchange)> {
    cfg: &'a FlowConfig,
    stats: &'a mut FlowStats,
    app: &'a mut App,
    client_is_lo: &'a mut Option<bool>,
    syn_seen: &'a mut [bool; 2],
    syn_acked: &'a [bool; 2],
    isn: &'a [u32; 2],
    ended: &'a mut [bool; 2],
    key: FlowKey,
    events: &'a mut Vec<FlowEvent>,
    spare: &'a mut SpareBuffers,
    emit: &'a mut E,
    /// A stream event came: the protocol state may have changed.
    fed: bool,
}

impl<E: FnMut(Exchange)> Ctx<'_, E> {
    fn addr(&self, side: Side) -> SocketAddr {
        if side == 0 {
            self.key.lo()
        } else {
            self.key.hi()
        }
    }

    /// The connection's protocol is known: count it. HTTP and TLS tell the
    /// caller later, when the name of the server is known (their
    /// `announce`); other protocols have none to wait for.
    fn decided(&mut self, protocol: Protocol, server: SocketAddr, ts: Timestamp) {
        *self.stats.connections.entry(protocol).or_default() += 1;
        if protocol == Protocol::Other {
            self.events.push(FlowEvent::Connection {
                server,
                host: None,
                protocol,
                ts,
            });
        }
    }

    /// The HTTP direction of a side, once the client is known.
    fn direction(&self, side: Side) -> Option<Direction> {
        self.client_is_lo.map(|lo_client| {
            if (side == 0) == lo_client {
                Direction::ToServer
            } else {
                Direction::ToClient
            }
        })
    }

    fn event(&mut self, side: Side, ev: StreamEvent<'_>) {
        self.fed = true;
        let dir = self.direction(side);
        match ev {
            StreamEvent::Data(chunk) => self.data(side, &chunk),
            StreamEvent::Gap {
                seq,
                len,
                ts,
                truncated,
            } => match self.app {
                App::Fresh => {
                    let mut sn = Box::<[Sniffer; 2]>::default();
                    sn[side].gap_at(seq.wrapping_add(len));
                    *self.app = App::Undecided(sn);
                }
                App::Undecided(sn) => sn[side].gap_at(seq.wrapping_add(len)),
                App::Tls(t) => {
                    t.reader.gap(dir == Some(Direction::ToServer));
                    let server = client_server(&self.key, *self.client_is_lo).1;
                    t.announce(server, ts, self.events);
                }
                App::Http(h) => {
                    let dir = dir.expect("known once HTTP");
                    let HttpConn {
                        req, resp, session, ..
                    } = &mut **h;
                    session.borrow_buffers(self.spare);
                    let parser = match dir {
                        Direction::ToServer => req,
                        Direction::ToClient => resp,
                    };
                    if truncated {
                        parser.cut(seq, len, ts, session);
                    } else {
                        parser.gap(seq, len, ts, session);
                        if dir == Direction::ToClient {
                            session.response_segments_lost();
                        }
                    }
                    self.after_parse();
                }
                App::Done => {}
            },
            StreamEvent::Fin { ts } | StreamEvent::Reset { ts } => {
                let reset = matches!(ev, StreamEvent::Reset { .. });
                self.ended[side] = true;
                if let App::Http(h) = self.app {
                    let dir = dir.expect("known once HTTP");
                    let HttpConn {
                        req, resp, session, ..
                    } = &mut **h;
                    session.borrow_buffers(self.spare);
                    if reset || dir == Direction::ToClient {
                        // The server can send nothing more: what waits fails.
                        session.set_ending(StreamEnd::Closed);
                        resp.end_of_stream(ts, reset, session);
                        if reset {
                            req.end_of_stream(ts, reset, session);
                        }
                        session.close(ts);
                    } else {
                        req.end_of_stream(ts, false, session);
                    }
                    self.after_parse();
                }
            }
        }
    }

    fn data(&mut self, side: Side, chunk: &Chunk<'_>) {
        let dir = self.direction(side);
        let sniffers = match self.app {
            App::Http(h) => {
                let dir = dir.expect("known once HTTP");
                let HttpConn {
                    req, resp, session, ..
                } = &mut **h;
                session.borrow_buffers(self.spare);
                match dir {
                    Direction::ToServer => req.feed(chunk, session),
                    Direction::ToClient => resp.feed(chunk, session),
                }
                self.after_parse();
                return;
            }
            App::Tls(t) => {
                let (client, server) = client_server(&self.key, *self.client_is_lo);
                let to_server = dir == Some(Direction::ToServer);
                let done = t.reader.push(to_server, chunk.data);
                t.announce(server, chunk.ts, self.events);
                if done {
                    let hs = t.reader.finish(t.ts, client, server);
                    self.events.push(FlowEvent::Tls(hs));
                    *self.app = App::Done;
                }
                return;
            }
            App::Done => return,
            App::Fresh => {
                *self.app = App::Undecided(Box::default());
                return self.data(side, chunk);
            }
            App::Undecided(s) => s,
        };
        // Is this the stream's first byte? Known from its SYN, or from its
        // peer's SYN-ACK.
        let stream_start = sniffers[side].seen == 0
            && (self.syn_seen[side]
                || (self.syn_acked[side] && chunk.seq == self.isn[side].wrapping_add(1)));
        let from_client = self.client_is_lo.map(|lo| lo == (side == 0));
        match sniffers[side].push(chunk, stream_start, from_client) {
            Verdict::Http { seq, is_request } => {
                let [s0, s1] = std::mem::take(&mut **sniffers);
                let (mut this, mut other) = if side == 0 { (s0, s1) } else { (s1, s0) };
                self.stats.sniff_skipped_bytes += this.seen_before(seq);
                let sender_is_lo = side == 0;
                *self.client_is_lo = Some(sender_is_lo == is_request);
                let server_side = if is_request { 1 - side } else { side };
                let server = self.addr(server_side);
                // The other direction is parsed from its first byte when
                // that is known (held from the start, or not begun after a
                // SYN) and looks like text: a malformed request is then
                // reported as such. A binary preamble (a SOCKS reply, say)
                // is skipped by looking for the next message start instead.
                let other_sync = !other.had_gap()
                    && ((other.is_from_start() && other.starts_with_letter())
                        || (other.seen == 0
                            && (self.syn_seen[1 - side] || self.syn_acked[1 - side])));
                let limits = &self.cfg.parser_limits;
                let (req_sync, resp_sync) = if is_request {
                    (true, other_sync)
                } else {
                    (other_sync, true)
                };
                let mut req = MessageParser::new(Direction::ToServer, Arc::clone(limits), req_sync);
                let mut resp =
                    MessageParser::new(Direction::ToClient, Arc::clone(limits), resp_sync);
                // Bytes of a direction lost before its first message (the
                // other's before it sent anything, say): what they held is
                // unknown, as after any gap.
                let (this_parser, other_parser) = if is_request {
                    (&mut req, &mut resp)
                } else {
                    (&mut resp, &mut req)
                };
                if this.had_gap() {
                    this_parser.start_after_gap();
                }
                if other.had_gap() {
                    other_parser.start_after_gap();
                }
                let mut session = HttpSession::new(self.cfg.transaction_timeout_micros);
                let request_side = if is_request { &this } else { &other };
                if request_side.had_gap() {
                    session.requests_lost_before_start();
                }
                *self.app = App::Http(Box::new(HttpConn {
                    req,
                    resp,
                    session,
                    announced: false,
                }));
                self.decided(Protocol::Http, server, chunk.ts);
                // The other direction's held bytes come first: they were
                // sent earlier (e.g. a malformed request before its 400).
                // Out of sync, only a start candidate still waiting for
                // bytes is worth replaying: the rest was scanned already.
                let other_from = if other_sync {
                    Some(other.held_start_seq())
                } else {
                    other.pending_candidate_seq()
                };
                if let Some(from) = other_from {
                    other.replay(from, |c| self.data(1 - side, c));
                }
                this.replay(seq, |c| self.data(side, c));
            }
            Verdict::Tls => {
                // The first TLS record comes from the client (its hello),
                // unless the handshake said otherwise.
                let client_is_lo = *self.client_is_lo.get_or_insert(side == 0);
                let server = if client_is_lo {
                    self.key.hi()
                } else {
                    self.key.lo()
                };
                self.decided(Protocol::Tls, server, chunk.ts);
                *self.app = App::Tls(Box::new(TlsConn {
                    reader: HandshakeReader::default(),
                    ts: chunk.ts,
                    announced: false,
                }));
                self.data(side, chunk);
            }
            Verdict::Undecided => {
                if sniffers[side].seen > u64::from(self.cfg.sniff_limit_bytes) {
                    self.stats.sniff_skipped_bytes += sniffers.iter().map(|s| s.seen).sum::<u64>();
                    let server = self.addr(1 - side);
                    self.decided(Protocol::Other, server, chunk.ts);
                    *self.app = App::Done;
                }
            }
        }
    }

    /// Apply the session's deferred parser commands and pass on exchanges.
    fn after_parse(&mut self) {
        let App::Http(h) = self.app else {
            return;
        };
        // Most segments are a body's middle: nothing to announce, count,
        // obey or hand on (the addresses are built only for what is).
        let (key, client_is_lo) = (&self.key, *self.client_is_lo);
        h.announce(|| client_server(key, client_is_lo).1, None, self.events);
        for (total, n) in self
            .stats
            .http_parse_errors
            .iter_mut()
            .zip(std::mem::take(&mut h.session.parse_errors))
        {
            *total += u64::from(n);
        }
        let cmds = std::mem::take(&mut h.session.commands);
        if cmds.request_enter_tunnel && !h.req.in_tunnel() {
            h.req.enter_tunnel();
        }
        if cmds.request_resume && h.req.in_tunnel() {
            h.req.resume_from_tunnel();
        }
        if h.session.has_output() {
            for ex in h
                .session
                .drain(client_server(&self.key, *self.client_is_lo))
            {
                (self.emit)(ex);
            }
        }
        h.session.return_buffers(self.spare);
    }

    /// Log the requests whose timeout passed by `now`; the next such
    /// deadline (see [`Connection::deadline`]).
    fn expire(&mut self, now: Timestamp) -> Timestamp {
        let App::Http(h) = self.app else {
            return NEVER;
        };
        // Whatever fed the session was followed by `after_parse`: only an
        // expiry leaves it something to pass on.
        let due = h.session.next_deadline().unwrap_or(NEVER);
        if due > now && !h.session.holds_overdue() {
            return due;
        }
        h.session.borrow_buffers(self.spare);
        h.session.expire(now, h.resp.last_seen());
        self.after_parse();
        self.next_deadline()
    }

    /// When the oldest request waiting times out ([`NEVER`]: none waits).
    fn next_deadline(&self) -> Timestamp {
        match &*self.app {
            App::Http(h) => h.session.next_deadline().unwrap_or(NEVER),
            _ => NEVER,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::TcpFlags;
    use crate::http::exchange::Outcome;

    const C: &str = "10.0.0.2:40000";
    const S: &str = "10.0.0.1:8080";

    /// A scripted connection: segments from client or server, with
    /// sequence numbers kept automatically.
    struct Script {
        table: FlowTable,
        cseq: u32,
        sseq: u32,
        t: i64,
        out: Vec<Exchange>,
    }

    impl Script {
        fn new() -> Self {
            Script {
                table: FlowTable::new(FlowConfig::default()),
                cseq: 1000,
                sseq: 90_000,
                t: 1_000_000,
                out: Vec::new(),
            }
        }
        fn seg(&mut self, from_client: bool, flags: u8, payload: &[u8]) {
            self.seg_cut(from_client, flags, payload, 0);
        }
        /// A segment the capture cut after `payload` (snaplen): `missing`
        /// more bytes were on the wire.
        fn seg_cut(&mut self, from_client: bool, flags: u8, payload: &[u8], missing: u32) {
            self.t += 100;
            let (src, dst, seq, ack) = if from_client {
                (C, S, self.cseq, self.sseq)
            } else {
                (S, C, self.sseq, self.cseq)
            };
            let seg = TcpSegment {
                ts: Timestamp::from_micros(self.t),
                src: src.parse().unwrap(),
                dst: dst.parse().unwrap(),
                seq,
                ack,
                flags: TcpFlags(flags),
                window: 1000,
                payload,
                missing,
            };
            let adv = payload.len() as u32
                + missing
                + u32::from(flags & (TcpFlags::SYN | TcpFlags::FIN) != 0);
            if from_client {
                self.cseq = self.cseq.wrapping_add(adv);
            } else {
                self.sseq = self.sseq.wrapping_add(adv);
            }
            let out = &mut self.out;
            self.table.segment(&seg, seg.ts, &mut |e| out.push(e));
        }
        /// A segment the capture never saw: its sender's sequence moves on.
        fn lost(&mut self, from_client: bool, flags: u8, payload: &[u8]) {
            self.t += 100;
            let adv =
                payload.len() as u32 + u32::from(flags & (TcpFlags::SYN | TcpFlags::FIN) != 0);
            let seq = if from_client {
                &mut self.cseq
            } else {
                &mut self.sseq
            };
            *seq = seq.wrapping_add(adv);
        }
        fn handshake(&mut self) {
            self.seg(true, TcpFlags::SYN, b"");
            self.seg(false, TcpFlags::SYN | TcpFlags::ACK, b"");
            self.seg(true, TcpFlags::ACK, b"");
        }
        /// A handshake and one request: returns when the request times out.
        fn ask(&mut self) -> i64 {
            self.handshake();
            self.seg(true, TcpFlags::ACK | TcpFlags::PSH, REQ);
            self.t + FlowConfig::default().transaction_timeout_micros
        }
        /// The clock ticks at capture time `t` (a sweep when one is due).
        fn sweep_at(&mut self, t: i64) {
            let out = &mut self.out;
            self.table
                .tick(Timestamp::from_micros(t), &mut |e| out.push(e));
        }
        fn finish(&mut self) {
            let out = &mut self.out;
            let t = Timestamp::from_micros(self.t + 1);
            self.table.finish_all(t, &mut |e| out.push(e));
        }
    }

    const REQ: &[u8] =
        b"GET /api/v1/orders/52 HTTP/1.1\r\nHost: 10.99.0.1\r\nUser-Agent: x\r\n\r\n";
    const RESP: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
    /// A response head whose body (20 bytes) the test sends in pieces.
    const HEAD_20: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n";

    #[test]
    fn an_unanswered_request_times_out_at_the_first_sweep_past_its_deadline() {
        // The sweep reads the deadline the connection keeps: it must be the
        // one of the request that waits, set by the segment that brought
        // it, and gone once the request is logged.
        let mut s = Script::new();
        let deadline = s.ask();
        s.sweep_at(deadline - 1_000_000);
        assert!(s.out.is_empty(), "{:?}", s.out);
        s.sweep_at(deadline + 1_000_000);
        assert_eq!(s.out.len(), 1, "{:?}", s.out);
        assert_eq!(s.out[0].outcome, Outcome::TimedOut);
        assert_eq!(s.table.active_flows(), 1, "the connection stays");
        s.sweep_at(deadline + 2_000_000);
        assert_eq!(s.out.len(), 1, "logged once");
    }

    #[test]
    fn a_bare_ack_past_a_requests_deadline_times_it_out_and_keeps_the_account() {
        // Segments that feed the session nothing leave it alone unless a
        // request is overdue; the memory account must stay what a recount
        // gives. (Sweeps are left to the caller here, so only segments can
        // time the request out.)
        let recount = |t: &FlowTable| -> usize { t.flows.values().map(|c| c.mem_bytes()).sum() };
        let mut s = Script::new();
        s.table = FlowTable::new(FlowConfig::default()).with_caller_sweeps();
        s.handshake();
        s.seg(true, TcpFlags::ACK | TcpFlags::PSH, REQ);
        let asked = s.t;
        let timeout = FlowConfig::default().transaction_timeout_micros;
        s.seg(false, TcpFlags::ACK, b"");
        let waiting = s.table.conns_bytes;
        assert_eq!(waiting, recount(&s.table));
        s.t = asked + timeout - 1_000;
        s.seg(false, TcpFlags::ACK, b"");
        assert!(s.out.is_empty(), "{:?}", s.out);
        s.t = asked + timeout + 1_000;
        s.seg(false, TcpFlags::ACK, b"");
        assert_eq!(s.out.len(), 1, "{:?}", s.out);
        assert_eq!(s.out[0].outcome, Outcome::TimedOut);
        assert_eq!(s.table.conns_bytes, recount(&s.table));
        s.seg(false, TcpFlags::ACK, b"");
        assert_eq!(s.out.len(), 1, "logged once");
        assert_eq!(s.table.conns_bytes, recount(&s.table));
    }

    #[test]
    fn sweeps_find_every_connection_that_is_due() {
        // Sweeps visit only connections whose wake has come; each timeout
        // must still come at the first sweep past it (that the others are
        // left alone is the bench flow_table/sweep_idle_200k's to show). Connection i (of 300)
        // opens at second 0, asks at second i % 7, and every third is then
        // answered; every fifth, idle until second 200, asks again then (a
        // due time that moves earlier than its wake). Sweeps every second.
        const N: u16 = 300;
        let cfg = FlowConfig::default();
        let mut table = FlowTable::new(cfg.clone()).with_caller_sweeps();
        let mut out = Vec::new();
        let sec = |s: i64| Timestamp::from_micros(1_000_000_000 + s * 1_000_000);
        type Out = Vec<(Timestamp, Exchange)>;
        let seg = |t: &mut FlowTable,
                   out: &mut Out,
                   at: Timestamp,
                   (i, client): (u16, bool),
                   flags: u8,
                   (seq, ack): (u32, u32),
                   payload: &[u8]| {
            let c: SocketAddr = SocketAddr::from(([10, 0, 1, 2], 40_000 + i));
            let s: SocketAddr = S.parse().unwrap();
            let (src, dst) = if client { (c, s) } else { (s, c) };
            let seg = tcp(at, src, dst, seq, ack, flags, payload);
            t.segment(&seg, at, &mut |e| out.push((at, e)));
        };
        let (ack, psh) = (TcpFlags::ACK, TcpFlags::ACK | TcpFlags::PSH);
        let req2 = b"GET /again HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut swept = Vec::new();
        for now in 0..510i64 {
            for i in 0..N {
                let t = sec(now);
                let (c0, s0) = (1000u32, 9000u32);
                let q = REQ.len() as u32;
                if now == 0 {
                    seg(
                        &mut table,
                        &mut out,
                        t,
                        (i, true),
                        TcpFlags::SYN,
                        (c0 - 1, 0),
                        b"",
                    );
                    seg(
                        &mut table,
                        &mut out,
                        t,
                        (i, false),
                        TcpFlags::SYN | ack,
                        (s0 - 1, c0),
                        b"",
                    );
                    seg(&mut table, &mut out, t, (i, true), ack, (c0, s0), b"");
                }
                if now == i64::from(i % 7) {
                    seg(&mut table, &mut out, t, (i, true), psh, (c0, s0), REQ);
                    if i % 3 == 0 {
                        seg(&mut table, &mut out, t, (i, false), psh, (s0, c0 + q), RESP);
                    }
                }
                if now == 200 && i % 5 == 0 {
                    let s1 = s0 + if i % 3 == 0 { RESP.len() as u32 } else { 0 };
                    seg(&mut table, &mut out, t, (i, true), psh, (c0 + q, s1), req2);
                }
            }
            let at = sec(now);
            table.sweep(at, &mut |e| out.push((at, e)));
            swept.push((now, table.stats().flows_expired));
        }
        let timeout = cfg.transaction_timeout_micros / 1_000_000;
        let idle = cfg.idle_timeout_micros / 1_000_000;
        for (at, e) in out.iter().filter(|(_, e)| e.outcome == Outcome::TimedOut) {
            let asked = e.ts.micros_since(sec(0)) / 1_000_000;
            assert_eq!(
                at.micros_since(sec(0)) / 1_000_000,
                asked + timeout,
                "timed out at the first sweep past its deadline: {e:?}"
            );
        }
        let timed_out = out
            .iter()
            .filter(|(_, e)| e.outcome == Outcome::TimedOut)
            .count();
        let unanswered =
            (0..N).filter(|i| i % 3 != 0).count() + (0..N).filter(|i| i % 5 == 0).count();
        assert_eq!(timed_out, unanswered);
        // Idle connections end at the first sweep past their idle timeout:
        // those that asked again 200 s in, later.
        let quiet = (0..N).filter(|i| i % 5 != 0).count() as u64;
        let expired_at = |n: u64| swept.iter().find(|s| s.1 >= n).map(|s| s.0);
        assert_eq!(expired_at(1), Some(idle), "{swept:?}");
        assert_eq!(expired_at(quiet), Some(idle + 6));
        assert_eq!(expired_at(u64::from(N)), Some(200 + idle));
    }

    #[test]
    fn request_in_tiny_segments_is_one_exchange() {
        for size in [1, 2, 3, 7, 13, 40] {
            let mut s = Script::new();
            s.handshake();
            for piece in REQ.chunks(size) {
                s.seg(true, TcpFlags::ACK | TcpFlags::PSH, piece);
            }
            s.seg(false, TcpFlags::ACK | TcpFlags::PSH, RESP);
            s.finish();
            assert_eq!(s.out.len(), 1, "segment size {size}: {:?}", s.out);
            assert_eq!(s.out[0].status(), Some(200), "segment size {size}");
            assert_eq!(
                s.out[0].outcome,
                crate::http::exchange::Outcome::Complete,
                "segment size {size}"
            );
            assert!(s.out[0].request.is_some(), "segment size {size}");
        }
    }

    /// A request answered (the client acknowledged the response) on a
    /// keep-alive connection that then went quiet; `syn_ack`: the capture
    /// holds the server's SYN+ACK, which is all it holds of the server.
    fn answered_but_never_seen(syn_ack: bool) -> Vec<Exchange> {
        let mut s = Script::new();
        s.seg(true, TcpFlags::SYN, b"");
        if syn_ack {
            s.seg(false, TcpFlags::SYN | TcpFlags::ACK, b"");
        } else {
            s.lost(false, TcpFlags::SYN | TcpFlags::ACK, b"");
        }
        s.seg(true, TcpFlags::ACK, b"");
        s.seg(true, TcpFlags::ACK | TcpFlags::PSH, REQ);
        s.lost(false, TcpFlags::ACK | TcpFlags::PSH, RESP);
        s.seg(true, TcpFlags::ACK, b"");
        // Idle past the transaction timeout, swept every second.
        let timeout = FlowConfig::default().transaction_timeout_micros;
        let quiet = s.t;
        for t in (quiet..quiet + 2 * timeout).step_by(1_000_000) {
            s.sweep_at(t);
        }
        s.out
    }

    #[test]
    fn a_request_whose_answer_the_capture_lost_is_unknown_on_a_quiet_connection() {
        // The client's ACK says a response came; the connection's next
        // segment may be minutes away, so the sweep declares the loss
        // before the request's timeout would make it a failure.
        let out = answered_but_never_seen(true);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].outcome, Outcome::Unknown);
        assert!(out[0].capture_loss);
        assert_eq!(out[0].status(), None);
    }

    #[test]
    fn a_direction_never_captured_is_loss_once_its_peer_acknowledges_data() {
        // One-sided capture (asymmetric routing, a filter, a SPAN port
        // seeing one way): not a byte of the server's, yet the client's
        // ACKs show it answered. Not a timeout.
        let out = answered_but_never_seen(false);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].outcome, Outcome::Unknown);
        assert!(out[0].capture_loss);
    }

    #[test]
    fn a_response_whose_request_the_capture_never_held_is_flagged() {
        // Only the server's direction captured: its ACKs show the client
        // sent bytes (the request) the capture does not hold.
        let mut s = Script::new();
        s.lost(true, TcpFlags::SYN, b"");
        s.seg(false, TcpFlags::SYN | TcpFlags::ACK, b"");
        s.lost(true, TcpFlags::ACK, b"");
        s.lost(true, TcpFlags::ACK | TcpFlags::PSH, REQ);
        s.seg(false, TcpFlags::ACK | TcpFlags::PSH, RESP);
        s.finish();
        assert_eq!(s.out.len(), 1, "{:?}", s.out);
        assert!(s.out[0].request.is_none());
        assert_eq!(s.out[0].status(), Some(200));
        assert!(s.out[0].capture_loss);
    }

    #[test]
    fn holes_acknowledged_long_before_a_late_fin_are_not_a_timeout() {
        // Two pieces of the body lost in the capture, the client's ACKs
        // cover both. The first hole is declared at the client's next
        // segment; the second was acknowledged as long ago, so the
        // server's FIN 29 s later declares it too, and the sweep just past
        // the request's deadline finds it answered.
        let mut s = Script::new();
        let deadline = s.ask();
        s.seg(false, TcpFlags::ACK, HEAD_20);
        s.lost(false, TcpFlags::ACK, b"11111");
        s.seg(true, TcpFlags::ACK, b"");
        s.seg(false, TcpFlags::ACK, b"22222");
        s.lost(false, TcpFlags::ACK, b"33333");
        s.seg(false, TcpFlags::ACK | TcpFlags::PSH, b"44444");
        s.seg(true, TcpFlags::ACK, b"");
        s.t += 1_500_000;
        s.seg(true, TcpFlags::ACK, b"");
        s.t = deadline - 500_000;
        s.seg(false, TcpFlags::ACK | TcpFlags::FIN, b"");
        s.seg(true, TcpFlags::ACK, b"");
        s.sweep_at(deadline + 200_000);
        assert_eq!(s.out.len(), 1, "{:?}", s.out);
        assert_eq!(s.out[0].outcome, Outcome::Complete);
        assert_eq!(s.out[0].status(), Some(200));
        assert!(s.out[0].capture_loss);
        assert!(s.out[0].duration_micros().unwrap() < 2_000_000);
    }

    #[test]
    fn a_response_captured_before_its_request_is_paired_with_it() {
        // Two taps merged with a little skew: the second response shows
        // before the request it answers (it acknowledges the request's
        // bytes). Held for that request, it pairs as if in order.
        let mut s = Script::new();
        s.ask();
        s.seg(false, TcpFlags::ACK | TcpFlags::PSH, RESP);
        s.seg(true, TcpFlags::ACK, b"");
        let (q, r) = (s.cseq, s.sseq);
        s.cseq = q.wrapping_add(REQ.len() as u32);
        s.seg(false, TcpFlags::ACK | TcpFlags::PSH, RESP);
        // Sent before that response came: it acknowledges up to it.
        let r_end = s.sseq;
        (s.cseq, s.sseq) = (q, r);
        s.seg(true, TcpFlags::ACK | TcpFlags::PSH, REQ);
        s.sseq = r_end;
        s.seg(true, TcpFlags::ACK, b"");
        s.finish();
        assert_eq!(s.out.len(), 2, "{:?}", s.out);
        for ex in &s.out {
            assert!(ex.request.is_some(), "{ex:?}");
            assert_eq!(ex.status(), Some(200));
            assert_eq!(ex.outcome, Outcome::Complete);
            assert!(!ex.capture_loss, "{ex:?}");
        }
        assert_eq!(s.table.stats().segments_held, 1);
    }

    #[test]
    fn a_response_whose_request_was_lost_goes_on_in_capture_order() {
        // The request the response acknowledges never shows; the client's
        // next request does (past it): the response is read first, as the
        // capture has it, not after the next request.
        let mut s = Script::new();
        s.handshake();
        s.lost(true, TcpFlags::ACK | TcpFlags::PSH, REQ);
        s.seg(false, TcpFlags::ACK | TcpFlags::PSH, RESP);
        s.seg(true, TcpFlags::ACK | TcpFlags::PSH, REQ);
        s.seg(false, TcpFlags::ACK | TcpFlags::PSH, RESP);
        s.finish();
        assert_eq!(s.out.len(), 2, "{:?}", s.out);
        assert!(
            s.out[0].request.is_none() && s.out[0].capture_loss,
            "{:?}",
            s.out[0]
        );
        assert_eq!(s.out[0].status(), Some(200));
        assert!(s.out[1].request.is_some(), "{:?}", s.out[1]);
        assert_eq!(s.out[1].status(), Some(200));
    }

    #[test]
    fn a_direction_never_captured_stops_the_holding() {
        // Only the server's side is captured: its data always acknowledges
        // client bytes the capture lacks. The first segment held goes on
        // at the next one; after that, none is held (no copy per segment).
        let mut s = Script::new();
        s.seg(true, TcpFlags::SYN, b"");
        s.seg(false, TcpFlags::SYN | TcpFlags::ACK, b"");
        for _ in 0..5 {
            s.lost(true, TcpFlags::ACK | TcpFlags::PSH, REQ);
            s.seg(false, TcpFlags::ACK | TcpFlags::PSH, RESP);
        }
        s.finish();
        assert_eq!(s.table.stats().segments_held, 1);
        assert_eq!(s.out.len(), 5, "{:?}", s.out);
        assert!(
            s.out.iter().all(|ex| ex.status() == Some(200)),
            "{:?}",
            s.out
        );
    }

    /// A request, then its response's head and half its body, the client
    /// acknowledging that much; `lose`: the capture loses the body's first
    /// piece (declared at the client's next ACK, 1.5 s on), `cut`: both
    /// pieces are cut by snaplen instead. Then quiet until just past the
    /// request's deadline, when a sweep runs. Returns the deadline.
    fn half_a_body(s: &mut Script, lose: bool, cut: bool) -> i64 {
        let deadline = s.ask();
        s.seg(false, TcpFlags::ACK, HEAD_20);
        for piece in [b"11111", b"22222"] {
            if lose && piece == b"11111" {
                s.lost(false, TcpFlags::ACK, piece);
            } else if cut {
                s.seg_cut(false, TcpFlags::ACK, &piece[..1], 4);
            } else {
                s.seg(false, TcpFlags::ACK, piece);
            }
        }
        s.seg(true, TcpFlags::ACK, b"");
        s.t += 1_500_000;
        s.seg(true, TcpFlags::ACK, b"");
        s.sweep_at(deadline + 1_000_000);
        deadline
    }

    #[test]
    fn an_overdue_response_whose_end_the_capture_lost_is_unknown() {
        // The rest of the body and the client's ACK of it are lost; the
        // client's FIN, after the deadline, acknowledges it all. Nothing
        // says whether it ended before the deadline: not a timeout.
        let mut s = Script::new();
        let deadline = half_a_body(&mut s, true, false);
        assert!(s.out.is_empty(), "held, not logged: {:?}", s.out);
        s.lost(false, TcpFlags::ACK | TcpFlags::PSH, b"3333344444");
        s.t = deadline + 5_000_000;
        s.seg(true, TcpFlags::ACK | TcpFlags::FIN, b"");
        s.finish();
        assert_eq!(s.out.len(), 1, "{:?}", s.out);
        assert_eq!(s.out[0].outcome, Outcome::Unknown);
        assert_eq!(s.out[0].status(), Some(200));
        assert!(s.out[0].capture_loss);
    }

    #[test]
    fn an_overdue_response_that_goes_on_after_its_deadline_timed_out() {
        // The same loss, but more of the body comes after the deadline:
        // the response was still on its way.
        let mut s = Script::new();
        let deadline = half_a_body(&mut s, true, false);
        assert!(s.out.is_empty(), "{:?}", s.out);
        s.t = deadline + 3_000_000;
        s.seg(false, TcpFlags::ACK, b"33333");
        assert_eq!(s.out.len(), 1, "{:?}", s.out);
        assert_eq!(s.out[0].outcome, Outcome::TimedOut);
        assert_eq!(s.out[0].status(), Some(200));
        assert!(!s.out[0].capture_loss);
        s.seg(false, TcpFlags::ACK | TcpFlags::PSH, b"44444");
        s.finish();
        assert_eq!(s.out.len(), 1, "logged once: {:?}", s.out);
    }

    #[test]
    fn a_stalled_response_times_out_at_its_deadline_without_loss_or_when_cut() {
        // No segment lost (all seen, or only cut by snaplen): the capture
        // shows the server stopped; the sweep past the deadline logs it.
        for cut in [false, true] {
            let mut s = Script::new();
            half_a_body(&mut s, false, cut);
            assert_eq!(s.out.len(), 1, "cut {cut}: {:?}", s.out);
            assert_eq!(s.out[0].outcome, Outcome::TimedOut);
            assert_eq!(s.out[0].status(), Some(200));
        }
    }

    #[test]
    fn a_reset_after_a_response_the_client_had_whole_is_not_a_failure() {
        // The body's segment is lost in the capture; the client ACKs it,
        // the server's FIN comes, the client resets (abortive close).
        let mut s = Script::new();
        s.handshake();
        s.seg(true, TcpFlags::ACK | TcpFlags::PSH, REQ);
        let (head, body) = RESP.split_at(RESP.len() - 5);
        s.seg(false, TcpFlags::ACK, head);
        s.lost(false, TcpFlags::ACK | TcpFlags::PSH, body);
        s.seg(true, TcpFlags::ACK, b"");
        s.seg(false, TcpFlags::ACK | TcpFlags::FIN, b"");
        s.seg(true, TcpFlags::ACK | TcpFlags::RST, b"");
        assert_eq!(s.out.len(), 1, "{:?}", s.out);
        assert_eq!(s.out[0].status(), Some(200));
        assert_eq!(s.out[0].outcome, Outcome::Complete);
        assert!(s.out[0].capture_loss);
    }

    /// The client's SYN lost, the rest of the handshake captured.
    fn synack_only() -> Script {
        let mut s = Script::new();
        s.lost(true, TcpFlags::SYN, b"");
        s.seg(false, TcpFlags::SYN | TcpFlags::ACK, b"");
        s.seg(true, TcpFlags::ACK, b"");
        s
    }

    const BAD_REQ: &[u8] = b"CONNECT /HTTP/1.1\r\nHost: a.example\r\n\r\n";
    const RESP_400: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn a_synack_tells_where_the_clients_stream_starts() {
        // The SYN-ACK acknowledges the client's SYN: its first bytes are a
        // request, however malformed, not bytes to skip as after a
        // mid-stream pickup (which would log the 400 as a bad_request).
        let mut s = synack_only();
        s.seg(true, TcpFlags::ACK | TcpFlags::PSH, BAD_REQ);
        s.seg(false, TcpFlags::ACK | TcpFlags::PSH, RESP_400);
        s.finish();
        assert_eq!(s.out.len(), 1, "{:?}", s.out);
        assert_eq!(s.out[0].outcome, Outcome::Malformed);
        assert_eq!(s.out[0].status(), Some(400));
        assert!(!s.out[0].capture_loss);
    }

    #[test]
    fn a_synack_puts_a_silent_client_in_sync() {
        // The server speaks first (a 408 to a preconnected socket): the
        // client, silent so far, is read from its first byte on.
        let mut s = synack_only();
        s.seg(
            false,
            TcpFlags::ACK | TcpFlags::PSH,
            b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n",
        );
        s.seg(true, TcpFlags::ACK | TcpFlags::PSH, BAD_REQ);
        s.seg(false, TcpFlags::ACK | TcpFlags::PSH, RESP_400);
        s.finish();
        assert_eq!(s.out.len(), 2, "{:?}", s.out);
        assert_eq!(s.out[0].status(), Some(408));
        assert!(s.out[0].request.is_none());
        assert_eq!(s.out[1].outcome, Outcome::Malformed);
        assert_eq!(s.out[1].status(), Some(400));
    }

    #[test]
    fn a_challenge_ack_to_a_syn_says_nothing_of_the_new_connection() {
        // RFC 5961: a SYN that meets stale state gets an ACK of the old
        // connection's numbers, and the client resets. Not 976 MB lost.
        let mut s = Script::new();
        s.seg(true, TcpFlags::SYN, b"");
        // The old connection's client position: the ACK's number, and the
        // RST's sequence number (RFC 5961's answer to a challenge ACK).
        s.cseq = s.cseq.wrapping_add(976_271_786);
        s.seg(false, TcpFlags::ACK, b"");
        s.seg(true, TcpFlags::RST, b"");
        s.finish();
        assert_eq!(s.table.stats().stream.missing_bytes, 0);
    }

    #[test]
    fn mid_stream_pickup_finds_the_roles_by_content() {
        // No handshake; the capture starts with a response tail, then a
        // request and its response. Ports say nothing (8080 vs 40000).
        let mut s = Script::new();
        s.seg(false, TcpFlags::ACK, b"tail of an earlier body\r\n");
        s.seg(true, TcpFlags::ACK | TcpFlags::PSH, REQ);
        s.seg(false, TcpFlags::ACK | TcpFlags::PSH, RESP);
        s.finish();
        assert_eq!(s.out.len(), 1, "{:?}", s.out);
        assert_eq!(s.out[0].client, C.parse().unwrap());
        assert_eq!(s.out[0].status(), Some(200));
    }

    #[test]
    fn tls_and_other_protocols_are_not_parsed() {
        let mut s = Script::new();
        s.handshake();
        s.seg(
            true,
            TcpFlags::ACK | TcpFlags::PSH,
            &[0x16, 0x03, 0x01, 0x00, 0x05, 1, 0, 0, 1, 0],
        );
        s.finish();
        assert!(s.out.is_empty());
        assert_eq!(s.table.stats().connections.get(&Protocol::Tls), Some(&1));
        let mut s = Script::new();
        s.handshake();
        s.seg(
            false,
            TcpFlags::ACK | TcpFlags::PSH,
            b"SSH-2.0-OpenSSH_9.2\r\n",
        );
        s.finish();
        assert!(s.out.is_empty());
        assert_eq!(s.table.stats().connections.get(&Protocol::Other), Some(&1));
    }

    /// A TLS 1.3 ClientHello naming `sni`.
    fn hello_with_sni(sni: &str) -> Vec<u8> {
        crate::classify::tls::tests::client_hello(0x0303, &[0x0304], Some(sni), 1 << 14)
    }

    /// The connection events drained so far, as (host, protocol).
    fn connections(t: &mut FlowTable) -> Vec<(Option<String>, Protocol)> {
        let mut events = Vec::new();
        t.take_events(|e| events.push(e));
        events
            .into_iter()
            .filter_map(|e| match e {
                FlowEvent::Connection { host, protocol, .. } => Some((host, protocol)),
                FlowEvent::Tls(_) => None,
            })
            .collect()
    }

    #[test]
    fn http_connection_reported_once_with_the_host_of_its_first_request() {
        let mut s = Script::new();
        s.handshake();
        s.seg(
            true,
            TcpFlags::ACK | TcpFlags::PSH,
            b"GET /a HTTP/1.1\r\nHost: API.Example.com:80\r\n\r\n",
        );
        // Reported when the head is parsed, before any response.
        assert_eq!(
            connections(&mut s.table),
            [(Some("api.example.com".to_string()), Protocol::Http)]
        );
        s.seg(false, TcpFlags::ACK | TcpFlags::PSH, RESP);
        s.seg(
            true,
            TcpFlags::ACK | TcpFlags::PSH,
            b"GET /b HTTP/1.1\r\nHost: other.example\r\n\r\n",
        );
        s.seg(false, TcpFlags::ACK | TcpFlags::PSH, RESP);
        s.finish();
        assert_eq!(connections(&mut s.table), []);
        assert_eq!(s.out.len(), 2);
    }

    #[test]
    fn tls_connection_reported_once_at_the_client_hello_with_its_sni() {
        let hello = hello_with_sni("API.example.com");
        let mut s = Script::new();
        s.handshake();
        s.seg(true, TcpFlags::ACK | TcpFlags::PSH, &hello);
        // The server has not answered: the hello alone names the server.
        assert_eq!(
            connections(&mut s.table),
            [(Some("api.example.com".to_string()), Protocol::Tls)]
        );
        s.finish();
        let mut events = Vec::new();
        s.table.take_events(|e| events.push(e));
        assert_eq!(events.len(), 1, "{events:?}");
        assert!(
            matches!(&events[0], FlowEvent::Tls(hs) if hs.sni() == Some("api.example.com")),
            "{events:?}"
        );
    }

    #[test]
    fn connections_without_a_request_or_hello_are_reported_at_their_end() {
        // HTTP recognised from a response; no request ever comes.
        let mut s = Script::new();
        s.seg(false, TcpFlags::ACK | TcpFlags::PSH, RESP);
        assert_eq!(connections(&mut s.table), []);
        s.finish();
        assert_eq!(connections(&mut s.table), [(None, Protocol::Http)]);

        // TLS whose hello is cut short by the end of the capture.
        let hello = hello_with_sni("api.example.com");
        let mut s = Script::new();
        s.handshake();
        s.seg(true, TcpFlags::ACK | TcpFlags::PSH, &hello[..20]);
        assert_eq!(connections(&mut s.table), []);
        s.finish();
        assert_eq!(connections(&mut s.table), [(None, Protocol::Tls)]);
        assert_eq!(s.table.stats().connections.get(&Protocol::Tls), Some(&1));
    }

    #[test]
    fn reset_before_response_ends_the_exchange() {
        let mut s = Script::new();
        s.handshake();
        s.seg(true, TcpFlags::ACK | TcpFlags::PSH, REQ);
        s.seg(false, TcpFlags::RST | TcpFlags::ACK, b"");
        assert_eq!(s.out.len(), 1);
        assert_eq!(
            s.out[0].outcome,
            crate::http::exchange::Outcome::ConnectionEnded
        );
        assert_eq!(s.table.active_flows(), 0);
    }

    #[test]
    fn stray_acks_create_no_flow() {
        let mut s = Script::new();
        s.seg(true, TcpFlags::ACK, b"");
        s.seg(false, TcpFlags::FIN | TcpFlags::ACK, b"");
        assert_eq!(s.table.active_flows(), 0);
    }

    #[test]
    fn memory_budget_holds_under_a_syn_flood_and_partial_heads() {
        let cfg = FlowConfig {
            memory_budget_bytes: 256 * 1024,
            ..FlowConfig::default()
        };
        let mut table = FlowTable::new(cfg);
        let mut out = Vec::new();
        let mut max_seen = 0;
        for i in 0..20_000u32 {
            let src: SocketAddr =
                format!("10.1.{}.{}:{}", i / 250 % 250, i % 250, 1024 + i % 60_000)
                    .parse()
                    .unwrap();
            let dst: SocketAddr = "10.0.0.1:80".parse().unwrap();
            let ts = Timestamp::from_micros(1_000_000 + i64::from(i));
            // Half the flows are SYNs only, half send a head that never ends.
            let (flags, payload): (u8, &[u8]) = if i % 2 == 0 {
                (TcpFlags::SYN, b"")
            } else {
                (
                    TcpFlags::ACK | TcpFlags::PSH,
                    b"GET /a HTTP/1.1\r\nHost: x\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                )
            };
            let seg = TcpSegment {
                ts,
                src,
                dst,
                seq: 7,
                ack: 9,
                flags: TcpFlags(flags),
                window: 1,
                payload,
                missing: 0,
            };
            table.segment(&seg, ts, &mut |e| out.push(e));
            max_seen = max_seen.max(table.stats().memory_bytes);
        }
        assert!(max_seen <= 256 * 1024, "held {max_seen} bytes");
        assert!(
            table.stats().flows_evicted > 1000,
            "{:?}",
            table.stats().flows_evicted
        );
        assert!(table.active_flows() < 20_000);
        // The accounting matches what is really held.
        let held: usize = table.flows.values().map(|c| c.accounted).sum();
        assert_eq!(
            held + table.flows.bytes() + table.spare.heap_bytes(),
            table.stats().memory_bytes
        );
        assert!(table.flows.len() <= table.flows.capacity());
        table.finish_all(Timestamp::from_micros(2_000_000), &mut |e| out.push(e));
        assert_eq!(table.stats().memory_bytes, 0);
    }

    /// A segment as captured: window 1, nothing missing.
    fn tcp(
        ts: Timestamp,
        src: SocketAddr,
        dst: SocketAddr,
        seq: u32,
        ack: u32,
        flags: u8,
        payload: &[u8],
    ) -> TcpSegment<'_> {
        TcpSegment {
            ts,
            src,
            dst,
            seq,
            ack,
            flags: TcpFlags(flags),
            window: 1,
            payload,
            missing: 0,
        }
    }

    /// `n` connections from distinct clients to one server, each through
    /// its handshake and, with `talk` (request, response), one exchange
    /// whose response the client acknowledges; all left open. What came out.
    fn open_flows(table: &mut FlowTable, n: u32, talk: Option<(&[u8], &[u8])>) -> Vec<Exchange> {
        let server: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let mut out = Vec::new();
        for i in 0..n {
            let client: SocketAddr = format!("10.{}.{}.{}:40000", i >> 16, (i >> 8) & 255, i & 255)
                .parse()
                .unwrap();
            let ts = Timestamp::from_micros(1_000_000 + i64::from(i));
            let seg =
                |src, dst, seq, ack, flags, payload| tcp(ts, src, dst, seq, ack, flags, payload);
            let ack = TcpFlags::ACK;
            let mut segs = vec![
                seg(client, server, 100, 0, TcpFlags::SYN, &b""[..]),
                seg(server, client, 500, 101, TcpFlags::SYN | ack, b""),
                seg(client, server, 101, 501, ack, b""),
            ];
            if let Some((req, resp)) = talk {
                let (req_end, resp_end) = (101 + req.len() as u32, 501 + resp.len() as u32);
                let psh = ack | TcpFlags::PSH;
                segs.extend([
                    seg(client, server, 101, 501, psh, req),
                    seg(server, client, 501, req_end, psh, resp),
                    seg(client, server, req_end, resp_end, ack, b""),
                ]);
            }
            for s in &segs {
                table.segment(s, ts, &mut |e| out.push(e));
            }
        }
        out
    }

    #[test]
    fn idle_established_flow_is_accounted_under_1_kib() {
        // Issue #8: at most 1 KiB per idle tracked connection, the table's
        // share included (measured at its emptiest, just after growing).
        let mut table = FlowTable::new(FlowConfig::default());
        let n = 20_000u32;
        open_flows(&mut table, n, None);
        assert_eq!(table.active_flows(), n as usize);
        let per_flow = table.stats().memory_bytes / n as usize;
        let worst = CONNECTION_BYTES + ConnTable::<Connection>::worst_bytes_per_entry();
        assert!(per_flow <= 1024, "{per_flow} bytes per idle connection");
        assert!(
            worst <= 1024,
            "{worst} bytes per idle connection in a half-empty table"
        );
    }

    #[test]
    fn keep_alive_flow_after_one_exchange_is_accounted_under_1_kib() {
        // Issue #8: a connection left open after a complete exchange holds
        // no room for requests or exchanges, and is counted in full.
        const REQ: &[u8] =
            b"GET /api/v1/items/42 HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: t\r\n\r\n";
        const RESP: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n{\"id\": 42}";
        let mut table = FlowTable::new(FlowConfig::default());
        let n = 20_000u32;
        let out = open_flows(&mut table, n, Some((REQ, RESP)));
        assert_eq!(table.active_flows(), n as usize);
        assert_eq!(out.len(), n as usize);
        assert!(out.iter().all(|e| e.outcome == Outcome::Complete));
        let one = table.flows.values().map(|c| c.accounted).max().unwrap();
        assert_eq!(one, table.flows.values().next().unwrap().mem_bytes());
        // Nothing but the connection and its parsers' and session's own
        // state: no queue, no output room, no stats, no Host kept.
        let bare = CONNECTION_BYTES + std::mem::size_of::<HttpConn>() + ALLOC_OVERHEAD;
        assert_eq!(one, bare, "an idle keep-alive connection holds buffers");
        let per_flow = table.stats().memory_bytes / n as usize;
        let worst = one + ConnTable::<Connection>::worst_bytes_per_entry();
        eprintln!("keep-alive after one exchange: {one} bytes each, {per_flow} with the table");
        assert!(
            per_flow <= 1024,
            "{per_flow} bytes per idle keep-alive connection"
        );
        assert!(
            worst <= 1024,
            "{worst} bytes per idle keep-alive connection in a half-empty table"
        );
    }

    /// (target, status, request body, response body, outcome, capture loss)
    type ExchangeSummary = (Option<String>, Option<u16>, u64, u64, Outcome, bool);

    /// One recorded exchange (a POST with a chunked response) cut into
    /// segments at `cuts`, each direction's segments reordered by swapping
    /// neighbours where `swaps` says, some sent twice (`dups`), fed through a
    /// flow table: what comes out.
    fn replay_exchange(cuts: &[usize], swaps: &[bool], dups: &[bool]) -> Vec<ExchangeSummary> {
        const REQ: &[u8] = b"POST /api/v1/orders?page=2 HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: 11\r\n\r\nhello world";
        const RESP: &[u8] = b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n3;x=y\r\nfgh\r\n0\r\n\r\n";
        let c: SocketAddr = C.parse().unwrap();
        let srv: SocketAddr = S.parse().unwrap();
        // (from_client, seq, payload)
        let split = |data: &'static [u8], base: u32, from_client: bool| {
            let mut points: Vec<usize> = cuts
                .iter()
                .map(|x| x % data.len())
                .filter(|&x| x > 0)
                .collect();
            points.sort_unstable();
            points.dedup();
            let mut segs = Vec::new();
            let mut from = 0;
            for p in points.into_iter().chain([data.len()]) {
                segs.push((from_client, base + from as u32, &data[from..p]));
                from = p;
            }
            segs
        };
        let mut reqs = split(REQ, 1001, true);
        let mut resps = split(RESP, 50_001, false);
        for list in [&mut reqs, &mut resps] {
            for i in 0..list.len().saturating_sub(1) {
                if swaps.get(i).copied().unwrap_or(false) {
                    list.swap(i, i + 1);
                }
            }
            let mut with_dups = Vec::new();
            for (i, s) in list.iter().enumerate() {
                with_dups.push(*s);
                if dups.get(i).copied().unwrap_or(false) {
                    with_dups.push(*s);
                }
            }
            *list = with_dups;
        }
        let mut table = FlowTable::new(FlowConfig::default());
        let mut out = Vec::new();
        let mut t = 1_000_000i64;
        let mut send = |table: &mut FlowTable,
                        from_client: bool,
                        seq: u32,
                        ack: u32,
                        flags: u8,
                        payload: &[u8]| {
            t += 10;
            let (src, dst) = if from_client { (c, srv) } else { (srv, c) };
            let seg = tcp(
                Timestamp::from_micros(t),
                src,
                dst,
                seq,
                ack,
                flags,
                payload,
            );
            table.segment(&seg, seg.ts, &mut |e| out.push(e));
        };
        send(&mut table, true, 1000, 0, TcpFlags::SYN, b"");
        send(
            &mut table,
            false,
            50_000,
            1001,
            TcpFlags::SYN | TcpFlags::ACK,
            b"",
        );
        for (_, seq, p) in &reqs {
            send(
                &mut table,
                true,
                *seq,
                50_001,
                TcpFlags::ACK | TcpFlags::PSH,
                p,
            );
        }
        let req_end = 1001 + REQ.len() as u32;
        send(&mut table, false, 50_001, req_end, TcpFlags::ACK, b"");
        for (_, seq, p) in &resps {
            send(
                &mut table,
                false,
                *seq,
                req_end,
                TcpFlags::ACK | TcpFlags::PSH,
                p,
            );
        }
        let resp_end = 50_001 + RESP.len() as u32;
        send(
            &mut table,
            true,
            req_end,
            resp_end,
            TcpFlags::ACK | TcpFlags::FIN,
            b"",
        );
        send(
            &mut table,
            false,
            resp_end,
            req_end + 1,
            TcpFlags::ACK | TcpFlags::FIN,
            b"",
        );
        table.finish_all(Timestamp::from_micros(t + 1), &mut |e| out.push(e));
        out.into_iter()
            .map(|e| {
                let target = e
                    .request
                    .as_ref()
                    .map(|r| String::from_utf8_lossy(&r.target).into_owned());
                (
                    target,
                    e.status(),
                    e.request_body_bytes,
                    e.response_body_bytes,
                    e.outcome,
                    e.capture_loss,
                )
            })
            .collect()
    }

    proptest::proptest! {
        #[test]
        fn any_segmentation_reordering_and_duplication_yields_the_same_exchange(
            cuts in proptest::collection::vec(0usize..200, 0..12),
            swaps in proptest::collection::vec(proptest::bool::ANY, 0..12),
            dups in proptest::collection::vec(proptest::bool::ANY, 0..12),
        ) {
            let want = vec![(Some("/api/v1/orders?page=2".to_string()), Some(201), 11, 8, Outcome::Complete, false)];
            proptest::prop_assert_eq!(replay_exchange(&[], &[], &[]), want.clone());
            proptest::prop_assert_eq!(replay_exchange(&cuts, &swaps, &dups), want);
        }
    }

    #[test]
    fn symmetric_hash_is_direction_free() {
        let a: SocketAddr = C.parse().unwrap();
        let b: SocketAddr = S.parse().unwrap();
        assert_eq!(
            FlowKey::new(a, b).0.symmetric_hash(),
            FlowKey::new(b, a).0.symmetric_hash()
        );
        // The reader's shortcut gives the key's hash, either way round.
        let v6: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        for (x, y) in [(a, b), (b, a), (a, v6), (v6, b)] {
            assert_eq!(
                FlowKey::symmetric_hash_of(&x, &y),
                FlowKey::new(x, y).0.symmetric_hash()
            );
        }
        assert_ne!(FlowKey::new(a, b).1, FlowKey::new(b, a).1);
    }
}
