//! Flows sharded over worker threads (`--workers N`).
//!
//! Contract: [`Sharded`] is a drop-in for [`Pipeline`] on the caller's
//! thread — the same methods, the same sink calls, in the same order — with
//! TCP reassembly and HTTP framing, the per-flow work, spread over N worker
//! threads, and classification and the sink on a merging thread of their
//! own ([`Engine`] hands both the sink behind a mutex):
//!
//! - The caller's thread reads and decodes every packet (IP fragments and
//!   tunnels need one decoder that sees everything), picks a worker by
//!   [`FlowKey::symmetric_hash_of`], so both directions of a connection land on
//!   the same one, and sends it segments in batches. Payload bytes that lie
//!   in the memory-mapped capture file travel as offsets into it (no copy),
//!   and the file's pages stay mapped from the oldest payload of a batch a
//!   worker is not done with ([`Hold`]; the reader's window gives back only
//!   what lies before); others (streamed input, reassembled fragments) are
//!   copied into the batch.
//! - Finished exchanges and flow events go to the merging thread, which
//!   classifies them and calls the sink, so everything that spans flows
//!   (route inventory, `endpoint_gone`, label slots, the logs) stays
//!   single-threaded. Each output is tagged with the index of the packet
//!   that produced it, and the merging thread releases outputs in index
//!   order, merging the workers' streams once every worker is past that
//!   index (a lane with nothing to say gets an empty batch now and then, to
//!   say so). So the sink sees what one pipeline would have produced, in
//!   the same order (`tests/workers.rs` checks it on every corpus capture).
//!   The caller's thread is left to read, decode and dispatch: the three
//!   stages overlap (a second core pays off even with one worker's worth of
//!   flow work).
//! - Time: each segment carries the reader's monotonic clock at its packet.
//!   Sweeps (idle expiry, request timeouts) are the reader's decision, on
//!   the same [`SweepSchedule`] one pipeline uses: at the packet that
//!   crosses a second boundary, every lane gets a sweep marker, so each
//!   worker sweeps at the same point of the input as one table would (what
//!   a sweep emits is sorted, see [`FlowTable::sweep`]). A lane's batch is
//!   sent when full, or once the reader's clock is
//!   [`BATCH_MAX_AGE_MICROS`] or [`BATCH_MAX_AGE_PACKETS`] past its first
//!   item (paced replays stay live, quiet lanes do not hold the merge back).
//! - Live capture with N workers ([`Sharded::live`]): each worker owns its
//!   own libpcap handle, the handles joined in one PACKET_FANOUT group
//!   (the kernel hashes each flow, both directions, to one handle), and
//!   decodes what its handle delivers; outputs go to the merging thread as
//!   they come (live traffic has no index to merge by). The caller's loop
//!   is driven by a [`Ticker`] that yields clock ticks and sums the
//!   handles' counters; if any handle's capture fails, the Ticker yields
//!   that error (the worker has flushed its flows; [`Sharded::finish`]
//!   stops the others), so no share of the traffic goes unseen while the
//!   process looks healthy.
//! - A thread that panics (a bug) records its name as it unwinds
//!   ([`PanicWatch`]); [`Sharded::failed`] tells the caller's loop, which
//!   ends as at the end of the input (what the other threads hold is
//!   flushed and written) and reports it: a monitor that lost a worker or
//!   the merge must not look healthy. The channels close as the failed
//!   thread's ends drop, so nothing waits for it.
//! - Bounds: each worker's table gets `1/N` of `max_flows` and of the
//!   memory budget less a sixteenth (at least 1 MiB) kept for outputs in
//!   flight: exchanges the workers produced that the merging thread has not
//!   released (a fast lane's wait for the slowest; an eviction round's
//!   burst). Past that share the reader sends every lane what it has and
//!   waits until the merging thread has released half of it, so the
//!   budget covers them too. Every channel is bounded: the reader waits for a worker
//!   whose queue is full, a worker for the merging thread (replies hold at
//!   most [`REPLY_CHUNK`] outputs each, an eviction round's go in several),
//!   and the merging thread waits on nothing but its channel (and the sink's
//!   mutex, which the caller's thread holds only briefly and never while
//!   waiting for a worker), so the chain cannot deadlock; a slow sink slows
//!   the reader instead of queueing. Outputs a fast lane produced wait in
//!   the merging thread until the slowest lane is past them (at most
//!   [`BATCH_MAX_AGE_PACKETS`] packets behind, or the reader would be
//!   waiting on it). Emptied batches go back to the reader for reuse, and
//!   carry the exchanges the merging thread is done with back to the
//!   worker that made them, to be freed there ([`Batch::dead`]; at most a
//!   quarter of the in-flight share, counted with it).

use crate::capture::live::{LiveSource, Stopper};
use crate::capture::mapped::Hold;
use crate::capture::replay::StopFlag;
use crate::capture::{
    Backing, CaptureError, DropReader, PacketSource, RawPacket, SourceEvent, SourceStats,
};
use crate::classify::Classifier;
use crate::clock::{Clock, Timestamp};
use crate::decode::{DecodeStats, Decoded, Decoder, DecoderConfig, TcpSegment};
use crate::flow::{
    FlowConfig, FlowEvent, FlowKey, FlowStats, FlowTable, SweepSchedule, PREFETCH_AHEAD,
    PREFETCH_FROM_FLOWS,
};
use crate::http::exchange::Exchange;
use crate::pipeline::{
    deliver_one, locate, pass_event, ExchangeSink, Payload, Pipeline, PipelineStats, Seg,
};
use std::collections::VecDeque;
use std::mem::take;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A batch is sent once it holds this many segments …
const BATCH_SEGMENTS: usize = 256;
/// … or this many copied payload bytes …
const BATCH_BYTES: usize = 256 * 1024;
/// … or payloads that span this much of the mapped file (only big
/// packets, TSO or jumbo frames, reach it before `BATCH_SEGMENTS`) …
const BATCH_MAPPED_BYTES: usize = 512 * 1024;
/// … or the reader is this far into the mapped file past its first
/// payload (a quiet lane's open batch would otherwise hold the pages of
/// everything read since, see [`Hold`]) …
const BATCH_MAX_SPAN: usize = 4 << 20;
/// How far the reader goes into a mapped file between two checks of the
/// batches' age and of the hold, at most.
const CHECK_EVERY_MAPPED: usize = 1 << 20;
/// … or once the reader's clock is this far past its first segment …
pub const BATCH_MAX_AGE_MICROS: i64 = 50_000;
/// … or the reader has read this many packets since (a quiet lane must not
/// hold back the release of the others' outputs for long).
const BATCH_MAX_AGE_PACKETS: u64 = 4096;
/// Batches queued per worker before the reader waits: enough that a worker
/// seldom waits for the reader or the reader for a worker (16 against 4:
/// 0.86 of the wall time with two workers on small packets). Payloads
/// copied into batches (streamed input) make that at most `LANE_DEPTH *
/// BATCH_BYTES`, 4 MiB, per worker. Mapped payloads travel as offsets, and
/// the pages a worker may still read (held, see [`Hold`]) span at most
/// `LANE_DEPTH + 2` batches of `BATCH_MAPPED_BYTES` and a packet each,
/// 10 MiB, behind the reader while the workers keep up (a quiet lane's open
/// batch goes once it spans `BATCH_MAX_SPAN`); the window keeps at most
/// 12 MiB mapped behind the reader for them.
const LANE_DEPTH: usize = 16;
// What the workers may still read fits in what a hold keeps mapped.
const _: () =
    assert!((LANE_DEPTH + 2) * (BATCH_MAPPED_BYTES + 65_536) <= crate::capture::mapped::HOLD_MAX);
/// A worker replies before its batch is done once it holds this many
/// outputs.
const REPLY_CHUNK: usize = 64;

/// Outputs produced and not yet released by the merging thread may hold
/// this share of the flow memory budget (at least [`IN_FLIGHT_MIN`]); the
/// workers' tables share the rest.
const IN_FLIGHT_SHARE: usize = 16;
const IN_FLIGHT_MIN: usize = 1 << 20;
/// Finished exchanges on their way back to their worker (see
/// [`Batch::dead`]) hold at most this many bytes, and at most a quarter of
/// the in-flight share; past it the merging thread drops them itself, under
/// the lock of the worker's malloc arena. With 16 batches queued per lane
/// more than 1 MiB is on its way at once: at 1 MiB a million open
/// connections took 1.2x the wall time with two workers (the merging
/// thread's frees and the workers' allocations queued on those locks); the
/// benchmark capture 1.03x.
const DEAD_MAX: usize = 32 << 20;
/// How long the reader waits for the merging thread to release outputs
/// before it reads on anyway (only a dead worker makes it that slow).
const IN_FLIGHT_PATIENCE: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug)]
enum Item {
    Seg(Seg),
    /// Sweep now (expire idle flows and overdue requests), before packet
    /// `idx`: one pipeline would have swept there.
    Sweep {
        idx: u64,
        now: Timestamp,
    },
    /// Panic (tests: a bug in a worker).
    #[cfg(test)]
    Crash,
}

