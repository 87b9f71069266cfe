//! Replay the sample capture through the library with the metrics as a
//! sink, scrape `/metrics` over HTTP during and after it, lint the scrape
//! with `promtool check metrics` (when installed), and check the values
//! against the exchanges of the same replay.

mod common;
mod metrics_support;

use apitap::http::exchange::{Exchange, Outcome};
use apitap::metrics::{serve, Metrics, MetricsConfig};
use metrics_support::*;
use std::collections::BTreeMap;

const HIST: &str = "http_server_request_duration_seconds";
const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The rule `Metrics::exchange` documents for the histogram.
fn observed(ex: &Exchange) -> bool {
    ex.duration_micros().is_some()
        || (ex.failure.is_some()
            && ex.outcome != Outcome::Complete
            && ex.time_to_outcome_micros().is_some())
}

#[test]
fn replay_scrape_matches_exchanges_and_passes_promtool() {
    let mut metrics = Metrics::new(MetricsConfig::default(), "file");
    let shared = metrics.shared();
    let server = serve("127.0.0.1:0", shared.clone(), None).expect("server starts");
    let addr = server.local_addr();

    // Not ready until the capture is open.
    assert_eq!(get(addr, "/-/ready").0, 503);
    shared.set_ready(true);
    assert_eq!(get(addr, "/-/ready").0, 200);
    assert_eq!(get(addr, "/-/healthy").0, 200);
    let (status, ctype, body) = get(addr, "/");
    assert_eq!((status, ctype.as_str()), (200, "text/html; charset=utf-8"));
    assert!(body.contains("/metrics"));
    assert_eq!(get(addr, "/nope").0, 404);

    let mut mid_scrapes = 0;
    let exchanges = replay(&sample(), &mut metrics, 2_000, |_| {
        let (status, ctype, body) = get(addr, "/metrics");
        assert_eq!(status, 200);
        assert_eq!(ctype, "text/plain; version=0.0.4; charset=utf-8");
        assert_histograms_whole(&parse(&body), HIST);
        mid_scrapes += 1;
    });
    assert!(mid_scrapes >= 3, "scraped during the replay");
    assert!(exchanges.len() > 100, "the sample has exchanges");

    let (status, _, body) = get(addr, "/metrics");
    assert_eq!(status, 200);
    match promtool_check(&body) {
        Some((clean, msg)) => assert!(clean, "promtool check metrics: {msg}"),
        None => eprintln!("promtool not installed: lint skipped"),
    }
    let samples = parse(&body);
    assert_histograms_whole(&samples, HIST);

    // Histogram: one observation per observed exchange, per error_type.
    let mut want: BTreeMap<String, f64> = BTreeMap::new();
    for ex in exchanges.iter().filter(|e| observed(e)) {
        *want
            .entry(ex.failure.map_or("", |c| c.as_str()).to_string())
            .or_default() += 1.0;
    }
    let mut got: BTreeMap<String, f64> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name == format!("{HIST}_count")) {
        *got.entry(s.label("error_type").to_string()).or_default() += s.value;
    }
    assert_eq!(got, want, "histogram counts by error_type");

    // Durations: the sum is the exchanges' durations.
    let want_sum: f64 = exchanges
        .iter()
        .filter_map(|e| e.duration_micros())
        .map(|us| us as f64 / 1e6)
        .sum();
    let got_sum = sum(&samples, &format!("{HIST}_sum"), |s| {
        s.label("error_type").is_empty()
    });
    let success_sum: f64 = exchanges
        .iter()
        .filter(|e| e.failure.is_none())
        .filter_map(|e| e.duration_micros())
        .map(|us| us as f64 / 1e6)
        .sum();
    assert!(
        (got_sum - success_sum).abs() < 1e-6,
        "{got_sum} vs {success_sum}"
    );
    assert!(want_sum >= success_sum);

    // Status codes per exchange.
    let mut want_status: BTreeMap<String, f64> = BTreeMap::new();
    for ex in exchanges.iter().filter(|e| observed(e)) {
        *want_status
            .entry(ex.status().map_or(String::new(), |s| s.to_string()))
            .or_default() += 1.0;
    }
    let mut got_status: BTreeMap<String, f64> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name == format!("{HIST}_count")) {
        *got_status
            .entry(s.label("http_response_status_code").to_string())
            .or_default() += s.value;
    }
    assert_eq!(got_status, want_status);

    // Failures by cause.
    let mut want_fail: BTreeMap<String, f64> = BTreeMap::new();
    for c in exchanges.iter().filter_map(|e| e.failure) {
        *want_fail.entry(c.as_str().to_string()).or_default() += 1.0;
    }
    let mut got_fail: BTreeMap<String, f64> = BTreeMap::new();
    for s in samples
        .iter()
        .filter(|s| s.name == "apitap_api_failures_total")
    {
        *got_fail.entry(s.label("cause").to_string()).or_default() += s.value;
    }
    assert_eq!(got_fail, want_fail, "failures by cause");

    // Findings by kind.
    let mut want_find: BTreeMap<String, f64> = BTreeMap::new();
    for k in exchanges.iter().flat_map(|e| e.findings.iter()) {
        *want_find.entry(k.as_str().to_string()).or_default() += 1.0;
    }
    let mut got_find: BTreeMap<String, f64> = BTreeMap::new();
    for s in samples
        .iter()
        .filter(|s| s.name == "apitap_exposure_findings_total")
    {
        *got_find.entry(s.label("kind").to_string()).or_default() += s.value;
    }
    assert_eq!(got_find, want_find, "findings by kind");

    // Capture counters: the file's packets.
    let packets = sum(&samples, "apitap_capture_packets_total", |s| {
        s.label("interface") == "file"
    });
    assert_eq!(packets, 6733.0, "the sample's packet count (capinfos)");
    assert_eq!(sum(&samples, "apitap_label_overflow_total", |_| true), 0.0);
    assert_eq!(sum(&samples, "apitap_build_info", |_| true), 1.0);
    assert!(samples
        .iter()
        .any(|s| s.name == "process_resident_memory_bytes"));

    // --metrics-out renders the same registry.
    let out = metrics.render();
    assert_eq!(
        parse(&out)
            .iter()
            .filter(|s| s.name.starts_with("http_") || s.name.starts_with("apitap_api"))
            .count(),
        samples
            .iter()
            .filter(|s| s.name.starts_with("http_") || s.name.starts_with("apitap_api"))
            .count()
    );
    server.shutdown();
}

