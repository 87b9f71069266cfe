//! Hostile and scale captures for apitap, written as classic pcap files.
//!
//! Contract: every capture is a pure function of its [`Plan`] (scenario,
//! sizes, seed): the same plan writes the same bytes, so a failing test or a
//! benchmark figure can be reproduced. Frames are Ethernet/IPv4/TCP with
//! zero checksums (apitap never verifies them), microsecond timestamps that
//! advance by [`Plan::step_micros`] per frame, and no frame larger than an
//! MTU-1500 link carries. Nothing is held per packet; per connection the
//! generator keeps about 40 bytes, so a million flows cost it ~40 MB.
//!
//! Normal traffic can be mixed into any hostile scenario ([`Plan::normal`]):
//! short, complete HTTP exchanges (`GET /normal/{j}` to `normal.example`,
//! answered `200` with body `normal {j}`), started at evenly spaced points
//! and each finished within a few dozen frames, as real clients do. A test
//! checks that every one of them still comes out of apitap intact.
//!
//! Std only, so both the `hostile` example (the CLI the scripts use) and the
//! integration tests include this file with `#[path]`.

#![allow(dead_code)]

use std::io::{self, Write};

/// Deterministic generator (splitmix64): tiny and good enough for traffic.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// `len` lowercase letters.
    pub fn word(&mut self, len: usize, out: &mut Vec<u8>) {
        for _ in 0..len {
            out.push(b'a' + (self.next() % 26) as u8);
        }
    }
}

/// One end of a TCP connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: [u8; 4],
    pub port: u16,
}

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

/// Most TCP payload per frame (MTU 1500 minus IPv4 and TCP headers).
pub const MSS: usize = 1460;

/// A TCP segment's header fields.
#[derive(Clone, Copy, Debug)]
pub struct Seg {
    pub src: Endpoint,
    pub dst: Endpoint,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
}

pub fn seg(src: Endpoint, dst: Endpoint, seq: u32, ack: u32, flags: u8) -> Seg {
    Seg {
        src,
        dst,
        seq,
        ack,
        flags,
    }
}

/// A classic pcap writer (little-endian, microseconds, Ethernet).
pub struct PcapWriter<W: Write> {
    out: W,
    pub frames: u64,
    /// Bytes written, file header included.
    pub bytes: u64,
}

impl<W: Write> PcapWriter<W> {
    pub fn new(mut out: W) -> io::Result<Self> {
        let mut h = [0u8; 24];
        h[0..4].copy_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        h[4..6].copy_from_slice(&2u16.to_le_bytes());
        h[6..8].copy_from_slice(&4u16.to_le_bytes());
        h[16..20].copy_from_slice(&65535u32.to_le_bytes());
        h[20..24].copy_from_slice(&1u32.to_le_bytes());
        out.write_all(&h)?;
        Ok(PcapWriter {
            out,
            frames: 0,
            bytes: 24,
        })
    }

    /// One TCP segment at `ts_us` (µs since the epoch).
    pub fn tcp(&mut self, ts_us: u64, seg: Seg, payload: &[u8]) -> io::Result<()> {
        let Seg {
            src,
            dst,
            seq,
            ack,
            flags,
        } = seg;
        let len = 54 + payload.len();
        let mut f = [0u8; 16 + 54];
        f[0..4].copy_from_slice(&((ts_us / 1_000_000) as u32).to_le_bytes());
        f[4..8].copy_from_slice(&((ts_us % 1_000_000) as u32).to_le_bytes());
        f[8..12].copy_from_slice(&(len as u32).to_le_bytes());
        f[12..16].copy_from_slice(&(len as u32).to_le_bytes());
        let e = &mut f[16..];
        e[0..14].copy_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00]);
        e[14] = 0x45;
        e[16..18].copy_from_slice(&((40 + payload.len()) as u16).to_be_bytes());
        e[20] = 0x40; // don't fragment
        e[22] = 64;
        e[23] = 6;
        e[26..30].copy_from_slice(&src.ip);
        e[30..34].copy_from_slice(&dst.ip);
        e[34..36].copy_from_slice(&src.port.to_be_bytes());
        e[36..38].copy_from_slice(&dst.port.to_be_bytes());
        e[38..42].copy_from_slice(&seq.to_be_bytes());
        e[42..46].copy_from_slice(&ack.to_be_bytes());
        e[46] = 0x50;
        e[47] = flags;
        e[48..50].copy_from_slice(&0xffffu16.to_be_bytes());
        self.out.write_all(&f)?;
        self.out.write_all(payload)?;
        self.frames += 1;
        self.bytes += (16 + len) as u64;
        Ok(())
    }

    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// What an HTTP conversation says: request `n` and its response, written
