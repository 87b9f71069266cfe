//! Typed, bounded label values.
//!
//! Contract: every label value that can come from the wire passes through
//! here and leaves as one of a bounded set:
//!
//! - `http_request_method`: the nine registered methods, else `_OTHER`
//!   (OpenTelemetry's spelling), also when the request was not seen.
//! - `http_response_status_code`: `100`…`599`, empty without a response,
//!   `_other` for anything else a lenient parser let through.
//! - `server_address`: the Host header when it is a DNS name (letters,
//!   digits, `-`, `_`, `.`, at most 253 bytes), else the server's IP address
//!   ([`ServerAddresses::label`]). At most `max_servers` of them hold a slot; past it
//!   the value is `_other`.
//! - `server_port`: at most [`MAX_PORTS_PER_SERVER`] ports per server slot,
//!   else `_other`.
//! - `http_route`: at most `max_routes_per_server` routes per server slot,
//!   and at most [`MAX_ROUTE_LEN`] bytes, else `_other`. The `_other` server
//!   has the single route `_other` (routes of unrelated servers mixed
//!   together mean nothing).
//! - `tls_version`: at most [`MAX_TLS_VERSIONS`] distinct short tokens.
//!
//! Slots are held by capture time: one unseen for the idle time is given
//! back by [`SlotTable::expire`], which tells the caller what to drop so
//! its series can be removed.

use crate::classify::findings::push_ip;
use crate::http::Method;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// The value every bounded label takes past its bound.
pub const OTHER: &str = "_other";
/// OpenTelemetry's value for a method outside the registered set.
pub const METHOD_OTHER: &str = "_OTHER";
/// Ports remembered per server slot (a server listens on few ports).
pub const MAX_PORTS_PER_SERVER: usize = 16;
/// Longer routes are folded into `_other`: a real template is short, a long
/// one is almost always an attacker's path that templating could not tame.
pub const MAX_ROUTE_LEN: usize = 200;
/// Distinct `tls_version` values kept (there are only a handful real ones).
pub const MAX_TLS_VERSIONS: usize = 8;
const MAX_TLS_VERSION_LEN: usize = 16;

/// Which bound folded a value (the `label` of `apitap_label_overflow_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Overflow {
    ServerAddress,
    ServerPort,
    HttpRoute,
    TlsVersion,
    /// The global series budget.
    Series,
}

impl Overflow {
    pub const ALL: [Overflow; 5] = [
        Overflow::ServerAddress,
        Overflow::ServerPort,
        Overflow::HttpRoute,
        Overflow::TlsVersion,
        Overflow::Series,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Overflow::ServerAddress => "server_address",
            Overflow::ServerPort => "server_port",
            Overflow::HttpRoute => "http_route",
            Overflow::TlsVersion => "tls_version",
            Overflow::Series => "series",
        }
    }
}

/// `http_request_method` as a small index: 0..=8 registered, 9 `_OTHER`.
pub fn method_index(m: Option<&Method>) -> u8 {
    match m {
        Some(Method::Get) => 0,
        Some(Method::Head) => 1,
        Some(Method::Post) => 2,
        Some(Method::Put) => 3,
        Some(Method::Delete) => 4,
        Some(Method::Connect) => 5,
        Some(Method::Options) => 6,
        Some(Method::Trace) => 7,
        Some(Method::Patch) => 8,
        Some(Method::Other(_)) | None => 9,
    }
}

pub fn method_label(idx: u8) -> &'static str {
    const NAMES: [&str; 10] = [
        "GET",
        "HEAD",
        "POST",
        "PUT",
        "DELETE",
        "CONNECT",
        "OPTIONS",
        "TRACE",
        "PATCH",
        METHOD_OTHER,
    ];
    NAMES.get(idx as usize).copied().unwrap_or(METHOD_OTHER)
}

/// Status as a compact key: 0 = no response (empty label), 1 = `_other`.
pub fn status_key(status: Option<u16>) -> u16 {
    match status {
        None => 0,
        Some(s @ 100..=599) => s,
        Some(_) => 1,
    }
}

pub fn status_label(key: u16) -> String {
    match key {
        0 => String::new(),
        1 => OTHER.to_string(),
        s => s.to_string(),
    }
}

/// `server_address` label values, the last IP's text kept: a host's
/// servers have few addresses, and formatting one anew for every exchange
/// cost more than the rest of the label's work.
#[derive(Debug, Default)]
pub struct ServerAddresses {
    last_ip: Option<(IpAddr, String)>,
}

