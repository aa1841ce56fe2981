//! Training the task mixture: the softmax classifier of the rows' `source`, each task's mean quality per
//! model, the residual memory (score − task mean) and the optional MF.

use ndarray::{Array1, Array2, ArrayView2, Axis};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use routemesh_router::predict::{KnnConfig, SoftmaxClassifier, TaskMixture, softmax_in_place};

use super::TrainSet;
use super::adam::Adam;
use super::knn::train_knn;
use super::mf::{MfConfig, train_mf};

#[derive(Debug, Clone, PartialEq)]
pub struct TaskConfig {
    /// Classifier training: epochs over the rows, Adam learning rate, batch size, L2 penalty.
    pub epochs: usize,
    pub lr: f64,
    pub batch: usize,
    pub weight_decay: f64,
    pub seed: u64,
    /// Pseudo-count pulling a task's mean towards the model's overall mean (thin tasks).
    pub mean_shrink: f64,
    /// Weight of the residual kNN correction (0 = none).
    pub alpha: f64,
    /// The residual memory (its `smooth` is ignored: residuals are already relative to the task mean).
    pub knn: KnnConfig,
    /// `(1 − w)·task prediction + w·MF` (0 = no MF).
    pub mf_weight: f64,
    pub mf: MfConfig,
}

impl Default for TaskConfig {
    fn default() -> Self {
        Self {
            epochs: 40,
            lr: 0.01,
            batch: 128,
            weight_decay: 1e-5,
            seed: 5,
            mean_shrink: 1.0,
            alpha: 0.5,
            knn: KnnConfig {
                k: 50,
                tau: Some(0.2),
                shrink: 5.0,
                smooth: 0.0,
                pca: 128,
            },
            mf_weight: 0.0,
            mf: MfConfig::default(),
        }
    }
}

/// Trains on `emb` `[n, dim]` with `labels[i]` an index into `classes`.
pub fn train_classifier(
    emb: ArrayView2<'_, f32>,
    labels: &[usize],
    classes: Vec<String>,
    cfg: &TaskConfig,
) -> SoftmaxClassifier {
    let (n, d) = emb.dim();
    let s = classes.len().max(1);
    let mut w = Array2::<f32>::zeros((s, d));
    // Start at the class frequencies: the weights then learn only what the prompt adds.
    let mut counts = vec![1.0f32; s];
    for &l in labels {
        counts[l] += 1.0;
    }
    let total: f32 = counts.iter().sum();
    let mut b: Array1<f32> = counts.iter().map(|c| (c / total).ln()).collect();
    let (mut aw, mut ab) = (Adam::new(s * d), Adam::new(s));
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let mut order: Vec<usize> = (0..n).collect();
    let mut t = 0;
    for _ in 0..cfg.epochs {
        order.shuffle(&mut rng);
        for chunk in order.chunks(cfg.batch.max(1)) {
            let xb = emb.select(Axis(0), chunk);
            let mut g = xb.dot(&w.t()) + &b;
            for (mut row, &i) in g.rows_mut().into_iter().zip(chunk) {
                softmax_in_place(row.view_mut());
                row[labels[i]] -= 1.0;
            }
            g /= chunk.len() as f32;
            let gw: Vec<f32> = g.t().dot(&xb).iter().copied().collect();
            let gb: Vec<f32> = g.sum_axis(Axis(0)).to_vec();
            t += 1;
            if let Some(p) = w.as_slice_mut() {
                aw.step(p, &gw, cfg.lr as f32, t, cfg.weight_decay as f32);
            }
            if let Some(p) = b.as_slice_mut() {
                ab.step(p, &gb, cfg.lr as f32, t, 0.0);
            }
        }
    }
    SoftmaxClassifier { classes, w, b }
}

