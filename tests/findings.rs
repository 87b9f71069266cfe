//! Failure causes and findings on recorded captures, driven through the
//! library's pipeline (not the CLI), and the leak test: every output of
//! every capture, with debug logging on, holds none of the secrets the
//! capture sent.

mod common;

use apitap::capture::file::FileSource;
use apitap::capture::{PacketSource, SourceEvent};
use apitap::classify::findings::{Finding, FindingKind};
use apitap::classify::{redact, tls, Classifier, ClassifyConfig};
use apitap::decode::{Decoded, Decoder, DecoderConfig};
use apitap::flow::FlowConfig;
use apitap::http::exchange::Exchange;
use apitap::output::exchange_log::ExchangeLog;
use apitap::output::findings_log::FindingsLog;
use apitap::output::summary::Summary;
use apitap::pipeline::{ExchangeSink, Pipeline};
use base64::Engine as _;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

fn captures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/captures")
}

/// A shared in-memory output.
#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);
impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
impl Buf {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Everything one replay produced.
struct Replay {
    /// Classified exchanges, in delivery order.
    exchanges: Vec<Exchange>,
    /// The findings classification returned for them.
    findings: Vec<Finding>,
    exchange_log: String,
    findings_log: String,
    report: String,
}

/// Replay a capture through the pipeline. The pipeline does not hand
/// findings out yet, so a second classifier, fed the same exchanges in the
/// same order (hence in the same state), returns them.
fn replay(path: &Path, timeout_s: f64) -> Replay {
    let flow = FlowConfig {
        transaction_timeout_micros: (timeout_s * 1e6) as i64,
        ..FlowConfig::default()
    };
    let cfg = ClassifyConfig::default();
    let mut pipeline = Pipeline::new(
        DecoderConfig::default(),
        flow,
        Classifier::new(cfg.clone()).unwrap(),
    );
    let mut exchanges: Vec<Exchange> = Vec::new();
    let mut sink = |ex: &Exchange| exchanges.push(ex.clone());
    let mut source = FileSource::open(path.to_str().unwrap()).expect("capture opens");
    while let Some(ev) = source.next_event().expect("capture reads") {
        match ev {
            SourceEvent::Packet(p) => pipeline.packet(&p, &mut sink),
            SourceEvent::Tick(t) => pipeline.tick(t, &mut sink),
        }
    }
    pipeline.finish(&mut sink);

    let mut again = Classifier::new(cfg.clone()).unwrap();
    let xbuf = Buf::default();
    let fbuf = Buf::default();
    let mut xlog = ExchangeLog::new(Box::new(xbuf.clone()), cfg.credential_params.clone());
    let mut flog = FindingsLog::new(Box::new(fbuf.clone()), cfg.fold_interval_micros);
    let mut summary = Summary::default();
    let mut findings = Vec::new();
    for ex in &exchanges {
        let mut copy = ex.clone();
        copy.route = None;
        copy.host = None;
        copy.failure = None;
        let found = again.classify(&mut copy);
        assert_eq!(
            copy.failure, ex.failure,
            "re-classification is deterministic"
        );
        xlog.exchange(&copy);
        summary.exchange(&copy);
        for f in &found {
            flog.write(f);
            summary.finding(f);
        }
        findings.extend(found);
    }
    xlog.finish().unwrap();
    flog.finish().unwrap();
    let report = summary.render_with(&pipeline.stats(), source.truncation(), false);
    Replay {
        exchanges,
        findings,
        exchange_log: xbuf.text(),
        findings_log: fbuf.text(),
        report,
    }
}

fn client_port(ex: &Exchange) -> u64 {
    u64::from(ex.client.port())
}

#[test]
fn statuses_causes_and_credentials_match_truth() {
    let truth: Value = serde_json::from_str(
        &std::fs::read_to_string(captures().join("statuses.truth.json")).unwrap(),
    )
    .unwrap();
    let r = replay(&captures().join("statuses.pcap"), 30.0);
    let mut ours: BTreeMap<u64, Vec<&Exchange>> = BTreeMap::new();
    for ex in r.exchanges.iter().filter(|e| e.request.is_some()) {
        ours.entry(client_port(ex)).or_default().push(ex);
    }
    for v in ours.values_mut() {
        v.sort_by_key(|e| e.ts);
    }
    let mut want: BTreeMap<u64, Vec<&Value>> = BTreeMap::new();
    for t in truth["exchanges"].as_array().unwrap() {
        want.entry(t["client_port"].as_u64().unwrap())
            .or_default()
            .push(t);
    }
    let cred_kinds = [
        FindingKind::CleartextCredentials,
        FindingKind::CredentialsInUrl,
        FindingKind::CleartextSessionCookie,
    ];
    let mut expired_seen = 0;
    for (port, theirs) in &want {
        let mine = &ours[port];
        assert_eq!(mine.len(), theirs.len(), "port {port}");
        for (m, t) in mine.iter().zip(theirs) {
            let ctx = format!("port {port} seq {}", t["seq"]);
            assert_eq!(
                m.failure.map(|f| f.as_str()),
                t["expected_failure"].as_str(),
                "{ctx}"
            );
            let has_creds = m.findings.iter().any(|k| cred_kinds.contains(k));
            assert_eq!(has_creds, t["credentials"].as_bool().unwrap(), "{ctx}");
            if t["jwt_expired"].as_bool().unwrap() {
                expired_seen += 1;
            }
        }
    }
    assert_eq!(expired_seen, 2);
    assert!(r
        .findings_log
        .contains("\"kind\":\"cleartext_credentials\""));
    assert!(r.findings_log.contains("Authorization: Bearer <redacted, "));
    assert!(r.report.contains("session_expired"));
}

/// Third-party captures, when present: findings agree with the manifest's
/// independent counts.
#[test]
fn corpus_findings_match_manifest() {
    let Some(dir) = common::corpus_dir() else {
        eprintln!("corpus not present: skipped");
        return;
    };
    for m in common::manifest(&dir) {
        let file = m["file"].as_str().unwrap();
        let tags: Vec<&str> = m["tags"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        if tags.contains(&"http_not_over_tcp") || tags.contains(&"http_quoted_in_icmp_or_sflow") {
            continue;
        }
        let r = replay(&dir.join(file), 30.0);
        let kinds: Vec<FindingKind> = r
            .exchanges
            .iter()
            .flat_map(|e| e.findings.iter().copied())
            .collect();
        let n = |k: &str| m[k].as_u64().unwrap_or(0);
        if n("authorization_requests") + n("proxy_authorization_requests") > 0 {
            assert!(
                kinds.contains(&FindingKind::CleartextCredentials),
                "{file}: cleartext_credentials"
            );
        }
        if n("cookie_headers") > 0 && !tags.contains(&"lost_segment") {
            assert!(
                kinds.contains(&FindingKind::CleartextSessionCookie),
                "{file}: cleartext_session_cookie"
            );
        }
        if n("requests_without_host") > 0 && !tags.contains(&"lost_segment") {
            assert!(
                kinds.contains(&FindingKind::IpLiteralHost),
                "{file}: ip_literal_host for a missing Host"
            );
        }
        if n("http_requests") > 0 && n("authorization_requests") == 0 && n("cookie_headers") == 0 {
            assert!(
                !kinds.contains(&FindingKind::CleartextSessionCookie),
                "{file}: no Cookie was sent"
            );
        }
    }
}

/// ServerHello versions read from each segment that starts a handshake
/// record, compared with the manifest's (tshark's) counts.
#[test]
fn corpus_tls_versions_match_manifest() {
    let Some(dir) = common::corpus_dir() else {
        eprintln!("corpus not present: skipped");
        return;
    };
    let mut checked = 0;
    for m in common::manifest(&dir) {
        let file = m["file"].as_str().unwrap();
        let want = m["tls_server_hello_versions"].as_object().unwrap();
        if want.is_empty() || want.keys().any(|k| !k.starts_with("TLSv")) {
            continue;
        }
        let mut got: BTreeMap<String, u64> = BTreeMap::new();
        let mut legacy = 0;
        let mut source = FileSource::open(dir.join(file).to_str().unwrap()).unwrap();
        let mut decoder = Decoder::new(DecoderConfig::default());
        while let Some(ev) = source.next_event().unwrap() {
            let SourceEvent::Packet(p) = ev else { continue };
            if let Decoded::Tcp(seg) = decoder.decode(&p) {
                if let Some(sh) = tls::parse_server_hello(seg.payload).ok() {
                    let name = match tls::version_name(sh.version) {
                        "TLS 1.0" => "TLSv1",
                        "TLS 1.1" => "TLSv1.1",
                        "TLS 1.2" => "TLSv1.2",
                        "TLS 1.3" => "TLSv1.3",
                        other => other,
                    };
                    *got.entry(name.to_string()).or_default() += 1;
                    let a = seg.src;
                    if tls::legacy_tls_finding(
                        None,
                        Some(&sh),
                        seg.ts,
                        a,
                        a,
                        Some(FindingKind::LegacyTls.default_severity()),
                    )
                    .is_some()
                    {
                        legacy += 1;
                    }
                }
            }
        }
        let want: BTreeMap<String, u64> = want
            .iter()
            .map(|(k, v)| {
                let k = if k == "TLSv1.0" {
                    "TLSv1".to_string()
                } else {
                    k.clone()
                };
                (k, v.as_u64().unwrap())
            })
            .collect();
        // Retransmitted hellos may be counted twice by a per-segment reader:
        // at least the manifest's count of each version, and no other.
        for (k, n) in &want {
            assert!(
                got.get(k).copied().unwrap_or(0) >= *n,
                "{file}: {k}: {got:?} vs {want:?}"
            );
        }
        for k in got.keys() {
            assert!(want.contains_key(k), "{file}: unexpected {k}: {got:?}");
        }
        let tagged = m["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "legacy_tls");
        assert_eq!(legacy > 0, tagged, "{file}: legacy_tls");
        checked += 1;
    }
    assert!(checked > 0);
}

/// The secrets a request carried: credential header values (raw, after the
/// scheme, base64-decoded Basic and its parts), cookie values, credential
/// query values (raw and decoded), userinfo, and each part of every JWT.
fn secrets_of(ex: &Exchange, cfg: &ClassifyConfig) -> Vec<String> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    let Some(req) = &ex.request else {
        return Vec::new();
    };
    for (name, value) in req.headers.iter() {
        let n = String::from_utf8_lossy(name).to_ascii_lowercase();
        let cred =
            n == "authorization" || n == "proxy-authorization" || cfg.api_key_headers.contains(&n);
        if cred {
            let v = value.trim_ascii();
            out.push(v.to_vec());
            if let Some(sp) = v.iter().position(|&b| b == b' ') {
                let rest = v[sp + 1..].trim_ascii();
                out.push(rest.to_vec());
                if v[..sp].eq_ignore_ascii_case(b"basic") {
                    if let Ok(d) = base64::engine::general_purpose::STANDARD.decode(rest) {
                        out.extend(d.split(|&b| b == b':').map(<[u8]>::to_vec));
                        out.push(d);
                    }
                }
            }
        }
        if n == "cookie" {
            for pair in value.split(|&b| b == b';') {
                if let Some(eq) = pair.iter().position(|&b| b == b'=') {
                    out.push(pair[eq + 1..].to_vec());
                }
            }
        }
        for tok in apitap::classify::jwt::find_jwts(value, 16) {
            out.extend(tok.split(|&b| b == b'.').map(<[u8]>::to_vec));
        }
    }
    let t = &req.target;
    if let Some(q) = t.iter().position(|&b| b == b'?') {
        for pair in t[q + 1..].split(|&b| b == b'&') {
            if let Some(eq) = pair.iter().position(|&b| b == b'=') {
                if redact::is_credential_name(&pair[..eq], &cfg.credential_params) {
                    out.push(pair[eq + 1..].to_vec());
                    out.push(redact::percent_decode(&pair[eq + 1..]));
                }
            }
        }
    }
    for tok in apitap::classify::jwt::find_jwts(t, 16) {
        out.extend(tok.split(|&b| b == b'.').map(<[u8]>::to_vec));
    }
    if let Some(p) = t.windows(3).position(|w| w == b"://") {
        let rest = &t[p + 3..];
        let auth = &rest[..rest.iter().position(|&b| b == b'/').unwrap_or(rest.len())];
        if let Some(at) = auth.iter().rposition(|&b| b == b'@') {
            out.push(auth[..at].to_vec());
            out.extend(auth[..at].split(|&b| b == b':').map(<[u8]>::to_vec));
        }
    }
    out.into_iter()
        // Short values ("1", "on") would match unrelated text.
        .filter(|s| s.len() >= 6)
        .map(|s| String::from_utf8_lossy(&s).into_owned())
        .collect()
}

#[test]
fn no_output_holds_a_secret_the_capture_sent() {
    let logs = Buf::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let cfg = ClassifyConfig::default();
    let mut files: Vec<PathBuf> = std::fs::read_dir(captures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pcap"))
        .collect();
    if let Some(dir) = common::corpus_dir() {
        for m in common::manifest(&dir) {
            files.push(dir.join(m["file"].as_str().unwrap()));
        }
    }
    files.sort();
    let mut secrets_total = 0;
    tracing::subscriber::with_default(subscriber, || {
        for f in &files {
            let before = logs.0.lock().unwrap().len();
            let r = replay(f, 30.0);
            let debug_log = logs.text()[before..].to_string();
            let secrets: Vec<String> = r
                .exchanges
                .iter()
                .flat_map(|e| secrets_of(e, &cfg))
                .collect();
            secrets_total += secrets.len();
            let finding_debug = format!("{:?}", r.findings);
            for (what, text) in [
                ("exchange log", &r.exchange_log),
                ("findings log", &r.findings_log),
                ("report", &r.report),
                ("debug log", &debug_log),
                ("findings (Debug)", &finding_debug),
            ] {
                for s in &secrets {
                    assert!(
                        !text.contains(s.as_str()),
                        "{}: the {what} holds a secret the capture sent ({} bytes)",
                        f.display(),
                        s.len()
                    );
                }
            }
        }
    });
    assert!(secrets_total > 0, "the captures carry secrets to look for");
}