impl ServerAddresses {
    /// SPEC: "`server_address` is the Host header when it is a name, else
    /// the server's IP address". `host` is the lower-cased Host; its port
    /// (if any) is dropped. A Host that is an IP literal, empty, or not a
    /// valid DNS name (attacker bytes) gives the IP. A name is borrowed
    /// from `host`.
    pub fn label<'a>(&'a mut self, host: Option<&'a str>, server: SocketAddr) -> &'a str {
        if let Some(name) = host.and_then(host_name) {
            return name;
        }
        let ip = server.ip();
        if self.last_ip.as_ref().is_some_and(|(last, _)| *last != ip) {
            self.last_ip = None;
        }
        &self.last_ip.get_or_insert_with(|| (ip, ip_label(ip))).1
    }
}

fn ip_label(ip: IpAddr) -> String {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    };
    let mut label = String::with_capacity(15);
    push_ip(&mut label, ip);
    label
}

/// The name part of a Host value, when it is a DNS name.
fn host_name(host: &str) -> Option<&str> {
    if host.starts_with('[') {
        return None; // IPv6 literal
    }
    let name = match host.rsplit_once(':') {
        Some((n, port)) if port.bytes().all(|b| b.is_ascii_digit()) => n,
        Some(_) => return None,
        None => host,
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    // `_other` is the overflow value: a Host spelling it is not a name.
    // No IP literal passes the checks below (IPv6 needs ':', IPv4 is all
    // digits and dots), so none is parsed here.
    if name.is_empty() || name.len() > 253 || name == OTHER {
        return None;
    }
    let ok = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'));
    // All digits and dots is a mangled IPv4 literal, not a name.
    let numeric = name.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    (ok && !numeric && !name.split('.').any(str::is_empty)).then_some(name)
}

/// A resolved label: a shared string, so series keys clone without
/// allocating.
pub type Label = Arc<str>;

struct RouteSlot {
    label: Label,
    last_seen: i64,
}

struct ServerSlot {
    label: Label,
    last_seen: i64,
    ports: Vec<u16>,
    routes: HashMap<Box<str>, RouteSlot, ahash::RandomState>,
}

impl ServerSlot {
    /// [`SlotTable::place`] once the server holds this slot.
    fn place(
        &mut self,
        port: Option<u16>,
        route: Option<&str>,
        now: i64,
        fixed: &Fixed,
        overflow: &mut impl FnMut(Overflow),
    ) -> Placed {
        let Fixed {
            max_routes,
            other,
            empty,
        } = fixed;
        self.last_seen = self.last_seen.max(now);
        let port = port.and_then(|p| {
            if self.ports.contains(&p) {
                Some(p)
            } else if self.ports.len() < MAX_PORTS_PER_SERVER {
                self.ports.push(p);
                Some(p)
            } else {
                overflow(Overflow::ServerPort);
                None
            }
        });
        let route = match route {
            None | Some("") => empty.clone(),
            Some(r) if r.len() > MAX_ROUTE_LEN => {
                overflow(Overflow::HttpRoute);
                other.clone()
            }
            Some(r) => {
                if let Some(rs) = self.routes.get_mut(r) {
                    rs.last_seen = rs.last_seen.max(now);
                    rs.label.clone()
                } else if self.routes.len() < *max_routes {
                    let label: Label = Arc::from(r);
                    self.routes.insert(
                        r.into(),
                        RouteSlot {
                            label: label.clone(),
                            last_seen: now,
                        },
                    );
                    label
                } else {
                    overflow(Overflow::HttpRoute);
                    other.clone()
                }
            }
        };
        Placed {
            server: self.label.clone(),
            port,
            route,
        }
    }
}

/// Where one observation's server/port/route landed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placed {
    pub server: Label,
    /// `None`: `_other`.
    pub port: Option<u16>,
    pub route: Label,
}

/// What [`SlotTable::expire`] gave back.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Released {
    pub servers: Vec<Label>,
    /// (server, route) pairs whose server keeps its slot.
    pub routes: Vec<(Label, Label)>,
}

impl Released {
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty() && self.routes.is_empty()
    }
}

/// Server and route slots (see the module doc).
pub struct SlotTable {
    max_servers: usize,
    idle_micros: i64,
    servers: HashMap<Box<str>, ServerSlot, ahash::RandomState>,
    fixed: Fixed,
    tls_versions: Vec<Label>,
}

/// What every server slot places its routes with.
struct Fixed {
    max_routes: usize,
    /// `_other`.
    other: Label,
    /// The empty label.
    empty: Label,
}

impl SlotTable {
    pub fn new(max_servers: usize, max_routes_per_server: usize, idle_micros: i64) -> Self {
        SlotTable {
            max_servers,
            idle_micros,
            servers: HashMap::default(),
            fixed: Fixed {
                max_routes: max_routes_per_server,
                other: Arc::from(OTHER),
                empty: Arc::from(""),
            },
            tls_versions: Vec::new(),
        }
    }

