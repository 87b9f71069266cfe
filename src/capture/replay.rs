//! Replaying a capture file for demos and dashboard tests.
//!
//! Contract: [`ReplaySource`] yields the packets of a file like
//! [`FileSource`], but paced by their timestamps at `speed` times real time
//! (when given), and, with `looping`, starts the file again at its end with
//! timestamps shifted forward so time keeps going on (the shift is the
//! file's span plus one millisecond). It stops at the end (not looping) or
//! when its [`StopFlag`] is raised. Pacing is the only place here that reads
//! the wall clock and sleeps; the pipeline still sees packet time only.

use super::file::FileSource;
use super::mapped::{Hold, MappedPcap};
use super::{Backing, CaptureError, PacketSource, RawPacket, SourceEvent, SourceStats};
use crate::clock::Timestamp;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Raised from another thread (a signal handler's thread) to stop.
#[derive(Clone, Debug, Default)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    pub fn stop(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The file being read: mapped when it is a classic pcap on disk (the fast
/// path), streamed otherwise (pcapng, stdin).
enum Input {
    Mapped(MappedPcap),
    Stream(FileSource),
}

enum Next {
    Packet(Timestamp),
    Idle,
    End,
}

impl Input {
    fn open(path: &str, pager_thread: bool) -> Result<Input, CaptureError> {
        if path != "-" {
            if let Ok(Some(mut m)) = MappedPcap::open(path) {
                if pager_thread {
                    m.page_on_thread();
                }
                return Ok(Input::Mapped(m));
            }
        }
        Ok(Input::Stream(FileSource::open(path)?))
    }

    /// Advance: a packet is now current, or a pipe had nothing to read
    /// for a while ([`super::file::IDLE_WAIT`]), or the input ended.
    fn advance(&mut self) -> Result<Next, CaptureError> {
        Ok(match self {
            Input::Mapped(m) => m.next_packet().map_or(Next::End, |p| Next::Packet(p.ts)),
            Input::Stream(f) => match f.next_event()? {
                Some(SourceEvent::Packet(p)) => Next::Packet(p.ts),
                Some(SourceEvent::Tick(_)) => Next::Idle,
                None => Next::End,
            },
        })
    }

    fn current(&self) -> Option<RawPacket<'_>> {
        match self {
            Input::Mapped(m) => m.current(),
            Input::Stream(f) => f.current(),
        }
    }

    fn stats(&self) -> SourceStats {
        match self {
            Input::Mapped(m) => m.stats(),
            Input::Stream(f) => f.stats(),
        }
    }

    fn truncation(&self) -> Option<&str> {
        match self {
            Input::Mapped(m) => m.truncation(),
            Input::Stream(f) => f.truncation(),
        }
    }
}

pub struct ReplaySource {
    path: String,
    file: Input,
    speed: Option<f64>,
    looping: bool,
    stop: StopFlag,
    /// Added to every timestamp of the current pass.
    shift: i64,
    /// First and last timestamps of the file (known after the first pass).
    first: Option<Timestamp>,
    last: Option<Timestamp>,
    /// Wall time at which the pacing started, and the packet time it maps to.
    origin: Option<(Instant, Timestamp)>,
    /// Stats of the passes before this one.
    done: SourceStats,
    passes: u64,
    pager_thread: bool,
}

impl ReplaySource {
    pub fn open(
        path: &str,
        speed: Option<f64>,
        looping: bool,
        stop: StopFlag,
    ) -> Result<Self, CaptureError> {
        if looping && path == "-" {
            return Err(CaptureError::Read {
                path: path.into(),
                reason: "--replay-loop needs a file that can be read again, not stdin".into(),
            });
        }
        Ok(ReplaySource {
            path: path.to_string(),
            file: Input::open(path, false)?,
            pager_thread: false,
            speed,
            looping,
            stop,
            shift: 0,
            first: None,
            last: None,
            origin: None,
            done: SourceStats::default(),
            passes: 0,
        })
    }

