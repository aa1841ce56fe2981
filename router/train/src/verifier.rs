//! Training and evaluating the answer verifier of cascades: answers of routing rows that carry
//! `responses`, a logistic regression on their features (Newton/IRLS, L2), out-of-fold scores under the
//! router's folds, the reference verifier of issue 17 (ridge on the encoder embedding of prompt + answer
//! plus four hand features), and the cascade metrics: cascade and cascade routing APGR/CPT and cost next
//! to prompt-only routing, with bootstrap paired standard errors; and the gap adjustment that lets a
//! gateway serve cascade routing with one threshold ([`fit_gap_adjustment`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use ndarray::{Array1, Array2, Axis};
use rand::{Rng, SeedableRng};
use routemesh_router::RouterError;
use routemesh_router::fast::StaticEmbedder;
use routemesh_router::verify::{
    AnswerVerifier, FeatureSet, GapAdjustment, HAND_FEATURES, VERIFIER_FORMAT,
    VERIFIER_FORMAT_VERSION, VerifierCalibration, VerifierManifest, VerifierWeights, VerifyInput,
    adjust, logit, percentiles, raw_features, sigmoid,
};

use crate::data::{Prices, Table};
use crate::metrics::{binary_metrics, cpt, trapz};

/// The feature set `routemesh router train` uses unless told otherwise (chosen by 5-fold CV on GSM8K:
/// docs/BENCHMARKS.md, "Cascade verifier (issue 17)").
pub const DEFAULT_FEATURES: &str = "hand";
/// L2 penalty of the default verifier (standardised features).
pub const DEFAULT_LAMBDA: f64 = 10.0;

/// `hand,answer,prompt,pq` -> a [`FeatureSet`].
pub fn parse_features(spec: &str) -> Result<FeatureSet, String> {
    let mut f = FeatureSet {
        hand: false,
        answer_embedding: false,
        prompt_embedding: false,
        predicted_quality: false,
    };
    for part in spec
        .split([',', '+'])
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        match part {
            "hand" => f.hand = true,
            "answer" => f.answer_embedding = true,
            "prompt" => f.prompt_embedding = true,
            "pq" => f.predicted_quality = true,
            other => {
                return Err(format!(
                    "unknown verifier feature {other:?} (hand, answer, prompt, pq)"
                ));
            }
        }
    }
    if f.dim() == 0 {
        return Err("a verifier needs at least one feature group".into());
    }
    Ok(f)
}

/// Answers of a table: one per (row, model with a recorded response and a score).
#[derive(Debug, Clone)]
pub struct Answers {
    /// Answering models, in first-seen order (the verifier's per-model biases).
    pub models: Vec<String>,
    pub row: Vec<usize>,
    pub model: Vec<usize>,
    pub label: Vec<f64>,
    /// Raw features `[answer][feature]`.
    pub x: Array2<f64>,
}

/// Collects the answers of `table` and their features; `pq[row][table model]` is the (out-of-fold)
/// predicted quality the stacked feature reads.
pub fn answers(
    table: &Table,
    set: &FeatureSet,
    embedder: Option<&StaticEmbedder>,
    pq: Option<&[Vec<f64>]>,
) -> Result<Answers, RouterError> {
    let mut models: Vec<String> = Vec::new();
    let (mut row, mut model, mut label, mut xs) = (vec![], vec![], vec![], vec![]);
    for (i, r) in table.rows.iter().enumerate() {
        for (j, m) in table.models.iter().enumerate() {
            let (Some(answer), Some(q)) = (r.response(m), table.quality[i][j]) else {
                continue;
            };
            let mj = match models.iter().position(|x| x == m) {
                Some(k) => k,
                None => {
                    models.push(m.clone());
                    models.len() - 1
                }
            };
            let input = VerifyInput {
                model: m,
                prompt: &r.prompt,
                answer,
                predicted_quality: pq.map(|p| p[i][j]),
            };
            xs.push(raw_features(set, embedder, &input, 0.5)?);
            row.push(i);
            model.push(mj);
            label.push(if q >= 0.5 { 1.0 } else { 0.0 });
        }
    }
    let d = set.dim();
    let flat: Vec<f64> = xs.into_iter().flatten().collect();
    let x = Array2::from_shape_vec((row.len(), d), flat)
        .map_err(|e| routemesh_router::verify::VerifyError::Invalid(e.to_string()))?;
    Ok(Answers {
        models,
        row,
        model,
        label,
        x,
    })
}

