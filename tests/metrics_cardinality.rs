//! Hostile cardinality: one keep-alive connection carrying 100,000 requests,
//! each with its own Host header and a random path. The bounded series stay
//! within the budget, the overflow counter says how much was folded, and
//! the process's peak RSS stays under [`PEAK_RSS_LIMIT_MB`].
//!
//! Alone in its test binary so the peak RSS is this test's.

mod metrics_support;

use apitap::metrics::{labels, Metrics, MetricsConfig, CATCH_ALL_SERIES_MAX};
use metrics_support::*;
use std::collections::BTreeSet;
use std::io::{BufWriter, Write};

const REQUESTS: u32 = 100_000;
/// Peak RSS of the whole test process (capture written to a temp file,
/// replayed through decode, flows, HTTP, classify and metrics).
const PEAK_RSS_LIMIT_MB: u64 = 200;

/// A tiny deterministic generator (xorshift): no dependency needed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn word(&mut self, len: usize) -> String {
        (0..len)
            .map(|_| (b'a' + (self.next() % 26) as u8) as char)
            .collect()
    }
}

/// One Ethernet/IPv4/TCP frame (checksums zero: apitap never verifies them).
fn frame(
    out: &mut impl Write,
    ts_us: u64,
    from_client: bool,
    seq: u32,
    ack: u32,
    flags: u8,
    payload: &[u8],
) {
    let (src, dst, sport, dport) = if from_client {
        ([10, 0, 0, 5], [10, 0, 0, 9], 40000u16, 80u16)
    } else {
        ([10, 0, 0, 9], [10, 0, 0, 5], 80, 40000)
    };
    let mut f = Vec::with_capacity(54 + payload.len());
    f.extend_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00]);
    let ip_len = (20 + 20 + payload.len()) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&ip_len.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&ack.to_be_bytes());
    f.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    f.extend_from_slice(payload);
    let secs = (ts_us / 1_000_000) as u32;
    let usecs = (ts_us % 1_000_000) as u32;
    out.write_all(&secs.to_le_bytes()).unwrap();
    out.write_all(&usecs.to_le_bytes()).unwrap();
    out.write_all(&(f.len() as u32).to_le_bytes()).unwrap();
    out.write_all(&(f.len() as u32).to_le_bytes()).unwrap();
    out.write_all(&f).unwrap();
}

fn write_hostile_capture(path: &std::path::Path) {
    let mut out = BufWriter::new(std::fs::File::create(path).unwrap());
    // pcap global header: microseconds, snaplen 65535, Ethernet.
    out.write_all(&0xa1b2c3d4u32.to_le_bytes()).unwrap();
    out.write_all(&[2, 0, 4, 0]).unwrap();
    out.write_all(&[0; 8]).unwrap();
    out.write_all(&65535u32.to_le_bytes()).unwrap();
    out.write_all(&1u32.to_le_bytes()).unwrap();
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    const PSH_ACK: u8 = 0x18;
    let mut t = 1_700_000_000_000_000u64;
    let (mut cseq, mut sseq) = (1000u32, 5000u32);
    frame(&mut out, t, true, cseq, 0, SYN, b"");
    frame(&mut out, t + 10, false, sseq, cseq + 1, SYN | ACK, b"");
    cseq += 1;
    sseq += 1;
    frame(&mut out, t + 20, true, cseq, sseq, ACK, b"");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    for i in 0..REQUESTS {
        t += 1_000;
        let req = format!(
            "GET /{}/{}?q={} HTTP/1.1\r\nHost: h{i}-{}.attacker.example\r\n\r\n",
            rng.word(6),
            rng.word(9),
            rng.next(),
            rng.word(4)
        );
        frame(&mut out, t, true, cseq, sseq, PSH_ACK, req.as_bytes());
        cseq = cseq.wrapping_add(req.len() as u32);
        frame(&mut out, t + 300, false, sseq, cseq, PSH_ACK, response);
        sseq = sseq.wrapping_add(response.len() as u32);
    }
    out.flush().unwrap();
}

fn peak_rss_mb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

#[test]
fn hostile_hosts_and_paths_stay_within_the_series_budget() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hostile.pcap");
    write_hostile_capture(&path);

    let cfg = MetricsConfig::default();
    let (max_servers, max_series) = (cfg.max_servers, cfg.max_series);
    let mut metrics = Metrics::new(cfg, "file");
    let exchanges = replay(&path, &mut metrics, 10_000, |_| {});
    assert_eq!(exchanges.len(), REQUESTS as usize, "every request paired");
    let complete = exchanges.iter().filter(|e| e.status() == Some(200)).count();
    assert_eq!(complete, REQUESTS as usize);
    drop(exchanges);

    assert!(
        metrics.series() <= max_series + CATCH_ALL_SERIES_MAX,
        "series {} over the budget",
        metrics.series()
    );
    let text = metrics.render();
    let samples = parse(&text);
    let bounded = samples
        .iter()
        .filter(|s| {
            s.name.starts_with("http_server_request_duration_seconds")
                || s.name == "apitap_api_failures_total"
                || s.name == "apitap_exposure_findings_total"
                || s.name == "apitap_connections_total"
                || s.name == "apitap_tls_handshakes_total"
        })
        .count();
    assert!(bounded <= max_series + CATCH_ALL_SERIES_MAX, "{bounded}");
    assert_eq!(
        bounded,
        metrics.series(),
        "the exposition holds what is counted"
    );
    let servers: BTreeSet<&str> = samples
        .iter()
        .filter(|s| s.name == "http_server_request_duration_seconds_count")
        .map(|s| s.label("server_address"))
        .collect();
    assert!(servers.len() <= max_servers + 1, "{}", servers.len());
    assert!(servers.contains(labels::OTHER));

    // Every request past the first 64 hosts was folded, and said so.
    let folded = sum(&samples, "apitap_label_overflow_total", |s| {
        s.label("label") == "server_address"
    });
    assert_eq!(folded, f64::from(REQUESTS) - max_servers as f64);
    let other_count = sum(
        &samples,
        "http_server_request_duration_seconds_count",
        |s| s.label("server_address") == labels::OTHER,
    );
    assert_eq!(
        other_count, folded,
        "folded observations are kept, not lost"
    );
    let total = sum(
        &samples,
        "http_server_request_duration_seconds_count",
        |_| true,
    );
    assert_eq!(total, f64::from(REQUESTS));
    if let Some((clean, msg)) = promtool_check(&text) {
        assert!(clean, "promtool: {msg}");
    }

    let rss = peak_rss_mb();
    eprintln!(
        "hostile replay: {} series, {} folded, peak RSS {rss} MiB",
        metrics.series(),
        folded
    );
    assert!(rss < PEAK_RSS_LIMIT_MB, "peak RSS {rss} MiB");
}
