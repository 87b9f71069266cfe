//! Command-line flags (tcpdump's for capture, Prometheus exporters' for the
//! rest). Every flag has a config-file key; flags win over the file.

use clap::Parser;
use std::path::PathBuf;

/// `apitap --version`: the version, git revision, compiler and target, as
/// `apitap_build_info` labels them.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (revision ",
    env!("APITAP_REVISION"),
    ", rustc ",
    env!("APITAP_RUSTC"),
    ", target ",
    env!("APITAP_TARGET"),
    ")"
);

/// Signals, files and exit codes (in `--help` and the man page).
const AFTER_HELP: &str = "\
Signals: SIGHUP re-reads the configuration file (routes, credential names, \
limits, severities, log level) without closing the capture and reopens the \
exchange and findings logs; a file that does not load is logged and the \
running configuration stays. SIGTERM or SIGINT stop the capture, flush every \
open exchange and exit 0. A live capture that fails (its interface was \
deleted) is flushed and written the same way, then apitap exits 1.

Files: /etc/apitap/apitap.toml (the packaged configuration), \
/etc/default/apitap (extra flags for the systemd unit), /var/log/apitap/ \
(the exchange and findings logs under the unit), /usr/share/apitap/ \
(Grafana dashboards and provisioning, alert and recording rules).

Logs: under systemd (JOURNAL_STREAM names stderr) the logfmt log goes to \
the journal, apitap's fields as APITAP_<NAME>. Warnings are limited to 5 a \
minute per call site; the rest are counted in one \"N similar warnings \
suppressed\" line.

Privileges: live capture needs CAP_NET_RAW. Once the capture is open apitap \
drops it; started as root it switches to the user named by `[daemon] user`.

Exit codes: 0 success, 1 runtime failure (one line saying what to do), \
2 usage or configuration error (one line naming the flag or key).";

#[derive(Parser, Debug, Default, Clone)]
#[command(
    name = "apitap",
    version = VERSION,
    about = "Passive HTTP API monitor: which API calls fail, why, and which endpoints are exposed",
    long_about = None,
    after_long_help = AFTER_HELP
)]
pub struct Cli {
    /// Capture live from IFACE (libpcap; `any` works).
    #[arg(short = 'i', long = "interface", value_name = "IFACE")]
    pub interface: Option<String>,

    /// Read a pcap or pcapng file (`-` = stdin; gzip or zstd compressed too) as fast as
    /// possible, then exit.
    #[arg(short = 'r', long = "read", value_name = "FILE")]
    pub read: Option<String>,

    /// Capture filter (BPF), live or on a file read with -r. Default: tcp.
    #[arg(short = 'f', long = "filter", value_name = "BPF")]
    pub filter: Option<String>,

    /// TOML configuration file; dotted flags are tables (`[web] listen-address`).
    #[arg(long = "config.file", value_name = "FILE")]
    pub config_file: Option<PathBuf>,

    /// Serve /metrics, /-/healthy, /-/ready and a landing page at ADDR.
    #[arg(long = "web.listen-address", alias = "listen", value_name = "ADDR")]
    pub web_listen_address: Option<String>,

    /// TLS and basic auth for the listener (exporter-toolkit web-config
    /// format); re-read when it or its certificates change.
    #[arg(long = "web.config.file", value_name = "FILE")]
    pub web_config_file: Option<PathBuf>,

    /// Write the exchange log (NDJSON) to PATH; `-` = stdout.
    #[arg(long = "exchanges", value_name = "PATH")]
    pub exchanges: Option<String>,

    /// Write the findings log (NDJSON) to PATH; `-` = stdout.
    #[arg(long = "findings", value_name = "PATH")]
    pub findings: Option<String>,

    /// At exit, write the final Prometheus text exposition to PATH; `-` = stdout.
    #[arg(long = "metrics-out", value_name = "PATH")]
    pub metrics_out: Option<String>,

    /// Seconds a request may wait for its response (default 30).
    #[arg(long = "transaction-timeout", value_name = "SECS")]
    pub transaction_timeout: Option<f64>,

    /// With -r: pace packets at X times real time.
    #[arg(long = "replay-speed", value_name = "X")]
    pub replay_speed: Option<f64>,

    /// With -r: start again at the end of the file, shifting timestamps.
    #[arg(long = "replay-loop")]
    pub replay_loop: bool,

    /// Worker threads for reassembly and HTTP parsing (default: the number
    /// of CPUs; 1 = everything on one thread).
    #[arg(long = "workers", value_name = "N")]
    pub workers: Option<usize>,

    /// Log level: error, warn, info, debug.
    #[arg(long = "log.level", value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// Log format: logfmt or json.
    #[arg(long = "log.format", value_name = "FORMAT")]
    pub log_format: Option<String>,

    /// Print the man page (`man`) or a shell completion script (`bash`,
    /// `zsh`, `fish`) and exit; used by packaging.
    #[arg(long = "generate", value_name = "WHAT", hide = true,
          value_parser = ["man", "bash", "zsh", "fish"])]
    pub generate: Option<String>,
}

/// The man page (section 8) or a completion script, as text.
pub fn generate(what: &str) -> std::io::Result<Vec<u8>> {
    use clap::CommandFactory;
    // The package's version only: generated files must not change with
    // every commit (the revision is in `--version`).
    let mut cmd = Cli::command().version(env!("CARGO_PKG_VERSION"));
    let mut out = Vec::new();
    match what {
        "man" => {
            let man = clap_mangen::Man::new(cmd)
                .section("8")
                .date("")
                .source(concat!("apitap ", env!("CARGO_PKG_VERSION")))
                .manual("System Administration");
            man.render(&mut out)?;
        }
        shell => {
            let shell = match shell {
                "bash" => clap_complete::Shell::Bash,
                "zsh" => clap_complete::Shell::Zsh,
                _ => clap_complete::Shell::Fish,
            };
            clap_complete::generate(shell, &mut cmd, "apitap", &mut out);
        }
    }
    Ok(out)
}
