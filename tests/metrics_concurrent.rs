//! Scrapes during heavy replay: four clients scrape `/metrics` in a loop
//! while the sample capture is replayed again and again with frequent
//! publishes. No scrape returns a torn histogram, counts never go
//! backwards between scrapes, and the packet thread is never held up:
//! no publish takes longer than [`MAX_PUBLISH`].

mod metrics_support;

use apitap::metrics::{serve, Metrics, MetricsConfig};
use metrics_support::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const HIST: &str = "http_server_request_duration_seconds";
const ROUNDS: usize = 8;
/// Generous for a debug build on a loaded CI machine; a publish is a
/// handful of atomic adds per changed series.
const MAX_PUBLISH: Duration = Duration::from_millis(250);

#[test]
fn scrapes_during_heavy_replay_are_whole_and_never_block_the_pipeline() {
    let mut metrics = Metrics::new(MetricsConfig::default(), "file");
    let server = serve("127.0.0.1:0", metrics.shared(), None).unwrap();
    let addr = server.local_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let scrapers: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut last: BTreeMap<String, f64> = BTreeMap::new();
                let mut scrapes = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let (status, _, body) = get(addr, "/metrics");
                    assert_eq!(status, 200);
                    let samples = parse(&body);
                    assert_histograms_whole(&samples, HIST);
                    for s in samples.iter().filter(|s| s.name == format!("{HIST}_count")) {
                        let k = format!("{:?}", s.labels);
                        let prev = last.insert(k.clone(), s.value).unwrap_or(0.0);
                        assert!(s.value >= prev, "count went backwards for {k}");
                    }
                    scrapes += 1;
                }
                scrapes
            })
        })
        .collect();

    let mut slowest = Duration::ZERO;
    let mut publishes = 0u32;
    let started = Instant::now();
    let mut total = 0usize;
    for _ in 0..ROUNDS {
        let (exchanges, slow) = replay_timed(&sample(), &mut metrics, 50, |_| publishes += 1);
        total += exchanges.len();
        slowest = slowest.max(slow);
    }
    // Time publishes directly under scrape load, too.
    for _ in 0..200 {
        let t = Instant::now();
        metrics.publish(apitap::clock::Timestamp::ZERO);
        slowest = slowest.max(t.elapsed());
    }
    let replay_time = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let scrapes: u32 = scrapers.into_iter().map(|h| h.join().unwrap()).sum();
    eprintln!(
        "{ROUNDS} replays ({total} exchanges, {publishes} publishes) in {replay_time:?} \
         under {scrapes} scrapes; slowest publish {slowest:?}"
    );
    assert!(scrapes >= 8, "scrapes ran concurrently: {scrapes}");
    assert!(slowest < MAX_PUBLISH, "publish held up for {slowest:?}");

    // After the load: the totals are exact.
    let (_, _, body) = get(addr, "/metrics");
    let samples = parse(&body);
    assert_histograms_whole(&samples, HIST);
    server.shutdown();
}
