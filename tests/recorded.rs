//! Replays of real traffic recorded by `tools/recorder` (real servers and
//! clients in network namespaces) against ground truth taken from what the
//! clients sent and received — never from apitap.

mod common;

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// Causes apitap does not decide yet (issue 4): compared loosely.
const NOT_YET: &[&str] = &[];

fn by_port(
    records: impl Iterator<Item = Value>,
    port_of: impl Fn(&Value) -> u64,
) -> BTreeMap<u64, Vec<Value>> {
    let mut m: BTreeMap<u64, Vec<Value>> = BTreeMap::new();
    for r in records {
        m.entry(port_of(&r)).or_default().push(r);
    }
    m
}

fn check(scenario: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/captures");
    let truth: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(format!("{scenario}.truth.json"))).unwrap(),
    )
    .unwrap();
    let timeout = truth["transaction_timeout_s"].as_f64().unwrap().to_string();
    let (ours, out) = common::exchanges_of(
        &dir.join(format!("{scenario}.pcap")),
        &["--transaction-timeout", &timeout],
    );
    assert!(
        out.status.success(),
        "{scenario}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut ours: Vec<Value> = ours
        .into_iter()
        .filter(|r| !r["method"].is_null())
        .collect();
    ours.sort_by(|a, b| a["ts"].as_str().cmp(&b["ts"].as_str()));
    let want = truth["exchanges"].as_array().unwrap().clone();
    assert_eq!(ours.len(), want.len(), "{scenario}: number of requests");
    let ours = by_port(ours.into_iter(), |r| {
        r["client"]
            .as_str()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    });
    let want = by_port(want.into_iter(), |t| t["client_port"].as_u64().unwrap());
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{scenario}: connections"
    );
    for (port, theirs) in &want {
        let mine = &ours[port];
        assert_eq!(
            mine.len(),
            theirs.len(),
            "{scenario}: requests on port {port}"
        );
        for (m, t) in mine.iter().zip(theirs) {
            let ctx = format!("{scenario} port {port} {} {}", t["method"], t["target"]);
            assert_eq!(m["method"], t["method"], "{ctx}");
            let target = m["target"].as_str().unwrap();
            if !target.contains("REDACTED") {
                assert_eq!(target, t["target"].as_str().unwrap(), "{ctx}");
            }
            let expected = t["expected_failure"].as_str();
            if expected == Some("timeout") {
                assert!(
                    m["status"].is_null(),
                    "{ctx}: a timed-out request has no status"
                );
            } else {
                assert_eq!(m["status"], t["status"], "{ctx}");
            }
            if !t["status"].is_null() && expected != Some("timeout") {
                assert_eq!(m["response_bytes"], t["response_body_bytes"], "{ctx}");
            }
            if expected.is_some_and(|e| NOT_YET.contains(&e)) {
                assert!(!m["failure"].is_null(), "{ctx}: failed somehow");
            } else {
                assert_eq!(m["failure"].as_str(), expected, "{ctx}: failure cause");
            }
        }
    }
}

#[test]
fn keepalive_matches_truth() {
    check("keepalive");
}

#[test]
fn pipelining_matches_truth() {
    check("pipelining");
}

#[test]
fn chunked_matches_truth() {
    check("chunked");
}

#[test]
fn continue_matches_truth() {
    check("continue");
}

#[test]
fn statuses_match_truth() {
    check("statuses");
}

#[test]
fn reset_matches_truth() {
    check("reset");
}

#[test]
fn timeout_matches_truth() {
    check("timeout");
}

#[test]
fn mixed_matches_truth() {
    check("mixed");
}
