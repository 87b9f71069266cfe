//! `classify`: exchanges made of fuzzed heads and bodies, classified and
//! written to the exchange log and the findings log, as apitap does with
//! every exchange it sees.
//!
//! Input: up to [`MAX_RECORDS`] records separated by `\n--\n`, classified in
//! turn by one classifier (its state — route inventory, JWT cache, what
//! `endpoint_gone` remembers — carries from one to the next), a second of
//! capture time apart. A record is `[flags][status: u16 LE]` and then text,
//! so mutations and dictionaries work on it directly, and a request and its
//! response as they were on the wire make one: the request line (`METHOD
//! TARGET`, anything after a second space dropped) and request header
//! lines, a blank line, the response's header lines (after a status line
//! `HTTP/...`, whose code then replaces `status`), a blank line, and the
//! rest: the response body's prefix (as captured). Lines end at `\n`, a
//! `\r` before it dropped; a header line is cut at its first `:`.
//! `flags`: bit 0 no response; bits 1-3 the outcome (complete, timed out,
//! connection ended, malformed, unknown); bit 4 bytes were lost; bit 5 the
//! body is the request's too; bit 6 no request (an orphan response); bit 7
//! the canary query parameter goes last, not first.
//!
//! Each request also carries canary secrets (a Bearer token, Basic
//! credentials, a cookie, an API key, a credential query parameter; userinfo
//! in an absolute-form target's authority and in a Host value with an `@`),
//! whose text is first scrubbed from the fuzzed input (in any case: the host
//! is lower-cased), so it can reach the output only through a leak.
//!
//! The exchanges go through apitap's own sinks ([`Sinks`]: both logs, the
//! report, the metrics). Checked: every line of both logs is one JSON
//! object; the report and the metrics text hold no control character but
//! line ends; no output, nor the findings' Debug text, holds a canary.

use crate::Reader;
use apitap::classify::findings::{Finding, FindingKind};
use apitap::classify::tls::TlsHandshake;
use apitap::classify::{Classifier, ClassifyConfig};
use apitap::clock::Timestamp;
use apitap::flow::{FlowEvent, Protocol};
use apitap::http::exchange::{Exchange, Outcome};
use apitap::http::{Headers, Method, RequestHead, ResponseHead};
use apitap::metrics::{Metrics, MetricsConfig};
use apitap::output::exchange_log::ExchangeLog;
use apitap::output::findings_log::FindingsLog;
use apitap::output::summary::Summary;
use apitap::pipeline::{deliver_one, pass_event, ExchangeSink, PipelineStats};
use apitap::run::Sinks;
use std::fmt::Write as _;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// Records per input: enough for state to carry, few enough to stay fast.
const MAX_RECORDS: usize = 8;

/// Between records.
const SEPARATOR: &[u8] = b"\n--\n";

/// What every canary starts with: scrubbed from the input (see [`scrub`]).
const CANARY: &[u8] = b"c4n4ry";

/// `c4n4ryus3r:c4n4ryp455` in base64, also scrubbed: its decoded parts are
/// canaries, so it is one too.
const BASIC: &[u8] = b"YzRuNHJ5dXMzcjpjNG40cnlwNDU1";

/// The canaries' texts, as they must not appear in any output.
const CANARIES: &[&str] = &[
    "c4n4ry-b34r3r",
    "c4n4ryus3r",
    "c4n4ryp455",
    "YzRuNHJ5dXMzcjpjNG40cnlwNDU1",
    "c4n4ry-c00k13",
    "c4n4ry-4p1-k3y",
    "c4n4ry-qu3ry",
];

/// 2024-05-01T12:00:00Z
const START_S: i64 = 1_714_564_800;

/// An output kept in memory.
#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Buf {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

/// `text` up to its first blank line, and what follows that line.
fn block(text: &[u8]) -> (&[u8], &[u8]) {
    let mut at = 0;
    while let Some(nl) = text[at..].iter().position(|&b| b == b'\n') {
        let line_end = at + nl + 1;
        let next = &text[line_end..];
        for blank in [&b"\n"[..], b"\r\n"] {
            if next.starts_with(blank) {
                return (&text[..at + nl], &next[blank.len()..]);
            }
        }
        at = line_end;
    }
    (text, &[])
}

