//! What the run has learnt about each server: which exact paths answered 2xx
//! (for `endpoint_gone`) and which routes answered 2xx/3xx (for
//! `endpoint_sprawl` and `route_variants`).
//!
//! Contract: memory is bounded by configuration. Paths are remembered as
//! 64-bit keyed hashes only (a path may carry a secret; a hash does not),
//! in two generations: when the current one is full it becomes the old one
//! and the oldest is dropped, so recent paths are always remembered. Routes
//! (already templated, so secret-free) are kept for at most `max_servers`
//! servers and `max_routes` routes each; when the server table is full, the
//! server seen least recently gives its slot back. Each endpoint finding is
//! reported once per server (sprawl) or per group of variants.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash, Hasher};

/// A server as SPEC keys it: `server_address` (Host when a name, else the
/// IP address) and port.
pub type ServerKey = (String, u16);

/// Paths that answered 2xx, per server (see module doc).
pub struct OkPaths {
    hasher: ahash::RandomState,
    current: HashSet<u64, ahash::RandomState>,
    old: HashSet<u64, ahash::RandomState>,
    max: usize,
    /// Times the current generation filled up and the old one was dropped.
    pub rotations: u64,
}

impl OkPaths {
    pub fn new(max: usize) -> Self {
        OkPaths {
            hasher: ahash::RandomState::new(),
            current: HashSet::default(),
            old: HashSet::default(),
            max: (max / 2).max(1),
            rotations: 0,
        }
    }

    fn key(&self, server: &ServerKey, path: &[u8]) -> u64 {
        let mut h = self.hasher.build_hasher();
        server.hash(&mut h);
        path.hash(&mut h);
        h.finish()
    }

    pub fn remember(&mut self, server: &ServerKey, path: &[u8]) {
        let k = self.key(server, path);
        if self.current.contains(&k) {
            return;
        }
        if self.current.len() >= self.max {
            // The old generation's table, emptied, is the new one: its room
            // is kept (a full generation's), so rotating costs no
            // allocation, nor a table grown again from nothing.
            std::mem::swap(&mut self.current, &mut self.old);
            self.current.clear();
            self.rotations += 1;
        }
        self.current.insert(k);
    }

    pub fn contains(&self, server: &ServerKey, path: &[u8]) -> bool {
        let k = self.key(server, path);
        self.current.contains(&k) || self.old.contains(&k)
    }

