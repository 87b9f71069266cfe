//! SIGHUP on a live capture (`lo`, root only; skips otherwise): a changed
//! route pattern changes the routes of new exchanges while the capture
//! stays open and no request is lost; the exchange log is reopened after
//! logrotate moved it; a broken configuration on SIGHUP keeps the running
//! one and the log says why; SIGTERM then flushes and exits 0.

mod common;

use common::{free_port, have, http_server, KillOnDrop};

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn records(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One keep-alive connection requesting each of `paths`; false when curl
/// failed (e.g. the server is not up yet).
fn try_get(port: u16, paths: &[String]) -> bool {
    let urls: Vec<String> = paths
        .iter()
        .map(|p| format!("http://127.0.0.1:{port}{p}"))
        .collect();
    Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--max-time", "10"])
        .args(&urls)
        .status()
        .is_ok_and(|s| s.success())
}

fn get(port: u16, paths: &[String]) {
    let urls: Vec<String> = paths
        .iter()
        .map(|p| format!("http://127.0.0.1:{port}{p}"))
        .collect();
    let ok = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--max-time", "10"])
        .args(&urls)
        .status()
        .unwrap();
    assert!(ok.success());
}

fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
}

#[test]
fn sighup_changes_routes_keeps_capture_and_survives_a_broken_file() {
    if !nix::unistd::geteuid().is_root() || !have("curl") || !have("python3") {
        eprintln!("skipped: needs root (live capture on lo), curl and python3");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let port = free_port();
    let _server = http_server(dir, port);
    let cfg = dir.join("apitap.toml");
    let log = dir.join("exchanges.ndjson");
    let stderr = dir.join("stderr.log");
    let base = format!(
        "interface = \"lo\"\nfilter = \"tcp port {port}\"\nexchanges = \"{}\"\n\
         [web]\nlisten-address = \"127.0.0.1:0\"\n",
        log.display()
    );
    std::fs::write(&cfg, &base).unwrap();
    let mut apitap = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_apitap"))
            .arg("--config.file")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap(),
    );
    let err_text = || std::fs::read_to_string(&stderr).unwrap_or_default();

    // Capture is open once a probe request shows up in the log.
    wait_for("the first exchange", || {
        try_get(port, &["/probe".to_string()]);
        std::thread::sleep(Duration::from_millis(300));
        !records(&log).is_empty()
    });
    // Requests to one of the `paths` sets in a log (probes sent while the
    // first was on its way may still arrive: they are not counted).
    let tagged = |path: &Path, tag: &str| -> Vec<serde_json::Value> {
        records(path)
            .into_iter()
            .filter(|r| {
                r["target"]
                    .as_str()
                    .is_some_and(|t| t.starts_with(&format!("/orders/{tag}")))
            })
            .collect()
    };

    let paths = |tag: &str| -> Vec<String> {
        (0..20)
            .map(|i| format!("/orders/{tag}{i}/items/x{i}"))
            .collect()
    };
    get(port, &paths("before"));
    wait_for("20 exchanges before the reload", || {
        tagged(&log, "before").len() == 20
    });

    // logrotate moves the log, the configuration gains a route pattern.
    let rotated = dir.join("exchanges.ndjson.1");
    std::fs::rename(&log, &rotated).unwrap();
    std::fs::write(
        &cfg,
        format!("{base}[classify]\nroute-patterns = [\"/orders/{{order}}/items/{{item}}\"]\n"),
    )
    .unwrap();
    signal(&apitap.0, nix::sys::signal::Signal::SIGHUP);
    wait_for("the reload", || {
        err_text().contains("configuration reloaded")
    });
    get(port, &paths("after"));
    wait_for("20 exchanges after the reload, in the new file", || {
        tagged(&log, "after").len() == 20
    });

    let old = tagged(&rotated, "before");
    assert_eq!(old.len(), 20, "nothing lost before the reload");
    assert!(
        tagged(&rotated, "after").is_empty(),
        "the rotated file is closed"
    );
    for r in &old {
        let t = r["target"].as_str().unwrap();
        assert_eq!(r["route"].as_str(), Some(t), "no pattern yet: {r}");
    }
    for r in tagged(&log, "after") {
        assert_eq!(r["route"], "/orders/{order}/items/{item}", "{r}");
    }

    // A broken file: the running configuration stays, the log says why.
    std::fs::write(
        &cfg,
        format!("{base}[classify]\nroute-patterns = [\"nope\"]\n"),
    )
    .unwrap();
    signal(&apitap.0, nix::sys::signal::Signal::SIGHUP);
    wait_for("the refused reload", || {
        err_text().contains("reload failed")
    });
    let line = err_text()
        .lines()
        .find(|l| l.contains("reload failed"))
        .unwrap()
        .to_string();
    assert!(line.contains("classify.route-patterns"), "{line}");
    get(port, &paths("broken"));
    wait_for("20 exchanges after the refused reload", || {
        tagged(&log, "broken").len() == 20
    });
    for r in &tagged(&log, "broken") {
        assert_eq!(r["route"], "/orders/{order}/items/{item}", "{r}");
    }

    // SIGTERM drains and exits 0.
    signal(&apitap.0, nix::sys::signal::Signal::SIGTERM);
    let status = apitap.0.wait().unwrap();
    assert!(status.success(), "{status:?}: {}", err_text());
    assert!(!err_text().contains("dropped packets"), "{}", err_text());
}
