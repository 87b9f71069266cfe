//! Fuzz drivers for apitap's parser entry points, one module per target.
//!
//! Each `fuzz_targets/NAME.rs` is one line that calls `NAME::run`. The input
//! formats are documented beside each `run`; `examples/seeds.rs` writes real
//! traffic in the same formats (the `encode_*` functions), so the seeds and
//! the drivers cannot drift apart.
//!
//! The drivers check invariants the module docs promise (stream positions
//! covered once and in order, one end per message head, memory within the
//! configured bounds), not only that nothing panics. A failed invariant is a
//! panic with a message saying which one.

pub mod capture;
pub mod classify;
pub mod decode;
pub mod flow;
pub mod http;
pub mod reassembly;
pub mod tls;

/// Reads the fuzz input front to back; past the end every read is `None`
/// (or an empty slice), so a driver simply stops.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.data.split_first()?;
        self.data = rest;
        Some(b)
    }

    pub fn u16(&mut self) -> Option<u16> {
        let b = self.array::<2>()?;
        Some(u16::from_le_bytes(b))
    }

    pub fn i16(&mut self) -> Option<i16> {
        let b = self.array::<2>()?;
        Some(i16::from_le_bytes(b))
    }

    pub fn u32(&mut self) -> Option<u32> {
        let b = self.array::<4>()?;
        Some(u32::from_le_bytes(b))
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.data.split_first_chunk::<N>()?;
        self.data = rest;
        Some(*head)
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// A tiny deterministic generator (xorshift32) for choices the input only
/// seeds, such as where a stream is split into chunks.
#[derive(Clone, Debug)]
pub struct Rng(u32);

impl Rng {
    pub fn new(seed: u32) -> Self {
        // xorshift has a fixed point at 0.
        Rng(seed ^ 0x9E37_79B9)
    }

    pub fn next_u32(&mut self) -> u32 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x
    }

    /// Uniform-ish in `1..=max` (`max` ≥ 1).
    pub fn between_1_and(&mut self, max: usize) -> usize {
        1 + (self.next_u32() as usize) % max.max(1)
    }
}

/// `a - b` in sequence space, as a signed distance.
pub fn seq_diff(a: u32, b: u32) -> i64 {
    i64::from(a.wrapping_sub(b) as i32)
}
