//! The exchange log: one JSON object per line, per SPEC.md.

use crate::classify::redact::redact_target;
use crate::http::exchange::Exchange;
use crate::pipeline::ExchangeSink;
use serde::Serialize;
use std::io::{self, Write};
use std::net::SocketAddr;

/// One line of the exchange log, in SPEC's field order.
#[derive(Serialize)]
struct Record<'a> {
    #[serde(serialize_with = "as_display")]
    ts: crate::clock::Timestamp,
    client: SocketAddr,
    server: SocketAddr,
    method: Option<&'a str>,
    host: Option<&'a str>,
    target: Option<String>,
    route: Option<&'a str>,
    status: Option<u16>,
    duration_ms: Option<f64>,
    request_bytes: u64,
    response_bytes: u64,
    failure: Option<&'static str>,
    findings: &'a [crate::classify::findings::FindingKind],
    /// Bytes of this exchange were lost in the capture, or its pairing could
    /// not be proven: its numbers are uncertain (an addition to SPEC).
    capture_loss: bool,
}

/// Serialise through `Display` without an intermediate String.
fn as_display<S: serde::Serializer>(v: &crate::clock::Timestamp, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

pub struct ExchangeLog {
    out: Box<dyn Write + Send>,
    credential_params: Vec<String>,
    /// The first write error; later writes are skipped.
    error: Option<io::Error>,
}

impl ExchangeLog {
    pub fn new(out: Box<dyn Write + Send>, credential_params: Vec<String>) -> Self {
        ExchangeLog {
            out,
            credential_params,
            error: None,
        }
    }

    pub fn write(&mut self, ex: &Exchange) -> io::Result<()> {
        let req = ex.request.as_ref();
        let rec = Record {
            ts: ex.ts,
            client: ex.client,
            server: ex.server,
            method: req.map(|r| r.method.as_str()),
            host: ex.host.as_deref(),
            target: req.map(|r| redact_target(&r.target, &self.credential_params)),
            route: ex.route.as_deref(),
            status: ex.status(),
            duration_ms: ex.duration_micros().map(|us| us as f64 / 1000.0),
            request_bytes: ex.request_body_bytes,
            response_bytes: ex.response_body_bytes,
            failure: ex.failure.map(|f| f.as_str()),
            findings: &ex.findings,
            capture_loss: ex.capture_loss,
        };
        serde_json::to_writer(&mut self.out, &rec)?;
        self.out.write_all(b"\n")?;
        Ok(())
    }

    /// Flush, reporting the first error any write met.
    pub fn finish(&mut self) -> io::Result<()> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        self.out.flush()
    }
}

impl ExchangeSink for ExchangeLog {
    fn exchange(&mut self, ex: &Exchange) {
        if self.error.is_none() {
            if let Err(e) = self.write(ex) {
                self.error = Some(e);
            }
        }
    }
}
