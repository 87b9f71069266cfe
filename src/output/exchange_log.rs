//! The exchange log: one JSON object per line, per SPEC.md.
//!
//! Contract: each exchange is one line holding SPEC's fields in SPEC's order
//! (`ts`, `client`, `server`, `method`, `host`, `target`, `route`, `status`,
//! `duration_ms`, `request_bytes`, `response_bytes`, `failure`, `findings`,
//! then our `capture_loss`); times and addresses are the text their
//! `Display` gives, every other value is what serde_json writes for it
//! (strings escaped by serde_json). The line is byte for byte what
//! serde_json made of the derived record this module used to write (the
//! tests hold it to that). It is built whole in a reused buffer and handed
//! to the output in one `write_all`: no allocation and no `dyn Write` call
//! per field, and the output sees whole lines. Values whose JSON text is
//! known without escaping (numbers, booleans, the registered methods,
//! failure causes and finding kinds) are written directly; strings from the
//! wire (Host, target, route, other methods) go through serde_json.

use crate::classify::redact::redact_target;
use crate::clock::Timestamp;
use crate::http::exchange::Exchange;
use crate::http::Method;
use crate::output::text::{SocketAddrTexts, TimestampTexts};
use crate::pipeline::ExchangeSink;
use serde::Serialize;
use std::io::{self, Write};

/// `v` as serde_json writes it.
fn json<T: Serialize + ?Sized>(line: &mut Vec<u8>, v: &T) -> io::Result<()> {
    Ok(serde_json::to_writer(line, v)?)
}

/// A quoted string known to need no JSON escaping.
fn plain(line: &mut Vec<u8>, s: &[u8]) {
    line.push(b'"');
    line.extend_from_slice(s);
    line.push(b'"');
}

/// `v` in decimal, as serde_json writes an integer.
fn decimal(line: &mut Vec<u8>, v: u64) {
    line.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// A string that needs no escaping (ASCII letters, digits, `_`), or null.
fn plain_or_null(line: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => plain(line, s.as_bytes()),
        None => line.extend_from_slice(b"null"),
    }
}

/// `Display`'s text without `core::fmt` (see [`crate::output::text`]); it is
/// digits, `-:.TZ[]%` and hex only, which JSON never escapes.
fn timestamp(line: &mut Vec<u8>, texts: &mut TimestampTexts, ts: Timestamp) -> io::Result<()> {
    match texts.text(ts) {
        Some(t) => plain(line, t.as_bytes()),
        None => json(line, &ts.to_string())?,
    }
    Ok(())
}

/// A line longer than this does not keep its buffer (one huge target must not
/// pin memory for the rest of the run).
const KEEP_LINE_BUFFER: usize = 64 * 1024;

pub struct ExchangeLog {
    out: Box<dyn Write + Send>,
    credential_params: Vec<String>,
    /// The line being built; reused across exchanges.
    line: Vec<u8>,
    /// The first write error (reported by [`ExchangeLog::finish`]).
    error: Option<io::Error>,
    /// Lines that could not be written (a full disk, a closed pipe): each
    /// is lost whole, and the next exchange is tried again, so a live log
    /// goes on once the disk has room.
    pub lost: u64,
    timestamps: TimestampTexts,
    clients: SocketAddrTexts,
    servers: SocketAddrTexts,
}

impl ExchangeLog {
    pub fn new(out: Box<dyn Write + Send>, credential_params: Vec<String>) -> Self {
        ExchangeLog {
            out,
            credential_params,
            line: Vec::with_capacity(1024),
            error: None,
            lost: 0,
            timestamps: TimestampTexts::default(),
            clients: SocketAddrTexts::default(),
            servers: SocketAddrTexts::default(),
        }
    }

