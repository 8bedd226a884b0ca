//! Counters behind `GET /metrics`, printed in the Prometheus text format (version 0.0.4).
//!
//! One mutex over small maps: a request takes it once, for well under a microsecond, which
//! is nothing next to a search; a metrics crate would bring more than it saves.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default)]
struct Histogram {
    /// Observations at or below each bound (not cumulative; summed when printed).
    buckets: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
}

/// Request counts by route and status, latency histograms by route, and index saves.
#[derive(Default)]
pub(crate) struct Metrics {
    inner: Mutex<Inner>,
    saves: AtomicU64,
    reloads: AtomicU64,
}

impl Metrics {
    /// Counts one answered request.
    pub fn record(&self, route: &str, status: u16, took: Duration) {
        let secs = took.as_secs_f64();
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *m.requests.entry((route.to_string(), status)).or_default() += 1;
        let h = m.latency.entry(route.to_string()).or_default();
        if let Some(i) = BUCKETS.iter().position(|&b| secs <= b) {
            h.buckets[i] += 1;
        }
        h.sum += secs;
        h.count += 1;
    }

    /// Counts one save of the index (which may hold several adds).
    pub fn saved(&self) {
        self.saves.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one reopening of the index after another process saved it.
    pub fn reloaded(&self) {
        self.reloads.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text: the counters, plus the gauges given.
    pub fn render(&self, index_vectors: usize, inflight: usize) -> String {
        let m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        let w = &mut out;
        // invariant: writing to a String cannot fail
        let _ = writeln!(
            w,
            "# HELP rewa_http_requests_total Requests answered, by route and status.\n\
             # TYPE rewa_http_requests_total counter"
        );
        for ((route, status), n) in &m.requests {
            let _ = writeln!(
                w,
                "rewa_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        let _ = writeln!(
            w,
            "# HELP rewa_http_request_duration_seconds Time from a request's arrival to its answer, by route.\n\
             # TYPE rewa_http_request_duration_seconds histogram"
        );
        for (route, h) in &m.latency {
            let mut cumulative = 0;
            for (b, n) in BUCKETS.iter().zip(&h.buckets) {
                cumulative += n;
                let _ = writeln!(
                    w,
                    "rewa_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{b}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                w,
                "rewa_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}\n\
                 rewa_http_request_duration_seconds_sum{{route=\"{route}\"}} {}\n\
                 rewa_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                h.count, h.sum, h.count
            );
        }
        let _ = writeln!(
            w,
            "# HELP rewa_index_vectors Vectors in the served index.\n\
             # TYPE rewa_index_vectors gauge\n\
             rewa_index_vectors {index_vectors}\n\
             # HELP rewa_inflight_requests Search, add and delete requests being answered.\n\
             # TYPE rewa_inflight_requests gauge\n\
             rewa_inflight_requests {inflight}\n\
             # HELP rewa_index_saves_total Saves of the index; adds that queue during one share the next.\n\
             # TYPE rewa_index_saves_total counter\n\
             rewa_index_saves_total {}\n\
             # HELP rewa_index_reloads_total Reopenings of the index after another process saved it.\n\
             # TYPE rewa_index_reloads_total counter\n\
             rewa_index_reloads_total {}",
            self.saves.load(Ordering::Relaxed),
            self.reloads.load(Ordering::Relaxed)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_counts_by_status() {
        let m = Metrics::default();
        m.record("/search", 200, Duration::from_micros(300));
        m.record("/search", 200, Duration::from_millis(3));
        m.record("/search", 400, Duration::from_secs(60));
        m.saved();
        m.saved();
        m.reloaded();
        let t = m.render(7, 1);
        for line in [
            "rewa_http_requests_total{route=\"/search\",status=\"200\"} 2",
            "rewa_http_requests_total{route=\"/search\",status=\"400\"} 1",
            "rewa_http_request_duration_seconds_bucket{route=\"/search\",le=\"0.0005\"} 1",
            "rewa_http_request_duration_seconds_bucket{route=\"/search\",le=\"0.005\"} 2",
            "rewa_http_request_duration_seconds_bucket{route=\"/search\",le=\"10\"} 2",
            "rewa_http_request_duration_seconds_bucket{route=\"/search\",le=\"+Inf\"} 3",
            "rewa_http_request_duration_seconds_count{route=\"/search\"} 3",
            "rewa_index_vectors 7",
            "rewa_inflight_requests 1",
            "rewa_index_saves_total 2",
            "rewa_index_reloads_total 1",
        ] {
            assert!(t.lines().any(|l| l == line), "no {line:?} in\n{t}");
        }
    }
}
