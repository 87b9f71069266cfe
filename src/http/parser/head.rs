//! Message heads: start-line sniffing and parsing, the header block, and the
//! framing fields (Content-Length, Transfer-Encoding).
//!
//! Everything here works on one complete slice (a head, a line); the
//! incremental state machine in the parent module decides which bytes those
//! are. Nothing here allocates except the [`Headers`] a parsed head owns.

use std::borrow::Cow;

use memchr::memchr;

use super::{LazyStats, ParserLimits};
use crate::http::{Direction, Headers, Method, ParseError, RequestHead, ResponseHead};

/// Whether bytes start an HTTP/1.x message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sniff {
    Yes,
    No,
    /// A prefix of a possible start: undecided until more bytes arrive.
    NeedMore,
}

/// Longest method token accepted (the longest registered method is 17).
const MAX_METHOD_LEN: usize = 20;

/// Headers parsed on the stack by the strict fast path; a head with more
/// goes to the lenient path, which enforces `max_headers` itself.
const STACK_HEADERS: usize = 64;

fn is_method_byte(b: u8) -> bool {
    b.is_ascii_uppercase() || b == b'-' || b == b'_'
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Does `data` start with a request line: `METHOD SP target SP HTTP/1.x`?
///
/// The method is 1..=20 bytes of `A-Z`, `-`, `_` (strict enough that TLS,
/// SSH and binary protocols are rejected at their first bytes); the target
/// is lenient (see [`RequestLine`]); the line must be complete to say `Yes`,
/// so the HTTP/2 preface (`PRI * HTTP/2.0`) is `No`.
pub fn sniff_request_start(data: &[u8]) -> Sniff {
    for (k, &b) in data.iter().enumerate() {
        if b == b' ' && k > 0 {
            return match memchr(b'\n', data) {
                None => Sniff::NeedMore,
                Some(lf) if RequestLine::parse(&data[..lf]).is_some() => Sniff::Yes,
                Some(_) => Sniff::No,
            };
        }
        if k >= MAX_METHOD_LEN || !is_method_byte(b) {
            return Sniff::No;
        }
    }
    Sniff::NeedMore
}

/// Does `data` start with a status line: `HTTP/1.x SP+ 3DIGIT (SP|HT|CR|LF)`,
/// the status at least 100? `Yes` as soon as the byte after the status code
/// is seen; the reason phrase is not needed.
pub fn sniff_response_start(data: &[u8]) -> Sniff {
    const PREFIX: &[u8] = b"HTTP/1.";
    let n = data.len().min(PREFIX.len());
    if data[..n] != PREFIX[..n] {
        return Sniff::No;
    }
    let mut k = PREFIX.len();
    match data.get(k) {
        None => return Sniff::NeedMore,
        Some(b'0' | b'1') => k += 1,
        Some(_) => return Sniff::No,
    }
    match data.get(k) {
        None => return Sniff::NeedMore,
        Some(b' ') => {}
        Some(_) => return Sniff::No,
    }
    while data.get(k) == Some(&b' ') {
        k += 1;
    }
    for d in 0..3 {
        match data.get(k + d) {
            None => return Sniff::NeedMore,
            Some(b'0') if d == 0 => return Sniff::No,
            Some(b) if b.is_ascii_digit() => {}
            Some(_) => return Sniff::No,
        }
    }
    match data.get(k + 3) {
        None => Sniff::NeedMore,
        Some(b' ' | b'\t' | b'\r' | b'\n') => Sniff::Yes,
        Some(_) => Sniff::No,
    }
}

/// A request line, parsed leniently per SPEC: the target is everything
/// between the first space and the last space before `HTTP/1.x`, so raw
/// spaces, control and non-ASCII bytes in it are kept (they are findings,
/// not framing errors). Runs of spaces around the target are delimiters.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct RequestLine<'a> {
    pub method: &'a [u8],
    pub target: &'a [u8],
    pub minor: u8,
    /// More than one space between method, target and version.
    pub multiple_spaces: bool,
}

