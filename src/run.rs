//! Running apitap: wires a packet source, the pipeline and the outputs.
//!
//! Contract: [`run`] returns `Ok` after a clean end (end of file, or a stop
//! signal) and a [`RunError`] that `main` turns into exit code 1 with a
//! one-line message; nothing here panics on bad input.
//!
//! Service behaviour (see [`crate::daemon`]): live capture drops privileges
//! once the capture handle, the listener and the log files are open, then
//! sends `READY=1`. SIGTERM/SIGINT end the loop, flush every open exchange
//! and the logs (`STOPPING=1`). SIGHUP re-reads the configuration on the
//! signal thread; a valid one is swapped in by the packet thread between
//! two events (the capture handle stays open, no packet is skipped): the
//! classifier (route patterns, credential names, limits, severities), the
//! log level, and the log files are reopened. A broken one is logged and
//! the running configuration stays. `RELOADING=1` and `READY=1` frame it.

use crate::capture::bpf::FileFilter;
use crate::capture::live::{LiveOptions, LiveSource};
use crate::capture::replay::{ReplaySource, StopFlag};
use crate::capture::{CaptureError, PacketSource, SourceEvent};
use crate::classify::findings::{Finding, FindingKind, Severity};
use crate::classify::tls::TlsHandshake;
use crate::classify::Classifier;
use crate::cli::Cli;
use crate::clock::Timestamp;
use crate::config::{Config, Input};
use crate::daemon::logging::LogHandle;
use crate::daemon::SharedWriter;
use crate::daemon::{
    drop_privileges, on_signals, Dropped, Notifier, Progress, ReopenFile, Supervisor,
};
use crate::decode::DecoderConfig;
use crate::flow::Protocol;
use crate::http::exchange::Exchange;
use crate::metrics::{self, Metrics, MetricsConfig};
use crate::output::exchange_log::ExchangeLog;
use crate::output::findings_log::FindingsLog;
use crate::output::open_output;
use crate::output::summary::Summary;
use crate::pipeline::{ExchangeSink, Pipeline};
use crate::workers::{lock, Engine, Sharded};
use std::io::Write;
use std::net::SocketAddr;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
    /// A thread of apitap panicked (a bug; the panic hook printed where).
    #[error("internal error in thread {0}: exchanges it held are missing; please report it")]
    Internal(String),
}

/// Everything that receives exchanges in this run: what goes where (which
/// findings the metrics count, which connections the report lists) is
/// decided here, once, for `run` and for the fuzz targets that check these
/// outputs.
pub struct Sinks {
    pub log: Option<ExchangeLog>,
    pub findings: Option<FindingsLog>,
    pub summary: Option<Summary>,
    pub metrics: Metrics,
    /// Severity of `legacy_tls` (None: turned off).
    legacy_tls: Option<Severity>,
    /// Exchanges seen (for the service status line).
    exchanges: u64,
}

impl Sinks {
    /// `legacy_tls`: the severity of `legacy_tls` findings (None: off).
    pub fn new(
        log: Option<ExchangeLog>,
        findings: Option<FindingsLog>,
        summary: Option<Summary>,
        metrics: Metrics,
        legacy_tls: Option<Severity>,
    ) -> Self {
        Sinks {
            log,
            findings,
            summary,
            metrics,
            legacy_tls,
            exchanges: 0,
        }
    }
}

impl ExchangeSink for Sinks {
    fn connection(
        &mut self,
        server: SocketAddr,
        host: Option<&str>,
        protocol: Protocol,
        ts: Timestamp,
    ) {
        self.metrics.connection(server, host, protocol, ts);
        if protocol == Protocol::Other {
            if let Some(s) = &mut self.summary {
                s.other_connection(server);
            }
        }
    }

