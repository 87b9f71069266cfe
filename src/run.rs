//! Running apitap: wires a packet source, the pipeline and the outputs.
//!
//! Contract: [`run`] returns `Ok` after a clean end (end of file, or a stop
//! signal) and a [`RunError`] that `main` turns into exit code 1 with a
//! one-line message; nothing here panics on bad input.

use crate::capture::live::{LiveOptions, LiveSource};
use crate::capture::replay::{ReplaySource, StopFlag};
use crate::capture::{CaptureError, PacketSource, SourceEvent};
use crate::classify::findings::{Finding, FindingKind, Severity};
use crate::classify::tls::TlsHandshake;
use crate::classify::Classifier;
use crate::clock::Timestamp;
use crate::config::{Config, Input};
use crate::decode::DecoderConfig;
use crate::flow::Protocol;
use crate::http::exchange::Exchange;
use crate::metrics::{self, Metrics, MetricsConfig};
use crate::output::exchange_log::ExchangeLog;
use crate::output::findings_log::FindingsLog;
use crate::output::open_output;
use crate::output::summary::Summary;
use crate::pipeline::{ExchangeSink, Pipeline};
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error("cannot write {what} to {path}: {source}")]
    Output {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Metrics(#[from] crate::metrics::ServerError),
    #[error("{0}")]
    Setup(String),
}

/// Everything that receives exchanges in this run.
struct Sinks {
    log: Option<ExchangeLog>,
    findings: Option<FindingsLog>,
    summary: Option<Summary>,
    metrics: Metrics,
    /// Severity of `legacy_tls` (None: turned off).
    legacy_tls: Option<Severity>,
}

impl ExchangeSink for Sinks {
    fn connection(&mut self, server: SocketAddr, protocol: Protocol, ts: Timestamp) {
        self.metrics.connection(server, None, protocol, ts);
        if protocol == Protocol::Other {
            if let Some(s) = &mut self.summary {
                s.other_connection(server);
            }
        }
    }

    fn exchange(&mut self, ex: &Exchange) {
        if let Some(l) = &mut self.log {
            l.exchange(ex);
        }
        if let Some(s) = &mut self.summary {
            s.exchange(ex);
        }
        self.metrics.exchange(ex);
    }

    fn finding(&mut self, f: &Finding) {
        if let Some(l) = &mut self.findings {
            l.write(f);
        }
        if let Some(s) = &mut self.summary {
            s.finding(f);
        }
        // Per-exchange kinds are counted by `Metrics::exchange`.
        if matches!(
            f.kind,
            FindingKind::LegacyTls | FindingKind::EndpointSprawl | FindingKind::RouteVariants
        ) {
            let server = f.host.clone().unwrap_or_else(|| f.server.ip().to_string());
            self.metrics.finding(&server, f.kind, f.severity, f.ts);
        }
    }

    fn tls_handshake(&mut self, hs: &TlsHandshake) {
        if let Some(s) = &mut self.summary {
            s.tls_connection(hs.server, hs.sni(), hs.version());
        }
        let version = hs
            .version()
            .map_or("unknown", crate::classify::tls::version_label);
        self.metrics
            .tls_handshake(hs.server, hs.sni(), version, hs.ts);
        if let Some(f) = hs.legacy_tls(self.legacy_tls) {
            self.finding(&f);
        }
    }
}

pub fn run(cfg: &Config) -> Result<(), RunError> {
    let stop = StopFlag::default();
    match &cfg.input {
        Input::File(path) => {
            let source = ReplaySource::open(path, cfg.replay_speed, cfg.replay_loop, stop.clone())?;
            let flag = stop.clone();
            on_stop_signal(move || flag.stop())?;
            run_source(cfg, source, &stop)
        }
        Input::Interface(iface) => {
            let opts = LiveOptions {
                interface: iface.clone(),
                filter: cfg.filter.clone(),
                ..LiveOptions::default()
            };
            let source = LiveSource::open(&opts)?;
            let stopper = source.stopper();
            let flag = stop.clone();
            on_stop_signal(move || {
                flag.stop();
                stopper.stop();
            })?;
            tracing::info!(interface = %iface, filter = %cfg.filter, "capturing");
            run_source(cfg, source, &stop)
        }
    }
}

/// Call `stop` on SIGINT or SIGTERM (from a thread of its own: the capture
/// loop then ends cleanly and every open exchange is flushed).
fn on_stop_signal(stop: impl Fn() + Send + 'static) -> Result<(), RunError> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .map_err(|e| RunError::Setup(format!("cannot install signal handlers: {e}")))?;
    std::thread::Builder::new()
        .name("apitap-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                tracing::info!(signal = sig, "stopping: flushing open exchanges");
                stop();
            }
        })
        .map_err(|e| RunError::Setup(format!("cannot start the signal thread: {e}")))?;
    Ok(())
}

