//! Classification: what an exchange means.
//!
//! Contract: given a finished [`Exchange`](crate::http::exchange::Exchange),
//! decide its failure cause (exactly one, first match wins, SPEC's table),
//! its route template, and its exposure findings. Nothing here sees packets
//! or streams. Secrets are only ever looked at, never copied out: what leaves
//! this module (targets, evidence) is redacted.
//!
//! Cost: classification runs on every exchange, so each thing it derives
//! (the Host, whether the Host is an IP literal, the server's identity) is
//! derived once per exchange, a rule's evidence is built only when the rule
//! fires and its kind is turned on, and an exchange without findings costs
//! no allocation beyond its route and Host.

pub mod addr;
pub mod body;
pub mod exposure;
pub mod findings;
pub mod inventory;
pub mod jwt;
pub mod redact;
pub mod route;
#[cfg(test)]
mod rules_tests;
pub mod search;
pub mod settings;
pub mod tls;

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
use findings::{Finding, FindingKind};
use inventory::{EndpointEvent, OkPaths, RouteInventory, ServerKey};
use route::RouteTemplater;
pub use settings::{ClassifyConfig, DEFAULT_API_KEY_HEADERS, DEFAULT_MAX_OK_PATHS};

/// Classification state: the configuration plus what the run has learnt.
pub struct Classifier {
    cfg: ClassifyConfig,
    routes: RouteTemplater,
    /// (server, exact path) that answered 2xx in this run.
    ok_paths: OkPaths,
    inventory: RouteInventory,
    jwts: jwt::JwtCache,
    inflaters: body::Inflaters,
    /// `cfg.verbose_error_markers`, ready to search with.
    markers: body::VerboseMarkers,
    /// The server identity of the exchange being classified; kept between
    /// exchanges only so its text buffer is reused.
    server: ServerKey,
}

/// Counters of classification's bounded memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassifyStats {
    pub ok_paths: usize,
    pub ok_path_rotations: u64,
    pub inventory_servers: usize,
    pub inventory_servers_evicted: u64,
    pub inventory_routes_refused: u64,
}

impl Classifier {
    pub fn new(cfg: ClassifyConfig) -> Result<Self, route::PatternError> {
        let routes = RouteTemplater::new(&cfg.route_patterns)?;
        let markers = body::VerboseMarkers::new(&cfg.verbose_error_markers);
        Ok(Classifier {
            ok_paths: OkPaths::new(cfg.max_ok_paths),
            inventory: RouteInventory::new(
                cfg.inventory_max_servers,
                cfg.inventory_max_routes,
                cfg.sprawl_limit,
            ),
            cfg,
            routes,
            jwts: jwt::JwtCache::default(),
            inflaters: body::Inflaters::default(),
            markers,
            server: ServerKey::default(),
        })
    }

    /// Take a reloaded configuration (already validated into `new`) but
    /// keep what this run has learnt — the paths that answered 2xx and the
    /// route inventory — unless their bounds changed.
    pub fn adopt(&mut self, new: Classifier) {
        let Classifier {
            cfg,
            routes,
            ok_paths,
            inventory,
            jwts: _,
            inflaters: _,
            markers,
            server: _,
        } = new;
        if cfg.max_ok_paths != self.cfg.max_ok_paths {
            self.ok_paths = ok_paths;
        }
        let bounds = |c: &ClassifyConfig| {
            (
                c.inventory_max_servers,
                c.inventory_max_routes,
                c.sprawl_limit,
            )
        };
        if bounds(&cfg) != bounds(&self.cfg) {
            self.inventory = inventory;
        }
        self.routes = routes;
        self.markers = markers;
        self.cfg = cfg;
    }

    pub fn config(&self) -> &ClassifyConfig {
        &self.cfg
    }

    pub fn stats(&self) -> ClassifyStats {
        ClassifyStats {
            ok_paths: self.ok_paths.len(),
            ok_path_rotations: self.ok_paths.rotations,
            inventory_servers: self.inventory.servers(),
            inventory_servers_evicted: self.inventory.servers_evicted,
            inventory_routes_refused: self.inventory.routes_refused,
        }
    }

