//! HTTP/1.x: incremental message parsing, body framing, and request/response
//! pairing into exchanges.
//!
//! Contract: a [`parser::MessageParser`] per direction takes the reassembled
//! stream ([`crate::flow::reassembly::StreamEvent`]s) and reports message
//! heads and ends to a [`MessageSink`]; it never sees packets and never
//! buffers a body (it counts body bytes and keeps a bounded prefix). The
//! session pairs them FIFO. Incomplete input is not an error: the parser
//! waits for more bytes.

pub mod exchange;
pub mod parser;
pub mod session;

use crate::clock::Timestamp;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    ToServer,
    ToClient,
}

impl Direction {
    pub fn reverse(self) -> Direction {
        match self {
            Direction::ToServer => Direction::ToClient,
            Direction::ToClient => Direction::ToServer,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::ToServer => "request",
            Direction::ToClient => "response",
        }
    }
}

/// Where a message starts or ends in its stream, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamPos {
    /// Sequence number of the byte.
    pub seq: u32,
    /// ACK field of the segment that carried the byte.
    pub ack: u32,
    pub ts: Timestamp,
}

/// Request methods; the registered set of the OpenTelemetry conventions, plus
/// anything else a client sent (bounded by the head-size limit).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
    Other(Box<str>),
}

impl Method {
    pub fn parse(s: &str) -> Method {
        match s {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "CONNECT" => Method::Connect,
            "OPTIONS" => Method::Options,
            "TRACE" => Method::Trace,
            "PATCH" => Method::Patch,
            other => Method::Other(other.into()),
        }
    }
    pub fn as_str(&self) -> &str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Connect => "CONNECT",
            Method::Options => "OPTIONS",
            Method::Trace => "TRACE",
            Method::Patch => "PATCH",
            Method::Other(s) => s,
        }
    }
}

/// A message's header fields, in one allocation: each field is a record of
/// its name's and its value's lengths (4 bytes each, little-endian), then
/// the name and the value. (Two allocations, bytes and spans, cost a
/// malloc and a free more per head.)
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers {
    records: Vec<u8>,
    fields: u32,
}

/// Bytes before a record's name: the two lengths.
const RECORD_HEAD: usize = 8;

impl Headers {
    pub fn with_capacity(bytes: usize, fields: usize) -> Self {
        Headers {
            records: Vec::with_capacity(bytes + fields * RECORD_HEAD),
            fields: 0,
        }
    }

    /// Append one field; the value should already be trimmed of OWS.
    pub fn push(&mut self, name: &[u8], value: &[u8]) {
        // A head is bounded far below 4 GiB (ParserLimits::max_head_bytes).
        let len = |b: &[u8]| u32::try_from(b.len()).unwrap_or(u32::MAX).to_le_bytes();
        self.records.extend_from_slice(&len(name));
        self.records.extend_from_slice(&len(value));
        self.records.extend_from_slice(name);
        self.records.extend_from_slice(value);
        self.fields += 1;
    }

    /// All fields in order, as (name, value).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.iter_at().map(|(_, name, value)| (name, value))
    }

    /// All fields in order, as (where the value starts in [`Headers::bytes`],
    /// name, value).
    pub fn iter_at(&self) -> impl Iterator<Item = (usize, &[u8], &[u8])> + '_ {
        let all = self.records.as_slice();
        let mut rest = all;
        std::iter::from_fn(move || {
            let (head, body) = rest.split_first_chunk::<RECORD_HEAD>()?;
            let n = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
            let v = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
            let (name, body) = body.split_at_checked(n)?;
            let (value, body) = body.split_at_checked(v)?;
            rest = body;
            Some((all.len() - rest.len() - v, name, value))
        })
    }

    /// Every field's bytes, with the lengths between them: one haystack
    /// for a search that most heads do not match (a hit still has to be
    /// placed with [`Headers::iter_at`]).
    pub fn bytes(&self) -> &[u8] {
        &self.records
    }

    /// Values of every field named `name` (ASCII case-insensitive).
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// The first field named `name`.
    pub fn get<'a>(&'a self, name: &'a str) -> Option<&'a [u8]> {
        self.get_all(name).next()
    }

    pub fn len(&self) -> usize {
        self.fields as usize
    }

    /// Heap bytes held (for memory accounting).
    pub fn heap_bytes(&self) -> usize {
        self.records.capacity()
    }

    pub fn is_empty(&self) -> bool {
        self.fields == 0
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    pub method: Method,
    /// The raw request-target: everything between the first space and the
    /// last space before `HTTP/1.x` (SPEC's lenient request line).
    pub target: Vec<u8>,
    /// Minor version: 0 or 1.
    pub version_minor: u8,
    /// The capture cut this head short (snaplen) after its start line:
    /// `headers` are the fields whose lines ended before the cut, and a
    /// field not among them may still have been sent.
    pub cut: bool,
    pub headers: Headers,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub version_minor: u8,
    pub headers: Headers,
}

