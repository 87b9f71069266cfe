//! Writes seed corpora for every fuzz target from capture files.
//!
//! `cargo run --release --example seeds -- OUT_DIR FILE.pcap...` writes
//! `OUT_DIR/<target>/<hash>` files in each target's input format (see
//! `apitap_fuzz`): packets in groups (`decode`), each connection as a script
//! (`flow`), each direction's segment and ACK pattern (`reassembly`) and
//! each direction's reassembled bytes (`http_request`, `http_response`),
//! a connection's first request head with its response (`classify`), and
//! a TLS connection's first bytes each way (`tls`), and each file's first
//! bytes (`capture`).
//! Seeds are derived, never committed: the script regenerates them.

use apitap::capture::file::FileSource;
use apitap::capture::{PacketSource, SourceEvent};
use apitap::clock::Timestamp;
use apitap::decode::{Decoded, Decoder};
use apitap::flow::reassembly::{Reassembler, StreamEvent, StreamLimits};
use apitap::flow::FlowKey;
use apitap::http::parser::{sniff_request_start, sniff_response_start, Sniff};
use apitap_fuzz::{classify, decode, flow, http, reassembly, tls};
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Bounds that keep seeds small enough to fuzz quickly.
const PACKETS_PER_DECODE_SEED: usize = 8;
const DECODE_SEEDS_PER_FILE: usize = 24;
const CONNECTIONS_PER_FILE: usize = 16;
const SEGMENTS_PER_CONNECTION: usize = 120;
const MAX_SEED_BYTES: usize = 48 * 1024;
const CAPTURE_SEED_BYTES: usize = 16 * 1024;

struct Segment {
    ts: Timestamp,
    src: SocketAddr,
    seq: u32,
    ack: u32,
    flags: u8,
    payload: Vec<u8>,
    missing: u32,
}

struct Out {
    dir: PathBuf,
    written: HashMap<&'static str, usize>,
}

