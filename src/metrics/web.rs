//! `--web.config.file`: TLS, client certificates, basic auth and extra
//! response headers for the listener, in the Prometheus exporter-toolkit
//! web-config format (the YAML that `promtool check web-config` checks).
//!
//! Contract:
//! - [`WebSettings::load`] reads and validates the whole file: unknown keys,
//!   unreadable certificates or keys, bad bcrypt hashes and options this
//!   build cannot honour are errors naming the key, so apitap never serves
//!   with less protection than the file asks for. At start such an error
//!   is fatal (exit 2).
//! - While serving, [`WebWatch::current`] re-reads the file, as the
//!   exporter toolkit does, so new passwords and certificates take effect
//!   without a restart: it is asked on every new connection and request,
//!   and re-parses only when the bytes of the file or of a certificate, key
//!   or CA file it names changed (compared by SHA-256). A new file that
//!   fails validation, or that adds or removes `tls_server_config` (the
//!   listener's protocol is fixed at start, as in the toolkit), is not used:
//!   the last good settings stay and one warning says why, once per change
//!   of the files.
//! - Error texts name keys and paths, never values: quoted values in YAML
//!   errors are replaced by `"…"` (a password pasted where a hash belongs
//!   must not reach the log).
//! - Supported: `tls_server_config` (`cert_file`, `key_file`,
//!   `client_auth_type` NoClientCert / VerifyClientCertIfGiven /
//!   RequireAndVerifyClientCert, `client_ca_file`, `min_version`,
//!   `max_version` (TLS 1.2 and 1.3; an older minimum is raised to 1.2),
//!   `prefer_server_cipher_suites`), `http_server_config` (`headers` — the
//!   same five security headers the toolkit allows —, `http2` accepted and
//!   ignored: the listener speaks HTTP/1.1), `basic_auth_users` (bcrypt).
//! - Refused with a reason: `cipher_suites`, `curve_preferences`,
//!   `client_allowed_sans`, and the toolkit's `RequestClientCert` /
//!   `RequireAnyClientCert` (which accept unverified certificates).
//! - [`BasicAuth::check`] is constant in the user name (an unknown user costs
//!   one bcrypt run too) and caches successful checks by a SHA-256 of the
//!   credentials, so a scrape every few seconds costs no bcrypt run.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
#[error("--web.config.file {}: {reason}", path.display())]
pub struct WebConfigError {
    pub path: PathBuf,
    pub reason: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct WebFile {
    tls_server_config: Option<TlsFile>,
    http_server_config: Option<HttpFile>,
    basic_auth_users: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct TlsFile {
    cert_file: Option<String>,
    key_file: Option<String>,
    client_auth_type: Option<String>,
    client_ca_file: Option<String>,
    min_version: Option<String>,
    max_version: Option<String>,
    cipher_suites: Option<Vec<String>>,
    curve_preferences: Option<Vec<String>>,
    prefer_server_cipher_suites: Option<bool>,
    client_allowed_sans: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct HttpFile {
    http2: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
}

/// The headers the exporter toolkit lets a web config set.
const ALLOWED_HEADERS: [&str; 5] = [
    "Strict-Transport-Security",
    "X-Content-Type-Options",
    "X-Frame-Options",
    "X-XSS-Protection",
    "Content-Security-Policy",
];

/// The validated file.
#[derive(Clone)]
pub struct WebSettings {
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub auth: Option<Arc<BasicAuth>>,
    /// Extra response headers, names canonical.
    pub headers: Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)>,
    /// The certificate, key and CA files the settings were read from.
    pub files: Vec<PathBuf>,
}

impl std::fmt::Debug for WebSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSettings")
            .field("tls", &self.tls.is_some())
            .field("basic_auth", &self.auth.is_some())
            .field("headers", &self.headers)
            .finish()
    }
}

impl WebSettings {
    /// Read and validate `path` (see the module doc).
    pub fn load(path: &Path) -> Result<WebSettings, WebConfigError> {
        let err = |reason: String| WebConfigError {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base).map_err(err)
    }

