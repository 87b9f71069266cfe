//! `tls`: a connection's first bytes, both directions, through
//! [`HandshakeReader`] as the flow layer feeds it, then its handshake (and
//! the connection, named by its SNI) through apitap's sinks
//! (`classify::Outputs`).
//!
//! Input: chunks `[ctl][len: u8]` and `len` bytes (at the end, what is
//! left). `ctl` bit 0: the chunk goes to the server (else to the client);
//! bit 1: bytes of that direction were lost before it (a gap).
//!
//! Checked: the reader holds at most [`MAX_HELD_BYTES`] per direction while
//! reading, and nothing once both hellos are decided;
//! the SNI is lower-case printable ASCII, at most 255 bytes and an
//! ellipsis; `legacy_tls` is raised exactly when the version (negotiated,
//! else the highest offered) is below TLS 1.2, TLS 1.3 drafts counting as
//! 1.3; every log line is a JSON object and the report and the metrics hold
//! no control character but line ends.

use crate::classify::Outputs;
use crate::Reader;
use apitap::classify::findings::Severity;
use apitap::classify::tls::{HandshakeReader, MAX_HELD_BYTES, TLS1_2};
use apitap::classify::ClassifyConfig;
use apitap::clock::Timestamp;
use apitap::flow::{FlowEvent, Protocol};
use std::net::SocketAddr;

/// Below TLS 1.2 (SPEC `legacy_tls`), TLS 1.3 drafts (0x7fxx) being 1.3.
fn legacy(version: u16) -> bool {
    version >> 8 != 0x7f && version < TLS1_2
}

fn check_sni(sni: &str) {
    let name = sni.strip_suffix('…').unwrap_or(sni);
    assert!(name.len() <= 255, "SNI of {} bytes", name.len());
    assert!(
        name.bytes()
            .all(|b| (0x20..0x7f).contains(&b) && !b.is_ascii_uppercase()),
        "SNI not lower-case printable ASCII: {sni:?}"
    );
}

/// Seed input: the client's bytes, then the server's, in chunks.
pub fn encode(client: &[u8], server: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (ctl, bytes) in [(1u8, client), (0, server)] {
        for c in bytes.chunks(255) {
            out.push(ctl);
            out.push(c.len() as u8);
            out.extend_from_slice(c);
        }
    }
    out
}

pub fn run(data: &[u8]) {
    let client: SocketAddr = "10.0.0.1:40000".parse().expect("an address");
    let server: SocketAddr = "10.0.0.2:443".parse().expect("an address");
    let ts = Timestamp::from_secs_micros(1_700_000_000, 0);
    let cfg = ClassifyConfig::default();
    let mut outputs = Outputs::new(&cfg);
    let mut reader = HandshakeReader::default();
    let mut announced = false;
    let mut r = Reader::new(data);
    while let Some(ctl) = r.u8() {
        let len = r.u8().map_or(usize::MAX, usize::from);
        let bytes = r.bytes(len);
        let to_server = ctl & 1 != 0;
        if ctl & 2 != 0 {
            reader.gap(to_server);
        }
        let was_done = reader.is_done();
        let done = reader.push(to_server, bytes);
        assert!(!was_done || done, "a decided reader went back to reading");
        let held = reader.heap_bytes();
        assert!(held <= 2 * MAX_HELD_BYTES, "the reader holds {held} bytes");
        assert!(!done || held == 0, "a decided reader holds {held} bytes");
        // As the flow layer does: the connection is named once the client's
        // hello is decided.
        if !announced && reader.client_done() {
            announced = true;
            outputs.event(FlowEvent::Connection {
                server,
                host: reader.sni().map(str::to_string),
                protocol: Protocol::Tls,
                ts,
            });
        }
    }
    // The SNI the connection was named by is the handshake's.
    let hs = reader.finish(ts, client, server);
    if let Some(sni) = hs.sni() {
        check_sni(sni);
    }
    let expect_legacy = hs.version().is_some_and(legacy);
    let finding = hs.legacy_tls(Some(Severity::Medium));
    assert_eq!(
        finding.is_some(),
        expect_legacy,
        "legacy_tls for version {:?}",
        hs.version()
    );
    outputs.event(FlowEvent::Tls(hs));
    outputs.finish();
}