/// The lines of `text`, without their `\r\n` or `\n`.
fn lines(text: &[u8]) -> Vec<&[u8]> {
    text.split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .collect()
}

/// The status code of a status line `HTTP/1.1 404 Not Found`.
fn status_of(line: &[u8]) -> Option<u16> {
    let code = line.split(|&b| b == b' ').nth(1)?;
    std::str::from_utf8(code).ok()?.parse().ok()
}

fn headers(lines: &[&[u8]]) -> Headers {
    let mut h = Headers::default();
    for line in lines.iter().filter(|l| !l.is_empty()) {
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(c) => (&line[..c], &line[c + 1..]),
            None => (*line, &b""[..]),
        };
        h.push(name, value.trim_ascii());
    }
    h
}

/// A seed record: a request head and the response as they were on the
/// wire (used by `examples/seeds.rs`).
pub fn encode(request: &[u8], response: &[u8]) -> Vec<u8> {
    let head_end = request
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(request.len(), |at| at + 4);
    let mut out = vec![0, 200, 0];
    out.extend_from_slice(&request[..head_end]);
    out.extend_from_slice(&response[..response.len().min(4096)]);
    out
}

/// `record` with every occurrence of a canary's text, in any case,
/// overwritten.
fn scrub(record: &[u8]) -> Vec<u8> {
    let mut r = record.to_vec();
    for c in [CANARY, BASIC] {
        while let Some(at) = r.windows(c.len()).position(|w| w.eq_ignore_ascii_case(c)) {
            r[at..at + c.len()].fill(b'x');
        }
    }
    r
}

/// The target with the canary query parameter first in its query, or
/// (`last`) appended to the target's end (in a fragment, when it has one).
fn with_query_canary(target: &[u8], last: bool) -> Vec<u8> {
    let canary = b"token=c4n4ry-qu3ry";
    let mut t = target.to_vec();
    match t.iter().position(|&b| b == b'?') {
        Some(_) if last => {
            t.push(b'&');
            t.extend_from_slice(canary);
        }
        Some(q) => {
            let tail = t.split_off(q + 1);
            t.extend_from_slice(canary);
            if !tail.is_empty() {
                t.push(b'&');
                t.extend_from_slice(&tail);
            }
        }
        None => {
            t.push(b'?');
            t.extend_from_slice(canary);
        }
    }
    t
}

/// Canary credentials as userinfo (`user:password@`).
const USERINFO: &[u8] = b"c4n4ryus3r:c4n4ryp455";

/// An absolute-form target (`scheme://authority...`) with canary userinfo
/// put in front of its authority; any other target as it is.
fn with_userinfo_canary(target: Vec<u8>) -> Vec<u8> {
    let Some(p) = target.windows(3).position(|w| w == b"://") else {
        return target;
    };
    let scheme = &target[..p];
    let is_scheme = scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !is_scheme {
        return target;
    }
    [&target[..p + 3], USERINFO, b"@", &target[p + 3..]].concat()
}

/// A request header line; a Host value with an `@` gets canary userinfo
/// in place of what came before its last `@` (clients that copy a URL's
/// authority into Host send their credentials there).
fn with_host_canary(line: &[u8]) -> Vec<u8> {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return line.to_vec();
    };
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    match value.iter().rposition(|&b| b == b'@') {
        Some(at) if name.trim_ascii().eq_ignore_ascii_case(b"host") => {
            [name, b": ", USERINFO, &value[at..]].concat()
        }
        _ => line.to_vec(),
    }
}

