//! The router's fast path: static token embeddings distilled from the encoder.
//!
//! The full encoder runs six transformer layers over every word piece (about 12 ms a prompt here, 40 ms
//! for a long one). The fast path keeps one vector per word piece of the encoder's vocabulary, taken
//! from the encoder itself (each piece encoded alone, model2vec-style) and then fitted so that an
//! IDF-weighted mean of a prompt's pieces lands where the encoder would put the whole prompt. Embedding
//! is then tokenising plus a weighted sum: tens of microseconds. A router artifact may carry such a
//! table with a predictor trained on its embeddings (`fast/`), used instead of the encoder when present.
//! Distilling the table is training (`routemesh-router-train`); embedding with it is here.

use std::path::Path;

use ndarray::Array2;
use tokenizers::Tokenizer;

use crate::encoder::{EMBED_DIM, EncoderError};
use crate::predict::quant::quantize_rows;

/// Identifier of static-embedding artifacts (the `encoder.id` of a `fast/` sub-artifact).
pub const STATIC_ENCODER_ID: &str = "routemesh/static-minilm-l6-v2-distilled@v1";

/// Word pieces of a prompt that count; beyond this the prompt's topic is settled and only time is spent.
pub const DEFAULT_MAX_TOKENS: usize = 2048;

/// One vector per word piece plus its weight; prompts embed as the weighted mean, L2-normalised.
#[derive(Clone)]
pub struct StaticEmbedder {
    tokenizer: Tokenizer,
    /// `[vocab * EMBED_DIM]` int8, as the artifact stores them: 4x less memory than f32.
    codes: Vec<i8>,
    /// Per row: the int8 scale divided by the dequantised row's length, so each row is a unit vector.
    row_scales: Vec<f32>,
    /// Per word piece (IDF over the training prompts); 0 drops a piece.
    weights: Vec<f32>,
    max_tokens: usize,
}

impl std::fmt::Debug for StaticEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticEmbedder")
            .field("vocab", &self.row_scales.len())
            .field("max_tokens", &self.max_tokens)
            .finish()
    }
}

/// Loads `tokenizer.json` for word-piece ids only: no special tokens, padding or truncation.
pub fn plain_tokenizer(path: &Path) -> Result<Tokenizer, EncoderError> {
    if !path.is_file() {
        return Err(EncoderError::Missing {
            what: "tokenizer.json",
            path: path.to_path_buf(),
        });
    }
    let mut tokenizer =
        Tokenizer::from_file(path).map_err(|e| EncoderError::Tokenizer(e.to_string()))?;
    tokenizer
        .with_truncation(None)
        .map_err(|e| EncoderError::Tokenizer(e.to_string()))?;
    tokenizer.with_padding(None);
    Ok(tokenizer)
}

/// Word-piece ids of `text` from a [`plain_tokenizer`], at most `max_tokens`.
pub fn token_ids(
    tokenizer: &Tokenizer,
    text: &str,
    max_tokens: usize,
) -> Result<Vec<u32>, EncoderError> {
    let enc = tokenizer
        .encode_fast(text, false)
        .map_err(|e| EncoderError::Tokenizer(e.to_string()))?;
    let mut ids = enc.get_ids().to_vec();
    ids.truncate(max_tokens);
    Ok(ids)
}

impl StaticEmbedder {
    /// From f32 rows `[vocab, EMBED_DIM]` (quantised to int8 here, as the artifact stores them).
    pub fn new(
        tokenizer: Tokenizer,
        table: Array2<f32>,
        weights: Vec<f32>,
        max_tokens: usize,
    ) -> Result<Self, EncoderError> {
        if table.ncols() != EMBED_DIM {
            return Err(EncoderError::Output(format!(
                "static table {:?}, expected [vocab, {EMBED_DIM}]",
                table.dim()
            )));
        }
        let (codes, scales) = quantize_rows(&table);
        Self::from_quantized(tokenizer, codes, scales, weights, max_tokens)
    }

