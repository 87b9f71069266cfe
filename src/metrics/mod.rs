//! Metrics: SPEC's metric families, bounded label sets, and the `/metrics`
//! server.
//!
//! Contract:
//! - The rest of apitap calls domain methods on [`Metrics`] (`exchange`,
//!   `finding`, `connection`, `tls_handshake`, `pipeline`, …); no other
//!   module names the `prometheus` crate, so it can be swapped here.
//! - [`Metrics`] is owned by the packet thread. Its domain methods touch no
//!   shared state: observations go into per-series local buffers
//!   (`LocalHistogram`, `LocalIntCounter`), and pipeline totals into atomics.
//!   [`Metrics::publish`] pushes the buffers into the shared registry (one
//!   atomic add per changed bucket, never a lock), and gives idle label slots
//!   back by capture time. Call it about once a second and at the end.
//! - A scrape ([`SharedMetrics::render`], [`server::serve`]) never holds
//!   anything the packet thread waits for, with two bounded exceptions:
//!   creating or removing a series takes its family's write lock, which a
//!   concurrent gather holds for the time it takes to snapshot that family
//!   (bounded by the series budget); and a live source's drop counters are
//!   read at scrape time through its [`DropReader`] (registered with
//!   [`SharedMetrics::add_drop_reader`]), whose lock the packet thread
//!   also takes once a second, for a few system calls. Histograms are
//!   snapshotted by the `prometheus` crate's hot/cold shards, so `_count`,
//!   `_sum` and the buckets of one series always agree (never torn).
//! - Drops: per interface, kernel drops are summed over the registered
//!   readers (one per capture handle, e.g. the sockets of a fanout group)
//!   and interface drops counted once (the largest reading: every handle
//!   on an interface sees the same loss).
//!   `apitap_capture_dropped_packets_total` is kernel + interface (SPEC's
//!   family, unchanged), `apitap_capture_interface_dropped_packets_total`
//!   the interface part alone.
//! - Every label value that can come from the wire is bounded
//!   ([`labels`]): server slots, routes per server, ports per server, a
//!   global series budget; past a bound the value is `_other` and
//!   `apitap_label_overflow_total{label}` counts each folded update.
//! - Series budget: counted as Prometheus counts series (a histogram label
//!   set costs its buckets + `+Inf` + `_sum` + `_count`). Past the budget an
//!   update goes to its family's catch-all series (every unbounded label
//!   `_other`); the catch-alls are a fixed set of at most
//!   [`CATCH_ALL_SERIES_MAX`] series outside the budget.
//!
//! Buckets ([`DEFAULT_BUCKETS`]): OpenTelemetry's recommended boundaries for
//! `http.server.request.duration` (5 ms … 10 s), plus 30 s and 60 s, because
//! a passive monitor also sees the slow tail and the transaction timeout
//! (default 30 s): an exchange that timed out is observed with the time
//! until its failure was known and must land in a bucket of its own rather
//! than only in `+Inf`.

pub mod labels;
pub mod server;
pub mod web;

use crate::capture::{DropCounts, DropReader, SourceStats};
use crate::classify::findings::{FindingKind, Severity};
use crate::classify::FailureCause;
use crate::clock::Timestamp;
use crate::flow::Protocol;
use crate::http::exchange::{Exchange, Outcome};
use crate::pipeline::PipelineStats;
use labels::{Label, Overflow, SlotTable, OTHER};
use prometheus::core::{Collector, Desc};
use prometheus::local::{LocalHistogram, LocalIntCounter};
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use std::collections::HashMap;
use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

pub use server::{serve, ServerError, ServerHandle, WebConfig};

/// Latency buckets in seconds (see the module doc for why).
pub const DEFAULT_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0, 60.0,
];

/// Upper bound of the catch-all series outside the budget: one histogram
/// label set (counted by its buckets at the default 16: 19), 14 failure
/// causes, 13 kinds × 3 severities, 3 protocols, 9 TLS versions.
pub const CATCH_ALL_SERIES_MAX: usize = 19 + 14 + 39 + 3 + 9;

