//! The read-mode summary report: what a person wants to know after
//! `apitap -r FILE` — how many exchanges, which failures by cause and which
//! routes fail most, which exposure findings by kind and severity and on
//! which servers, which servers are plaintext and which TLS, and whether the
//! capture itself can be trusted.
//!
//! Contract: memory is bounded (at most [`MAX_SERVERS`] servers and
//! [`MAX_ROUTES`] failing routes are counted, the rest folded into one
//! line); everything shown is already redacted (routes are templates, hosts
//! carry no userinfo, no evidence is shown). Colour (ANSI) only when asked
//! for: [`Summary::render`] uses it when stdout is a terminal.

use crate::classify::findings::{Finding, FindingKind, Severity};
use crate::http::exchange::Exchange;
use crate::pipeline::{ExchangeSink, PipelineStats};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;

/// Most distinct servers counted (the rest are folded).
pub const MAX_SERVERS: usize = 10_000;
/// Most distinct failing (server, route) pairs counted.
pub const MAX_ROUTES: usize = 10_000;
/// Most servers named per finding kind.
const SERVERS_PER_KIND: usize = 5;
/// Most lines in a "top" list.
const TOP: usize = 10;
const OTHER: &str = "(other servers)";

/// What the report knows of one server.
#[derive(Default, Debug, Clone)]
pub struct ServerSeen {
    pub exchanges: u64,
    pub failures: u64,
    /// TLS connections, by negotiated (or offered) version name.
    pub tls: BTreeMap<&'static str, u64>,
    /// TCP connections that were neither HTTP/1.x nor TLS.
    pub other: u64,
}

#[derive(Default)]
pub struct Summary {
    pub exchanges: u64,
    pub orphan_responses: u64,
    pub without_response: u64,
    pub capture_loss: u64,
    pub statuses: BTreeMap<u16, u64>,
    pub failures: BTreeMap<&'static str, u64>,
    /// Per server (Host, else address).
    pub servers: HashMap<String, ServerSeen>,
    /// Failing (server, route) → count by cause.
    pub failing_routes: HashMap<(String, String), BTreeMap<&'static str, u64>>,
    pub failing_routes_folded: u64,
    /// (severity, kind) → (occurrences, servers concerned).
    pub findings: BTreeMap<(Severity, FindingKind), (u64, BTreeSet<String>)>,
    /// Blocks of the capture file skipped as unreadable
    /// ([`crate::capture::SourceStats::corrupt_blocks`]).
    pub corrupt_blocks: u64,
}

fn server_name(host: Option<&str>, addr: SocketAddr) -> String {
    match host {
        Some(h) => h.to_string(),
        None => addr.to_string(),
    }
}

impl ExchangeSink for Summary {
    fn exchange(&mut self, ex: &Exchange) {
        self.exchanges += 1;
        if ex.request.is_none() && ex.response.is_some() {
            self.orphan_responses += 1;
        }
        match ex.status() {
            Some(s) => *self.statuses.entry(s).or_default() += 1,
            None => self.without_response += 1,
        }
        if ex.capture_loss {
            self.capture_loss += 1;
        }
        let server = server_name(ex.host.as_deref(), ex.server);
        let s = self.server(server.clone());
        s.exchanges += 1;
        if let Some(f) = ex.failure {
            s.failures += 1;
            *self.failures.entry(f.as_str()).or_default() += 1;
            let route = ex.route.clone().unwrap_or_else(|| "(no request)".into());
            let key = (server, route);
            if self.failing_routes.len() < MAX_ROUTES || self.failing_routes.contains_key(&key) {
                *self
                    .failing_routes
                    .entry(key)
                    .or_default()
                    .entry(f.as_str())
                    .or_default() += 1;
            } else {
                self.failing_routes_folded += 1;
            }
        }
    }
}

impl Summary {
    fn server(&mut self, name: String) -> &mut ServerSeen {
        let key = if self.servers.len() < MAX_SERVERS || self.servers.contains_key(&name) {
            name
        } else {
            OTHER.to_string()
        };
        self.servers.entry(key).or_default()
    }