    /// A mapped file's pages are mapped in and given back on a thread of
    /// their own (see [`MappedPcap::page_on_thread`]).
    pub fn page_on_thread(mut self) -> Self {
        self.pager_thread = true;
        if let Input::Mapped(m) = &mut self.file {
            m.page_on_thread();
        }
        self
    }

    /// How many times the file was read to its end.
    pub fn passes(&self) -> u64 {
        self.passes
    }

    /// Sleep until packet time `ts` is due at the replay speed; false when
    /// stopped meanwhile.
    fn pace(&mut self, ts: Timestamp) -> bool {
        let Some(speed) = self.speed else {
            return true;
        };
        let (start, t0) = *self.origin.get_or_insert((Instant::now(), ts));
        let due = Duration::from_secs_f64(ts.micros_since(t0) as f64 / 1e6 / speed);
        loop {
            if self.stop.is_stopped() {
                return false;
            }
            let elapsed = start.elapsed();
            if elapsed >= due {
                return true;
            }
            // Sleep in short steps so a stop is seen quickly.
            std::thread::sleep((due - elapsed).min(Duration::from_millis(100)));
        }
    }
}

impl PacketSource for ReplaySource {
    fn next_event(&mut self) -> Result<Option<SourceEvent<'_>>, CaptureError> {
        loop {
            if self.stop.is_stopped() {
                return Ok(None);
            }
            // Peek the timestamp first: pacing needs `&mut self`, the packet
            // borrows the file.
            let ts = match self.file.advance()? {
                Next::Packet(ts) => ts,
                // The caller hands on what it holds (at the last packet's
                // time: a file's clock is its packets') and looks at its
                // stop flag; before any packet there is nothing to hold.
                Next::Idle => match self.last {
                    Some(t) => {
                        return Ok(Some(SourceEvent::Tick(t.saturating_add_micros(self.shift))))
                    }
                    None => continue,
                },
                Next::End => {
                    self.passes += 1;
                    if !self.looping || self.file.truncation().is_some() || self.last.is_none() {
                        return Ok(None);
                    }
                    let span = self
                        .last
                        .unwrap_or_default()
                        .micros_since(self.first.unwrap_or_default());
                    self.shift += span + 1_000;
                    let stats = self.file.stats();
                    self.done.packets += stats.packets;
                    self.done.bytes += stats.bytes;
                    self.done.corrupt_blocks += stats.corrupt_blocks;
                    self.file = Input::open(&self.path, self.pager_thread)?;
                    continue;
                }
            };
            if self.passes == 0 {
                self.first.get_or_insert(ts);
                self.last = Some(self.last.map_or(ts, |l| l.max(ts)));
            }
            let shifted = ts.saturating_add_micros(self.shift);
            if !self.pace(shifted) {
                return Ok(None);
            }
            return Ok(self.file.current().map(|mut p| {
                p.ts = shifted;
                SourceEvent::Packet(p)
            }));
        }
    }

    fn interface(&self) -> &str {
        "file"
    }

    fn stats(&self) -> SourceStats {
        let s = self.file.stats();
        SourceStats {
            packets: self.done.packets + s.packets,
            bytes: self.done.bytes + s.bytes,
            corrupt_blocks: self.done.corrupt_blocks + s.corrupt_blocks,
            ..SourceStats::default()
        }
    }

    fn truncation(&self) -> Option<&str> {
        self.file.truncation()
    }

    fn streamed(&self) -> bool {
        matches!(&self.file, Input::Stream(f) if f.streamed())
    }

    /// The mapped file, unless looping (each pass maps the file anew).
    fn backing(&self) -> Option<(Backing, Hold)> {
        match &self.file {
            Input::Mapped(m) if !self.looping => Some((m.backing(), m.hold())),
            _ => None,
        }
    }
}
