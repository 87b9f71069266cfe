//! Link layers and the EtherType-keyed layers between them and IP (VLAN,
//! MPLS, PPPoE, PPP, LLC/SNAP, ERSPAN, Cisco FabricPath).
//!
//! Each function peels one header and says what comes next; none of them
//! allocates or panics (every read is bounds-checked through `get`).

use super::{be16, skip, Next, Skip};
use crate::capture::LinkType;

const ETH_IPV4: u16 = 0x0800;
const ETH_IPV6: u16 = 0x86DD;
const ETH_VLAN: u16 = 0x8100;
const ETH_QINQ: u16 = 0x88A8;
const ETH_QINQ_OLD1: u16 = 0x9100;
const ETH_QINQ_OLD2: u16 = 0x9200;
const ETH_QINQ_OLD3: u16 = 0x9300;
const ETH_MPLS_UC: u16 = 0x8847;
const ETH_MPLS_MC: u16 = 0x8848;
const ETH_PPPOE_SESSION: u16 = 0x8864;
const ETH_PPP: u16 = 0x880B;
const ETH_TEB: u16 = 0x6558;
const ETH_ERSPAN2: u16 = 0x88BE;
const ETH_ERSPAN3: u16 = 0x22EB;
const ETH_FABRICPATH: u16 = 0x8903;

/// The first layer of a frame of link type `link`.
pub(super) fn start(link: LinkType, b: &[u8]) -> Next<'_> {
    match link.0 {
        1 => Next::Ethernet(b),
        0 | 108 => null_loop(b),
        // 12 and 14 are DLT_RAW on some BSDs, written as-is by old tools.
        101 | 228 | 229 | 12 | 14 => Next::Ip(b),
        104 => chdlc(b),
        113 => sll(b),
        276 => sll2(b),
        239 => nflog(b),
        105 => Next::Ieee80211(b),
        127 => radiotap(b),
        // LINKTYPE_PPP, LINKTYPE_PPP_HDLC.
        9 | 50 => Next::Ppp(b),
        _ => skip(Skip::UnsupportedLink(link)),
    }
}

pub(super) fn ethernet(b: &[u8]) -> Next<'_> {
    let Some(t) = be16(b, 12) else {
        return skip(Skip::Malformed);
    };
    let rest = &b[14..];
    if t <= 1500 {
        llc(rest)
    } else if t < 0x0600 {
        skip(Skip::Malformed)
    } else {
        Next::EtherType(t, rest)
    }
}

/// 802.2 LLC: only SNAP carries an EtherType we can follow.
fn llc(b: &[u8]) -> Next<'_> {
    if b.len() >= 3 && b[0] == 0xAA && b[1] == 0xAA && b[2] == 0x03 {
        match be16(b, 6) {
            Some(t) => Next::EtherType(t, &b[8..]),
            None => skip(Skip::Malformed),
        }
    } else {
        skip(Skip::NotTcp)
    }
}

pub(super) fn ether_type(t: u16, b: &[u8]) -> Next<'_> {
    match t {
        ETH_IPV4 | ETH_IPV6 => Next::Ip(b),
        ETH_VLAN | ETH_QINQ | ETH_QINQ_OLD1 | ETH_QINQ_OLD2 | ETH_QINQ_OLD3 => match be16(b, 2) {
            Some(inner) => Next::EtherType(inner, &b[4..]),
            None => skip(Skip::Malformed),
        },
        ETH_MPLS_UC | ETH_MPLS_MC => mpls(b),
        ETH_PPPOE_SESSION => pppoe(b),
        ETH_PPP => Next::Ppp(b),
        ETH_TEB => Next::Ethernet(b),
        // Cisco FabricPath: FTag/TTL (2 bytes) after the outer addresses
        // and EtherType, then the classical Ethernet frame.
        ETH_FABRICPATH => match b.get(2..) {
            Some(f) => Next::Ethernet(f),
            None => skip(Skip::Malformed),
        },
        // ERSPAN type II: 8-byte header, then the mirrored frame. (Type I,
        // without a header, is told apart by GRE; see `tunnel::gre`.)
        ETH_ERSPAN2 => match b.get(8..) {
            Some(f) => Next::Ethernet(f),
            None => skip(Skip::Malformed),
        },
        // ERSPAN type III: 12 bytes, plus an 8-byte platform-specific
        // subheader when the O flag (last bit of the header) is set.
        ETH_ERSPAN3 => {
            let Some(&last) = b.get(11) else {
                return skip(Skip::Malformed);
            };
            let hl = if last & 1 != 0 { 20 } else { 12 };
            match b.get(hl..) {
                Some(f) => Next::Ethernet(f),
                None => skip(Skip::Malformed),
            }
        }
        _ => skip(Skip::NotTcp),
    }
}

