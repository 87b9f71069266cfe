//! Per-exchange exposure rules (SPEC "Finding kinds"), one function each.
//!
//! Contract: each rule looks at an exchange and, when it fires, returns the
//! evidence text; evidence names what was exposed and its length, never the
//! value (see [`super::findings::push_redacted`]). All work is bounded by the
//! head size, the body prefix and the configured limits. A rule that does
//! not fire allocates nothing; one that fires builds its evidence in one
//! string.

use super::addr;
use super::findings::{printable, push_decimal, push_more, push_printable, push_redacted};
use super::jwt;
use super::redact::{is_credential_name, percent_decode};
use super::settings::ClassifyConfig;
use crate::http::exchange::Exchange;
use crate::http::{Headers, RequestHead};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// `Basic <redacted, 24 bytes>`: the scheme word, if the value has one, and
/// the length of the rest.
fn push_credential_value(out: &mut String, v: &[u8]) {
    let v = v.trim_ascii();
    if let Some(sp) = memchr::memchr(b' ', v) {
        let scheme = &v[..sp];
        if !scheme.is_empty() && scheme.len() <= 20 && scheme.iter().all(u8::is_ascii_alphabetic) {
            push_printable(out, scheme, 20);
            out.push(' ');
            push_redacted(out, v[sp + 1..].trim_ascii().len());
            return;
        }
    }
    push_redacted(out, v.len());
}

/// `cleartext_credentials`: Authorization, Proxy-Authorization or an
/// API-key header on plaintext HTTP; or userinfo in Host (clients that copy
/// a URL's authority into Host send `user:password@` there).
pub fn cleartext_credentials(cfg: &ClassifyConfig, req: &RequestHead) -> Option<String> {
    let mut first = None;
    let mut count = 0;
    for (name, value) in req.headers.iter() {
        if name.eq_ignore_ascii_case(b"host") {
            if let Some(at) = memchr::memrchr(b'@', value) {
                count += 1;
                first.get_or_insert_with(|| {
                    let mut e = String::from("userinfo in Host: ");
                    push_redacted(&mut e, at);
                    e
                });
            }
            continue;
        }
        let is_cred = name.eq_ignore_ascii_case(b"authorization")
            || name.eq_ignore_ascii_case(b"proxy-authorization")
            || cfg
                .api_key_headers
                .iter()
                .any(|h| name.eq_ignore_ascii_case(h.as_bytes()));
        if is_cred {
            count += 1;
            if first.is_none() {
                let mut e = String::with_capacity(64);
                push_printable(&mut e, name, 64);
                e.push_str(": ");
                push_credential_value(&mut e, value);
                first = Some(e);
            }
        }
    }
    first.map(|mut e| {
        push_more(&mut e, count - 1);
        e
    })
}

/// The query of a target (without fragment), if any.
fn query_of(target: &[u8]) -> Option<&[u8]> {
    let q = &target[memchr::memchr(b'?', target)? + 1..];
    Some(match memchr::memchr(b'#', q) {
        Some(i) => &q[..i],
        None => q,
    })
}

/// Userinfo of an absolute-form target (any `://` before the query, as
/// `redact_target` redacts it: a URL inside the path counts too).
fn userinfo(target: &[u8]) -> Option<&[u8]> {
    let before_query = &target[..memchr::memchr2(b'?', b'#', target).unwrap_or(target.len())];
    let p = super::search::scheme_end(before_query)?;
    let rest = &before_query[p + 3..];
    let auth = &rest[..memchr::memchr(b'/', rest).unwrap_or(rest.len())];
    memchr::memrchr(b'@', auth).map(|at| &auth[..at])
}

/// `credentials_in_url`: a credential-named query (or fragment: clients
/// that send one carry tokens there, `#access_token=`) parameter with a
/// value, or userinfo in an absolute target.
pub fn credentials_in_url(cfg: &ClassifyConfig, target: &[u8]) -> Option<String> {
    // The evidence names the first credential found and counts the rest.
    let mut first: Option<String> = None;
    let mut count = 0;
    if let Some(ui) = userinfo(target) {
        count += 1;
        let mut e = String::from("userinfo in target: ");
        push_redacted(&mut e, ui.len());
        first = Some(e);
    }
    let fragment = memchr::memchr(b'#', target).map(|h| &target[h + 1..]);
    for (place, pairs) in [("query", query_of(target)), ("fragment", fragment)] {
        let Some(pairs) = pairs else { continue };
        for pair in pairs.split(|&b| b == b'&') {
            let (name, value) = match memchr::memchr(b'=', pair) {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => continue,
            };
            if !value.is_empty() && is_credential_name(name, &cfg.credential_params) {
                count += 1;
                if first.is_none() {
                    let mut e = format!("{place} parameter ");
                    push_printable(&mut e, name, 64);
                    e.push('=');
                    push_redacted(&mut e, value.len());
                    first = Some(e);
                }
            }
        }
    }
    let mut e = first?;
    push_more(&mut e, count - 1);
    Some(e)
}