/// Solves `a x = b` for symmetric positive definite `a` (Cholesky).
fn cholesky_solve(a: &Array2<f64>, b: &Array1<f64>) -> Array1<f64> {
    let n = a.nrows();
    let mut l = Array2::<f64>::zeros((n, n));
    for i in 0..n {
        for j in 0..=i {
            let mut s = a[[i, j]];
            for k in 0..j {
                s -= l[[i, k]] * l[[j, k]];
            }
            if i == j {
                l[[i, i]] = s.max(1e-12).sqrt();
            } else {
                l[[i, j]] = s / l[[j, j]];
            }
        }
    }
    let mut y = Array1::<f64>::zeros(n);
    for i in 0..n {
        let s: f64 = (0..i).map(|k| l[[i, k]] * y[k]).sum();
        y[i] = (b[i] - s) / l[[i, i]];
    }
    let mut x = Array1::<f64>::zeros(n);
    for i in (0..n).rev() {
        let s: f64 = (i + 1..n).map(|k| l[[k, i]] * x[k]).sum();
        x[i] = (y[i] - s) / l[[i, i]];
    }
    x
}

/// L2-penalised logistic regression on standardised `x` plus one-hot `model` biases (penalised lightly)
/// and an unpenalised intercept, by Newton's method.
pub fn fit_logistic(
    x: &Array2<f64>,
    model: &[usize],
    n_models: usize,
    y: &[f64],
    lambda: f64,
) -> VerifierWeights {
    let (n, d) = x.dim();
    let mean = x.mean_axis(Axis(0)).unwrap_or_else(|| Array1::zeros(d));
    let scale: Array1<f64> = x
        .std_axis(Axis(0), 0.0)
        .mapv(|s| if s > 1e-9 { s } else { 1.0 });
    // Design: [standardised features | model one-hot | 1].
    let p = d + n_models + 1;
    let mut z = Array2::<f64>::zeros((n, p));
    for i in 0..n {
        for k in 0..d {
            z[[i, k]] = (x[[i, k]] - mean[k]) / scale[k];
        }
        if let Some(&m) = model.get(i)
            && m < n_models
        {
            z[[i, d + m]] = 1.0;
        }
        z[[i, p - 1]] = 1.0;
    }
    let mut pen = Array1::<f64>::from_elem(p, lambda);
    for k in d..p - 1 {
        pen[k] = 1.0;
    }
    pen[p - 1] = 1e-6;
    let y = Array1::from_vec(y.to_vec());
    let mut beta = Array1::<f64>::zeros(p);
    for _ in 0..25 {
        let eta = z.dot(&beta);
        let mu = eta.mapv(sigmoid);
        let w = mu.mapv(|m| (m * (1.0 - m)).max(1e-9));
        let grad = z.t().dot(&(&y - &mu)) - &pen * &beta;
        let zw = &z * &w.view().insert_axis(Axis(1));
        let mut h = z.t().dot(&zw);
        for k in 0..p {
            h[[k, k]] += pen[k];
        }
        let step = cholesky_solve(&h, &grad);
        beta += &step;
        if step.iter().map(|s| s.abs()).fold(0.0, f64::max) < 1e-7 {
            break;
        }
    }
    VerifierWeights {
        mean: mean.to_vec(),
        scale: scale.to_vec(),
        w: beta.slice(ndarray::s![..d]).to_vec(),
        bias: beta[p - 1],
        model_bias: beta.slice(ndarray::s![d..p - 1]).to_vec(),
    }
}

/// Ridge regression `y ~ x` (centred, unpenalised intercept): `(w, b)`.
pub fn fit_ridge(x: &Array2<f64>, y: &[f64], lambda: f64) -> (Array1<f64>, f64) {
    let d = x.ncols();
    let xm = x.mean_axis(Axis(0)).unwrap_or_else(|| Array1::zeros(d));
    let y = Array1::from_vec(y.to_vec());
    let ym = y.mean().unwrap_or(0.0);
    let xc = x - &xm;
    let mut a = xc.t().dot(&xc);
    for k in 0..d {
        a[[k, k]] += lambda;
    }
    let w = cholesky_solve(&a, &xc.t().dot(&(&y - ym)));
    let b = ym - w.dot(&xm);
    (w, b)
}