impl Item {
    fn idx(&self) -> u64 {
        match *self {
            Item::Seg(s) => s.idx,
            Item::Sweep { idx, .. } => idx,
            #[cfg(test)]
            Item::Crash => 0,
        }
    }
}

#[derive(Debug, Default)]
struct Batch {
    items: Vec<Item>,
    bytes: Vec<u8>,
    /// Packets read when it was sent: every packet of this lane up to this
    /// index is in this batch or an earlier one.
    upto: u64,
    /// The capture time and packet index of its first item.
    first: Option<(Timestamp, u64)>,
    /// Exchanges the merging thread is done with, going back to the worker
    /// that made them (lane `dead_lane`) to be dropped there (a few at a
    /// time, see [`Dying`]): glibc's malloc frees a block on another
    /// thread than its own only under the lock of the block's arena, and
    /// the merging thread freeing what the workers allocate made the two
    /// queue on those locks (a third of all its context switches). What
    /// the merging thread allocated (route, Host, findings) it frees
    /// itself.
    dead: Vec<Exchange>,
    dead_lane: usize,
    /// Their bytes, counted in [`MergeShared::dead`] until dropped.
    dead_bytes: usize,
    /// Payload bytes of `items` that lie in the mapped file.
    mapped: usize,
}

impl Batch {
    fn clear(&mut self) {
        self.items.clear();
        self.bytes.clear();
        self.first = None;
        self.mapped = 0;
    }
}

enum ToWorker {
    Batch(Batch),
    /// End of input at this time: flush every flow, reply, exit.
    Finish(Timestamp),
}

// Nearly every output is an exchange: boxing it would cost an allocation
// each for nothing.
#[allow(clippy::large_enum_variant)]
enum Output {
    Exchange(Exchange),
    Event(FlowEvent),
}

impl Output {
    /// Bytes this output holds, for the in-flight bound (an estimate: the
    /// buffers' capacities, as the flow table counts them).
    fn heap_bytes(&self) -> usize {
        match self {
            Output::Exchange(ex) => exchange_bytes(ex),
            Output::Event(_) => std::mem::size_of::<Tagged>(),
        }
    }
}

/// What an exchange output is counted as, in flight and on its way back:
/// its slot and the buffers a worker allocated for it (the capacities, as
/// the flow table counts them).
fn exchange_bytes(ex: &Exchange) -> usize {
    std::mem::size_of::<Tagged>()
        + ex.request
            .as_ref()
            .map_or(0, |r| r.target.capacity() + r.headers.heap_bytes())
        + ex.response.as_ref().map_or(0, |r| r.headers.heap_bytes())
        + ex.request_body_prefix.capacity()
        + ex.response_body_prefix.capacity()
}

/// Exchanges back from the merging thread (see [`Batch::dead`]), dropped a
/// few at a time as the worker goes: glibc's per-thread cache takes back
/// only a handful of blocks of a size, so dropping a batch's worth at once
/// sent most to the arena's bins, and the allocations that followed took
/// them from there, at several times the cost (with the cache, a block
/// freed is the next one handed out, as in one pipeline).
#[derive(Default)]
struct Dying {
    exchanges: Vec<Exchange>,
}

impl Dying {
    /// Take a batch's dead exchanges (their bytes stay counted in
    /// [`MergeShared::dead`] until dropped).
    fn take(&mut self, batch: &mut Batch) {
        self.exchanges.append(&mut batch.dead);
        batch.dead_bytes = 0;
    }

    /// Drop up to `n` of them.
    fn drop_some(&mut self, n: usize, shared: &MergeShared) {
        for _ in 0..n {
            let Some(ex) = self.exchanges.pop() else {
                return;
            };
            let bytes = exchange_bytes(&ex);
            drop(ex);
            shared.dead.fetch_sub(bytes, Ordering::SeqCst);
            shared.dead_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Where an output goes in the order one pipeline would have produced it:
/// by packet index, then, at one packet, a sweep's exchanges (sorted by
/// start and addresses, as [`FlowTable::sweep`] sorts them), the packet's
/// own exchanges, then flow events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Order {
    idx: u64,
    phase: u8,
    ts: Timestamp,
    addrs: Option<(SocketAddr, SocketAddr)>,
}

const SWEPT: u8 = 0;
const OWN: u8 = 1;
const EVENT: u8 = 2;

impl Order {
    fn of(idx: u64, phase: u8, out: &Output) -> Order {
        let (ts, addrs) = match (phase, out) {
            (SWEPT, Output::Exchange(ex)) => (ex.ts, Some((ex.client, ex.server))),
            _ => (Timestamp::ZERO, None),
        };
        Order {
            idx,
            phase,
            ts,
            addrs,
        }
    }
}

type Tagged = (Order, Output);

/// A worker's answer to one message.
struct Reply {
    worker: usize,
    /// The batch's buffers, emptied, for reuse.
    batch: Batch,
    /// The `upto` of the batch answered (`u64::MAX` for `Finish`; 0 for a
    /// part of a batch, which moves nothing on).
    upto: u64,
    outputs: Vec<Tagged>,
    flows: FlowStats,
    active_flows: usize,
    /// Live workers decode their own packets.
    decode: Option<DecodeStats>,
}

impl Reply {
    /// Worker `worker`'s answer, with its table's counters as they are now.
    fn of(
        worker: usize,
        flows: &FlowTable,
        batch: Batch,
        upto: u64,
        outputs: Vec<Tagged>,
    ) -> Reply {
        Reply {
            worker,
            batch,
            upto,
            outputs,
            flows: flows.stats().clone(),
            active_flows: flows.active_flows(),
            decode: None,
        }
    }
}

/// The reader's side of a worker.
struct Lane {
    tx: Option<SyncSender<ToWorker>>,
    batch: Batch,
    /// `upto` of the last batch sent.
    sent_upto: u64,
    /// Where in the mapped file the first payload of `batch` lies.
    batch_from: Option<usize>,
    /// Batches sent with payloads in the mapped file and not yet done by
    /// the worker: (`upto`, where the first payload lies), oldest first.
    mapped_in_flight: VecDeque<(u64, usize)>,
}

impl Lane {
    fn new(tx: Option<SyncSender<ToWorker>>) -> Lane {
        Lane {
            tx,
            batch: Batch::default(),
            sent_upto: 0,
            batch_from: None,
            mapped_in_flight: VecDeque::new(),
        }
    }

    /// The lowest offset of the mapped file this lane's worker may still
    /// read, given that it is done with every batch up to `done`.
    fn reads_from(&mut self, done: u64) -> Option<usize> {
        while self
            .mapped_in_flight
            .front()
            .is_some_and(|&(upto, _)| upto <= done)
        {
            self.mapped_in_flight.pop_front();
        }
        let sent = self.mapped_in_flight.front().map(|&(_, from)| from);
        sent.into_iter().chain(self.batch_from).min()
    }
}

/// The merging thread's side of a worker.
#[derive(Default)]
struct MergeLane {
    /// `upto` of the last batch answered: every output of this worker up to
    /// that packet index is in `held` or released.
    answered: u64,
    /// The worker answered `Finish` (or is gone): nothing more will come.
    done: bool,
    /// Outputs received and not released yet, in index order: the replies'
    /// own vectors, not copied into one queue (an eviction round's burst
    /// would be held twice while the queue grows).
    held: VecDeque<std::vec::IntoIter<Tagged>>,
}

/// What a worker last reported, for [`Sharded::stats`].
#[derive(Clone, Default)]
struct LaneReport {
    flows: FlowStats,
    active_flows: usize,
    /// Live workers decode their own packets.
    decode: DecodeStats,
}

/// Shared between the reader, the workers and the merging thread.
#[derive(Default)]
struct MergeShared {
    reports: Mutex<Vec<LaneReport>>,
    /// A classifier to adopt before the next release (SIGHUP reload).
    classifier: Mutex<Option<Classifier>>,
    /// Bytes of outputs the workers produced that the merging thread has
    /// not released yet (an estimate, like the flow table's).
    in_flight: AtomicUsize,
    /// Notified by the merging thread after each release while
    /// `reader_waits`.
    released: Condvar,
    reader_waits: AtomicBool,
    released_lock: Mutex<()>,
    /// Bytes of the exchanges in [`Batch::dead`]s and on their way there.
    dead: AtomicUsize,
    /// The most `dead` may hold (0: the merging thread drops them all).
    dead_cap: usize,
    /// Finished exchanges the workers dropped (for tests).
    dead_dropped: AtomicU64,
    /// Per worker: the `upto` of the last batch it is done with.
    done: Vec<AtomicU64>,
    /// The name of the first thread that panicked ([`PanicWatch`]).
    failed: Mutex<Option<String>>,
}

/// Held by each thread of a [`Sharded`] for its whole run: if the thread
/// unwinds from a panic, records its name in [`MergeShared::failed`].
struct PanicWatch<'a>(&'a MergeShared);

impl Drop for PanicWatch<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let name = std::thread::current()
                .name()
                .unwrap_or("a worker thread")
                .to_string();
            lock(&self.0.failed).get_or_insert(name);
        }
    }
}

