//! Onboarding a model from its scores: adding a column for a model the router was not trained on to a
//! loaded [`TaskMixture`], from a few prompts scored for it, without retraining the other models.
//!
//! Everything is in memory (embeddings and scores in, an updated predictor out), so the same code can
//! run offline (`routemesh router onboard`, which reads and writes artifacts) and online from feedback.
//! Steps:
//! 1. [`similarity`]: how well each known model's predictions agree with the new model's scores on the
//!    same prompts, turned into weights (`exp(−n·(mse − best mse)/temperature)`, the posterior of "the
//!    new model behaves like model k" under Gaussian noise: it sharpens as rows accumulate). The new model
//!    joins the pool of the most similar model and borrows only from that pool.
//! 2. [`onboard`]: per-task means (the rows' class probabilities weight their scores, shrunk with a
//!    pseudo-count towards the similar models' weighted means), the per-model prior, a residual-memory
//!    column (the similar models' weighted residuals, optionally plus the scored rows as exemplars of
//!    the new model only) and an MF vector (a logistic fit on the scored rows, ridge towards the similar
//!    models' weighted vector).

use ndarray::{Array1, Array2, ArrayView2, Axis};

use crate::predict::{Knn, MatrixFactorization, QualityPredictor, TaskMixture};

mod logistic;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum OnboardError {
    #[error("{0} is already a model of the router")]
    Known(String),
    #[error("{0} is not a model of the router")]
    Unknown(String),
    #[error("{rows} embedded prompts but {scores} scores")]
    Mismatch { rows: usize, scores: usize },
    #[error("embeddings of dimension {got}, the predictor needs {expected}")]
    Dimension { expected: usize, got: usize },
    #[error("score {0} is not in [0, 1]")]
    Score(f64),
    #[error("no known model to compare the new model with")]
    NoCandidates,
    #[error("numerical failure: {0}")]
    Numerical(String),
}

/// Hyper-parameters of onboarding. The defaults are what leave-one-model-out CV on mix9 picked (model
/// card, "Onboarding a model from scores"): a soft similarity (every pool model keeps a say until many
/// rows single some out) beat a sharp one at every budget, because a few rows rarely tell which model a
/// new one is like, and a wrong pick costs more than an average.
#[derive(Debug, Clone, PartialEq)]
pub struct OnboardConfig {
    /// Pseudo-count (in rows' worth of class probability) pulling each per-task mean towards the
    /// similar models' weighted mean, and the per-model prior towards theirs.
    pub shrink: f64,
    /// Similarity weights `∝ exp(−n·(mse_k − min mse)/temperature)` over `n` scored rows.
    pub temperature: f64,
    /// Ridge penalty pulling the MF vector (and bias) towards the similar models' weighted vector.
    pub mf_ridge: f64,
    /// Also store the scored rows in the residual memory, as exemplars scored only for the new model.
    pub append_exemplars: bool,
    /// At most this many similar models keep a weight.
    pub max_similar: usize,
}

impl Default for OnboardConfig {
    fn default() -> Self {
        Self {
            shrink: 10.0,
            temperature: 3.0,
            mf_ridge: 10.0,
            append_exemplars: false,
            max_similar: 8,
        }
    }
}

/// Which known models the new model is taken to resemble, and how much.
#[derive(Debug, Clone, PartialEq)]
pub struct Similarity {
    /// One weight per model of the predictor it was computed on (summing to 1; 0 for the others).
    pub weights: Vec<f64>,
    /// The pool (index into the pools given) the new model joins, if pools were given.
    pub pool: Option<usize>,
}

impl Similarity {
    /// Models with a weight, heaviest first.
    pub fn similar_to(&self, models: &[String]) -> Vec<String> {
        let mut w: Vec<(usize, f64)> = self
            .weights
            .iter()
            .copied()
            .enumerate()
            .filter(|(_, w)| *w > 0.0)
            .collect();
        w.sort_by(|a, b| b.1.total_cmp(&a.1));
        w.into_iter().map(|(j, _)| models[j].clone()).collect()
    }

    /// `pools` with `name` added to the pool it joins (and removed from any other).
    pub fn join_pool(&self, pools: &[Vec<String>], name: &str) -> Vec<Vec<String>> {
        let mut out: Vec<Vec<String>> = pools
            .iter()
            .map(|p| p.iter().filter(|m| *m != name).cloned().collect())
            .collect();
        if let Some(p) = self.pool.and_then(|i| out.get_mut(i)) {
            p.push(name.to_string());
        }
        out
    }
}

