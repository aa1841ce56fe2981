//! Telemetry over a [`HashStore`]: turns request records into windowed
//! counters and histograms, and reads them back as a [`Snapshot`] and as
//! spend reports. The same code runs against every store.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::histogram::{self, BUCKETS};
use crate::record::{FeedbackEvent, Outcome, RequestRecord};
use crate::store::{Apply, HashStore, HashUpdate, StoreError};
use crate::totals::{self, SlotTotals};

/// Counters are kept per 10-second slot, so a window can be short enough
/// for routing to notice a recovery within seconds.
const SLOT_MS: u64 = 10_000;
const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 86_400_000;
/// Slot series live long enough for the longest snapshot window.
const SLOT_TTL: Duration = Duration::from_secs(2 * 3600);
const HOUR_TTL: Duration = Duration::from_secs(8 * 86_400);
const DAY_TTL: Duration = Duration::from_secs(400 * 86_400);
const FEEDBACK_TTL: Duration = Duration::from_secs(31 * 86_400);
const SERIES_INDEX: &str = "tel:series";
/// Separates the parts of a field name; tenant and model names never hold it.
const SEP: char = '\u{1f}';

/// Which aggregate a series belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum Series {
    Worker(String),
    Model(String),
    Tenant(String),
}

impl Series {
    fn id(&self) -> String {
        match self {
            Series::Worker(w) => format!("w{SEP}{w}"),
            Series::Model(m) => format!("m{SEP}{m}"),
            Series::Tenant(t) => format!("t{SEP}{t}"),
        }
    }

    fn parse(id: &str) -> Option<Self> {
        let (kind, name) = id.split_once(SEP)?;
        Some(match kind {
            "w" => Series::Worker(name.into()),
            "m" => Series::Model(name.into()),
            "t" => Series::Tenant(name.into()),
            _ => return None,
        })
    }
}

fn slot_key(series_id: &str, slot: u64) -> String {
    format!("tel:{series_id}:{slot}")
}

/// Aggregated figures of one series over a window.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    pub requests: f64,
    pub errors: f64,
    pub timeouts: f64,
    pub overloaded: f64,
    pub error_rate: f64,
    pub ttft_ms_p50: Option<f64>,
    pub ttft_ms_p95: Option<f64>,
    pub ttft_ms_p99: Option<f64>,
    pub latency_ms_p50: Option<f64>,
    pub latency_ms_p95: Option<f64>,
    pub latency_ms_p99: Option<f64>,
    pub time_per_output_token_ms_p50: Option<f64>,
    pub mean_ttft_ms: Option<f64>,
    pub mean_latency_ms: Option<f64>,
    /// Decode speed: output tokens after the first per second of decoding.
    pub tokens_per_second: Option<f64>,
    pub prompt_tokens: f64,
    pub completion_tokens: f64,
    pub cost_usd: f64,
    pub cost_per_request_usd: Option<f64>,
}

/// Feedback scores for one model.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct QualityFeedback {
    pub sum: f64,
    pub count: f64,
    /// (sum, count) per scope (see `FeedbackEvent::scope`).
    pub by_scope: HashMap<String, (f64, f64)>,
}

impl QualityFeedback {
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0.0).then(|| self.sum / self.count)
    }
}

/// Everything the router reads, taken at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Snapshot {
    pub at_ms: u64,
    pub window_secs: u32,
    pub workers: HashMap<String, Stats>,
    pub models: HashMap<String, Stats>,
    pub tenants: HashMap<String, Stats>,
    pub feedback: HashMap<String, QualityFeedback>,
}

/// Spend of one tenant on one model in one period.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpendRow {
    /// Start of the hour or day, milliseconds since the epoch.
    pub period_start_ms: u64,
    pub tenant: String,
    pub model: String,
    pub cost_usd: f64,
    /// Client requests: each counted once, on the call that ended it (not
    /// on attempts that failed over, nor on a cascade's follow-up calls).
    pub requests: f64,
    /// Calls to workers: every attempt, failed-over and follow-up ones included.
    pub attempts: f64,
    pub prompt_tokens: f64,
    pub completion_tokens: f64,
    /// The part of the above spent on cascade follow-up calls (escalations
    /// and verification questions, whose requests another call counted):
    /// not part of the counterfactual.
    pub follow_up_cost_usd: f64,
    pub follow_up_prompt_tokens: f64,
    pub follow_up_completion_tokens: f64,
}

