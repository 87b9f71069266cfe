//! Tables of packets per link type, tunnel and IP feature; fragment pool
//! behaviour; truncation; garbage; and a corpus smoke test.

use super::*;
use etherparse::PacketBuilder;

const BODY: &[u8] = b"GET /users/42 HTTP/1.1\r\nHost: a\r\n\r\n";
const A4: [u8; 4] = [10, 0, 0, 1];
const B4: [u8; 4] = [10, 0, 0, 2];
const A6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const B6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn ip4_tcp(p: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ipv4(A4, B4, 64)
        .tcp(40000, 80, 1000, 512)
        .ack(77)
        .psh();
    let mut v = Vec::with_capacity(b.size(p.len()));
    b.write(&mut v, p).unwrap();
    v
}

fn ip6_tcp(p: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ipv6(A6, B6, 64)
        .tcp(40000, 80, 1000, 512)
        .ack(77);
    let mut v = Vec::with_capacity(b.size(p.len()));
    b.write(&mut v, p).unwrap();
    v
}

fn eth_tcp4(p: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([1; 6], [2; 6])
        .ipv4(A4, B4, 64)
        .tcp(40000, 80, 1000, 512)
        .ack(77);
    let mut v = Vec::with_capacity(b.size(p.len()));
    b.write(&mut v, p).unwrap();
    v
}

/// The TCP header and payload of `ip4_tcp(p)`.
fn tcp_bytes(p: &[u8]) -> Vec<u8> {
    ip4_tcp(p)[20..].to_vec()
}

fn eth(t: u16, inner: &[u8]) -> Vec<u8> {
    cat(&[&[2; 6], &[1; 6], &t.to_be_bytes(), inner])
}

/// An IPv4 header (no options) around `payload`.
fn ip4_frag(proto: u8, id: u16, offset: u16, more: bool, payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let fo = (offset / 8) | if more { 0x2000 } else { 0 };
    let mut h = vec![0x45, 0];
    h.extend(total.to_be_bytes());
    h.extend(id.to_be_bytes());
    h.extend(fo.to_be_bytes());
    h.extend([64, proto, 0, 0]);
    h.extend(A4);
    h.extend(B4);
    cat(&[&h, payload])
}

fn ip4(proto: u8, payload: &[u8]) -> Vec<u8> {
    ip4_frag(proto, 1, 0, false, payload)
}

fn ip6_hdr(next: u8, payload_len: usize) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend((payload_len as u16).to_be_bytes());
    h.extend([next, 64]);
    h.extend(A6);
    h.extend(B6);
    h
}

fn ip6(next: u8, payload: &[u8]) -> Vec<u8> {
    cat(&[&ip6_hdr(next, payload.len()), payload])
}

fn ip6_frag(id: u32, offset: u16, more: bool, next: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![next, 0];
    f.extend((offset | u16::from(more)).to_be_bytes());
    f.extend(id.to_be_bytes());
    ip6(44, &cat(&[&f, payload]))
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend(sport.to_be_bytes());
    h.extend(dport.to_be_bytes());
    h.extend(((8 + payload.len()) as u16).to_be_bytes());
    h.extend([0, 0]);
    cat(&[&h, payload])
}

fn gre(flags: u16, proto: u16, extra: &[u8], payload: &[u8]) -> Vec<u8> {
    cat(&[&flags.to_be_bytes(), &proto.to_be_bytes(), extra, payload])
}

fn llc_snap(t: u16) -> Vec<u8> {
    cat(&[&[0xAA, 0xAA, 0x03, 0, 0, 0], &t.to_be_bytes()])
}

fn nflog_tlv(ty: u16, value: &[u8], be: bool) -> Vec<u8> {
    let len = (4 + value.len()) as u16;
    let mut v = Vec::new();
    if be {
        v.extend(len.to_be_bytes());
        v.extend(ty.to_be_bytes());
    } else {
        v.extend(len.to_le_bytes());
        v.extend(ty.to_le_bytes());
    }
    v.extend(value);
    while v.len() % 4 != 0 {
        v.push(0);
    }
    v
}

#[derive(Debug, PartialEq)]
enum Want {
    /// A TCP segment with this payload and `missing`.
    Tcp(Vec<u8>, u32),
    Skip(Skip),
}

fn pkt(link: u32, data: &[u8]) -> RawPacket<'_> {
    RawPacket {
        ts: Timestamp::from_micros(1_000_000),
        link: LinkType(link),
        data,
        wire_len: data.len() as u32,
    }
}

fn got(d: Decoded<'_>) -> Want {
    match d {
        Decoded::Tcp(s) => Want::Tcp(s.payload.to_vec(), s.missing),
        Decoded::Skipped(s) => Want::Skip(s),
    }
}

fn decode_one(link: u32, data: &[u8]) -> (Want, DecodeStats) {
    let mut d = Decoder::default();
    let w = got(d.decode(&pkt(link, data)));
    (w, d.stats().clone())
}