    /// Fill in route, host, failure cause and the exchange's finding kinds;
    /// return the findings for the findings log: the per-exchange ones (one
    /// per kind) and any endpoint-level ones this exchange revealed. An
    /// exchange without findings costs no allocation here.
    pub fn classify(&mut self, ex: &mut Exchange) -> Vec<Finding> {
        if let Some(req) = &ex.request {
            ex.route = Some(self.routes.route(&req.target));
            ex.host = host_of(&req.target, &req.headers);
        }
        let limit = self.cfg.body_decode_bytes;
        let req_body = match &ex.request {
            Some(r) if !ex.request_body_prefix.is_empty() => {
                let prefix = &ex.request_body_prefix;
                self.inflaters
                    .decoded_prefix(&r.headers, prefix, limit, || {
                        body::worth_decoding(&r.headers, ex.request_body_bytes, None)
                    })
            }
            _ => None,
        };
        let resp_body = match &ex.response {
            Some(r) if !ex.response_body_prefix.is_empty() => {
                let prefix = &ex.response_body_prefix;
                self.inflaters
                    .decoded_prefix(&r.headers, prefix, limit, || {
                        body::worth_decoding(&r.headers, ex.response_body_bytes, Some(r.status))
                    })
            }
            _ => None,
        };
        let jwts = exposure::scan_jwts(
            &self.cfg,
            &mut self.jwts,
            ex,
            req_body.as_deref().unwrap_or_default(),
            resp_body.as_deref().unwrap_or_default(),
        );
        let host_is_ip = ex
            .host
            .as_deref()
            .is_some_and(|h| exposure::host_ip_literal(h).is_some());
        // Taken out of `self` for the exchange, so that `self` can be
        // borrowed mutably beside it; put back (with its buffer) at the end.
        let mut server = std::mem::take(&mut self.server);
        fill_server_key(&mut server, ex, host_is_ip);
        ex.failure = self.cause(ex, &server, jwts.expired_in_request, resp_body.as_deref());

        let mut out: Vec<Finding> = Vec::new();
        self.exchange_findings(ex, jwts, resp_body.as_deref(), host_is_ip, &mut out);
        ex.findings.clear();
        ex.findings.extend(out.iter().map(|f| f.kind));

        let answered = ex.status().is_some_and(|s| (200..400).contains(&s));
        if let (true, Some(route)) = (answered, ex.route.as_deref()) {
            for ev in self.inventory.observe(&server, route, ex.ts.as_micros()) {
                let (kind, r, evidence) = match ev {
                    EndpointEvent::Sprawl { routes, limit } => (
                        FindingKind::EndpointSprawl,
                        None,
                        format!("{routes} distinct routes answered 2xx/3xx (limit {limit})"),
                    ),
                    EndpointEvent::Variants { earlier, how } => (
                        FindingKind::RouteVariants,
                        Some(route.to_string()),
                        format!("routes {earlier} and {route} differ only by {how}"),
                    ),
                };
                if let Some(f) = finding(&self.cfg, ex, kind, r, evidence) {
                    out.push(f);
                }
            }
        }
        self.server = server;
        out
    }

