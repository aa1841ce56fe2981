//! Distilling the fast path's static table from the encoder: one vector per word piece (each piece encoded
//! alone) and IDF weights over the training prompts, so that a prompt's weighted mean lands near where the
//! encoder would put it. `routemesh_router::fast` embeds with the result.

use routemesh_router::encoder::{AssetPaths, Encoder, EncoderError};
use routemesh_router::fast::{DEFAULT_MAX_TOKENS, StaticEmbedder, plain_tokenizer, token_ids};

use crate::data;

/// The fast path's embedder: every word piece encoded alone (kept int8, as the artifact will hold
/// them), weighted by IDF over the training prompts.
pub fn distill_static(
    encoder: &Encoder,
    assets: &AssetPaths,
    table: &data::Table,
) -> Result<StaticEmbedder, EncoderError> {
    let vocab = encoder.embed_vocabulary(256)?;
    let tokenizer = plain_tokenizer(&assets.tokenizer)?;
    let docs = table
        .rows
        .iter()
        .map(|r| token_ids(&tokenizer, &r.prompt, DEFAULT_MAX_TOKENS))
        .collect::<Result<Vec<_>, _>>()?;
    let weights = idf_weights(&docs, vocab.nrows());
    StaticEmbedder::new(tokenizer, vocab, weights, DEFAULT_MAX_TOKENS)
}

/// IDF weights `ln((n + 1) / (df + 1)) + 1` of each word piece over a corpus of token-id lists.
pub fn idf_weights(docs: &[Vec<u32>], vocab: usize) -> Vec<f32> {
    let mut df = vec![0u32; vocab];
    let mut seen = vec![u32::MAX; vocab];
    for (d, ids) in docs.iter().enumerate() {
        for &id in ids {
            let id = id as usize;
            if id < vocab && seen[id] != d as u32 {
                seen[id] = d as u32;
                df[id] += 1;
            }
        }
    }
    let n = docs.len() as f64;
    df.iter()
        .map(|&c| (((n + 1.0) / (f64::from(c) + 1.0)).ln() + 1.0) as f32)
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn idf_counts_documents_not_occurrences() {
        let docs = vec![vec![0, 0, 1], vec![0], vec![2]];
        let w = idf_weights(&docs, 4);
        // df: 0 -> 2, 1 -> 1, 2 -> 1, 3 -> 0.
        assert!((w[0] - ((4.0f32 / 3.0).ln() + 1.0)).abs() < 1e-6);
        assert!((w[1] - (2.0f32.ln() + 1.0)).abs() < 1e-6);
        assert_eq!(w[1], w[2]);
        assert!(w[3] > w[1]);
    }
}
