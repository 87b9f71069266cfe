//! The listener: `/metrics`, `/-/healthy`, `/-/ready` and a landing page.
//!
//! Contract:
//! - [`serve`] binds synchronously (so a busy port or a bad address is an
//!   error the caller turns into exit code 1 before capture starts), then
//!   serves on its own thread with a single-threaded tokio runtime. Nothing
//!   here runs on, or waits for, the packet thread.
//! - `/metrics` renders on tokio's blocking pool from a [`SharedMetrics`]
//!   (text format 0.0.4), gzipped when the request's `Accept-Encoding`
//!   takes gzip (as Prometheus's does; as client_golang's handler, at the
//!   fastest level: a scrape is hundreds of KiB of text, which shrinks
//!   about 25-fold). A slow client holds only its own connection; at
//!   most [`MAX_CONNECTIONS`] are served at once (more are closed at once),
//!   a request head must arrive within [`HEADER_TIMEOUT`], and no connection
//!   lives longer than [`CONNECTION_LIFETIME`].
//! - `/-/healthy` is 200 while the server runs; `/-/ready` is 200 once
//!   [`SharedMetrics::set_ready`] was called with `true`, else 503.
//! - Address forms as Prometheus exporters take them: `:PORT` (all
//!   interfaces, IPv6 and IPv4), `HOST:PORT`, `[V6]:PORT`.
//! - [`ServerHandle::shutdown`] (or dropping the handle) stops accepting,
//!   drops open connections and joins the thread.
//! - With a [`WebConfig`] (`--web.config.file`, see [`super::web`]) the file
//!   is read and validated before binding: TLS (the handshake must finish
//!   within [`HEADER_TIMEOUT`]), client certificates, basic auth on every
//!   path (401 with `WWW-Authenticate`), and the extra headers on every
//!   response. Each new connection takes its TLS settings, and each request
//!   its users and headers, from [`WebWatch::current`]: a changed file
//!   applies to the next connection or request without a restart (an open
//!   TLS session keeps the certificate it was made with).

use super::web::{WebSettings, WebWatch};
use super::SharedMetrics;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{
    HeaderMap, HeaderValue, ACCEPT_ENCODING, ALLOW, CONTENT_ENCODING, CONTENT_TYPE, VARY,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// A request head must arrive within this.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// No connection (keep-alive or slow reader) lives longer than this.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);

/// The Prometheus text format's content type.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `--web.config.file` (TLS, basic auth, headers); see [`super::web`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebConfig {
    pub path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("--web.listen-address {addr}: {reason}")]
    Address { addr: String, reason: String },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    WebConfig(#[from] super::web::WebConfigError),
    #[error("cannot start the metrics server: {0}")]
    Runtime(#[source] std::io::Error),
}

/// The running server (see the module doc).
pub struct ServerHandle {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerHandle {
    /// The address actually bound (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop serving and wait for the server thread.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// The socket addresses a listen address names, in bind order.
pub fn listen_addrs(addr: &str) -> Result<Vec<SocketAddr>, ServerError> {
    let bad = |reason: String| ServerError::Address {
        addr: addr.to_string(),
        reason,
    };
    if let Some(port) = addr.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| bad(format!("{port:?} is not a port number")))?;
        return Ok(vec![
            SocketAddr::from(([0u16; 8], port)),
            SocketAddr::from(([0u8; 4], port)),
        ]);
    }
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| bad(format!("expected HOST:PORT or :PORT ({e})")))?
        .collect();
    if addrs.is_empty() {
        return Err(bad("names no address".into()));
    }
    Ok(addrs)
}

