//! Build metadata for `apitap_build_info`: the git revision, the compiler
//! and the target triple. Every value falls back to `unknown`; a build never
//! fails for lack of git.

use std::process::Command;

fn output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    let revision = std::env::var("APITAP_REVISION")
        .ok()
        .or_else(|| output("git", &["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_version = output(&rustc, &["--version"])
        .and_then(|v| v.split_whitespace().nth(1).map(str::to_string))
        .unwrap_or_else(|| "unknown".into());
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=APITAP_REVISION={revision}");
    println!("cargo:rustc-env=APITAP_RUSTC={rustc_version}");
    println!("cargo:rustc-env=APITAP_TARGET={target}");
    println!("cargo:rerun-if-env-changed=APITAP_REVISION");
    println!("cargo:rerun-if-changed=build.rs");
    // Rebuild when HEAD moves (works in worktrees too).
    for p in ["HEAD", "logs/HEAD"] {
        if let Some(path) = output("git", &["rev-parse", "--git-path", p]) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
