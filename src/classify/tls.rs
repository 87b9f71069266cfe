//! TLS handshakes, read passively: versions and SNI, nothing decrypted.
//!
//! Contract: pure functions over the first bytes of one direction of a
//! connection. [`parse_client_hello`] and [`parse_server_hello`] reassemble a
//! handshake message split over several records (up to [`MAX_HELLO_BYTES`])
//! and answer [`Hello::NeedMore`] while it is incomplete, so the caller keeps
//! bytes until an answer comes (habit 3). The highest version offered takes
//! the `supported_versions` extension into account (GREASE values ignored),
//! and the negotiated version is the server's `supported_versions` when
//! present. [`legacy_tls_finding`] applies SPEC's `legacy_tls` rule.
//! Parsing is done by the rusticata `tls-parser` crate.

use super::findings::{Finding, FindingKind, Severity};
use crate::clock::Timestamp;
use std::net::SocketAddr;
use tls_parser::{TlsExtension, TlsMessage, TlsMessageHandshake};

/// Largest handshake message looked at; a longer hello is not parsed.
pub const MAX_HELLO_BYTES: usize = 16 * 1024;

/// What one direction's reader keeps at most while its hello is unread: the
/// hello and the heads of the records it is split over (a few).
pub const MAX_HELD_BYTES: usize = MAX_HELLO_BYTES + 5 * 8;

/// TLS 1.2's wire version: anything below is legacy.
pub const TLS1_2: u16 = 0x0303;

/// The answer of a hello parser.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hello<T> {
    Parsed(T),
    /// The bytes so far are a plausible start: give more.
    NeedMore,
    /// Not a TLS hello of this kind (or beyond the bounds): stop trying.
    NotHello,
}