/// Bind `addr` and serve `shared` until the handle is shut down.
pub fn serve(
    addr: &str,
    shared: SharedMetrics,
    web: Option<WebConfig>,
) -> Result<ServerHandle, ServerError> {
    let web = Web {
        watch: match web {
            Some(w) => Some(Arc::new(WebWatch::load(&w.path)?)),
            None => None,
        },
        plain: Arc::new(WebSettings::plain()),
    };
    let initial = web
        .watch
        .as_ref()
        .map_or(web.plain.clone(), |w| w.current());
    let mut last_err = None;
    let mut listener = None;
    for a in listen_addrs(addr)? {
        match TcpListener::bind(a) {
            Ok(l) => {
                listener = Some(l);
                break;
            }
            Err(e) => last_err = Some(e),
        }
    }
    let listener = match (listener, last_err) {
        (Some(l), _) => l,
        (None, e) => {
            return Err(ServerError::Bind {
                addr: addr.to_string(),
                source: e.unwrap_or_else(|| std::io::Error::other("no address to bind")),
            })
        }
    };
    let local = listener.local_addr().map_err(ServerError::Runtime)?;
    listener
        .set_nonblocking(true)
        .map_err(ServerError::Runtime)?;
    let (tls, basic_auth) = (initial.tls.is_some(), initial.auth.is_some());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .max_blocking_threads(4)
        .build()
        .map_err(ServerError::Runtime)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("apitap-metrics".into())
        .spawn(move || rt.block_on(accept_loop(listener, shared, web, tls, rx)))
        .map_err(ServerError::Runtime)?;
    tracing::info!(address = %local, tls, basic_auth, "serving metrics");
    Ok(ServerHandle {
        addr: local,
        stop: Some(tx),
        thread: Some(thread),
    })
}

/// The web config as the connections see it.
#[derive(Clone)]
struct Web {
    watch: Option<Arc<WebWatch>>,
    /// What is served without a web config.
    plain: Arc<WebSettings>,
}

impl Web {
    /// The current settings; re-reading runs bcrypt, so off the async thread.
    async fn current(&self) -> Arc<WebSettings> {
        let Some(w) = self.watch.clone() else {
            return self.plain.clone();
        };
        tokio::task::spawn_blocking(move || w.current())
            .await
            .unwrap_or_else(|_| self.plain.clone())
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: SharedMetrics,
    web: Web,
    tls: bool,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("metrics server cannot use its socket: {e}");
            return;
        }
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => return,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors and the like: wait instead of spinning.
                tracing::warn!("metrics server accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let shared = shared.clone();
        let web = web.clone();
        tokio::spawn(async move {
            // TLS settings as of this connection (see the module doc); the
            // protocol itself was fixed at start.
            let acceptor = if tls {
                match web.current().await.tls.clone() {
                    Some(c) => Some(tokio_rustls::TlsAcceptor::from(c)),
                    None => return,
                }
            } else {
                None
            };
            let service = service_fn(move |req| guarded(req, shared.clone(), web.clone()));
            let http = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .clone();
            match acceptor {
                Some(acceptor) => {
                    let tls =
                        match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!("metrics TLS handshake failed: {e}");
                                return;
                            }
                            Err(_) => return,
                        };
                    let conn = http.serve_connection(TokioIo::new(tls), service);
                    let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
                }
                None => {
                    let conn = http.serve_connection(TokioIo::new(stream), service);
                    let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
                }
            }
            drop(permit);
        });
    }
}

const LANDING: &str = "<!DOCTYPE html>
<html><head><meta charset=\"utf-8\"><title>apitap</title></head>
<body><h1>apitap</h1>
<p>Passive HTTP API monitor: which API calls fail, why, and which endpoints are exposed.</p>
<ul>
<li><a href=\"/metrics\">Metrics</a></li>
<li><a href=\"/-/healthy\">Health</a></li>
<li><a href=\"/-/ready\">Readiness</a></li>
</ul></body></html>
";

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// Basic auth (when configured), then the route, then the extra headers,
/// all as the web config says at this request.
async fn guarded(
    req: Request<Incoming>,
    shared: SharedMetrics,
    web: Web,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (settings, ok) = match web.watch.clone() {
        None => (web.plain.clone(), true),
        Some(watch) => {
            let header = req
                .headers()
                .get(hyper::header::AUTHORIZATION)
                .map(|v| v.as_bytes().to_vec());
            // One trip to the blocking pool: a re-read and bcrypt both block.
            tokio::task::spawn_blocking(move || {
                let s = watch.current();
                let ok = s.auth.as_ref().is_none_or(|a| a.check(header.as_deref()));
                (s, ok)
            })
            .await
            // Fail closed if the check panicked.
            .unwrap_or_else(|_| (web.plain.clone(), false))
        }
    };
    if !ok {
        let mut r = reply(
            StatusCode::UNAUTHORIZED,
            "text/plain; charset=utf-8",
            "Unauthorized\n",
        );
        r.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic"),
        );
        add_headers(&mut r, &settings);
        return Ok(r);
    }
    let mut r = respond(req, shared).await?;
    add_headers(&mut r, &settings);
    Ok(r)
}

