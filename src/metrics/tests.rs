//! Unit tables for the metrics facade: what one exchange becomes.

use super::*;
use crate::http::{Headers, Method, RequestHead, ResponseHead};

fn ex(
    host: Option<&str>,
    route: &str,
    status: Option<u16>,
    failure: Option<FailureCause>,
) -> Exchange {
    let ts = Timestamp::from_micros(1_000_000);
    let complete = status.is_some() && failure != Some(FailureCause::Timeout);
    Exchange {
        ts,
        client: "10.0.0.5:40000".parse().unwrap(),
        server: "10.0.0.9:8080".parse().unwrap(),
        request: Some(RequestHead {
            method: Method::Get,
            target: route.as_bytes().to_vec(),
            version_minor: 1,
            cut: false,
            headers: Headers::default(),
        }),
        response: status.map(|s| ResponseHead {
            status: s,
            version_minor: 1,
            headers: Headers::default(),
        }),
        end_ts: Some(ts.saturating_add_micros(250_000)),
        request_body_bytes: 0,
        response_body_bytes: 0,
        request_body_prefix: Vec::new(),
        response_body_prefix: Vec::new(),
        outcome: if complete {
            Outcome::Complete
        } else if failure.is_some() {
            Outcome::TimedOut
        } else {
            Outcome::Unknown
        },
        capture_loss: false,
        failure,
        route: Some(route.to_string()),
        host: host.map(str::to_string),
        findings: Vec::new(),
    }
}

fn lines_of<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(prefix)).collect()
}

#[test]
fn exchange_lands_in_histogram_and_failures() {
    let mut m = Metrics::new(MetricsConfig::default(), "file");
    m.exchange(&ex(
        Some("api.example.com"),
        "/users/{id}",
        Some(404),
        Some(FailureCause::NotFound),
    ));
    m.exchange(&ex(None, "/t", None, Some(FailureCause::Timeout)));
    // Still open at the end of the capture, no failure: not observed.
    m.exchange(&ex(None, "/open", None, None));
    let text = m.render();
    let counts = lines_of(&text, "http_server_request_duration_seconds_count");
    assert_eq!(counts.len(), 2, "{counts:#?}");
    assert!(text.contains(
        "http_server_request_duration_seconds_count{error_type=\"not_found\",http_request_method=\"GET\",http_response_status_code=\"404\",http_route=\"/users/{id}\",server_address=\"api.example.com\",server_port=\"8080\",url_scheme=\"http\"} 1"
    ), "{text}");
    assert!(text.contains(
        "http_server_request_duration_seconds_sum{error_type=\"timeout\",http_request_method=\"GET\",http_response_status_code=\"\",http_route=\"/t\",server_address=\"10.0.0.9\",server_port=\"8080\",url_scheme=\"http\"} 0.25"
    ), "{text}");
    assert!(text.contains(
        "apitap_api_failures_total{cause=\"not_found\",http_route=\"/users/{id}\",server_address=\"api.example.com\"} 1"
    ));
    assert!(text.contains("apitap_build_info{"));
    assert!(text.contains("apitap_label_overflow_total{label=\"series\"} 0"));
}

#[test]
fn findings_use_configured_severity() {
    let cfg = MetricsConfig {
        severity_overrides: vec![(FindingKind::UnsafeUrl, Severity::High)],
        ..MetricsConfig::default()
    };
    let mut m = Metrics::new(cfg, "file");
    let mut e = ex(Some("a.example"), "/", Some(200), None);
    e.findings = vec![FindingKind::UnsafeUrl, FindingKind::CleartextCredentials];
    m.exchange(&e);
    m.finding(
        "b.example",
        FindingKind::EndpointSprawl,
        Severity::Low,
        Timestamp::ZERO,
    );
    let text = m.render();
    for want in [
        "apitap_exposure_findings_total{kind=\"unsafe_url\",server_address=\"a.example\",severity=\"high\"} 1",
        "apitap_exposure_findings_total{kind=\"cleartext_credentials\",server_address=\"a.example\",severity=\"high\"} 1",
        "apitap_exposure_findings_total{kind=\"endpoint_sprawl\",server_address=\"b.example\",severity=\"low\"} 1",
    ] {
        assert!(text.contains(want), "{want}\n{text}");
    }
}

#[test]
fn series_budget_folds_into_catch_all() {
    let cfg = MetricsConfig {
        max_series: 3,
        ..MetricsConfig::default()
    };
    let mut m = Metrics::new(cfg, "file");
    for i in 0..10 {
        m.exchange(&ex(
            Some(&format!("h{i}.example")),
            "/",
            Some(500),
            Some(FailureCause::ServerError),
        ));
    }
    let text = m.render();
    // The histogram never fits (19 series > 3): all in the catch-all.
    let counts = lines_of(&text, "http_server_request_duration_seconds_count");
    assert_eq!(counts.len(), 1, "{counts:#?}");
    assert!(counts[0].contains("server_address=\"_other\"") && counts[0].ends_with(" 10"));
    // Failures: three fit, the rest fold.
    assert_eq!(lines_of(&text, "apitap_api_failures_total{").len(), 4);
    assert!(text.contains("apitap_api_failures_total{cause=\"server_error\",http_route=\"_other\",server_address=\"_other\"} 7"));
    assert!(
        text.contains("apitap_label_overflow_total{label=\"series\"} 17"),
        "{text}"
    );
}