/// The fold of each table row under `eval::cross_validate`'s scheme (same seed, same folds).
pub fn fold_of(n: usize, folds: usize, seed: u64) -> Vec<usize> {
    use rand::seq::SliceRandom;
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    let folds = folds.clamp(2, n.max(2));
    let mut out = vec![0; n];
    for (p, &i) in idx.iter().enumerate() {
        out[i] = p % folds;
    }
    out
}

/// Out-of-fold P(good) of every answer (the folds are over table rows, so both answers to a prompt are
/// held out together).
pub fn oof_scores(a: &Answers, fold: &[usize], folds: usize, lambda: f64) -> Vec<f64> {
    let mut out = vec![0.5; a.row.len()];
    for f in 0..folds {
        let tr: Vec<usize> = (0..a.row.len()).filter(|&k| fold[a.row[k]] != f).collect();
        let te: Vec<usize> = (0..a.row.len()).filter(|&k| fold[a.row[k]] == f).collect();
        if tr.is_empty() || te.is_empty() {
            continue;
        }
        let x = a.x.select(Axis(0), &tr);
        let m: Vec<usize> = tr.iter().map(|&k| a.model[k]).collect();
        let y: Vec<f64> = tr.iter().map(|&k| a.label[k]).collect();
        let w = fit_logistic(&x, &m, a.models.len(), &y, lambda);
        for &k in &te {
            let xr = a.x.row(k).to_vec();
            out[k] = sigmoid(w.logit(&xr, Some(a.model[k])));
        }
    }
    out
}

/// Trains a verifier on all answers; calibration from `oof` scores when given (else in-sample).
#[allow(clippy::too_many_arguments)]
pub fn train_verifier(
    a: &Answers,
    set: FeatureSet,
    lambda: f64,
    oof: Option<&[f64]>,
    embedder: Option<Arc<StaticEmbedder>>,
    embedder_model_sha256: Option<String>,
    training: serde_json::Value,
    gap: Option<&GapFit>,
) -> Result<AnswerVerifier, RouterError> {
    let w = fit_logistic(&a.x, &a.model, a.models.len(), &a.label, lambda);
    let in_sample: Vec<f64>;
    let scores = match oof {
        Some(s) => s,
        None => {
            in_sample = (0..a.row.len())
                .map(|k| sigmoid(w.logit(&a.x.row(k).to_vec(), Some(a.model[k]))))
                .collect();
            &in_sample
        }
    };
    let per_model = a
        .models
        .iter()
        .enumerate()
        .map(|(j, m)| {
            let s: Vec<f64> = (0..scores.len())
                .filter(|&k| a.model[k] == j)
                .map(|k| scores[k])
                .collect();
            (m.clone(), percentiles(&s))
        })
        .collect();
    let default_quality = if a.label.is_empty() {
        0.5
    } else {
        a.label.iter().sum::<f64>() / a.label.len() as f64
    };
    let manifest = VerifierManifest {
        format: VERIFIER_FORMAT.into(),
        format_version: VERIFIER_FORMAT_VERSION,
        id: "learned-v1".into(),
        models: a.models.clone(),
        features: set,
        embedder_model_sha256: if set.needs_embedder() {
            embedder_model_sha256
        } else {
            None
        },
        default_quality,
        files: BTreeMap::new(),
        calibration: VerifierCalibration {
            per_model,
            all: percentiles(scores),
            out_of_fold: oof.is_some(),
            adjusted_per_model: gap
                .map(|g| {
                    [(g.adjustment.weak.clone(), percentiles(&g.adjusted_weak))]
                        .into_iter()
                        .collect()
                })
                .unwrap_or_default(),
        },
        training,
        gap_adjustment: gap.map(|g| g.adjustment.clone()),
    };
    let embedder = if set.needs_embedder() { embedder } else { None };
    Ok(AnswerVerifier::new(manifest, w, embedder)?)
}

