//! Adam with coupled L2 weight decay, shared by the gradient-trained predictors (MF, task classifier, MLP).

/// Adam state for one parameter tensor (flattened).
pub struct Adam {
    m: Vec<f32>,
    v: Vec<f32>,
}

impl Adam {
    pub fn new(n: usize) -> Self {
        Self {
            m: vec![0.0; n],
            v: vec![0.0; n],
        }
    }

    /// One step at (1-based) time `t`; `wd` adds `wd · param` to the gradient.
    pub fn step(&mut self, param: &mut [f32], grad: &[f32], lr: f32, t: i32, wd: f32) {
        let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
        let c1 = 1.0 - b1.powi(t);
        let c2 = 1.0 - b2.powi(t);
        for i in 0..param.len() {
            let g = grad[i] + wd * param[i];
            self.m[i] = b1 * self.m[i] + (1.0 - b1) * g;
            self.v[i] = b2 * self.v[i] + (1.0 - b2) * g * g;
            param[i] -= lr * (self.m[i] / c1) / ((self.v[i] / c2).sqrt() + eps);
        }
    }
}
