//! Per-model ridge regression on the embedding: the linear baseline (fitted by `routemesh-router-train`).

use ndarray::{Array2, ArrayView2};

use super::QualityPredictor;

#[derive(Debug, Clone)]
pub struct Ridge {
    pub models: Vec<String>,
    /// `[models, dim]` weights and per-model intercepts.
    pub weights: Array2<f64>,
    pub bias: Vec<f64>,
}

impl QualityPredictor for Ridge {
    fn kind(&self) -> &'static str {
        "ridge"
    }
    fn models(&self) -> &[String] {
        &self.models
    }
    fn predict(&self, emb: ArrayView2<'_, f32>) -> Vec<Vec<f64>> {
        let p = emb.mapv(f64::from).dot(&self.weights.t());
        p.rows()
            .into_iter()
            .map(|r| {
                r.iter()
                    .zip(&self.bias)
                    .map(|(v, b)| (v + b).clamp(0.0, 1.0))
                    .collect()
            })
            .collect()
    }
}
