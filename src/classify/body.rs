//! The first bytes of a body, as a person would read them.
//!
//! Contract: [`decoded_prefix`] takes the de-chunked body prefix the parser
//! kept and undoes a `gzip`, `x-gzip` or `deflate` content coding, producing
//! at most `limit` bytes; a truncated stream yields what could be decoded
//! (the prefix is usually cut mid-stream), a damaged one what was decoded
//! before the damage, a gzip header that is not whole and valid nothing.
//! Cost is bounded by the prefix
//! (input) and `limit` (output), so a decompression bomb costs nothing. Other
//! codings (br, zstd, …) are left alone: the body is then not looked into.
//! [`VerboseMarkers`] and [`is_empty_json`] read that decoded text.
//! Decompressing costs more than everything else apitap does with an
//! exchange, so [`worth_decoding`] says when a rule can use the text: a
//! 5xx (verbose errors), a tiny body (empty responses), or a small textual
//! body (JWTs handed out or sent, which come in small JSON or form bodies).
//! [`Inflaters`] keeps the decompressors from one body to the next:
//! setting one up allocates and initialises tens of KiB, more than
//! decoding a small body costs; a reset one decodes exactly as a new one.

use crate::http::Headers;
use flate2::{Crc, Decompress, FlushDecompress};
use std::borrow::Cow;

/// Default most decoded bytes looked at.
pub const DEFAULT_DECODE_LIMIT: usize = 2 * 1024;

/// Text in a 5xx body that reveals internals (case-sensitive).
pub const DEFAULT_VERBOSE_MARKERS: &[&str] = &[
    "Traceback (most recent call last)",
    "at java.",
    "at javax.",
    "at org.springframework.",
    "Exception in thread",
    "panicked at",
    "goroutine 1 [running]",
    "[running]:\ngoroutine",
    "Stack trace:\n#0",
    "Fatal error: Uncaught",
    "System.NullReferenceException",
    "   at System.",
    "Microsoft.AspNetCore.",
    "    at Object.<anonymous>",
    "    at Module._compile",
    "node:internal/",
    "NullPointerException",
    "SQLSTATE[",
    "ORA-0",
    "PG::",
    "psycopg2.errors.",
    "sqlalchemy.exc.",
    "django.core.exceptions",
    "Werkzeug Debugger",
    "ActionController::",
    // Ruby backtrace lines: "app/models/x.rb:12:in `show'"
    ".rb:1",
    ".rb:2",
    ".rb:3",
    ".rb:4",
    ".rb:5",
    ".rb:6",
    ".rb:7",
    ".rb:8",
    ".rb:9",
];

/// How the body is encoded, as far as we can undo it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Coding {
    Identity,
    Gzip,
    Deflate,
    /// A coding we do not decode: the body is opaque.
    Other,
}

fn coding(headers: &Headers) -> Coding {
    let mut c = Coding::Identity;
    for v in headers.get_all("content-encoding") {
        for tok in v.split(|&b| b == b',') {
            let t = tok.trim_ascii();
            if t.is_empty() || t.eq_ignore_ascii_case(b"identity") {
                continue;
            }
            if c != Coding::Identity {
                // Stacked codings: not worth undoing.
                return Coding::Other;
            }
            c = if t.eq_ignore_ascii_case(b"gzip") || t.eq_ignore_ascii_case(b"x-gzip") {
                Coding::Gzip
            } else if t.eq_ignore_ascii_case(b"deflate") {
                Coding::Deflate
            } else {
                Coding::Other
            };
        }
    }
    c
}

/// Bodies up to this many (coded) bytes are searched for JWTs.
pub const JWT_BODY_MAX: u64 = 1024;

/// Is decoding a compressed body worth it (see module doc)? `status`:
/// the response's, None for a request body.
pub fn worth_decoding(headers: &Headers, body_bytes: u64, status: Option<u16>) -> bool {
    if status.is_some_and(|s| s >= 500) || body_bytes <= 64 {
        return true;
    }
    if body_bytes > JWT_BODY_MAX {
        return false;
    }
    headers.get("content-type").is_none_or(|ct| {
        ["json", "text", "form", "xml", "javascript"]
            .iter()
            .any(|t| contains_ignore_ascii_case(ct, t.as_bytes()))
    })
}

