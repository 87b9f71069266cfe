//! Classification's configuration: the `[classify]` table of the TOML file,
//! its defaults and its validation.
//!
//! Contract: [`ClassifySection`] is the table as written (unknown keys are
//! refused); [`ClassifySection::into_config`] validates it into a
//! [`ClassifyConfig`] or returns a [`KeyError`] naming the key and why.
//! [`ClassifyConfig::validate`] checks a config built in code the same way.

use super::addr::Cidr;
use super::body::{DEFAULT_DECODE_LIMIT, DEFAULT_VERBOSE_MARKERS};
use super::findings::{FindingKind, Severities, Severity};
use super::redact::DEFAULT_CREDENTIAL_PARAMS;
use crate::config::Size;
use serde::Deserialize;
use std::collections::BTreeMap;

/// SPEC's default API-key header names (configurable).
pub const DEFAULT_API_KEY_HEADERS: &[&str] =
    &["x-api-key", "api-key", "x-auth-token", "x-access-token"];

/// Most (server, path) pairs remembered as having answered 2xx, for
/// `endpoint_gone` (two generations of half this many).
pub const DEFAULT_MAX_OK_PATHS: usize = 100_000;
/// `weak_jwt`: a lifetime (`exp - iat`) over this is weak.
pub const DEFAULT_MAX_JWT_LIFETIME_SECS: f64 = 86_400.0;
/// `endpoint_sprawl`: more distinct 2xx/3xx routes per server than this.
pub const DEFAULT_SPRAWL_LIMIT: usize = 200;
/// Route inventory bounds.
pub const DEFAULT_INVENTORY_MAX_SERVERS: usize = 256;
pub const DEFAULT_INVENTORY_MAX_ROUTES: usize = 1024;
/// `unsafe_url`: a longer target is unsafe.
pub const DEFAULT_MAX_TARGET_BYTES: usize = 2048;
/// Findings log: a repeat is written at most once per this (capture time).
pub const DEFAULT_FOLD_INTERVAL_SECS: f64 = 600.0;
/// Findings log: most (kind, server, route, client) keys remembered.
pub const DEFAULT_FOLD_MAX_ENTRIES: usize = 10_000;
/// Most JWTs inspected per exchange.
pub const DEFAULT_MAX_JWTS: usize = 8;

#[derive(Clone, Debug)]
pub struct ClassifyConfig {
    /// Lower-case query parameter names that carry credentials.
    pub credential_params: Vec<String>,
    /// Lower-case API-key header names.
    pub api_key_headers: Vec<String>,
    pub route_patterns: Vec<String>,
    pub max_ok_paths: usize,
    pub max_jwt_lifetime_secs: f64,
    pub max_jwts_per_exchange: usize,
    pub sprawl_limit: usize,
    pub inventory_max_servers: usize,
    pub inventory_max_routes: usize,
    /// Addresses counted as internal although public.
    pub internal_networks: Vec<Cidr>,
    /// The full list: SPEC's examples, more defaults, and configured extras.
    pub verbose_error_markers: Vec<String>,
    /// Most decoded body bytes looked at (gzip/deflate output bound).
    pub body_decode_bytes: usize,
    pub max_target_bytes: usize,
    pub severities: Severities,
    pub fold_interval_micros: i64,
    pub fold_max_entries: usize,
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

impl Default for ClassifyConfig {
    fn default() -> Self {
        ClassifyConfig {
            credential_params: strings(DEFAULT_CREDENTIAL_PARAMS),
            api_key_headers: strings(DEFAULT_API_KEY_HEADERS),
            route_patterns: Vec::new(),
            max_ok_paths: DEFAULT_MAX_OK_PATHS,
            max_jwt_lifetime_secs: DEFAULT_MAX_JWT_LIFETIME_SECS,
            max_jwts_per_exchange: DEFAULT_MAX_JWTS,
            sprawl_limit: DEFAULT_SPRAWL_LIMIT,
            inventory_max_servers: DEFAULT_INVENTORY_MAX_SERVERS,
            inventory_max_routes: DEFAULT_INVENTORY_MAX_ROUTES,
            internal_networks: Vec::new(),
            verbose_error_markers: strings(DEFAULT_VERBOSE_MARKERS),
            body_decode_bytes: DEFAULT_DECODE_LIMIT,
            max_target_bytes: DEFAULT_MAX_TARGET_BYTES,
            severities: Severities::default(),
            fold_interval_micros: (DEFAULT_FOLD_INTERVAL_SECS * 1e6) as i64,
            fold_max_entries: DEFAULT_FOLD_MAX_ENTRIES,
        }
    }
}

/// A configuration value that cannot be used: which key, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct KeyError {
    pub key: &'static str,
    pub reason: String,
}