/// How often (wall time) batched metric updates are pushed to the registry.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// The capture loop, the same for files and interfaces.
fn run_source(
    cfg: &Config,
    mut source: impl PacketSource,
    stop: &StopFlag,
) -> Result<(), RunError> {
    let classifier =
        Classifier::new(cfg.classify.clone()).map_err(|e| RunError::Setup(e.to_string()))?;
    let mut pipeline = Pipeline::new(DecoderConfig::default(), cfg.flow.clone(), classifier);
    let log = match &cfg.exchanges {
        Some(p) => Some(ExchangeLog::new(
            open_output(p).map_err(|source| RunError::Output {
                what: "the exchange log",
                path: p.clone(),
                source,
            })?,
            cfg.classify.credential_params.clone(),
        )),
        None => None,
    };
    let findings = match &cfg.findings {
        Some(p) => Some(FindingsLog::with_capacity(
            open_output(p).map_err(|source| RunError::Output {
                what: "the findings log",
                path: p.clone(),
                source,
            })?,
            cfg.classify.fold_interval_micros,
            cfg.classify.fold_max_entries,
        )),
        None => None,
    };
    let report = matches!(cfg.input, Input::File(_))
        && cfg.exchanges.is_none()
        && cfg.findings.is_none()
        && cfg.metrics_out.is_none();
    let mut sinks = Sinks {
        log,
        findings,
        summary: report.then(Summary::default),
        metrics: Metrics::new(MetricsConfig::default(), source.interface()),
        legacy_tls: cfg.classify.severities.get(FindingKind::LegacyTls),
    };
    let shared = sinks.metrics.shared();
    let server = match &cfg.listen_address {
        Some(addr) => {
            let web = cfg
                .web_config_file
                .clone()
                .map(|path| metrics::WebConfig { path });
            Some(metrics::serve(addr, shared.clone(), web)?)
        }
        None => None,
    };
    shared.set_ready(true);
    // The wall clock only paces publishing; the pipeline sees packet time.
    let mut last_publish = Instant::now();
    let mut events = 0u32;
    while let Some(ev) = source.next_event()? {
        match ev {
            SourceEvent::Packet(pkt) => pipeline.packet(&pkt, &mut sinks),
            SourceEvent::Tick(t) => pipeline.tick(t, &mut sinks),
        }
        events = events.wrapping_add(1);
        if events.is_multiple_of(1024) && last_publish.elapsed() >= PUBLISH_EVERY {
            publish(&mut sinks.metrics, &pipeline, &source);
            last_publish = Instant::now();
        }
    }
    pipeline.finish(&mut sinks);
    publish(&mut sinks.metrics, &pipeline, &source);
    if let Some(p) = &cfg.metrics_out {
        let err = |source| RunError::Output {
            what: "the metrics",
            path: p.clone(),
            source,
        };
        let mut w = open_output(p).map_err(err)?;
        w.write_all(sinks.metrics.render().as_bytes())
            .map_err(err)?;
        w.flush().map_err(err)?;
    }
    if let Some(l) = &mut sinks.log {
        l.finish().map_err(|source| RunError::Output {
            what: "the exchange log",
            path: cfg.exchanges.clone().unwrap_or_default(),
            source,
        })?;
    }
    if let Some(l) = &mut sinks.findings {
        l.finish().map_err(|source| RunError::Output {
            what: "the findings log",
            path: cfg.findings.clone().unwrap_or_default(),
            source,
        })?;
    }
    if let Some(s) = &sinks.summary {
        print!("{}", s.render(&pipeline.stats(), source.truncation()));
    }
    if let Some(t) = source.truncation() {
        tracing::warn!("{t}; everything before it was processed");
    }
    let st = source.stats();
    if st.dropped > 0 || st.if_dropped > 0 {
        tracing::warn!(
            dropped = st.dropped,
            if_dropped = st.if_dropped,
            "the kernel or interface dropped packets: some exchanges are missing"
        );
    }
    if let Some(server) = server {
        // Read mode: the final metrics stay up until interrupted.
        while !stop.is_stopped() {
            std::thread::sleep(Duration::from_millis(100));
        }
        server.shutdown();
    }
    Ok(())
}

fn publish(metrics: &mut Metrics, pipeline: &Pipeline, source: &impl PacketSource) {
    let stats = pipeline.stats();
    metrics.pipeline(&stats, &source.stats());
    metrics.publish(stats.last_ts.unwrap_or_default());
}