/// into `out` (cleared first).
pub trait Talk {
    fn message(&self, conv: u32, n: u32, response: bool, out: &mut Vec<u8>);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Syn,
    SynAck,
    Ack,
    Request,
    Response,
    ClientAck,
    FinClient,
    FinServer,
    LastAck,
    Done,
}

/// A real HTTP/1.1 keep-alive connection: handshake, `exchanges` request /
/// response pairs (segmented at [`MSS`], each response acknowledged), then
/// FINs from both sides. It writes one frame per [`Conversation::step`], so
/// many can be interleaved.
pub struct Conversation {
    pub id: u32,
    client: Endpoint,
    server: Endpoint,
    cseq: u32,
    sseq: u32,
    exchanges: u32,
    n: u32,
    /// Offset into the message being sent.
    off: u32,
    step: Step,
}

impl Conversation {
    pub fn new(id: u32, client: Endpoint, server: Endpoint, exchanges: u32, rng: &mut Rng) -> Self {
        let isn = rng.next();
        Conversation {
            id,
            client,
            server,
            cseq: isn as u32,
            sseq: (isn >> 32) as u32,
            exchanges,
            n: 0,
            off: 0,
            step: Step::Syn,
        }
    }

    /// After the handshake or an exchange: the next request, or the end.
    fn after_exchange(&self) -> Step {
        if self.n < self.exchanges {
            Step::Request
        } else {
            Step::FinClient
        }
    }

    /// Write one segment with the connection's sequence numbers, advance
    /// them (SYN and FIN count one), and move to `next`.
    #[allow(clippy::too_many_arguments)]
    fn send<W: Write>(
        &mut self,
        w: &mut PcapWriter<W>,
        ts: u64,
        from_client: bool,
        flags: u8,
        payload: &[u8],
        next: Step,
    ) -> io::Result<()> {
        let adv = payload.len() as u32 + u32::from(flags & (SYN | FIN) != 0);
        let (c, s) = (self.client, self.server);
        if from_client {
            w.tcp(ts, seg(c, s, self.cseq, self.sseq, flags), payload)?;
            self.cseq = self.cseq.wrapping_add(adv);
        } else {
            w.tcp(ts, seg(s, c, self.sseq, self.cseq, flags), payload)?;
            self.sseq = self.sseq.wrapping_add(adv);
        }
        self.step = next;
        Ok(())
    }

    pub fn is_done(&self) -> bool {
        self.step == Step::Done
    }

    /// Write the next frame; false once the connection is over.
    pub fn step<W: Write>(
        &mut self,
        w: &mut PcapWriter<W>,
        ts: u64,
        talk: &dyn Talk,
        scratch: &mut Vec<u8>,
    ) -> io::Result<bool> {
        match self.step {
            Step::Syn => self.send(w, ts, true, SYN, b"", Step::SynAck)?,
            Step::SynAck => self.send(w, ts, false, SYN | ACK, b"", Step::Ack)?,
            Step::Ack => {
                let next = self.after_exchange();
                self.send(w, ts, true, ACK, b"", next)?
            }
            Step::Request | Step::Response => {
                let response = self.step == Step::Response;
                talk.message(self.id, self.n, response, scratch);
                let off = self.off as usize;
                let end = (off + MSS).min(scratch.len());
                let (next, off) = match (end == scratch.len(), response) {
                    (false, _) => (self.step, end as u32),
                    (true, false) => (Step::Response, 0),
                    (true, true) => (Step::ClientAck, 0),
                };
                self.send(
                    w,
                    ts,
                    !response,
                    PSH | ACK,
                    &scratch[self.off as usize..end],
                    next,
                )?;
                self.off = off;
            }
            Step::ClientAck => {
                self.n += 1;
                let next = self.after_exchange();
                self.send(w, ts, true, ACK, b"", next)?
            }
            Step::FinClient => self.send(w, ts, true, FIN | ACK, b"", Step::FinServer)?,
            Step::FinServer => self.send(w, ts, false, FIN | ACK, b"", Step::LastAck)?,
            Step::LastAck => self.send(w, ts, true, ACK, b"", Step::Done)?,
            Step::Done => return Ok(false),
        }
        Ok(true)
    }