impl<T> Hello<T> {
    pub fn ok(self) -> Option<T> {
        match self {
            Hello::Parsed(t) => Some(t),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientHelloInfo {
    /// The highest version offered (supported_versions, else the hello's).
    pub highest_version: u16,
    /// Server name indication, lower-cased, printable, at most 255 bytes.
    pub sni: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerHelloInfo {
    /// The negotiated version (supported_versions, else the hello's).
    pub version: u16,
}

fn is_grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a && (v >> 8) == (v & 0xff)
}

/// Order versions; TLS 1.3 drafts (0x7fxx) count as 1.3.
fn rank(v: u16) -> u16 {
    if v >> 8 == 0x7f {
        0x0304
    } else {
        v
    }
}

/// `TLS 1.2`, `SSL 3.0`, … for evidence and reports.
pub fn version_name(v: u16) -> &'static str {
    match v {
        0x0002 => "SSL 2.0",
        0x0300 => "SSL 3.0",
        0x0301 => "TLS 1.0",
        0x0302 => "TLS 1.1",
        0x0303 => "TLS 1.2",
        0x0304 => "TLS 1.3",
        v if v >> 8 == 0x7f => "TLS 1.3 (draft)",
        _ => "unknown",
    }
}

/// A bounded label value for metrics (`tls1.2`, …, `unknown`).
pub fn version_label(v: u16) -> &'static str {
    match rank(v) {
        0x0002 => "ssl2",
        0x0300 => "ssl3",
        0x0301 => "tls1.0",
        0x0302 => "tls1.1",
        0x0303 => "tls1.2",
        0x0304 => "tls1.3",
        _ => "unknown",
    }
}

/// Reassemble the first handshake message of `b` from its records.
/// On success, the message bytes (type, length, body).
fn first_handshake(b: &[u8]) -> Hello<Vec<u8>> {
    let mut msg: Vec<u8> = Vec::new();
    let mut i = 0;
    loop {
        if let Some(need) = (msg.len() >= 4).then(|| {
            4 + (usize::from(msg[1]) << 16 | usize::from(msg[2]) << 8 | usize::from(msg[3]))
        }) {
            if need > MAX_HELLO_BYTES {
                return Hello::NotHello;
            }
            if msg.len() >= need {
                msg.truncate(need);
                return Hello::Parsed(msg);
            }
        }
        let Some(h) = b.get(i..i + 5) else {
            // A partial header: is what we have plausible?
            let rest = &b[i.min(b.len())..];
            if !rest.is_empty() && rest[0] != 22 || rest.len() >= 2 && rest[1] != 3 {
                return Hello::NotHello;
            }
            return Hello::NeedMore;
        };
        let len = usize::from(h[3]) << 8 | usize::from(h[4]);
        if h[0] != 22 || h[1] != 3 || len == 0 || len > (1 << 14) + 2048 {
            return Hello::NotHello;
        }
        let end = i + 5 + len;
        let frag = &b[i + 5..end.min(b.len())];
        if msg.len() + frag.len() > MAX_HELLO_BYTES + 4 {
            return Hello::NotHello;
        }
        msg.extend_from_slice(frag);
        if end > b.len() {
            // The record is incomplete; maybe the message already is.
            if msg.len() >= 4 {
                let need = 4
                    + (usize::from(msg[1]) << 16 | usize::from(msg[2]) << 8 | usize::from(msg[3]));
                if need <= msg.len() && need <= MAX_HELLO_BYTES {
                    msg.truncate(need);
                    return Hello::Parsed(msg);
                }
            }
            return Hello::NeedMore;
        }
        i = end;
    }
}

/// A ClientHello at the start of the client's bytes (see module doc). An
/// SSLv2-format hello is recognised too (its version field is the highest).
pub fn parse_client_hello(first_bytes: &[u8]) -> Hello<ClientHelloInfo> {
    if let Some(h) = sslv2_client_hello(first_bytes) {
        return h;
    }
    let msg = match first_handshake(first_bytes) {
        Hello::Parsed(m) => m,
        Hello::NeedMore => return Hello::NeedMore,
        Hello::NotHello => return Hello::NotHello,
    };
    let ch = match tls_parser::parse_tls_message_handshake(&msg) {
        Ok((_, TlsMessage::Handshake(TlsMessageHandshake::ClientHello(ch)))) => ch,
        _ => return Hello::NotHello,
    };
    let mut highest = ch.version.0;
    let mut sni = None;
    if let Some(Ok((_, exts))) = ch.ext.map(tls_parser::parse_tls_client_hello_extensions) {
        for e in exts {
            match e {
                TlsExtension::SupportedVersions(vs) => {
                    if let Some(v) = vs
                        .iter()
                        .map(|v| v.0)
                        .filter(|v| !is_grease(*v))
                        .max_by_key(|v| rank(*v))
                    {
                        highest = v;
                    }
                }
                TlsExtension::SNI(names) => {
                    sni = names
                        .iter()
                        .find(|(t, _)| t.0 == 0)
                        .map(|(_, n)| super::findings::printable(n, 255).to_ascii_lowercase());
                }
                _ => {}
            }
        }
    }
    Hello::Parsed(ClientHelloInfo {
        highest_version: highest,
        sni,
    })
}

/// SSLv2 record header (2-byte length with the top bit set), message type 1.
fn sslv2_client_hello(b: &[u8]) -> Option<Hello<ClientHelloInfo>> {
    if b.first()? & 0x80 == 0 {
        return None;
    }
    if b.len() < 5 {
        return Some(Hello::NeedMore);
    }
    if b[2] != 1 || !(b[3] == 0 && b[4] == 2 || b[3] == 3) {
        return Some(Hello::NotHello);
    }
    Some(Hello::Parsed(ClientHelloInfo {
        highest_version: u16::from(b[3]) << 8 | u16::from(b[4]),
        sni: None,
    }))
}

/// A ServerHello at the start of the server's bytes (see module doc).
pub fn parse_server_hello(first_bytes: &[u8]) -> Hello<ServerHelloInfo> {
    let msg = match first_handshake(first_bytes) {
        Hello::Parsed(m) => m,
        Hello::NeedMore => return Hello::NeedMore,
        Hello::NotHello => return Hello::NotHello,
    };
    match tls_parser::parse_tls_message_handshake(&msg) {
        Ok((_, TlsMessage::Handshake(TlsMessageHandshake::ServerHello(sh)))) => {
            let mut version = sh.version.0;
            if let Some(Ok((_, exts))) = sh.ext.map(tls_parser::parse_tls_server_hello_extensions) {
                for e in exts {
                    if let TlsExtension::SupportedVersions(vs) = e {
                        if let Some(v) = vs.first() {
                            version = v.0;
                        }
                    }
                }
            }
            Hello::Parsed(ServerHelloInfo { version })
        }
        Ok((_, TlsMessage::Handshake(TlsMessageHandshake::ServerHelloV13Draft18(sh)))) => {
            Hello::Parsed(ServerHelloInfo {
                version: sh.version.0,
            })
        }
        _ => Hello::NotHello,
    }
}

/// SPEC `legacy_tls`: the negotiated version is below TLS 1.2, or, with no
/// negotiated version, the highest the client offered is. `severity` None:
/// the kind is turned off.
pub fn legacy_tls_finding(
    client_hello: Option<&ClientHelloInfo>,
    server_hello: Option<&ServerHelloInfo>,
    ts: Timestamp,
    client: SocketAddr,
    server: SocketAddr,
    severity: Option<Severity>,
) -> Option<Finding> {
    let severity = severity?;
    let evidence = match (server_hello, client_hello) {
        (Some(s), c) if rank(s.version) < TLS1_2 => {
            let mut e = format!("negotiated {}", version_name(s.version));
            if let Some(c) = c {
                e.push_str(&format!(
                    " (client offered up to {})",
                    version_name(c.highest_version)
                ));
            }
            e
        }
        (None, Some(c)) if rank(c.highest_version) < TLS1_2 => format!(
            "client offered at most {} (no server hello seen)",
            version_name(c.highest_version)
        ),
        _ => return None,
    };
    Some(Finding {
        ts,
        kind: FindingKind::LegacyTls,
        severity,
        client,
        server,
        host: client_hello.and_then(|c| c.sni.clone()),
        route: None,
        evidence,
    })
}

/// One TLS connection's handshake as far as it was seen: what the flow
/// layer reports once per connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsHandshake {
    /// The connection's first byte.
    pub ts: Timestamp,
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub client_hello: Option<ClientHelloInfo>,
    pub server_hello: Option<ServerHelloInfo>,
}