/// An MPLS label stack, then IP guessed by the first nibble, or an Ethernet
/// pseudowire behind a control word (first nibble 0).
fn mpls(b: &[u8]) -> Next<'_> {
    let mut i = 0;
    loop {
        let Some(label) = b.get(i..i + 4) else {
            return skip(Skip::Malformed);
        };
        i += 4;
        if label[2] & 1 != 0 {
            break;
        }
    }
    let rest = &b[i..];
    match rest.first().map(|v| v >> 4) {
        Some(4) | Some(6) => Next::Ip(rest),
        Some(0) if rest.len() >= 4 + 14 => Next::Ethernet(&rest[4..]),
        Some(_) => skip(Skip::NotTcp),
        None => skip(Skip::Malformed),
    }
}

/// PPPoE session stage: 6-byte header, then PPP (protocol field only).
fn pppoe(b: &[u8]) -> Next<'_> {
    let (Some(&code), Some(len)) = (b.get(1), be16(b, 4)) else {
        return skip(Skip::Malformed);
    };
    if code != 0 {
        return skip(Skip::NotTcp);
    }
    let rest = &b[6..];
    Next::Ppp(&rest[..usize::from(len).min(rest.len())])
}

/// PPP: optional HDLC address/control (FF 03), then a 1- or 2-byte protocol.
pub(super) fn ppp(b: &[u8]) -> Next<'_> {
    let b = if b.len() >= 2 && b[0] == 0xFF && b[1] == 0x03 {
        &b[2..]
    } else {
        b
    };
    let Some(&first) = b.first() else {
        return skip(Skip::Malformed);
    };
    // An odd first byte is a compressed (1-byte) protocol field.
    let (proto, rest) = if first & 1 == 1 {
        (u16::from(first), &b[1..])
    } else {
        match be16(b, 0) {
            Some(p) => (p, &b[2..]),
            None => return skip(Skip::Malformed),
        }
    };
    match proto {
        0x0021 | 0x0057 => Next::Ip(rest),
        0x0281 | 0x0283 => mpls(rest),
        _ => skip(Skip::NotTcp),
    }
}

fn chdlc(b: &[u8]) -> Next<'_> {
    match be16(b, 2) {
        Some(t) => Next::EtherType(t, &b[4..]),
        None => skip(Skip::Malformed),
    }
}

/// BSD null (host byte order) and loop (network byte order): a 4-byte
/// address family. Either byte order is accepted for both.
fn null_loop(b: &[u8]) -> Next<'_> {
    let Some(h) = b.get(..4) else {
        return skip(Skip::Malformed);
    };
    let le = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let be = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    let known = |f: u32| matches!(f, 2 | 24 | 28 | 30);
    if known(le) || known(be) {
        Next::Ip(&b[4..])
    } else {
        skip(Skip::NotTcp)
    }
}

fn sll_protocol(proto: u16, rest: &[u8]) -> Next<'_> {
    match proto {
        // LINUX_SLL_P_802_2: an LLC header follows.
        0x0004 => llc(rest),
        // Other values below 0x0600 are Linux pseudo-protocols (802.3, CAN, …).
        p if p < 0x0600 => skip(Skip::NotTcp),
        p => Next::EtherType(p, rest),
    }
}