fn tcp(p: &[u8]) -> Want {
    Want::Tcp(p.to_vec(), 0)
}

#[test]
fn link_layers_table_decodes_tcp() {
    let v4 = ip4_tcp(BODY);
    let v6 = ip6_tcp(BODY);
    let wifi_data = |fc0: u8, fc1: u8, extra: usize| {
        cat(&[
            &[fc0, fc1, 0, 0],
            &[0u8; 20],
            &vec![0u8; extra],
            &llc_snap(0x0800),
            &v4,
        ])
    };
    let sll = cat(&[&[0, 0, 0, 1, 0, 6], &[0; 8], &[0x08, 0x00], &v4]);
    let sll2 = cat(&[&[0x86, 0xDD, 0, 0], &[0; 16], &v6]);
    let nflog_le = cat(&[
        &[2, 0, 0, 0],
        &nflog_tlv(10, b"prefix\0", false),
        &nflog_tlv(9, &v4, false),
    ]);
    let nflog_be = cat(&[
        &[10, 0, 0, 0],
        &nflog_tlv(1, &[0; 4], true),
        &nflog_tlv(9, &v6, true),
    ]);
    let radiotap = cat(&[
        &[0, 0, 12, 0, 0x02, 0, 0, 0, 0x10, 0, 0, 0],
        &wifi_data(0x08, 0x02, 0),
    ]);
    let cases: Vec<(&str, u32, Vec<u8>, Want)> = vec![
        ("ethernet ipv4", 1, eth(0x0800, &v4), tcp(BODY)),
        ("ethernet ipv6", 1, eth(0x86DD, &v6), tcp(BODY)),
        ("ethernet builder", 1, eth_tcp4(BODY), tcp(BODY)),
        (
            "802.1Q",
            1,
            eth(0x8100, &cat(&[&[0, 5, 0x08, 0], &v4])),
            tcp(BODY),
        ),
        (
            "QinQ 802.1ad",
            1,
            eth(0x88A8, &cat(&[&[0, 5, 0x81, 0], &[0, 6, 0x86, 0xDD], &v6])),
            tcp(BODY),
        ),
        (
            "three tags 0x9100",
            1,
            eth(
                0x9100,
                &cat(&[&[0, 5, 0x81, 0], &[0, 6, 0x81, 0], &[0, 7, 8, 0], &v4]),
            ),
            tcp(BODY),
        ),
        (
            "802.3 LLC/SNAP",
            1,
            eth(100, &cat(&[&llc_snap(0x0800), &v4])),
            tcp(BODY),
        ),
        (
            "802.3 other LLC",
            1,
            eth(100, &[0x42, 0x42, 3, 0, 0]),
            Want::Skip(Skip::NotTcp),
        ),
        ("ARP", 1, eth(0x0806, &[0; 28]), Want::Skip(Skip::NotTcp)),
        (
            "MPLS two labels ipv4",
            1,
            eth(0x8847, &cat(&[&[0, 1, 0, 64], &[0, 2, 1, 64], &v4])),
            tcp(BODY),
        ),
        (
            "MPLS multicast ipv6",
            1,
            eth(0x8848, &cat(&[&[0, 2, 1, 64], &v6])),
            tcp(BODY),
        ),
        (
            "MPLS ethernet pseudowire",
            1,
            eth(0x8847, &cat(&[&[0, 2, 1, 64], &[0; 4], &eth(0x0800, &v4)])),
            tcp(BODY),
        ),
        (
            "PPPoE ipv4",
            1,
            eth(
                0x8864,
                &cat(&[
                    &[0x11, 0, 0, 1],
                    &((v4.len() + 2) as u16).to_be_bytes(),
                    &[0, 0x21],
                    &v4,
                ]),
            ),
            tcp(BODY),
        ),
        (
            "PPPoE ipv6",
            1,
            eth(
                0x8864,
                &cat(&[
                    &[0x11, 0, 0, 1],
                    &((v6.len() + 2) as u16).to_be_bytes(),
                    &[0, 0x57],
                    &v6,
                ]),
            ),
            tcp(BODY),
        ),
        ("null LE ipv4", 0, cat(&[&[2, 0, 0, 0], &v4]), tcp(BODY)),
        ("null BE ipv4", 0, cat(&[&[0, 0, 0, 2], &v4]), tcp(BODY)),
        ("null LE ipv6 30", 0, cat(&[&[30, 0, 0, 0], &v6]), tcp(BODY)),
        ("null LE ipv6 28", 0, cat(&[&[28, 0, 0, 0], &v6]), tcp(BODY)),
        (
            "loop BE ipv6 24",
            108,
            cat(&[&[0, 0, 0, 24], &v6]),
            tcp(BODY),
        ),
        (
            "loop unknown family",
            108,
            cat(&[&[0, 0, 0, 99], &v4]),
            Want::Skip(Skip::NotTcp),
        ),
        ("raw 101 v4", 101, v4.clone(), tcp(BODY)),
        ("raw 101 v6", 101, v6.clone(), tcp(BODY)),
        ("ipv4 228", 228, v4.clone(), tcp(BODY)),
        ("ipv6 229", 229, v6.clone(), tcp(BODY)),
        (
            "cisco hdlc",
            104,
            cat(&[&[0x0f, 0, 0x08, 0], &v4]),
            tcp(BODY),
        ),
        ("linux sll", 113, sll, tcp(BODY)),
        ("linux sll2", 276, sll2, tcp(BODY)),
        ("nflog LE", 239, nflog_le, tcp(BODY)),
        ("nflog BE", 239, nflog_be, tcp(BODY)),
        (
            "nflog no payload",
            239,
            cat(&[&[2, 0, 0, 0], &nflog_tlv(10, b"x", false)]),
            Want::Skip(Skip::NotTcp),
        ),
        ("802.11 data", 105, wifi_data(0x08, 0x02, 0), tcp(BODY)),
        ("802.11 4-address", 105, wifi_data(0x08, 0x03, 6), tcp(BODY)),
        ("802.11 QoS", 105, wifi_data(0x88, 0x01, 2), tcp(BODY)),
        (
            "802.11 QoS + HT control",
            105,
            wifi_data(0x88, 0x81, 6),
            tcp(BODY),
        ),
        (
            "802.11 protected",
            105,
            wifi_data(0x08, 0x42, 0),
            Want::Skip(Skip::NotTcp),
        ),
        (
            "802.11 beacon",
            105,
            wifi_data(0x80, 0x00, 0),
            Want::Skip(Skip::NotTcp),
        ),
        (
            "802.11 null data",
            105,
            wifi_data(0x48, 0x01, 0),
            Want::Skip(Skip::NotTcp),
        ),
        ("radiotap", 127, radiotap, tcp(BODY)),
        ("ppp", 9, cat(&[&[0xff, 0x03, 0x00, 0x21], &v4]), tcp(BODY)),
        (
            "ppp compressed protocol",
            9,
            cat(&[&[0x57], &v6]),
            tcp(BODY),
        ),
        (
            "unsupported link",
            147,
            v4.clone(),
            Want::Skip(Skip::UnsupportedLink(LinkType(147))),
        ),
    ];
    for (name, link, data, want) in cases {
        let (w, stats) = decode_one(link, &data);
        assert_eq!(w, want, "{name}");
        if matches!(want, Want::Tcp(..)) {
            assert_eq!(stats.tcp_segments, 1, "{name}");
            assert_eq!(stats.tunnelled, 0, "{name}");
        }
    }
}