/// The stacker of cascade routing reduced to its serving form: ridge (λ = 1, as [`cascade_routing`]) of
/// the realised gain `q_strong − q_weak` on `[gap, logit(p)]`, giving `k = w_gap / |w_logit|` and the mean
/// gap, so that "escalate iff the stacked score exceeds a cutoff" is "accept iff
/// `logit(p) − k·(gap − gap_mean)` clears a threshold". `None` when the fit does not say a better answer
/// means less escalation (`w_logit >= 0`: then no threshold on the adjusted score is equivalent) or there
/// are too few rows.
pub fn fit_gap_adjustment(gap: &[f64], weak_score: &[f64], gain: &[f64]) -> Option<(f64, f64)> {
    let n = gap.len();
    if n < 3 || weak_score.len() != n || gain.len() != n {
        return None;
    }
    let x = Array2::from_shape_vec(
        (n, 2),
        (0..n)
            .flat_map(|i| [gap[i], logit(weak_score[i])])
            .collect(),
    )
    .ok()?;
    let (w, _) = fit_ridge(&x, gain, 1.0);
    let k = w[0] / -w[1];
    let gap_mean = gap.iter().sum::<f64>() / n as f64;
    (w[1] < 0.0 && k.is_finite() && gap_mean.is_finite()).then_some((k, gap_mean))
}

/// A fitted gap adjustment and the adjusted (out-of-fold) scores of the weak model's training answers,
/// whose percentiles calibrate the adjusted thresholds.
#[derive(Debug, Clone)]
pub struct GapFit {
    pub adjustment: GapAdjustment,
    pub adjusted_weak: Vec<f64>,
    /// The rows' mean realised gain `q_strong − q_weak` (provenance).
    pub mean_gain: f64,
}

/// Fits the gap adjustment of the pair with the most rows where both models answered, from the router's
/// out-of-fold predictions `router_pred` (`[row][table model]`) and the verifier's out-of-fold `scores`
/// of `a`'s answers. The strong model of a pair is the pricier one (as in [`crate::eval::groups`]).
pub fn fit_gap(
    table: &Table,
    prices: &Prices,
    a: &Answers,
    scores: &[f64],
    router_pred: &[Vec<f64>],
) -> Option<GapFit> {
    // Score of each (row, answering model) in `a`.
    let mut score_of: BTreeMap<(usize, usize), f64> = BTreeMap::new();
    for (k, (&r, &m)) in a.row.iter().zip(&a.model).enumerate() {
        if let Some(j) = table.model_index(&a.models[m]) {
            score_of.insert((r, j), scores[k]);
        }
    }
    let pair_rows = |js: usize, jw: usize| -> Vec<usize> {
        (0..table.len())
            .filter(|&i| {
                score_of.contains_key(&(i, jw))
                    && table.quality[i][js].is_some()
                    && table.rows[i].response(&table.models[js]).is_some()
            })
            .collect()
    };
    let (js, jw, rows) = crate::eval::groups(table, prices)
        .into_iter()
        .filter_map(|g| {
            let (s, w) = g.pair?;
            let (js, jw) = (g.models[s], g.models[w]);
            Some((js, jw, pair_rows(js, jw)))
        })
        .max_by_key(|(.., rows)| rows.len())?;
    let gap: Vec<f64> = rows
        .iter()
        .map(|&i| router_pred[i][js] - router_pred[i][jw])
        .collect();
    let weak: Vec<f64> = rows.iter().map(|&i| score_of[&(i, jw)]).collect();
    let gain: Vec<f64> = rows
        .iter()
        .map(|&i| table.quality[i][js].unwrap_or(0.0) - table.quality[i][jw].unwrap_or(0.0))
        .collect();
    let (k, gap_mean) = fit_gap_adjustment(&gap, &weak, &gain)?;
    Some(GapFit {
        adjusted_weak: weak
            .iter()
            .zip(&gap)
            .map(|(&p, &g)| adjust(p, g, k, gap_mean))
            .collect(),
        mean_gain: gain.iter().sum::<f64>() / gain.len() as f64,
        adjustment: GapAdjustment {
            weak: table.models[jw].clone(),
            strong: table.models[js].clone(),
            gap_weight: k,
            gap_mean,
            rows: rows.len(),
        },
    })
}

