//! Decoding: the only module that knows link layers, tunnels, IP and TCP.
//!
//! Contract: [`Decoder::decode`] turns one [`RawPacket`] into a
//! [`TcpSegment`] view (zero-copy: the payload borrows the packet, or the
//! decoder's fragment pool for a reassembled IP datagram) or says why the
//! packet was skipped. It never fails and never panics on any input: every
//! skip is counted in [`DecodeStats`]. Unsupported link types are counted per
//! type so the caller can report each once.
//!
//! What it knows:
//! - Link layers: Ethernet (802.3 LLC/SNAP, 802.1Q/802.1ad/QinQ at any
//!   depth, Cisco FabricPath), Linux SLL and SLL2, raw IP, BSD null/loop (family in either
//!   byte order), Cisco HDLC, PPP (and PPPoE sessions), NFLOG, IEEE 802.11
//!   (with or without radiotap; data frames with LLC/SNAP; protected frames
//!   are skipped) and MPLS label stacks.
//! - Tunnels, unwrapped and decoded inside (counted in `tunnelled`, nesting at
//!   most [`MAX_TUNNEL_DEPTH`]): GRE (with checksum, key and sequence fields,
//!   PPTP's enhanced GRE, transparent Ethernet bridging, ERSPAN I, II and
//!   III), VXLAN (UDP 4789), Geneve (UDP 6081), Teredo (UDP 3544), GTP-U
//!   (UDP 2152), IPv4/IPv6-in-IPv4/IPv6.
//! - IP: IPv4 (options, AH) and IPv6 (extension headers); fragments of both
//!   are reassembled in a bounded pool (see `fragment`); a non-final fragment
//!   answers [`Skip::Fragment`].
//!
//! Lengths: the IP length fields decide where a datagram ends, so Ethernet
//! padding and trailers (FCS) never become payload. An IPv4 total length of 0
//! (TSO, captured on the sending host) means "what was captured". A segment
//! whose TCP header is complete but whose payload the snaplen cut carries the
//! captured bytes and `missing` = wire payload length − captured; a packet
//! whose IP or TCP header is cut is [`Skip::Malformed`] and counted in
//! `truncated` too. Checksums are never verified: offloading makes them wrong
//! in captures taken on a host.
//!
//! ICMP errors quoting a TCP header, UDP, SCTP and everything else that is not
//! a TCP segment answer [`Skip::NotTcp`].
//!
//! Cost: the plain Ethernet/IPv4/TCP path allocates nothing and takes a few
//! tens of nanoseconds; the fragment pool is touched only by fragments.

mod fragment;
mod link;
#[cfg(test)]
mod tests;
mod tunnel;

use crate::capture::{LinkType, RawPacket};
use crate::clock::Timestamp;
use etherparse::{IpNumber, Ipv6ExtensionSlice, Ipv6ExtensionsSlice, LaxIpv4Slice, LaxIpv6Slice};
use fragment::{FragKey, FragmentPool};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// TCP flag bits, as on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub fn fin(self) -> bool {
        self.0 & Self::FIN != 0
    }
    pub fn syn(self) -> bool {
        self.0 & Self::SYN != 0
    }
    pub fn rst(self) -> bool {
        self.0 & Self::RST != 0
    }
    pub fn ack(self) -> bool {
        self.0 & Self::ACK != 0
    }
}

/// A validated TCP segment.
#[derive(Clone, Copy, Debug)]
pub struct TcpSegment<'a> {
    pub ts: Timestamp,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    pub ack: u32,
    pub flags: TcpFlags,
    pub window: u16,
    /// The captured payload bytes.
    pub payload: &'a [u8],
    /// Payload bytes the segment carried on the wire but the capture cut off
    /// (snaplen). The stream has a gap of this size right after `payload`.
    pub missing: u32,
}

/// Why a packet produced no segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    UnsupportedLink(LinkType),
    /// Not IP (ARP, LLDP, …) or an IP protocol other than TCP (UDP, ICMP, SCTP…).
    NotTcp,
    /// Could not be parsed (bad lengths, truncated headers).
    Malformed,
    /// An IP fragment held for reassembly (or dropped by the pool's bounds).
    Fragment,
}

#[derive(Debug)]
pub enum Decoded<'a> {
    Tcp(TcpSegment<'a>),
    Skipped(Skip),
}