/// Linux cooked capture v1: 16 bytes, protocol last.
fn sll(b: &[u8]) -> Next<'_> {
    match be16(b, 14) {
        Some(p) => sll_protocol(p, &b[16..]),
        None => skip(Skip::Malformed),
    }
}

/// Linux cooked capture v2: 20 bytes, protocol first.
fn sll2(b: &[u8]) -> Next<'_> {
    match (be16(b, 0), b.get(20..)) {
        (Some(p), Some(rest)) => sll_protocol(p, rest),
        _ => skip(Skip::Malformed),
    }
}

/// NFLOG: a 4-byte header, then TLVs (length and type in the capturing
/// host's byte order, length including the 4-byte TLV header, padded to 4).
/// The packet is the payload TLV (type 9).
fn nflog(b: &[u8]) -> Next<'_> {
    const NFULA_PAYLOAD: u16 = 9;
    let Some(tlvs) = b.get(4..) else {
        return skip(Skip::Malformed);
    };
    // Decide the byte order from the first TLV: its length must fit.
    let fits = |len: u16| len >= 4 && usize::from(len) <= tlvs.len();
    let big_endian = match tlvs.get(..2) {
        Some(l) => {
            !fits(u16::from_le_bytes([l[0], l[1]])) && fits(u16::from_be_bytes([l[0], l[1]]))
        }
        None => return skip(Skip::NotTcp),
    };
    let rd = |at: usize| -> Option<u16> {
        let v = [*tlvs.get(at)?, *tlvs.get(at + 1)?];
        Some(if big_endian {
            u16::from_be_bytes(v)
        } else {
            u16::from_le_bytes(v)
        })
    };
    let mut at = 0usize;
    while at + 4 <= tlvs.len() {
        let (Some(len), Some(ty)) = (rd(at), rd(at + 2)) else {
            break;
        };
        let len = usize::from(len);
        if len < 4 || at + len > tlvs.len() {
            return skip(Skip::Malformed);
        }
        if ty & 0x7fff == NFULA_PAYLOAD {
            return Next::Ip(&tlvs[at + 4..at + len]);
        }
        at += (len + 3) & !3;
    }
    skip(Skip::NotTcp)
}

/// Radiotap: a little-endian length, then the 802.11 frame.
fn radiotap(b: &[u8]) -> Next<'_> {
    let (Some(&0), Some(l)) = (b.first(), b.get(2..4)) else {
        return skip(Skip::Malformed);
    };
    let len = usize::from(u16::from_le_bytes([l[0], l[1]]));
    match b.get(len..) {
        Some(frame) if len >= 8 => Next::Ieee80211(frame),
        _ => skip(Skip::Malformed),
    }
}

/// IEEE 802.11: data frames only, not protected; the header length depends
/// on the address-4 field (to-DS and from-DS), QoS control and HT control.
pub(super) fn ieee80211(b: &[u8]) -> Next<'_> {
    let (Some(&fc0), Some(&fc1)) = (b.first(), b.get(1)) else {
        return skip(Skip::Malformed);
    };
    let version = fc0 & 0x03;
    let ftype = (fc0 >> 2) & 0x03;
    let subtype = fc0 >> 4;
    if version != 0 || ftype != 2 || subtype & 0x04 != 0 {
        // Not a data frame, or a "null" data frame without a body.
        return skip(Skip::NotTcp);
    }
    if fc1 & 0x40 != 0 {
        // Protected: we cannot decrypt it.
        return skip(Skip::NotTcp);
    }
    let mut hl = 24;
    if fc1 & 0x03 == 0x03 {
        hl += 6;
    }
    if subtype & 0x08 != 0 {
        // QoS data: 2 bytes of QoS control; bit 7 announces an A-MSDU,
        // whose subframes we do not split.
        match b.get(hl) {
            Some(q) if q & 0x80 != 0 => return skip(Skip::NotTcp),
            Some(_) => {}
            None => return skip(Skip::Malformed),
        }
        hl += 2;
        if fc1 & 0x80 != 0 {
            hl += 4;
        }
    }
    match b.get(hl..) {
        Some(body) => llc(body),
        None => skip(Skip::Malformed),
    }
}