#[test]
fn segment_fields_are_decoded() {
    let mut d = Decoder::default();
    let data = eth_tcp4(BODY);
    let Decoded::Tcp(s) = d.decode(&pkt(1, &data)) else {
        panic!("not tcp");
    };
    assert_eq!(s.src, "10.0.0.1:40000".parse().unwrap());
    assert_eq!(s.dst, "10.0.0.2:80".parse().unwrap());
    assert_eq!((s.seq, s.ack, s.window), (1000, 77, 512));
    assert!(s.flags.ack() && !s.flags.syn() && !s.flags.fin() && !s.flags.rst());
    assert_eq!(s.ts, Timestamp::from_micros(1_000_000));
    let v6 = ip6_tcp(b"");
    let Decoded::Tcp(s) = d.decode(&pkt(101, &v6)) else {
        panic!("not tcp");
    };
    assert_eq!(s.src, "[2001:db8::1]:40000".parse().unwrap());
}

#[test]
fn tunnels_table_unwraps_and_counts() {
    let v4 = ip4_tcp(BODY);
    let v6 = ip6_tcp(BODY);
    let inner_eth = eth(0x0800, &v4);
    let pptp_ppp = cat(&[&[0xff, 0x03, 0x00, 0x21], &v4]);
    let cases: Vec<(&str, Vec<u8>, Want)> = vec![
        ("gre ipv4", ip4(47, &gre(0, 0x0800, &[], &v4)), tcp(BODY)),
        (
            "gre ipv6 in ipv6",
            ip6(47, &gre(0, 0x86DD, &[], &v6)),
            tcp(BODY),
        ),
        (
            "gre checksum key seq",
            ip4(47, &gre(0xB000, 0x0800, &[0; 12], &v4)),
            tcp(BODY),
        ),
        (
            "gre key",
            ip4(47, &gre(0x2000, 0x86DD, &[0; 4], &v6)),
            tcp(BODY),
        ),
        (
            "gre transparent ethernet",
            ip4(47, &gre(0, 0x6558, &[], &inner_eth)),
            tcp(BODY),
        ),
        (
            "erspan I",
            ip4(47, &gre(0, 0x88BE, &[], &inner_eth)),
            tcp(BODY),
        ),
        (
            "erspan II",
            ip4(
                47,
                &gre(
                    0x1000,
                    0x88BE,
                    &[0, 0, 0, 9],
                    &cat(&[&[0x10, 0, 0, 1, 0, 0, 0, 0], &inner_eth]),
                ),
            ),
            tcp(BODY),
        ),
        (
            "erspan III",
            ip4(
                47,
                &gre(
                    0x1000,
                    0x22EB,
                    &[0, 0, 0, 9],
                    &cat(&[&[0x20, 0, 0, 1], &[0; 8], &inner_eth]),
                ),
            ),
            tcp(BODY),
        ),
        (
            "erspan III platform subheader",
            ip4(
                47,
                &gre(
                    0x1000,
                    0x22EB,
                    &[0, 0, 0, 9],
                    &cat(&[
                        &[0x20, 0, 0, 1],
                        &[0, 0, 0, 0, 0, 0, 0, 1],
                        &[0; 8],
                        &inner_eth,
                    ]),
                ),
            ),
            tcp(BODY),
        ),
        (
            "pptp enhanced gre",
            ip4(
                47,
                &gre(
                    0x3081,
                    0x880B,
                    &[0, 8, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0],
                    &pptp_ppp,
                ),
            ),
            tcp(BODY),
        ),
        (
            "gre routing",
            ip4(47, &gre(0x4000, 0x0800, &[0; 4], &v4)),
            Want::Skip(Skip::NotTcp),
        ),
        (
            "vxlan",
            ip4(
                17,
                &udp(
                    50000,
                    4789,
                    &cat(&[&[0x08, 0, 0, 0, 0, 0, 1, 0], &inner_eth]),
                ),
            ),
            tcp(BODY),
        ),
        (
            "vxlan over ipv6",
            ip6(
                17,
                &udp(
                    50000,
                    4789,
                    &cat(&[&[0x08, 0, 0, 0, 0, 0, 1, 0], &inner_eth]),
                ),
            ),
            tcp(BODY),
        ),
        (
            "geneve with option",
            ip4(
                17,
                &udp(
                    50000,
                    6081,
                    &cat(&[&[0x01, 0, 0x65, 0x58, 0, 0, 1, 0], &[0; 4], &inner_eth]),
                ),
            ),
            tcp(BODY),
        ),
        (
            "geneve ipv4",
            ip4(
                17,
                &udp(50000, 6081, &cat(&[&[0, 0, 0x08, 0, 0, 0, 1, 0], &v4])),
            ),
            tcp(BODY),
        ),
        ("teredo", ip4(17, &udp(3544, 50000, &v6)), tcp(BODY)),
        (
            "teredo origin indication",
            ip4(
                17,
                &udp(3544, 50000, &cat(&[&[0, 0, 0x12, 0x34, 1, 2, 3, 4], &v6])),
            ),
            tcp(BODY),
        ),
        (
            "teredo auth + origin",
            ip4(
                17,
                &udp(
                    50000,
                    3544,
                    &cat(&[
                        &[0, 1, 2, 1],
                        &[7; 3],
                        &[0; 9],
                        &[0, 0, 0x12, 0x34, 1, 2, 3, 4],
                        &v6,
                    ]),
                ),
            ),
            tcp(BODY),
        ),
        (
            "gtp-u",
            ip4(
                17,
                &udp(2152, 2152, &cat(&[&[0x30, 0xff, 0, 60, 0, 0, 0, 1], &v4])),
            ),
            tcp(BODY),
        ),
        (
            "gtp-u with sequence and extension",
            ip4(
                17,
                &udp(
                    2152,
                    2152,
                    &cat(&[
                        &[0x34, 0xff, 0, 60, 0, 0, 0, 1],
                        &[0, 0, 0, 0x85],
                        &[1, 0, 0, 0],
                        &v6,
                    ]),
                ),
            ),
            tcp(BODY),
        ),
        ("ip in ip", ip4(4, &v4), tcp(BODY)),
        ("ipv6 in ipv4", ip4(41, &v6), tcp(BODY)),
        ("ipv4 in ipv6", ip6(4, &v4), tcp(BODY)),
        (
            "ip in ip in gre",
            ip4(47, &gre(0, 0x0800, &[], &ip4(4, &v4))),
            tcp(BODY),
        ),
    ];
    for (name, outer, want) in cases {
        let t = if outer[0] >> 4 == 6 { 0x86DD } else { 0x0800 };
        let (w, stats) = decode_one(1, &eth(t, &outer));
        assert_eq!(w, want, "{name}");
        if matches!(want, Want::Tcp(..)) {
            assert_eq!(stats.tunnelled, 1, "{name}");
        }
    }
}