/// Does `hay` hold `needle` (lower-case ASCII), ASCII case-insensitively?
fn contains_ignore_ascii_case(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// The body prefix with its content coding undone (see module doc), with
/// decompressors made for this call ([`Inflaters::decoded_prefix`] reuses
/// them).
pub fn decoded_prefix<'a>(
    headers: &Headers,
    prefix: &'a [u8],
    limit: usize,
    decode: impl FnOnce() -> bool,
) -> Option<Cow<'a, [u8]>> {
    Inflaters::default().decoded_prefix(headers, prefix, limit, decode)
}

/// Decompressors kept between bodies (see module doc); each is made on
/// first use. Bodies are decoded with flate2's [`Decompress`] in one call
/// (a gzip header is read here, RFC 1952 §2.3): its streaming readers
/// handed out a few dozen bytes a read, each with a CRC update, and a
/// prefix never reaches the trailer the CRC is checked against.
#[derive(Default)]
pub struct Inflaters {
    /// Raw deflate (gzip's payload, and "deflate" without the zlib header).
    raw: Option<Decompress>,
    zlib: Option<Decompress>,
}

/// Decode the deflate stream `input` with the kept decompressor (made if
/// there is none yet, reset if there is), at most `limit` bytes.
fn inflate(kept: &mut Option<Decompress>, zlib: bool, input: &[u8], limit: usize) -> Vec<u8> {
    let d = match kept {
        Some(d) => {
            d.reset(zlib);
            d
        }
        None => kept.insert(Decompress::new(zlib)),
    };
    let mut out = Vec::with_capacity(limit);
    // One call goes as far as the input, the output's room, the stream's
    // end or an error allow; what was decoded before an error is kept.
    let _ = d.decompress_vec(input, &mut out, FlushDecompress::None);
    // The room may be more than asked for.
    out.truncate(limit);
    out
}

/// "deflate" is zlib-wrapped by the RFC, raw deflate in practice too
/// often: does `b` start with a zlib header (RFC 1950: method 8, check bits)?
fn zlib_wrapped(b: &[u8]) -> bool {
    b.len() >= 2 && b[0] & 0x0f == 8 && (u16::from(b[0]) << 8 | u16::from(b[1])) % 31 == 0
}

/// Where a gzip member's deflate stream starts (RFC 1952 §2.3): None when
/// `b` does not start with a whole, valid gzip header (as flate2's
/// `GzDecoder` reads it: reserved flags refused, a header CRC checked).
fn gzip_payload(b: &[u8]) -> Option<usize> {
    const FHCRC: u8 = 1 << 1;
    const FEXTRA: u8 = 1 << 2;
    const FNAME: u8 = 1 << 3;
    const FCOMMENT: u8 = 1 << 4;
    const FRESERVED: u8 = 0xe0;
    let fixed = b.get(..10)?;
    let flags = fixed[3];
    if fixed[..3] != [0x1f, 0x8b, 8] || flags & FRESERVED != 0 {
        return None;
    }
    let mut at = 10;
    if flags & FEXTRA != 0 {
        let xlen = u16::from_le_bytes([*b.get(at)?, *b.get(at + 1)?]);
        at += 2 + usize::from(xlen);
    }
    for flag in [FNAME, FCOMMENT] {
        if flags & flag != 0 {
            at += memchr::memchr(0, b.get(at..)?)? + 1;
        }
    }
    if flags & FHCRC != 0 {
        let stored = u16::from_le_bytes([*b.get(at)?, *b.get(at + 1)?]);
        let mut crc = Crc::new();
        crc.update(&b[..at]);
        if crc.sum() as u16 != stored {
            return None;
        }
        at += 2;
    }
    (at <= b.len()).then_some(at)
}

