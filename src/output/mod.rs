//! Outputs: the exchange and findings logs (NDJSON) and the read-mode
//! summary report.
//!
//! Contract: outputs see only classified exchanges and counters; whatever
//! they write is already redacted (targets through
//! [`crate::classify::redact`]), so no credential, token, cookie or password
//! can reach a file or a terminal from here.

pub mod exchange_log;
pub mod findings_log;
pub mod summary;
pub(crate) mod text;

use std::fs::File;
use std::io::{self, BufWriter, Write};

/// Open an output path; `-` is stdout.
pub fn open_output(path: &str) -> io::Result<Box<dyn Write + Send>> {
    if path == "-" {
        Ok(Box::new(BufWriter::with_capacity(64 * 1024, io::stdout())))
    } else {
        Ok(Box::new(BufWriter::with_capacity(
            64 * 1024,
            File::create(path)?,
        )))
    }
}