    /// From int8 rows (`[vocab * EMBED_DIM]`) with one scale each, as the artifact stores them.
    pub fn from_quantized(
        tokenizer: Tokenizer,
        codes: Vec<i8>,
        scales: Vec<f32>,
        weights: Vec<f32>,
        max_tokens: usize,
    ) -> Result<Self, EncoderError> {
        if codes.len() != scales.len() * EMBED_DIM || weights.len() != scales.len() {
            return Err(EncoderError::Output(format!(
                "static table of {} codes, {} scales and {} weights, expected [vocab, {EMBED_DIM}] \
                 and one scale and weight per row",
                codes.len(),
                scales.len(),
                weights.len()
            )));
        }
        let vocab = tokenizer.get_vocab_size(true);
        if vocab > scales.len() {
            return Err(EncoderError::Output(format!(
                "the tokenizer has {vocab} word pieces, the static table {}",
                scales.len()
            )));
        }
        let row_scales = codes
            .chunks_exact(EMBED_DIM)
            .zip(&scales)
            .map(|(row, &s)| {
                let norm = row
                    .iter()
                    .map(|&c| (f32::from(c) * s).powi(2))
                    .sum::<f32>()
                    .sqrt();
                if norm > 0.0 { s / norm } else { 0.0 }
            })
            .collect();
        Ok(Self {
            tokenizer,
            codes,
            row_scales,
            weights,
            max_tokens: max_tokens.max(1),
        })
    }

    /// The table as unit f32 rows `[vocab, EMBED_DIM]` (what the artifact saves, int8 again).
    pub fn table(&self) -> Array2<f32> {
        let mut t = Array2::<f32>::zeros((self.row_scales.len(), EMBED_DIM));
        for ((mut out, codes), &s) in t
            .rows_mut()
            .into_iter()
            .zip(self.codes.chunks_exact(EMBED_DIM))
            .zip(&self.row_scales)
        {
            for (o, &c) in out.iter_mut().zip(codes) {
                *o = f32::from(c) * s;
            }
        }
        t
    }

    pub fn weights(&self) -> &[f32] {
        &self.weights
    }

    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Word-piece ids of `text` (at most `max_tokens`).
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>, EncoderError> {
        token_ids(&self.tokenizer, text, self.max_tokens)
    }

    /// `[n, EMBED_DIM]`, rows L2-normalised (all zero for a prompt without word pieces).
    pub fn embed(&self, texts: &[&str]) -> Result<Array2<f32>, EncoderError> {
        let mut out = Array2::<f32>::zeros((texts.len(), EMBED_DIM));
        for (text, mut row) in texts.iter().zip(out.rows_mut()) {
            let ids = self.token_ids(text)?;
            let acc = row
                .as_slice_mut()
                .ok_or_else(|| EncoderError::Output("non-contiguous output row".into()))?;
            self.accumulate(&ids, acc);
            let norm = acc.iter().map(|v| v * v).sum::<f32>().sqrt();
            if norm > 0.0 {
                acc.iter_mut().for_each(|v| *v /= norm);
            }
        }
        Ok(out)
    }

    /// Adds `Σ weight · vector` over `ids` into `acc` (unknown ids are skipped).
    fn accumulate(&self, ids: &[u32], acc: &mut [f32]) {
        for &id in ids {
            let id = id as usize;
            let Some(&w) = self.weights.get(id) else {
                continue;
            };
            if w == 0.0 {
                continue;
            }
            let (Some(&s), Some(row)) = (
                self.row_scales.get(id),
                self.codes.get(id * EMBED_DIM..(id + 1) * EMBED_DIM),
            ) else {
                continue;
            };
            let ws = w * s;
            for (a, &c) in acc.iter_mut().zip(row) {
                *a += ws * f32::from(c);
            }
        }
    }
}
