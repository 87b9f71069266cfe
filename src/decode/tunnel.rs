//! Tunnel headers: GRE (IP protocol 47) and the UDP encapsulations VXLAN,
//! Geneve, Teredo and GTP-U (mobile core networks). Each peels its header and says what is inside; the
//! caller counts the nesting depth.

use super::{be16, skip, Next, Skip};

const VXLAN_PORT: u16 = 4789;
const GENEVE_PORT: u16 = 6081;
const TEREDO_PORT: u16 = 3544;
const GTP_U_PORT: u16 = 2152;

/// GRE version 0 (RFC 2784/2890: optional checksum, key and sequence words)
/// and version 1 (PPTP's enhanced GRE, carrying PPP).
pub(super) fn gre(b: &[u8]) -> Next<'_> {
    let (Some(flags), Some(proto)) = (be16(b, 0), be16(b, 2)) else {
        return skip(Skip::Malformed);
    };
    let checksum = flags & 0x8000 != 0;
    let routing = flags & 0x4000 != 0;
    let key = flags & 0x2000 != 0;
    let seq = flags & 0x1000 != 0;
    let version = flags & 0x0007;
    let mut hl = 4;
    match version {
        0 => {
            if routing {
                // Source-routed GRE (RFC 1701) is obsolete.
                return skip(Skip::NotTcp);
            }
            hl += 4 * (usize::from(checksum) + usize::from(key) + usize::from(seq));
        }
        1 => {
            let ack = flags & 0x0080 != 0;
            hl += 4 + 4 * (usize::from(seq) + usize::from(ack));
        }
        _ => return skip(Skip::NotTcp),
    }
    let Some(payload) = b.get(hl..) else {
        return skip(Skip::Malformed);
    };
    if proto == 0x88BE && !seq {
        // ERSPAN type I: no ERSPAN header, no GRE sequence number.
        return Next::Ethernet(payload);
    }
    Next::EtherType(proto, payload)
}

/// A UDP datagram: the tunnel inside, or `None` when it is plain UDP.
pub(super) fn udp(b: &[u8]) -> Option<Next<'_>> {
    let (sport, dport, len) = (be16(b, 0)?, be16(b, 2)?, be16(b, 4)?);
    let len = usize::from(len);
    // UDP's own length bounds the payload (0 = jumbo/unknown: all of it).
    let data = if (8..=b.len()).contains(&len) {
        &b[8..len]
    } else {
        b.get(8..)?
    };
    if dport == VXLAN_PORT {
        return Some(vxlan(data));
    }
    if dport == GENEVE_PORT {
        return Some(geneve(data));
    }
    if sport == TEREDO_PORT || dport == TEREDO_PORT {
        return teredo(data);
    }
    if sport == GTP_U_PORT || dport == GTP_U_PORT {
        return gtp_u(data);
    }
    None
}

/// VXLAN: 8 bytes, the I flag must be set; an Ethernet frame follows.
fn vxlan(b: &[u8]) -> Next<'_> {
    match (b.first(), b.get(8..)) {
        (Some(f), Some(frame)) if f & 0x08 != 0 => Next::Ethernet(frame),
        (Some(_), Some(_)) => skip(Skip::NotTcp),
        _ => skip(Skip::Malformed),
    }
}

/// Geneve: 8 bytes plus options (length in 4-byte words), then the
/// protocol named by its EtherType field.
fn geneve(b: &[u8]) -> Next<'_> {
    let (Some(&v), Some(proto)) = (b.first(), be16(b, 2)) else {
        return skip(Skip::Malformed);
    };
    if v >> 6 != 0 {
        return skip(Skip::NotTcp);
    }
    let hl = 8 + 4 * usize::from(v & 0x3f);
    match b.get(hl..) {
        Some(inner) => Next::EtherType(proto, inner),
        None => skip(Skip::Malformed),
    }
}

/// Teredo (RFC 4380): optional authentication and origin indication
/// headers, then an IPv6 packet. Anything else on the port is not a tunnel.
fn teredo(mut b: &[u8]) -> Option<Next<'_>> {
    if b.len() >= 4 && b[0] == 0 && b[1] == 1 {
        // Authentication: id length, auth length, id, auth, nonce(8), confirmation(1).
        let hl = 4 + usize::from(b[2]) + usize::from(b[3]) + 9;
        b = b.get(hl..)?;
    }
    if b.len() >= 2 && b[0] == 0 && b[1] == 0 {
        // Origin indication: 8 bytes.
        b = b.get(8..)?;
    }
    if b.len() >= 40 && b[0] >> 4 == 6 {
        Some(Next::Ip(b))
    } else {
        None
    }
}

/// GTP-U version 1 (UDP 2152): an 8-byte header, 4 more bytes when any of
/// the E/S/PN flags is set, then a chain of extension headers (length in
/// 4-byte units, next type in the last byte). Only G-PDUs (type 0xFF) carry
/// user packets; signalling on the port is not a tunnel.
fn gtp_u(b: &[u8]) -> Option<Next<'_>> {
    let (&flags, &msg) = (b.first()?, b.get(1)?);
    if flags >> 5 != 1 || flags & 0x10 == 0 || msg != 0xFF {
        return None;
    }
    let mut hl = 8;
    if flags & 0x07 != 0 {
        let mut next_ext = *b.get(11)?;
        hl = 12;
        while next_ext != 0 {
            let len = usize::from(*b.get(hl)?) * 4;
            if len == 0 {
                return Some(skip(Skip::Malformed));
            }
            next_ext = *b.get(hl + len - 1)?;
            hl += len;
        }
    }
    let inner = b.get(hl..)?;
    match inner.first().map(|v| v >> 4) {
        Some(4) | Some(6) => Some(Next::Ip(inner)),
        _ => None,
    }
}