    pub fn len(&self) -> usize {
        self.current.len() + self.old.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An endpoint-level finding the inventory reports (once).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndpointEvent {
    /// The server now has more distinct routes than the limit.
    Sprawl { routes: usize, limit: usize },
    /// `route` and `earlier` differ only by case, trailing slash or `/vN`.
    Variants { earlier: String, how: &'static str },
}

struct ServerRoutes {
    routes: HashSet<Box<str>, ahash::RandomState>,
    /// Normalised form → (first route seen, reported yet).
    groups: HashMap<Box<str>, (Box<str>, bool), ahash::RandomState>,
    sprawl_reported: bool,
    last_seen: i64,
}

/// Routes that answered 2xx/3xx, per server (see module doc).
pub struct RouteInventory {
    servers: HashMap<ServerKey, ServerRoutes, ahash::RandomState>,
    max_servers: usize,
    max_routes: usize,
    sprawl_limit: usize,
    /// Servers that gave their slot back to a newer one.
    pub servers_evicted: u64,
    /// Routes not recorded because their server's table was full.
    pub routes_refused: u64,
}

impl RouteInventory {
    pub fn new(max_servers: usize, max_routes: usize, sprawl_limit: usize) -> Self {
        RouteInventory {
            servers: HashMap::default(),
            max_servers: max_servers.max(1),
            max_routes: max_routes.max(sprawl_limit + 1),
            sprawl_limit,
            servers_evicted: 0,
            routes_refused: 0,
        }
    }

    pub fn servers(&self) -> usize {
        self.servers.len()
    }

    /// Record that `route` of `server` answered 2xx/3xx at `now` (µs);
    /// returns what this reveals for the first time.
    pub fn observe(&mut self, server: &ServerKey, route: &str, now: i64) -> Vec<EndpointEvent> {
        // The common case, in one look-up each: a route already known.
        if let Some(s) = self.servers.get_mut(server) {
            if s.routes.contains(route) {
                s.last_seen = now;
                return Vec::new();
            }
        }
        let mut events = Vec::new();
        if !self.servers.contains_key(server) {
            if self.servers.len() >= self.max_servers {
                if let Some(oldest) = self
                    .servers
                    .iter()
                    .min_by_key(|(_, s)| s.last_seen)
                    .map(|(k, _)| k.clone())
                {
                    self.servers.remove(&oldest);
                    self.servers_evicted += 1;
                }
            }
            self.servers.insert(
                server.clone(),
                ServerRoutes {
                    routes: HashSet::default(),
                    groups: HashMap::default(),
                    sprawl_reported: false,
                    last_seen: now,
                },
            );
        }
        let Some(s) = self.servers.get_mut(server) else {
            return events;
        };
        s.last_seen = now;
        if s.routes.contains(route) {
            return events;
        }
        if s.routes.len() >= self.max_routes {
            self.routes_refused += 1;
            return events;
        }
        s.routes.insert(route.into());
        if s.routes.len() > self.sprawl_limit && !s.sprawl_reported {
            s.sprawl_reported = true;
            events.push(EndpointEvent::Sprawl {
                routes: s.routes.len(),
                limit: self.sprawl_limit,
            });
        }
        let norm = normalise(route);
        match s.groups.get_mut(norm.as_str()) {
            Some((first, reported)) => {
                if !*reported {
                    *reported = true;
                    events.push(EndpointEvent::Variants {
                        earlier: first.to_string(),
                        how: difference(first, route),
                    });
                }
            }
            None => {
                s.groups.insert(norm.into(), (route.into(), false));
            }
        }
        events
    }
}

fn is_version_segment(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 2 && (b[0] == b'v' || b[0] == b'V') && b[1..].iter().all(u8::is_ascii_digit)
}

/// Lower-cased, without a trailing slash and without the first `/vN`
/// segment: two routes with the same form are variants.
pub fn normalise(route: &str) -> String {
    let lower = route.to_ascii_lowercase();
    let trimmed = lower
        .strip_suffix('/')
        .filter(|t| !t.is_empty())
        .unwrap_or(&lower);
    let mut out = String::with_capacity(trimmed.len());
    let mut dropped = false;
    for seg in trimmed.split('/').skip(1) {
        if !dropped && is_version_segment(seg) {
            dropped = true;
            continue;
        }
        out.push('/');
        out.push_str(seg);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// How two variant routes differ, for evidence.
fn difference(a: &str, b: &str) -> &'static str {
    let strip = |s: &str| s.strip_suffix('/').unwrap_or(s).to_string();
    if a.eq_ignore_ascii_case(b) {
        "case"
    } else if strip(a) == strip(b) {
        "trailing slash"
    } else if strip(a).eq_ignore_ascii_case(&strip(b)) {
        "case and trailing slash"
    } else {
        "version prefix"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn srv(name: &str) -> ServerKey {
        (name.to_string(), 80)
    }

    #[test]
    fn normalise_table() {
        let cases = [
            ("/Users", "/users"),
            ("/users/", "/users"),
            ("/v1/users", "/users"),
            ("/api/v2/users/{id}", "/api/users/{id}"),
            ("/", "/"),
            ("/v1", "/"),
            ("/video/v1x", "/video/v1x"),
            ("/users/v1/v2", "/users/v2"),
        ];
        for (r, want) in cases {
            assert_eq!(normalise(r), want, "{r}");
        }
    }

    #[test]
    fn variants_reported_once_per_group() {
        let mut inv = RouteInventory::new(10, 100, 50);
        let s = srv("a.example");
        assert!(inv.observe(&s, "/users", 1).is_empty());
        assert!(inv.observe(&s, "/users", 2).is_empty());
        assert!(inv.observe(&s, "/orders", 2).is_empty());
        // look-alikes that are different routes
        assert!(inv.observe(&s, "/users/{id}", 2).is_empty());
        assert!(inv.observe(&s, "/user", 2).is_empty());
        let cases = [("/Users", "case"), ("/orders/", "trailing slash")];
        for (r, how) in cases {
            let ev = inv.observe(&s, r, 3);
            assert_eq!(ev.len(), 1, "{r}");
            assert!(
                matches!(&ev[0], EndpointEvent::Variants { how: h, .. } if *h == how),
                "{ev:?}"
            );
        }
        // a third member of a reported group is not reported again
        assert!(inv.observe(&s, "/v1/users", 4).is_empty());
        let ev = inv.observe(&s, "/v2/orders/{id}", 4);
        assert!(ev.is_empty());
        let ev = inv.observe(&s, "/orders/{id}", 4);
        assert!(matches!(
            &ev[0],
            EndpointEvent::Variants {
                how: "version prefix",
                ..
            }
        ));
        // another server is another inventory
        assert!(inv.observe(&srv("b.example"), "/Users", 5).is_empty());
    }

    #[test]
    fn sprawl_reported_once_past_the_limit() {
        let mut inv = RouteInventory::new(10, 1000, 3);
        let s = srv("a");
        let mut events = Vec::new();
        for i in 0..10 {
            events.extend(inv.observe(&s, &format!("/r{i}x"), i));
        }
        assert_eq!(
            events,
            vec![EndpointEvent::Sprawl {
                routes: 4,
                limit: 3
            }]
        );
    }

    #[test]
    fn memory_is_bounded() {
        let mut inv = RouteInventory::new(2, 5, 3);
        for i in 0..100 {
            inv.observe(&srv(&format!("s{i}")), "/a", i);
        }
        assert_eq!(inv.servers(), 2);
        assert_eq!(inv.servers_evicted, 98);
        for i in 0..100 {
            inv.observe(&srv("s99"), &format!("/p{i}q"), 200);
        }
        assert_eq!(inv.routes_refused, 100 - 4);

        let mut ok = OkPaths::new(10);
        for i in 0..1000 {
            ok.remember(&srv("s"), format!("/p/{i}").as_bytes());
        }
        assert!(ok.len() <= 10);
        assert!(ok.contains(&srv("s"), b"/p/999"));
        assert!(!ok.contains(&srv("s"), b"/p/1"));
        assert!(!ok.contains(&srv("t"), b"/p/999"));
    }
}