    /// Parse the YAML text; relative file names are taken from `base` (the
    /// config file's folder), as the toolkit does.
    pub fn parse(text: &str, base: &Path) -> Result<WebSettings, String> {
        let file: WebFile = if text.trim().is_empty() {
            WebFile::default()
        } else {
            serde_norway::from_str(text).map_err(|e| without_values(&e.to_string()))?
        };
        let mut files = Vec::new();
        let tls = match file.tls_server_config {
            Some(t) => {
                files.extend(
                    [&t.cert_file, &t.key_file, &t.client_ca_file]
                        .into_iter()
                        .flatten()
                        .map(|f| resolve(base, f)),
                );
                Some(Arc::new(tls_config(t, base)?))
            }
            None => None,
        };
        let auth = match file.basic_auth_users {
            Some(users) if !users.is_empty() => Some(Arc::new(BasicAuth::new(users)?)),
            _ => None,
        };
        let mut headers = Vec::new();
        if let Some(h) = file.http_server_config {
            let _ = h.http2;
            for (name, value) in h.headers.unwrap_or_default() {
                let Some(canon) = ALLOWED_HEADERS
                    .iter()
                    .find(|a| a.eq_ignore_ascii_case(&name))
                else {
                    return Err(format!(
                        "http_server_config.headers: {name:?} cannot be configured (allowed: {})",
                        ALLOWED_HEADERS.join(", ")
                    ));
                };
                let v = hyper::header::HeaderValue::from_str(&value).map_err(|_| {
                    format!("http_server_config.headers.{name}: not a valid header value")
                })?;
                headers.push((hyper::header::HeaderName::from_static(lower(canon)), v));
            }
        }
        Ok(WebSettings {
            tls,
            auth,
            headers,
            files,
        })
    }

    /// No TLS, no auth, no headers: the listener without a web config.
    pub fn plain() -> WebSettings {
        WebSettings {
            tls: None,
            auth: None,
            headers: Vec::new(),
            files: Vec::new(),
        }
    }
}

