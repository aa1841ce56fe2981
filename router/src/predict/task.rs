//! Task-aware prediction: a softmax classifier recognises the prompt's task (the training rows' `source`,
//! e.g. `mix9/gsm8k` or `mmlu/anatomy`), each task's mean quality per model is mixed by the class
//! probabilities, and a kNN memory of residuals (score − its task's mean) adds what differs within a task.
//!
//! Why: on these data most of what a prompt tells about model quality is *which task it is*: the
//! label-reading per-source mean is as good as kNN, MF or ridge on raw scores. Predicting the task
//! explicitly, then correcting within it, keeps both signals apart instead of asking one vote to carry both.
//! Trained by `routemesh-router-train`.

use ndarray::{Array1, Array2, ArrayView2, ArrayViewMut1};

use super::{Knn, MatrixFactorization, QualityPredictor};

/// Multinomial logistic regression on the prompt embedding.
#[derive(Debug, Clone)]
pub struct SoftmaxClassifier {
    pub classes: Vec<String>,
    /// `[classes, dim]` weights and per-class biases.
    pub w: Array2<f32>,
    pub b: Array1<f32>,
}

impl SoftmaxClassifier {
    /// Class probabilities `[n, classes]`.
    pub fn proba(&self, emb: ArrayView2<'_, f32>) -> Array2<f32> {
        let mut p = emb.dot(&self.w.t()) + &self.b;
        for row in p.rows_mut() {
            softmax_in_place(row);
        }
        p
    }
}

/// Softmax of one row of logits, in place (the classifier's output, and its training's gradient).
pub fn softmax_in_place(mut row: ArrayViewMut1<'_, f32>) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    if sum > 0.0 {
        row.mapv_inplace(|v| v / sum);
    }
}

#[derive(Debug, Clone)]
pub struct TaskMixture {
    pub models: Vec<String>,
    pub classifier: SoftmaxClassifier,
    /// `[classes, models]` mean quality of each model on each task (shrunk towards its overall mean);
    /// NaN where no training row of the task scored the model.
    pub means: Array2<f32>,
    /// Per-model overall mean, for prompts whose likely tasks never ran the model.
    pub prior: Vec<f32>,
    /// Residual memory and its weight.
    pub residual: Option<Knn>,
    pub alpha: f64,
    pub mf: Option<MatrixFactorization>,
    pub mf_weight: f64,
}

impl TaskMixture {
    /// Per model, the task means weighted by the class probabilities of the tasks that scored it,
    /// renormalised: "if this prompt is of a task this model was run on, which one". Without the
    /// renormalisation a mix9 prompt that looks like an MMLU subject would get mix9 models' priors.
    fn task_means(&self, emb: ArrayView2<'_, f32>) -> Array2<f32> {
        let p = self.classifier.proba(emb);
        let (n, m) = (p.nrows(), self.means.ncols());
        let mut out = Array2::<f32>::zeros((n, m));
        for (i, pr) in p.rows().into_iter().enumerate() {
            for j in 0..m {
                let (mut num, mut den) = (0.0f32, 0.0f32);
                for (c, &pc) in pr.iter().enumerate() {
                    let mu = self.means[[c, j]];
                    if mu.is_finite() {
                        num += pc * mu;
                        den += pc;
                    }
                }
                out[[i, j]] = if den > 1e-12 {
                    num / den
                } else {
                    self.prior[j]
                };
            }
        }
        out
    }
}

impl QualityPredictor for TaskMixture {
    fn kind(&self) -> &'static str {
        "task"
    }
    fn as_task_mixture(&self) -> Option<&TaskMixture> {
        Some(self)
    }
    fn models(&self) -> &[String] {
        &self.models
    }
    fn embedding_frame(&self) -> Option<super::EmbeddingFrame> {
        self.residual.as_ref()?.embedding_frame()
    }
    fn predict(&self, emb: ArrayView2<'_, f32>) -> Vec<Vec<f64>> {
        let base = self.task_means(emb);
        let resid = self.residual.as_ref().map(|k| k.predict(emb));
        let mf = self.mf.as_ref().map(|m| m.predict(emb));
        let w = if mf.is_some() { self.mf_weight } else { 0.0 };
        base.rows()
            .into_iter()
            .enumerate()
            .map(|(i, row)| {
                row.iter()
                    .enumerate()
                    .map(|(j, &b)| {
                        let r = resid.as_ref().map_or(0.0, |r| r[i][j]);
                        let t = f64::from(b) + self.alpha * r;
                        let q = match &mf {
                            Some(mf) => (1.0 - w) * t + w * mf[i][j],
                            None => t,
                        };
                        q.clamp(0.0, 1.0)
                    })
                    .collect()
            })
            .collect()
    }
}