#[test]
fn not_tcp_table() {
    let v4 = ip4_tcp(BODY);
    // An ICMP "port unreachable" quoting the IP header and 8 TCP bytes.
    let icmp = ip4(1, &cat(&[&[3, 3, 0, 0, 0, 0, 0, 0], &v4[..28]]));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("icmp error quoting tcp", icmp),
        ("plain udp", ip4(17, &udp(5353, 53, b"query"))),
        ("udp on port 80", ip4(17, &udp(5353, 80, BODY))),
        ("sctp", ip4(132, &[0; 40])),
        ("teredo port but not ipv6", ip4(17, &udp(3544, 1, b"hello"))),
        (
            "gtp-u echo request",
            ip4(
                17,
                &udp(2152, 2152, &[0x32, 1, 0, 4, 0, 0, 0, 0, 0, 1, 0, 0]),
            ),
        ),
        ("ipv6 no next header", ip6(59, &[])),
    ];
    for (name, data) in cases {
        assert_eq!(decode_one(101, &data).0, Want::Skip(Skip::NotTcp), "{name}");
    }
}

#[test]
fn tunnel_nesting_is_bounded() {
    let mut p = ip4_tcp(BODY);
    for _ in 0..MAX_TUNNEL_DEPTH {
        p = ip4(4, &p);
    }
    assert_eq!(decode_one(101, &p).0, tcp(BODY));
    p = ip4(4, &p);
    assert_eq!(decode_one(101, &p).0, Want::Skip(Skip::Malformed));
}

