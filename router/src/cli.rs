//! `routemesh router ...`: train, evaluate, score and calibrate routers from the command line.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;

use crate::data;
use crate::embed;
use crate::encoder::{AssetPaths, Encoder, EncoderConfig};
use crate::eval::{self, Candidate};
use crate::metrics;
use crate::predict::{KnnConfig, MfConfig, PredictorSpec};

#[derive(Debug, clap::Subcommand)]
pub enum RouterCommand {
    /// Embed prompts of JSONL files into the embedding cache (train/eval do this on demand).
    Embed {
        #[arg(required = true)]
        data: Vec<PathBuf>,
        #[command(flatten)]
        enc: EncoderArgs,
    },
    /// Evaluate a router artifact on data, or cross-validate predictors (`--cv K`) next to baselines.
    Eval {
        /// Router artifact directory (without `--cv`).
        #[arg(long)]
        router: Option<PathBuf>,
        #[arg(required = true)]
        data: Vec<PathBuf>,
        /// k-fold cross-validation of `--predictor`s on `data` instead of evaluating a trained artifact.
        #[arg(long)]
        cv: Option<usize>,
        /// Predictors to cross-validate (the first is "the router" of the full tables).
        #[arg(long = "predictor", default_values_t = ["blend".to_string(), "knn".to_string(), "mf".to_string(), "knn-plain".to_string(), "ridge".to_string(), "source".to_string(), "prior".to_string()])]
        predictors: Vec<String>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Price list (default: models.json next to the first data file).
        #[arg(long)]
        models: Option<PathBuf>,
        /// Write the first predictor's (out-of-fold) predictions as route_eval.py JSONL, one file per group.
        #[arg(long)]
        pred_out: Option<PathBuf>,
        /// Print the full route_eval-style tables, not only the summary.
        #[arg(long)]
        full: bool,
        #[command(flatten)]
        enc: EncoderArgs,
    },
}