    /// The per-exchange findings that fire and whose kind is not turned
    /// off, in [`FindingKind`] order. A rule whose kind is off is not run.
    fn exchange_findings(
        &self,
        ex: &Exchange,
        jwts: exposure::JwtScan,
        resp_body: Option<&[u8]>,
        host_is_ip: bool,
        out: &mut Vec<Finding>,
    ) {
        let cfg = &self.cfg;
        let markers = &self.markers;
        let mut found = Found { cfg, ex, out };
        let req = ex.request.as_ref();
        let resp = ex.response.as_ref();
        found.rule(FindingKind::CleartextCredentials, || {
            req.and_then(|r| exposure::cleartext_credentials(cfg, r))
        });
        found.rule(FindingKind::CredentialsInUrl, || {
            req.and_then(|r| exposure::credentials_in_url(cfg, &r.target))
        });
        found.rule(FindingKind::CleartextSessionCookie, || {
            req.and_then(exposure::cleartext_session_cookie)
        });
        found.rule(FindingKind::InsecureCookie, || {
            resp.and_then(|r| exposure::insecure_cookie(&r.headers))
        });
        found.rule(FindingKind::WeakJwt, || jwts.weak);
        found.rule(FindingKind::IpLiteralHost, || {
            // A head the capture cut may have had its Host after the cut.
            req.filter(|r| !r.cut || ex.host.is_some())
                .and_then(|_| exposure::ip_literal_host(ex.host.as_deref(), host_is_ip))
        });
        found.rule(FindingKind::PublicPlaintextEndpoint, || {
            exposure::public_plaintext_endpoint(cfg, ex)
        });
        found.rule(FindingKind::UnsafeUrl, || {
            req.and_then(|r| exposure::unsafe_url(cfg, &r.target))
        });
        found.rule(FindingKind::DeprecatedEndpoint, || {
            resp.and_then(|r| exposure::deprecated_endpoint(&r.headers))
        });
        let status = ex.status().unwrap_or(0);
        if (500..600).contains(&status) {
            found.rule(FindingKind::VerboseError, || {
                resp_body
                    .and_then(|b| markers.first_in(b))
                    .map(|i| &cfg.verbose_error_markers[i])
                    .map(|m| format!("{status} body reveals internals: {m:?}"))
            });
        }
    }

    /// SPEC's failure causes, first match wins.
    fn cause(
        &mut self,
        ex: &Exchange,
        server: &ServerKey,
        expired_jwt: bool,
        resp_body: Option<&[u8]>,
    ) -> Option<FailureCause> {
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
            401 | 403 if req.is_some() && expired_jwt => FailureCause::SessionExpired,
            // A head the capture cut shows no absence; and the long heads
            // a snaplen cuts are most often long for their credentials.
            401 => match req {
                Some(r) if r.cut || self.has_credentials(r) => FailureCause::AuthRejected,
                _ => FailureCause::AuthMissing,
            },
            403 => FailureCause::Forbidden,
            410 => FailureCause::EndpointGone,
            404 => match path {
                Some(p) if self.ok_paths.contains(server, p) => FailureCause::EndpointGone,
                _ => FailureCause::NotFound,
            },
            429 => FailureCause::RateLimited,
            400..=499 => FailureCause::BadRequest,
            502..=504 => FailureCause::UpstreamFailure,
            500..=599 => FailureCause::ServerError,
            200..=299 => {
                if let Some(p) = path {
                    self.ok_paths.remember(server, p);
                }
                let get = req.is_some_and(|r| r.method == crate::http::Method::Get);
                if status == 200
                    && get
                    && ex.outcome == Outcome::Complete
                    && is_empty_body(ex, resp_body)
                {
                    FailureCause::EmptyResponse
                } else {
                    return None;
                }
            }
            _ => return None,
        })
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
}

/// Per-exchange findings being collected for one exchange.
struct Found<'a> {
    cfg: &'a ClassifyConfig,
    ex: &'a Exchange,
    out: &'a mut Vec<Finding>,
}

impl Found<'_> {
    /// Run a rule unless its kind is turned off; keep its finding if it
    /// fires.
    fn rule(&mut self, kind: FindingKind, evidence: impl FnOnce() -> Option<String>) {
        if self.cfg.severities.get(kind).is_none() {
            return;
        }
        if let Some(evidence) = evidence() {
            let route = self.ex.route.clone();
            self.out
                .extend(finding(self.cfg, self.ex, kind, route, evidence));
        }
    }
}

/// A finding of `kind` about `ex`, unless its kind is turned off.
fn finding(
    cfg: &ClassifyConfig,
    ex: &Exchange,
    kind: FindingKind,
    route: Option<String>,
    evidence: String,
) -> Option<Finding> {
    Some(Finding {
        ts: ex.ts,
        kind,
        severity: cfg.severities.get(kind)?,
        client: ex.client,
        server: ex.server,
        host: ex.host.clone(),
        route,
        evidence,
    })
}

