//! `routemesh router score` and `predict`: a trained artifact's predictions, for data rows (as a
//! route_eval.py prediction file) or for prompts on the command line.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;

use super::inputs::{EncoderArgs, default_artifact_dir, load_router, router_embeddings};
use crate::data;

// The `score` subcommand's arguments (its help text is the doc comment of
// `RouterCommand::Score`).
#[derive(Debug, clap::Args)]
pub struct ScoreArgs {
    /// Artifact directory (default: router/artifacts/default of this source tree).
    #[arg(long)]
    pub router: Option<PathBuf>,
    pub data: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    /// Use the artifact's fast path (static embeddings) instead of the encoder.
    #[arg(long)]
    pub fast: bool,
    #[command(flatten)]
    pub enc: EncoderArgs,
}

// The `predict` subcommand's arguments (its help text is the doc comment of
// `RouterCommand::Predict`).
#[derive(Debug, clap::Args)]
pub struct PredictArgs {
    #[arg(long)]
    pub router: Option<PathBuf>,
    #[arg(required = true)]
    pub prompt: Vec<String>,
    /// Use the artifact's fast path (static embeddings) instead of the encoder.
    #[arg(long)]
    pub fast: bool,
    #[command(flatten)]
    pub enc: EncoderArgs,
}

pub(super) fn score(args: ScoreArgs) -> anyhow::Result<()> {
    let ScoreArgs {
        router,
        data,
        out,
        fast,
        enc,
    } = args;
    let dir = router.unwrap_or_else(default_artifact_dir);
    let r = load_router(&dir, &enc, fast)?;
    let rows = data::load_jsonl(&data)?;
    let prompts: Vec<&str> = rows.iter().map(|r| r.prompt.as_str()).collect();
    let emb = router_embeddings(&r, &prompts)?;
    let pred = r.predict_embedded(emb.view());
    let mut text = String::new();
    for (row, p) in rows.iter().zip(&pred) {
        let scores: serde_json::Map<String, serde_json::Value> = r
            .models()
            .iter()
            .zip(p)
            .map(|(m, &q)| (m.clone(), serde_json::Value::from(q)))
            .collect();
        text.push_str(&serde_json::to_string(
            &serde_json::json!({"id": row.id, "scores": scores}),
        )?);
        text.push('\n');
    }
    std::fs::write(&out, text).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("wrote {} predictions to {}", rows.len(), out.display());
    Ok(())
}

pub(super) fn predict(args: PredictArgs) -> anyhow::Result<()> {
    let PredictArgs {
        router,
        prompt,
        fast,
        enc,
    } = args;
    let dir = router.unwrap_or_else(default_artifact_dir);
    let r = load_router(&dir, &enc, fast)?;
    println!("{} path", r.path().as_str());
    for p in &prompt {
        let t = Instant::now();
        let mut q = r.predict(p)?;
        let took = t.elapsed();
        q.sort_by(|a, b| b.1.total_cmp(&a.1));
        println!("{p:?} ({took:.1?})");
        for (m, v) in q {
            println!("  {v:.3}  {m}");
        }
    }
    Ok(())
}