/// How the metrics are bounded and bucketed.
#[derive(Clone, Debug)]
pub struct MetricsConfig {
    /// Server slots (`server_address` values); default 64.
    pub max_servers: usize,
    /// Route slots per server (`http_route` values); default 256.
    pub max_routes_per_server: usize,
    /// Global budget of bounded series (Prometheus series); default 50,000.
    pub max_series: usize,
    /// A server or route slot unseen for this much capture time is given
    /// back and its series removed; default 15 minutes.
    pub slot_idle_micros: i64,
    /// Histogram upper bounds in seconds, ascending; default
    /// [`DEFAULT_BUCKETS`].
    pub buckets: Vec<f64>,
    /// Severities that differ from SPEC's defaults.
    pub severity_overrides: Vec<(FindingKind, Severity)>,
    /// Export `process_*` (apitap's own CPU, memory, file descriptors;
    /// Linux); default on. Off where many registries live in one process
    /// and the figures would not be theirs (the fuzz targets, which build
    /// and render one per input: reading /proc was a fifth of their time).
    pub process_metrics: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            max_servers: 64,
            max_routes_per_server: 256,
            max_series: 50_000,
            slot_idle_micros: 15 * 60 * 1_000_000,
            buckets: DEFAULT_BUCKETS.to_vec(),
            severity_overrides: Vec::new(),
            process_metrics: true,
        }
    }
}

/// Pipeline totals, written by the packet thread and read at scrape time,
/// and the drop readers a scrape reads.
#[derive(Debug, Default)]
pub struct CaptureCounters {
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    pub flows_active: AtomicU64,
    pub missing_bytes: AtomicU64,
    pub parse_errors_request: AtomicU64,
    pub parse_errors_response: AtomicU64,
    pub log_lost_exchanges: AtomicU64,
    pub log_lost_findings: AtomicU64,
    drops: DropReaders,
}

impl CaptureCounters {
    /// Raise `cell` to `v`: totals from several readers never go backwards.
    fn raise(cell: &AtomicU64, v: u64) {
        cell.fetch_max(v, Ordering::Relaxed);
    }
}

/// The live capture handles whose drops a scrape reads.
#[derive(Default)]
struct DropReaders(RwLock<Vec<Arc<dyn DropReader>>>);

impl std::fmt::Debug for DropReaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // How many, not their counts: reading them here would be I/O inside Debug.
        let handles = self.0.read().map_or(0, |r| r.len());
        f.debug_struct("DropReaders")
            .field("handles", &handles)
            .finish()
    }
}

impl DropReaders {
    fn add(&self, reader: Arc<dyn DropReader>) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(reader);
    }

    /// Read every handle now; per interface (sorted), kernel drops summed
    /// and interface drops counted once (see the module doc).
    fn totals(&self) -> Vec<(String, DropCounts)> {
        // Read outside the lock: a registration never waits for reads.
        let readers = self.0.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut by_iface: std::collections::BTreeMap<&str, DropCounts> = Default::default();
        for r in &readers {
            let now = r.read();
            let t = by_iface.entry(r.interface()).or_default();
            t.kernel = t.kernel.saturating_add(now.kernel);
            t.interface = t.interface.max(now.interface);
        }
        by_iface
            .into_iter()
            .map(|(i, c)| (i.to_string(), c))
            .collect()
    }
}

/// The scrape-time collector of [`CaptureCounters`].
struct CaptureCollector {
    interface: String,
    counters: Arc<CaptureCounters>,
    descs: Vec<Desc>,
}

const CAPTURE_FAMILIES: [(&str, &str, MetricType); 8] = [
    (
        "apitap_capture_packets_total",
        "Frames the capture source delivered.",
        MetricType::COUNTER,
    ),
    (
        "apitap_capture_bytes_total",
        "Bytes of the frames the capture source delivered.",
        MetricType::COUNTER,
    ),
    (
        "apitap_capture_dropped_packets_total",
        "Frames lost before apitap read them: dropped by the kernel (capture buffer full) \
         plus by the interface (live capture).",
        MetricType::COUNTER,
    ),
    (
        "apitap_capture_interface_dropped_packets_total",
        "The part of apitap_capture_dropped_packets_total the interface dropped \
         (rx_missed_errors + rx_fifo_errors since capture began).",
        MetricType::COUNTER,
    ),
    (
        "apitap_tcp_flows_active",
        "TCP connections currently tracked.",
        MetricType::GAUGE,
    ),
    (
        "apitap_tcp_missing_bytes_total",
        "Stream bytes never captured that reassembly skipped (capture loss).",
        MetricType::COUNTER,
    ),
    (
        "apitap_http_parse_errors_total",
        "Bytes that could not be framed as HTTP/1.x, by direction.",
        MetricType::COUNTER,
    ),
    (
        "apitap_log_lines_lost_total",
        "Lines of the exchange or findings log that could not be written (a full disk, \
         a closed pipe), by log.",
        MetricType::COUNTER,
    ),
];