impl MergeShared {
    fn new(lanes: usize, dead_cap: usize) -> Arc<MergeShared> {
        let shared = MergeShared {
            dead_cap,
            done: (0..lanes).map(|_| AtomicU64::new(0)).collect(),
            ..MergeShared::default()
        };
        *lock(&shared.reports) = vec![LaneReport::default(); lanes];
        Arc::new(shared)
    }

    /// Count `bytes` of a finished exchange as on their way back to their
    /// worker, if they fit.
    fn try_add_dead(&self, bytes: usize) -> bool {
        let cap = self.dead_cap;
        self.dead
            .fetch_update(Ordering::SeqCst, Ordering::Relaxed, |d| {
                (d + bytes <= cap).then_some(d + bytes)
            })
            .is_ok()
    }

    /// Bytes outside the workers' tables: outputs in flight and finished
    /// exchanges on their way back.
    fn out_of_tables(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst) + self.dead.load(Ordering::SeqCst)
    }

    fn add_in_flight(&self, outputs: &[Tagged]) {
        let bytes = outputs.iter().map(|(_, o)| o.heap_bytes()).sum();
        self.in_flight.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// Lock, whether or not another thread panicked holding the lock (the data
/// are counters and sinks: better used than lost).
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The merging thread: takes the workers' replies, releases their outputs
/// in packet order to the classifier and the sink.
struct Merger {
    lanes: Vec<MergeLane>,
    classifier: Classifier,
    replies: Receiver<Reply>,
    /// Emptied batches back to the reader.
    free: Sender<Batch>,
    /// Per lane: released exchanges for its worker to drop, and their bytes.
    dead: Vec<(Vec<Exchange>, usize)>,
    shared: Arc<MergeShared>,
    /// Live outputs have no index to merge by: released as they come.
    live: bool,
}

impl Merger {
    /// Until every worker has exited (the reply channel closes).
    fn run(mut self, sink: &Mutex<dyn ExchangeSink + Send>) {
        while let Ok(reply) = self.replies.recv() {
            self.take(reply);
            while let Ok(reply) = self.replies.try_recv() {
                self.take(reply);
            }
            if let Some(c) = lock(&self.shared.classifier).take() {
                self.classifier.adopt(c);
            }
            self.release(&mut *lock(sink), self.watermark());
        }
        self.release(&mut *lock(sink), u64::MAX);
    }

    fn take(&mut self, reply: Reply) {
        let Reply {
            worker,
            batch,
            upto,
            outputs,
            flows,
            active_flows,
            decode,
        } = reply;
        if batch.items.capacity() > 0 {
            let mut batch = batch;
            if let Some((dead, bytes)) = self.dead.get_mut(worker) {
                batch.dead = take(dead);
                batch.dead_bytes = take(bytes);
                batch.dead_lane = worker;
            }
            let _ = self.free.send(batch);
        }
        if let Some(r) = lock(&self.shared.reports).get_mut(worker) {
            if let Some(d) = decode {
                r.decode = d;
            }
            r.flows = flows;
            r.active_flows = active_flows;
        }
        if let Some(lane) = self.lanes.get_mut(worker) {
            lane.answered = lane.answered.max(upto);
            lane.done |= upto == u64::MAX;
            if !outputs.is_empty() {
                lane.held.push_back(outputs.into_iter());
            }
        }
    }

    /// The highest packet index up to which every lane's outputs are in.
    fn watermark(&self) -> u64 {
        if self.live {
            return u64::MAX;
        }
        let lane_mark = |l: &MergeLane| if l.done { u64::MAX } else { l.answered };
        self.lanes.iter().map(lane_mark).min().unwrap_or(u64::MAX)
    }

    /// Hand every held output up to `mark` to the sink, merging the lanes
    /// by [`Order`] (each lane's queue is in that order).
    fn release<S: ExchangeSink + ?Sized>(&mut self, sink: &mut S, mark: u64) {
        loop {
            let next = self
                .lanes
                .iter()
                .enumerate()
                .filter_map(|(i, l)| Some((l.held.front()?.as_slice().first()?.0, i)))
                .filter(|(o, _)| o.idx <= mark)
                .min();
            let Some((_, i)) = next else { break };
            let held = &mut self.lanes[i].held;
            let Some((_, out)) = held.front_mut().and_then(Iterator::next) else {
                break;
            };
            if held.front().is_some_and(|c| c.len() == 0) {
                held.pop_front();
            }
            if let Some((_, Output::Exchange(next))) =
                held.front().and_then(|c| c.as_slice().get(MERGE_AHEAD))
            {
                prefetch_exchange(next);
            }
            let bytes = out.heap_bytes();
            self.shared.in_flight.fetch_sub(bytes, Ordering::SeqCst);
            match out {
                Output::Exchange(mut ex) => {
                    deliver_one(&mut self.classifier, sink, &mut ex);
                    // What classification allocated here is freed here.
                    drop((ex.route.take(), ex.host.take(), take(&mut ex.findings)));
                    if let Some((dead, held)) = self.dead.get_mut(i) {
                        if self.shared.try_add_dead(bytes) {
                            *held += bytes;
                            dead.push(ex);
                        }
                    }
                }
                Output::Event(ev) => pass_event(ev, sink),
            }
        }
        // A notice is a system call: only when the reader waits. Taking the
        // lock orders it after the waiting reader's check.
        if self.shared.reader_waits.load(Ordering::SeqCst) {
            drop(lock(&self.shared.released_lock));
            self.shared.released.notify_all();
        }
    }
}

/// How many outputs of a lane ahead of the one it releases the merging
/// thread asks for the memory of.
const MERGE_AHEAD: usize = 2;

/// Hint the CPU to load the start of what classification reads of `ex`:
/// a worker wrote it on another core, a while ago.
fn prefetch_exchange(ex: &Exchange) {
    let line = |b: &[u8], lines: usize| {
        for at in (0..b.len().min(lines * 64)).step_by(64) {
            crate::hint::prefetch(&b[at]);
        }
    };
    if let Some(r) = &ex.request {
        line(&r.target, 1);
        line(r.headers.bytes(), 4);
    }
    if let Some(r) = &ex.response {
        line(r.headers.bytes(), 4);
    }
    line(&ex.request_body_prefix, 1);
    line(&ex.response_body_prefix, 2);
}

/// The sink as the merging thread holds it.
type DynSink = Arc<Mutex<dyn ExchangeSink + Send>>;

/// One worker's share of the flow table limits.
fn share(flows: FlowConfig, n: usize) -> FlowConfig {
    FlowConfig {
        max_flows: (flows.max_flows / n).max(1),
        memory_budget_bytes: flows.memory_budget_bytes / n,
        ..flows
    }
}

/// The part of the flow memory budget kept for outputs in flight.
fn in_flight_cap(budget: usize) -> usize {
    (budget / IN_FLIGHT_SHARE)
        .max(IN_FLIGHT_MIN)
        .min(budget / 2)
}

/// The sharded pipeline (see the module doc).
pub struct Sharded {
    clock: Clock,
    decoder: Decoder,
    backing: Option<Backing>,
    sweeps: SweepSchedule,
    lanes: Vec<Lane>,
    /// Emptied batches to reuse, from the merging thread.
    free: Receiver<Batch>,
    threads: Vec<JoinHandle<()>>,
    /// The merging thread waits for the sink, which comes with the first
    /// call that brings it.
    sink_tx: Option<Sender<DynSink>>,
    merger: Option<JoinHandle<()>>,
    shared: Arc<MergeShared>,
    packets: u64,
    bytes: u64,
    /// Where the last mapped payload lies in the mapped file.
    mapped_at: usize,
    /// Where in the mapped file the batches and the hold are checked next.
    next_check: usize,
    finished: bool,
    /// Live: the workers' handles (stopped at `finish`) and counters.
    live: Option<LiveWorkers>,
    /// Offline: the reader waits when outputs in flight hold more bytes.
    in_flight_cap: Option<usize>,
    /// Keeps the pages of the mapped file that workers still read mapped.
    hold: Option<Hold>,
}

struct LiveWorkers {
    stoppers: Vec<Stopper>,
    counters: Vec<Arc<LaneCounters>>,
}

/// What a live worker tells the [`Ticker`]: its packet counters, and why
/// its capture failed if it did.
#[derive(Debug, Default)]
struct LaneCounters {
    packets: AtomicU64,
    bytes: AtomicU64,
    failure: Mutex<Option<CaptureError>>,
}

impl LaneCounters {
    /// (packets, bytes) over all workers.
    fn sum(all: &[Arc<LaneCounters>]) -> (u64, u64) {
        all.iter().fold((0, 0), |(p, b), c| {
            (
                p + c.packets.load(Ordering::Relaxed),
                b + c.bytes.load(Ordering::Relaxed),
            )
        })
    }
}

impl Sharded {
    /// Start `workers` (≥ 1) worker threads. `backing` is the mapped capture
    /// file the packets borrow from, if any (their payloads then travel as
    /// offsets).
    pub fn new(
        decoder: DecoderConfig,
        flows: FlowConfig,
        classifier: Classifier,
        workers: usize,
        backing: Option<Backing>,
    ) -> std::io::Result<Self> {
        let n = workers.max(1);
        let cap = in_flight_cap(flows.memory_budget_bytes);
        let per_worker = share(
            FlowConfig {
                memory_budget_bytes: flows.memory_budget_bytes - cap,
                ..flows
            },
            n,
        );
        let shared = MergeShared::new(n, DEAD_MAX.min(cap / 4));
        let (reply_tx, replies) = reply_channel(n);
        let mut lanes = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for id in 0..n {
            let (tx, rx) = sync_channel(LANE_DEPTH);
            let (cfg, backing, reply_tx) = (per_worker.clone(), backing.clone(), reply_tx.clone());
            let shared = shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("apitap-worker-{id}"))
                .spawn(move || work(id, cfg, backing, rx, reply_tx, &shared))?;
            threads.push(handle);
            lanes.push(Lane::new(Some(tx)));
        }
        let mut sharded =
            Sharded::with(decoder, classifier, lanes, replies, threads, shared, false)?;
        sharded.backing = backing;
        sharded.in_flight_cap = Some(cap);
        Ok(sharded)
    }

    fn with(
        decoder: DecoderConfig,
        classifier: Classifier,
        lanes: Vec<Lane>,
        replies: Receiver<Reply>,
        threads: Vec<JoinHandle<()>>,
        shared: Arc<MergeShared>,
        live: bool,
    ) -> std::io::Result<Sharded> {
        let (free_tx, free) = channel();
        let merger = Merger {
            lanes: (0..lanes.len()).map(|_| MergeLane::default()).collect(),
            classifier,
            replies,
            free: free_tx,
            dead: (0..lanes.len()).map(|_| (Vec::new(), 0)).collect(),
            shared: shared.clone(),
            live,
        };
        let (sink_tx, sink_rx) = channel::<DynSink>();
        let merger = std::thread::Builder::new()
            .name("apitap-merge".into())
            .spawn(move || {
                if let Ok(sink) = sink_rx.recv() {
                    let shared = merger.shared.clone();
                    let _watch = PanicWatch(&shared);
                    merger.run(&sink);
                }
            })?;
        Ok(Sharded {
            clock: Clock::default(),
            decoder: Decoder::new(decoder),
            backing: None,
            sweeps: SweepSchedule::default(),
            lanes,
            free,
            threads,
            sink_tx: Some(sink_tx),
            merger: Some(merger),
            shared,
            packets: 0,
            bytes: 0,
            mapped_at: 0,
            next_check: 0,
            finished: false,
            live: None,
            in_flight_cap: None,
            hold: None,
        })
    }

    /// Keep the pages of the mapped capture that workers may still read
    /// mapped through `hold` (the reader's window gives back only what lies
    /// before the oldest payload of a batch a worker is not done with).
    pub fn holding(mut self, hold: Option<Hold>) -> Self {
        self.hold = hold;
        self
    }

    /// Live capture: one worker per handle of `sources` (joined in one
    /// PACKET_FANOUT group by [`crate::capture::live::open_fanout`]). The
    /// returned [`Ticker`] is the packet source for the caller's loop; it
    /// ends when `stop` is raised.
    pub fn live(
        sources: Vec<LiveSource>,
        decoder: DecoderConfig,
        flows: FlowConfig,
        classifier: Classifier,
        stop: StopFlag,
    ) -> std::io::Result<(Self, Ticker)> {
        let per_worker = share(flows, sources.len().max(1));
        let interface = sources
            .first()
            .map_or_else(String::new, |s| s.interface().to_string());
        let (reply_tx, replies) = reply_channel(sources.len());
        // Live replies bring no batch back: the merging thread drops what
        // it released.
        let shared = MergeShared::new(sources.len(), 0);
        let (mut lanes, mut threads) = (Vec::new(), Vec::new());
        let (mut stoppers, mut counters, mut drops) = (Vec::new(), Vec::new(), Vec::new());
        for (id, source) in sources.into_iter().enumerate() {
            stoppers.push(source.stopper());
            drops.extend(source.drop_readers());
            let count = Arc::new(LaneCounters::default());
            counters.push(count.clone());
            let (cfg, dec, reply_tx) = (per_worker.clone(), decoder.clone(), reply_tx.clone());
            let shared = shared.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("apitap-capture-{id}"))
                    .spawn(move || work_live(id, source, dec, cfg, count, reply_tx, &shared))?,
            );
            lanes.push(Lane::new(None));
        }
        let ticker = Ticker {
            interface,
            stop,
            every: Duration::from_millis(100),
            counters: counters.clone(),
            drops,
        };
        let mut sharded =
            Sharded::with(decoder, classifier, lanes, replies, threads, shared, true)?;
        sharded.live = Some(LiveWorkers { stoppers, counters });
        Ok((sharded, ticker))
    }

    /// Hand the merging thread the sink, the first time.
    fn start<S: ExchangeSink + Send + 'static>(&mut self, sink: &Arc<Mutex<S>>) {
        if let Some(tx) = self.sink_tx.take() {
            let sink: DynSink = sink.clone();
            let _ = tx.send(sink);
        }
    }

    pub fn packet<S: ExchangeSink + Send + 'static>(
        &mut self,
        pkt: &RawPacket<'_>,
        sink: &Arc<Mutex<S>>,
    ) {
        self.start(sink);
        self.packets += 1;
        self.bytes += pkt.data.len() as u64;
        let now = self.clock.observe(pkt.ts);
        if self.sweeps.due(now) {
            self.mark_sweep(self.packets, now);
        }
        if let Decoded::Tcp(seg) = self.decoder.decode(pkt) {
            let hash = FlowKey::symmetric_hash_of(&seg.src, &seg.dst);
            let i = (hash % self.lanes.len() as u64) as usize;
            let lane = &mut self.lanes[i];
            let batch = &mut lane.batch;
            let payload = match locate(seg.payload, self.backing.as_ref()) {
                Some(start) => {
                    lane.batch_from.get_or_insert(start);
                    batch.mapped += seg.payload.len();
                    self.mapped_at = start;
                    Payload::Mapped {
                        start,
                        len: seg.payload.len(),
                    }
                }
                None => {
                    let start = batch.bytes.len();
                    batch.bytes.extend_from_slice(seg.payload);
                    Payload::Copied {
                        start,
                        len: seg.payload.len(),
                    }
                }
            };
            batch.first.get_or_insert((seg.ts, self.packets));
            batch
                .items
                .push(Item::Seg(Seg::of(self.packets, now, &seg, payload)));
            if batch.items.len() >= BATCH_SEGMENTS
                || batch.bytes.len() >= BATCH_BYTES
                || batch.mapped >= BATCH_MAPPED_BYTES
            {
                self.send(i);
            }
        }
        // Every 64 packets, and every MiB of a mapped file (big packets):
        // the batch age and hold checks then lag by at most that much.
        if self.packets.is_multiple_of(64) || self.mapped_at >= self.next_check {
            self.next_check = self.mapped_at + CHECK_EVERY_MAPPED;
            self.send_aged(now);
            self.bound_in_flight();
            self.update_hold();
        }
    }

    /// Hold the mapped file's pages from the oldest payload a worker may
    /// still read (as each batch goes, and every 64 packets, so that the
    /// hold moves on when the workers are done and nothing is sent).
    fn update_hold(&mut self) {
        let Some(hold) = &self.hold else {
            return;
        };
        let mut from = usize::MAX;
        for (lane, done) in self.lanes.iter_mut().zip(&self.shared.done) {
            if let Some(f) = lane.reads_from(done.load(Ordering::Acquire)) {
                from = from.min(f);
            }
        }
        hold.set(from);
    }

    /// Past the in-flight cap (an eviction round, a lane far behind): send
    /// every lane what it has, so each can answer up to this packet and the
    /// merging thread release everything held, and wait until it has
    /// released half. Nothing then waits on the reader, so this ends.
    fn bound_in_flight(&mut self) {
        let Some(cap) = self.in_flight_cap else {
            return;
        };
        // SeqCst here and where the merging thread subtracts and then
        // reads `reader_waits`: one of the two sees the other's write.
        if self.shared.out_of_tables() <= cap {
            return;
        }
        let shared = self.shared.clone();
        // At most a quarter of `cap` is finished exchanges on their way
        // back (`dead_cap`), so the wait below can end.
        let in_flight = || shared.out_of_tables();
        tracing::debug!(
            in_flight = in_flight(),
            cap,
            "outputs in flight over their share of the memory budget; waiting for the merge"
        );
        for i in 0..self.lanes.len() {
            self.send(i);
        }
        let since = Instant::now();
        let mut guard = lock(&shared.released_lock);
        shared.reader_waits.store(true, Ordering::SeqCst);
        while in_flight() > cap / 2 {
            if since.elapsed() >= IN_FLIGHT_PATIENCE {
                tracing::warn!("the merging thread is stuck; reading on");
                break;
            }
            guard = shared
                .released
                .wait_timeout(guard, Duration::from_millis(10))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        shared.reader_waits.store(false, Ordering::SeqCst);
    }

    /// Live mode: the wall clock, when no packet came for a while. Every
    /// worker hears it (its flows may time out).
    pub fn tick<S: ExchangeSink + Send + 'static>(
        &mut self,
        wall: Timestamp,
        sink: &Arc<Mutex<S>>,
    ) {
        self.start(sink);
        let now = self.clock.observe(wall);
        if self.live.is_some() {
            // Live workers tick on their own handles' clocks.
            return;
        }
        if self.sweeps.due(now) {
            // After every packet read so far.
            self.mark_sweep(self.packets.saturating_add(1), now);
        }
        for i in 0..self.lanes.len() {
            self.send(i);
        }
    }

    /// End of input: every worker flushes its flows; everything they held
    /// reaches the sink before this returns.
    pub fn finish<S: ExchangeSink + Send + 'static>(&mut self, sink: &Arc<Mutex<S>>) {
        if self.finished {
            return;
        }
        self.start(sink);
        self.finished = true;
        if let Some(live) = &self.live {
            for s in &live.stoppers {
                s.stop();
            }
        }
        let now = self.clock.now().unwrap_or_default();
        for i in 0..self.lanes.len() {
            self.send(i);
            if let Some(tx) = self.lanes[i].tx.take() {
                // A worker that is gone was reported by `send`.
                let _ = tx.send(ToWorker::Finish(now));
            }
        }
        // Each worker drops its reply sender when it exits (the reader kept
        // none), so the merging thread ends once every worker has answered
        // `Finish`, after releasing everything.
        // A thread that panicked is reported by `failed`.
        if let Some(t) = self.merger.take() {
            let _ = t.join();
        }
        for t in take(&mut self.threads) {
            let _ = t.join();
        }
    }

    /// The name of a thread that panicked (a bug), if one did: the outputs
    /// of the flows it held (a worker) or everything not yet released (the
    /// merging thread) are missing.
    pub fn failed(&self) -> Option<String> {
        lock(&self.shared.failed).clone()
    }

    /// Make worker `lane` panic at its next batch (tests).
    #[cfg(test)]
    pub(crate) fn crash(&mut self, lane: usize) {
        self.lanes[lane].batch.items.push(Item::Crash);
        self.send(lane);
    }

    pub fn stats(&self) -> PipelineStats {
        let reports = lock(&self.shared.reports);
        let mut flows = FlowStats::default();
        for r in reports.iter() {
            flows.merge(&r.flows);
        }
        let (packets, bytes, decode) = match &self.live {
            None => (self.packets, self.bytes, self.decoder.stats().clone()),
            Some(live) => {
                let mut decode = DecodeStats::default();
                for r in reports.iter() {
                    decode.merge(&r.decode);
                }
                let (packets, bytes) = LaneCounters::sum(&live.counters);
                (packets, bytes, decode)
            }
        };
        PipelineStats {
            packets,
            bytes,
            decode,
            flows,
            active_flows: reports.iter().map(|r| r.active_flows).sum(),
            last_ts: self.clock.now(),
        }
    }

    /// See [`Pipeline::set_classifier`]: adopted by the merging thread
    /// before it releases anything more.
    pub fn set_classifier(&mut self, classifier: Classifier) {
        *lock(&self.shared.classifier) = Some(classifier);
    }

    /// Every worker sweeps at `now`, at packet `idx` of the input.
    fn mark_sweep(&mut self, idx: u64, now: Timestamp) {
        for l in &mut self.lanes {
            l.batch.first.get_or_insert((now, idx));
            l.batch.items.push(Item::Sweep { idx, now });
        }
    }

    /// Send lanes whose first segment is older than the batch age, and an
    /// empty batch to lanes that have heard nothing for as long (the merge
    /// waits for every lane to be past an index before releasing it).
    fn send_aged(&mut self, now: Timestamp) {
        for i in 0..self.lanes.len() {
            let lane = &self.lanes[i];
            let due = match lane.batch.first {
                Some((ts, idx)) => {
                    now.micros_since(ts) >= BATCH_MAX_AGE_MICROS
                        || self.packets - idx >= BATCH_MAX_AGE_PACKETS
                        || lane
                            .batch_from
                            .is_some_and(|f| self.mapped_at.saturating_sub(f) >= BATCH_MAX_SPAN)
                }
                None => self.packets - lane.sent_upto >= BATCH_MAX_AGE_PACKETS,
            };
            if due {
                self.send(i);
            }
        }
    }

    /// Send lane `i`'s batch (even empty: it carries the time and tells the
    /// merge this lane is past `upto`).
    fn send(&mut self, i: usize) {
        let mut fresh = self.free.try_recv().unwrap_or_default();
        // Its dead exchanges go with the next batch of the lane that made
        // them (moved as one vector: none is touched here).
        if !fresh.dead.is_empty() {
            if let Some(lane) = self.lanes.get_mut(fresh.dead_lane) {
                if lane.batch.dead.is_empty() {
                    std::mem::swap(&mut lane.batch.dead, &mut fresh.dead);
                    std::mem::swap(&mut lane.batch.dead_bytes, &mut fresh.dead_bytes);
                }
            }
            fresh.dead.clear();
        }
        self.shared
            .dead
            .fetch_sub(take(&mut fresh.dead_bytes), Ordering::SeqCst);
        let mut batch = std::mem::replace(&mut self.lanes[i].batch, fresh);
        batch.upto = self.packets;
        let lane = &mut self.lanes[i];
        lane.sent_upto = self.packets;
        let mapped = lane.batch_from.take();
        if let Some(from) = mapped {
            lane.mapped_in_flight.push_back((batch.upto, from));
        }
        if let Some(tx) = &lane.tx {
            if tx.send(ToWorker::Batch(batch)).is_err() {
                // It panicked, or the merging thread did (see `failed`).
                tracing::debug!(worker = i, "a worker thread stopped");
                lane.tx = None;
            }
        }
        if mapped.is_some() {
            self.update_hold();
        }
    }
}

