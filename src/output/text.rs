//! Allocation-free text for the fields every log line carries.
//!
//! Contract: [`SocketAddrText`], [`IpText`] and [`TimestampText`] hold
//! exactly the bytes `to_string()` (the `Display` impls of [`SocketAddr`],
//! [`IpAddr`] and [`Timestamp`]) gives for the same value; `Display` is the format, these only avoid
//! `core::fmt` and the heap on the hot path. [`TimestampTexts`] makes the
//! timestamps' texts, working the calendar out once a second, and
//! [`SocketAddrTexts`] the addresses', keeping the last address's text; a
//! timestamp outside years 0000–9999 has no fast form
//! ([`TimestampTexts::text`] returns `None`) and is left to `Display`. The
//! property tests below hold them to that.

use crate::clock::Timestamp;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Up to `N` ASCII bytes on the stack.
struct Ascii<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> Ascii<N> {
    fn new() -> Self {
        Ascii {
            bytes: [0; N],
            len: 0,
        }
    }

    fn push(&mut self, b: u8) {
        self.bytes[self.len] = b;
        self.len += 1;
    }

    fn push_slice(&mut self, s: &[u8]) {
        self.bytes[self.len..self.len + s.len()].copy_from_slice(s);
        self.len += s.len();
    }

    /// Decimal, no padding.
    fn push_u32(&mut self, v: u32) {
        self.push_slice(itoa::Buffer::new().format(v).as_bytes());
    }

