//! Throughput of each pipeline stage on the project's own sample capture
//! (`samples/http-mix-sample.pcap`: 6,733 packets, 525 requests, a JSON API
//! mix with keep-alive, chunked bodies, pipelining and 100-continue).
//!
//! `cargo bench --bench stages` (one stage: `cargo bench --bench stages --
//! decode`). Every group reports bytes/s of its own input:
//!
//! - `decode`: every captured frame through one `Decoder` (frame bytes);
//! - `reassembly`: each connection's segments through two `Reassembler`s,
//!   with ACKs and ticks as the flow table drives them (payload bytes);
//! - `http_parse/request`, `http_parse/response`: each direction's in-order
//!   bytes, in their segment-sized chunks, through a `MessageParser` with a
//!   sink that only counts (stream bytes);
//! - `pipeline`: the whole `Pipeline` (decode → flows → HTTP → classify)
//!   with a sink that only counts exchanges (frame bytes);
//! - `exchange_log`: the sample's classified exchanges written by one
//!   `ExchangeLog` through the 64 KiB `BufWriter` `open_output` gives it, into
//!   `io::sink()` (exchanges: criterion's time divided by the element count
//!   is the cost of one line);
//! - `per_exchange/classify`: the sample's exchanges, with what
//!   classification fills in cleared, through one long-lived `Classifier`
//!   (exchanges); `per_exchange/classify_and_sinks`: the same, then each
//!   exchange and its findings handed to `Metrics`, an `ExchangeLog` and a
//!   `FindingsLog` (into `io::sink()`) as a read-mode run hands them: what
//!   one exchange costs after HTTP parsing.
//!
//! - `flow_table/sweep_idle_200k`: one sweep of a `FlowTable` holding
//!   200,000 idle keep-alive HTTP connections, none due (connections): what
//!   a live daemon pays each second for connections that send nothing.
//!
//! Inputs are read and pre-cut once, outside the timed loops, so each number
//! is the stage alone.

use apitap::capture::file::FileSource;
use apitap::capture::{LinkType, PacketSource, RawPacket, SourceEvent};
use apitap::classify::{Classifier, ClassifyConfig};
use apitap::clock::Timestamp;
use apitap::decode::{Decoded, Decoder, DecoderConfig};
use apitap::flow::reassembly::{Chunk, Reassembler, StreamEvent, StreamLimits};
use apitap::flow::{FlowConfig, FlowKey, FlowTable};
use apitap::http::exchange::Exchange;
use apitap::http::parser::{sniff_request_start, MessageParser, ParserLimits, Sniff};
use apitap::http::{
    Direction, MessageEnd, MessageSink, Method, ParseError, RequestHead, RequestKind, ResponseHead,
    StreamPos,
};
use apitap::metrics::{Metrics, MetricsConfig};
use apitap::output::exchange_log::ExchangeLog;
use apitap::output::findings_log::FindingsLog;
use apitap::pipeline::{ExchangeSink, Pipeline};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::collections::{HashMap, VecDeque};
use std::hint::black_box;
use std::io::{self, BufWriter};
use std::net::SocketAddr;
use std::time::Duration;

const SAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/samples/http-mix-sample.pcap");

struct Frame {
    ts: Timestamp,
    link: LinkType,
    data: Vec<u8>,
    wire_len: u32,
}

impl Frame {
    fn raw(&self) -> RawPacket<'_> {
        RawPacket {
            ts: self.ts,
            link: self.link,
            data: &self.data,
            wire_len: self.wire_len,
        }
    }
}

struct Segment {
    ts: Timestamp,
    src: SocketAddr,
    seq: u32,
    ack: u32,
    flags: u8,
    payload: Vec<u8>,
    missing: u32,
}

/// One direction's in-order bytes, as the reassembler handed them out.
#[derive(Default)]
struct Stream {
    chunks: Vec<(u32, u32, Timestamp, Vec<u8>)>,
    /// Responses only: what each request was, in order (for framing).
    kinds: Vec<RequestKind>,
}