#[test]
fn ipv6_extension_headers_are_skipped() {
    let t = tcp6_bytes();
    let hop = [60u8, 0, 1, 4, 0, 0, 0, 0];
    let dst = [43u8, 0, 1, 4, 0, 0, 0, 0];
    let rt = [6u8, 0, 0, 0, 0, 0, 0, 0];
    let p = ip6(0, &cat(&[&hop, &dst, &rt, &t]));
    assert_eq!(decode_one(101, &p).0, tcp(BODY));
    // A hop-by-hop header that is not first is malformed.
    let bad = ip6(60, &cat(&[&[0u8, 0, 1, 4, 0, 0, 0, 0], &hop, &t]));
    assert_eq!(decode_one(101, &bad).0, Want::Skip(Skip::Malformed));
    // AH in IPv4.
    let ah = cat(&[&[6u8, 4, 0, 0], &[0; 4], &[0; 4], &[0; 4], &[0; 4], &[0; 4]]);
    assert_eq!(
        decode_one(101, &ip4(51, &cat(&[&ah, &tcp_bytes(BODY)]))).0,
        tcp(BODY)
    );
}

fn tcp6_bytes() -> Vec<u8> {
    ip6_tcp(BODY)[40..].to_vec()
}

#[test]
fn ethernet_padding_is_not_payload() {
    let mut f = eth(0x0800, &ip4_tcp(b""));
    f.extend([0u8; 6]); // padding to 60 bytes
    f.extend([0xde, 0xad, 0xbe, 0xef]); // an FCS
    assert_eq!(decode_one(1, &f).0, tcp(b""));
    let mut f = eth(0x0800, &ip4_tcp(b"hi"));
    f.extend([0u8; 4]);
    assert_eq!(decode_one(1, &f).0, tcp(b"hi"));
}

#[test]
fn snaplen_cut_payload_reports_missing() {
    let body = vec![b'x'; 1000];
    for (name, frame) in [
        ("ipv4", eth(0x0800, &ip4_tcp(&body))),
        ("ipv6", eth(0x86DD, &ip6_tcp(&body))),
        (
            "ipv4 in gre",
            eth(0x0800, &ip4(47, &gre(0, 0x0800, &[], &ip4_tcp(&body)))),
        ),
    ] {
        let cut = frame.len() - 900;
        let mut d = Decoder::default();
        let p = RawPacket {
            ts: Timestamp::ZERO,
            link: LinkType::ETHERNET,
            data: &frame[..cut],
            wire_len: frame.len() as u32,
        };
        assert_eq!(got(d.decode(&p)), Want::Tcp(vec![b'x'; 100], 900), "{name}");
        assert_eq!(d.stats().truncated, 1, "{name}");
    }
}

#[test]
fn cut_headers_are_malformed_and_truncated() {
    let frame = eth(0x0800, &ip4_tcp(BODY));
    for cut in [14, 20, 33, 34, 40, 53] {
        let mut d = Decoder::default();
        let p = RawPacket {
            ts: Timestamp::ZERO,
            link: LinkType::ETHERNET,
            data: &frame[..cut],
            wire_len: frame.len() as u32,
        };
        assert_eq!(got(d.decode(&p)), Want::Skip(Skip::Malformed), "cut {cut}");
        assert_eq!(d.stats().truncated, 1);
        assert_eq!(d.stats().malformed, 1);
    }
    // The same cut without the capture saying so (wire_len = captured): the
    // IP total length still tells.
    let (w, stats) = decode_one(1, &frame[..40]);
    assert_eq!(w, Want::Skip(Skip::Malformed));
    assert_eq!(stats.truncated, 1);
}

#[test]
fn tso_zero_total_length_means_captured_length() {
    let mut v4 = ip4_tcp(&[b'y'; 3000]);
    v4[2] = 0;
    v4[3] = 0;
    assert_eq!(decode_one(1, &eth(0x0800, &v4)).0, tcp(&[b'y'; 3000]));
}