fn check_rows(
    base: &TaskMixture,
    emb: ArrayView2<'_, f32>,
    scores: &[f64],
) -> Result<(), OnboardError> {
    if emb.nrows() != scores.len() {
        return Err(OnboardError::Mismatch {
            rows: emb.nrows(),
            scores: scores.len(),
        });
    }
    let expected = base.classifier.w.ncols();
    if emb.nrows() > 0 && emb.ncols() != expected {
        return Err(OnboardError::Dimension {
            expected,
            got: emb.ncols(),
        });
    }
    match scores.iter().find(|s| !(0.0..=1.0).contains(*s)) {
        Some(&s) => Err(OnboardError::Score(s)),
        None => Ok(()),
    }
}

/// Similarity weights of `candidates` (indices into `base.models`) for a model scored `scores` on the
/// prompts embedded as `emb`. With pools, the new model joins the pool of the heaviest candidate and
/// only that pool's candidates keep weights (its predictions must be comparable with theirs). Without
/// rows every candidate of the chosen pool weighs the same.
pub fn similarity(
    base: &TaskMixture,
    emb: ArrayView2<'_, f32>,
    scores: &[f64],
    candidates: &[usize],
    pools: &[Vec<String>],
    cfg: &OnboardConfig,
) -> Result<Similarity, OnboardError> {
    check_rows(base, emb, scores)?;
    let m = base.models.len();
    let candidates: Vec<usize> = candidates.iter().copied().filter(|&j| j < m).collect();
    if candidates.is_empty() {
        return Err(OnboardError::NoCandidates);
    }
    let n = scores.len();
    let mut mse = vec![0.0; m];
    if n > 0 {
        for (row, &y) in base.predict(emb).iter().zip(scores) {
            for &j in &candidates {
                mse[j] += (row[j] - y).powi(2) / n as f64;
            }
        }
    }
    let best = candidates
        .iter()
        .map(|&j| mse[j])
        .fold(f64::INFINITY, f64::min);
    let temperature = cfg.temperature.max(1e-9);
    let mut weights = vec![0.0; m];
    for &j in &candidates {
        weights[j] = (-(n as f64) * (mse[j] - best) / temperature).exp();
    }
    let heaviest = candidates
        .iter()
        .copied()
        .max_by(|&a, &b| weights[a].total_cmp(&weights[b]).then(b.cmp(&a)))
        .ok_or(OnboardError::NoCandidates)?;
    let pool = pools
        .iter()
        .position(|p| p.iter().any(|name| *name == base.models[heaviest]));
    if let Some(p) = pool {
        for (j, w) in weights.iter_mut().enumerate() {
            if !pools[p].contains(&base.models[j]) {
                *w = 0.0;
            }
        }
    }
    // Keep the heaviest few: a long tail of small weights only blurs the prior.
    let mut order: Vec<usize> = (0..m).filter(|&j| weights[j] > 0.0).collect();
    order.sort_by(|&a, &b| weights[b].total_cmp(&weights[a]).then(a.cmp(&b)));
    for &j in order.iter().skip(cfg.max_similar.max(1)) {
        weights[j] = 0.0;
    }
    // Normalised, and negligible weights (under 1% of the total) dropped: they change nothing but the
    // list of models the new one is said to be similar to.
    for _ in 0..2 {
        let total: f64 = weights.iter().sum();
        if total.is_nan() || total <= 0.0 {
            return Err(OnboardError::NoCandidates);
        }
        weights
            .iter_mut()
            .for_each(|w| *w = if *w / total < 0.01 { 0.0 } else { *w / total });
    }
    Ok(Similarity { weights, pool })
}

/// Weighted mean of `values[j]` over the models with a weight and a finite value (NaN if none).
fn weighted(weights: &[f64], values: impl Fn(usize) -> f64) -> f64 {
    let (mut num, mut den) = (0.0, 0.0);
    for (j, &w) in weights.iter().enumerate() {
        let v = values(j);
        if w > 0.0 && v.is_finite() {
            num += w * v;
            den += w;
        }
    }
    if den > 0.0 { num / den } else { f64::NAN }
}

