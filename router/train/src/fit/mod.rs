//! Fitting the router's quality predictors on embedded, scored rows: the training half of
//! `routemesh_router::predict` (which holds the predictors and their inference).
//!
//! Training data may mix model pools (mix9's nine models, the GPT-4/Mixtral pair): a row's score for a
//! model it was not run on is `None`, and every predictor learns each model only from the rows that
//! scored it.

use ndarray::{Array2, ArrayView2};
use routemesh_router::predict::{Blend, KnnConfig, Prior, QualityPredictor};

use crate::save::SavablePredictor;

mod adam;
mod knn;
mod linear;
mod mf;
mod mlp;
mod pca;
mod task;

pub use knn::train_knn;
pub use linear::train_ridge;
pub use mf::{MfConfig, train_mf};
pub use mlp::{MlpConfig, train_mlp};
pub use pca::fit_projection;
pub use task::{TaskConfig, train_classifier, train_task_mixture};

/// Training examples: L2-normalised embeddings `[n, dim]` and `quality[row][model]`.
#[derive(Debug, Clone, Copy)]
pub struct TrainSet<'a> {
    pub models: &'a [String],
    pub emb: ArrayView2<'a, f32>,
    pub quality: &'a [Vec<Option<f64>>],
    /// Row `source` labels (e.g. `mmlu/anatomy`), used only at training time (kNN target smoothing).
    pub sources: Option<&'a [String]>,
}

impl TrainSet<'_> {
    /// Mean observed quality per (source, model) for each training row, `None` without labels.
    pub fn source_means(&self) -> Option<Vec<Vec<f64>>> {
        let sources: Vec<&str> = self.sources?.iter().map(String::as_str).collect();
        Some(source_mean_predictions(&sources, self, &sources))
    }

    /// Mean observed quality per model (0.5 where a model has no scores at all).
    pub fn prior(&self) -> Vec<f64> {
        (0..self.models.len())
            .map(|j| {
                let v: Vec<f64> = self.quality.iter().filter_map(|r| r[j]).collect();
                if v.is_empty() {
                    0.5
                } else {
                    v.iter().sum::<f64>() / v.len() as f64
                }
            })
            .collect()
    }
}

/// Which predictor to train.
#[derive(Debug, Clone, PartialEq)]
pub enum PredictorSpec {
    /// Per-model training mean, prompt-blind.
    Prior,
    Knn(KnnConfig),
    Mf(MfConfig),
    Ridge {
        lambda: f64,
    },
    /// `weight · kNN + (1 − weight) · MF`.
    Blend {
        knn: KnnConfig,
        mf: MfConfig,
        weight: f64,
    },
    /// One-hidden-layer perceptron (a reference).
    Mlp(MlpConfig),
    /// Task classifier × per-task means, plus a residual kNN (and optionally MF).
    Task(TaskConfig),
}

impl PredictorSpec {
    pub fn name(&self) -> String {
        match self {
            Self::Prior => "prior (per-model mean)".into(),
            Self::Knn(c) if c.tau.is_none() => format!("plain kNN k={}", c.k),
            Self::Knn(c) => format!(
                "sim-weighted kNN k={} tau={} smooth={}{}",
                c.k,
                c.tau.unwrap_or(0.0),
                c.smooth,
                pca_suffix(c.pca)
            ),
            Self::Mf(c) => format!("MF d={} epochs={} smooth={}", c.dim, c.epochs, c.smooth),
            Self::Ridge { lambda } => format!("ridge lambda={lambda}"),
            Self::Blend { weight, knn, mf } => format!(
                "blend {weight:.2} kNN(k={},smooth={}{}) + {:.2} MF(d={},smooth={})",
                knn.k,
                knn.smooth,
                pca_suffix(knn.pca),
                1.0 - weight,
                mf.dim,
                mf.smooth
            ),
            Self::Mlp(c) => format!("MLP hidden={} epochs={}", c.hidden, c.epochs),
            Self::Task(c) => format!(
                "task classifier + {:.2} residual kNN(k={}{}){}",
                c.alpha,
                c.knn.k,
                pca_suffix(c.knn.pca),
                if c.mf_weight > 0.0 {
                    format!(", {:.2} MF(d={})", c.mf_weight, c.mf.dim)
                } else {
                    String::new()
                }
            ),
        }
    }

    /// Trains the predictor of this spec.
    pub fn train(&self, data: &TrainSet<'_>) -> Box<dyn QualityPredictor> {
        self.train_savable(data)
    }

    /// Trains the concrete predictor of this spec (artifacts need the concrete type to serialise it).
    pub fn train_savable(&self, data: &TrainSet<'_>) -> Box<dyn SavablePredictor> {
        match self {
            Self::Prior => Box::new(Prior {
                models: data.models.to_vec(),
                prior: data.prior(),
            }),
            Self::Knn(c) => Box::new(train_knn(data, c.clone())),
            Self::Mf(c) => Box::new(train_mf(data, c)),
            Self::Ridge { lambda } => Box::new(train_ridge(data, *lambda)),
            Self::Blend { knn, mf, weight } => Box::new(Blend {
                knn: train_knn(data, knn.clone()),
                mf: train_mf(data, mf),
                weight: *weight,
            }),
            Self::Mlp(c) => Box::new(train_mlp(data, c)),
            Self::Task(c) => Box::new(train_task_mixture(data, c)),
        }
    }
}

