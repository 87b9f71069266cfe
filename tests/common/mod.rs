//! Shared helpers for the end-to-end tests: where the corpus is, running the
//! built binary, reading its exchange log.

#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The third-party capture corpus: `$APITAP_CORPUS`, else `../shared/corpus`
/// beside the repository when it exists. None: tests that need it skip.
pub fn corpus_dir() -> Option<PathBuf> {
    if let Ok(d) = std::env::var("APITAP_CORPUS") {
        let p = PathBuf::from(d);
        return p.join("MANIFEST.jsonl").exists().then_some(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus");
    p.join("MANIFEST.jsonl").exists().then_some(p)
}

pub fn manifest(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("MANIFEST.jsonl"))
        .expect("manifest readable")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("manifest line is JSON"))
        .collect()
}

pub fn apitap() -> Command {
    Command::new(env!("CARGO_BIN_EXE_apitap"))
}

/// Run `apitap -r FILE --exchanges -` plus `extra` and parse the log.
pub fn exchanges_of(file: &Path, extra: &[&str]) -> (Vec<Value>, Output) {
    let out = apitap()
        .arg("-r")
        .arg(file)
        .args(["--exchanges", "-"])
        .args(extra)
        .output()
        .expect("apitap runs");
    let text = String::from_utf8(out.stdout.clone()).expect("exchange log is UTF-8");
    let records = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect();
    (records, out)
}

/// A child process killed and reaped when the test ends, pass or fail.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether `tool --version` runs (tests that need it skip otherwise).
pub fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `python3 -m http.server` on 127.0.0.1:`port`, serving `dir`.
pub fn http_server(dir: &Path, port: u16) -> KillOnDrop {
    KillOnDrop(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 starts"),
    )
}

/// Exchanges a text exposition counted: the sum of every
/// `http_server_request_duration_seconds_count` series.
pub fn exchanges_counted(exposition: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| l.starts_with("http_server_request_duration_seconds_count"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}
