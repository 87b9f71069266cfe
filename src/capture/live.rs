//! Live capture from a network interface through libpcap.
//!
//! Contract:
//! - [`LiveSource::open`] checks the interface name against libpcap's device
//!   list *before* anything needs privileges, activates the handle (snaplen,
//!   kernel buffer, promiscuous and immediate mode) and installs the BPF
//!   filter. Every failure is one line in [`CaptureError::Live`] that says
//!   what to do: the missing capability, the interfaces that do exist, or the
//!   filter and libpcap's reason.
//! - [`PacketSource::next_event`] yields each frame as a [`RawPacket`]
//!   borrowing libpcap's buffer until the next call (no copy here), stamped
//!   with the pcap header's time in microseconds and the link type libpcap
//!   reports for the handle (Linux `any` gives SLL or SLL2; whatever it is
//!   passes through untranslated). When no frame arrives within
//!   `tick_micros` it yields [`SourceEvent::Tick`] with the wall clock less
//!   the delivery lag (how long a frame may still wait in a kernel block:
//!   [`delivery_lag`]), so timeouts fire on a quiet link and no frame read
//!   later is older than a tick already given. Under continuous traffic no
//!   tick is promised: the packets carry the time.
//! - A [`Stopper`] (from [`LiveSource::stopper`]) ends the capture from
//!   another thread: a `next_event` waiting for traffic wakes at once,
//!   yields what the kernel still held when the stop came (the frames
//!   stamped before it, waited for at most the delivery lag and 10 ms), then
//!   returns `Ok(None)`, and so does every later call.
//! - [`PacketSource::stats`] counts frames and their wire bytes as they are
//!   yielded, and reads the drops now through the source's [`LiveDrops`].
//! - Drops ([`LiveDrops`], also handed out as the source's
//!   [`DropReader`]) are read without the libpcap handle, which only the
//!   capture thread may use (`pcap_stats` is not safe beside a read in
//!   progress): kernel drops with `getsockopt(PACKET_STATISTICS)` on a
//!   duplicate of the capture socket, interface drops from
//!   `/sys/class/net/<interface>/statistics/rx_{missed,fifo}_errors` as
//!   libpcap reads them, counted from a baseline taken at open (none for
//!   `any`). The kernel resets its counters at every `PACKET_STATISTICS`
//!   read, so `LiveDrops` must be their only reader: it accumulates, and
//!   apitap never calls `pcap_stats`. Closing the source takes a last
//!   reading and closes the duplicate socket; the counts then stay.
//! - Read errors after opening (the interface went away) are one line too;
//!   what to do about them is the caller's choice.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{
    CaptureError, DropCounts, DropReader, LinkType, PacketSource, RawPacket, SourceEvent,
    SourceStats,
};
use crate::clock::Timestamp;

/// How a live capture is opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveOptions {
    /// Interface name as libpcap knows it (`any` works on Linux).
    pub interface: String,
    /// BPF capture filter (tcpdump syntax); empty captures everything.
    pub filter: String,
    /// Bytes kept per frame.
    pub snaplen: i32,
    /// Kernel capture buffer in bytes; bigger absorbs longer bursts.
    pub buffer_size: i32,
    pub promiscuous: bool,
    /// Deliver frames one at a time as they arrive (libpcap's TPACKET_V2
    /// ring, one slot of up to 64 KiB per frame when the interface offloads)
    /// instead of in blocks the kernel packs and hands over when full or
    /// after [`BLOCK_TIMEOUT_MS`] (TPACKET_V3, what tcpdump, Suricata and
    /// Zeek use: the same buffer holds many more frames, and a burst wakes
    /// the reader once per block, not once per frame).
    pub immediate: bool,
    /// After this long without a frame, `next_event` yields a wall-clock
    /// tick. Rounded up to whole milliseconds, at least 1 ms.
    pub tick_micros: i64,
}

impl Default for LiveOptions {
    fn default() -> Self {
        LiveOptions {
            interface: String::new(),
            filter: "tcp".to_string(),
            snaplen: 262_144,
            buffer_size: 32 * 1024 * 1024,
            promiscuous: true,
            immediate: false,
            tick_micros: 250_000,
        }
    }
}

/// Without immediate mode, the longest the kernel holds frames in a partly
/// filled block before handing it over (Suricata's and Zeek's default).
pub const BLOCK_TIMEOUT_MS: i32 = 10;

/// How long a frame can wait in the kernel before libpcap can read it: none
/// in immediate mode; otherwise two block timeouts (a timer that fires just
/// after a new block opened lets it run one more round) and slack for the
/// timer's granularity (a jiffy, up to 10 ms) and scheduling.
fn delivery_lag(immediate: bool) -> Duration {
    if immediate {
        Duration::ZERO
    } else {
        Duration::from_millis(2 * BLOCK_TIMEOUT_MS.unsigned_abs() as u64 + 20)
    }
}

/// Stops a [`LiveSource`] from another thread (e.g. the one that receives
/// SIGINT/SIGTERM through `signal-hook`).
///
/// Call [`Stopper::stop`] from an ordinary thread, not from inside a raw
/// signal handler.
#[derive(Clone, Debug)]
pub struct Stopper {
    stopped: Arc<AtomicBool>,
    /// Write end of the source's wake-up socket pair.
    wake: Arc<UnixDatagram>,
}

