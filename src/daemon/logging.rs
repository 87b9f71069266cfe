//! apitap's own log (not the exchange or findings logs): tracing-subscriber
//! writing logfmt or JSON to stderr, or journald fields when stderr is the
//! journal.
//!
//! Contract:
//! - [`init`] installs the global subscriber once and returns a
//!   [`LogHandle`] whose [`LogHandle::set_level`] changes the level at run
//!   time (SIGHUP reload).
//! - logfmt lines are `ts=… level=… msg=… key=value…`, values quoted when
//!   they hold a space, `=`, `"` or a control byte; JSON lines are
//!   tracing-subscriber's.
//! - When `JOURNAL_STREAM` names stderr (systemd connected it to the
//!   journal) and the format is logfmt, events go to journald natively:
//!   `PRIORITY` from the level, and every field as an upper-case journal
//!   field. If journald cannot be reached, stderr is used.
//! - Warnings and errors are rate-limited per call site: at most
//!   [`BURST`] in each [`WINDOW`]; the rest of that window is dropped, so a
//!   repeating failure cannot flood the journal.

use crate::config::LogFormat;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;
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

/// Changes the level of the installed subscriber.
#[derive(Clone)]
pub struct LogHandle {
    level: Option<reload::Handle<LevelFilter, Registry>>,
}

impl LogHandle {
    /// A handle that changes nothing (tests, or when init failed).
    pub fn none() -> LogHandle {
        LogHandle { level: None }
    }

    pub fn set_level(&self, level: Level) {
        if let Some(h) = &self.level {
            if let Err(e) = h.modify(|f| *f = LevelFilter::from_level(level)) {
                tracing::warn!("cannot change the log level: {e}");
            }
        }
    }
}

/// Whether stderr is the journal stream systemd gave us (`JOURNAL_STREAM`
/// is `DEV:INODE` of that stream; compared with fd 2 itself, not a path,
/// as /dev may be private).
fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let v = v.to_string_lossy();
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    let Ok(meta) = std::fs::File::from(fd).metadata() else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(meta.dev()) && ino.parse::<u64>().ok() == Some(meta.ino())
}

/// Install the global subscriber (see the module doc).
pub fn init(level: Level, format: LogFormat) -> LogHandle {
    let (level_layer, handle) = reload::Layer::new(LevelFilter::from_level(level));
    type Inner = tracing_subscriber::layer::Layered<reload::Layer<LevelFilter, Registry>, Registry>;
    let output: Box<dyn Layer<Inner> + Send + Sync> = match format {
        LogFormat::Logfmt if stderr_is_journal() => match tracing_journald::layer() {
            Ok(j) => Box::new(j.with_syslog_identifier("apitap".into())),
            Err(_) => Box::new(logfmt_layer()),
        },
        LogFormat::Logfmt => Box::new(logfmt_layer()),
        LogFormat::Json => Box::new(
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(std::io::stderr)
                .with_target(false),
        ),
    };
    let installed = tracing_subscriber::registry()
        .with(level_layer)
        .with(output.with_filter(RateLimit::default()))
        .try_init()
        .is_ok();
    LogHandle {
        level: installed.then_some(handle),
    }
}

fn logfmt_layer<S>() -> impl Layer<S> + Send + Sync
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer()
        .event_format(Logfmt)
        .with_writer(std::io::stderr)
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
#[derive(Default)]
pub struct RateLimit {
    sites: Mutex<HashMap<tracing::callsite::Identifier, (Instant, u32)>>,
}

impl RateLimit {
    /// Whether one more event from `site` may pass at `now`.
    fn admit(&self, site: tracing::callsite::Identifier, now: Instant) -> bool {
        let Ok(mut sites) = self.sites.lock() else {
            return true;
        };
        if sites.len() > 4096 {
            sites.clear();
        }
        let entry = sites.entry(site).or_insert((now, 0));
        if now.duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
        entry.1 <= BURST
    }
}

impl<S> Filter<S> for RateLimit {
    fn enabled(&self, meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        if !meta.is_event() || *meta.level() > Level::WARN {
            return true;
        }
        self.admit(meta.callsite(), Instant::now())
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> tracing::subscriber::Interest {
        if meta.is_event() && *meta.level() <= Level::WARN {
            tracing::subscriber::Interest::sometimes()
        } else {
            tracing::subscriber::Interest::always()
        }
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

    #[test]
    fn rate_limit_passes_a_burst_per_window() {
        static CS: tracing::callsite::DefaultCallsite =
            tracing::callsite::DefaultCallsite::new(&META);
        static META: tracing::Metadata<'static> = tracing::metadata!(
            name: "t",
            target: "t",
            level: Level::WARN,
            fields: &[],
            callsite: &CS,
            kind: tracing::metadata::Kind::EVENT
        );
        let rl = RateLimit::default();
        let t0 = Instant::now();
        let id = META.callsite();
        let passed = (0..20).filter(|_| rl.admit(id.clone(), t0)).count();
        assert_eq!(passed, BURST as usize);
        assert!(rl.admit(id, t0 + WINDOW));
    }
}
