//! Table tests with a recording sink, plus a segmentation proptest.

use std::collections::VecDeque;

use proptest::prelude::*;

use super::*;
use crate::http::{RequestHead, ResponseHead};

/// What the sink saw, with the positions reduced to seq (ts = seq * 10,
/// ack = seq + 7 in these tests, so seq identifies the chunk too).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ev {
    Req {
        method: String,
        target: Vec<u8>,
        at: u32,
    },
    Resp {
        status: u16,
        at: u32,
    },
    End {
        at: u32,
        body: u64,
        missing: u64,
        prefix: Vec<u8>,
        complete: bool,
    },
    Malformed {
        err: ParseError,
        at: u32,
    },
    Resync {
        at: u32,
        lost: bool,
    },
}

#[derive(Default)]
struct Rec {
    events: Vec<Ev>,
    /// Answers for `response_head`, in order; `Other` when exhausted.
    kinds: VecDeque<RequestKind>,
    requests: Vec<RequestHead>,
    responses: Vec<ResponseHead>,
    /// Every position reported, to check ack/ts agree with the seq.
    positions: Vec<StreamPos>,
}

impl MessageSink for Rec {
    fn request_head(&mut self, head: RequestHead, start: StreamPos) {
        self.positions.push(start);
        self.events.push(Ev::Req {
            method: head.method.as_str().to_string(),
            target: head.target.clone(),
            at: start.seq,
        });
        self.requests.push(head);
    }
    fn response_head(&mut self, head: ResponseHead, start: StreamPos) -> RequestKind {
        self.positions.push(start);
        self.events.push(Ev::Resp {
            status: head.status,
            at: start.seq,
        });
        self.responses.push(head);
        self.kinds.pop_front().unwrap_or(RequestKind::Other)
    }
    fn message_end(&mut self, _dir: Direction, end: MessageEnd) {
        self.positions.push(end.end);
        self.events.push(Ev::End {
            at: end.end.seq,
            body: end.body_bytes,
            missing: end.body_missing,
            prefix: end.body_prefix,
            complete: end.complete,
        });
    }
    fn malformed(&mut self, _dir: Direction, err: ParseError, at: StreamPos) {
        self.positions.push(at);
        self.events.push(Ev::Malformed { err, at: at.seq });
    }
    fn lost_sync(&mut self, _dir: Direction, _resumes: StreamPos) {
        // Seen as the `Resync` that follows (or its absence).
    }
    fn resync(&mut self, _dir: Direction, at: StreamPos, lost: bool) {
        self.positions.push(at);
        self.events.push(Ev::Resync { at: at.seq, lost });
    }
}

/// One input step.
#[derive(Clone, Debug)]
enum In<'a> {
    Data(&'a [u8]),
    Gap(u32),
    /// Bytes the capture's snaplen cut.
    Cut(u32),
    Fin,
    Rst,
}

/// Stream offsets are seq - BASE.
const BASE: u32 = 1000;

/// (name, answers for response_head, input, expected events)
type ResponseCase<'a> = (&'static str, Vec<RequestKind>, Vec<In<'a>>, Vec<Ev>);
/// (name, direction, input, the stats field expected to be 1)
type CountCase = (
    &'static str,
    Direction,
    &'static [u8],
    fn(&ParserStats) -> u64,
);

fn chunk(seq: u32, data: &[u8]) -> Chunk<'_> {
    Chunk {
        seq,
        ack: seq.wrapping_add(7),
        ts: Timestamp::from_micros(i64::from(seq) * 10),
        data,
    }
}

