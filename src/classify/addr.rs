//! Is a server address public? The IANA special-purpose address registries
//! (IPv4 and IPv6), plus multicast and the operator's internal networks.
//!
//! Contract: [`special_purpose`] names the special range an address falls
//! in, or `None` when it is globally reachable unicast. Embedded IPv4
//! (IPv4-mapped, NAT64 well-known prefix, 6to4) is judged by the IPv4 inside.
//! [`Cidr`] parses `addr/len` for configured internal networks.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// A network, e.g. `10.20.0.0/16` or `2001:db8::/32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                prefix_eq(u32::from(n) as u128, u32::from(a) as u128, self.len, 32)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                prefix_eq(u128::from(n), u128::from(a), self.len, 128)
            }
            _ => false,
        }
    }
}

fn prefix_eq(net: u128, a: u128, len: u8, bits: u8) -> bool {
    if len == 0 {
        return true;
    }
    let shift = bits - len;
    (net >> shift) == (a >> shift)
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an address or network (e.g. 10.0.0.0/8)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match l {
            Some(l) => l
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|&n| n <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0 to {max}"))?,
            None => max,
        };
        Ok(Cidr { addr, len })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// IPv4-mapped IPv6 addresses are IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// (network, prefix length, name), IANA IPv4 special-purpose registry
/// entries that are not globally reachable, plus multicast.
const V4: &[([u8; 4], u8, &str)] = &[
    ([0, 0, 0, 0], 8, "this-network"),
    ([10, 0, 0, 0], 8, "private"),
    ([100, 64, 0, 0], 10, "shared (CGNAT)"),
    ([127, 0, 0, 0], 8, "loopback"),
    ([169, 254, 0, 0], 16, "link-local"),
    ([172, 16, 0, 0], 12, "private"),
    ([192, 0, 0, 0], 24, "IETF protocol assignments"),
    ([192, 0, 2, 0], 24, "documentation"),
    ([192, 88, 99, 0], 24, "deprecated 6to4 relay anycast"),
    ([192, 168, 0, 0], 16, "private"),
    ([198, 18, 0, 0], 15, "benchmarking"),
    ([198, 51, 100, 0], 24, "documentation"),
    ([203, 0, 113, 0], 24, "documentation"),
    ([224, 0, 0, 0], 4, "multicast"),
    ([255, 255, 255, 255], 32, "broadcast"),
    ([240, 0, 0, 0], 4, "reserved"),
];

/// Globally reachable exceptions inside the ranges above (PCP and TURN
/// anycast in 192.0.0.0/24).
const V4_GLOBAL: &[[u8; 4]] = &[[192, 0, 0, 9], [192, 0, 0, 10]];

/// The IPv6 counterpart of [`V4`] (IANA IPv6 special-purpose registry,
/// multicast, deprecated site-local).
const V6: &[(u128, u8, &str)] = &[
    (0, 128, "unspecified"),
    (1, 128, "loopback"),
    (
        0x0064_ff9b_0001_u128 << 80,
        48,
        "local-use IPv4/IPv6 translation",
    ),
    (0x0100_u128 << 112, 64, "discard-only"),
    (0x0100_0000_0000_0001_u128 << 64, 64, "dummy prefix"),
    (0x2001_0002_u128 << 96, 48, "benchmarking"),
    (0x2001_u128 << 112, 23, "IETF protocol assignments"),
    (0x2001_0db8_u128 << 96, 32, "documentation"),
    (0x3fff_u128 << 112, 20, "documentation"),
    (0x5f00_u128 << 112, 16, "segment routing (SRv6) SIDs"),
    (0xfc00_u128 << 112, 7, "unique-local"),
    (0xfe80_u128 << 112, 10, "link-local"),
    (0xfec0_u128 << 112, 10, "site-local (deprecated)"),
    (0xff00_u128 << 112, 8, "multicast"),
];

/// Globally reachable exceptions inside 2001::/23.
const V6_GLOBAL: &[(u128, u8)] = &[
    ((0x2001_0001_u128 << 96) | 1, 128),
    ((0x2001_0001_u128 << 96) | 2, 128),
    ((0x2001_0001_u128 << 96) | 3, 128),
    (0x2001_0003_u128 << 96, 32),
    (0x2001_0004_0112_u128 << 80, 48),
    (0x2001_0020_u128 << 96, 28),
    (0x2001_0030_u128 << 96, 28),
];

/// The special-purpose range `ip` is in, or `None` when it is public.
pub fn special_purpose(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let a = u32::from(ip) as u128;
    if V4_GLOBAL
        .iter()
        .any(|g| u32::from_be_bytes(*g) as u128 == a)
    {
        return None;
    }
    V4.iter()
        .find(|(n, l, _)| prefix_eq(u32::from_be_bytes(*n) as u128, a, *l, 32))
        .map(|(_, _, name)| *name)
}

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let a = u128::from(ip);
    // NAT64 well-known prefix 64:ff9b::/96 and 6to4 2002::/16 carry an IPv4
    // destination: judge that.
    if prefix_eq(0x0064_ff9b_u128 << 96, a, 96, 128) {
        return special_v4(Ipv4Addr::from(a as u32));
    }
    if prefix_eq(0x2002_u128 << 112, a, 16, 128) {
        return special_v4(Ipv4Addr::from((a >> 80) as u32));
    }
    if V6_GLOBAL.iter().any(|(n, l)| prefix_eq(*n, a, *l, 128)) {
        return None;
    }
    V6.iter()
        .find(|(n, l, _)| prefix_eq(*n, a, *l, 128))
        .map(|(_, _, name)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_purpose_table() {
        let cases: &[(&str, Option<&str>)] = &[
            ("8.8.8.8", None),
            ("1.1.1.1", None),
            ("10.1.2.3", Some("private")),
            ("172.16.0.1", Some("private")),
            ("172.32.0.1", None),
            ("192.168.1.1", Some("private")),
            ("127.0.0.1", Some("loopback")),
            ("169.254.169.254", Some("link-local")),
            ("100.64.0.1", Some("shared (CGNAT)")),
            ("100.128.0.1", None),
            ("192.0.2.10", Some("documentation")),
            ("198.51.100.7", Some("documentation")),
            ("203.0.113.99", Some("documentation")),
            ("198.18.0.1", Some("benchmarking")),
            ("198.19.255.255", Some("benchmarking")),
            ("198.20.0.1", None),
            ("224.0.0.251", Some("multicast")),
            ("239.255.255.250", Some("multicast")),
            ("240.0.0.1", Some("reserved")),
            ("255.255.255.255", Some("broadcast")),
            ("0.0.0.0", Some("this-network")),
            ("192.0.0.8", Some("IETF protocol assignments")),
            ("192.0.0.9", None),
            ("192.88.99.1", Some("deprecated 6to4 relay anycast")),
            ("2606:4700::1111", None),
            ("::1", Some("loopback")),
            ("::", Some("unspecified")),
            ("fe80::1", Some("link-local")),
            ("fd00::1", Some("unique-local")),
            ("fc00::1", Some("unique-local")),
            ("2001:db8::1", Some("documentation")),
            ("3fff::1", Some("documentation")),
            ("2001:2::1", Some("benchmarking")),
            ("2001::1", Some("IETF protocol assignments")),
            ("2001:4860::8888", None),
            ("2001:20::1", None),
            ("ff02::1", Some("multicast")),
            ("100::1", Some("discard-only")),
            ("64:ff9b:1::1", Some("local-use IPv4/IPv6 translation")),
            ("::ffff:10.0.0.1", Some("private")),
            ("::ffff:8.8.8.8", None),
            ("64:ff9b::808:808", None),
            ("64:ff9b::a00:1", Some("private")),
            ("2002:c0a8:0101::1", Some("private")),
            ("2002:0808:0808::1", None),
            ("fec0::1", Some("site-local (deprecated)")),
            ("5f00::1", Some("segment routing (SRv6) SIDs")),
        ];
        for (a, want) in cases {
            let ip: IpAddr = a.parse().unwrap();
            assert_eq!(special_purpose(ip), *want, "{a}");
        }
    }

    #[test]
    fn cidr_table() {
        let n: Cidr = "203.0.113.0/24".parse().unwrap();
        assert!(n.contains("203.0.113.200".parse().unwrap()));
        assert!(n.contains("::ffff:203.0.113.1".parse().unwrap()));
        assert!(!n.contains("203.0.114.1".parse().unwrap()));
        let h: Cidr = "8.8.8.8".parse().unwrap();
        assert!(h.contains("8.8.8.8".parse().unwrap()));
        assert!(!h.contains("8.8.8.9".parse().unwrap()));
        let all: Cidr = "::/0".parse().unwrap();
        assert!(all.contains("2606:4700::1".parse().unwrap()));
        assert!(!all.contains("1.2.3.4".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nope", "::/129", "10.0.0.0/x"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }
}
