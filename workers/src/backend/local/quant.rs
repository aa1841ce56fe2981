//! Quantized matrices (GGML Q4_1 and Q8_0, repacked at load) and the
//! quantized matrix-vector products the forward pass spends its time in.
//!
//! Activations are quantized to 8 bits per 32-value block before each product,
//! as llama.cpp does (Q8_1 against Q4_1, Q8_0 against Q8_0), so the integer
//! dot products and their rounding match the reference engine's and the
//! greedy outputs agree. The hot loops live in `simd` (AVX2), which falls back
//! to the reference kernels in `scalar` that the tests hold it to.

use half::f16;
use rayon::prelude::*;

use super::gguf::TensorType;
use super::scalar::{BLOCK, unpack_dm};
use super::simd::{self, Act};

/// A weight matrix of `rows` rows of `cols` values, quantized per 32 values.
#[derive(Debug)]
pub struct QMatrix {
    pub rows: usize,
    pub cols: usize,
    pub(super) kind: Kind,
}

#[derive(Debug)]
pub(super) enum Kind {
    /// value = d·q + m, q in 0..16; `qs` holds 16 bytes a block, the low
    /// nibbles being values 0..16 and the high nibbles 16..32 (GGML's order).
    /// `dm` packs each block's d (low half) and m as f16 bits, as in the
    /// file: decoding is memory-bound, and f32 scales would add a fifth to
    /// the bytes read per token.
    Q4_1 { dm: Vec<u32>, qs: Vec<u8> },
    /// value = d·q, q in -127..=127.
    Q8_0 { d: Vec<f32>, qs: Vec<i8> },
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

impl QMatrix {
    /// Repacks a GGML tensor's bytes (`rows` × `cols`, `cols` a multiple of 32).
    pub fn from_ggml(
        ty: TensorType,
        rows: usize,
        cols: usize,
        bytes: &[u8],
    ) -> Result<Self, String> {
        if !cols.is_multiple_of(BLOCK) {
            return Err(format!("{cols} columns is not a multiple of {BLOCK}"));
        }
        let blocks = rows * cols / BLOCK;
        let kind = match ty {
            TensorType::Q4_1 => {
                if bytes.len() != blocks * 20 {
                    return Err("size does not match its dimensions".into());
                }
                let mut dm = Vec::with_capacity(blocks);
                let mut qs = Vec::with_capacity(blocks * 16);
                for b in bytes.chunks_exact(20) {
                    dm.push(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                    qs.extend_from_slice(&b[4..20]);
                }
                Kind::Q4_1 { dm, qs }
            }
            TensorType::Q8_0 => {
                if bytes.len() != blocks * 34 {
                    return Err("size does not match its dimensions".into());
                }
                let mut d = Vec::with_capacity(blocks);
                let mut qs = Vec::with_capacity(blocks * BLOCK);
                for b in bytes.chunks_exact(34) {
                    d.push(f16_at(b, 0));
                    qs.extend(b[2..34].iter().map(|&q| q as i8));
                }
                Kind::Q8_0 { d, qs }
            }
            other => return Err(format!("type {other:?} is not supported (Q4_1 or Q8_0)")),
        };
        Ok(Self { rows, cols, kind })
    }

    /// Stacks matrices with the same column count into one (rows appended), so
    /// that projections of the same input run as one parallel product.
    pub fn stack(parts: Vec<QMatrix>) -> Result<Self, String> {
        let cols = parts.first().map_or(0, |p| p.cols);
        let mut rows = 0;
        let mut kind: Option<Kind> = None;
        for part in parts {
            if part.cols != cols {
                return Err("stacked matrices differ in width".into());
            }
            rows += part.rows;
            kind = Some(match (kind, part.kind) {
                (None, k) => k,
                (Some(Kind::Q4_1 { mut dm, mut qs }), Kind::Q4_1 { dm: dm2, qs: qs2 }) => {
                    dm.extend(dm2);
                    qs.extend(qs2);
                    Kind::Q4_1 { dm, qs }
                }
                (Some(Kind::Q8_0 { mut d, mut qs }), Kind::Q8_0 { d: d2, qs: qs2 }) => {
                    d.extend(d2);
                    qs.extend(qs2);
                    Kind::Q8_0 { d, qs }
                }
                _ => return Err("stacked matrices differ in type".into()),
            });
        }
        let kind = kind.ok_or("nothing to stack")?;
        Ok(Self { rows, cols, kind })
    }

    /// Row `r` as floats (embedding lookups).
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        let nb = self.cols / BLOCK;
        match &self.kind {
            Kind::Q4_1 { dm, qs } => {
                for b in 0..nb {
                    let i = r * nb + b;
                    let (d, m) = unpack_dm(dm[i]);
                    let q = &qs[i * 16..i * 16 + 16];
                    let o = &mut out[b * BLOCK..(b + 1) * BLOCK];
                    for j in 0..16 {
                        o[j] = d * f32::from(q[j] & 0x0f) + m;
                        o[j + 16] = d * f32::from(q[j] >> 4) + m;
                    }
                }
            }
            Kind::Q8_0 { d, qs } => {
                for b in 0..nb {
                    let i = r * nb + b;
                    for j in 0..BLOCK {
                        out[b * BLOCK + j] = d[i] * f32::from(qs[i * BLOCK + j]);
                    }
                }
            }
        }
    }

