//! Tables for every failure cause and every per-exchange finding kind, each
//! with look-alikes that must not fire, plus the redaction of evidence.

use super::findings::FindingKind as K;
use super::jwt::tests::make as jwt;
use super::*;
use crate::clock::Timestamp;
use crate::http::{Method, RequestHead, ResponseHead};

/// 2024-05-01T12:00:00Z
const NOW_S: i64 = 1_714_564_800;

type Resp<'a> = (u16, &'a [(&'a str, &'a str)], &'a [u8]);

/// A tiny builder: `req("GET /x", &[("Host","a")])`.
fn ex(request: Option<(&str, &[(&str, &str)])>, response: Option<Resp<'_>>) -> Exchange {
    let request = request.map(|(line, hs)| {
        let (m, t) = line.split_once(' ').unwrap();
        let mut headers = Headers::default();
        for (n, v) in hs {
            headers.push(n.as_bytes(), v.as_bytes());
        }
        RequestHead {
            method: Method::parse(m),
            target: t.as_bytes().to_vec(),
            version_minor: 1,
            cut: false,
            headers,
        }
    });
    let (response, body) = match response {
        Some((status, hs, body)) => {
            let mut headers = Headers::default();
            for (n, v) in hs {
                headers.push(n.as_bytes(), v.as_bytes());
            }
            (
                Some(ResponseHead {
                    status,
                    version_minor: 1,
                    headers,
                }),
                body.to_vec(),
            )
        }
        None => (None, Vec::new()),
    };
    Exchange {
        ts: Timestamp::from_secs_micros(NOW_S, 0),
        client: "10.0.0.5:40000".parse().unwrap(),
        server: "10.0.0.9:80".parse().unwrap(),
        outcome: if response.is_some() {
            Outcome::Complete
        } else {
            Outcome::TimedOut
        },
        request,
        response,
        end_ts: Some(Timestamp::from_secs_micros(NOW_S, 1000)),
        request_body_bytes: 0,
        response_body_bytes: body.len() as u64,
        request_body_prefix: Vec::new(),
        response_body_prefix: body,
        capture_loss: false,
        failure: None,
        route: None,
        host: None,
        findings: Vec::new(),
    }
}

const H: &[(&str, &str)] = &[("Host", "api.example.com")];

/// `e` with its request head cut by the capture's snaplen after the fields
/// it has.
fn cut(mut e: Exchange) -> Exchange {
    if let Some(r) = e.request.as_mut() {
        r.cut = true;
    }
    e
}

fn classify_one(
    c: &mut Classifier,
    mut e: Exchange,
) -> (Option<FailureCause>, Vec<Finding>, Exchange) {
    let f = c.classify(&mut e);
    (e.failure, f, e)
}

fn cause_of(c: &mut Classifier, e: Exchange) -> Option<&'static str> {
    classify_one(c, e).0.map(|f| f.as_str())
}