impl Stopper {
    /// Ask the source to end. Idempotent; harmless after the source is gone
    /// (a datagram to a closed peer fails quietly, with no SIGPIPE).
    pub fn stop(&self) {
        // INVARIANT: the flag is set before the wake-up is sent, so the
        // woken `next_event` (and every later one) sees it.
        self.stopped.store(true, Ordering::SeqCst);
        // A full socket buffer means a wake-up is already pending.
        let _ = self.wake.send(&[1]);
    }
}

/// Turns raw drop readings into counts since open.
#[derive(Clone, Copy, Debug, Default)]
struct DropAccumulator {
    counts: DropCounts,
    /// The interface's last raw counter (since boot); the first reading is
    /// the baseline.
    if_last: Option<u64>,
}

impl DropAccumulator {
    /// `PACKET_STATISTICS`' drops: those since the previous read (the kernel
    /// resets its counter on every read).
    fn kernel(&mut self, since_last_read: u32) {
        self.counts.kernel = self
            .counts
            .kernel
            .saturating_add(u64::from(since_last_read));
    }

    /// The interface's raw counter now. Lower than the last reading means
    /// the counter was reset (driver reload): count it from zero.
    fn interface(&mut self, raw: u64) {
        if let Some(last) = self.if_last {
            let delta = raw.checked_sub(last).unwrap_or(raw);
            self.counts.interface = self.counts.interface.saturating_add(delta);
        }
        self.if_last = Some(raw);
    }
}

struct DropState {
    /// A duplicate of the capture socket; None once the source is closed.
    socket: Option<OwnedFd>,
    acc: DropAccumulator,
}

/// A live handle's drop counters, readable from any thread (see the module
/// doc). The lock is held for one `getsockopt` and two small sysfs reads,
/// never while waiting for anything else.
pub struct LiveDrops {
    interface: String,
    /// `/sys/class/net/<interface>/statistics`; None for `any`.
    sysfs: Option<PathBuf>,
    state: Mutex<DropState>,
}