    /// `out[t][r] = row r · x[t]` for every token `t` of `x`, on `pool`.
    /// Rows are split between the pool's threads; each row's weights are
    /// read once for all tokens (prompt processing reuses them from cache).
    pub fn matmul(
        &self,
        x: &QActs,
        out: &mut Vec<f32>,
        scratch: &mut Vec<f32>,
        pool: &rayon::ThreadPool,
    ) {
        let n = x.tokens;
        debug_assert_eq!(x.blocks * BLOCK, self.cols);
        let nb = x.blocks;
        let kernels = simd::Kernels::detect();
        // Rows are computed into a [row][token] buffer (contiguous per task)
        // and transposed after.
        scratch.clear();
        scratch.resize(self.rows * n, 0.0);
        let per_task = (self.rows / (pool.current_num_threads() * 4)).clamp(8, 512);
        pool.install(|| {
            scratch
                .par_chunks_mut(per_task * n)
                .enumerate()
                .for_each(|(chunk, out)| {
                    let first = chunk * per_task;
                    for (k, row_out) in out.chunks_exact_mut(n).enumerate() {
                        let r = first + k;
                        let (b0, b1) = (r * nb, (r + 1) * nb);
                        // Four tokens at a time share each weight block's
                        // unpacking; the rest one by one.
                        let quads = n / 4 * 4;
                        for t0 in (0..quads).step_by(4) {
                            let acts = [t0, t0 + 1, t0 + 2, t0 + 3].map(|t| x.token(t));
                            let sums = match &self.kind {
                                Kind::Q4_1 { dm, qs } => {
                                    kernels.dot_q4_1_x4(&dm[b0..b1], &qs[b0 * 16..b1 * 16], acts)
                                }
                                Kind::Q8_0 { d, qs } => kernels.dot_q8_0_x4(
                                    &qs[b0 * BLOCK..b1 * BLOCK],
                                    &d[b0..b1],
                                    acts,
                                ),
                            };
                            row_out[t0..t0 + 4].copy_from_slice(&sums);
                        }
                        for (t, o) in row_out.iter_mut().enumerate().skip(quads) {
                            let (a0, a1) = (t * nb, (t + 1) * nb);
                            *o = match &self.kind {
                                Kind::Q4_1 { dm, qs } => kernels.dot_q4_1(
                                    &dm[b0..b1],
                                    &qs[b0 * 16..b1 * 16],
                                    &x.qs[a0 * BLOCK..a1 * BLOCK],
                                    &x.d[a0..a1],
                                    &x.s[a0..a1],
                                ),
                                Kind::Q8_0 { d, qs } => kernels.dot_q8_0(
                                    &qs[b0 * BLOCK..b1 * BLOCK],
                                    &d[b0..b1],
                                    &x.qs[a0 * BLOCK..a1 * BLOCK],
                                    &x.d[a0..a1],
                                ),
                            };
                        }
                    }
                });
        });
        out.clear();
        out.resize(self.rows * n, 0.0);
        for (r, row) in scratch.chunks_exact(n).enumerate() {
            for (t, &v) in row.iter().enumerate() {
                out[t * self.rows + r] = v;
            }
        }
    }
}

/// Activations of `tokens` tokens quantized to 8 bits per 32-value block:
/// scale `d`, `s = d·Σq` (the Q8_1 term that carries Q4_1's offset) and `qs`.
#[derive(Debug, Default)]
pub struct QActs {
    pub tokens: usize,
    pub blocks: usize,
    pub d: Vec<f32>,
    pub s: Vec<f32>,
    pub qs: Vec<i8>,
}

impl QActs {
    /// Token `t`'s activations.
    pub fn token(&self, t: usize) -> Act<'_> {
        let (a0, a1) = (t * self.blocks, (t + 1) * self.blocks);
        Act {
            qs: &self.qs[a0 * BLOCK..a1 * BLOCK],
            d: &self.d[a0..a1],
            s: &self.s[a0..a1],
        }
    }
}