    /// Stop here: the connection stays open and idle (no FIN).
    pub fn hold_open_after_exchanges(&mut self) {
        if self.step == Step::FinClient {
            self.step = Step::Done;
        }
    }
}

/// The normal traffic mixed into hostile captures (see the module doc).
pub struct NormalTalk;

impl NormalTalk {
    pub const HOST: &'static str = "normal.example";
    pub fn path(j: u32) -> String {
        format!("/normal/{j}")
    }
    pub fn body(j: u32) -> String {
        format!("normal {j}")
    }
}

impl Talk for NormalTalk {
    fn message(&self, conv: u32, _n: u32, response: bool, out: &mut Vec<u8>) {
        out.clear();
        if response {
            let body = Self::body(conv);
            let _ = write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        } else {
            let _ = write!(
                out,
                "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: hostile-gen\r\n\r\n",
                Self::path(conv),
                Self::HOST
            );
        }
    }
}

/// A JSON API exchange with a body of about `body` bytes (the scale
/// scenarios): `GET /api/v1/items/{conv}?n={n}` → 200.
pub struct ApiTalk {
    pub body: usize,
}

impl Talk for ApiTalk {
    fn message(&self, conv: u32, n: u32, response: bool, out: &mut Vec<u8>) {
        out.clear();
        if response {
            let head = format!("{{\"id\":{conv},\"n\":{n},\"pad\":\"");
            let pad = self.body.saturating_sub(head.len() + 2);
            let _ = write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{head}",
                head.len() + pad + 2
            );
            out.resize(out.len() + pad, b'x');
            out.extend_from_slice(b"\"}");
        } else {
            let _ = write!(
                out,
                "GET /api/v1/items/{conv}?n={n} HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: hostile-gen\r\nAccept: application/json\r\n\r\n"
            );
        }
    }
}

/// 100,000-hosts traffic: request `n` of connection `conv` names its own
/// Host and a random path; one response in eight is a 404.
pub struct HostsTalk {
    pub seed: u64,
    pub per_conn: u32,
}

impl Talk for HostsTalk {
    fn message(&self, conv: u32, n: u32, response: bool, out: &mut Vec<u8>) {
        out.clear();
        let i = u64::from(conv) * u64::from(self.per_conn) + u64::from(n);
        let mut rng = Rng::new(self.seed ^ i.wrapping_mul(0x2545_F491_4F6C_DD1D));
        let status = if rng.next().is_multiple_of(8) {
            404
        } else {
            200
        };
        if response {
            let reason = if status == 200 { "OK" } else { "Not Found" };
            let _ = write!(
                out,
                "HTTP/1.1 {status} {reason}\r\nContent-Length: 2\r\n\r\nok"
            );
        } else {
            out.extend_from_slice(b"GET /");
            rng.word(6, out);
            out.push(b'/');
            rng.word(10, out);
            let _ = write!(out, "?q={} HTTP/1.1\r\nHost: h{i}-", rng.next() % 100_000);
            rng.word(5, out);
            out.extend_from_slice(b".attacker.example\r\n\r\n");
        }
    }
}

