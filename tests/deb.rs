//! The Debian package: `cargo deb` (metadata in Cargo.toml
//! `[package.metadata.deb]`) packs the binary this test run built, and the
//! test checks the result as `dpkg` sees it: control fields, every file at
//! its path and mode, conffiles, maintainer scripts that do not start the
//! service, and a scratch install (`dpkg -x`) whose binary runs and whose
//! unit, config and Grafana provisioning point at files the package holds.
//!
//! Needs cargo-deb and dpkg-deb; skips without them unless
//! `APITAP_REQUIRE_DEB` is set (CI sets it, so a missing tool fails there).
//! The Grafana path check needs neither and always runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?} cannot run: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: Output) -> String {
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// `[package.metadata.deb] assets` of Cargo.toml: source → destination.
fn assets() -> Vec<(String, String, String)> {
    let manifest: toml::Table = std::fs::read_to_string(root().join("Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    manifest["package"]["metadata"]["deb"]["assets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let a = a.as_array().unwrap();
            let s = |i: usize| a[i].as_str().unwrap().to_string();
            (s(0), s(1), s(2))
        })
        .collect()
}

/// The folder Grafana's file provider reads, from the provisioning file.
fn provisioned_path(provisioning: &Path) -> String {
    let yaml: serde_json::Value =
        serde_norway::from_str(&std::fs::read_to_string(provisioning).unwrap()).unwrap();
    yaml["providers"][0]["options"]["path"]
        .as_str()
        .expect("providers[0].options.path")
        .to_string()
}

/// The repository's dashboards (what `dashboards/*.json` packs).
fn dashboards() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root().join("dashboards"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    assert!(names.len() >= 4, "{names:?}");
    names
}

#[test]
fn grafana_provisioning_points_where_the_package_installs_the_dashboards() {
    let dest = assets()
        .into_iter()
        .find(|(src, _, _)| src == "dashboards/*.json")
        .map(|(_, dest, _)| format!("/{}", dest.trim_end_matches('/')))
        .expect("Cargo.toml packs dashboards/*.json");
    assert_eq!(dest, "/usr/share/apitap/dashboards");
    let path = provisioned_path(&root().join("dashboards/grafana-dashboards.yaml"));
    assert_eq!(path, dest, "grafana-dashboards.yaml options.path");
    // The demo's Grafana container mounts the folder at the same path.
    let demo = std::fs::read_to_string(root().join("scripts/demo.sh")).unwrap();
    assert!(
        demo.contains(&format!("dashboards:{dest}:ro")),
        "scripts/demo.sh"
    );
}

#[test]
fn every_packaged_source_file_exists() {
    for (src, _, _) in assets() {
        if src.starts_with("target/") {
            continue;
        }
        let found = match src.split_once('*') {
            None => root().join(&src).is_file(),
            Some((dir_prefix, suffix)) => {
                let (dir, prefix) = dir_prefix.rsplit_once('/').unwrap();
                std::fs::read_dir(root().join(dir)).unwrap().any(|e| {
                    let n = e.unwrap().file_name().to_string_lossy().into_owned();
                    n.starts_with(prefix) && n.ends_with(suffix)
                })
            }
        };
        assert!(found, "asset {src} matches no file");
    }
}

fn have(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `dpkg-deb -f`: the control fields (continuation lines folded in).
fn control(deb: &Path) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    let mut last = String::new();
    for line in text(run(Command::new("dpkg-deb").arg("-f").arg(deb))).lines() {
        if let Some(more) = line.strip_prefix(' ') {
            fields
                .entry(last.clone())
                .and_modify(|v: &mut String| v.push_str(more));
        } else if let Some((k, v)) = line.split_once(": ") {
            last = k.to_string();
            fields.insert(last.clone(), v.to_string());
        }
    }
    fields
}

