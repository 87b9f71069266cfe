//! Route templates: the path of a request with identifier-like segments
//! replaced by `{id}` (SPEC "Routes"), or the first configured pattern that
//! matches.
//!
//! Contract: a route never holds a query string, a credential or an
//! unbounded number of bytes: it is at most [`MAX_ROUTE_BYTES`] long (longer
//! paths are cut at a segment boundary and end in `/{…}`), and every JWT-like
//! or identifier-like segment is templated.

/// Longest route returned.
pub const MAX_ROUTE_BYTES: usize = 256;

/// Configured route patterns, e.g. `/orders/{order}/items/{item}`.
#[derive(Clone, Debug, Default)]
pub struct RouteTemplater {
    patterns: Vec<Pattern>,
}

#[derive(Clone, Debug)]
struct Pattern {
    text: String,
    segments: Vec<PatternSegment>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum PatternSegment {
    Literal(String),
    Param,
    /// `{*}` or `{rest*}` as the last segment: matches one or more segments.
    Rest,
}

/// A route pattern that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("route pattern {pattern:?}: {reason}")]
pub struct PatternError {
    pub pattern: String,
    pub reason: &'static str,
}

impl RouteTemplater {
    pub fn new(patterns: &[String]) -> Result<Self, PatternError> {
        let mut out = Vec::with_capacity(patterns.len());
        for p in patterns {
            let err = |reason| PatternError {
                pattern: p.clone(),
                reason,
            };
            if !p.starts_with('/') {
                return Err(err("must start with '/'"));
            }
            if p.len() > MAX_ROUTE_BYTES {
                return Err(err("too long"));
            }
            let parts: Vec<&str> = p[1..].split('/').collect();
            let mut segments = Vec::with_capacity(parts.len());
            for (i, s) in parts.iter().enumerate() {
                let seg = if s.starts_with('{') && s.ends_with('}') && s.len() >= 2 {
                    if s.ends_with("*}") {
                        if i + 1 != parts.len() {
                            return Err(err("a {name*} segment must be the last"));
                        }
                        PatternSegment::Rest
                    } else {
                        PatternSegment::Param
                    }
                } else if s.contains(['{', '}', '?', '#']) {
                    return Err(err("a segment is either a literal or a whole {param}"));
                } else {
                    PatternSegment::Literal(s.to_string())
                };
                segments.push(seg);
            }
            out.push(Pattern {
                text: p.clone(),
                segments,
            });
        }
        Ok(RouteTemplater { patterns: out })
    }