/// Cascade routing in its serving form, out-of-fold: per fold, [`fit_gap_adjustment`] on the training
/// folds, then the test rows' escalation score is `−adjusted_score` (what a gateway compares to one
/// threshold; no strong-direct rule). A fold whose fit fails falls back to the plain score.
pub fn serving_form(
    p: &PairRows,
    routing: &[f64],
    verifier: &[f64],
    fold: &[usize],
    folds: usize,
) -> Vec<f64> {
    let n = p.rows.len();
    let mut out: Vec<f64> = verifier.iter().map(|v| -v).collect();
    for f in 0..folds {
        let tr: Vec<usize> = (0..n).filter(|&i| fold[p.rows[i]] != f).collect();
        let pick = |v: &[f64]| -> Vec<f64> { tr.iter().map(|&i| v[i]).collect() };
        let gain: Vec<f64> = tr.iter().map(|&i| p.q_strong[i] - p.q_weak[i]).collect();
        let Some((k, gap_mean)) = fit_gap_adjustment(&pick(routing), &pick(verifier), &gain) else {
            continue;
        };
        for i in (0..n).filter(|&i| fold[p.rows[i]] == f) {
            out[i] = -adjust(verifier[i], routing[i], k, gap_mean);
        }
    }
    out
}

/// Writes `v` into `dir` (an artifact's `verifier/`): `weights.f32` and `manifest.json`.
pub fn save_verifier(dir: &std::path::Path, v: &AnswerVerifier) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let bytes = v.weights().to_bytes();
    let wpath = dir.join(routemesh_router::verify::VERIFIER_WEIGHTS);
    std::fs::write(&wpath, &bytes).with_context(|| format!("writing {}", wpath.display()))?;
    let mut m = v.manifest().clone();
    m.files.insert(
        routemesh_router::verify::VERIFIER_WEIGHTS.into(),
        routemesh_router::artifact::FileInfo::of(&bytes),
    );
    let mpath = dir.join(routemesh_router::artifact::MANIFEST);
    std::fs::write(&mpath, serde_json::to_string_pretty(&m)? + "\n")
        .with_context(|| format!("writing {}", mpath.display()))?;
    Ok(())
}

/// The reference verifier's four hand features (length, final marker, truncated, wrong annotations).
pub fn reference_hand(prompt: &str, answer: &str) -> [f64; 4] {
    let h = routemesh_router::verify::hand_features(prompt, answer);
    let at = |name: &str| {
        HAND_FEATURES
            .iter()
            .position(|n| *n == name)
            .map_or(0.0, |i| h[i])
    };
    [
        at("ln_answer_chars"),
        at("final_marker"),
        at("truncated"),
        at("wrong_annotations"),
    ]
}

/// One strong/weak pair's rows with both answers: what the cascade metrics read.
#[derive(Debug, Clone)]
pub struct PairRows {
    pub rows: Vec<usize>,
    pub q_strong: Vec<f64>,
    pub q_weak: Vec<f64>,
    pub cost_strong: Vec<f64>,
    pub cost_weak: Vec<f64>,
}

impl PairRows {
    /// The pair's recorded quality and cost on `rows` of `table` (model columns `strong`, `weak`);
    /// `rows` of the result are the positions `0..rows.len()`.
    pub fn of(table: &Table, rows: &[usize], strong: usize, weak: usize) -> Self {
        let column = |j: usize| -> Vec<f64> {
            rows.iter()
                .map(|&i| table.quality[i][j].unwrap_or(0.0))
                .collect()
        };
        Self {
            rows: (0..rows.len()).collect(),
            q_strong: column(strong),
            q_weak: column(weak),
            cost_strong: rows.iter().map(|&i| table.cost[i][strong]).collect(),
            cost_weak: rows.iter().map(|&i| table.cost[i][weak]).collect(),
        }
    }
}

/// A policy's quality/cost curve over the share of strong calls.
#[derive(Debug, Clone, Copy, Default)]
pub struct CurveStats {
    pub apgr: f64,
    pub cpt50: Option<f64>,
    /// Mean cost per request at the first operating point reaching PGR 50%.
    pub cost50: f64,
}

