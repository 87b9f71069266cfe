//! The packet path, start to end: decode → flows → HTTP → classify → sinks.
//!
//! Contract: [`Pipeline`] is plain synchronous code driven by its caller with
//! packets and (live mode) clock ticks; it reads no clock and does no I/O
//! itself, so a replay is deterministic and live and offline share it.
//! Every finished exchange is classified, then handed to the
//! [`ExchangeSink`].
//!
//! Packets that lie in a memory-mapped capture file ([`Pipeline::mapped`])
//! may wait a few packets between decoding and the flow table while many
//! connections are open: each is looked up only after hints had time to
//! bring its connection into the cache (the lookups' cache misses were most
//! of what made 200,000 open connections slower than 1,000). The order in
//! which packets reach the flow table, and so everything that comes out,
//! is the same; what waits is done at [`Pipeline::tick`] and
//! [`Pipeline::finish`].

use crate::capture::{Backing, RawPacket};
use crate::classify::Classifier;
use crate::clock::{Clock, Timestamp};
use crate::decode::{DecodeStats, Decoded, Decoder, DecoderConfig, TcpFlags, TcpSegment};
use crate::flow::{
    FlowConfig, FlowEvent, FlowStats, FlowTable, Protocol, PREFETCH_AHEAD, PREFETCH_FROM_FLOWS,
};
use crate::http::exchange::Exchange;
use std::collections::VecDeque;
use std::net::SocketAddr;

/// Where classified exchanges go (logs, report, metrics).
pub trait ExchangeSink {
    fn exchange(&mut self, ex: &Exchange);
    /// A finding for the findings log, the report and the metrics; comes
    /// right after the exchange that raised it (or with its TLS handshake).
    fn finding(&mut self, _f: &crate::classify::findings::Finding) {}
    /// A TLS connection's handshake (once per connection).
    fn tls_handshake(&mut self, _hs: &crate::classify::tls::TlsHandshake) {}
    /// A connection, once, when the name of its server is known (`host`:
    /// the Host of its first request, or its TLS SNI); see
    /// [`FlowEvent::Connection`].
    fn connection(
        &mut self,
        _server: SocketAddr,
        _host: Option<&str>,
        _protocol: Protocol,
        _ts: Timestamp,
    ) {
    }
}

impl<F: FnMut(&Exchange)> ExchangeSink for F {
    fn exchange(&mut self, ex: &Exchange) {
        self(ex)
    }
}

/// Classify each finished exchange, then hand it to the sink.
pub(crate) fn deliver<'a, S: ExchangeSink + ?Sized>(
    classifier: &'a mut Classifier,
    sink: &'a mut S,
) -> impl FnMut(Exchange) + 'a {
    move |mut ex| deliver_one(classifier, sink, &mut ex)
}

/// Classify one finished exchange, then hand it to the sink.
pub fn deliver_one<S: ExchangeSink + ?Sized>(
    classifier: &mut Classifier,
    sink: &mut S,
    ex: &mut Exchange,
) {
    let found = classifier.classify(ex);
    sink.exchange(ex);
    for f in &found {
        sink.finding(f);
    }
}

/// Hand one flow-layer event to the sink.
pub fn pass_event<S: ExchangeSink + ?Sized>(ev: FlowEvent, sink: &mut S) {
    match ev {
        FlowEvent::Connection {
            server,
            host,
            protocol,
            ts,
        } => sink.connection(server, host.as_deref(), protocol, ts),
        FlowEvent::Tls(hs) => sink.tls_handshake(&hs),
    }
}

/// Where a segment's payload is.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Payload {
    /// In the mapped capture file, at this offset.
    Mapped { start: usize, len: usize },
    /// In a buffer of the holder's (a worker's batch).
    Copied { start: usize, len: usize },
}

/// A [`TcpSegment`] without the borrow.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Seg {
    /// The packet's index in the input (1-based).
    pub(crate) idx: u64,
    /// The reader's monotonic clock at this packet (the time one pipeline
    /// would have used; `ts` alone may go backwards across flows).
    pub(crate) now: Timestamp,
    pub(crate) ts: Timestamp,
    pub(crate) src: SocketAddr,
    pub(crate) dst: SocketAddr,
    pub(crate) seq: u32,
    pub(crate) ack: u32,
    pub(crate) flags: TcpFlags,
    pub(crate) window: u16,
    pub(crate) missing: u32,
    pub(crate) payload: Payload,
}