/// How often a cached snapshot reads every hash again.
pub const FULL_READ_EVERY_MS: u64 = 10_000;

/// The hashes of closed slots and past days a snapshot read, kept for the
/// next one (see [`Telemetry::snapshot_cached`]).
#[derive(Debug, Default)]
pub struct ReadCache {
    hashes: HashMap<String, HashMap<String, f64>>,
    full_read_at_ms: Option<u64>,
}

/// One writer's telemetry (a clone is the same writer).
#[derive(Clone)]
pub struct Telemetry {
    store: Arc<dyn HashStore>,
    /// This writer's running totals of its open slots; held across a
    /// write so flushes replace them in order.
    totals: Arc<tokio::sync::Mutex<SlotTotals>>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Telemetry")
    }
}

fn add(fields: &mut HashMap<String, f64>, field: impl Into<String>, by: f64) {
    *fields.entry(field.into()).or_insert(0.0) += by;
}

impl Telemetry {
    /// A writer of its own over `store` (each replica is one).
    pub fn new(store: Arc<dyn HashStore>) -> Self {
        Self {
            store,
            totals: Arc::new(tokio::sync::Mutex::new(SlotTotals::new())),
        }
    }

    /// Network round trips its store has made.
    pub fn round_trips(&self) -> u64 {
        self.store.round_trips()
    }

    /// Commands its store has sent (each of a pipeline counted).
    pub fn commands(&self) -> u64 {
        self.store.commands()
    }

    /// Records a batch in one store round trip (two with the index),
    /// aggregated: each series' slot is one replace of this writer's running
    /// totals, each spend period one increment per distinct field, however
    /// many records the batch holds.
    pub async fn record(&self, batch: &[RequestRecord]) -> Result<(), StoreError> {
        let mut slots: HashMap<(String, u64), HashMap<String, f64>> = HashMap::new();
        let mut hours: HashMap<u64, HashMap<String, f64>> = HashMap::new();
        let mut days: HashMap<u64, HashMap<String, f64>> = HashMap::new();
        let mut series_ids: Vec<String> = Vec::new();
        for r in batch {
            let slot = r.at_ms / SLOT_MS;
            for series in [
                Series::Worker(r.worker_id.clone()),
                Series::Model(r.model.clone()),
                Series::Tenant(r.tenant.clone()),
            ] {
                let id = series.id();
                let f = slots.entry((slot_key(&id, slot), slot)).or_default();
                if !series_ids.contains(&id) {
                    series_ids.push(id);
                }
                add(f, "n", 1.0);
                match r.outcome {
                    Outcome::Ok => {
                        add(f, "ok", 1.0);
                        add(f, "ttft_sum", r.ttft_ms);
                        add(f, "total_sum", r.total_ms);
                        add(f, format!("t{}", histogram::bucket(r.ttft_ms)), 1.0);
                        add(f, format!("l{}", histogram::bucket(r.total_ms)), 1.0);
                        if let Some(tpot) = r.time_per_output_token_ms() {
                            add(f, format!("p{}", histogram::bucket(tpot)), 1.0);
                            add(f, "decode_tok", f64::from(r.completion_tokens - 1));
                            add(f, "decode_ms", r.total_ms - r.ttft_ms);
                        }
                    }
                    Outcome::WorkerError => add(f, "err", 1.0),
                    Outcome::Timeout => add(f, "timeout", 1.0),
                    Outcome::Overloaded => add(f, "overloaded", 1.0),
                    Outcome::Cancelled => add(f, "cancelled", 1.0),
                }
                add(f, "tok_in", f64::from(r.prompt_tokens));
                add(f, "tok_out", f64::from(r.completion_tokens));
                add(f, "cost", r.cost_usd);
            }
            let spend_field = |name: &str| format!("{}{SEP}{}{SEP}{name}", r.tenant, r.model);
            for (period, map) in [
                (r.at_ms / HOUR_MS, &mut hours),
                (r.at_ms / DAY_MS, &mut days),
            ] {
                let f = map.entry(period).or_default();
                add(f, spend_field("cost"), r.cost_usd);
                // `n` counts calls, as it always has; `xn` the calls that are
                // not client requests. Requests are the difference, so data a
                // gateway of an older version writes still reads.
                add(f, spend_field("n"), 1.0);
                if !r.counts_request() {
                    add(f, spend_field("xn"), 1.0);
                }
                add(f, spend_field("tok_in"), f64::from(r.prompt_tokens));
                add(f, spend_field("tok_out"), f64::from(r.completion_tokens));
                if r.follow_up {
                    add(f, spend_field("fu_cost"), r.cost_usd);
                    add(f, spend_field("fu_in"), f64::from(r.prompt_tokens));
                    add(f, spend_field("fu_out"), f64::from(r.completion_tokens));
                }
            }
        }
        let newest_slot = slots.keys().map(|(_, slot)| *slot).max().unwrap_or(0);
        let mut totals = self.totals.lock().await;
        let (mut updates, uncommitted) = totals.updates(slots, SLOT_TTL);
        updates.extend(hours.into_iter().map(|(h, f)| HashUpdate {
            key: format!("spend:h:{h}"),
            ttl: HOUR_TTL,
            fields: f.into_iter().collect(),
            apply: Apply::Add,
        }));
        updates.extend(days.into_iter().map(|(d, f)| HashUpdate {
            key: format!("spend:d:{d}"),
            ttl: DAY_TTL,
            fields: f.into_iter().collect(),
            apply: Apply::Add,
        }));
        self.store.update(&updates).await?;
        totals.commit(uncommitted, newest_slot);
        drop(totals);
        self.store
            .index_add(SERIES_INDEX, &series_ids, SLOT_TTL)
            .await
    }

