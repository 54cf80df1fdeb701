//! Prometheus metrics of every RPC, recorded in the authorization layer that all three doors
//! pass through, and rendered at `/metrics` in the text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;
use tonic::Code;

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Default)]
struct Series {
    count: u64,
    seconds_sum: f64,
    /// Observations per bucket (not cumulative); the last slot is +Inf.
    buckets: [u64; BUCKETS.len() + 1],
}

#[derive(Default)]
pub struct Metrics {
    /// By gRPC method path, then status code.
    series: Mutex<BTreeMap<String, BTreeMap<i32, Series>>>,
    /// Calls refused by a rate limit, by the budget's class.
    rate_limited: Mutex<BTreeMap<&'static str, u64>>,
}

impl Metrics {
    pub fn rate_limited(&self, class: &'static str) {
        *self
            .rate_limited
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(class)
            .or_default() += 1;
    }

    pub fn record(&self, method: &str, code: Code, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BUCKETS.len());
        let mut series = self
            .series
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !series.contains_key(method) {
            series.insert(method.to_owned(), BTreeMap::new());
        }
        let Some(by_code) = series.get_mut(method) else {
            return;
        };
        let entry = by_code.entry(code as i32).or_default();
        entry.count += 1;
        entry.seconds_sum += seconds;
        entry.buckets[bucket] += 1;
    }

    pub fn render(&self) -> String {
        let series = self
            .series
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP keel_rpc_requests_total RPCs handled, by method and gRPC status code (all doors).\n\
             # TYPE keel_rpc_requests_total counter"
        );
        for (method, by_code) in series.iter() {
            for (code, stats) in by_code {
                let _ = writeln!(
                    out,
                    "keel_rpc_requests_total{{method=\"{method}\",code=\"{:?}\"}} {}",
                    Code::from_i32(*code),
                    stats.count
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP keel_rpc_duration_seconds Time to the RPC's response, by method.\n\
             # TYPE keel_rpc_duration_seconds histogram"
        );
        for (method, by_code) in series.iter() {
            let mut stats = Series::default();
            for code_stats in by_code.values() {
                stats.count += code_stats.count;
                stats.seconds_sum += code_stats.seconds_sum;
                for (slot, observed) in stats.buckets.iter_mut().zip(code_stats.buckets) {
                    *slot += observed;
                }
            }
            let mut cumulative = 0;
            for (bound, observed) in BUCKETS.iter().zip(stats.buckets) {
                cumulative += observed;
                let _ = writeln!(
                    out,
                    "keel_rpc_duration_seconds_bucket{{method=\"{method}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "keel_rpc_duration_seconds_bucket{{method=\"{method}\",le=\"+Inf\"}} {}\n\
                 keel_rpc_duration_seconds_sum{{method=\"{method}\"}} {}\n\
                 keel_rpc_duration_seconds_count{{method=\"{method}\"}} {}",
                stats.count, stats.seconds_sum, stats.count
            );
        }
        let _ = writeln!(
            out,
            "# HELP keel_rate_limited_total Calls refused by a rate limit, by the budget's class.\n\
             # TYPE keel_rate_limited_total counter"
        );
        for (class, count) in self
            .rate_limited
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
        {
            let _ = writeln!(out, "keel_rate_limited_total{{class=\"{class}\"}} {count}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let metrics = Metrics::default();
        metrics.record("/a.B/C", Code::Ok, Duration::from_micros(300));
        metrics.record("/a.B/C", Code::Unauthenticated, Duration::from_millis(3));
        let text = metrics.render();
        assert!(text.contains("keel_rpc_requests_total{method=\"/a.B/C\",code=\"Ok\"} 1"));
        assert!(
            text.contains("keel_rpc_requests_total{method=\"/a.B/C\",code=\"Unauthenticated\"} 1")
        );
        assert!(
            text.contains("keel_rpc_duration_seconds_bucket{method=\"/a.B/C\",le=\"0.0005\"} 1")
        );
        assert!(
            text.contains("keel_rpc_duration_seconds_bucket{method=\"/a.B/C\",le=\"0.005\"} 2")
        );
        assert!(text.contains("keel_rpc_duration_seconds_count{method=\"/a.B/C\"} 2"));
    }
}