/// `base` with `name` added as its last model, learned from `scores` of the prompts embedded as `emb`
/// and the similar models of `sim` (computed on `base`, e.g. by [`similarity`]).
pub fn onboard(
    base: &TaskMixture,
    name: &str,
    emb: ArrayView2<'_, f32>,
    scores: &[f64],
    sim: &Similarity,
    cfg: &OnboardConfig,
) -> Result<TaskMixture, OnboardError> {
    if base.models.iter().any(|m| m == name) {
        return Err(OnboardError::Known(name.into()));
    }
    check_rows(base, emb, scores)?;
    let w = &sim.weights;
    let shrink = cfg.shrink.max(0.0);
    let classes = base.means.nrows();
    // Per task: the similar models' weighted mean, NaN where none of them was run on the task.
    let prior_means: Vec<f64> = (0..classes)
        .map(|c| weighted(w, |j| f64::from(base.means[[c, j]])))
        .collect();
    // The rows' class probabilities over those tasks, renormalised as prediction does.
    let proba = if emb.nrows() > 0 {
        base.classifier.proba(emb)
    } else {
        Array2::zeros((0, classes))
    };
    let (mut mass, mut sum) = (vec![0.0; classes], vec![0.0; classes]);
    for (p, &y) in proba.rows().into_iter().zip(scores) {
        let den: f64 = (0..classes)
            .filter(|&c| prior_means[c].is_finite())
            .map(|c| f64::from(p[c]))
            .sum();
        if den <= 1e-12 {
            continue;
        }
        for c in (0..classes).filter(|&c| prior_means[c].is_finite()) {
            let q = f64::from(p[c]) / den;
            mass[c] += q;
            sum[c] += q * y;
        }
    }
    let new_means: Vec<f32> = (0..classes)
        .map(|c| {
            let mu = prior_means[c];
            if mu.is_finite() {
                ((sum[c] + shrink * mu) / (mass[c] + shrink)) as f32
            } else {
                f32::NAN
            }
        })
        .collect();
    let n = scores.len() as f64;
    let prior0 = weighted(w, |j| f64::from(base.prior[j]));
    let prior0 = if prior0.is_finite() { prior0 } else { 0.5 };
    let new_prior = ((scores.iter().sum::<f64>() + shrink * prior0) / (n + shrink)) as f32;

    let mut models = base.models.clone();
    models.push(name.to_string());
    let means = append_column(&base.means, &new_means);
    let mut prior = base.prior.clone();
    prior.push(new_prior);
    let residual = base
        .residual
        .as_ref()
        .map(|k| onboard_residual(k, &models, emb, scores, &proba, &new_means, w, cfg));
    let mf = match &base.mf {
        Some(mf) => Some(onboard_mf(mf, &models, emb, scores, w, cfg)?),
        None => None,
    };
    Ok(TaskMixture {
        models,
        classifier: base.classifier.clone(),
        means,
        prior,
        residual,
        alpha: base.alpha,
        mf,
        mf_weight: base.mf_weight,
    })
}

fn append_column(a: &Array2<f32>, col: &[f32]) -> Array2<f32> {
    let mut out = Array2::<f32>::zeros((a.nrows(), a.ncols() + 1));
    out.slice_mut(ndarray::s![.., ..a.ncols()]).assign(a);
    for (r, &v) in col.iter().enumerate() {
        out[[r, a.ncols()]] = v;
    }
    out
}

/// The residual memory with the new model's column: each exemplar's similar-model residuals, weighted;
/// with `append_exemplars`, the scored rows too (their score minus the new model's task-mean prediction).
#[allow(clippy::too_many_arguments)]
fn onboard_residual(
    k: &Knn,
    models: &[String],
    emb: ArrayView2<'_, f32>,
    scores: &[f64],
    proba: &Array2<f32>,
    new_means: &[f32],
    w: &[f64],
    cfg: &OnboardConfig,
) -> Knn {
    let mut rows: Vec<Vec<f32>> = k
        .scores
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.push(weighted(w, |j| f64::from(r[j])) as f32);
            r
        })
        .collect();
    let mut exemplars = k.exemplars.clone();
    if cfg.append_exemplars && !scores.is_empty() {
        let added = match &k.proj {
            Some(p) => p.apply(emb),
            None => emb.to_owned(),
        };
        let width = models.len();
        for (p, &y) in proba.rows().into_iter().zip(scores) {
            let (mut num, mut den) = (0.0f64, 0.0f64);
            for (c, &pc) in p.iter().enumerate() {
                if new_means[c].is_finite() {
                    num += f64::from(pc) * f64::from(new_means[c]);
                    den += f64::from(pc);
                }
            }
            let mut r = vec![f32::NAN; width];
            if den > 1e-12 {
                r[width - 1] = (y - num / den) as f32;
            }
            rows.push(r);
        }
        let views = [exemplars.view(), added.view()];
        if let Ok(all) = ndarray::concatenate(Axis(0), &views) {
            exemplars = all;
        }
    }
    let mut prior = k.prior.clone();
    let p = weighted(w, |j| k.prior[j]);
    prior.push(if p.is_finite() { p } else { 0.0 });
    Knn::from_parts(
        models.to_vec(),
        k.config.clone(),
        exemplars,
        rows,
        prior,
        k.proj.clone(),
    )
}