    /// The route of a request-target (origin-form, absolute-form, `*` or an
    /// authority for CONNECT).
    pub fn route(&self, target: &[u8]) -> String {
        let path = path_of(target);
        let Some(path) = path else {
            // CONNECT authority-form: the authority is not a route.
            return "{authority}".to_string();
        };
        if path == b"*" {
            return "*".to_string();
        }
        if !self.patterns.is_empty() {
            let segs: Vec<&[u8]> = split_segments(path).collect();
            for p in &self.patterns {
                if matches(p, &segs) {
                    return p.text.clone();
                }
            }
        }
        template(path)
    }
}

fn matches(p: &Pattern, segs: &[&[u8]]) -> bool {
    let mut i = 0;
    for ps in &p.segments {
        match ps {
            PatternSegment::Rest => return i < segs.len(),
            PatternSegment::Param => {
                if i >= segs.len() || segs[i].is_empty() {
                    return false;
                }
            }
            PatternSegment::Literal(l) => {
                if i >= segs.len() || segs[i] != l.as_bytes() {
                    return false;
                }
            }
        }
        i += 1;
    }
    i == segs.len()
}

/// The path part of a request-target, without query or fragment. `None` for
/// an authority-form target (CONNECT).
pub fn path_of(target: &[u8]) -> Option<&[u8]> {
    let t = strip_query(target);
    if t.first() == Some(&b'/') || t == b"*" {
        return Some(t);
    }
    // absolute-form: scheme "://" authority path
    if let Some(p) = super::search::scheme_end(t) {
        let rest = &t[p + 3..];
        return Some(match memchr::memchr(b'/', rest) {
            Some(s) => &rest[s..],
            None => b"/",
        });
    }
    if t.is_empty() {
        return Some(b"/");
    }
    None
}

fn strip_query(target: &[u8]) -> &[u8] {
    match memchr::memchr2(b'?', b'#', target) {
        Some(i) => &target[..i],
        None => target,
    }
}

fn split_segments(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.strip_prefix(b"/")
        .unwrap_or(path)
        .split(|&b| b == b'/')
}

/// What ends a route that was cut at the length bound.
const CUT: &str = "/{…}";

/// Heuristic templating of a path (SPEC "Routes"); control characters
/// become `%XX` (see [`super::redact::escape_controls`]).
pub fn template(path: &[u8]) -> String {
    // `{id}` can be longer than what it replaces: room for a few, so that
    // the route is rarely reallocated while it is built.
    let mut out = String::with_capacity((path.len() + 16).min(MAX_ROUTE_BYTES));
    // One look at the whole path instead of one per segment (the usual case).
    let plain = super::redact::is_printable_ascii(path);
    for seg in split_segments(path) {
        // Borrowed, not copied, when the segment is valid UTF-8.
        let piece: std::borrow::Cow<'_, str> = if is_identifier(seg) {
            "{id}".into()
        } else if plain {
            String::from_utf8_lossy(seg)
        } else {
            super::redact::escape_controls(String::from_utf8_lossy(seg))
        };
        if out.len() + 1 + piece.len() > MAX_ROUTE_BYTES - CUT.len() {
            out.push_str(CUT);
            return out;
        }
        out.push('/');
        out.push_str(&piece);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// Does a path segment look like an identifier rather than a resource name?
pub fn is_identifier(seg: &[u8]) -> bool {
    if seg.is_empty() {
        return false;
    }
    let all = |f: fn(&u8) -> bool| seg.iter().all(f);
    let any = |f: fn(&u8) -> bool| seg.iter().any(f);
    if all(u8::is_ascii_digit) {
        return true;
    }
    if is_uuid(seg) || is_date(seg) || is_email(seg) || super::redact::is_jwt(seg) {
        return true;
    }
    if seg.len() >= 8 && all(u8::is_ascii_hexdigit) {
        return true;
    }
    // Long base64url-like tokens: long, only token characters, and mixing
    // digits with letters (so "authentication-service" stays a name).
    let b64 = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'=' | b'.' | b'~');
    if seg.len() >= 20 && all(b64) && any(u8::is_ascii_digit) {
        let mixed_case = any(u8::is_ascii_uppercase) && any(u8::is_ascii_lowercase);
        if mixed_case || seg.len() >= 32 {
            return true;
        }
    }
    false
}

fn is_uuid(s: &[u8]) -> bool {
    s.len() == 36
        && s.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// `2024-05-01`, optionally followed by a time (`T12:00:00Z`, …).
fn is_date(s: &[u8]) -> bool {
    s.len() >= 10
        && s[..4].iter().all(u8::is_ascii_digit)
        && s[4] == b'-'
        && s[5..7].iter().all(u8::is_ascii_digit)
        && s[7] == b'-'
        && s[8..10].iter().all(u8::is_ascii_digit)
        && (s.len() == 10 || matches!(s[10], b'T' | b't' | b' ' | b'_'))
}

fn is_email(s: &[u8]) -> bool {
    // Segments are short: one pass for either byte costs less than setting
    // up two searches. Only a segment with a '%' can hold "%40".
    let at = match s.iter().position(|&b| b == b'@' || b == b'%') {
        None => None,
        Some(i) if s[i] == b'@' => Some(i),
        Some(i) => memchr::memchr(b'@', &s[i..])
            .map(|j| i + j)
            .or_else(|| super::search::encoded_at(s)),
    };
    match at {
        Some(i) if i > 0 => s[i..].contains(&b'.'),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// `is_email` from its plain reading: the first '@', else the
        /// first "%40", with something before it and a '.' from it on.
        #[test]
        fn is_email_is_its_plain_reading(
            seg in proptest::collection::vec(proptest::sample::select(
                b"a.@%40x-".to_vec()), 0..24),
        ) {
            let at = memchr::memchr(b'@', &seg)
                .or_else(|| memchr::memmem::find(&seg, b"%40"));
            let want = at.is_some_and(|i| i > 0 && seg[i..].contains(&b'.'));
            proptest::prop_assert_eq!(is_email(&seg), want);
        }
    }

    #[test]
    fn template_table() {
        let cases: &[(&str, &str)] = &[
            ("/users/42", "/users/{id}"),
            ("/users/42?token=abc", "/users/{id}"),
            ("/", "/"),
            ("", "/"),
            ("*", "*"),
            (
                "/api/v1/orders/550e8400-e29b-41d4-a716-446655440000/items",
                "/api/v1/orders/{id}/items",
            ),
            ("/blobs/deadbeef12", "/blobs/{id}"),
            ("/blobs/abc", "/blobs/abc"),
            ("/users/jane@example.com", "/users/{id}"),
            ("/users/jane%40example.com/x", "/users/{id}/x"),
            ("/reports/2024-05-01", "/reports/{id}"),
            ("/reports/2024-05-01T10:00:00Z", "/reports/{id}"),
            ("/s/aB3dE5fG7hJ9kL1mN3pQ5r", "/s/{id}"),
            (
                "/authentication-service-v2/health",
                "/authentication-service-v2/health",
            ),
            ("/v1/keyword/monkey", "/v1/keyword/monkey"),
            ("http://api.example.com:8080/a/7?x=1", "/a/{id}"),
            ("http://api.example.com", "/"),
            ("api.example.com:443", "{authority}"),
            ("/a//b/", "/a//b/"),
            (
                "/t/eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
                "/t/{id}",
            ),
            // A route reaches labels, dashboards and the report: control
            // characters are escaped.
            ("/a\u{1b}[2J/b", "/a%1B[2J/b"),
            ("/x\u{0}/\u{7f}\u{85}", "/x%00/%7F%C2%85"),
        ];
        let r = RouteTemplater::default();
        for (target, want) in cases {
            assert_eq!(r.route(target.as_bytes()), *want, "target {target:?}");
        }
    }

    #[test]
    fn long_paths_are_bounded() {
        let long = "/seg".repeat(500);
        let r = RouteTemplater::default().route(long.as_bytes());
        assert!(r.len() <= MAX_ROUTE_BYTES, "{}", r.len());
        assert!(r.ends_with("/{…}"));
    }

    #[test]
    fn configured_patterns_win() {
        let r = RouteTemplater::new(&[
            "/orders/{order}/items/{item}".to_string(),
            "/static/{path*}".to_string(),
        ])
        .unwrap();
        assert_eq!(
            r.route(b"/orders/abc/items/7"),
            "/orders/{order}/items/{item}"
        );
        assert_eq!(r.route(b"/orders/abc/items"), "/orders/abc/items");
        assert_eq!(r.route(b"/static/css/site.css"), "/static/{path*}");
        assert_eq!(r.route(b"/static"), "/static");
    }

    #[test]
    fn bad_patterns_are_refused() {
        for p in ["orders", "/a/{x*}/b", "/a/b{c}"] {
            assert!(RouteTemplater::new(&[p.to_string()]).is_err(), "{p}");
        }
    }
}