    /// A finding (per-exchange, connection- or endpoint-level).
    pub fn finding(&mut self, f: &Finding) {
        let (n, servers) = self.findings.entry((f.severity, f.kind)).or_default();
        *n += 1;
        if servers.len() < SERVERS_PER_KIND {
            servers.insert(server_name(f.host.as_deref(), f.server));
        }
    }

    /// A TLS connection to `server` (SNI when seen), with the negotiated
    /// version, else the highest the client offered, when known.
    pub fn tls_connection(&mut self, server: SocketAddr, sni: Option<&str>, version: Option<u16>) {
        let name = version.map_or("unknown version", crate::classify::tls::version_name);
        *self
            .server(server_name(sni, server))
            .tls
            .entry(name)
            .or_default() += 1;
    }

    /// A TCP connection that carried neither HTTP/1.x nor TLS.
    pub fn other_connection(&mut self, server: SocketAddr) {
        self.server(server.to_string()).other += 1;
    }

    /// The report, coloured when stdout is a terminal.
    pub fn render(&self, stats: &PipelineStats, truncation: Option<&str>) -> String {
        use std::io::IsTerminal;
        self.render_with(stats, truncation, std::io::stdout().is_terminal())
    }

    /// The report, with ANSI colour or without.
    pub fn render_with(
        &self,
        stats: &PipelineStats,
        truncation: Option<&str>,
        colour: bool,
    ) -> String {
        let paint = |code: &str, text: &str| -> String {
            if colour {
                format!("\x1b[{code}m{text}\x1b[0m")
            } else {
                text.to_string()
            }
        };
        let head = |t: &str| paint("1", t);
        let mut s = String::new();
        let _ = writeln!(s, "{}", head("apitap summary"));
        let _ = writeln!(
            s,
            "  exchanges: {} ({} without response, {} responses without a seen request, {} touched by capture loss)",
            self.exchanges, self.without_response, self.orphan_responses, self.capture_loss
        );
        if !self.statuses.is_empty() {
            let list: Vec<String> = self
                .statuses
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            let _ = writeln!(s, "  statuses: {}", list.join(", "));
        }

        // Failures
        let failed: u64 = self.failures.values().sum();
        if failed == 0 {
            let _ = writeln!(s, "\n{} none", head("failures:"));
        } else {
            let _ = writeln!(s, "\n{} {failed} of {}", head("failures:"), self.exchanges);
            let mut by: Vec<(&&str, &u64)> = self.failures.iter().collect();
            by.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            for (cause, n) in by {
                let _ = writeln!(s, "  {n:>8}  {}", paint("31", cause));
            }
            type Row<'a> = (&'a (String, String), u64, &'a BTreeMap<&'static str, u64>);
            let mut routes: Vec<Row<'_>> = self
                .failing_routes
                .iter()
                .map(|(k, m)| (k, m.values().sum(), m))
                .collect();
            routes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            let _ = writeln!(s, "  top failing routes:");
            for ((server, route), n, causes) in routes.into_iter().take(TOP) {
                let c: Vec<String> = causes.iter().map(|(k, v)| format!("{k} {v}")).collect();
                let _ = writeln!(s, "  {n:>8}  {server} {route}  ({})", c.join(", "));
            }
            if self.failing_routes_folded > 0 {
                let _ = writeln!(
                    s,
                    "  {:>8}  (failures on routes past the report's bound)",
                    self.failing_routes_folded
                );
            }
        }

        // Findings
        if self.findings.is_empty() {
            let _ = writeln!(s, "\n{} none", head("findings:"));
        } else {
            let _ = writeln!(s, "\n{}", head("findings:"));
            for ((sev, kind), (n, servers)) in &self.findings {
                let colour_code = match sev {
                    Severity::High => "1;31",
                    Severity::Medium => "33",
                    Severity::Low => "36",
                };
                let list: Vec<&str> = servers.iter().map(String::as_str).collect();
                let _ = writeln!(
                    s,
                    "  {n:>8}  {:<7} {:<26} {}",
                    paint(colour_code, sev.as_str()),
                    kind.as_str(),
                    list.join(", ")
                );
            }
        }

