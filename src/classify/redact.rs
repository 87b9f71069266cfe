//! Redaction of request-targets for logs.
//!
//! Contract: [`redact_target`] returns the target as text that holds no
//! secret: values of credential-named query parameters, any query value that
//! is a JWT, userinfo of an absolute-form target and JWT path segments are
//! replaced by `REDACTED`, and so are credential-named values and JWTs in a
//! fragment (clients should not send one, but those that do carry tokens
//! there too: `#access_token=`). Bytes that are not UTF-8 are
//! percent-encoded, so the result is always valid text and loses nothing
//! else. When nothing is
//! replaced and the target is UTF-8 the result borrows it (no allocation).

use std::borrow::Cow;
use std::fmt::Write as _;

/// SPEC's default credential parameter names (configurable).
pub const DEFAULT_CREDENTIAL_PARAMS: &[&str] = &[
    "token",
    "access_token",
    "api_key",
    "apikey",
    "key",
    "password",
    "passwd",
    "secret",
    "client_secret",
    "auth",
    "sig",
    "signature",
    "session",
    "sessionid",
    "jwt",
];

pub const REDACTED: &str = "REDACTED";

/// The shortest text [`is_jwt`] accepts.
pub const MIN_JWT_BYTES: usize = 16;

/// Does `s` look like a JWT (JWS compact form: three base64url parts, the
/// first a JSON object, i.e. starting `eyJ`)?
pub fn is_jwt(s: &[u8]) -> bool {
    if s.len() < MIN_JWT_BYTES || !s.starts_with(b"eyJ") {
        return false;
    }
    // No early exit: both passes compile to vector code, and a token is
    // hundreds of bytes.
    let bad = s.iter().fold(false, |bad, &b| bad | !is_token_byte(b));
    !bad && dots(s) == 2
}

/// A byte of a JWT's compact form: base64url, `=` padding or a dot.
pub const fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() | matches!(b, b'-' | b'_' | b'=' | b'.')
}

/// How many dots `s` holds.
pub fn dots(s: &[u8]) -> usize {
    s.iter().filter(|&&b| b == b'.').count()
}

/// Is `name` (raw, possibly percent-encoded) one of `cred_names`
/// (ASCII case-insensitive)?
pub fn is_credential_name(name: &[u8], cred_names: &[String]) -> bool {
    // Decoding is the identity without a '%': skip its allocation.
    let decoded = match memchr::memchr(b'%', name) {
        Some(_) => Cow::Owned(percent_decode(name)),
        None => Cow::Borrowed(name),
    };
    cred_names
        .iter()
        .any(|c| c.as_bytes().eq_ignore_ascii_case(&decoded))
}

/// Percent-decoding, lenient: a bad escape stays as it is.
pub fn percent_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' && i + 2 < s.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(s[i + 1]), hex(s[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

/// The target with every secret replaced (see module doc). Borrows the
/// target when nothing is replaced and it is UTF-8 (the common case).
pub fn redact_target<'a>(target: &'a [u8], cred_names: &[String]) -> Cow<'a, str> {
    let mut out = CowBytes::new(target);
    let (path_end, query_start) = match memchr::memchr(b'?', target) {
        Some(i) => (i, Some(i + 1)),
        None => (target.len(), None),
    };
    // userinfo in absolute-form: scheme://user:pass@host/... Any `://`
    // before the query counts (not only a target's own scheme, as for its
    // host): userinfo of a URL inside the path is redacted too.
    let mut path_start = 0;
    if let Some(p) = super::search::scheme_end(&target[..path_end]) {
        let auth_start = p + 3;
        let auth_end = memchr::memchr(b'/', &target[auth_start..path_end])
            .map_or(path_end, |i| auth_start + i);
        if let Some(at) = memchr::memrchr(b'@', &target[auth_start..auth_end]) {
            out.redact(auth_start..auth_start + at);
        }
        path_start = auth_end;
    }
    let mut at = path_start;
    for seg in target[path_start..path_end].split(|&b| b == b'/') {
        if is_jwt(seg) {
            out.redact(at..at + seg.len());
        }
        at += seg.len() + 1;
    }
    if let Some(q_start) = query_start {
        let q_end = memchr::memchr(b'#', &target[q_start..]).map_or(target.len(), |i| q_start + i);
        redact_pairs(&mut out, target, q_start..q_end, cred_names);
    }
    let text = out.finish();
    // The fragment, in a second pass over the text (its pairs may overlap
    // what the first replaced, and ranges must come in order); rare.
    let Some(hash) = memchr::memchr(b'#', text.as_bytes()) else {
        return text;
    };
    let t = text.as_bytes();
    let mut out = CowBytes::new(t);
    redact_pairs(&mut out, t, hash + 1..t.len(), cred_names);
    if out.owned.is_none() {
        return text;
    }
    Cow::Owned(out.finish().into_owned())
}