/// Cookie pairs `name=<redacted, n bytes>` of Cookie header values, the
/// first four shown (`; ` between them) and the rest counted, appended to
/// `out`; false (nothing appended) when there is no pair.
fn push_cookie_list<'a>(out: &mut String, values: impl Iterator<Item = &'a [u8]>) -> bool {
    let mut shown = 0;
    let mut total = 0;
    for v in values {
        for pair in v.split(|&b| b == b';') {
            let pair = pair.trim_ascii();
            if pair.is_empty() {
                continue;
            }
            total += 1;
            if shown < 4 {
                let (name, value) = match memchr::memchr(b'=', pair) {
                    Some(i) => (&pair[..i], &pair[i + 1..]),
                    None => (&b""[..], pair),
                };
                if shown > 0 {
                    out.push_str("; ");
                }
                push_printable(out, name.trim_ascii(), 32);
                out.push('=');
                push_redacted(out, value.len());
                shown += 1;
            }
        }
    }
    push_more(out, total - shown);
    total > 0
}

/// `cleartext_session_cookie`: a Cookie header on plaintext HTTP.
pub fn cleartext_session_cookie(req: &RequestHead) -> Option<String> {
    req.headers.get("cookie")?;
    let mut e = String::with_capacity(64);
    e.push_str("Cookie: ");
    if !push_cookie_list(&mut e, req.headers.get_all("cookie")) {
        push_redacted(&mut e, 0);
    }
    Some(e)
}

/// `insecure_cookie`: a Set-Cookie lacking Secure or HttpOnly.
pub fn insecure_cookie(headers: &Headers) -> Option<String> {
    let mut first = None;
    let mut count = 0;
    for v in headers.get_all("set-cookie") {
        let mut parts = v.split(|&b| b == b';');
        let nv = parts.next().unwrap_or_default().trim_ascii();
        let (mut secure, mut http_only) = (false, false);
        for attr in parts {
            let a = attr.trim_ascii();
            let name = &a[..memchr::memchr(b'=', a).unwrap_or(a.len())];
            let name = name.trim_ascii();
            secure |= name.eq_ignore_ascii_case(b"secure");
            http_only |= name.eq_ignore_ascii_case(b"httponly");
        }
        if secure && http_only {
            continue;
        }
        count += 1;
        if first.is_none() {
            let (name, value) = match memchr::memchr(b'=', nv) {
                Some(i) => (&nv[..i], &nv[i + 1..]),
                None => (&b""[..], nv),
            };
            let lacks = match (secure, http_only) {
                (false, false) => "Secure, HttpOnly",
                (false, true) => "Secure",
                _ => "HttpOnly",
            };
            let mut e = String::with_capacity(64);
            e.push_str("Set-Cookie: ");
            push_printable(&mut e, name.trim_ascii(), 32);
            e.push('=');
            push_redacted(&mut e, value.len());
            e.push_str(" lacks ");
            e.push_str(lacks);
            first = Some(e);
        }
    }
    first.map(|mut e| {
        push_more(&mut e, count - 1);
        e
    })
}