impl<'a> RequestLine<'a> {
    /// `line` excludes the LF; a trailing CR is ignored.
    pub fn parse(line: &'a [u8]) -> Option<Self> {
        let line = strip_cr(line);
        let sp = line.iter().position(|&b| b == b' ')?;
        let method = &line[..sp];
        if method.is_empty()
            || method.len() > MAX_METHOD_LEN
            || !method.iter().all(|&b| is_method_byte(b))
        {
            return None;
        }
        let rest = &line[sp + 1..];
        let (before, version) = rest.split_at(rest.len().checked_sub(8)?);
        let minor = match version {
            b"HTTP/1.0" => 0,
            b"HTTP/1.1" => 1,
            _ => return None,
        };
        let raw = before.strip_suffix(b" ")?;
        let start = raw.iter().position(|&b| b != b' ')?;
        let end = raw.iter().rposition(|&b| b != b' ')? + 1;
        Some(RequestLine {
            method,
            target: &raw[start..end],
            minor,
            multiple_spaces: start > 0 || end < raw.len(),
        })
    }
}

/// A status line: `HTTP/1.x SP+ 3DIGIT [(SP|HT) reason]`, lenient on a
/// missing reason and on repeated spaces; a status below 100 is invalid.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct StatusLine {
    pub status: u16,
    pub minor: u8,
    pub multiple_spaces: bool,
    pub no_reason: bool,
}

impl StatusLine {
    pub fn parse(line: &[u8]) -> Option<Self> {
        let line = strip_cr(line);
        let rest = line.strip_prefix(b"HTTP/1.")?;
        let (&v, rest) = rest.split_first()?;
        let minor = match v {
            b'0' => 0,
            b'1' => 1,
            _ => return None,
        };
        let spaces = rest.iter().take_while(|&&b| b == b' ').count();
        if spaces == 0 {
            return None;
        }
        let rest = &rest[spaces..];
        let digits = rest.get(..3)?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let status = digits
            .iter()
            .fold(0u16, |a, &d| a * 10 + u16::from(d - b'0'));
        if status < 100 {
            return None;
        }
        let after = &rest[3..];
        // As sniffing: SP/HT before the reason; a stray CR is tolerated so
        // that every line sniffed `Yes` parses.
        match after.first() {
            None | Some(b' ' | b'\t' | b'\r') => {}
            Some(_) => return None,
        }
        Some(StatusLine {
            status,
            minor,
            multiple_spaces: spaces > 1,
            no_reason: trim_ows(after).is_empty(),
        })
    }
}

/// Parse a header block (the lines after the start line, through the empty
/// line). Tries `httparse`'s strict parser first (fast, SIMD); only a block
/// it rejects goes through the lenient line parser, which counts each
/// deviation it tolerates. Both agree on valid input.
///
/// Why not httparse's own leniency switches: its public `parse_headers`
/// takes no `ParserConfig`, the switches exist only for whole requests or
/// responses (and mostly for responses), and a lenient httparse cannot tell
/// which deviation it tolerated, so nothing could be counted.
pub(super) fn parse_header_block(
    block: &[u8],
    limits: &ParserLimits,
    stats: &mut LazyStats,
) -> Result<Headers, ParseError> {
    let mut stack = [httparse::EMPTY_HEADER; STACK_HEADERS];
    let n = limits.max_headers.min(STACK_HEADERS);
    if let Ok(httparse::Status::Complete((len, fields))) =
        httparse::parse_headers(block, &mut stack[..n])
    {
        if len == block.len() {
            let bytes = fields.iter().map(|h| h.name.len() + h.value.len()).sum();
            let mut headers = Headers::with_capacity(bytes, fields.len());
            for h in fields {
                headers.push(h.name.as_bytes(), h.value);
            }
            return Ok(headers);
        }
    }
    parse_header_block_lenient(block, limits, stats)
}

