//! Configuration: the TOML file and the flags, validated into one [`Config`].
//!
//! Contract: [`Config::load`] never panics; any problem is a [`ConfigError`]
//! that names the key (or flag) and why, which `main` turns into exit code 2.
//! Every flag has a key: dotted flags become tables (`--web.listen-address`
//! is `[web] listen-address`). Flags win over the file.

use crate::classify::settings::ClassifySection;
use crate::classify::ClassifyConfig;
use crate::cli::Cli;
use crate::flow::FlowConfig;
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

/// A number of bytes in the file: an integer, or a string with a unit as
/// `bytesize` reads it: `"512 MiB"`, `"64KiB"`, `"1.5 GiB"` (KiB, MiB,
/// GiB: powers of 1024), `"1 GB"`, `"64k"` (kB, MB, GB: of 1000). More
/// than a `usize` holds saturates, which every limit then refuses or reads
/// as no limit, as it does the integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub usize);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = Size;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number of bytes, or a size with a unit (\"512 MiB\", \"1 GB\")")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Size, E> {
                Ok(Size(usize::try_from(n).unwrap_or(usize::MAX)))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Size, E> {
                u64::try_from(n)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(n), &self))
                    .and_then(|n| self.visit_u64(n))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Size, E> {
                s.parse::<bytesize::ByteSize>()
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Str(s), &self))
                    .and_then(|b| self.visit_u64(b.as_u64()))
            }
        }
        d.deserialize_any(Visit)
    }
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// The file as written. Unknown keys are refused.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    interface: Option<String>,
    read: Option<String>,
    filter: Option<String>,
    exchanges: Option<String>,
    findings: Option<String>,
    metrics_out: Option<String>,
    transaction_timeout: Option<f64>,
    replay_speed: Option<f64>,
    replay_loop: Option<bool>,
    workers: Option<usize>,
    web: WebSection,
    log: LogSection,
    flow: FlowSection,
    http: HttpSection,
    classify: ClassifySection,
    daemon: DaemonSection,
    capture: CaptureSection,
}

/// Live capture knobs (libpcap); defaults in `LiveOptions`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
struct CaptureSection {
    snaplen: Option<i32>,
    buffer_size: Option<Size>,
    promiscuous: Option<bool>,
    immediate: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
struct DaemonSection {
    user: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
struct WebSection {
    listen_address: Option<String>,
    config: WebConfigSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
struct WebConfigSection {
    file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
struct LogSection {
    level: Option<String>,
    format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
struct FlowSection {
    idle_timeout: Option<f64>,
    handshake_timeout: Option<f64>,
    max_flows: Option<usize>,
    memory_budget: Option<Size>,
    max_out_of_order_bytes: Option<Size>,
    max_out_of_order_segments: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
struct HttpSection {
    max_head_bytes: Option<Size>,
    body_prefix_bytes: Option<Size>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Logfmt,
    Json,
}

/// The capture filter when none is given.
pub const DEFAULT_FILTER: &str = "tcp";

/// Where packets come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    File(String),
    Interface(String),
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub input: Input,
    pub filter: String,
    /// libpcap options for `-i` (`[capture]`): snaplen, kernel buffer size,
    /// promiscuous and immediate mode.
    pub capture: crate::capture::live::LiveOptions,
    pub exchanges: Option<String>,
    pub findings: Option<String>,
    pub metrics_out: Option<String>,
    pub listen_address: Option<String>,
    pub web_config_file: Option<PathBuf>,
    pub replay_speed: Option<f64>,
    pub replay_loop: bool,
    /// Worker threads (`--workers`, `workers`): ≥ 1.
    pub workers: usize,
    pub log_level: tracing::Level,
    pub log_format: LogFormat,
    pub flow: FlowConfig,
    pub classify: ClassifyConfig,
    /// Started as root (outside systemd), switch to this user once the
    /// capture is open (`[daemon] user`).
    pub user: Option<String>,
}

fn secs_to_micros(key: &'static str, secs: f64) -> Result<i64, ConfigError> {
    if !secs.is_finite() || secs <= 0.0 || secs > 86_400.0 * 365.0 {
        return Err(invalid(
            key,
            format!("must be a number of seconds above 0, got {secs}"),
        ));
    }
    Ok((secs * 1e6).round() as i64)
}

fn positive(key: &'static str, v: usize) -> Result<usize, ConfigError> {
    if v == 0 {
        return Err(invalid(key, "must be above 0"));
    }
    Ok(v)
}

/// Most worker threads `--workers` takes.
pub const MAX_WORKERS: usize = 64;

/// The CPUs this process may run on (1 when unknown).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The file's text as [`FileConfig`]; an error is one line that names the
/// line and, for a value that does not fit, its key as a dotted path
/// (`line 2: flow.max-flows: invalid type: string "many", expected
/// usize`).
fn parse_file(text: &str) -> Result<FileConfig, String> {
    let describe = |e: &toml::de::Error, key: Option<String>| {
        let line = e
            .span()
            .map(|s| {
                let before = &text.as_bytes()[..s.start.min(text.len())];
                let newlines = before.iter().filter(|&&b| b == b'\n').count();
                format!("line {}: ", newlines + 1)
            })
            .unwrap_or_default();
        match key {
            Some(k) if k != "." => format!("{line}{k}: {}", e.message()),
            _ => format!("{line}{}", e.message()),
        }
    };
    let de = toml::Deserializer::parse(text).map_err(|e| describe(&e, None))?;
    serde_path_to_error::deserialize(de)
        .map_err(|e| describe(e.inner(), Some(e.path().to_string())))
}

impl Config {
    /// Merge the config file (if any) and the flags, and validate.
    pub fn load(cli: &Cli) -> Result<Config, ConfigError> {
        let file = match &cli.config_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                parse_file(&text).map_err(|message| ConfigError::Parse {
                    path: path.clone(),
                    message,
                })?
            }
            None => FileConfig::default(),
        };
        Self::from_parts(cli, file)
    }