/// Strong-call share, quality and cost at every threshold of a policy given per row: `direct` (the strong
/// model is called without the weak one when `direct[i] > t`) and `escalate` (after the weak answer,
/// escalate when `escalate[i] > t`); `cascade` says whether non-direct rows call the weak model first
/// (routing does not: it calls exactly one model).
pub fn curve(
    p: &PairRows,
    idx: &[usize],
    direct: &[f64],
    escalate: &[f64],
    cascade: bool,
) -> CurveStats {
    let n = idx.len() as f64;
    let mut ts: Vec<f64> = idx
        .iter()
        .flat_map(|&i| [direct[i], escalate[i]])
        .filter(|v| v.is_finite())
        .collect();
    ts.sort_by(|a, b| b.total_cmp(a));
    ts.dedup();
    let acc_s = idx.iter().map(|&i| p.q_strong[i]).sum::<f64>() / n;
    let acc_w = idx.iter().map(|&i| p.q_weak[i]).sum::<f64>() / n;
    let mut xs = vec![0.0];
    let mut pgr = vec![0.0];
    // Share 0: every request answered by the weak model alone.
    let weak_only_cost = idx.iter().map(|&i| p.cost_weak[i]).sum::<f64>() / n;
    let mut costs = vec![weak_only_cost];
    for &t in &ts {
        let (mut strong, mut q, mut c) = (0usize, 0.0, 0.0);
        for &i in idx {
            if direct[i] > t {
                strong += 1;
                q += p.q_strong[i];
                c += p.cost_strong[i];
            } else if escalate[i] > t {
                strong += 1;
                q += p.q_strong[i];
                c += p.cost_strong[i] + if cascade { p.cost_weak[i] } else { 0.0 };
            } else {
                q += p.q_weak[i];
                c += p.cost_weak[i];
            }
        }
        xs.push(strong as f64 / n);
        pgr.push((q / n - acc_w) / (acc_s - acc_w));
        costs.push(c / n);
    }
    // All strong at the end (a threshold below every score).
    if xs.last().is_none_or(|&x| x < 1.0) {
        xs.push(1.0);
        pgr.push(1.0);
        costs.push(
            idx.iter()
                .map(|&i| {
                    p.cost_strong[i]
                        + if cascade && direct[i] <= f64::NEG_INFINITY {
                            p.cost_weak[i]
                        } else {
                            0.0
                        }
                })
                .sum::<f64>()
                / n,
        );
    }
    let cpt50 = cpt(&xs, &pgr, 0.5);
    let at = pgr
        .iter()
        .position(|&v| v >= 0.5 - 1e-12)
        .unwrap_or(pgr.len() - 1);
    CurveStats {
        apgr: trapz(&pgr, &xs),
        cpt50,
        cost50: costs[at],
    }
}

/// Everything compared in the cascade table, per row of [`PairRows`]: higher = escalate first.
#[derive(Debug, Clone)]
pub struct CascadeScores {
    /// Prompt-only routing: the router's out-of-fold predicted gap (strong − weak).
    pub routing: Vec<f64>,
    /// Cascade with this verifier: −P(weak answer good).
    pub cascade: Vec<f64>,
    /// Cascade with the reference verifier.
    pub reference: Vec<f64>,
    /// Cascade routing: the stacked escalation score after the weak answer, and before it (the score
    /// with the most favourable weak answer): strong-direct when even that would escalate.
    pub combined: Vec<f64>,
    pub combined_direct: Vec<f64>,
    /// Cascade routing as a gateway serves it: −(gap-adjusted P(good)), one threshold ([`serving_form`]).
    pub serving: Vec<f64>,
}

/// Stacks the router's gap and the verifier's logit into one escalation score (ridge on the realised
/// gain `q_strong − q_weak`, fitted out-of-fold on the same folds), and the strong-direct score: the
/// escalation score at the 95th percentile of the training folds' verifier logits.
pub fn cascade_routing(
    p: &PairRows,
    routing: &[f64],
    verifier: &[f64],
    fold: &[usize],
    folds: usize,
) -> (Vec<f64>, Vec<f64>) {
    let n = p.rows.len();
    let logit = |s: f64| {
        let s = s.clamp(1e-6, 1.0 - 1e-6);
        (s / (1.0 - s)).ln()
    };
    let feats = |i: usize, v: f64| [routing[i], logit(v)];
    let mut combined = vec![0.0; n];
    let mut direct = vec![f64::NEG_INFINITY; n];
    for f in 0..folds {
        let tr: Vec<usize> = (0..n).filter(|&i| fold[p.rows[i]] != f).collect();
        let te: Vec<usize> = (0..n).filter(|&i| fold[p.rows[i]] == f).collect();
        if tr.is_empty() || te.is_empty() {
            continue;
        }
        let x = Array2::from_shape_vec(
            (tr.len(), 2),
            tr.iter().flat_map(|&i| feats(i, verifier[i])).collect(),
        )
        .unwrap_or_else(|_| Array2::zeros((tr.len(), 2)));
        let y: Vec<f64> = tr.iter().map(|&i| p.q_strong[i] - p.q_weak[i]).collect();
        let (w, b) = fit_ridge(&x, &y, 1.0);
        let mut lv: Vec<f64> = tr.iter().map(|&i| logit(verifier[i])).collect();
        lv.sort_by(f64::total_cmp);
        let hi = lv[((lv.len() - 1) as f64 * 0.95).round() as usize];
        for &i in &te {
            let c = |v: f64| b + w[0] * routing[i] + w[1] * v;
            combined[i] = c(logit(verifier[i]));
            // A weak answer scored at the training 95th percentile is about the best it gets: if even
            // that would escalate, the weak call is wasted, so go straight to the strong model.
            direct[i] = if w[1] < 0.0 { c(hi) } else { f64::NEG_INFINITY };
        }
    }
    (combined, direct)
}

