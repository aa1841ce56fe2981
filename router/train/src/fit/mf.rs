//! Training the matrix factorisation router (RouteLLM's MF, generalised to N models): binary cross-entropy
//! on the observed scores, Adam, mini-batches in a seeded order.

use ndarray::{Array1, Array2};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use routemesh_router::predict::{MatrixFactorization, sigmoid};

use super::TrainSet;
use super::adam::Adam;

#[derive(Debug, Clone, PartialEq)]
pub struct MfConfig {
    pub dim: usize,
    pub epochs: usize,
    pub lr: f64,
    pub batch: usize,
    /// L2 penalty on W and the model embeddings.
    pub weight_decay: f64,
    pub seed: u64,
    /// Training targets `(1 − smooth)·score + smooth·mean of the row's source` (see `KnnConfig::smooth`).
    pub smooth: f64,
}

impl Default for MfConfig {
    fn default() -> Self {
        Self {
            dim: 64,
            epochs: 30,
            lr: 2e-3,
            batch: 64,
            weight_decay: 1e-4,
            seed: 7,
            smooth: 0.0,
        }
    }
}

/// Inverse of the sigmoid, clamped away from 0 and 1: the initial bias for a mean quality.
pub(super) fn logit(p: f64) -> f32 {
    let p = p.clamp(1e-3, 1.0 - 1e-3);
    (p / (1.0 - p)).ln() as f32
}

/// Fits `W`, the model embeddings and biases on the observed scores (each bias starts at the model's mean).
pub fn train_mf(data: &TrainSet<'_>, cfg: &MfConfig) -> MatrixFactorization {
    let (n, e) = data.emb.dim();
    let (m, d) = (data.models.len(), cfg.dim.max(1));
    let means = if cfg.smooth > 0.0 {
        data.source_means()
    } else {
        None
    };
    let sm = cfg.smooth.clamp(0.0, 1.0);
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let mut gauss = |s: f32| {
        // Box-Muller: rand_distr is not needed for one initialiser.
        let u1: f32 = rng.random::<f32>().max(1e-7);
        let u2: f32 = rng.random::<f32>();
        s * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    };
    let mut w = Array2::from_shape_fn((d, e), |_| gauss(1.0 / (e as f32).sqrt()));
    let mut v = Array2::from_shape_fn((m, d), |_| gauss(0.1));
    // Start every model at its mean quality: the factors then only learn prompt-dependent deviations.
    let mut b: Array1<f32> = data.prior().iter().map(|&p| logit(p)).collect();
    let rows: Vec<usize> = (0..n)
        .filter(|&i| data.quality[i].iter().any(Option::is_some))
        .collect();
    let (mut aw, mut av, mut ab) = (Adam::new(d * e), Adam::new(m * d), Adam::new(m));
    let (mut gw, mut gv, mut gb) = (vec![0.0f32; d * e], vec![0.0f32; m * d], vec![0.0f32; m]);
    let mut order = rows.clone();
    let mut t = 0;
    let mut z = vec![0.0f32; d];
    let mut dz = vec![0.0f32; d];
    for _ in 0..cfg.epochs {
        order.shuffle(&mut rng);
        for chunk in order.chunks(cfg.batch.max(1)) {
            gw.iter_mut().for_each(|g| *g = 0.0);
            gv.iter_mut().for_each(|g| *g = 0.0);
            gb.iter_mut().for_each(|g| *g = 0.0);
            let mut count = 0.0f32;
            for &i in chunk {
                let x = data.emb.row(i);
                let xs = x.as_slice();
                for (k, zk) in z.iter_mut().enumerate() {
                    let wr = w.row(k);
                    *zk = match (wr.as_slice(), xs) {
                        (Some(a), Some(bx)) => a.iter().zip(bx).map(|(p, q)| p * q).sum(),
                        _ => wr.dot(&x),
                    };
                }
                dz.iter_mut().for_each(|g| *g = 0.0);
                for j in 0..m {
                    let Some(mut y) = data.quality[i][j] else {
                        continue;
                    };
                    if let Some(mu) = &means {
                        y = (1.0 - sm) * y + sm * mu[i][j];
                    }
                    let vr = v.row(j);
                    let s: f32 = b[j] + vr.iter().zip(&z).map(|(p, q)| p * q).sum::<f32>();
                    let g = sigmoid(s) - y as f32;
                    gb[j] += g;
                    for k in 0..d {
                        gv[j * d + k] += g * z[k];
                        dz[k] += g * vr[k];
                    }
                    count += 1.0;
                }
                for k in 0..d {
                    let g = dz[k];
                    if g == 0.0 {
                        continue;
                    }
                    let row = &mut gw[k * e..(k + 1) * e];
                    for (r, xv) in row.iter_mut().zip(x.iter()) {
                        *r += g * xv;
                    }
                }
            }
            if count == 0.0 {
                continue;
            }
            let inv = 1.0 / count;
            gw.iter_mut().for_each(|g| *g *= inv);
            gv.iter_mut().for_each(|g| *g *= inv);
            gb.iter_mut().for_each(|g| *g *= inv);
            t += 1;
            let lr = cfg.lr as f32;
            let wd = cfg.weight_decay as f32;
            if let Some(p) = w.as_slice_mut() {
                aw.step(p, &gw, lr, t, wd);
            }
            if let Some(p) = v.as_slice_mut() {
                av.step(p, &gv, lr, t, wd);
            }
            if let Some(p) = b.as_slice_mut() {
                ab.step(p, &gb, lr, t, 0.0);
            }
        }
    }
    MatrixFactorization {
        models: data.models.to_vec(),
        w,
        v,
        b,
    }
}