    fn from_parts(cli: &Cli, f: FileConfig) -> Result<Config, ConfigError> {
        let read = cli.read.clone().or(f.read);
        let interface = cli.interface.clone().or(f.interface);
        let input = match (read, interface) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "--read/--interface",
                    "give one of -r FILE or -i IFACE, not both",
                ))
            }
            (Some(r), None) => Input::File(r),
            (None, Some(i)) => Input::Interface(i),
            (None, None) => return Err(invalid("--read/--interface", "give -r FILE or -i IFACE")),
        };
        let live = matches!(input, Input::Interface(_));
        let replay_speed = cli.replay_speed.or(f.replay_speed);
        if let Some(x) = replay_speed {
            if !x.is_finite() || x <= 0.0 {
                return Err(invalid(
                    "--replay-speed",
                    format!("must be above 0, got {x}"),
                ));
            }
        }
        let replay_loop = cli.replay_loop || f.replay_loop.unwrap_or(false);
        if live && (replay_speed.is_some() || replay_loop) {
            return Err(invalid("--replay-speed/--replay-loop", "only apply to -r"));
        }
        let workers = match cli.workers.or(f.workers) {
            Some(n) if !(1..=MAX_WORKERS).contains(&n) => {
                return Err(invalid(
                    "--workers",
                    format!("must be between 1 and {MAX_WORKERS}, got {n}"),
                ))
            }
            Some(n) => n,
            None => cores().min(MAX_WORKERS),
        };
        let log_level = match cli
            .log_level
            .as_deref()
            .or(f.log.level.as_deref())
            .unwrap_or("info")
        {
            "error" => tracing::Level::ERROR,
            "warn" => tracing::Level::WARN,
            "info" => tracing::Level::INFO,
            "debug" => tracing::Level::DEBUG,
            other => {
                return Err(invalid(
                    "--log.level",
                    format!("must be error, warn, info or debug, got {other:?}"),
                ))
            }
        };
        let log_format = match cli
            .log_format
            .as_deref()
            .or(f.log.format.as_deref())
            .unwrap_or("logfmt")
        {
            "logfmt" => LogFormat::Logfmt,
            "json" => LogFormat::Json,
            other => {
                return Err(invalid(
                    "--log.format",
                    format!("must be logfmt or json, got {other:?}"),
                ))
            }
        };
        let listen_address = cli
            .web_listen_address
            .clone()
            .or(f.web.listen_address)
            .or_else(|| live.then(|| ":10190".to_string()));