/// `text` with every double-quoted part replaced by `"…"`: YAML errors
/// quote the offending value (`invalid type: string "…"`), key names come
/// in backticks and stay.
fn without_values(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('"') {
        out.push_str(&rest[..open]);
        out.push_str("\"…\"");
        match rest[open + 1..].find('"') {
            Some(close) => rest = &rest[open + 1 + close + 1..],
            None => {
                rest = "";
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

/// What identifies one version of a file: a SHA-256 of its bytes. File
/// times are coarse (a kernel tick), so a same-size rewrite right after a
/// read could keep its mtime and be missed; these files are a few KiB, and
/// reading them per check costs microseconds.
type Stamp = [u8; 32];

fn stamp(path: &Path) -> Option<Stamp> {
    let bytes = std::fs::read(path).ok()?;
    ring::digest::digest(&ring::digest::SHA256, &bytes)
        .as_ref()
        .try_into()
        .ok()
}

/// The web config file as served (see the module doc).
pub struct WebWatch {
    path: PathBuf,
    state: Mutex<Watched>,
}

struct Watched {
    current: Arc<WebSettings>,
    /// Stamps of the file and the files it names, when `current` was read.
    stamps: Vec<Option<Stamp>>,
    /// Stamps of the last version refused (warned about once).
    refused: Option<Vec<Option<Stamp>>>,
}

impl WebWatch {
    /// Read and validate `path` (see [`WebSettings::load`]).
    pub fn load(path: &Path) -> Result<WebWatch, WebConfigError> {
        // Stamps first: a change while loading is seen by the next check.
        let before = stamp(path);
        let current = WebSettings::load(path)?;
        let mut stamps = vec![before];
        stamps.extend(current.files.iter().map(|f| stamp(f)));
        Ok(WebWatch {
            path: path.to_path_buf(),
            state: Mutex::new(Watched {
                current: Arc::new(current),
                stamps,
                refused: None,
            }),
        })
    }

    /// The settings to serve with now, re-read if the files changed. Runs
    /// bcrypt when it re-reads: call it off the async threads.
    pub fn current(&self) -> Arc<WebSettings> {
        // The state is only assigned whole, so a panic elsewhere while
        // holding the lock cannot leave it half-written.
        let mut w = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut now = vec![stamp(&self.path)];
        now.extend(w.current.files.iter().map(|f| stamp(f)));
        if now == w.stamps || w.refused.as_ref() == Some(&now) {
            return w.current.clone();
        }
        let tls_before = w.current.tls.is_some();
        match WebSettings::load(&self.path) {
            Ok(new) if new.tls.is_some() != tls_before => {
                tracing::warn!(
                    file = %self.path.display(),
                    "web config: tls_server_config was added or removed, which needs a \
                     restart; serving with the previous web config"
                );
                w.refused = Some(now);
            }
            Ok(new) => {
                // Stamps of the files the new version names.
                let mut stamps = vec![now[0]];
                stamps.extend(new.files.iter().map(|f| stamp(f)));
                w.current = Arc::new(new);
                w.stamps = stamps;
                w.refused = None;
                tracing::info!(file = %self.path.display(), "web config reloaded");
            }
            Err(e) => {
                tracing::warn!("{e}; serving with the previous web config until the file is fixed");
                w.refused = Some(now);
            }
        }
        w.current.clone()
    }
}

fn lower(canon: &str) -> &'static str {
    match canon {
        "Strict-Transport-Security" => "strict-transport-security",
        "X-Content-Type-Options" => "x-content-type-options",
        "X-Frame-Options" => "x-frame-options",
        "X-XSS-Protection" => "x-xss-protection",
        _ => "content-security-policy",
    }
}

fn resolve(base: &Path, file: &str) -> PathBuf {
    let p = Path::new(file);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn tls_version(key: &str, v: &str) -> Result<u8, String> {
    match v {
        "TLS10" => Ok(10),
        "TLS11" => Ok(11),
        "TLS12" => Ok(12),
        "TLS13" => Ok(13),
        other => Err(format!(
            "tls_server_config.{key}: {other:?} is not one of TLS10, TLS11, TLS12, TLS13"
        )),
    }
}

fn tls_config(t: TlsFile, base: &Path) -> Result<rustls::ServerConfig, String> {
    for (key, given) in [
        (
            "cipher_suites",
            t.cipher_suites.is_some_and(|v| !v.is_empty()),
        ),
        (
            "curve_preferences",
            t.curve_preferences.is_some_and(|v| !v.is_empty()),
        ),
        (
            "client_allowed_sans",
            t.client_allowed_sans.is_some_and(|v| !v.is_empty()),
        ),
    ] {
        if given {
            return Err(format!(
                "tls_server_config.{key} is not supported by apitap; remove it \
                 (apitap offers rustls' safe defaults)"
            ));
        }
    }
    let cert_file = t
        .cert_file
        .ok_or("tls_server_config.cert_file is required")?;
    let key_file = t.key_file.ok_or("tls_server_config.key_file is required")?;
    let cert_path = resolve(base, &cert_file);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| format!("tls_server_config.cert_file {}: {e}", cert_path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "tls_server_config.cert_file {}: holds no certificate",
            cert_path.display()
        ));
    }
    let key_path = resolve(base, &key_file);
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| format!("tls_server_config.key_file {}: {e}", key_path.display()))?;

    let min = tls_version("min_version", t.min_version.as_deref().unwrap_or("TLS12"))?;
    let max = tls_version("max_version", t.max_version.as_deref().unwrap_or("TLS13"))?;
    if max < 12 {
        return Err("tls_server_config.max_version: apitap speaks TLS 1.2 and 1.3 only".into());
    }
    if min > max {
        return Err("tls_server_config: min_version is above max_version".into());
    }
    let mut versions: Vec<&'static rustls::SupportedProtocolVersion> = Vec::new();
    if min <= 12 {
        versions.push(&rustls::version::TLS12);
    }
    if max >= 13 {
        versions.push(&rustls::version::TLS13);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| format!("tls_server_config: {e}"))?;

    let auth_type = t.client_auth_type.as_deref().unwrap_or("NoClientCert");
    let ca = |required: bool| -> Result<Option<rustls::RootCertStore>, String> {
        let Some(f) = &t.client_ca_file else {
            return if required {
                Err(format!(
                    "tls_server_config.client_ca_file is required with client_auth_type {auth_type}"
                ))
            } else {
                Ok(None)
            };
        };
        let p = resolve(base, f);
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(&p)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("tls_server_config.client_ca_file {}: {e}", p.display()))?;
        for c in certs {
            roots
                .add(c)
                .map_err(|e| format!("tls_server_config.client_ca_file {}: {e}", p.display()))?;
        }
        if roots.is_empty() {
            return Err(format!(
                "tls_server_config.client_ca_file {}: holds no certificate",
                p.display()
            ));
        }
        Ok(Some(roots))
    };
    let verifier = |roots: rustls::RootCertStore, optional: bool| {
        let b = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        );
        let b = if optional {
            b.allow_unauthenticated()
        } else {
            b
        };
        b.build()
            .map_err(|e| format!("tls_server_config.client_ca_file: {e}"))
    };
    let builder = match auth_type {
        "NoClientCert" | "" => {
            // A CA file without client auth is allowed and unused, as in
            // the toolkit; still check it is readable.
            ca(false)?;
            builder.with_no_client_auth()
        }
        "VerifyClientCertIfGiven" => {
            let roots = ca(true)?.unwrap_or_else(rustls::RootCertStore::empty);
            builder.with_client_cert_verifier(verifier(roots, true)?)
        }
        "RequireAndVerifyClientCert" => {
            let roots = ca(true)?.unwrap_or_else(rustls::RootCertStore::empty);
            builder.with_client_cert_verifier(verifier(roots, false)?)
        }
        "RequestClientCert" | "RequireAnyClientCert" => {
            return Err(format!(
                "tls_server_config.client_auth_type {auth_type} accepts unverified \
                 certificates and is not supported; use VerifyClientCertIfGiven or \
                 RequireAndVerifyClientCert"
            ))
        }
        other => {
            return Err(format!(
                "tls_server_config.client_auth_type: unknown value {other:?}"
            ))
        }
    };
    let mut cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls_server_config: certificate and key do not fit: {e}"))?;
    cfg.ignore_client_order = t.prefer_server_cipher_suites.unwrap_or(true);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Most cached successful logins.
