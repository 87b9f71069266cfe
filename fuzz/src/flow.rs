//! `flow`: a scripted two-sided TCP conversation through
//! [`FlowTable::segment`], so sniffing (who is the client, is it HTTP),
//! reassembly, both parsers and the pairing session run together.
//!
//! Input: `[isn A: u32 LE][isn B: u32 LE][cfg]`, then segments. Endpoint A is
//! 10.0.0.1:40000 (40001 when the op asks for the second connection), B is
//! 10.0.0.2:80; nothing in apitap may care which one talks first. `cfg`
//! bits 0-1 pick the transaction timeout (1 s, 5 s, 30 s, 300 s), bit 2
//! tiny stream limits, bit 3 tiny parser limits. Each segment:
//!
//! `[ctl][flags][dt]` + fields + payload. `ctl` bit 0 direction (0: A→B),
//! bit 1 second connection, bits 2-3 seq: at the sender's next byte, `+ i16`,
//! `isn + u32`, or next + i16 with a `missing: u16` field; bit 4 ack: the
//! other side's next byte, else `+ i16`. `flags` are the TCP flag bits as on
//! the wire. `dt`: below 200 that many ms, else `dt - 199` s. Then `len:
//! u16 LE` and `len` payload bytes (what is left of the input).
//!
//! Checked: every exchange names the two endpoints of its connection; a
//! complete exchange has a response; body prefixes are within bounds; an
//! exchange does not end before it began; after the capture ends no flow is
//! left. Each exchange, and each event (a connection named, a TLS
//! handshake), then goes through apitap's sinks (`classify::Outputs`): every
//! log line must be a JSON object, the report and the metrics printable.

use crate::classify::Outputs;
use crate::{seq_diff, Reader};
use apitap::classify::ClassifyConfig;
use apitap::clock::Timestamp;
use apitap::decode::{TcpFlags, TcpSegment};
use apitap::flow::reassembly::StreamLimits;
use apitap::flow::{FlowConfig, FlowTable};
use apitap::http::exchange::{Exchange, Outcome};
use apitap::http::parser::ParserLimits;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

fn endpoint(side: usize, conn: usize) -> SocketAddr {
    match side {
        0 => SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 40_000 + conn as u16),
        _ => SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 80),
    }
}

/// Checks each exchange the table frames and keeps it in `framed`.
fn framer<'a>(framed: &'a mut Vec<Exchange>, cfg: &'a FlowConfig) -> impl FnMut(Exchange) + 'a {
    |ex| {
        check(&ex, cfg);
        framed.push(ex);
    }
}

/// What the table framed, then the events it holds, to the sinks, as the
/// pipeline passes them on.
fn pass_on(framed: &mut Vec<Exchange>, table: &mut FlowTable, outputs: &mut Outputs) {
    for mut ex in framed.drain(..) {
        outputs.exchange(&mut ex);
    }
    table.take_events(|ev| outputs.event(ev));
}

fn check(ex: &Exchange, cfg: &FlowConfig) {
    let pair = |c: usize| {
        (ex.client == endpoint(0, c) && ex.server == endpoint(1, c))
            || (ex.client == endpoint(1, c) && ex.server == endpoint(0, c))
    };
    assert!(
        pair(0) || pair(1),
        "exchange between {} and {}",
        ex.client,
        ex.server
    );
    // A request that could not be framed, or a placeholder for requests
    // lost in a gap, is logged without heads; nothing else is.
    assert!(
        ex.request.is_some()
            || ex.response.is_some()
            || ex.outcome == Outcome::Malformed
            || ex.capture_loss,
        "exchange without request or response: {:?}",
        ex.outcome
    );
    if ex.outcome == Outcome::Complete {
        assert!(ex.response.is_some(), "complete without a response");
    }
    let prefix = cfg.parser_limits.body_prefix_bytes;
    assert!(
        ex.request_body_prefix.len() <= prefix,
        "request body prefix too long"
    );
    assert!(
        ex.response_body_prefix.len() <= prefix,
        "response body prefix too long"
    );
    if let Some(end) = ex.end_ts {
        assert!(
            end >= ex.ts,
            "exchange ends at {end} before it began at {}",
            ex.ts
        );
    }
}