    /// Records feedback scores, per model and per (model, scope), by day.
    ///
    /// The store keeps only additive sums (a sum and a count per day and
    /// scope, incremented in place, shared by every replica), not one row
    /// per request, so a score that replaces an earlier one for the same
    /// request is recorded as its difference: `score - replaced` added to
    /// the sum and nothing to the count. The mean then counts the request
    /// once, with its latest score. The difference lands in the earlier
    /// score's day (`at_ms` is that score's time), so the score and its
    /// corrections leave the `feedback_days` window together.
    pub async fn record_feedback(&self, batch: &[FeedbackEvent]) -> Result<(), StoreError> {
        let mut days: HashMap<u64, HashMap<String, f64>> = HashMap::new();
        for e in batch {
            let f = days.entry(e.at_ms / DAY_MS).or_default();
            let sum = format!("{}{SEP}{}{SEP}sum", e.model, e.scope);
            match e.replaces {
                Some(earlier) => add(f, sum, e.score - earlier),
                None => {
                    add(f, sum, e.score);
                    add(f, format!("{}{SEP}{}{SEP}n", e.model, e.scope), 1.0);
                }
            }
        }
        let updates: Vec<HashUpdate> = days
            .into_iter()
            .map(|(d, f)| HashUpdate {
                key: format!("fb:{d}"),
                ttl: FEEDBACK_TTL,
                fields: f.into_iter().collect(),
                apply: Apply::Add,
            })
            .collect();
        self.store.update(&updates).await
    }

    /// Aggregates over the last `window_secs` seconds (in 10-second slots, the
    /// current one included) and feedback over the last `feedback_days` days.
    pub async fn snapshot(
        &self,
        now_ms: u64,
        window_secs: u32,
        feedback_days: u32,
    ) -> Result<Snapshot, StoreError> {
        self.snapshot_cached(
            now_ms,
            window_secs,
            feedback_days,
            &mut ReadCache::default(),
        )
        .await
    }

