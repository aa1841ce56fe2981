//! Exemplar memory with similarity-weighted k-nearest-neighbour voting (OrchestraLLM-style retrieval).
//!
//! Each model is predicted from the `k` most similar exemplars *that scored that model* (pools of rows
//! scored for the same models are searched separately), so a prompt from one pool never borrows an
//! empty neighbourhood from another.

use ndarray::{Array2, ArrayView2, Axis};

use super::quant::quantize_rows;
use super::{Projection, QualityPredictor};

#[derive(Debug, Clone, PartialEq)]
pub struct KnnConfig {
    pub k: usize,
    /// Softmax temperature over cosine similarity; `None` = uniform vote (plain kNN).
    pub tau: Option<f64>,
    /// Pseudo-count pulling thin or dissimilar neighbourhoods towards the model's mean.
    pub shrink: f64,
    /// Training only (recorded, not used to predict): exemplar targets become
    /// `(1 − smooth)·own score + smooth·mean of its source`, which turns neighbour votes into a soft task
    /// identification (outcomes within a task are noisy, task means are not).
    pub smooth: f64,
    /// Keep this many principal components of the embeddings (0 = the full embedding).
    pub pca: usize,
}

impl Default for KnnConfig {
    fn default() -> Self {
        Self {
            k: 100,
            tau: Some(0.2),
            shrink: 2.0,
            smooth: 0.0,
            pca: 0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Knn {
    pub models: Vec<String>,
    pub config: KnnConfig,
    /// `[n, dim]` unit-norm exemplar embeddings (projected when `proj` is set).
    pub exemplars: Array2<f32>,
    pub proj: Option<Projection>,
    /// `[n][models]`, NaN = not scored.
    pub scores: Vec<Vec<f32>>,
    pub prior: Vec<f64>,
    /// Exemplar row indices per pool and the models that pool scores.
    pools: Vec<(Vec<usize>, Vec<usize>)>,
    /// The exemplars as int8 rows with one scale each, for single-prompt queries: a scan of 4x fewer
    /// bytes than the f32 matrix, which is what a one-row query is bound by (see [`Knn::predict`]).
    codes: Vec<i8>,
    code_scales: Vec<f32>,
}

/// Queries up to this many rows scan the int8 exemplars; larger batches use one f32 GEMM.
const SCAN_ROWS: usize = 4;

fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| i32::from(x) * i32::from(y))
        .sum()
}

impl Knn {
    /// A memory from its parts (what training produces and an artifact stores): `exemplars` `[n, dim]`
    /// unit rows (projected by `proj` when set), `scores[row][model]` with NaN = not scored.
    pub fn from_parts(
        models: Vec<String>,
        config: KnnConfig,
        exemplars: Array2<f32>,
        scores: Vec<Vec<f32>>,
        prior: Vec<f64>,
        proj: Option<Projection>,
    ) -> Self {
        let mut pools: Vec<(Vec<usize>, Vec<usize>)> = Vec::new();
        for (i, r) in scores.iter().enumerate() {
            let sig: Vec<usize> = (0..models.len())
                .filter(|&j| r.get(j).is_some_and(|v| !v.is_nan()))
                .collect();
            if sig.is_empty() {
                continue;
            }
            match pools.iter_mut().find(|p| p.1 == sig) {
                Some(p) => p.0.push(i),
                None => pools.push((vec![i], sig)),
            }
        }
        let (codes, code_scales) = quantize_rows(&exemplars);
        Self {
            models,
            config,
            exemplars,
            proj,
            scores,
            prior,
            pools,
            codes,
            code_scales,
        }
    }

    /// Cosine similarity of `query` (unit length) to every exemplar, from the int8 rows.
    fn scan(&self, query: ndarray::ArrayView1<'_, f32>) -> Vec<f32> {
        let dim = self.exemplars.ncols();
        let max = query.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let qs = if max > 0.0 { max / 127.0 } else { 1.0 };
        let q: Vec<i8> = query
            .iter()
            .map(|v| (v / qs).round().clamp(-127.0, 127.0) as i8)
            .collect();
        self.codes
            .chunks_exact(dim.max(1))
            .zip(&self.code_scales)
            .map(|(row, &s)| dot_i8(row, &q) as f32 * s * qs)
            .collect()
    }

    /// Similarity-weighted vote of the nearest exemplars given the similarities to all of them.
    fn vote(&self, sims: &[f32]) -> Vec<f64> {
        let mut pred = self.prior.clone();
        // Accumulators per model, across pools (a model is normally in one pool).
        let mut num = vec![0.0f64; self.models.len()];
        let mut den = vec![0.0f64; self.models.len()];
        for (idx, models) in &self.pools {
            let k = self.config.k.min(idx.len()).max(1);
            let mut cand: Vec<(f32, usize)> = idx.iter().map(|&i| (sims[i], i)).collect();
            if cand.len() > k {
                cand.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
                cand.truncate(k);
            }
            let top = cand.iter().map(|c| c.0).fold(f32::NEG_INFINITY, f32::max);
            for &(s, i) in &cand {
                // Relative to the best neighbour, so weights stay in (0, 1] whatever the temperature.
                let w = self
                    .config
                    .tau
                    .map_or(1.0, |t| (f64::from(s - top) / t).exp());
                for &j in models {
                    num[j] += w * f64::from(self.scores[i][j]);
                    den[j] += w;
                }
            }
        }
        for j in 0..pred.len() {
            if den[j] > 0.0 {
                pred[j] =
                    (num[j] + self.config.shrink * self.prior[j]) / (den[j] + self.config.shrink);
            }
        }
        pred
    }
}

impl QualityPredictor for Knn {
    fn kind(&self) -> &'static str {
        "knn"
    }

    fn models(&self) -> &[String] {
        &self.models
    }

    /// The memory's own frame: its projection, else the exemplars' mean.
    fn embedding_frame(&self) -> Option<super::EmbeddingFrame> {
        if let Some(p) = &self.proj {
            return Some(super::EmbeddingFrame::Projected(p.clone()));
        }
        self.exemplars
            .mean_axis(Axis(0))
            .map(|m| super::EmbeddingFrame::Centred(m.to_vec()))
    }

    fn predict(&self, emb: ArrayView2<'_, f32>) -> Vec<Vec<f64>> {
        let mut out = Vec::with_capacity(emb.nrows());
        let projected;
        let emb = match &self.proj {
            Some(p) => {
                projected = p.apply(emb);
                projected.view()
            }
            None => emb,
        };
        if emb.nrows() <= SCAN_ROWS {
            out.extend(emb.rows().into_iter().map(|q| self.vote(&self.scan(q))));
            return out;
        }
        // Similarities in blocks: one GEMM per block keeps memory bounded on large evaluation sets.
        for block in emb.axis_chunks_iter(Axis(0), 256) {
            let sims = block.dot(&self.exemplars.t());
            for row in sims.rows() {
                match row.as_slice() {
                    Some(r) => out.push(self.vote(r)),
                    None => out.push(self.vote(&row.to_vec())),
                }
            }
        }
        out
    }
}
