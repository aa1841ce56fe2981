//! The scalar reference kernels of the quantized dot products and the block
//! size they share: the fallback `simd` uses on CPUs without AVX2, and what
//! `quant`'s tests hold the AVX2 kernels to. Imports run one way:
//! `quant` -> `simd` -> `scalar`.

use half::f16;

/// Values per quantization block (GGML's QK4_1 and QK8_0).
pub(super) const BLOCK: usize = 32;

/// A Q4_1 block's (d, m) from their packed f16 bits.
pub(super) fn unpack_dm(dm: u32) -> (f32, f32) {
    (
        f16::from_bits(dm as u16).to_f32(),
        f16::from_bits((dm >> 16) as u16).to_f32(),
    )
}

/// Scalar Q4_1 · Q8_1 dot product (the reference the SIMD version matches).
pub(super) fn dot_q4_1_scalar(dm: &[u32], qs: &[u8], aq: &[i8], ad: &[f32], as_: &[f32]) -> f32 {
    let mut sum = 0f32;
    for b in 0..dm.len() {
        let (d, m) = unpack_dm(dm[b]);
        let q = &qs[b * 16..b * 16 + 16];
        let a = &aq[b * BLOCK..b * BLOCK + BLOCK];
        let mut isum = 0i32;
        for j in 0..16 {
            isum += i32::from(q[j] & 0x0f) * i32::from(a[j]);
            isum += i32::from(q[j] >> 4) * i32::from(a[j + 16]);
        }
        sum += d * ad[b] * isum as f32 + m * as_[b];
    }
    sum
}

/// Scalar Q8_0 · Q8_0 dot product.
pub(super) fn dot_q8_0_scalar(qs: &[i8], d: &[f32], aq: &[i8], ad: &[f32]) -> f32 {
    let mut sum = 0f32;
    for b in 0..d.len() {
        let isum: i32 = qs[b * BLOCK..b * BLOCK + BLOCK]
            .iter()
            .zip(&aq[b * BLOCK..b * BLOCK + BLOCK])
            .map(|(&w, &a)| i32::from(w) * i32::from(a))
            .sum();
        sum += d[b] * ad[b] * isum as f32;
    }
    sum
}
