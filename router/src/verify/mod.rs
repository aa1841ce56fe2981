//! The learned answer verifier of cascades (FrugalGPT-style): P(an answer is good) from the prompt and
//! one model's answer, so a gateway can return a cheap model's answer or escalate it.
//!
//! A logistic regression over features that cost microseconds: hand features of the answer (length, a
//! final-answer marker, truncation, and the calculator annotations `<<a*b=c>>` re-done: how many are
//! arithmetically wrong, whether the final number is the last computed value), optionally the static
//! (fast-path) embeddings of the answer and of the prompt, the router's predicted quality of the model
//! for the prompt (stacked), and a bias per answering model (unknown models get the mean bias, so any
//! model is scored). No ONNX Runtime: the embedder is the artifact's `fast/` table, loaded here on its
//! own so the verifier does not depend on which path routes.
//!
//! Stored as the sub-directory `verifier/` of a router artifact: `manifest.json` (features, models,
//! calibration quantiles) and `weights.f32` (standardisation, weights, biases), checked by sha256.
//!
//! Cascade routing at serving time: the manifest may carry a [`GapAdjustment`] fitted on one weak/strong
//! pair, which turns the stacked escalation score of training (`b + w_gap·gap + w_logit·logit(p)`,
//! `w_logit < 0`) into a plain acceptance threshold on the gap-adjusted logit
//! `logit(p) − k·(gap − gap_mean)` with `k = w_gap / |w_logit|` ([`AnswerVerifier::adjusted_score`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::artifact::{self, ArtifactError, FileInfo};
use crate::encoder::{AssetPaths, EMBED_DIM, EncoderError};
use crate::fast::{self, STATIC_ENCODER_ID, StaticEmbedder};

mod features;

pub use features::{
    Annotation, annotations, eval_arith, hand_features, marked_final, numbers, parse_number,
};

/// Sub-directory of a router artifact holding its answer verifier.
pub const VERIFIER_DIR: &str = "verifier";
pub const VERIFIER_FORMAT: &str = "routemesh-verifier";
pub const VERIFIER_FORMAT_VERSION: u32 = 1;
/// The weight file: `mean[d]`, `scale[d]`, `w[d]`, `bias`, `model_bias[models]` as little-endian f32.
pub const VERIFIER_WEIGHTS: &str = "weights.f32";
/// Calibration quantiles are stored at every percent: `quantiles[k]` = score below which k% fall.
pub const QUANTILE_POINTS: usize = 101;

/// Names of the hand features, in the order [`hand_features`] returns them.
pub const HAND_FEATURES: [&str; 15] = [
    "ln_answer_chars",
    "final_marker",
    "ln_annotations",
    "wrong_annotations",
    "any_wrong_annotation",
    "unclosed_annotation",
    "truncated",
    "final_is_last_computed",
    "final_not_integer",
    "final_in_prompt",
    "prompt_number_coverage",
    "hedging",
    "log10_final",
    "ln_prompt_chars",
    "ln_numbers_per_prompt_number",
];
pub const N_HAND: usize = HAND_FEATURES.len();

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(
        "{dir}: not a verifier (format {found:?} v{version}; this build reads {VERIFIER_FORMAT:?} v{VERIFIER_FORMAT_VERSION})"
    )]
    Format {
        dir: std::path::PathBuf,
        found: String,
        version: u32,
    },
    #[error("verifier: {0}")]
    Invalid(String),
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    #[error(transparent)]
    Encoder(#[from] EncoderError),
}

/// What a verifier reads; each part adds its features in this order.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct FeatureSet {
    /// [`HAND_FEATURES`].
    pub hand: bool,
    /// The static embedding of the answer (384).
    pub answer_embedding: bool,
    /// The static embedding of the prompt (384).
    pub prompt_embedding: bool,
    /// The router's predicted quality of the answering model (the training default when unknown).
    pub predicted_quality: bool,
}

impl FeatureSet {
    pub fn needs_embedder(&self) -> bool {
        self.answer_embedding || self.prompt_embedding
    }

    /// Features before the per-model biases.
    pub fn dim(&self) -> usize {
        usize::from(self.hand) * N_HAND
            + usize::from(self.answer_embedding) * EMBED_DIM
            + usize::from(self.prompt_embedding) * EMBED_DIM
            + usize::from(self.predicted_quality)
    }

