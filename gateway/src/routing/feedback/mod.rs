//! Feedback as memory: each scored request is an exemplar (its prompt's point in the router's
//! embedding space, the model, and the residual of its score against what the router predicted for
//! that model there), and a prediction moves only by the exemplars near its prompt.
//!
//! The kernel works on centred embeddings (the training prompts' mean subtracted, see
//! `EmbeddingSpace::centre`), where unrelated prompts have cosine ~0 and a prompt's tenth-nearest
//! neighbour among mix9's 5,489 prompts has ~0.45 (median; fast path): an exemplar counts with weight
//! `exp(-(1 - cos) / bandwidth)` when `cos >= similarity_floor`, not at all below. The shift is the
//! weighted mean residual shrunk by `feedback_prior_weight` pseudo-scores:
//! `Σ w·(score − base) / (Σ w + prior_weight)`, which for scores on the very prompt is the Beta-style
//! posterior mean the gateway always used.
//!
//! Bounds against poisoning: one exemplar per scored request (a later score replaces it); an exemplar
//! moves only its tenant's routing unless the tenant is trusted (`trusted_feedback`); a trusted
//! tenant's exemplars weigh at most `max_weight_per_tenant` together in another tenant's routing, and
//! all other tenants' feedback together moves a prediction at most `max_shift`. A tenant's own
//! feedback counts in full for itself: it can only steer its own routing.
//! Bounded in count (oldest evicted first) and tied to the embedding space it was recorded in:
//! exemplars of another artifact are ignored, then evicted.

mod shared;
pub(crate) mod wire;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

pub use shared::SharedFeedback;

/// `gateway.feedback_memory`: how feedback exemplars count.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FeedbackMemoryConfig {
    /// Exemplars kept (every replica, and Redis, keep the newest this many).
    #[serde(default = "default_entries")]
    pub entries: usize,
    /// Centred cosine below which an exemplar does not count for a prompt.
    #[serde(default = "default_floor")]
    pub similarity_floor: f64,
    /// How fast an exemplar's weight falls with distance: `exp(-(1 - cos) / bandwidth)`.
    #[serde(default = "default_bandwidth")]
    pub bandwidth: f64,
    /// Largest move other tenants' feedback may make to one prediction,
    /// either way.
    #[serde(default = "default_max_shift")]
    pub max_shift: f64,
    /// Most weight one tenant's exemplars may have together in another
    /// tenant's routing, in scores on the very prompt.
    #[serde(default = "default_max_weight_per_tenant")]
    pub max_weight_per_tenant: f64,
    /// A model the router does not know is onboarded into it (as
    /// `routemesh router onboard` does) once this many of its requests are
    /// scored by feedback every tenant may use (a trusted tenant's, or any
    /// without auth); 0 never.
    #[serde(default = "default_onboard_after")]
    pub onboard_after: usize,
}

fn default_onboard_after() -> usize {
    20
}

fn default_entries() -> usize {
    20_000
}
fn default_floor() -> f64 {
    0.3
}
fn default_bandwidth() -> f64 {
    0.25
}
fn default_max_shift() -> f64 {
    0.3
}
fn default_max_weight_per_tenant() -> f64 {
    5.0
}

impl Default for FeedbackMemoryConfig {
    fn default() -> Self {
        Self {
            entries: default_entries(),
            similarity_floor: default_floor(),
            bandwidth: default_bandwidth(),
            max_shift: default_max_shift(),
            max_weight_per_tenant: default_max_weight_per_tenant(),
            onboard_after: default_onboard_after(),
        }
    }
}

impl FeedbackMemoryConfig {
    /// The first key that is out of range, with why.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.entries == 0 {
            return Err(("entries", "must be at least 1".into()));
        }
        if !(-1.0..1.0).contains(&self.similarity_floor) {
            return Err((
                "similarity_floor",
                format!("{} is not in [-1, 1)", self.similarity_floor),
            ));
        }
        for (key, v) in [
            ("bandwidth", self.bandwidth),
            ("max_shift", self.max_shift),
            ("max_weight_per_tenant", self.max_weight_per_tenant),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err((key, format!("{v} is not a finite number above 0")));
            }
        }
        Ok(())
    }
}