fn exchange(record: &[u8], n: i64) -> Exchange {
    let mut r = Reader::new(record);
    let flags = r.u8().unwrap_or(0);
    let status = r.u16().unwrap_or(200);
    let (req_text, rest) = block(r.rest());
    let (resp_text, body) = block(rest);
    let req_lines = lines(req_text);
    let request = (flags & 0x40 == 0).then(|| {
        let line = req_lines.first().copied().unwrap_or_default();
        let mut parts = line.splitn(3, |&b| b == b' ');
        let method = parts.next().unwrap_or_default();
        let target = parts.next().unwrap_or(b"/");
        let lines: Vec<Vec<u8>> = req_lines
            .get(1..)
            .unwrap_or_default()
            .iter()
            .map(|l| with_host_canary(l))
            .collect();
        let lines: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
        let mut headers = headers(&lines);
        headers.push(b"Authorization", b"Bearer c4n4ry-b34r3r");
        headers.push(b"Proxy-Authorization", &[&b"Basic "[..], BASIC].concat());
        headers.push(b"Cookie", b"sid=c4n4ry-c00k13");
        headers.push(b"X-API-Key", b"c4n4ry-4p1-k3y");
        RequestHead {
            method: Method::parse(&String::from_utf8_lossy(method)),
            target: with_userinfo_canary(with_query_canary(target, flags & 0x80 != 0)),
            version_minor: 1,
            cut: false,
            headers,
        }
    });
    let response = (flags & 1 == 0).then(|| {
        let mut lines = lines(resp_text);
        let mut status = status;
        if lines.first().is_some_and(|l| l.starts_with(b"HTTP/")) {
            status = status_of(lines[0]).unwrap_or(status);
            lines.remove(0);
        }
        ResponseHead {
            status,
            version_minor: 1,
            headers: headers(&lines),
        }
    });
    let outcome = match (flags >> 1) & 7 {
        0 => Outcome::Complete,
        1 => Outcome::TimedOut,
        2 => Outcome::ConnectionEnded,
        3 => Outcome::Malformed,
        _ => Outcome::Unknown,
    };
    let ts = Timestamp::from_secs_micros(START_S + n, 0);
    Exchange {
        ts,
        client: "10.0.0.5:40000".parse().expect("an address"),
        server: "10.0.0.9:80".parse().expect("an address"),
        request,
        response,
        end_ts: Some(Timestamp::from_secs_micros(START_S + n, 1000)),
        request_body_bytes: if flags & 0x20 != 0 {
            body.len() as u64
        } else {
            0
        },
        response_body_bytes: body.len() as u64,
        request_body_prefix: if flags & 0x20 != 0 {
            body.to_vec()
        } else {
            Vec::new()
        },
        response_body_prefix: body.to_vec(),
        outcome,
        capture_loss: flags & 0x10 != 0,
        failure: None,
        route: None,
        host: None,
        findings: Vec::new(),
    }
}

/// Every line of `text` is a JSON object.
fn check_lines(text: &str, what: &str) {
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a {what} line is not JSON ({e}): {line}"));
        assert!(v.is_object(), "a {what} line is not an object: {line}");
    }
}

/// No control character but the line ends: text from the wire is escaped
/// before it reaches a terminal (the report) or a scraper (the metrics).
fn check_printable(text: &str, what: &str) {
    // A byte scan first (C1 controls begin with 0xC2): the metrics text is
    // long and every input renders it.
    let suspect = |b: &u8| (*b < 0x20 && *b != b'\n') || *b == 0x7f || *b == 0xc2;
    if !text.as_bytes().iter().any(suspect) {
        return;
    }
    if let Some(c) = text.chars().find(|c| c.is_control() && *c != '\n') {
        panic!("the {what} holds the control character {c:?}: {text:?}");
    }
}

/// What apitap does with each exchange after framing: classification, then
/// its sinks as `apitap -r` builds them (both logs, the report, the
/// metrics), all kept in memory (also used by the `flow` target).
pub struct Outputs {
    classifier: Classifier,
    sinks: Sinks,
    xbuf: Buf,
    fbuf: Buf,
    /// Every finding's Debug text, in order.
    pub debug: String,
}

/// What the outputs hold once [`Outputs::finish`]ed and checked.
pub struct Texts {
    pub exchanges: String,
    pub findings: String,
    /// The text exposition, as scraped.
    pub metrics: String,
    /// The report `apitap -r` prints, without colour.
    pub summary: String,
}

impl Texts {
    /// Every output, named.
    pub fn all(&self) -> [(&'static str, &str); 4] {
        [
            ("exchange log", &self.exchanges),
            ("findings log", &self.findings),
            ("metrics", &self.metrics),
            ("report", &self.summary),
        ]
    }
}

/// The sinks, with each finding's Debug text kept on the side.
struct Recorder<'a> {
    sinks: &'a mut Sinks,
    debug: &'a mut String,
}

