//! Live capture end to end: two network namespaces joined by a veth pair
//! (made by the test, addresses 10.204.0.0/24 inside them only), a real HTTP
//! server in one, a real client (curl) in the other, `apitap -i` on the
//! server's veth. The exchange log must match what the client did, and the
//! metrics must count it; frames lost while apitap cannot read must be
//! exported as drops; and a log whose disk fills up (a tmpfs the test
//! mounts) must lose whole lines, counted, and go on. Needs root and
//! iproute2; skips otherwise.

mod common;

use common::KillOnDrop;

use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Netns {
    client: String,
    server: String,
}

impl Netns {
    /// Namespaces and a veth pair named after this process and `tag` (one
    /// letter per test, so tests run side by side), and the name of the
    /// server's end. None (the test skips) without root or iproute2.
    fn create(tag: char) -> Option<(Netns, String)> {
        if Command::new("ip").arg("-V").output().is_err() {
            eprintln!("skipped: no iproute2");
            return None;
        }
        let id = format!("{}{tag}", std::process::id() % 100_000);
        let n = Netns {
            client: format!("apitap-t{id}-c"),
            server: format!("apitap-t{id}-s"),
        };
        let (c, s) = (n.client.as_str(), n.server.as_str());
        let vc = format!("at{id}c");
        let vs = format!("at{id}s");
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", c],
            vec!["netns", "add", s],
            vec!["link", "add", &vc, "type", "veth", "peer", "name", &vs],
            vec!["link", "set", &vc, "netns", c],
            vec!["link", "set", &vs, "netns", s],
            vec!["-n", c, "addr", "add", "10.204.0.2/24", "dev", &vc],
            vec!["-n", s, "addr", "add", "10.204.0.1/24", "dev", &vs],
            vec!["-n", c, "link", "set", &vc, "up"],
            vec!["-n", s, "link", "set", &vs, "up"],
            vec!["-n", c, "link", "set", "lo", "up"],
            vec!["-n", s, "link", "set", "lo", "up"],
        ];
        for args in steps {
            let ok = Command::new("ip")
                .args(&args)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                eprintln!(
                    "skipped: `ip {}` failed (needs root and iproute2)",
                    args.join(" ")
                );
                return None; // Drop cleans up what was made.
            }
        }
        Some((n, vs))
    }

    fn exec(&self, ns: &str, cmd: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).args(cmd);
        c
    }

    /// A Python HTTP server on 10.204.0.1:8080 serving `dir`.
    fn http_server(&self, dir: &std::path::Path) -> KillOnDrop {
        KillOnDrop(
            self.exec(
                &self.server,
                &[
                    "python3",
                    "-m",
                    "http.server",
                    "8080",
                    "--bind",
                    "10.204.0.1",
                ],
            )
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 http.server"),
        )
    }

    /// `apitap ARGS` in the server's namespace, stderr captured.
    fn apitap(&self, args: &[&str]) -> KillOnDrop {
        let mut cmd = vec![env!("CARGO_BIN_EXE_apitap")];
        cmd.extend_from_slice(args);
        KillOnDrop(
            self.exec(&self.server, &cmd)
                .stderr(Stdio::piped())
                .spawn()
                .expect("apitap starts"),
        )
    }

    /// `apitap -i VETH -f "tcp port 8080"` writing the exchange log to
    /// `log` and the final metrics to `metrics`, then `extra`.
    fn capture(
        &self,
        veth: &str,
        log: &std::path::Path,
        metrics: &std::path::Path,
        extra: &[&str],
    ) -> KillOnDrop {
        let mut args = vec![
            "-i",
            veth,
            "-f",
            "tcp port 8080",
            "--exchanges",
            log.to_str().unwrap(),
            "--metrics-out",
            metrics.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        self.apitap(&args)
    }

    /// The client's `curl` of `path` on the server, the body discarded.
    fn fetch(&self, path: &str) -> Command {
        let url = format!("http://10.204.0.1:8080{path}");
        self.exec(&self.client, &["curl", "-s", "-o", "/dev/null", &url])
    }

    /// The client fetches `path` from the server, until it answers.
    fn wait_for_server(&self, path: &str) {
        wait_for("the server", || {
            self.fetch(path).status().is_ok_and(|s| s.success())
        });
    }
}

/// `kill SIG PID`.
fn signal(child: &Child, sig: &str) {
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap()
        .success());
}