impl TlsHandshake {
    /// The negotiated version, else the highest the client offered.
    pub fn version(&self) -> Option<u16> {
        self.server_hello
            .as_ref()
            .map(|s| s.version)
            .or(self.client_hello.as_ref().map(|c| c.highest_version))
    }

    pub fn sni(&self) -> Option<&str> {
        self.client_hello.as_ref().and_then(|c| c.sni.as_deref())
    }

    /// SPEC `legacy_tls` for this connection (`severity` None: turned off).
    pub fn legacy_tls(&self, severity: Option<Severity>) -> Option<Finding> {
        legacy_tls_finding(
            self.client_hello.as_ref(),
            self.server_hello.as_ref(),
            self.ts,
            self.client,
            self.server,
            severity,
        )
    }
}

/// One direction's hello, being read.
#[derive(Debug)]
enum Side<T> {
    Reading(Vec<u8>),
    Done(Option<T>),
}

impl<T> Default for Side<T> {
    fn default() -> Self {
        Side::Reading(Vec::new())
    }
}

impl<T> Side<T> {
    fn push(&mut self, bytes: &[u8], parse: fn(&[u8]) -> Hello<T>) {
        let Side::Reading(buf) = self else {
            return;
        };
        let room = MAX_HELD_BYTES - buf.len();
        buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
        match parse(buf) {
            Hello::Parsed(t) => *self = Side::Done(Some(t)),
            Hello::NotHello => *self = Side::Done(None),
            Hello::NeedMore if buf.len() >= MAX_HELD_BYTES => *self = Side::Done(None),
            Hello::NeedMore => {}
        }
    }
    fn take(&mut self) -> Option<T> {
        match std::mem::replace(self, Side::Done(None)) {
            Side::Done(t) => t,
            Side::Reading(_) => None,
        }
    }
    fn done(&self) -> bool {
        matches!(self, Side::Done(_))
    }
    fn heap_bytes(&self) -> usize {
        match self {
            Side::Reading(buf) => buf.capacity(),
            Side::Done(_) => 0,
        }
    }
}

/// Reads both hellos of one connection from its in-order bytes, keeping at
/// most [`MAX_HELD_BYTES`] per direction until each is parsed or refused;
/// afterwards it keeps nothing and ignores input.
/// Feed it the stream bytes of each direction from the start (after a gap,
/// call [`HandshakeReader::gap`]).
#[derive(Debug, Default)]
pub struct HandshakeReader {
    client: Side<ClientHelloInfo>,
    server: Side<ServerHelloInfo>,
}

impl HandshakeReader {
    /// In-order bytes of one direction. Returns true once both hellos are
    /// decided (call [`HandshakeReader::finish`] then, or at connection end).
    pub fn push(&mut self, to_server: bool, bytes: &[u8]) -> bool {
        if to_server {
            self.client.push(bytes, parse_client_hello);
        } else {
            self.server.push(bytes, parse_server_hello);
        }
        self.is_done()
    }

