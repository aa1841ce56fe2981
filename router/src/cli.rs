//! `routemesh router ...`: train, evaluate, score and calibrate routers from the command line.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;

use crate::data;
use crate::embed;
use crate::encoder::{AssetPaths, Encoder, EncoderConfig};

#[derive(Debug, clap::Subcommand)]
pub enum RouterCommand {
    /// Embed prompts of JSONL files into the embedding cache (train/eval do this on demand).
    Embed {
        #[arg(required = true)]
        data: Vec<PathBuf>,
        #[command(flatten)]
        enc: EncoderArgs,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct EncoderArgs {
    /// Encoder assets (libonnxruntime, model.onnx, tokenizer.json).
    #[arg(long, env = "ROUTEMESH_ASSETS")]
    pub assets: Option<PathBuf>,
    /// ONNX Runtime threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Word pieces per prompt.
    #[arg(long, default_value_t = crate::encoder::DEFAULT_MAX_LEN)]
    pub max_len: usize,
}

impl EncoderArgs {
    pub fn load(&self) -> anyhow::Result<Encoder> {
        let assets = self
            .assets
            .as_deref()
            .map(AssetPaths::in_dir)
            .unwrap_or_else(AssetPaths::from_env);
        Ok(Encoder::load(&EncoderConfig {
            assets,
            max_len: self.max_len,
            threads: self.threads,
        })?)
    }
}

pub fn run(cmd: RouterCommand) -> anyhow::Result<()> {
    match cmd {
        RouterCommand::Embed { data, enc } => {
            let enc = enc.load()?;
            let (_, e) = load_embedded(&enc, &data)?;
            eprintln!("{} embeddings ready", e.nrows());
            Ok(())
        }
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
