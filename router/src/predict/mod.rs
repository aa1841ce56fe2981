//! Quality predictors: given a prompt embedding, the expected quality of each known model.
//!
//! Inference only: the predictors are built from an artifact (or by `routemesh-router-train`, which fits
//! them and writes the artifact). Training data may mix model pools (mix9's nine models, the GPT-4/Mixtral
//! pair), so every predictor keeps each model apart: a model is predicted only from what was learned on
//! the rows that scored it.

use ndarray::ArrayView2;

mod knn;
mod linear;
mod mf;
mod mlp;
mod pca;
pub mod quant;
mod task;

pub use knn::{Knn, KnnConfig};
pub use linear::Ridge;
pub use mf::{MatrixFactorization, sigmoid};
pub use mlp::Mlp;
pub use pca::Projection;
pub use task::{SoftmaxClassifier, TaskMixture, softmax_in_place};

/// Where prompts are compared for similarity (see [`QualityPredictor::embedding_frame`]).
#[derive(Debug, Clone, PartialEq)]
pub enum EmbeddingFrame {
    /// Centred and projected onto principal components.
    Projected(Projection),
    /// Centred on this mean only.
    Centred(Vec<f32>),
}

impl EmbeddingFrame {
    /// One embedding row in this frame, unit length; `None` for a row at the centre.
    pub fn point(&self, row: ndarray::ArrayView1<'_, f32>) -> Option<Vec<f32>> {
        let v: Vec<f32> = match self {
            EmbeddingFrame::Projected(p) => {
                let one = row.insert_axis(ndarray::Axis(0));
                p.apply(one).into_iter().collect()
            }
            EmbeddingFrame::Centred(mean) if mean.len() == row.len() => {
                row.iter().zip(mean).map(|(x, m)| x - m).collect()
            }
            EmbeddingFrame::Centred(_) => return None,
        };
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        (norm.is_finite() && norm > 0.0).then(|| v.into_iter().map(|x| x / norm).collect())
    }
}

/// Predicted quality per known model for embedded prompts.
pub trait QualityPredictor: Send + Sync + std::fmt::Debug {
    /// Short name recorded in artifacts and printed by eval.
    fn kind(&self) -> &'static str;
    fn models(&self) -> &[String];
    /// `[n][models]` predicted quality in [0, 1] for `emb` `[n, dim]`.
    fn predict(&self, emb: ArrayView2<'_, f32>) -> Vec<Vec<f64>>;
    /// How the predictor's exemplar memory compares prompts, when it has one: its projection
    /// (centred on the training prompts' mean, onto their principal components), else the
    /// exemplars' mean alone. Sentence embeddings share a large common component (any two prompts
    /// have cosine ~0.8 on the fast path); similarity after centring tells near prompts from the
    /// rest (~0 for unrelated ones), which feedback memory relies on.
    fn embedding_frame(&self) -> Option<EmbeddingFrame> {
        None
    }
    /// The predictor as a task mixture, when it is one (what onboarding extends).
    fn as_task_mixture(&self) -> Option<&TaskMixture> {
        None
    }
}

/// Prompt-blind baseline: every prompt gets the per-model training mean.
#[derive(Debug, Clone)]
pub struct Prior {
    pub models: Vec<String>,
    pub prior: Vec<f64>,
}

impl QualityPredictor for Prior {
    fn kind(&self) -> &'static str {
        "prior"
    }
    fn models(&self) -> &[String] {
        &self.models
    }
    fn predict(&self, emb: ArrayView2<'_, f32>) -> Vec<Vec<f64>> {
        vec![self.prior.clone(); emb.nrows()]
    }
}

/// kNN exemplar memory and MF combined linearly: the kNN captures local, task-specific outcomes, the MF a
/// smooth global trend; cross-validation picks the weight.
#[derive(Debug, Clone)]
pub struct Blend {
    pub knn: Knn,
    pub mf: MatrixFactorization,
    pub weight: f64,
}

impl QualityPredictor for Blend {
    fn kind(&self) -> &'static str {
        "blend"
    }
    fn models(&self) -> &[String] {
        &self.knn.models
    }
    fn embedding_frame(&self) -> Option<EmbeddingFrame> {
        self.knn.embedding_frame()
    }
    fn predict(&self, emb: ArrayView2<'_, f32>) -> Vec<Vec<f64>> {
        let a = self.knn.predict(emb);
        let b = self.mf.predict(emb);
        a.into_iter()
            .zip(b)
            .map(|(x, y)| {
                x.into_iter()
                    .zip(y)
                    .map(|(p, q)| self.weight * p + (1.0 - self.weight) * q)
                    .collect()
            })
            .collect()
    }
}
