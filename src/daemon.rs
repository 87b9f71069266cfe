//! Running as a service: systemd notifications and the watchdog, signals
//! (SIGTERM/SIGINT drain, SIGHUP reload), privilege drop, and log files
//! that logrotate can move away.
//!
//! Contract:
//! - [`Notifier`] speaks sd_notify when `NOTIFY_SOCKET` is set and is a
//!   no-op otherwise; a failed send is logged once at debug and ignored.
//! - [`Progress`] is written by the packet thread (relaxed stores, no
//!   locks) and read by the [`Supervisor`] thread, which sends `WATCHDOG=1`
//!   at half the watchdog interval *only while the capture loop advances*:
//!   a wedged loop misses its pings and systemd restarts it, while a quiet
//!   network still advances (the live source yields a tick every 250 ms).
//!   The supervisor also sends `STATUS=` with the packet rate, drops and
//!   exchanges every few seconds.
//! - [`on_signals`] runs a thread that calls `stop` on SIGINT/SIGTERM and
//!   `reload` on SIGHUP; it never touches the pipeline itself.
//! - [`drop_privileges`] runs after every capture handle and socket is
//!   open: as root with a configured user it switches to that user (groups,
//!   gid, uid, in that order, checked); otherwise it removes every capability
//!   it can from the process (effective, permitted, inheritable, ambient).
//! - [`ReopenFile`] is an append-only file writer that reopens its path
//!   when asked (SIGHUP after logrotate moved the file).

pub mod journald;
pub mod logging;

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// True when a systemd service manager started this process.
pub fn under_systemd() -> bool {
    std::env::var_os("INVOCATION_ID").is_some() || std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// sd_notify, or nothing (see the module doc).
#[derive(Clone, Debug)]
pub struct Notifier {
    enabled: bool,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
        }
    }

    fn send(&self, states: &[sd_notify::NotifyState<'_>]) {
        if self.enabled {
            if let Err(e) = sd_notify::notify(states) {
                tracing::debug!("sd_notify failed: {e}");
            }
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(status),
        ]);
    }

    /// `RELOADING=1` with the monotonic time systemd ≥ 253 asks for.
    pub fn reloading(&self) {
        let mut states = vec![
            sd_notify::NotifyState::Reloading,
            sd_notify::NotifyState::Status("reloading the configuration"),
        ];
        if let Ok(t) = sd_notify::NotifyState::monotonic_usec_now() {
            states.push(t);
        }
        self.send(&states);
    }

    pub fn stopping(&self) {
        self.send(&[
            sd_notify::NotifyState::Stopping,
            sd_notify::NotifyState::Status("stopping: flushing open exchanges"),
        ]);
    }

    pub fn status(&self, status: &str) {
        self.send(&[sd_notify::NotifyState::Status(status)]);
    }

    fn watchdog(&self) {
        self.send(&[sd_notify::NotifyState::Watchdog]);
    }
}

/// What the packet thread reports to the supervisor.
#[derive(Debug, Default)]
pub struct Progress {
    /// Loop iterations (packets and ticks).
    pub events: AtomicU64,
    pub packets: AtomicU64,
    /// Kernel and interface drops.
    pub dropped: AtomicU64,
    pub exchanges: AtomicU64,
}

impl Progress {
    #[inline]
    pub fn set(cell: &AtomicU64, v: u64) {
        cell.store(v, Ordering::Relaxed);
    }
}