    pub fn other(&self) -> Label {
        self.fixed.other.clone()
    }

    pub fn servers_held(&self) -> usize {
        self.servers.len()
    }

    /// Place a server (and optionally its port and route) at capture time
    /// `now`, reporting each fold to `overflow`. `route: None` means the
    /// series has no route label (or the request was not seen: empty).
    pub fn place(
        &mut self,
        address: &str,
        port: Option<u16>,
        route: Option<&str>,
        now: i64,
        overflow: &mut impl FnMut(Overflow),
    ) -> Placed {
        // One look-up for a server (and one for a route) that holds a slot
        // already: the common case.
        if let Some(slot) = self.servers.get_mut(address) {
            return slot.place(port, route, now, &self.fixed, overflow);
        }
        if self.servers.len() >= self.max_servers {
            overflow(Overflow::ServerAddress);
            let route = match route {
                Some("") | None => self.fixed.empty.clone(),
                Some(_) => self.fixed.other.clone(),
            };
            return Placed {
                server: self.fixed.other.clone(),
                port: None,
                route,
            };
        }
        let slot = self
            .servers
            .entry(address.into())
            .or_insert_with(|| ServerSlot {
                label: Arc::from(address),
                last_seen: now,
                ports: Vec::new(),
                routes: HashMap::default(),
            });
        slot.place(port, route, now, &self.fixed, overflow)
    }

    /// A `tls_version` label: one of at most [`MAX_TLS_VERSIONS`] short
    /// tokens, else `_other`. Versions never expire (there are few).
    pub fn tls_version(&mut self, v: &str, overflow: &mut impl FnMut(Overflow)) -> Label {
        let valid = !v.is_empty()
            && v.len() <= MAX_TLS_VERSION_LEN
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if valid {
            if let Some(l) = self.tls_versions.iter().find(|l| &***l == v) {
                return l.clone();
            }
            if self.tls_versions.len() < MAX_TLS_VERSIONS {
                let l: Label = Arc::from(v);
                self.tls_versions.push(l.clone());
                return l;
            }
        }
        overflow(Overflow::TlsVersion);
        self.fixed.other.clone()
    }