fn pca_suffix(pca: usize) -> String {
    if pca > 0 {
        format!(" pca={pca}")
    } else {
        String::new()
    }
}

/// Per-`source` mean score baseline (e.g. all `mmlu/anatomy` rows get the training mean of that subject).
/// It reads the row's source label, which a live router does not have: an upper reference for what task
/// identity alone buys, not a deployable router.
pub fn source_mean_predictions(
    train_sources: &[&str],
    train: &TrainSet<'_>,
    test_sources: &[&str],
) -> Vec<Vec<f64>> {
    use std::collections::HashMap;
    let m = train.models.len();
    let prior = train.prior();
    let mut acc: HashMap<&str, (Vec<f64>, Vec<f64>)> = HashMap::new();
    for (src, q) in train_sources.iter().zip(train.quality) {
        let e = acc
            .entry(src)
            .or_insert_with(|| (vec![0.0; m], vec![0.0; m]));
        for (j, v) in q.iter().enumerate() {
            if let Some(v) = v {
                e.0[j] += v;
                e.1[j] += 1.0;
            }
        }
    }
    test_sources
        .iter()
        .map(|s| match acc.get(s) {
            Some((sum, n)) => (0..m)
                .map(|j| if n[j] > 0.0 { sum[j] / n[j] } else { prior[j] })
                .collect(),
            None => prior.clone(),
        })
        .collect()
}

/// Rows of `a` selected by index.
pub fn select_rows(a: ArrayView2<'_, f32>, idx: &[usize]) -> Array2<f32> {
    a.select(ndarray::Axis(0), idx)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod tests {
    use super::*;

    /// Two clusters of prompts: model 0 is good on cluster A, model 1 on cluster B; model 2 has scores only
    /// for half the rows (another pool).
    pub fn toy() -> (Vec<String>, Array2<f32>, Vec<Vec<Option<f64>>>) {
        let models = vec!["m0".to_string(), "m1".to_string(), "m2".to_string()];
        let dim = 8;
        let n = 80;
        let mut emb = Array2::<f32>::zeros((n, dim));
        let mut q = Vec::new();
        for i in 0..n {
            let a = i % 2 == 0;
            emb[[i, if a { 0 } else { 1 }]] = 1.0;
            emb[[i, 2 + i % 5]] = 0.3;
            let norm = emb.row(i).dot(&emb.row(i)).sqrt();
            emb.row_mut(i).mapv_inplace(|v| v / norm);
            let m2 = if i < n / 2 { Some(0.5) } else { None };
            q.push(vec![
                Some(if a { 1.0 } else { 0.0 }),
                Some(if a { 0.0 } else { 1.0 }),
                m2,
            ]);
        }
        (models, emb, q)
    }

    pub fn check_separates(p: &dyn QualityPredictor, emb: &Array2<f32>) {
        let pred = p.predict(emb.view());
        assert_eq!(pred.len(), emb.nrows());
        for (i, r) in pred.iter().enumerate() {
            assert_eq!(r.len(), 3);
            assert!(
                r.iter().all(|v| v.is_finite()),
                "{} row {i}: {r:?}",
                p.kind()
            );
            if i % 2 == 0 {
                assert!(r[0] > r[1] + 0.3, "{} row {i}: {r:?}", p.kind());
            } else {
                assert!(r[1] > r[0] + 0.3, "{} row {i}: {r:?}", p.kind());
            }
            assert!((r[2] - 0.5).abs() < 0.2, "{} row {i}: {r:?}", p.kind());
        }
    }

    #[test]
    fn every_predictor_learns_the_toy_task() {
        let (models, emb, q) = toy();
        let data = TrainSet {
            models: &models,
            emb: emb.view(),
            quality: &q,
            sources: None,
        };
        let specs = [
            PredictorSpec::Knn(KnnConfig {
                k: 5,
                tau: None,
                shrink: 0.0,
                smooth: 0.0,
                pca: 0,
            }),
            PredictorSpec::Knn(KnnConfig {
                k: 5,
                tau: Some(0.1),
                shrink: 1.0,
                smooth: 0.0,
                pca: 0,
            }),
            PredictorSpec::Mf(MfConfig {
                dim: 8,
                epochs: 200,
                lr: 0.01,
                ..MfConfig::default()
            }),
            PredictorSpec::Ridge { lambda: 0.1 },
            PredictorSpec::Mlp(MlpConfig {
                hidden: 16,
                epochs: 200,
                lr: 0.01,
                ..MlpConfig::default()
            }),
        ];
        for s in specs {
            let p = s.train(&data);
            check_separates(p.as_ref(), &emb);
        }
        let p = PredictorSpec::Prior.train(&data);
        assert_eq!(p.predict(emb.view())[0], vec![0.5, 0.5, 0.5]);
    }

    #[test]
    fn source_mean_uses_the_label() {
        let (models, emb, q) = toy();
        let data = TrainSet {
            models: &models,
            emb: emb.view(),
            quality: &q,
            sources: None,
        };
        let src: Vec<&str> = (0..q.len())
            .map(|i| if i % 2 == 0 { "a" } else { "b" })
            .collect();
        let p = source_mean_predictions(&src, &data, &["a", "b", "zzz"]);
        assert_eq!(p[0][0], 1.0);
        assert_eq!(p[1][1], 1.0);
        assert_eq!(p[2][0], 0.5);
    }
}