/// What the request a response answers was, as far as framing cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    Head,
    Connect,
    Other,
    /// The request was not seen (capture began mid-connection, or lost).
    Unknown,
}

/// The end of a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageEnd {
    /// The message's last byte (for a message without body, its head's).
    pub end: StreamPos,
    /// Body bytes after de-chunking (including bytes lost in gaps).
    pub body_bytes: u64,
    /// Body bytes that were lost in gaps and skipped by length.
    pub body_missing: u64,
    /// The first bytes of the de-chunked body, at most the configured prefix.
    pub body_prefix: Vec<u8>,
    /// False when the stream ended (FIN, RST, end of capture) before the
    /// framing said the message was done.
    pub complete: bool,
}

/// Why bytes could not be framed as HTTP/1.x.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("message head exceeds the size limit")]
    HeadTooLarge,
    #[error("invalid request line")]
    BadRequestLine,
    #[error("invalid status line")]
    BadStatusLine,
    #[error("invalid header field")]
    BadHeader,
    #[error("invalid chunked encoding")]
    BadChunk,
    #[error("invalid or conflicting Content-Length")]
    BadContentLength,
}

/// Receives what a parser recognises, in stream order.
pub trait MessageSink {
    fn request_head(&mut self, head: RequestHead, start: StreamPos);
    /// Returns what the answered request was, which decides the body framing
    /// (HEAD: none; CONNECT + 2xx: tunnel). Interim 1xx heads come here too.
    fn response_head(&mut self, head: ResponseHead, start: StreamPos) -> RequestKind;
    fn message_end(&mut self, dir: Direction, end: MessageEnd);
    /// Bytes that cannot be framed; the parser then looks for the next
    /// message start. `at` is where the bad message began.
    fn malformed(&mut self, dir: Direction, err: ParseError, at: StreamPos);
    /// After a gap the parser could not skip by length, it found the next
    /// message start at `at`, having dropped whatever message was in progress
    /// (`lost_message` says whether one was).
    fn resync(&mut self, dir: Direction, at: StreamPos, lost_message: bool);
    /// A gap the parser could not skip by length: next, a message in
    /// progress whose head was reported ends incomplete, and the parser
    /// looks for the next message start from `resumes`, the first byte
    /// after the gap. Whole messages may have been in it.
    fn lost_sync(&mut self, dir: Direction, resumes: StreamPos);
}

#[cfg(test)]
mod tests {
    use super::Headers;

    #[test]
    fn fields_come_back_in_order_whatever_their_lengths() {
        let long = vec![b'x'; 70_000];
        let fields: [(&[u8], &[u8]); 4] = [
            (b"Host", b"api"),
            (b"X-Empty", b""),
            (b"Cookie", &long),
            (b"host", b"second"),
        ];
        let mut h = Headers::with_capacity(0, 0);
        for (n, v) in fields {
            h.push(n, v);
        }
        assert_eq!(h.len(), 4);
        assert!(h.iter().eq(fields.iter().copied()));
        assert_eq!(h.get("HOST"), Some(&b"api"[..]));
        assert_eq!(h.get_all("host").count(), 2);
        assert_eq!(h.get("x-empty"), Some(&b""[..]));
        assert_eq!(h.get("absent"), None);
        assert!(h.heap_bytes() >= 70_000);
        assert!(Headers::default().is_empty() && Headers::default().iter().next().is_none());
    }
}