/// Workers' replies to the merging thread: bounded, so a merge (and sink)
/// slower than the workers holds them back, and through them the reader,
/// rather than queueing without end. The merging thread only ever waits on
/// this channel, so a full channel cannot deadlock.
fn reply_channel(workers: usize) -> (SyncSender<Reply>, Receiver<Reply>) {
    sync_channel(workers.max(1) * (LANE_DEPTH + 1))
}

/// A worker's flows, and the outputs they produced since its last reply.
struct Shard {
    id: usize,
    flows: FlowTable,
    outputs: Vec<Tagged>,
}

/// `out`, tagged with its place in the one-pipeline order.
fn tagged(idx: u64, phase: u8, out: Output) -> Tagged {
    (Order::of(idx, phase, &out), out)
}

impl Shard {
    fn new(id: usize, cfg: FlowConfig) -> Shard {
        Shard {
            id,
            flows: FlowTable::new(cfg).with_caller_sweeps(),
            outputs: Vec::new(),
        }
    }

    /// Sweep (expire idle flows and overdue requests) before packet `idx`.
    fn sweep(&mut self, idx: u64, now: Timestamp) {
        let outputs = &mut self.outputs;
        self.flows.sweep(now, &mut |ex| {
            outputs.push(tagged(idx, SWEPT, Output::Exchange(ex)))
        });
        self.events(idx);
    }