/// The hostile (or scale) part of a capture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// `flows` half-open connections: a SYN and its SYN+ACK, nothing more.
    SynFlood { flows: u32 },
    /// `flows` connections, each sending `segments` full segments beyond a
    /// one-segment hole that is never filled nor acknowledged.
    OutOfOrder { flows: u32, segments: u32 },
    /// `flows` connections, each sending a request whose header block never
    /// ends: `bytes` of header lines, in order.
    EndlessHeaders { flows: u32, bytes: u64 },
    /// `hosts` requests, each with its own Host and a random path, over
    /// keep-alive connections of 100 requests, 100 connections at a time.
    ManyHosts { hosts: u32 },
    /// `flows` connections, `concurrency` open at once (interleaved frame by
    /// frame), each carrying `exchanges` API exchanges of about `body` bytes.
    /// Total bytes depend on `flows`, `exchanges` and `body` only, so
    /// captures differing in `concurrency` alone are the same size.
    Concurrent {
        flows: u32,
        concurrency: u32,
        exchanges: u32,
        body: u32,
    },
    /// `flows` connections, all open at the end: each shakes hands and, with
    /// `exchange`, carries one API exchange; then it stays open and idle.
    /// They start in waves of [`IDLE_WAVE`], so at most that many are ever
    /// between handshake and idle: the peak memory is that of idle ones.
    Idle { flows: u32, exchange: bool },
}

/// Connections of [`Scenario::Idle`] started together.
pub const IDLE_WAVE: u32 = 1000;

/// A whole capture: the scenario, the normal traffic mixed in, the seed.
#[derive(Clone, Debug)]
pub struct Plan {
    pub scenario: Scenario,
    /// Normal exchanges mixed in (see the module doc).
    pub normal: u32,
    pub seed: u64,
    pub step_micros: u64,
}

impl Plan {
    pub fn new(scenario: Scenario) -> Self {
        Plan {
            scenario,
            normal: 0,
            seed: 1,
            step_micros: 1,
        }
    }
    pub fn normal(mut self, n: u32) -> Self {
        self.normal = n;
        self
    }
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
}

/// What was written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    pub frames: u64,
    pub bytes: u64,
    /// Frames of the hostile part (the rest is normal traffic).
    pub hostile_frames: u64,
}

/// Attacker `i`'s address: 11.0.0.0/8 plus a port, distinct for every `i`
/// below 2^24 × 16.
fn attacker(i: u32) -> Endpoint {
    Endpoint {
        ip: [11, (i >> 16) as u8, (i >> 8) as u8, i as u8],
        port: 1024 + ((i >> 24) as u16) * 4096 + (i % 4096) as u16,
    }
}

const VICTIM: Endpoint = Endpoint {
    ip: [10, 0, 0, 1],
    port: 80,
};
const NORMAL_SERVER: Endpoint = Endpoint {
    ip: [10, 0, 0, 2],
    port: 80,
};
const BASE_TS: u64 = 1_700_000_000_000_000;

/// Frames per hostile frame while a normal exchange runs: legitimate
/// exchanges are short next to the flood around them.
const NORMAL_STRIDE: u64 = 2;

/// The hostile frames, with the normal exchanges slotted in between.
struct Out<W: Write> {
    w: PcapWriter<W>,
    ts: u64,
    step: u64,
    hostile: u64,
    /// Hostile frames between two normal exchange starts.
    period: u64,
    normal_left: u32,
    normal_next: u32,
    active: Vec<Conversation>,
    rng: Rng,
    scratch: Vec<u8>,
}

impl<W: Write> Out<W> {
    fn frame(&mut self, seg: Seg, payload: &[u8]) -> io::Result<()> {
        self.ts += self.step;
        self.w.tcp(self.ts, seg, payload)?;
        self.after_hostile()
    }

    /// A hostile frame was written: start or advance the normal exchanges.
    fn after_hostile(&mut self) -> io::Result<()> {
        self.hostile += 1;
        if self.normal_left > 0 && self.hostile.is_multiple_of(self.period) {
            self.start_normal();
        }
        if self.hostile.is_multiple_of(NORMAL_STRIDE) {
            self.normal_step()?;
        }
        Ok(())
    }

    fn start_normal(&mut self) {
        let j = self.normal_next;
        self.normal_next += 1;
        self.normal_left -= 1;
        let client = Endpoint {
            ip: [10, 1, (j >> 8) as u8, j as u8],
            port: 30_000 + (j % 30_000) as u16,
        };
        self.active.push(Conversation::new(
            j,
            client,
            NORMAL_SERVER,
            1,
            &mut self.rng,
        ));
    }