impl Inflaters {
    /// The body prefix with its content coding undone (see module doc).
    /// `None` when the coding is one we do not decode. `decode` says
    /// whether undoing a coding is worth it (see [`worth_decoding`]); it is
    /// asked only for a coded body.
    pub fn decoded_prefix<'a>(
        &mut self,
        headers: &Headers,
        prefix: &'a [u8],
        limit: usize,
        decode: impl FnOnce() -> bool,
    ) -> Option<Cow<'a, [u8]>> {
        let (kept, zlib, deflated) = match coding(headers) {
            Coding::Identity => return Some(Cow::Borrowed(&prefix[..prefix.len().min(limit)])),
            Coding::Other => return None,
            _ if !decode() => return None,
            Coding::Gzip => {
                let payload = gzip_payload(prefix).map_or(&[][..], |at| &prefix[at..]);
                (&mut self.raw, false, payload)
            }
            Coding::Deflate if zlib_wrapped(prefix) => (&mut self.zlib, true, prefix),
            Coding::Deflate => (&mut self.raw, false, prefix),
        };
        Some(Cow::Owned(inflate(kept, zlib, deflated, limit)))
    }
}

/// The configured markers of internals with their searchers built once
/// (building one costs more than searching a body prefix with it).
pub struct VerboseMarkers {
    /// (index in the configured list, searcher); empty markers left out.
    finders: Vec<(usize, memchr::memmem::Finder<'static>)>,
}

impl VerboseMarkers {
    pub fn new(markers: &[String]) -> Self {
        VerboseMarkers {
            finders: markers
                .iter()
                .enumerate()
                .filter(|(_, m)| !m.is_empty())
                .map(|(i, m)| (i, memchr::memmem::Finder::new(m.as_bytes()).into_owned()))
                .collect(),
        }
    }

    /// The index (in the configured list) of the first marker found in
    /// `text`, if any.
    pub fn first_in(&self, text: &[u8]) -> Option<usize> {
        self.finders
            .iter()
            .find(|(_, f)| f.find(text).is_some())
            .map(|(i, _)| *i)
    }
}

/// Empty, or JSON `{}`, `[]` or `null` (whitespace allowed).
pub fn is_empty_json(text: &[u8]) -> bool {
    let t = text.trim_ascii();
    if t.is_empty() || t == b"null" {
        return true;
    }
    if t.len() >= 2 && matches!((t[0], t[t.len() - 1]), (b'{', b'}') | (b'[', b']')) {
        return t[1..t.len() - 1].trim_ascii().is_empty();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};
    use flate2::Compression;
    use std::io::Write;

    fn headers(ce: Option<&str>) -> Headers {
        let mut h = Headers::default();
        if let Some(v) = ce {
            h.push(b"Content-Encoding", v.as_bytes());
        }
        h
    }

    fn gzip(b: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn decoding_table() {
        let text = b"Traceback (most recent call last):\n  File x";
        let mut z = ZlibEncoder::new(Vec::new(), Compression::default());
        z.write_all(text).unwrap();
        let zlib = z.finish().unwrap();
        let mut d = DeflateEncoder::new(Vec::new(), Compression::default());
        d.write_all(text).unwrap();
        let raw = d.finish().unwrap();
        type Case<'a> = (Option<&'a str>, Vec<u8>, Option<&'a [u8]>);
        let cases: Vec<Case<'_>> = vec![
            (None, text.to_vec(), Some(text)),
            (Some("identity"), text.to_vec(), Some(text)),
            (Some("gzip"), gzip(text), Some(text)),
            (Some("x-gzip"), gzip(text), Some(text)),
            (Some("deflate"), zlib, Some(text)),
            (Some("deflate"), raw, Some(text)),
            (Some("br"), text.to_vec(), None),
            (Some("gzip, br"), gzip(text), None),
        ];
        for (ce, body, want) in cases {
            let got = decoded_prefix(&headers(ce), &body, 4096, || true);
            assert_eq!(got.as_deref(), want, "{ce:?}");
        }
    }

    /// What flate2's streaming decoders give (how bodies were decoded
    /// before): read until end, error or `limit` bytes.
    fn streamed(ce: &str, body: &[u8], limit: usize) -> Vec<u8> {
        use flate2::bufread::{DeflateDecoder, GzDecoder, ZlibDecoder};
        use std::io::Read;
        fn read_bounded(mut r: impl Read, limit: usize) -> Vec<u8> {
            let mut out = vec![0u8; limit];
            let mut n = 0;
            while n < limit {
                match r.read(&mut out[n..]) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k,
                }
            }
            out.truncate(n);
            out
        }
        match ce {
            "gzip" => read_bounded(GzDecoder::new(body), limit),
            _ if zlib_wrapped(body) => read_bounded(ZlibDecoder::new(body), limit),
            _ => read_bounded(DeflateDecoder::new(body), limit),
        }
    }