        // Servers: plaintext and TLS
        if !self.servers.is_empty() {
            let mut top: Vec<(&String, &ServerSeen)> = self.servers.iter().collect();
            let weight = |v: &ServerSeen| v.exchanges + v.tls.values().sum::<u64>() + v.other;
            top.sort_by(|a, b| weight(b.1).cmp(&weight(a.1)).then(a.0.cmp(b.0)));
            let plaintext = self.servers.values().filter(|v| v.exchanges > 0).count();
            let tls = self.servers.values().filter(|v| !v.tls.is_empty()).count();
            let other = self.servers.values().filter(|v| v.other > 0).count();
            let _ = writeln!(
                s,
                "\n{} {plaintext} plaintext HTTP, {tls} TLS, {other} not analysed",
                head("servers:")
            );
            for (name, v) in top.into_iter().take(TOP) {
                let mut parts = Vec::new();
                if v.exchanges > 0 {
                    parts.push(format!(
                        "{} {} exchanges, {} failed",
                        paint("33", "plaintext"),
                        v.exchanges,
                        v.failures
                    ));
                }
                if !v.tls.is_empty() {
                    let l: Vec<String> = v.tls.iter().map(|(k, n)| format!("{k} {n}")).collect();
                    parts.push(format!("{} ({})", paint("32", "TLS"), l.join(", ")));
                }
                if v.other > 0 {
                    parts.push(format!("{} not analysed", v.other));
                }
                let _ = writeln!(s, "  {name}: {}", parts.join("; "));
            }
        }