/// The task classifier, the per-task means (shrunk towards each model's mean), the residual memory and
/// the optional MF, all from the same rows.
pub fn train_task_mixture(data: &TrainSet<'_>, cfg: &TaskConfig) -> TaskMixture {
    let n = data.emb.nrows();
    let m = data.models.len();
    // Without labels every row is one task: the mixture degrades to the prior plus residual kNN.
    let mut classes: Vec<String> = match data.sources {
        Some(s) => s.to_vec(),
        None => vec![String::new()],
    };
    classes.sort();
    classes.dedup();
    let labels: Vec<usize> = (0..n)
        .map(|i| {
            data.sources
                .and_then(|s| classes.binary_search(&s[i]).ok())
                .unwrap_or(0)
        })
        .collect();
    let prior = data.prior();
    let mut sum = Array2::<f64>::zeros((classes.len(), m));
    let mut cnt = Array2::<f64>::zeros((classes.len(), m));
    for (i, q) in data.quality.iter().enumerate() {
        for (j, v) in q.iter().enumerate() {
            if let Some(v) = v {
                sum[[labels[i], j]] += v;
                cnt[[labels[i], j]] += 1.0;
            }
        }
    }
    let k = cfg.mean_shrink.max(0.0);
    let means = Array2::from_shape_fn((classes.len(), m), |(c, j)| {
        let (s, n) = (sum[[c, j]], cnt[[c, j]]);
        if n > 0.0 {
            ((s + k * prior[j]) / (n + k)) as f32
        } else {
            f32::NAN
        }
    });
    let residual = (cfg.alpha > 0.0).then(|| {
        let resid: Vec<Vec<Option<f64>>> = data
            .quality
            .iter()
            .enumerate()
            .map(|(i, q)| {
                q.iter()
                    .enumerate()
                    // A scored (task, model) has a finite mean.
                    .map(|(j, v)| v.map(|v| v - f64::from(means[[labels[i], j]])))
                    .collect()
            })
            .collect();
        let rd = TrainSet {
            models: data.models,
            emb: data.emb,
            quality: &resid,
            sources: None,
        };
        train_knn(
            &rd,
            KnnConfig {
                smooth: 0.0,
                ..cfg.knn.clone()
            },
        )
    });
    let mf = (cfg.mf_weight > 0.0).then(|| train_mf(data, &cfg.mf));
    TaskMixture {
        models: data.models.to_vec(),
        classifier: train_classifier(data.emb, &labels, classes, cfg),
        means,
        prior: prior.iter().map(|&p| p as f32).collect(),
        residual,
        alpha: cfg.alpha,
        mf,
        mf_weight: cfg.mf_weight,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::fit::MfConfig;
    use crate::fit::tests::{check_separates, toy};

    #[test]
    fn classifier_recognises_the_toy_clusters() {
        let (_, emb, _) = toy();
        let labels: Vec<usize> = (0..emb.nrows()).map(|i| i % 2).collect();
        let c = train_classifier(
            emb.view(),
            &labels,
            vec!["a".into(), "b".into()],
            &TaskConfig {
                epochs: 100,
                lr: 0.05,
                ..TaskConfig::default()
            },
        );
        let p = c.proba(emb.view());
        for (i, row) in p.rows().into_iter().enumerate() {
            assert!((row.sum() - 1.0).abs() < 1e-5);
            assert!(row[i % 2] > 0.9, "row {i}: {row:?}");
        }
    }

    #[test]
    fn task_mixture_learns_the_toy_task_from_labels() {
        let (models, emb, q) = toy();
        let src: Vec<String> = (0..q.len())
            .map(|i| if i % 2 == 0 { "a" } else { "b" }.to_string())
            .collect();
        let data = TrainSet {
            models: &models,
            emb: emb.view(),
            quality: &q,
            sources: Some(&src),
        };
        let cfg = TaskConfig {
            epochs: 100,
            lr: 0.05,
            knn: KnnConfig {
                k: 5,
                pca: 0,
                ..TaskConfig::default().knn
            },
            ..TaskConfig::default()
        };
        check_separates(&train_task_mixture(&data, &cfg), &emb);
        // With MF mixed in it still separates.
        let with_mf = train_task_mixture(
            &data,
            &TaskConfig {
                mf_weight: 0.3,
                mf: MfConfig {
                    dim: 8,
                    epochs: 100,
                    lr: 0.01,
                    ..MfConfig::default()
                },
                ..cfg
            },
        );
        check_separates(&with_mf, &emb);
    }
}