    /// [`Self::snapshot`], reading again only what can still change: the
    /// current and the previous slot and today's feedback, plus whatever
    /// `cache` does not hold; everything every [`FULL_READ_EVERY_MS`] (so
    /// writes that arrive late, as after an outage, are seen within it).
    pub async fn snapshot_cached(
        &self,
        now_ms: u64,
        window_secs: u32,
        feedback_days: u32,
        cache: &mut ReadCache,
    ) -> Result<Snapshot, StoreError> {
        let series: Vec<Series> = self
            .store
            .index(SERIES_INDEX)
            .await?
            .iter()
            .filter_map(|id| Series::parse(id))
            .collect();
        let this_slot = now_ms / SLOT_MS;
        // The current slot is partial: one more slot keeps at least `window_secs`
        // of history at every moment.
        let slot_count = u64::from(window_secs).div_ceil(SLOT_MS / 1000).max(1) + 1;
        let slots: Vec<u64> = (0..slot_count)
            .filter_map(|i| this_slot.checked_sub(i))
            .collect();
        let mut keys: Vec<(String, bool)> = series
            .iter()
            .flat_map(|s| {
                slots
                    .iter()
                    .map(move |m| (slot_key(&s.id(), *m), *m + 1 >= this_slot))
            })
            .collect();
        let today = now_ms / DAY_MS;
        let fb_days: Vec<u64> = (0..u64::from(feedback_days.max(1)))
            .filter_map(|i| today.checked_sub(i))
            .collect();
        keys.extend(fb_days.iter().map(|d| (format!("fb:{d}"), *d == today)));
        let full = cache
            .full_read_at_ms
            .is_none_or(|at| now_ms < at || now_ms - at >= FULL_READ_EVERY_MS);
        let wanted: Vec<String> = keys
            .iter()
            .filter(|(key, hot)| full || *hot || !cache.hashes.contains_key(key))
            .map(|(key, _)| key.clone())
            .collect();
        let mut read = self.store.read(&wanted).await?.into_iter();
        let mut hashes: Vec<HashMap<String, f64>> = Vec::with_capacity(keys.len());
        for (key, hot) in &keys {
            let hash = if full || *hot || !cache.hashes.contains_key(key) {
                read.next().unwrap_or_default()
            } else {
                cache.hashes.get(key).cloned().unwrap_or_default()
            };
            hashes.push(hash);
        }
        cache.hashes = keys
            .iter()
            .zip(&hashes)
            .filter(|((_, hot), _)| !hot)
            .map(|((key, _), hash)| (key.clone(), hash.clone()))
            .collect();
        if full {
            cache.full_read_at_ms = Some(now_ms);
        }

        let mut snapshot = Snapshot {
            at_ms: now_ms,
            window_secs,
            ..Snapshot::default()
        };
        let per_series = slots.len();
        for (i, s) in series.iter().enumerate() {
            let merged = merge(&hashes[i * per_series..(i + 1) * per_series], true);
            if merged.get("n").copied().unwrap_or(0.0) <= 0.0 {
                continue;
            }
            let stats = stats(&merged);
            match s {
                Series::Worker(w) => snapshot.workers.insert(w.clone(), stats),
                Series::Model(m) => snapshot.models.insert(m.clone(), stats),
                Series::Tenant(t) => snapshot.tenants.insert(t.clone(), stats),
            };
        }
        for (field, value) in merge(&hashes[series.len() * per_series..], false) {
            let mut parts = field.split(SEP);
            let (Some(model), Some(scope), Some(kind)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let fb = snapshot.feedback.entry(model.to_string()).or_default();
            let slot = fb.by_scope.entry(scope.to_string()).or_default();
            match kind {
                "sum" => {
                    fb.sum += value;
                    slot.0 += value;
                }
                "n" => {
                    fb.count += value;
                    slot.1 += value;
                }
                _ => {}
            }
        }
        Ok(snapshot)
    }

    /// Spend per tenant and model per hour (or day) over `[from_ms, to_ms)`.
    pub async fn spend(
        &self,
        from_ms: u64,
        to_ms: u64,
        daily: bool,
    ) -> Result<Vec<SpendRow>, StoreError> {
        let (period, prefix) = if daily {
            (DAY_MS, "spend:d:")
        } else {
            (HOUR_MS, "spend:h:")
        };
        let periods: Vec<u64> = (from_ms / period..to_ms.div_ceil(period))
            .take(24 * 400)
            .collect();
        let keys: Vec<String> = periods.iter().map(|p| format!("{prefix}{p}")).collect();
        let hashes = self.store.read(&keys).await?;
        let mut rows: Vec<SpendRow> = Vec::new();
        for (p, hash) in periods.iter().zip(hashes) {
            let mut by_pair: HashMap<(String, String), SpendRow> = HashMap::new();
            for (field, value) in hash {
                let mut parts = field.split(SEP);
                let (Some(tenant), Some(model), Some(kind)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                let row = by_pair
                    .entry((tenant.into(), model.into()))
                    .or_insert_with(|| SpendRow {
                        period_start_ms: p * period,
                        tenant: tenant.into(),
                        model: model.into(),
                        cost_usd: 0.0,
                        requests: 0.0,
                        attempts: 0.0,
                        prompt_tokens: 0.0,
                        completion_tokens: 0.0,
                        follow_up_cost_usd: 0.0,
                        follow_up_prompt_tokens: 0.0,
                        follow_up_completion_tokens: 0.0,
                    });
                match kind {
                    "cost" => row.cost_usd += value,
                    "n" => {
                        row.attempts += value;
                        row.requests += value;
                    }
                    "xn" => row.requests -= value,
                    "tok_in" => row.prompt_tokens += value,
                    "tok_out" => row.completion_tokens += value,
                    "fu_cost" => row.follow_up_cost_usd += value,
                    "fu_in" => row.follow_up_prompt_tokens += value,
                    "fu_out" => row.follow_up_completion_tokens += value,
                    _ => {}
                }
            }
            let mut period_rows: Vec<SpendRow> = by_pair.into_values().collect();
            period_rows.sort_by(|a, b| (&a.tenant, &a.model).cmp(&(&b.tenant, &b.model)));
            rows.extend(period_rows);
        }
        Ok(rows)
    }
}

/// Sums `hashes` field by field; slot hashes (`by_writer`) are summed over
/// their writers too.
fn merge(hashes: &[HashMap<String, f64>], by_writer: bool) -> HashMap<String, f64> {
    let mut merged = HashMap::new();
    for h in hashes {
        for (k, v) in h {
            let name = if by_writer { totals::field_name(k) } else { k };
            *merged.entry(name.to_string()).or_insert(0.0) += v;
        }
    }
    merged
}

fn histogram_of(merged: &HashMap<String, f64>, prefix: char) -> [f64; BUCKETS] {
    let mut counts = [0.0; BUCKETS];
    for (field, value) in merged {
        if let Some(i) = field
            .strip_prefix(prefix)
            .and_then(|i| i.parse::<usize>().ok())
            && i < BUCKETS
        {
            counts[i] += value;
        }
    }
    counts
}

fn stats(m: &HashMap<String, f64>) -> Stats {
    let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
    let (n, ok) = (get("n"), get("ok"));
    let errors = get("err") + get("timeout") + get("overloaded");
    let (ttft, total, tpot) = (
        histogram_of(m, 't'),
        histogram_of(m, 'l'),
        histogram_of(m, 'p'),
    );
    let per_ok = |k: &str| (ok > 0.0).then(|| get(k) / ok);
    Stats {
        requests: n,
        errors,
        timeouts: get("timeout"),
        overloaded: get("overloaded"),
        error_rate: if n > 0.0 { errors / n } else { 0.0 },
        ttft_ms_p50: histogram::quantile(&ttft, 0.5),
        ttft_ms_p95: histogram::quantile(&ttft, 0.95),
        ttft_ms_p99: histogram::quantile(&ttft, 0.99),
        latency_ms_p50: histogram::quantile(&total, 0.5),
        latency_ms_p95: histogram::quantile(&total, 0.95),
        latency_ms_p99: histogram::quantile(&total, 0.99),
        time_per_output_token_ms_p50: histogram::quantile(&tpot, 0.5),
        mean_ttft_ms: per_ok("ttft_sum"),
        mean_latency_ms: per_ok("total_sum"),
        tokens_per_second: (get("decode_ms") > 0.0)
            .then(|| get("decode_tok") * 1000.0 / get("decode_ms")),
        prompt_tokens: get("tok_in"),
        completion_tokens: get("tok_out"),
        cost_usd: get("cost"),
        cost_per_request_usd: (n > 0.0).then(|| get("cost") / n),
    }
}