#[test]
fn deb_package_holds_every_file_and_its_binary_runs_from_a_scratch_install() {
    let required = std::env::var_os("APITAP_REQUIRE_DEB").is_some();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    for (tool, ok) in [
        (
            "cargo-deb",
            have(Command::new(&cargo).args(["deb", "--version"])),
        ),
        ("dpkg-deb", have(Command::new("dpkg-deb").arg("--version"))),
    ] {
        if !ok {
            assert!(!required, "{tool} is not installed (APITAP_REQUIRE_DEB)");
            eprintln!("skipped: {tool} is not installed");
            return;
        }
    }

    // Pack the binary this run built: same target folder and profile.
    // --fast: the same files, lighter compression (6 s instead of 36 s).
    let bin = Path::new(env!("CARGO_BIN_EXE_apitap"));
    let profile_dir = bin.parent().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(root())
        .env("CARGO_TARGET_DIR", profile_dir.parent().unwrap())
        .args(["deb", "--no-build", "--fast", "--output"])
        .arg(tmp.path());
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("release") => {}
        Some("debug") => {
            cmd.args(["--profile", "dev"]);
        }
        Some(other) => {
            cmd.args(["--profile", other]);
        }
        None => panic!("binary path {}", bin.display()),
    }
    run(&mut cmd);
    let built: Vec<PathBuf> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let find = |ext: &str| {
        built
            .iter()
            .find(|p| p.extension().is_some_and(|e| e == ext))
            .unwrap_or_else(|| panic!("no .{ext} in {built:?}"))
            .clone()
    };
    let deb = find("deb");
    let ddeb = find("ddeb");

    // Control fields.
    let fields = control(&deb);
    let arch = text(run(Command::new("dpkg").arg("--print-architecture")));
    for (k, want) in [
        ("Package", "apitap".to_string()),
        ("Version", format!("{}-1", env!("CARGO_PKG_VERSION"))),
        ("Architecture", arch.trim().to_string()),
        ("Section", "net".into()),
        ("Priority", "optional".into()),
        ("Recommends", "prometheus".into()),
    ] {
        assert_eq!(fields.get(k), Some(&want), "{k} in {fields:?}");
    }
    assert!(fields["Maintainer"].contains('@'), "{fields:?}");
    assert!(fields["Description"].starts_with("Passive HTTP API monitor"));
    let depends: Vec<&str> = fields["Depends"]
        .split(',')
        .map(|d| d.split_whitespace().next().unwrap_or(""))
        .collect();
    for want in ["libc6", "libpcap0.8"] {
        assert!(depends.contains(&want), "Depends: {}", fields["Depends"]);
    }
    let mut unique = depends.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        depends.len(),
        "Depends: {}",
        fields["Depends"]
    );

    // Every file at its path, with its mode.
    let listing = text(run(Command::new("dpkg-deb").arg("--contents").arg(&deb)));
    let files: BTreeMap<String, String> = listing
        .lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let path = cols.last()?.trim_start_matches("./");
            Some((path.to_string(), cols.first()?.to_string()))
        })
        .collect();
    let mut expected: Vec<(String, &str)> = [
        ("usr/bin/apitap", "-rwxr-xr-x"),
        ("usr/lib/systemd/system/apitap.service", "-rw-r--r--"),
        ("etc/default/apitap", "-rw-r--r--"),
        ("etc/apitap/apitap.toml", "-rw-r--r--"),
        ("etc/logrotate.d/apitap", "-rw-r--r--"),
        ("usr/share/man/man8/apitap.8.gz", "-rw-r--r--"),
        ("usr/share/bash-completion/completions/apitap", "-rw-r--r--"),
        ("usr/share/zsh/vendor-completions/_apitap", "-rw-r--r--"),
        (
            "usr/share/fish/vendor_completions.d/apitap.fish",
            "-rw-r--r--",
        ),
        ("usr/share/apitap/alerts/apitap-rules.yml", "-rw-r--r--"),
        (
            "usr/share/apitap/dashboards/grafana-dashboards.yaml",
            "-rw-r--r--",
        ),
        (
            "usr/share/apitap/dashboards/grafana-datasource.yaml",
            "-rw-r--r--",
        ),
        ("usr/share/doc/apitap/README.md", "-rw-r--r--"),
        ("usr/share/doc/apitap/copyright", "-rw-r--r--"),
        ("usr/share/doc/apitap/alerts.md", "-rw-r--r--"),
    ]
    .into_iter()
    .map(|(p, m)| (p.to_string(), m))
    .collect();
    for d in dashboards() {
        expected.push((format!("usr/share/apitap/dashboards/{d}"), "-rw-r--r--"));
    }
    for (path, mode) in &expected {
        assert_eq!(
            files.get(path).map(String::as_str),
            Some(*mode),
            "{path} in\n{listing}"
        );
    }
    assert!(
        listing.lines().all(|l| l.contains(" 0/0 ")),
        "every file owned by root:\n{listing}"
    );

    // Conffiles, and maintainer scripts that neither enable nor start.
    let ctrl = tmp.path().join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&ctrl));
    let conffiles = std::fs::read_to_string(ctrl.join("conffiles")).unwrap();
    for f in [
        "/etc/apitap/apitap.toml",
        "/etc/default/apitap",
        "/etc/logrotate.d/apitap",
    ] {
        assert!(conffiles.lines().any(|l| l == f), "conffiles: {conffiles}");
    }
    let postinst = std::fs::read_to_string(ctrl.join("postinst")).unwrap();
    assert!(postinst.contains("daemon-reload"), "{postinst}");
    assert!(!postinst.contains("deb-systemd-invoke start"), "{postinst}");

    // The detached debug symbols.
    let dbg = text(run(Command::new("dpkg-deb").arg("--contents").arg(&ddeb)));
    assert!(
        dbg.contains("./usr/lib/debug/.build-id/") && dbg.contains(".debug"),
        "{dbg}"
    );

    // A scratch install.
    let sys = tmp.path().join("root");
    run(Command::new("dpkg").arg("-x").arg(&deb).arg(&sys));
    let version = text(run(
        Command::new(sys.join("usr/bin/apitap")).arg("--version")
    ));
    assert!(
        version.contains(env!("CARGO_PKG_VERSION")) && version.contains("rustc"),
        "{version}"
    );
    for (installed, source) in [
        (
            "usr/lib/systemd/system/apitap.service",
            "systemd/apitap.service",
        ),
        ("etc/apitap/apitap.toml", "packaging/apitap.toml"),
        ("etc/default/apitap", "packaging/apitap.default"),
    ] {
        assert_eq!(
            std::fs::read(sys.join(installed)).unwrap(),
            std::fs::read(root().join(source)).unwrap(),
            "{installed}"
        );
    }
    let mut man = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(
            std::fs::File::open(sys.join("usr/share/man/man8/apitap.8.gz")).unwrap(),
        ),
        &mut man,
    )
    .unwrap();
    assert_eq!(
        man,
        std::fs::read(root().join("packaging/man/apitap.8")).unwrap()
    );
    // What the unit names is in the package.
    let unit = std::fs::read_to_string(sys.join("usr/lib/systemd/system/apitap.service")).unwrap();
    for path in [
        "/usr/bin/apitap",
        "/etc/apitap/apitap.toml",
        "/etc/default/apitap",
    ] {
        assert!(unit.contains(path), "unit names {path}");
        assert!(sys.join(&path[1..]).is_file(), "{path} installed");
    }
    // Grafana's provisioning names the folder that holds the dashboards.
    let provisioned =
        provisioned_path(&sys.join("usr/share/apitap/dashboards/grafana-dashboards.yaml"));
    for d in dashboards() {
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(sys.join(&provisioned[1..]).join(&d)).unwrap())
                .unwrap();
        assert!(json["uid"].is_string(), "{d}");
    }
}