        let mut flow = FlowConfig::default();
        if let Some(t) = cli.transaction_timeout.or(f.transaction_timeout) {
            flow.transaction_timeout_micros = secs_to_micros("--transaction-timeout", t)?;
        }
        if let Some(t) = f.flow.idle_timeout {
            flow.idle_timeout_micros = secs_to_micros("flow.idle-timeout", t)?;
        }
        if let Some(t) = f.flow.handshake_timeout {
            flow.handshake_timeout_micros = secs_to_micros("flow.handshake-timeout", t)?;
        }
        if let Some(Size(n)) = f.flow.memory_budget {
            if n < 1 << 20 {
                return Err(invalid(
                    "flow.memory-budget",
                    "must be at least 1048576 bytes",
                ));
            }
            flow.memory_budget_bytes = n;
        }
        if let Some(n) = f.flow.max_flows {
            flow.max_flows = positive("flow.max-flows", n)?;
        }
        if let Some(Size(n)) = f.flow.max_out_of_order_bytes {
            flow.stream_limits.max_buffered_bytes = positive("flow.max-out-of-order-bytes", n)?;
        }
        if let Some(n) = f.flow.max_out_of_order_segments {
            flow.stream_limits.max_buffered_segments =
                positive("flow.max-out-of-order-segments", n)?;
        }
        if let Some(Size(n)) = f.http.max_head_bytes {
            if !(256..=1 << 20).contains(&n) {
                return Err(invalid(
                    "http.max-head-bytes",
                    "must be between 256 and 1048576",
                ));
            }
            std::sync::Arc::make_mut(&mut flow.parser_limits).max_head_bytes = n;
        }
        if let Some(Size(n)) = f.http.body_prefix_bytes {
            if n > 64 * 1024 {
                return Err(invalid("http.body-prefix-bytes", "must be at most 65536"));
            }
            std::sync::Arc::make_mut(&mut flow.parser_limits).body_prefix_bytes = n;
        }

        let classify = f
            .classify
            .into_config()
            .map_err(|e| invalid(e.key, e.reason))?;

        let mut capture = crate::capture::live::LiveOptions::default();
        if let Some(n) = f.capture.snaplen {
            if !(64..=262_144).contains(&n) {
                return Err(invalid("capture.snaplen", "must be between 64 and 262144"));
            }
            capture.snaplen = n;
        }
        if let Some(Size(n)) = f.capture.buffer_size {
            match i32::try_from(n) {
                Ok(n) if (1 << 20..=1 << 30).contains(&n) => capture.buffer_size = n,
                _ => {
                    return Err(invalid(
                        "capture.buffer-size",
                        "must be between 1 MiB and 1 GiB",
                    ))
                }
            }
        }
        if let Some(b) = f.capture.promiscuous {
            capture.promiscuous = b;
        }
        if let Some(b) = f.capture.immediate {
            capture.immediate = b;
        }

