//! apitap against an independent oracle: tshark's counts for every capture
//! of the third-party corpus (`../shared/corpus/MANIFEST.jsonl`).
//!
//! Per file we compare the number of requests (tshark's `http_request_pdus`
//! minus the messages that are not on TCP) and the histogram of final
//! statuses (tshark's `status_counts` without 1xx). Where tshark is wrong,
//! `KNOWN` asserts apitap's own expected counts and says why, found by
//! reading the packets. Targets (issue 2): total requests within 1 % of
//! tshark's; histograms identical on at least 95 % of the files.

mod common;

use serde_json::Value;
use std::collections::BTreeMap;

type Hist = BTreeMap<u16, u64>;

/// Files on which tshark's count is wrong: (file, apitap's requests,
/// apitap's final statuses, the reason).
/// (file, apitap's requests, apitap's final statuses, why).
type Known = (&'static str, u64, &'static [(u16, u64)], &'static str);

const KNOWN: &[Known] = &[
    // A second oracle for these files: every status line that starts a TCP
    // segment, read by tshark without HTTP reassembly
    // (`-o tcp.desegment_tcp_streams:FALSE -Y 'tcp.payload matches
    // "^HTTP/1\\.[01] [0-9]{3}"'`, deduplicated by stream and raw sequence
    // number). tshark's HTTP dissector counts a response only when it could
    // reassemble it whole, so after a gap, a reordering or a cut-off body it
    // misses responses whose status line is on the wire. apitap logs the
    // status it saw (SPEC: only statuses seen on the wire) and marks the
    // exchange `capture_loss` or `timeout` as the case may be.
    ("arkime-http-retrans-4000.pcap", 4, &[(200, 4)],
     "4 POSTs, 4 status lines; tshark dissects retransmitted out-of-order segments twice (corpus README)"),
    ("ndpi-1kxun-mixed-5xx.pcap", 133, &[(200, 102), (204, 5), (206, 1), (301, 2), (302, 3), (404, 1), (500, 2), (502, 2)],
     "segment-start status lines: 102x200, 5x204, 1x206, ...; tshark misses responses whose bodies lost segments"),
    ("ndpi-netflix.pcap", 32, &[(200, 24), (206, 8)],
     "segment-start status lines: 24x200, 8x206; most video responses lose segments or are cut by the capture's end"),
    ("suricata-http-files-with-gap.pcap", 3, &[(200, 3)],
     "3 status lines; gaps in the bodies are skipped by length, tshark completes only 1 (corpus README)"),
    ("suricata-http-gap-double.pcap", 3, &[(200, 3)],
     "3 status lines; two gaps in the response stream, each skipped by length"),
    ("suricata-http-rst-unacked-truncated.pcap", 1, &[(200, 1)],
     "one 200 head, then a body still arriving 43 s after the request (the client acknowledges it at 40-50 s), \
      the reset at 93 s: status seen, the exchange a timeout at the 30 s deadline"),
    ("suricata-mixed-tls-ocsp-http.pcap", 37, &[(200, 29), (301, 5), (404, 3)],
     "tshark with -o tcp.reassemble_out_of_order:TRUE gives exactly 29x200, 5x301, 3x404 too"),
    ("zeek-http-bro-org-browsing.pcap", 31, &[(200, 31)],
     "31 status lines; one lost segment makes tshark drop one response"),
    ("zeek-http-entity-gap.pcap", 1, &[(200, 1)],
     "1 status line; the body has a gap tshark cannot reassemble (corpus README)"),
    ("zeek-http-erspan-401.pcap",
        22,
        &[(200, 14), (302, 1), (401, 1)],
        "17 segment-start status lines (15x200): the 15th 200 answers GET /SitePages/Home.aspx 53 s \
         after the request, past the 30 s transaction timeout, so (SPEC) the exchange is a timeout and the \
         late response takes its slot without a second record (with --transaction-timeout 60 it is a 200); \
         three later responses on port 49162 were not captured and are logged with capture_loss; \
         tshark sees 12x200"),
];

fn tshark_counts(rec: &Value) -> (u64, Hist) {
    let non_tcp = &rec["non_tcp_http"];
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let requests = n(&rec["http_request_pdus"])
        - n(&non_tcp["requests"])
        - n(&non_tcp["icmp_or_sflow_quoted_requests"]);
    let mut hist = Hist::new();
    for (k, v) in rec["status_counts"].as_object().expect("status_counts") {
        let code: u16 = k.parse().expect("numeric status");
        if code >= 200 {
            hist.insert(code, n(v));
        }
    }
    // Responses that are not on TCP (SSDP over UDP, quoted in ICMP/sFlow)
    // are 200s in this corpus; a TCP monitor does not see them.
    let skip = n(&non_tcp["responses"]) + n(&non_tcp["icmp_or_sflow_quoted_responses"]);
    if skip > 0 {
        let e = hist.entry(200).or_default();
        *e = e.saturating_sub(skip);
        if *e == 0 {
            hist.remove(&200);
        }
    }
    (requests, hist)
}

fn apitap_counts(records: &[Value]) -> (u64, Hist) {
    let mut requests = 0;
    let mut hist = Hist::new();
    for r in records {
        if !r["method"].is_null() {
            requests += 1;
        }
        if let Some(s) = r["status"].as_u64() {
            if s >= 200 {
                *hist.entry(s as u16).or_default() += 1;
            }
        }
    }
    (requests, hist)
}

#[test]
fn corpus_matches_tshark_oracle() {
    let Some(dir) = common::corpus_dir() else {
        eprintln!("corpus not found (set APITAP_CORPUS): skipped");
        return;
    };
    let manifest = common::manifest(&dir);
    assert!(
        manifest.len() >= 70,
        "manifest has {} records",
        manifest.len()
    );
    let (mut ours_total, mut theirs_total) = (0u64, 0u64);
    let mut agree = 0usize;
    let mut report = Vec::new();
    for rec in &manifest {
        let file = rec["file"].as_str().expect("file");
        let (records, out) = common::exchanges_of(&dir.join(file), &[]);
        assert!(
            out.status.success(),
            "{file}: exit {:?}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let (ours_req, ours_hist) = apitap_counts(&records);
        let (their_req, their_hist) = tshark_counts(rec);
        let known = KNOWN.iter().find(|k| k.0 == file);
        let ok = match known {
            Some((_, req, hist, _why)) => {
                let want: Hist = hist.iter().copied().collect();
                assert_eq!(
                    (ours_req, &ours_hist),
                    (*req, &want),
                    "{file}: apitap's own expected counts changed"
                );
                true
            }
            None => ours_hist == their_hist,
        };
        ours_total += ours_req;
        theirs_total += their_req;
        if ok {
            agree += 1;
        } else {
            report.push(format!(
                "{file}: requests {ours_req} vs tshark {their_req}; statuses {ours_hist:?} vs {their_hist:?}"
            ));
        }
    }
    for line in &report {
        eprintln!("mismatch: {line}");
    }
    let share = agree as f64 / manifest.len() as f64;
    eprintln!(
        "requests: apitap {ours_total}, tshark {theirs_total}; histograms agree on {agree}/{} files",
        manifest.len()
    );
    let diff = (ours_total as f64 - theirs_total as f64).abs() / theirs_total as f64;
    assert!(
        diff <= 0.01,
        "total requests differ by {:.2} %",
        diff * 100.0
    );
    assert!(
        share >= 0.95,
        "histograms agree on only {:.1} % of files",
        share * 100.0
    );
}

/// The one 200 on the wire that the default run does not report (see
/// `KNOWN`) comes 53 s after its request: with a longer transaction timeout
/// it is that request's status, and every status line on the wire is seen.
#[test]
fn late_response_counts_with_a_longer_timeout() {
    let Some(dir) = common::corpus_dir() else {
        eprintln!("corpus not found (set APITAP_CORPUS): skipped");
        return;
    };
    let file = dir.join("zeek-http-erspan-401.pcap");
    let (records, _) = common::exchanges_of(&file, &["--transaction-timeout", "60"]);
    let (_, hist) = apitap_counts(&records);
    assert_eq!(hist, Hist::from([(200, 15), (302, 1), (401, 1)]));
}

/// A slow download whose capture lost bytes of its body: at the deadline
/// the capture cannot tell a stalled response from one whose tail it lost,
/// but the body goes on arriving for 13 s after it (the client acknowledges
/// it), so the failure is the timeout, not an unknown put down to loss.
#[test]
fn a_response_still_arriving_after_its_deadline_is_a_timeout() {
    let Some(dir) = common::corpus_dir() else {
        eprintln!("corpus not found (set APITAP_CORPUS): skipped");
        return;
    };
    let file = dir.join("suricata-http-rst-unacked-truncated.pcap");
    let (records, _) = common::exchanges_of(&file, &[]);
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!(r["status"], 200);
    assert_eq!(r["failure"], "timeout");
    assert_eq!(r["capture_loss"], false);
}

/// Captures cut to a small snaplen (as `tcpdump -s` does; the packets'
/// lengths kept), against the whole captures: heads the snaplen cut after
/// their start line still give their exchanges, with the status the whole
/// capture shows, `capture_loss` set, and no failure the cut made. An
/// exchange the cut run reports differently (or that the whole run does not
/// have) must be flagged and claim nothing: no status, no failure; but for
/// the causes a 401 or 403 owes to header fields the cut may have taken
/// (credentials, an expired JWT). The bundled captures always; the corpus's
/// too when it is there.
#[test]
fn a_capture_cut_by_its_snaplen_keeps_the_heads_it_holds() {
    let bundled = bundled_captures();
    let corpus: Vec<_> = common::corpus_dir()
        .map(|dir| {
            common::manifest(&dir)
                .iter()
                .map(|r| dir.join(r["file"].as_str().expect("file")))
                .collect()
        })
        .unwrap_or_default();
    // Of the statuses the whole captures show, the cut ones keep (measured)
    // bundled: 968 of 1,130 at 150 and 1,000 at 400 (demo.pcap pipelines 15
    // HEADs a segment: the cut takes all but the first, and most of their
    // answers); corpus: 1,534 and 1,541 of 1,550. Dropping every cut head
    // whole kept 0 and 961 (bundled), 34 and 1,410 (corpus).
    for (files, name, share) in [(bundled, "bundled", 80), (corpus, "corpus", 95)] {
        for snaplen in [150u32, 400] {
            let (whole, cut) = compare_cut_runs(&files, snaplen);
            eprintln!("{name} at snaplen {snaplen}: {cut} statuses of {whole}");
            assert!(
                cut * 100 >= whole * share,
                "{name} at snaplen {snaplen}: {cut} statuses of {whole}"
            );
        }
    }
}

/// Check every exchange of each file cut to `snaplen` against the whole
/// file's (see the test above); the statuses each run shows, summed.
fn compare_cut_runs(files: &[std::path::PathBuf], snaplen: u32) -> (usize, usize) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let key = |e: &Value| {
        let f = |k: &str| e[k].to_string();
        (f("client"), f("ts"), f("method"), f("target"))
    };
    let header_causes = [
        "auth_missing",
        "auth_rejected",
        "session_expired",
        "forbidden",
    ];
    let agrees = |w: &Value, e: &Value| {
        let failure = w["failure"] == e["failure"]
            || e["failure"].is_null()
            || (e["capture_loss"] == true
                && [&w["failure"], &e["failure"]]
                    .iter()
                    .all(|f| header_causes.iter().any(|c| f.as_str() == Some(c))));
        (w["status"] == e["status"] || e["status"].is_null()) && failure
    };
    let (mut whole_status, mut cut_status) = (0, 0);
    for (n, file) in files.iter().enumerate() {
        let name = file.display();
        let cut_file = tmp.path().join(format!("{n}.pcap"));
        // At most `snaplen` bytes of each packet, as a capture with that
        // snaplen holds them (the packet's length kept).
        let cut_each = |packets: &mut Vec<(pcap::PacketHeader, Vec<u8>)>| {
            for (h, d) in packets {
                h.caplen = h.caplen.min(snaplen);
                d.truncate(h.caplen as usize);
            }
        };
        if !rewrite(file, &cut_file, cut_each) {
            continue;
        }
        let (whole, _) = common::exchanges_of(file, &[]);
        let (cut, out) = common::exchanges_of(&cut_file, &[]);
        assert!(out.status.success(), "{name} at {snaplen}: {out:?}");
        let by_key: BTreeMap<_, &Value> = whole.iter().map(|e| (key(e), e)).collect();
        for e in &cut {
            // A response whose request head the cut took whole (its start
            // line too) is logged alone, flagged: what it says must be what
            // one of its connection's responses said.
            let orphan_agrees = e["method"].is_null()
                && e["capture_loss"] == true
                && whole.iter().any(|w| {
                    w["client"] == e["client"] && w["server"] == e["server"] && agrees(w, e)
                });
            let twin = by_key.get(&key(e));
            let same = orphan_agrees || twin.is_some_and(|w| agrees(w, e));
            let claims = !e["status"].is_null() || !e["failure"].is_null();
            assert!(
                same || (e["capture_loss"] == true && !claims),
                "{name} at snaplen {snaplen}: {e}\nwhole capture: {twin:?}"
            );
            if twin.is_some_and(|w| w["status"] != e["status"] || w["failure"] != e["failure"]) {
                assert_eq!(e["capture_loss"], true, "{name} at {snaplen}: {e}");
            }
        }
        whole_status += whole.iter().filter(|e| !e["status"].is_null()).count();
        cut_status += cut.iter().filter(|e| !e["status"].is_null()).count();
    }
    (whole_status, cut_status)
}

/// Captures whose neighbouring packets the capture swapped now and then
/// (one pair in ten; as two tap ports merged with a little skew show a
/// response before its request), against the captures in order: the same
/// exchanges, but for a few that a swap across a capture gap or a
/// connection's start or end changes. The bundled captures always; the
/// corpus's too when it is there. Measured with this shuffle: 2 of 3,534
/// exchanges differ (1 of 1,153 bundled); 223 (49) when segments were read
/// in capture order whatever they acknowledged.
#[test]
fn packets_a_little_out_of_order_across_directions_pair_as_in_order() {
    let mut files = bundled_captures();
    if let Some(dir) = common::corpus_dir() {
        for r in common::manifest(&dir) {
            files.push(dir.join(r["file"].as_str().expect("file")));
        }
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let line = |e: &Value| {
        let f = |k: &str| e[k].to_string();
        [
            "client",
            "method",
            "target",
            "status",
            "failure",
            "capture_loss",
            "request_bytes",
            "response_bytes",
        ]
        .map(f)
        .join(" ")
    };
    let (mut total, mut differ) = (0usize, Vec::new());
    for (n, file) in files.iter().enumerate() {
        let (in_order, swapped) = (
            tmp.path().join(format!("{n}.pcap")),
            tmp.path().join(format!("{n}-s.pcap")),
        );
        if !rewrite(file, &in_order, |_| {}) {
            continue;
        }
        rewrite(file, &swapped, |packets| {
            // A fixed sequence (a linear congruential generator): the same
            // pairs swapped on every run.
            let mut x: u32 = 1;
            let mut i = 0;
            while i + 1 < packets.len() {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                if (x >> 16).is_multiple_of(10) {
                    packets.swap(i, i + 1);
                    i += 2;
                } else {
                    i += 1;
                }
            }
        });
        let mut a: Vec<String> = common::exchanges_of(&in_order, &[])
            .0
            .iter()
            .map(line)
            .collect();
        let (b, out) = common::exchanges_of(&swapped, &[]);
        assert!(out.status.success(), "{}: {out:?}", file.display());
        total += a.len();
        for e in &b {
            match a.iter().position(|l| *l == line(e)) {
                Some(i) => {
                    a.swap_remove(i);
                }
                None => differ.push(format!("{}: {e}", file.display())),
            }
        }
    }
    assert!(
        differ.len() * 200 <= total,
        "{} of {total} exchanges differ: {differ:#?}",
        differ.len()
    );
}

/// Write `from`'s packets to `to` (pcap), after `edit` had them all. False
/// when libpcap cannot read `from` as one link type (such files are
/// skipped); a record libpcap cannot read ends what it gives, as in apitap.
fn rewrite(
    from: &std::path::Path,
    to: &std::path::Path,
    edit: impl FnOnce(&mut Vec<(pcap::PacketHeader, Vec<u8>)>),
) -> bool {
    let Ok(mut cap) = pcap::Capture::from_file(from) else {
        return false;
    };
    let mut packets = Vec::new();
    while let Ok(p) = cap.next_packet() {
        packets.push((*p.header, p.data.to_vec()));
    }
    edit(&mut packets);
    let mut save = cap.savefile(to).expect("savefile");
    for (h, d) in &packets {
        save.write(&pcap::Packet::new(h, d));
    }
    save.flush().expect("flush");
    true
}

/// The captures in the repository: the sample and `tests/captures`.
fn bundled_captures() -> Vec<std::path::PathBuf> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("samples/http-mix-sample.pcap")];
    for f in std::fs::read_dir(root.join("tests/captures")).expect("tests/captures") {
        let f = f.expect("dir entry").path();
        if f.extension().is_some_and(|e| e == "pcap") {
            files.push(f);
        }
    }
    files
}
