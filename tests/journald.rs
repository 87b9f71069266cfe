//! apitap's own log under systemd: stderr is the journal stream
//! (`JOURNAL_STREAM` names fd 2), so events go to journald over its native
//! protocol. The test binds the "journal" socket itself
//! (`APITAP_JOURNAL_SOCKET`), parses every datagram, and checks priorities,
//! apitap's fields, that no secret the traffic or the web config held is
//! sent, and that a `JOURNAL_STREAM` naming another file, or a journal that
//! does not answer, leaves the log on stderr as logfmt.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn captures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/captures")
}

/// One journal entry: field name → value (a field may repeat; last wins).
type Entry = HashMap<String, Vec<u8>>;

/// Parse a native-protocol datagram: `NAME=value\n`, or `NAME\n`, a 64-bit
/// little-endian length, the value and `\n`.
fn parse(mut d: &[u8]) -> Entry {
    let mut e = Entry::new();
    while !d.is_empty() {
        let nl = d.iter().position(|&b| b == b'\n').expect("field ends");
        let line = &d[..nl];
        let (name, value) = if let Some(eq) = line.iter().position(|&b| b == b'=') {
            d = &d[nl + 1..];
            (&line[..eq], line[eq + 1..].to_vec())
        } else {
            let rest = &d[nl + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            assert_eq!(rest[8 + len], b'\n', "a value ends with a newline");
            d = &rest[8 + len + 1..];
            (line, rest[8..8 + len].to_vec())
        };
        assert!(
            name.iter()
                .all(|&b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'),
            "field name {:?} is not in the journal's alphabet",
            String::from_utf8_lossy(name)
        );
        e.insert(String::from_utf8(name.to_vec()).unwrap(), value);
    }
    e
}

fn field<'a>(e: &'a Entry, name: &str) -> &'a str {
    e.get(name)
        .map(|v| std::str::from_utf8(v).unwrap())
        .unwrap_or("")
}

/// A fake journal: a bound datagram socket.
fn journal(dir: &Path) -> (PathBuf, UnixDatagram) {
    let path = dir.join("journal.socket");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    (path, sock)
}

/// Datagrams that arrive until `done` says so or `within` passes.
fn receive(
    sock: &UnixDatagram,
    within: Duration,
    mut done: impl FnMut(&[Entry]) -> bool,
) -> Vec<Entry> {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 17];
    while start.elapsed() < within && !done(&got) {
        if let Ok(n) = sock.recv(&mut buf) {
            // An empty datagram is the probe apitap sends on start.
            if n > 0 {
                got.push(parse(&buf[..n]));
            }
        }
    }
    got
}

/// The stream systemd would connect stderr to, and the `JOURNAL_STREAM`
/// value naming it.
fn journal_stream() -> (UnixStream, OwnedFd, String) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let theirs = OwnedFd::from(theirs);
    let meta = File::from(theirs.try_clone().unwrap()).metadata().unwrap();
    (ours, theirs, format!("{}:{}", meta.dev(), meta.ino()))
}

fn apitap(journal_stream: &str, socket: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_apitap"));
    cmd.env("JOURNAL_STREAM", journal_stream)
        .env("APITAP_JOURNAL_SOCKET", socket)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("INVOCATION_ID")
        .stdout(Stdio::null());
    cmd
}

fn http_get(addr: &str, authorization: &str) -> String {
    use std::io::Write;
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        c,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: {authorization}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    let _ = c.read_to_string(&mut text);
    text.lines().next().unwrap_or("").to_string()
}

fn stop(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let _ = child.wait();
}