    /// A gzip member with every optional header field, the header CRC
    /// right or wrong.
    fn gzip_all_fields(text: &[u8], crc_right: bool) -> Vec<u8> {
        let mut h = vec![0x1f, 0x8b, 8, 0b1_1110, 0, 0, 0, 0, 0, 3];
        h.extend_from_slice(&3u16.to_le_bytes());
        h.extend_from_slice(b"xyz");
        h.extend_from_slice(b"name.json\0a comment\0");
        let mut crc = Crc::new();
        crc.update(&h);
        let sum = crc.sum() as u16 ^ u16::from(!crc_right);
        h.extend_from_slice(&sum.to_le_bytes());
        let mut d = DeflateEncoder::new(h, Compression::default());
        d.write_all(text).unwrap();
        d.finish().unwrap()
    }

    #[test]
    fn gzip_header_fields_are_skipped_and_a_wrong_header_crc_refused() {
        let text = b"{\"token\":\"eyJhbGciOiJIUzI1NiJ9\"}";
        for right in [true, false] {
            let body = gzip_all_fields(text, right);
            let got = decoded_prefix(&headers(Some("gzip")), &body, 4096, || true).unwrap();
            assert_eq!(got.as_ref(), if right { &text[..] } else { b"" });
            assert_eq!(got.as_ref(), streamed("gzip", &body, 4096));
        }
    }