/// Splits `payload` (the IP payload) into IPv4 fragments of `size` bytes.
fn v4_frags(id: u16, payload: &[u8], size: usize) -> Vec<Vec<u8>> {
    let n = payload.len().div_ceil(size);
    (0..n)
        .map(|i| {
            let s = i * size;
            let e = (s + size).min(payload.len());
            ip4_frag(6, id, s as u16, e < payload.len(), &payload[s..e])
        })
        .collect()
}

fn v6_frags(id: u32, payload: &[u8], size: usize) -> Vec<Vec<u8>> {
    let n = payload.len().div_ceil(size);
    (0..n)
        .map(|i| {
            let s = i * size;
            let e = (s + size).min(payload.len());
            ip6_frag(id, s as u16, e < payload.len(), 6, &payload[s..e])
        })
        .collect()
}

fn feed(d: &mut Decoder, link: u32, pkts: &[Vec<u8>], ts: &[i64]) -> Vec<Want> {
    pkts.iter()
        .zip(ts)
        .map(|(p, &t)| {
            let raw = RawPacket {
                ts: Timestamp::from_micros(t),
                link: LinkType(link),
                data: p,
                wire_len: p.len() as u32,
            };
            got(d.decode(&raw))
        })
        .collect()
}

const FRAG: Want = Want::Skip(Skip::Fragment);

#[test]
fn fragments_reassemble_in_any_order() {
    let body: Vec<u8> = (0..200u8).collect();
    let t4 = tcp_bytes(&body);
    let t6 = {
        let v = ip6_tcp(&body);
        v[40..].to_vec()
    };
    let orders: [&[usize]; 4] = [&[0, 1, 2, 3], &[3, 2, 1, 0], &[2, 0, 3, 1], &[1, 3, 0, 2]];
    for (v6, frags) in [(false, v4_frags(9, &t4, 64)), (true, v6_frags(9, &t6, 64))] {
        assert_eq!(frags.len(), 4);
        for order in orders {
            let mut d = Decoder::default();
            let pkts: Vec<_> = order.iter().map(|&i| frags[i].clone()).collect();
            let out = feed(&mut d, 101, &pkts, &[1, 2, 3, 4]);
            assert_eq!(out, vec![FRAG, FRAG, FRAG, tcp(&body)], "v6={v6} {order:?}");
            let s = d.stats();
            assert_eq!(
                (s.fragments, s.fragments_reassembled, s.fragments_dropped),
                (4, 1, 0)
            );
            assert_eq!(d.fragment_pool_usage(), (0, 0));
        }
    }
}

#[test]
fn fragment_overlap_first_copy_wins_and_duplicates_are_dropped() {
    let body = vec![b'a'; 64];
    let t = tcp_bytes(&body); // 84 bytes
    let mut second = t[16..48].to_vec();
    second[..8].copy_from_slice(b"XXXXXXXX"); // conflicts with bytes 16..24
    let pkts = vec![
        ip4_frag(6, 5, 0, true, &t[..24]),
        ip4_frag(6, 5, 16, true, &second),
        ip4_frag(6, 5, 0, true, &t[..24]), // duplicate
        ip4_frag(6, 5, 48, false, &t[48..]),
    ];
    let mut d = Decoder::default();
    let out = feed(&mut d, 101, &pkts, &[1, 2, 3, 4]);
    assert_eq!(out, vec![FRAG, FRAG, FRAG, tcp(&body)]);
    assert_eq!(d.stats().fragments_dropped, 1);
}

#[test]
fn fragment_conflicting_end_drops_datagram() {
    let t = tcp_bytes(&[b'b'; 64]);
    let pkts = [
        ip4_frag(6, 5, 0, true, &t[..40]),
        ip4_frag(6, 5, 40, false, &t[40..]),
        ip4_frag(6, 5, 40, false, &t[40..60]),
    ];
    // Out of order so the first two do not complete it: send the last one
    // with a different end first.
    let mut d = Decoder::default();
    let out = feed(
        &mut d,
        101,
        &[pkts[2].clone(), pkts[1].clone(), pkts[0].clone()],
        &[1, 2, 3],
    );
    assert_eq!(out, vec![FRAG, FRAG, FRAG]);
    assert_eq!(d.stats().fragments_dropped, 2);
    assert_eq!(d.fragment_pool_usage().0, 1);
}

#[test]
fn fragment_timeout_uses_capture_time() {
    let t = tcp_bytes(BODY);
    let f = v4_frags(3, &t, 32);
    let mut d = Decoder::new(DecoderConfig {
        fragment_timeout_micros: 30_000_000,
        ..DecoderConfig::default()
    });
    let out = feed(&mut d, 101, &f, &[0, 31_000_001]);
    assert_eq!(out, vec![FRAG, FRAG]);
    assert_eq!(d.stats().fragments_timed_out, 1);
    assert_eq!(d.stats().fragments_dropped, 1);
    // Within the timeout it completes.
    let mut d = Decoder::default();
    let out = feed(&mut d, 101, &f, &[0, 29_000_000]);
    assert_eq!(out[1], tcp(BODY));
}

