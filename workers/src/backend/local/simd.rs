//! AVX2 kernels for the quantized dot products: the one place in the worker
//! that uses `unsafe`.
//!
//! Why unsafe: std::arch loads take raw pointers, and calling a function
//! compiled for AVX2 is only sound on a CPU that has it (and F16C, for the packed scales). Both are guarded
//! here: every kernel derives its block count from the lengths of all its
//! slices, so each load is in bounds, and `Kernels::detect` only enables the
//! AVX2 path after checking the CPU at run time. `quant`'s tests compare these
//! kernels with the scalar reference on random data.
#![allow(unsafe_code)]

use super::scalar::{BLOCK, dot_q4_1_scalar, dot_q8_0_scalar};

/// One token's quantized activations: values, block scales, Q8_1 sums.
#[derive(Debug, Clone, Copy)]
pub struct Act<'a> {
    pub qs: &'a [i8],
    pub d: &'a [f32],
    pub s: &'a [f32],
}

/// Which dot-product implementation this CPU runs.
#[derive(Debug, Clone, Copy)]
pub struct Kernels {
    avx2: bool,
}

impl Kernels {
    /// The fastest kernels this CPU supports.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            Self {
                avx2: std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Self { avx2: false }
        }
    }

    /// Whether the SIMD path is in use (reported at load).
    pub fn name(&self) -> &'static str {
        if self.avx2 { "avx2" } else { "scalar" }
    }

    /// Σ over blocks of Q4_1 weights (packed f16 d and m, nibbles) · Q8_1
    /// activations.
    #[inline]
    pub fn dot_q4_1(&self, dm: &[u32], qs: &[u8], aq: &[i8], ad: &[f32], as_: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: `detect` found AVX2, FMA and F16C on this CPU.
            return unsafe { x86::dot_q4_1(dm, qs, aq, ad, as_) };
        }
        dot_q4_1_scalar(dm, qs, aq, ad, as_)
    }

    /// [`Kernels::dot_q4_1`] of one weight row against four tokens at once:
    /// the nibbles are unpacked once for all four (prompt processing).
    #[inline]
    pub fn dot_q4_1_x4(&self, dm: &[u32], qs: &[u8], acts: [Act<'_>; 4]) -> [f32; 4] {
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: `detect` found AVX2, FMA and F16C on this CPU.
            return unsafe { x86::dot_q4_1_x4(dm, qs, acts) };
        }
        acts.map(|a| dot_q4_1_scalar(dm, qs, a.qs, a.d, a.s))
    }

    /// [`Kernels::dot_q8_0`] of one weight row against four tokens at once.
    #[inline]
    pub fn dot_q8_0_x4(&self, qs: &[i8], d: &[f32], acts: [Act<'_>; 4]) -> [f32; 4] {
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: `detect` found AVX2 and FMA on this CPU.
            return unsafe { x86::dot_q8_0_x4(qs, d, acts) };
        }
        acts.map(|a| dot_q8_0_scalar(qs, d, a.qs, a.d))
    }

    /// Σ over blocks of Q8_0 weights · Q8_0 activations.
    #[inline]
    pub fn dot_q8_0(&self, qs: &[i8], d: &[f32], aq: &[i8], ad: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: `detect` found AVX2 and FMA on this CPU.
            return unsafe { x86::dot_q8_0(qs, d, aq, ad) };
        }
        dot_q8_0_scalar(qs, d, aq, ad)
    }
}

// The kernels index several slices by one block number; iterators over
// them would hide that they share it.
#[cfg(target_arch = "x86_64")]
/// `x` (within ±127) rounded half to even, as an i8. On x86-64 by the SSE
/// conversion (baseline there; it rounds by MXCSR, nearest-even unless a
/// program changes it): `round_ties_even` is a libm call without SSE4.1,
/// a few percent of all decode time.
#[inline]
pub(super) fn round_to_i8(x: f32) -> i8 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_cvtss_si32, _mm_set_ss};
        // SAFETY: SSE is part of the x86-64 baseline, always present.
        unsafe { _mm_cvtss_si32(_mm_set_ss(x)) as i8 }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        x.round_ties_even() as i8
    }
}

