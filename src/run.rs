//! Running apitap: wires a packet source, the pipeline and the outputs.
//!
//! Contract: [`run`] returns `Ok` after a clean end (end of file, or a stop
//! signal) and a [`RunError`] that `main` turns into exit code 1 with a
//! one-line message; nothing here panics on bad input.

use crate::capture::file::FileSource;
use crate::capture::{CaptureError, PacketSource, SourceEvent};
use crate::classify::Classifier;
use crate::config::{Config, Input};
use crate::decode::DecoderConfig;
use crate::http::exchange::Exchange;
use crate::output::exchange_log::ExchangeLog;
use crate::output::open_output;
use crate::output::summary::Summary;
use crate::pipeline::{ExchangeSink, Pipeline};

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
    #[error("{0}")]
    Setup(String),
}

/// Everything that receives exchanges in this run.
struct Sinks {
    log: Option<ExchangeLog>,
    summary: Option<Summary>,
}

impl ExchangeSink for Sinks {
    fn exchange(&mut self, ex: &Exchange) {
        if let Some(l) = &mut self.log {
            l.exchange(ex);
        }
        if let Some(s) = &mut self.summary {
            s.exchange(ex);
        }
    }
}

pub fn run(cfg: &Config) -> Result<(), RunError> {
    match &cfg.input {
        Input::File(path) => run_file(cfg, path),
        Input::Interface(iface) => Err(RunError::Setup(format!(
            "live capture on {iface} is not available in this build yet; use -r FILE"
        ))),
    }
}

fn run_file(cfg: &Config, path: &str) -> Result<(), RunError> {
    let mut source = FileSource::open(path)?;
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
    let report = cfg.exchanges.is_none() && cfg.findings.is_none() && cfg.metrics_out.is_none();
    let mut sinks = Sinks {
        log,
        summary: report.then(Summary::default),
    };
    while let Some(ev) = source.next_event()? {
        match ev {
            SourceEvent::Packet(pkt) => pipeline.packet(&pkt, &mut sinks),
            SourceEvent::Tick(t) => pipeline.tick(t, &mut sinks),
        }
    }
    pipeline.finish(&mut sinks);
    if let Some(l) = &mut sinks.log {
        l.finish().map_err(|source| RunError::Output {
            what: "the exchange log",
            path: cfg.exchanges.clone().unwrap_or_default(),
            source,
        })?;
    }
    if let Some(s) = &sinks.summary {
        print!("{}", s.render(&pipeline.stats(), source.truncation()));
    }
    if let Some(t) = source.truncation() {
        tracing::warn!("{t}; everything before it was processed");
    }
    Ok(())
}
