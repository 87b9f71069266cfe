//! Dashboards and alert rules (issue 6).
//!
//! * `dashboards_lint`: every dashboard in dashboards/ is stable under a
//!   load/save round trip, has a stable uid, the datasource/job/instance
//!   variables, and every panel uses the datasource variable, has a unit, a
//!   description and a unique id; every query's selectors carry the job and
//!   instance matchers and every range is `$__rate_interval`.
//! * `rules_promtool`: `promtool check rules` and `promtool test rules`
//!   pass, and every alert has a unit test and a runbook section.
//! * `dashboards_e2e`: Debian's Prometheus scrapes apitap while it replays
//!   tests/captures/demo.pcap (paced, looping) with the rules loaded; every
//!   panel query, variable query, recording rule and alert expression is
//!   run through Prometheus' HTTP API: it must parse, name only metrics of
//!   apitap's exposition (or recording rules), and return the series the
//!   capture produces. Skipped when /usr/bin/prometheus is missing.

mod dashboards_support;

use dashboards_support::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const UIDS: &[(&str, &str)] = &[
    ("apitap-capture.json", "apitap-capture"),
    ("apitap-exposure.json", "apitap-exposure"),
    ("apitap-failures.json", "apitap-failures"),
    ("apitap-overview.json", "apitap-overview"),
];

const CAUSES: &[&str] = &[
    "malformed",
    "timeout",
    "connection_reset",
    "session_expired",
    "auth_missing",
    "auth_rejected",
    "forbidden",
    "endpoint_gone",
    "not_found",
    "rate_limited",
    "bad_request",
    "upstream_failure",
    "server_error",
    "empty_response",
];
const KINDS: &[&str] = &[
    "cleartext_credentials",
    "credentials_in_url",
    "cleartext_session_cookie",
    "insecure_cookie",
    "weak_jwt",
    "ip_literal_host",
    "public_plaintext_endpoint",
    "unsafe_url",
    "deprecated_endpoint",
    "verbose_error",
    "legacy_tls",
    "endpoint_sprawl",
    "route_variants",
];

/// Alerts that must stay quiet while apitap replays the demo capture
/// (nothing is lost, apitap is up and capturing, no bound is reached, its
/// logs are written);
/// every other alert must fire on it.
const QUIET: &[&str] = &[
    "ApitapCaptureLossHigh",
    "ApitapDown",
    "ApitapNotCapturing",
    "ApitapLabelOverflow",
    "ApitapLogLinesLost",
];

fn alert_names() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("alerts/apitap-rules.yml")).unwrap();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|n| n.trim().to_string())
        .collect()
}