/// Parse a Host value as an IP literal (with or without port). IPv4 is
/// read as browsers read it: one to four dot-separated decimal, octal-ish
/// (leading zeros) or `0x` hex parts, so `10.000.000.001` and `0x7f.1` are
/// literals too.
pub fn host_ip_literal(host: &str) -> Option<IpAddr> {
    if let Some(rest) = host.strip_prefix('[') {
        let end = rest.find(']')?;
        return rest[..end].parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    let h = match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    if let Some(v4) = lenient_ipv4(h.strip_suffix('.').unwrap_or(h)) {
        return Some(IpAddr::V4(v4));
    }
    // Every IPv6 literal has a ':'; a name (the common case) is not parsed.
    if !host.contains(':') {
        return None;
    }
    host.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
}

fn lenient_ipv4(h: &str) -> Option<Ipv4Addr> {
    // One to four parts, read into an array: no allocation for a Host that
    // is a name (the common case).
    let mut nums = [0u64; 4];
    let mut len = 0;
    for p in h.split('.') {
        if len == nums.len() {
            return None;
        }
        let n = if let Some(x) = p.strip_prefix("0x").or_else(|| p.strip_prefix("0X")) {
            if x.is_empty() {
                0
            } else if x.len() <= 8 && x.bytes().all(|b| b.is_ascii_hexdigit()) {
                u64::from_str_radix(x, 16).ok()?
            } else {
                return None;
            }
        } else if !p.is_empty() && p.len() <= 12 && p.bytes().all(|b| b.is_ascii_digit()) {
            p.parse::<u64>().ok()?
        } else {
            return None;
        };
        nums[len] = n;
        len += 1;
    }
    let nums = &nums[..len];
    let (last, init) = nums.split_last()?;
    if init.iter().any(|&n| n > 255) || *last >= 1u64 << (8 * (5 - nums.len())) {
        return None;
    }
    let mut v: u64 = *last;
    for (i, n) in init.iter().enumerate() {
        v |= n << (8 * (3 - i));
    }
    Some(Ipv4Addr::from(v as u32))
}

#[cfg(test)]
#[test]
fn host_ip_literal_table() {
    let cases: &[(&str, Option<&str>)] = &[
        ("10.0.0.9", Some("10.0.0.9")),
        ("10.0.0.9:8080", Some("10.0.0.9")),
        ("10.000.000.001:1234", Some("10.0.0.1")),
        ("0x7f.1", Some("127.0.0.1")),
        ("2130706433", Some("127.0.0.1")),
        ("[::1]:80", Some("::1")),
        ("::1", Some("::1")),
        ("api.example.com", None),
        ("10.0.0.9.nip.example", None),
        ("256.1.1.1", None),
        ("1.2.3.4.5", None),
        ("v1.example", None),
    ];
    for (h, want) in cases {
        assert_eq!(
            host_ip_literal(h).map(|a| a.to_string()).as_deref(),
            *want,
            "{h}"
        );
    }
}

/// `ip_literal_host`: Host is an IP literal, or missing. `literal`: what
/// [`host_ip_literal`] says of `host` (classification asks it once per
/// exchange, for this rule and for the server's identity).
pub fn ip_literal_host(host: Option<&str>, literal: bool) -> Option<String> {
    match host {
        None => Some("no Host header".to_string()),
        Some(h) if literal => {
            let mut e = String::with_capacity(h.len().min(64) + 9);
            e.push_str("Host: ");
            push_printable(&mut e, h.as_bytes(), 64);
            Some(e)
        }
        Some(_) => None,
    }
}

/// `public_plaintext_endpoint`: the answering server's address is public.
pub fn public_plaintext_endpoint(cfg: &ClassifyConfig, ex: &Exchange) -> Option<String> {
    ex.response.as_ref()?;
    let ip = ex.server.ip();
    if addr::special_purpose(ip).is_some() || cfg.internal_networks.iter().any(|n| n.contains(ip)) {
        return None;
    }
    let mut e = String::from("plaintext HTTP answered by public address ");
    // Writing into a String cannot fail.
    let _ = write!(e, "{}", ex.server);
    Some(e)
}

/// Does a (raw) piece of a URL hold a `..` segment, plain or encoded?
/// Returns (found, encoded).
fn dot_dot(piece: &[u8]) -> Option<bool> {
    for seg in piece.split(|&b| b == b'/' || b == b'\\') {
        if seg == b".." {
            return Some(false);
        }
        if seg.len() > 2 && seg.contains(&b'%') {
            let d = percent_decode(seg);
            if d.split(|&b| b == b'/' || b == b'\\').any(|s| s == b"..") {
                return Some(true);
            }
        }
    }
    None
}

/// No reason of [`unsafe_url`] can hold, in one pass (most targets): only
/// bytes safe raw, no `%` (so nothing encoded nor double encoded) and no
/// `..` (so no dot-dot segment).
fn plainly_safe(target: &[u8]) -> bool {
    let mut prev_dot = false;
    for &b in target {
        let dot = b == b'.';
        if !(0x21..0x7f).contains(&b)
            || matches!(b, b'<' | b'>' | b'"' | b'\\' | b'%')
            || (dot && prev_dot)
        {
            return false;
        }
        prev_dot = dot;
    }
    true
}

/// `unsafe_url`: raw unsafe bytes, a `..` segment, double encoding, or an
/// over-long target. The evidence lists reasons, never the target.
pub fn unsafe_url(cfg: &ClassifyConfig, target: &[u8]) -> Option<String> {
    if target.len() <= cfg.max_target_bytes && plainly_safe(target) {
        return None;
    }
    let mut reasons: Vec<String> = Vec::new();
    let mut raw: Vec<&str> = Vec::new();
    for &b in target {
        let what = match b {
            b' ' => "space",
            b'<' => "'<'",
            b'>' => "'>'",
            b'"' => "'\"'",
            b'\\' => "backslash",
            0..=0x1f | 0x7f => "control byte",
            0x80..=0xff => "non-ASCII byte",
            _ => continue,
        };
        if !raw.contains(&what) {
            raw.push(what);
        }
    }
    if !raw.is_empty() {
        reasons.push(format!("raw {} in target", raw.join(", ")));
    }
    let (path, query) = match memchr::memchr(b'?', target) {
        Some(i) => (&target[..i], Some(&target[i + 1..])),
        None => (target, None),
    };
    let mut dd = dot_dot(path).map(|enc| (enc, "path"));
    if dd.is_none() {
        if let Some(q) = query {
            dd = q
                .split(|&b| b == b'&' || b == b'=')
                .find_map(dot_dot)
                .map(|enc| (enc, "query"));
        }
    }
    if let Some((enc, wher)) = dd {
        reasons.push(format!(
            "{}'..' segment in {wher}",
            if enc { "encoded " } else { "" }
        ));
    }
    if target.windows(5).any(|w| {
        w[0] == b'%'
            && w[1] == b'2'
            && w[2] == b'5'
            && w[3].is_ascii_hexdigit()
            && w[4].is_ascii_hexdigit()
    }) {
        reasons.push("double encoding (%25xx)".to_string());
    }
    if target.len() > cfg.max_target_bytes {
        reasons.push(format!(
            "target is {} bytes (limit {})",
            target.len(),
            cfg.max_target_bytes
        ));
    }
    (!reasons.is_empty()).then(|| reasons.join("; "))
}

/// `deprecated_endpoint`: a Deprecation or Sunset header.
pub fn deprecated_endpoint(headers: &Headers) -> Option<String> {
    for name in ["Deprecation", "Sunset"] {
        if let Some(v) = headers.get(name) {
            let mut e = String::with_capacity(name.len() + 2 + v.len().min(80) + 3);
            e.push_str(name);
            e.push_str(": ");
            push_printable(&mut e, v, 80);
            return Some(e);
        }
    }
    None
}

/// Where a JWT was seen, for evidence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JwtPlace {
    RequestHeader,
    Path,
    Query,
    RequestBody,
    ResponseHeader,
    ResponseBody,
}