#[test]
fn failure_cause_table() {
    let expired = format!(
        "Bearer {}",
        jwt(
            r#"{"alg":"HS256"}"#,
            &format!(r#"{{"exp":{},"iat":{}}}"#, NOW_S - 10, NOW_S - 100)
        )
    );
    let valid = format!(
        "Bearer {}",
        jwt(
            r#"{"alg":"HS256"}"#,
            &format!(r#"{{"exp":{},"iat":{}}}"#, NOW_S + 60, NOW_S - 100)
        )
    );
    let auth_exp: Vec<(&str, &str)> = vec![("Host", "a"), ("Authorization", &expired)];
    let auth_ok: Vec<(&str, &str)> = vec![("Host", "a"), ("Authorization", &valid)];
    let expired_cookie = format!("sid={}", jwt(r#"{"alg":"HS256"}"#, r#"{"exp":1,"iat":0}"#));
    let cookie_exp: Vec<(&str, &str)> = vec![("Host", "a"), ("Cookie", &expired_cookie)];
    let q_exp = format!(
        "GET /x?access_token={}",
        expired.trim_start_matches("Bearer ")
    );
    let e = &b""[..];
    let mut malformed = ex(Some(("GET /x", H)), None);
    malformed.outcome = Outcome::Malformed;
    let mut reset = ex(Some(("GET /x", H)), None);
    reset.outcome = Outcome::ConnectionEnded;
    let mut head_only = ex(Some(("GET /x", H)), Some((200, &[], b"{}")));
    head_only.outcome = Outcome::Unknown;
    let mut gz = ex(
        Some(("GET /x", H)),
        Some((200, &[("Content-Encoding", "gzip")], &[][..])),
    );
    gz.response_body_prefix = {
        use std::io::Write;
        let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        w.write_all(b" [ ] ").unwrap();
        w.finish().unwrap()
    };
    gz.response_body_bytes = gz.response_body_prefix.len() as u64;
    let cases: Vec<(&str, Exchange, Option<&str>)> = vec![
        ("malformed", malformed, Some("malformed")),
        ("timeout", ex(Some(("GET /x", H)), None), Some("timeout")),
        ("reset", reset, Some("connection_reset")),
        (
            "401 expired bearer",
            ex(Some(("GET /x", &auth_exp)), Some((401, &[], e))),
            Some("session_expired"),
        ),
        (
            "403 expired bearer",
            ex(Some(("GET /x", &auth_exp)), Some((403, &[], e))),
            Some("session_expired"),
        ),
        (
            "401 expired cookie jwt",
            ex(Some(("GET /x", &cookie_exp)), Some((401, &[], e))),
            Some("session_expired"),
        ),
        (
            "401 expired query jwt",
            ex(Some((&q_exp, H)), Some((401, &[], e))),
            Some("session_expired"),
        ),
        (
            "look-alike: 401 valid jwt",
            ex(Some(("GET /x", &auth_ok)), Some((401, &[], e))),
            Some("auth_rejected"),
        ),
        (
            "look-alike: 200 expired jwt",
            ex(Some(("GET /x", &auth_exp)), Some((200, &[], b"ok"))),
            None,
        ),
        (
            "look-alike: 403 valid jwt",
            ex(Some(("GET /x", &auth_ok)), Some((403, &[], e))),
            Some("forbidden"),
        ),
        (
            "401 bare",
            ex(Some(("GET /x", H)), Some((401, &[], e))),
            Some("auth_missing"),
        ),
        (
            "401, the head cut before any credentials",
            cut(ex(Some(("GET /x", H)), Some((401, &[], e)))),
            Some("auth_rejected"),
        ),
        (
            "401 api key",
            ex(Some(("GET /x", &[("X-API-Key", "k")])), Some((401, &[], e))),
            Some("auth_rejected"),
        ),
        (
            "401 cookie",
            ex(Some(("GET /x", &[("Cookie", "a=b")])), Some((401, &[], e))),
            Some("auth_rejected"),
        ),
        (
            "401 query cred",
            ex(Some(("GET /x?api_key=1", H)), Some((401, &[], e))),
            Some("auth_rejected"),
        ),
        (
            "look-alike: 401 ?keyword=",
            ex(Some(("GET /x?keyword=", H)), Some((401, &[], e))),
            Some("auth_missing"),
        ),
        (
            "look-alike: 401 ?monkey=1",
            ex(Some(("GET /x?monkey=1", H)), Some((401, &[], e))),
            Some("auth_missing"),
        ),
        (
            "403",
            ex(Some(("GET /x", H)), Some((403, &[], e))),
            Some("forbidden"),
        ),
        (
            "410",
            ex(Some(("GET /x", H)), Some((410, &[], e))),
            Some("endpoint_gone"),
        ),
        (
            "look-alike: 404 never 2xx",
            ex(Some(("GET /never", H)), Some((404, &[], e))),
            Some("not_found"),
        ),
        (
            "429",
            ex(Some(("GET /x", H)), Some((429, &[], e))),
            Some("rate_limited"),
        ),
        (
            "400",
            ex(Some(("POST /x", H)), Some((400, &[], e))),
            Some("bad_request"),
        ),
        (
            "418",
            ex(Some(("GET /x", H)), Some((418, &[], e))),
            Some("bad_request"),
        ),
        (
            "502",
            ex(Some(("GET /x", H)), Some((502, &[], e))),
            Some("upstream_failure"),
        ),
        (
            "503",
            ex(Some(("GET /x", H)), Some((503, &[], e))),
            Some("upstream_failure"),
        ),
        (
            "504",
            ex(Some(("GET /x", H)), Some((504, &[], e))),
            Some("upstream_failure"),
        ),
        (
            "500",
            ex(Some(("GET /x", H)), Some((500, &[], e))),
            Some("server_error"),
        ),
        (
            "501",
            ex(Some(("GET /x", H)), Some((501, &[], e))),
            Some("server_error"),
        ),
        (
            "200 empty",
            ex(Some(("GET /x", H)), Some((200, &[], e))),
            Some("empty_response"),
        ),
        (
            "200 {}",
            ex(Some(("GET /x", H)), Some((200, &[], b" {} "))),
            Some("empty_response"),
        ),
        (
            "200 null",
            ex(Some(("GET /x", H)), Some((200, &[], b"null"))),
            Some("empty_response"),
        ),
        ("200 gzip []", gz, Some("empty_response")),
        (
            "look-alike: 200 {\"a\":1}",
            ex(Some(("GET /x", H)), Some((200, &[], b"{\"a\":1}"))),
            None,
        ),
        (
            "look-alike: POST 200 {}",
            ex(Some(("POST /x", H)), Some((200, &[], b"{}"))),
            None,
        ),
        (
            "look-alike: 204",
            ex(Some(("GET /x", H)), Some((204, &[], e))),
            None,
        ),
        ("look-alike: head only", head_only, None),
    ];
    for (name, e, want) in cases {
        let mut c = Classifier::new(ClassifyConfig::default()).unwrap();
        assert_eq!(cause_of(&mut c, e), want, "{name}");
    }
}

#[test]
fn endpoint_gone_needs_an_earlier_2xx_on_the_same_server() {
    let mut c = Classifier::new(ClassifyConfig::default()).unwrap();
    let ok = ex(Some(("GET /flip/widget-7?x=1", H)), Some((200, &[], b"ok")));
    assert_eq!(cause_of(&mut c, ok), None);
    let cases: Vec<(&str, Exchange, &str)> = vec![
        (
            "same path, other query",
            ex(Some(("GET /flip/widget-7?y=2", H)), Some((404, &[], b""))),
            "endpoint_gone",
        ),
        (
            "other path",
            ex(Some(("GET /flip/widget-8", H)), Some((404, &[], b""))),
            "not_found",
        ),
        (
            "same path, other host",
            ex(
                Some(("GET /flip/widget-7", &[("Host", "other.example")])),
                Some((404, &[], b"")),
            ),
            "not_found",
        ),
        (
            "same path, :80 host form",
            ex(
                Some(("GET /flip/widget-7", &[("Host", "api.example.com:80")])),
                Some((404, &[], b"")),
            ),
            "endpoint_gone",
        ),
    ];
    for (name, e, want) in cases {
        assert_eq!(cause_of(&mut c, e), Some(want), "{name}");
    }
    let mut other_port = ex(Some(("GET /flip/widget-7", H)), Some((404, &[], b"")));
    other_port.server = "10.0.0.9:8080".parse().unwrap();
    assert_eq!(cause_of(&mut c, other_port), Some("not_found"));
}

/// The kinds an exchange raises, with default config.
fn kinds(e: Exchange) -> (Vec<K>, Vec<Finding>) {
    let mut c = Classifier::new(ClassifyConfig::default()).unwrap();
    let (_, f, e) = classify_one(&mut c, e);
    (e.findings, f)
}

#[test]
fn finding_kind_table() {
    let ok: &[u8] = b"ok";
    let long = format!("GET /{}", "a".repeat(2100));
    let weak_none = format!(
        "Bearer {}",
        jwt(
            r#"{"alg":"none"}"#,
            r#"{"exp":9999999999,"iat":9999999000}"#
        )
    );
    let weak_noexp = format!("Bearer {}", jwt(r#"{"alg":"HS256"}"#, r#"{"sub":"u"}"#));
    let weak_long = jwt(r#"{"alg":"RS256"}"#, r#"{"exp":9999999999,"iat":1}"#);
    let short = format!(
        "Bearer {}",
        jwt(
            r#"{"alg":"HS256"}"#,
            &format!(r#"{{"exp":{},"iat":{}}}"#, NOW_S + 300, NOW_S)
        )
    );
    let body_jwt = format!("{{\"access_token\":\"{weak_long}\"}}");
    let path_jwt = format!("GET /t/{weak_long}/x");
    type Case<'a> = (&'a str, Exchange, Option<K>);
    let auth = [
        ("Host", "api.example.com"),
        ("Authorization", "Basic dXNlcjpwYXNzd29yZA=="),
    ];
    let proxy = [
        ("Host", "api.example.com"),
        ("Proxy-Authorization", "Basic eDp5"),
    ];
    let key = [("Host", "api.example.com"), ("X-Api-Key", "k-123")];
    let tok = [("Host", "api.example.com"), ("X-Auth-Token", "t")];
    let cookie = [
        ("Host", "api.example.com"),
        ("Cookie", "sid=abc; theme=dark"),
    ];
    let b_none = [
        ("Host", "api.example.com"),
        ("Authorization", weak_none.as_str()),
    ];
    let b_noexp = [
        ("Host", "api.example.com"),
        ("Authorization", weak_noexp.as_str()),
    ];
    let short_body = format!("{{\"t\":\"{}\"}}", short.trim_start_matches("Bearer "));
    let cases: Vec<Case<'_>> = vec![
        (
            "Authorization",
            ex(Some(("GET /x", &auth)), Some((200, &[], ok))),
            Some(K::CleartextCredentials),
        ),
        (
            "Proxy-Authorization",
            ex(Some(("GET /x", &proxy)), Some((200, &[], ok))),
            Some(K::CleartextCredentials),
        ),
        (
            "X-API-Key (any case)",
            ex(Some(("GET /x", &key)), Some((200, &[], ok))),
            Some(K::CleartextCredentials),
        ),
        (
            "X-Auth-Token",
            ex(Some(("GET /x", &tok)), Some((200, &[], ok))),
            Some(K::CleartextCredentials),
        ),
        (
            "userinfo in Host",
            ex(
                Some(("GET /x", &[("Host", "u:p@api.example.com")])),
                Some((200, &[], ok)),
            ),
            Some(K::CleartextCredentials),
        ),
        (
            "look-alike: X-Api-Version",
            ex(
                Some(("GET /x", &[("Host", "a.example"), ("X-Api-Version", "2")])),
                Some((200, &[], ok)),
            ),
            None,
        ),
        (
            "?token=",
            ex(Some(("GET /x?token=abc", H)), Some((200, &[], ok))),
            Some(K::CredentialsInUrl),
        ),
        (
            "?API_KEY= (case)",
            ex(Some(("GET /x?API_KEY=abc", H)), Some((200, &[], ok))),
            Some(K::CredentialsInUrl),
        ),
        (
            "?api%5Fkey= (encoded)",
            ex(Some(("GET /x?api%5Fkey=abc", H)), Some((200, &[], ok))),
            Some(K::CredentialsInUrl),
        ),
        (
            "userinfo",
            ex(
                Some(("GET http://u:p@api.example.com/x", &[])),
                Some((200, &[], ok)),
            ),
            Some(K::CredentialsInUrl),
        ),
        (
            "#access_token= (a fragment sent)",
            ex(
                Some(("GET /cb?state=1#access_token=abc", H)),
                Some((200, &[], ok)),
            ),
            Some(K::CredentialsInUrl),
        ),
        (
            "look-alike: ?keyword=",
            ex(Some(("GET /x?keyword=", H)), Some((200, &[], ok))),
            None,
        ),
        (
            "look-alike: ?monkey=1",
            ex(Some(("GET /x?monkey=1", H)), Some((200, &[], ok))),
            None,
        ),
        (
            "look-alike: ?token= (empty)",
            ex(Some(("GET /x?token=", H)), Some((200, &[], ok))),
            None,
        ),
        (
            "look-alike: @ in path",
            ex(Some(("GET /users/a@b.example", H)), Some((200, &[], ok))),
            None,
        ),
        (
            "Cookie",
            ex(Some(("GET /x", &cookie)), Some((200, &[], ok))),
            Some(K::CleartextSessionCookie),
        ),
        (
            "Set-Cookie bare",
            ex(
                Some(("GET /x", H)),
                Some((200, &[("Set-Cookie", "sid=abc; Path=/")], ok)),
            ),
            Some(K::InsecureCookie),
        ),
        (
            "Set-Cookie no HttpOnly",
            ex(
                Some(("GET /x", H)),
                Some((200, &[("Set-Cookie", "sid=abc; Secure")], ok)),
            ),
            Some(K::InsecureCookie),
        ),
        (
            "look-alike: Set-Cookie secure",
            ex(
                Some(("GET /x", H)),
                Some((
                    200,
                    &[("Set-Cookie", "sid=abc; secure; HTTPONLY; Path=/")],
                    ok,
                )),
            ),
            None,
        ),
        (
            "cookie named Secure",
            ex(
                Some(("GET /x", H)),
                Some((200, &[("Set-Cookie", "Secure=HttpOnly; Path=/")], ok)),
            ),
            Some(K::InsecureCookie),
        ),
        (
            "jwt alg none",
            ex(Some(("GET /x", &b_none)), Some((200, &[], ok))),
            Some(K::WeakJwt),
        ),
        (
            "jwt no exp",
            ex(Some(("GET /x", &b_noexp)), Some((200, &[], ok))),
            Some(K::WeakJwt),
        ),
        (
            "jwt long lifetime in body",
            ex(Some(("GET /x", H)), Some((200, &[], body_jwt.as_bytes()))),
            Some(K::WeakJwt),
        ),
        (
            "jwt in path",
            ex(Some((&path_jwt, H)), Some((200, &[], ok))),
            Some(K::WeakJwt),
        ),
        (
            "look-alike: short-lived jwt",
            ex(Some(("GET /x", H)), Some((200, &[], short_body.as_bytes()))),
            None,
        ),
        (
            "Host IPv4",
            ex(
                Some(("GET /x", &[("Host", "10.0.0.9:8080")])),
                Some((200, &[], ok)),
            ),
            Some(K::IpLiteralHost),
        ),
        (
            "Host IPv6",
            ex(
                Some(("GET /x", &[("Host", "[fd00::1]")])),
                Some((200, &[], ok)),
            ),
            Some(K::IpLiteralHost),
        ),
        (
            "no Host",
            ex(Some(("GET /x", &[])), Some((200, &[], ok))),
            Some(K::IpLiteralHost),
        ),
        (
            "look-alike: no Host in a head the capture cut",
            cut(ex(Some(("GET /x", &[])), Some((200, &[], ok)))),
            None,
        ),
        (
            "Host IPv4 in a head the capture cut",
            cut(ex(
                Some(("GET /x", &[("Host", "10.0.0.9")])),
                Some((200, &[], ok)),
            )),
            Some(K::IpLiteralHost),
        ),
        (
            "look-alike: Host 10.example",
            ex(
                Some(("GET /x", &[("Host", "10.0.0.9.nip.example")])),
                Some((200, &[], ok)),
            ),
            None,
        ),
        (
            "raw space",
            ex(Some(("GET /a b", H)), Some((200, &[], ok))),
            Some(K::UnsafeUrl),
        ),
        (
            "raw <",
            ex(Some(("GET /a<script>", H)), Some((200, &[], ok))),
            Some(K::UnsafeUrl),
        ),
        (
            "backslash",
            ex(Some(("GET /a\\b", H)), Some((200, &[], ok))),
            Some(K::UnsafeUrl),
        ),
        (
            "control",
            ex(Some(("GET /a\x01", H)), Some((200, &[], ok))),
            Some(K::UnsafeUrl),
        ),
        (
            "non-ASCII",
            ex(Some(("GET /caf\u{e9}", H)), Some((200, &[], ok))),
            Some(K::UnsafeUrl),
        ),
        (
            "..",
            ex(Some(("GET /a/../etc/passwd", H)), Some((200, &[], ok))),
            Some(K::UnsafeUrl),
        ),
        (
            "%2e%2e",
            ex(Some(("GET /a/%2e%2E/etc", H)), Some((200, &[], ok))),
            Some(K::UnsafeUrl),
        ),
        (
            "..%2f",
            ex(Some(("GET /a/..%2fetc", H)), Some((200, &[], ok))),
            Some(K::UnsafeUrl),
        ),
        (
            ".. in query",
            ex(
                Some(("GET /dl?file=../../etc/passwd", H)),
                Some((200, &[], ok)),
            ),
            Some(K::UnsafeUrl),
        ),
        (
            "%252e",
            ex(Some(("GET /a/%252e%252e/x", H)), Some((200, &[], ok))),
            Some(K::UnsafeUrl),
        ),
        (
            "too long",
            ex(Some((&long, H)), Some((200, &[], ok))),
            Some(K::UnsafeUrl),
        ),
        (
            "look-alike: .. inside a file name",
            ex(Some(("GET /files/report..pdf", H)), Some((200, &[], ok))),
            None,
        ),
        (
            "look-alike: %2520-free %25",
            ex(Some(("GET /a/100%25", H)), Some((200, &[], ok))),
            None,
        ),
        (
            "look-alike: ?range=1..5",
            ex(Some(("GET /a?range=1..5", H)), Some((200, &[], ok))),
            None,
        ),
        (
            "Deprecation",
            ex(
                Some(("GET /x", H)),
                Some((200, &[("Deprecation", "true")], ok)),
            ),
            Some(K::DeprecatedEndpoint),
        ),
        (
            "Sunset",
            ex(
                Some(("GET /x", H)),
                Some((200, &[("Sunset", "Sat, 31 Dec 2024 23:59:59 GMT")], ok)),
            ),
            Some(K::DeprecatedEndpoint),
        ),
        (
            "500 traceback",
            ex(
                Some(("GET /x", H)),
                Some((500, &[], b"Traceback (most recent call last):\n  File")),
            ),
            Some(K::VerboseError),
        ),
        (
            "502 java",
            ex(
                Some(("GET /x", H)),
                Some((502, &[], b"boom\n\tat java.lang.Thread.run")),
            ),
            Some(K::VerboseError),
        ),
        (
            "500 rust",
            ex(
                Some(("GET /x", H)),
                Some((500, &[], b"thread 'main' panicked at src/x.rs:1")),
            ),
            Some(K::VerboseError),
        ),
        (
            "look-alike: 400 traceback",
            ex(
                Some(("GET /x", H)),
                Some((400, &[], b"Traceback (most recent call last):")),
            ),
            None,
        ),
        (
            "look-alike: 500 plain",
            ex(
                Some(("GET /x", H)),
                Some((500, &[], b"Internal Server Error")),
            ),
            None,
        ),
    ];
    for (name, e, want) in cases {
        let (got, _) = kinds(e);
        match want {
            Some(k) => assert!(got.contains(&k), "{name}: {got:?}"),
            None => assert!(got.is_empty(), "{name}: {got:?}"),
        }
    }
}

#[test]
fn public_plaintext_endpoint_table() {
    let cases: &[(&str, bool, bool)] = &[
        ("8.8.8.8:80", true, true),
        ("[2606:4700::1111]:80", true, true),
        ("10.0.0.9:80", true, false),
        ("192.0.2.10:80", true, false),
        ("[2001:db8::1]:80", true, false),
        ("100.64.1.1:80", true, false),
        ("127.0.0.1:8080", true, false),
        ("[fe80::1]:80", true, false),
        // no response: not "answered"
        ("8.8.8.8:80", false, false),
    ];
    for (server, answered, want) in cases {
        let mut e = if *answered {
            ex(Some(("GET /x", H)), Some((200, &[], b"ok")))
        } else {
            ex(Some(("GET /x", H)), None)
        };
        e.server = server.parse().unwrap();
        let (got, f) = kinds(e);
        assert_eq!(got.contains(&K::PublicPlaintextEndpoint), *want, "{server}");
        if *want {
            assert!(
                f[0].evidence.contains(server.trim_start_matches('[')),
                "{}",
                f[0].evidence
            );
        }
    }
    let cfg = ClassifyConfig {
        internal_networks: vec!["8.8.8.0/24".parse().unwrap()],
        ..Default::default()
    };
    let mut c = Classifier::new(cfg).unwrap();
    let mut e = ex(Some(("GET /x", H)), Some((200, &[], b"ok")));
    e.server = "8.8.8.8:80".parse().unwrap();
    assert!(classify_one(&mut c, e).2.findings.is_empty());
}

#[test]
fn severities_are_configurable_and_off_means_off() {
    let mut cfg = ClassifyConfig::default();
    cfg.severities
        .set(K::CleartextCredentials, Some(findings::Severity::Low));
    cfg.severities.set(K::IpLiteralHost, None);
    let mut c = Classifier::new(cfg).unwrap();
    let e = ex(
        Some(("GET /x", &[("Authorization", "Bearer x")])),
        Some((200, &[], b"ok")),
    );
    let (_, f, e) = classify_one(&mut c, e);
    assert_eq!(e.findings, vec![K::CleartextCredentials]);
    assert_eq!(f[0].severity, findings::Severity::Low);
}

#[test]
fn endpoint_findings_come_once_per_server_and_route_set() {
    let cfg = ClassifyConfig {
        sprawl_limit: 3,
        ..Default::default()
    };
    let mut c = Classifier::new(cfg).unwrap();
    let mut all = Vec::new();
    for t in ["/a", "/b", "/A", "/c", "/d", "/v1/b", "/a", "/e"] {
        let e = ex(Some((&format!("GET {t}"), H)), Some((200, &[], b"ok")));
        let (_, f, e) = classify_one(&mut c, e);
        assert!(
            !e.findings.contains(&K::RouteVariants) && !e.findings.contains(&K::EndpointSprawl)
        );
        all.extend(f);
    }
    // 404s and 5xx do not count
    let e = ex(Some(("GET /B", H)), Some((404, &[], b"")));
    all.extend(classify_one(&mut c, e).1);
    let got: Vec<(K, Option<&str>, &str)> = all
        .iter()
        .map(|f| (f.kind, f.route.as_deref(), f.evidence.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                K::RouteVariants,
                Some("/A"),
                "routes /a and /A differ only by case"
            ),
            (
                K::EndpointSprawl,
                None,
                "4 distinct routes answered 2xx/3xx (limit 3)"
            ),
            (
                K::RouteVariants,
                Some("/v1/b"),
                "routes /b and /v1/b differ only by version prefix"
            ),
        ]
    );
}

/// Every evidence string of a request full of secrets, and the Debug output
/// of everything classification returns, hold none of them.
#[test]
fn evidence_never_holds_a_secret() {
    let token = jwt(r#"{"alg":"none"}"#, r#"{"sub":"alice","exp":1}"#);
    let bearer = format!("Bearer {token}");
    let secrets = [
        "dXNlcjpodW50ZXIy", // user:hunter2
        "hunter2",
        "k-SECRET-42",
        "c00kieval",
        "qs-s3cr3t",
        "pa55",
        "setc00kie",
    ];
    let hs = [
        ("Host", "api.example.com"),
        ("Authorization", "Basic dXNlcjpodW50ZXIy"),
        ("X-API-Key", "k-SECRET-42"),
        ("Cookie", "sid=c00kieval"),
        ("Proxy-Authorization", bearer.as_str()),
    ];
    let target = format!("GET http://bob:pa55@api.example.com/p/{token}?token=qs-s3cr3t&x=1");
    let e = ex(
        Some((&target, &hs)),
        Some((401, &[("Set-Cookie", "sid=setc00kie")], b"")),
    );
    let (_, f) = kinds(e);
    assert!(f.len() >= 5, "{f:?}");
    let text = format!("{f:?}");
    for s in secrets.iter().copied().chain(token.split('.')) {
        assert!(!text.contains(s), "{s} leaked: {text}");
    }
    assert!(
        text.contains("Authorization: Basic <redacted, 16 bytes>"),
        "{text}"
    );
}

/// Userinfo in a Host header is a credential sent in the clear, not part of
/// the host: the exchange's host (its log field, its label) is the name
/// after the `@`, and the evidence gives only the userinfo's length.
#[test]
fn host_userinfo_is_a_credential_not_a_host() {
    let e = ex(
        Some(("GET /x", &[("Host", "bob:hunter2@API.example.com:8080")])),
        Some((200, &[], b"ok")),
    );
    let mut c = Classifier::new(ClassifyConfig::default()).unwrap();
    let (_, f, e) = classify_one(&mut c, e);
    assert_eq!(e.host.as_deref(), Some("api.example.com:8080"));
    let creds: Vec<&Finding> = f
        .iter()
        .filter(|f| f.kind == K::CleartextCredentials)
        .collect();
    assert_eq!(creds.len(), 1, "{f:?}");
    assert_eq!(creds[0].evidence, "userinfo in Host: <redacted, 11 bytes>");
    let text = format!("{f:?}");
    assert!(!text.contains("hunter2") && !text.contains("bob"), "{text}");
}

#[test]
fn a_reload_keeps_what_the_run_learnt() {
    let mut c = Classifier::new(ClassifyConfig::default()).unwrap();
    let ok = ex(Some(("GET /flip/widget-7", H)), Some((200, &[], b"ok")));
    assert_eq!(cause_of(&mut c, ok), None);
    let reloaded = ClassifyConfig {
        route_patterns: vec!["/flip/{item}".to_string()],
        ..ClassifyConfig::default()
    };
    c.adopt(Classifier::new(reloaded).unwrap());
    let gone = ex(Some(("GET /flip/widget-7", H)), Some((404, &[], b"")));
    let mut routed = gone.clone();
    assert_eq!(
        cause_of(&mut c, gone),
        Some("endpoint_gone"),
        "2xx paths survive the reload"
    );
    c.classify(&mut routed);
    assert_eq!(
        routed.route.as_deref(),
        Some("/flip/{item}"),
        "new patterns apply"
    );
}