#[test]
fn dashboards_lint() {
    let mut errs = Vec::new();
    let ds = dashboards();
    assert_eq!(
        ds.iter().map(|d| d.0.as_str()).collect::<Vec<_>>(),
        UIDS.iter().map(|u| u.0).collect::<Vec<_>>(),
        "the dashboards in dashboards/"
    );
    for (file, d, text) in &ds {
        let title = d["title"].as_str().unwrap_or(file);
        let mut e = |m: String| errs.push(format!("{file} ({title}): {m}"));
        // round trip
        let again = serde_json::to_string_pretty(d).unwrap() + "\n";
        if &again != text {
            e("not stable under a load/save round trip (run dashboards/generate.py)".into());
        }
        let want_uid = UIDS.iter().find(|u| u.0 == file).unwrap().1;
        if d["uid"] != want_uid {
            e(format!("uid {} (want {want_uid})", d["uid"]));
        }
        // variables
        let vars: BTreeMap<&str, &Value> = d["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| Some((v["name"].as_str()?, v)))
            .collect();
        match vars.get("datasource") {
            Some(v) if v["type"] == "datasource" && v["query"] == "prometheus" => {}
            _ => e("no datasource variable of type prometheus".into()),
        }
        for n in ["job", "instance"] {
            if !vars.contains_key(n) {
                e(format!("no {n} variable"));
            }
        }
        if title.contains("Overview") || title.contains("Failures") {
            for n in ["server", "route"] {
                if !vars.contains_key(n) {
                    e(format!("no {n} drill-down variable"));
                }
            }
        }
        for (n, v) in &vars {
            if *n != "datasource" && v["datasource"]["uid"] != "${datasource}" {
                e(format!("variable {n} does not use $datasource"));
            }
        }
        // panels
        let mut ids = BTreeSet::new();
        for p in panels(d) {
            let pt = p["title"].as_str().unwrap_or("?");
            let mut e = |m: &str| errs.push(format!("{file} ({title}), panel {pt:?}: {m}"));
            if !ids.insert(p["id"].as_i64().unwrap_or(-1)) {
                e(&format!("duplicate panel id {}", p["id"]));
            }
            if p["datasource"]["uid"] != "${datasource}" {
                e("panel datasource is not ${datasource}");
            }
            if p["fieldConfig"]["defaults"]["unit"]
                .as_str()
                .unwrap_or("")
                .is_empty()
            {
                e("no unit");
            }
            if p["description"].as_str().unwrap_or("").trim().is_empty() {
                e("no description");
            }
            let targets = p["targets"].as_array().cloned().unwrap_or_default();
            if targets.is_empty() {
                e("no queries");
            }
            for t in &targets {
                let r = t["refId"].as_str().unwrap_or("?");
                if t["datasource"]["uid"] != "${datasource}" {
                    e(&format!("query {r}: datasource is not ${{datasource}}"));
                }
                let expr = t["expr"].as_str().unwrap_or("");
                let (sels, ranges) = scan(expr);
                if sels.is_empty() {
                    e(&format!("query {r}: no metric selector in {expr:?}"));
                }
                for s in &sels {
                    let m = s.matchers.as_deref().unwrap_or("");
                    if !m.contains("job=~\"$job\"") || !m.contains("instance=~\"$instance\"") {
                        e(&format!(
                            "query {r}: selector {} lacks job/instance",
                            s.text()
                        ));
                    }
                }
                for rg in &ranges {
                    if rg != "$__rate_interval" {
                        e(&format!(
                            "query {r}: range [{rg}] is not [$__rate_interval]"
                        ));
                    }
                }
            }
        }
    }
    assert!(errs.is_empty(), "{}", errs.join("\n"));
}

/// The committed JSON is what dashboards/generate.py writes.
#[test]
fn dashboards_match_generator() {
    let tmp = tempfile::tempdir().unwrap();
    let Ok(out) = Command::new("python3")
        .arg(repo().join("dashboards/generate.py"))
        .arg(tmp.path())
        .output()
    else {
        eprintln!("python3 not installed; skipping the generator check");
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (file, _, text) in dashboards() {
        let fresh = std::fs::read_to_string(tmp.path().join(&file)).unwrap();
        assert!(
            fresh == text,
            "dashboards/{file} differs from what dashboards/generate.py writes; run it"
        );
    }
}

#[test]
fn rules_promtool_and_runbooks() {
    let alerts = alert_names();
    assert!(alerts.len() >= 8, "alerts: {alerts:?}");
    let docs = std::fs::read_to_string(repo().join("docs/alerts.md")).unwrap();
    let tests = std::fs::read_to_string(repo().join("alerts/apitap-rules.test.yml")).unwrap();
    let rules = std::fs::read_to_string(repo().join("alerts/apitap-rules.yml")).unwrap();
    for a in &alerts {
        assert!(
            docs.contains(&format!("## {a}\n")),
            "docs/alerts.md has no section \"## {a}\""
        );
        assert!(
            tests.contains(&format!("alertname: {a}\n")),
            "alerts/apitap-rules.test.yml has no test for {a}"
        );
        assert!(
            rules.contains(&format!("alerts.md#{}\"", a.to_lowercase())),
            "{a}: runbook_url does not point at its docs/alerts.md section"
        );
    }
    let Ok(out) = Command::new("promtool").arg("--version").output() else {
        eprintln!("promtool not installed; skipping promtool check/test rules");
        return;
    };
    assert!(out.status.success());
    let dir = repo().join("alerts");
    for args in [
        &["check", "rules", "apitap-rules.yml"][..],
        &["test", "rules", "apitap-rules.test.yml"][..],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Label values a result must cover: the matcher's values when the query
/// restricts the label, else every value the demo capture produces.
fn expected_values(expr: &str, label: &str) -> Option<Vec<String>> {
    let all: &[&str] = match label {
        "cause" => CAUSES,
        "kind" => KINDS,
        "severity" => &["high", "medium", "low"],
        "protocol" => &["http", "tls", "other"],
        "tls_version" => &["tls1.0", "tls1.2", "tls1.3"],
        _ => return None,
    };
    Some(matcher_values(expr, label).unwrap_or_else(|| all.iter().map(|s| s.to_string()).collect()))
}

/// Check one query's result: data, and full coverage of the labels above
/// (for results that are grouped by them).
fn check_result(expr: &str, result: &[Value]) -> Result<(), String> {
    if result.is_empty() {
        return Err("returned no data".into());
    }
    for label in ["cause", "kind", "severity", "protocol", "tls_version"] {
        let got: BTreeSet<&str> = result
            .iter()
            .filter_map(|r| r["metric"][label].as_str())
            .collect();
        if got.is_empty() {
            continue;
        }
        let missing: Vec<String> = expected_values(expr, label)
            .unwrap_or_default()
            .into_iter()
            .filter(|v| !got.contains(v.as_str()))
            .collect();
        if !missing.is_empty() {
            return Err(format!("no series for {label} {missing:?} (got {got:?})"));
        }
    }
    Ok(())
}

#[test]
fn dashboards_e2e() {
    let prometheus = std::path::Path::new("/usr/bin/prometheus");
    if !exists(prometheus) {
        eprintln!("skipping: /usr/bin/prometheus not installed (apt-get install prometheus)");
        return;
    }
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let capture = repo().join("tests/captures/demo.pcap");
    let rules = repo().join("alerts/apitap-rules.yml");

    // apitap, replaying the demo capture at 20x, looping
    let apitap_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut apitap = Proc(
        Command::new(env!("CARGO_BIN_EXE_apitap"))
            .arg("-r")
            .arg(&capture)
            .args([
                "--replay-speed",
                "20",
                "--replay-loop",
                "--web.listen-address",
            ])
            .arg(apitap_addr.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start apitap"),
        "apitap",
    );
    wait_ready(&mut apitap, apitap_addr, "/-/ready", 20).unwrap();

    // Prometheus scraping it every second, with the rules loaded
    let prom_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = tmp.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: apitap\n    static_configs:\n      - targets: ['{apitap_addr}']\n",
            rules.display()
        ),
    )
    .unwrap();
    let mut prom = Proc(
        Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                tmp.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={prom_addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
        "prometheus",
    );
    wait_ready(&mut prom, prom_addr, "/-/ready", 30).unwrap();

    // Wait until the replay has shown every cause and kind to Prometheus,
    // the rate windows hold enough scrapes and the rules have run.
    let instance = apitap_addr.to_string();
    let ready_checks = [
        (
            "count(count by (cause) (apitap_api_failures_total{job=\"apitap\"}))".to_string(),
            CAUSES.len() as f64,
        ),
        (
            "count(count by (kind) (apitap_exposure_findings_total{job=\"apitap\"}))".to_string(),
            KINDS.len() as f64,
        ),
        ("count_over_time(up{job=\"apitap\"}[1m])".to_string(), 20.0),
        (
            "count(job_server_route:apitap_http_request_duration_seconds:p95_5m > 0)".to_string(),
            1.0,
        ),
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pending: Vec<&String> = ready_checks
            .iter()
            .filter(|(q, want)| {
                let got = prom_query(prom_addr, q)
                    .ok()
                    .and_then(|r| r.first()?["value"][1].as_str()?.parse::<f64>().ok());
                got.is_none_or(|g| g < *want)
            })
            .map(|(q, _)| q)
            .collect();
        if pending.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after 60 s Prometheus still lacks: {pending:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    let (_, exposition) = http_get(apitap_addr, "/metrics").unwrap();
    let names = exposition_names(&exposition);
    let rules_json: Value =
        serde_json::from_str(&http_get(prom_addr, "/api/v1/rules").unwrap().1).expect("rules JSON");
    let mut recorded = BTreeSet::new();
    let mut rule_list = Vec::new();
    for g in rules_json["data"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
    {
        for r in g["rules"].as_array().into_iter().flatten() {
            if r["type"] == "recording" {
                recorded.insert(r["name"].as_str().unwrap().to_string());
            }
            rule_list.push(r.clone());
        }
    }
    let alerts = alert_names();
    assert_eq!(
        rule_list.iter().filter(|r| r["type"] == "alerting").count(),
        alerts.len(),
        "Prometheus loaded a different set of alerts"
    );

    let mut errs = Vec::new();
    let mut n_queries = 0;
    // every name must be in the exposition (dashboards) or a recording rule / up (rules)
    let unknown = |expr: &str, rules_ok: bool| -> Vec<String> {
        scan(expr)
            .0
            .iter()
            .map(|s| s.name.clone())
            .filter(|n| !(names.contains(n) || rules_ok && (recorded.contains(n) || n == "up")))
            .collect()
    };

    for (_, d, _) in dashboards() {
        let title = d["title"].as_str().unwrap_or("?").to_string();
        // variable queries: label_values(selector, label)
        for v in d["templating"]["list"].as_array().into_iter().flatten() {
            let Some(def) = v["definition"].as_str() else {
                continue;
            };
            let inner = def
                .strip_prefix("label_values(")
                .and_then(|s| s.rsplit_once(','))
                .map(|(sel, _)| substitute(sel, &instance));
            let Some(sel) = inner else {
                errs.push(format!(
                    "dashboard {title:?}, variable {}: {def:?}",
                    v["name"]
                ));
                continue;
            };
            n_queries += 1;
            let bad = unknown(&sel, false);
            match prom_query(prom_addr, &sel) {
                _ if !bad.is_empty() => errs.push(format!(
                    "dashboard {title:?}, variable {}: unknown metrics {bad:?}",
                    v["name"]
                )),
                Ok(r) if !r.is_empty() => {}
                other => errs.push(format!(
                    "dashboard {title:?}, variable {}: {sel}: {other:?}",
                    v["name"]
                )),
            }
        }
        for q in queries(&d) {
            n_queries += 1;
            let expr = substitute(&q.expr, &instance);
            let bad = unknown(&expr, false);
            if !bad.is_empty() {
                errs.push(format!(
                    "{}: names metrics apitap does not export: {bad:?}",
                    q.place()
                ));
            }
            match prom_query(prom_addr, &expr).and_then(|r| check_result(&expr, &r)) {
                Ok(()) => {}
                Err(m) => errs.push(format!("{}: {m}\n    {expr}", q.place())),
            }
        }
    }

    for r in &rule_list {
        n_queries += 1;
        let name = r["name"].as_str().unwrap_or("?");
        let what = format!("{} rule {name}", r["type"].as_str().unwrap_or("?"));
        let expr = r["query"].as_str().unwrap_or("");
        if r["health"] != "ok" {
            errs.push(format!("{what}: health {} {}", r["health"], r["lastError"]));
        }
        let bad = unknown(expr, true);
        if !bad.is_empty() {
            errs.push(format!("{what}: names unknown metrics {bad:?}"));
        }
        let res = prom_query(prom_addr, expr);
        let quiet = QUIET.contains(&name);
        match (&res, quiet) {
            (Err(m), _) => errs.push(format!("{what}: {m}\n    {expr}")),
            (Ok(v), true) if !v.is_empty() => {
                errs.push(format!("{what}: fires on the healthy demo replay: {v:?}"))
            }
            (Ok(v), false) => {
                if let Err(m) = check_result(expr, v) {
                    errs.push(format!("{what}: {m}\n    {expr}"));
                }
            }
            _ => {}
        }
        if r["type"] == "alerting" {
            for k in ["summary", "description", "runbook_url"] {
                if r["annotations"][k].as_str().unwrap_or("").is_empty() {
                    errs.push(format!("{what}: no {k} annotation"));
                }
            }
        }
        // every selector of a quiet alert must still find its series
        if quiet {
            for s in scan(expr).0 {
                let sel = s.text();
                match prom_query(prom_addr, &sel) {
                    Ok(v) if !v.is_empty() => {}
                    other => errs.push(format!("{what}: selector {sel} finds nothing: {other:?}")),
                }
            }
        }
    }

    eprintln!(
        "dashboards_e2e: {n_queries} queries and rules checked against Prometheus in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    drop(prom);
    drop(apitap);
    assert!(
        errs.is_empty(),
        "{} problem(s):\n{}",
        errs.len(),
        errs.join("\n")
    );
}