/// A prompt's point in the router's embedding space: centred, unit length, int8 with one scale.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptPoint {
    pub codes: Box<[i8]>,
    pub scale: f32,
}

impl PromptPoint {
    /// From a raw embedding row and the space's centre (`None`: used as is).
    pub fn new(embedding: &[f32], centre: Option<&[f32]>) -> Option<Self> {
        let centred: Vec<f32> = match centre {
            Some(c) if c.len() == embedding.len() => {
                embedding.iter().zip(c).map(|(x, m)| x - m).collect()
            }
            _ => embedding.to_vec(),
        };
        let norm = centred.iter().map(|v| v * v).sum::<f32>().sqrt();
        let max = centred.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        if !(norm.is_finite() && norm > 0.0 && max > 0.0) {
            return None;
        }
        let scale = max / norm / 127.0;
        let codes = centred
            .iter()
            .map(|v| (v / norm / scale).round().clamp(-127.0, 127.0) as i8)
            .collect();
        Some(Self { codes, scale })
    }

    /// Cosine similarity with another point of the same space.
    pub fn cosine(&self, other: &PromptPoint) -> f64 {
        if self.codes.len() != other.codes.len() {
            return 0.0;
        }
        f64::from(dot_i8(&self.codes, &other.codes))
            * f64::from(self.scale)
            * f64::from(other.scale)
    }
}

/// Whose routing an exemplar moves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Every tenant's (feedback of a trusted tenant).
    Global,
    /// One tenant's own (`None`: the anonymous tenant of a gateway without auth).
    Tenant(Option<String>),
}

impl Scope {
    /// As the telemetry's per-scope feedback totals name it.
    pub fn label(&self) -> String {
        match self {
            Scope::Global => "*".into(),
            Scope::Tenant(None) => "-".into(),
            Scope::Tenant(Some(t)) => format!("t:{t}"),
        }
    }

    /// Whether an exemplar of this scope counts for a request of `owner`.
    fn covers(&self, owner: &Option<String>) -> bool {
        match self {
            Scope::Global => true,
            Scope::Tenant(t) => t == owner,
        }
    }
}

/// One scored request, as stored and shared.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackEntry {
    /// Unique per scored request (the owner and the request id).
    pub key: String,
    pub scope: Scope,
    /// The tenant that scored it (bounded weight per tenant).
    pub source: Option<String>,
    /// The served model name the score is for.
    pub model: String,
    pub score: f32,
    /// What was predicted for the model on this prompt before feedback.
    pub base: f32,
    /// The embedding space `point` is in (`EmbeddingSpace::id`).
    pub space: String,
    pub point: PromptPoint,
    /// The prompt's embedding itself (unit length, int8), which onboarding
    /// a model the router does not know learns from; `None` when not kept.
    pub embedding: Option<PromptPoint>,
    pub at_ms: u64,
}

/// What feedback does to one prediction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shift {
    /// Added to the prediction (already capped).
    pub delta: f64,
    /// Total kernel weight of the exemplars that counted.
    pub weight: f64,
    /// How many exemplars counted.
    pub exemplars: usize,
}

struct Row {
    entry: Arc<FeedbackEntry>,
    seq: u64,
}

/// The exemplars of one model in one embedding space: their codes back to back (what a query
/// scans), and each row's entry.
struct Bucket {
    dim: usize,
    codes: Vec<i8>,
    /// Each row's code scale, beside the codes: a query reads only these two until a row is near.
    scales: Vec<f32>,
    rows: Vec<Row>,
    /// The memory's sequence number at the bucket's last change.
    changed: u64,
}

impl PromptPoint {
    /// Back to floats (unit length up to the int8 rounding).
    pub fn to_f32(&self) -> Vec<f32> {
        self.codes
            .iter()
            .map(|&c| f32::from(c) * self.scale)
            .collect()
    }
}

