//! Matrix factorisation router (RouteLLM's MF, generalised from a strong/weak pair to N models):
//! `q(m, x) = sigmoid(b_m + v_m · (W x))`, a learned model embedding `v_m` against a learned projection of
//! the prompt embedding, trained on the observed scores with binary cross-entropy and Adam (in
//! `routemesh-router-train`).

use ndarray::{Array1, Array2, ArrayView2};

use super::QualityPredictor;

#[derive(Debug, Clone)]
pub struct MatrixFactorization {
    pub models: Vec<String>,
    /// `[dim, emb_dim]` prompt projection.
    pub w: Array2<f32>,
    /// `[models, dim]` model embeddings.
    pub v: Array2<f32>,
    pub b: Array1<f32>,
}

/// The logistic function: MF and MLP outputs are logits of quality.
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl QualityPredictor for MatrixFactorization {
    fn kind(&self) -> &'static str {
        "mf"
    }
    fn models(&self) -> &[String] {
        &self.models
    }
    fn predict(&self, emb: ArrayView2<'_, f32>) -> Vec<Vec<f64>> {
        let z = emb.dot(&self.w.t());
        let s = z.dot(&self.v.t());
        s.rows()
            .into_iter()
            .map(|r| {
                r.iter()
                    .zip(self.b.iter())
                    .map(|(a, b)| f64::from(sigmoid(a + b)))
                    .collect()
            })
            .collect()
    }
}