/// MF with the new model's vector and bias: a logistic fit on the scored rows' projected embeddings,
/// ridge towards the similar models' weighted vector and bias.
fn onboard_mf(
    mf: &MatrixFactorization,
    models: &[String],
    emb: ArrayView2<'_, f32>,
    scores: &[f64],
    w: &[f64],
    cfg: &OnboardConfig,
) -> Result<MatrixFactorization, OnboardError> {
    let d = mf.v.ncols();
    let mut prior: Vec<f64> = (0..d)
        .map(|k| weighted(w, |j| f64::from(mf.v[[j, k]])))
        .collect();
    prior.push(weighted(w, |j| f64::from(mf.b[j])));
    prior
        .iter_mut()
        .filter(|v| !v.is_finite())
        .for_each(|v| *v = 0.0);
    let features: Vec<Vec<f64>> = if emb.nrows() > 0 {
        emb.dot(&mf.w.t())
            .rows()
            .into_iter()
            .map(|z| z.iter().map(|&v| f64::from(v)).chain([1.0]).collect())
            .collect()
    } else {
        Vec::new()
    };
    let theta = logistic::fit_towards(&features, scores, &prior, cfg.mf_ridge)?;
    let mut v = Array2::<f32>::zeros((mf.v.nrows() + 1, d));
    v.slice_mut(ndarray::s![..mf.v.nrows(), ..]).assign(&mf.v);
    for k in 0..d {
        v[[mf.v.nrows(), k]] = theta[k] as f32;
    }
    let b: Array1<f32> = mf.b.iter().copied().chain([theta[d] as f32]).collect();
    Ok(MatrixFactorization {
        models: models.to_vec(),
        w: mf.w.clone(),
        v,
        b,
    })
}

/// `base` without `name` (to onboard it again from new rows): its column everywhere, and exemplars
/// that scored only it.
pub fn without_model(base: &TaskMixture, name: &str) -> Result<TaskMixture, OnboardError> {
    let drop = base
        .models
        .iter()
        .position(|m| m == name)
        .ok_or_else(|| OnboardError::Unknown(name.into()))?;
    let keep: Vec<usize> = (0..base.models.len()).filter(|&j| j != drop).collect();
    let models: Vec<String> = keep.iter().map(|&j| base.models[j].clone()).collect();
    let residual = base.residual.as_ref().map(|k| {
        let rows: Vec<usize> = (0..k.scores.len())
            .filter(|&i| keep.iter().any(|&j| !k.scores[i][j].is_nan()))
            .collect();
        Knn::from_parts(
            models.clone(),
            k.config.clone(),
            k.exemplars.select(Axis(0), &rows),
            rows.iter()
                .map(|&i| keep.iter().map(|&j| k.scores[i][j]).collect())
                .collect(),
            keep.iter().map(|&j| k.prior[j]).collect(),
            k.proj.clone(),
        )
    });
    let mf = base.mf.as_ref().map(|mf| MatrixFactorization {
        models: models.clone(),
        w: mf.w.clone(),
        v: mf.v.select(Axis(0), &keep),
        b: keep.iter().map(|&j| mf.b[j]).collect(),
    });
    Ok(TaskMixture {
        classifier: base.classifier.clone(),
        means: base.means.select(Axis(1), &keep),
        prior: keep.iter().map(|&j| base.prior[j]).collect(),
        residual,
        alpha: base.alpha,
        mf,
        mf_weight: base.mf_weight,
        models,
    })
}
