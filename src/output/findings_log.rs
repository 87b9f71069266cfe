//! The findings log: one JSON object per line, per SPEC.md, with repeats
//! folded.
//!
//! Contract: a finding whose (kind, server, route, client address) was
//! written less than the fold interval ago (capture time) is not written;
//! it is counted. When that key's interval is over — at its next occurrence,
//! at [`FindingsLog::flush_expired`], when the key is evicted from the
//! bounded fold table, or at [`FindingsLog::finish`] — one summary line is
//! written: the last folded occurrence with `"folded": N`, the number of
//! occurrences it stands for. So every occurrence is either a line without
//! `folded` or counted in exactly one `folded`, and a key gets at most one
//! plain line per interval. Lines are written in the order they are decided,
//! so a summary line may carry an earlier `ts` than the line before it.
//! Memory: at most `max_entries` keys (oldest evicted first, counted in
//! [`FindingsLog::evicted`]), each holding at most one finding.
//! Evidence comes from classification, already redacted.

use crate::classify::findings::Finding;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};

#[derive(Serialize)]
struct Record<'a> {
    ts: String,
    kind: &'static str,
    severity: &'static str,
    client: SocketAddr,
    server: SocketAddr,
    host: Option<&'a str>,
    route: Option<&'a str>,
    evidence: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    folded: Option<u64>,
}

struct FoldEntry {
    /// Capture time (µs) of the last plain line of this key.
    window_start: i64,
    /// Occurrences not written since then, and the last of them.
    folded: u64,
    last: Option<Finding>,
}

/// `*to = from.clone()`, reusing `to`'s strings.
fn clone_into(from: &Finding, to: &mut Finding) {
    // Destructured, so that a new field cannot be forgotten here.
    let Finding {
        ts,
        kind,
        severity,
        client,
        server,
        host,
        route,
        evidence,
    } = from;
    to.ts = *ts;
    to.kind = *kind;
    to.severity = *severity;
    to.client = *client;
    to.server = *server;
    to.host.clone_from(host);
    to.route.clone_from(route);
    to.evidence.clone_from(evidence);
}

pub struct FindingsLog {
    out: Box<dyn Write + Send>,
    interval: i64,
    max_entries: usize,
    hasher: ahash::RandomState,
    table: HashMap<u64, FoldEntry, ahash::RandomState>,
    /// Keys in insertion order (eviction order).
    order: VecDeque<u64>,
    /// Keys evicted from the fold table while it was full.
    pub evicted: u64,
    /// Lines written, occurrences folded.
    pub written: u64,
    pub folded: u64,
    /// Lines that could not be written (a full disk, a closed pipe): each
    /// is lost whole (a record is built in `line`, then written at once)
    /// and the next is tried again.
    pub lost: u64,
    /// The first write error (reported by [`FindingsLog::finish`]).
    error: Option<io::Error>,
    line: Vec<u8>,
}

impl FindingsLog {
    /// `fold_interval_micros` 0 writes every occurrence.
    pub fn new(out: Box<dyn Write + Send>, fold_interval_micros: i64) -> Self {
        Self::with_capacity(
            out,
            fold_interval_micros,
            crate::classify::settings::DEFAULT_FOLD_MAX_ENTRIES,
        )
    }

    pub fn with_capacity(
        out: Box<dyn Write + Send>,
        fold_interval_micros: i64,
        max_entries: usize,
    ) -> Self {
        FindingsLog {
            out,
            interval: fold_interval_micros.max(0),
            max_entries: max_entries.max(1),
            hasher: ahash::RandomState::new(),
            table: HashMap::default(),
            order: VecDeque::new(),
            evicted: 0,
            written: 0,
            folded: 0,
            lost: 0,
            error: None,
            line: Vec::new(),
        }
    }

    fn key(&self, f: &Finding) -> u64 {
        let mut h = self.hasher.build_hasher();
        f.kind.hash(&mut h);
        f.server.hash(&mut h);
        f.route.hash(&mut h);
        let client: IpAddr = f.client.ip();
        client.hash(&mut h);
        h.finish()
    }

    fn emit(&mut self, f: &Finding, folded: Option<u64>) {
        let rec = Record {
            ts: f.ts.to_string(),
            kind: f.kind.as_str(),
            severity: f.severity.as_str(),
            client: f.client,
            server: f.server,
            host: f.host.as_deref(),
            route: f.route.as_deref(),
            evidence: &f.evidence,
            folded,
        };
        self.line.clear();
        let r = serde_json::to_writer(&mut self.line, &rec)
            .map_err(io::Error::from)
            .and_then(|_| {
                self.line.push(b'\n');
                self.out.write_all(&self.line)
            });
        match r {
            Ok(()) => self.written += 1,
            Err(e) => {
                self.lost += 1;
                self.error.get_or_insert(e);
            }
        }
    }