    /// Packet `idx`'s segment.
    fn segment(&mut self, seg: &TcpSegment<'_>, idx: u64, now: Timestamp) {
        let outputs = &mut self.outputs;
        self.flows.segment(seg, now, &mut |ex| {
            outputs.push(tagged(idx, OWN, Output::Exchange(ex)))
        });
        self.events(idx);
    }

    fn events(&mut self, idx: u64) {
        let outputs = &mut self.outputs;
        self.flows
            .take_events(|e| outputs.push(tagged(idx, EVENT, Output::Event(e))));
    }

    /// End of input: every flow ends.
    fn finish(&mut self, now: Timestamp) {
        let outputs = &mut self.outputs;
        self.flows.finish_all(now, &mut |ex| {
            outputs.push(tagged(u64::MAX, SWEPT, Output::Exchange(ex)))
        });
        self.events(u64::MAX);
    }

    /// The outputs so far, as a reply (counted in flight from now on). At
    /// one packet a sweep's events were drained before the packet's own
    /// exchanges; put them in `Order` (a stable sort keeps each phase's
    /// own order).
    fn reply(&mut self, batch: Batch, upto: u64, shared: &MergeShared) -> Reply {
        self.outputs.sort_by_key(|(o, _)| *o);
        shared.add_in_flight(&self.outputs);
        Reply::of(self.id, &self.flows, batch, upto, take(&mut self.outputs))
    }
}