impl CaptureCollector {
    fn new(interface: &str, counters: Arc<CaptureCounters>) -> Self {
        let descs = CAPTURE_FAMILIES
            .iter()
            .map(|(name, help, _)| {
                let var = match *name {
                    "apitap_http_parse_errors_total" => vec!["direction".to_string()],
                    "apitap_log_lines_lost_total" => vec!["log".to_string()],
                    _ => vec![],
                };
                Desc::new(name.to_string(), help.to_string(), var, HashMap::new())
                    .expect("static metric description is valid")
            })
            .collect();
        CaptureCollector {
            interface: interface.to_string(),
            counters,
            descs,
        }
    }
}

fn label_pair(name: &str, value: &str) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.to_string());
    l.set_value(value.to_string());
    l
}

fn sample(labels: Vec<LabelPair>, kind: MetricType, v: u64) -> Metric {
    let mut m = Metric::from_label(labels);
    match kind {
        MetricType::GAUGE => {
            let mut g = Gauge::default();
            g.set_value(v as f64);
            m.set_gauge(g);
        }
        _ => {
            let mut c = Counter::default();
            c.set_value(v as f64);
            m.set_counter(c);
        }
    }
    m
}

impl Collector for CaptureCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let iface = || vec![label_pair("interface", &self.interface)];
        let mut drops = c.drops.totals();
        if drops.is_empty() {
            // Read mode: the series exist, at zero.
            drops.push((self.interface.clone(), DropCounts::default()));
        }
        let drop_series = |kind, value: fn(&DropCounts) -> u64| -> Vec<Metric> {
            drops
                .iter()
                .map(|(i, d)| sample(vec![label_pair("interface", i)], kind, value(d)))
                .collect()
        };
        CAPTURE_FAMILIES
            .iter()
            .map(|&(name, help, kind)| {
                let metrics = match name {
                    "apitap_capture_packets_total" => vec![sample(iface(), kind, get(&c.packets))],
                    "apitap_capture_bytes_total" => vec![sample(iface(), kind, get(&c.bytes))],
                    "apitap_capture_dropped_packets_total" => {
                        drop_series(kind, |d| d.kernel.saturating_add(d.interface))
                    }
                    "apitap_capture_interface_dropped_packets_total" => {
                        drop_series(kind, |d| d.interface)
                    }
                    "apitap_tcp_flows_active" => vec![sample(vec![], kind, get(&c.flows_active))],
                    "apitap_tcp_missing_bytes_total" => {
                        vec![sample(vec![], kind, get(&c.missing_bytes))]
                    }
                    "apitap_log_lines_lost_total" => vec![
                        sample(
                            vec![label_pair("log", "exchanges")],
                            kind,
                            get(&c.log_lost_exchanges),
                        ),
                        sample(
                            vec![label_pair("log", "findings")],
                            kind,
                            get(&c.log_lost_findings),
                        ),
                    ],
                    _ => vec![
                        sample(
                            vec![label_pair("direction", "request")],
                            kind,
                            get(&c.parse_errors_request),
                        ),
                        sample(
                            vec![label_pair("direction", "response")],
                            kind,
                            get(&c.parse_errors_response),
                        ),
                    ],
                };
                let mut f = MetricFamily::default();
                f.set_name(name.to_string());
                f.set_help(help.to_string());
                f.set_field_type(kind);
                f.set_metric(metrics);
                f
            })
            .collect()
    }
}

/// What scrapes render from: `Clone + Send + Sync`.
#[derive(Clone)]
pub struct SharedMetrics {
    registry: Registry,
    ready: Arc<AtomicBool>,
    capture: Arc<CaptureCounters>,
}

impl SharedMetrics {
    /// The text exposition format 0.0.4 of everything published so far.
    pub fn render(&self) -> String {
        let families = self.registry.gather();
        let mut out = String::with_capacity(64 * 1024);
        // Encoding into a String cannot fail for well-formed families.
        if let Err(e) = prometheus::TextEncoder::new().encode_utf8(&families, &mut out) {
            tracing::warn!("metrics encoding failed: {e}");
        }
        out
    }

    /// `/-/ready` answers 200 once this is set (e.g. once capture is open).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The atomics scrapes read pipeline totals from.
    pub fn capture_counters(&self) -> Arc<CaptureCounters> {
        self.capture.clone()
    }

    /// A live capture handle's drop counters, read at every scrape from now
    /// on (and kept after the handle closes). Register each handle once;
    /// with several handles (one per worker) register them all.
    pub fn add_drop_reader(&self, reader: Arc<dyn DropReader>) {
        self.capture.drops.add(reader);
    }
}