    /// `hand+answer+prompt+pq`-style name (for metrics labels and tables).
    pub fn name(&self) -> String {
        let parts: Vec<&str> = [
            (self.hand, "hand"),
            (self.answer_embedding, "answer"),
            (self.prompt_embedding, "prompt"),
            (self.predicted_quality, "pq"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect();
        parts.join("+")
    }
}

/// Score quantiles of the training answers, per answering model and over all of them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct VerifierCalibration {
    /// [`QUANTILE_POINTS`] scores per model, ascending.
    pub per_model: BTreeMap<String, Vec<f64>>,
    pub all: Vec<f64>,
    /// Whether the scores were out-of-fold (else in-sample, slightly optimistic).
    #[serde(default)]
    pub out_of_fold: bool,
    /// [`QUANTILE_POINTS`] gap-adjusted scores ([`AnswerVerifier::adjusted_score`]) per answering model,
    /// ascending; only the weak model of the [`GapAdjustment`] pair (the one whose answers are verified).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub adjusted_per_model: BTreeMap<String, Vec<f64>>,
}

/// How the verifier's score is adjusted for the router's predicted gap (strong − weak) of a prompt, fitted
/// on one pair's rows: accept iff `logit(p) − gap_weight·(gap − gap_mean)` clears a threshold, which is
/// the stacked escalation score of cascade routing with one cutoff.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GapAdjustment {
    /// The cheap model whose answers are verified.
    pub weak: String,
    /// The model an escalation goes to.
    pub strong: String,
    /// `k = w_gap / |w_logit|` of the stacker: logit units per unit of predicted gap.
    pub gap_weight: f64,
    /// Mean predicted gap of the training rows (centres the adjustment, so an average prompt is unchanged).
    pub gap_mean: f64,
    /// Rows (prompts with both answers) it was fitted on.
    #[serde(default)]
    pub rows: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VerifierManifest {
    pub format: String,
    pub format_version: u32,
    pub id: String,
    /// Answering models with their own bias, in the weight file's order.
    pub models: Vec<String>,
    pub features: FeatureSet,
    /// sha256 of `model.onnx` the fast table was distilled from, when the verifier embeds.
    #[serde(default)]
    pub embedder_model_sha256: Option<String>,
    /// Substituted for an unknown predicted quality (the training rows' mean).
    pub default_quality: f64,
    pub files: BTreeMap<String, FileInfo>,
    pub calibration: VerifierCalibration,
    /// Free-form provenance (data, CV results).
    #[serde(default)]
    pub training: serde_json::Value,
    /// The gap adjustment of cascade routing, when one was fitted (older manifests have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap_adjustment: Option<GapAdjustment>,
}

/// One answer to verify.
#[derive(Debug, Clone, Copy)]
pub struct VerifyInput<'a> {
    pub model: &'a str,
    pub prompt: &'a str,
    pub answer: &'a str,
    /// the router's predicted quality of `model` for this prompt, when known
    pub predicted_quality: Option<f64>,
}

/// The linear part of a verifier: standardisation, weights and biases.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifierWeights {
    pub mean: Vec<f64>,
    pub scale: Vec<f64>,
    pub w: Vec<f64>,
    pub bias: f64,
    /// Per [`VerifierManifest::models`].
    pub model_bias: Vec<f64>,
}

impl VerifierWeights {
    pub fn to_bytes(&self) -> Vec<u8> {
        self.mean
            .iter()
            .chain(&self.scale)
            .chain(&self.w)
            .chain(std::iter::once(&self.bias))
            .chain(&self.model_bias)
            .flat_map(|&v| (v as f32).to_le_bytes())
            .collect()
    }

    pub fn from_bytes(bytes: &[u8], dim: usize, models: usize) -> Result<Self, VerifyError> {
        let want = (3 * dim + 1 + models) * 4;
        if bytes.len() != want {
            return Err(VerifyError::Invalid(format!(
                "{VERIFIER_WEIGHTS}: {} bytes, {dim} features and {models} models need {want}",
                bytes.len()
            )));
        }
        let v: Vec<f64> = bytes
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect();
        Ok(Self {
            mean: v[..dim].to_vec(),
            scale: v[dim..2 * dim].to_vec(),
            w: v[2 * dim..3 * dim].to_vec(),
            bias: v[3 * dim],
            model_bias: v[3 * dim + 1..].to_vec(),
        })
    }