/// A worker: its own flow table, fed batches until `Finish`.
fn work(
    id: usize,
    cfg: FlowConfig,
    backing: Option<Backing>,
    rx: Receiver<ToWorker>,
    tx: SyncSender<Reply>,
    shared: &MergeShared,
) {
    let _watch = PanicWatch(shared);
    let mut shard = Shard::new(id, cfg);
    let mut dying = Dying::default();
    let map: &[u8] = backing.as_ref().map_or(&[], |b| (**b).as_ref());
    while let Ok(msg) = rx.recv() {
        let (mut batch, end) = match msg {
            ToWorker::Batch(b) => (b, None),
            ToWorker::Finish(t) => (Batch::default(), Some(t)),
        };
        // Freed here, where they were allocated (see `Batch::dead`), one
        // per item (a batch has more items than it brings back exchanges).
        dying.take(&mut batch);
        // With many connections open, hints for the segments to come hide
        // their lookups' cache misses (see `FlowTable::prefetch_slot`).
        let hint = shard.flows.active_flows() >= PREFETCH_FROM_FLOWS;
        for (k, item) in batch.items.iter().enumerate() {
            if hint {
                if let Some(Item::Seg(next)) = batch.items.get(k + 2 * PREFETCH_AHEAD) {
                    shard.flows.prefetch_slot(next.src, next.dst);
                }
                if let Some(Item::Seg(next)) = batch.items.get(k + PREFETCH_AHEAD) {
                    shard.flows.prefetch_entry(next.src, next.dst);
                }
            }
            dying.drop_some(1, shared);
            let idx = match *item {
                Item::Sweep { idx, now } => {
                    shard.sweep(idx, now);
                    idx
                }
                Item::Seg(s) => {
                    shard.segment(&s.segment(map, &batch.bytes), s.idx, s.now);
                    s.idx
                }
                #[cfg(test)]
                Item::Crash => panic!("a bug in worker {id}"),
            };
            // A long batch of outputs (an eviction round) goes ahead in
            // chunks, so what waits in the bounded reply channel is bounded
            // too; never inside one packet's outputs (they are sorted
            // together).
            let next_idx = batch.items.get(k + 1).map(Item::idx);
            if shard.outputs.len() >= REPLY_CHUNK && next_idx != Some(idx) {
                let partial = shard.reply(Batch::default(), 0, shared);
                if tx.send(partial).is_err() {
                    return;
                }
            }
        }
        let upto = match end {
            None => batch.upto,
            Some(t) => {
                shard.finish(t);
                dying.drop_some(usize::MAX, shared);
                u64::MAX
            }
        };
        batch.clear();
        // Done with its payloads: their pages may go (see `update_hold`).
        if let Some(done) = shared.done.get(id) {
            done.store(upto, Ordering::Release);
        }
        let reply = shard.reply(batch, upto, shared);
        if tx.send(reply).is_err() || end.is_some() {
            return;
        }
    }
}

/// One pipeline or several workers, behind one interface for the loop.
pub enum Engine {
    One(Box<Pipeline>),
    Many(Box<Sharded>),
}

/// The sink the loop shares with the merging thread. One pipeline holds
/// its lock across packets ([`HeldSink`]: no other thread takes it then);
/// several workers hand it to their merging thread and the loop locks it
/// only to read or reconfigure it.
pub type SharedSink<S> = Arc<Mutex<S>>;

/// The sink's lock as one pipeline holds it from packet to packet (two
/// atomic operations a packet saved); `None` when not held. The loop drops
/// it before it locks the sink itself, or ticks or finishes the engine.
pub type HeldSink<'a, S> = Option<MutexGuard<'a, S>>;

impl Engine {
    /// One packet. One pipeline takes the sink's lock into `held` (if not
    /// held already) and keeps it there; several workers never hold it.
    pub fn packet<'a, S: ExchangeSink + Send + 'static>(
        &mut self,
        pkt: &RawPacket<'_>,
        sink: &'a SharedSink<S>,
        held: &mut HeldSink<'a, S>,
    ) {
        match self {
            Engine::One(p) => p.packet(pkt, &mut **held.get_or_insert_with(|| lock(sink))),
            Engine::Many(s) => s.packet(pkt, sink),
        }
    }

    pub fn tick<S: ExchangeSink + Send + 'static>(
        &mut self,
        wall: Timestamp,
        sink: &SharedSink<S>,
    ) {
        match self {
            Engine::One(p) => p.tick(wall, &mut *lock(sink)),
            Engine::Many(s) => s.tick(wall, sink),
        }
    }

    /// Everything still in flight reaches the sink before this returns.
    pub fn finish<S: ExchangeSink + Send + 'static>(&mut self, sink: &SharedSink<S>) {
        match self {
            Engine::One(p) => p.finish(&mut *lock(sink)),
            Engine::Many(s) => s.finish(sink),
        }
    }

    pub fn stats(&self) -> PipelineStats {
        match self {
            Engine::One(p) => p.stats(),
            Engine::Many(s) => s.stats(),
        }
    }

    pub fn set_classifier(&mut self, classifier: Classifier) {
        match self {
            Engine::One(p) => p.set_classifier(classifier),
            Engine::Many(s) => s.set_classifier(classifier),
        }
    }

    /// See [`Sharded::failed`] (one pipeline runs on the caller's thread:
    /// its panic is the caller's).
    pub fn failed(&self) -> Option<String> {
        match self {
            Engine::One(_) => None,
            Engine::Many(s) => s.failed(),
        }
    }
}