fn round_f16(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

impl QActs {
    /// Quantizes `x` (`tokens` rows of `cols` values) as llama.cpp's CPU
    /// backend does: scale amax/127 kept in f16, values rounded half to even.
    pub fn quantize(&mut self, x: &[f32], cols: usize) {
        debug_assert_eq!(cols % BLOCK, 0);
        self.tokens = x.len() / cols;
        self.blocks = cols / BLOCK;
        let total = x.len() / BLOCK;
        self.d.clear();
        self.s.clear();
        self.qs.clear();
        self.qs.reserve(x.len());
        for block in x.chunks_exact(BLOCK).take(total) {
            let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            let mut sum = 0i32;
            for v in block {
                let q = super::simd::round_to_i8(v * id);
                sum += i32::from(q);
                self.qs.push(q);
            }
            self.d.push(round_f16(d));
            self.s.push(round_f16(d * sum as f32));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::scalar::{dot_q4_1_scalar, dot_q8_0_scalar};
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn q4_1_bytes(rng: &mut StdRng, blocks: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..blocks {
            out.extend_from_slice(&f16::from_f32(rng.random_range(0.001..0.05)).to_le_bytes());
            out.extend_from_slice(&f16::from_f32(rng.random_range(-0.2..0.0)).to_le_bytes());
            out.extend((0..16).map(|_| rng.random::<u8>()));
        }
        out
    }

    fn q8_0_bytes(rng: &mut StdRng, blocks: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..blocks {
            out.extend_from_slice(&f16::from_f32(rng.random_range(0.001..0.05)).to_le_bytes());
            out.extend((0..32).map(|_| rng.random_range(-127i8..=127) as u8));
        }
        out
    }

    /// The quantized product approximates the float product of the
    /// dequantized rows, and the SIMD kernels match the scalar ones.
    #[test]
    fn matmul_matches_float_reference_and_scalar() {
        let mut rng = StdRng::seed_from_u64(1);
        let (rows, cols, tokens) = (37, 96, 6);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        for ty in [TensorType::Q4_1, TensorType::Q8_0] {
            let bytes = match ty {
                TensorType::Q4_1 => q4_1_bytes(&mut rng, rows * cols / 32),
                _ => q8_0_bytes(&mut rng, rows * cols / 32),
            };
            let w = QMatrix::from_ggml(ty, rows, cols, &bytes).unwrap();
            let x: Vec<f32> = (0..tokens * cols)
                .map(|_| rng.random_range(-2.0..2.0))
                .collect();
            let mut acts = QActs::default();
            acts.quantize(&x, cols);
            let (mut out, mut scratch) = (Vec::new(), Vec::new());
            w.matmul(&acts, &mut out, &mut scratch, &pool);
            let mut row = vec![0f32; cols];
            for r in 0..rows {
                w.row_into(r, &mut row);
                for t in 0..tokens {
                    let exact: f32 = row.iter().zip(&x[t * cols..]).map(|(a, b)| a * b).sum();
                    let scale: f32 = row
                        .iter()
                        .zip(&x[t * cols..])
                        .map(|(a, b)| (a * b).abs())
                        .sum();
                    let got = out[t * rows + r];
                    // 8-bit activations: about 1/254 of each term at worst.
                    assert!(
                        (got - exact).abs() < scale / 100.0,
                        "{ty:?} r{r} t{t}: {got} vs {exact}"
                    );
                    let nb = cols / 32;
                    let (a0, a1) = (t * nb, (t + 1) * nb);
                    let (b0, b1) = (r * nb, (r + 1) * nb);
                    let scalar = match &w.kind {
                        Kind::Q4_1 { dm, qs } => dot_q4_1_scalar(
                            &dm[b0..b1],
                            &qs[b0 * 16..b1 * 16],
                            &acts.qs[a0 * 32..a1 * 32],
                            &acts.d[a0..a1],
                            &acts.s[a0..a1],
                        ),
                        Kind::Q8_0 { d, qs } => dot_q8_0_scalar(
                            &qs[b0 * 32..b1 * 32],
                            &d[b0..b1],
                            &acts.qs[a0 * 32..a1 * 32],
                            &acts.d[a0..a1],
                        ),
                    };
                    assert!(
                        (got - scalar).abs() <= 1e-4 * (1.0 + scalar.abs()),
                        "{ty:?}: simd {got} vs scalar {scalar}"
                    );
                }
            }
        }
    }

    #[test]
    fn quantize_rounds_like_ggml() {
        let mut x = vec![0f32; 32];
        x[0] = 1.27;
        x[1] = -0.005; // -0.5 after scaling: ties to even, 0
        x[2] = 0.015; // 1.5: ties to even, 2
        let mut a = QActs::default();
        a.quantize(&x, 32);
        assert_eq!(&a.qs[..3], &[127, 0, 2]);
        assert!((a.d[0] - 0.01).abs() < 1e-5);
        assert!((a.s[0] - 1.29).abs() < 1e-3);
    }
}