/// A scored prompt as onboarding takes it: its embedding and its score.
pub type ScoredPrompt = (Vec<f32>, f64);

/// Where an entry is: its model, its space, its index in that bucket.
type Slot = (String, String, usize);

#[derive(Default)]
struct Rows {
    /// model -> space -> bucket.
    buckets: HashMap<String, HashMap<String, Bucket>>,
    by_key: HashMap<String, Slot>,
    /// Insertion order for eviction: (key, seq); stale when the key was replaced since.
    order: VecDeque<(String, u64)>,
    next_seq: u64,
    /// Counts every change to any bucket: a bucket's `changed` is never reused.
    changes: u64,
}

impl Rows {
    fn bucket(&self, model: &str, space: &str) -> Option<&Bucket> {
        self.buckets.get(model)?.get(space)
    }

    fn row(&self, key: &str) -> Option<&Row> {
        let (model, space, index) = self.by_key.get(key)?;
        self.bucket(model, space)?.rows.get(*index)
    }

    fn remove(&mut self, key: &str) -> Option<Arc<FeedbackEntry>> {
        let (model, space, index) = self.by_key.remove(key)?;
        let spaces = self.buckets.get_mut(&model)?;
        let bucket = spaces.get_mut(&space)?;
        let removed = bucket.rows.swap_remove(index);
        bucket.scales.swap_remove(index);
        self.changes += 1;
        bucket.changed = self.changes;
        let dim = bucket.dim;
        let last = bucket.rows.len();
        if index < last {
            bucket
                .codes
                .copy_within(last * dim..(last + 1) * dim, index * dim);
            if let Some(slot) = self.by_key.get_mut(&bucket.rows[index].entry.key) {
                slot.2 = index;
            }
        }
        bucket.codes.truncate(last * dim);
        if bucket.rows.is_empty() {
            spaces.remove(&space);
            if spaces.is_empty() {
                self.buckets.remove(&model);
            }
        }
        Some(removed.entry)
    }
}

/// The exemplars this gateway knows (its own and, with Redis, every replica's).
pub struct FeedbackMemory {
    config: FeedbackMemoryConfig,
    rows: RwLock<Rows>,
    len: AtomicUsize,
}

impl std::fmt::Debug for FeedbackMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedbackMemory")
            .field("len", &self.len())
            .finish()
    }
}

/// The int8 dot product a query scans with: compiled for AVX2 when this CPU has it (twice the lanes
/// and no i16 to i32 widening shuffles; the baseline x86-64 build has only SSE2), else [`dot_i8`].
fn best_dot() -> fn(&[i8], &[i8]) -> i32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        return avx2::dot_i8;
    }
    dot_i8
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    /// [`super::dot_i8`] compiled for AVX2. Only [`super::best_dot`] hands it out, after checking
    /// the CPU has AVX2.
    pub(super) fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
        // SAFETY: `best_dot` returns this function only when `is_x86_feature_detected!("avx2")`
        // said the CPU supports AVX2, which is all `with_avx2` requires.
        unsafe { with_avx2(a, b) }
    }

    #[target_feature(enable = "avx2")]
    fn with_avx2(a: &[i8], b: &[i8]) -> i32 {
        super::dot_i8(a, b)
    }
}

/// `Σ a·b` of two int8 rows, in 16 lanes over fixed-size blocks (each product fits i16: codes are
/// within ±127).
#[inline(always)]
fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    let mut lanes = [0i32; 16];
    let (mut xs, mut ys) = (a.chunks_exact(16), b.chunks_exact(16));
    for (x, y) in (&mut xs).zip(&mut ys) {
        // Fixed-size blocks: no bounds checks in the loop, so it vectorises.
        let (Ok(x), Ok(y)) = (<&[i8; 16]>::try_from(x), <&[i8; 16]>::try_from(y)) else {
            continue;
        };
        for k in 0..16 {
            lanes[k] += i32::from(i16::from(x[k]) * i16::from(y[k]));
        }
    }
    let tail: i32 = xs
        .remainder()
        .iter()
        .zip(ys.remainder())
        .map(|(&x, &y)| i32::from(x) * i32::from(y))
        .sum();
    lanes.iter().sum::<i32>() + tail
}