#[test]
fn scrapes_are_gzipped_when_the_scraper_takes_gzip() {
    use std::io::Read;
    let mut metrics = Metrics::new(MetricsConfig::default(), "file");
    let server = serve("127.0.0.1:0", metrics.shared(), None).expect("server starts");
    let addr = server.local_addr();
    replay(&sample(), &mut metrics, 2_000, |_| {});
    let (status, head, plain) = request(addr, "GET", "/metrics", "");
    assert_eq!(status, 200);
    assert_eq!(header(&head, "content-encoding"), "");
    assert_eq!(header(&head, "vary"), "Accept-Encoding");
    // What Prometheus sends.
    let (status, head, zipped) = request(addr, "GET", "/metrics", "Accept-Encoding: gzip\r\n");
    assert_eq!(status, 200);
    assert_eq!(header(&head, "content-encoding"), "gzip");
    assert_eq!(header(&head, "content-type"), TEXT);
    assert_eq!(header(&head, "content-length"), zipped.len().to_string());
    let plain_len = plain.len();
    assert!(
        zipped.len() * 5 < plain_len,
        "{} of {}",
        zipped.len(),
        plain.len()
    );
    let mut unzipped = Vec::new();
    flate2::read::GzDecoder::new(&zipped[..])
        .read_to_end(&mut unzipped)
        .expect("gzip");
    // The same exposition (but the process's own gauges, which move).
    let apitap_lines = |b: Vec<u8>| {
        let text = String::from_utf8(b).unwrap();
        text.lines()
            .filter(|l| !l.contains("process_"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let (unzipped, plain) = (apitap_lines(unzipped), apitap_lines(plain));
    assert!(
        unzipped.len() > 1000 && unzipped == plain,
        "gunzipped scrape differs"
    );
    // Refused gzip, and HEAD (the length of what GET would send, no body).
    let (_, head, body) = request(addr, "GET", "/metrics", "Accept-Encoding: gzip;q=0, br\r\n");
    assert_eq!(header(&head, "content-encoding"), "");
    assert!(String::from_utf8(body).unwrap().contains(HIST));
    let (status, head, body) = request(addr, "HEAD", "/metrics", "Accept-Encoding: gzip\r\n");
    assert_eq!((status, body.len()), (200, 0));
    assert_eq!(header(&head, "content-encoding"), "gzip");
    server.shutdown();
}

#[test]
fn serve_refuses_a_web_config_file_it_cannot_read() {
    let m = Metrics::new(MetricsConfig::default(), "file");
    let err = serve(
        "127.0.0.1:0",
        m.shared(),
        Some(apitap::metrics::WebConfig {
            path: "web.yml".into(),
        }),
    )
    .err()
    .expect("refused");
    let err = err.to_string();
    assert!(
        err.contains("web.yml") && err.contains("cannot read"),
        "{err}"
    );
}

#[test]
fn serve_reports_a_busy_port() {
    let m = Metrics::new(MetricsConfig::default(), "file");
    let first = serve("127.0.0.1:0", m.shared(), None).unwrap();
    let busy = first.local_addr().to_string();
    let err = serve(&busy, m.shared(), None).err().expect("port in use");
    assert!(err.to_string().contains(&busy), "{err}");
    first.shutdown();
}

/// `apitap -r FILE` with the exchange log and the final metrics: (exchange
/// records, metric samples).
fn run_binary(file: &std::path::Path) -> (Vec<serde_json::Value>, Vec<Sample>) {
    let dir = tempfile::tempdir().unwrap();
    let (log, prom) = (dir.path().join("x.ndjson"), dir.path().join("m.prom"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_apitap"))
        .arg("-r")
        .arg(file)
        .arg("--exchanges")
        .arg(&log)
        .arg("--metrics-out")
        .arg(&prom)
        .output()
        .expect("apitap runs");
    assert!(out.status.success(), "{out:?}");
    let records = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (records, parse(&std::fs::read_to_string(&prom).unwrap()))
}

/// `server_address` → value of `name`'s series with `protocol` (when given).
fn by_server(samples: &[Sample], name: &str, protocol: Option<&str>) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    for s in samples
        .iter()
        .filter(|s| s.name == name && protocol.is_none_or(|p| s.label("protocol") == p))
    {
        *m.entry(s.label("server_address").to_string()).or_default() += s.value;
    }
    m
}

#[test]
fn connections_are_labelled_by_first_host_and_sni() {
    let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/captures/demo.pcap");
    let (records, samples) = run_binary(&demo);

    // HTTP: each connection under the Host of its first request (a name),
    // else its server's IP, as the exchange metrics label it.
    let mut first: BTreeMap<(String, String), String> = BTreeMap::new();
    for r in &records {
        let server = r["server"].as_str().unwrap();
        let ip = server.rsplit_once(':').unwrap().0.to_string();
        let label = match r["host"].as_str() {
            Some(h) if h.parse::<std::net::IpAddr>().is_err() => {
                h.rsplit_once(':').map_or(h, |(n, _)| n).to_string()
            }
            _ => ip,
        };
        first
            .entry((r["client"].to_string(), server.to_string()))
            .or_insert(label);
    }
    let mut want: BTreeMap<String, f64> = BTreeMap::new();
    for label in first.values() {
        *want.entry(label.clone()).or_default() += 1.0;
    }
    assert!(want.contains_key("api.example.com"), "{want:?}");
    let got = by_server(&samples, "apitap_connections_total", Some("http"));
    assert_eq!(got, want, "http connections by server_address");

    // TLS: under the SNI, as the handshakes are; demo.pcap's clients all
    // send one.
    let tls = by_server(&samples, "apitap_connections_total", Some("tls"));
    let handshakes = by_server(&samples, "apitap_tls_handshakes_total", None);
    assert_eq!(tls, handshakes, "tls connections by server_address");
    assert!(tls.contains_key("secure.example.com"), "{tls:?}");
}

#[test]
fn corpus_tls_connections_carry_the_sni() {
    let Some(corpus) = common::corpus_dir() else {
        eprintln!("skipped: no corpus");
        return;
    };
    let (_, samples) = run_binary(&corpus.join("ndpi-neg-tls-curl.pcap"));
    let tls = by_server(&samples, "apitap_connections_total", Some("tls"));
    assert_eq!(tls, BTreeMap::from([("www.ntop.org".to_string(), 1.0)]));
}