    /// Bytes of one direction were lost: its hello can no longer be read.
    pub fn gap(&mut self, to_server: bool) {
        let side_done = if to_server {
            self.client.done()
        } else {
            self.server.done()
        };
        if !side_done {
            if to_server {
                self.client = Side::Done(None);
            } else {
                self.server = Side::Done(None);
            }
        }
    }

    pub fn is_done(&self) -> bool {
        self.client.done() && self.server.done()
    }

    /// The client's hello is decided: parsed, refused, or lost in a gap.
    pub fn client_done(&self) -> bool {
        self.client.done()
    }

    /// The SNI of the client's hello, once parsed (before `finish`).
    pub fn sni(&self) -> Option<&str> {
        match &self.client {
            Side::Done(Some(c)) => c.sni.as_deref(),
            _ => None,
        }
    }

    /// Heap bytes held while hellos are being read.
    pub fn heap_bytes(&self) -> usize {
        self.client.heap_bytes() + self.server.heap_bytes()
    }

    /// What was learnt; the reader is left empty.
    pub fn finish(
        &mut self,
        ts: Timestamp,
        client: SocketAddr,
        server: SocketAddr,
    ) -> TlsHandshake {
        TlsHandshake {
            ts,
            client,
            server,
            client_hello: self.client.take(),
            server_hello: self.server.take(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn u16be(v: u16) -> [u8; 2] {
        v.to_be_bytes()
    }

    fn ext(t: u16, body: &[u8]) -> Vec<u8> {
        let mut e = u16be(t).to_vec();
        e.extend_from_slice(&u16be(body.len() as u16));
        e.extend_from_slice(body);
        e
    }

    /// A handshake message in one or more records of at most `frag` bytes.
    fn records(msg_type: u8, body: &[u8], frag: usize) -> Vec<u8> {
        let mut m = vec![msg_type, 0, (body.len() >> 8) as u8, body.len() as u8];
        m.extend_from_slice(body);
        let mut out = Vec::new();
        for c in m.chunks(frag) {
            out.extend_from_slice(&[22, 3, 1]);
            out.extend_from_slice(&u16be(c.len() as u16));
            out.extend_from_slice(c);
        }
        out
    }

    /// A ClientHello offering `legacy` and, when given, `versions`, with SNI.
    pub(crate) fn client_hello(
        legacy: u16,
        versions: &[u16],
        sni: Option<&str>,
        frag: usize,
    ) -> Vec<u8> {
        let mut b = u16be(legacy).to_vec();
        b.extend_from_slice(&[7u8; 32]);
        b.push(0); // session id
        b.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher
        b.extend_from_slice(&[1, 0]); // null compression
        let mut exts = Vec::new();
        if let Some(name) = sni {
            let mut l = vec![0u8];
            l.extend_from_slice(&u16be(name.len() as u16));
            l.extend_from_slice(name.as_bytes());
            let mut body = u16be(l.len() as u16).to_vec();
            body.extend_from_slice(&l);
            exts.extend(ext(0, &body));
        }
        if !versions.is_empty() {
            let mut body = vec![(versions.len() * 2) as u8];
            for v in versions {
                body.extend_from_slice(&u16be(*v));
            }
            exts.extend(ext(43, &body));
        }
        b.extend_from_slice(&u16be(exts.len() as u16));
        b.extend(exts);
        records(1, &b, frag)
    }

    pub(crate) fn server_hello(legacy: u16, selected: Option<u16>) -> Vec<u8> {
        let mut b = u16be(legacy).to_vec();
        b.extend_from_slice(&[9u8; 32]);
        b.push(0);
        b.extend_from_slice(&[0x13, 0x01, 0]);
        let exts = match selected {
            Some(v) => ext(43, &u16be(v)),
            None => Vec::new(),
        };
        b.extend_from_slice(&u16be(exts.len() as u16));
        b.extend(exts);
        records(2, &b, 1 << 14)
    }

    #[test]
    fn client_hello_table() {
        type Case<'a> = (Vec<u8>, Option<(u16, Option<&'a str>)>);
        let cases: Vec<Case<'_>> = vec![
            (
                client_hello(0x0303, &[0x0304, 0x0303], Some("API.example.com"), 1 << 14),
                Some((0x0304, Some("api.example.com"))),
            ),
            (
                client_hello(0x0303, &[0x3a3a, 0x0304], None, 1 << 14),
                Some((0x0304, None)),
            ),
            (
                client_hello(0x0301, &[], Some("old.example"), 1 << 14),
                Some((0x0301, Some("old.example"))),
            ),
            // fragmented over 40-byte records
            (
                client_hello(0x0303, &[0x0303], Some("frag.example"), 40),
                Some((0x0303, Some("frag.example"))),
            ),
            (vec![0x80, 0x2e, 1, 3, 1, 0, 0], Some((0x0301, None))),
        ];
        for (bytes, want) in cases {
            let got = parse_client_hello(&bytes).ok();
            assert_eq!(
                got.map(|c| (c.highest_version, c.sni)),
                want.map(|(v, s)| (v, s.map(String::from)))
            );
        }
    }

