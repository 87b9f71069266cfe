//! `--web.config.file` end to end: certificates made by openssl, a web
//! config that `promtool check web-config` accepts, apitap serving through
//! TLS with client certificates and bcrypt basic auth, curl checking each
//! refusal, and a real Prometheus (`/usr/bin/prometheus`) scraping apitap
//! with `scheme: https`, `tls_config` and `basic_auth`. Skips when openssl,
//! curl, promtool or prometheus is missing.

mod common;

use common::{free_port, have, KillOnDrop};

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("command runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A CA, a server certificate for 127.0.0.1/localhost and a client
/// certificate, all signed by the CA.
fn make_certs(dir: &Path) {
    let o = |args: &[&str]| run(Command::new("openssl").current_dir(dir).args(args));
    o(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "3650",
        "-subj",
        "/CN=apitap test CA",
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for who in ["server", "client"] {
        o(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{who}.key"),
            "-out",
            &format!("{who}.csr"),
            "-subj",
            &format!("/CN={who}"),
        ]);
        o(&[
            "x509",
            "-req",
            "-in",
            &format!("{who}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{who}.crt"),
            "-days",
            "3650",
            "-extfile",
            &format!("{who}.ext"),
        ]);
    }
}

fn curl(dir: &Path, url: &str, extra: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .current_dir(dir)
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-D",
            "-",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ])
        .args(extra)
        .arg(url)
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let code = text.lines().last().unwrap_or("").to_string();
    (code, text)
}

