//! The service as shipped: the unit passes `systemd-analyze verify` with
//! nothing on stderr and `systemd-analyze security --offline=yes` at 2.0 or
//! better; the packaged config file loads; the man page and completions in
//! packaging/ are what the binary generates; `--version` carries the build
//! info; and apitap run as an unprivileged user holding only CAP_NET_RAW
//! (`setpriv`) captures on `lo`, drops the capability once the capture is
//! open, and without it fails with one line naming CAP_NET_RAW.
//! Tests needing systemd-analyze, root or curl/python3 skip without them.

mod common;

use common::{free_port, have, http_server, KillOnDrop};

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
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
fn the_packaged_configs_commented_sizes_are_the_defaults() {
    // Uncommented, the sizes the packaged file shows load (units and all)
    // and change nothing: they are the defaults it says they are.
    let text = std::fs::read_to_string(root().join("packaging/apitap.toml")).unwrap();
    let sizes = ["# memory-budget = ", "# buffer-size = "];
    let mut uncommented = 0;
    let text: String = text
        .lines()
        .map(|l| match sizes.iter().find(|p| l.starts_with(*p)) {
            Some(_) => {
                uncommented += 1;
                format!("{}\n", &l[2..])
            }
            None => format!("{l}\n"),
        })
        .collect();
    assert_eq!(uncommented, sizes.len());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("apitap.toml");
    std::fs::write(&path, text).unwrap();
    let load = |config_file| {
        let cli = apitap::cli::Cli {
            config_file,
            ..Default::default()
        };
        apitap::config::Config::load(&cli).unwrap_or_else(|e| panic!("{e}"))
    };
    let (with, packaged) = (
        load(Some(path)),
        load(Some(root().join("packaging/apitap.toml"))),
    );
    assert_eq!(
        with.flow.memory_budget_bytes,
        packaged.flow.memory_budget_bytes
    );
    assert_eq!(with.capture.buffer_size, packaged.capture.buffer_size);
    assert_eq!(with.flow.memory_budget_bytes, 512 << 20);
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

/// apitap with `args` under a 200 ms watchdog, notifying `socket`.
fn watched(args: &[&str], socket: &Path) -> KillOnDrop {
    KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_apitap"))
            .args(args)
            .env("NOTIFY_SOCKET", socket)
            .env("WATCHDOG_USEC", "200000")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
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
    let _server = http_server(std::path::Path::new(env!("CARGO_MANIFEST_DIR")), port);
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

/// Datagrams apitap sends to `NOTIFY_SOCKET`, collected by a thread.
fn notify_listener(path: &Path) -> std::sync::mpsc::Receiver<String> {
    let sock = std::os::unix::net::UnixDatagram::bind(path).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = sock.recv(&mut buf) {
            if tx
                .send(String::from_utf8_lossy(&buf[..n]).to_string())
                .is_err()
            {
                return;
            }
        }
    });
    rx
}

/// Wait for a datagram containing `want`; return everything seen so far.
fn expect(rx: &std::sync::mpsc::Receiver<String>, want: &str, seen: &mut Vec<String>) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        if let Ok(m) = rx.recv_timeout(Duration::from_millis(100)) {
            let hit = m.contains(want);
            seen.push(m);
            if hit {
                return;
            }
        }
    }
    panic!("no {want:?} from apitap; got {seen:?}");
}

#[test]
fn notify_ready_watchdog_status_reload_and_stopping() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("notify.sock");
    let rx = notify_listener(&socket);
    let cfg = tmp.path().join("apitap.toml");
    std::fs::write(&cfg, "[log]\nlevel = \"info\"\n").unwrap();
    let sample = root().join("samples/http-mix-sample.pcap");
    let mut apitap = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_apitap"))
            .arg("-r")
            .arg(&sample)
            .args([
                "--replay-loop",
                "--replay-speed",
                "50",
                "--exchanges",
                "/dev/null",
            ])
            .arg("--config.file")
            .arg(&cfg)
            .env("NOTIFY_SOCKET", &socket)
            .env("WATCHDOG_USEC", "400000")
            .env_remove("WATCHDOG_PID")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut seen = Vec::new();
    expect(&rx, "READY=1", &mut seen);
    assert!(seen.iter().all(|m| !m.contains("WATCHDOG=1")), "{seen:?}");
    expect(&rx, "WATCHDOG=1", &mut seen);
    expect(&rx, "WATCHDOG=1", &mut seen);
    expect(&rx, "STATUS=capturing: ", &mut seen);
    let status = seen
        .iter()
        .rev()
        .find(|m| m.contains("STATUS=capturing: "))
        .unwrap();
    assert!(
        status.contains("packets/s") && status.contains("exchanges"),
        "{status}"
    );

    let pid = nix::unistd::Pid::from_raw(apitap.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    seen.clear();
    expect(&rx, "RELOADING=1", &mut seen);
    assert!(seen.last().unwrap().contains("MONOTONIC_USEC="), "{seen:?}");
    expect(&rx, "READY=1", &mut seen);

    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    expect(&rx, "STOPPING=1", &mut seen);
    assert!(apitap.0.wait().unwrap().success());
}

