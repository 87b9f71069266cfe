//! Classification: what an exchange means.
//!
//! Contract: given a finished [`Exchange`](crate::http::exchange::Exchange),
//! decide its failure cause (exactly one, first match wins, SPEC's table),
//! its route template, and its exposure findings. Nothing here sees packets
//! or streams. Secrets are only ever looked at, never copied out: what leaves
//! this module (targets, evidence) is redacted.

pub mod findings;
pub mod redact;
pub mod route;

use serde::Serialize;

/// Why an API call failed (SPEC: "Failure causes"), in rule order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureCause {
    Malformed,
    Timeout,
    ConnectionReset,
    SessionExpired,
    AuthMissing,
    AuthRejected,
    Forbidden,
    EndpointGone,
    NotFound,
    RateLimited,
    BadRequest,
    UpstreamFailure,
    ServerError,
    EmptyResponse,
}

impl FailureCause {
    pub const ALL: [FailureCause; 14] = [
        FailureCause::Malformed,
        FailureCause::Timeout,
        FailureCause::ConnectionReset,
        FailureCause::SessionExpired,
        FailureCause::AuthMissing,
        FailureCause::AuthRejected,
        FailureCause::Forbidden,
        FailureCause::EndpointGone,
        FailureCause::NotFound,
        FailureCause::RateLimited,
        FailureCause::BadRequest,
        FailureCause::UpstreamFailure,
        FailureCause::ServerError,
        FailureCause::EmptyResponse,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureCause::Malformed => "malformed",
            FailureCause::Timeout => "timeout",
            FailureCause::ConnectionReset => "connection_reset",
            FailureCause::SessionExpired => "session_expired",
            FailureCause::AuthMissing => "auth_missing",
            FailureCause::AuthRejected => "auth_rejected",
            FailureCause::Forbidden => "forbidden",
            FailureCause::EndpointGone => "endpoint_gone",
            FailureCause::NotFound => "not_found",
            FailureCause::RateLimited => "rate_limited",
            FailureCause::BadRequest => "bad_request",
            FailureCause::UpstreamFailure => "upstream_failure",
            FailureCause::ServerError => "server_error",
            FailureCause::EmptyResponse => "empty_response",
        }
    }
}

use crate::http::exchange::{Exchange, Outcome};
use crate::http::Headers;
use route::RouteTemplater;
use std::collections::HashSet;
use std::net::SocketAddr;

/// SPEC's default API-key header names (configurable).
pub const DEFAULT_API_KEY_HEADERS: &[&str] =
    &["x-api-key", "api-key", "x-auth-token", "x-access-token"];

/// Most (server, path) pairs remembered as having answered 2xx, for
/// `endpoint_gone`; past it no new path is remembered (and it is counted).
pub const DEFAULT_MAX_OK_PATHS: usize = 100_000;

#[derive(Clone, Debug)]
pub struct ClassifyConfig {
    pub credential_params: Vec<String>,
    pub api_key_headers: Vec<String>,
    pub route_patterns: Vec<String>,
    pub max_ok_paths: usize,
}

impl Default for ClassifyConfig {
    fn default() -> Self {
        ClassifyConfig {
            credential_params: redact::DEFAULT_CREDENTIAL_PARAMS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            api_key_headers: DEFAULT_API_KEY_HEADERS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            route_patterns: Vec::new(),
            max_ok_paths: DEFAULT_MAX_OK_PATHS,
        }
    }
}

/// Classification state: the configuration plus what the run has learnt.
pub struct Classifier {
    cfg: ClassifyConfig,
    routes: RouteTemplater,
    /// (server, exact path) that answered 2xx in this run.
    ok_paths: HashSet<(SocketAddr, Box<[u8]>), ahash::RandomState>,
    pub ok_paths_refused: u64,
}

impl Classifier {
    pub fn new(cfg: ClassifyConfig) -> Result<Self, route::PatternError> {
        let routes = RouteTemplater::new(&cfg.route_patterns)?;
        Ok(Classifier {
            cfg,
            routes,
            ok_paths: HashSet::with_hasher(ahash::RandomState::new()),
            ok_paths_refused: 0,
        })
    }

    pub fn config(&self) -> &ClassifyConfig {
        &self.cfg
    }

    /// Fill in route, host and failure cause.
    pub fn classify(&mut self, ex: &mut Exchange) {
        if let Some(req) = &ex.request {
            ex.route = Some(self.routes.route(&req.target));
            ex.host = host_of(&req.target, &req.headers);
        }
        ex.failure = self.cause(ex);
    }