/// A series key that knows its label values and its slot.
trait SeriesKey: Hash + Eq + Clone {
    fn values(&self) -> Vec<String>;
    fn server(&self) -> &Label;
    fn route(&self) -> Option<&Label>;
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct HistKey {
    server: Label,
    port: Option<u16>,
    route: Label,
    method: u8,
    status: u16,
    /// 0 none, 1 + cause index, `u8::MAX` `_other` (catch-all only).
    error: u8,
}

fn port_label(p: Option<u16>) -> String {
    p.map_or_else(|| OTHER.to_string(), |p| p.to_string())
}

fn error_label(e: u8) -> &'static str {
    match e {
        0 => "",
        u8::MAX => OTHER,
        i => FailureCause::ALL
            .get(i as usize - 1)
            .map_or(OTHER, |c| c.as_str()),
    }
}

impl SeriesKey for HistKey {
    fn values(&self) -> Vec<String> {
        vec![
            labels::method_label(self.method).to_string(),
            labels::status_label(self.status),
            self.route.to_string(),
            self.server.to_string(),
            port_label(self.port),
            "http".to_string(),
            error_label(self.error).to_string(),
        ]
    }
    fn server(&self) -> &Label {
        &self.server
    }
    fn route(&self) -> Option<&Label> {
        Some(&self.route)
    }
}

/// (server, route, cause) for failures.
#[derive(Clone, PartialEq, Eq, Hash)]
struct FailureKey(Label, Label, FailureCause);