/// Counters about decoding.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DecodeStats {
    pub tcp_segments: u64,
    pub not_tcp: u64,
    pub malformed: u64,
    /// Packets whose captured length was below the wire length.
    pub truncated: u64,
    pub fragments: u64,
    pub fragments_reassembled: u64,
    /// Fragments dropped: pool full, overlapping, timed out.
    pub fragments_dropped: u64,
    /// Packets carried inside a tunnel that was unwrapped (GRE, VXLAN, …).
    pub tunnelled: u64,
    /// Skipped packets per unsupported link type.
    pub unsupported_links: BTreeMap<u32, u64>,
    /// Fragments dropped because their datagram timed out (part of
    /// `fragments_dropped`).
    pub fragments_timed_out: u64,
    /// Fragments dropped to keep the pool within its byte and datagram
    /// bounds (part of `fragments_dropped`).
    pub fragments_evicted: u64,
}

impl DecodeStats {
    /// Add another decoder's counters (live workers each decode).
    pub fn merge(&mut self, o: &DecodeStats) {
        self.tcp_segments += o.tcp_segments;
        self.not_tcp += o.not_tcp;
        self.malformed += o.malformed;
        self.truncated += o.truncated;
        self.fragments += o.fragments;
        self.fragments_reassembled += o.fragments_reassembled;
        self.fragments_dropped += o.fragments_dropped;
        self.tunnelled += o.tunnelled;
        for (k, v) in &o.unsupported_links {
            *self.unsupported_links.entry(*k).or_insert(0) += v;
        }
        self.fragments_timed_out += o.fragments_timed_out;
        self.fragments_evicted += o.fragments_evicted;
    }
}

/// Bounds of the decoder (the fragment pool is its only memory).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecoderConfig {
    /// Global byte budget of the fragment pool (default 4 MiB).
    pub max_fragment_bytes: usize,
    /// Datagrams being reassembled at once (default 1024).
    pub max_fragment_datagrams: usize,
    /// A datagram not complete this long after its first fragment (capture
    /// time) is dropped (default 30 s).
    pub fragment_timeout_micros: i64,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        DecoderConfig {
            max_fragment_bytes: 4 << 20,
            max_fragment_datagrams: 1024,
            fragment_timeout_micros: 30_000_000,
        }
    }
}

/// Tunnels nested deeper than this are [`Skip::Malformed`].
pub const MAX_TUNNEL_DEPTH: u8 = 4;

/// Bound on header-peeling steps per packet (VLAN tags, MPLS labels, …):
/// each step consumes bytes, this only caps the work on hostile input.
const MAX_STEPS: usize = 64;

/// Link/tunnel/IP → TCP decoder with a bounded IP fragment pool.
#[derive(Debug)]
pub struct Decoder {
    stats: DecodeStats,
    pool: FragmentPool,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(DecoderConfig::default())
    }
}

impl Decoder {
    pub fn new(cfg: DecoderConfig) -> Self {
        Decoder {
            stats: DecodeStats::default(),
            pool: FragmentPool::new(&cfg),
        }
    }

    /// Decodes one packet (see the module doc for the contract).
    pub fn decode<'a>(&'a mut self, pkt: &RawPacket<'a>) -> Decoded<'a> {
        let Decoder { stats, pool } = self;
        let mut cx = Cx {
            ts: pkt.ts,
            stats,
            pool: Some(pool),
            tunnels: 0,
            truncated: (pkt.data.len() as u64) < u64::from(pkt.wire_len),
        };
        let out = run(&mut cx, link::start(pkt.link, pkt.data));
        let s = &mut *cx.stats;
        match out {
            Decoded::Tcp(_) => s.tcp_segments += 1,
            Decoded::Skipped(Skip::NotTcp) => s.not_tcp += 1,
            Decoded::Skipped(Skip::Malformed) => s.malformed += 1,
            Decoded::Skipped(Skip::Fragment) => {}
            Decoded::Skipped(Skip::UnsupportedLink(lt)) => {
                *s.unsupported_links.entry(lt.0).or_insert(0) += 1
            }
        }
        if cx.truncated {
            s.truncated += 1;
        }
        if cx.tunnels > 0 {
            s.tunnelled += 1;
        }
        out
    }

    pub fn stats(&self) -> &DecodeStats {
        &self.stats
    }

    /// Datagrams and bytes currently held for reassembly.
    pub fn fragment_pool_usage(&self) -> (usize, usize) {
        self.pool.usage()
    }
}