    /// The logit for raw features `x` of an answer by model index `model` (None: unknown model).
    pub fn logit(&self, x: &[f64], model: Option<usize>) -> f64 {
        let mut z = self.bias;
        for (((&x, &m), &s), &w) in x.iter().zip(&self.mean).zip(&self.scale).zip(&self.w) {
            z += w * (x - m) / s;
        }
        z + match model.and_then(|j| self.model_bias.get(j)) {
            Some(&b) => b,
            // Model-agnostic: the mean answering model.
            None if self.model_bias.is_empty() => 0.0,
            None => self.model_bias.iter().sum::<f64>() / self.model_bias.len() as f64,
        }
    }
}

pub fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// `ln(p / (1 − p))`, with `p` clamped to `[1e-6, 1 − 1e-6]` so saturated scores stay finite (the
/// clamp cascade routing's stacker uses; NaN counts as 0.5).
pub fn logit(p: f64) -> f64 {
    let p = if p.is_nan() {
        0.5
    } else {
        p.clamp(1e-6, 1.0 - 1e-6)
    };
    (p / (1.0 - p)).ln()
}

/// A loaded answer verifier. `Send + Sync`; `score` is synchronous CPU work of tens of microseconds.
#[derive(Debug)]
pub struct AnswerVerifier {
    manifest: VerifierManifest,
    weights: VerifierWeights,
    embedder: Option<Arc<StaticEmbedder>>,
}