/// Poll `check` until it answers `Ok`; on time-out fail with its last answer.
fn wait_for(what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let start = Instant::now();
    loop {
        match check() {
            Ok(()) => return,
            Err(last) if start.elapsed() > Duration::from_secs(60) => {
                panic!("timed out: {what}; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/http-mix-sample.pcap")
}

/// apitap replaying the sample, then serving its metrics on `addr` with the
/// web config `web`.
fn serving(addr: &str, web: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_apitap"));
    cmd.arg("-r")
        .arg(sample())
        .args(["--metrics-out", "/dev/null", "--web.listen-address", addr])
        .arg("--web.config.file")
        .arg(web)
        .stdout(Stdio::null());
    cmd
}

#[test]
fn tls_client_certs_and_basic_auth_with_a_real_prometheus() {
    for tool in ["openssl", "curl", "promtool", "prometheus"] {
        if !have(tool) {
            eprintln!("skipped: {tool} is not installed");
            return;
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_certs(dir);
    let hash = bcrypt::hash("s3cret pass", 6).unwrap();
    let web = dir.join("web.yml");
    std::fs::write(
        &web,
        format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
             client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  \
             min_version: TLS12\n\
             http_server_config:\n  headers:\n    X-Frame-Options: deny\n\
             basic_auth_users:\n  prom: '{hash}'\n"
        ),
    )
    .unwrap();
    run(Command::new("promtool")
        .args(["check", "web-config"])
        .arg(&web));

    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let _apitap = KillOnDrop(serving(&addr, &web).spawn().unwrap());
    let url = format!("https://localhost:{port}/metrics");
    let full = [
        "--cacert",
        "ca.crt",
        "--cert",
        "client.crt",
        "--key",
        "client.key",
        "-u",
        "prom:s3cret pass",
    ];
    wait_for("apitap serving over TLS", || {
        let (code, text) = curl(dir, &url, &full);
        if code == "200" {
            Ok(())
        } else {
            Err(text)
        }
    });
    let (code, head) = curl(dir, &url, &full);
    assert_eq!(code, "200");
    assert!(
        head.to_ascii_lowercase().contains("x-frame-options: deny"),
        "{head}"
    );
    // Wrong password, no password, no client certificate, plain HTTP.
    let (code, head) = curl(dir, &url, &full[..6]);
    assert_eq!(code, "401");
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: basic"),
        "{head}"
    );
    let mut wrong = full;
    wrong[7] = "prom:nope";
    assert_eq!(curl(dir, &url, &wrong).0, "401");
    assert_eq!(
        curl(dir, &url, &["--cacert", "ca.crt", "-u", "prom:s3cret pass"]).0,
        "000"
    );
    assert_eq!(
        curl(dir, &format!("http://localhost:{port}/metrics"), &[]).0,
        "000"
    );

    // A real Prometheus scrapes it.
    let prom_port = free_port();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: apitap\n    scheme: https\n    \
             static_configs:\n      - targets: ['localhost:{port}']\n    \
             tls_config:\n      ca_file: {d}/ca.crt\n      cert_file: {d}/client.crt\n      \
             key_file: {d}/client.key\n    \
             basic_auth:\n      username: prom\n      password: 's3cret pass'\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let _prom = KillOnDrop(
        Command::new("prometheus")
            .current_dir(dir)
            .arg(format!("--config.file={}/prometheus.yml", dir.display()))
            .arg(format!("--storage.tsdb.path={}/data", dir.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let query = format!(
        "http://127.0.0.1:{prom_port}/api/v1/query?query=apitap_build_info%20*%20on()%20group_left%20up%7Bjob%3D%22apitap%22%7D"
    );
    wait_for(
        "Prometheus scraping apitap through TLS and basic auth",
        || {
            let out = Command::new("curl")
                .args(["-s", "--max-time", "2", &query])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            if text.contains("\"status\":\"success\"") && text.contains("\"1\"]") {
                return Ok(());
            }
            let targets = Command::new("curl")
                .args(["-s", "--max-time", "2"])
                .arg(format!("http://127.0.0.1:{prom_port}/api/v1/targets"))
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                .unwrap_or_default();
            Err(format!("{text} / targets: {targets}"))
        },
    );
}

#[test]
fn a_web_config_with_an_unknown_key_is_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let web = tmp.path().join("web.yml");
    std::fs::write(&web, "basic_auth_users: {}\ntls_server_confg: {}\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_apitap"))
        .arg("-r")
        .arg(sample())
        .args(["--web.listen-address", "127.0.0.1:0", "--web.config.file"])
        .arg(&web)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tls_server_confg") && err.lines().count() == 1,
        "{err}"
    );
}

/// One HTTP/1.1 exchange on `conn`: the status code. Reads the body by its
/// Content-Length so the connection can carry the next request.
fn exchange(conn: &mut std::net::TcpStream, auth: Option<&str>) -> u16 {
    use base64::Engine;
    use std::io::{BufRead, BufReader, Read, Write};
    let mut req = String::from("GET /metrics HTTP/1.1\r\nHost: apitap\r\n");
    if let Some(a) = auth {
        let b64 = base64::engine::general_purpose::STANDARD.encode(a);
        req.push_str(&format!("Authorization: Basic {b64}\r\n"));
    }
    req.push_str("\r\n");
    conn.write_all(req.as_bytes()).unwrap();
    let mut reader = BufReader::new(conn);
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    status
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {status:?}"))
}

fn status(addr: &str, auth: Option<&str>) -> u16 {
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    exchange(&mut conn, auth)
}

fn users_file(path: &Path, user: &str, password: &str) {
    let hash = bcrypt::hash(password, 4).unwrap();
    // Written beside and renamed, as config management does.
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, format!("basic_auth_users:\n  {user}: '{hash}'\n")).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn a_changed_password_applies_without_restart_and_a_broken_file_keeps_the_old_one() {
    let tmp = tempfile::tempdir().unwrap();
    let web = tmp.path().join("web.yml");
    users_file(&web, "prom", "old pass");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = serving(&addr, &web).stderr(Stdio::piped()).spawn().unwrap();
    wait_for("apitap serving", || {
        match std::net::TcpStream::connect(&addr) {
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    });
    assert_eq!(status(&addr, Some("prom:old pass")), 200);
    assert_eq!(status(&addr, Some("prom:new pass")), 401);
    // Prometheus keeps its connection open: the change must reach it too.
    let mut kept = std::net::TcpStream::connect(&addr).unwrap();
    kept.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(exchange(&mut kept, Some("prom:old pass")), 200);

    users_file(&web, "prom", "new pass");
    assert_eq!(exchange(&mut kept, Some("prom:old pass")), 401);
    assert_eq!(exchange(&mut kept, Some("prom:new pass")), 200);
    assert_eq!(status(&addr, Some("prom:old pass")), 401);
    assert_eq!(status(&addr, Some("prom:new pass")), 200);

    // A password pasted where the hash belongs: refused, the last good
    // file serves, one warning names the key and not the password.
    std::fs::write(&web, "basic_auth_users:\n  prom: pasted-plaintext-pw\n").unwrap();
    for _ in 0..3 {
        assert_eq!(status(&addr, Some("prom:new pass")), 200);
        assert_eq!(status(&addr, Some("prom:pasted-plaintext-pw")), 401);
        assert_eq!(status(&addr, None), 401);
    }
    users_file(&web, "prom", "third pass");
    assert_eq!(status(&addr, Some("prom:third pass")), 200);
    assert_eq!(status(&addr, Some("prom:new pass")), 401);

    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    let kept_lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("serving with the previous web config"))
        .collect();
    assert_eq!(kept_lines.len(), 1, "{log}");
    assert!(
        kept_lines[0].contains("level=warn") && kept_lines[0].contains("basic_auth_users.prom"),
        "{log}"
    );
    assert!(!log.contains("pasted-plaintext-pw"), "{log}");
    assert_eq!(log.matches("web config reloaded").count(), 2, "{log}");
}
