//! Exposure findings (SPEC "Finding kinds"): kinds, severities and the
//! [`Finding`] record the findings log writes.
//!
//! Contract: a [`Finding`] never holds a secret; evidence is built with
//! [`redacted`] (length only) and [`printable`] (bounded, non-secret text).

use crate::clock::Timestamp;
use serde::Serialize;
use std::net::SocketAddr;

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

/// How evidence stands for a secret: `<redacted, 24 bytes>`.
pub fn redacted(len: usize) -> String {
    format!("<redacted, {len} bytes>")
}

/// A short, printable rendition of non-secret wire text (a header name, a
/// cookie name, a Deprecation value) for evidence: at most `max` bytes,
/// control and non-ASCII bytes as `?`.
pub fn printable(b: &[u8], max: usize) -> String {
    let mut s: String = b
        .iter()
        .take(max)
        .map(|&c| {
            if (0x20..0x7f).contains(&c) {
                c as char
            } else {
                '?'
            }
        })
        .collect();
    if b.len() > max {
        s.push('…');
    }
    s
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
    }
}