    proptest::proptest! {
        /// Whole or cut, gzip, zlib or raw deflate, with header fields or
        /// not: the same bytes as flate2's streaming decoders; damaged, at
        /// least theirs.
        #[test]
        fn decodes_as_the_streaming_decoders_do(
            text in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000),
            repeat in 1usize..8,
            kind in 0u8..5,
            cut in 0.0f64..1.2,
            flip in proptest::option::of((0.0f64..1.0, 1u8..=255)),
            limit in 64usize..5000,
        ) {
            let text = text.repeat(repeat);
            let (ce, mut body) = match kind {
                0 => ("gzip", gzip(&text)),
                1 => ("gzip", gzip_all_fields(&text, true)),
                2 => {
                    let mut z = ZlibEncoder::new(Vec::new(), Compression::default());
                    z.write_all(&text).unwrap();
                    ("deflate", z.finish().unwrap())
                }
                3 => {
                    let mut d = DeflateEncoder::new(Vec::new(), Compression::fast());
                    d.write_all(&text).unwrap();
                    ("deflate", d.finish().unwrap())
                }
                _ => ("gzip", text.clone()),
            };
            let keep = ((body.len() as f64 * cut) as usize).min(body.len());
            body.truncate(keep);
            if let Some((at, x)) = flip {
                if !body.is_empty() {
                    let i = ((body.len() as f64 * at) as usize).min(body.len() - 1);
                    body[i] ^= x;
                }
            }
            let got = decoded_prefix(&headers(Some(ce)), &body, limit, || true).unwrap();
            let want = streamed(ce, &body, limit);
            proptest::prop_assert!(got.len() <= limit);
            if flip.is_none() {
                proptest::prop_assert_eq!(got.as_ref(), want.as_slice());
            } else {
                // Damaged: a reader's last read before the error was
                // dropped; here what was decoded before it is kept.
                proptest::prop_assert!(got.starts_with(&want));
            }
        }
    }

    /// 0, 1, 2, … up to `n`, written out one after another: text that
    /// compresses but is not all one byte.
    fn digits(n: u32) -> Vec<u8> {
        (0..n).flat_map(|i| i.to_string().into_bytes()).collect()
    }

    #[test]
    fn truncated_gzip_yields_what_it_can() {
        let text = digits(5000);
        let gz = gzip(&text);
        let cut = &gz[..gz.len() / 2];
        let got = decoded_prefix(&headers(Some("gzip")), cut, 1 << 20, || true).unwrap();
        assert!(!got.is_empty());
        assert!(text.starts_with(&got));
    }

    /// One set of kept decompressors across bodies of every coding, cut,
    /// whole and broken, in turn: each answer is what new ones give.
    #[test]
    fn kept_decompressors_answer_as_new_ones() {
        let text = digits(3000);
        let gz = gzip(&text);
        let mut z = ZlibEncoder::new(Vec::new(), Compression::default());
        z.write_all(&text).unwrap();
        let zlib = z.finish().unwrap();
        let mut d = DeflateEncoder::new(Vec::new(), Compression::default());
        d.write_all(&text).unwrap();
        let raw = d.finish().unwrap();
        let mut bad_crc = gz.clone();
        let n = bad_crc.len();
        bad_crc[n - 6] ^= 0xff;
        let bodies: Vec<(&str, &[u8])> = vec![
            ("gzip", &gz),
            ("gzip", &gz[..gz.len() / 3]),
            ("gzip", &gz[..5]),
            ("gzip", &bad_crc),
            ("gzip", b"not gzip at all"),
            ("deflate", &zlib),
            ("deflate", &zlib[..zlib.len() / 2]),
            ("deflate", &raw),
            ("deflate", &raw[..raw.len() / 2]),
            ("deflate", b"\xff\xff\xff"),
        ];
        let mut kept = Inflaters::default();
        for round in 0..2 {
            for (i, (ce, body)) in bodies.iter().enumerate() {
                for limit in [100, 4096, 1 << 20] {
                    let h = headers(Some(ce));
                    let want = decoded_prefix(&h, body, limit, || true);
                    let got = kept.decoded_prefix(&h, body, limit, || true);
                    assert_eq!(got, want, "round {round} body {i} limit {limit}");
                }
            }
        }
    }

    #[test]
    fn decompression_bomb_is_bounded() {
        let zeros = vec![0u8; 50 << 20];
        let gz = gzip(&zeros);
        let prefix = &gz[..gz.len().min(2048)];
        let got = decoded_prefix(&headers(Some("gzip")), prefix, 8192, || true).unwrap();
        assert_eq!(got.len(), 8192);
    }

    #[test]
    fn empty_json_table() {
        let cases: &[(&[u8], bool)] = &[
            (b"", true),
            (b"{}", true),
            (b" [ ] \n", true),
            (b"null", true),
            (b"{ }", true),
            (b"0", false),
            (b"{\"a\":1}", false),
            (b"[0]", false),
            (b"\"\"", false),
            (b"nullx", false),
        ];
        for (t, want) in cases {
            assert_eq!(is_empty_json(t), *want, "{:?}", String::from_utf8_lossy(t));
        }
    }
}

#[cfg(test)]
mod worth_tests {
    use super::*;

    fn h(ct: Option<&str>) -> Headers {
        let mut h = Headers::default();
        if let Some(v) = ct {
            h.push(b"Content-Type", v.as_bytes());
        }
        h
    }

    #[test]
    fn decoding_only_where_a_rule_can_use_it() {
        let cases: &[(Option<&str>, u64, Option<u16>, bool)] = &[
            (Some("image/png"), 50_000, Some(500), true),
            (Some("image/png"), 40, Some(200), true),
            (Some("application/json"), 1_000, Some(200), true),
            (Some("application/json"), 3_000, Some(200), false),
            (Some("application/json"), 40_000, Some(200), false),
            (Some("image/png"), 1_000, Some(200), false),
            (None, 1_000, None, true),
            (Some("application/x-www-form-urlencoded"), 300, None, true),
        ];
        for (ct, bytes, status, want) in cases {
            assert_eq!(
                worth_decoding(&h(*ct), *bytes, *status),
                *want,
                "{ct:?} {bytes} {status:?}"
            );
        }
    }
}
