//! The unit of output: one request with its final response, or a request
//! that never got one, or a response whose request was not seen.

use super::{RequestHead, ResponseHead};
use crate::classify::FailureCause;
use crate::clock::Timestamp;
use std::net::SocketAddr;

/// How the exchange ended, as far as transport and framing can tell.
/// Classification turns this (plus status and headers) into a cause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A complete final response.
    Complete,
    /// No complete response within the transaction timeout.
    TimedOut,
    /// The connection was reset or closed before a complete response.
    ConnectionEnded,
    /// The request or the response could not be framed as HTTP/1.x.
    Malformed,
    /// The capture ended (or lost the bytes) before the answer was known.
    Unknown,
}

#[derive(Clone, Debug)]
pub struct Exchange {
    /// Request's first byte (response's, for an orphan response).
    pub ts: Timestamp,
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub request: Option<RequestHead>,
    pub response: Option<ResponseHead>,
    /// Last byte of the response, when there was a complete one; for a
    /// failure without response, when the failure became known.
    pub end_ts: Option<Timestamp>,
    pub request_body_bytes: u64,
    pub response_body_bytes: u64,
    pub request_body_prefix: Vec<u8>,
    pub response_body_prefix: Vec<u8>,
    pub outcome: Outcome,
    /// Bytes of this exchange were lost in the capture, or its pairing could
    /// not be proven after a gap: numbers about it are uncertain.
    pub capture_loss: bool,
    /// Filled by classification.
    pub failure: Option<FailureCause>,
    /// Filled by classification: the templated route (None without request).
    pub route: Option<String>,
    /// Filled by classification: Host (lower-cased, default port stripped).
    pub host: Option<String>,
    /// Filled by classification: the finding kinds this exchange raised.
    pub findings: Vec<crate::classify::findings::FindingKind>,
}

impl Exchange {
    pub fn status(&self) -> Option<u16> {
        self.response.as_ref().map(|r| r.status)
    }

    /// Request first byte to response last byte, in microseconds.
    pub fn duration_micros(&self) -> Option<i64> {
        match (self.outcome, self.end_ts) {
            (Outcome::Complete, Some(end)) => Some(end.micros_since(self.ts)),
            _ => None,
        }
    }

    /// Time until the failure was known (for the latency histogram).
    pub fn time_to_outcome_micros(&self) -> Option<i64> {
        self.end_ts.map(|e| e.micros_since(self.ts))
    }
}