    fn exchange(&mut self, ex: &Exchange) {
        self.exchanges += 1;
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

/// What a SIGHUP hands to the packet thread: a validated configuration and
/// the classifier built from it (built off the packet thread).
struct PendingReload {
    cfg: Config,
    classifier: Classifier,
}

/// The reload channel between the signal thread and the packet thread.
#[derive(Clone, Default)]
struct ReloadSlot {
    /// Set when `pending` holds something; the packet thread checks it per
    /// event (one relaxed load).
    flag: Arc<AtomicBool>,
    pending: Arc<Mutex<Option<PendingReload>>>,
}

/// Service plumbing shared by `run` and the capture loop.
struct Service {
    notifier: Notifier,
    progress: Arc<Progress>,
    reload: ReloadSlot,
    /// Bumped on reload: the log files reopen their paths (logrotate).
    log_generation: Arc<AtomicU64>,
}

/// Run until the end of the input or a stop signal. `cli` is kept to
/// re-read the configuration on SIGHUP; `log` changes the log level then.
pub fn run(cfg: &Config, cli: &Cli, log: LogHandle) -> Result<(), RunError> {
    let stop = StopFlag::default();
    let service = Service {
        notifier: Notifier::from_env(),
        progress: Arc::new(Progress::default()),
        reload: ReloadSlot::default(),
        log_generation: Arc::new(AtomicU64::new(0)),
    };
    let reloader = {
        let slot = service.reload.clone();
        let notifier = service.notifier.clone();
        let cli = cli.clone();
        let running = cfg.clone();
        move || prepare_reload(&cli, &running, &slot, &notifier, &log)
    };
    match &cfg.input {
        Input::File(path) => {
            let mut source =
                ReplaySource::open(path, cfg.replay_speed, cfg.replay_loop, stop.clone())?;
            // Paging on a thread of its own: faster with a core to spare.
            // With workers on every core it was 13 % slower on an idle
            // machine (one more thread to schedule) and 20 % faster on a
            // busy one; since the pager polls instead of being woken, the
            // two measure the same on an idle machine. It stays inline
            // there.
            if cfg.workers < crate::config::cores() {
                source = source.page_on_thread();
            }
            let flag = stop.clone();
            on_signals(move || flag.stop(), reloader)
                .map_err(|e| RunError::Setup(format!("cannot install signal handlers: {e}")))?;
            let engine = new_engine(cfg, source.backing())?;
            run_source(cfg, source, engine, &stop, &service)
        }
        Input::Interface(iface) if cfg.workers > 1 => {
            let opts = LiveOptions {
                interface: iface.clone(),
                filter: cfg.filter.clone(),
                ..cfg.capture.clone()
            };
            let sources = crate::capture::live::open_fanout(&opts, cfg.workers)?;
            let (sharded, ticker) = Sharded::live(
                sources,
                DecoderConfig::default(),
                cfg.flow.clone(),
                classifier(cfg)?,
                stop.clone(),
            )
            .map_err(|e| RunError::Setup(format!("cannot start worker threads: {e}")))?;
            let flag = stop.clone();
            // The ticker sees the flag; `finish` stops the handles.
            on_signals(move || flag.stop(), reloader)
                .map_err(|e| RunError::Setup(format!("cannot install signal handlers: {e}")))?;
            tracing::info!(interface = %iface, filter = %cfg.filter, workers = cfg.workers, "capturing");
            run_source(
                cfg,
                ticker,
                Engine::Many(Box::new(sharded)),
                &stop,
                &service,
            )
        }
        Input::Interface(iface) => {
            let opts = LiveOptions {
                interface: iface.clone(),
                filter: cfg.filter.clone(),
                ..cfg.capture.clone()
            };
            let source = LiveSource::open(&opts)?;
            let stopper = source.stopper();
            let flag = stop.clone();
            on_signals(
                move || {
                    flag.stop();
                    stopper.stop();
                },
                reloader,
            )
            .map_err(|e| RunError::Setup(format!("cannot install signal handlers: {e}")))?;
            tracing::info!(interface = %iface, filter = %cfg.filter, "capturing");
            let engine = new_engine(cfg, None)?;
            run_source(cfg, source, engine, &stop, &service)
        }
    }
}

/// On the signal thread: re-read and validate the configuration, apply the
/// log level, and hand the rest to the packet thread. A broken file keeps
/// the running configuration and says why.
fn prepare_reload(
    cli: &Cli,
    running: &Config,
    slot: &ReloadSlot,
    notifier: &Notifier,
    log: &LogHandle,
) {
    notifier.reloading();
    let loaded = Config::load(cli)
        .map_err(|e| e.to_string())
        .and_then(|cfg| {
            Classifier::new(cfg.classify.clone())
                .map(|classifier| PendingReload { cfg, classifier })
                .map_err(|e| format!("classify.route-patterns: {e}"))
        });
    match loaded {
        Ok(p) => {
            let fixed = running.needs_restart(&p.cfg);
            if !fixed.is_empty() {
                tracing::warn!(
                    keys = %fixed.join(", "),
                    "these keys changed but need a restart; the running values stay"
                );
            }
            log.set_level(p.cfg.log_level);
            if let Ok(mut pending) = slot.pending.lock() {
                *pending = Some(p);
            }
            slot.flag.store(true, Ordering::Release);
        }
        Err(e) => {
            tracing::error!("reload failed, keeping the running configuration: {e}");
            notifier.ready("reload failed; running with the previous configuration");
        }
    }
}

/// How often (wall time) batched metric updates are pushed to the registry.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// Open a log output: live mode appends, reopens on SIGHUP (logrotate) and
/// is flushed about once a second through the returned [`SharedWriter`];
/// read mode writes a fresh file (or stdout) as before.
fn open_log(
    path: &str,
    what: &'static str,
    input: Follow,
    generation: &Arc<AtomicU64>,
) -> Result<(Box<dyn Write + Send>, Option<SharedWriter>), RunError> {
    let err = |source| RunError::Output {
        what,
        path: path.to_string(),
        source,
    };
    if input == Follow::Whole {
        return Ok((open_output(path).map_err(err)?, None));
    }
    let inner: Box<dyn Write + Send> = if path == "-" || input == Follow::Pipe {
        open_output(path).map_err(err)?
    } else {
        Box::new(ReopenFile::open(path, generation.clone()).map_err(err)?)
    };
    let shared = SharedWriter::new(inner);
    Ok((Box::new(shared.clone()), Some(shared)))
}

/// How the input is read, for the logs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Follow {
    /// A file: each log written as a whole (flushed when its buffer fills).
    Whole,
    /// A file read as it is written (stdin, a FIFO): each log created as
    /// for a file, flushed by the loop as live.
    Pipe,
    /// Live capture: log files reopened on SIGHUP (logrotate), flushed by
    /// the loop.
    Live,
}

/// The log writers the loop flushes (live capture, piped input).
#[derive(Default)]
struct LogOutputs {
    exchanges: Option<SharedWriter>,
    findings: Option<SharedWriter>,
}

impl LogOutputs {
    fn flush(&self) {
        for w in [&self.exchanges, &self.findings].into_iter().flatten() {
            if let Err(e) = w.clone().flush() {
                tracing::warn!("cannot write a log file: {e}");
            }
        }
    }
}

fn classifier(cfg: &Config) -> Result<Classifier, RunError> {
    Classifier::new(cfg.classify.clone()).map_err(|e| RunError::Setup(e.to_string()))
}

/// One pipeline, or `cfg.workers` fed by this thread (`mapped`: the mapped
/// capture file the packets lie in, if any, and what keeps the pages the
/// workers still read mapped).
fn new_engine(
    cfg: &Config,
    mapped: Option<(crate::capture::Backing, crate::capture::mapped::Hold)>,
) -> Result<Engine, RunError> {
    let classifier = classifier(cfg)?;
    let (backing, hold) = mapped.unzip();
    Ok(if cfg.workers > 1 {
        let sharded = Sharded::new(
            DecoderConfig::default(),
            cfg.flow.clone(),
            classifier,
            cfg.workers,
            backing,
        )
        .map_err(|e| RunError::Setup(format!("cannot start worker threads: {e}")))?
        .holding(hold);
        Engine::Many(Box::new(sharded))
    } else {
        let one = Pipeline::new(DecoderConfig::default(), cfg.flow.clone(), classifier);
        Engine::One(Box::new(match backing {
            Some(b) => one.mapped(b),
            None => one,
        }))
    })
}

/// The name [`RunError::Internal`] gives the thread running the capture loop.
fn this_thread() -> String {
    std::thread::current().name().unwrap_or("main").to_owned()
}

/// The capture loop, the same for files and interfaces.
fn run_source(
    cfg: &Config,
    mut source: impl PacketSource,
    mut pipeline: Engine,
    stop: &StopFlag,
    service: &Service,
) -> Result<(), RunError> {
    let live = matches!(cfg.input, Input::Interface(_));
    let follow = match (live, source.streamed()) {
        (true, _) => Follow::Live,
        (false, true) => Follow::Pipe,
        (false, false) => Follow::Whole,
    };
    // `-f` with `-r` filters the file as libpcap filters a live capture
    // (and tcpdump -r a file). The default, tcp, is not run: only TCP is
    // read anyway, and what is not TCP is counted in the capture health.
    let mut filter = match cfg.filter.as_str() {
        f if !live && f != crate::config::DEFAULT_FILTER => Some(FileFilter::new(f)?),
        _ => None,
    };
    let mut outs = LogOutputs::default();
    let log = match &cfg.exchanges {
        Some(p) => {
            let (out, shared) = open_log(p, "the exchange log", follow, &service.log_generation)?;
            outs.exchanges = shared;
            Some(ExchangeLog::new(
                out,
                cfg.classify.credential_params.clone(),
            ))
        }
        None => None,
    };
    let findings = match &cfg.findings {
        Some(p) => {
            let (out, shared) = open_log(p, "the findings log", follow, &service.log_generation)?;
            outs.findings = shared;
            Some(FindingsLog::with_capacity(
                out,
                cfg.classify.fold_interval_micros,
                cfg.classify.fold_max_entries,
            ))
        }
        None => None,
    };
    let report = matches!(cfg.input, Input::File(_))
        && cfg.exchanges.is_none()
        && cfg.findings.is_none()
        && cfg.metrics_out.is_none();
    let metrics = Metrics::new(MetricsConfig::default(), source.interface());
    let shared = metrics.shared();
    // Shared with the merging thread when there are several workers.
    let sinks = Arc::new(Mutex::new(Sinks::new(
        log,
        findings,
        report.then(Summary::default),
        metrics,
        cfg.classify.severities.get(FindingKind::LegacyTls),
    )));
    for drops in source.drop_readers() {
        shared.add_drop_reader(drops);
    }
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
    if live {
        // Everything that needs privileges is open now.
        match drop_privileges(cfg.user.as_deref()) {
            Ok(Dropped::User(u)) => tracing::info!(user = %u, "switched to an unprivileged user"),
            Ok(Dropped::Capabilities) => tracing::debug!("capabilities dropped"),
            Err(e) => return Err(RunError::Setup(e.to_string())),
        }
    }
    shared.set_ready(true);
    let _supervisor = Supervisor::start(service.notifier.clone(), service.progress.clone());
    service
        .notifier
        .ready(&format!("capturing on {}", source.interface()));
    let progress = &service.progress;
    let mut running = cfg.clone();
    // The wall clock only paces publishing; the pipeline sees packet time.
    let mut last_publish = Instant::now();
    let mut events = 0u64;
    // Dropped before anything else here locks the sinks.
    let mut held = None;
    // A capture that fails (the interface went away) or a thread that
    // panicked (a worker's, or this one: decoding, or the one pipeline of
    // `--workers 1`) ends the loop like the end of a file: what was seen is
    // flushed and written, then the error is returned (exit 1, and a
    // service manager restarts apitap, which needs the privileges it
    // dropped to open a capture again).
    let mut failure = None;
    let ran = panic::catch_unwind(AssertUnwindSafe(|| loop {
        let ev = match source.next_event() {
            Ok(Some(ev)) => ev,
            Ok(None) => break,
            Err(e) => {
                shared.set_ready(false);
                failure = Some(e.into());
                break;
            }
        };
        let tick = match ev {
            SourceEvent::Packet(pkt) => {
                if filter.as_mut().is_none_or(|f| f.matches(&pkt)) {
                    pipeline.packet(&pkt, &sinks, &mut held);
                }
                false
            }
            SourceEvent::Tick(t) => {
                held = None;
                pipeline.tick(t, &sinks);
                true
            }
        };
        events = events.wrapping_add(1);
        Progress::set(&progress.events, events);
        if tick || events.is_multiple_of(256) {
            if let Some(thread) = pipeline.failed() {
                shared.set_ready(false);
                failure = Some(RunError::Internal(thread));
                break;
            }
        }
        if service.reload.flag.load(Ordering::Relaxed) {
            held = None;
            apply_reload(
                &mut running,
                &mut pipeline,
                &mut lock(&sinks),
                &outs,
                service,
            );
        }
        if (tick || events.is_multiple_of(256)) && last_publish.elapsed() >= PUBLISH_EVERY {
            held = None;
            let mut sinks = lock(&sinks);
            publish(&mut sinks, &pipeline, &source);
            let st = source.stats();
            Progress::set(&progress.packets, st.packets);
            Progress::set(&progress.dropped, st.dropped + st.if_dropped);
            Progress::set(&progress.exchanges, sinks.exchanges);
            if let (Some(f), Some(now)) = (&mut sinks.findings, pipeline.stats().last_ts) {
                f.flush_expired(now);
            }
            outs.flush();
            last_publish = Instant::now();
        }
    }));
    if ran.is_err() {
        shared.set_ready(false);
        failure = Some(RunError::Internal(this_thread()));
    }
    service.notifier.stopping();
    if let Some(f) = &filter {
        tracing::info!(
            filter = %cfg.filter,
            kept = f.kept,
            left_out = f.rejected,
            "capture filter applied to the file"
        );
    }
    drop(held);
    // After a panic here the pipeline may be half-way through a packet:
    // flushing it is still worth trying, and a second panic only costs
    // the flush.
    let finished = panic::catch_unwind(AssertUnwindSafe(|| pipeline.finish(&sinks)));
    if failure.is_none() {
        failure = match finished {
            Ok(()) => pipeline.failed().map(RunError::Internal),
            Err(_) => Some(RunError::Internal(this_thread())),
        };
    }
    let mut sinks = lock(&sinks);
    publish(&mut sinks, &pipeline, &source);
    if let Some(p) = &cfg.metrics_out {
        let err = |source| RunError::Output {
            what: "the metrics",
            path: p.clone(),
            source,
        };
        let mut w = open_output(p).map_err(err)?;
        let written = w
            .write_all(sinks.metrics.render().as_bytes())
            .and_then(|()| w.flush());
        reader_gone(p, written).map_err(err)?;
    }
    if let (Some(l), Some(p)) = (&mut sinks.log, &cfg.exchanges) {
        if follow == Follow::Live {
            went_on("the exchange log", l.take_error(), l.lost);
        }
        reader_gone(p, l.finish()).map_err(|source| RunError::Output {
            what: "the exchange log",
            path: p.clone(),
            source,
        })?;
    }
    if let (Some(l), Some(p)) = (&mut sinks.findings, &cfg.findings) {
        if follow == Follow::Live {
            went_on("the findings log", l.take_error(), l.lost);
        }
        reader_gone(p, l.finish()).map_err(|source| RunError::Output {
            what: "the findings log",
            path: p.clone(),
            source,
        })?;
    }
    let st = source.stats();
    if let Some(s) = &mut sinks.summary {
        s.corrupt_blocks = st.corrupt_blocks;
        print!("{}", s.render(&pipeline.stats(), source.truncation()));
    }
    if let Some(t) = source.truncation() {
        tracing::warn!("{t}; everything before it was processed");
    }
    if st.corrupt_blocks > 0 {
        tracing::warn!(
            corrupt_blocks = st.corrupt_blocks,
            "skipped blocks of the capture file that could not be read; the blocks around them were read"
        );
    }
    if st.dropped > 0 || st.if_dropped > 0 {
        tracing::warn!(
            dropped = st.dropped,
            if_dropped = st.if_dropped,
            "the kernel or interface dropped packets: some exchanges are missing"
        );
    }
    if let Some(e) = failure {
        if let Some(server) = server {
            server.shutdown();
        }
        return Err(e);
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

/// On the packet thread, between two events: swap in what
/// [`prepare_reload`] validated. Flows and their buffered bytes stay; only
/// exchanges completed from now on see the new classifier.
fn apply_reload(
    running: &mut Config,
    pipeline: &mut Engine,
    sinks: &mut Sinks,
    outs: &LogOutputs,
    service: &Service,
) {
    service.reload.flag.store(false, Ordering::Relaxed);
    let Some(p) = service
        .reload
        .pending
        .lock()
        .ok()
        .and_then(|mut g| g.take())
    else {
        return;
    };
    pipeline.set_classifier(p.classifier);
    sinks.legacy_tls = p.cfg.classify.severities.get(FindingKind::LegacyTls);
    // Log files: reopen (logrotate moved them); the exchange log redacts
    // the new credential names from now on.
    service.log_generation.fetch_add(1, Ordering::Relaxed);
    if let Some(log) = &mut sinks.log {
        log.set_credential_params(p.cfg.classify.credential_params.clone());
    }
    outs.flush();
    running.classify = p.cfg.classify.clone();
    running.log_level = p.cfg.log_level;
    tracing::info!(
        route_patterns = running.classify.route_patterns.len(),
        credential_params = running.classify.credential_params.len(),
        log_level = %running.log_level,
        "configuration reloaded"
    );
    service.notifier.ready("configuration reloaded; capturing");
}

/// A live capture's log that met write errors (a full disk) lost whole
/// lines, warned about and counted in `apitap_log_lines_lost_total` as it
/// went, and went on: at the stop only the final flush can fail the exit,
/// so a disk that was full for a while last week does not leave the
/// service failed. (A file's run reports the first error: its log is
/// incomplete.)
fn went_on(what: &str, error: Option<std::io::Error>, lost: u64) {
    if let Some(e) = error {
        tracing::warn!(
            lost,
            "{what} lost lines to write errors during the run (the first: {e}); counted in apitap_log_lines_lost_total"
        );
    }
}

/// A reader of standard output that went away (`--exchanges -` piped into
/// `head`) is not an error: it read what it wanted, as from any Unix
/// filter. (The rest of the file is still read: other outputs may want it.)
fn reader_gone(path: &str, r: std::io::Result<()>) -> std::io::Result<()> {
    match r {
        Err(e) if path == "-" && e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

fn publish(sinks: &mut Sinks, pipeline: &Engine, source: &impl PacketSource) {
    let stats = pipeline.stats();
    let metrics = &mut sinks.metrics;
    metrics.pipeline(&stats, &source.stats());
    metrics.log_lines_lost(
        sinks.log.as_ref().map_or(0, |l| l.lost),
        sinks.findings.as_ref().map_or(0, |l| l.lost),
    );
    metrics.publish(stats.last_ts.unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::SourceStats;
    use clap::Parser;

    fn service() -> Service {
        Service {
            notifier: Notifier::from_env(),
            progress: Arc::new(Progress::default()),
            reload: ReloadSlot::default(),
            log_generation: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The configuration of `apitap -r SAMPLE ARGS...` and the sample's source.
    fn sample(args: &[&str]) -> (Config, ReplaySource, StopFlag) {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/samples/http-mix-sample.pcap");
        let cli = Cli::try_parse_from(["apitap", "-r", path].iter().chain(args)).unwrap();
        let cfg = Config::load(&cli).unwrap();
        let stop = StopFlag::default();
        let source = ReplaySource::open(path, None, false, stop.clone()).unwrap();
        (cfg, source, stop)
    }

    /// The sample, cut after `packets` packets: its end, or a panic (a
    /// bug on the capture thread) when it would read the next one.
    struct Cut {
        inner: ReplaySource,
        packets: u64,
        panics: bool,
    }

    impl PacketSource for Cut {
        fn next_event(&mut self) -> Result<Option<SourceEvent<'_>>, CaptureError> {
            if self.inner.stats().packets == self.packets {
                assert!(!self.panics, "a bug on the capture thread");
                return Ok(None);
            }
            self.inner.next_event()
        }
        fn interface(&self) -> &str {
            self.inner.interface()
        }
        fn stats(&self) -> SourceStats {
            self.inner.stats()
        }
    }

    /// `(result, exchange log, metrics)` of the sample cut after 1,000
    /// packets.
    fn cut_run(workers: &str, panics: bool) -> (Result<(), RunError>, String, String) {
        let dir = tempfile::tempdir().unwrap();
        let (log, out) = (dir.path().join("ex.ndjson"), dir.path().join("m.prom"));
        let (cfg, inner, stop) = sample(&[
            "--workers",
            workers,
            "--exchanges",
            log.to_str().unwrap(),
            "--metrics-out",
            out.to_str().unwrap(),
        ]);
        // Not the mapped file: the cut source does not hand it on.
        let engine = new_engine(&cfg, None).unwrap();
        let source = Cut {
            inner,
            packets: 1_000,
            panics,
        };
        let result = run_source(&cfg, source, engine, &stop, &service());
        let read = |p| std::fs::read_to_string(p).unwrap();
        (result, read(&log), read(&out))
    }

    #[test]
    fn a_panic_on_the_capture_thread_ends_the_run_with_an_error_after_flushing_and_writing() {
        for workers in ["1", "2"] {
            let (ended, ended_log, ended_metrics) = cut_run(workers, false);
            ended.unwrap();
            let (failed, log, metrics) = cut_run(workers, true);
            let name = std::thread::current().name().unwrap().to_owned();
            assert!(
                matches!(&failed, Err(RunError::Internal(t)) if *t == name),
                "{workers}: {failed:?}"
            );
            // Every exchange up to the panic, open ones flushed as at the
            // end of a file: the same log and metrics as a capture that
            // ended there (but for the build and process lines).
            assert!(ended_log.lines().count() > 50, "{ended_log}");
            assert_eq!(log, ended_log, "{workers}");
            let comparable = |m: &str| {
                m.lines()
                    .filter(|l| !l.contains("process_") && !l.contains("build_info"))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            };
            assert_eq!(
                comparable(&metrics),
                comparable(&ended_metrics),
                "{workers}"
            );
            assert!(
                metrics.contains("apitap_capture_packets_total{interface=\"file\"} 1000\n"),
                "{metrics}"
            );
        }
    }

    #[test]
    fn a_worker_that_panics_ends_the_run_with_an_error_after_writing_the_outputs() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("metrics.prom");
        let (cfg, source, stop) =
            sample(&["--workers", "2", "--metrics-out", out.to_str().unwrap()]);
        let mut engine = new_engine(&cfg, source.backing()).unwrap();
        let Engine::Many(sharded) = &mut engine else {
            unreachable!("two workers")
        };
        sharded.crash(1);
        while sharded.failed().is_none() {
            std::thread::sleep(Duration::from_millis(1));
        }
        let err = run_source(&cfg, source, engine, &stop, &service()).unwrap_err();
        assert!(
            matches!(&err, RunError::Internal(t) if t == "apitap-worker-1"),
            "{err}"
        );
        // The loop ended at its first check (every 256 packets), not at
        // the end of the sample (6,733 packets); what the other worker saw
        // was written.
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(
            text.contains("apitap_capture_packets_total{interface=\"file\"} 256\n"),
            "{text}"
        );
        let seen = text
            .lines()
            .filter(|l| l.starts_with("http_server_request_duration_seconds_count"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum::<f64>();
        assert!(seen > 0.0, "{seen}");
    }
}
