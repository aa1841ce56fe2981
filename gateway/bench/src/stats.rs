//! Recording one run: HDR histograms of latency, error counts by status, and
//! the summary printed as JSON or as a human table.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Longest latency a histogram holds (60 s, in microseconds); longer values
/// are clamped to it, which only a broken run ever sees.
const MAX_MICROS: u64 = 60_000_000;

/// A histogram of durations in microseconds with 3 significant digits
/// (0.1% relative error), enough to compare sub-millisecond quantiles.
#[derive(Debug)]
pub struct Hist(Histogram<u64>);

impl Hist {
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self(Histogram::new_with_bounds(1, MAX_MICROS, 3)?))
    }

    pub fn record(&mut self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(MAX_MICROS);
        // Clamped into the range, so a recording never fails or is lost.
        self.0.saturating_record(micros.clamp(1, MAX_MICROS));
    }

    pub fn len(&self) -> u64 {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Quantiles in milliseconds, or `None` when nothing was recorded.
    pub fn summary(&self) -> Option<Quantiles> {
        if self.0.is_empty() {
            return None;
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        Some(Quantiles {
            count: self.0.len(),
            min: ms(self.0.min()),
            mean: self.0.mean() / 1000.0,
            p50: ms(self.0.value_at_quantile(0.50)),
            p90: ms(self.0.value_at_quantile(0.90)),
            p99: ms(self.0.value_at_quantile(0.99)),
            p99_9: ms(self.0.value_at_quantile(0.999)),
            max: ms(self.0.max()),
        })
    }
}

/// Quantiles of one histogram, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Quantiles {
    pub count: u64,
    pub min: f64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
}

/// How one request ended.
#[derive(Debug)]
pub enum Outcome {
    /// A complete answer; `first` is when the first text delta arrived
    /// (streaming targets only), measured from the actual send; `deltas` how
    /// many text deltas the stream carried.
    Ok {
        first: Option<Duration>,
        deltas: u64,
    },
    /// A failure, labelled by status (e.g. `grpc UNAVAILABLE`, `http 429`).
    Err(String),
}

#[derive(Debug)]
struct Inner {
    /// From the scheduled send time (open loop) or the send (closed loop) to
    /// the complete answer: the latency a user of the system would see.
    latency: Hist,
    /// From the actual send to the complete answer.
    service: Hist,
    /// From the actual send to the first text delta (streaming only).
    ttft: Hist,
    /// How late the load generator sent each request (open loop only).
    send_lag: Hist,
    errors: BTreeMap<String, u64>,
    /// Text deltas received by successful streams.
    deltas: u64,
    /// Seconds from the start of measurement to the last recorded completion.
    last_done: Duration,
}

/// Shared by every request task. A plain mutex: each record takes well under
/// a microsecond, so on two cores the lock is almost never contended.
#[derive(Debug)]
pub struct Recorder(Mutex<Inner>);