impl LiveDrops {
    /// Takes the baselines now: drops count from here.
    fn new(interface: &str, socket: BorrowedFd<'_>) -> std::io::Result<LiveDrops> {
        let sysfs = Some(
            PathBuf::from("/sys/class/net")
                .join(interface)
                .join("statistics"),
        )
        .filter(|p| interface != "any" && !interface.contains('/') && p.is_dir());
        let drops = LiveDrops {
            interface: interface.to_string(),
            sysfs,
            state: Mutex::new(DropState {
                socket: Some(socket.try_clone_to_owned()?),
                acc: DropAccumulator::default(),
            }),
        };
        drops.read();
        Ok(drops)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, DropState> {
        // A panic elsewhere while holding it leaves plain counters behind.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Read the kernel's and the interface's counters into `st`, unless
    /// closed. A failed read keeps the counts as they were.
    fn refresh(&self, st: &mut DropState) {
        let Some(socket) = &st.socket else {
            return;
        };
        if let Some(d) = kernel_drops(socket.as_fd()) {
            st.acc.kernel(d);
        }
        if let Some(raw) = self.sysfs.as_deref().and_then(interface_drops) {
            st.acc.interface(raw);
        }
    }

    /// A last reading, then the duplicate socket is closed.
    fn close(&self) {
        let mut st = self.state();
        self.refresh(&mut st);
        st.socket = None;
    }
}

impl DropReader for LiveDrops {
    fn interface(&self) -> &str {
        &self.interface
    }

    fn read(&self) -> DropCounts {
        let mut st = self.state();
        self.refresh(&mut st);
        st.acc.counts
    }
}

/// Frames the kernel dropped on this packet socket since the previous call
/// (which the call resets), or None when the socket cannot say.
fn kernel_drops(socket: BorrowedFd<'_>) -> Option<u32> {
    // The v3 layout starts like v1/v2's; the kernel fills what the socket's
    // ring version has and sets `len` accordingly.
    let mut st = libc::tpacket_stats_v3 {
        tp_packets: 0,
        tp_drops: 0,
        tp_freeze_q_cnt: 0,
    };
    let mut len = std::mem::size_of::<libc::tpacket_stats_v3>() as libc::socklen_t;
    // SAFETY: `st` is a live, writable `tpacket_stats_v3` and `len` says
    // its size, so the kernel writes at most that many bytes into it; the
    // descriptor is borrowed, so it stays open for the call.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&mut st as *mut libc::tpacket_stats_v3).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(st.tp_drops)
}

/// The interface's raw drop counter as libpcap reads it:
/// `rx_missed_errors + rx_fifo_errors`. None when either cannot be read
/// (a partial sum would look like a counter reset).
fn interface_drops(statistics: &std::path::Path) -> Option<u64> {
    let read = |name: &str| -> Option<u64> {
        std::fs::read_to_string(statistics.join(name))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    Some(read("rx_missed_errors")?.saturating_add(read("rx_fifo_errors")?))
}

/// One frame read from libpcap, detached from the borrow of the handle (see
/// the SAFETY note in `next_event`).
struct Frame {
    ts: Timestamp,
    wire_len: u32,
    data: *const u8,
    len: usize,
}

/// A stop in progress: the frames the kernel received before it are still
/// read, waiting for them until `until` at most.
#[derive(Clone, Copy, Debug)]
enum Stopping {
    No,
    Draining { before: Timestamp, until: Instant },
    Done,
}

/// What ended a wait for the capture socket.
enum Wake {
    /// The capture socket has something (frames or an error) or poll was
    /// interrupted: read again.
    Ready,
    Stop,
    Timeout,
}

/// A live libpcap capture; see the module doc for the contract.
///
/// The handle is non-blocking: libpcap's own read timeout does not expire on
/// Linux while no frame arrives (its poll loop restarts), so the waiting is
/// done here with `poll(2)` on the capture socket and on a wake-up socket
/// that the [`Stopper`] writes to.
pub struct LiveSource {
    capture: pcap::Capture<pcap::Active>,
    pcap_fd: RawFd,
    wake_rx: UnixDatagram,
    wake_tx: Arc<UnixDatagram>,
    stopped: Arc<AtomicBool>,
    interface: String,
    link: LinkType,
    tick: Duration,
    /// [`delivery_lag`] of this handle's mode.
    lag: Duration,
    /// Where a stop has got to.
    stopping: Stopping,
    packets: u64,
    bytes: u64,
    drops: Arc<LiveDrops>,
}

impl Drop for LiveSource {
    fn drop(&mut self) {
        self.drops.close();
    }
}

impl std::fmt::Debug for LiveSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveSource")
            .field("interface", &self.interface)
            .field("link", &self.link)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Open `n` handles on `opts.interface` joined in one PACKET_FANOUT group
/// (see [`LiveSource::join_fanout`]), with what reached them before the
/// group was whole thrown away, so no frame is seen twice.
pub fn open_fanout(opts: &LiveOptions, n: usize) -> Result<Vec<LiveSource>, CaptureError> {
    // Group ids are per network namespace; the process id keeps two
    // apitaps on one host apart.
    let group = (std::process::id() & 0xffff) as u16;
    let mut sources = (0..n)
        .map(|_| {
            let s = LiveSource::open(opts)?;
            s.join_fanout(group)?;
            Ok(s)
        })
        .collect::<Result<Vec<_>, CaptureError>>()?;
    // Frames from before the group was whole may still sit in partly filled
    // blocks: let the kernel hand them over first (what arrives meanwhile is
    // lost with them, once, at the start).
    std::thread::sleep(delivery_lag(opts.immediate));
    for s in &mut sources {
        s.discard_queued()?;
    }
    Ok(sources)
}

impl LiveSource {
    /// Open and activate a capture on `opts.interface` with `opts.filter`.
    pub fn open(opts: &LiveOptions) -> Result<LiveSource, CaptureError> {
        let iface = opts.interface.as_str();
        // The device list needs no privileges, so a typo is reported as a
        // typo even when the caller could not capture anyway. When the list
        // itself fails, activation below still reports a missing device.
        if let Ok(devices) = pcap::Device::list() {
            if !devices.iter().any(|d| d.name == iface) {
                let names: Vec<&str> = devices.iter().map(|d| d.name.as_str()).collect();
                return Err(CaptureError::Live(no_such_interface(iface, &names)));
            }
        }
        let tick_ms = tick_millis(opts.tick_micros);
        let open_err = |e: pcap::Error| CaptureError::Live(open_error(iface, &e));
        let mut capture = pcap::Capture::from_device(iface)
            .map_err(open_err)?
            .snaplen(opts.snaplen)
            .buffer_size(opts.buffer_size)
            .promisc(opts.promiscuous)
            .immediate_mode(opts.immediate)
            // Without immediate mode this is how long the kernel holds a
            // partly filled block before handing it over.
            .timeout(BLOCK_TIMEOUT_MS)
            .open()
            .map_err(open_err)?
            .setnonblock()
            .map_err(open_err)?;
        capture
            .filter(&opts.filter, true)
            .map_err(|e| CaptureError::Live(filter_error(&opts.filter, &e)))?;
        let link = LinkType(u32::try_from(capture.get_datalink().0).unwrap_or(u32::MAX));
        let (wake_tx, wake_rx) = UnixDatagram::pair()
            .and_then(|(tx, rx)| tx.set_nonblocking(true).map(|()| (tx, rx)))
            .map_err(|e| CaptureError::Live(format!("cannot capture on {iface}: {e}")))?;
        let drops = LiveDrops::new(iface, capture.as_fd())
            .map_err(|e| CaptureError::Live(format!("cannot capture on {iface}: {e}")))?;
        Ok(LiveSource {
            pcap_fd: capture.as_raw_fd(),
            capture,
            wake_rx,
            wake_tx: Arc::new(wake_tx),
            stopped: Arc::new(AtomicBool::new(false)),
            interface: iface.to_string(),
            link,
            tick: Duration::from_millis(u64::from(tick_ms.unsigned_abs())),
            lag: delivery_lag(opts.immediate),
            stopping: Stopping::No,
            packets: 0,
            bytes: 0,
            drops: Arc::new(drops),
        })
    }

    /// A handle other threads can use to stop the capture: `next_event`
    /// then yields the frames the kernel received before the stop and
    /// returns `Ok(None)` (waiting for them at most the delivery lag and
    /// 10 ms).
    pub fn stopper(&self) -> Stopper {
        Stopper {
            stopped: Arc::clone(&self.stopped),
            wake: Arc::clone(&self.wake_tx),
        }
    }

    /// The link type libpcap reports for this handle (every packet has it).
    pub fn link_type(&self) -> LinkType {
        self.link
    }

    /// Join the kernel's PACKET_FANOUT group `group` (flow hash, with IP
    /// defragmentation before hashing): the group's handles then share the
    /// interface's packets, each flow's (both directions) on one handle.
    pub fn join_fanout(&self, group: u16) -> Result<(), CaptureError> {
        // linux/if_packet.h; not exported by the libc crate at top level.
        const PACKET_FANOUT: libc::c_int = 18;
        const PACKET_FANOUT_HASH: u32 = 0;
        const PACKET_FANOUT_FLAG_DEFRAG: u32 = 0x8000;
        let arg: u32 = u32::from(group) | ((PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_DEFRAG) << 16);
        // SAFETY: `arg` is a live u32 whose size is passed with it; the
        // descriptor is the handle's own packet socket, open while `self` is.
        let rc = unsafe {
            libc::setsockopt(
                self.pcap_fd,
                libc::SOL_PACKET,
                PACKET_FANOUT,
                (&arg as *const u32).cast(),
                std::mem::size_of::<u32>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            return Err(CaptureError::Live(format!(
                "cannot share {} between workers (PACKET_FANOUT): {err}; try --workers 1",
                self.interface
            )));
        }
        Ok(())
    }

    /// Throw away what is queued now (frames that reached every handle
    /// before the whole fanout group was formed). Returns how many.
    pub fn discard_queued(&mut self) -> Result<u64, CaptureError> {
        let mut n = 0;
        while self.read_frame()?.is_some() {
            n += 1;
        }
        Ok(n)
    }

    /// One non-blocking read: a frame, or `None` when libpcap has none now.
    fn read_frame(&mut self) -> Result<Option<Frame>, CaptureError> {
        match self.capture.next_packet() {
            Ok(p) => Ok(Some(Frame {
                ts: timeval_timestamp(&p.header.ts),
                wire_len: p.header.len,
                data: p.data.as_ptr(),
                len: p.data.len(),
            })),
            // Non-blocking mode: nothing buffered right now.
            Err(pcap::Error::TimeoutExpired) => Ok(None),
            Err(e) => Err(CaptureError::Live(format!(
                "capture on {} failed: {}",
                self.interface,
                one_line(&pcap_text(&e))
            ))),
        }
    }

    /// Wait until the capture socket is readable, the stopper writes (when
    /// `stoppable`; once stopping, its unread wake-up would end every wait),
    /// or `timeout` passes.
    fn wait(&self, timeout: Duration, stoppable: bool) -> Result<Wake, CaptureError> {
        let ms = i32::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
        let mut fds = [
            libc::pollfd {
                fd: self.pcap_fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.wake_rx.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let watched = if stoppable { 2 } else { 1 };
        // SAFETY: `fds` is a live array of two initialised `pollfd`s and
        // `watched` is at most its length; both descriptors are owned by
        // `self` and stay open for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), watched, ms) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                return Ok(Wake::Ready);
            }
            return Err(CaptureError::Live(format!(
                "capture on {} failed: poll: {err}",
                self.interface
            )));
        }
        if stoppable && (fds[1].revents != 0 || self.stopped.load(Ordering::SeqCst)) {
            return Ok(Wake::Stop);
        }
        if fds[0].revents & libc::POLLNVAL != 0 {
            return Err(CaptureError::Live(format!(
                "capture on {} failed: the capture socket was closed",
                self.interface
            )));
        }
        // POLLIN, POLLERR or POLLHUP: libpcap's next read reports it.
        Ok(if n == 0 { Wake::Timeout } else { Wake::Ready })
    }
}

/// Microsecond precision is libpcap's default, which `open` keeps.
// `timeval`'s fields are `i64` on 64-bit Linux but narrower on other
// targets, so the conversions are only useless here.
#[allow(clippy::useless_conversion)]
fn timeval_timestamp(tv: &libc::timeval) -> Timestamp {
    Timestamp::from_secs_micros(i64::from(tv.tv_sec), i64::from(tv.tv_usec))
}

fn tick_millis(tick_micros: i64) -> i32 {
    let ms = tick_micros.saturating_add(999) / 1000;
    i32::try_from(ms.max(1)).unwrap_or(i32::MAX)
}

impl PacketSource for LiveSource {
    fn next_event(&mut self) -> Result<Option<SourceEvent<'_>>, CaptureError> {
        // Set at the first empty read, so the packet path reads no clock.
        let mut deadline: Option<Instant> = None;
        let frame = loop {
            if matches!(self.stopping, Stopping::No) && self.stopped.load(Ordering::SeqCst) {
                // (10 ms more: in immediate mode the lag is 0, yet the
                // ring may hold frames the stop should not lose.)
                self.stopping = Stopping::Draining {
                    before: Timestamp::now_wall(),
                    until: Instant::now() + self.lag + Duration::from_millis(10),
                };
            }
            match self.stopping {
                Stopping::No => {}
                Stopping::Done => return Ok(None),
                // Frames stamped before the stop are read; the first one
                // after it ends the capture (under endless traffic there
                // is always more), and so does a wait past `until`.
                Stopping::Draining { before, until } => {
                    match self.read_frame()? {
                        Some(frame) if frame.ts <= before => break frame,
                        Some(_) => self.stopping = Stopping::Done,
                        None => {
                            let left = until.saturating_duration_since(Instant::now());
                            if left.is_zero() {
                                self.stopping = Stopping::Done;
                            } else {
                                self.wait(left, false)?;
                            }
                        }
                    }
                    continue;
                }
            }
            if let Some(frame) = self.read_frame()? {
                break frame;
            }
            let now = Instant::now();
            let left = deadline
                .get_or_insert(now + self.tick)
                .saturating_duration_since(now);
            let wake = if left.is_zero() {
                Wake::Timeout
            } else {
                self.wait(left, true)?
            };
            match wake {
                Wake::Ready => {}
                Wake::Stop => self.stopped.store(true, Ordering::SeqCst),
                Wake::Timeout => {
                    let lag = i64::try_from(self.lag.as_micros()).unwrap_or(i64::MAX);
                    let t = Timestamp::now_wall().saturating_add_micros(-lag);
                    return Ok(Some(SourceEvent::Tick(t)));
                }
            }
        };
        self.packets += 1;
        self.bytes += u64::from(frame.wire_len);
        // SAFETY: `frame.data` points at `frame.len` bytes that libpcap keeps
        // valid until the next read on this handle. The slice gets the
        // lifetime of this `&mut self` borrow, and every read on
        // `self.capture` needs `&mut self`, so none can happen while the
        // slice lives; nothing else here touches the handle after
        // `read_frame`. (Returning `next_packet`'s borrow straight out of
        // the retry loop is what this means; today's borrow checker rejects
        // that form, "NLL problem case #3".)
        let data: &[u8] = unsafe { std::slice::from_raw_parts(frame.data, frame.len) };
        Ok(Some(SourceEvent::Packet(RawPacket {
            ts: frame.ts,
            link: self.link,
            data,
            wire_len: frame.wire_len,
        })))
    }

    fn interface(&self) -> &str {
        &self.interface
    }

    fn stats(&self) -> SourceStats {
        let drops = self.drops.read();
        SourceStats {
            packets: self.packets,
            bytes: self.bytes,
            dropped: drops.kernel,
            if_dropped: drops.interface,
            ..SourceStats::default()
        }
    }

    fn drop_reader(&self) -> Option<Arc<dyn DropReader>> {
        Some(self.drops.clone())
    }
}

/// libpcap's own words, without the crate's "libpcap error: " prefix or a
/// trailing newline.
fn pcap_text(e: &pcap::Error) -> String {
    match e {
        pcap::Error::PcapError(s) => s.trim().to_string(),
        other => other.to_string(),
    }
}

fn no_such_interface(iface: &str, names: &[&str]) -> String {
    if names.is_empty() {
        format!("no interface named {iface}; libpcap lists no interfaces")
    } else {
        format!(
            "no interface named {iface}; interfaces: {}",
            names.join(", ")
        )
    }
}

/// One line for a failure to create or activate the handle, recognised from
/// libpcap's text (the crate drops the status code).
fn open_error(iface: &str, e: &pcap::Error) -> String {
    let text = pcap_text(e);
    let lower = text.to_ascii_lowercase();
    let permission = [
        "permission",
        "operation not permitted",
        "cap_net_raw",
        "cap_net_admin",
    ];
    if permission.iter().any(|p| lower.contains(p)) {
        return format!(
            "capturing on {iface} needs CAP_NET_RAW (run as root, or: \
             setcap cap_net_raw,cap_net_admin=eip /path/to/apitap)"
        );
    }
    if lower.contains("no such device") {
        let names: Vec<String> = pcap::Device::list()
            .map(|ds| ds.into_iter().map(|d| d.name).collect())
            .unwrap_or_default();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        return no_such_interface(iface, &names);
    }
    let text = text
        .strip_prefix(iface)
        .and_then(|t| t.strip_prefix(": "))
        .unwrap_or(&text);
    format!("cannot capture on {iface}: {}", one_line(text))
}

pub(super) fn filter_error(filter: &str, e: &pcap::Error) -> String {
    let reason = match e {
        pcap::Error::InvalidInputString => "contains a NUL byte".to_string(),
        other => pcap_text(other),
    };
    format!(
        "invalid capture filter {:?}: {}",
        filter,
        one_line(
            reason
                .strip_prefix("can't parse filter expression: ")
                .unwrap_or(&reason)
        )
    )
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    fn lo_options(filter: &str) -> LiveOptions {
        LiveOptions {
            interface: "lo".to_string(),
            filter: filter.to_string(),
            tick_micros: 100_000,
            ..LiveOptions::default()
        }
    }

    /// Opens `lo`, or `None` (test skipped) when this user may not capture.
    fn open_lo_or_skip(filter: &str) -> Option<LiveSource> {
        open_lo_or_skip_with(lo_options(filter))
    }

    fn open_lo_or_skip_with(opts: LiveOptions) -> Option<LiveSource> {
        match LiveSource::open(&opts) {
            Ok(s) => Some(s),
            Err(CaptureError::Live(m)) if m.contains("needs CAP_NET_RAW") => {
                eprintln!("skipped: {m}");
                None
            }
            Err(e) => panic!("opening lo: {e}"),
        }
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        memchr::memmem::find(hay, needle).is_some()
    }

    #[test]
    fn options_default_match_documented_values() {
        let o = LiveOptions::default();
        assert_eq!(o.filter, "tcp");
        assert_eq!(o.snaplen, 262_144);
        assert_eq!(o.buffer_size, 33_554_432);
        assert!(o.promiscuous && !o.immediate);
        assert_eq!(o.tick_micros, 250_000);
        assert_eq!(delivery_lag(true), Duration::ZERO);
        assert_eq!(delivery_lag(false), Duration::from_millis(40));
    }

    #[test]
    fn open_unknown_interface_lists_interfaces() {
        let opts = LiveOptions {
            interface: "apitap-nosuch0".to_string(),
            ..LiveOptions::default()
        };
        let err = LiveSource::open(&opts).unwrap_err().to_string();
        assert!(
            err.starts_with("no interface named apitap-nosuch0; interfaces: "),
            "{err}"
        );
        assert!(err.contains("lo"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn open_error_texts_table() {
        let perm = "capturing on eth0 needs CAP_NET_RAW (run as root, or: \
                    setcap cap_net_raw,cap_net_admin=eip /path/to/apitap)";
        let cases = [
            (
                "eth0: You don't have permission to perform this capture on that device \
                 (socket: Operation not permitted)",
                perm.to_string(),
            ),
            (
                "Attempt to create packet socket failed - CAP_NET_RAW may be required",
                perm.to_string(),
            ),
            (
                "You don't have permission to capture on that device",
                perm.to_string(),
            ),
            (
                "eth0: That device is not up\n",
                "cannot capture on eth0: That device is not up".to_string(),
            ),
        ];
        for (pcap_says, want) in cases {
            let got = open_error("eth0", &pcap::Error::PcapError(pcap_says.to_string()));
            assert_eq!(got, want, "for {pcap_says:?}");
        }
        let gone = open_error(
            "eth9",
            &pcap::Error::PcapError("No such device exists".to_string()),
        );
        assert!(gone.starts_with("no interface named eth9; "), "{gone}");
    }

    #[test]
    fn filter_error_texts_table() {
        let cases = [
            (
                "tcp port",
                pcap::Error::PcapError("can't parse filter expression: syntax error".into()),
                "invalid capture filter \"tcp port\": syntax error",
            ),
            (
                "tcp\0",
                pcap::Error::InvalidInputString,
                "invalid capture filter \"tcp\\0\": contains a NUL byte",
            ),
        ];
        for (filter, e, want) in cases {
            assert_eq!(filter_error(filter, &e), want);
        }
    }

    #[test]
    fn tick_millis_rounds_up_and_clamps() {
        let cases = [
            (250_000, 250),
            (1, 1),
            (0, 1),
            (-5, 1),
            (1_500, 2),
            (i64::MAX, i32::MAX),
        ];
        for (us, ms) in cases {
            assert_eq!(tick_millis(us), ms, "{us}");
        }
    }

    #[test]
    fn drop_accumulator_table() {
        // (kernel reads since the last, interface raw readings) → counts.
        let cases: [(&[u32], &[u64], DropCounts); 6] = [
            (&[], &[], DropCounts::default()),
            // The first interface reading is the baseline.
            (&[0], &[500], DropCounts::default()),
            // Kernel reads are deltas (the kernel resets on read).
            (
                &[3, 0, 4],
                &[500, 502, 502, 510],
                DropCounts {
                    kernel: 7,
                    interface: 10,
                },
            ),
            // Past u32 in total.
            (
                &[u32::MAX, 5],
                &[],
                DropCounts {
                    kernel: u64::from(u32::MAX) + 5,
                    interface: 0,
                },
            ),
            // A reset interface counter counts again from zero.
            (
                &[],
                &[500, 520, 3, 7],
                DropCounts {
                    kernel: 0,
                    interface: 27,
                },
            ),
            // Nonsense from sysfs saturates rather than overflowing.
            (
                &[],
                &[0, u64::MAX, 0, u64::MAX],
                DropCounts {
                    kernel: 0,
                    interface: u64::MAX,
                },
            ),
        ];
        for (kernel, iface, want) in cases {
            let mut a = DropAccumulator::default();
            kernel.iter().for_each(|&d| a.kernel(d));
            iface.iter().for_each(|&r| a.interface(r));
            assert_eq!(a.counts, want, "{kernel:?} {iface:?}");
        }
    }

    #[test]
    fn interface_drops_read_sysfs_and_refuse_partial_sums() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(interface_drops(dir.path()), None);
        std::fs::write(dir.path().join("rx_missed_errors"), "12\n").unwrap();
        assert_eq!(interface_drops(dir.path()), None, "fifo missing");
        std::fs::write(dir.path().join("rx_fifo_errors"), "30\n").unwrap();
        assert_eq!(interface_drops(dir.path()), Some(42));
        std::fs::write(dir.path().join("rx_fifo_errors"), "x").unwrap();
        assert_eq!(interface_drops(dir.path()), None);
    }

    #[test]
    fn kernel_drops_are_read_at_any_time_without_the_capture_loop() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let Some(src) = open_lo_or_skip_with(LiveOptions {
            buffer_size: 1 << 20,
            ..lo_options(&format!("tcp port {port}"))
        }) else {
            return;
        };
        let reader = src.drop_reader().expect("live sources have one");
        assert_eq!(reader.interface(), "lo");
        let metrics = crate::metrics::Metrics::new(Default::default(), "lo");
        let shared = metrics.shared();
        shared.add_drop_reader(reader.clone());
        // Nobody calls `next_event`: 32 MiB through a 1 MiB capture buffer
        // must overflow it.
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut sink = Vec::new();
            conn.read_to_end(&mut sink).unwrap();
        });
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let chunk = vec![b'x'; 1 << 16];
        for _ in 0..512 {
            c.write_all(&chunk).unwrap();
        }
        drop(c);
        server.join().unwrap();
        // Read from another thread, as a scrape does.
        let first = std::thread::spawn({
            let r = reader.clone();
            move || r.read()
        })
        .join()
        .unwrap();
        assert!(first.kernel > 0, "{first:?}");
        let again = reader.read();
        assert!(again.kernel >= first.kernel, "accumulates: {again:?}");
        let text = shared.render();
        let line = text
            .lines()
            .find(|l| l.starts_with("apitap_capture_dropped_packets_total{interface=\"lo\"}"))
            .unwrap_or_else(|| panic!("{text}"));
        let scraped: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(scraped >= again.kernel, "{line} vs {again:?}");
        assert_eq!(src.stats().dropped, reader.read().kernel);

        // Closed: the counts stay, the socket is gone.
        drop(src);
        let closed = reader.read();
        assert!(closed.kernel >= scraped, "{closed:?}");
        assert_eq!(reader.read(), closed);
    }

    #[test]
    fn open_bad_filter_on_lo_names_the_filter() {
        let err = match LiveSource::open(&lo_options("tcp port ((")) {
            Ok(_) => panic!("a bad filter was accepted"),
            Err(CaptureError::Live(m)) if m.contains("needs CAP_NET_RAW") => {
                eprintln!("skipped: {m}");
                return;
            }
            Err(e) => e.to_string(),
        };
        assert!(
            err.starts_with("invalid capture filter \"tcp port ((\": "),
            "{err}"
        );
        assert!(err.len() > "invalid capture filter \"tcp port ((\": ".len());
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn live_lo_sees_request_then_ticks_when_idle() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let Some(mut src) = open_lo_or_skip(&format!("tcp port {port}")) else {
            return;
        };
        assert_eq!(src.interface(), "lo");
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 256];
            let _ = conn.read(&mut buf);
        });
        let client = std::thread::spawn(move || {
            let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        });

