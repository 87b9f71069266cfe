//! apitap: a passive HTTP API monitor.
//!
//! Packets flow one way through the stages, one module each:
//!
//! - [`capture`]: packet sources (pcap/pcapng files, live libpcap).
//! - [`decode`]: link layers, tunnels, IP (with fragments) and TCP headers.
//! - [`flow`]: TCP connections and per-direction stream reassembly.
//! - [`http`]: HTTP/1.x parsing, body framing, request/response pairing.
//! - [`clock`]: capture time, the only time the pipeline knows.
//! - [`workers`]: the per-flow stages sharded over threads (`--workers`).
//! - [`metrics`]: metric families, bounded labels, the `/metrics` server.
//! - [`daemon`]: sd_notify and the watchdog, signals, privilege drop, logs.

pub mod capture;
pub mod classify;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod decode;
pub mod flow;
mod hint;
pub mod http;
mod lazy;
pub mod metrics;
pub mod output;
pub mod pipeline;
pub mod run;
pub mod workers;