impl SeriesKey for FailureKey {
    fn values(&self) -> Vec<String> {
        vec![
            self.0.to_string(),
            self.1.to_string(),
            self.2.as_str().into(),
        ]
    }
    fn server(&self) -> &Label {
        &self.0
    }
    fn route(&self) -> Option<&Label> {
        Some(&self.1)
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct FindingKey(Label, FindingKind, Severity);

impl SeriesKey for FindingKey {
    fn values(&self) -> Vec<String> {
        vec![
            self.0.to_string(),
            self.1.as_str().into(),
            self.2.as_str().into(),
        ]
    }
    fn server(&self) -> &Label {
        &self.0
    }
    fn route(&self) -> Option<&Label> {
        None
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct ConnKey(Label, Option<u16>, Protocol);

impl SeriesKey for ConnKey {
    fn values(&self) -> Vec<String> {
        vec![
            self.0.to_string(),
            port_label(self.1),
            self.2.as_str().into(),
        ]
    }
    fn server(&self) -> &Label {
        &self.0
    }
    fn route(&self) -> Option<&Label> {
        None
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct TlsKey(Label, Label);

impl SeriesKey for TlsKey {
    fn values(&self) -> Vec<String> {
        vec![self.0.to_string(), self.1.to_string()]
    }
    fn server(&self) -> &Label {
        &self.0
    }
    fn route(&self) -> Option<&Label> {
        None
    }
}

/// A buffered local handle that can be flushed into the shared registry.
trait Local {
    fn flush(&mut self);
}

impl Local for LocalHistogram {
    fn flush(&mut self) {
        LocalHistogram::flush(self)
    }
}

impl Local for LocalIntCounter {
    fn flush(&mut self) {
        LocalIntCounter::flush(self)
    }
}

/// The shared side of a family: creates and removes series.
trait Shared {
    type Local: Local;
    fn create(&self, values: &[String]) -> Self::Local;
    fn remove(&self, values: &[String]);
}

impl Shared for HistogramVec {
    type Local = LocalHistogram;
    fn create(&self, values: &[String]) -> LocalHistogram {
        self.with_label_values(values).local()
    }
    fn remove(&self, values: &[String]) {
        let _ = self.remove_label_values(values);
    }
}

impl Shared for IntCounterVec {
    type Local = LocalIntCounter;
    fn create(&self, values: &[String]) -> LocalIntCounter {
        self.with_label_values(values).local()
    }
    fn remove(&self, values: &[String]) {
        let _ = self.remove_label_values(values);
    }
}

/// One family's series as the packet thread knows them.
struct Family<K: SeriesKey, V: Shared> {
    shared: V,
    series: HashMap<K, Series<V::Local>, ahash::RandomState>,
    /// Prometheus series per label set.
    cost: usize,
    /// Series updated since the last flush, each once (see [`Series`]).
    dirty: Vec<K>,
}

/// A series' local buffer, and whether it is listed in its family's
/// `dirty` since the last flush: an update costs one look-up, and a flush
/// visits each changed series once however often it was updated.
struct Series<L> {
    local: L,
    dirty: bool,
}

impl<L> Series<L> {
    /// The local buffer, to update; the series (`key`) listed in `dirty`
    /// unless it is already.
    fn touch<K>(&mut self, key: K, dirty: &mut Vec<K>) -> &mut L {
        if !self.dirty {
            self.dirty = true;
            dirty.push(key);
        }
        &mut self.local
    }
}

/// The global series budget.
struct Budget {
    /// Series held under the budget.
    used: usize,
    max: usize,
    /// Catch-all series (outside the budget, bounded by
    /// [`CATCH_ALL_SERIES_MAX`]).
    catch_all: usize,
}

impl<K: SeriesKey, V: Shared> Family<K, V> {
    fn new(shared: V, cost: usize) -> Self {
        Family {
            shared,
            series: HashMap::default(),
            cost,
            dirty: Vec::new(),
        }
    }

    /// Apply `update` to the local handle of `key`, created within the
    /// budget; past it, to the handle of `catch_all()` (always created: a
    /// fixed set).
    fn update(
        &mut self,
        key: K,
        catch_all: impl FnOnce() -> K,
        budget: &mut Budget,
        overflow: &mut OverflowCounts,
        update: impl FnOnce(&mut V::Local),
    ) {
        // The common case: the series exists (one look-up).
        if let Some(s) = self.series.get_mut(&key) {
            update(s.touch(key, &mut self.dirty));
            return;
        }
        let key = if budget.used + self.cost <= budget.max {
            budget.used += self.cost;
            key
        } else {
            overflow.add(Overflow::Series);
            let key = catch_all();
            if !self.series.contains_key(&key) {
                budget.catch_all += self.cost;
            }
            key
        };
        let shared = &self.shared;
        let s = self.series.entry(key.clone()).or_insert_with(|| Series {
            local: shared.create(&key.values()),
            dirty: false,
        });
        update(s.touch(key, &mut self.dirty));
    }

    fn flush(&mut self) {
        for k in self.dirty.drain(..) {
            // A series released since its update is gone (and was flushed
            // before it was released).
            if let Some(s) = self.series.get_mut(&k) {
                if s.dirty {
                    s.dirty = false;
                    s.local.flush();
                }
            }
        }
    }

    /// Remove the series of released slots.
    fn release(&mut self, servers: &[Label], routes: &[(Label, Label)], budget: &mut Budget) {
        let shared = &self.shared;
        let cost = self.cost;
        self.series.retain(|k, _| {
            let gone = servers.iter().any(|s| s == k.server())
                || k.route()
                    .is_some_and(|r| routes.iter().any(|(s, rr)| s == k.server() && rr == r));
            if gone {
                shared.remove(&k.values());
                budget.used = budget.used.saturating_sub(cost);
            }
            !gone
        });
    }

    fn len(&self) -> usize {
        self.series.len()
    }
}

/// Folded updates per bound, buffered like everything else.
struct OverflowCounts {
    locals: Vec<LocalIntCounter>,
}

impl OverflowCounts {
    fn add(&mut self, o: Overflow) {
        let i = Overflow::ALL.iter().position(|x| *x == o).unwrap_or(0);
        self.locals[i].inc();
    }
    fn flush(&mut self) {
        for l in &mut self.locals {
            l.flush();
        }
    }
}

/// The packet thread's metrics (see the module doc).
pub struct Metrics {
    registry: Registry,
    ready: Arc<AtomicBool>,
    capture: Arc<CaptureCounters>,
    slots: SlotTable,
    /// `server_address` labels, the last IP's kept.
    addresses: labels::ServerAddresses,
    budget: Budget,
    overflow: OverflowCounts,
    durations: Family<HistKey, HistogramVec>,
    failures: Family<FailureKey, IntCounterVec>,
    findings: Family<FindingKey, IntCounterVec>,
    connections: Family<ConnKey, IntCounterVec>,
    tls: Family<TlsKey, IntCounterVec>,
    series_gauge: IntGauge,
    severities: [Severity; 13],
    last_expiry: i64,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
}

impl Metrics {
    /// Build every family and register it (with process metrics and
    /// `apitap_build_info`) in a fresh registry. `interface` labels the
    /// capture counters (`file` in read mode).
    pub fn new(cfg: MetricsConfig, interface: &str) -> Self {
        let registry = Registry::new();
        let mut buckets = cfg.buckets.clone();
        buckets.retain(|b| b.is_finite() && *b > 0.0);
        buckets.sort_by(f64::total_cmp);
        buckets.dedup();
        if buckets.is_empty() {
            buckets = DEFAULT_BUCKETS.to_vec();
        }
        let hist_cost = buckets.len() + 3;
        let durations = HistogramVec::new(
            HistogramOpts::new(
                "http_server_request_duration_seconds",
                "HTTP exchanges seen on the wire: request first byte to response last byte; \
                 without a response, the time until the failure was known.",
            )
            .buckets(buckets),
            &[
                "http_request_method",
                "http_response_status_code",
                "http_route",
                "server_address",
                "server_port",
                "url_scheme",
                "error_type",
            ],
        )
        .expect("valid histogram");
        let failures = IntCounterVec::new(
            opts(
                "apitap_api_failures_total",
                "Failed API calls by failure cause.",
            ),
            &["server_address", "http_route", "cause"],
        )
        .expect("valid counter");
        let findings = IntCounterVec::new(
            opts(
                "apitap_exposure_findings_total",
                "Exposure findings, every occurrence.",
            ),
            &["server_address", "kind", "severity"],
        )
        .expect("valid counter");
        let connections = IntCounterVec::new(
            opts(
                "apitap_connections_total",
                "TCP connections by what they carry (http, tls, other).",
            ),
            &["server_address", "server_port", "protocol"],
        )
        .expect("valid counter");
        let tls = IntCounterVec::new(
            opts(
                "apitap_tls_handshakes_total",
                "TLS handshakes seen, by negotiated version.",
            ),
            &["server_address", "tls_version"],
        )
        .expect("valid counter");
        let overflow = IntCounterVec::new(
            opts(
                "apitap_label_overflow_total",
                "Updates whose label value was folded into _other, by the bound that folded it.",
            ),
            &["label"],
        )
        .expect("valid counter");
        let series_gauge = IntGauge::new(
            "apitap_metrics_series",
            "Bounded series currently held (counted as Prometheus series).",
        )
        .expect("valid gauge");
        let series_limit = IntGauge::new(
            "apitap_metrics_series_limit",
            "The configured global series budget.",
        )
        .expect("valid gauge");
        series_limit.set(cfg.max_series as i64);
        let build = IntGaugeVec::new(
            opts(
                "apitap_build_info",
                "Always 1; labels say which build this is.",
            ),
            &["version", "revision", "rustc", "target"],
        )
        .expect("valid gauge");
        build
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                env!("APITAP_REVISION"),
                env!("APITAP_RUSTC"),
                env!("APITAP_TARGET"),
            ])
            .set(1);

        let capture = Arc::new(CaptureCounters::default());
        let reg = |c: Box<dyn Collector>| {
            registry
                .register(c)
                .expect("each family is registered once")
        };
        reg(Box::new(durations.clone()));
        reg(Box::new(failures.clone()));
        reg(Box::new(findings.clone()));
        reg(Box::new(connections.clone()));
        reg(Box::new(tls.clone()));
        reg(Box::new(overflow.clone()));
        reg(Box::new(series_gauge.clone()));
        reg(Box::new(series_limit));
        reg(Box::new(build));
        reg(Box::new(CaptureCollector::new(interface, capture.clone())));
        #[cfg(target_os = "linux")]
        if cfg.process_metrics {
            reg(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ));
        }

        let overflow = OverflowCounts {
            locals: Overflow::ALL
                .iter()
                .map(|o| overflow.with_label_values(&[o.as_str()]).local())
                .collect(),
        };
        let mut severities = FindingKind::ALL.map(FindingKind::default_severity);
        for (k, s) in &cfg.severity_overrides {
            if let Some(i) = FindingKind::ALL.iter().position(|x| x == k) {
                severities[i] = *s;
            }
        }
        Metrics {
            registry,
            ready: Arc::new(AtomicBool::new(false)),
            capture,
            slots: SlotTable::new(
                cfg.max_servers,
                cfg.max_routes_per_server,
                cfg.slot_idle_micros,
            ),
            addresses: labels::ServerAddresses::default(),
            budget: Budget {
                used: 0,
                max: cfg.max_series,
                catch_all: 0,
            },
            overflow,
            durations: Family::new(durations, hist_cost),
            failures: Family::new(failures, 1),
            findings: Family::new(findings, 1),
            connections: Family::new(connections, 1),
            tls: Family::new(tls, 1),
            series_gauge,
            severities,
            last_expiry: i64::MIN,
        }
    }

    fn severity(&self, kind: FindingKind) -> Severity {
        FindingKind::ALL
            .iter()
            .position(|k| *k == kind)
            .map_or(kind.default_severity(), |i| self.severities[i])
    }

    /// One classified exchange: the latency histogram, its failure, its
    /// findings. Observed in the histogram: a complete exchange with its
    /// duration; a failed one without a complete response with the time
    /// until the failure was known; nothing else (e.g. a request still open
    /// at the end of the capture, failure null).
    pub fn exchange(&mut self, ex: &Exchange) {
        let address = self.addresses.label(ex.host.as_deref(), ex.server);
        let now = ex.end_ts.unwrap_or(ex.ts).as_micros();
        let route = ex.route.as_deref().unwrap_or("");
        let overflow = &mut self.overflow;
        let placed = self.slots.place(
            address,
            Some(ex.server.port()),
            Some(route),
            now,
            &mut |o| overflow.add(o),
        );
        let seconds = match (ex.duration_micros(), ex.failure) {
            (Some(d), _) => Some(d),
            (None, Some(_)) if ex.outcome != Outcome::Complete => ex.time_to_outcome_micros(),
            _ => None,
        };
        if let Some(us) = seconds {
            let key = HistKey {
                server: placed.server.clone(),
                port: placed.port,
                route: placed.route.clone(),
                method: labels::method_index(ex.request.as_ref().map(|r| &r.method)),
                status: labels::status_key(ex.status()),
                error: ex.failure.map_or(0, |c| {
                    1 + FailureCause::ALL.iter().position(|x| *x == c).unwrap_or(0) as u8
                }),
            };
            let other = self.slots.other();
            let catch_all = || HistKey {
                server: other.clone(),
                port: None,
                route: other.clone(),
                method: 9,
                status: 1,
                error: u8::MAX,
            };
            self.durations
                .update(key, catch_all, &mut self.budget, &mut self.overflow, |h| {
                    h.observe(us as f64 / 1e6)
                });
        }
        if let Some(cause) = ex.failure {
            let other = self.slots.other();
            self.failures.update(
                FailureKey(placed.server.clone(), placed.route.clone(), cause),
                || FailureKey(other.clone(), other.clone(), cause),
                &mut self.budget,
                &mut self.overflow,
                |c| c.inc(),
            );
        }
        for &kind in &ex.findings {
            let sev = self.severity(kind);
            self.count_finding(placed.server.clone(), kind, sev);
        }
    }

    fn count_finding(&mut self, server: Label, kind: FindingKind, severity: Severity) {
        let other = self.slots.other();
        self.findings.update(
            FindingKey(server, kind, severity),
            || FindingKey(other, kind, severity),
            &mut self.budget,
            &mut self.overflow,
            |c| c.inc(),
        );
    }

    /// A connection- or endpoint-level finding (`legacy_tls`,
    /// `endpoint_sprawl`, `route_variants`). `server_address` as computed by
    /// [`labels::server_address`]; `now` refreshes its slot.
    pub fn finding(
        &mut self,
        server_address: &str,
        kind: FindingKind,
        severity: Severity,
        now: Timestamp,
    ) {
        let overflow = &mut self.overflow;
        let placed = self
            .slots
            .place(server_address, None, None, now.as_micros(), &mut |o| {
                overflow.add(o)
            });
        self.count_finding(placed.server, kind, severity);
    }

    /// A connection, counted once. `host`: the Host of its first request
    /// (HTTP) or its SNI (TLS), when known; the label is then that name if
    /// it is one, as for exchanges and handshakes, else the server's IP.
    pub fn connection(
        &mut self,
        server: SocketAddr,
        host: Option<&str>,
        protocol: Protocol,
        now: Timestamp,
    ) {
        let address = self.addresses.label(host, server);
        let overflow = &mut self.overflow;
        let placed = self.slots.place(
            address,
            Some(server.port()),
            None,
            now.as_micros(),
            &mut |o| overflow.add(o),
        );
        let other = self.slots.other();
        self.connections.update(
            ConnKey(placed.server, placed.port, protocol),
            || ConnKey(other.clone(), None, protocol),
            &mut self.budget,
            &mut self.overflow,
            |c| c.inc(),
        );
    }

    /// A TLS handshake with its negotiated (else highest offered) version,
    /// as a short token such as `TLSv1.2`. `sni`: the server name, if sent.
    pub fn tls_handshake(
        &mut self,
        server: SocketAddr,
        sni: Option<&str>,
        version: &str,
        now: Timestamp,
    ) {
        let address = self.addresses.label(sni, server);
        let overflow = &mut self.overflow;
        let placed = self
            .slots
            .place(address, None, None, now.as_micros(), &mut |o| {
                overflow.add(o)
            });
        let overflow = &mut self.overflow;
        let version = self.slots.tls_version(version, &mut |o| overflow.add(o));
        let other = self.slots.other();
        self.tls.update(
            TlsKey(placed.server, version.clone()),
            || TlsKey(other, version),
            &mut self.budget,
            &mut self.overflow,
            |c| c.inc(),
        );
    }

    /// Pipeline and source totals (cumulative; stored, not added). Packets
    /// and bytes are the source's (wire bytes), or the pipeline's when the
    /// source counts none. Drops are not taken from here: scrapes read them
    /// from the registered [`DropReader`]s.
    pub fn pipeline(&mut self, stats: &PipelineStats, source: &SourceStats) {
        let c = &self.capture;
        let (packets, bytes) = if source.packets > 0 {
            (source.packets, source.bytes)
        } else {
            (stats.packets, stats.bytes)
        };
        CaptureCounters::raise(&c.packets, packets);
        CaptureCounters::raise(&c.bytes, bytes);
        CaptureCounters::raise(&c.missing_bytes, stats.flows.stream.missing_bytes);
        c.flows_active
            .store(stats.active_flows as u64, Ordering::Relaxed);
        let [requests, responses] = stats.flows.http_parse_errors;
        self.http_parse_errors(requests, responses);
    }

    /// HTTP framing errors so far, per direction (cumulative).
    pub fn http_parse_errors(&mut self, requests: u64, responses: u64) {
        CaptureCounters::raise(&self.capture.parse_errors_request, requests);
        CaptureCounters::raise(&self.capture.parse_errors_response, responses);
    }

    /// Log lines that could not be written so far, per log (cumulative).
    pub fn log_lines_lost(&mut self, exchanges: u64, findings: u64) {
        CaptureCounters::raise(&self.capture.log_lost_exchanges, exchanges);
        CaptureCounters::raise(&self.capture.log_lost_findings, findings);
    }

    /// Push buffered updates into the shared registry, then (at most once
    /// per capture-time second) give back slots idle since `now - idle`
    /// and remove their series.
    pub fn publish(&mut self, now: Timestamp) {
        self.flush();
        let now = now.as_micros();
        if now.saturating_sub(self.last_expiry) < 1_000_000 {
            return;
        }
        self.last_expiry = now;
        let released = self.slots.expire(now);
        if released.is_empty() {
            return;
        }
        let (s, r, b) = (&released.servers, &released.routes, &mut self.budget);
        self.durations.release(s, r, b);
        self.failures.release(s, r, b);
        self.findings.release(s, r, b);
        self.connections.release(s, r, b);
        self.tls.release(s, r, b);
        self.series_gauge
            .set((self.budget.used + self.budget.catch_all) as i64);
    }

    /// Push buffered updates (no slot expiry).
    pub fn flush(&mut self) {
        self.durations.flush();
        self.failures.flush();
        self.findings.flush();
        self.connections.flush();
        self.tls.flush();
        self.overflow.flush();
        self.series_gauge
            .set((self.budget.used + self.budget.catch_all) as i64);
    }

    /// Flush, then the text exposition 0.0.4 (for `--metrics-out`).
    pub fn render(&mut self) -> String {
        self.flush();
        self.shared().render()
    }

    /// The handle the server renders from.
    pub fn shared(&self) -> SharedMetrics {
        SharedMetrics {
            registry: self.registry.clone(),
            ready: self.ready.clone(),
            capture: self.capture.clone(),
        }
    }

    /// Bounded series held now, catch-alls included (Prometheus series).
    pub fn series(&self) -> usize {
        self.budget.used + self.budget.catch_all
    }

    /// Label sets per family, for tests: (histogram, failures, findings,
    /// connections, tls).
    pub fn label_sets(&self) -> [usize; 5] {
        [
            self.durations.len(),
            self.failures.len(),
            self.findings.len(),
            self.connections.len(),
            self.tls.len(),
        ]
    }
}

/// Hand exchanges to the metrics directly (e.g. in tests or a sink list).
impl crate::pipeline::ExchangeSink for Metrics {
    fn exchange(&mut self, ex: &Exchange) {
        Metrics::exchange(self, ex)
    }
}

#[cfg(test)]
mod tests;