/// How often `STATUS=` is refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// The watchdog/status thread; stops when dropped.
pub struct Supervisor {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Supervisor {
    /// Start when systemd asked for notifications (otherwise `None`).
    pub fn start(notifier: Notifier, progress: Arc<Progress>) -> Option<Supervisor> {
        if !notifier.enabled {
            return None;
        }
        let watchdog = sd_notify::watchdog_enabled();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("apitap-supervisor".into())
            .spawn(move || supervise(notifier, progress, watchdog, flag))
            .ok()?;
        Some(Supervisor {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// The `STATUS=` line.
pub fn status_line(pps: f64, dropped: u64, exchanges: u64) -> String {
    format!("capturing: {pps:.0} packets/s, {dropped} dropped, {exchanges} exchanges")
}

fn supervise(
    notifier: Notifier,
    progress: Arc<Progress>,
    watchdog: Option<Duration>,
    stop: Arc<AtomicBool>,
) {
    let ping_every = watchdog.map(|w| (w / 2).max(Duration::from_millis(50)));
    let step = ping_every
        .unwrap_or(STATUS_EVERY)
        .min(Duration::from_secs(1));
    let mut last_events = progress.events.load(Ordering::Relaxed);
    let mut last_ping = Instant::now();
    let mut last_status = Instant::now();
    let mut last_packets = progress.packets.load(Ordering::Relaxed);
    while !stop.load(Ordering::SeqCst) {
        std::thread::park_timeout(step);
        let events = progress.events.load(Ordering::Relaxed);
        if let Some(every) = ping_every {
            // Ping only when the loop moved since the last ping.
            if events != last_events && last_ping.elapsed() >= every {
                notifier.watchdog();
                last_events = events;
                last_ping = Instant::now();
            }
        }
        let since = last_status.elapsed();
        if since >= STATUS_EVERY {
            let packets = progress.packets.load(Ordering::Relaxed);
            let pps = packets.saturating_sub(last_packets) as f64 / since.as_secs_f64();
            notifier.status(&status_line(
                pps,
                progress.dropped.load(Ordering::Relaxed),
                progress.exchanges.load(Ordering::Relaxed),
            ));
            last_packets = packets;
            last_status = Instant::now();
        }
    }
}

/// Call `stop` on SIGINT or SIGTERM and `reload` on SIGHUP, from a thread of
/// its own. After the first stop signal the thread ends.
pub fn on_signals(
    stop: impl Fn() + Send + 'static,
    reload: impl Fn() + Send + 'static,
) -> io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new()
        .name("apitap-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig == SIGHUP {
                    tracing::info!("SIGHUP: reloading the configuration");
                    reload();
                } else {
                    tracing::info!(signal = sig, "stopping: flushing open exchanges");
                    stop();
                    return;
                }
            }
        })?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("daemon.user {user:?}: no such user")]
    NoSuchUser { user: String },
    #[error("daemon.user {user:?}: cannot switch to it: {reason}")]
    Switch { user: String, reason: String },
}

/// What [`drop_privileges`] did, for the log.
#[derive(Debug, PartialEq, Eq)]
pub enum Dropped {
    /// Switched from root to this user.
    User(String),
    /// Capabilities cleared; still the same user.
    Capabilities,
}

/// See the module doc. Call once, after capture handles, the listener and
/// the log files are open.
pub fn drop_privileges(user: Option<&str>) -> Result<Dropped, PrivilegeError> {
    use nix::unistd::{getuid, setgid, setgroups, setuid, Uid, User};
    if getuid().is_root() {
        if let Some(name) = user {
            let u =
                User::from_name(name)
                    .ok()
                    .flatten()
                    .ok_or_else(|| PrivilegeError::NoSuchUser {
                        user: name.to_string(),
                    })?;
            let fail = |what: &str, e: nix::Error| PrivilegeError::Switch {
                user: name.to_string(),
                reason: format!("{what}: {e}"),
            };
            setgroups(&[u.gid]).map_err(|e| fail("setgroups", e))?;
            setgid(u.gid).map_err(|e| fail("setgid", e))?;
            setuid(u.uid).map_err(|e| fail("setuid", e))?;
            // setuid from root to another user clears every capability
            // (no keep-caps); make sure root cannot be regained.
            if setuid(Uid::from_raw(0)).is_ok() {
                return Err(PrivilegeError::Switch {
                    user: name.to_string(),
                    reason: "root could be regained after the switch".into(),
                });
            }
            clear_capabilities();
            return Ok(Dropped::User(name.to_string()));
        }
        tracing::warn!(
            "running as root: set daemon.user in the config file to run capture as an \
             unprivileged user; capabilities are dropped now"
        );
    }
    clear_capabilities();
    Ok(Dropped::Capabilities)
}

fn clear_capabilities() {
    use caps::CapSet;
    // Ambient first: it may only hold what is permitted and inheritable.
    for set in [
        CapSet::Ambient,
        CapSet::Effective,
        CapSet::Inheritable,
        CapSet::Permitted,
    ] {
        if let Err(e) = caps::clear(None, set) {
            tracing::debug!("cannot clear the {set:?} capability set: {e}");
        }
    }
}

/// Whether this process can still open a new capture.
pub fn has_net_raw() -> bool {
    caps::has_cap(None, caps::CapSet::Effective, caps::Capability::CAP_NET_RAW).unwrap_or(false)
}

/// An append-only log file that reopens its path when its generation
/// counter moves (SIGHUP bumps it; checked at each write and flush).
pub struct ReopenFile {
    path: PathBuf,
    out: BufWriter<File>,
    generation: Arc<AtomicU64>,
    seen: u64,
}