struct Inputs {
    frames: Vec<Frame>,
    frame_bytes: u64,
    connections: Vec<Vec<Segment>>,
    payload_bytes: u64,
    requests: Vec<Stream>,
    responses: Vec<Stream>,
}

fn load() -> Inputs {
    let mut src = FileSource::open(SAMPLE).expect("samples/http-mix-sample.pcap");
    let mut frames = Vec::new();
    while let Some(ev) = src.next_event().expect("read sample") {
        if let SourceEvent::Packet(p) = ev {
            frames.push(Frame {
                ts: p.ts,
                link: p.link,
                data: p.data.to_vec(),
                wire_len: p.wire_len,
            });
        }
    }
    let frame_bytes = frames.iter().map(|f| f.data.len() as u64).sum();

    let mut decoder = Decoder::default();
    let mut by_key: HashMap<FlowKey, usize> = HashMap::new();
    let mut connections: Vec<Vec<Segment>> = Vec::new();
    for f in &frames {
        if let Decoded::Tcp(s) = decoder.decode(&f.raw()) {
            let (key, _) = FlowKey::new(s.src, s.dst);
            let i = *by_key.entry(key).or_insert_with(|| {
                connections.push(Vec::new());
                connections.len() - 1
            });
            connections[i].push(Segment {
                ts: s.ts,
                src: s.src,
                seq: s.seq,
                ack: s.ack,
                flags: s.flags.0,
                payload: s.payload.to_vec(),
                missing: s.missing,
            });
        }
    }
    let payload_bytes = connections
        .iter()
        .flatten()
        .map(|s| s.payload.len() as u64)
        .sum();

    let (mut requests, mut responses) = (Vec::new(), Vec::new());
    for segs in &connections {
        let mut streams = replay(segs, |_, _| {});
        // The client sends the first SYN (or, mid-stream, the first request).
        let [a, b] = [
            std::mem::take(&mut streams[0]),
            std::mem::take(&mut streams[1]),
        ];
        let starts_request = |s: &Stream| {
            s.chunks
                .first()
                .is_some_and(|c| sniff_request_start(&c.3) == Sniff::Yes)
        };
        let (req, mut resp) = if starts_request(&b) && !starts_request(&a) {
            (b, a)
        } else {
            (a, b)
        };
        resp.kinds = request_kinds(&req);
        requests.push(req);
        responses.push(resp);
    }
    Inputs {
        frames,
        frame_bytes,
        connections,
        payload_bytes,
        requests,
        responses,
    }
}

/// Drives two reassemblers the way the flow table does (ACK to the other
/// direction, segment to its own, tick both) and collects each direction's
/// in-order bytes. `seen` gets every event's length (for benches).
fn replay(segs: &[Segment], mut seen: impl FnMut(usize, usize)) -> [Stream; 2] {
    let limits = StreamLimits::default();
    let mut ra = [Reassembler::new(), Reassembler::new()];
    let mut out: [Stream; 2] = Default::default();
    let a = segs.first().map(|s| s.src);
    let mut last = Timestamp::ZERO;
    for s in segs {
        let side = usize::from(Some(s.src) != a);
        let [r0, r1] = &mut ra;
        let (this, other) = if side == 0 { (r0, r1) } else { (r1, r0) };
        let mut sink = |side: usize, ev: StreamEvent<'_>| match ev {
            StreamEvent::Data(c) => {
                seen(side, c.data.len());
                out[side].chunks.push((c.seq, c.ack, c.ts, c.data.to_vec()));
            }
            StreamEvent::Gap { len, .. } => seen(side, len as usize),
            _ => {}
        };
        if s.flags & 0x10 != 0 {
            other.peer_ack(s.ack, s.ts, &limits, &mut |ev| sink(1 - side, ev));
        }
        this.segment(
            s.seq,
            s.ack,
            s.ts,
            s.flags & 0x02 != 0,
            s.flags & 0x01 != 0,
            s.flags & 0x04 != 0,
            &s.payload,
            s.missing,
            &limits,
            &mut |ev| sink(side, ev),
        );
        this.tick(s.ts, &limits, &mut |ev| sink(side, ev));
        other.tick(s.ts, &limits, &mut |ev| sink(1 - side, ev));
        last = s.ts;
    }
    for (side, r) in ra.iter_mut().enumerate() {
        r.flush(last, &mut |ev| {
            if let StreamEvent::Data(c) = ev {
                out[side].chunks.push((c.seq, c.ack, c.ts, c.data.to_vec()));
            }
        });
    }
    out
}

