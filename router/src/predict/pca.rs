//! Principal-component projection of prompt embeddings for the exemplar memory.
//!
//! Projecting the 384-d embeddings onto their top principal components shrinks the committed exemplar
//! file (int8 × dims per exemplar) and removes the direction every MiniLM embedding shares, which only
//! inflates cosine similarities. Fitting the projection is training (`routemesh-router-train`); applying
//! it is here.

use ndarray::{Array1, Array2, ArrayView2};

#[derive(Debug, Clone, PartialEq)]
pub struct Projection {
    /// `[dim]` mean subtracted before projecting.
    pub mean: Array1<f32>,
    /// `[k, dim]` orthonormal rows.
    pub basis: Array2<f32>,
}

impl Projection {
    pub fn dims(&self) -> usize {
        self.basis.nrows()
    }

    /// Centred, projected and re-normalised to unit length (the kNN compares cosines).
    pub fn apply(&self, x: ArrayView2<'_, f32>) -> Array2<f32> {
        let mut p = (&x - &self.mean).dot(&self.basis.t());
        for mut r in p.rows_mut() {
            let n = r.dot(&r).sqrt();
            if n > 0.0 {
                r.mapv_inplace(|v| v / n);
            }
        }
        p
    }
}
