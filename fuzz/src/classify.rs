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
//! credentials, a cookie, an API key, a credential query parameter), whose
//! text is first scrubbed from the fuzzed input (in any case: the host is
//! lower-cased), so it can reach the output only through a leak.
//!
//! Checked: every line of both logs is one JSON object; neither log, nor the
//! findings' Debug text, holds a canary.

use crate::Reader;
use apitap::classify::findings::Finding;
use apitap::classify::{Classifier, ClassifyConfig};
use apitap::clock::Timestamp;
use apitap::http::exchange::{Exchange, Outcome};
use apitap::http::{Headers, Method, RequestHead, ResponseHead};
use apitap::output::exchange_log::ExchangeLog;
use apitap::output::findings_log::FindingsLog;
use std::io::Write;
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
        let mut headers = headers(req_lines.get(1..).unwrap_or_default());
        headers.push(b"Authorization", b"Bearer c4n4ry-b34r3r");
        headers.push(b"Proxy-Authorization", &[&b"Basic "[..], BASIC].concat());
        headers.push(b"Cookie", b"sid=c4n4ry-c00k13");
        headers.push(b"X-API-Key", b"c4n4ry-4p1-k3y");
        RequestHead {
            method: Method::parse(&String::from_utf8_lossy(method)),
            target: with_query_canary(target, flags & 0x80 != 0),
            version_minor: 1,
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

/// What apitap does with each exchange after framing: classification, and
/// both logs, kept in memory (also used by the `flow` target).
pub struct Outputs {
    classifier: Classifier,
    xlog: ExchangeLog,
    flog: FindingsLog,
    xbuf: Buf,
    fbuf: Buf,
    /// Every finding returned, in order.
    pub found: Vec<Finding>,
}

/// The two logs' text, once [`Outputs::finish`]ed and checked.
pub struct Logs {
    pub exchanges: String,
    pub findings: String,
}

impl Outputs {
    pub fn new(cfg: &ClassifyConfig) -> Self {
        let (xbuf, fbuf) = (Buf::default(), Buf::default());
        Outputs {
            classifier: Classifier::new(cfg.clone()).expect("a configuration that loads"),
            xlog: ExchangeLog::new(Box::new(xbuf.clone()), cfg.credential_params.clone()),
            flog: FindingsLog::new(Box::new(fbuf.clone()), cfg.fold_interval_micros),
            xbuf,
            fbuf,
            found: Vec::new(),
        }
    }

    pub fn exchange(&mut self, ex: &mut Exchange) {
        let findings = self.classifier.classify(ex);
        self.xlog.write(ex).expect("writes to memory");
        for f in &findings {
            self.flog.write(f);
        }
        self.found.extend(findings);
    }

    /// Flush both logs and check that every line is a JSON object.
    pub fn finish(&mut self) -> Logs {
        self.xlog.finish().expect("writes to memory");
        self.flog.finish().expect("writes to memory");
        let logs = Logs {
            exchanges: self.xbuf.text(),
            findings: self.fbuf.text(),
        };
        check_lines(&logs.exchanges, "exchange log");
        check_lines(&logs.findings, "findings log");
        logs
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
    let logs = outputs.finish();
    let debug = format!("{:?}", outputs.found);
    for (what, text) in [
        ("exchange log", &logs.exchanges),
        ("findings log", &logs.findings),
        ("findings' Debug text", &debug),
    ] {
        for c in CANARIES {
            assert!(!text.contains(c), "the {what} holds the canary {c}: {text}");
        }
    }
}
