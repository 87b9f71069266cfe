//! The service as shipped: the unit passes `systemd-analyze verify` with
//! nothing on stderr and `systemd-analyze security --offline=yes` at 2.0 or
//! better; the packaged config file loads; the man page and completions in
//! packaging/ are what the binary generates; `--version` carries the build
//! info; and apitap run as an unprivileged user holding only CAP_NET_RAW
//! (`setpriv`) captures on `lo`, drops the capability once the capture is
//! open, and without it fails with one line naming CAP_NET_RAW.
//! Tests needing systemd-analyze, root or curl/python3 skip without them.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The unit with ExecStart pointing at the binary under test.
fn unit_under_test(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(root().join("systemd/apitap.service")).unwrap();
    assert!(text.contains("ExecStart=/usr/bin/apitap "));
    let unit = dir.join("apitap.service");
    std::fs::write(
        &unit,
        text.replace("/usr/bin/apitap", env!("CARGO_BIN_EXE_apitap")),
    )
    .unwrap();
    unit
}

#[test]
fn unit_passes_systemd_analyze_verify_silently() {
    if !have("systemd-analyze") {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let unit = unit_under_test(tmp.path());
    // --man=no: the man page is installed by the package, not here.
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.is_empty(), "{stderr}");
}

#[test]
fn unit_security_exposure_is_at_most_2_0() {
    if !have("systemd-analyze") {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let unit = unit_under_test(tmp.path());
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=20", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("apitap.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure in:\n{text}"));
    assert!(
        out.status.success() && score <= 2.0,
        "exposure {score}:\n{text}"
    );
    // Process metrics read /proc: ProcSubset=pid would break them.
    let unit_text = std::fs::read_to_string(&unit).unwrap();
    assert!(!unit_text.contains("\nProcSubset="));
    for want in [
        "Type=notify",
        "WatchdogSec=",
        "ExecReload=",
        "DynamicUser=yes",
        "AmbientCapabilities=CAP_NET_RAW\n",
        "CapabilityBoundingSet=CAP_NET_RAW\n",
        "ProtectSystem=strict",
        "SystemCallFilter=",
        "RestrictAddressFamilies=AF_PACKET AF_INET AF_INET6 AF_UNIX AF_NETLINK\n",
        "LogsDirectory=apitap",
        "EnvironmentFile=-/etc/default/apitap",
    ] {
        assert!(unit_text.contains(want), "unit lacks {want:?}");
    }
}

#[test]
fn packaged_config_file_loads_and_logs_under_logs_directory() {
    let cli = apitap::cli::Cli {
        config_file: Some(root().join("packaging/apitap.toml")),
        ..Default::default()
    };
    let cfg = apitap::config::Config::load(&cli).unwrap_or_else(|e| panic!("{e}"));
    for p in [&cfg.exchanges, &cfg.findings] {
        assert!(p.as_deref().unwrap().starts_with("/var/log/apitap/"));
    }
    assert_eq!(cfg.listen_address.as_deref(), Some(":10190"));
}

#[test]
fn packaged_man_page_and_completions_are_generated_from_the_flags() {
    for (what, file) in [
        ("man", "packaging/man/apitap.8"),
        ("bash", "packaging/completions/apitap.bash"),
        ("zsh", "packaging/completions/_apitap"),
        ("fish", "packaging/completions/apitap.fish"),
    ] {
        let want = apitap::cli::generate(what).unwrap();
        let have = std::fs::read(root().join(file)).unwrap();
        assert!(
            want == have,
            "{file} is stale: regenerate with `apitap --generate {what} > {file}`"
        );
    }
}

#[test]
fn version_carries_revision_compiler_and_target() {
    let out = Command::new(env!("CARGO_BIN_EXE_apitap"))
        .arg("--version")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.starts_with(&format!("apitap {} (revision ", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(
        text.contains(", rustc ") && text.contains(", target "),
        "{text}"
    );
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

const SETPRIV_NET_RAW: [&str; 6] = [
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--inh-caps=-all,+net_raw",
    "--ambient-caps=-all,+net_raw",
    "--bounding-set=-all,+net_raw",
];

fn capabilities(pid: u32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("Cap"))
        .map(str::to_string)
        .collect()
}

#[test]
fn unprivileged_user_with_only_cap_net_raw_captures_then_drops_it() {
    if !is_root() || !have("setpriv") || !have("curl") || !have("python3") {
        eprintln!("skipped: needs root, setpriv, curl and python3");
        return;
    }
    let port = free_port();
    let _server = KillOnDrop(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut apitap = KillOnDrop(
        Command::new("setpriv")
            .args(SETPRIV_NET_RAW)
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_apitap"))
            .args(["-i", "lo", "-f", &format!("tcp port {port}")])
            .args(["--exchanges", "-", "--web.listen-address", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = apitap.0.id();
    let stdout = apitap.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let start = Instant::now();
    let line = loop {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no exchange captured"
        );
        let _ = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "--max-time", "2"])
            .arg(format!("http://127.0.0.1:{port}/README.md"))
            .status();
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(500)) {
            break l;
        }
    };
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["target"], "/README.md", "{line}");
    assert_eq!(v["status"], 200, "{line}");
    // The capture is open: every capability is gone.
    let caps = capabilities(pid);
    for set in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        let l = caps.iter().find(|l| l.starts_with(set)).unwrap();
        assert!(l.ends_with("0000000000000000"), "{caps:?}");
    }
}

#[test]
fn without_cap_net_raw_one_line_names_it() {
    if !is_root() || !have("setpriv") {
        eprintln!("skipped: needs root and setpriv");
        return;
    }
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["--inh-caps=-all", "--bounding-set=-all", "--"])
        .arg(env!("CARGO_BIN_EXE_apitap"))
        .args(["-i", "lo", "--web.listen-address", "127.0.0.1:0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("CAP_NET_RAW"), "{err}");
}
