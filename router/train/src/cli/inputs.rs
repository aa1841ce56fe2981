//! What the commands read: encoder options, data files with their (cached) embeddings, the price list,
//! and router artifacts.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use routemesh_router::embed;
use routemesh_router::encoder::{AssetPaths, EMBED_DIM, Encoder, EncoderConfig};

use crate::data;

#[derive(Debug, Clone, clap::Args)]
pub struct EncoderArgs {
    /// Encoder assets (libonnxruntime, model.onnx, tokenizer.json).
    #[arg(long, env = "ROUTEMESH_ASSETS")]
    pub assets: Option<PathBuf>,
    /// ONNX Runtime threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Word pieces per prompt.
    #[arg(long, default_value_t = routemesh_router::encoder::DEFAULT_MAX_LEN)]
    pub max_len: usize,
    /// Of those, how many a truncated prompt keeps from its end (0: the start only).
    #[arg(long, default_value_t = routemesh_router::encoder::DEFAULT_KEEP_TAIL)]
    pub keep_tail: usize,
}

impl EncoderArgs {
    pub fn asset_paths(&self) -> AssetPaths {
        self.assets
            .as_deref()
            .map(AssetPaths::in_dir)
            .unwrap_or_else(AssetPaths::from_env)
    }

    pub fn load(&self) -> anyhow::Result<Encoder> {
        Ok(Encoder::load(&EncoderConfig {
            assets: self.asset_paths(),
            max_len: self.max_len,
            keep_tail: self.keep_tail,
            threads: self.threads,
            sessions: 1,
        })?)
    }
}

/// Loads rows of each file and their embeddings (cached per file, so any combination of files reuses them).
pub fn load_embedded(
    enc: &Encoder,
    paths: &[PathBuf],
) -> anyhow::Result<(Vec<data::Row>, ndarray::Array2<f32>)> {
    let mut rows = Vec::new();
    let mut parts = Vec::new();
    for p in paths {
        let r = data::load_jsonl(p)?;
        let prompts: Vec<&str> = r.iter().map(|r| r.prompt.as_str()).collect();
        let t = Instant::now();
        let n = prompts.len();
        let mut last = 0;
        let e = embed::embed_cached(enc, &prompts, Some(&embed::default_cache_dir()), |done| {
            if done >= last + 2000 || done == n {
                last = done;
                eprintln!(
                    "{}: embedded {done}/{n} in {:.0?}",
                    p.display(),
                    t.elapsed()
                );
            }
        })
        .with_context(|| format!("embedding prompts of {}", p.display()))?;
        rows.extend(r);
        parts.push(e);
    }
    let views: Vec<_> = parts.iter().map(|a| a.view()).collect();
    let all = ndarray::concatenate(ndarray::Axis(0), &views)?;
    Ok((rows, all))
}

/// Raw little-endian f32 `[rows, EMBED_DIM]` embeddings from a file.
pub(super) fn read_embeddings(
    path: &std::path::Path,
    rows: usize,
) -> anyhow::Result<ndarray::Array2<f32>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    embed::f32_rows(&bytes, rows).with_context(|| {
        format!(
            "{}: {} bytes, expected {rows} rows of {EMBED_DIM} f32",
            path.display(),
            bytes.len()
        )
    })
}

/// `models.json` given explicitly or next to the first data file.
pub fn prices_path(
    explicit: Option<&std::path::Path>,
    data: &[PathBuf],
) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let first = data.first().context("no data files")?;
    let p = first.with_file_name("models.json");
    anyhow::ensure!(
        p.is_file(),
        "no models.json next to {}: pass --models",
        first.display()
    );
    Ok(p)
}

/// The artifact committed in this source tree (`router/artifacts/default`, next to this crate).
pub fn default_artifact_dir() -> PathBuf {
    let train = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    train.parent().unwrap_or(train).join("artifacts/default")
}

/// Embeddings for `r`'s active path: the fast path embeds on the spot, the encoder's are cached.
pub(super) fn router_embeddings(
    r: &routemesh_router::Router,
    prompts: &[&str],
) -> anyhow::Result<ndarray::Array2<f32>> {
    Ok(match r.path() {
        routemesh_router::router::EmbedPath::Fast => r.embed(prompts)?,
        routemesh_router::router::EmbedPath::Full => embed::embed_cached(
            r.encoder()
                .context("the full path's encoder is not loaded")?,
            prompts,
            Some(&embed::default_cache_dir()),
            |_| {},
        )?,
    })
}

/// Loads a router on its full path, or its fast path when `fast` (and the artifact has one).
pub(super) fn load_router(
    dir: &std::path::Path,
    enc: &EncoderArgs,
    fast: bool,
) -> anyhow::Result<routemesh_router::Router> {
    let cfg = routemesh_router::router::RouterConfig {
        assets: enc.asset_paths(),
        threads: enc.threads,
        sessions: 1,
        fast_path: fast,
        escalate_pairs: false,
    };
    routemesh_router::Router::load_with(dir, &cfg)
        .with_context(|| format!("loading router {}", dir.display()))
}
