//! Per-row symmetric int8 quantisation of unit vectors: how exemplar memories and the fast path's static
//! table are held in memory and stored in artifacts (4x smaller than f32; cosine error ~1e-4).
//!
//! It lives under `predict` because the kNN memory quantises its exemplars for single-prompt scans;
//! artifact loading and writing use the same functions, so no module needs to reach back into another.

use ndarray::Array2;

/// Per-row symmetric int8 quantisation: (codes `[n*dim]`, scales `[n]`).
pub fn quantize_rows(a: &Array2<f32>) -> (Vec<i8>, Vec<f32>) {
    let mut codes = Vec::with_capacity(a.len());
    let mut scales = Vec::with_capacity(a.nrows());
    for r in a.rows() {
        let max = r.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let s = if max > 0.0 { max / 127.0 } else { 1.0 };
        scales.push(s);
        codes.extend(r.iter().map(|v| (v / s).round().clamp(-127.0, 127.0) as i8));
    }
    (codes, scales)
}

/// Inverse of [`quantize_rows`], renormalised to unit length (cosine similarity is what kNN needs).
pub fn dequantize_rows(codes: &[i8], scales: &[f32], dim: usize) -> Array2<f32> {
    let mut a = Array2::<f32>::zeros((scales.len(), dim));
    for (i, mut r) in a.rows_mut().into_iter().enumerate() {
        for (k, v) in r.iter_mut().enumerate() {
            *v = f32::from(codes[i * dim + k]) * scales[i];
        }
        let n = r.dot(&r).sqrt();
        if n > 0.0 {
            r.mapv_inplace(|v| v / n);
        }
    }
    a
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn quantisation_keeps_cosine() {
        // Unit rows, as embeddings are, with one all-zero row (scale 1, stays zero).
        let mut emb = Array2::from_shape_fn((40, 8), |(i, k)| ((i * 8 + k) as f32 * 0.7).sin());
        emb.row_mut(3).fill(0.0);
        for mut r in emb.rows_mut() {
            let n = r.dot(&r).sqrt();
            if n > 0.0 {
                r.mapv_inplace(|v| v / n);
            }
        }
        let (c, s) = quantize_rows(&emb);
        assert_eq!((c.len(), s.len(), s[3]), (40 * 8, 40, 1.0));
        let d = dequantize_rows(&c, &s, emb.ncols());
        for (i, (a, b)) in emb.rows().into_iter().zip(d.rows()).enumerate() {
            if i == 3 {
                assert!(b.iter().all(|&v| v == 0.0));
            } else {
                assert!(a.dot(&b) > 0.999, "row {i}");
            }
        }
    }
}