/// Predictor specs on the command line: `prior`, `source`, `knn[:k=32,tau=0.05,shrink=1]`,
/// `knn-plain[:k=32]`, `mf[:dim=64,epochs=30,lr=0.002]`, `ridge[:lambda=1]`,
/// `blend[:w=0.5,k=..,tau=..,dim=..,epochs=..]`.
pub fn parse_candidate(s: &str) -> anyhow::Result<Candidate> {
    let (name, args) = s.split_once(':').unwrap_or((s, ""));
    let mut kv = std::collections::HashMap::new();
    for part in args.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .with_context(|| format!("expected key=value in {part:?}"))?;
        let v: f64 = v
            .parse()
            .with_context(|| format!("{k}={v} is not a number"))?;
        kv.insert(k.to_string(), v);
    }
    let get = |k: &str, d: f64| kv.get(k).copied().unwrap_or(d);
    let knn = |d: KnnConfig| KnnConfig {
        k: get("k", d.k as f64) as usize,
        tau: d.tau.map(|t| get("tau", t)),
        shrink: get("shrink", d.shrink),
    };
    let mf = || {
        let d = MfConfig::default();
        MfConfig {
            dim: get("dim", d.dim as f64) as usize,
            epochs: get("epochs", d.epochs as f64) as usize,
            lr: get("lr", d.lr),
            weight_decay: get("wd", d.weight_decay),
            seed: get("seed", d.seed as f64) as u64,
            ..d
        }
    };
    Ok(match name {
        "prior" => Candidate::Spec(PredictorSpec::Prior),
        "source" => Candidate::SourceMean,
        "knn" => Candidate::Spec(PredictorSpec::Knn(knn(KnnConfig::default()))),
        "knn-plain" => Candidate::Spec(PredictorSpec::Knn(knn(KnnConfig {
            k: 32,
            tau: None,
            shrink: 0.0,
        }))),
        "mf" => Candidate::Spec(PredictorSpec::Mf(mf())),
        "ridge" => Candidate::Spec(PredictorSpec::Ridge {
            lambda: get("lambda", 1.0),
        }),
        "blend" => Candidate::Spec(PredictorSpec::Blend {
            knn: knn(KnnConfig::default()),
            mf: mf(),
            weight: get("w", 0.5),
        }),
        other => anyhow::bail!(
            "unknown predictor {other:?} (prior, source, knn, knn-plain, mf, ridge, blend)"
        ),
    })
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
        RouterCommand::Eval {
            router,
            data,
            cv,
            predictors,
            seed,
            models,
            pred_out,
            full,
            enc,
        } => {
            let prices = data::Prices::load(&prices_path(models.as_deref(), &data)?)?;
            let enc = enc.load()?;
            let (rows, emb) = load_embedded(&enc, &data)?;
            let table = data::Table::new(rows, &prices)?;
            let groups = eval::groups(&table, &prices);
            let (names, preds) = match (cv, router) {
                (Some(k), _) => {
                    let cands = predictors
                        .iter()
                        .map(|p| parse_candidate(p))
                        .collect::<anyhow::Result<Vec<_>>>()?;
                    let preds = eval::cross_validate(&table, emb.view(), &cands, k, seed, |m| {
                        eprintln!("{m}")
                    });
                    (
                        cands
                            .iter()
                            .map(|c| format!("cv{k} {}", c.name()))
                            .collect::<Vec<_>>(),
                        preds,
                    )
                }
                (None, Some(dir)) => {
                    let r = crate::Router::load(&dir)?;
                    anyhow::ensure!(
                        r.models() == table.models.as_slice()
                            || table.models.iter().all(|m| r.models().contains(m)),
                        "the artifact does not know every model of the data"
                    );
                    let p = r.predict_embedded(emb.view());
                    let idx: Vec<usize> = table
                        .models
                        .iter()
                        .filter_map(|m| r.models().iter().position(|x| x == m))
                        .collect();
                    let p: Vec<Vec<f64>> = p
                        .into_iter()
                        .map(|row| idx.iter().map(|&j| row[j]).collect())
                        .collect();
                    (vec![format!("artifact {}", dir.display())], vec![p])
                }
                (None, None) => anyhow::bail!("give --router DIR or --cv K"),
            };
            print!("{}", eval::summary(&table, &groups, &names, &preds));
            if full {
                for g in &groups {
                    let main = eval::group_report(&table, g, &preds[0]);
                    let extra: Vec<(String, metrics::Report)> = names
                        .iter()
                        .zip(&preds)
                        .skip(1)
                        .map(|(n, p)| (n.clone(), eval::group_report(&table, g, p)))
                        .collect();
                    println!("\n######## {} ({})", g.name(&table), names[0]);
                    print!("{}", metrics::format_report(&main, &extra));
                }
            }
            if let Some(out) = pred_out {
                std::fs::create_dir_all(&out)?;
                for (gi, g) in groups.iter().enumerate() {
                    let path = out.join(format!("group{gi}.pred.jsonl"));
                    let data_path = out.join(format!("group{gi}.data.jsonl"));
                    write_predictions(&path, &table, &g.rows, &preds[0])?;
                    let mut text = String::new();
                    for &i in &g.rows {
                        text.push_str(&serde_json::to_string(&table.rows[i])?);
                        text.push('\n');
                    }
                    std::fs::write(&data_path, text)?;
                    eprintln!("wrote {} and {}", path.display(), data_path.display());
                }
            }
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

/// route_eval.py prediction rows: `{"id", "scores": {model: q}}`.
pub fn write_predictions(
    path: &std::path::Path,
    table: &data::Table,
    rows: &[usize],
    pred: &[Vec<f64>],
) -> anyhow::Result<()> {
    let mut text = String::new();
    for &i in rows {
        let scores: serde_json::Map<String, serde_json::Value> = table
            .models
            .iter()
            .zip(&pred[i])
            .map(|(m, &q)| (m.clone(), serde_json::Value::from(q)))
            .collect();
        text.push_str(&serde_json::to_string(
            &serde_json::json!({"id": table.rows[i].id, "scores": scores}),
        )?);
        text.push('\n');
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