impl AnswerVerifier {
    /// A verifier from its parts (what training produces; loading checks the same things).
    pub fn new(
        manifest: VerifierManifest,
        weights: VerifierWeights,
        embedder: Option<Arc<StaticEmbedder>>,
    ) -> Result<Self, VerifyError> {
        let d = manifest.features.dim();
        if weights.mean.len() != d
            || weights.scale.len() != d
            || weights.w.len() != d
            || weights.model_bias.len() != manifest.models.len()
        {
            return Err(VerifyError::Invalid(format!(
                "weights for {} features and {} models, the manifest has {d} and {}",
                weights.w.len(),
                weights.model_bias.len(),
                manifest.models.len()
            )));
        }
        if weights.scale.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(VerifyError::Invalid("non-positive feature scale".into()));
        }
        if manifest.features.needs_embedder() && embedder.is_none() {
            return Err(VerifyError::Invalid(
                "the verifier reads static embeddings and none was given".into(),
            ));
        }
        Ok(Self {
            manifest,
            weights,
            embedder,
        })
    }

    /// Loads `dir` (an artifact's `verifier/`); its static embedder, if it needs one, is `embedder` or
    /// else the artifact's `fast/` table next to it (loaded from `assets`' tokenizer).
    pub fn load(
        dir: &Path,
        embedder: Option<Arc<StaticEmbedder>>,
        assets: &AssetPaths,
    ) -> Result<Self, VerifyError> {
        let path = dir.join(artifact::MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|source| ArtifactError::Io {
            path: path.clone(),
            source,
        })?;
        let manifest: VerifierManifest =
            serde_json::from_str(&text).map_err(|source| ArtifactError::Json { path, source })?;
        if manifest.format != VERIFIER_FORMAT || manifest.format_version != VERIFIER_FORMAT_VERSION
        {
            return Err(VerifyError::Format {
                dir: dir.into(),
                found: manifest.format,
                version: manifest.format_version,
            });
        }
        let bytes = artifact::read_checked(dir, &manifest.files, VERIFIER_WEIGHTS)?;
        let weights =
            VerifierWeights::from_bytes(&bytes, manifest.features.dim(), manifest.models.len())?;
        let embedder = match (manifest.features.needs_embedder(), embedder) {
            (false, _) => None,
            (true, Some(e)) => Some(e),
            (true, None) => {
                let fast_dir = dir
                    .parent()
                    .map(|p| p.join(artifact::FAST_DIR))
                    .ok_or_else(|| VerifyError::Invalid("no artifact around verifier/".into()))?;
                Some(Arc::new(load_static_embedder(&fast_dir, assets)?.1))
            }
        };
        Self::new(manifest, weights, embedder)
    }

    /// P(the answer is good) in [0, 1].
    pub fn score(&self, input: &VerifyInput<'_>) -> Result<f64, VerifyError> {
        let x = self.features(input)?;
        let j = self.manifest.models.iter().position(|m| m == input.model);
        Ok(sigmoid(self.weights.logit(&x, j)).clamp(0.0, 1.0))
    }

    /// The raw (unstandardised) feature vector of an answer.
    pub fn features(&self, input: &VerifyInput<'_>) -> Result<Vec<f64>, VerifyError> {
        raw_features(
            &self.manifest.features,
            self.embedder.as_deref(),
            input,
            self.manifest.default_quality,
        )
    }

    /// answering models it was trained on (it must still score others, model-agnostically)
    pub fn models(&self) -> &[String] {
        &self.manifest.models
    }

    /// the acceptance threshold under which `share` (0..1) of the training answers of `model` (or of
    /// all, for an unknown model) would be escalated
    pub fn threshold_for_escalation_share(&self, model: &str, share: f64) -> f64 {
        let c = &self.manifest.calibration;
        let q = c
            .per_model
            .get(model)
            .filter(|q| !q.is_empty())
            .unwrap_or(&c.all);
        quantile_at(q, share)
    }

    /// The pair the gap adjustment was fitted on, `(weak, strong)`, when it was.
    pub fn gap_pair(&self) -> Option<(&str, &str)> {
        self.manifest
            .gap_adjustment
            .as_ref()
            .map(|g| (g.weak.as_str(), g.strong.as_str()))
    }

    /// P(good) adjusted for the router's predicted gap (strong − weak) of the prompt:
    /// `sigmoid(logit(score) − k·(gap − gap_mean))`; the plain score without a fitted adjustment (or for a
    /// non-finite gap, which says nothing about the prompt).
    pub fn adjusted_score(&self, score: f64, gap: f64) -> f64 {
        match &self.manifest.gap_adjustment {
            Some(g) if gap.is_finite() && g.gap_weight.is_finite() => {
                adjust(score, gap, g.gap_weight, g.gap_mean)
            }
            _ => score,
        }
    }

    /// Like [`Self::threshold_for_escalation_share`], on adjusted scores: the threshold under which
    /// `share` of the training answers of `model` would be escalated when they are compared after
    /// [`Self::adjusted_score`]. Falls back to the plain thresholds for a model without adjusted
    /// percentiles (no adjustment fitted, or not the pair's weak model), where the adjustment is not used.
    pub fn adjusted_threshold_for_escalation_share(&self, model: &str, share: f64) -> f64 {
        match self
            .manifest
            .calibration
            .adjusted_per_model
            .get(model)
            .filter(|q| !q.is_empty() && self.manifest.gap_adjustment.is_some())
        {
            Some(q) => quantile_at(q, share),
            None => self.threshold_for_escalation_share(model, share),
        }
    }

    /// e.g. "learned-v1", for metrics labels and explanations
    pub fn id(&self) -> &str {
        &self.manifest.id
    }

    pub fn manifest(&self) -> &VerifierManifest {
        &self.manifest
    }

    pub fn weights(&self) -> &VerifierWeights {
        &self.weights
    }
}

/// `sigmoid(logit(score) − k·(gap − gap_mean))`, the gap-adjusted P(good) (shared with training, so the
/// stored percentiles and serving compute the same number).
pub fn adjust(score: f64, gap: f64, k: f64, gap_mean: f64) -> f64 {
    sigmoid(logit(score) - k * (gap - gap_mean)).clamp(0.0, 1.0)
}

