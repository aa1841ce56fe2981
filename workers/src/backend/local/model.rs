//! The llama-architecture forward pass (SmolLM2, Llama and their kin in GGUF):
//! RMSNorm, rotary attention with grouped KV heads and a KV cache, SwiGLU.
//!
//! It follows llama.cpp's arithmetic where that decides greedy outputs:
//! activations quantized to 8 bits before each weight product (see `quant`),
//! and keys, values and queries rounded to f16 as its f16 KV cache does.

use half::f16;
use rayon::prelude::*;

use super::gguf::{Gguf, TensorType, Value};
use super::quant::{QActs, QMatrix};

/// Shape and constants of a model, from the GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Hyper {
    pub layers: usize,
    pub embd: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ff: usize,
    pub vocab: usize,
    pub context: usize,
    pub rope_base: f32,
    pub eps: f32,
}

impl Hyper {
    fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

#[derive(Debug)]
struct Layer {
    attn_norm: Vec<f32>,
    /// Q, K and V stacked: one product per layer instead of three.
    qkv: QMatrix,
    out: QMatrix,
    ffn_norm: Vec<f32>,
    /// Gate and up stacked.
    gate_up: QMatrix,
    down: QMatrix,
}

/// Weights of a loaded model, shared read-only by every slot.
#[derive(Debug)]
pub struct Model {
    pub hyper: Hyper,
    embed: QMatrix,
    layers: Vec<Layer>,
    out_norm: Vec<f32>,
    /// `None`: the output projection is the embedding matrix (tied).
    output: Option<QMatrix>,
}

fn meta_usize(g: &Gguf, key: &str) -> Result<usize, String> {
    g.get(key)
        .and_then(Value::as_u64)
        .and_then(|v| usize::try_from(v).ok())
        .ok_or_else(|| format!("metadata {key} is missing or not an integer"))
}

fn meta_f32(g: &Gguf, key: &str) -> Option<f32> {
    g.get(key).and_then(Value::as_f64).map(|v| v as f32)
}

fn norm(g: &Gguf, name: &str, len: usize) -> Result<Vec<f32>, String> {
    let t = g
        .tensors
        .get(name)
        .ok_or_else(|| format!("tensor {name} is missing"))?;
    if t.ty != TensorType::F32 || t.dims != [len as u64] {
        return Err(format!(
            "tensor {name}: expected F32 [{len}], found {:?} {:?}",
            t.ty, t.dims
        ));
    }
    Ok(g.bytes(t)
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

fn matrix(g: &Gguf, name: &str, rows: usize, cols: usize) -> Result<QMatrix, String> {
    let t = g
        .tensors
        .get(name)
        .ok_or_else(|| format!("tensor {name} is missing"))?;
    if t.dims != [cols as u64, rows as u64] {
        return Err(format!(
            "tensor {name}: expected dimensions [{cols}, {rows}], found {:?}",
            t.dims
        ));
    }
    QMatrix::from_ggml(t.ty, rows, cols, g.bytes(t)).map_err(|e| format!("tensor {name}: {e}"))
}

impl Model {
    /// Builds the model from a parsed GGUF file.
    pub fn load(g: &Gguf) -> Result<Self, String> {
        let arch = g
            .get("general.architecture")
            .and_then(Value::as_str)
            .unwrap_or("");
        if arch != "llama" {
            return Err(format!(
                "architecture {arch:?} is not supported (the local backend runs llama-architecture models)"
            ));
        }
        let embd = meta_usize(g, "llama.embedding_length")?;
        let heads = meta_usize(g, "llama.attention.head_count")?;
        let kv_heads = g
            .get("llama.attention.head_count_kv")
            .and_then(Value::as_u64)
            .map_or(Ok(heads), |v| usize::try_from(v).map_err(|e| e.to_string()))?;
        if heads == 0 || kv_heads == 0 || embd % heads != 0 || heads % kv_heads != 0 {
            return Err(format!(
                "{heads} attention heads with {kv_heads} KV heads over {embd} dimensions"
            ));
        }
        let head_dim = embd / heads;
        if let Ok(rope_dims) = meta_usize(g, "llama.rope.dimension_count")
            && rope_dims != head_dim
        {
            return Err(format!(
                "partial rotary embeddings ({rope_dims} of {head_dim}) are not supported"
            ));
        }
        let vocab = g
            .tensors
            .get("token_embd.weight")
            .and_then(|t| t.dims.get(1).copied())
            .and_then(|v| usize::try_from(v).ok())
            .ok_or("tensor token_embd.weight is missing")?;
        let hyper = Hyper {
            layers: meta_usize(g, "llama.block_count")?,
            embd,
            heads,
            kv_heads,
            head_dim,
            ff: meta_usize(g, "llama.feed_forward_length")?,
            vocab,
            context: meta_usize(g, "llama.context_length")?,
            rope_base: meta_f32(g, "llama.rope.freq_base").unwrap_or(10_000.0),
            eps: meta_f32(g, "llama.attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
        };
        let kv = hyper.kv_dim();
        let mut layers = Vec::with_capacity(hyper.layers);
        for i in 0..hyper.layers {
            let p = format!("blk.{i}.");
            layers.push(Layer {
                attn_norm: norm(g, &format!("{p}attn_norm.weight"), embd)?,
                qkv: QMatrix::stack(vec![
                    matrix(g, &format!("{p}attn_q.weight"), embd, embd)?,
                    matrix(g, &format!("{p}attn_k.weight"), kv, embd)?,
                    matrix(g, &format!("{p}attn_v.weight"), kv, embd)?,
                ])
                .map_err(|e| format!("layer {i} attention: {e}"))?,
                out: matrix(g, &format!("{p}attn_output.weight"), embd, embd)?,
                ffn_norm: norm(g, &format!("{p}ffn_norm.weight"), embd)?,
                gate_up: QMatrix::stack(vec![
                    matrix(g, &format!("{p}ffn_gate.weight"), hyper.ff, embd)?,
                    matrix(g, &format!("{p}ffn_up.weight"), hyper.ff, embd)?,
                ])
                .map_err(|e| format!("layer {i} feed-forward: {e}"))?,
                down: matrix(g, &format!("{p}ffn_down.weight"), embd, hyper.ff)?,
            });
        }
        let output = match g.tensors.contains_key("output.weight") {
            true => Some(matrix(g, "output.weight", vocab, embd)?),
            false => None,
        };
        Ok(Self {
            embed: matrix(g, "token_embd.weight", vocab, embd)?,
            out_norm: norm(g, "output_norm.weight", embd)?,
            output,
            layers,
            hyper,
        })
    }

    /// Runs `tokens` at the session's next positions, extending its KV cache,
    /// and returns the logits after the last of them.
    pub fn forward(&self, s: &mut Session, tokens: &[u32], pool: &rayon::ThreadPool) -> Vec<f32> {
        // The whole pass runs on a pool thread: each of its ~120 parallel
        // products is then a cheap fork within the pool rather than a job
        // injected from outside, which costs a wake-up every time.
        pool.install(|| {
            let _awake = super::awake::KeepAwake::start(pool);
            self.forward_on_pool(s, tokens, pool)
        })
    }

    fn forward_on_pool(
        &self,
        s: &mut Session,
        tokens: &[u32],
        pool: &rayon::ThreadPool,
    ) -> Vec<f32> {
        let h = &self.hyper;
        let (n, e, kv) = (tokens.len(), h.embd, h.kv_dim());
        let pos0 = s.len;
        let mut x = vec![0f32; n * e];
        for (t, &tok) in tokens.iter().enumerate() {
            self.embed
                .row_into((tok as usize).min(h.vocab - 1), &mut x[t * e..(t + 1) * e]);
        }
        let mut normed = vec![0f32; n * e];
        let mut attn = vec![0f32; n * e];
        let (mut proj, mut scratch) = (Vec::new(), Vec::new());
        let mut acts = QActs::default();
        for (l, layer) in self.layers.iter().enumerate() {
            rms_norm(&x, &layer.attn_norm, h.eps, &mut normed);
            acts.quantize(&normed, e);
            layer.qkv.matmul(&acts, &mut proj, &mut scratch, pool);
            // proj is [token][q | k | v].
            let width = e + 2 * kv;
            let mut q = vec![0f32; n * e];
            for t in 0..n {
                let row = &mut proj[t * width..(t + 1) * width];
                let pos = pos0 + t;
                rope(&mut row[..e], h.head_dim, pos, h.rope_base);
                rope(&mut row[e..e + kv], h.head_dim, pos, h.rope_base);
                for v in row.iter_mut() {
                    *v = f16::from_f32(*v).to_f32();
                }
                q[t * e..(t + 1) * e].copy_from_slice(&row[..e]);
                let cache = &mut s.kv[l];
                cache.k.extend_from_slice(&row[e..e + kv]);
                cache.v.extend_from_slice(&row[e + kv..]);
            }
            attention(h, &q, &s.kv[l], pos0, &mut attn, pool);
            acts.quantize(&attn, e);
            layer.out.matmul(&acts, &mut proj, &mut scratch, pool);
            for (xi, p) in x.iter_mut().zip(&proj) {
                *xi += p;
            }

            rms_norm(&x, &layer.ffn_norm, h.eps, &mut normed);
            acts.quantize(&normed, e);
            layer.gate_up.matmul(&acts, &mut proj, &mut scratch, pool);
            let mut hidden = vec![0f32; n * h.ff];
            for t in 0..n {
                let row = &proj[t * 2 * h.ff..(t + 1) * 2 * h.ff];
                let (gate, up) = row.split_at(h.ff);
                for (o, (g, u)) in hidden[t * h.ff..(t + 1) * h.ff]
                    .iter_mut()
                    .zip(gate.iter().zip(up))
                {
                    *o = g / (1.0 + (-g).exp()) * u;
                }
            }
            acts.quantize(&hidden, h.ff);
            layer.down.matmul(&acts, &mut proj, &mut scratch, pool);
            for (xi, p) in x.iter_mut().zip(&proj) {
                *xi += p;
            }
        }
        s.len += n;
        let last = &x[(n - 1) * e..];
        let mut out = vec![0f32; e];
        rms_norm(last, &self.out_norm, h.eps, &mut out);
        acts.quantize(&out, e);
        let mut logits = Vec::new();
        self.output
            .as_ref()
            .unwrap_or(&self.embed)
            .matmul(&acts, &mut logits, &mut scratch, pool);
        logits
    }
}

/// One sequence's KV cache; a slot keeps one and reuses its memory.
#[derive(Debug)]
pub struct Session {
    kv: Vec<LayerCache>,
    /// Positions filled.
    pub len: usize,
}

#[derive(Debug, Default)]
struct LayerCache {
    /// [position][kv_heads · head_dim], rounded to f16 values.
    k: Vec<f32>,
    v: Vec<f32>,
}

impl Session {
    pub fn new(model: &Model) -> Self {
        Self {
            kv: (0..model.hyper.layers)
                .map(|_| LayerCache::default())
                .collect(),
            len: 0,
        }
    }

    /// Forgets positions from `len` on (to reuse a shared prompt prefix).
    pub fn truncate(&mut self, len: usize, kv_dim: usize) {
        let len = len.min(self.len);
        for c in &mut self.kv {
            c.k.truncate(len * kv_dim);
            c.v.truncate(len * kv_dim);
        }
        self.len = len;
    }

    /// Releases cache memory above `keep_positions` after a long request.
    pub fn shrink(&mut self, keep_positions: usize, kv_dim: usize) {
        for c in &mut self.kv {
            c.k.shrink_to(keep_positions * kv_dim);
            c.v.shrink_to(keep_positions * kv_dim);
        }
    }
}

fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let e = weight.len();
    for (row, o) in x.chunks_exact(e).zip(out.chunks_exact_mut(e)) {
        // Summed in f64 as llama.cpp does.
        let mean = (row.iter().map(|v| f64::from(v * v)).sum::<f64>() / e as f64) as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        for ((o, v), w) in o.iter_mut().zip(row).zip(weight) {
            *o = v * scale * w;
        }
    }
}

/// Rotary position embedding on adjacent pairs of each head (GGUF llama
/// weights are permuted for this "normal" layout).
fn rope(x: &mut [f32], head_dim: usize, pos: usize, base: f32) {
    let theta_scale = base.powf(-2.0 / head_dim as f32);
    for head in x.chunks_exact_mut(head_dim) {
        let mut theta = pos as f32;
        for pair in head.chunks_exact_mut(2) {
            let (sin, cos) = theta.sin_cos();
            let (a, b) = (pair[0], pair[1]);
            pair[0] = a * cos - b * sin;
            pair[1] = a * sin + b * cos;
            theta *= theta_scale;
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums let the compiler vectorize.
    let mut acc = [0f32; 8];
    for (ca, cb) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += ca[i] * cb[i];
        }
    }
    let tail: f32 = a
        .chunks_exact(8)
        .remainder()
        .iter()
        .zip(b.chunks_exact(8).remainder())
        .map(|(x, y)| x * y)
        .sum();
    acc.iter().sum::<f32>() + tail
}

/// Causal attention of `q` (tokens at positions pos0..) over the cache.
fn attention(
    h: &Hyper,
    q: &[f32],
    cache: &LayerCache,
    pos0: usize,
    out: &mut [f32],
    pool: &rayon::ThreadPool,
) {
    let (hd, kv) = (h.head_dim, h.kv_dim());
    let group = h.heads / h.kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let work = |(i, o): (usize, &mut [f32])| {
        let (t, head) = (i / h.heads, i % h.heads);
        let kvh = head / group;
        let qh = &q[t * h.embd + head * hd..][..hd];
        let visible = pos0 + t + 1;
        let mut scores: Vec<f32> = (0..visible)
            .map(|j| dot(qh, &cache.k[j * kv + kvh * hd..][..hd]) * scale)
            .collect();
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f64;
        for s in &mut scores {
            *s = (*s - max).exp();
            sum += f64::from(*s);
        }
        let inv = (1.0 / sum) as f32;
        o.fill(0.0);
        for (j, p) in scores.iter().enumerate() {
            let v = &cache.v[j * kv + kvh * hd..][..hd];
            // llama.cpp multiplies V (f16) by the probabilities in f16.
            let w = f16::from_f32(p * inv).to_f32();
            for (oi, vi) in o.iter_mut().zip(v) {
                *oi += w * vi;
            }
        }
    };
    let n = q.len() / h.embd;
    // Short work (one decoded token) costs less than handing it to threads.
    if n * (pos0 + n) < 4096 {
        out.chunks_exact_mut(hd).enumerate().for_each(work);
    } else {
        pool.install(|| out.par_chunks_mut(hd).enumerate().for_each(work));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_rotates_pairs_by_position() {
        let mut x = vec![1.0, 0.0, 1.0, 0.0];
        rope(&mut x, 4, 0, 10_000.0);
        assert_eq!(x, vec![1.0, 0.0, 1.0, 0.0]);
        rope(&mut x, 4, 1, 10_000.0);
        assert!((x[0] - 1f32.cos()).abs() < 1e-6 && (x[1] - 1f32.sin()).abs() < 1e-6);
        // The second pair turns by base^(-2/4) = 0.01 radians a position.
        assert!((x[3] - 0.01f32.sin()).abs() < 1e-6);
    }

    #[test]
    fn rms_norm_scales_to_unit_rms() {
        let mut out = vec![0f32; 2];
        rms_norm(&[3.0, 4.0], &[1.0, 2.0], 0.0, &mut out);
        let r = (12.5f32).sqrt();
        assert!((out[0] - 3.0 / r).abs() < 1e-6 && (out[1] - 8.0 / r).abs() < 1e-6);
    }
}