fn err(key: &'static str, reason: impl Into<String>) -> KeyError {
    KeyError {
        key,
        reason: reason.into(),
    }
}

/// The `[classify]` table as written (kebab-case keys; see the README).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClassifySection {
    pub credential_params: Option<Vec<String>>,
    pub api_key_headers: Option<Vec<String>>,
    pub route_patterns: Option<Vec<String>>,
    pub max_ok_paths: Option<usize>,
    /// Seconds.
    pub max_jwt_lifetime: Option<f64>,
    pub max_jwts_per_exchange: Option<usize>,
    pub sprawl_limit: Option<usize>,
    pub inventory_max_servers: Option<usize>,
    pub inventory_max_routes: Option<usize>,
    pub internal_networks: Option<Vec<String>>,
    /// Added to the built-in markers.
    pub verbose_error_markers: Option<Vec<String>>,
    pub body_decode_bytes: Option<Size>,
    pub max_target_bytes: Option<Size>,
    /// kind → `high`, `medium`, `low` or `off`.
    pub severities: Option<BTreeMap<String, String>>,
    /// Seconds; 0 writes every repeat.
    pub findings_fold_interval: Option<f64>,
    pub findings_fold_max_entries: Option<usize>,
}

fn names(key: &'static str, v: Vec<String>, header: bool) -> Result<Vec<String>, KeyError> {
    let mut out = Vec::with_capacity(v.len());
    for n in v {
        let bad = n.is_empty()
            || n.len() > 128
            || n.bytes().any(|b| {
                b.is_ascii_control()
                    || b == b' '
                    || !b.is_ascii()
                    || (header && matches!(b, b':' | b'"' | b'(' | b')' | b',' | b';'))
                    || (!header && matches!(b, b'&' | b'=' | b'#' | b'?'))
            });
        if bad {
            return Err(err(key, format!("{n:?} is not a valid name")));
        }
        out.push(n.to_ascii_lowercase());
    }
    Ok(out)
}

fn in_range(key: &'static str, v: usize, lo: usize, hi: usize) -> Result<usize, KeyError> {
    if v < lo || v > hi {
        return Err(err(key, format!("must be between {lo} and {hi}, got {v}")));
    }
    Ok(v)
}

fn secs(key: &'static str, v: f64, allow_zero: bool) -> Result<f64, KeyError> {
    if !v.is_finite() || v < 0.0 || (v == 0.0 && !allow_zero) || v > 86_400.0 * 3650.0 {
        return Err(err(
            key,
            format!("must be a number of seconds above 0, got {v}"),
        ));
    }
    Ok(v)
}

impl ClassifySection {
    /// Validate into a [`ClassifyConfig`] (defaults for what is not given).
    pub fn into_config(self) -> Result<ClassifyConfig, KeyError> {
        let mut c = ClassifyConfig::default();
        if let Some(v) = self.credential_params {
            c.credential_params = names("classify.credential-params", v, false)?;
        }
        if let Some(v) = self.api_key_headers {
            c.api_key_headers = names("classify.api-key-headers", v, true)?;
        }
        if let Some(v) = self.route_patterns {
            super::route::RouteTemplater::new(&v)
                .map_err(|e| err("classify.route-patterns", e.to_string()))?;
            c.route_patterns = v;
        }
        if let Some(v) = self.max_ok_paths {
            c.max_ok_paths = in_range("classify.max-ok-paths", v, 2, 100_000_000)?;
        }
        if let Some(v) = self.max_jwt_lifetime {
            c.max_jwt_lifetime_secs = secs("classify.max-jwt-lifetime", v, false)?;
        }
        if let Some(v) = self.max_jwts_per_exchange {
            c.max_jwts_per_exchange = in_range("classify.max-jwts-per-exchange", v, 1, 64)?;
        }
        if let Some(v) = self.sprawl_limit {
            c.sprawl_limit = in_range("classify.sprawl-limit", v, 1, 1_000_000)?;
        }
        if let Some(v) = self.inventory_max_servers {
            c.inventory_max_servers = in_range("classify.inventory-max-servers", v, 1, 1_000_000)?;
        }
        if let Some(v) = self.inventory_max_routes {
            c.inventory_max_routes = in_range("classify.inventory-max-routes", v, 2, 1_000_000)?;
        }
        if let Some(v) = self.internal_networks {
            c.internal_networks = v
                .iter()
                .map(|s| s.parse::<Cidr>())
                .collect::<Result<_, _>>()
                .map_err(|e| err("classify.internal-networks", e))?;
        }
        if let Some(v) = self.verbose_error_markers {
            for m in v {
                if m.len() < 4 || m.len() > 200 {
                    return Err(err(
                        "classify.verbose-error-markers",
                        format!("{m:?}: a marker is 4 to 200 bytes"),
                    ));
                }
                c.verbose_error_markers.push(m);
            }
        }
        if let Some(Size(v)) = self.body_decode_bytes {
            c.body_decode_bytes = in_range("classify.body-decode-bytes", v, 64, 1 << 20)?;
        }
        if let Some(Size(v)) = self.max_target_bytes {
            c.max_target_bytes = in_range("classify.max-target-bytes", v, 16, 1 << 20)?;
        }
        if let Some(m) = self.severities {
            for (k, v) in m {
                let kind: FindingKind = k.parse().map_err(|_| {
                    err(
                        "classify.severities",
                        format!("{k:?} is not a finding kind (e.g. weak_jwt)"),
                    )
                })?;
                let sev = match v.as_str() {
                    "off" => None,
                    s => Some(s.parse::<Severity>().map_err(|_| {
                        err(
                            "classify.severities",
                            format!("{k}: must be high, medium, low or off, got {v:?}"),
                        )
                    })?),
                };
                c.severities.set(kind, sev);
            }
        }
        if let Some(v) = self.findings_fold_interval {
            c.fold_interval_micros =
                (secs("classify.findings-fold-interval", v, true)? * 1e6).round() as i64;
        }
        if let Some(v) = self.findings_fold_max_entries {
            c.fold_max_entries = in_range("classify.findings-fold-max-entries", v, 1, 10_000_000)?;
        }
        c.validate()?;
        Ok(c)
    }
}