/// The score at `share` of stored percentile points (linear between them; 0 escalates nothing, 1
/// everything). Monotone in `share`; NaN counts as 0.
fn quantile_at(q: &[f64], share: f64) -> f64 {
    let Some(&first) = q.first() else {
        return 0.5;
    };
    let share = if share.is_nan() {
        0.0
    } else {
        share.clamp(0.0, 1.0)
    };
    if share <= 0.0 {
        // Nothing is below 0: no answer escalated.
        return 0.0_f64.min(first);
    }
    if share >= 1.0 {
        // Everything is escalated: above the highest score.
        return 1.0_f64.max(q[q.len() - 1]);
    }
    let pos = share * (q.len() - 1) as f64;
    let i = pos.floor() as usize;
    let t = pos - i as f64;
    match (q.get(i), q.get(i + 1)) {
        (Some(&a), Some(&b)) => a + t * (b - a),
        (Some(&a), None) => a,
        _ => first,
    }
}

/// [`QUANTILE_POINTS`] percentiles of `scores` (what calibration stores).
pub fn percentiles(scores: &[f64]) -> Vec<f64> {
    let mut s: Vec<f64> = scores.iter().copied().filter(|v| v.is_finite()).collect();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return Vec::new();
    }
    (0..QUANTILE_POINTS)
        .map(|k| {
            let pos = k as f64 / (QUANTILE_POINTS - 1) as f64 * (s.len() - 1) as f64;
            let i = pos.floor() as usize;
            let t = pos - i as f64;
            let b = s.get(i + 1).copied().unwrap_or(s[i]);
            s[i] + t * (b - s[i])
        })
        .collect()
}

/// Loads the static embedder of a `fast/` sub-artifact (manifest, table) with the tokenizer of `assets`:
/// `(model.onnx sha256 it derives from, embedder)`.
pub fn load_static_embedder(
    fast_dir: &Path,
    assets: &AssetPaths,
) -> Result<(String, StaticEmbedder), VerifyError> {
    let manifest = artifact::read_manifest(fast_dir)?;
    if manifest.encoder.id != STATIC_ENCODER_ID || manifest.encoder.dim != EMBED_DIM {
        return Err(ArtifactError::Invalid(format!(
            "{}: not a static table ({})",
            fast_dir.display(),
            manifest.encoder.id
        ))
        .into());
    }
    let (codes, scales, weights) = artifact::load_static_table(fast_dir, &manifest)?;
    let tokenizer = fast::plain_tokenizer(&assets.tokenizer)?;
    let e = StaticEmbedder::from_quantized(
        tokenizer,
        codes,
        scales,
        weights,
        manifest.encoder.max_len,
    )?;
    Ok((manifest.encoder.model_sha256, e))
}