#[test]
fn fragment_pool_caps_evict_oldest() {
    let t = tcp_bytes(BODY);
    let f = |id| v4_frags(id, &t, 32);
    let mut d = Decoder::new(DecoderConfig {
        max_fragment_datagrams: 2,
        ..DecoderConfig::default()
    });
    let firsts = vec![f(1)[0].clone(), f(2)[0].clone(), f(3)[0].clone()];
    assert_eq!(
        feed(&mut d, 101, &firsts, &[1, 2, 3]),
        vec![FRAG, FRAG, FRAG]
    );
    assert_eq!(d.stats().fragments_evicted, 1);
    assert_eq!(d.fragment_pool_usage().0, 2);
    // Datagram 1 was evicted; 3 still completes.
    let out = feed(&mut d, 101, &[f(1)[1].clone(), f(3)[1].clone()], &[4, 5]);
    assert_eq!(out, vec![FRAG, tcp(BODY)]);

    // Byte budget: a datagram bigger than the whole pool is dropped.
    let mut d = Decoder::new(DecoderConfig {
        max_fragment_bytes: 64,
        ..DecoderConfig::default()
    });
    let big = tcp_bytes(&[0u8; 200]);
    let out = feed(&mut d, 101, &v4_frags(7, &big, 96), &[1, 2, 3]);
    assert!(out.iter().all(|w| *w == FRAG));
    assert_eq!(d.stats().fragments_dropped, 3);
    assert_eq!(d.fragment_pool_usage(), (0, 0));
}

#[test]
fn fragmented_tunnel_is_reassembled_then_unwrapped() {
    let inner = eth(0x0800, &ip4_tcp(BODY));
    let vx = udp(50000, 4789, &cat(&[&[0x08, 0, 0, 0, 0, 0, 1, 0], &inner]));
    let frags: Vec<Vec<u8>> = {
        let n = vx.len().div_ceil(48);
        (0..n)
            .map(|i| {
                let s = i * 48;
                let e = (s + 48).min(vx.len());
                ip4_frag(17, 77, s as u16, e < vx.len(), &vx[s..e])
            })
            .collect()
    };
    let mut d = Decoder::default();
    let ts: Vec<i64> = (0..frags.len() as i64).collect();
    let out = feed(&mut d, 101, &frags, &ts);
    assert_eq!(out.last().unwrap(), &tcp(BODY));
    assert_eq!(d.stats().tunnelled, 1);
}

#[test]
fn stats_count_every_outcome() {
    let mut d = Decoder::default();
    let pkts = vec![
        (1, eth(0x0800, &ip4_tcp(BODY))),
        (1, eth(0x0806, &[0; 28])),
        (1, eth(0x0800, &[0x45, 0, 0])),
        (147, vec![1, 2, 3]),
        (147, vec![]),
        (148, vec![]),
    ];
    for (l, p) in &pkts {
        d.decode(&pkt(*l, p));
    }
    let s = d.stats();
    assert_eq!((s.tcp_segments, s.not_tcp, s.malformed), (1, 1, 1));
    assert_eq!(s.unsupported_links.get(&147), Some(&2));
    assert_eq!(s.unsupported_links.get(&148), Some(&1));
}

const LINKS: [u32; 17] = [
    0, 1, 9, 12, 50, 101, 104, 105, 108, 113, 127, 228, 229, 239, 276, 14, 147,
];

#[test]
fn garbage_of_every_length_never_panics() {
    let mut d = Decoder::default();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut buf = Vec::new();
    for link in LINKS {
        for len in 0..=64usize {
            for fill in 0..6 {
                buf.clear();
                for i in 0..len {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    buf.push(match fill {
                        0 => 0,
                        1 => 0xff,
                        2 => 0x45,
                        3 => 0x60,
                        4 => (i as u8).wrapping_mul(17),
                        _ => (seed >> 56) as u8,
                    });
                }
                let p = RawPacket {
                    ts: Timestamp::from_micros(seed as i64 >> 40),
                    link: LinkType(link),
                    data: &buf,
                    wire_len: (len as u32) + (seed as u32 & 0xff),
                };
                let _ = d.decode(&p);
            }
        }
    }
}