        let deadline = Instant::now() + Duration::from_secs(5);
        let mut seen_request = false;
        let mut seen_tick_after = false;
        let started = Timestamp::now_wall();
        let link = src.link_type();
        assert_eq!(link, LinkType::ETHERNET, "lo is ethernet-framed on Linux");
        while Instant::now() < deadline && !seen_tick_after {
            match src.next_event().unwrap() {
                Some(SourceEvent::Packet(p)) => {
                    assert_eq!(p.link, link);
                    assert!(p.data.len() <= p.wire_len as usize);
                    assert!(p.ts.micros_since(started) < 10_000_000, "{}", p.ts);
                    if contains(p.data, b"GET / HTTP/1.1\r\n") {
                        seen_request = true;
                    }
                }
                Some(SourceEvent::Tick(t)) => {
                    assert!(t >= started);
                    seen_tick_after = seen_request;
                }
                None => panic!("source ended without a stop"),
            }
        }
        client.join().unwrap();
        server.join().unwrap();
        assert!(seen_request, "request line not captured within 5 s");
        assert!(seen_tick_after, "no tick while idle");
        let stats = src.stats();
        assert!(stats.packets >= 3, "{stats:?}");
        assert!(stats.bytes >= stats.packets * 40, "{stats:?}");
        assert_eq!(src.stats().dropped, 0);
    }

    #[test]
    fn idle_capture_ticks_then_stopper_wakes_it() {
        // A port held by an idle listener keeps the capture idle.
        let idle = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = idle.local_addr().unwrap().port();
        let Some(mut src) = open_lo_or_skip(&format!("tcp port {port}")) else {
            return;
        };
        let before = Timestamp::now_wall();
        let begun = Instant::now();
        match src.next_event().unwrap() {
            // Frames still in a kernel block are up to the lag old: the
            // tick stays behind them.
            Some(SourceEvent::Tick(t)) => {
                let lag = src.lag.as_micros() as i64;
                assert!(lag > 0);
                assert!(t.saturating_add_micros(lag) >= before, "{t} {before}");
                assert!(t.saturating_add_micros(lag) <= Timestamp::now_wall(), "{t}");
            }
            other => panic!("want a tick on an idle link, got {other:?}"),
        }
        let waited = begun.elapsed();
        assert!(
            waited >= Duration::from_millis(90) && waited < Duration::from_secs(2),
            "{waited:?}"
        );

        // With a 10 s tick only the stopper's wake-up can end the wait soon.
        let mut src = LiveSource::open(&LiveOptions {
            tick_micros: 10_000_000,
            ..lo_options(&format!("tcp port {port}"))
        })
        .unwrap();
        let stopper = src.stopper();
        let stopping = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            stopper.stop();
        });
        let begun = Instant::now();
        assert!(src.next_event().unwrap().is_none());
        assert!(
            begun.elapsed() < Duration::from_secs(2),
            "{:?}",
            begun.elapsed()
        );
        stopping.join().unwrap();
        assert!(src.next_event().unwrap().is_none(), "stop is sticky");
    }

    #[test]
    fn a_stop_still_yields_the_frames_the_kernel_held() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        for immediate in [false, true] {
            let Some(mut src) = open_lo_or_skip_with(LiveOptions {
                immediate,
                ..lo_options(&format!("tcp port {port}"))
            }) else {
                return;
            };
            let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let (mut conn, _) = listener.accept().unwrap();
            c.write_all(b"GET /held HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut buf = [0u8; 64];
            let n = conn.read(&mut buf).unwrap();
            assert!(n > 0);
            // The frames are in the kernel's buffer; nothing read them yet.
            src.stopper().stop();
            let begun = Instant::now();
            let mut seen = false;
            while let Some(ev) = src.next_event().unwrap() {
                if let SourceEvent::Packet(p) = ev {
                    seen |= contains(p.data, b"GET /held HTTP/1.1");
                }
            }
            assert!(
                seen,
                "immediate {immediate}: the request was lost at the stop"
            );
            assert!(
                begun.elapsed() < Duration::from_secs(1),
                "{:?}",
                begun.elapsed()
            );
            assert!(src.next_event().unwrap().is_none(), "stop is sticky");
        }
    }

    /// A loopback connection whose client writes a small numbered segment
    /// every `every` until [`Trickle::end`].
    struct Trickle {
        port: u16,
        sending: Arc<AtomicBool>,
        client: std::thread::JoinHandle<()>,
        server: std::thread::JoinHandle<()>,
    }

    impl Trickle {
        fn start(every: Duration) -> Trickle {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            c.set_nodelay(true).unwrap();
            let (mut conn, _) = listener.accept().unwrap();
            let server = std::thread::spawn(move || {
                let mut sink = Vec::new();
                conn.read_to_end(&mut sink).unwrap();
            });
            let sending = Arc::new(AtomicBool::new(true));
            let client = std::thread::spawn({
                let sending = Arc::clone(&sending);
                move || {
                    let mut i = 0u64;
                    while sending.load(Ordering::Relaxed) {
                        c.write_all(format!("frame {i:>12}\n").as_bytes()).unwrap();
                        i += 1;
                        std::thread::sleep(every);
                    }
                }
            });
            Trickle {
                port,
                sending,
                client,
                server,
            }
        }

        fn end(self) {
            self.sending.store(false, Ordering::Relaxed);
            self.client.join().unwrap();
            self.server.join().unwrap();
        }
    }

    #[test]
    fn a_stop_under_endless_traffic_ends_after_the_frames_from_before_it() {
        let trickle = Trickle::start(Duration::from_micros(100));
        let Some(mut src) = open_lo_or_skip(&format!("tcp port {}", trickle.port)) else {
            trickle.end();
            return;
        };
        let begun = Instant::now();
        let mut before_stop = 0;
        while begun.elapsed() < Duration::from_millis(200) {
            if let Some(SourceEvent::Packet(_)) = src.next_event().unwrap() {
                before_stop += 1;
            }
        }
        let stop_at = Timestamp::now_wall();
        src.stopper().stop();
        let stopped = Instant::now();
        while let Some(ev) = src.next_event().unwrap() {
            if let SourceEvent::Packet(p) = ev {
                assert!(p.ts <= Timestamp::now_wall(), "{}", p.ts);
                assert!(
                    // (Slack for a thread put aside between the two.)
                    p.ts.micros_since(stop_at) < 20_000,
                    "a frame from {} µs after the stop",
                    p.ts.micros_since(stop_at)
                );
            }
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(1),
            "{:?}",
            stopped.elapsed()
        );
        trickle.end();
        assert!(before_stop > 20, "{before_stop} frames before the stop");
    }

    #[test]
    fn a_fanout_group_never_yields_a_frame_twice() {
        // Traffic flows while the group forms: frames that reached every
        // handle before it was whole must not come out of two of them.
        let trickle = Trickle::start(Duration::from_micros(50));
        std::thread::sleep(Duration::from_millis(50));
        let filter = format!("tcp port {}", trickle.port);
        let mut sources = match open_fanout(&lo_options(&filter), 2) {
            Ok(s) => s,
            Err(CaptureError::Live(m)) if m.contains("needs CAP_NET_RAW") => {
                eprintln!("skipped: {m}");
                trickle.end();
                return;
            }
            Err(e) => panic!("{e}"),
        };
        std::thread::sleep(Duration::from_millis(100));
        trickle.end();
        let mut frames = std::collections::HashSet::new();
        let mut total = 0;
        for src in &mut sources {
            src.stopper().stop();
            while let Some(ev) = src.next_event().unwrap() {
                if let SourceEvent::Packet(p) = ev {
                    total += 1;
                    // Each frame's bytes are unique (IP ids and TCP
                    // timestamps move on).
                    assert!(frames.insert(p.data.to_vec()), "a frame came out twice");
                }
            }
        }
        assert!(total > 20, "{total} frames");
    }

    #[test]
    fn stopper_before_first_call_ends_immediately() {
        let Some(mut src) = open_lo_or_skip("tcp") else {
            return;
        };
        let stopper = src.stopper();
        let also = stopper.clone();
        stopper.stop();
        also.stop();
        assert!(src.next_event().unwrap().is_none());
        drop(src);
        also.stop(); // after the source is gone: no panic, no SIGPIPE
    }

    #[test]
    fn any_interface_passes_cooked_link_type_through() {
        let opts = LiveOptions {
            interface: "any".to_string(),
            ..lo_options("tcp")
        };
        match LiveSource::open(&opts) {
            Ok(src) => assert!(
                [LinkType::LINUX_SLL, LinkType::LINUX_SLL2].contains(&src.link_type()),
                "{:?}",
                src.link_type()
            ),
            Err(CaptureError::Live(m)) if m.contains("needs CAP_NET_RAW") => {
                eprintln!("skipped: {m}")
            }
            Err(CaptureError::Live(m)) if m.starts_with("no interface named any") => {
                eprintln!("skipped: this libpcap has no `any` device")
            }
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn stopper_is_send_and_sync() {
        fn check<T: Clone + Send + Sync + 'static>() {}
        check::<Stopper>();
    }
}