/// A live worker: reads its own handle until stopped, decoding and
/// reassembling; replies with each output as it comes, and with its
/// counters at least every [`LIVE_REPLY_EVERY`].
fn work_live(
    id: usize,
    mut source: LiveSource,
    decoder: DecoderConfig,
    cfg: FlowConfig,
    counters: Arc<LaneCounters>,
    tx: SyncSender<Reply>,
    shared: &MergeShared,
) {
    let _watch = PanicWatch(shared);
    let mut decoder = Decoder::new(decoder);
    let mut flows = FlowTable::new(cfg);
    let mut clock = Clock::default();
    let mut outputs: Vec<Tagged> = Vec::new();
    let mut last_reply = Instant::now();
    let tag = |out: Output| tagged(0, OWN, out);
    loop {
        let (end, tick) = match source.next_event() {
            Ok(Some(SourceEvent::Packet(pkt))) => {
                counters.packets.fetch_add(1, Ordering::Relaxed);
                counters
                    .bytes
                    .fetch_add(u64::from(pkt.wire_len), Ordering::Relaxed);
                let now = clock.observe(pkt.ts);
                let mut emit = |ex| outputs.push(tag(Output::Exchange(ex)));
                match decoder.decode(&pkt) {
                    Decoded::Tcp(seg) => flows.segment(&seg, now, &mut emit),
                    Decoded::Skipped(_) => flows.tick(now, &mut emit),
                }
                (false, false)
            }
            Ok(Some(SourceEvent::Tick(t))) => {
                let now = clock.observe(t);
                flows.tick(now, &mut |ex| outputs.push(tag(Output::Exchange(ex))));
                (false, true)
            }
            Ok(None) => (true, false),
            Err(e) => {
                // The caller's loop ends on it (through the Ticker).
                lock(&counters.failure).get_or_insert(e);
                (true, false)
            }
        };
        if end {
            let now = clock.now().unwrap_or_default();
            flows.finish_all(now, &mut |ex| outputs.push(tag(Output::Exchange(ex))));
        }
        flows.take_events(|e| outputs.push(tag(Output::Event(e))));
        // Outputs go at once (an exchange should not wait for the next
        // packet); the counters at least every LIVE_REPLY_EVERY.
        if end || tick || !outputs.is_empty() || last_reply.elapsed() >= LIVE_REPLY_EVERY {
            last_reply = Instant::now();
            let upto = if end { u64::MAX } else { 0 };
            shared.add_in_flight(&outputs);
            let reply = Reply {
                decode: Some(decoder.stats().clone()),
                ..Reply::of(id, &flows, Batch::default(), upto, take(&mut outputs))
            };
            if tx.send(reply).is_err() || end {
                return;
            }
        }
    }
}

/// How stale a live worker's counters may get.
const LIVE_REPLY_EVERY: Duration = Duration::from_millis(20);

/// The caller's packet source in live mode with several workers: a clock
/// tick every 100 ms (the loop then takes the workers' outputs, publishes
/// metrics, applies reloads), the handles' counters summed.
pub struct Ticker {
    interface: String,
    stop: StopFlag,
    every: Duration,
    counters: Vec<Arc<LaneCounters>>,
    drops: Vec<Arc<dyn DropReader>>,
}