/// The `&`-separated `name=value` pairs of `target[range]`: values of
/// credential-named pairs and JWTs (values, or pairs without `=`) replaced.
fn redact_pairs(
    out: &mut CowBytes<'_>,
    target: &[u8],
    range: std::ops::Range<usize>,
    cred_names: &[String],
) {
    let mut at = range.start;
    for pair in target[range].split(|&b| b == b'&') {
        if let Some(from) = secret_in_pair(pair, cred_names) {
            out.redact(at + from..at + pair.len());
        }
        at += pair.len() + 1;
    }
}

/// Where the secret in one `name=value` pair starts: its value, when the
/// name is a credential's or the value a JWT; the pair itself, when it has
/// no `=` and is a JWT.
fn secret_in_pair(pair: &[u8], cred_names: &[String]) -> Option<usize> {
    match memchr::memchr(b'=', pair) {
        Some(eq) => {
            let (name, value) = (&pair[..eq], &pair[eq + 1..]);
            (!value.is_empty() && (is_credential_name(name, cred_names) || is_jwt(value)))
                .then_some(eq + 1)
        }
        None => is_jwt(pair).then_some(0),
    }
}

/// The target with some ranges replaced by [`REDACTED`], copied only once
/// the first range is replaced. Ranges come in increasing order.
struct CowBytes<'a> {
    src: &'a [u8],
    /// Set once something was replaced: the output up to `copied`.
    owned: Option<Vec<u8>>,
    copied: usize,
}

impl<'a> CowBytes<'a> {
    fn new(src: &'a [u8]) -> Self {
        CowBytes {
            src,
            owned: None,
            copied: 0,
        }
    }

    fn redact(&mut self, range: std::ops::Range<usize>) {
        let out = self
            .owned
            .get_or_insert_with(|| Vec::with_capacity(self.src.len() + REDACTED.len()));
        out.extend_from_slice(&self.src[self.copied..range.start]);
        out.extend_from_slice(REDACTED.as_bytes());
        self.copied = range.end;
    }

    fn finish(self) -> Cow<'a, str> {
        match self.owned {
            None => text_of(self.src),
            Some(mut out) => {
                out.extend_from_slice(&self.src[self.copied..]);
                match String::from_utf8(out) {
                    Ok(s) => Cow::Owned(s),
                    Err(e) => Cow::Owned(bytes_to_text(e.as_bytes())),
                }
            }
        }
    }
}

/// [`bytes_to_text`], borrowing when `b` is UTF-8.
fn text_of(b: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(b) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => Cow::Owned(bytes_to_text(b)),
    }
}

/// Only printable ASCII (nearly every Host and path): nothing for
/// [`escape_controls`] to do. One comparison per byte and no early exit, so
/// the compiler can take several bytes at once.
pub fn is_printable_ascii(b: &[u8]) -> bool {
    !b.iter()
        .fold(false, |odd, &c| odd | (c.wrapping_sub(0x20) >= 0x5f))
}