    /// Write the summary line of an entry with folded occurrences.
    fn flush_entry(&mut self, e: &mut FoldEntry) {
        if let Some(last) = e.last.take() {
            self.emit(&last, Some(e.folded));
        }
        e.folded = 0;
    }

    /// One occurrence (see module doc).
    pub fn write(&mut self, f: &Finding) {
        if self.interval == 0 {
            self.emit(f, None);
            return;
        }
        let k = self.key(f);
        let now = f.ts.as_micros();
        if let Some(e) = self.table.get_mut(&k) {
            if now.saturating_sub(e.window_start) < self.interval {
                // The common case for a repeated finding: remembered as the
                // last occurrence, in the strings the previous one left.
                e.folded += 1;
                self.folded += 1;
                match &mut e.last {
                    Some(last) => clone_into(f, last),
                    None => e.last = Some(f.clone()),
                }
                return;
            }
            let mut e = std::mem::replace(
                e,
                FoldEntry {
                    window_start: now,
                    folded: 0,
                    last: None,
                },
            );
            self.flush_entry(&mut e);
            self.emit(f, None);
            return;
        }
        while self.table.len() >= self.max_entries {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(mut e) = self.table.remove(&old) {
                self.evicted += 1;
                self.flush_entry(&mut e);
            }
        }
        self.emit(f, None);
        self.table.insert(
            k,
            FoldEntry {
                window_start: now,
                folded: 0,
                last: None,
            },
        );
        self.order.push_back(k);
    }

    /// Write the summary lines of keys whose interval ended before `now`
    /// (capture time), and forget them (live mode: call on ticks).
    pub fn flush_expired(&mut self, now: crate::clock::Timestamp) {
        let now = now.as_micros();
        let interval = self.interval;
        let expired: Vec<u64> = self
            .order
            .iter()
            .copied()
            .filter(|k| {
                self.table
                    .get(k)
                    .is_some_and(|e| now.saturating_sub(e.window_start) >= interval)
            })
            .collect();
        if expired.is_empty() {
            return;
        }
        for k in &expired {
            if let Some(mut e) = self.table.remove(k) {
                self.flush_entry(&mut e);
            }
        }
        let table = &self.table;
        self.order.retain(|k| table.contains_key(k));
    }

    /// The first write error met so far, forgotten: [`FindingsLog::finish`] then
    /// reports only what is still to come (a live run's log that met a full
    /// disk and went on; its lines lost are counted in `lost`).
    pub fn take_error(&mut self) -> Option<io::Error> {
        self.error.take()
    }