    /// Decimal, zero-padded to `width` digits (`v` must fit).
    fn push_padded(&mut self, mut v: u32, width: usize) {
        for i in (0..width).rev() {
            self.bytes[self.len + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
        self.len += width;
    }

    /// Lower-case hex, no leading zeros (`{:x}`).
    fn push_hex(&mut self, v: u16) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut shift = 12;
        while shift > 0 && v >> shift == 0 {
            shift -= 4;
        }
        loop {
            self.push(HEX[usize::from((v >> shift) & 0xf)]);
            if shift == 0 {
                break;
            }
            shift -= 4;
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// `SocketAddr`'s `Display` text: `ip:port`, `[ipv6]:port`, `[ipv6%scope]:port`.
pub struct SocketAddrText(Ascii<64>);

impl SocketAddrText {
    /// The text before `:port`.
    fn host(addr: &SocketAddr) -> Self {
        let mut t = Ascii::new();
        match addr {
            SocketAddr::V4(a) => push_ipv4(&mut t, a.ip()),
            SocketAddr::V6(a) => {
                t.push(b'[');
                push_ipv6(&mut t, a.ip());
                if a.scope_id() != 0 {
                    t.push(b'%');
                    t.push_u32(a.scope_id());
                }
                t.push(b']');
            }
        }
        SocketAddrText(t)
    }

    /// Append `:port` (to [`SocketAddrText::host`]'s text).
    fn set_port(&mut self, port: u16) {
        self.0.push(b':');
        self.0.push_u32(u32::from(port));
    }

    /// ASCII only.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// [`SocketAddrText`]s of addresses that mostly repeat the one before (a
/// log's servers; its clients' addresses, ports aside): the text before
/// `:port` is kept while the address repeats, only the port is written
/// anew.
#[derive(Default)]
pub struct SocketAddrTexts {
    /// The last address, the length of its text before `:port`, its text.
    last: Option<(SocketAddr, usize, SocketAddrText)>,
}

impl SocketAddrTexts {
    pub fn text(&mut self, addr: &SocketAddr) -> &[u8] {
        // What the text before `:port` shows (not an IPv6 flow label).
        let same_host = |a: &SocketAddr| match (a, addr) {
            (SocketAddr::V4(a), SocketAddr::V4(b)) => a.ip() == b.ip(),
            (SocketAddr::V6(a), SocketAddr::V6(b)) => {
                a.ip() == b.ip() && a.scope_id() == b.scope_id()
            }
            _ => false,
        };
        if self
            .last
            .as_ref()
            .is_some_and(|(last, ..)| !same_host(last))
        {
            self.last = None;
        }
        let (last, host_len, text) = self.last.get_or_insert_with(|| {
            let mut text = SocketAddrText::host(addr);
            let host_len = text.0.len;
            text.set_port(addr.port());
            (*addr, host_len, text)
        });
        if last.port() != addr.port() {
            text.0.len = *host_len;
            text.set_port(addr.port());
        }
        *last = *addr;
        text.as_bytes()
    }
}

/// `IpAddr`'s `Display` text.
pub struct IpText(Ascii<48>);

impl IpText {
    pub fn new(ip: &IpAddr) -> Self {
        let mut t = Ascii::new();
        match ip {
            IpAddr::V4(v4) => push_ipv4(&mut t, v4),
            IpAddr::V6(v6) => push_ipv6(&mut t, v6),
        }
        IpText(t)
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII is ever pushed: the check cannot fail.
        std::str::from_utf8(self.0.as_bytes()).unwrap_or_default()
    }
}

fn push_ipv4<const N: usize>(t: &mut Ascii<N>, ip: &Ipv4Addr) {
    for (i, o) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            t.push(b'.');
        }
        t.push_u32(u32::from(o));
    }
}

/// As std's `Ipv6Addr` `Display` (RFC 5952): v4-mapped as `::ffff:a.b.c.d`;
/// otherwise the first longest run of two or more zero groups becomes `::`.
fn push_ipv6<const N: usize>(t: &mut Ascii<N>, ip: &Ipv6Addr) {
    if let Some(v4) = ip.to_ipv4_mapped() {
        t.push_slice(b"::ffff:");
        push_ipv4(t, &v4);
        return;
    }
    let seg = ip.segments();
    let (mut best_start, mut best_len) = (0, 0);
    let (mut cur_start, mut cur_len) = (0, 0);
    for (i, &s) in seg.iter().enumerate() {
        if s == 0 {
            if cur_len == 0 {
                cur_start = i;
            }
            cur_len += 1;
            if cur_len > best_len {
                (best_start, best_len) = (cur_start, cur_len);
            }
        } else {
            cur_len = 0;
        }
    }
    let groups = |t: &mut Ascii<N>, part: &[u16]| {
        for (i, &s) in part.iter().enumerate() {
            if i > 0 {
                t.push(b':');
            }
            t.push_hex(s);
        }
    };
    if best_len > 1 {
        groups(t, &seg[..best_start]);
        t.push_slice(b"::");
        groups(t, &seg[best_start + best_len..]);
    } else {
        groups(t, &seg);
    }
}

/// `Timestamp`'s `Display` text: `2024-05-01T12:00:00.123456Z`.
pub struct TimestampText(Ascii<27>);

/// 0000-01-01T00:00:00Z and 10000-01-01T00:00:00Z in Unix seconds: the
/// years whose `Display` is four plain digits.
const FAST_SECS: std::ops::Range<i64> = -62_167_219_200..253_402_300_800;

/// `YYYY-MM-DDThh:mm:ss` of a second: a timestamp's text before its
/// fraction.
type Calendar = [u8; 19];

impl TimestampText {
    /// Second `secs`'s calendar text; `None` outside years 0000–9999.
    fn calendar(secs: i64) -> Option<Calendar> {
        if !FAST_SECS.contains(&secs) {
            return None;
        }
        // The calendar is the `time` crate's, as in `Display`; only the
        // text is ours.
        let dt = time::OffsetDateTime::from_unix_timestamp(secs).ok()?;
        let mut t = Ascii::<19>::new();
        t.push_padded(dt.year() as u32, 4);
        t.push(b'-');
        t.push_padded(u32::from(u8::from(dt.month())), 2);
        t.push(b'-');
        t.push_padded(u32::from(dt.day()), 2);
        t.push(b'T');
        t.push_padded(u32::from(dt.hour()), 2);
        t.push(b':');
        t.push_padded(u32::from(dt.minute()), 2);
        t.push(b':');
        t.push_padded(u32::from(dt.second()), 2);
        Some(t.bytes)
    }

    /// `ts` in its second, whose calendar text is `calendar`.
    fn at(calendar: &Calendar, ts: Timestamp) -> Self {
        let mut t = Ascii::new();
        t.push_slice(calendar);
        t.push(b'.');
        t.push_padded(ts.as_micros().rem_euclid(1_000_000) as u32, 6);
        t.push(b'Z');
        TimestampText(t)
    }

    /// ASCII only.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// [`TimestampText`]s of timestamps that mostly share their second with
/// the one before (a log's lines, in capture order): the calendar is
/// worked out once a second, only the microseconds each time.
#[derive(Default)]
pub struct TimestampTexts {
    /// The last second worked out, and its calendar text.
    second: Option<(i64, Calendar)>,
}

impl TimestampTexts {
    /// `None` outside years 0000–9999 (use `Display` there).
    pub fn text(&mut self, ts: Timestamp) -> Option<TimestampText> {
        let secs = ts.as_secs();
        let calendar = match self.second {
            Some((s, calendar)) if s == secs => calendar,
            _ => {
                let calendar = TimestampText::calendar(secs)?;
                self.second = Some((secs, calendar));
                calendar
            }
        };
        Some(TimestampText::at(&calendar, ts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{SocketAddrV4, SocketAddrV6};

    fn addr_text(a: &SocketAddr) -> String {
        String::from_utf8(SocketAddrTexts::default().text(a).to_vec()).unwrap()
    }

    fn ts_text(ts: Timestamp) -> Option<String> {
        TimestampTexts::default()
            .text(ts)
            .map(|t| String::from_utf8(t.as_bytes().to_vec()).unwrap())
    }

    fn v6_same(ip: Ipv6Addr, port: u16, scope: u32) -> Result<(), TestCaseError> {
        let a = SocketAddr::V6(SocketAddrV6::new(ip, port, 0, scope));
        prop_assert_eq!(addr_text(&a), a.to_string());
        Ok(())
    }

    /// Groups drawn mostly from {0, 1, ffff, any} so zero runs of every
    /// length and position, ties and v4-mapped/-compatible forms all occur.
    fn group() -> impl Strategy<Value = u16> {
        prop_oneof![4 => Just(0u16), 1 => Just(1u16), 1 => Just(0xffff), 2 => any::<u16>()]
    }

    fn check_ts(us: i64) -> Result<(), TestCaseError> {
        let ts = Timestamp::from_micros(us);
        match ts_text(ts) {
            Some(t) => prop_assert_eq!(t, ts.to_string()),
            None => prop_assert!(!FAST_SECS.contains(&ts.as_secs())),
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Timestamps close together, forwards and backwards, across
        /// second, day and year boundaries and the fast range's ends: the
        /// kept second gives what a new text would.
        #[test]
        fn kept_seconds_give_the_same_text(
            start in prop_oneof![
                Just(0i64),
                Just(-1i64),
                Just(1_704_067_199_000_000i64),
                Just(FAST_SECS.start * 1_000_000),
                Just(FAST_SECS.end * 1_000_000 - 1),
                any::<i64>(),
            ],
            steps in proptest::collection::vec(-1_500_000i64..1_500_000, 1..40),
        ) {
            let mut texts = TimestampTexts::default();
            let mut us = start;
            for step in steps {
                let ts = Timestamp::from_micros(us);
                let kept = texts.text(ts).map(|t| t.as_bytes().to_vec());
                let new = TimestampTexts::default().text(ts).map(|t| t.as_bytes().to_vec());
                prop_assert_eq!(kept, new);
                us = us.saturating_add(step);
            }
        }

        /// Addresses from a few hosts and ports, v4 and v6 (with and
        /// without scope, flow labels that do not show): the kept text
        /// gives what `Display` does, whichever part repeats.
        #[test]
        fn kept_addresses_give_the_same_text(
            picks in proptest::collection::vec((0usize..6, 0usize..3, any::<u32>()), 1..60),
        ) {
            let hosts: [(IpAddr, u32); 6] = [
                (Ipv4Addr::new(10, 0, 0, 1).into(), 0),
                (Ipv4Addr::new(10, 0, 0, 12).into(), 0),
                (Ipv4Addr::new(192, 168, 100, 200).into(), 0),
                ("fe80::1".parse().unwrap(), 0),
                ("fe80::1".parse().unwrap(), 7),
                ("2001:db8::a:b".parse().unwrap(), 0),
            ];
            let ports = [80u16, 8, 65535];
            let mut texts = SocketAddrTexts::default();
            for (h, p, flow) in picks {
                let a = match hosts[h] {
                    (IpAddr::V4(ip), _) => SocketAddr::V4(SocketAddrV4::new(ip, ports[p])),
                    (IpAddr::V6(ip), scope) => {
                        SocketAddr::V6(SocketAddrV6::new(ip, ports[p], flow, scope))
                    }
                };
                let want = a.to_string();
                prop_assert_eq!(texts.text(&a), want.as_bytes());
            }
        }

        #[test]
        fn v4_is_display(ip in any::<u32>(), port in any::<u16>()) {
            let a = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port));
            prop_assert_eq!(addr_text(&a), a.to_string());
        }

        #[test]
        fn v6_is_display(ip in any::<u128>(), port in any::<u16>(), scope in any::<u32>()) {
            v6_same(Ipv6Addr::from(ip), port, scope)?;
            v6_same(Ipv6Addr::from(ip), port, 0)?;
        }

        #[test]
        fn ip_is_display(v4 in any::<u32>(), g in proptest::array::uniform8(group())) {
            for ip in [IpAddr::from(Ipv4Addr::from(v4)), IpAddr::from(Ipv6Addr::from(g))] {
                let text = IpText::new(&ip);
                prop_assert_eq!(text.as_str(), ip.to_string());
            }
        }

        #[test]
        fn v6_zero_runs_are_display(
            g in proptest::array::uniform8(group()),
            port in any::<u16>(),
            scope in prop_oneof![Just(0u32), any::<u32>()],
        ) {
            v6_same(Ipv6Addr::from(g), port, scope)?;
        }

        #[test]
        fn v4_mapped_and_compatible_are_display(ip in any::<u32>(), port in any::<u16>()) {
            let v4 = Ipv4Addr::from(ip);
            v6_same(v4.to_ipv6_mapped(), port, 0)?;
            v6_same(v4.to_ipv6_compatible(), port, 7)?;
        }

        #[test]
        fn timestamp_is_display(us in any::<i64>()) {
            check_ts(us)?;
        }

        #[test]
        fn timestamp_near_edges_is_display(
            base in prop_oneof![
                Just(0i64),
                Just(FAST_SECS.start * 1_000_000),
                Just(FAST_SECS.end * 1_000_000),
                Just(951_782_400_000_000i64), // 2000-02-29
                Just(4_107_542_400_000_000i64), // 2100-03-01 (not a leap year)
            ],
            delta in -400i64 * 86_400 * 1_000_000..400 * 86_400 * 1_000_000,
        ) {
            check_ts(base + delta)?;
        }

        #[test]
        fn timestamp_in_fast_range_is_display(
            us in FAST_SECS.start * 1_000_000..FAST_SECS.end * 1_000_000,
        ) {
            check_ts(us)?;
        }
    }

    #[test]
    fn edges() {
        for us in [
            0,
            -1,
            1,
            i64::MIN,
            i64::MAX,
            FAST_SECS.start * 1_000_000 - 1,
            FAST_SECS.end * 1_000_000,
            1_714_564_800_123_456,
        ] {
            check_ts(us).unwrap();
        }
        let fast = |us: i64| ts_text(Timestamp::from_micros(us));
        assert_eq!(
            fast(FAST_SECS.start * 1_000_000).as_deref(),
            Some("0000-01-01T00:00:00.000000Z")
        );
        assert_eq!(
            fast(FAST_SECS.end * 1_000_000 - 1).as_deref(),
            Some("9999-12-31T23:59:59.999999Z")
        );
        assert_eq!(fast(-1).as_deref(), Some("1969-12-31T23:59:59.999999Z"));
        assert_eq!(fast(FAST_SECS.end * 1_000_000), None);

        for (ip, scope) in [
            ("::", 0),
            ("::1", 0),
            ("1::", 0),
            ("1:0:1::1", 0),
            ("0:1::1:0:0:1", 0),
            ("1:0:0:1:0:0:1:1", 0),
            ("::ffff:10.0.0.1", 0),
            ("::10.0.0.1", 0),
            ("fe80::1", 3),
            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", u32::MAX),
        ] {
            let a = SocketAddr::V6(SocketAddrV6::new(ip.parse().unwrap(), 65535, 0, scope));
            assert_eq!(
                SocketAddrTexts::default().text(&a),
                a.to_string().as_bytes(),
                "{ip}"
            );
        }
        for ip in ["0.0.0.0", "255.255.255.255", "10.0.0.5"] {
            let a = SocketAddr::V4(SocketAddrV4::new(ip.parse().unwrap(), 0));
            assert_eq!(
                SocketAddrTexts::default().text(&a),
                a.to_string().as_bytes(),
                "{ip}"
            );
        }
    }
}
