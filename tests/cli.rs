//! The command line's contract: exit codes and one-line errors (SPEC).

mod common;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = common::apitap().args(args).output().expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn sample() -> String {
    format!(
        "{}/samples/http-mix-sample.pcap",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[test]
fn usage_errors_exit_2_with_one_line() {
    for args in [
        &["--bogus"][..],
        &[][..],
        &["-r", "x", "-i", "lo"][..],
        &["-r", "x", "--log.level", "loud"][..],
    ] {
        let (code, _, err) = run(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn bad_config_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("apitap.toml");
    std::fs::write(&cfg, "[flow]\nmax-flows = 0\n").unwrap();
    let (code, _, err) = run(&["-r", &sample(), "--config.file", cfg.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("flow.max-flows"), "{err}");
}

#[test]
fn runtime_errors_exit_1_with_one_line() {
    let (code, _, err) = run(&["-r", "/nonexistent/capture.pcap"]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/capture.pcap"), "{err}");
    let (code, _, err) = run(&["-r", concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")]);
    assert_eq!(code, 1);
    assert!(err.contains("not a pcap or pcapng"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let xz = dir.path().join("capture.pcap.xz");
    std::fs::write(&xz, b"\xfd7zXZ\x00\x00\x04\xe6\xd6\xb4\x46").unwrap();
    let (code, _, err) = run(&["-r", xz.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("xz-compressed") && err.contains("xzcat"),
        "{err}"
    );
}

#[test]
fn truncated_file_is_processed_then_reported() {
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut.pcap");
    let bytes = std::fs::read(sample()).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2 + 7]).unwrap();
    let (code, out, err) = run(&["-r", cut.to_str().unwrap(), "--exchanges", "-"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines().count() > 100,
        "exchanges before the cut are logged"
    );
    assert!(err.contains("middle of a record"), "{err}");
}

/// `tcpdump -z gzip` rotations, archives: `-r` reads gzip and zstd
/// captures, from a file or stdin, as the plain file (same log, same
/// metrics); a cut archive is reported as a cut file is.
#[test]
fn a_compressed_capture_reads_as_the_plain_one() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let plain = std::fs::read(sample()).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&plain).unwrap();
    let packed = [
        ("sample.pcap.gz", gz.finish().unwrap()),
        ("sample.pcap.zst", zstd::encode_all(&plain[..], 3).unwrap()),
    ];
    let (code, want, err) = run(&["-r", &sample(), "--exchanges", "-"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(want.lines().count(), 525);
    for (name, bytes) in packed {
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        let (code, got, err) = run(&["-r", path.to_str().unwrap(), "--exchanges", "-"]);
        assert_eq!(code, 0, "{name}: {err}");
        assert!(got == want, "{name}: {} lines", got.lines().count());
        let piped = common::apitap()
            .args(["-r", "-", "--exchanges", "-"])
            .stdin(std::fs::File::open(&path).unwrap())
            .output()
            .unwrap();
        assert!(piped.status.success(), "{name}");
        assert!(piped.stdout == want.as_bytes(), "{name} piped");
        let cut = dir.path().join(format!("cut-{name}"));
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let (code, got, err) = run(&["-r", cut.to_str().unwrap(), "--exchanges", "-"]);
        assert_eq!(code, 0, "{name}: {err}");
        assert!(got.lines().count() > 100, "{name}: the first half is read");
        assert!(err.contains("stream is cut short or corrupt"), "{err}");
    }
}

#[test]
fn sample_matches_nginx_ground_truth() {
    // samples/http-mix-sample.pcap.stats.txt holds nginx's own access-log
    // counts for the traffic in the sample (written by the generator).
    let truth = std::fs::read_to_string(format!("{}.stats.txt", sample())).unwrap();
    let mut want = std::collections::BTreeMap::new();
    let mut in_status = false;
    for line in truth.lines() {
        if line.starts_with("status_histogram") {
            in_status = true;
            continue;
        }
        if in_status {
            let parts: Vec<&str> = line.split_whitespace().collect();
            match parts.as_slice() {
                [code, n] if code.parse::<u16>().is_ok() => {
                    want.insert(code.parse::<u16>().unwrap(), n.parse::<u64>().unwrap());
                }
                _ => in_status = false,
            }
        }
    }
    assert!(want.len() > 5);
    let (records, _) = common::exchanges_of(std::path::Path::new(&sample()), &[]);
    let mut got = std::collections::BTreeMap::new();
    for r in &records {
        *got.entry(r["status"].as_u64().unwrap() as u16)
            .or_insert(0u64) += 1;
    }
    assert_eq!(got, want);
}

#[test]
fn replay_speed_paces_and_replay_loop_repeats_until_interrupted() {
    // The sample spans 1.40 s of capture time.
    let start = std::time::Instant::now();
    let (code, out, _) = run(&["-r", &sample(), "--replay-speed", "4", "--exchanges", "-"]);
    let took = start.elapsed();
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 525);
    assert!(
        took >= std::time::Duration::from_millis(300),
        "paced: took {took:?}"
    );

    // A file, not a pipe: nobody reads a pipe until the process ends.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("loop.ndjson");
    let mut child = common::apitap()
        .args([
            "-r",
            &sample(),
            "--replay-speed",
            "10",
            "--replay-loop",
            "--exchanges",
        ])
        .arg(&log)
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() > 2 * 525, "looped: {} exchanges", lines.len());
    // Later passes carry later timestamps (shifted, not repeated).
    let last_pass_ts = lines
        .iter()
        .map(|l| l["ts"].as_str().unwrap().to_string())
        .max()
        .unwrap();
    assert!(
        last_pass_ts.as_str() > "2026-11-25T20:36:44",
        "{last_pass_ts}"
    );
}

/// A pcapng block apitap cannot read but whose framing is intact is
/// skipped, counted and reported; nothing else of the file is lost: the
/// sample converted to pcapng with such a block in the middle logs the same
/// exchanges as the sample itself.
#[test]
fn an_unreadable_pcapng_block_is_skipped_and_reported() {
    fn block(out: &mut Vec<u8>, kind: u32, body: &[u8]) {
        let len = 12 + body.len().next_multiple_of(4) as u32;
        out.extend(kind.to_le_bytes());
        out.extend(len.to_le_bytes());
        out.extend(body);
        out.resize(out.len() + body.len().next_multiple_of(4) - body.len(), 0);
        out.extend(len.to_le_bytes());
    }
    let pcap = std::fs::read(sample()).unwrap();
    let u32_at = |at: usize| u32::from_le_bytes(pcap[at..at + 4].try_into().unwrap());
    assert_eq!(
        u32_at(0),
        0xa1b2_c3d4,
        "the sample is a little-endian µs pcap"
    );
    let mut ng = Vec::new();
    // Section header: byte-order magic, version 1.0, section length unknown.
    let mut shb = 0x1a2b_3c4du32.to_le_bytes().to_vec();
    shb.extend([1, 0, 0, 0]);
    shb.extend([0xff; 8]);
    block(&mut ng, 0x0a0d_0d0a, &shb);
    // Interface: the sample's link type and snaplen (µs timestamps).
    let mut idb = (u32_at(20) as u16).to_le_bytes().to_vec();
    idb.extend([0, 0]);
    idb.extend(u32_at(16).to_le_bytes());
    block(&mut ng, 1, &idb);
    let (mut at, mut n) = (24, 0);
    while at + 16 <= pcap.len() {
        let (secs, micros, caplen, origlen) =
            (u32_at(at), u32_at(at + 4), u32_at(at + 8), u32_at(at + 12));
        let ts = u64::from(secs) * 1_000_000 + u64::from(micros);
        let mut epb = 0u32.to_le_bytes().to_vec();
        epb.extend(((ts >> 32) as u32).to_le_bytes());
        epb.extend((ts as u32).to_le_bytes());
        epb.extend(caplen.to_le_bytes());
        epb.extend(origlen.to_le_bytes());
        epb.extend(&pcap[at + 16..at + 16 + caplen as usize]);
        block(&mut ng, 6, &epb);
        at += 16 + caplen as usize;
        n += 1;
        if n == 1000 {
            // A name resolution record (IPv4) that runs past its block.
            let mut nrb = 1u16.to_le_bytes().to_vec();
            nrb.extend(200u16.to_le_bytes());
            nrb.extend([10, 0, 0, 1]);
            block(&mut ng, 4, &nrb);
        }
    }
    assert!(n > 1000, "the sample has {n} packets");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sample.pcapng");
    std::fs::write(&path, &ng).unwrap();

    let (code, report, err) = run(&["-r", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        report.contains("warning: skipped 1 blocks of the capture file"),
        "{report}"
    );
    assert!(!report.contains("corrupt record"), "{report}");
    let (_, ours, _) = run(&["-r", path.to_str().unwrap(), "--exchanges", "-"]);
    let (_, theirs, _) = run(&["-r", &sample(), "--exchanges", "-"]);
    assert!(ours.lines().count() > 100);
    assert_eq!(ours, theirs, "the same exchanges as the sample's");
}

/// `-f` with `-r` filters the file as tcpdump -r does: with only the
/// requests' direction kept, every request is logged and none answered
/// (and no failure is made of that); with one client port, that
/// connection's exchanges only. A filter libpcap cannot parse is one line
/// naming it (exit 1, as live).
#[test]
fn a_capture_filter_applies_to_a_file() {
    let exchanges = |filter: &str| -> Vec<serde_json::Value> {
        let (code, out, err) = run(&["-r", &sample(), "-f", filter, "--exchanges", "-"]);
        assert_eq!(code, 0, "{err}");
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let all = exchanges("tcp");
    let requests = exchanges("dst port 80");
    assert_eq!(requests.len(), all.len());
    assert!(requests
        .iter()
        .all(|r| r["status"].is_null() && r["failure"].is_null() && r["method"].is_string()));
    let client = all[0]["client"].as_str().unwrap().to_string();
    let port = client.rsplit(':').next().unwrap();
    let one = exchanges(&format!("tcp port {port}"));
    let want: Vec<_> = all.iter().filter(|r| r["client"] == client).collect();
    assert!(!want.is_empty());
    assert_eq!(one.iter().collect::<Vec<_>>(), want);

    let (code, _, err) = run(&["-r", &sample(), "-f", "tcp prot 80"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("invalid capture filter \"tcp prot 80\""),
        "{err}"
    );
}

/// `--exchanges - | head`: the reader closing the pipe early is not an
/// error (exit 0, nothing on stderr), and the rest of the file is still
/// read for the other outputs (the final metrics count every exchange).
#[test]
fn a_reader_that_closes_stdout_early_is_not_an_error() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let metrics = dir.path().join("m.prom");
    let mut child = common::apitap()
        .args(["-r", &sample(), "--exchanges", "-", "--metrics-out"])
        .arg(&metrics)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("{\"ts\":"), "{first}");
    // The reader is dropped here: apitap's next writes meet a closed pipe
    // (the sample's log is several times a pipe's buffer).
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.is_empty(), "{err}");
    let text = std::fs::read_to_string(&metrics).unwrap();
    let count = common::exchanges_counted(&text);
    assert_eq!(count, 525.0);
}

#[test]
fn a_piped_capture_is_logged_as_it_comes_and_stops_on_sigterm_while_the_writer_is_quiet() {
    use std::io::Write;
    use std::time::{Duration, Instant};
    let bytes = std::fs::read(sample()).unwrap();
    for workers in ["1", "2"] {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("x.ndjson");
        let mut child = common::apitap()
            .args(["-r", "-", "--workers", workers, "--exchanges"])
            .arg(&log)
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // As `tcpdump -w - | apitap -r -` on a network that goes quiet:
        // the whole sample, then the pipe stays open.
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&bytes).unwrap();
        stdin.flush().unwrap();
        let lines = || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .count()
        };
        let since = Instant::now();
        while lines() < 525 && since.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(50));
        }
        // Every exchange is written while the pipe is open (before: the
        // last ~130 waited in the log's buffer or a worker's batch until
        // the writer closed it).
        assert_eq!(lines(), 525, "workers {workers}");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let since = Instant::now();
        while child.try_wait().unwrap().is_none() && since.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        // Seen at once, though no byte came (before: not until the writer
        // wrote or closed the pipe).
        let status = child.try_wait().unwrap();
        drop(stdin);
        let status = status.unwrap_or_else(|| child.wait().unwrap());
        assert!(
            since.elapsed() < Duration::from_secs(5),
            "workers {workers}"
        );
        assert_eq!(status.code(), Some(0), "workers {workers}");
        assert_eq!(lines(), 525);
    }
}