    /// Give back every server and route slot unseen since `now - idle`.
    pub fn expire(&mut self, now: i64) -> Released {
        let cutoff = now.saturating_sub(self.idle_micros);
        let mut out = Released::default();
        self.servers.retain(|_, s| {
            if s.last_seen < cutoff {
                out.servers.push(s.label.clone());
                return false;
            }
            s.routes.retain(|_, r| {
                let keep = r.last_seen >= cutoff;
                if !keep {
                    out.routes.push((s.label.clone(), r.label.clone()));
                }
                keep
            });
            true
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn server_address_prefers_names_table() {
        let v4 = sa("10.0.0.9:8080");
        let v6 = sa("[2001:db8::1]:80");
        let cases: &[(Option<&str>, SocketAddr, &str)] = &[
            (Some("api.example.com"), v4, "api.example.com"),
            (Some("api.example.com:8080"), v4, "api.example.com"),
            (Some("api.example.com."), v4, "api.example.com"),
            (Some("localhost"), v4, "localhost"),
            (Some("my_svc.internal"), v4, "my_svc.internal"),
            (None, v4, "10.0.0.9"),
            (Some(""), v4, "10.0.0.9"),
            (Some("10.0.0.9"), v4, "10.0.0.9"),
            (Some("192.168.1.1:80"), v4, "10.0.0.9"),
            (Some("[::1]:80"), v4, "10.0.0.9"),
            (Some("[2001:db8::1]"), v6, "2001:db8::1"),
            (Some("1.2.3"), v4, "10.0.0.9"),
            (Some("evil<script>"), v4, "10.0.0.9"),
            (Some("a b"), v4, "10.0.0.9"),
            (Some("host:notaport"), v4, "10.0.0.9"),
            (Some("a..b"), v4, "10.0.0.9"),
            (Some("UPPER.example"), v4, "10.0.0.9"),
            (Some("_other"), v4, "10.0.0.9"),
            (None, sa("[::ffff:10.1.2.3]:80"), "10.1.2.3"),
            (None, v6, "2001:db8::1"),
        ];
        let fresh = |host, server| ServerAddresses::default().label(host, server).to_string();
        for &(host, server, want) in cases {
            assert_eq!(fresh(host, server), want, "host {host:?}");
        }
        let long = "a".repeat(254);
        assert_eq!(fresh(Some(&long), v4), "10.0.0.9");
        // One kept label across the cases, forwards and backwards (names
        // and addresses interleaved): the same text each time.
        let mut kept = ServerAddresses::default();
        for &(host, server, want) in cases.iter().chain(cases.iter().rev()) {
            assert_eq!(kept.label(host, server), want, "host {host:?} kept");
        }
    }

    #[test]
    fn method_and_status_labels_are_bounded() {
        assert_eq!(method_label(method_index(Some(&Method::Get))), "GET");
        assert_eq!(method_label(method_index(Some(&Method::Patch))), "PATCH");
        assert_eq!(
            method_label(method_index(Some(&Method::Other("PROPFIND".into())))),
            "_OTHER"
        );
        assert_eq!(method_label(method_index(None)), "_OTHER");
        let cases = [
            (None, ""),
            (Some(200), "200"),
            (Some(599), "599"),
            (Some(99), "_other"),
            (Some(600), "_other"),
            (Some(999), "_other"),
        ];
        for (s, want) in cases {
            assert_eq!(status_label(status_key(s)), want, "{s:?}");
        }
    }

    fn place(t: &mut SlotTable, a: &str, port: u16, r: &str, now: i64) -> (Placed, Vec<Overflow>) {
        let mut o = Vec::new();
        let p = t.place(a, Some(port), Some(r), now, &mut |x| o.push(x));
        (p, o)
    }

    #[test]
    fn slots_bound_servers_routes_and_ports() {
        let mut t = SlotTable::new(2, 2, 1_000);
        use Overflow::*;
        // (address, port, route) -> (server, port, route, overflows)
        // (address, port, route) -> (server, port, route, overflows)
        type Case<'a> = (
            &'a str,
            u16,
            &'a str,
            &'a str,
            Option<u16>,
            &'a str,
            &'a [Overflow],
        );
        let cases: &[Case] = &[
            ("a", 80, "/x", "a", Some(80), "/x", &[]),
            ("a", 80, "/y", "a", Some(80), "/y", &[]),
            ("a", 80, "/z", "a", Some(80), "_other", &[HttpRoute]),
            ("a", 80, "/x", "a", Some(80), "/x", &[]),
            ("b", 81, "/z", "b", Some(81), "/z", &[]),
            ("c", 80, "/x", "_other", None, "_other", &[ServerAddress]),
            ("c", 80, "", "_other", None, "", &[ServerAddress]),
        ];
        for &(a, port, r, ws, wp, wr, wo) in cases {
            let (p, o) = place(&mut t, a, port, r, 0);
            assert_eq!((&*p.server, p.port, &*p.route), (ws, wp, wr), "{a} {r}");
            assert_eq!(o, wo, "{a} {r}");
        }
        for i in 0..MAX_PORTS_PER_SERVER as u16 {
            place(&mut t, "b", 1000 + i, "/z", 0);
        }
        let (p, o) = place(&mut t, "b", 9, "/z", 0);
        assert_eq!((p.port, o), (None, vec![ServerPort]));
        let long = format!("/{}", "r".repeat(MAX_ROUTE_LEN));
        let (p, o) = place(&mut t, "a", 80, &long, 0);
        assert_eq!((&*p.route, o), ("_other", vec![HttpRoute]));
    }

    #[test]
    fn idle_slots_are_given_back() {
        let mut t = SlotTable::new(2, 2, 1_000);
        place(&mut t, "a", 80, "/old", 0);
        place(&mut t, "a", 80, "/new", 900);
        place(&mut t, "b", 80, "/x", 100);
        assert!(t.expire(1_000).is_empty());
        let r = t.expire(1_500);
        assert_eq!(r.servers, vec![Arc::from("b")]);
        assert_eq!(r.routes, vec![(Arc::from("a"), Arc::from("/old"))]);
        // The freed slots are usable again.
        let (p, o) = place(&mut t, "c", 80, "/x", 1_600);
        assert_eq!((&*p.server, o), ("c", vec![]));
        let (p, o) = place(&mut t, "a", 80, "/other", 1_600);
        assert_eq!((&*p.route, o), ("/other", vec![]));
    }

    #[test]
    fn tls_versions_are_bounded_tokens() {
        let mut t = SlotTable::new(1, 1, 1);
        let mut o = Vec::new();
        assert_eq!(&*t.tls_version("TLSv1.3", &mut |x| o.push(x)), "TLSv1.3");
        assert_eq!(&*t.tls_version("bad value", &mut |x| o.push(x)), "_other");
        for i in 0..MAX_TLS_VERSIONS {
            t.tls_version(&format!("v{i}"), &mut |x| o.push(x));
        }
        assert_eq!(&*t.tls_version("TLSv1.3", &mut |x| o.push(x)), "TLSv1.3");
        assert_eq!(&*t.tls_version("new", &mut |x| o.push(x)), "_other");
    }
}
