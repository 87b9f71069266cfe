//! Capture time.
//!
//! Contract: every time the pipeline reasons about (durations, timeouts, idle
//! expiry, JWT expiry) is a [`Timestamp`] taken from packet headers, or, in
//! live mode, from the wall-clock tick the capture loop feeds in as an input.
//! Nothing below `main`/`daemon` reads the system clock, so a replay of a file
//! is deterministic. [`Clock`] makes time monotonic: a timestamp that goes
//! backwards (two CPUs feeding one capture) counts as the previous one.

use std::fmt;

/// Microseconds since the Unix epoch, UTC.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    pub const ZERO: Timestamp = Timestamp(0);

    pub const fn from_micros(us: i64) -> Self {
        Timestamp(us)
    }

    pub const fn from_secs_micros(secs: i64, micros: i64) -> Self {
        Timestamp(secs.saturating_mul(1_000_000).saturating_add(micros))
    }

    pub const fn as_micros(self) -> i64 {
        self.0
    }

    /// Whole seconds since the epoch (floor).
    pub const fn as_secs(self) -> i64 {
        self.0.div_euclid(1_000_000)
    }

    pub const fn saturating_add_micros(self, us: i64) -> Self {
        Timestamp(self.0.saturating_add(us))
    }

    /// `self - earlier` in microseconds, never negative.
    pub const fn micros_since(self, earlier: Timestamp) -> i64 {
        let d = self.0.saturating_sub(earlier.0);
        if d < 0 {
            0
        } else {
            d
        }
    }

    /// The wall clock, for the live-mode tick only (see module doc).
    pub fn now_wall() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(d.as_micros().min(i64::MAX as u128) as i64)
    }
}

/// RFC 3339, UTC, microseconds: `2024-05-01T12:00:00.123456Z`.
impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.as_secs();
        let micros = self.0.rem_euclid(1_000_000);
        match time::OffsetDateTime::from_unix_timestamp(secs) {
            Ok(t) => write!(
                f,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                micros
            ),
            Err(_) => write!(f, "{}.{:06}", secs, micros),
        }
    }
}

/// Monotonic capture clock (see module doc).
#[derive(Debug, Default, Clone)]
pub struct Clock {
    last: Option<Timestamp>,
}

impl Clock {
    /// Feed one observed time; returns the time the pipeline should use.
    pub fn observe(&mut self, ts: Timestamp) -> Timestamp {
        let t = match self.last {
            Some(last) if ts < last => last,
            _ => ts,
        };
        self.last = Some(t);
        t
    }

    /// The latest time seen, if any.
    pub fn now(&self) -> Option<Timestamp> {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_rfc3339_micros() {
        let cases = [
            (0, "1970-01-01T00:00:00.000000Z"),
            (1_714_564_800_123_456, "2024-05-01T12:00:00.123456Z"),
            (-1, "1969-12-31T23:59:59.999999Z"),
        ];
        for (us, want) in cases {
            assert_eq!(Timestamp::from_micros(us).to_string(), want);
        }
    }

    #[test]
    fn clock_never_goes_backwards() {
        let mut c = Clock::default();
        assert_eq!(c.observe(Timestamp(10)), Timestamp(10));
        assert_eq!(c.observe(Timestamp(5)), Timestamp(10));
        assert_eq!(c.observe(Timestamp(12)), Timestamp(12));
    }
}