impl ClassifyConfig {
    /// Cross-key checks (also for configs built in code).
    pub fn validate(&self) -> Result<(), KeyError> {
        if self.inventory_max_routes <= self.sprawl_limit {
            return Err(err(
                "classify.inventory-max-routes",
                format!(
                    "must be above classify.sprawl-limit ({}), got {}",
                    self.sprawl_limit, self.inventory_max_routes
                ),
            ));
        }
        super::route::RouteTemplater::new(&self.route_patterns)
            .map_err(|e| err("classify.route-patterns", e.to_string()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<ClassifyConfig, String> {
        let s: ClassifySection = toml::from_str(text).map_err(|e| e.message().to_string())?;
        s.into_config().map_err(|e| e.to_string())
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                "credential-params = [\"a b\"]",
                "classify.credential-params",
            ),
            ("api-key-headers = [\"X:Key\"]", "classify.api-key-headers"),
            ("route-patterns = [\"x\"]", "classify.route-patterns"),
            ("max-jwt-lifetime = 0", "classify.max-jwt-lifetime"),
            ("sprawl-limit = 0", "classify.sprawl-limit"),
            (
                "internal-networks = [\"10.0.0.0/40\"]",
                "classify.internal-networks",
            ),
            (
                "severities = { weak_jwt = \"huge\" }",
                "classify.severities",
            ),
            ("severities = { nope = \"high\" }", "classify.severities"),
            (
                "findings-fold-interval = -1",
                "classify.findings-fold-interval",
            ),
            (
                "sprawl-limit = 500\ninventory-max-routes = 100",
                "classify.inventory-max-routes",
            ),
            ("body-decode-bytes = 1", "classify.body-decode-bytes"),
            (
                "verbose-error-markers = [\"ab\"]",
                "classify.verbose-error-markers",
            ),
            ("unknown-key = 1", "unknown-key"),
        ];
        for (text, key) in cases {
            let e = load(text).unwrap_err();
            assert!(e.contains(key), "{text:?}: {e}");
        }
    }

    #[test]
    fn values_are_taken() {
        let c = load(
            "api-key-headers = [\"X-Custom-Key\"]\ncredential-params = [\"Tok\"]\n\
             internal-networks = [\"203.0.113.0/24\", \"8.8.8.8\"]\n\
             severities = { route_variants = \"off\", unsafe_url = \"high\" }\n\
             findings-fold-interval = 0\nmax-jwt-lifetime = 3600\nsprawl-limit = 5",
        )
        .unwrap();
        assert_eq!(c.api_key_headers, vec!["x-custom-key"]);
        assert_eq!(c.credential_params, vec!["tok"]);
        assert_eq!(c.internal_networks.len(), 2);
        assert_eq!(c.severities.get(FindingKind::RouteVariants), None);
        assert_eq!(
            c.severities.get(FindingKind::UnsafeUrl),
            Some(Severity::High)
        );
        assert_eq!(c.fold_interval_micros, 0);
        assert_eq!(c.max_jwt_lifetime_secs, 3600.0);
        assert_eq!(c.sprawl_limit, 5);
        assert!(load("").is_ok());
    }
}
