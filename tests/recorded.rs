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

/// Classic pcap records of `bytes` (global header, records), or None.
fn pcap_records(bytes: &[u8]) -> (Vec<u8>, Vec<Vec<u8>>) {
    assert_eq!(
        &bytes[..4],
        &[0xd4, 0xc3, 0xb2, 0xa1],
        "little-endian µs pcap"
    );
    let header = bytes[..24].to_vec();
    let mut records = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let incl = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        records.push(bytes[at..at + 16 + incl].to_vec());
        at += 16 + incl;
    }
    (header, records)
}

/// Loss never makes a wrong pairing: drop each packet of a keep-alive and a
/// pipelining capture in turn; every exchange apitap still reports with a
/// status and without `capture_loss` must carry the status the client got
/// for that request (matched in order per connection).
#[test]
fn lossy_copies_never_pair_wrongly() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/captures");
    let tmp = tempfile::tempdir().unwrap();
    let mut checked = 0;
    let mut marked = 0;
    for scenario in ["keepalive", "pipelining", "chunked"] {
        let truth: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("{scenario}.truth.json"))).unwrap(),
        )
        .unwrap();
        let want = by_port(
            truth["exchanges"].as_array().unwrap().clone().into_iter(),
            |t| t["client_port"].as_u64().unwrap(),
        );
        let (header, records) =
            pcap_records(&std::fs::read(dir.join(format!("{scenario}.pcap"))).unwrap());
        for drop in 0..records.len() {
            let mut bytes = header.clone();
            for (i, r) in records.iter().enumerate() {
                if i != drop {
                    bytes.extend_from_slice(r);
                }
            }
            let lossy = tmp.path().join(format!("{scenario}-{drop}.pcap"));
            std::fs::write(&lossy, &bytes).unwrap();
            let (ours, out) = common::exchanges_of(&lossy, &[]);
            assert!(out.status.success());
            let mut ours: Vec<Value> = ours
                .into_iter()
                .filter(|r| !r["method"].is_null())
                .collect();
            ours.sort_by(|a, b| a["ts"].as_str().cmp(&b["ts"].as_str()));
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
            for (port, mine) in &ours {
                let theirs = &want[port];
                // Our requests are a subsequence of what the client sent.
                let mut j = 0;
                for m in mine {
                    while j < theirs.len()
                        && (theirs[j]["method"] != m["method"]
                            || theirs[j]["target"] != m["target"])
                    {
                        j += 1;
                    }
                    assert!(
                        j < theirs.len(),
                        "{scenario} without packet {drop}: unknown request {m}"
                    );
                    if m["capture_loss"] == true {
                        marked += 1;
                    } else if !m["status"].is_null() {
                        assert_eq!(
                            m["status"], theirs[j]["status"],
                            "{scenario} without packet {drop}: {} {} paired with the wrong response",
                            m["method"], m["target"]
                        );
                        checked += 1;
                    }
                    j += 1;
                }
            }
        }
    }
    assert!(checked > 500, "checked {checked}");
    assert!(marked > 0, "some losses are marked");
}

/// On `-i any` a packet crossing a veth and a bridge is captured twice:
/// every packet twice must give the same exchanges as once.
#[test]
fn packets_seen_twice_make_no_second_exchange() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/captures");
    let tmp = tempfile::tempdir().unwrap();
    for scenario in ["mixed", "pipelining"] {
        let original = dir.join(format!("{scenario}.pcap"));
        let (header, records) = pcap_records(&std::fs::read(&original).unwrap());
        let mut bytes = header;
        for r in &records {
            bytes.extend_from_slice(r);
            bytes.extend_from_slice(r);
        }
        let doubled = tmp.path().join(format!("{scenario}-twice.pcap"));
        std::fs::write(&doubled, &bytes).unwrap();
        let (once, _) = common::exchanges_of(&original, &[]);
        let (twice, _) = common::exchanges_of(&doubled, &[]);
        assert!(!once.is_empty());
        assert_eq!(twice, once, "{scenario}");
    }
}