/// SIGINT, then wait (at most 10 s) for apitap to exit: its status and
/// stderr.
fn interrupt(apitap: &mut KillOnDrop) -> (std::process::ExitStatus, String) {
    signal(&apitap.0, "-INT");
    wait_exit(apitap, "on SIGINT")
}

/// Wait (at most 10 s) for apitap to exit: its status and stderr.
fn wait_exit(apitap: &mut KillOnDrop, why: &str) -> (std::process::ExitStatus, String) {
    let start = Instant::now();
    let status = loop {
        if let Some(s) = apitap.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "apitap did not stop {why}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(e) = apitap.0.stderr.as_mut() {
        let _ = std::io::Read::read_to_string(e, &mut stderr);
    }
    (status, stderr)
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in [&self.client, &self.server] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn live_capture_on_a_veth_matches_the_client() {
    let Some((ns, veth)) = Netns::create('a') else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("exchanges.ndjson");
    let metrics = dir.path().join("metrics.prom");

    let _server = ns.http_server(dir.path());
    std::fs::write(dir.path().join("hello.txt"), b"hello from the server\n").unwrap();
    let mut apitap = ns.capture(
        &veth,
        &log,
        &metrics,
        // Two handles in a PACKET_FANOUT group, whatever the core count.
        &["--web.listen-address", "127.0.0.1:0", "--workers", "2"],
    );
    // The server must answer before traffic counts.
    ns.wait_for_server("/hello.txt");
    std::thread::sleep(Duration::from_millis(500));
    // What the client does: its own record of statuses.
    let targets = ["/hello.txt", "/missing", "/hello.txt?page=2", "/"];
    let mut sent = Vec::new();
    for t in targets {
        let out = ns
            .fetch(t)
            .args(["-w", "%{http_code}"])
            .output()
            .expect("curl");
        let code: u16 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("curl printed a status");
        sent.push((t, code));
    }
    std::thread::sleep(Duration::from_millis(500));
    // SIGINT: capture stops, open exchanges are flushed, outputs written.
    let (status, stderr) = interrupt(&mut apitap);
    assert!(status.success(), "apitap exit: {status:?}\n{stderr}");

    let records: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // The readiness probe's request is there too, first.
    let got: Vec<(String, u16)> = records
        .iter()
        .skip(records.len() - sent.len())
        .map(|r| {
            (
                r["target"].as_str().unwrap().to_string(),
                r["status"].as_u64().unwrap() as u16,
            )
        })
        .collect();
    let mut want: Vec<(String, u16)> = sent.iter().map(|(t, c)| (t.to_string(), *c)).collect();
    // Each curl is its own connection, and with several workers (the
    // default on a multi-core machine) connections on different workers
    // are logged in the order the workers finish them: compare as sets.
    let mut got = got;
    got.sort();
    want.sort();
    assert_eq!(got, want);
    assert!(records.iter().all(|r| r["server"] == "10.204.0.1:8080"
        && r["client"].as_str().unwrap().starts_with("10.204.0.2:")));
    let text = std::fs::read_to_string(&metrics).unwrap();
    let count = common::exchanges_counted(&text);
    assert_eq!(
        count as usize,
        records.len(),
        "histogram counts every exchange"
    );
    assert!(
        text.lines().any(|l| l.starts_with(&format!(
            "apitap_capture_dropped_packets_total{{interface=\"{veth}\"}}"
        ))),
        "drops exported"
    );
}

/// The value of `name{interface="IFACE"}` in a text exposition.
fn series(text: &str, name: &str, iface: &str) -> Option<f64> {
    let prefix = format!("{name}{{interface=\"{iface}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().parse().expect("a number"))
}

#[test]
fn live_drops_are_exported_while_capturing() {
    let Some((ns, veth)) = Netns::create('d') else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // 32 MiB to download; a 1 MiB capture buffer holds a few hundred frames.
    std::fs::write(dir.path().join("big.bin"), vec![b'x'; 32 << 20]).unwrap();
    let config = dir.path().join("apitap.toml");
    std::fs::write(&config, "[capture]\nbuffer-size = 1048576\n").unwrap();
    let metrics = dir.path().join("metrics.prom");
    let _server = ns.http_server(dir.path());
    let mut apitap = ns.apitap(&[
        "--config.file",
        config.to_str().unwrap(),
        "-i",
        &veth,
        "-f",
        "tcp port 8080",
        "--metrics-out",
        metrics.to_str().unwrap(),
        "--web.listen-address",
        "127.0.0.1:10190",
    ]);
    // Scraped from inside the server's namespace, where apitap listens.
    let scrape = || -> Option<String> {
        let out = ns
            .exec(
                &ns.server,
                &["curl", "-sf", "http://127.0.0.1:10190/metrics"],
            )
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let mut first = String::new();
    wait_for("the first scrape", || {
        first = scrape().unwrap_or_default();
        !first.is_empty()
    });
    // Both families, labelled with the interface, before any drop.
    for family in [
        "apitap_capture_dropped_packets_total",
        "apitap_capture_interface_dropped_packets_total",
    ] {
        assert_eq!(series(&first, family, &veth), Some(0.0), "{first}");
    }
    ns.wait_for_server("/");

    // apitap stopped: nobody reads the capture buffer while the download
    // goes through, so the kernel drops what does not fit.
    signal(&apitap.0, "-STOP");
    let download = ns.fetch("/big.bin").status();
    signal(&apitap.0, "-CONT");
    assert!(download.is_ok_and(|s| s.success()), "the download");
    let mut dropped = 0.0;
    wait_for("drops in a scrape", || {
        let text = scrape().unwrap_or_default();
        dropped = series(&text, "apitap_capture_dropped_packets_total", &veth).unwrap_or(0.0);
        dropped > 0.0
    });
    // A veth has no hardware queue to overflow: all of it is kernel drops.
    let text = scrape().unwrap();
    assert_eq!(
        series(
            &text,
            "apitap_capture_interface_dropped_packets_total",
            &veth
        ),
        Some(0.0)
    );

    let (status, stderr) = interrupt(&mut apitap);
    assert!(status.success(), "apitap exit: {status:?}\n{stderr}");
    let last = std::fs::read_to_string(&metrics).unwrap();
    let final_drops = series(&last, "apitap_capture_dropped_packets_total", &veth).unwrap();
    assert!(final_drops >= dropped, "{final_drops} < {dropped}");
    assert!(
        stderr.contains("dropped packets"),
        "the final warning: {stderr}"
    );
}

/// The capture's interface is deleted under apitap (a container's veth
/// going away): with one worker and with two (a handle each, either may
/// fail first), apitap must not stay up blind and healthy. It writes what
/// it saw, the request still waiting for its answer included, and exits 1
/// naming the interface, so that a service manager restarts it.
#[test]
fn a_capture_whose_interface_goes_away_writes_what_it_saw_and_exits_1() {
    for (tag, workers) in [('f', "1"), ('g', "2")] {
        let Some((ns, veth)) = Netns::create(tag) else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("exchanges.ndjson");
        let metrics = dir.path().join("metrics.prom");
        std::fs::write(dir.path().join("hello.txt"), b"hello\n").unwrap();
        let _server = ns.http_server(dir.path());
        // A server that accepts on 8081 and never answers.
        let _silent = KillOnDrop(
            ns.exec(
                &ns.server,
                &[
                    "python3",
                    "-c",
                    "import socket,time\n\
                     s=socket.socket(); s.bind(('10.204.0.1',8081)); s.listen()\n\
                     c=s.accept(); time.sleep(60)",
                ],
            )
            .spawn()
            .expect("python3"),
        );
        let mut apitap = ns.apitap(&[
            "-i",
            &veth,
            "-f",
            "tcp port 8080 or tcp port 8081",
            "--exchanges",
            log.to_str().unwrap(),
            "--metrics-out",
            metrics.to_str().unwrap(),
            "--workers",
            workers,
        ]);
        ns.wait_for_server("/hello.txt");
        std::thread::sleep(Duration::from_millis(500));
        assert!(ns.fetch("/hello.txt").status().unwrap().success());
        let _waiting = KillOnDrop(
            ns.exec(
                &ns.client,
                &["curl", "-s", "-m", "30", "http://10.204.0.1:8081/pending"],
            )
            .stdout(Stdio::null())
            .spawn()
            .expect("curl"),
        );
        std::thread::sleep(Duration::from_millis(800));

        let deleted = ns
            .exec(&ns.server, &["ip", "link", "del", &veth])
            .status()
            .unwrap();
        assert!(deleted.success());
        let (status, stderr) = wait_exit(&mut apitap, "when its interface went away");
        assert_eq!(status.code(), Some(1), "workers {workers}: {stderr}");
        assert!(
            stderr.contains(&format!("capture on {veth} failed")),
            "workers {workers}: {stderr}"
        );
        let records: Vec<Value> = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let find = |target: &str| {
            records
                .iter()
                .rfind(|r| r["target"] == target)
                .unwrap_or_else(|| panic!("workers {workers}: no {target} in {records:?}"))
        };
        assert_eq!(find("/hello.txt")["status"], 200);
        // Flushed at the end: it never had an answer.
        assert!(find("/pending")["status"].is_null());
        let text = std::fs::read_to_string(&metrics).expect("the final metrics are written");
        let count = common::exchanges_counted(&text);
        assert!(count >= 2.0, "workers {workers}: {count}");
    }
}

/// Unmounts a file system when dropped (lazily: nothing may be left behind).
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The exchange log lives on a small file system that fills up while
/// apitap captures (a full /var/log), then gets room again. Lines are lost
/// whole and counted while it is full, the log goes on once there is room,
/// and the stop exits 0: the run lost lines it counted and warned about,
/// it did not fail (exit 1 would leave the unit failed for a disk that was
/// full last week). The final warning says what was lost.
#[test]
fn a_live_log_whose_disk_was_full_for_a_while_goes_on_and_the_stop_exits_0() {
    let Some((ns, veth)) = Netns::create('h') else {
        return;
    };
    let web = tempfile::tempdir().unwrap();
    std::fs::write(web.path().join("hello.txt"), b"hello\n").unwrap();
    let disk = tempfile::tempdir().unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=512k", "apitap-test"])
        .arg(disk.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs");
        return;
    }
    let _mounted = Mounted(disk.path().to_owned());
    let log = disk.path().join("exchanges.ndjson");
    let metrics = web.path().join("metrics.prom");
    let _server = ns.http_server(web.path());
    let mut apitap = ns.capture(
        &veth,
        &log,
        &metrics,
        &["--web.listen-address", "127.0.0.1:10190", "--workers", "1"],
    );
    ns.wait_for_server("/hello.txt");
    let lost = || -> f64 {
        let out = ns
            .exec(
                &ns.server,
                &["curl", "-sf", "http://127.0.0.1:10190/metrics"],
            )
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| l.strip_prefix("apitap_log_lines_lost_total{log=\"exchanges\"} "))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    };
    wait_for("the metrics", || {
        ns.exec(
            &ns.server,
            &[
                "curl",
                "-sf",
                "-o",
                "/dev/null",
                "http://127.0.0.1:10190/metrics",
            ],
        )
        .status()
        .is_ok_and(|s| s.success())
    });
    assert_eq!(lost(), 0.0);

    // Fill the disk, then make more log than the log's 64 KiB buffer
    // holds: 80 requests with 2 KB targets.
    let fill = disk.path().join("fill");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&fill).unwrap();
        while f.write_all(&[0; 4096]).is_ok() {}
    }
    let pad = "p".repeat(2000);
    let url = format!("http://10.204.0.1:8080/hello.txt?full=[1-80]&pad={pad}");
    let fetched = ns
        .exec(&ns.client, &["curl", "-s", &url])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(fetched.success());
    wait_for("lines counted lost", || lost() > 0.0);

    // Room again: the log goes on.
    std::fs::remove_file(&fill).unwrap();
    assert!(ns.fetch("/hello.txt?after=1").status().unwrap().success());
    wait_for("the log to go on", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("after=1"))
    });

    let (status, stderr) = interrupt(&mut apitap);
    assert!(status.success(), "apitap exit: {status:?}\n{stderr}");
    assert!(
        stderr.contains("the exchange log lost lines to write errors"),
        "{stderr}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    for line in text.lines() {
        let _: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }
    let last = std::fs::read_to_string(&metrics).unwrap();
    let counted = last
        .lines()
        .find_map(|l| l.strip_prefix("apitap_log_lines_lost_total{log=\"exchanges\"} "))
        .map(|v| v.trim().parse::<f64>().unwrap())
        .unwrap();
    // What the log holds and what it lost add up to what was seen (the
    // server's check, 80 full-disk requests and the last).
    let seen = common::exchanges_counted(&last);
    assert_eq!(text.lines().count() as f64 + counted, seen, "{text}");
}