#[allow(clippy::needless_range_loop)]
mod x86 {
    use super::{Act, BLOCK};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma,f16c")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_extractf128_ps::<1>(v), _mm256_castps256_ps128(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
        _mm_cvtss_f32(s)
    }

    /// A block's (d, m) from packed f16 bits, converted by F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn unpack_dm(dm: u32) -> (f32, f32) {
        let v = _mm_cvtph_ps(_mm_cvtsi32_si128(dm as i32));
        (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn dot_q4_1(dm: &[u32], qs: &[u8], aq: &[i8], ad: &[f32], as_: &[f32]) -> f32 {
        // Every slice is long enough for `nb` blocks, so every load below is in bounds.
        let nb = dm
            .len()
            .min(ad.len())
            .min(as_.len())
            .min(qs.len() / 16)
            .min(aq.len() / BLOCK);
        let mask = _mm256_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_ps();
        let mut offsets = 0f32;
        for b in 0..nb {
            // SAFETY: b < nb, so bytes b*16..b*16+16 of `qs` and b*32..b*32+32
            // of `aq` exist; unaligned loads need no alignment.
            let (raw, a) = unsafe {
                (
                    _mm_loadu_si128(qs.as_ptr().add(b * 16).cast()),
                    _mm256_loadu_si256(aq.as_ptr().add(b * BLOCK).cast()),
                )
            };
            let (d, m) = unpack_dm(dm[b]);
            // Low nibbles are values 0..16, high nibbles 16..32.
            let w = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(raw), raw), mask);
            // u8 (0..16) × i8 pairs summed to i16 cannot saturate: 2·15·128 < 2^15.
            let pairs = _mm256_maddubs_epi16(w, a);
            let sums = _mm256_madd_epi16(pairs, ones);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_set1_ps(d * ad[b]), acc);
            offsets += m * as_[b];
        }
        hsum(acc) + offsets
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn dot_q8_0(qs: &[i8], d: &[f32], aq: &[i8], ad: &[f32]) -> f32 {
        let nb = d
            .len()
            .min(ad.len())
            .min(qs.len() / BLOCK)
            .min(aq.len() / BLOCK);
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_ps();
        for b in 0..nb {
            // SAFETY: b < nb, so 32 bytes at b*32 exist in both slices.
            let (w, a) = unsafe {
                (
                    _mm256_loadu_si256(qs.as_ptr().add(b * BLOCK).cast()),
                    _mm256_loadu_si256(aq.as_ptr().add(b * BLOCK).cast()),
                )
            };
            // maddubs multiplies unsigned by signed: move w's sign onto a.
            let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w));
            let sums = _mm256_madd_epi16(pairs, ones);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_set1_ps(d[b] * ad[b]), acc);
        }
        hsum(acc)
    }

    /// Blocks that every slice of four tokens' activations can supply.
    fn act_blocks(acts: &[Act<'_>; 4]) -> usize {
        acts.iter()
            .map(|a| a.d.len().min(a.s.len()).min(a.qs.len() / BLOCK))
            .min()
            .unwrap_or(0)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn dot_q4_1_x4(dm: &[u32], qs: &[u8], acts: [Act<'_>; 4]) -> [f32; 4] {
        let nb = dm.len().min(qs.len() / 16).min(act_blocks(&acts));
        let mask = _mm256_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut offsets = [0f32; 4];
        for b in 0..nb {
            // SAFETY: b < nb, so 16 bytes at b*16 exist in `qs`.
            let raw = unsafe { _mm_loadu_si128(qs.as_ptr().add(b * 16).cast()) };
            let (d, m) = unpack_dm(dm[b]);
            let w = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(raw), raw), mask);
            for t in 0..4 {
                let act = acts[t];
                // SAFETY: b < nb, so 32 bytes at b*32 exist in this token's values.
                let a = unsafe { _mm256_loadu_si256(act.qs.as_ptr().add(b * BLOCK).cast()) };
                let sums = _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), ones);
                acc[t] = _mm256_fmadd_ps(
                    _mm256_cvtepi32_ps(sums),
                    _mm256_set1_ps(d * act.d[b]),
                    acc[t],
                );
                offsets[t] += m * act.s[b];
            }
        }
        [
            hsum(acc[0]) + offsets[0],
            hsum(acc[1]) + offsets[1],
            hsum(acc[2]) + offsets[2],
            hsum(acc[3]) + offsets[3],
        ]
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn dot_q8_0_x4(qs: &[i8], d: &[f32], acts: [Act<'_>; 4]) -> [f32; 4] {
        let nb = d.len().min(qs.len() / BLOCK).min(act_blocks(&acts));
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); 4];
        for b in 0..nb {
            // SAFETY: b < nb, so 32 bytes at b*32 exist in `qs`.
            let w = unsafe { _mm256_loadu_si256(qs.as_ptr().add(b * BLOCK).cast()) };
            let aw = _mm256_sign_epi8(w, w);
            for t in 0..4 {
                let act = acts[t];
                // SAFETY: b < nb, so 32 bytes at b*32 exist in this token's values.
                let a = unsafe { _mm256_loadu_si256(act.qs.as_ptr().add(b * BLOCK).cast()) };
                let sums =
                    _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(a, w)), ones);
                acc[t] = _mm256_fmadd_ps(
                    _mm256_cvtepi32_ps(sums),
                    _mm256_set1_ps(d[b] * act.d[b]),
                    acc[t],
                );
            }
        }
        [hsum(acc[0]), hsum(acc[1]), hsum(acc[2]), hsum(acc[3])]
    }
}