/// One line of the cascade table.
#[derive(Debug, Clone)]
pub struct CascadeLine {
    pub name: String,
    pub stats: CurveStats,
    /// Bootstrap se of APGR, and of (this − routing), (this − reference).
    pub se: f64,
    pub se_vs_routing: Option<(f64, f64)>,
    pub se_vs_reference: Option<(f64, f64)>,
    /// Cascade routing only: (this − plain cascade with the learned verifier, se).
    pub vs_cascade: Option<(f64, f64)>,
    /// The serving form only: (this − stacked cascade routing, se).
    pub vs_stacked: Option<(f64, f64)>,
}

/// The cascade table: routing, cascade with both verifiers, cascade routing; `boot` bootstrap resamples.
pub fn cascade_table(p: &PairRows, s: &CascadeScores, boot: usize, seed: u64) -> Vec<CascadeLine> {
    let n = p.rows.len();
    let none = vec![f64::NEG_INFINITY; n];
    type Policy<'a> = (&'a str, &'a [f64], &'a [f64], bool);
    let policies: [Policy; 5] = [
        ("prompt-only routing (router gap)", &none, &s.routing, false),
        ("cascade, reference verifier", &none, &s.reference, true),
        ("cascade, learned verifier", &none, &s.cascade, true),
        (
            "cascade routing (gap + verifier)",
            &s.combined_direct,
            &s.combined,
            true,
        ),
        (
            "cascade routing, serving form (adjusted threshold)",
            &none,
            &s.serving,
            true,
        ),
    ];
    let all: Vec<usize> = (0..n).collect();
    let full: Vec<CurveStats> = policies
        .iter()
        .map(|(_, d, e, c)| curve(p, &all, d, e, *c))
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); policies.len()];
    for _ in 0..boot {
        let idx: Vec<usize> = (0..n).map(|_| rng.random_range(0..n)).collect();
        for (k, (_, d, e, c)) in policies.iter().enumerate() {
            samples[k].push(curve(p, &idx, d, e, *c).apgr);
        }
    }
    let sd = |v: &[f64]| {
        let m = v.iter().sum::<f64>() / v.len().max(1) as f64;
        (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len().max(2) - 1) as f64).sqrt()
    };
    let diff = |a: usize, b: usize| -> (f64, f64) {
        let d: Vec<f64> = samples[a]
            .iter()
            .zip(&samples[b])
            .map(|(x, y)| x - y)
            .collect();
        (full[a].apgr - full[b].apgr, sd(&d))
    };
    policies
        .iter()
        .enumerate()
        .map(|(k, (name, ..))| CascadeLine {
            name: (*name).to_string(),
            stats: full[k],
            se: sd(&samples[k]),
            se_vs_routing: (k > 0).then(|| diff(k, 0)),
            se_vs_reference: (k > 1).then(|| diff(k, 1)),
            vs_cascade: (k >= 3).then(|| diff(k, 2)),
            vs_stacked: (k == 4).then(|| diff(4, 3)),
        })
        .collect()
}

