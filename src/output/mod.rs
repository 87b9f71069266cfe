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

/// A file on a disk with `room` bytes left (raised again to free it): each
/// write takes what fits, then fails with ENOSPC. For the logs' tests.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct Disk {
    pub room: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub data: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

#[cfg(test)]
impl std::io::Write for Disk {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use std::sync::atomic::Ordering::Relaxed;
        let n = buf.len().min(self.room.load(Relaxed));
        if n == 0 && !buf.is_empty() {
            return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.room.fetch_sub(n, Relaxed);
        self.data.lock().unwrap().extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