    /// SPEC's failure causes, first match wins.
    fn cause(&mut self, ex: &Exchange) -> Option<FailureCause> {
        match ex.outcome {
            Outcome::Malformed => return Some(FailureCause::Malformed),
            Outcome::TimedOut => return Some(FailureCause::Timeout),
            Outcome::ConnectionEnded => {
                if ex.response.is_none() || ex.status().is_some_and(|s| s >= 100) {
                    return Some(FailureCause::ConnectionReset);
                }
            }
            Outcome::Unknown => {
                // A status was seen but the end of the response was not: the
                // status still says what happened.
                ex.status()?;
            }
            Outcome::Complete => {}
        }
        let status = ex.status()?;
        let req = ex.request.as_ref();
        let path = req.and_then(|r| route::path_of(&r.target));
        Some(match status {
            401 | 403 if req.is_some_and(|r| self.has_expired_jwt(r, ex.ts)) => {
                FailureCause::SessionExpired
            }
            401 => match req {
                Some(r) if self.has_credentials(r) => FailureCause::AuthRejected,
                _ => FailureCause::AuthMissing,
            },
            403 => FailureCause::Forbidden,
            410 => FailureCause::EndpointGone,
            404 => match path {
                Some(p) if self.ok_paths.contains(&(ex.server, p.into())) => {
                    FailureCause::EndpointGone
                }
                _ => FailureCause::NotFound,
            },
            429 => FailureCause::RateLimited,
            400..=499 => FailureCause::BadRequest,
            502..=504 => FailureCause::UpstreamFailure,
            500..=599 => FailureCause::ServerError,
            200..=299 => {
                if let Some(p) = path {
                    self.remember_ok(ex.server, p);
                }
                let get = req.is_some_and(|r| r.method == crate::http::Method::Get);
                if status == 200 && get && ex.outcome == Outcome::Complete && is_empty_body(ex) {
                    FailureCause::EmptyResponse
                } else {
                    return None;
                }
            }
            _ => return None,
        })
    }

    fn remember_ok(&mut self, server: SocketAddr, path: &[u8]) {
        let key = (server, Box::<[u8]>::from(path));
        if self.ok_paths.contains(&key) {
            return;
        }
        if self.ok_paths.len() >= self.cfg.max_ok_paths {
            self.ok_paths_refused += 1;
            return;
        }
        self.ok_paths.insert(key);
    }

    /// Authorization, an API-key header, a credential query parameter or a
    /// Cookie.
    pub fn has_credentials(&self, r: &crate::http::RequestHead) -> bool {
        let h = &r.headers;
        if h.get("authorization").is_some() || h.get("cookie").is_some() {
            return true;
        }
        if self.cfg.api_key_headers.iter().any(|n| h.get(n).is_some()) {
            return true;
        }
        query_names(&r.target).any(|n| redact::is_credential_name(n, &self.cfg.credential_params))
    }

    fn has_expired_jwt(
        &self,
        _r: &crate::http::RequestHead,
        _now: crate::clock::Timestamp,
    ) -> bool {
        false
    }
}

/// Names of the query parameters of a target.
pub fn query_names(target: &[u8]) -> impl Iterator<Item = &[u8]> {
    let q = match memchr::memchr(b'?', target) {
        Some(i) => &target[i + 1..],
        None => &[][..],
    };
    let q = match memchr::memchr(b'#', q) {
        Some(i) => &q[..i],
        None => q,
    };
    q.split(|&b| b == b'&')
        .filter(|p| !p.is_empty())
        .map(|p| match memchr::memchr(b'=', p) {
            Some(i) => &p[..i],
            None => p,
        })
}

/// 200 with an empty body, or JSON `{}`, `[]` or `null`.
fn is_empty_body(ex: &Exchange) -> bool {
    if ex.response_body_bytes == 0 {
        return true;
    }
    if ex.response_body_bytes > 16 || ex.capture_loss {
        return false;
    }
    let t = ex.response_body_prefix.trim_ascii();
    matches!(t, b"{}" | b"[]" | b"null")
}

/// The Host of a request: the authority of an absolute-form target when
/// present, else the Host header; lower-cased, `:80` stripped.
pub fn host_of(target: &[u8], headers: &Headers) -> Option<String> {
    let from_target = memchr::memmem::find(target, b"://").map(|p| {
        let rest = &target[p + 3..];
        let end = memchr::memchr3(b'/', b'?', b'#', rest).unwrap_or(rest.len());
        let auth = &rest[..end];
        match memchr::memrchr(b'@', auth) {
            Some(at) => &auth[at + 1..],
            None => auth,
        }
    });
    let raw = from_target
        .filter(|h| !h.is_empty())
        .or_else(|| headers.get("host"))?;
    let raw = raw.trim_ascii();
    if raw.is_empty() {
        return None;
    }
    let mut h = redact::bytes_to_text(raw).to_ascii_lowercase();
    if h.len() > 255 {
        h.truncate(h.floor_char_boundary(255));
    }
    if let Some(stripped) = h.strip_suffix(":80") {
        h = stripped.to_string();
    }
    Some(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_table() {
        let cases: &[(&[u8], Option<&str>, Option<&str>)] = &[
            (b"/", Some("API.Example.com"), Some("api.example.com")),
            (b"/", Some("api.example.com:80"), Some("api.example.com")),
            (
                b"/",
                Some("api.example.com:8080"),
                Some("api.example.com:8080"),
            ),
            (b"/", Some("[::1]:80"), Some("[::1]")),
            (b"/", None, None),
            (b"/", Some(""), None),
            (
                b"http://Proxy.Example:80/x",
                Some("other"),
                Some("proxy.example"),
            ),
            (b"http://u:p@h.example/x", None, Some("h.example")),
        ];
        for (target, header, want) in cases {
            let mut h = Headers::default();
            if let Some(v) = header {
                h.push(b"Host", v.as_bytes());
            }
            assert_eq!(host_of(target, &h).as_deref(), *want, "{header:?}");
        }
    }

    #[test]
    fn query_names_table() {
        let names: Vec<&[u8]> = query_names(b"/a?x=1&token&&y=2#f").collect();
        assert_eq!(names, vec![&b"x"[..], b"token", b"y"]);
        assert_eq!(query_names(b"/a").count(), 0);
    }
}
