//! The fixed substrings the per-exchange rules look for, with their
//! searchers built once.
//!
//! Contract: each function answers exactly what `memchr::memmem::find` (or
//! `find_iter`) answers for the same needle; the difference is cost.
//! `memmem::find` builds a new searcher on every call, which costs more than
//! searching a header value or a short target, and the rules search every
//! header value of every exchange.

use memchr::memmem::{FindIter, Finder};
use std::sync::LazyLock;

static SCHEME_END: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"://"));
static JWT_START: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"eyJ"));
static ENCODED_AT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"%40"));

/// Where `://` (the end of an absolute-form target's scheme) starts.
pub fn scheme_end(haystack: &[u8]) -> Option<usize> {
    SCHEME_END.find(haystack)
}

/// Where the `://` after `target`'s scheme starts, when `target` begins
/// with one (RFC 3986: a letter, then letters, digits, `+`, `-` or `.`):
/// an absolute-form target, not a `://` further in.
pub fn absolute_scheme_end(target: &[u8]) -> Option<usize> {
    let p = scheme_end(target)?;
    let scheme = &target[..p];
    let valid = scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    valid.then_some(p)
}

/// Every `eyJ` (the start of a JWT's header), in order.
pub fn jwt_starts(haystack: &[u8]) -> FindIter<'_, 'static> {
    JWT_START.find_iter(haystack)
}

/// Where the first `%40` (an encoded `@`) starts.
pub fn encoded_at(haystack: &[u8]) -> Option<usize> {
    ENCODED_AT.find(haystack)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_as_memmem_does() {
        let hays: &[&[u8]] = &[
            b"",
            b"ey",
            b"http://a@b/eyJx.eyJy?q=%40&t=eyJ",
            b"/plain/path",
            b"eyJeyJeyJ://%40%4",
        ];
        for h in hays {
            assert_eq!(scheme_end(h), memchr::memmem::find(h, b"://"));
            assert_eq!(encoded_at(h), memchr::memmem::find(h, b"%40"));
            assert!(jwt_starts(h).eq(memchr::memmem::find_iter(h, b"eyJ")));
        }
    }
}