fn add_headers(r: &mut Response<Full<Bytes>>, settings: &WebSettings) {
    for (name, value) in &settings.headers {
        r.headers_mut().insert(name.clone(), value.clone());
    }
}

async fn respond(
    req: Request<Incoming>,
    shared: SharedMetrics,
) -> Result<Response<Full<Bytes>>, Infallible> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "method not allowed\n",
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Ok(r);
    }
    Ok(match req.uri().path() {
        "/metrics" => {
            let gzip = accepts_gzip(req.headers());
            let render = move || {
                let text = shared.render();
                match gzip.then(|| gzipped(text.as_bytes())).flatten() {
                    Some(z) => (Bytes::from(z), true),
                    None => (Bytes::from(text), false),
                }
            };
            match tokio::task::spawn_blocking(render).await {
                Ok((body, zipped)) => {
                    let mut r = reply(StatusCode::OK, TEXT_FORMAT, body);
                    let h = r.headers_mut();
                    h.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
                    if zipped {
                        h.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                    }
                    r
                }
                Err(_) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    PLAIN,
                    "rendering failed\n",
                ),
            }
        }
        "/-/healthy" => reply(StatusCode::OK, PLAIN, "apitap is healthy.\n"),
        "/-/ready" if shared.is_ready() => reply(StatusCode::OK, PLAIN, "apitap is ready.\n"),
        "/-/ready" => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            PLAIN,
            "apitap is not ready.\n",
        ),
        "/" => reply(StatusCode::OK, "text/html; charset=utf-8", LANDING),
        _ => reply(StatusCode::NOT_FOUND, PLAIN, "not found\n"),
    })
}

/// Whether `Accept-Encoding` takes gzip: `gzip` or `*` listed without
/// `q=0` (RFC 9110 12.5.3; `x-gzip` is the same coding).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    let codings = headers
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','));
    let mut star = false;
    for c in codings {
        let mut parts = c.split(';').map(str::trim);
        let name = parts.next().unwrap_or_default().to_ascii_lowercase();
        let q_zero = parts.any(|p| {
            p.split_once('=').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("q") && v.trim().parse::<f32>() == Ok(0.0)
            })
        });
        match name.as_str() {
            "gzip" | "x-gzip" => return !q_zero,
            "*" => star = !q_zero,
            _ => {}
        }
    }
    star
}

/// `text` gzipped at the fastest level (`None` if compressing failed,
/// which writing to memory does not).
fn gzipped(text: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write;
    let mut z = flate2::write::GzEncoder::new(
        Vec::with_capacity(text.len() / 8),
        flate2::Compression::fast(),
    );
    z.write_all(text).ok()?;
    z.finish().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_is_taken_as_rfc_9110_says() {
        let takes = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
            }
            accepts_gzip(&h)
        };
        assert!(takes(&["gzip"]));
        assert!(takes(&["identity, GZIP;q=0.5"]));
        assert!(takes(&["br", "x-gzip"]));
        assert!(takes(&["*"]));
        assert!(takes(&["*;q=0.1, br"]));
        assert!(!takes(&[]));
        assert!(!takes(&["identity"]));
        assert!(!takes(&["gzip;q=0"]));
        assert!(!takes(&["gzip; q=0.0, *"]));
        assert!(!takes(&["*;q=0"]));
        assert!(!takes(&["gzipped, deflate"]));
    }

    #[test]
    fn listen_addresses_parse_like_exporters() {
        let a = listen_addrs(":10190").unwrap();
        assert_eq!(a[0].to_string(), "[::]:10190");
        assert_eq!(a[1].to_string(), "0.0.0.0:10190");
        assert_eq!(
            listen_addrs("127.0.0.1:9").unwrap()[0].to_string(),
            "127.0.0.1:9"
        );
        assert_eq!(listen_addrs("[::1]:9").unwrap()[0].to_string(), "[::1]:9");
        for bad in [":x", ":99999", "nope", "1.2.3.4"] {
            assert!(listen_addrs(bad).is_err(), "{bad}");
        }
    }
}
