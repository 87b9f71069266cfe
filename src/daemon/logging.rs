//! apitap's own log (not the exchange or findings logs): tracing-subscriber
//! writing logfmt or JSON to stderr, or journald fields when stderr is the
//! journal.
//!
//! Contract:
//! - [`init`] installs the global subscriber once and returns a
//!   [`LogHandle`] whose [`LogHandle::set_level`] changes the level at run
//!   time (SIGHUP reload) and whose [`LogHandle::flush`] reports what the
//!   rate limit still holds (call it before exit).
//! - logfmt lines are `ts=… level=… msg=… key=value…`, values quoted when
//!   they hold a space, `=`, `"` or a control byte; JSON lines are
//!   tracing-subscriber's.
//! - When `JOURNAL_STREAM` names stderr (systemd connected it to the
//!   journal: the variable is `DEV:INODE` and must match fd 2 itself, so a
//!   child whose stderr was redirected does not write to the journal) and
//!   the format is logfmt, events go to journald natively (see
//!   [`super::journald`]). If journald cannot be reached, stderr is used.
//! - Warnings and errors are rate-limited per call site: at most [`BURST`]
//!   in each [`WINDOW`]. What a window held back is not lost silently: once
//!   the window ends (checked every [`TICK`]) or at [`LogHandle::flush`],
//!   one warning `N similar warnings suppressed` (or `errors`) with fields
//!   `suppressed=N site=FILE:LINE` reports it, as the kernel's printk
//!   ratelimit and journald do. Those reports are not rate-limited
//!   themselves; there is at most one per call site and window.

use crate::config::LogFormat;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::os::fd::BorrowedFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Context, Filter, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, Layer, Registry};

/// Warnings or errors let through per call site and window.
pub const BURST: u32 = 5;
pub const WINDOW: Duration = Duration::from_secs(60);
/// How often ended windows are checked for held-back warnings.
pub const TICK: Duration = Duration::from_secs(1);

/// The target of the "suppressed" reports (exempt from the rate limit).
const SUPPRESSED_TARGET: &str = "apitap::ratelimit";

/// Changes the level of the installed subscriber.
#[derive(Clone)]
pub struct LogHandle {
    level: Option<reload::Handle<LevelFilter, Registry>>,
    limit: Option<RateLimit>,
}

impl LogHandle {
    /// A handle that changes nothing (tests, or when init failed).
    pub fn none() -> LogHandle {
        LogHandle {
            level: None,
            limit: None,
        }
    }

    pub fn set_level(&self, level: Level) {
        if let Some(h) = &self.level {
            if let Err(e) = h.modify(|f| *f = LevelFilter::from_level(level)) {
                tracing::warn!("cannot change the log level: {e}");
            }
        }
    }

    /// Report every warning the rate limit still holds back, window ended
    /// or not (before exit).
    pub fn flush(&self) {
        if let Some(limit) = &self.limit {
            limit.take(None).iter().for_each(Suppressed::report);
        }
    }
}

/// Whether `journal_stream` (the value of `JOURNAL_STREAM`, `DEV:INODE`)
/// names the file `fd` is open on. Compared with the descriptor itself,
/// not a path, as /dev may be private.
pub fn is_journal_stream(journal_stream: &OsStr, fd: BorrowedFd<'_>) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some((dev, ino)) = journal_stream.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let Ok(fd) = fd.try_clone_to_owned() else {
        return false;
    };
    let Ok(meta) = std::fs::File::from(fd).metadata() else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(meta.dev()) && ino.parse::<u64>().ok() == Some(meta.ino())
}

/// Whether stderr is the journal stream systemd gave us.
fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    std::env::var_os("JOURNAL_STREAM")
        .is_some_and(|v| is_journal_stream(&v, std::io::stderr().as_fd()))
}

type Inner = tracing_subscriber::layer::Layered<reload::Layer<LevelFilter, Registry>, Registry>;

/// Install the global subscriber (see the module doc).
pub fn init(level: Level, format: LogFormat) -> LogHandle {
    let output: Box<dyn Layer<Inner> + Send + Sync> = match format {
        LogFormat::Logfmt if stderr_is_journal() => match super::journald::Journald::from_env() {
            Ok(j) => Box::new(j),
            Err(_) => Box::new(logfmt_layer(std::io::stderr)),
        },
        LogFormat::Logfmt => Box::new(logfmt_layer(std::io::stderr)),
        LogFormat::Json => Box::new(
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(std::io::stderr)
                .with_target(false),
        ),
    };
    let limit = RateLimit::default();
    let (subscriber, handle) = subscriber(level, output, limit.clone());
    if subscriber.try_init().is_err() {
        return LogHandle::none();
    }
    let ticker = limit.clone();
    // Without this thread a burst followed by silence would never be
    // reported; if it cannot start, flush() at exit still reports.
    let _ = std::thread::Builder::new()
        .name("apitap-log".into())
        .spawn(move || loop {
            std::thread::sleep(TICK);
            ticker
                .take(Some(Instant::now()))
                .iter()
                .for_each(Suppressed::report);
        });
    LogHandle {
        level: Some(handle),
        limit: Some(limit),
    }
}