fn open_append(path: &PathBuf) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl ReopenFile {
    pub fn open(path: impl Into<PathBuf>, generation: Arc<AtomicU64>) -> io::Result<ReopenFile> {
        let path = path.into();
        let out = BufWriter::with_capacity(64 * 1024, open_append(&path)?);
        let seen = generation.load(Ordering::Relaxed);
        Ok(ReopenFile {
            path,
            out,
            generation,
            seen,
        })
    }

    fn maybe_reopen(&mut self) {
        let g = self.generation.load(Ordering::Relaxed);
        if g == self.seen {
            return;
        }
        self.seen = g;
        let _ = self.out.flush();
        match open_append(&self.path) {
            Ok(f) => self.out = BufWriter::with_capacity(64 * 1024, f),
            Err(e) => tracing::warn!(
                path = %self.path.display(),
                "cannot reopen the log file, writing on to the old one: {e}"
            ),
        }
    }
}

impl Write for ReopenFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.maybe_reopen();
        self.out.write(buf)
    }

    /// A line the buffer cannot hold goes straight to the file, whole or not
    /// at all: a disk that fills up part way through is cut back to where
    /// the line began, so no fragment runs into the next line.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.maybe_reopen();
        // Smaller lines: BufWriter makes room by flushing, then buffers.
        if buf.len() < self.out.capacity() {
            return self.out.write_all(buf);
        }
        self.out.flush()?;
        let file = self.out.get_mut();
        let start = file.metadata()?.len();
        file.write_all(buf).inspect_err(|_| {
            let _ = file.set_len(start);
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        self.maybe_reopen();
        self.out.flush()
    }
}

/// A log writer shared between the log that writes lines and the loop that
/// flushes it about once a second (live mode: `tail -f` and pipes see
/// exchanges promptly, not when a 64 KiB buffer fills).
#[derive(Clone)]
pub struct SharedWriter(Arc<std::sync::Mutex<Box<dyn Write + Send>>>);

impl SharedWriter {
    pub fn new(inner: Box<dyn Write + Send>) -> SharedWriter {
        SharedWriter(Arc::new(std::sync::Mutex::new(inner)))
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Box<dyn Write + Send>) -> io::Result<T>,
    ) -> io::Result<T> {
        match self.0.lock() {
            Ok(mut w) => f(&mut w),
            Err(_) => Err(io::Error::other("log writer poisoned")),
        }
    }
}

impl Write for SharedWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.with(|w| w.write(buf))
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.with(|w| w.write_all(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.with(|w| w.flush())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopen_file_follows_a_rename() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let gen = Arc::new(AtomicU64::new(0));
        let mut f = ReopenFile::open(&path, gen.clone()).unwrap();
        f.write_all(b"one\n").unwrap();
        f.flush().unwrap();
        std::fs::rename(&path, dir.path().join("x.log.1")).unwrap();
        gen.fetch_add(1, Ordering::Relaxed);
        f.write_all(b"two\n").unwrap();
        f.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two\n");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("x.log.1")).unwrap(),
            "one\n"
        );
    }

    /// A line bigger than the buffer (a 64 KiB target, escaped) on a disk
    /// that fills part way through it: lost whole, the next line intact.
    #[test]
    fn a_line_bigger_than_the_buffer_is_never_cut_by_a_full_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k", "apitap-unit"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("skipped: cannot mount a tmpfs (needs root)");
            return;
        }
        struct Unmount<'a>(&'a std::path::Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount")
                    .arg("-l")
                    .arg(self.0)
                    .status();
            }
        }
        let _unmount = Unmount(dir.path());
        let filler = dir.path().join("filler");
        std::fs::write(&filler, vec![0u8; 200 << 10]).unwrap();
        let path = dir.path().join("exchanges.log");
        let mut f = ReopenFile::open(&path, Arc::new(AtomicU64::new(0))).unwrap();
        f.write_all(b"{\"a\":1}\n").unwrap();
        let mut big = vec![b'x'; 100 << 10];
        big.push(b'\n');
        assert!(f.write_all(&big).is_err(), "100 KiB fit in about 56");
        f.flush().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"a\":1}\n");
        std::fs::remove_file(&filler).unwrap();
        f.write_all(b"{\"b\":2}\n").unwrap();
        f.write_all(&big).unwrap();
        f.flush().unwrap();
        let text = std::fs::read(&path).unwrap();
        assert_eq!(&text[..16], b"{\"a\":1}\n{\"b\":2}\n");
        assert_eq!(&text[16..], &big[..]);
    }

    #[test]
    fn status_line_reads_well() {
        assert_eq!(
            status_line(1234.4, 2, 99),
            "capturing: 1234 packets/s, 2 dropped, 99 exchanges"
        );
    }
}