#[test]
fn every_prefix_and_byte_flip_of_valid_packets_never_panics() {
    let v4 = ip4_tcp(BODY);
    let samples: Vec<(u32, Vec<u8>)> = vec![
        (1, eth(0x8100, &cat(&[&[0, 5, 0x08, 0], &v4]))),
        (
            1,
            eth(
                0x0800,
                &ip4(47, &gre(0xB000, 0x6558, &[0; 12], &eth(0x0800, &v4))),
            ),
        ),
        (
            1,
            eth(
                0x0800,
                &ip4(
                    17,
                    &udp(
                        1,
                        4789,
                        &cat(&[&[8, 0, 0, 0, 0, 0, 0, 0], &eth(0x86DD, &ip6_tcp(BODY))]),
                    ),
                ),
            ),
        ),
        (
            1,
            eth(
                0x0800,
                &ip4(
                    17,
                    &udp(3544, 1, &cat(&[&[0, 1, 2, 1], &[7; 12], &ip6_tcp(BODY)])),
                ),
            ),
        ),
        (101, ip6_frag(1, 0, true, 6, &[0; 64])),
        (101, ip4_frag(6, 1, 8, false, &[0; 64])),
        (239, cat(&[&[2, 0, 0, 0], &nflog_tlv(9, &v4, false)])),
        (
            127,
            cat(&[
                &[0, 0, 8, 0, 0, 0, 0, 0, 0x88, 0x81],
                &[0; 28],
                &llc_snap(0x0800),
                &v4,
            ]),
        ),
        (
            1,
            eth(0x8864, &cat(&[&[0x11, 0, 0, 1, 0, 60, 0, 0x21], &v4])),
        ),
        (1, eth(0x8847, &cat(&[&[0, 1, 0, 64], &[0, 2, 1, 64], &v4]))),
    ];
    let mut d = Decoder::default();
    for (link, s) in &samples {
        for cut in 0..=s.len() {
            let _ = d.decode(&pkt(*link, &s[..cut]));
        }
        for i in 0..s.len() {
            for x in [0x00u8, 0xff, 0x80, 0x01] {
                let mut m = s.clone();
                m[i] ^= x;
                let _ = d.decode(&pkt(*link, &m));
            }
        }
    }
}

/// Decodes every corpus capture when `APITAP_CORPUS` names the folder.
#[test]
fn corpus_decodes_without_panic_and_finds_http_payload() {
    use crate::capture::file::FileSource;
    use crate::capture::{PacketSource, SourceEvent};
    let Ok(dir) = std::env::var("APITAP_CORPUS") else {
        eprintln!("APITAP_CORPUS not set: skipping");
        return;
    };
    let manifest = std::fs::read_to_string(format!("{dir}/MANIFEST.jsonl")).unwrap();
    let mut failures = Vec::new();
    for line in manifest.lines().filter(|l| !l.trim().is_empty()) {
        let rec: serde_json::Value = serde_json::from_str(line).unwrap();
        let file = rec["file"].as_str().unwrap();
        let non_tcp = rec["non_tcp_http"]["requests"].as_u64().unwrap_or(0)
            + rec["non_tcp_http"]["icmp_or_sflow_quoted_requests"]
                .as_u64()
                .unwrap_or(0);
        let tcp_requests = rec["http_request_pdus"]
            .as_u64()
            .unwrap_or(0)
            .saturating_sub(non_tcp);
        let mut src = FileSource::open(&format!("{dir}/{file}")).unwrap();
        let mut d = Decoder::default();
        let mut with_payload = 0u64;
        while let Some(ev) = src.next_event().unwrap() {
            if let SourceEvent::Packet(p) = ev {
                if let Decoded::Tcp(s) = d.decode(&p) {
                    if !s.payload.is_empty() {
                        with_payload += 1;
                    }
                }
            }
        }
        eprintln!("{file}: {:?}", d.stats());
        if tcp_requests > 0 && with_payload == 0 && file != "zeek-tcp80-snaplen54-no-payload.pcap" {
            failures.push(file.to_string());
        }
    }
    assert!(
        failures.is_empty(),
        "no TCP payload decoded in {failures:?}"
    );
}

proptest::proptest! {
    #[test]
    fn arbitrary_bytes_on_any_link_never_panic(
        link in proptest::sample::select(LINKS.to_vec()),
        data in proptest::collection::vec(proptest::num::u8::ANY, 0..256),
        extra in 0u32..2000,
    ) {
        let mut d = Decoder::default();
        let p = RawPacket { ts: Timestamp::ZERO, link: LinkType(link), data: &data, wire_len: data.len() as u32 + extra };
        let _ = d.decode(&p);
    }

    #[test]
    fn arbitrary_bytes_after_ip_headers_never_panic(
        proto in proptest::sample::select(vec![4u8, 6, 17, 41, 47, 51, 0, 43, 44, 60]),
        tail in proptest::collection::vec(proptest::num::u8::ANY, 0..128),
        v6 in proptest::bool::ANY,
    ) {
        let mut d = Decoder::default();
        let data = if v6 { ip6(proto, &tail) } else { ip4(proto, &tail) };
        let _ = d.decode(&pkt(101, &data));
        let udp_tunnels = [udp(1, 4789, &tail), udp(1, 6081, &tail), udp(3544, 1, &tail), udp(2152, 2152, &tail)];
        for u in &udp_tunnels {
            let _ = d.decode(&pkt(101, &ip4(17, u)));
        }
    }
}