impl ExchangeSink for Recorder<'_> {
    fn exchange(&mut self, ex: &Exchange) {
        self.sinks.exchange(ex);
    }
    fn finding(&mut self, f: &Finding) {
        let _ = write!(self.debug, "{f:?}");
        self.sinks.finding(f);
    }
    fn tls_handshake(&mut self, hs: &TlsHandshake) {
        let _ = write!(self.debug, "{hs:?}");
        self.sinks.tls_handshake(hs);
    }
    fn connection(
        &mut self,
        server: SocketAddr,
        host: Option<&str>,
        protocol: Protocol,
        ts: Timestamp,
    ) {
        self.sinks.connection(server, host, protocol, ts);
    }
}

impl Outputs {
    pub fn new(cfg: &ClassifyConfig) -> Self {
        let (xbuf, fbuf) = (Buf::default(), Buf::default());
        let sinks = Sinks::new(
            Some(ExchangeLog::new(
                Box::new(xbuf.clone()),
                cfg.credential_params.clone(),
            )),
            Some(FindingsLog::new(
                Box::new(fbuf.clone()),
                cfg.fold_interval_micros,
            )),
            Some(Summary::default()),
            Metrics::new(
                MetricsConfig {
                    process_metrics: false,
                    ..MetricsConfig::default()
                },
                "fuzz",
            ),
            cfg.severities.get(FindingKind::LegacyTls),
        );
        Outputs {
            classifier: Classifier::new(cfg.clone()).expect("a configuration that loads"),
            sinks,
            xbuf,
            fbuf,
            debug: String::new(),
        }
    }

    /// The classifier, and the sinks as a [`Recorder`].
    fn parts(&mut self) -> (&mut Classifier, Recorder<'_>) {
        let rec = Recorder {
            sinks: &mut self.sinks,
            debug: &mut self.debug,
        };
        (&mut self.classifier, rec)
    }

    /// Classify `ex` and hand it and its findings to the sinks.
    pub fn exchange(&mut self, ex: &mut Exchange) {
        let (classifier, mut rec) = self.parts();
        deliver_one(classifier, &mut rec, ex);
    }

    /// A flow-layer event (a connection named, a TLS handshake).
    pub fn event(&mut self, ev: FlowEvent) {
        pass_event(ev, &mut self.parts().1);
    }

    /// Flush both logs, render the metrics and the report, and check them:
    /// every log line is a JSON object; the metrics and the report hold no
    /// control character but line ends.
    pub fn finish(&mut self) -> Texts {
        let s = &mut self.sinks;
        s.log
            .as_mut()
            .map(ExchangeLog::finish)
            .transpose()
            .expect("writes to memory");
        s.findings
            .as_mut()
            .map(FindingsLog::finish)
            .transpose()
            .expect("writes to memory");
        let texts = Texts {
            exchanges: self.xbuf.text(),
            findings: self.fbuf.text(),
            metrics: s.metrics.render(),
            summary: s.summary.as_ref().map_or_else(String::new, |r| {
                r.render_with(&PipelineStats::default(), None, false)
            }),
        };
        check_lines(&texts.exchanges, "exchange log");
        check_lines(&texts.findings, "findings log");
        check_printable(&texts.metrics, "metrics");
        check_printable(&texts.summary, "report");
        texts
    }
}

pub fn run(data: &[u8]) {
    let cfg = ClassifyConfig::default();
    let mut outputs = Outputs::new(&cfg);
    let mut rest = data;
    for n in 0..MAX_RECORDS {
        if rest.is_empty() {
            break;
        }
        let record = match rest.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
            Some(at) if n + 1 < MAX_RECORDS => {
                let r = &rest[..at];
                rest = &rest[at + SEPARATOR.len()..];
                r
            }
            _ => std::mem::take(&mut rest),
        };
        outputs.exchange(&mut exchange(&scrub(record), n as i64));
    }
    let texts = outputs.finish();
    let debug = [("findings' Debug text", outputs.debug.as_str())];
    for (what, text) in texts.all().into_iter().chain(debug) {
        for c in CANARIES {
            assert!(!text.contains(c), "the {what} holds the canary {c}: {text}");
        }
    }
}