/// The subscriber [`init`] installs, with `output` behind the level filter
/// and the rate limit.
fn subscriber(
    level: Level,
    output: Box<dyn Layer<Inner> + Send + Sync>,
    limit: RateLimit,
) -> (
    impl Subscriber + Send + Sync,
    reload::Handle<LevelFilter, Registry>,
) {
    let (level_layer, handle) = reload::Layer::new(LevelFilter::from_level(level));
    let s = tracing_subscriber::registry()
        .with(level_layer)
        .with(output.with_filter(limit));
    (s, handle)
}

fn logfmt_layer<S, W>(writer: W) -> impl Layer<S> + Send + Sync
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .event_format(Logfmt)
        .with_writer(writer)
        .with_ansi(false)
}

/// The logfmt line format.
pub struct Logfmt;

/// Append `v` as a logfmt value.
pub fn logfmt_value(out: &mut String, v: &str) {
    let plain = !v.is_empty()
        && !v
            .chars()
            .any(|c| c == ' ' || c == '=' || c == '"' || c.is_control());
    if plain {
        out.push_str(v);
        return;
    }
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

struct LogfmtFields {
    msg: String,
    rest: String,
}

impl Visit for LogfmtFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.msg = value.to_string();
        } else {
            self.rest.push(' ');
            self.rest.push_str(field.name());
            self.rest.push('=');
            logfmt_value(&mut self.rest, value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
}

impl<S, N> FormatEvent<S, N> for Logfmt
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut fields = LogfmtFields {
            msg: String::new(),
            rest: String::new(),
        };
        event.record(&mut fields);
        let now = time::OffsetDateTime::now_utc();
        let ts = now
            .format(time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            ))
            .unwrap_or_default();
        let mut line = format!(
            "ts={ts} level={} msg=",
            event.metadata().level().as_str().to_ascii_lowercase()
        );
        logfmt_value(&mut line, &fields.msg);
        line.push_str(&fields.rest);
        writeln!(writer, "{line}")
    }
}

/// Per-call-site limit on warnings and errors (see the module doc).
/// Clones share their state: the subscriber holds one, the ticker thread
/// and the [`LogHandle`] the others.
#[derive(Clone, Default)]
pub struct RateLimit {
    state: Arc<Mutex<LimitState>>,
}

#[derive(Default)]
struct LimitState {
    sites: HashMap<tracing::callsite::Identifier, Site>,
    /// Reports of windows that ended while their site kept logging.
    due: Vec<Suppressed>,
}

struct Site {
    meta: &'static Metadata<'static>,
    start: Instant,
    passed: u32,
    held: u32,
}

/// Most call sites tracked; beyond it the table is reported and cleared
/// (call sites are static, so this is a safety net, not a working limit).
const MAX_SITES: usize = 4096;

/// Warnings (or errors) one call site had held back in one window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppressed {
    pub count: u32,
    pub level: Level,
    /// `FILE:LINE` of the call site.
    pub site: String,
}

impl Suppressed {
    fn of(site: &Site) -> Suppressed {
        Suppressed {
            count: site.held,
            level: *site.meta.level(),
            site: format!(
                "{}:{}",
                site.meta.file().unwrap_or("?"),
                site.meta.line().unwrap_or(0)
            ),
        }
    }

    /// Log this report (through the current subscriber, as a warning that
    /// the rate limit lets through).
    pub fn report(&self) {
        let what = if self.level == Level::ERROR {
            "errors"
        } else {
            "warnings"
        };
        tracing::warn!(
            target: SUPPRESSED_TARGET,
            suppressed = self.count,
            site = %self.site,
            "{} similar {what} suppressed",
            self.count
        );
    }
}

impl RateLimit {
    /// Whether one more event from `meta`'s call site may pass at `now`.
    fn admit(&self, meta: &'static Metadata<'static>, now: Instant) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return true;
        };
        let state = &mut *state;
        if state.sites.len() >= MAX_SITES {
            let held = state
                .sites
                .values()
                .filter(|s| s.held > 0)
                .map(Suppressed::of);
            let held: Vec<_> = held.collect();
            state.due.extend(held);
            state.sites.clear();
        }
        let site = state.sites.entry(meta.callsite()).or_insert(Site {
            meta,
            start: now,
            passed: 0,
            held: 0,
        });
        if now.duration_since(site.start) >= WINDOW {
            if site.held > 0 {
                state.due.push(Suppressed::of(site));
            }
            *site = Site {
                meta,
                start: now,
                passed: 0,
                held: 0,
            };
        }
        if site.passed < BURST {
            site.passed += 1;
            true
        } else {
            site.held += 1;
            false
        }
    }

    /// Take the reports due at `now` (windows ended), or all of them with
    /// `None`. Each held-back event is reported once.
    pub fn take(&self, now: Option<Instant>) -> Vec<Suppressed> {
        let Ok(mut state) = self.state.lock() else {
            return Vec::new();
        };
        let mut out = std::mem::take(&mut state.due);
        for site in state.sites.values_mut() {
            let ended = now.is_none_or(|t| t.duration_since(site.start) >= WINDOW);
            if site.held > 0 && ended {
                out.push(Suppressed::of(site));
                site.held = 0;
            }
        }
        out.sort_by(|a, b| a.site.cmp(&b.site));
        out
    }
}