const AUTH_CACHE_ENTRIES: usize = 256;

/// `basic_auth_users`: user name → bcrypt hash.
pub struct BasicAuth {
    users: BTreeMap<String, String>,
    /// A valid hash compared against when the user is unknown, so the time
    /// taken does not tell which users exist.
    decoy: String,
    /// SHA-256 of "user:password" pairs that passed.
    ok: Mutex<HashSet<[u8; 32]>>,
}

impl BasicAuth {
    fn new(users: BTreeMap<String, String>) -> Result<BasicAuth, String> {
        for (user, hash) in &users {
            if user.contains(':') {
                return Err(format!("basic_auth_users: user name {user:?} holds a ':'"));
            }
            // Checks the hash's form without knowing the password.
            bcrypt::verify("", hash)
                .map_err(|e| format!("basic_auth_users.{user}: not a bcrypt hash ({e})"))?;
        }
        let cost = users
            .values()
            .next()
            .and_then(|h| h.get(4..6))
            .and_then(|c| c.parse().ok())
            .unwrap_or(bcrypt::DEFAULT_COST);
        let decoy = bcrypt::hash("apitap decoy password", cost).map_err(|e| e.to_string())?;
        Ok(BasicAuth {
            users,
            decoy,
            ok: Mutex::new(HashSet::new()),
        })
    }