#[test]
fn idle_slots_release_their_series() {
    let cfg = MetricsConfig {
        slot_idle_micros: 10_000_000,
        ..MetricsConfig::default()
    };
    let mut m = Metrics::new(cfg, "file");
    m.exchange(&ex(
        Some("old.example"),
        "/",
        Some(500),
        Some(FailureCause::ServerError),
    ));
    m.publish(Timestamp::from_micros(2_000_000));
    assert!(m.series() > 0);
    m.publish(Timestamp::from_micros(60_000_000));
    assert_eq!(m.series(), 0);
    let text = m.shared().render();
    assert!(!text.contains("old.example"), "{text}");
}

#[test]
fn pipeline_totals_are_set_not_added() {
    let mut m = Metrics::new(MetricsConfig::default(), "eth0");
    let mut stats = PipelineStats {
        packets: 10,
        bytes: 1000,
        active_flows: 3,
        ..PipelineStats::default()
    };
    // Drops come from the drop readers, not from here.
    let source = SourceStats {
        dropped: 2,
        if_dropped: 1,
        ..SourceStats::default()
    };
    m.pipeline(&stats, &source);
    stats.packets = 12;
    m.pipeline(&stats, &source);
    m.http_parse_errors(4, 5);
    let text = m.render();
    for want in [
        "apitap_capture_packets_total{interface=\"eth0\"} 12",
        "apitap_capture_bytes_total{interface=\"eth0\"} 1000",
        "apitap_capture_dropped_packets_total{interface=\"eth0\"} 0",
        "apitap_capture_interface_dropped_packets_total{interface=\"eth0\"} 0",
        "apitap_tcp_flows_active 3",
        "apitap_http_parse_errors_total{direction=\"request\"} 4",
        "apitap_http_parse_errors_total{direction=\"response\"} 5",
    ] {
        assert!(text.contains(want), "{want}\n{text}");
    }
}

#[test]
fn connections_and_tls_are_bounded() {
    let cfg = MetricsConfig {
        max_servers: 1,
        ..MetricsConfig::default()
    };
    let mut m = Metrics::new(cfg, "file");
    let s: SocketAddr = "10.0.0.9:443".parse().unwrap();
    m.connection(s, Some("a.example"), Protocol::Tls, Timestamp::ZERO);
    m.connection(s, Some("b.example"), Protocol::Tls, Timestamp::ZERO);
    m.tls_handshake(s, Some("a.example"), "TLSv1.3", Timestamp::ZERO);
    let text = m.render();
    for want in [
        "apitap_connections_total{protocol=\"tls\",server_address=\"a.example\",server_port=\"443\"} 1",
        "apitap_connections_total{protocol=\"tls\",server_address=\"_other\",server_port=\"_other\"} 1",
        "apitap_tls_handshakes_total{server_address=\"a.example\",tls_version=\"TLSv1.3\"} 1",
        "apitap_label_overflow_total{label=\"server_address\"} 1",
    ] {
        assert!(text.contains(want), "{want}\n{text}");
    }
}

/// A capture handle's drop counters, set by the test.
struct FakeDrops {
    interface: &'static str,
    kernel: AtomicU64,
    iface: AtomicU64,
}

impl FakeDrops {
    fn new(interface: &'static str, kernel: u64, iface: u64) -> Arc<FakeDrops> {
        Arc::new(FakeDrops {
            interface,
            kernel: AtomicU64::new(kernel),
            iface: AtomicU64::new(iface),
        })
    }
}

impl DropReader for FakeDrops {
    fn interface(&self) -> &str {
        self.interface
    }
    fn read(&self) -> DropCounts {
        DropCounts {
            kernel: self.kernel.load(Ordering::Relaxed),
            interface: self.iface.load(Ordering::Relaxed),
        }
    }
}

#[test]
fn drops_are_read_at_scrape_time_and_summed_over_handles() {
    let m = Metrics::new(MetricsConfig::default(), "eth0");
    let shared = m.shared();
    // Two handles of one fanout group on eth0 (same interface loss, seen
    // from handles opened at different times), one on eth1.
    let a = FakeDrops::new("eth0", 5, 7);
    let b = FakeDrops::new("eth0", 3, 6);
    shared.add_drop_reader(a.clone());
    shared.add_drop_reader(b);
    shared.add_drop_reader(FakeDrops::new("eth1", 1, 0));
    let text = shared.render();
    for want in [
        "apitap_capture_dropped_packets_total{interface=\"eth0\"} 15",
        "apitap_capture_interface_dropped_packets_total{interface=\"eth0\"} 7",
        "apitap_capture_dropped_packets_total{interface=\"eth1\"} 1",
        "apitap_capture_interface_dropped_packets_total{interface=\"eth1\"} 0",
    ] {
        assert!(text.contains(want), "{want}\n{text}");
    }
    // No publish, no pipeline call: the next scrape reads the handles again.
    a.kernel.store(105, Ordering::Relaxed);
    let text = shared.render();
    let want = "apitap_capture_dropped_packets_total{interface=\"eth0\"} 115";
    assert!(text.contains(want), "{want}\n{text}");
}