impl Recorder {
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self(Mutex::new(Inner {
            latency: Hist::new()?,
            service: Hist::new()?,
            ttft: Hist::new()?,
            send_lag: Hist::new()?,
            errors: BTreeMap::new(),
            deltas: 0,
            last_done: Duration::ZERO,
        })))
    }

    /// Records one measured request. `lag` is how late it was sent after its
    /// scheduled time (zero in closed loop), `service` the time from the
    /// actual send, `done_at` when it ended relative to the measured window.
    pub fn record(&self, outcome: Outcome, lag: Duration, service: Duration, done_at: Duration) {
        let Ok(mut inner) = self.0.lock() else {
            return;
        };
        inner.send_lag.record(lag);
        inner.last_done = inner.last_done.max(done_at);
        match outcome {
            Outcome::Ok { first, deltas } => {
                inner.deltas += deltas;
                inner.latency.record(lag + service);
                inner.service.record(service);
                if let Some(first) = first {
                    inner.ttft.record(first);
                }
            }
            Outcome::Err(label) => *inner.errors.entry(label).or_insert(0) += 1,
        }
    }

    /// Counts a request the generator could not send because too many were
    /// already in flight (open loop): the system under test fell behind.
    pub fn record_dropped(&self) {
        if let Ok(mut inner) = self.0.lock() {
            *inner
                .errors
                .entry("client: too many in flight".into())
                .or_insert(0) += 1;
        }
    }

    pub fn finish(&self, meta: RunMeta) -> Report {
        let Ok(inner) = self.0.lock() else {
            return Report::empty(meta);
        };
        let ok = inner.latency.len();
        let errors: u64 = inner.errors.values().sum();
        // The window is at least the nominal duration; when the system fell
        // behind, answers keep arriving after it, and the rate counts them
        // over the longer span.
        let span = inner.last_done.max(meta.duration).as_secs_f64();
        Report {
            requests: ok + errors,
            ok,
            errors: inner.errors.clone(),
            achieved_rate: if span > 0.0 { ok as f64 / span } else { 0.0 },
            deltas: inner.deltas,
            deltas_per_second: if span > 0.0 {
                inner.deltas as f64 / span
            } else {
                0.0
            },
            latency_ms: inner.latency.summary(),
            service_time_ms: inner.service.summary(),
            ttft_ms: inner.ttft.summary(),
            send_lag_ms: if meta.mode == "open-loop" {
                inner.send_lag.summary()
            } else {
                None
            },
            meta,
        }
    }
}

/// What was run, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct RunMeta {
    pub target: String,
    pub url: String,
    pub model: String,
    pub mode: &'static str,
    /// Requests per second offered (open loop).
    pub rate: Option<f64>,
    /// Clients sending back to back (closed loop).
    pub concurrency: Option<usize>,
    pub connections: usize,
    #[serde(serialize_with = "secs")]
    pub duration: Duration,
    #[serde(serialize_with = "secs")]
    pub warmup: Duration,
    /// Unix time when measurement started.
    pub started_unix: f64,
    /// /proc/loadavg (1, 5, 15 min) before and after: the machine is shared,
    /// so every figure should be read with the load it ran under.
    pub loadavg_before: Option<[f64; 3]>,
    pub loadavg_after: Option<[f64; 3]>,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// The outcome of one run.
#[derive(Debug, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub meta: RunMeta,
    /// Measured requests (after warm-up): ok + errors.
    pub requests: u64,
    pub ok: u64,
    /// Failed requests by status.
    pub errors: BTreeMap<String, u64>,
    /// Successful answers per second over the measured window.
    pub achieved_rate: f64,
    /// Text deltas received by successful streams (0 for unary targets).
    pub deltas: u64,
    /// Deltas per second: the token rate passed through (one sim token is
    /// one delta).
    pub deltas_per_second: f64,
    /// Latency of successful requests: in open loop from the scheduled send
    /// time, so a stalled server cannot hide its queue (no coordinated omission).
    pub latency_ms: Option<Quantiles>,
    /// From the actual send (what a closed-loop tool would report).
    pub service_time_ms: Option<Quantiles>,
    /// Time to the first text delta (streaming targets).
    pub ttft_ms: Option<Quantiles>,
    /// How late the generator itself sent requests (open loop); large values
    /// mean the generator, not the system under test, was short of CPU.
    pub send_lag_ms: Option<Quantiles>,
}

impl Report {
    fn empty(meta: RunMeta) -> Self {
        Self {
            meta,
            requests: 0,
            ok: 0,
            errors: BTreeMap::new(),
            achieved_rate: 0.0,
            deltas: 0,
            deltas_per_second: 0.0,
            latency_ms: None,
            service_time_ms: None,
            ttft_ms: None,
            send_lag_ms: None,
        }
    }

