//! The `apitap` binary: flags → logging → configuration → run; errors
//! become exit codes (2: usage or configuration, 1: runtime) with one line.

use apitap::cli::Cli;
use apitap::config::{Config, LogFormat};
use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // A bug must not print a trace that could hold packet bytes.
    std::panic::set_hook(Box::new(|info| {
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("apitap: internal error{at}; please report it");
    }));
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("bad arguments");
            eprintln!(
                "apitap: {}; see apitap --help",
                first.trim_start_matches("error: ")
            );
            return ExitCode::from(2);
        }
    };
    let cfg = match Config::load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("apitap: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&cfg);
    match apitap::run::run(&cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("apitap: {e}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(cfg: &Config) {
    let builder = tracing_subscriber::fmt()
        .with_max_level(cfg.log_level)
        .with_writer(std::io::stderr)
        .with_target(false);
    match cfg.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Logfmt => builder.with_ansi(false).init(),
    }
}
