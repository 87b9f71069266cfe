//! `decode`: link layers, tunnels, IP fragments and TCP headers.
//!
//! Input: `[link][pool]` then packets, each `[len: u16 LE][meta][len bytes]`
//! (the last may be short). `link` picks from [`LINKS`] (modulo), `pool`
//! sizes the fragment pool small so eviction and timeouts happen. `meta`:
//! bits 0-5 time step in 100 ms units, bit 6 the packet was cut by the
//! snaplen (wire length = captured + 1000), bit 7 a 40 s jump (past the
//! fragment timeout). One fresh [`Decoder`] per input, fed every packet, so
//! fragments of one datagram in separate packets meet in the pool.

use crate::Reader;
use apitap::capture::{LinkType, RawPacket};
use apitap::clock::Timestamp;
use apitap::decode::{Decoded, Decoder, DecoderConfig, Skip};

/// Link types the decoder knows, plus one it does not (147, user 0).
pub const LINKS: [u32; 15] = [
    1, 0, 108, 101, 228, 229, 12, 14, 104, 113, 276, 239, 105, 127, 9,
];

/// Link types beyond the list fall back to one the decoder does not know.
const UNKNOWN_LINK: u32 = 147;

pub fn link_index(link: u32) -> Option<u8> {
    LINKS.iter().position(|&l| l == link).map(|i| i as u8)
}

pub fn run(data: &[u8]) {
    let mut r = Reader::new(data);
    let (Some(link), Some(pool)) = (r.u8(), r.u8()) else {
        return;
    };
    let link = LinkType(
        LINKS
            .get(usize::from(link) % (LINKS.len() + 1))
            .copied()
            .unwrap_or(UNKNOWN_LINK),
    );
    let cfg = DecoderConfig {
        max_fragment_bytes: 256 << (pool & 7),
        max_fragment_datagrams: 1 + usize::from((pool >> 3) & 7),
        fragment_timeout_micros: if pool & 0x40 != 0 {
            1_000_000
        } else {
            30_000_000
        },
    };
    let mut decoder = Decoder::new(cfg.clone());
    let mut ts = Timestamp::from_secs_micros(1_700_000_000, 0);
    let (mut tcp, mut not_tcp, mut malformed, mut unsupported) = (0u64, 0u64, 0u64, 0u64);
    while let (Some(len), Some(meta)) = (r.u16(), r.u8()) {
        let bytes = r.bytes(usize::from(len));
        ts = ts.saturating_add_micros(i64::from(meta & 0x3f) * 100_000);
        if meta & 0x80 != 0 {
            ts = ts.saturating_add_micros(40_000_000);
        }
        let cut = meta & 0x40 != 0;
        let pkt = RawPacket {
            ts,
            link,
            data: bytes,
            wire_len: bytes.len() as u32 + if cut { 1000 } else { 0 },
        };
        match decoder.decode(&pkt) {
            Decoded::Tcp(seg) => {
                tcp += 1;
                // INVARIANT: an IP datagram (even rebuilt from fragments) is
                // at most 64 KiB, so its TCP payload is too.
                assert!(
                    seg.payload.len() <= 65_535,
                    "payload longer than an IP datagram"
                );
            }
            Decoded::Skipped(Skip::NotTcp) => not_tcp += 1,
            Decoded::Skipped(Skip::Malformed) => malformed += 1,
            Decoded::Skipped(Skip::UnsupportedLink(_)) => unsupported += 1,
            Decoded::Skipped(Skip::Fragment) => {}
        }
        let (datagrams, bytes) = decoder.fragment_pool_usage();
        assert!(
            datagrams <= cfg.max_fragment_datagrams,
            "fragment pool holds {datagrams} datagrams, bound {}",
            cfg.max_fragment_datagrams
        );
        assert!(
            bytes <= cfg.max_fragment_bytes,
            "fragment pool holds {bytes} bytes, bound {}",
            cfg.max_fragment_bytes
        );
    }
    let s = decoder.stats();
    assert_eq!(s.tcp_segments, tcp);
    assert_eq!(s.not_tcp, not_tcp);
    assert_eq!(s.malformed, malformed);
    assert_eq!(s.unsupported_links.values().sum::<u64>(), unsupported);
    assert!(s.fragments_timed_out + s.fragments_evicted <= s.fragments_dropped);
}

/// One seed: `link` (a value of [`LINKS`]) and packets as `(gap in 100 ms
/// units, cut, bytes)`.
pub fn encode(link_idx: u8, packets: &[(u8, bool, &[u8])]) -> Vec<u8> {
    let mut out = vec![link_idx, 0x07];
    for &(step, cut, bytes) in packets {
        let len = bytes.len().min(usize::from(u16::MAX));
        out.extend_from_slice(&(len as u16).to_le_bytes());
        out.push(step.min(0x3f) | if cut { 0x40 } else { 0 });
        out.extend_from_slice(&bytes[..len]);
    }
    out
}