pub fn run(data: &[u8]) {
    let mut r = Reader::new(data);
    let (Some(isn_a), Some(isn_b), Some(c)) = (r.u32(), r.u32(), r.u8()) else {
        return;
    };
    let mut cfg = FlowConfig {
        transaction_timeout_micros: [1, 5, 30, 300][usize::from(c & 3)] * 1_000_000,
        ..FlowConfig::default()
    };
    if c & 0x04 != 0 {
        cfg.stream_limits = StreamLimits {
            max_buffered_bytes: 2048,
            max_buffered_segments: 4,
            ack_reorder_allowance: 2,
            ack_reorder_micros: 1_000_000,
        };
    }
    if c & 0x08 != 0 {
        cfg.parser_limits = ParserLimits {
            max_head_bytes: 256,
            max_headers: 8,
            body_prefix_bytes: 16,
            resync_at_chunk_starts: true,
        }
        .into();
    }
    let mut table = FlowTable::new(cfg.clone());
    let mut outputs = Outputs::new(&ClassifyConfig::default());
    // next[conn][side]: the byte after the highest one each side sent.
    let mut next = [[isn_a, isn_b]; 2];
    let mut now = Timestamp::from_secs_micros(1_700_000_000, 0);
    // Exchanges as the table frames them (see `pass_on`).
    let mut framed = Vec::new();
    while let (Some(ctl), Some(flags), Some(dt)) = (r.u8(), r.u8(), r.u8()) {
        let (side, conn) = (usize::from(ctl & 1), usize::from((ctl >> 1) & 1));
        let mut missing = 0;
        let seq = match (ctl >> 2) & 3 {
            0 => next[conn][side],
            1 => match r.i16() {
                Some(d) => next[conn][side].wrapping_add(d as i32 as u32),
                None => break,
            },
            2 => match r.u32() {
                Some(o) => [isn_a, isn_b][side].wrapping_add(o),
                None => break,
            },
            _ => match (r.i16(), r.u16()) {
                (Some(d), Some(m)) => {
                    missing = u32::from(m);
                    next[conn][side].wrapping_add(d as i32 as u32)
                }
                _ => break,
            },
        };
        let ack = if ctl & 0x10 == 0 {
            next[conn][1 - side]
        } else {
            match r.i16() {
                Some(d) => next[conn][1 - side].wrapping_add(d as i32 as u32),
                None => break,
            }
        };
        let Some(len) = r.u16() else { break };
        let payload = r.bytes(usize::from(len));
        now = now.saturating_add_micros(if dt < 200 {
            i64::from(dt) * 1000
        } else {
            i64::from(dt - 199) * 1_000_000
        });
        let flags = TcpFlags(flags);
        let end = seq
            .wrapping_add(u32::from(flags.syn()))
            .wrapping_add(payload.len() as u32 + missing)
            .wrapping_add(u32::from(flags.fin()));
        if seq_diff(end, next[conn][side]) > 0 {
            next[conn][side] = end;
        }
        let seg = TcpSegment {
            ts: now,
            src: endpoint(side, conn),
            dst: endpoint(1 - side, conn),
            seq,
            ack,
            flags,
            window: 65_535,
            payload,
            missing,
        };
        table.segment(&seg, now, &mut framer(&mut framed, &cfg));
        pass_on(&mut framed, &mut table, &mut outputs);
        assert!(
            table.active_flows() <= 2,
            "{} flows from two connections",
            table.active_flows()
        );
    }
    table.finish_all(now, &mut framer(&mut framed, &cfg));
    pass_on(&mut framed, &mut table, &mut outputs);
    assert_eq!(table.active_flows(), 0, "flows left after the end");
    outputs.finish();
}

/// One segment of a seed conversation (connection 0).
#[derive(Clone, Debug)]
pub struct Seg<'a> {
    /// 0: from A (the first sender), 1: from B.
    pub side: usize,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// Capture-time step before this segment, in microseconds.
    pub dt_micros: i64,
    pub payload: &'a [u8],
    pub missing: u16,
}

/// Writes a conversation in the format [`run`] reads (default config,
/// 30 s transaction timeout).
pub fn encode(isn: [u32; 2], segs: &[Seg<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&isn[0].to_le_bytes());
    out.extend_from_slice(&isn[1].to_le_bytes());
    out.push(2);
    let mut next = isn;
    for s in segs {
        let side = s.side;
        let d = i16::try_from(seq_diff(s.seq, next[side]));
        let mut ctl = side as u8;
        let mut fields = Vec::new();
        match (d, s.missing) {
            (Ok(0), 0) => {}
            (Ok(d), 0) => {
                ctl |= 1 << 2;
                fields.extend_from_slice(&d.to_le_bytes());
            }
            (Ok(d), m) => {
                ctl |= 3 << 2;
                fields.extend_from_slice(&d.to_le_bytes());
                fields.extend_from_slice(&m.to_le_bytes());
            }
            (Err(_), _) => {
                ctl |= 2 << 2;
                fields.extend_from_slice(&s.seq.wrapping_sub(isn[side]).to_le_bytes());
            }
        }
        let ad = i16::try_from(seq_diff(s.ack, next[1 - side])).unwrap_or(0);
        if ad != 0 {
            ctl |= 0x10;
            fields.extend_from_slice(&ad.to_le_bytes());
        }
        let ms = s.dt_micros.max(0) / 1000;
        let dt = if ms < 200 {
            ms as u8
        } else {
            (199 + (ms / 1000).clamp(1, 56)) as u8
        };
        out.extend_from_slice(&[ctl, s.flags, dt]);
        out.extend_from_slice(&fields);
        let len = s.payload.len().min(usize::from(u16::MAX));
        out.extend_from_slice(&(len as u16).to_le_bytes());
        out.extend_from_slice(&s.payload[..len]);
        let flags = TcpFlags(s.flags);
        let missing = if (ctl >> 2) & 3 == 3 {
            u32::from(s.missing)
        } else {
            0
        };
        let end = s
            .seq
            .wrapping_add(u32::from(flags.syn()))
            .wrapping_add(len as u32 + missing)
            .wrapping_add(u32::from(flags.fin()));
        if seq_diff(end, next[side]) > 0 {
            next[side] = end;
        }
    }
    out
}
