//! Helpers for the metrics tests: replaying a capture through the library,
//! scraping over HTTP, parsing the text exposition, running promtool.

#![allow(dead_code)]

use apitap::capture::file::FileSource;
use apitap::capture::{PacketSource, SourceEvent};
use apitap::classify::{Classifier, ClassifyConfig};
use apitap::decode::DecoderConfig;
use apitap::flow::FlowConfig;
use apitap::http::exchange::Exchange;
use apitap::metrics::Metrics;
use apitap::pipeline::Pipeline;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

pub fn sample() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/http-mix-sample.pcap")
}

/// Replay `path` through a fresh pipeline into `metrics`, publishing every
/// `publish_every` packets and calling `each_publish` after each publish.
/// Returns the exchanges delivered.
pub fn replay(
    path: &Path,
    metrics: &mut Metrics,
    publish_every: u64,
    each_publish: impl FnMut(&mut Metrics),
) -> Vec<Exchange> {
    replay_timed(path, metrics, publish_every, each_publish).0
}

/// [`replay`], also returning the slowest `publish` call.
pub fn replay_timed(
    path: &Path,
    metrics: &mut Metrics,
    publish_every: u64,
    mut each_publish: impl FnMut(&mut Metrics),
) -> (Vec<Exchange>, std::time::Duration) {
    let mut slowest = std::time::Duration::ZERO;
    let mut source = FileSource::open(path.to_str().unwrap()).expect("capture opens");
    let classifier = Classifier::new(ClassifyConfig::default()).unwrap();
    let mut pipeline = Pipeline::new(DecoderConfig::default(), FlowConfig::default(), classifier);
    let mut exchanges = Vec::new();
    let mut n = 0u64;
    loop {
        let mut sink = |ex: &Exchange| {
            metrics.exchange(ex);
            exchanges.push(ex.clone());
        };
        match source.next_event().expect("capture reads") {
            Some(SourceEvent::Packet(p)) => pipeline.packet(&p, &mut sink),
            Some(SourceEvent::Tick(t)) => pipeline.tick(t, &mut sink),
            None => break,
        }
        n += 1;
        if n.is_multiple_of(publish_every) {
            metrics.pipeline(&pipeline.stats(), &source.stats());
            let now = pipeline.stats().last_ts.unwrap_or_default();
            let t = std::time::Instant::now();
            metrics.publish(now);
            slowest = slowest.max(t.elapsed());
            each_publish(metrics);
        }
    }
    pipeline.finish(&mut |ex: &Exchange| {
        metrics.exchange(ex);
        exchanges.push(ex.clone());
    });
    metrics.pipeline(&pipeline.stats(), &source.stats());
    metrics.publish(pipeline.stats().last_ts.unwrap_or_default());
    (exchanges, slowest)
}

/// GET `path` over HTTP/1.1; (status, content-type, body).
pub fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let (status, head, body) = request(addr, "GET", path, "");
    let body = String::from_utf8(body).expect("UTF-8 body");
    (status, header(&head, "content-type"), body)
}

/// The value of header `name` in a response head ("" if absent).
pub fn header(head: &str, name: &str) -> String {
    head.lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
        .unwrap_or_default()
}

/// `method path` with extra request header lines (each ending `\r\n`):
/// (status, response head, body bytes as sent).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("server accepts");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{headers}\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("response read");
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("head and body");
    let head = String::from_utf8(raw[..end].to_vec()).expect("UTF-8 head");
    let status = head[9..12].parse().expect("status code");
    (status, head, raw[end + 4..].to_vec())
}

/// One sample line: name, labels, value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, k: &str) -> &str {
        self.labels.get(k).map(String::as_str).unwrap_or("")
    }
}

/// Parse the text exposition (panics on anything malformed).
pub fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, rest) = match line.find('{') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => {
                let (n, v) = line.split_once(' ').expect("name value");
                out.push(Sample {
                    name: n.into(),
                    labels: BTreeMap::new(),
                    value: parse_value(v),
                });
                continue;
            }
        };
        let mut labels = BTreeMap::new();
        let mut chars = rest.char_indices().peekable();
        let value_at;
        loop {
            let (i, c) = chars.next().expect("label or }");
            if c == '}' {
                value_at = i + 1;
                break;
            }
            if c == ',' {
                continue;
            }
            let start = i;
            let mut eq = start;
            for (j, c) in chars.by_ref() {
                if c == '=' {
                    eq = j;
                    break;
                }
            }
            let key = rest[start..eq].to_string();
            assert_eq!(chars.next().map(|x| x.1), Some('"'), "{line}");
            let mut val = String::new();
            loop {
                let (_, c) = chars.next().expect("closing quote");
                match c {
                    '"' => break,
                    '\\' => match chars.next().expect("escape").1 {
                        'n' => val.push('\n'),
                        o => val.push(o),
                    },
                    o => val.push(o),
                }
            }
            labels.insert(key, val);
        }
        out.push(Sample {
            name: name.to_string(),
            labels,
            value: parse_value(rest[value_at..].trim()),
        });
    }
    out
}

fn parse_value(v: &str) -> f64 {
    match v.split_whitespace().next().expect("value") {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        x => x.parse().unwrap_or_else(|_| panic!("bad value {x:?}")),
    }
}

pub fn sum(samples: &[Sample], name: &str, filter: impl Fn(&Sample) -> bool) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && filter(s))
        .map(|s| s.value)
        .sum()
}

/// `promtool check metrics` on `text`: None when promtool is missing,
/// else (clean, its output).
pub fn promtool_check(text: &str) -> Option<(bool, String)> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let msg = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success() && msg.trim().is_empty(), msg))
}

/// Every histogram series is internally consistent: cumulative buckets
/// never decrease and `+Inf` equals `_count`.
pub fn assert_histograms_whole(samples: &[Sample], name: &str) {
    let key = |s: &Sample| {
        let mut l = s.labels.clone();
        l.remove("le");
        format!("{l:?}")
    };
    let mut buckets: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut counts: BTreeMap<String, f64> = BTreeMap::new();
    for s in samples {
        if s.name == format!("{name}_bucket") {
            let le = parse_value(s.label("le"));
            buckets.entry(key(s)).or_default().push((le, s.value));
        } else if s.name == format!("{name}_count") {
            counts.insert(key(s), s.value);
        }
    }
    assert_eq!(buckets.len(), counts.len(), "bucket and count series match");
    for (k, mut b) in buckets {
        b.sort_by(|x, y| x.0.total_cmp(&y.0));
        for w in b.windows(2) {
            assert!(w[0].1 <= w[1].1, "torn histogram {k}: {b:?}");
        }
        let inf = b.last().unwrap();
        assert!(inf.0.is_infinite(), "+Inf bucket present for {k}");
        assert_eq!(inf.1, counts[&k], "+Inf == _count for {k}");
    }
}