impl Seg {
    pub(crate) fn of(idx: u64, now: Timestamp, seg: &TcpSegment<'_>, payload: Payload) -> Seg {
        Seg {
            idx,
            now,
            ts: seg.ts,
            src: seg.src,
            dst: seg.dst,
            seq: seg.seq,
            ack: seg.ack,
            flags: seg.flags,
            window: seg.window,
            missing: seg.missing,
            payload,
        }
    }

    /// The segment again, its payload in `map` or `copied` (empty if
    /// neither holds it).
    pub(crate) fn segment<'a>(&self, map: &'a [u8], copied: &'a [u8]) -> TcpSegment<'a> {
        let payload = match self.payload {
            Payload::Mapped { start, len } => map.get(start..start + len),
            Payload::Copied { start, len } => copied.get(start..start + len),
        };
        TcpSegment {
            ts: self.ts,
            src: self.src,
            dst: self.dst,
            seq: self.seq,
            ack: self.ack,
            flags: self.flags,
            window: self.window,
            payload: payload.unwrap_or_default(),
            missing: self.missing,
        }
    }
}

/// `payload`'s offset in `backing`, when it lies inside it.
pub(crate) fn locate(payload: &[u8], backing: Option<&Backing>) -> Option<usize> {
    let map: &[u8] = (**backing?).as_ref();
    let (base, p) = (map.as_ptr() as usize, payload.as_ptr() as usize);
    let end = p.checked_add(payload.len())?;
    (p >= base && end <= base + map.len()).then(|| p - base)
}

/// A decoded packet waiting for its turn (see the module doc).
enum Waiting {
    Segment(Seg),
    /// Not a TCP segment: only the time moves on.
    Tick(Timestamp),
}

pub struct Pipeline {
    clock: Clock,
    decoder: Decoder,
    flows: FlowTable,
    classifier: Classifier,
    packets: u64,
    bytes: u64,
    /// The mapped capture file the packets lie in, if they do.
    backing: Option<Backing>,
    /// Packets decoded and not yet given to the flow table, oldest first.
    waiting: VecDeque<Waiting>,
    /// Packets wait once this many connections are open.
    wait_from: usize,
}

/// A snapshot of the pipeline's counters.
#[derive(Clone, Debug, Default)]
pub struct PipelineStats {
    pub packets: u64,
    pub bytes: u64,
    pub decode: DecodeStats,
    pub flows: FlowStats,
    pub active_flows: usize,
    pub last_ts: Option<Timestamp>,
}

impl Pipeline {
    pub fn new(decoder: DecoderConfig, flows: FlowConfig, classifier: Classifier) -> Self {
        Pipeline {
            clock: Clock::default(),
            decoder: Decoder::new(decoder),
            flows: FlowTable::new(flows),
            classifier,
            packets: 0,
            bytes: 0,
            backing: None,
            waiting: VecDeque::new(),
            wait_from: PREFETCH_FROM_FLOWS,
        }
    }

    /// The packets given to [`Pipeline::packet`] lie in `backing` (a
    /// memory-mapped capture file): they may wait for hints (see the
    /// module doc).
    pub fn mapped(mut self, backing: Backing) -> Self {
        self.backing = Some(backing);
        self
    }

    pub fn packet(&mut self, pkt: &RawPacket<'_>, sink: &mut impl ExchangeSink) {
        self.packets += 1;
        self.bytes += pkt.data.len() as u64;
        let now = self.clock.observe(pkt.ts);
        let wait = self.backing.is_some() && self.flows.active_flows() >= self.wait_from;
        let mut flow = Flow::new(&mut self.flows, &mut self.classifier, &self.backing);
        if !wait && self.waiting.is_empty() {
            match self.decoder.decode(pkt) {
                Decoded::Tcp(seg) => flow.segment(&seg, now, sink),
                Decoded::Skipped(_) => flow.step(Waiting::Tick(now), sink),
            }
            return;
        }
        let waiting = match self.decoder.decode(pkt) {
            Decoded::Tcp(seg) => match locate(seg.payload, self.backing.as_ref()) {
                Some(start) => {
                    flow.flows.prefetch_slot(seg.src, seg.dst);
                    let payload = Payload::Mapped {
                        start,
                        len: seg.payload.len(),
                    };
                    Waiting::Segment(Seg::of(self.packets, now, &seg, payload))
                }
                // Not in the file (a reassembled fragment): after those
                // waiting, at once.
                None => {
                    while let Some(w) = self.waiting.pop_front() {
                        flow.step(w, sink);
                    }
                    flow.segment(&seg, now, sink);
                    return;
                }
            },
            Decoded::Skipped(_) => Waiting::Tick(now),
        };
        self.waiting.push_back(waiting);
        if let Some(Waiting::Segment(s)) = self.waiting.iter().rev().nth(PREFETCH_AHEAD) {
            self.flows.prefetch_entry(s.src, s.dst);
        }
        // Wait no longer once few connections are open.
        let keep = if wait { 2 * PREFETCH_AHEAD } else { 0 };
        while self.waiting.len() > keep {
            self.step(sink);
        }
    }

