//! `hostile`: write a hostile or scale capture (see `gen.rs` for what each
//! scenario sends). Deterministic: the same arguments write the same file.
//!
//!   cargo run --release --example hostile -- SCENARIO [key=value ...] OUT.pcap
//!
//! Scenarios and their keys (defaults are the full sizes of issue #8):
//!   syn-flood        flows=1000000
//!   out-of-order     flows=1000 segments=192
//!   endless-headers  flows=100 bytes=4000000
//!   many-hosts       hosts=100000
//!   concurrent       flows=1000000 concurrency=1000 exchanges=1 body=200
//!   idle             flows=1000000 exchange=1
//! Keys for all: normal=N (normal exchanges mixed in, default 0), seed=S
//! (default 1), step-us=T (capture time between frames, default 1).

#[path = "gen.rs"]
mod gen;

use gen::{Plan, Scenario};
use std::collections::HashMap;
use std::process::ExitCode;

fn usage() -> ExitCode {
    let doc: String = include_str!("main.rs")
        .lines()
        .skip(3)
        .take_while(|l| l.starts_with("//!"))
        .map(|l| format!("{}\n", l.trim_start_matches("//!")))
        .collect();
    eprint!("usage:\n{doc}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(name), Some(out)) = (args.first(), args.last()) else {
        return usage();
    };
    if args.len() < 2 || out.contains('=') {
        return usage();
    }
    let mut kv = HashMap::new();
    for a in &args[1..args.len() - 1] {
        let Some((k, v)) = a.split_once('=') else {
            return usage();
        };
        let Ok(v) = v.replace('_', "").parse::<u64>() else {
            eprintln!("hostile: {k}: not a number: {v}");
            return ExitCode::from(2);
        };
        kv.insert(k.to_string(), v);
    }
    let mut get = |k: &str, default: u64| kv.remove(k).unwrap_or(default);
    let n32 = |v: u64| v.min(u64::from(u32::MAX)) as u32;
    let scenario = match name.as_str() {
        "syn-flood" => Scenario::SynFlood {
            flows: n32(get("flows", 1_000_000)),
        },
        "out-of-order" => Scenario::OutOfOrder {
            flows: n32(get("flows", 1000)),
            segments: n32(get("segments", 192)),
        },
        "endless-headers" => Scenario::EndlessHeaders {
            flows: n32(get("flows", 100)),
            bytes: get("bytes", 4_000_000),
        },
        "many-hosts" => Scenario::ManyHosts {
            hosts: n32(get("hosts", 100_000)),
        },
        "concurrent" => Scenario::Concurrent {
            flows: n32(get("flows", 1_000_000)),
            concurrency: n32(get("concurrency", 1000)),
            exchanges: n32(get("exchanges", 1)),
            body: n32(get("body", 200)),
        },
        "idle" => Scenario::Idle {
            flows: n32(get("flows", 1_000_000)),
            exchange: get("exchange", 1) != 0,
        },
        _ => return usage(),
    };
    let mut plan = Plan::new(scenario)
        .normal(n32(get("normal", 0)))
        .seed(get("seed", 1));
    plan.step_micros = get("step-us", 1);
    if let Some(k) = kv.keys().next() {
        eprintln!("hostile: unknown key {k} for {name}");
        return ExitCode::from(2);
    }
    match gen::write_file(&plan, std::path::Path::new(out)) {
        Ok(w) => {
            println!(
                "{out}: {name}, {} frames ({} hostile), {} bytes",
                w.frames, w.hostile_frames, w.bytes
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hostile: {out}: {e}");
            ExitCode::FAILURE
        }
    }
}