impl PacketSource for Ticker {
    fn next_event(&mut self) -> Result<Option<SourceEvent<'_>>, CaptureError> {
        let until = Instant::now() + self.every;
        loop {
            if self.stop.is_stopped() {
                return Ok(None);
            }
            // One handle failing (the interface went away) leaves a share
            // of the flows unseen: the whole capture ends with its error.
            if let Some(e) = self.counters.iter().find_map(|c| lock(&c.failure).take()) {
                return Err(e);
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Some(SourceEvent::Tick(Timestamp::now_wall())));
            }
            std::thread::sleep(left.min(Duration::from_millis(20)));
        }
    }

    fn interface(&self) -> &str {
        &self.interface
    }

    /// Packets summed over handles; kernel drops summed (each handle has
    /// its own buffer), interface drops once (they are the interface's).
    fn stats(&self) -> SourceStats {
        let (packets, bytes) = LaneCounters::sum(&self.counters);
        let drops: Vec<_> = self.drops.iter().map(|d| d.read()).collect();
        SourceStats {
            packets,
            bytes,
            dropped: drops.iter().map(|d| d.kernel).sum(),
            if_dropped: drops.iter().map(|d| d.interface).max().unwrap_or(0),
            ..SourceStats::default()
        }
    }

    fn drop_readers(&self) -> Vec<Arc<dyn DropReader>> {
        self.drops.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::LinkType;
    use crate::classify::ClassifyConfig;
    use crate::pipeline::tests::frame;

    #[test]
    fn outputs_in_flight_are_all_released_and_accounted_back_to_zero() {
        const CONNS: u16 = 300;
        let req = b"GET /users/1 HTTP/1.1\r\nHost: api\r\n\r\n";
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        // Enough rounds that batches come back for reuse (each lane holds
        // LANE_DEPTH in its queue) and carry finished exchanges with them.
        const ROUNDS: u32 = 100;
        let (qlen, plen) = (req.len() as u32, resp.len() as u32);
        let mut frames = Vec::new();
        for r in 0..ROUNDS {
            for c in 0..CONNS {
                frames.push(frame(10_000 + c, 80, true, 1 + r * qlen, 1 + r * plen, req));
            }
            for c in 0..CONNS {
                let (seq, ack) = (1 + r * plen, 1 + (r + 1) * qlen);
                frames.push(frame(80, 10_000 + c, false, seq, ack, resp));
            }
        }
        let classifier = Classifier::new(ClassifyConfig::default()).unwrap();
        let flows = FlowConfig {
            memory_budget_bytes: 4 << 20,
            ..FlowConfig::default()
        };
        let mut sharded =
            Sharded::new(DecoderConfig::default(), flows, classifier, 2, None).unwrap();
        let seen = Arc::new(AtomicU64::new(0));
        let count = seen.clone();
        let sink = Arc::new(Mutex::new(move |ex: &Exchange| {
            if ex.status() == Some(200) {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
        for (i, f) in frames.iter().enumerate() {
            let pkt = RawPacket {
                ts: Timestamp::from_secs_micros(1_000, i as i64),
                link: LinkType::ETHERNET,
                data: f,
                wire_len: f.len() as u32,
            };
            sharded.packet(&pkt, &sink);
        }
        sharded.finish(&sink);
        // Finished exchanges went back to the workers that made them.
        assert!(sharded.shared.dead_dropped.load(Ordering::Relaxed) > 0);
        assert_eq!(
            seen.load(Ordering::Relaxed),
            u64::from(CONNS) * u64::from(ROUNDS)
        );
        assert_eq!(sharded.shared.in_flight.load(Ordering::Relaxed), 0);
        // What is still on its way back is within its cap.
        let dead = sharded.shared.dead.load(Ordering::Relaxed);
        assert!(dead <= sharded.shared.dead_cap);
    }

    /// One GET and its 200 on each of `conns` connections (ports from
    /// 10,000), requests first, as Ethernet frames.
    fn one_exchange_each(conns: u16) -> Vec<RawPacket<'static>> {
        let req: &[u8] = b"GET /users/1 HTTP/1.1\r\nHost: api\r\n\r\n";
        let resp: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let qlen = req.len() as u32;
        let frames = (0..conns)
            .map(|c| frame(10_000 + c, 80, true, 1, 1, req))
            .chain((0..conns).map(|c| frame(80, 10_000 + c, false, 1, 1 + qlen, resp)));
        frames
            .enumerate()
            .map(|(i, f)| {
                let f: &'static [u8] = Vec::leak(f);
                RawPacket {
                    ts: Timestamp::from_secs_micros(1_000, i as i64),
                    link: LinkType::ETHERNET,
                    data: f,
                    wire_len: f.len() as u32,
                }
            })
            .collect()
    }

    fn two_workers() -> Sharded {
        let classifier = Classifier::new(ClassifyConfig::default()).unwrap();
        Sharded::new(
            DecoderConfig::default(),
            FlowConfig::default(),
            classifier,
            2,
            None,
        )
        .unwrap()
    }

    #[test]
    fn a_worker_that_panics_is_reported_and_the_others_outputs_still_come() {
        const CONNS: u16 = 200;
        let mut sharded = two_workers();
        assert_eq!(sharded.failed(), None);
        let seen = Arc::new(AtomicU64::new(0));
        let count = seen.clone();
        let sink = Arc::new(Mutex::new(move |ex: &Exchange| {
            assert_eq!(ex.status(), Some(200));
            count.fetch_add(1, Ordering::Relaxed);
        }));
        sharded.crash(1);
        for pkt in one_exchange_each(CONNS) {
            sharded.packet(&pkt, &sink);
        }
        // Returns: nothing waits for the worker that is gone.
        sharded.finish(&sink);
        assert_eq!(sharded.failed().as_deref(), Some("apitap-worker-1"));
        // Worker 0's connections (about half) are all there.
        let seen = seen.load(Ordering::Relaxed);
        assert!(seen > 0 && seen < u64::from(CONNS), "{seen}");
        let on_lane_0 = (0..CONNS)
            .filter(|c| {
                let client = SocketAddr::from(([10, 0, 0, 1], 10_000 + c));
                let server = SocketAddr::from(([10, 0, 0, 2], 80));
                FlowKey::symmetric_hash_of(&client, &server).is_multiple_of(2)
            })
            .count();
        assert_eq!(seen, on_lane_0 as u64);
    }

    #[test]
    fn a_merging_thread_that_panics_is_reported_and_nothing_waits_for_it() {
        let mut sharded = two_workers();
        let sink = Arc::new(Mutex::new(|_: &Exchange| panic!("a bug in the sink")));
        // Enough that the workers' replies and the reader's batches fill
        // their bounded channels if nothing noticed the merge is gone.
        for _ in 0..20 {
            for pkt in one_exchange_each(300) {
                sharded.packet(&pkt, &sink);
            }
        }
        sharded.finish(&sink);
        assert_eq!(sharded.failed().as_deref(), Some("apitap-merge"));
    }

    #[test]
    fn dying_exchanges_go_a_few_at_a_time_and_uncount_what_was_counted() {
        use crate::http::exchange::Outcome;
        use crate::http::{Headers, Method, RequestHead};
        let ex = |n: usize| Exchange {
            ts: Timestamp::ZERO,
            client: "10.0.0.5:40000".parse().unwrap(),
            server: "10.0.0.9:80".parse().unwrap(),
            request: Some(RequestHead {
                method: Method::Get,
                target: vec![b'/'; n],
                version_minor: 1,
                cut: false,
                headers: Headers::default(),
            }),
            response: None,
            end_ts: None,
            request_body_bytes: 0,
            response_body_bytes: 0,
            request_body_prefix: vec![0; 3 * n],
            response_body_prefix: Vec::new(),
            outcome: Outcome::Unknown,
            capture_loss: false,
            failure: None,
            route: None,
            host: None,
            findings: Vec::new(),
        };
        let shared = MergeShared::new(1, usize::MAX);
        let mut batch = Batch::default();
        for n in 1..=5 {
            // As the merging thread counts them (`Output::heap_bytes`).
            let out = Output::Exchange(ex(n * 100));
            assert!(shared.try_add_dead(out.heap_bytes()));
            let Output::Exchange(e) = out else {
                unreachable!()
            };
            batch.dead.push(e);
        }
        let mut dying = Dying::default();
        dying.take(&mut batch);
        assert!(batch.dead.is_empty());
        dying.drop_some(2, &shared);
        assert_eq!(shared.dead_dropped.load(Ordering::Relaxed), 2);
        assert_eq!(dying.exchanges.len(), 3);
        assert!(shared.dead.load(Ordering::Relaxed) > 0);
        dying.drop_some(usize::MAX, &shared);
        assert_eq!(shared.dead_dropped.load(Ordering::Relaxed), 5);
        assert_eq!(shared.dead.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_in_flight_share_is_a_sixteenth_of_the_budget_within_bounds() {
        assert_eq!(in_flight_cap(512 << 20), 32 << 20);
        assert_eq!(in_flight_cap(8 << 20), IN_FLIGHT_MIN);
        assert_eq!(in_flight_cap(1 << 20), 512 << 10);
    }

    #[test]
    fn a_lane_reads_from_its_oldest_batch_not_done() {
        let mut lane = Lane::new(None);
        assert_eq!(lane.reads_from(0), None, "nothing sent, nothing open");
        lane.mapped_in_flight.extend([(10, 1_000), (20, 5_000)]);
        lane.batch_from = Some(9_000);
        assert_eq!(lane.reads_from(0), Some(1_000));
        assert_eq!(lane.reads_from(9), Some(1_000), "batch 10 not done");
        assert_eq!(lane.reads_from(10), Some(5_000));
        assert_eq!(
            lane.reads_from(25),
            Some(9_000),
            "the open batch still counts"
        );
        assert!(
            lane.mapped_in_flight.is_empty(),
            "done batches are forgotten"
        );
        lane.batch_from = None;
        assert_eq!(lane.reads_from(25), None);
        // Whichever lies first.
        lane.mapped_in_flight.push_back((30, 7_000));
        lane.batch_from = Some(6_000);
        assert_eq!(lane.reads_from(25), Some(6_000));
    }

    #[test]
    fn batches_span_little_of_the_mapped_file_and_the_hold_follows_them() {
        // One upload of 60 kB segments (TSO-sized): 256 of them to a batch
        // would span 15 MB of the file. Beside it, on the other worker, a
        // quiet upload: a small segment every 100 of the other's, whose
        // open batch would hold everything read since its first segment.
        let head = b"POST /upload HTTP/1.1\r\nHost: api\r\nContent-Length: 100000000\r\n\r\n";
        let body = vec![b'x'; 60_000];
        let lane = |port: u16| {
            let (c, s) = (
                SocketAddr::from(([10, 0, 0, 1], port)),
                SocketAddr::from(([10, 0, 0, 2], 80)),
            );
            FlowKey::symmetric_hash_of(&c, &s) % 2
        };
        let quiet_port = (40_001..).find(|&p| lane(p) != lane(40_000)).unwrap();
        let mut file = Vec::new();
        let mut at = Vec::new();
        let (mut seq, mut quiet_seq) = (1u32, 1u32);
        for k in 0..1000 {
            let p: &[u8] = if k == 0 { head } else { &body };
            let f = frame(40_000, 80, true, seq, 1, p);
            seq += p.len() as u32;
            at.push((file.len(), f.len()));
            file.extend_from_slice(&f);
            if k % 100 == 0 {
                let p: &[u8] = if k == 0 { head } else { b"y" };
                let f = frame(quiet_port, 80, true, quiet_seq, 1, p);
                quiet_seq += p.len() as u32;
                at.push((file.len(), f.len()));
                file.extend_from_slice(&f);
            }
        }
        let backing: Backing = Arc::new(file);
        let classifier = Classifier::new(ClassifyConfig::default()).unwrap();
        let hold = Hold::default();
        let flows = FlowConfig::default();
        let mut sharded = Sharded::new(
            DecoderConfig::default(),
            flows,
            classifier,
            2,
            Some(backing.clone()),
        )
        .unwrap()
        .holding(Some(hold.clone()));
        let sink = Arc::new(Mutex::new(|_: &Exchange| {}));
        let bytes: &[u8] = (*backing).as_ref();
        // What the hold keeps behind the reader is the batches a worker is
        // not done with (how many depends on the threads' progress) and
        // the lanes' open batches. Each spans little of the file: a batch
        // BATCH_MAPPED_BYTES of payload and a packet; an open one
        // BATCH_MAX_SPAN and a check's worth more at most. So as long as
        // workers keep up, LANE_DEPTH + 2 batches stay within HOLD_MAX.
        const PACKET: usize = 65_536;
        let span_bound = BATCH_MAX_SPAN + CHECK_EVERY_MAPPED + PACKET;
        let (mut widest, mut fullest, mut lowest) = (0, 0, usize::MAX);
        for (i, &(start, len)) in at.iter().enumerate() {
            let pkt = RawPacket {
                ts: Timestamp::from_secs_micros(1_000, i as i64),
                link: LinkType::ETHERNET,
                data: &bytes[start..start + len],
                wire_len: len as u32,
            };
            sharded.packet(&pkt, &sink);
            for lane in &sharded.lanes {
                if let Some(from) = lane.batch_from {
                    widest = widest.max(start + len - from);
                }
                fullest = fullest.max(lane.batch.mapped);
            }
            lowest = lowest.min(hold.from());
        }
        sharded.finish(&sink);
        eprintln!("open batches span at most {widest} bytes, hold {fullest} of payload");
        assert!(
            lowest < bytes.len(),
            "the hold never moved: the check measures nothing"
        );
        assert!(
            widest <= span_bound,
            "an open batch spans {widest} bytes of the file (bound {span_bound})"
        );
        assert!(
            fullest <= BATCH_MAPPED_BYTES + PACKET,
            "a batch holds {fullest} bytes of mapped payload"
        );
    }

    #[test]
    fn locate_finds_only_slices_inside_the_backing() {
        let data: Backing = std::sync::Arc::new(vec![0u8; 100]);
        let inner: &[u8] = (*data).as_ref();
        assert_eq!(locate(&inner[10..20], Some(&data)), Some(10));
        assert_eq!(locate(&inner[..0], Some(&data)), Some(0));
        let other = [0u8; 10];
        assert_eq!(locate(&other, Some(&data)), None);
        assert_eq!(locate(&inner[10..20], None), None);
    }
}
