//! Incremental HTTP/1.x message parser (stub).
// TEMPORARY STUB (replaced by the parser branch).
#![allow(unused_variables)]
use super::{Direction, MessageSink};
use crate::clock::Timestamp;
use crate::flow::reassembly::Chunk;

#[derive(Clone, Copy, Debug)]
pub struct ParserLimits {
    pub max_head_bytes: usize,
    pub max_headers: usize,
    pub body_prefix_bytes: usize,
}
impl Default for ParserLimits {
    fn default() -> Self {
        ParserLimits {
            max_head_bytes: 65536,
            max_headers: 128,
            body_prefix_bytes: 2048,
        }
    }
}
#[derive(Default, Clone, Debug, PartialEq, Eq)]
pub struct ParserStats {}
#[derive(Debug)]
pub struct MessageParser {
    stats: ParserStats,
}
impl MessageParser {
    pub fn new(dir: Direction, limits: ParserLimits, in_sync: bool) -> Self {
        unimplemented!()
    }
    pub fn feed(&mut self, chunk: &Chunk<'_>, sink: &mut impl MessageSink) {}
    pub fn gap(&mut self, seq: u32, len: u32, ts: Timestamp, sink: &mut impl MessageSink) {}
    pub fn end_of_stream(&mut self, ts: Timestamp, reset: bool, sink: &mut impl MessageSink) {}
    pub fn enter_tunnel(&mut self) {}
    pub fn resume_from_tunnel(&mut self) {}
    pub fn is_idle(&self) -> bool {
        true
    }
    pub fn in_tunnel(&self) -> bool {
        false
    }
    pub fn stats(&self) -> &ParserStats {
        &self.stats
    }
    pub fn buffered_bytes(&self) -> usize {
        0
    }
}
pub enum Sniff {
    Yes,
    No,
    NeedMore,
}
pub fn sniff_request_start(data: &[u8]) -> Sniff {
    Sniff::No
}
pub fn sniff_response_start(data: &[u8]) -> Sniff {
    Sniff::No
}