#[test]
fn under_systemd_warnings_reach_journald_with_priority_and_fields_and_no_secret() {
    use base64::Engine;
    let tmp = tempfile::tempdir().unwrap();
    let (socket, sock) = journal(tmp.path());
    let (ours, theirs, stream) = journal_stream();
    let web = tmp.path().join("web.yml");
    let password = "journal-test-password";
    let hash = bcrypt::hash(password, 4).unwrap();
    std::fs::write(&web, format!("basic_auth_users:\n  prom: '{hash}'\n")).unwrap();
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let mut child = apitap(&stream, &socket)
        .arg("-r")
        .arg(captures().join("demo.pcap"))
        .args(["--log.level", "debug", "--web.listen-address", &addr])
        .arg("--web.config.file")
        .arg(&web)
        .stderr(Stdio::from(theirs))
        .spawn()
        .unwrap();
    let creds = base64::engine::general_purpose::STANDARD.encode(format!("prom:{password}"));
    let started = receive(&sock, Duration::from_secs(30), |got| {
        got.iter().any(|e| field(e, "MESSAGE") == "serving metrics")
    });
    assert!(
        http_get(&addr, &format!("Basic {creds}")).contains(" 200 "),
        "apitap serves with the password"
    );
    // A password pasted where the users map belongs: refused with a warning.
    let pasted = "pasted-into-the-web-config";
    std::fs::write(&web, format!("basic_auth_users: {pasted}\n")).unwrap();
    assert!(http_get(&addr, &format!("Basic {creds}")).contains(" 200 "));
    let mut got = receive(&sock, Duration::from_secs(30), |got| {
        got.iter()
            .any(|e| field(e, "MESSAGE").contains("previous web config"))
    });
    stop(&mut child);
    got.extend(receive(&sock, Duration::from_millis(300), |_| false));
    got.extend(started);

    let serving = got
        .iter()
        .find(|e| field(e, "MESSAGE") == "serving metrics")
        .expect("the start is logged");
    for (name, want) in [
        ("PRIORITY", "6"),
        ("SYSLOG_IDENTIFIER", "apitap"),
        ("APITAP_ADDRESS", addr.as_str()),
        ("APITAP_TLS", "false"),
        ("APITAP_BASIC_AUTH", "true"),
    ] {
        assert_eq!(field(serving, name), want, "{name} in {serving:?}");
    }
    let warning = got
        .iter()
        .find(|e| field(e, "MESSAGE").contains("previous web config"))
        .unwrap_or_else(|| panic!("the refused web config is logged: {got:?}"));
    assert_eq!(field(warning, "PRIORITY"), "4");
    assert!(field(warning, "MESSAGE").contains("basic_auth_users"));
    assert!(field(warning, "CODE_FILE").ends_with("web.rs"));

    let all: Vec<u8> = got
        .iter()
        .flat_map(|e| e.values().flatten().copied())
        .collect();
    let all = String::from_utf8_lossy(&all);
    for secret in [
        pasted,
        password,
        creds.as_str(),
        // Credentials demo.pcap carries: a session cookie, a JWT
        // signature, a Basic credential.
        "s-7f3a9c2e41d8",
        "bm90LWEtcmVhbC1zaWduYXR1cmUtMDEyMzQ1Njc4OWFi",
        "YWxpY2U6d3JvbmctcGFzc3dvcmQ=",
    ] {
        assert!(!all.contains(secret), "the journal got {secret:?}");
    }
    // Nothing went to stderr as log lines: the journal had it all.
    let stderr = String::from_utf8_lossy(&read_all(ours)).into_owned();
    assert!(!stderr.contains("level="), "{stderr}");
}

/// demo.pcap cut inside its last record: apitap warns that the file ends
/// in the middle of a record, then exits.
fn truncated_capture(dir: &Path) -> PathBuf {
    let bytes = std::fs::read(captures().join("demo.pcap")).unwrap();
    let path = dir.join("cut.pcap");
    std::fs::write(&path, &bytes[..bytes.len() - 7]).unwrap();
    path
}

/// Replay `capture` with stderr on a journal stream and `socket` as the
/// journal; what reached stderr.
fn replay_on_journal_stream(capture: &Path, socket: &Path) -> Vec<u8> {
    let (ours, theirs, stream) = journal_stream();
    let status = apitap(&stream, socket)
        .arg("-r")
        .arg(capture)
        .stderr(Stdio::from(theirs))
        .status()
        .unwrap();
    assert!(status.success());
    read_all(ours)
}

/// What the stream holds once the other end closed.
fn read_all(mut stream: UnixStream) -> Vec<u8> {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    out
}

#[test]
fn journal_stream_naming_another_file_or_no_journal_keeps_logfmt_on_stderr() {
    let tmp = tempfile::tempdir().unwrap();
    let (socket, sock) = journal(tmp.path());
    let cut = truncated_capture(tmp.path());
    let warned = |stderr: &[u8]| {
        String::from_utf8_lossy(stderr)
            .lines()
            .any(|l| l.contains("level=warn") && l.contains("middle of a record"))
    };

    // JOURNAL_STREAM inherited from a parent whose stderr was the journal,
    // while ours is a pipe: not the journal.
    let other = tmp.path().join("other");
    std::fs::write(&other, "").unwrap();
    let m = std::fs::metadata(&other).unwrap();
    let out = apitap(&format!("{}:{}", m.dev(), m.ino()), &socket)
        .arg("-r")
        .arg(&cut)
        .output()
        .unwrap();
    assert!(
        warned(&out.stderr),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(receive(&sock, Duration::from_millis(300), |_| false).is_empty());

    // The stream matches, journald does not answer: stderr.
    let stderr = replay_on_journal_stream(&cut, &tmp.path().join("absent.socket"));
    assert!(warned(&stderr), "{}", String::from_utf8_lossy(&stderr));

    // The stream matches and the journal answers: the warning is there,
    // at priority 4, and not on stderr.
    let stderr = replay_on_journal_stream(&cut, &socket);
    let got = receive(&sock, Duration::from_secs(5), |got| !got.is_empty());
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(field(&got[0], "PRIORITY"), "4");
    assert!(field(&got[0], "MESSAGE").contains("middle of a record"));
    assert!(!warned(&stderr));
}