impl Out {
    fn put(&mut self, target: &'static str, bytes: &[u8]) {
        if bytes.is_empty() || bytes.len() > MAX_SEED_BYTES * 2 {
            return;
        }
        let mut h = DefaultHasher::new();
        bytes.hash(&mut h);
        let dir = self.dir.join(target);
        std::fs::create_dir_all(&dir).expect("create corpus dir");
        std::fs::write(dir.join(format!("{:016x}", h.finish())), bytes).expect("write seed");
        *self.written.entry(target).or_default() += 1;
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(out_dir) = args.next() else {
        eprintln!("usage: seeds OUT_DIR FILE.pcap...");
        std::process::exit(2);
    };
    let mut out = Out {
        dir: PathBuf::from(out_dir),
        written: HashMap::new(),
    };
    for file in args {
        // capture: the file's first bytes, as they are (cut mid-record
        // when longer: a truncated file is a case too).
        if let Ok(bytes) = std::fs::read(&file) {
            let seed = &bytes[..bytes.len().min(CAPTURE_SEED_BYTES)];
            out.put("capture", seed);
            // And gzipped, as `tcpdump -z gzip` leaves it.
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            if gz.write_all(seed).is_ok() {
                if let Ok(packed) = gz.finish() {
                    out.put("capture", &packed);
                }
            }
        }
        if let Err(e) = one_file(Path::new(&file), &mut out) {
            eprintln!("seeds: skipping {file}: {e}");
        }
    }
    let mut counts: Vec<_> = out.written.into_iter().collect();
    counts.sort();
    for (t, n) in counts {
        println!("seeds: {t}: {n}");
    }
}

fn one_file(path: &Path, out: &mut Out) -> Result<(), String> {
    let mut src = FileSource::open(&path.to_string_lossy()).map_err(|e| e.to_string())?;
    let mut decoder = Decoder::default();
    let mut group: Vec<(u8, bool, Vec<u8>)> = Vec::new();
    let mut group_link = None;
    let mut decode_seeds = 0;
    let mut last_ts: Option<Timestamp> = None;
    let mut conns: HashMap<FlowKey, Vec<Segment>> = HashMap::new();
    let mut order: Vec<FlowKey> = Vec::new();
    while let Some(ev) = src.next_event().map_err(|e| e.to_string())? {
        let SourceEvent::Packet(pkt) = ev else {
            continue;
        };
        // decode: consecutive packets in groups.
        if let Some(idx) = decode::link_index(pkt.link.0) {
            if decode_seeds < DECODE_SEEDS_PER_FILE {
                let step = last_ts.map_or(0, |t| pkt.ts.micros_since(t) / 100_000);
                let cut = (pkt.data.len() as u64) < u64::from(pkt.wire_len);
                group.push((step.min(63) as u8, cut, pkt.data.to_vec()));
                group_link = Some(idx);
                if group.len() == PACKETS_PER_DECODE_SEED {
                    flush_group(&mut group, idx, out);
                    decode_seeds += 1;
                }
            }
        }
        last_ts = Some(pkt.ts);
        if let Decoded::Tcp(seg) = decoder.decode(&pkt) {
            let (key, _) = FlowKey::new(seg.src, seg.dst);
            let segs = conns.entry(key).or_insert_with(|| {
                order.push(key);
                Vec::new()
            });
            if segs.len() < SEGMENTS_PER_CONNECTION {
                segs.push(Segment {
                    ts: seg.ts,
                    src: seg.src,
                    seq: seg.seq,
                    ack: seg.ack,
                    flags: seg.flags.0,
                    payload: seg.payload.to_vec(),
                    missing: seg.missing,
                });
            }
        }
    }
    if let Some(idx) = group_link {
        if !group.is_empty() && decode_seeds < DECODE_SEEDS_PER_FILE {
            flush_group(&mut group, idx, out);
        }
    }
    // Connections with payload first, in order of appearance.
    let mut with_data: Vec<&Vec<Segment>> = order
        .iter()
        .map(|k| &conns[k])
        .filter(|s| s.iter().any(|s| !s.payload.is_empty()))
        .collect();
    with_data.truncate(CONNECTIONS_PER_FILE);
    for segs in with_data {
        connection(segs, out);
    }
    Ok(())
}

fn flush_group(group: &mut Vec<(u8, bool, Vec<u8>)>, idx: u8, out: &mut Out) {
    let packets: Vec<(u8, bool, &[u8])> = group
        .iter()
        .map(|(s, c, b)| (*s, *c, b.as_slice()))
        .collect();
    out.put("decode", &decode::encode(idx, &packets));
    group.clear();
}

fn connection(segs: &[Segment], out: &mut Out) {
    let a = segs[0].src;
    let side = |s: &Segment| usize::from(s.src != a);
    // flow: the whole conversation, trimmed to the size bound.
    let mut isn = [None, None];
    for s in segs {
        isn[side(s)].get_or_insert(s.seq);
    }
    let isn = [isn[0].unwrap_or(0), isn[1].unwrap_or(0)];
    let mut total = 0;
    let mut script = Vec::new();
    let mut prev = segs[0].ts;
    for s in segs {
        total += s.payload.len() + 16;
        if total > MAX_SEED_BYTES {
            break;
        }
        script.push(flow::Seg {
            side: side(s),
            seq: s.seq,
            ack: s.ack,
            flags: s.flags,
            dt_micros: s.ts.micros_since(prev),
            payload: &s.payload,
            missing: u16::try_from(s.missing).unwrap_or(u16::MAX),
        });
        prev = s.ts;
    }
    out.put("flow", &flow::encode(isn, &script));

    let (mut request, mut response) = (None, None);
    // tls: each direction's first bytes, when they start a handshake
    // record holding a ClientHello (1) or a ServerHello (2).
    let mut hello: [Vec<u8>; 2] = Default::default();
    for (dir, &dir_isn) in isn.iter().enumerate() {
        // reassembly: this direction's segments, the other's ACKs.
        let mut ops = Vec::new();
        for s in segs {
            let ack_flag = s.flags & 0x10 != 0;
            if side(s) == dir {
                ops.push(reassembly::Op::Segment {
                    seq: s.seq,
                    syn: s.flags & 0x02 != 0,
                    fin: s.flags & 0x01 != 0,
                    rst: s.flags & 0x04 != 0,
                    len: u16::try_from(s.payload.len()).unwrap_or(u16::MAX),
                    missing: u16::try_from(s.missing).unwrap_or(u16::MAX),
                });
            } else if ack_flag {
                ops.push(reassembly::Op::PeerAck(s.ack));
            }
            ops.push(reassembly::Op::Tick);
        }
        ops.push(reassembly::Op::Sweep(31));
        ops.push(reassembly::Op::Flush);
        if ops
            .iter()
            .any(|o| matches!(o, reassembly::Op::Segment { .. }))
        {
            out.put(
                "reassembly",
                &reassembly::encode(dir_isn, 0xff, 0x1f | (4 << 5), &ops),
            );
        }

        // http: the direction's bytes, put in order by apitap's reassembler.
        let limits = StreamLimits::default();
        let mut ra = Reassembler::new();
        let mut bytes = Vec::new();
        let mut take = |ev: StreamEvent<'_>| {
            if let StreamEvent::Data(c) = ev {
                bytes.extend_from_slice(c.data);
            }
        };
        for s in segs.iter().filter(|s| side(s) == dir) {
            ra.segment(
                s.seq,
                s.ack,
                s.ts,
                s.flags & 0x02 != 0,
                s.flags & 0x01 != 0,
                s.flags & 0x04 != 0,
                &s.payload,
                s.missing,
                &limits,
                &mut take,
            );
        }
        ra.flush(prev, &mut take);
        bytes.truncate(MAX_SEED_BYTES);
        if let [22, 3, _, _, _, kind @ (1 | 2), ..] = bytes[..] {
            hello[usize::from(kind - 1)] = bytes.clone();
        }
        let seed = (bytes.len() as u16) ^ 0x5a5a;
        if sniff_request_start(&bytes) == Sniff::Yes {
            out.put("http_request", &http::encode(&bytes, seed));
            request = Some(bytes);
        } else if sniff_response_start(&bytes) == Sniff::Yes {
            out.put("http_response", &http::encode(&bytes, seed));
            response = Some(bytes);
        }
    }
    if let (Some(request), Some(response)) = (request, response) {
        out.put("classify", &classify::encode(&request, &response));
    }
    if !hello[0].is_empty() {
        out.put("tls", &tls::encode(&hello[0], &hello[1]));
    }
}