/// What JWT inspection of an exchange found.
#[derive(Debug, Default)]
pub struct JwtScan {
    /// A request JWT expired before the request's capture time.
    pub expired_in_request: bool,
    /// Evidence of the first weak JWT, and how many were weak.
    pub weak: Option<String>,
    pub weak_count: usize,
}

impl JwtScan {
    fn look(
        &mut self,
        cfg: &ClassifyConfig,
        text: &[u8],
        place: impl Fn(usize) -> (JwtPlace, String),
        now_micros: Option<i64>,
        budget: &mut usize,
        cache: &mut jwt::JwtCache,
    ) {
        // Most header values are too short to hold a token: skip them
        // without a search. (find_jwts searches once; no search first.)
        if *budget == 0 || text.len() < super::redact::MIN_JWT_BYTES {
            return;
        }
        for tok in jwt::find_jwts(text, *budget) {
            *budget -= 1;
            let Some(info) = cache.inspect(tok) else {
                continue;
            };
            if let Some(now) = now_micros {
                self.expired_in_request |= info.expired_at(now);
            }
            if let Some(w) = info.weakness(cfg.max_jwt_lifetime_secs) {
                self.weak_count += 1;
                if self.weak.is_none() {
                    let offset = tok.as_ptr() as usize - text.as_ptr() as usize;
                    let (_, where_) = place(offset);
                    let mut e = String::with_capacity(96);
                    e.push_str("JWT in ");
                    e.push_str(&where_);
                    e.push_str(" (");
                    push_decimal(&mut e, tok.len() as u64);
                    e.push_str(" bytes, alg ");
                    e.push_str(&info.alg);
                    e.push_str("): ");
                    // Writing into a String cannot fail.
                    let _ = write!(e, "{w}");
                    self.weak = Some(e);
                }
            }
        }
    }
}

