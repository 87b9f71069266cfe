//! Passive JWT inspection: header and claims only.
//!
//! Contract: [`inspect`] base64url-decodes the first two parts of a JWS
//! compact token (bounded: a part longer than [`MAX_PART_BYTES`] is not
//! decoded), reads `alg` from the header and `exp`/`iat` from the claims, and
//! keeps nothing else. The signature is never decoded nor verified, and no
//! part of the token is stored or copied out: [`JwtInfo`] holds only the
//! algorithm name (public by design, bounded, sanitised) and two numbers.
//! [`find_jwts`] finds candidate tokens inside any text (header values,
//! targets, bodies) without allocating.

use base64::Engine as _;
use serde::Deserialize;

use super::redact::{dots, is_jwt, is_token_byte, MIN_JWT_BYTES};

/// Longest header or claims part decoded (base64url text).
pub const MAX_PART_BYTES: usize = 8 * 1024;

/// What a JWT says about itself (never the token).
#[derive(Clone, Debug, PartialEq)]
pub struct JwtInfo {
    /// `alg` of the header, at most 16 ASCII alphanumerics (else `?`).
    pub alg: String,
    /// `exp` claim, seconds since the epoch.
    pub exp: Option<f64>,
    /// `iat` claim, seconds since the epoch.
    pub iat: Option<f64>,
}

/// Why a JWT is weak, if it is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Weakness {
    AlgNone,
    NoExp,
    /// `exp - iat` in seconds, over the limit.
    LongLived(f64),
}

impl JwtInfo {
    /// `alg` none, no `exp`, or a lifetime over `max_lifetime_secs`.
    pub fn weakness(&self, max_lifetime_secs: f64) -> Option<Weakness> {
        if self.alg.eq_ignore_ascii_case("none") {
            return Some(Weakness::AlgNone);
        }
        let exp = match self.exp {
            Some(e) => e,
            None => return Some(Weakness::NoExp),
        };
        match self.iat {
            Some(iat) if exp - iat > max_lifetime_secs => Some(Weakness::LongLived(exp - iat)),
            _ => None,
        }
    }

    /// Has it expired before `now_micros` (capture time)?
    pub fn expired_at(&self, now_micros: i64) -> bool {
        self.exp
            .is_some_and(|e| e.is_finite() && e * 1e6 < now_micros as f64)
    }
}

impl std::fmt::Display for Weakness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Weakness::AlgNone => f.write_str("alg none (unsigned)"),
            Weakness::NoExp => f.write_str("no exp claim (never expires)"),
            Weakness::LongLived(s) => write!(f, "lifetime {} (exp - iat)", human_secs(*s)),
        }
    }
}

fn human_secs(s: f64) -> String {
    if s >= 86_400.0 {
        format!("{:.1} days", s / 86_400.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

#[derive(Deserialize)]
struct Header<'a> {
    #[serde(borrow, default)]
    alg: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default, deserialize_with = "lenient_number")]
    exp: Option<f64>,
    #[serde(default, deserialize_with = "lenient_number")]
    iat: Option<f64>,
}

/// A number claim; a string holding a number is accepted, anything else is
/// treated as absent.
fn lenient_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(match v {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|x| x.is_finite()))
}

fn decode_part(part: &[u8]) -> Option<Vec<u8>> {
    if part.len() > MAX_PART_BYTES {
        return None;
    }
    let trimmed = match part.iter().position(|&b| b == b'=') {
        Some(i) => &part[..i],
        None => part,
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(trimmed)
        .ok()
}

/// Decode the header and claims of a token that [`is_jwt`]
/// accepts. `None` when they are not base64url JSON objects.
pub fn inspect(token: &[u8]) -> Option<JwtInfo> {
    if !is_jwt(token) {
        return None;
    }
    let mut parts = token.split(|&b| b == b'.');
    let header = decode_part(parts.next()?)?;
    let claims = decode_part(parts.next()?)?;
    let h: Header<'_> = serde_json::from_slice(&header).ok()?;
    let c: Claims = serde_json::from_slice(&claims).ok()?;
    let alg = match h.alg.as_deref() {
        Some(a)
            if !a.is_empty() && a.len() <= 16 && a.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            a.to_string()
        }
        Some(_) => "?".to_string(),
        None => "(none given)".to_string(),
    };
    Some(JwtInfo {
        alg,
        exp: c.exp,
        iat: c.iat,
    })
}