impl<S> Filter<S> for RateLimit {
    fn enabled(&self, _meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        // Decided per event in event_enabled, where the metadata is 'static.
        true
    }

    fn event_enabled(&self, event: &Event<'_>, _cx: &Context<'_, S>) -> bool {
        let meta = event.metadata();
        if *meta.level() > Level::WARN || meta.target() == SUPPRESSED_TARGET {
            return true;
        }
        self.admit(meta, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logfmt_values_quote_what_needs_it() {
        let cases = [
            ("eth0", "eth0"),
            ("", "\"\""),
            ("two words", "\"two words\""),
            ("a=b", "\"a=b\""),
            ("say \"hi\"\n", "\"say \\\"hi\\\"\\n\""),
        ];
        for (v, want) in cases {
            let mut s = String::new();
            logfmt_value(&mut s, v);
            assert_eq!(s, want, "{v:?}");
        }
    }

    static CS: tracing::callsite::DefaultCallsite = tracing::callsite::DefaultCallsite::new(&META);
    static META: tracing::Metadata<'static> = tracing::metadata!(
        name: "t",
        target: "t",
        level: Level::WARN,
        fields: &[],
        callsite: &CS,
        kind: tracing::metadata::Kind::EVENT
    );

    #[test]
    fn rate_limit_holds_back_after_a_burst_and_reports_once_the_window_ends() {
        let rl = RateLimit::default();
        let t0 = Instant::now();
        let passed = (0..20).filter(|_| rl.admit(&META, t0)).count();
        assert_eq!(passed, BURST as usize);
        assert_eq!(rl.take(Some(t0 + WINDOW - Duration::from_secs(1))), []);
        let due = rl.take(Some(t0 + WINDOW));
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!((due[0].count, due[0].level), (15, Level::WARN));
        assert_eq!(rl.take(Some(t0 + WINDOW)), [], "reported once");
        // The next window passes a new burst; nothing was held back in it.
        assert!(rl.admit(&META, t0 + WINDOW));
        assert_eq!(rl.take(None), []);
    }

    #[test]
    fn a_window_ended_by_the_next_event_is_still_reported() {
        let rl = RateLimit::default();
        let t0 = Instant::now();
        for _ in 0..8 {
            rl.admit(&META, t0);
        }
        // The site logs again after the window, before any tick took it.
        assert!(rl.admit(&META, t0 + WINDOW + Duration::from_secs(5)));
        let due = rl.take(Some(t0 + WINDOW + Duration::from_secs(5)));
        assert_eq!(due.iter().map(|s| s.count).collect::<Vec<_>>(), [3]);
    }

    /// A log writer the test reads back.
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn suppressed_warnings_are_reported_as_one_line() {
        let out = Arc::new(Mutex::new(Vec::<u8>::new()));
        let limit = RateLimit::default();
        let (sub, _) = subscriber(
            Level::INFO,
            Box::new(logfmt_layer({
                let out = out.clone();
                move || Captured(out.clone())
            })),
            limit.clone(),
        );
        let handle = LogHandle {
            level: None,
            limit: Some(limit),
        };
        let mut line = 0;
        tracing::subscriber::with_default(sub, || {
            for i in 0..20 {
                line = line!() + 1;
                tracing::warn!(attempt = i, "disk full");
            }
            for _ in 0..20 {
                tracing::info!("infos are not limited");
            }
            handle.flush();
            handle.flush();
        });
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.iter().filter(|l| l.contains("disk full")).count(), 5);
        assert_eq!(
            lines.iter().filter(|l| l.contains("not limited")).count(),
            20
        );
        let reports: Vec<&&str> = lines.iter().filter(|l| l.contains("suppressed")).collect();
        assert_eq!(reports.len(), 1, "{text}");
        let site = format!("site=src/daemon/logging.rs:{line}");
        assert!(
            reports[0].contains("level=warn msg=\"15 similar warnings suppressed\"")
                && reports[0].contains("suppressed=15")
                && reports[0].contains(&site),
            "{}",
            reports[0]
        );
    }

    #[test]
    fn journal_stream_must_name_the_descriptor_itself() {
        use std::os::fd::AsFd;
        use std::os::unix::fs::MetadataExt;
        let a = tempfile::tempfile().unwrap();
        let b = tempfile::tempfile().unwrap();
        let m = a.metadata().unwrap();
        let a_id = format!("{}:{}", m.dev(), m.ino());
        assert!(is_journal_stream(OsStr::new(&a_id), a.as_fd()));
        assert!(!is_journal_stream(OsStr::new(&a_id), b.as_fd()));
        let other_ino = format!("{}:{}", m.dev(), m.ino() + 1);
        for bad in [other_ino.as_str(), "", "x:y", &m.ino().to_string()] {
            assert!(!is_journal_stream(OsStr::new(bad), a.as_fd()), "{bad:?}");
        }
    }
}