    /// Give the oldest waiting packet to the flow table.
    fn step(&mut self, sink: &mut impl ExchangeSink) {
        if let Some(w) = self.waiting.pop_front() {
            self.flow().step(w, sink);
        }
    }

    fn flow(&mut self) -> Flow<'_> {
        Flow::new(&mut self.flows, &mut self.classifier, &self.backing)
    }

    /// Every waiting packet to the flow table.
    fn catch_up(&mut self, sink: &mut impl ExchangeSink) {
        while !self.waiting.is_empty() {
            self.step(sink);
        }
    }

    /// Live mode: the wall clock, when no packet came for a while.
    pub fn tick(&mut self, wall: Timestamp, sink: &mut impl ExchangeSink) {
        self.catch_up(sink);
        let now = self.clock.observe(wall);
        self.flow().step(Waiting::Tick(now), sink);
    }

    /// End of input: every open exchange is logged.
    pub fn finish(&mut self, sink: &mut impl ExchangeSink) {
        self.catch_up(sink);
        let now = self.clock.now().unwrap_or_default();
        let mut flow = self.flow();
        flow.flows
            .finish_all(now, &mut deliver(&mut *flow.classifier, sink));
        flow.pass_events(sink);
    }

    pub fn stats(&self) -> PipelineStats {
        PipelineStats {
            packets: self.packets,
            bytes: self.bytes,
            decode: self.decoder.stats().clone(),
            flows: self.flows.stats().clone(),
            active_flows: self.flows.active_flows(),
            last_ts: self.clock.now(),
        }
    }

    pub fn classifier(&self) -> &Classifier {
        &self.classifier
    }

    /// Reconfigure the classifier (SIGHUP reload): exchanges completed from
    /// now on are classified by `classifier`'s configuration, with what the
    /// run learnt kept (see [`Classifier::adopt`]); flows and their
    /// buffered bytes are untouched.
    pub fn set_classifier(&mut self, classifier: Classifier) {
        self.classifier.adopt(classifier);
    }
}

/// The flow table and what follows it, borrowed apart from the decoder
/// (whose buffer a reassembled fragment's payload may lie in).
struct Flow<'a> {
    flows: &'a mut FlowTable,
    classifier: &'a mut Classifier,
    map: &'a [u8],
}

impl<'a> Flow<'a> {
    fn new(
        flows: &'a mut FlowTable,
        classifier: &'a mut Classifier,
        backing: &'a Option<Backing>,
    ) -> Self {
        let map = backing.as_ref().map_or(&[][..], |b| (**b).as_ref());
        Flow {
            flows,
            classifier,
            map,
        }
    }

    /// A waiting packet; a tick also expires what is due (expired
    /// connections may have finished a TLS handshake or been decided at
    /// their end: their events follow).
    fn step(&mut self, w: Waiting, sink: &mut impl ExchangeSink) {
        match w {
            Waiting::Segment(s) => self.segment(&s.segment(self.map, &[]), s.now, sink),
            Waiting::Tick(now) => {
                self.flows
                    .tick(now, &mut deliver(&mut *self.classifier, sink));
                self.pass_events(sink);
            }
        }
    }

    fn segment(&mut self, seg: &TcpSegment<'_>, now: Timestamp, sink: &mut impl ExchangeSink) {
        self.flows
            .segment(seg, now, &mut deliver(&mut *self.classifier, sink));
        self.pass_events(sink);
    }

