//! Live capture end to end: two network namespaces joined by a veth pair
//! (made by the test, addresses 10.204.0.0/24 inside them only), a real HTTP
//! server in one, a real client (curl) in the other, `apitap -i` on the
//! server's veth. The exchange log must match what the client did, and the
//! metrics must count it. Needs root and iproute2; skips otherwise.

mod common;

use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Netns {
    client: String,
    server: String,
}

impl Netns {
    fn create() -> Option<Netns> {
        let id = std::process::id() % 100_000;
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
        Some(n)
    }

    fn exec(&self, ns: &str, cmd: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).args(cmd);
        c
    }
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

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
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
    if Command::new("ip").arg("-V").output().is_err() {
        eprintln!("skipped: no iproute2");
        return;
    }
    let Some(ns) = Netns::create() else { return };
    let veth = format!("at{}s", std::process::id() % 100_000);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("exchanges.ndjson");
    let metrics = dir.path().join("metrics.prom");

    let _server = KillOnDrop(
        ns.exec(
            &ns.server,
            &[
                "python3",
                "-m",
                "http.server",
                "8080",
                "--bind",
                "10.204.0.1",
            ],
        )
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 http.server"),
    );
    std::fs::write(dir.path().join("hello.txt"), b"hello from the server\n").unwrap();
    let apitap = ns
        .exec(
            &ns.server,
            &[
                env!("CARGO_BIN_EXE_apitap"),
                "-i",
                &veth,
                "-f",
                "tcp port 8080",
                "--exchanges",
                log.to_str().unwrap(),
                "--metrics-out",
                metrics.to_str().unwrap(),
                "--web.listen-address",
                "127.0.0.1:0",
            ],
        )
        .stderr(Stdio::piped())
        .spawn()
        .expect("apitap starts");
    let mut apitap = KillOnDrop(apitap);
    // The server must answer before traffic counts.
    wait_for("the server", || {
        ns.exec(
            &ns.client,
            &[
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "http://10.204.0.1:8080/hello.txt",
            ],
        )
        .status()
        .is_ok_and(|s| s.success())
    });
    std::thread::sleep(Duration::from_millis(500));
    // What the client does: its own record of statuses.
    let targets = ["/hello.txt", "/missing", "/hello.txt?page=2", "/"];
    let mut sent = Vec::new();
    for t in targets {
        let out = ns
            .exec(
                &ns.client,
                &[
                    "curl",
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    &format!("http://10.204.0.1:8080{t}"),
                ],
            )
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
    let pid = apitap.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = apitap.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "apitap did not stop on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "apitap exit: {status:?}");

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
    let want: Vec<(String, u16)> = sent.iter().map(|(t, c)| (t.to_string(), *c)).collect();
    assert_eq!(got, want);
    assert!(records.iter().all(|r| r["server"] == "10.204.0.1:8080"
        && r["client"].as_str().unwrap().starts_with("10.204.0.2:")));
    let text = std::fs::read_to_string(&metrics).unwrap();
    let count: f64 = text
        .lines()
        .filter(|l| l.starts_with("http_server_request_duration_seconds_count"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
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
