//! `--workers N` gives the results of one worker: on every corpus capture
//! and every recorded capture, the exchange log (as a set of lines), the
//! findings log and the final metrics of `--workers 2` and `--workers 3`
//! equal those of `--workers 1`. Only what depends on the order of events
//! across flows may differ (issue #8): floating-point sums of durations
//! (added in another order) within 1e-9 relative, and `endpoint_gone`
//! (whether a path's 2xx was seen before its 404 on another flow) within
//! 1 % of the exchanges.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

struct Run {
    exchanges: Vec<String>,
    findings: Vec<String>,
    metrics: BTreeMap<String, f64>,
}

fn run(file: &Path, workers: usize, dir: &Path) -> Run {
    let tag = format!("{}-{workers}", file.file_name().unwrap().to_string_lossy());
    let (ex, fi, me) = (
        dir.join(format!("{tag}.ex")),
        dir.join(format!("{tag}.fi")),
        dir.join(format!("{tag}.me")),
    );
    let out = common::apitap()
        .arg("-r")
        .arg(file)
        .arg("--workers")
        .arg(workers.to_string())
        .arg("--exchanges")
        .arg(&ex)
        .arg("--findings")
        .arg(&fi)
        .arg("--metrics-out")
        .arg(&me)
        .output()
        .expect("apitap runs");
    assert!(
        out.status.success(),
        "{tag}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = |p: &Path| {
        let mut v: Vec<String> = std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        v.sort();
        v
    };
    let metrics = std::fs::read_to_string(&me)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        // Process metrics and build info describe the process, not the traffic.
        .filter(|l| !l.starts_with("process_") && !l.starts_with("apitap_build_info"))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect();
    Run {
        exchanges: lines(&ex),
        findings: lines(&fi),
        metrics,
    }
}

/// Lines in one sorted list and not the other.
fn differing(a: &[String], b: &[String]) -> Vec<String> {
    let mut count: BTreeMap<&str, i64> = BTreeMap::new();
    for l in a {
        *count.entry(l).or_default() += 1;
    }
    for l in b {
        *count.entry(l).or_default() -= 1;
    }
    count
        .into_iter()
        .filter(|(_, n)| *n != 0)
        .map(|(l, _)| l.to_string())
        .collect()
}

/// Occurrences per finding, as the findings log accounts for them (a plain
/// line is one, a summary line `folded`). Which occurrence of a folded key
/// is written, and which exchange crosses an endpoint-level threshold, depend
/// on the order across flows, so `ts`, `evidence` (and the client, for
/// endpoint-level kinds) are left out of the key.
fn finding_counts(lines: &[String]) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).expect("findings line is JSON");
        let kind = v["kind"].as_str().unwrap_or_default();
        let endpoint_level = matches!(kind, "endpoint_sprawl" | "route_variants");
        let client = v["client"].as_str().unwrap_or_default();
        let client_ip = client.rsplit_once(':').map_or(client, |(ip, _)| ip);
        let key = format!(
            "{kind} {} {} {} {} {}",
            v["severity"],
            v["server"],
            v["host"],
            v["route"],
            if endpoint_level { "" } else { client_ip }
        );
        *counts.entry(key).or_default() += v["folded"].as_u64().unwrap_or(1);
    }
    counts
}

fn compare(file: &Path, one: &Run, many: &Run, workers: usize) -> Result<(), String> {
    let name = file.display();
    let n = one.exchanges.len();
    if many.exchanges.len() != n {
        return Err(format!(
            "{name}: {n} exchanges with 1 worker, {} with {workers}",
            many.exchanges.len()
        ));
    }
    let order_dependent = |l: &String| l.contains("endpoint_gone");
    let budget = n.div_ceil(100);
    let diff = differing(&one.exchanges, &many.exchanges);
    if diff.iter().any(|l| !order_dependent(l)) || diff.len() > 2 * budget {
        return Err(format!(
            "{name}: exchange logs differ ({workers} workers): {:?}",
            &diff[..diff.len().min(4)]
        ));
    }
    let (fa, fb) = (
        finding_counts(&one.findings),
        finding_counts(&many.findings),
    );
    for k in fa.keys().chain(fb.keys()) {
        let (a, b) = (fa.get(k).unwrap_or(&0), fb.get(k).unwrap_or(&0));
        let ok = a == b || (k.contains("endpoint_gone") && a.abs_diff(*b) <= budget as u64);
        if !ok {
            return Err(format!(
                "{name}: findings {k}: {a} with 1 worker, {b} with {workers}"
            ));
        }
    }
    let keys: std::collections::BTreeSet<_> =
        one.metrics.keys().chain(many.metrics.keys()).collect();
    for k in keys {
        let (a, b) = (
            one.metrics.get(k).copied().unwrap_or(0.0),
            many.metrics.get(k).copied().unwrap_or(0.0),
        );
        let ok = if k.contains("_sum{") {
            (a - b).abs() <= 1e-9 * a.abs().max(1.0)
        } else if k.contains("endpoint_gone") {
            (a - b).abs() <= budget as f64
        } else {
            a == b
        };
        if !ok {
            return Err(format!(
                "{name}: {k} is {a} with 1 worker, {b} with {workers}"
            ));
        }
    }
    Ok(())
}

fn captures() -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(dir) = common::corpus_dir() {
        for rec in common::manifest(&dir) {
            files.push(dir.join(rec["file"].as_str().expect("file")));
        }
    } else {
        eprintln!("corpus not found (set APITAP_CORPUS): only the recorded captures");
    }
    let own = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/captures");
    for e in std::fs::read_dir(own).expect("tests/captures") {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "pcap" || x == "pcapng") {
            files.push(p);
        }
    }
    files.sort();
    files
}

#[test]
fn more_workers_give_the_same_results() {
    let dir = tempfile::tempdir().unwrap();
    let files = captures();
    assert!(files.len() >= 5, "only {} captures", files.len());
    let mut failures = Vec::new();
    let mut exchanges = 0;
    for file in &files {
        let one = run(file, 1, dir.path());
        exchanges += one.exchanges.len();
        for workers in [2, 3] {
            let many = run(file, workers, dir.path());
            if let Err(e) = compare(file, &one, &many, workers) {
                failures.push(e);
            }
        }
    }
    eprintln!("{} captures, {exchanges} exchanges compared", files.len());
    assert!(exchanges > 1000, "only {exchanges} exchanges compared");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The comparison itself can fail: a changed exchange is caught.
#[test]
fn a_changed_exchange_is_reported() {
    let one = Run {
        exchanges: vec!["{\"status\":200}".into()],
        findings: vec![],
        metrics: BTreeMap::new(),
    };
    let other = Run {
        exchanges: vec!["{\"status\":404}".into()],
        findings: vec![],
        metrics: BTreeMap::new(),
    };
    assert!(compare(Path::new("x"), &one, &other, 2).is_err());
    let mut m = one.metrics.clone();
    m.insert("apitap_connections_total{x}".into(), 1.0);
    let other = Run {
        exchanges: one.exchanges.clone(),
        findings: vec![],
        metrics: m,
    };
    assert!(compare(Path::new("x"), &one, &other, 2).is_err());
}