    #[test]
    fn incomplete_and_foreign_bytes() {
        let full = client_hello(0x0303, &[0x0304], Some("x.example"), 30);
        for cut in [1, 4, 5, 20, 40, full.len() - 1] {
            assert_eq!(
                parse_client_hello(&full[..cut]),
                Hello::NeedMore,
                "cut {cut}"
            );
        }
        for other in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"\x17\x03\x03\x00\x10",
            b"SSH-2.0-x",
        ] {
            assert_eq!(parse_client_hello(other), Hello::NotHello);
        }
        // a ServerHello is not a ClientHello, and the other way round
        assert_eq!(
            parse_client_hello(&server_hello(0x0303, None)),
            Hello::NotHello
        );
        assert_eq!(parse_server_hello(&full), Hello::NotHello);
    }

    #[test]
    fn server_hello_supported_versions_win() {
        let cases = [
            (server_hello(0x0303, Some(0x0304)), 0x0304),
            (server_hello(0x0303, None), 0x0303),
            (server_hello(0x0301, None), 0x0301),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                parse_server_hello(&bytes).ok().map(|s| s.version),
                Some(want)
            );
        }
    }

    #[test]
    fn handshake_reader_reads_both_sides_in_pieces() {
        let ch = client_hello(0x0303, &[0x0304, 0x0303], Some("h.example"), 100);
        let sh = server_hello(0x0303, Some(0x0304));
        let mut r = HandshakeReader::default();
        for piece in ch.chunks(7) {
            assert!(!r.push(true, piece));
        }
        let (a, b) = sh.split_at(10);
        assert!(!r.push(false, a));
        assert!(r.push(false, b));
        let a: SocketAddr = "10.0.0.1:5".parse().unwrap();
        let hs = r.finish(Timestamp::ZERO, a, a);
        assert_eq!(hs.version(), Some(0x0304));
        assert_eq!(hs.sni(), Some("h.example"));
        assert!(hs.legacy_tls(Some(Severity::Medium)).is_none());

        // a one-sided legacy client, a server hello lost in a gap
        let mut r = HandshakeReader::default();
        r.push(true, &client_hello(0x0301, &[], None, 1 << 14));
        r.gap(false);
        assert!(r.is_done());
        let hs = r.finish(Timestamp::ZERO, a, a);
        assert!(hs.legacy_tls(Some(Severity::Medium)).is_some());

        // garbage is refused at once, a never-ending hello is bounded
        let mut r = HandshakeReader::default();
        r.push(true, b"\x16\x03\x01\xff\xff");
        let mut big = vec![22u8, 3, 1, 0x40, 0];
        big.extend([1u8, 0xff, 0xff, 0xff]);
        r.push(false, &big);
        for _ in 0..100 {
            r.push(false, &[0u8; 1000]);
        }
        assert!(r.is_done());
    }

    #[test]
    fn legacy_tls_table() {
        let c = |v| ClientHelloInfo {
            highest_version: v,
            sni: Some("s.example".into()),
        };
        let s = |v| ServerHelloInfo { version: v };
        let cases: &[(Option<u16>, Option<u16>, bool)] = &[
            (Some(0x0304), Some(0x0304), false),
            (Some(0x0303), Some(0x0303), false),
            (Some(0x0303), Some(0x0301), true),
            (Some(0x0302), None, true),
            (Some(0x0303), None, false),
            (None, Some(0x0300), true),
            (None, None, false),
            (Some(0x7f17), None, false),
        ];
        let a: SocketAddr = "10.0.0.1:1".parse().unwrap();
        for (cv, sv, want) in cases {
            let ci = cv.map(c);
            let si = sv.map(s);
            let f = legacy_tls_finding(
                ci.as_ref(),
                si.as_ref(),
                Timestamp::ZERO,
                a,
                a,
                Some(Severity::Medium),
            );
            assert_eq!(f.is_some(), *want, "{cv:?} {sv:?}");
        }
        let off = legacy_tls_finding(Some(&c(0x0301)), None, Timestamp::ZERO, a, a, None);
        assert!(off.is_none());
    }
}