/// The table as text.
pub fn format_cascade(p: &PairRows, lines: &[CascadeLine], boot: usize) -> String {
    use std::fmt::Write;
    let n = p.rows.len() as f64;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / n;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "\n== cascade (weak answers first), {} rows with both answers; cost per request in USD \
         (weak only {:.6}, strong only {:.6}); se from {boot} bootstrap resamples of the rows",
        p.rows.len(),
        mean(&p.cost_weak),
        mean(&p.cost_strong)
    );
    let _ = writeln!(
        o,
        "{:52}{:>7}{:>7}{:>8}{:>11}{:>20}{:>20}",
        "policy", "APGR", "se", "CPT50", "cost@50", "- routing (se)", "- reference (se)"
    );
    for l in lines {
        let d =
            |x: Option<(f64, f64)>| x.map_or("-".to_string(), |(d, s)| format!("{d:+.3} ({s:.3})"));
        let _ = writeln!(
            o,
            "{:52}{:>7.3}{:>7.3}{:>8}{:>11.6}{:>20}{:>20}",
            l.name,
            l.stats.apgr,
            l.se,
            l.stats.cpt50.map_or("-".into(), |c| format!("{c:.1}%")),
            l.stats.cost50,
            d(l.se_vs_routing),
            d(l.se_vs_reference)
        );
    }
    for l in lines {
        if let Some((d, s)) = l.vs_cascade {
            let _ = writeln!(
                o,
                "{} minus the plain cascade: {d:+.3} (paired se {s:.3})",
                l.name
            );
        }
        if let Some((d, s)) = l.vs_stacked {
            let _ = writeln!(
                o,
                "{} minus the stacked cascade routing: {d:+.3} (paired se {s:.3})",
                l.name
            );
        }
    }
    o
}

/// The binary metrics of a plain cascade over weak-answer scores (`P(good)`), for quick checks.
pub fn cascade_apgr(score_weak: &[f64], q_strong: &[f64], q_weak: &[f64]) -> f64 {
    let s: Vec<f64> = score_weak.iter().map(|v| -v).collect();
    binary_metrics(&s, q_strong, q_weak).apgr
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn logistic_separates_and_curve_matches_binary_metrics() {
        // One informative feature, one noise feature, two models with different base rates.
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let n = 400;
        let mut x = Array2::<f64>::zeros((n, 2));
        let mut y = vec![0.0; n];
        let mut m = vec![0; n];
        for i in 0..n {
            x[[i, 0]] = rng.random_range(-2.0..2.0);
            x[[i, 1]] = rng.random_range(-2.0..2.0);
            m[i] = i % 2;
            y[i] = f64::from(u8::from(x[[i, 0]] + 0.5 * m[i] as f64 > 0.0));
        }
        let w = fit_logistic(&x, &m, 2, &y, 1.0);
        assert!(w.w[0] > 1.0 && w.w[0].abs() > 5.0 * w.w[1].abs(), "{w:?}");
        assert!(w.model_bias[1] > w.model_bias[0]);
        // A plain cascade's curve is binary_metrics of the negated score.
        let p = PairRows {
            rows: (0..4).collect(),
            q_strong: vec![1.0, 1.0, 0.0, 1.0],
            q_weak: vec![0.0, 1.0, 0.0, 0.0],
            cost_strong: vec![1.0; 4],
            cost_weak: vec![0.1; 4],
        };
        let score = [0.1, 0.9, 0.5, 0.7];
        let esc: Vec<f64> = score.iter().map(|v| -v).collect();
        let c = curve(&p, &[0, 1, 2, 3], &[f64::NEG_INFINITY; 4], &esc, true);
        let b = binary_metrics(&esc, &p.q_strong, &p.q_weak);
        assert!((c.apgr - b.apgr).abs() < 1e-12);
        assert_eq!(c.cpt50, b.cpt50);
        // PGR 0.5 at one escalation (row 0): every weak call plus one strong call.
        assert!((c.cost50 - (0.4 + 1.0) / 4.0).abs() < 1e-12, "{}", c.cost50);
        let r = curve(&p, &[0, 1, 2, 3], &[f64::NEG_INFINITY; 4], &esc, false);
        assert!((r.cost50 - (0.3 + 1.0) / 4.0).abs() < 1e-12, "{}", r.cost50);
    }

    #[test]
    fn folds_are_balanced_and_specs_parse() {
        let f = fold_of(10, 5, 1);
        for k in 0..5 {
            assert_eq!(f.iter().filter(|&&x| x == k).count(), 2);
        }
        assert!(parse_features("hand,answer").is_ok());
        assert!(parse_features("bogus").is_err());
        assert!(parse_features("").is_err());
    }
}
