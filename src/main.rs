//! The `apitap` binary: flags → logging → configuration → run; errors
//! become exit codes (2: usage or configuration, 1: runtime) with one line.

use apitap::cli::Cli;
use apitap::config::Config;
use clap::Parser;
use std::process::ExitCode;

/// See the `jemalloc` feature in Cargo.toml for why.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    if let Some(what) = &cli.generate {
        use std::io::Write;
        return match apitap::cli::generate(what).and_then(|t| std::io::stdout().write_all(&t)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("apitap: cannot write the {what} text: {e}");
                ExitCode::from(1)
            }
        };
    }
    let cfg = match Config::load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("apitap: {e}");
            return ExitCode::from(2);
        }
    };
    // A web config is configuration: a bad one is exit 2, before capture.
    if let Some(path) = &cfg.web_config_file {
        if let Err(e) = apitap::metrics::web::WebSettings::load(path) {
            eprintln!("apitap: {e}");
            return ExitCode::from(2);
        }
    }
    let log = apitap::daemon::logging::init(cfg.log_level, cfg.log_format);
    let result = apitap::run::run(&cfg, &cli, log.clone());
    // Warnings the rate limit held back are reported, not lost, at exit.
    log.flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("apitap: {e}");
            ExitCode::from(1)
        }
    }
}