/// The fields whose value holds an `eyJ` (where a token would start):
/// one search over the whole head instead of one per value (most heads
/// have none, and a search costs more to start than to run on a short
/// value). A value without one holds no token, so [`JwtScan::look`]
/// finds the same in these fields as in all.
fn with_jwt_start(headers: &Headers) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
    let mut hits = super::search::jwt_starts(headers.bytes()).peekable();
    let mut fields = headers.iter_at();
    std::iter::from_fn(move || loop {
        hits.peek()?;
        let (at, name, value) = fields.next()?;
        // Hits before this value (in a name, or in the lengths) are done.
        while hits.next_if(|&h| h < at).is_some() {}
        if hits.peek().is_some_and(|&h| h + 3 <= at + value.len()) {
            return Some((name, value));
        }
    })
}

/// Inspect every JWT of the exchange (bounded): request headers, target
/// (path and query), request body, response headers and body. Bodies are
/// the decoded prefixes.
pub fn scan_jwts(
    cfg: &ClassifyConfig,
    cache: &mut jwt::JwtCache,
    ex: &Exchange,
    request_body: &[u8],
    response_body: &[u8],
) -> JwtScan {
    let mut scan = JwtScan::default();
    let mut budget = cfg.max_jwts_per_exchange;
    let now = ex.ts.as_micros();
    if let Some(req) = &ex.request {
        for (name, value) in with_jwt_start(&req.headers) {
            // The place is named only when a token is found there.
            scan.look(
                cfg,
                value,
                |_| {
                    (
                        JwtPlace::RequestHeader,
                        format!("{} header", printable(name, 64)),
                    )
                },
                Some(now),
                &mut budget,
                cache,
            );
        }
        let q = memchr::memchr(b'?', &req.target).unwrap_or(req.target.len());
        scan.look(
            cfg,
            &req.target,
            |off| {
                if off < q {
                    (JwtPlace::Path, "path segment".into())
                } else {
                    (JwtPlace::Query, "query string".into())
                }
            },
            Some(now),
            &mut budget,
            cache,
        );
        scan.look(
            cfg,
            request_body,
            |_| (JwtPlace::RequestBody, "request body".into()),
            Some(now),
            &mut budget,
            cache,
        );
    }
    if let Some(resp) = &ex.response {
        for (name, value) in with_jwt_start(&resp.headers) {
            scan.look(
                cfg,
                value,
                |_| {
                    (
                        JwtPlace::ResponseHeader,
                        format!("response {} header", printable(name, 64)),
                    )
                },
                None,
                &mut budget,
                cache,
            );
        }
        scan.look(
            cfg,
            response_body,
            |_| (JwtPlace::ResponseBody, "response body".into()),
            None,
            &mut budget,
            cache,
        );
    }
    if let Some(w) = &mut scan.weak {
        push_more(w, scan.weak_count - 1);
    }
    scan
}

#[cfg(test)]
mod with_jwt_start_tests {
    use super::*;
    use proptest::prelude::*;

    /// The fields whose value holds `eyJ`, the slow way.
    fn expected(h: &Headers) -> Vec<(Vec<u8>, Vec<u8>)> {
        h.iter()
            .filter(|(_, v)| memchr::memmem::find(v, b"eyJ").is_some())
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect()
    }

    fn found(h: &Headers) -> Vec<(Vec<u8>, Vec<u8>)> {
        with_jwt_start(h)
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect()
    }

    #[test]
    fn only_values_holding_a_token_start() {
        let mut h = Headers::default();
        h.push(b"eyJ-in-a-name", b"plain");
        h.push(b"Authorization", b"Bearer eyJhbGciOi.eyJzdWIi.sig eyJ");
        h.push(b"X-Ends", b"ends with ey");
        h.push(b"Jx", b"J starts the next");
        h.push(b"X-Empty", b"");
        h.push(b"Cookie", b"a=eyJ");
        assert_eq!(found(&h), expected(&h));
        assert_eq!(found(&h).len(), 2);
        assert_eq!(found(&Headers::default()), vec![]);
    }

    proptest! {
        #[test]
        fn same_fields_as_a_search_of_each_value(
            fields in proptest::collection::vec(
                (proptest::collection::vec(prop_oneof![Just(b'e'), Just(b'y'), Just(b'J'), Just(b'x')], 0..6),
                 proptest::collection::vec(prop_oneof![Just(b'e'), Just(b'y'), Just(b'J'), Just(b'x')], 0..12)),
                0..8)
        ) {
            let mut h = Headers::default();
            for (n, v) in &fields {
                h.push(n, v);
            }
            prop_assert_eq!(found(&h), expected(&h));
        }
    }
}