        // Capture health
        let d = &stats.decode;
        let f = &stats.flows;
        let _ = writeln!(s, "\n{}", head("capture:"));
        let _ = writeln!(
            s,
            "  {} packets, {} bytes, {} TCP segments",
            stats.packets, stats.bytes, d.tcp_segments
        );
        let conns: Vec<String> = {
            let mut v: Vec<_> = f
                .connections
                .iter()
                .map(|(p, n)| (p.as_str(), *n))
                .collect();
            v.sort();
            v.into_iter().map(|(p, n)| format!("{p}: {n}")).collect()
        };
        let _ = writeln!(
            s,
            "  connections: {}",
            if conns.is_empty() {
                "none".into()
            } else {
                conns.join(", ")
            }
        );
        let lossy = f.stream.missing_bytes > 0 || self.capture_loss > 0;
        let health = format!(
            "{} bytes missing in {} gaps, {} not TCP, {} malformed, {} truncated by snaplen, {} fragments",
            f.stream.missing_bytes, f.stream.gaps, d.not_tcp, d.malformed, d.truncated, d.fragments
        );
        let _ = writeln!(
            s,
            "  health: {}",
            if lossy { paint("33", &health) } else { health }
        );
        if f.flows_evicted + f.flows_refused > 0 {
            let _ = writeln!(
                s,
                "  {}",
                paint(
                    "33",
                    &format!(
                        "limits: {} connections ended early by the memory budget, {} refused by the flow limit",
                        f.flows_evicted, f.flows_refused
                    )
                )
            );
        }
        for (lt, n) in &d.unsupported_links {
            let _ = writeln!(
                s,
                "  skipped: {n} packets of unsupported link type {lt} ({})",
                crate::capture::LinkType(*lt).name()
            );
        }
        if self.corrupt_blocks > 0 {
            let _ = writeln!(
                s,
                "  {} skipped {} blocks of the capture file that could not be read (the blocks around them were read)",
                paint("33", "warning:"),
                self.corrupt_blocks
            );
        }
        if let Some(t) = truncation {
            let _ = writeln!(s, "  {} {t}", paint("33", "warning:"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{Classifier, ClassifyConfig};
    use crate::clock::Timestamp;
    use crate::http::exchange::Outcome;
    use crate::http::{Headers, Method, RequestHead, ResponseHead};

    fn exchange(target: &str, status: u16, auth: bool) -> Exchange {
        let mut h = Headers::default();
        h.push(b"Host", b"api.example.com");
        if auth {
            h.push(b"Authorization", b"Basic c2VjcmV0OnB3");
        }
        Exchange {
            ts: Timestamp::from_secs_micros(1_700_000_000, 0),
            client: "10.0.0.5:4000".parse().unwrap(),
            server: "10.0.0.9:80".parse().unwrap(),
            request: Some(RequestHead {
                method: Method::Get,
                target: target.as_bytes().to_vec(),
                version_minor: 1,
                cut: false,
                headers: h,
            }),
            response: Some(ResponseHead {
                status,
                version_minor: 1,
                headers: Headers::default(),
            }),
            end_ts: Some(Timestamp::from_secs_micros(1_700_000_000, 10)),
            request_body_bytes: 0,
            response_body_bytes: 2,
            request_body_prefix: Vec::new(),
            response_body_prefix: b"ok".to_vec(),
            outcome: Outcome::Complete,
            capture_loss: false,
            failure: None,
            route: None,
            host: None,
            findings: Vec::new(),
        }
    }

    #[test]
    fn report_lists_causes_routes_findings_and_servers() {
        let mut c = Classifier::new(ClassifyConfig::default()).unwrap();
        let mut sum = Summary::default();
        for (t, st, auth) in [
            ("/users/1?token=s3cr3t", 500, false),
            ("/users/2", 500, true),
            ("/orders", 404, false),
            ("/ok", 200, false),
        ] {
            let mut e = exchange(t, st, auth);
            for f in c.classify(&mut e) {
                sum.finding(&f);
            }
            sum.exchange(&e);
        }
        sum.tls_connection(
            "10.0.0.10:443".parse().unwrap(),
            Some("secure.example"),
            Some(0x0304),
        );
        sum.tls_connection("10.0.0.11:443".parse().unwrap(), None, Some(0x0301));
        sum.other_connection("10.0.0.12:5432".parse().unwrap());
        let text = sum.render_with(&PipelineStats::default(), None, false);
        for want in [
            "failures: 3 of 4",
            "server_error",
            "api.example.com /users/{id}  (server_error 2)",
            "high    cleartext_credentials",
            "high    credentials_in_url",
            "api.example.com",
            "servers: 1 plaintext HTTP, 2 TLS, 1 not analysed",
            "secure.example: TLS (TLS 1.3 1)",
            "10.0.0.11:443: TLS (TLS 1.0 1)",
            "10.0.0.12:5432: 1 not analysed",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(!text.contains('\x1b'));
        for secret in ["s3cr3t", "c2VjcmV0OnB3", "secret:pw"] {
            assert!(!text.contains(secret));
        }
        let coloured = sum.render_with(&PipelineStats::default(), None, true);
        assert!(coloured.contains("\x1b[31mserver_error\x1b[0m"));
    }

    /// The report goes to a terminal: a Host or a path from the wire must
    /// not bring escape sequences (clear the screen, retitle the window,
    /// hide lines) or line breaks into it.
    #[test]
    fn wire_text_cannot_control_the_terminal() {
        let mut c = Classifier::new(ClassifyConfig::default()).unwrap();
        let mut sum = Summary::default();
        let mut e = exchange("/a\x1b[2J/b\r\nfake: line", 500, false);
        let head = e.request.as_mut().unwrap();
        head.headers = Headers::default();
        head.headers
            .push(b"Host", b"\x1b]0;pwned\x07evil.example\xc2\x9b2J");
        for f in c.classify(&mut e) {
            sum.finding(&f);
        }
        sum.exchange(&e);
        let text = sum.render_with(&PipelineStats::default(), None, false);
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert!(
            text.contains("%1b]0;pwned%07evil.example%c2%9b2j /a%1B[2J/b%0D%0Afake: line"),
            "{text}"
        );
    }
}