/// SPEC's server identity: `server_address` (the Host name when it is a
/// name, else the server's IP address) and the server's port, written into
/// `key` (its text buffer reused). `host_is_ip`: the Host is an IP literal.
fn fill_server_key(key: &mut ServerKey, ex: &Exchange, host_is_ip: bool) {
    let (name, port) = key;
    name.clear();
    *port = ex.server.port();
    match ex.host.as_deref().filter(|_| !host_is_ip) {
        Some(h) => name.push_str(match h.rsplit_once(':') {
            Some((n, p)) if p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => h,
        }),
        None => findings::push_ip(name, ex.server.ip()),
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

/// 200 with an empty body, or JSON `{}`, `[]` or `null` (after content
/// decoding, when the whole body is in the prefix).
fn is_empty_body(ex: &Exchange, decoded: Option<&[u8]>) -> bool {
    if ex.response_body_bytes == 0 {
        return true;
    }
    if ex.capture_loss || ex.response_body_prefix.len() as u64 != ex.response_body_bytes {
        return false;
    }
    decoded.is_some_and(body::is_empty_json)
}

/// The Host of a request: the authority of an absolute-form target when
/// present, else the Host header; without userinfo (`user:password@`,
/// which clients that copy a URL's authority put in Host too), lower-cased,
/// `:80` stripped, control characters and invalid UTF-8 as `%xx`. A `://`
/// further into an origin-form target (`/login?next=https://...`) is not
/// an authority: the Host header stays the host.
pub fn host_of<'a>(target: &'a [u8], headers: &'a Headers) -> Option<String> {
    let without_userinfo = |auth: &'a [u8]| match memchr::memrchr(b'@', auth) {
        Some(at) => &auth[at + 1..],
        None => auth,
    };
    let from_target = search::absolute_scheme_end(target).map(|p| {
        let rest = &target[p + 3..];
        let end = memchr::memchr3(b'/', b'?', b'#', rest).unwrap_or(rest.len());
        without_userinfo(&rest[..end])
    });
    let raw = from_target
        .filter(|h| !h.is_empty())
        .or_else(|| headers.get("host").map(without_userinfo))?;
    let raw = raw.trim_ascii();
    if raw.is_empty() {
        return None;
    }
    // One allocation, unless there are control characters: the text is
    // lower-cased, cut and stripped in place.
    let mut h = redact::escape_controls(redact::bytes_to_text(raw).into()).into_owned();
    h.make_ascii_lowercase();
    if h.len() > 255 {
        h.truncate(h.floor_char_boundary(255));
    }
    if h.ends_with(":80") {
        h.truncate(h.len() - 3);
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
            (b"HTTPS://H.example/x", None, Some("h.example")),
            // `://` in an origin-form target's query or path names no host
            // (nor can a query's secret become one).
            (
                b"/login?next=https://other.example/x",
                Some("api.example.com"),
                Some("api.example.com"),
            ),
            (
                b"/cb?r=http://a.example&token=s3cr3t",
                Some("api.example.com"),
                Some("api.example.com"),
            ),
            (
                b"/proxy/http://b.example/x",
                Some("a.example"),
                Some("a.example"),
            ),
            (b"1http://b.example/x", Some("a.example"), Some("a.example")),
            // Userinfo names no host, in the Host header either.
            (b"/", Some("u:s3cr3t@h.example"), Some("h.example")),
            (b"/", Some("a@b@h.example:8080"), Some("h.example:8080")),
            (b"/", Some("u:s3cr3t@"), None),
            (b"http://u:p@/x", Some("h.example"), Some("h.example")),
            // Control characters cannot reach a terminal or a label.
            (
                b"/",
                Some("\x1b]0;pwned\x07h.example"),
                Some("%1b]0;pwned%07h.example"),
            ),
            (b"/", Some("a\u{9b}2Jb"), Some("a%c2%9b2jb")),
            (b"/", Some("caf\u{e9}.example"), Some("caf\u{e9}.example")),
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