/// Line by line; what servers commonly tolerate is kept and counted, what
/// cannot be a field is skipped and counted. Only too many fields fails.
fn parse_header_block_lenient(
    block: &[u8],
    limits: &ParserLimits,
    stats: &mut LazyStats,
) -> Result<Headers, ParseError> {
    // (name, value): a value is owned only when obs-fold joined lines.
    let mut fields: Vec<(&[u8], Cow<'_, [u8]>)> = Vec::new();
    let mut rest = block;
    // Whether the last line was a field (so a folded line may continue it).
    let mut foldable = false;
    while !rest.is_empty() {
        let (line, next) = match memchr(b'\n', rest) {
            Some(lf) => (&rest[..lf], &rest[lf + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        rest = next;
        let line = strip_cr(line);
        if line.is_empty() {
            break;
        }
        if matches!(line[0], b' ' | b'\t') {
            match fields.last_mut() {
                Some((_, value)) if foldable => {
                    // RFC 9112 §5.2: replace obs-fold with SP.
                    let more = trim_ows(line);
                    let v = value.to_mut();
                    if !more.is_empty() {
                        if !v.is_empty() {
                            v.push(b' ');
                        }
                        v.extend_from_slice(more);
                    }
                    stats.get().obs_fold += 1;
                }
                // RFC 9112 §2.2: a whitespace-preceded line before the first
                // field is consumed without further processing.
                _ => stats.get().whitespace_line_skipped += 1,
            }
            continue;
        }
        foldable = false;
        let Some(colon) = memchr(b':', line) else {
            stats.get().header_without_colon += 1;
            continue;
        };
        let raw_name = &line[..colon];
        let name = trim_ows(raw_name);
        if name.len() != raw_name.len() {
            stats.get().space_before_colon += 1;
        }
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) || raw_name.first() != name.first()
        {
            stats.get().invalid_header_name += 1;
            continue;
        }
        let value = trim_ows(&line[colon + 1..]);
        if value.iter().any(|&b| b != b'\t' && (b < 0x20 || b == 0x7f)) {
            stats.get().control_in_header_value += 1;
        }
        if fields.len() >= limits.max_headers {
            stats.get().too_many_headers += 1;
            return Err(ParseError::HeadTooLarge);
        }
        fields.push((name, Cow::Borrowed(value)));
        foldable = true;
    }
    let bytes = fields.iter().map(|(n, v)| n.len() + v.len()).sum();
    let mut headers = Headers::with_capacity(bytes, fields.len());
    for (name, value) in &fields {
        headers.push(name, value);
    }
    Ok(headers)
}

/// What the framing fields of a head say, before the status and the
/// request kind are applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FramingFields {
    /// `None`: no Transfer-Encoding; `Some(true)`: its last coding is
    /// chunked; `Some(false)`: present, last coding something else.
    pub chunked: Option<bool>,
    /// `Ok(None)`: no Content-Length.
    pub length: Result<Option<u64>, ParseError>,
}

impl FramingFields {
    pub fn of(headers: &Headers, stats: &mut LazyStats) -> Self {
        let mut chunked = None;
        let mut length: Option<u64> = None;
        let mut cl_values = 0u32;
        let mut cl_bad = false;
        let mut cl_conflict = false;
        for (name, value) in headers.iter() {
            if name.eq_ignore_ascii_case(b"transfer-encoding") {
                // The last coding of the last field decides; empty list
                // elements are allowed (RFC 9110 §5.6.1) and ignored.
                if let Some(last) = value
                    .split(|&b| b == b',')
                    .map(|c| trim_ows(c.split(|&b| b == b';').next().unwrap_or(c)))
                    .rfind(|c| !c.is_empty())
                {
                    chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
                }
            } else if name.eq_ignore_ascii_case(b"content-length") {
                for element in value.split(|&b| b == b',') {
                    cl_values += 1;
                    match parse_decimal(trim_ows(element)) {
                        Some(n) => match length {
                            Some(l) if l != n => cl_conflict = true,
                            _ => length = Some(n),
                        },
                        None => cl_bad = true,
                    }
                }
            }
        }
        let length = if cl_bad {
            stats.get().invalid_content_length += 1;
            Err(ParseError::BadContentLength)
        } else if cl_conflict {
            stats.get().conflicting_content_length += 1;
            Err(ParseError::BadContentLength)
        } else {
            if cl_values > 1 {
                stats.get().duplicate_identical_content_length += 1;
            }
            Ok(length)
        };
        FramingFields { chunked, length }
    }
}

/// 1..=19 ASCII digits (fits u64); no sign, no spaces.
fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0u64, |a, &d| a * 10 + u64::from(d - b'0')))
}

