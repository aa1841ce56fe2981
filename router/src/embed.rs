//! Prompt embeddings for training and evaluation, cached on disk.
//!
//! Encoding the ~16k training prompts takes minutes on a small CPU; every train/eval/CV run needs the same
//! vectors, so they are cached under a key that covers the encoder model, the max length and the prompts.

use std::path::{Path, PathBuf};

use ndarray::Array2;
use sha2::{Digest, Sha256};

use crate::encoder::{EMBED_DIM, Encoder, EncoderError, hex};

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error(transparent)]
    Encoder(#[from] EncoderError),
    #[error("embedding cache {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// `$ROUTEMESH_CACHE/embeddings`, default `.cache/routemesh/embeddings`.
pub fn default_cache_dir() -> PathBuf {
    std::env::var_os("ROUTEMESH_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".cache/routemesh"))
        .join("embeddings")
}

fn cache_key(enc: &Encoder, prompts: &[&str]) -> String {
    let mut h = Sha256::new();
    h.update(enc.model_sha256().as_bytes());
    h.update(enc.max_len().to_le_bytes());
    if enc.keep_tail() > 0 {
        // Only then: caches of head-only truncation keep their keys.
        h.update(b"keep_tail");
        h.update(enc.keep_tail().to_le_bytes());
    }
    for p in prompts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    hex(&h.finalize())
}

/// Raw little-endian f32 bytes as `[rows, EMBED_DIM]`, if they are exactly that many.
pub fn f32_rows(bytes: &[u8], rows: usize) -> Option<Array2<f32>> {
    if bytes.len() != rows * EMBED_DIM * 4 {
        return None;
    }
    let v = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Array2::from_shape_vec((rows, EMBED_DIM), v).ok()
}

/// Embeds `prompts`, reading/writing `cache_dir/<key>.f32` (raw little-endian f32, `[n, 384]`) when given.
pub fn embed_cached(
    enc: &Encoder,
    prompts: &[&str],
    cache_dir: Option<&Path>,
    progress: impl FnMut(usize),
) -> Result<Array2<f32>, EmbedError> {
    let path = cache_dir.map(|d| d.join(format!("{}.f32", cache_key(enc, prompts))));
    if let Some(p) = &path
        && let Ok(bytes) = std::fs::read(p)
        && let Some(a) = f32_rows(&bytes, prompts.len())
    {
        return Ok(a);
    }
    let emb = enc.encode_all(prompts, 32, progress)?;
    if let Some(p) = &path {
        let io = |source| EmbedError::Io {
            path: p.clone(),
            source,
        };
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(io)?;
        }
        let bytes: Vec<u8> = emb.iter().flat_map(|v| v.to_le_bytes()).collect();
        // Write then rename so an interrupted run never leaves a truncated cache entry behind.
        let tmp = p.with_extension("part");
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::rename(&tmp, p).map_err(io)?;
    }
    Ok(emb)
}