    fn pass_events(&mut self, sink: &mut impl ExchangeSink) {
        self.flows.take_events(|ev| pass_event(ev, sink));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::capture::LinkType;
    use crate::classify::ClassifyConfig;
    use etherparse::PacketBuilder;

    /// An Ethernet frame of a segment between 10.0.0.1 port `sport` and
    /// 10.0.0.2 port `dport` (`to_server`: from .1 to .2).
    pub(crate) fn frame(
        sport: u16,
        dport: u16,
        to_server: bool,
        seq: u32,
        ack: u32,
        p: &[u8],
    ) -> Vec<u8> {
        let (a, b) = ([10, 0, 0, 1], [10, 0, 0, 2]);
        let (src, dst) = if to_server { (a, b) } else { (b, a) };
        let t = PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4(src, dst, 64)
            .tcp(sport, dport, seq, 512)
            .ack(ack)
            .psh();
        let mut v = Vec::with_capacity(t.size(p.len()));
        t.write(&mut v, p).unwrap();
        v
    }

    /// What a run left: each exchange as Debug prints it, in order, and the
    /// counters.
    fn run(pipeline: &mut Pipeline, packets: &[RawPacket<'_>]) -> (Vec<String>, String) {
        let mut seen = Vec::new();
        let mut sink = |ex: &Exchange| seen.push(format!("{ex:?}"));
        for p in packets {
            pipeline.packet(p, &mut sink);
        }
        pipeline.finish(&mut sink);
        let stats = pipeline.stats();
        (seen, format!("{:?} {:?}", stats.flows, stats.decode))
    }

    #[test]
    fn packets_that_wait_for_hints_come_out_as_without() {
        // 40 connections, interleaved: a request on each, then the
        // responses, three rounds; a UDP datagram now and then (it only
        // moves the clock); and one more connection whose response comes
        // from outside the mapped file (as a reassembled fragment would)
        // right after its request: it must go through after the request,
        // which is still waiting then.
        let req = b"GET /users/1 HTTP/1.1\r\nHost: api\r\n\r\n";
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let (qlen, plen) = (req.len() as u32, resp.len() as u32);
        let mut frames = Vec::new();
        for r in 0..3 {
            for c in 0..40 {
                frames.push(frame(10_000 + c, 80, true, 1 + r * qlen, 1 + r * plen, req));
            }
            let udp = PacketBuilder::ethernet2([1; 6], [2; 6])
                .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                .udp(5353, 5353);
            let mut v = Vec::new();
            udp.write(&mut v, b"x").unwrap();
            frames.push(v);
            for c in 0..40 {
                let (seq, ack) = (1 + r * plen, 1 + (r + 1) * qlen);
                frames.push(frame(80, 10_000 + c, false, seq, ack, resp));
                if r == 2 {
                    // The client resets each connection after its last
                    // answer: fewer and fewer stay open.
                    let rst = PacketBuilder::ethernet2([1; 6], [2; 6])
                        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                        .tcp(10_000 + c, 80, 1 + 3 * qlen, 512)
                        .rst();
                    let mut v = Vec::new();
                    rst.write(&mut v, &[]).unwrap();
                    frames.push(v);
                }
            }
        }
        frames.insert(100, frame(20_000, 80, true, 1, 1, req));
        let outside = frame(80, 20_000, false, 1, 1 + qlen, resp);
        let file: Vec<u8> = frames.concat();
        let backing: Backing = std::sync::Arc::new(file);
        let mut packets = Vec::new();
        let mut at = 0;
        for (i, f) in frames.iter().enumerate() {
            let data = &(*backing).as_ref()[at..at + f.len()];
            at += f.len();
            packets.push(RawPacket {
                ts: Timestamp::from_secs_micros(1_000 + i as i64 / 50, i as i64),
                link: LinkType::ETHERNET,
                data,
                wire_len: f.len() as u32,
            });
            if i == 100 {
                packets.push(RawPacket {
                    data: &outside,
                    ..packets[i]
                });
            }
        }
        let new = || {
            let classifier = Classifier::new(ClassifyConfig::default()).unwrap();
            Pipeline::new(DecoderConfig::default(), FlowConfig::default(), classifier)
        };
        let (want, want_stats) = run(&mut new(), &packets);
        let mut waiting = new().mapped(backing.clone());
        waiting.wait_from = 0;
        let (got, got_stats) = run(&mut waiting, &packets);
        assert_eq!(want.len(), 121);
        let answered = |ex: &&String| ex.contains("10.0.0.1:20000") && ex.contains("status: 200");
        assert_eq!(want.iter().filter(answered).count(), 1);
        assert_eq!(got, want);
        assert_eq!(got_stats, want_stats);
        // From 30 connections on packets wait: the same again; when the
        // resets take them below 30 again, those waiting go first.
        let mut some = new().mapped(backing.clone());
        some.wait_from = 30;
        assert_eq!(run(&mut some, &packets), (want, want_stats));
    }
}