/// Per-packet decoding state.
struct Cx<'a> {
    ts: Timestamp,
    stats: &'a mut DecodeStats,
    /// Taken by the first reassembly: a datagram rebuilt from the pool cannot
    /// feed the pool again (its inner fragments are dropped).
    pool: Option<&'a mut FragmentPool>,
    tunnels: u8,
    truncated: bool,
}

/// The next layer to peel, or the answer.
#[derive(Debug)]
enum Next<'a> {
    /// An Ethernet II / 802.3 frame, header included.
    Ethernet(&'a [u8]),
    /// The bytes following an EtherType.
    EtherType(u16, &'a [u8]),
    /// An IP packet; the version comes from its first nibble.
    Ip(&'a [u8]),
    /// A PPP frame (optional address/control, then the protocol field).
    Ppp(&'a [u8]),
    /// An 802.11 MAC frame.
    Ieee80211(&'a [u8]),
    Done(Decoded<'a>),
}

const fn skip<'a>(s: Skip) -> Next<'a> {
    Next::Done(Decoded::Skipped(s))
}

fn run<'a>(cx: &mut Cx<'a>, mut next: Next<'a>) -> Decoded<'a> {
    for _ in 0..MAX_STEPS {
        next = match next {
            Next::Ethernet(b) => link::ethernet(b),
            Next::EtherType(t, b) => link::ether_type(t, b),
            Next::Ppp(b) => link::ppp(b),
            Next::Ieee80211(b) => link::ieee80211(b),
            Next::Ip(b) => ip(cx, b),
            Next::Done(d) => return d,
        };
    }
    Decoded::Skipped(Skip::Malformed)
}

fn ip<'a>(cx: &mut Cx<'a>, b: &'a [u8]) -> Next<'a> {
    match b.first().map(|v| v >> 4) {
        Some(4) => ipv4(cx, b),
        Some(6) => ipv6(cx, b),
        None => {
            cx.truncated = true;
            skip(Skip::Malformed)
        }
        _ => skip(Skip::Malformed),
    }
}

fn v4_key_addr(a: [u8; 4]) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..4].copy_from_slice(&a);
    k
}

fn ipv4<'a>(cx: &mut Cx<'a>, b: &'a [u8]) -> Next<'a> {
    let (s, _auth_err) = match LaxIpv4Slice::from_slice(b) {
        Ok(v) => v,
        Err(etherparse::err::ipv4::HeaderSliceError::Len(_)) => {
            cx.truncated = true;
            return skip(Skip::Malformed);
        }
        Err(_) => return skip(Skip::Malformed),
    };
    let h = s.header();
    let src = IpAddr::V4(Ipv4Addr::from(h.source()));
    let dst = IpAddr::V4(Ipv4Addr::from(h.destination()));
    let payload = s.payload();
    if payload.incomplete {
        cx.truncated = true;
    }
    if h.is_fragmenting_payload() {
        // The raw IP payload: an AH in a non-first fragment is just data.
        let hl = h.slice().len();
        let total = usize::from(h.total_len());
        let end = if total < hl {
            b.len()
        } else {
            total.min(b.len())
        };
        let data = &b[hl..end];
        let key = FragKey {
            src: v4_key_addr(h.source()),
            dst: v4_key_addr(h.destination()),
            id: u32::from(h.identification()),
            proto: h.protocol().0,
            v6: false,
        };
        let offset = u32::from(h.fragments_offset().byte_offset());
        let proto = h.protocol();
        return match fragment(
            cx,
            key,
            offset,
            h.more_fragments(),
            data,
            payload.incomplete,
        ) {
            Some(buf) => transport(cx, proto, src, dst, buf, 0),
            None => skip(Skip::Fragment),
        };
    }
    let missing = if payload.incomplete {
        usize::from(h.total_len()).saturating_sub(b.len()) as u32
    } else {
        0
    };
    transport(cx, payload.ip_number, src, dst, payload.payload, missing)
}

fn ipv6<'a>(cx: &mut Cx<'a>, b: &'a [u8]) -> Next<'a> {
    let (s, ext_err) = match LaxIpv6Slice::from_slice(b) {
        Ok(v) => v,
        Err(etherparse::err::ipv6::HeaderSliceError::Len(_)) => {
            cx.truncated = true;
            return skip(Skip::Malformed);
        }
        Err(_) => return skip(Skip::Malformed),
    };
    let h = s.header();
    let src = IpAddr::V6(Ipv6Addr::from(h.source()));
    let dst = IpAddr::V6(Ipv6Addr::from(h.destination()));
    let payload = s.payload();
    if payload.incomplete {
        cx.truncated = true;
    }
    if payload.fragmented {
        let Some(frag) = s.extensions().clone().into_iter().find_map(|e| match e {
            Ipv6ExtensionSlice::Fragment(f) => Some(f),
            _ => None,
        }) else {
            return skip(Skip::Malformed);
        };
        // Everything after the fragment header up to the end of the datagram.
        let start = frag.slice().as_ptr() as usize - b.as_ptr() as usize + frag.slice().len();
        let declared = 40 + usize::from(h.payload_length());
        let end = if h.payload_length() == 0 {
            b.len()
        } else {
            declared.min(b.len())
        };
        let data = b.get(start..end).unwrap_or(&[]);
        let key = FragKey {
            src: h.source(),
            dst: h.destination(),
            id: frag.identification(),
            proto: frag.next_header().0,
            v6: true,
        };
        let offset = u32::from(frag.fragment_offset().byte_offset());
        let next = frag.next_header();
        return match fragment(
            cx,
            key,
            offset,
            frag.more_fragments(),
            data,
            payload.incomplete,
        ) {
            Some(buf) => {
                let (_, proto, inner, err) = Ipv6ExtensionsSlice::from_slice_lax(next, buf);
                if err.is_some() {
                    return skip(Skip::Malformed);
                }
                transport(cx, proto, src, dst, inner, 0)
            }
            None => skip(Skip::Fragment),
        };
    }
    if let Some((e, _)) = ext_err {
        if matches!(e, etherparse::err::ipv6_exts::HeaderSliceError::Len(_)) {
            cx.truncated = true;
        }
        return skip(Skip::Malformed);
    }
    let missing = if payload.incomplete {
        (40 + usize::from(h.payload_length())).saturating_sub(b.len()) as u32
    } else {
        0
    };
    transport(cx, payload.ip_number, src, dst, payload.payload, missing)
}

/// Hands a fragment to the pool; the reassembled transport payload when it
/// completes a datagram.
fn fragment<'a>(
    cx: &mut Cx<'a>,
    key: FragKey,
    offset: u32,
    more: bool,
    data: &[u8],
    incomplete: bool,
) -> Option<&'a [u8]> {
    cx.stats.fragments += 1;
    if incomplete {
        // A fragment cut by the snaplen can never complete its datagram.
        cx.stats.fragments_dropped += 1;
        return None;
    }
    let Some(pool) = cx.pool.take() else {
        // Fragments inside a datagram that was itself reassembled.
        cx.stats.fragments_dropped += 1;
        return None;
    };
    pool.insert(key, offset, more, data, cx.ts.as_micros(), cx.stats)
}

/// Dispatches on the IP protocol of a datagram's payload.
fn transport<'a>(
    cx: &mut Cx<'a>,
    proto: IpNumber,
    src: IpAddr,
    dst: IpAddr,
    payload: &'a [u8],
    missing: u32,
) -> Next<'a> {
    let inner = match proto {
        IpNumber::TCP => return Next::Done(tcp(cx, src, dst, payload, missing)),
        IpNumber::IPV4 | IpNumber::IPV6 => Next::Ip(payload),
        IpNumber::GRE => tunnel::gre(payload),
        IpNumber::UDP => match tunnel::udp(payload) {
            Some(n) => n,
            None => return skip(Skip::NotTcp),
        },
        _ => return skip(Skip::NotTcp),
    };
    cx.tunnels += 1;
    if cx.tunnels > MAX_TUNNEL_DEPTH {
        return skip(Skip::Malformed);
    }
    inner
}

fn tcp<'a>(cx: &mut Cx<'a>, src: IpAddr, dst: IpAddr, b: &'a [u8], missing: u32) -> Decoded<'a> {
    let h = match etherparse::TcpHeaderSlice::from_slice(b) {
        Ok(h) => h,
        Err(etherparse::err::tcp::HeaderSliceError::Len(_)) => {
            cx.truncated = true;
            return Decoded::Skipped(Skip::Malformed);
        }
        Err(_) => return Decoded::Skipped(Skip::Malformed),
    };
    let hl = h.slice().len();
    Decoded::Tcp(TcpSegment {
        ts: cx.ts,
        src: SocketAddr::new(src, h.source_port()),
        dst: SocketAddr::new(dst, h.destination_port()),
        seq: h.sequence_number(),
        ack: h.acknowledgment_number(),
        flags: TcpFlags(b[13]),
        window: h.window_size(),
        payload: &b[hl..],
        missing,
    })
}

#[inline]
fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}