    /// Whether an `Authorization` header value is a valid login. Runs
    /// bcrypt: call it off the async threads.
    pub fn check(&self, authorization: Option<&[u8]>) -> bool {
        use base64::Engine;
        let Some(value) = authorization else {
            return false;
        };
        let Some(b64) = value
            .strip_prefix(b"Basic ")
            .or_else(|| value.strip_prefix(b"basic "))
        else {
            return false;
        };
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64.trim_ascii()) else {
            return false;
        };
        let Ok(text) = std::str::from_utf8(&raw) else {
            return false;
        };
        let Some((user, password)) = text.split_once(':') else {
            return false;
        };
        let digest: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, raw.as_slice())
            .as_ref()
            .try_into()
            .unwrap_or([0; 32]);
        if self.ok.lock().is_ok_and(|s| s.contains(&digest)) {
            return true;
        }
        let (hash, known) = match self.users.get(user) {
            Some(h) => (h.as_str(), true),
            None => (self.decoy.as_str(), false),
        };
        let good = bcrypt::verify(password, hash).unwrap_or(false) && known;
        if good {
            if let Ok(mut s) = self.ok.lock() {
                if s.len() >= AUTH_CACHE_ENTRIES {
                    s.clear();
                }
                s.insert(digest);
            }
        }
        good
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_unsupported_keys_are_refused_naming_them() {
        let cases = [
            ("nope: 1", "nope"),
            ("tls_server_config:\n  cert_fil: x", "cert_fil"),
            ("http_server_config:\n  headers:\n    Server: x", "Server"),
            ("basic_auth_users:\n  bob: plain", "basic_auth_users.bob"),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [X]",
                "cipher_suites",
            ),
            ("tls_server_config:\n  key_file: b", "cert_file"),
        ];
        for (text, needle) in cases {
            let err = WebSettings::parse(text, Path::new(".")).unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn basic_auth_checks_bcrypt_and_caches() {
        let hash = bcrypt::hash("secret", 4).unwrap();
        let s = WebSettings::parse(
            &format!("basic_auth_users:\n  alice: '{hash}'\n"),
            Path::new("."),
        )
        .unwrap();
        let auth = s.auth.unwrap();
        use base64::Engine;
        let enc = |s: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        assert!(auth.check(Some(enc("alice:secret").as_bytes())));
        assert!(auth.check(Some(enc("alice:secret").as_bytes())));
        assert!(!auth.check(Some(enc("alice:wrong").as_bytes())));
        assert!(!auth.check(Some(enc("bob:secret").as_bytes())));
        assert!(!auth.check(Some(b"Bearer x")));
        assert!(!auth.check(None));
    }

    #[test]
    fn headers_are_canonical_and_empty_file_is_plain_http() {
        let s = WebSettings::parse(
            "http_server_config:\n  headers:\n    x-frame-options: deny\n",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(s.headers[0].0.as_str(), "x-frame-options");
        let s = WebSettings::parse("", Path::new(".")).unwrap();
        assert!(s.tls.is_none() && s.auth.is_none());
    }

    #[test]
    fn yaml_errors_keep_key_names_and_drop_values() {
        let err =
            WebSettings::parse("basic_auth_users: hunter2-pasted", Path::new(".")).unwrap_err();
        assert!(err.contains("basic_auth_users"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        assert_eq!(without_values(r#"a "x" b `k` "y"#), r#"a "…" b `k` "…""#);
    }

    fn basic(user_pass: &str) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(user_pass);
        format!("Basic {b64}")
    }

    fn users(pairs: &[(&str, &str)]) -> String {
        let mut text = String::from("basic_auth_users:\n");
        for (u, p) in pairs {
            let hash = bcrypt::hash(p, 4).unwrap();
            text.push_str(&format!("  {u}: '{hash}'\n"));
        }
        text
    }

    #[test]
    fn watch_rereads_a_changed_file_and_keeps_the_last_good_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.yml");
        std::fs::write(&path, users(&[("alice", "one")])).unwrap();
        let watch = WebWatch::load(&path).unwrap();
        let ok = |w: &WebWatch, up: &str| {
            w.current()
                .auth
                .as_ref()
                .unwrap()
                .check(Some(basic(up).as_bytes()))
        };
        assert!(ok(&watch, "alice:one"));
        let first = watch.current();
        assert!(
            Arc::ptr_eq(&first, &watch.current()),
            "unchanged: not re-read"
        );

        std::fs::write(&path, users(&[("alice", "two")])).unwrap();
        assert!(!ok(&watch, "alice:one"));
        assert!(ok(&watch, "alice:two"));

        // Broken, then TLS added: both refused, the last good one serves.
        std::fs::write(&path, "basic_auth_users:\n  alice: two\n").unwrap();
        assert!(ok(&watch, "alice:two"));
        let kept = watch.current();
        assert!(
            Arc::ptr_eq(&kept, &watch.current()),
            "a refused file is not re-parsed"
        );
        std::fs::write(&path, "tls_server_config:\n  cert_file: c\n  key_file: k\n").unwrap();
        assert!(ok(&watch, "alice:two"));
        std::fs::remove_file(&path).unwrap();
        assert!(ok(&watch, "alice:two"));

        std::fs::write(&path, users(&[("bob", "three")])).unwrap();
        assert!(ok(&watch, "bob:three"));
        assert!(!ok(&watch, "alice:two"));
    }
}