/// What each request of a stream was, for framing its response.
fn request_kinds(req: &Stream) -> Vec<RequestKind> {
    struct Kinds(Vec<RequestKind>);
    impl MessageSink for Kinds {
        fn request_head(&mut self, head: RequestHead, _: StreamPos) {
            self.0.push(match head.method {
                Method::Head => RequestKind::Head,
                Method::Connect => RequestKind::Connect,
                _ => RequestKind::Other,
            });
        }
        fn response_head(&mut self, _: ResponseHead, _: StreamPos) -> RequestKind {
            RequestKind::Unknown
        }
        fn message_end(&mut self, _: Direction, _: MessageEnd) {}
        fn malformed(&mut self, _: Direction, _: ParseError, _: StreamPos) {}
        fn resync(&mut self, _: Direction, _: StreamPos, _: bool) {}
        fn lost_sync(&mut self, _: Direction, _: StreamPos) {}
    }
    let mut k = Kinds(Vec::new());
    parse(Direction::ToServer, req, &mut k);
    k.0
}

/// Counts what the parser reports; answers responses from the request kinds.
struct Counter {
    kinds: VecDeque<RequestKind>,
    messages: u64,
}

impl MessageSink for Counter {
    fn request_head(&mut self, head: RequestHead, _: StreamPos) {
        black_box(&head);
        self.messages += 1;
    }
    fn response_head(&mut self, head: ResponseHead, _: StreamPos) -> RequestKind {
        self.messages += 1;
        if (100..200).contains(&head.status) && head.status != 101 {
            return self.kinds.front().copied().unwrap_or(RequestKind::Unknown);
        }
        self.kinds.pop_front().unwrap_or(RequestKind::Unknown)
    }
    fn message_end(&mut self, _: Direction, end: MessageEnd) {
        black_box(&end);
    }
    fn malformed(&mut self, _: Direction, _: ParseError, _: StreamPos) {}
    fn resync(&mut self, _: Direction, _: StreamPos, _: bool) {}
    fn lost_sync(&mut self, _: Direction, _: StreamPos) {}
}

fn parse(dir: Direction, s: &Stream, sink: &mut impl MessageSink) {
    let mut p = MessageParser::new(dir, ParserLimits::default(), true);
    let mut last = Timestamp::ZERO;
    for (seq, ack, ts, data) in &s.chunks {
        let chunk = Chunk {
            seq: *seq,
            ack: *ack,
            ts: *ts,
            data,
        };
        p.feed(&chunk, sink);
        last = *ts;
    }
    p.end_of_stream(last, false, sink);
}

/// The sample's exchanges as the pipeline hands them to its sinks.
fn classified_exchanges(frames: &[Frame]) -> Vec<Exchange> {
    let mut p = Pipeline::new(
        DecoderConfig::default(),
        FlowConfig::default(),
        Classifier::new(ClassifyConfig::default()).expect("default config"),
    );
    let mut out = Vec::new();
    let mut sink = |ex: &Exchange| out.push(ex.clone());
    for f in frames {
        p.packet(&f.raw(), &mut sink);
    }
    p.finish(&mut sink);
    out
}

fn stream_bytes(streams: &[Stream]) -> u64 {
    streams
        .iter()
        .flat_map(|s| &s.chunks)
        .map(|c| c.3.len() as u64)
        .sum()
}