    /// The human summary.
    pub fn human(&self) -> String {
        let m = &self.meta;
        let mut out = format!(
            "target    {} {} (model {:?})\nmode      {}{}, {} connection(s), {:.1} s measured after {:.1} s warm-up\n",
            m.target,
            m.url,
            m.model,
            m.mode,
            match (m.rate, m.concurrency) {
                (Some(r), _) => format!(" at {r} req/s"),
                (None, Some(c)) => format!(" with {c} clients"),
                _ => String::new(),
            },
            m.connections,
            m.duration.as_secs_f64(),
            m.warmup.as_secs_f64(),
        );
        out += &format!(
            "requests  {} ok, {} failed, {:.1} ok/s achieved\n",
            self.ok,
            self.requests - self.ok,
            self.achieved_rate
        );
        if self.deltas > 0 {
            out += &format!(
                "stream    {} deltas, {:.0} deltas/s\n",
                self.deltas, self.deltas_per_second
            );
        }
        for (label, n) in &self.errors {
            out += &format!("  error   {label}: {n}\n");
        }
        out += &format!(
            "{:<16}{:>9}{:>9}{:>9}{:>9}{:>9}{:>9}\n",
            "(ms)", "p50", "p90", "p99", "p99.9", "max", "mean"
        );
        for (name, q) in [
            ("latency", &self.latency_ms),
            ("service time", &self.service_time_ms),
            ("first delta", &self.ttft_ms),
            ("send lag", &self.send_lag_ms),
        ] {
            if let Some(q) = q {
                out += &format!(
                    "{name:<16}{:>9.3}{:>9.3}{:>9.3}{:>9.3}{:>9.3}{:>9.3}\n",
                    q.p50, q.p90, q.p99, q.p99_9, q.max, q.mean
                );
            }
        }
        if let (Some(b), Some(a)) = (m.loadavg_before, m.loadavg_after) {
            out += &format!(
                "load avg  before {:.2} {:.2} {:.2}, after {:.2} {:.2} {:.2}\n",
                b[0], b[1], b[2], a[0], a[1], a[2]
            );
        }
        out
    }
}

/// The 1, 5 and 15 minute load averages, where /proc has them.
pub fn loadavg() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn quantiles_are_ordered_and_in_milliseconds() {
        let mut h = Hist::new().unwrap();
        for us in 1..=10_000u64 {
            h.record(Duration::from_micros(us));
        }
        let q = h.summary().unwrap();
        assert_eq!(q.count, 10_000);
        assert!((q.p50 - 5.0).abs() < 0.01, "{q:?}");
        assert!(q.p50 <= q.p90 && q.p90 <= q.p99 && q.p99 <= q.p99_9 && q.p99_9 <= q.max);
        assert!((q.max - 10.0).abs() < 0.01, "{q:?}");
    }

    #[test]
    fn open_loop_latency_includes_the_send_lag() {
        let r = Recorder::new().unwrap();
        r.record(
            Outcome::Ok {
                first: None,
                deltas: 3,
            },
            Duration::from_millis(5),
            Duration::from_millis(1),
            Duration::from_secs(1),
        );
        r.record(
            Outcome::Err("grpc UNAVAILABLE".into()),
            Duration::ZERO,
            Duration::from_millis(1),
            Duration::from_secs(1),
        );
        r.record_dropped();
        let report = r.finish(RunMeta {
            target: "t".into(),
            url: "u".into(),
            model: String::new(),
            mode: "open-loop",
            rate: Some(1.0),
            concurrency: None,
            connections: 1,
            duration: Duration::from_secs(2),
            warmup: Duration::ZERO,
            started_unix: 0.0,
            loadavg_before: None,
            loadavg_after: None,
        });
        assert_eq!(report.ok, 1);
        assert_eq!(report.requests, 3);
        assert_eq!(report.errors["grpc UNAVAILABLE"], 1);
        let latency = report.latency_ms.unwrap();
        assert!((latency.p50 - 6.0).abs() < 0.01, "{latency:?}");
        assert!((report.service_time_ms.unwrap().p50 - 1.0).abs() < 0.01);
        assert!((report.achieved_rate - 0.5).abs() < 1e-9);
        assert_eq!(report.deltas, 3);
    }
}