    /// Write every pending summary line, flush, and report the first error
    /// any write met.
    pub fn finish(&mut self) -> io::Result<()> {
        while let Some(k) = self.order.pop_front() {
            if let Some(mut e) = self.table.remove(&k) {
                self.flush_entry(&mut e);
            }
        }
        let flushed = self.out.flush();
        match self.error.take() {
            Some(e) => Err(e),
            None => flushed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::findings::{FindingKind, Severity};
    use crate::clock::Timestamp;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl Buf {
        fn lines(&self) -> Vec<serde_json::Value> {
            String::from_utf8(self.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        }
    }

    fn f(secs: i64, kind: FindingKind, client: &str, route: &str) -> Finding {
        Finding {
            ts: Timestamp::from_secs_micros(secs, 0),
            kind,
            severity: Severity::High,
            client: client.parse().unwrap(),
            server: "10.0.0.9:80".parse().unwrap(),
            host: Some("api.example.com".into()),
            route: Some(route.into()),
            evidence: "Authorization: Basic <redacted, 24 bytes>".into(),
        }
    }

    const MIN: i64 = 60;

    /// A full disk loses findings whole and counted (a record never lands
    /// half written, even through a small buffer); once there is room the
    /// log goes on; `finish` reports the first error.
    #[test]
    fn a_full_disk_loses_whole_lines_counted_and_the_log_goes_on() {
        use std::sync::atomic::Ordering::Relaxed;
        let disk = crate::output::Disk::default();
        disk.room.store(1000, Relaxed);
        let out = io::BufWriter::with_capacity(256, disk.clone());
        let mut log = FindingsLog::new(Box::new(out), 0);
        let k = FindingKind::CleartextCredentials;
        for i in 0..60 {
            if i == 40 {
                disk.room.store(usize::MAX / 2, Relaxed);
            }
            log.write(&f(i, k, "10.0.0.5:1000", &format!("/r{i}")));
        }
        assert!(log.lost > 0);
        assert!(matches!(log.finish(), Err(e) if e.raw_os_error() == Some(libc::ENOSPC)));
        let (written, lost) = (log.written, log.lost);
        drop(log);
        // Every line parses (Buf::lines panics otherwise).
        let lines = Buf(disk.data.clone()).lines();
        assert_eq!(lines.len() as u64, written);
        assert_eq!(written + lost, 60);
        assert_eq!(lines.last().unwrap()["route"], "/r59");
        assert!(lines.iter().any(|l| l["route"] == "/r40"));
    }

    #[test]
    fn repeats_fold_per_interval() {
        let buf = Buf::default();
        let mut log = FindingsLog::new(Box::new(buf.clone()), 10 * MIN * 1_000_000);
        let k = FindingKind::CleartextCredentials;
        // Same key from two client ports of one client: folded.
        log.write(&f(0, k, "10.0.0.5:1000", "/a"));
        log.write(&f(1, k, "10.0.0.5:1001", "/a"));
        log.write(&f(2, k, "10.0.0.5:1002", "/a"));
        // Another route, another client, another kind: not folded.
        log.write(&f(3, k, "10.0.0.5:1000", "/b"));
        log.write(&f(3, k, "10.0.0.6:1000", "/a"));
        log.write(&f(3, FindingKind::WeakJwt, "10.0.0.5:1000", "/a"));
        // After the interval: summary of the two folded, then a plain line.
        log.write(&f(10 * MIN, k, "10.0.0.5:1003", "/a"));
        log.write(&f(10 * MIN + 1, k, "10.0.0.5:1003", "/a"));
        log.finish().unwrap();
        let lines = buf.lines();
        let summary: Vec<(i64, Option<u64>)> = lines
            .iter()
            .filter(|l| {
                l["route"] == "/a"
                    && l["client"].as_str().unwrap().starts_with("10.0.0.5")
                    && l["kind"] == "cleartext_credentials"
            })
            .map(|l| {
                (
                    l["ts"].as_str().unwrap()[14..16].parse().unwrap(),
                    l["folded"].as_u64(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![(0, None), (0, Some(2)), (10, None), (10, Some(1))]
        );
        assert_eq!(lines.len(), 7);
        // every occurrence accounted for exactly once
        let total: u64 = lines
            .iter()
            .map(|l| l["folded"].as_u64().unwrap_or(1))
            .sum();
        assert_eq!(total, 8);
        assert_eq!(
            lines[0]["evidence"],
            "Authorization: Basic <redacted, 24 bytes>"
        );
        assert_eq!(lines[0]["severity"], "high");
    }

    #[test]
    fn zero_interval_writes_everything() {
        let buf = Buf::default();
        let mut log = FindingsLog::new(Box::new(buf.clone()), 0);
        for i in 0..5 {
            log.write(&f(i, FindingKind::UnsafeUrl, "10.0.0.5:1", "/a"));
        }
        log.finish().unwrap();
        assert_eq!(buf.lines().len(), 5);
    }

    #[test]
    fn fold_table_is_bounded_and_counts_survive_eviction() {
        let buf = Buf::default();
        let mut log = FindingsLog::with_capacity(Box::new(buf.clone()), 600_000_000, 3);
        for round in 0..2 {
            for i in 0..10 {
                log.write(&f(
                    round,
                    FindingKind::UnsafeUrl,
                    "10.0.0.5:1",
                    &format!("/r{i}"),
                ));
            }
        }
        assert!(log.table.len() <= 3 && log.order.len() <= 3);
        assert!(log.evicted > 0);
        log.finish().unwrap();
        let total: u64 = buf
            .lines()
            .iter()
            .map(|l| l["folded"].as_u64().unwrap_or(1))
            .sum();
        assert_eq!(total, 20);
    }

    #[test]
    fn flush_expired_writes_pending_counts() {
        let buf = Buf::default();
        let mut log = FindingsLog::new(Box::new(buf.clone()), 60_000_000);
        for i in 0..4 {
            log.write(&f(i, FindingKind::UnsafeUrl, "10.0.0.5:1", "/a"));
        }
        log.flush_expired(Timestamp::from_secs_micros(30, 0));
        assert_eq!(buf.lines().len(), 1);
        log.flush_expired(Timestamp::from_secs_micros(61, 0));
        let lines = buf.lines();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["folded"], 3);
        assert!(log.table.is_empty() && log.order.is_empty());
    }
}