    /// One frame of each running normal exchange.
    fn normal_step(&mut self) -> io::Result<()> {
        for c in &mut self.active {
            self.ts += self.step;
            c.step(&mut self.w, self.ts, &NormalTalk, &mut self.scratch)?;
        }
        self.active.retain(|c| !c.is_done());
        Ok(())
    }

    /// Finish the normal exchanges (those not started yet start now).
    fn finish(mut self) -> io::Result<(PcapWriter<W>, u64)> {
        while self.normal_left > 0 || !self.active.is_empty() {
            if self.normal_left > 0 && self.active.len() < 4 {
                self.start_normal();
            }
            self.normal_step()?;
        }
        Ok((self.w, self.hostile))
    }
}

/// Hostile frames a scenario writes (for spacing the normal exchanges).
fn hostile_frames(s: &Scenario) -> u64 {
    let per_message = |len: u64| len.div_ceil(MSS as u64).max(1);
    match *s {
        Scenario::SynFlood { flows } => 2 * u64::from(flows),
        Scenario::OutOfOrder { flows, segments } => u64::from(flows) * (3 + u64::from(segments)),
        Scenario::EndlessHeaders { flows, bytes } => u64::from(flows) * (3 + per_message(bytes)),
        Scenario::ManyHosts { hosts } => u64::from(hosts) * 3 + u64::from(hosts / 100 + 1) * 6,
        Scenario::Concurrent {
            flows,
            exchanges,
            body,
            ..
        } => u64::from(flows) * (6 + u64::from(exchanges) * (2 + per_message(u64::from(body)))),
        Scenario::Idle { flows, exchange } => u64::from(flows) * if exchange { 6 } else { 3 },
    }
}

/// Step `convs` round-robin, one frame each per round, until all are done.
fn interleave<W: Write>(
    out: &mut Out<W>,
    convs: &mut Vec<Conversation>,
    talk: &dyn Talk,
    hold_open: bool,
) -> io::Result<()> {
    let mut scratch = Vec::new();
    while !convs.is_empty() {
        for c in convs.iter_mut() {
            if hold_open {
                c.hold_open_after_exchanges();
            }
            out.ts += out.step;
            let ts = out.ts;
            if c.step(&mut out.w, ts, talk, &mut scratch)? {
                // Counted as hostile for the spacing of the normal traffic.
                out.after_hostile()?;
            }
        }
        convs.retain(|c| !c.is_done());
    }
    Ok(())
}

/// Attackers `0..flows` each open a connection to the victim (whose ISN is
/// 7); their ISNs, in order.
fn handshakes<W: Write>(o: &mut Out<W>, rng: &mut Rng, flows: u32) -> io::Result<Vec<u32>> {
    let isns: Vec<u32> = (0..flows).map(|_| rng.next() as u32).collect();
    for (i, &isn) in isns.iter().enumerate() {
        let c = attacker(i as u32);
        o.frame(seg(c, VICTIM, isn, 0, SYN), b"")?;
        o.frame(seg(VICTIM, c, 7, isn.wrapping_add(1), SYN | ACK), b"")?;
        o.frame(seg(c, VICTIM, isn.wrapping_add(1), 8, ACK), b"")?;
    }
    Ok(isns)
}