    pub fn write(&mut self, ex: &Exchange) -> io::Result<()> {
        let req = ex.request.as_ref();
        let l = &mut self.line;
        l.clear();
        l.extend_from_slice(b"{\"ts\":");
        timestamp(l, &mut self.timestamps, ex.ts)?;
        l.extend_from_slice(b",\"client\":");
        plain(l, self.clients.text(&ex.client));
        l.extend_from_slice(b",\"server\":");
        plain(l, self.servers.text(&ex.server));
        l.extend_from_slice(b",\"method\":");
        match req.map(|r| &r.method) {
            // A method from the wire may need escaping.
            Some(m @ Method::Other(_)) => json(l, m.as_str())?,
            m => plain_or_null(l, m.map(Method::as_str)),
        }
        l.extend_from_slice(b",\"host\":");
        json(l, &ex.host)?;
        l.extend_from_slice(b",\"target\":");
        json(
            l,
            &req.map(|r| redact_target(&r.target, &self.credential_params)),
        )?;
        l.extend_from_slice(b",\"route\":");
        json(l, &ex.route)?;
        l.extend_from_slice(b",\"status\":");
        match ex.status() {
            Some(s) => decimal(l, u64::from(s)),
            None => l.extend_from_slice(b"null"),
        }
        l.extend_from_slice(b",\"duration_ms\":");
        json(l, &ex.duration_micros().map(|us| us as f64 / 1000.0))?;
        l.extend_from_slice(b",\"request_bytes\":");
        decimal(l, ex.request_body_bytes);
        l.extend_from_slice(b",\"response_bytes\":");
        decimal(l, ex.response_body_bytes);
        l.extend_from_slice(b",\"failure\":");
        plain_or_null(l, ex.failure.map(|f| f.as_str()));
        l.extend_from_slice(b",\"findings\":[");
        for (i, k) in ex.findings.iter().enumerate() {
            if i > 0 {
                l.push(b',');
            }
            plain(l, k.as_str().as_bytes());
        }
        l.push(b']');
        // An addition to SPEC: bytes of this exchange were lost in the
        // capture, or its pairing could not be proven, so its numbers are
        // uncertain.
        l.extend_from_slice(if ex.capture_loss {
            b",\"capture_loss\":true"
        } else {
            b",\"capture_loss\":false"
        });
        l.extend_from_slice(b"}\n");
        let written = self.out.write_all(l);
        if l.capacity() > KEEP_LINE_BUFFER {
            self.line = Vec::with_capacity(1024);
        }
        written
    }

    /// Redact these query parameters from now on (a reload).
    pub fn set_credential_params(&mut self, names: Vec<String>) {
        self.credential_params = names;
    }

    /// The first write error met so far, forgotten: [`ExchangeLog::finish`] then
    /// reports only what is still to come (a live run's log that met a full
    /// disk and went on; its lines lost are counted in `lost`).
    pub fn take_error(&mut self) -> Option<io::Error> {
        self.error.take()
    }

    /// Flush (what was written before an error too), reporting the first
    /// error any write met.
    pub fn finish(&mut self) -> io::Result<()> {
        let flushed = self.out.flush();
        match self.error.take() {
            Some(e) => Err(e),
            None => flushed,
        }
    }
}