impl FeedbackMemory {
    pub fn new(config: FeedbackMemoryConfig) -> Self {
        Self {
            config,
            rows: RwLock::default(),
            len: AtomicUsize::new(0),
        }
    }

    pub fn config(&self) -> &FeedbackMemoryConfig {
        &self.config
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds an exemplar, replacing the one with the same key; evicts the oldest beyond the cap.
    /// O(1) amortised. An exemplar whose point has another dimension than its space's others is
    /// refused (false).
    pub fn insert(&self, entry: FeedbackEntry) -> bool {
        let mut rows = self.rows.write().unwrap_or_else(|e| e.into_inner());
        // The same record again (a replica reading back its own write): nothing changes.
        if rows.row(&entry.key).is_some_and(|r| *r.entry == entry) {
            return true;
        }
        let dim = entry.point.codes.len();
        if rows
            .bucket(&entry.model, &entry.space)
            .is_some_and(|b| b.dim != dim)
        {
            return false;
        }
        rows.remove(&entry.key);
        rows.changes += 1;
        let change = rows.changes;
        let seq = rows.next_seq;
        rows.next_seq += 1;
        let (key, model, space) = (entry.key.clone(), entry.model.clone(), entry.space.clone());
        let bucket = rows
            .buckets
            .entry(model.clone())
            .or_default()
            .entry(space.clone())
            .or_insert_with(|| Bucket {
                dim,
                codes: Vec::new(),
                scales: Vec::new(),
                rows: Vec::new(),
                changed: 0,
            });
        bucket.changed = change;
        bucket.codes.extend_from_slice(&entry.point.codes);
        bucket.scales.push(entry.point.scale);
        bucket.rows.push(Row {
            entry: Arc::new(entry),
            seq,
        });
        let index = bucket.rows.len() - 1;
        rows.by_key.insert(key.clone(), (model, space, index));
        rows.order.push_back((key, seq));
        while rows.by_key.len() > self.config.entries {
            let Some((oldest, oldest_seq)) = rows.order.pop_front() else {
                break;
            };
            if rows.row(&oldest).map(|r| r.seq) == Some(oldest_seq) {
                rows.remove(&oldest);
            }
        }
        // Stale order entries (replaced keys) would otherwise pile up under steady replacement.
        if rows.order.len() > 2 * self.config.entries.max(16) {
            let live: VecDeque<(String, u64)> = rows
                .order
                .iter()
                .filter(|(k, s)| rows.row(k).is_some_and(|r| r.seq == *s))
                .cloned()
                .collect();
            rows.order = live;
        }
        self.len.store(rows.by_key.len(), Ordering::Relaxed);
        true
    }

    /// What the exemplars near `point` (in `space`) do to `model`'s prediction for a request of
    /// `owner`; `None` when none counts. Exemplars recorded before `oldest_ms` are ignored.
    pub fn shift(
        &self,
        model: &str,
        space: &str,
        point: &PromptPoint,
        owner: &Option<String>,
        prior_weight: f64,
        oldest_ms: u64,
    ) -> Option<Shift> {
        if self.is_empty() {
            return None;
        }
        let rows = self.rows.read().unwrap_or_else(|e| e.into_inner());
        let bucket = rows.bucket(model, space)?;
        if bucket.dim != point.codes.len() {
            return None;
        }
        // Per tenant: (weight, weighted residual, exemplars).
        let mut per_source: Vec<(&Option<String>, f64, f64, usize)> = Vec::new();
        let query_scale = f64::from(point.scale);
        let dot = best_dot();
        let rows = bucket.codes.chunks_exact(bucket.dim).zip(&bucket.scales);
        for (i, (codes, &scale)) in rows.enumerate() {
            let cos = f64::from(dot(&point.codes, codes)) * query_scale * f64::from(scale);
            if cos < self.config.similarity_floor {
                continue;
            }
            let e = &bucket.rows[i].entry;
            if e.at_ms < oldest_ms || !e.scope.covers(owner) {
                continue;
            }
            let w = (-(1.0 - cos).max(0.0) / self.config.bandwidth).exp();
            let r = f64::from(e.score) - f64::from(e.base);
            match per_source.iter_mut().find(|s| *s.0 == e.source) {
                Some(s) => {
                    s.1 += w;
                    s.2 += w * r;
                    s.3 += 1;
                }
                None => per_source.push((&e.source, w, w * r, 1)),
            }
        }
        if per_source.is_empty() {
            return None;
        }
        // The requester's own feedback counts in full (it can only steer its
        // own routing); other (trusted) tenants' is bounded: each at most
        // `max_weight_per_tenant` scores on the very prompt, and all of it
        // together moves the prediction at most `max_shift`.
        let prior_weight = prior_weight.max(0.0);
        let (mut own_w, mut own_r) = (0.0, 0.0);
        let (mut all_w, mut all_r, mut exemplars) = (0.0, 0.0, 0);
        for (source, w, wr, n) in per_source {
            exemplars += n;
            if source == owner {
                own_w += w;
                own_r += wr;
                all_w += w;
                all_r += wr;
            } else {
                let cap = (self.config.max_weight_per_tenant / w).min(1.0);
                all_w += w * cap;
                all_r += wr * cap;
            }
        }
        let mean = |r: f64, w: f64| {
            if w + prior_weight > 0.0 {
                r / (w + prior_weight)
            } else {
                0.0
            }
        };
        let own = mean(own_r, own_w);
        let with_others = mean(all_r, all_w);
        let delta = own + (with_others - own).clamp(-self.config.max_shift, self.config.max_shift);
        (prior_weight > 0.0 || all_w > 0.0).then_some(Shift {
            delta,
            weight: all_w,
            exemplars,
        })
    }

    /// `model`'s exemplars in `space`: the bucket's change number and how
    /// many there are (cheap; see `scored`).
    pub fn changed(&self, model: &str, space: &str) -> Option<(u64, usize)> {
        let rows = self.rows.read().unwrap_or_else(|e| e.into_inner());
        rows.bucket(model, space).map(|b| (b.changed, b.rows.len()))
    }

    /// The embeddings and scores of `model`'s exemplars in `space` that
    /// `include` accepts (by scope), recorded from `oldest_ms` on, that kept their embedding, with the
    /// bucket's change number (the same number: nothing changed since).
    pub fn scored(
        &self,
        model: &str,
        space: &str,
        oldest_ms: u64,
        include: impl Fn(&Scope) -> bool,
    ) -> Option<(u64, Vec<ScoredPrompt>)> {
        let rows = self.rows.read().unwrap_or_else(|e| e.into_inner());
        let bucket = rows.bucket(model, space)?;
        let scored = bucket
            .rows
            .iter()
            .filter(|r| r.entry.at_ms >= oldest_ms && include(&r.entry.scope))
            .filter_map(|r| {
                let e = &r.entry;
                Some((e.embedding.as_ref()?.to_f32(), f64::from(e.score)))
            })
            .collect();
        Some((bucket.changed, scored))
    }

    /// The exemplar recorded under `key`, if held.
    pub fn get(&self, key: &str) -> Option<Arc<FeedbackEntry>> {
        let rows = self.rows.read().unwrap_or_else(|e| e.into_inner());
        rows.row(key).map(|r| r.entry.clone())
    }
}

/// The entry key of `owner`'s request `request_id`.
pub fn entry_key(owner: &Option<String>, request_id: &str) -> String {
    match owner {
        Some(t) => format!("t:{t}\u{1f}{request_id}"),
        None => format!("-\u{1f}{request_id}"),
    }
}

#[cfg(test)]
mod tests;