/// The raw features of `input` under `set` (shared by training and serving, so they cannot drift).
pub fn raw_features(
    set: &FeatureSet,
    embedder: Option<&StaticEmbedder>,
    input: &VerifyInput<'_>,
    default_quality: f64,
) -> Result<Vec<f64>, VerifyError> {
    let mut x = Vec::with_capacity(set.dim());
    if set.hand {
        x.extend(hand_features(input.prompt, input.answer));
    }
    for (on, text) in [
        (set.answer_embedding, input.answer),
        (set.prompt_embedding, input.prompt),
    ] {
        if !on {
            continue;
        }
        let e = embedder.ok_or_else(|| VerifyError::Invalid("no static embedder".into()))?;
        let v = e.embed(&[text])?;
        x.extend(v.iter().map(|&f| f64::from(f)));
    }
    if set.predicted_quality {
        let q = input
            .predicted_quality
            .filter(|q| q.is_finite())
            .unwrap_or(default_quality);
        x.push(q.clamp(0.0, 1.0));
    }
    Ok(x)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn toy(features: FeatureSet) -> AnswerVerifier {
        let d = features.dim();
        let manifest = VerifierManifest {
            format: VERIFIER_FORMAT.into(),
            format_version: VERIFIER_FORMAT_VERSION,
            id: "test-v1".into(),
            models: vec!["weak".into(), "strong".into()],
            features,
            embedder_model_sha256: None,
            default_quality: 0.7,
            files: BTreeMap::new(),
            calibration: VerifierCalibration {
                per_model: [("weak".to_string(), percentiles(&[0.1, 0.2, 0.4, 0.9]))].into(),
                all: percentiles(&[0.1, 0.5, 0.9]),
                out_of_fold: true,
                adjusted_per_model: BTreeMap::new(),
            },
            training: serde_json::Value::Null,
            gap_adjustment: None,
        };
        let weights = VerifierWeights {
            mean: vec![0.0; d],
            scale: vec![1.0; d],
            w: (0..d)
                .map(|i| if i % 2 == 0 { 3.0 } else { -2.0 })
                .collect(),
            // Exact in f32, so the weight file round-trips bit for bit.
            bias: 0.125,
            model_bias: vec![-0.5, 0.5],
        };
        AnswerVerifier::new(manifest, weights, None).unwrap()
    }

    #[test]
    fn scores_are_probabilities_for_any_input() {
        let v = toy(FeatureSet {
            hand: true,
            answer_embedding: false,
            prompt_embedding: false,
            predicted_quality: true,
        });
        let long = "<<1/0=9>> ünï 🚀 ".repeat(2000);
        for model in ["weak", "strong", "never-seen"] {
            for (p, a) in [("", ""), ("2+2?", "#### 4"), (long.as_str(), long.as_str())] {
                for pq in [None, Some(0.3), Some(f64::NAN), Some(7.0)] {
                    let s = v
                        .score(&VerifyInput {
                            model,
                            prompt: p,
                            answer: a,
                            predicted_quality: pq,
                        })
                        .unwrap();
                    assert!((0.0..=1.0).contains(&s), "{model} {pq:?}: {s}");
                }
            }
        }
        // Round trip of the weight file.
        let w = v.weights();
        let back = VerifierWeights::from_bytes(&w.to_bytes(), w.w.len(), 2).unwrap();
        assert_eq!(back, *w);
        assert!(VerifierWeights::from_bytes(&w.to_bytes(), w.w.len(), 3).is_err());
    }

    #[test]
    fn thresholds_are_monotone_in_the_share() {
        let v = toy(FeatureSet {
            hand: true,
            answer_embedding: false,
            prompt_embedding: false,
            predicted_quality: false,
        });
        for model in ["weak", "unknown"] {
            let mut last = f64::NEG_INFINITY;
            for k in 0..=100 {
                let t = v.threshold_for_escalation_share(model, k as f64 / 100.0);
                assert!(t >= last, "{model} {k}: {t} < {last}");
                last = t;
            }
            assert!(v.threshold_for_escalation_share(model, 0.0) <= 0.1);
            assert!(v.threshold_for_escalation_share(model, 1.0) >= 0.9);
        }
        assert!((v.threshold_for_escalation_share("weak", 0.5) - 0.3).abs() < 1e-9);
        assert_eq!(v.threshold_for_escalation_share("weak", f64::NAN), 0.0);
        assert_eq!(v.id(), "test-v1");
    }

    /// `toy` with a gap adjustment of `k`, `gap_mean` fitted on (weak, strong) and adjusted percentiles.
    fn adjusted_toy(k: f64, gap_mean: f64) -> AnswerVerifier {
        let v = toy(FeatureSet {
            hand: true,
            answer_embedding: false,
            prompt_embedding: false,
            predicted_quality: false,
        });
        let mut m = v.manifest().clone();
        m.gap_adjustment = Some(GapAdjustment {
            weak: "weak".into(),
            strong: "strong".into(),
            gap_weight: k,
            gap_mean,
            rows: 4,
        });
        m.calibration.adjusted_per_model = [(
            "weak".to_string(),
            percentiles(&[0.05, 0.3, 0.35, 0.8, 0.97]),
        )]
        .into();
        AnswerVerifier::new(m, v.weights().clone(), None).unwrap()
    }

    #[test]
    fn adjusted_score_by_hand() {
        let v = adjusted_toy(2.0, 0.1);
        assert_eq!(v.gap_pair(), Some(("weak", "strong")));
        // logit(0.8) = ln 4; gap 0.35: ln 4 − 2·0.25 = ln 4 − 0.5.
        let want = 1.0 / (1.0 + (-(4f64.ln() - 0.5)).exp());
        assert!((v.adjusted_score(0.8, 0.35) - want).abs() < 1e-12);
        // At the mean gap the score is unchanged; a smaller gap than average raises it.
        assert!((v.adjusted_score(0.8, 0.1) - 0.8).abs() < 1e-12);
        // gap −0.4: logit(0.5) + 2·0.5 = 1.
        assert!((v.adjusted_score(0.5, -0.4) - sigmoid(1.0)).abs() < 1e-12);
        // Saturated scores stay finite and in [0, 1]; a NaN gap leaves the score alone.
        for s in [0.0, 1.0] {
            let a = v.adjusted_score(s, 3.0);
            assert!((0.0..=1.0).contains(&a), "{s}: {a}");
        }
        assert_eq!(v.adjusted_score(0.3, f64::NAN), 0.3);
        assert!((logit(0.5)).abs() < 1e-15 && logit(f64::NAN) == 0.0);
    }

    #[test]
    fn adjusted_score_is_the_plain_score_without_an_adjustment() {
        let v = toy(FeatureSet {
            hand: true,
            answer_embedding: false,
            prompt_embedding: false,
            predicted_quality: false,
        });
        assert_eq!(v.gap_pair(), None);
        for s in [0.0, 0.2, 0.5, 0.999, 1.0] {
            for gap in [-1.0, 0.0, 0.7] {
                assert_eq!(v.adjusted_score(s, gap), s);
            }
        }
        for share in [0.0, 0.25, 0.5, 1.0] {
            for model in ["weak", "strong", "unknown"] {
                assert_eq!(
                    v.adjusted_threshold_for_escalation_share(model, share),
                    v.threshold_for_escalation_share(model, share)
                );
            }
        }
    }

    #[test]
    fn a_manifest_without_the_gap_fields_loads() {
        // The shape verifier manifests had before the gap adjustment (no gap_adjustment, no
        // adjusted_per_model).
        let old = serde_json::json!({
            "format": VERIFIER_FORMAT,
            "format_version": VERIFIER_FORMAT_VERSION,
            "id": "learned-v1",
            "models": ["weak", "strong"],
            "features": {"hand": true, "answer_embedding": false, "prompt_embedding": false,
                         "predicted_quality": false},
            "embedder_model_sha256": null,
            "default_quality": 0.75,
            "files": {},
            "calibration": {"per_model": {"weak": [0.1, 0.9]}, "all": [0.1, 0.9], "out_of_fold": true},
            "training": {"answers": 4}
        });
        let m: VerifierManifest = serde_json::from_value(old).unwrap();
        assert!(m.gap_adjustment.is_none());
        assert!(m.calibration.adjusted_per_model.is_empty());
        // And a new one round-trips, writing nothing new when there is no adjustment.
        let text = serde_json::to_string(&m).unwrap();
        assert!(!text.contains("gap_adjustment") && !text.contains("adjusted_per_model"));
        let v = adjusted_toy(1.5, -0.2);
        let back: VerifierManifest =
            serde_json::from_str(&serde_json::to_string(v.manifest()).unwrap()).unwrap();
        // (serde_json's default float parsing may differ in the last bit: compare the new fields.)
        assert_eq!(back.gap_adjustment, v.manifest().gap_adjustment);
        assert_eq!(
            back.calibration
                .adjusted_per_model
                .keys()
                .collect::<Vec<_>>(),
            ["weak"]
        );
    }

    #[test]
    fn adjusted_thresholds_are_monotone_in_the_share() {
        let v = adjusted_toy(2.0, 0.1);
        for model in ["weak", "strong", "unknown"] {
            let mut last = f64::NEG_INFINITY;
            for k in 0..=100 {
                let t = v.adjusted_threshold_for_escalation_share(model, k as f64 / 100.0);
                assert!(t >= last, "{model} {k}: {t} < {last}");
                last = t;
            }
        }
        // The weak model reads its adjusted percentiles (median 0.35), others the plain ones.
        assert!((v.adjusted_threshold_for_escalation_share("weak", 0.5) - 0.35).abs() < 1e-9);
        assert_eq!(
            v.adjusted_threshold_for_escalation_share("strong", 0.5),
            v.threshold_for_escalation_share("strong", 0.5)
        );
        assert_eq!(v.adjusted_threshold_for_escalation_share("weak", 0.0), 0.0);
        assert_eq!(v.adjusted_threshold_for_escalation_share("weak", 1.0), 1.0);
    }

    #[test]
    fn verifier_is_send_and_sync() {
        fn check<T: Send + Sync + std::fmt::Debug>() {}
        check::<AnswerVerifier>();
    }
}