/// Messages received within `span`.
fn collect(rx: &std::sync::mpsc::Receiver<String>, span: Duration) -> Vec<String> {
    let start = Instant::now();
    let mut seen = Vec::new();
    while start.elapsed() < span {
        if let Ok(m) = rx.recv_timeout(Duration::from_millis(50)) {
            seen.push(m);
        }
    }
    seen
}

/// A classic pcap (Ethernet) holding two 60-byte frames one second apart.
fn two_frames_one_second_apart() -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    b.extend_from_slice(&2u16.to_le_bytes());
    b.extend_from_slice(&4u16.to_le_bytes());
    for v in [0u32, 0, 65535, 1] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    for sec in [1_700_000_000u32, 1_700_000_001] {
        for v in [sec, 0, 60, 60] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&[0u8; 60]);
    }
    b
}

fn watchdog_pings(seen: &[String]) -> usize {
    seen.iter().filter(|m| m.contains("WATCHDOG=1")).count()
}

#[test]
fn watchdog_follows_loop_progress_not_traffic() {
    let tmp = tempfile::tempdir().unwrap();
    // A loop that does not advance: a replay paced 10,000 times slower than
    // recorded sits between two packets for far longer than the watchdog
    // interval, so the pings must stop (systemd would restart it).
    let socket = tmp.path().join("stuck.sock");
    let rx = notify_listener(&socket);
    let pcap = tmp.path().join("gap.pcap");
    std::fs::write(&pcap, two_frames_one_second_apart()).unwrap();
    let pcap = pcap.to_str().unwrap();
    let _stuck = watched(
        &[
            "-r",
            pcap,
            "--replay-speed",
            "0.0001",
            "--exchanges",
            "/dev/null",
        ],
        &socket,
    );
    let mut seen = Vec::new();
    expect(&rx, "READY=1", &mut seen);
    let seen = collect(&rx, Duration::from_millis(2500));
    assert!(
        watchdog_pings(&seen) <= 1,
        "a stuck loop kept pinging: {seen:?}"
    );

    // A live capture on a quiet filter still advances (ticks): it pings.
    if !is_root() {
        eprintln!("live half skipped: needs root");
        return;
    }
    let socket = tmp.path().join("quiet.sock");
    let rx = notify_listener(&socket);
    let _quiet = watched(
        &[
            "-i",
            "lo",
            "-f",
            "tcp port 9 and tcp port 10",
            "--web.listen-address",
            "127.0.0.1:0",
        ],
        &socket,
    );
    let mut seen = Vec::new();
    expect(&rx, "READY=1", &mut seen);
    let seen = collect(&rx, Duration::from_millis(2500));
    assert!(
        watchdog_pings(&seen) >= 4,
        "a quiet capture stopped pinging: {seen:?}"
    );
}

#[test]
fn root_outside_systemd_switches_to_the_configured_user() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("apitap.toml");
    std::fs::write(
        &cfg,
        "interface = \"lo\"\nfilter = \"tcp port 9\"\n[web]\nlisten-address = \"127.0.0.1:0\"\n\
         [daemon]\nuser = \"nobody\"\n",
    )
    .unwrap();
    let apitap = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_apitap"))
            .arg("--config.file")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = apitap.0.id();
    let start = Instant::now();
    let status = loop {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        if s.lines()
            .any(|l| l.starts_with("Uid:") && l.contains("65534"))
        {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "still root:\n{s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    for set in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        let l = status.lines().find(|l| l.starts_with(set)).unwrap();
        assert!(l.ends_with("0000000000000000"), "{l}");
    }
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid.split_whitespace().skip(1).all(|v| v == "65534"),
        "{uid}"
    );
}
