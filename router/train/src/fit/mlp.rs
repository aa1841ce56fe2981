//! Training the MLP reference: one ReLU hidden layer, masked binary cross-entropy, Adam.

use ndarray::{Array1, Array2, Axis};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use routemesh_router::predict::{Mlp, sigmoid};

use super::TrainSet;
use super::adam::Adam;
use super::mf::logit;

#[derive(Debug, Clone, PartialEq)]
pub struct MlpConfig {
    pub hidden: usize,
    pub epochs: usize,
    pub lr: f64,
    pub batch: usize,
    pub weight_decay: f64,
    pub seed: u64,
}

impl Default for MlpConfig {
    fn default() -> Self {
        Self {
            hidden: 128,
            epochs: 30,
            lr: 1e-3,
            batch: 64,
            weight_decay: 1e-4,
            seed: 3,
        }
    }
}

/// Fits both layers on the observed scores (output biases start at each model's mean).
pub fn train_mlp(data: &TrainSet<'_>, cfg: &MlpConfig) -> Mlp {
    let (n, d) = data.emb.dim();
    let (m, h) = (data.models.len(), cfg.hidden.max(1));
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    // He-style uniform initialisation.
    let mut uniform = |scale: f32| (rng.random::<f32>() * 2.0 - 1.0) * scale;
    let mut w1 = Array2::from_shape_fn((h, d), |_| uniform((6.0 / d as f32).sqrt()));
    let mut b1 = Array1::<f32>::zeros(h);
    let mut w2 = Array2::from_shape_fn((m, h), |_| uniform((1.0 / h as f32).sqrt()));
    let mut b2: Array1<f32> = data.prior().iter().map(|&p| logit(p)).collect();
    let (y, mask) = {
        let mut y = Array2::<f32>::zeros((n, m));
        let mut mask = Array2::<f32>::zeros((n, m));
        for (i, q) in data.quality.iter().enumerate() {
            for (j, v) in q.iter().enumerate() {
                if let Some(v) = v {
                    y[[i, j]] = *v as f32;
                    mask[[i, j]] = 1.0;
                }
            }
        }
        (y, mask)
    };
    let mut order: Vec<usize> = (0..n).filter(|&i| mask.row(i).sum() > 0.0).collect();
    let mut adam = [
        Adam::new(h * d),
        Adam::new(h),
        Adam::new(m * h),
        Adam::new(m),
    ];
    let (lr, wd) = (cfg.lr as f32, cfg.weight_decay as f32);
    let mut t = 0;
    for _ in 0..cfg.epochs {
        order.shuffle(&mut rng);
        for chunk in order.chunks(cfg.batch.max(1)) {
            let xb = data.emb.select(Axis(0), chunk);
            let hid = (xb.dot(&w1.t()) + &b1).mapv(|v| v.max(0.0));
            let out = hid.dot(&w2.t()) + &b2;
            let mb = mask.select(Axis(0), chunk);
            let count = mb.sum().max(1.0);
            let g = (out.mapv(sigmoid) - y.select(Axis(0), chunk)) * &mb / count;
            let gw2: Vec<f32> = g.t().dot(&hid).iter().copied().collect();
            let gb2: Vec<f32> = g.sum_axis(Axis(0)).to_vec();
            let mut dh = g.dot(&w2);
            dh.zip_mut_with(&hid, |g, &a| {
                if a <= 0.0 {
                    *g = 0.0;
                }
            });
            let gw1: Vec<f32> = dh.t().dot(&xb).iter().copied().collect();
            let gb1: Vec<f32> = dh.sum_axis(Axis(0)).to_vec();
            t += 1;
            let [a1, ab1, a2, ab2] = &mut adam;
            if let Some(p) = w1.as_slice_mut() {
                a1.step(p, &gw1, lr, t, wd);
            }
            if let Some(p) = b1.as_slice_mut() {
                ab1.step(p, &gb1, lr, t, 0.0);
            }
            if let Some(p) = w2.as_slice_mut() {
                a2.step(p, &gw2, lr, t, wd);
            }
            if let Some(p) = b2.as_slice_mut() {
                ab2.step(p, &gb2, lr, t, 0.0);
            }
        }
    }
    Mlp {
        models: data.models.to_vec(),
        w1,
        b1,
        w2,
        b2,
    }
}
