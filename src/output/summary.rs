//! The read-mode summary report: what a person wants to know after
//! `apitap -r FILE` — how many exchanges, which statuses and failures, which
//! servers, and whether the capture itself can be trusted.

use crate::http::exchange::Exchange;
use crate::pipeline::{ExchangeSink, PipelineStats};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

#[derive(Default)]
pub struct Summary {
    pub exchanges: u64,
    pub orphan_responses: u64,
    pub without_response: u64,
    pub capture_loss: u64,
    pub statuses: BTreeMap<u16, u64>,
    pub failures: BTreeMap<&'static str, u64>,
    /// Exchanges per server (Host, else address).
    pub servers: HashMap<String, u64>,
}

/// Most servers listed in the report.
const TOP_SERVERS: usize = 10;
/// Most distinct servers counted (the rest are folded).
const MAX_SERVERS: usize = 10_000;

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
        if let Some(f) = ex.failure {
            *self.failures.entry(f.as_str()).or_default() += 1;
        }
        let server = ex.host.clone().unwrap_or_else(|| ex.server.to_string());
        if self.servers.len() < MAX_SERVERS || self.servers.contains_key(&server) {
            *self.servers.entry(server).or_default() += 1;
        } else {
            *self.servers.entry("(other servers)".into()).or_default() += 1;
        }
    }
}

impl Summary {
    pub fn render(&self, stats: &PipelineStats, truncation: Option<&str>) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "apitap summary");
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
        if !self.failures.is_empty() {
            let list: Vec<String> = self
                .failures
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            let _ = writeln!(s, "  failures: {}", list.join(", "));
        }
        if !self.servers.is_empty() {
            let mut top: Vec<(&String, &u64)> = self.servers.iter().collect();
            top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let _ = writeln!(s, "  top servers:");
            for (name, n) in top.into_iter().take(TOP_SERVERS) {
                let _ = writeln!(s, "    {n:>8}  {name}");
            }
        }
        let d = &stats.decode;
        let f = &stats.flows;
        let _ = writeln!(
            s,
            "  capture: {} packets, {} bytes, {} TCP segments",
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
        let _ = writeln!(
            s,
            "  health: {} bytes missing in {} gaps, {} not TCP, {} malformed, {} truncated by snaplen, {} fragments",
            f.stream.missing_bytes, f.stream.gaps, d.not_tcp, d.malformed, d.truncated, d.fragments
        );
        for (lt, n) in &d.unsupported_links {
            let _ = writeln!(
                s,
                "  skipped: {n} packets of unsupported link type {lt} ({})",
                crate::capture::LinkType(*lt).name()
            );
        }
        if let Some(t) = truncation {
            let _ = writeln!(s, "  warning: {t}");
        }
        s
    }
}