fn drive(p: &mut MessageParser, rec: &mut Rec, inputs: &[In<'_>]) {
    let mut seq = BASE;
    for input in inputs {
        match input {
            In::Data(d) => {
                p.feed(&chunk(seq, d), rec);
                seq = seq.wrapping_add(d.len() as u32);
            }
            In::Gap(n) => {
                p.gap(seq, *n, Timestamp::from_micros(i64::from(seq) * 10), rec);
                seq = seq.wrapping_add(*n);
            }
            In::Cut(n) => {
                p.cut(seq, *n, Timestamp::from_micros(i64::from(seq) * 10), rec);
                seq = seq.wrapping_add(*n);
            }
            In::Fin => p.end_of_stream(Timestamp::from_micros(1), false, rec),
            In::Rst => p.end_of_stream(Timestamp::from_micros(1), true, rec),
        }
    }
}

fn run_with(
    dir: Direction,
    in_sync: bool,
    kinds: &[RequestKind],
    inputs: &[In<'_>],
) -> (Vec<Ev>, ParserStats) {
    let mut p = MessageParser::new(dir, ParserLimits::default(), in_sync);
    let mut rec = Rec {
        kinds: kinds.iter().copied().collect(),
        ..Rec::default()
    };
    drive(&mut p, &mut rec, inputs);
    for pos in &rec.positions {
        // Data positions carry their chunk's ts; gap positions the gap's.
        assert!(pos.ts.as_micros() <= i64::from(pos.seq) * 10, "{pos:?}");
    }
    (rec.events, p.stats().clone())
}

fn req(method: &str, target: &[u8], at: u32) -> Ev {
    Ev::Req {
        method: method.into(),
        target: target.to_vec(),
        at: BASE + at,
    }
}
fn resp(status: u16, at: u32) -> Ev {
    Ev::Resp {
        status,
        at: BASE + at,
    }
}
/// `last` is the stream offset of the message's last byte.
fn end(last: usize, body: u64, prefix: &[u8]) -> Ev {
    Ev::End {
        at: BASE + last as u32,
        body,
        missing: 0,
        prefix: prefix.to_vec(),
        complete: true,
    }
}
fn end_missing(last: usize, body: u64, missing: u64, prefix: &[u8], complete: bool) -> Ev {
    Ev::End {
        at: BASE + last as u32,
        body,
        missing,
        prefix: prefix.to_vec(),
        complete,
    }
}
fn malformed(err: ParseError, at: usize) -> Ev {
    Ev::Malformed {
        err,
        at: BASE + at as u32,
    }
}
fn resync(at: usize, lost: bool) -> Ev {
    Ev::Resync {
        at: BASE + at as u32,
        lost,
    }
}

const GET: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"; // 28 bytes
const POST5: &[u8] = b"POST /p HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"; // 39 + 5

#[test]
fn requests_are_framed() {
    use In::*;
    let chunked = b"POST /c HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n4;ext=1\r\nWiki\r\n5 ; a=\"b\"\r\npedia\r\n0\r\nX-Trailer: 1\r\n\r\n";
    let h = chunked.iter().position(|&b| b == b'4').unwrap();
    let cases: Vec<(&str, Vec<In<'_>>, Vec<Ev>)> = vec![
        ("get_no_body", vec![Data(GET)], vec![req("GET", b"/a", 0), end(27, 0, b"")]),
        ("content_length", vec![Data(POST5)], vec![req("POST", b"/p", 0), end(43, 5, b"hello")]),
        (
            "chunked_with_extensions_and_trailers",
            vec![Data(chunked)],
            vec![req("POST", b"/c", 0), end(chunked.len() - 1, 9, b"Wikipedia")],
        ),
        (
            "chunked_body_prefix_across_chunks",
            vec![Data(&chunked[..h + 5]), Data(&chunked[h + 5..h + 16]), Data(&chunked[h + 16..])],
            vec![req("POST", b"/c", 0), end(chunked.len() - 1, 9, b"Wikipedia")],
        ),
        (
            "pipelined_three_in_one_chunk",
            vec![Data(b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nDELETE /3 HTTP/1.0\r\n\r\n")],
            vec![
                req("GET", b"/1", 0),
                end(18, 0, b""),
                req("GET", b"/2", 19),
                end(37, 0, b""),
                req("DELETE", b"/3", 38),
                end(59, 0, b""),
            ],
        ),
        (
            "stray_crlf_between_messages",
            vec![Data(b"\r\nGET /1 HTTP/1.1\r\n\r\n\r\n"), Data(b"\r\nGET /2 HTTP/1.1\r\n\r\n")],
            vec![req("GET", b"/1", 2), end(20, 0, b""), req("GET", b"/2", 25), end(43, 0, b"")],
        ),
        (
            "bare_lf",
            vec![Data(b"GET /a HTTP/1.1\nHost: x\n\n")],
            vec![req("GET", b"/a", 0), end(24, 0, b"")],
        ),
        (
            "lenient_target_with_spaces_and_controls",
            vec![Data(b"GET /a b\x01<\xff> HTTP/1.1\r\n\r\n")],
            vec![req("GET", b"/a b\x01<\xff>", 0), end(24, 0, b"")],
        ),
        (
            "absolute_form_target",
            vec![Data(b"GET http://u:p@h.example/x?y=1 HTTP/1.1\r\n\r\n")],
            vec![req("GET", b"http://u:p@h.example/x?y=1", 0), end(42, 0, b"")],
        ),
        (
            "multiple_spaces_are_delimiters",
            vec![Data(b"GET   /a   HTTP/1.1\r\n\r\n")],
            vec![req("GET", b"/a", 0), end(22, 0, b"")],
        ),
        (
            "duplicate_identical_content_length",
            vec![Data(b"PUT / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2, 2\r\n\r\nokGET / HTTP/1.1\r\n\r\n")],
            vec![req("PUT", b"/", 0), end(60, 2, b"ok"), req("GET", b"/", 61), end(78, 0, b"")],
        ),
        (
            "conflicting_content_length_is_malformed_not_split",
            // The next request is found at the next line start.
            vec![Data(b"PUT / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc\r\nGET / HTTP/1.1\r\n\r\n")],
            vec![malformed(ParseError::BadContentLength, 0), resync(61, false), req("GET", b"/", 61), end(78, 0, b"")],
        ),
        (
            "te_and_cl_te_wins",
            vec![Data(b"POST / HTTP/1.1\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n")],
            vec![req("POST", b"/", 0), end(79, 2, b"hi")],
        ),
        (
            "request_te_not_chunked_is_malformed",
            vec![Data(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n")],
            vec![malformed(ParseError::BadHeader, 0)],
        ),
        (
            "expect_100_continue_framed_normally",
            vec![Data(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"), Data(b"abc")],
            vec![req("POST", b"/", 0), end(62, 3, b"abc")],
        ),
        (
            "connect_then_tunnel",
            vec![Data(b"CONNECT h:443 HTTP/1.1\r\n\r\n\x16\x03\x01binary GET / HTTP/1.1\r\n\r\n")],
            vec![req("CONNECT", b"h:443", 0), end(25, 0, b"")],
        ),
        (
            "garbage_then_request",
            vec![Data(b"\x16\x03\x01\x02\nGET / HTTP/1.1\r\n\r\n")],
            vec![malformed(ParseError::BadRequestLine, 0), resync(5, false), req("GET", b"/", 5), end(22, 0, b"")],
        ),
        (
            "h2_preface_is_malformed",
            vec![Data(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")],
            vec![malformed(ParseError::BadRequestLine, 0)],
        ),
        (
            "content_length_then_fin_is_incomplete",
            vec![Data(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc"), Fin],
            vec![req("POST", b"/", 0), end_missing(41, 3, 0, b"abc", false)],
        ),
        ("head_cut_by_fin_reports_nothing", vec![Data(b"GET / HTTP/1.1\r\nHost:"), Fin], vec![]),
    ];
    for (name, inputs, want) in cases {
        let (got, _) = run_with(Direction::ToServer, true, &[], &inputs);
        assert_eq!(got, want, "case {name}");
    }
}

#[test]
fn responses_are_framed() {
    use In::*;
    use RequestKind::{Connect, Head, Other};
    let ok5 = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"; // 38 + 5
    let cases: Vec<ResponseCase<'_>> = vec![
        ("content_length", vec![], vec![Data(ok5)], vec![resp(200, 0), end(42, 5, b"hello")]),
        (
            "close_delimited_ended_by_fin",
            vec![],
            vec![Data(b"HTTP/1.0 200 OK\r\n\r\nab"), Data(b"cd"), Fin],
            vec![resp(200, 0), end(22, 4, b"abcd")],
        ),
        (
            "close_delimited_ended_by_rst_is_incomplete",
            vec![],
            vec![Data(b"HTTP/1.0 200 OK\r\n\r\nab"), Rst],
            vec![resp(200, 0), end_missing(20, 2, 0, b"ab", false)],
        ),
        (
            "te_not_chunked_is_close_delimited",
            vec![],
            vec![Data(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 1\r\n\r\nxyz"), Fin],
            vec![resp(200, 0), end(65, 3, b"xyz")],
        ),
        (
            "head_response_has_no_body",
            vec![Head, Other],
            vec![Data(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")],
            vec![resp(200, 0), end(38, 0, b""), resp(404, 39), end(83, 0, b"")],
        ),
        (
            "204_and_304_have_no_body",
            vec![],
            vec![Data(b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n")],
            vec![resp(204, 0), end(45, 0, b""), resp(304, 46), end(93, 0, b"")],
        ),
        (
            "interim_100s_before_final",
            vec![],
            vec![Data(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nz")],
            vec![
                resp(100, 0),
                end(24, 0, b""),
                resp(100, 25),
                end(49, 0, b""),
                resp(103, 50),
                end(89, 0, b""),
                resp(200, 90),
                end(128, 1, b"z"),
            ],
        ),
        (
            "101_then_tunnel",
            vec![],
            vec![Data(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello"), Data(b"HTTP/1.1 200 OK\r\n\r\n")],
            vec![resp(101, 0), end(55, 0, b"")],
        ),
        (
            "connect_200_then_tunnel",
            vec![Connect],
            vec![Data(b"HTTP/1.1 200 Connection established\r\n\r\n\x16\x03\x03")],
            vec![resp(200, 0)	, end(38, 0, b"")],
        ),
        (
            "connect_407_then_normal",
            vec![Connect, Other],
            vec![Data(b"HTTP/1.1 407 Proxy Auth\r\nContent-Length: 2\r\n\r\nnoHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")],
            vec![resp(407, 0), end(47, 2, b"no"), resp(200, 48), end(85, 0, b"")],
        ),
        (
            "chunked_de_chunked_prefix",
            vec![],
            vec![Data(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"), Data(b"2\r\nde\r\n0\r\n\r\n")],
            vec![resp(200, 0), end(66, 5, b"abcde")],
        ),
        (
            "chunked_bare_lf",
            vec![],
            vec![Data(b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n1\na\n0\n\n")],
            vec![resp(200, 0), end(50, 1, b"a")],
        ),
        (
            "missing_reason_and_multiple_spaces",
            vec![],
            vec![Data(b"HTTP/1.1  404\r\nContent-Length: 0\r\n\r\n")],
            vec![resp(404, 0), end(35, 0, b"")],
        ),
        (
            "status_below_100_is_malformed",
            vec![],
            vec![Data(b"HTTP/1.1 099 Odd\r\n\r\n")],
            vec![malformed(ParseError::BadStatusLine, 0)],
        ),
        (
            "conflicting_cl_in_response",
            vec![],
            vec![Data(b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\nab")],
            vec![malformed(ParseError::BadContentLength, 0)],
        ),
        (
            "bad_chunk_size",
            vec![],
            vec![Data(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nHTTP/1.1 200 OK\r\n\r\n")],
            vec![resp(200, 0), malformed(ParseError::BadChunk, 0), resync(51, false), resp(200, 51)],
        ),
        (
            "pipelined_responses_one_chunk",
            vec![],
            vec![Data(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nb")],
            vec![resp(200, 0), end(38, 1, b"a"), resp(201, 39), end(82, 1, b"b")],
        ),
    ];
    for (name, kinds, inputs, want) in cases {
        let (got, _) = run_with(Direction::ToClient, true, &kinds, &inputs);
        assert_eq!(got, want, "case {name}");
    }
}

#[test]
fn gaps_are_skipped_or_resynchronised() {
    use In::*;
    let cases: Vec<(&str, Direction, Vec<In<'_>>, Vec<Ev>)> = vec![
        (
            "gap_inside_content_length_body_skipped",
            Direction::ToServer,
            vec![
                Data(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nab"),
                Gap(5),
                Data(b"fgh"),
                Data(GET),
            ],
            vec![
                req("POST", b"/", 0),
                end_missing(48, 10, 5, b"ab", true),
                req("GET", b"/a", 49),
                end(76, 0, b""),
            ],
        ),
        (
            "gap_covering_body_end_and_more_resyncs",
            Direction::ToServer,
            vec![
                Data(b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nab"),
                Gap(30),
                Data(b"junk\r\n"),
                Data(GET),
            ],
            vec![
                req("POST", b"/", 0),
                end_missing(41, 4, 2, b"ab", true),
                resync(76, true),
                req("GET", b"/a", 76),
                end(103, 0, b""),
            ],
        ),
        (
            "gap_inside_chunk_data_skipped",
            Direction::ToClient,
            vec![
                Data(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\nab"),
                Gap(6),
                Data(b"ij\r\n0\r\n\r\n"),
            ],
            vec![resp(200, 0), end_missing(66, 10, 6, b"ab", true)],
        ),
        (
            "gap_across_chunk_boundary_loses_message",
            Direction::ToClient,
            vec![
                Data(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nab"),
                Gap(20),
                Data(b"x\r\n0\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"),
            ],
            vec![
                resp(200, 0),
                end_missing(51, 4, 2, b"ab", false),
                resync(80, true),
                resp(204, 80),
                end(106, 0, b""),
            ],
        ),
        (
            "gap_in_head_resyncs_at_next_request",
            Direction::ToServer,
            vec![
                Data(b"GET /a HTTP/1.1\r\nHo"),
                Gap(10),
                Data(b"ue\r\n\r\n"),
                Data(b"junk\nGET /b HTTP/1.1\r\n\r\n"),
            ],
            vec![resync(40, true), req("GET", b"/b", 40), end(58, 0, b"")],
        ),
        (
            "gap_between_messages_resyncs_after_it",
            Direction::ToServer,
            vec![Data(GET), Gap(28), Data(GET)],
            vec![
                req("GET", b"/a", 0),
                end(27, 0, b""),
                resync(56, true),
                req("GET", b"/a", 56),
                end(83, 0, b""),
            ],
        ),
        (
            "gap_in_close_delimited_body",
            Direction::ToClient,
            vec![Data(b"HTTP/1.0 200 OK\r\n\r\nab"), Gap(3), Data(b"f"), Fin],
            vec![resp(200, 0), end(24, 6, b"abf")],
        ),
    ];
    for (name, dir, inputs, want) in cases {
        let (got, _) = run_with(dir, true, &[], &inputs);
        // The close-delimited case counts missing bytes too.
        let want: Vec<Ev> = if name == "gap_in_close_delimited_body" {
            vec![resp(200, 0), end_missing(24, 6, 3, b"ab", true)]
        } else {
            want
        };
        assert_eq!(got, want, "case {name}");
    }
}

#[test]
fn a_head_the_snaplen_cut_is_reported_from_what_was_captured() {
    use In::*;
    const REQ: &[u8] = b"GET /a?x=1 HTTP/1.1\r\nHost: api\r\nCookie: s=";
    const RESP: &[u8] = b"HTTP/1.1 404 Not Found\r\nContent-Length: 5000\r\nDa";
    const NEXT: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    let (r, n) = (REQ.len(), RESP.len());
    let cases: Vec<(&str, Direction, Vec<In<'_>>, Vec<Ev>)> = vec![
        (
            "request_cut_after_its_host",
            Direction::ToServer,
            vec![Data(REQ), Cut(100), Data(GET)],
            vec![
                req("GET", b"/a?x=1", 0),
                end_missing(r + 99, 0, 0, b"", false),
                resync(r + 100, true),
                req("GET", b"/a", (r + 100) as u32),
                end(r + 127, 0, b""),
            ],
        ),
        (
            "response_cut_after_its_status_line",
            Direction::ToClient,
            vec![Data(RESP), Cut(1400), Data(NEXT)],
            vec![
                resp(404, 0),
                end_missing(n + 1399, 0, 0, b"", false),
                resync(n + 1400, true),
                resp(200, (n + 1400) as u32),
                end(n + 1400 + NEXT.len() - 1, 0, b""),
            ],
        ),
        (
            "request_cut_in_its_start_line_is_a_gap",
            Direction::ToServer,
            vec![Data(b"GET /averylongpa"), Cut(100), Data(GET)],
            vec![resync(116, true), req("GET", b"/a", 116), end(143, 0, b"")],
        ),
        (
            "interim_response_cut_is_a_gap",
            Direction::ToClient,
            vec![
                Data(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-"),
                Cut(40),
            ],
            vec![],
        ),
    ];
    for (name, dir, inputs, want) in cases {
        let (got, stats) = run_with(dir, true, &[], &inputs);
        assert_eq!(got, want, "case {name}");
        let reported =
            usize::from(name.ends_with("_after_its_host") || name.starts_with("response"));
        assert_eq!(stats.heads_cut, reported as u64, "case {name}");
    }
    // The fields whose lines the capture kept, and nothing of the cut one;
    // bare-LF heads too.
    for (head, fields) in [
        (REQ, &[("Host", "api")][..]),
        (
            b"GET /b HTTP/1.0\nHost: x\nAccept: */*\nUser-Ag",
            &[("Host", "x"), ("Accept", "*/*")],
        ),
    ] {
        let mut p = MessageParser::new(Direction::ToServer, ParserLimits::default(), true);
        let mut rec = Rec::default();
        drive(&mut p, &mut rec, &[Data(head), Cut(10)]);
        let [got] = &rec.requests[..] else {
            panic!("one request, got {:?}", rec.events);
        };
        assert!(got.cut);
        let want: Vec<(&[u8], &[u8])> = fields
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
            .collect();
        assert!(
            got.headers.iter().eq(want.iter().copied()),
            "{:?}",
            got.headers
        );
    }
    // Not cut: a gap there leaves nothing of the head.
    let (got, _) = run_with(Direction::ToServer, true, &[], &[Data(REQ), Gap(100)]);
    assert_eq!(got, vec![]);
}

#[test]
fn mid_stream_start_finds_first_message() {
    use In::*;
    let cases: Vec<(&str, Direction, Vec<In<'_>>, Vec<Ev>)> = vec![
        (
            "request_after_body_tail",
            Direction::ToServer,
            vec![
                Data(b"dy of a previous\r\nrequest GET / x\r\n"),
                Data(b"GET /z HTTP/1.1\r\n\r\n"),
            ],
            vec![resync(35, false), req("GET", b"/z", 35), end(53, 0, b"")],
        ),
        (
            "first_byte_is_a_start",
            Direction::ToServer,
            vec![Data(GET)],
            vec![resync(0, false), req("GET", b"/a", 0), end(27, 0, b"")],
        ),
        (
            "candidate_split_across_chunks",
            Direction::ToServer,
            vec![Data(b"tail\r\nGET /sp"), Data(b"lit HTTP/1.1\r\n\r\n")],
            vec![resync(6, false), req("GET", b"/split", 6), end(28, 0, b"")],
        ),
        (
            "failed_candidate_split_across_chunks",
            Direction::ToServer,
            vec![
                Data(b"tail\r\nGET /sp"),
                Data(b"lit is not\r\nPUT /x HTTP/1.1\r\n\r\n"),
            ],
            vec![resync(25, false), req("PUT", b"/x", 25), end(43, 0, b"")],
        ),
        (
            "response_mid_stream",
            Direction::ToClient,
            vec![Data(b"}]}\nHTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n")],
            vec![resync(4, false), resp(500, 4), end(43, 0, b"")],
        ),
    ];
    for (name, dir, inputs, want) in cases {
        let (got, _) = run_with(dir, false, &[], &inputs);
        assert_eq!(got, want, "case {name}");
    }
}

#[test]
fn head_split_at_every_position_parses_the_same() {
    let stream: &[u8] = b"POST /x%20y HTTP/1.1\r\nHost: a\r\nX-Long: folded\r\n  more\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n\r\n";
    for dir_case in [Direction::ToServer, Direction::ToClient] {
        let stream: &[u8] = match dir_case {
            Direction::ToServer => stream,
            Direction::ToClient => b"HTTP/1.1 200 OK\r\nSet-Cookie: a=b\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
        };
        let (whole, _) = run_with(dir_case, true, &[], &[In::Data(stream)]);
        assert_eq!(whole.len(), 4, "{whole:?}");
        for split in 1..stream.len() {
            let (got, _) = run_with(
                dir_case,
                true,
                &[],
                &[In::Data(&stream[..split]), In::Data(&stream[split..])],
            );
            assert_eq!(got, whole, "split at {split}");
        }
    }
}

#[test]
fn leniencies_and_errors_are_counted() {
    let cases: Vec<CountCase> = vec![
        (
            "bare_lf",
            Direction::ToServer,
            b"GET / HTTP/1.1\nA: b\n\n",
            |s| s.bare_lf,
        ),
        (
            "obs_fold",
            Direction::ToServer,
            b"GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n",
            |s| s.obs_fold,
        ),
        (
            "header_without_colon",
            Direction::ToServer,
            b"GET / HTTP/1.1\r\nnocolon\r\n\r\n",
            |s| s.header_without_colon,
        ),
        (
            "invalid_header_name",
            Direction::ToServer,
            b"GET / HTTP/1.1\r\nA(b: c\r\n\r\n",
            |s| s.invalid_header_name,
        ),
        (
            "space_before_colon",
            Direction::ToServer,
            b"GET / HTTP/1.1\r\nA : c\r\n\r\n",
            |s| s.space_before_colon,
        ),
        (
            "whitespace_line_skipped",
            Direction::ToServer,
            b"GET / HTTP/1.1\r\n A: c\r\n\r\n",
            |s| s.whitespace_line_skipped,
        ),
        (
            "spaces_in_target",
            Direction::ToServer,
            b"GET /a b HTTP/1.1\r\n\r\n",
            |s| s.spaces_in_target,
        ),
        (
            "control_in_target",
            Direction::ToServer,
            b"GET /a\x7f HTTP/1.1\r\n\r\n",
            |s| s.control_or_non_ascii_in_target,
        ),
        (
            "duplicate_cl",
            Direction::ToServer,
            b"PUT / HTTP/1.1\r\nContent-Length: 0,0\r\n\r\n",
            |s| s.duplicate_identical_content_length,
        ),
        (
            "conflicting_cl",
            Direction::ToServer,
            b"PUT / HTTP/1.1\r\nContent-Length: 0,1\r\n\r\n",
            |s| s.conflicting_content_length,
        ),
        (
            "invalid_cl",
            Direction::ToServer,
            b"PUT / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
            |s| s.invalid_content_length,
        ),
        (
            "te_and_cl",
            Direction::ToServer,
            b"PUT / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            |s| s.te_and_cl,
        ),
        (
            "unknown_te",
            Direction::ToClient,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: br\r\n\r\n",
            |s| s.unknown_transfer_encoding,
        ),
        (
            "stray_crlf",
            Direction::ToServer,
            b"\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            |s| s.stray_crlf_bytes / 4,
        ),
        (
            "status_without_reason",
            Direction::ToClient,
            b"HTTP/1.1 200\r\n\r\n",
            |s| s.status_without_reason,
        ),
        (
            "bad_start_line",
            Direction::ToClient,
            b"HTTP/2 200\r\n\r\n",
            |s| s.bad_start_line,
        ),
        (
            "resyncs",
            Direction::ToServer,
            b"xx\nGET / HTTP/1.1\r\n\r\n",
            |s| s.resyncs,
        ),
        (
            "bytes_skipped_resync",
            Direction::ToServer,
            b"xx\nGET / HTTP/1.1\r\n\r\n",
            |s| s.bytes_skipped_resync / 3,
        ),
    ];
    for (name, dir, input, field) in cases {
        let (_, stats) = run_with(dir, true, &[], &[In::Data(input)]);
        assert_eq!(field(&stats), 1, "case {name}: {stats:?}");
    }
}

#[test]
fn lenient_headers_keep_values() {
    let mut p = MessageParser::new(Direction::ToServer, ParserLimits::default(), true);
    let mut rec = Rec::default();
    let head = b"GET / HTTP/1.1\r\nHost : h\r\nX-F: a\r\n\tb\r\nbad line\r\nX-Ctl: \x01z \r\n\r\n";
    p.feed(&chunk(1, head), &mut rec);
    let h = &rec.requests[0].headers;
    assert_eq!(h.get("host"), Some(&b"h"[..]));
    assert_eq!(h.get("x-f"), Some(&b"a b"[..]));
    assert_eq!(h.get("x-ctl"), Some(&b"\x01z"[..]));
    assert_eq!(h.len(), 3);
}

#[test]
fn head_too_large_is_malformed_then_resyncs() {
    let limits = ParserLimits {
        max_head_bytes: 64,
        ..ParserLimits::default()
    };
    let big = [
        b"GET / HTTP/1.1\r\nX: ".as_slice(),
        &[b'a'; 100],
        b"\r\n\r\n",
        GET,
    ]
    .concat();
    // Whole, and fed in small pieces (the buffered path).
    for piece in [big.len(), 7] {
        let mut p = MessageParser::new(Direction::ToServer, limits, true);
        let mut rec = Rec::default();
        let mut seq = BASE;
        for part in big.chunks(piece) {
            p.feed(&chunk(seq, part), &mut rec);
            seq += part.len() as u32;
        }
        let get_at = big.len() - GET.len();
        assert_eq!(
            rec.events,
            vec![
                malformed(ParseError::HeadTooLarge, 0),
                resync(get_at, false),
                req("GET", b"/a", get_at as u32),
                end(big.len() - 1, 0, b""),
            ],
            "piece {piece}"
        );
        assert_eq!(p.stats().head_too_large, 1);
        assert!(p.buffered_bytes() == 0 && p.is_idle());
    }
}

#[test]
fn too_many_headers_is_malformed() {
    let limits = ParserLimits {
        max_headers: 2,
        ..ParserLimits::default()
    };
    let mut p = MessageParser::new(Direction::ToServer, limits, true);
    let mut rec = Rec::default();
    p.feed(
        &chunk(BASE, b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"),
        &mut rec,
    );
    assert_eq!(rec.events, vec![malformed(ParseError::HeadTooLarge, 0)]);
    assert_eq!(p.stats().too_many_headers, 1);
}

#[test]
fn connect_refused_resumes_parsing() {
    let mut p = MessageParser::new(Direction::ToServer, ParserLimits::default(), true);
    let mut rec = Rec::default();
    let connect = b"CONNECT h:443 HTTP/1.1\r\n\r\n";
    p.feed(&chunk(BASE, connect), &mut rec);
    assert!(p.in_tunnel());
    p.resume_from_tunnel();
    assert!(!p.in_tunnel() && p.is_idle());
    p.feed(&chunk(BASE + connect.len() as u32, GET), &mut rec);
    assert_eq!(
        rec.events,
        vec![
            req("CONNECT", b"h:443", 0),
            end(25, 0, b""),
            req("GET", b"/a", 26),
            end(53, 0, b"")
        ]
    );
}

#[test]
fn tunnel_counts_bytes_only() {
    let mut p = MessageParser::new(Direction::ToClient, ParserLimits::default(), true);
    let mut rec = Rec::default();
    p.enter_tunnel();
    p.feed(&chunk(BASE, b"HTTP/1.1 200 OK\r\n\r\n"), &mut rec);
    p.gap(BASE + 19, 100, Timestamp::ZERO, &mut rec);
    p.end_of_stream(Timestamp::ZERO, false, &mut rec);
    assert!(rec.events.is_empty());
    assert_eq!(p.stats().tunnel_bytes, 119);
}

#[test]
fn sniffing_tables() {
    use Sniff::*;
    let req_cases: &[(&[u8], Sniff)] = &[
        (b"GET / HTTP/1.1\r\n", Yes),
        (b"M-SEARCH * HTTP/1.1\r\n", Yes),
        (b"GET /a b HTTP/1.0\n", Yes),
        (b"GET / HTTP/1.1", NeedMore),
        (b"GE", NeedMore),
        (b"", NeedMore),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n", No),
        (b"\x16\x03\x01\x00", No),
        (b"SSH-2.0-OpenSSH_9.6\r\n", No),
        (b"get / HTTP/1.1\r\n", No),
        (b"GET / HTTP/1.2\r\n", No),
        (b"GET HTTP/1.1\r\n", No),
        (b" GET / HTTP/1.1\r\n", No),
        (b"ABCDEFGHIJKLMNOPQRSTU / HTTP/1.1\r\n", No),
    ];
    for (data, want) in req_cases {
        assert_eq!(
            sniff_request_start(data),
            *want,
            "{:?}",
            String::from_utf8_lossy(data)
        );
    }
    let resp_cases: &[(&[u8], Sniff)] = &[
        (b"HTTP/1.1 200 OK", Yes),
        (b"HTTP/1.0 404\r\n", Yes),
        (b"HTTP/1.1   500\t", Yes),
        (b"HTTP/1.1 200", NeedMore),
        (b"HTT", NeedMore),
        (b"HTTP/1.1 099 x", No),
        (b"HTTP/2 200 OK", No),
        (b"HTTP/1.1 2000", No),
        (b"http/1.1 200 OK", No),
        (b"\x16\x03\x03", No),
    ];
    for (data, want) in resp_cases {
        assert_eq!(
            sniff_response_start(data),
            *want,
            "{:?}",
            String::from_utf8_lossy(data)
        );
    }
}

#[test]
fn positions_come_from_the_chunk_holding_the_byte() {
    let mut p = MessageParser::new(Direction::ToServer, ParserLimits::default(), true);
    let mut rec = Rec::default();
    p.feed(&chunk(BASE, b"\r\nGET / HTTP/1.1\r\n"), &mut rec);
    assert!(!p.is_idle() && p.buffered_bytes() > 0);
    p.feed(&chunk(BASE + 18, b"\r\n"), &mut rec);
    assert!(p.is_idle() && p.buffered_bytes() == 0);
    let start = rec.positions[0];
    let end = rec.positions[1];
    assert_eq!(
        (start.seq, start.ack, start.ts),
        (BASE + 2, BASE + 7, Timestamp::from_micros(10_000))
    );
    assert_eq!(
        (end.seq, end.ack, end.ts),
        (BASE + 19, BASE + 25, Timestamp::from_micros(10_180))
    );
}

#[test]
fn lost_sync_cases() {
    use In::*;
    let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"; // 47
    let cases: Vec<(&str, Vec<In<'_>>, Vec<Ev>)> = vec![
        (
            "gap_in_chunk_size_line",
            vec![
                Data(chunked),
                Data(b"1"),
                Gap(3),
                Data(b"HTTP/1.1 200 OK\r\n\r\n"),
                Fin,
            ],
            vec![
                resp(200, 0),
                end_missing(47, 0, 0, b"", false),
                resync(51, true),
                resp(200, 51),
                end(69, 0, b""),
            ],
        ),
        (
            "chunked_cut_by_rst",
            vec![Data(chunked), Data(b"5\r\nab"), Rst],
            vec![resp(200, 0), end_missing(51, 2, 0, b"ab", false)],
        ),
        (
            "h2_preface_mid_stream_is_never_a_start",
            vec![Gap(5), Data(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Fin],
            vec![],
        ),
    ];
    for (name, inputs, want) in cases {
        let (got, _) = run_with(Direction::ToClient, true, &[], &inputs);
        assert_eq!(got, want, "case {name}");
    }
}

#[test]
fn parser_is_small_when_idle() {
    let p = MessageParser::new(Direction::ToServer, ParserLimits::default(), true);
    assert_eq!(p.buffered_bytes(), 0);
    let size = std::mem::size_of::<MessageParser>();
    println!("MessageParser: {size} bytes");
    assert!(size <= 512, "{size}");
}

/// Several pipelined messages of every framing kind.
fn pipelined_requests() -> Vec<u8> {
    [
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n".as_slice(),
        b"\r\n",
        b"POST /2 HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello world",
        b"PUT /3 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nT: 1\r\n\r\n",
        b"DELETE /4 HTTP/1.0\nX: a\n  b\n\n",
    ]
    .concat()
}

fn pipelined_responses() -> Vec<u8> {
    [
        b"HTTP/1.1 100 Continue\r\n\r\n".as_slice(),
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n0\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.0 200 OK\r\n\r\nclose-delimited tail",
    ]
    .concat()
}

fn feed_segments(dir: Direction, stream: &[u8], cuts: &[usize]) -> Vec<Ev> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    cuts.sort_unstable();
    let mut p = MessageParser::new(dir, ParserLimits::default(), true);
    let mut rec = Rec::default();
    let mut from = 0;
    for cut in cuts.into_iter().chain([stream.len()]) {
        if cut > from {
            p.feed(&chunk(BASE + from as u32, &stream[from..cut]), &mut rec);
            from = cut;
        }
    }
    p.end_of_stream(Timestamp::ZERO, false, &mut rec);
    rec.events
}

proptest! {
    #[test]
    fn any_segmentation_yields_the_same_events(cuts in proptest::collection::vec(0usize..400, 0..12)) {
        for (dir, stream, events) in [(Direction::ToServer, pipelined_requests(), 8), (Direction::ToClient, pipelined_responses(), 10)] {
            let whole = feed_segments(dir, &stream, &[]);
            prop_assert_eq!(whole.len(), events);
            prop_assert_eq!(feed_segments(dir, &stream, &cuts), whole);
        }
    }

    #[test]
    fn arbitrary_input_never_panics(
        segs in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..64), 0u32..8), 0..16),
        resp_dir in any::<bool>(),
        in_sync in any::<bool>(),
    ) {
        let dir = if resp_dir { Direction::ToClient } else { Direction::ToServer };
        let limits = ParserLimits { max_head_bytes: 128, max_headers: 4, body_prefix_bytes: 8, ..ParserLimits::default() };
        let mut p = MessageParser::new(dir, limits, in_sync);
        let mut rec = Rec::default();
        let mut seq = 0u32;
        for (data, gap) in &segs {
            // Bias towards HTTP-looking bytes.
            let mut d = if seq.is_multiple_of(3) { b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n".to_vec() } else { Vec::new() };
            d.extend_from_slice(data);
            p.feed(&chunk(seq, &d), &mut rec);
            seq = seq.wrapping_add(d.len() as u32);
            if *gap > 4 {
                p.gap(seq, *gap, Timestamp::ZERO, &mut rec);
                seq = seq.wrapping_add(*gap);
            }
            prop_assert!(p.buffered_bytes() <= 128 + 8 + 1024 + 64);
        }
        p.end_of_stream(Timestamp::ZERO, false, &mut rec);
        prop_assert!(p.is_idle() || p.in_tunnel());
        prop_assert_eq!(p.buffered_bytes(), 0);
    }
}

/// Pieces that make HTTP-like streams, valid or not.
const PIECES: &[&[u8]] = &[
    b"GET /x HTTP/1.1\r\n",
    b"POST /y z HTTP/1.0\n",
    b"CONNECT h:1 HTTP/1.1\r\n",
    b"HTTP/1.1 200 OK\r\n",
    b"HTTP/1.1 101 Up\r\n",
    b"HTTP/1.1 100 Continue\r\n",
    b"HTTP/1.0 204\r\n",
    b"Content-Length: 3\r\n",
    b"Content-Length: 1, 2\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip\r\n",
    b" folded\r\n",
    b"X: y\r\n",
    b"\r\n",
    b"\n",
    b"3\r\nabc\r\n",
    b"0\r\n",
    b"zz\r\n",
    b"abc",
    b"\x16\x03\x01",
];

/// Event grammar per direction: a head is followed by exactly one end or
/// malformed before anything else; resync never interrupts a message.
fn check_grammar(events: &[Ev]) -> Result<(), String> {
    let mut open = false;
    for (k, ev) in events.iter().enumerate() {
        match ev {
            Ev::Req { .. } | Ev::Resp { .. } if open => {
                return Err(format!("head inside message at {k}"))
            }
            Ev::Req { .. } | Ev::Resp { .. } => open = true,
            Ev::End { .. } if !open => return Err(format!("end without head at {k}")),
            Ev::End { .. } | Ev::Malformed { .. } => open = false,
            Ev::Resync { .. } if open => return Err(format!("resync inside message at {k}")),
            Ev::Resync { .. } => {}
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn http_like_streams_keep_the_grammar_and_ignore_segmentation(
        pieces in proptest::collection::vec(0..PIECES.len(), 0..40),
        cuts in proptest::collection::vec(0usize..2000, 0..10),
        resp_dir in any::<bool>(),
        in_sync in any::<bool>(),
        gap_at in proptest::option::of((0usize..2000, 1u32..40)),
    ) {
        let dir = if resp_dir { Direction::ToClient } else { Direction::ToServer };
        let stream: Vec<u8> = pieces.iter().flat_map(|&k| PIECES[k].iter().copied()).collect();
        let run = |cuts: &[usize]| {
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
            let gap = gap_at.map(|(at, len)| (at % (stream.len() + 1), len));
            if let Some((at, _)) = gap {
                cuts.push(at);
            }
            cuts.sort_unstable();
            let mut p = MessageParser::new(dir, ParserLimits { max_head_bytes: 4096, resync_at_chunk_starts: false, ..ParserLimits::default() }, in_sync);
            let mut rec = Rec::default();
            let (mut from, mut shift) = (0usize, 0u32);
            for cut in cuts.into_iter().chain([stream.len()]) {
                if cut > from {
                    p.feed(&chunk(BASE + from as u32 + shift, &stream[from..cut]), &mut rec);
                    from = cut;
                }
                if let Some((at, len)) = gap {
                    if at == cut && shift == 0 {
                        p.gap(BASE + from as u32, len, Timestamp::ZERO, &mut rec);
                        shift = len;
                    }
                }
            }
            p.end_of_stream(Timestamp::ZERO, false, &mut rec);
            rec.events
        };
        let whole = run(&[]);
        prop_assert!(check_grammar(&whole).is_ok(), "{:?} {:?}", check_grammar(&whole), whole);
        let segmented = run(&cuts);
        prop_assert_eq!(segmented, whole);
    }
}

#[test]
fn head_fed_one_byte_at_a_time_is_one_request() {
    let stream = b"GET /api/v1/orders/52 HTTP/1.1\r\nHost: 10.99.0.1\r\nUser-Agent: x\r\n\r\n";
    for size in [1usize, 2, 3, 7] {
        let cuts: Vec<usize> = (size..stream.len()).step_by(size).collect();
        let whole = feed_segments(Direction::ToServer, stream, &[]);
        let parts = feed_segments(Direction::ToServer, stream, &cuts);
        assert_eq!(parts, whole, "chunks of {size}");
    }
}

#[test]
fn resync_finds_a_response_at_a_chunk_start_after_a_binary_body() {
    // Mid-stream: the tail of a binary body without any line end, then the
    // next response in a new segment.
    let mut p = MessageParser::new(Direction::ToClient, ParserLimits::default(), false);
    let mut rec = Rec::default();
    p.feed(&chunk(BASE, b"\x89PNG\x00\x01binary"), &mut rec);
    p.feed(
        &chunk(BASE + 12, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        &mut rec,
    );
    assert!(
        rec.events.iter().any(|e| format!("{e:?}").contains("200")),
        "{:?}",
        rec.events
    );
    // With the heuristic off only line starts count: nothing is found.
    let limits = ParserLimits {
        resync_at_chunk_starts: false,
        ..ParserLimits::default()
    };
    let mut p = MessageParser::new(Direction::ToClient, limits, false);
    let mut rec = Rec::default();
    p.feed(&chunk(BASE, b"\x89PNG\x00\x01binary"), &mut rec);
    p.feed(
        &chunk(BASE + 12, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        &mut rec,
    );
    assert!(
        !rec.events.iter().any(|e| format!("{e:?}").contains("200")),
        "{:?}",
        rec.events
    );
}