/// Write the capture `plan` describes.
pub fn write<W: Write>(plan: &Plan, out: W) -> io::Result<(W, Written)> {
    let total = hostile_frames(&plan.scenario);
    let mut o = Out {
        w: PcapWriter::new(out)?,
        ts: BASE_TS,
        step: plan.step_micros.max(1),
        hostile: 0,
        period: (total / (u64::from(plan.normal) + 1)).max(1),
        normal_left: plan.normal,
        normal_next: 0,
        active: Vec::new(),
        rng: Rng::new(plan.seed ^ 0x6e6f_726d_616c),
        scratch: Vec::new(),
    };
    let mut rng = Rng::new(plan.seed);
    match plan.scenario {
        Scenario::SynFlood { flows } => {
            for i in 0..flows {
                let c = attacker(i);
                let isn = rng.next();
                o.frame(seg(c, VICTIM, isn as u32, 0, SYN), b"")?;
                let sisn = (isn >> 32) as u32;
                let ack = (isn as u32).wrapping_add(1);
                o.frame(seg(VICTIM, c, sisn, ack, SYN | ACK), b"")?;
            }
        }
        Scenario::OutOfOrder { flows, segments } => {
            let isns = handshakes(&mut o, &mut rng, flows)?;
            let payload = [b'z'; MSS];
            for k in 0..segments {
                for (i, &isn) in isns.iter().enumerate() {
                    // One MSS hole at the stream start, never filled; the
                    // server's ACK stays at the hole, so nothing says lost.
                    let seq = isn.wrapping_add(1).wrapping_add((k + 1) * MSS as u32);
                    o.frame(seg(attacker(i as u32), VICTIM, seq, 8, ACK), &payload)?;
                }
            }
        }
        Scenario::EndlessHeaders { flows, bytes } => {
            let isns = handshakes(&mut o, &mut rng, flows)?;
            // Header lines of 64 bytes; a segment is a whole number of them.
            let line = b"X-Endless: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
            let mut lines = Vec::with_capacity(MSS);
            while lines.len() + line.len() <= MSS {
                lines.extend_from_slice(line);
            }
            let first = {
                let mut f = b"GET /endless HTTP/1.1\r\nHost: endless.example\r\n".to_vec();
                f.extend_from_slice(&lines[..lines.len() - 64]);
                f
            };
            let mut sent = vec![0u32; flows as usize];
            let mut left = bytes;
            while left > 0 {
                for (i, &isn) in isns.iter().enumerate() {
                    let p: &[u8] = if sent[i] == 0 { &first } else { &lines };
                    let seq = isn.wrapping_add(1).wrapping_add(sent[i]);
                    o.frame(seg(attacker(i as u32), VICTIM, seq, 8, PSH | ACK), p)?;
                    sent[i] = sent[i].wrapping_add(p.len() as u32);
                }
                left = left.saturating_sub(lines.len() as u64);
            }
        }
        Scenario::ManyHosts { hosts } => {
            let per_conn = 100;
            let talk = HostsTalk {
                seed: plan.seed,
                per_conn,
            };
            let conns = hosts.div_ceil(per_conn);
            let mut next = 0;
            while next < conns {
                let wave = (conns - next).min(100);
                let mut convs: Vec<Conversation> = (next..next + wave)
                    .map(|k| {
                        let n = per_conn.min(hosts - k * per_conn);
                        Conversation::new(k, attacker(k), VICTIM, n, &mut rng)
                    })
                    .collect();
                interleave(&mut o, &mut convs, &talk, false)?;
                next += wave;
            }
        }
        Scenario::Concurrent {
            flows,
            concurrency,
            exchanges,
            body,
        } => {
            let talk = ApiTalk {
                body: body as usize,
            };
            let mut next = 0;
            while next < flows {
                let wave = (flows - next).min(concurrency.max(1));
                let mut convs: Vec<Conversation> = (next..next + wave)
                    .map(|k| Conversation::new(k, attacker(k), VICTIM, exchanges, &mut rng))
                    .collect();
                interleave(&mut o, &mut convs, &talk, false)?;
                next += wave;
            }
        }
        Scenario::Idle { flows, exchange } => {
            let talk = ApiTalk { body: 200 };
            let mut next = 0;
            while next < flows {
                let wave = (flows - next).min(IDLE_WAVE);
                let mut convs: Vec<Conversation> = (next..next + wave)
                    .map(|k| {
                        Conversation::new(k, attacker(k), VICTIM, u32::from(exchange), &mut rng)
                    })
                    .collect();
                interleave(&mut o, &mut convs, &talk, true)?;
                next += wave;
            }
        }
    }
    let (w, hostile) = o.finish()?;
    let written = Written {
        frames: w.frames,
        bytes: w.bytes,
        hostile_frames: hostile,
    };
    Ok((w.finish()?, written))
}

/// Write `plan` to the file at `path`.
pub fn write_file(plan: &Plan, path: &std::path::Path) -> io::Result<Written> {
    let f = std::fs::File::create(path)?;
    let (_, w) = write(plan, io::BufWriter::with_capacity(1 << 20, f))?;
    Ok(w)
}