/// Recently inspected tokens, by a keyed hash of the token (never the
/// token): clients send the same token with every request, and decoding it
/// (base64 and JSON) is most of what JWT checks cost. Bounded: cleared when
/// full. Answers by reference, so a hit copies nothing.
#[derive(Default)]
pub struct JwtCache {
    seen: std::collections::HashMap<u64, Option<JwtInfo>, ahash::RandomState>,
    hasher: ahash::RandomState,
}

/// Most tokens remembered.
const JWT_CACHE_ENTRIES: usize = 4096;

impl JwtCache {
    /// [`inspect`], remembered.
    pub fn inspect(&mut self, token: &[u8]) -> Option<&JwtInfo> {
        let key = self.hasher.hash_one(token);
        if !self.seen.contains_key(&key) && self.seen.len() >= JWT_CACHE_ENTRIES {
            self.seen.clear();
        }
        self.seen
            .entry(key)
            .or_insert_with(|| inspect(token))
            .as_ref()
    }
}

/// [`is_token_byte`] of every byte value: one load a byte where the
/// run of a token is measured.
static TOKEN_BYTES: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = is_token_byte(b as u8);
        b += 1;
    }
    t
};

/// Candidate JWTs inside `text`: maximal runs of base64url characters and
/// dots that start with `eyJ` and pass [`is_jwt`]. At most
/// `max` are returned.
pub fn find_jwts(text: &[u8], max: usize) -> impl Iterator<Item = &[u8]> {
    let mut next_free = 0usize;
    super::search::jwt_starts(text)
        .filter_map(move |start| {
            if start < next_free
                || (start > 0
                    && (text[start - 1].is_ascii_alphanumeric()
                        || matches!(text[start - 1], b'-' | b'_')))
            {
                return None;
            }
            let len = text[start..]
                .iter()
                .position(|&b| !TOKEN_BYTES[b as usize])
                .unwrap_or(text.len() - start);
            next_free = start + len;
            let tok = &text[start..start + len];
            // `is_jwt`, less what the run already is: `eyJ` and token bytes.
            let jwt = tok.len() >= MIN_JWT_BYTES && dots(tok) == 2;
            debug_assert_eq!(jwt, is_jwt(tok));
            jwt.then_some(tok)
        })
        .take(max)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Build an unsigned-looking token from JSON header and claims (tests).
    pub(crate) fn make(header: &str, claims: &str) -> String {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.c2lnbmF0dXJlLXNlY3JldA",
            e.encode(header),
            e.encode(claims)
        )
    }

    #[test]
    fn weakness_table() {
        const DAY: f64 = 86_400.0;
        let cases: &[(&str, &str, Option<&str>)] = &[
            (r#"{"alg":"HS256"}"#, r#"{"exp":2000,"iat":1000}"#, None),
            (
                r#"{"alg":"none"}"#,
                r#"{"exp":2000,"iat":1000}"#,
                Some("alg"),
            ),
            (r#"{"alg":"NONE"}"#, r#"{"exp":2000}"#, Some("alg")),
            (r#"{"alg":"RS256"}"#, r#"{"sub":"x"}"#, Some("no exp")),
            (
                r#"{"alg":"RS256"}"#,
                r#"{"exp":200000,"iat":1}"#,
                Some("lifetime"),
            ),
            // exactly 24 h is not over the limit
            (r#"{"alg":"RS256"}"#, r#"{"exp":86401,"iat":1}"#, None),
            // exp without iat: the lifetime is unknown, not weak
            (r#"{"alg":"RS256"}"#, r#"{"exp":99999999999}"#, None),
            (r#"{"alg":"ES256"}"#, r#"{"exp":"2000","iat":"1000"}"#, None),
        ];
        for (h, c, want) in cases {
            let tok = make(h, c);
            let info = inspect(tok.as_bytes()).expect("decodes");
            let got = info.weakness(DAY).map(|w| w.to_string());
            match want {
                None => assert_eq!(got, None, "{h} {c}"),
                Some(w) => assert!(got.as_deref().unwrap_or("").contains(w), "{h} {c}: {got:?}"),
            }
        }
    }

    #[test]
    fn expiry_uses_capture_time() {
        let tok = make(r#"{"alg":"HS256"}"#, r#"{"exp":1000,"iat":900}"#);
        let info = inspect(tok.as_bytes()).unwrap();
        assert!(info.expired_at(1_000_000_001));
        assert!(!info.expired_at(1_000_000_000));
        assert!(!info.expired_at(999_000_000));
    }

    #[test]
    fn not_jwts() {
        for t in [
            "eyJhbGciOiJIUzI1NiJ9",
            "hello.world.again",
            "eyJub3Rqc29u.eyJ4.sig",
            "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.sig",
        ] {
            assert!(inspect(t.as_bytes()).is_none(), "{t}");
        }
    }

    #[test]
    fn found_inside_text() {
        let a = make(r#"{"alg":"HS256"}"#, r#"{"exp":1}"#);
        let text = format!("Bearer {a}, x=1; {{\"t\":\"{a}\"}} xeyJnot.a.jwt");
        let found: Vec<&[u8]> = find_jwts(text.as_bytes(), 8).collect();
        assert_eq!(found.len(), 2);
        assert!(found.iter().all(|f| *f == a.as_bytes()));
        assert_eq!(find_jwts(text.as_bytes(), 1).count(), 1);
        // The shortest accepted, and one byte shorter.
        assert_eq!(find_jwts(b" eyJ.c2ln.c2lnabc ", 8).count(), 1);
        assert_eq!(find_jwts(b" eyJ.c2ln.c2lnab ", 8).count(), 0);
    }

    /// `is_jwt` as a loop with early exits (the plain reading of its doc).
    fn is_jwt_plain(s: &[u8]) -> bool {
        let mut dots = 0;
        for &b in s {
            match b {
                b'.' => dots += 1,
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'=' => {}
                _ => return false,
            }
        }
        s.len() >= MIN_JWT_BYTES && s.starts_with(b"eyJ") && dots == 2
    }

    /// `find_jwts` from its doc: each `eyJ` not inside an earlier run nor
    /// after a base64url byte, its maximal run, kept if it is a JWT.
    fn find_jwts_plain(text: &[u8]) -> Vec<&[u8]> {
        let mut out = Vec::new();
        let mut free = 0;
        for start in memchr::memmem::find_iter(text, b"eyJ") {
            let after_token_byte = start > 0
                && (text[start - 1].is_ascii_alphanumeric() || b"-_".contains(&text[start - 1]));
            if start < free || after_token_byte {
                continue;
            }
            let mut end = start;
            while end < text.len()
                && (text[end].is_ascii_alphanumeric() || b"-_=.".contains(&text[end]))
            {
                end += 1;
            }
            free = end;
            if is_jwt_plain(&text[start..end]) {
                out.push(&text[start..end]);
            }
        }
        out
    }

    proptest::proptest! {
        #[test]
        fn finds_what_the_plain_reading_finds(
            pieces in proptest::collection::vec(proptest::sample::select(vec![
                &b"eyJ"[..], b"eyJhbGciOiJIUzI1NiJ9", b".", b"..", b"c2ln", b"-_=",
                b"a", b" ", b"%", b"\xff",
            ]), 0..24)
        ) {
            let text = pieces.concat();
            proptest::prop_assert_eq!(find_jwts(&text, usize::MAX).collect::<Vec<_>>(), find_jwts_plain(&text));
            for w in 0..text.len() {
                proptest::prop_assert_eq!(is_jwt(&text[w..]), is_jwt_plain(&text[w..]));
            }
        }
    }

    #[test]
    fn debug_holds_no_token() {
        let tok = make(r#"{"alg":"HS256"}"#, r#"{"exp":1,"sub":"alice"}"#);
        let dbg = format!("{:?}", inspect(tok.as_bytes()).unwrap());
        for part in tok.split('.') {
            assert!(!dbg.contains(part), "{dbg}");
        }
        assert!(!dbg.contains("alice"));
    }
}
