//! Helpers for tests/dashboards.rs: a PromQL scanner good enough to find
//! metric names, selectors and ranges; variable substitution; a minimal
//! HTTP/1.0 GET; processes killed on drop.

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The dashboards, as (file name, parsed JSON, text).
pub fn dashboards() -> Vec<(String, Value, String)> {
    let mut out = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(repo().join("dashboards"))
        .expect("dashboards/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    for p in paths {
        let text = std::fs::read_to_string(&p).unwrap();
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not JSON: {e}", p.display()));
        out.push((
            p.file_name().unwrap().to_string_lossy().into_owned(),
            v,
            text,
        ));
    }
    out
}

/// One query of a dashboard: where it is and what it says.
pub struct Query {
    pub dashboard: String,
    pub panel: String,
    pub ref_id: String,
    pub expr: String,
}

impl Query {
    pub fn place(&self) -> String {
        format!(
            "dashboard {:?}, panel {:?}, query {}",
            self.dashboard, self.panel, self.ref_id
        )
    }
}

pub fn panels(d: &Value) -> Vec<&Value> {
    d["panels"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

pub fn queries(d: &Value) -> Vec<Query> {
    let title = d["title"].as_str().unwrap_or("?").to_string();
    let mut out = Vec::new();
    for p in panels(d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(Query {
                dashboard: title.clone(),
                panel: p["title"].as_str().unwrap_or("?").to_string(),
                ref_id: t["refId"].as_str().unwrap_or("?").to_string(),
                expr: t["expr"].as_str().unwrap_or("").to_string(),
            });
        }
    }
    out
}

/// Grafana variables as the e2e test sets them.
pub fn substitute(expr: &str, instance: &str) -> String {
    expr.replace("$__rate_interval", "15s")
        .replace("$job", "apitap")
        .replace("$instance", instance)
        .replace("$server", ".*")
        .replace("$route", ".*")
}

const KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "offset",
    "bool",
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "topk",
    "bottomk",
    "quantile",
    "stddev",
    "stdvar",
    "count_values",
    "group",
    "inf",
    "nan",
];
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// A metric selector in an expression: its name, the text inside its braces
/// (None without braces) and the range after it (None without).
#[derive(Debug)]
pub struct Selector {
    pub name: String,
    pub matchers: Option<String>,
    pub range: Option<String>,
}

impl Selector {
    pub fn text(&self) -> String {
        match &self.matchers {
            Some(m) => format!("{}{{{}}}", self.name, m),
            None => self.name.clone(),
        }
    }
}

fn skip_string(b: &[u8], mut i: usize) -> usize {
    let q = b[i];
    i += 1;
    while i < b.len() && b[i] != q {
        if b[i] == b'\\' {
            i += 1;
        }
        i += 1;
    }
    i + 1
}

fn close_of(b: &[u8], mut i: usize, open: u8, close: u8) -> usize {
    let mut depth = 0;
    while i < b.len() {
        match b[i] {
            b'"' | b'\'' | b'`' => {
                i = skip_string(b, i);
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
        i += 1;
    }
    b.len()
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// Every metric selector of a PromQL expression (functions, keywords,
/// label lists, strings, numbers and durations are skipped), plus every
/// range or subquery bracket found anywhere.
pub fn scan(expr: &str) -> (Vec<Selector>, Vec<String>) {
    let b = expr.as_bytes();
    let mut sels = Vec::new();
    let mut ranges = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'"' || c == b'\'' || c == b'`' {
            i = skip_string(b, i);
        } else if c == b'[' {
            let end = close_of(b, i, b'[', b']');
            ranges.push(expr[i + 1..end.min(b.len())].to_string());
            i = end + 1;
        } else if c == b'{' {
            // a selector without a name: {__name__=...}
            let end = close_of(b, i, b'{', b'}');
            sels.push(Selector {
                name: String::new(),
                matchers: Some(expr[i + 1..end].to_string()),
                range: None,
            });
            i = end + 1;
        } else if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                let e = b[i] == b'e' || b[i] == b'E';
                i += 1;
                if e && i < b.len() && (b[i] == b'-' || b[i] == b'+') {
                    i += 1;
                }
            }
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b':' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                i += 1;
            }
            let word = &expr[start..i];
            let j = skip_ws(b, i);
            if LABEL_LISTS.contains(&word) {
                if j < b.len() && b[j] == b'(' {
                    i = close_of(b, j, b'(', b')') + 1;
                }
                continue;
            }
            if KEYWORDS.contains(&word) || (j < b.len() && b[j] == b'(') {
                continue; // keyword or function call
            }
            let mut sel = Selector {
                name: word.to_string(),
                matchers: None,
                range: None,
            };
            let mut k = j;
            if k < b.len() && b[k] == b'{' {
                let end = close_of(b, k, b'{', b'}');
                sel.matchers = Some(expr[k + 1..end].to_string());
                k = skip_ws(b, end + 1);
                i = end + 1;
            }
            if k < b.len() && b[k] == b'[' {
                let end = close_of(b, k, b'[', b']');
                sel.range = Some(expr[k + 1..end].to_string());
            }
            sels.push(sel);
        } else {
            i += 1;
        }
    }
    (sels, ranges)
}

/// The values a matcher on `label` allows (`label="a"` or `label=~"a|b"`).
pub fn matcher_values(expr: &str, label: &str) -> Option<Vec<String>> {
    for op in ["=~\"", "=\""] {
        let pat = format!("{label}{op}");
        if let Some(p) = expr.find(&pat) {
            let rest = &expr[p + pat.len()..];
            let v = &rest[..rest.find('"')?];
            return Some(v.split('|').map(str::to_string).collect());
        }
    }
    None
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// GET over HTTP/1.0 (the server closes; no chunking): (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

/// Run one instant query: Ok(result array) or Err(Prometheus' error).
pub fn prom_query(addr: SocketAddr, q: &str) -> Result<Vec<Value>, String> {
    let (_, body) = http_get(addr, &format!("/api/v1/query?query={}", encode(q)))
        .map_err(|e| format!("HTTP: {e}"))?;
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("not JSON ({e}): {body}"))?;
    if v["status"] != "success" {
        return Err(format!("{} {}", v["errorType"], v["error"]));
    }
    match &v["data"]["result"] {
        Value::Array(a) => Ok(a.clone()),
        // scalar / string results: count as data
        other => Ok(vec![other.clone()]),
    }
}

/// Metric names in an exposition (histogram families expanded).
pub fn exposition_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let (Some(n), Some(t)) = (it.next(), it.next()) else {
                continue;
            };
            names.insert(n.to_string());
            if t == "histogram" || t == "summary" {
                for s in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{n}{s}"));
                }
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

/// A child process that is killed when the test ends, however it ends.
pub struct Proc(pub Child, pub &'static str);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Wait until GET path answers 200, or the child exits, or the deadline.
pub fn wait_ready(p: &mut Proc, addr: SocketAddr, path: &str, secs: u64) -> Result<(), String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Ok(Some(st)) = p.0.try_wait() {
            return Err(format!("{} exited early: {st}", p.1));
        }
        if let Ok((200, _)) = http_get(addr, path) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("{} not ready at {addr}{path} after {secs} s", p.1));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}
