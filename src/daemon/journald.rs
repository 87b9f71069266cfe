//! apitap's own log sent to journald over its native protocol
//! (<https://systemd.io/JOURNAL_NATIVE_PROTOCOL/>): one datagram per event
//! on the journal's Unix socket.
//!
//! Contract:
//! - Every event becomes `MESSAGE`, `PRIORITY` (error 3, warning 4, info 6,
//!   debug and trace 7), `SYSLOG_IDENTIFIER=apitap`, `CODE_FILE`,
//!   `CODE_LINE`, `TARGET`, and one `APITAP_<NAME>` field per structured
//!   field (name upper-cased, bytes outside `A-Z0-9_` dropped). The prefix
//!   keeps apitap's fields clear of the journal's own (`UNIT`, `ERRNO`, …),
//!   so `journalctl -u apitap APITAP_INTERFACE=eth0` selects by field.
//! - Values are length-prefixed (the protocol's binary form), so a newline
//!   or any byte in a value cannot forge a field.
//! - The socket is [`SOCKET`] unless `APITAP_JOURNAL_SOCKET` names another
//!   one. That variable exists for the tests (they bind a socket and read
//!   what apitap sends); it is read once, at start.
//! - A datagram the journal refuses (too large, journald restarting) is
//!   dropped: a log line must never stop the capture.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;

/// journald's native socket.
pub const SOCKET: &str = "/run/systemd/journal/socket";

/// The environment variable that overrides [`SOCKET`] (see the module doc).
pub const SOCKET_ENV: &str = "APITAP_JOURNAL_SOCKET";

/// Longest value sent, in bytes; longer values are cut (our lines are far
/// shorter; this keeps a datagram under the socket's send buffer).
const MAX_VALUE: usize = 16 * 1024;

/// The journald output layer.
pub struct Journald {
    socket: UnixDatagram,
    path: PathBuf,
}

impl Journald {
    /// Connect to the socket named by `APITAP_JOURNAL_SOCKET`, else [`SOCKET`].
    pub fn from_env() -> io::Result<Journald> {
        let path = std::env::var_os(SOCKET_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(SOCKET));
        Journald::connect(&path)
    }

    /// Fails when nothing listens on `path` (an empty datagram, which
    /// journald ignores, probes it).
    pub fn connect(path: &Path) -> io::Result<Journald> {
        let socket = UnixDatagram::unbound()?;
        socket.send_to(&[], path)?;
        Ok(Journald {
            socket,
            path: path.to_path_buf(),
        })
    }
}

/// Append one field in the length-prefixed form: `NAME\n`, the value's
/// length as 64-bit little-endian, the value, `\n`.
fn put(buf: &mut Vec<u8>, name: &str, value: &[u8]) {
    let value = &value[..value.len().min(MAX_VALUE)];
    buf.extend_from_slice(name.as_bytes());
    buf.push(b'\n');
    buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
    buf.extend_from_slice(value);
    buf.push(b'\n');
}

/// `APITAP_` and the field name in the journal's alphabet.
fn field_name(name: &str) -> String {
    let mut out = String::from("APITAP_");
    out.extend(
        name.chars()
            .map(|c| if c == '.' || c == '-' { '_' } else { c })
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .map(|c| c.to_ascii_uppercase()),
    );
    out
}

/// The priority digit for a level.
pub fn priority(level: &Level) -> &'static [u8] {
    match *level {
        Level::ERROR => b"3",
        Level::WARN => b"4",
        Level::INFO => b"6",
        _ => b"7",
    }
}

struct Fields<'a> {
    buf: &'a mut Vec<u8>,
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            put(self.buf, "MESSAGE", value.as_bytes());
        } else {
            put(self.buf, &field_name(field.name()), value.as_bytes());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
}

/// The datagram for one event.
pub fn encode(event: &Event<'_>) -> Vec<u8> {
    let meta = event.metadata();
    let mut buf = Vec::with_capacity(256);
    put(&mut buf, "PRIORITY", priority(meta.level()));
    put(&mut buf, "SYSLOG_IDENTIFIER", b"apitap");
    put(&mut buf, "TARGET", meta.target().as_bytes());
    if let Some(file) = meta.file() {
        put(&mut buf, "CODE_FILE", file.as_bytes());
    }
    if let Some(line) = meta.line() {
        put(&mut buf, "CODE_LINE", line.to_string().as_bytes());
    }
    event.record(&mut Fields { buf: &mut buf });
    buf
}

impl<S: Subscriber> tracing_subscriber::Layer<S> for Journald {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        // Dropped on error: see the module doc.
        let _ = self.socket.send_to(&encode(event), &self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_fit_the_journal_alphabet() {
        for (name, want) in [
            ("interface", "APITAP_INTERFACE"),
            ("if_dropped", "APITAP_IF_DROPPED"),
            ("a.b-c", "APITAP_A_B_C"),
            ("ünï=x\n", "APITAP_NX"),
        ] {
            assert_eq!(field_name(name), want);
        }
    }

    #[test]
    fn values_are_length_prefixed_so_newlines_cannot_forge_fields() {
        let mut buf = Vec::new();
        put(&mut buf, "MESSAGE", b"a\nPRIORITY=0");
        let mut want = b"MESSAGE\n".to_vec();
        want.extend_from_slice(&12u64.to_le_bytes());
        want.extend_from_slice(b"a\nPRIORITY=0\n");
        assert_eq!(buf, want);
    }
}