impl ExchangeSink for ExchangeLog {
    fn exchange(&mut self, ex: &Exchange) {
        if let Err(e) = self.write(ex) {
            self.lost += 1;
            self.error.get_or_insert(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::file::FileSource;
    use crate::capture::{PacketSource, SourceEvent};
    use crate::classify::findings::FindingKind;
    use crate::classify::{Classifier, ClassifyConfig, FailureCause};
    use crate::decode::DecoderConfig;
    use crate::flow::FlowConfig;
    use crate::http::Method;
    use crate::output::Disk;
    use crate::pipeline::Pipeline;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
    use std::sync::atomic::Ordering;

    /// The record this module used to serialise with serde (the format the
    /// golden logs were made with): `write` must give the same bytes.
    #[derive(Serialize)]
    struct Reference<'a> {
        #[serde(serialize_with = "as_display")]
        ts: Timestamp,
        client: SocketAddr,
        server: SocketAddr,
        method: Option<&'a str>,
        host: Option<&'a str>,
        target: Option<String>,
        route: Option<&'a str>,
        status: Option<u16>,
        duration_ms: Option<f64>,
        request_bytes: u64,
        response_bytes: u64,
        failure: Option<&'static str>,
        findings: &'a [FindingKind],
        capture_loss: bool,
    }

    fn as_display<S: serde::Serializer>(v: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    fn reference(ex: &Exchange, cred: &[String]) -> Vec<u8> {
        let req = ex.request.as_ref();
        let rec = Reference {
            ts: ex.ts,
            client: ex.client,
            server: ex.server,
            method: req.map(|r| r.method.as_str()),
            host: ex.host.as_deref(),
            target: req.map(|r| redact_target(&r.target, cred).into_owned()),
            route: ex.route.as_deref(),
            status: ex.status(),
            duration_ms: ex.duration_micros().map(|us| us as f64 / 1000.0),
            request_bytes: ex.request_body_bytes,
            response_bytes: ex.response_body_bytes,
            failure: ex.failure.map(|f| f.as_str()),
            findings: &ex.findings,
            capture_loss: ex.capture_loss,
        };
        let mut v = serde_json::to_vec(&rec).unwrap();
        v.push(b'\n');
        v
    }

    fn sample_exchanges() -> Vec<Exchange> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/samples/http-mix-sample.pcap");
        let mut src = FileSource::open(path).unwrap();
        let mut p = Pipeline::new(
            DecoderConfig::default(),
            FlowConfig::default(),
            Classifier::new(ClassifyConfig::default()).unwrap(),
        );
        let mut out = Vec::new();
        let mut sink = |ex: &Exchange| out.push(ex.clone());
        while let Some(ev) = src.next_event().unwrap() {
            if let SourceEvent::Packet(pkt) = ev {
                p.packet(&pkt, &mut sink);
            }
        }
        p.finish(&mut sink);
        out
    }

    /// The sample's exchanges, then each bent in one more way: IPv6 and
    /// v4-mapped addresses with scopes, odd timestamps, strings that need
    /// escaping, non-UTF-8 and secret targets, missing request or response,
    /// every failure cause and finding kind.
    #[test]
    fn lines_are_the_serde_record_byte_for_byte() {
        let cred = ClassifyConfig::default().credential_params;
        let mut log = ExchangeLog::new(Box::new(io::sink()), cred.clone());
        let sample = sample_exchanges();
        assert!(sample.len() > 100);
        let odd_ts = [
            -1,
            0,
            i64::MIN,
            i64::MAX,
            253_402_300_800_000_000,
            253_402_300_799_999_999,
            -62_167_219_200_000_001,
        ];
        let mut checked = 0;
        for (i, base) in sample.iter().enumerate() {
            for variant in 0..8 {
                let mut ex = base.clone();
                match variant {
                    0 => {}
                    1 => {
                        ex.client = SocketAddr::V6(SocketAddrV6::new(
                            Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, i as u16),
                            ex.client.port(),
                            0,
                            i as u32,
                        ));
                        ex.server =
                            SocketAddr::new(Ipv4Addr::from(i as u32).to_ipv6_mapped().into(), 443);
                    }
                    2 => ex.ts = Timestamp::from_micros(odd_ts[i % odd_ts.len()]),
                    3 => {
                        ex.host = Some(format!("h\"o\\st\u{1}\u{e9}{i}"));
                        ex.route = None;
                        if let Some(r) = ex.request.as_mut() {
                            r.method = Method::Other("M\"\t".into());
                            r.target = b"/a\xff\"b?token=s3&q=\x7f\\#f".to_vec();
                        }
                    }
                    4 => {
                        ex.request = None;
                        ex.route = None;
                    }
                    5 => {
                        ex.response = None;
                        ex.end_ts = None;
                    }
                    6 => {
                        ex.failure = Some(FailureCause::ALL[i % FailureCause::ALL.len()]);
                        ex.findings = FindingKind::ALL[..i % FindingKind::ALL.len()].to_vec();
                        ex.capture_loss = !ex.capture_loss;
                    }
                    _ => {
                        ex.end_ts = Some(ex.ts.saturating_add_micros(i as i64 * 7919 + 1));
                        ex.request_body_bytes = u64::MAX - i as u64;
                    }
                }
                log.write(&ex).unwrap();
                let want = reference(&ex, &cred);
                assert_eq!(
                    String::from_utf8_lossy(&log.line),
                    String::from_utf8_lossy(&want),
                    "exchange {i} variant {variant}"
                );
                assert_eq!(log.line, want);
                checked += 1;
            }
        }
        assert_eq!(checked, sample.len() * 8);
    }

    /// A full disk loses lines, counted, and never tears one: once there is
    /// room again the log goes on (live mode: no restart needed), every line
    /// that reached the file is whole, and written + lost = exchanges. The
    /// first error is still what `finish` reports.
    #[test]
    fn a_full_disk_loses_whole_lines_counted_and_the_log_goes_on() {
        let disk = Disk::default();
        disk.room.store(10_000, Ordering::Relaxed);
        let out = io::BufWriter::with_capacity(4096, disk.clone());
        let mut log = ExchangeLog::new(Box::new(out), Vec::new());
        let sample = sample_exchanges();
        let (full, freed) = (sample.len() / 3, 2 * sample.len() / 3);
        for (i, ex) in sample.iter().enumerate() {
            if i == freed {
                disk.room.store(usize::MAX / 2, Ordering::Relaxed);
            }
            log.exchange(ex);
            if i == full {
                assert!(log.lost > 0, "10,000 bytes hold fewer than {full} lines");
            }
        }
        let lost = log.lost;
        assert!(matches!(log.finish(), Err(e) if e.raw_os_error() == Some(libc::ENOSPC)));
        drop(log);
        let data = disk.data.lock().unwrap();
        let text = std::str::from_utf8(&data).unwrap();
        assert!(text.ends_with('\n'));
        let lines: Vec<&str> = text.lines().collect();
        for l in &lines {
            serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        }
        assert_eq!(lines.len() as u64 + lost, sample.len() as u64);
        // The lines after the disk had room again are there.
        let last = sample.last().unwrap();
        let last_line: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
        assert_eq!(last_line["client"], last.client.to_string());
        assert!(lines.len() > sample.len() - freed);
    }
}
