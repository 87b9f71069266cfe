//! Exposure findings (SPEC "Finding kinds"): kinds, severities and the
//! [`Finding`] record the findings log writes.
//!
//! Contract: a [`Finding`] never holds a secret; evidence is built with
//! [`push_redacted`] (length only) and [`printable`] (bounded, non-secret text).

use crate::clock::Timestamp;
use serde::Serialize;
use std::net::{IpAddr, SocketAddr};

/// What is exposed. Per-exchange kinds come first, then connection- and
/// endpoint-level ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    CleartextCredentials,
    CredentialsInUrl,
    CleartextSessionCookie,
    InsecureCookie,
    WeakJwt,
    IpLiteralHost,
    PublicPlaintextEndpoint,
    UnsafeUrl,
    DeprecatedEndpoint,
    VerboseError,
    LegacyTls,
    EndpointSprawl,
    RouteVariants,
}

impl FindingKind {
    pub const ALL: [FindingKind; 13] = [
        FindingKind::CleartextCredentials,
        FindingKind::CredentialsInUrl,
        FindingKind::CleartextSessionCookie,
        FindingKind::InsecureCookie,
        FindingKind::WeakJwt,
        FindingKind::IpLiteralHost,
        FindingKind::PublicPlaintextEndpoint,
        FindingKind::UnsafeUrl,
        FindingKind::DeprecatedEndpoint,
        FindingKind::VerboseError,
        FindingKind::LegacyTls,
        FindingKind::EndpointSprawl,
        FindingKind::RouteVariants,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::CleartextCredentials => "cleartext_credentials",
            FindingKind::CredentialsInUrl => "credentials_in_url",
            FindingKind::CleartextSessionCookie => "cleartext_session_cookie",
            FindingKind::InsecureCookie => "insecure_cookie",
            FindingKind::WeakJwt => "weak_jwt",
            FindingKind::IpLiteralHost => "ip_literal_host",
            FindingKind::PublicPlaintextEndpoint => "public_plaintext_endpoint",
            FindingKind::UnsafeUrl => "unsafe_url",
            FindingKind::DeprecatedEndpoint => "deprecated_endpoint",
            FindingKind::VerboseError => "verbose_error",
            FindingKind::LegacyTls => "legacy_tls",
            FindingKind::EndpointSprawl => "endpoint_sprawl",
            FindingKind::RouteVariants => "route_variants",
        }
    }

    /// SPEC's default severity.
    pub fn default_severity(self) -> Severity {
        use FindingKind::*;
        match self {
            CleartextCredentials | CredentialsInUrl | WeakJwt | PublicPlaintextEndpoint => {
                Severity::High
            }
            CleartextSessionCookie | InsecureCookie | IpLiteralHost | LegacyTls | VerboseError => {
                Severity::Medium
            }
            UnsafeUrl | DeprecatedEndpoint | EndpointSprawl | RouteVariants => Severity::Low,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    High,
    Medium,
    Low,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
        }
    }
}

impl std::str::FromStr for Severity {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "high" => Ok(Severity::High),
            "medium" => Ok(Severity::Medium),
            "low" => Ok(Severity::Low),
            _ => Err(()),
        }
    }
}

impl std::str::FromStr for FindingKind {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        FindingKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or(())
    }
}

/// The severity of each kind, or `None` for a kind the operator turned off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Severities([Option<Severity>; FindingKind::ALL.len()]);

impl Default for Severities {
    fn default() -> Self {
        Severities(FindingKind::ALL.map(|k| Some(k.default_severity())))
    }
}

impl Severities {
    pub fn get(&self, k: FindingKind) -> Option<Severity> {
        self.0[k as usize]
    }
    pub fn set(&mut self, k: FindingKind, s: Option<Severity>) {
        self.0[k as usize] = s;
    }
}

