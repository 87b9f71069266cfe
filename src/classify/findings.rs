//! Exposure findings (SPEC "Finding kinds").

use serde::Serialize;

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