        Ok(Config {
            input,
            capture,
            filter: cli
                .filter
                .clone()
                .or(f.filter)
                .unwrap_or_else(|| DEFAULT_FILTER.into()),
            exchanges: cli.exchanges.clone().or(f.exchanges),
            findings: cli.findings.clone().or(f.findings),
            metrics_out: cli.metrics_out.clone().or(f.metrics_out),
            listen_address,
            web_config_file: cli.web_config_file.clone().or(f.web.config.file),
            replay_speed,
            replay_loop,
            workers,
            log_level,
            log_format,
            flow,
            classify,
            user: match f.daemon.user {
                Some(u) if u.trim().is_empty() => {
                    return Err(invalid("daemon.user", "must name a user"))
                }
                Some(u) if !matches!(nix::unistd::User::from_name(&u), Ok(Some(_))) => {
                    return Err(invalid("daemon.user", format!("no user named {u:?}")))
                }
                u => u,
            },
        })
    }

    /// The keys whose change a SIGHUP reload cannot apply (they need a
    /// restart), comparing `self` (running) with `new` (just loaded).
    /// Reloadable: `[classify]` (routes, credential names, limits and
    /// severities), the log level, and reopening the log files.
    pub fn needs_restart(&self, new: &Config) -> Vec<&'static str> {
        let mut keys = Vec::new();
        let checks: [(&'static str, bool); 14] = [
            ("capture", self.capture != new.capture),
            ("workers", self.workers != new.workers),
            ("interface/read", self.input != new.input),
            ("filter", self.filter != new.filter),
            ("exchanges", self.exchanges != new.exchanges),
            ("findings", self.findings != new.findings),
            ("metrics-out", self.metrics_out != new.metrics_out),
            (
                "web.listen-address",
                self.listen_address != new.listen_address,
            ),
            (
                "web.config.file",
                self.web_config_file != new.web_config_file,
            ),
            ("log.format", self.log_format != new.log_format),
            ("replay-speed", self.replay_speed != new.replay_speed),
            ("replay-loop", self.replay_loop != new.replay_loop),
            (
                "flow, http, transaction-timeout",
                format!("{:?}", self.flow) != format!("{:?}", new.flow),
            ),
            ("daemon.user", self.user != new.user),
        ];
        for (key, changed) in checks {
            if changed {
                keys.push(key);
            }
        }
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli_read() -> Cli {
        Cli {
            read: Some("x.pcap".into()),
            ..Cli::default()
        }
    }

    fn load_str(cli: &Cli, toml_text: &str) -> Result<Config, String> {
        let f = parse_file(toml_text)?;
        Config::from_parts(cli, f).map_err(|e| e.to_string())
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("transaction-timeout = -1", "--transaction-timeout"),
            ("[flow]\nmax-flows = 0", "flow.max-flows"),
            ("[log]\nlevel = \"loud\"", "--log.level"),
            (
                "[classify]\nroute-patterns = [\"nope\"]",
                "classify.route-patterns",
            ),
            ("[flow]\nmax-flow = 3", "max-flow"),
            ("[capture]\nsnaplen = 10", "capture.snaplen"),
            ("[capture]\nbuffer-size = 5", "capture.buffer-size"),
            ("[web]\nlisten_address = \":1\"", "listen_address"),
            ("[daemon]\nuser = \"no-such-user-here\"", "daemon.user"),
        ];
        for (text, key) in cases {
            let err = load_str(&cli_read(), text).unwrap_err();
            assert!(err.contains(key), "{text:?}: {err}");
        }
    }

    #[test]
    fn file_errors_name_the_line_and_the_dotted_key() {
        let cases = [
            ("[flow]\nmemory-budget = -5", "line 2: flow.memory-budget: "),
            (
                "\n[flow]\nmemory-budgt = 5",
                "line 3: flow.memory-budgt: unknown field",
            ),
            (
                "flow = { max-flows = \"many\" }",
                "line 1: flow.max-flows: ",
            ),
            (
                "[classify]\nroute-patterns = [\"/a\", 1]",
                "line 2: classify.route-patterns[1]: ",
            ),
            ("workers = 1.5", "line 1: workers: "),
            ("[flow\n", "line 1: "),
        ];
        for (text, want) in cases {
            let err = load_str(&cli_read(), text).unwrap_err();
            assert!(err.starts_with(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn sizes_take_units_or_plain_bytes() {
        let load = |text: &str| load_str(&cli_read(), text);
        let budget = |text: &str| load(text).map(|c| c.flow.memory_budget_bytes);
        assert_eq!(budget("[flow]\nmemory-budget = \"512 MiB\""), Ok(512 << 20));
        assert_eq!(budget("[flow]\nmemory-budget = \"2GiB\""), Ok(2 << 30));
        assert_eq!(budget("[flow]\nmemory-budget = \"64 MB\""), Ok(64_000_000));
        assert_eq!(budget("[flow]\nmemory-budget = 3000000"), Ok(3_000_000));
        // The range checks see the bytes.
        let small = budget("[flow]\nmemory-budget = \"1000 KiB\"").unwrap_err();
        assert!(small.contains("at least 1048576"), "{small}");
        for bad in ["\"lots\"", "\"5 parsecs\"", "-1", "1.5", "true"] {
            let err = budget(&format!("[flow]\nmemory-budget = {bad}")).unwrap_err();
            assert!(err.contains("a size with a unit"), "{bad}: {err}");
        }
        let c = load(concat!(
            "[capture]\nbuffer-size = \"4 MiB\"\n",
            "[http]\nmax-head-bytes = \"16KiB\"\nbody-prefix-bytes = \"1 KiB\"\n",
            "[classify]\nmax-target-bytes = \"8 KiB\"\nbody-decode-bytes = 4096\n",
        ))
        .unwrap();
        assert_eq!(c.capture.buffer_size, 4 << 20);
        assert_eq!(c.flow.parser_limits.max_head_bytes, 16 << 10);
        assert_eq!(c.flow.parser_limits.body_prefix_bytes, 1 << 10);
        assert_eq!(c.classify.max_target_bytes, 8 << 10);
        assert_eq!(c.classify.body_decode_bytes, 4096);
        let big = load("[capture]\nbuffer-size = \"4 GiB\"").unwrap_err();
        assert!(big.starts_with("capture.buffer-size"), "{big}");
    }

    #[test]
    fn flags_win_over_file() {
        let mut cli = cli_read();
        cli.transaction_timeout = Some(5.0);
        let c = load_str(
            &cli,
            "transaction-timeout = 9\n[web]\nlisten-address = \":9\"",
        )
        .unwrap();
        assert_eq!(c.flow.transaction_timeout_micros, 5_000_000);
        assert_eq!(c.listen_address.as_deref(), Some(":9"));
    }

    #[test]
    fn live_mode_listens_by_default_read_mode_does_not() {
        let live = Cli {
            interface: Some("eth0".into()),
            ..Cli::default()
        };
        assert_eq!(
            load_str(&live, "").unwrap().listen_address.as_deref(),
            Some(":10190")
        );
        assert_eq!(load_str(&cli_read(), "").unwrap().listen_address, None);
    }

    #[test]
    fn input_is_required_and_exclusive() {
        assert!(load_str(&Cli::default(), "").is_err());
        let both = Cli {
            interface: Some("eth0".into()),
            read: Some("f".into()),
            ..Cli::default()
        };
        assert!(load_str(&both, "").is_err());
    }
}