/// One finding, as the findings log writes it. Evidence is already redacted:
/// it names what was exposed and how many bytes, never the secret itself.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    /// The exchange's time (or the connection's first byte, for TLS).
    pub ts: Timestamp,
    pub kind: FindingKind,
    pub severity: Severity,
    pub client: SocketAddr,
    pub server: SocketAddr,
    /// Host header (per-exchange kinds), or SNI (TLS), when known.
    pub host: Option<String>,
    /// The templated route (None for connection-level findings).
    pub route: Option<String>,
    pub evidence: String,
}

/// How evidence stands for a secret, appended to `out`: `<redacted, 24
/// bytes>`. Evidence is built by appending its pieces to one string: a
/// finding costs one allocation, not one per piece.
pub fn push_redacted(out: &mut String, len: usize) {
    out.push_str("<redacted, ");
    push_decimal(out, len as u64);
    out.push_str(" bytes>");
}

/// A short, printable rendition of non-secret wire text (a header name, a
/// cookie name, a Deprecation value) for evidence: at most `max` bytes,
/// control and non-ASCII bytes as `?`.
pub fn printable(b: &[u8], max: usize) -> String {
    let mut s = String::with_capacity(b.len().min(max) + 3);
    push_printable(&mut s, b, max);
    s
}

/// [`printable`], appended to `out`.
pub fn push_printable(out: &mut String, b: &[u8], max: usize) {
    out.reserve(b.len().min(max));
    for &c in b.iter().take(max) {
        out.push(if (0x20..0x7f).contains(&c) {
            c as char
        } else {
            '?'
        });
    }
    if b.len() > max {
        out.push('…');
    }
}

/// ` (+N more)` when `n` is not 0: how many more of the same a finding's
/// evidence stands for.
pub fn push_more(out: &mut String, n: usize) {
    if n > 0 {
        out.push_str(" (+");
        push_decimal(out, n as u64);
        out.push_str(" more)");
    }
}

/// `v` in decimal, as `Display` writes it (without `core::fmt`).
pub fn push_decimal(out: &mut String, v: u64) {
    out.push_str(itoa::Buffer::new().format(v));
}

/// `ip` as `Display` writes it (without `core::fmt`).
pub fn push_ip(out: &mut String, ip: IpAddr) {
    out.push_str(crate::output::text::IpText::new(&ip).as_str());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_index_severities() {
        let mut s = Severities::default();
        for (i, k) in FindingKind::ALL.into_iter().enumerate() {
            assert_eq!(k as usize, i);
            assert_eq!(k.as_str().parse::<FindingKind>(), Ok(k));
            assert_eq!(s.get(k), Some(k.default_severity()));
        }
        s.set(FindingKind::RouteVariants, None);
        assert_eq!(s.get(FindingKind::RouteVariants), None);
        assert_eq!(printable(b"a\x01b\xff", 3), "a?b…");
        let mut max = String::new();
        push_decimal(&mut max, u64::MAX);
        assert_eq!(max, "18446744073709551615");
        for ip in [
            "0.0.0.0",
            "10.99.0.1",
            "255.255.255.255",
            "::1",
            "::ffff:1.2.3.4",
        ] {
            let mut s = String::new();
            push_ip(&mut s, ip.parse().unwrap());
            assert_eq!(s, ip);
        }
    }

    #[test]
    fn evidence_pieces_write_what_format_writes() {
        for n in [0usize, 1, 9, 10, 99, 1234, usize::MAX] {
            let mut redacted = String::new();
            push_redacted(&mut redacted, n);
            assert_eq!(redacted, format!("<redacted, {n} bytes>"));
            let mut decimal = String::new();
            push_decimal(&mut decimal, n as u64);
            assert_eq!(decimal, n.to_string());
            let mut more = String::new();
            push_more(&mut more, n);
            let want = if n > 0 {
                format!(" (+{n} more)")
            } else {
                String::new()
            };
            assert_eq!(more, want);
        }
    }
}