/// A chunk-size line (without its LF): hex size, optional whitespace and
/// extensions (ignored). `None` when it isn't one or the size overflows.
pub(super) fn parse_chunk_size_line(line: &[u8]) -> Option<u64> {
    let line = strip_cr(line);
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return None;
    }
    let mut size: u64 = 0;
    for &b in &line[..digits] {
        let d = (b as char).to_digit(16)?;
        size = size.checked_mul(16)?.checked_add(u64::from(d))?;
    }
    match trim_ows(&line[digits..]).first() {
        None | Some(b';') => Some(size),
        Some(_) => None,
    }
}

/// A head, parsed: the head for the sink and its framing fields.
pub(super) enum ParsedHead {
    Request(RequestHead, FramingFields),
    Response(ResponseHead, FramingFields),
}

/// Parse a complete head (start line through the empty line).
pub(super) fn parse_head(
    dir: Direction,
    head: &[u8],
    limits: &ParserLimits,
    stats: &mut LazyStats,
) -> Result<ParsedHead, ParseError> {
    let bad_start = match dir {
        Direction::ToServer => ParseError::BadRequestLine,
        Direction::ToClient => ParseError::BadStatusLine,
    };
    let lf = memchr(b'\n', head).ok_or(bad_start)?;
    if has_bare_lf(head) {
        stats.get().bare_lf += 1;
    }
    let (line, block) = (&head[..lf], &head[lf + 1..]);
    match dir {
        Direction::ToServer => {
            let rl = RequestLine::parse(line).ok_or(bad_start)?;
            let method = std::str::from_utf8(rl.method).map_err(|_| bad_start)?;
            if rl.multiple_spaces {
                stats.get().multiple_spaces_in_start_line += 1;
            }
            // Both kinds are outside 0x21..=0x7e, which most targets are
            // not: one pass without early exit (vector code) rules both out.
            let t = rl.target;
            if t.iter()
                .fold(false, |odd, &b| odd | !(0x21..0x7f).contains(&b))
            {
                if t.iter().any(|&b| b == b' ' || b == b'\t') {
                    stats.get().spaces_in_target += 1;
                }
                if t.iter().any(|&b| !(0x20..0x7f).contains(&b)) {
                    stats.get().control_or_non_ascii_in_target += 1;
                }
            }
            let headers = parse_header_block(block, limits, stats)?;
            let framing = FramingFields::of(&headers, stats);
            let head = RequestHead {
                method: Method::parse(method),
                target: rl.target.to_vec(),
                version_minor: rl.minor,
                cut: false,
                headers,
            };
            Ok(ParsedHead::Request(head, framing))
        }
        Direction::ToClient => {
            let sl = StatusLine::parse(line).ok_or(bad_start)?;
            if sl.multiple_spaces {
                stats.get().multiple_spaces_in_start_line += 1;
            }
            if sl.no_reason {
                stats.get().status_without_reason += 1;
            }
            let headers = parse_header_block(block, limits, stats)?;
            let framing = FramingFields::of(&headers, stats);
            let head = ResponseHead {
                status: sl.status,
                version_minor: sl.minor,
                headers,
            };
            Ok(ParsedHead::Response(head, framing))
        }
    }
}