fn stages(c: &mut Criterion) {
    let inputs = load();

    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Bytes(inputs.frame_bytes));
    g.bench_function("all_frames", |b| {
        b.iter_batched_ref(
            Decoder::default,
            |d| {
                let mut tcp = 0u32;
                for f in &inputs.frames {
                    if let Decoded::Tcp(s) = d.decode(&f.raw()) {
                        tcp += 1;
                        black_box(s.payload);
                    }
                }
                tcp
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();

    let mut g = c.benchmark_group("reassembly");
    g.throughput(Throughput::Bytes(inputs.payload_bytes));
    g.bench_function("per_connection", |b| {
        b.iter(|| {
            let limits = StreamLimits::default();
            let mut delivered = 0usize;
            for segs in &inputs.connections {
                let mut ra = [Reassembler::new(), Reassembler::new()];
                let a = segs.first().map(|s| s.src);
                let mut count = |ev: StreamEvent<'_>| {
                    if let StreamEvent::Data(c) = ev {
                        delivered += black_box(c.data).len();
                    }
                };
                for s in segs {
                    let side = usize::from(Some(s.src) != a);
                    let [r0, r1] = &mut ra;
                    let (this, other) = if side == 0 { (r0, r1) } else { (r1, r0) };
                    if s.flags & 0x10 != 0 {
                        other.peer_ack(s.ack, s.ts, &limits, &mut count);
                    }
                    this.segment(
                        s.seq,
                        s.ack,
                        s.ts,
                        s.flags & 0x02 != 0,
                        s.flags & 0x01 != 0,
                        s.flags & 0x04 != 0,
                        &s.payload,
                        s.missing,
                        &limits,
                        &mut count,
                    );
                    this.tick(s.ts, &limits, &mut count);
                    other.tick(s.ts, &limits, &mut count);
                }
            }
            delivered
        })
    });
    g.finish();

    let mut g = c.benchmark_group("http_parse");
    for (name, dir, streams) in [
        ("request", Direction::ToServer, &inputs.requests),
        ("response", Direction::ToClient, &inputs.responses),
    ] {
        g.throughput(Throughput::Bytes(stream_bytes(streams)));
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut messages = 0;
                for s in streams {
                    let mut sink = Counter {
                        kinds: s.kinds.iter().copied().collect(),
                        messages: 0,
                    };
                    parse(dir, s, &mut sink);
                    messages += sink.messages;
                }
                messages
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Bytes(inputs.frame_bytes));
    g.bench_function("sample", |b| {
        b.iter_batched_ref(
            || {
                Pipeline::new(
                    DecoderConfig::default(),
                    FlowConfig::default(),
                    Classifier::new(ClassifyConfig::default()).expect("default config"),
                )
            },
            |p| {
                let mut exchanges = 0u64;
                let mut sink = |ex: &Exchange| {
                    black_box(ex);
                    exchanges += 1;
                };
                for f in &inputs.frames {
                    p.packet(&f.raw(), &mut sink);
                }
                p.finish(&mut sink);
                exchanges
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();

    let exchanges = classified_exchanges(&inputs.frames);
    let mut g = c.benchmark_group("exchange_log");
    g.throughput(Throughput::Elements(exchanges.len() as u64));
    g.bench_function("sample_to_sink", |b| {
        // One log for all iterations: the steady state of a long run.
        let mut log = ExchangeLog::new(
            Box::new(BufWriter::with_capacity(64 * 1024, io::sink())),
            ClassifyConfig::default().credential_params,
        );
        b.iter(|| {
            for ex in &exchanges {
                log.exchange(black_box(ex));
            }
        });
        log.finish().expect("io::sink never fails");
    });
    g.finish();

    // What classification fills in, cleared: the exchanges as HTTP parsing
    // hands them over.
    let unclassified: Vec<Exchange> = exchanges
        .iter()
        .map(|ex| {
            let mut ex = ex.clone();
            ex.route = None;
            ex.host = None;
            ex.failure = None;
            ex.findings.clear();
            ex
        })
        .collect();
    let mut g = c.benchmark_group("per_exchange");
    g.throughput(Throughput::Elements(unclassified.len() as u64));
    g.bench_function("classify", |b| {
        // One classifier for all iterations: what it has learnt (paths,
        // routes, tokens) is the steady state of a long run.
        let mut classifier = Classifier::new(ClassifyConfig::default()).expect("default config");
        b.iter_batched_ref(
            || unclassified.clone(),
            |batch| {
                let mut found = 0;
                for ex in batch.iter_mut() {
                    found += classifier.classify(ex).len();
                }
                found
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("classify_and_sinks", |b| {
        let cfg = ClassifyConfig::default();
        let mut classifier = Classifier::new(cfg.clone()).expect("default config");
        let mut metrics = Metrics::new(MetricsConfig::default(), "file");
        let mut log = ExchangeLog::new(
            Box::new(BufWriter::with_capacity(64 * 1024, io::sink())),
            cfg.credential_params.clone(),
        );
        let mut findings = FindingsLog::with_capacity(
            Box::new(BufWriter::with_capacity(64 * 1024, io::sink())),
            cfg.fold_interval_micros,
            cfg.fold_max_entries,
        );
        b.iter_batched_ref(
            || unclassified.clone(),
            |batch| {
                for ex in batch.iter_mut() {
                    let found = classifier.classify(ex);
                    log.exchange(ex);
                    metrics.exchange(ex);
                    for f in &found {
                        findings.write(f);
                    }
                }
                metrics.flush();
            },
            BatchSize::LargeInput,
        );
        log.finish().expect("io::sink never fails");
        findings.finish().expect("io::sink never fails");
    });
    g.finish();

    let mut g = c.benchmark_group("flow_table");
    const IDLE: u32 = 200_000;
    let (mut table, t0) = idle_connections(IDLE);
    g.throughput(Throughput::Elements(u64::from(IDLE)));
    g.bench_function("sweep_idle_200k", |b| {
        // A minute on: nothing is due (idle timeout 300 s), so every sweep
        // finds the same table.
        let now = t0.saturating_add_micros(60_000_000);
        b.iter(|| {
            table.sweep(now, &mut |ex| {
                black_box(ex);
            })
        })
    });
    assert_eq!(table.active_flows(), IDLE as usize, "nothing expired");
    g.finish();
}

/// A flow table with `n` keep-alive HTTP connections, each after one
/// answered exchange; the time of the last segment.
fn idle_connections(n: u32) -> (FlowTable, Timestamp) {
    use apitap::decode::{TcpFlags, TcpSegment};
    let mut table = FlowTable::new(FlowConfig::default());
    let t = Timestamp::from_micros(1_000_000_000);
    let server: SocketAddr = "10.0.0.1:80".parse().expect("address");
    let req = b"GET /api/v1/items HTTP/1.1\r\nHost: api.example.com\r\n\r\n";
    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
    for i in 0..n {
        let client = SocketAddr::from((
            [10, 1, (i >> 16) as u8, (i >> 8) as u8],
            1024 + (i & 0xff) as u16,
        ));
        let (c, s) = (1000u32, 5000u32);
        let steps: [(bool, u8, u32, u32, &[u8]); 5] = [
            (true, TcpFlags::SYN, c - 1, 0, b""),
            (false, TcpFlags::SYN | TcpFlags::ACK, s - 1, c, b""),
            (true, TcpFlags::ACK, c, s, b""),
            (true, TcpFlags::ACK | TcpFlags::PSH, c, s, req),
            (
                false,
                TcpFlags::ACK | TcpFlags::PSH,
                s,
                c + req.len() as u32,
                resp,
            ),
        ];
        for (from_client, flags, seq, ack, payload) in steps {
            let (src, dst) = if from_client {
                (client, server)
            } else {
                (server, client)
            };
            let seg = TcpSegment {
                ts: t,
                src,
                dst,
                seq,
                ack,
                flags: TcpFlags(flags),
                window: 1000,
                payload,
                missing: 0,
            };
            table.segment(&seg, t, &mut |ex| {
                black_box(ex);
            });
        }
    }
    (table, t)
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = stages
}
criterion_main!(benches);