/// `s` with each control character (C0, DEL, C1) written as `%XX` of its
/// UTF-8 bytes, as [`bytes_to_text`] writes invalid bytes: a Host or a path
/// from the wire that reaches a terminal (the report), a label or a
/// dashboard cannot move the cursor, retitle a window or end a line there.
/// Borrowed when there is none (the usual case: one pass over the bytes).
pub fn escape_controls(s: Cow<'_, str>) -> Cow<'_, str> {
    if is_printable_ascii(s.as_bytes()) || !s.chars().any(char::is_control) {
        return s;
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            let mut utf8 = [0; 4];
            for b in c.encode_utf8(&mut utf8).bytes() {
                let _ = write!(out, "%{b:02X}");
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Valid UTF-8 stays as it is; any other byte >= 0x80 becomes `%XX`.
pub fn bytes_to_text(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => s.to_string(),
        Err(_) => {
            let mut s = String::with_capacity(b.len() + 8);
            for chunk in b.utf8_chunks() {
                s.push_str(chunk.valid());
                for &x in chunk.invalid() {
                    s.push_str(&format!("%{x:02X}"));
                }
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Strategy;

    fn names() -> Vec<String> {
        DEFAULT_CREDENTIAL_PARAMS
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    const JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlX3g";

    #[test]
    fn redact_table() {
        let jwt_q = format!("/a?x={JWT}");
        let jwt_p = format!("/t/{JWT}/x");
        let jwt_f = format!("/cb#id_token={JWT}");
        let cases: Vec<(&str, String)> = vec![
            ("/users/42?token=abc", "/users/42?token=REDACTED".into()),
            ("/x?Token=abc&page=2", "/x?Token=REDACTED&page=2".into()),
            ("/x?keyword=abc&monkey=1", "/x?keyword=abc&monkey=1".into()),
            ("/x?api%5Fkey=s3cr3t", "/x?api%5Fkey=REDACTED".into()),
            ("/x?token=", "/x?token=".into()),
            ("/x?token", "/x?token".into()),
            (jwt_q.as_str(), "/a?x=REDACTED".into()),
            (jwt_p.as_str(), "/t/REDACTED/x".into()),
            (
                "http://bob:pw@h.example/p?q=1",
                "http://REDACTED@h.example/p?q=1".into(),
            ),
            ("http://h.example/p", "http://h.example/p".into()),
            ("/a?password=x#frag", "/a?password=REDACTED#frag".into()),
            // In a fragment too (OAuth's implicit flow puts tokens there).
            (
                "/a?x=1#access_token=s3cr3t&state=2",
                "/a?x=1#access_token=REDACTED&state=2".into(),
            ),
            ("/cb#token=abc", "/cb#token=REDACTED".into()),
            (jwt_f.as_str(), "/cb#id_token=REDACTED".into()),
            ("/p#x?token=abc", "/p#x?token=REDACTED".into()),
        ];
        for (t, want) in cases {
            assert_eq!(redact_target(t.as_bytes(), &names()), want, "{t}");
        }
    }

    #[test]
    fn non_utf8_is_percent_encoded() {
        assert_eq!(redact_target(b"/a\xff\xfeb", &names()), "/a%FF%FEb");
        assert_eq!(
            redact_target("/caf\u{e9}".as_bytes(), &names()),
            "/caf\u{e9}"
        );
    }

    #[test]
    fn jwt_detection() {
        assert!(is_jwt(JWT.as_bytes()));
        assert!(!is_jwt(b"eyJhbGciOiJIUzI1NiJ9"));
        assert!(!is_jwt(b"hello.world.again"));
        assert!(!is_jwt(b"eyJ.a b.c"));
    }

    #[test]
    fn clean_targets_are_borrowed() {
        assert!(matches!(
            redact_target(b"/users/42?page=2#top", &names()),
            Cow::Borrowed("/users/42?page=2#top")
        ));
        assert!(matches!(
            redact_target(b"/x?token=a", &names()),
            Cow::Owned(_)
        ));
    }

    /// The copying implementation `redact_target` had before it borrowed:
    /// the copy-on-write one must give the same text for every target.
    fn reference(target: &[u8], cred_names: &[String]) -> String {
        let mut out: Vec<u8> = Vec::with_capacity(target.len());
        let (before_query, query) = match memchr::memchr(b'?', target) {
            Some(i) => (&target[..i], Some(&target[i + 1..])),
            None => (target, None),
        };
        let mut path_part = before_query;
        if let Some(p) = memchr::memmem::find(before_query, b"://") {
            let auth_start = p + 3;
            let rest = &before_query[auth_start..];
            let auth_end = memchr::memchr(b'/', rest).unwrap_or(rest.len());
            let authority = &rest[..auth_end];
            out.extend_from_slice(&before_query[..auth_start]);
            match memchr::memrchr(b'@', authority) {
                Some(at) => {
                    out.extend_from_slice(REDACTED.as_bytes());
                    out.extend_from_slice(&authority[at..]);
                }
                None => out.extend_from_slice(authority),
            }
            path_part = &rest[auth_end..];
        }
        for (i, seg) in path_part.split(|&b| b == b'/').enumerate() {
            if i > 0 {
                out.push(b'/');
            }
            if is_jwt(seg) {
                out.extend_from_slice(REDACTED.as_bytes());
            } else {
                out.extend_from_slice(seg);
            }
        }
        if let Some(q) = query {
            out.push(b'?');
            let (q, frag) = match memchr::memchr(b'#', q) {
                Some(i) => (&q[..i], Some(&q[i..])),
                None => (q, None),
            };
            for (i, pair) in q.split(|&b| b == b'&').enumerate() {
                if i > 0 {
                    out.push(b'&');
                }
                match memchr::memchr(b'=', pair) {
                    Some(eq) => {
                        let (name, value) = (&pair[..eq], &pair[eq + 1..]);
                        out.extend_from_slice(name);
                        out.push(b'=');
                        if !value.is_empty()
                            && (is_credential_name(name, cred_names) || is_jwt(value))
                        {
                            out.extend_from_slice(REDACTED.as_bytes());
                        } else {
                            out.extend_from_slice(value);
                        }
                    }
                    None if is_jwt(pair) => out.extend_from_slice(REDACTED.as_bytes()),
                    None => out.extend_from_slice(pair),
                }
            }
            if let Some(f) = frag {
                out.extend_from_slice(f);
            }
        }
        // Then the fragment's pairs, in the text.
        let text = bytes_to_text(&out);
        let Some(h) = text.find('#') else {
            return text;
        };
        let mut with_fragment = text[..=h].to_string();
        for (i, pair) in text[h + 1..].split('&').enumerate() {
            if i > 0 {
                with_fragment.push('&');
            }
            let secret = match pair.split_once('=') {
                Some((name, value)) => {
                    with_fragment.push_str(name);
                    with_fragment.push('=');
                    let credential = is_credential_name(name.as_bytes(), cred_names);
                    if !value.is_empty() && (credential || is_jwt(value.as_bytes())) {
                        REDACTED
                    } else {
                        value
                    }
                }
                None if is_jwt(pair.as_bytes()) => REDACTED,
                None => pair,
            };
            with_fragment.push_str(secret);
        }
        with_fragment
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]

        #[test]
        fn same_text_as_the_copying_implementation(
            parts in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just(b"/".to_vec()),
                    proptest::strategy::Just(b"?".to_vec()),
                    proptest::strategy::Just(b"&".to_vec()),
                    proptest::strategy::Just(b"=".to_vec()),
                    proptest::strategy::Just(b"#".to_vec()),
                    proptest::strategy::Just(b"@".to_vec()),
                    proptest::strategy::Just(b"://".to_vec()),
                    proptest::strategy::Just(b"token".to_vec()),
                    proptest::strategy::Just(b"api%5Fkey".to_vec()),
                    proptest::strategy::Just(b"KEY".to_vec()),
                    proptest::strategy::Just(JWT.as_bytes().to_vec()),
                    proptest::strategy::Just(b"\xff\xfe".to_vec()),
                    proptest::strategy::Just("\u{e9}".as_bytes().to_vec()),
                    proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4),
                    "[a-z0-9%.]{0,6}".prop_map(String::into_bytes),
                ],
                0..16,
            )
        ) {
            let target = parts.concat();
            let got = redact_target(&target, &names());
            proptest::prop_assert_eq!(got.as_ref(), reference(&target, &names()));
        }
    }

    #[test]
    fn percent_decode_is_lenient() {
        assert_eq!(percent_decode(b"a%41%zz%4"), b"aA%zz%4");
    }
}