/// Does a line of `head` end in a bare LF (no CR before it)? No early
/// exit: one pass of vector code, cheaper than a search per line.
fn has_bare_lf(head: &[u8]) -> bool {
    let after = head.get(1..).unwrap_or_default();
    head.first() == Some(&b'\n')
        || head.iter().zip(after).fold(false, |bare, (&prev, &b)| {
            bare | ((b == b'\n') & (prev != b'\r'))
        })
}

/// End of the head starting at `h[0]`: the index just past the first empty
/// line, looking at LFs from `from` on. CRLF or bare LF both end lines.
pub(super) fn find_head_end(h: &[u8], from: usize) -> Option<usize> {
    let from = from.min(h.len());
    for p in memchr::memchr_iter(b'\n', &h[from..]) {
        let p = from + p;
        match h.get(p + 1) {
            Some(b'\n') => return Some(p + 2),
            Some(b'\r') if h.get(p + 2) == Some(&b'\n') => return Some(p + 3),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod bare_lf_tests {
    use super::has_bare_lf;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn as_a_search_of_each_line_end_finds(
            head in proptest::collection::vec(proptest::sample::select(b"\r\nab".to_vec()), 0..80)
        ) {
            let plain = memchr::memchr_iter(b'\n', &head).any(|p| p == 0 || head[p - 1] != b'\r');
            prop_assert_eq!(has_bare_lf(&head), plain);
        }
    }

    #[test]
    fn table() {
        assert!(!has_bare_lf(b""));
        assert!(has_bare_lf(b"\n"));
        assert!(!has_bare_lf(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(has_bare_lf(b"GET / HTTP/1.1\r\nHost: a\n\r\n"));
        assert!(has_bare_lf(b"GET / HTTP/1.1\r\nHost: a\r\n\n"));
    }
}

#[cfg(test)]
mod header_block_tests {
    use super::*;
    use crate::http::parser::ParserStats;
    use proptest::prelude::*;

    /// Header blocks made of pieces that httparse's strict parser takes or
    /// refuses: names, colons, OWS, obs-text, controls, folds, bare LFs.
    fn block() -> impl Strategy<Value = Vec<u8>> {
        let piece = proptest::sample::select(vec![
            &b"Host"[..],
            b"X-A",
            b"a",
            b":",
            b": ",
            b" ",
            b"\t",
            b"v",
            b"\r\n",
            b"\n",
            b"\x80",
            b"\x7f",
            b"\x01",
            b"=",
            b"(",
            b"\"",
        ]);
        proptest::collection::vec(piece, 0..40).prop_map(|pieces| {
            let mut b = pieces.concat();
            b.extend_from_slice(b"\r\n\r\n");
            b
        })
    }

    proptest! {
        /// `parse_header_block`'s promise: where httparse takes a whole
        /// block, the lenient parser reads the same fields in the same
        /// order and counts no deviation (so which of the two read a block
        /// never shows in the output).
        #[test]
        fn the_lenient_parser_agrees_with_httparse_where_it_accepts(block in block()) {
            let mut stack = [httparse::EMPTY_HEADER; 64];
            if let Ok(httparse::Status::Complete((len, fields))) =
                httparse::parse_headers(&block, &mut stack)
            {
                if len == block.len() {
                    let strict: Vec<(&[u8], &[u8])> =
                        fields.iter().map(|h| (h.name.as_bytes(), h.value)).collect();
                    let mut stats = LazyStats::default();
                    let lenient =
                        parse_header_block_lenient(&block, &ParserLimits::default(), &mut stats)
                            .expect("within the default limits");
                    let got: Vec<(&[u8], &[u8])> = lenient.iter().collect();
                    prop_assert_eq!(got, strict);
                    prop_assert_eq!(stats.snapshot(), ParserStats::default());
                }
            }
        }
    }
}

#[cfg(test)]
mod start_line_tests {
    use super::*;
    use proptest::prelude::*;

    /// One of `pieces`.
    fn one(pieces: &[&'static [u8]]) -> impl Strategy<Value = &'static [u8]> {
        proptest::sample::select(pieces.to_vec())
    }

    /// Some of `pieces`, joined.
    fn some(pieces: &[&'static [u8]]) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(one(pieces), 0..6).prop_map(|p| p.concat())
    }

    /// Start lines shaped like real ones, from parts httparse's strict
    /// parser takes or refuses.
    fn request_line() -> impl Strategy<Value = Vec<u8>> {
        let sep: &[&[u8]] = &[b" ", b"  ", b"\t", b""];
        (
            one(&[b"GET", b"get", b"M-SEARCH", b"G\x80T", b""]),
            one(sep),
            some(&[
                b"/", b"a", b"?q=1", b"%20", b"\t", b"\x01", b"\x80", b" ", b"*",
            ]),
            one(sep),
            one(&[
                b"HTTP/1.1",
                b"HTTP/1.0",
                b"HTTP/2.0",
                b"http/1.1",
                b"HTTP/1.1 ",
            ]),
        )
            .prop_map(|(m, s1, t, s2, v)| [m, s1, &t, s2, v].concat())
    }

    fn status_line() -> impl Strategy<Value = Vec<u8>> {
        let sep: &[&[u8]] = &[b" ", b"  ", b"\t", b""];
        (
            one(&[b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2", b"http/1.1"]),
            one(sep),
            one(&[b"200", b"404", b"099", b"1000", b"20"]),
            one(sep),
            some(&[b"OK", b"Not Found", b" ", b"\t", b"\x80", b"\x01"]),
        )
            .prop_map(|(v, s1, c, s2, r)| [v, s1, c, s2, &r].concat())
    }

    proptest! {
        /// Where httparse takes a request line, the lenient one reads the
        /// same method, target and version, and sees nothing to count.
        #[test]
        fn request_lines_agree_with_httparse_where_it_accepts(line in request_line()) {
            let mut headers = [httparse::EMPTY_HEADER; 1];
            let mut req = httparse::Request::new(&mut headers);
            let head = [&line[..], b"\r\n\r\n"].concat();
            // apitap takes methods of upper-case letters, `-` and `_` (every
            // registered one; what tells HTTP from other text protocols when
            // sniffing), httparse any token (`get` too).
            let upper = |m: &str| m.bytes().all(is_method_byte);
            let taken = req.parse(&head);
            if matches!(taken, Ok(httparse::Status::Complete(_))) && req.method.is_some_and(upper) {
                let ours = RequestLine::parse(&line);
                prop_assert!(ours.is_some(), "httparse takes {:?}", String::from_utf8_lossy(&line));
                let ours = ours.unwrap();
                prop_assert_eq!(Some(ours.method), req.method.map(str::as_bytes));
                prop_assert_eq!(Some(ours.target), req.path.map(str::as_bytes));
                prop_assert_eq!(Some(ours.minor), req.version);
                prop_assert!(!ours.multiple_spaces);
            }
        }

        /// Where httparse takes a status line, the lenient one reads the
        /// same status and version, and sees nothing to count.
        #[test]
        fn status_lines_agree_with_httparse_where_it_accepts(line in status_line()) {
            let mut headers = [httparse::EMPTY_HEADER; 1];
            let mut resp = httparse::Response::new(&mut headers);
            let head = [&line[..], b"\r\n\r\n"].concat();
            // Below 100 is no status (RFC 9110 §15): httparse takes any three
            // digits, apitap refuses those.
            if let (Ok(httparse::Status::Complete(_)), Some(100..)) = (resp.parse(&head), resp.code) {
                let ours = StatusLine::parse(&line);
                prop_assert!(ours.is_some(), "httparse takes {:?}", String::from_utf8_lossy(&line));
                let ours = ours.unwrap();
                prop_assert_eq!(Some(ours.status), resp.code);
                prop_assert_eq!(Some(ours.minor), resp.version);
                prop_assert!(!ours.multiple_spaces);
            }
        }
    }
}
