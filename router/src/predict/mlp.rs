//! A small multi-layer perceptron on the prompt embedding (one ReLU hidden layer, a sigmoid output per
//! model, binary cross-entropy on the observed scores): the non-linear reference the router must beat.
//! Trained by `routemesh-router-train`.

use ndarray::{Array1, Array2, ArrayView2};

use super::QualityPredictor;
use super::mf::sigmoid;

#[derive(Debug, Clone)]
pub struct Mlp {
    pub models: Vec<String>,
    /// `[hidden, dim]`, `[hidden]`, `[models, hidden]`, `[models]`.
    pub w1: Array2<f32>,
    pub b1: Array1<f32>,
    pub w2: Array2<f32>,
    pub b2: Array1<f32>,
}

impl QualityPredictor for Mlp {
    fn kind(&self) -> &'static str {
        "mlp"
    }
    fn models(&self) -> &[String] {
        &self.models
    }
    fn predict(&self, emb: ArrayView2<'_, f32>) -> Vec<Vec<f64>> {
        let hid = (emb.dot(&self.w1.t()) + &self.b1).mapv(|v| v.max(0.0));
        let out = hid.dot(&self.w2.t()) + &self.b2;
        out.rows()
            .into_iter()
            .map(|r| r.iter().map(|&v| f64::from(sigmoid(v))).collect())
            .collect()
    }
}
