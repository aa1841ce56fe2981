//! `routemesh router ...`: train, evaluate, score and calibrate routers from the command line.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;

use routemesh_router::artifact::{self, Calibration, EncoderInfo, PairCalibration, Threshold};
use routemesh_router::embed;
use routemesh_router::encoder::{AssetPaths, Encoder, EncoderConfig};
use routemesh_router::encoder::{EMBED_DIM, ENCODER_ID};
use routemesh_router::predict::KnnConfig;

use crate::data;
use crate::distill;
use crate::eval::{self, Candidate};
use crate::fit::{MfConfig, MlpConfig, PredictorSpec, TaskConfig, TrainSet};
use crate::metrics;
use crate::save::{self, SavablePredictor};

#[derive(Debug, clap::Subcommand)]
pub enum RouterCommand {
    /// Embed prompts of JSONL files into the embedding cache (train/eval do this on demand).
    Embed {
        #[arg(required = true)]
        data: Vec<PathBuf>,
        #[command(flatten)]
        enc: EncoderArgs,
    },
    /// Train a router on JSONL files and write the artifact directory.
    Train {
        #[arg(required = true)]
        data: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        /// Predictor spec (see `eval --predictor`).
        #[arg(long, default_value = DEFAULT_PREDICTOR)]
        predictor: String,
        /// Also run k-fold CV of this predictor against baselines and record it in the manifest; its
        /// out-of-fold predictions then calibrate thresholds and λ (unbiased, unlike in-sample kNN).
        #[arg(long)]
        cv: Option<usize>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        models: Option<PathBuf>,
        /// Predictors cross-validated next to `--predictor` under `--cv` (comma-separated; `none` for
        /// only the router's own out-of-fold predictions).
        #[arg(long, default_value = "knn,knn-plain,mf,ridge,mlp,source,prior")]
        baselines: String,
        /// Also build the fast path (`DIR/fast`): static word-piece embeddings distilled from the encoder
        /// and the same predictor trained on them.
        #[arg(long)]
        fast: bool,
        #[command(flatten)]
        enc: EncoderArgs,
    },
    /// Write route_eval.py predictions (`{"id", "scores"}` per line) of a router for data rows.
    Score {
        /// Artifact directory (default: router/artifacts/default of this source tree).
        #[arg(long)]
        router: Option<PathBuf>,
        data: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Use the artifact's fast path (static embeddings) instead of the encoder.
        #[arg(long)]
        fast: bool,
        #[command(flatten)]
        enc: EncoderArgs,
    },
    /// Recompute a router's strong/weak thresholds and default λ on (held-out) data; rewrites the manifest.
    Calibrate {
        #[arg(long)]
        router: PathBuf,
        #[arg(required = true)]
        data: Vec<PathBuf>,
        #[arg(long)]
        models: Option<PathBuf>,
        /// Also calibrate the pair threshold for this share of strong-model calls (0 < S < 1;
        /// repeatable), next to the 10%…90% grid.
        #[arg(long = "strong-share")]
        strong_shares: Vec<f64>,
        /// Set the default λ to the one whose routed mean cost per request on this data is closest to
        /// this many USD without exceeding it (instead of "the cheapest λ matching the best model").
        #[arg(long)]
        target_cost: Option<f64>,
        #[command(flatten)]
        enc: EncoderArgs,
    },
    /// Predicted quality per model for prompts given as arguments (a quick look, and a latency check).
    Predict {
        #[arg(long)]
        router: Option<PathBuf>,
        #[arg(required = true)]
        prompt: Vec<String>,
        /// Use the artifact's fast path (static embeddings) instead of the encoder.
        #[arg(long)]
        fast: bool,
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
        #[arg(long = "predictor", default_values_t = [DEFAULT_PREDICTOR.to_string(), PREVIOUS_PREDICTOR.to_string(), "knn".to_string(), "mf".to_string(), "knn-plain".to_string(), "ridge".to_string(), "mlp".to_string(), "source".to_string(), "prior".to_string()])]
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
        /// Cross-validate on precomputed embeddings instead of the encoder's: raw little-endian f32
        /// `[rows, 384]` in the order of the data files' rows (for comparing other embedders).
        #[arg(long)]
        embeddings: Option<PathBuf>,
        /// With `--router`: evaluate the artifact's fast path.
        #[arg(long)]
        fast: bool,
        #[command(flatten)]
        enc: EncoderArgs,
    },
}

/// The predictor cross-validation picked for the default artifact (see its MODEL_CARD.md).
pub const DEFAULT_PREDICTOR: &str =
    "task:alpha=0.5,k=50,tau=0.2,shrink=5,pca=128,w=0.2,dim=64,epochs=30";

/// The default artifact's predictor before the task mixture (kept as a reference in evaluations).
pub const PREVIOUS_PREDICTOR: &str =
    "blend:k=50,tau=0.2,shrink=2,smooth=0.3,pca=128,w=0.6,dim=64,epochs=30";

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
        smooth: get("smooth", d.smooth),
        pca: get("pca", d.pca as f64) as usize,
    };
    let mf = || {
        let d = MfConfig::default();
        MfConfig {
            dim: get("dim", d.dim as f64) as usize,
            epochs: get("epochs", d.epochs as f64) as usize,
            lr: get("lr", d.lr),
            weight_decay: get("wd", d.weight_decay),
            seed: get("seed", d.seed as f64) as u64,
            smooth: get("msmooth", d.smooth),
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
            smooth: 0.0,
            pca: 0,
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
        "mlp" => {
            let d = MlpConfig::default();
            Candidate::Spec(PredictorSpec::Mlp(MlpConfig {
                hidden: get("hidden", d.hidden as f64) as usize,
                epochs: get("epochs", d.epochs as f64) as usize,
                lr: get("lr", d.lr),
                weight_decay: get("wd", d.weight_decay),
                ..d
            }))
        }
        "task" => {
            let d = TaskConfig::default();
            Candidate::Spec(PredictorSpec::Task(TaskConfig {
                epochs: get("cepochs", d.epochs as f64) as usize,
                lr: get("clr", d.lr),
                weight_decay: get("cwd", d.weight_decay),
                mean_shrink: get("mshrink", d.mean_shrink),
                alpha: get("alpha", d.alpha),
                knn: knn(d.knn.clone()),
                mf_weight: get("w", d.mf_weight),
                mf: mf(),
                ..d
            }))
        }
        other => anyhow::bail!(
            "unknown predictor {other:?} (prior, source, knn, knn-plain, mf, ridge, blend, mlp, task)"
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

pub fn run(cmd: RouterCommand) -> anyhow::Result<()> {
    match cmd {
        RouterCommand::Embed { data, enc } => {
            let enc = enc.load()?;
            let (_, e) = load_embedded(&enc, &data)?;
            eprintln!("{} embeddings ready", e.nrows());
            Ok(())
        }
        RouterCommand::Train {
            data,
            out,
            predictor,
            cv,
            seed,
            models,
            baselines,
            fast,
            enc,
        } => {
            let prices = data::Prices::load(&prices_path(models.as_deref(), &data)?)?;
            let Candidate::Spec(spec) = parse_candidate(&predictor)? else {
                anyhow::bail!("{predictor} reads row labels and cannot be deployed")
            };
            let encoder = enc.load()?;
            let (rows, emb) = load_embedded(&encoder, &data)?;
            let table = data::Table::new(rows, &prices)?;
            let provenance = serde_json::json!({
                "data": data.iter().map(|p| p.file_name().map(|f| f.to_string_lossy().into_owned())).collect::<Vec<_>>(),
                "rows": table.len(),
                "predictor": spec.name(),
            });
            let job = TrainJob {
                table: &table,
                prices: &prices,
                spec: &spec,
                predictor: &predictor,
                baselines: baselines
                    .split(',')
                    .map(str::trim)
                    .filter(|b| !b.is_empty() && *b != "none")
                    .collect(),
                cv,
                seed,
            };
            let info = EncoderInfo {
                id: ENCODER_ID.into(),
                model_sha256: encoder.model_sha256().into(),
                max_len: encoder.max_len(),
                keep_tail: encoder.keep_tail(),
                dim: EMBED_DIM,
            };
            job.train_and_save(&out, emb.view(), info, provenance.clone())?;
            if fast {
                let t = Instant::now();
                let embedder = distill::distill_static(&encoder, &enc.asset_paths(), &table)?;
                let prompts: Vec<&str> = table.rows.iter().map(|r| r.prompt.as_str()).collect();
                let femb = embedder.embed(&prompts)?;
                eprintln!(
                    "fast path: static table and embeddings in {:.1?}",
                    t.elapsed()
                );
                let info = EncoderInfo {
                    id: routemesh_router::fast::STATIC_ENCODER_ID.into(),
                    model_sha256: encoder.model_sha256().into(),
                    max_len: embedder.max_tokens(),
                    keep_tail: 0,
                    dim: EMBED_DIM,
                };
                let dir = out.join(artifact::FAST_DIR);
                let mut m = job.train_and_save(&dir, femb.view(), info, provenance)?;
                save::save_static_table(&dir, &mut m, &embedder.table(), embedder.weights())?;
                eprintln!("wrote the fast path to {}", dir.display());
            }
            Ok(())
        }
        RouterCommand::Score {
            router,
            data,
            out,
            fast,
            enc,
        } => {
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
        RouterCommand::Calibrate {
            router,
            data,
            models,
            strong_shares,
            target_cost,
            enc,
        } => {
            if let Some(bad) = strong_shares.iter().find(|s| !(**s > 0.0 && **s < 1.0)) {
                anyhow::bail!("--strong-share {bad}: a share of strong calls is between 0 and 1");
            }
            if let Some(c) = target_cost.filter(|c| !(c.is_finite() && *c > 0.0)) {
                anyhow::bail!("--target-cost {c}: a cost per request in USD is positive");
            }
            let prices = data::Prices::load(&prices_path(models.as_deref(), &data)?)?;
            let r = load_router(&router, &enc, false)?;
            let encoder = r
                .encoder()
                .context("the full path's encoder is not loaded")?;
            let (rows, emb) = load_embedded(encoder, &data)?;
            let table = data::Table::with_models(rows, r.models().to_vec(), &prices)?;
            let groups = eval::groups(&table, &prices);
            let pred = r.predict_embedded(emb.view());
            let cal = recalibrate(
                &router,
                r.manifest().clone(),
                &table,
                &groups,
                &pred,
                &strong_shares,
                target_cost,
            )?;
            println!("{}", serde_json::to_string_pretty(&cal)?);
            // The fast path has its own score scale, so its own calibration (the gateway reads it on
            // `router.path: fast` and, for the many-model pool, on `auto`).
            let fast_dir = router.join(artifact::FAST_DIR);
            if fast_dir.join(artifact::MANIFEST).is_file() {
                let rf = load_router(&router, &enc, true)?;
                let prompts: Vec<&str> = table.rows.iter().map(|r| r.prompt.as_str()).collect();
                let pred = rf.predict_embedded(rf.embed(&prompts)?.view());
                eprintln!("fast path:");
                let cal = recalibrate(
                    &fast_dir,
                    artifact::read_manifest(&fast_dir)?,
                    &table,
                    &groups,
                    &pred,
                    &strong_shares,
                    target_cost,
                )?;
                println!("fast path: {}", serde_json::to_string_pretty(&cal)?);
            }
            Ok(())
        }
        RouterCommand::Predict {
            router,
            prompt,
            fast,
            enc,
        } => {
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
        RouterCommand::Eval {
            router,
            data,
            cv,
            predictors,
            seed,
            models,
            pred_out,
            full,
            embeddings,
            fast,
            enc,
        } => {
            let prices = data::Prices::load(&prices_path(models.as_deref(), &data)?)?;
            let encoder = enc.load()?;
            let (rows, emb) = match &embeddings {
                Some(path) => {
                    let mut rows = Vec::new();
                    for p in &data {
                        rows.extend(data::load_jsonl(p)?);
                    }
                    let emb = read_embeddings(path, rows.len())?;
                    (rows, emb)
                }
                None => load_embedded(&encoder, &data)?,
            };
            let table = data::Table::new(rows, &prices)?;
            let groups = eval::eval_groups(&table, &prices);
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
                    let r = load_router(&dir, &enc, fast)?;
                    let emb = if fast {
                        let prompts: Vec<&str> =
                            table.rows.iter().map(|r| r.prompt.as_str()).collect();
                        router_embeddings(&r, &prompts)?
                    } else {
                        emb.clone()
                    };
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
                    eprintln!(
                        "note: rows the artifact was trained on are scored in-sample (its kNN memory \
                         contains them): use --cv for unbiased numbers"
                    );
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
                std::fs::write(
                    out.join("predictors.json"),
                    serde_json::to_string_pretty(&names)?,
                )?;
                for (gi, g) in groups.iter().enumerate() {
                    let path = out.join(format!("group{gi}.pred.jsonl"));
                    let data_path = out.join(format!("group{gi}.data.jsonl"));
                    write_predictions(&path, &table, &g.rows, &preds[0])?;
                    // The other candidates' too, for paired comparisons (router/train/tools/paired_se.py).
                    for (c, p) in preds.iter().enumerate().skip(1) {
                        let path = out.join(format!("group{gi}.pred{c}.jsonl"));
                        write_predictions(&path, &table, &g.rows, p)?;
                    }
                    let mut text = String::new();
                    for &i in &g.rows {
                        text.push_str(&serde_json::to_string(&table.rows[i])?);
                        text.push('\n');
                    }
                    std::fs::write(&data_path, text)?;
                    // Our own metrics of the same predictions, to diff against route_eval.py --json.
                    let report = eval::group_report(&table, g, &preds[0]);
                    std::fs::write(
                        out.join(format!("group{gi}.report.json")),
                        serde_json::to_string_pretty(&report)?,
                    )?;
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

/// Raw little-endian f32 `[rows, EMBED_DIM]` embeddings from a file.
fn read_embeddings(path: &std::path::Path, rows: usize) -> anyhow::Result<ndarray::Array2<f32>> {
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

/// The artifact committed in this source tree (`router/artifacts/default`, next to this crate).
pub fn default_artifact_dir() -> PathBuf {
    let train = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    train.parent().unwrap_or(train).join("artifacts/default")
}

/// Embeddings for `r`'s active path: the fast path embeds on the spot, the encoder's are cached.
fn router_embeddings(
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
fn load_router(
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

/// One predictor to train on one embedding of a table, with optional CV against the baselines.
struct TrainJob<'a> {
    table: &'a data::Table,
    prices: &'a data::Prices,
    spec: &'a PredictorSpec,
    predictor: &'a str,
    baselines: Vec<&'a str>,
    cv: Option<usize>,
    seed: u64,
}

impl TrainJob<'_> {
    /// Trains on all rows and writes the artifact to `out`; with `cv`, records the CV summary and
    /// calibrates on out-of-fold predictions (in-sample kNN predictions see themselves).
    fn train_and_save(
        &self,
        out: &std::path::Path,
        emb: ndarray::ArrayView2<'_, f32>,
        encoder: EncoderInfo,
        mut training: serde_json::Value,
    ) -> anyhow::Result<artifact::Manifest> {
        let table = self.table;
        let groups = eval::groups(table, self.prices);
        let oof = match self.cv {
            Some(k) => {
                let cands: Vec<Candidate> = std::iter::once(self.predictor)
                    .chain(self.baselines.iter().copied())
                    .map(parse_candidate)
                    .collect::<anyhow::Result<_>>()?;
                let preds =
                    eval::cross_validate(table, emb, &cands, k, self.seed, |m| eprintln!("{m}"));
                let names: Vec<String> = cands.iter().map(Candidate::name).collect();
                let text = eval::summary(
                    table,
                    &eval::eval_groups(table, self.prices),
                    &names,
                    &preds,
                );
                print!("{text}");
                training["cv"] =
                    serde_json::json!({"folds": k, "seed": self.seed, "summary": text});
                preds.into_iter().next()
            }
            None => None,
        };
        let t = Instant::now();
        let tq = table.quality.clone();
        let src: Vec<String> = table.rows.iter().map(|r| r.source.clone()).collect();
        let set = TrainSet {
            models: &table.models,
            emb,
            quality: &tq,
            sources: Some(&src),
        };
        let model = train_savable(self.spec, &set);
        eprintln!(
            "trained {} on {} rows in {:.1?}",
            self.spec.name(),
            table.len(),
            t.elapsed()
        );
        let calib_pred = oof.unwrap_or_else(|| model.predict(emb));
        let calibration = calibrate(table, &groups, &calib_pred);
        let pools = groups
            .iter()
            .map(|g| g.models.iter().map(|&j| table.models[j].clone()).collect())
            .collect();
        let m = save::save(out, encoder, model.as_ref(), calibration, pools, training)?;
        let bytes: u64 = m.files.values().map(|f| f.bytes).sum();
        eprintln!(
            "wrote {} ({} files, {:.1} MB)",
            out.display(),
            m.files.len(),
            bytes as f64 / 1e6
        );
        Ok(m)
    }
}

/// Trains the concrete predictor of `spec` (artifacts need the concrete type to serialise it).
pub fn train_savable(spec: &PredictorSpec, data: &TrainSet<'_>) -> Box<dyn SavablePredictor> {
    spec.train_savable(data)
}

/// Strong-call shares the pair thresholds are calibrated for.
pub const STRONG_SHARES: [f64; 9] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9];

/// Recalibrates `manifest` (of the artifact directory `dir`) on `pred` and rewrites it, keeping what these
/// rows cannot recalibrate (a pair or pool they do not cover).
#[allow(clippy::too_many_arguments)]
fn recalibrate(
    dir: &std::path::Path,
    mut manifest: artifact::Manifest,
    table: &data::Table,
    groups: &[eval::Group],
    pred: &[Vec<f64>],
    shares: &[f64],
    target_cost: Option<f64>,
) -> anyhow::Result<Calibration> {
    let new = calibrate_to(table, groups, pred, shares, target_cost)?;
    let old = std::mem::take(&mut manifest.calibration);
    let mut pairs = new.pairs;
    for p in old.pairs {
        if !pairs
            .iter()
            .any(|q| q.strong == p.strong && q.weak == p.weak)
        {
            pairs.push(p);
        }
    }
    manifest.calibration = Calibration {
        default_lambda: new.default_lambda.or(old.default_lambda),
        pairs,
    };
    save::write_manifest(dir, &manifest)?;
    Ok(manifest.calibration)
}

/// Pair thresholds (quantiles of the score gap, as RouteLLM's calibrate_threshold) and a default λ: on the
/// largest many-model pool, the cheapest λ of the sweep whose routed quality reaches the best single
/// model's (else the λ of the highest quality).
pub fn calibrate(table: &data::Table, groups: &[eval::Group], pred: &[Vec<f64>]) -> Calibration {
    calibrate_with(table, groups, pred, &[]).0
}

/// [`calibrate`] with extra strong-call shares for the pair thresholds and, given `target_cost`, the λ
/// whose routed mean cost on these rows is the highest not above it; errors if no λ of the sweep is that
/// cheap (the cheapest routed cost is named).
pub fn calibrate_to(
    table: &data::Table,
    groups: &[eval::Group],
    pred: &[Vec<f64>],
    shares: &[f64],
    target_cost: Option<f64>,
) -> anyhow::Result<Calibration> {
    let (mut cal, points) = calibrate_with(table, groups, pred, shares);
    if let Some(target) = target_cost {
        let fits = points
            .iter()
            .filter(|p| p.1 <= target)
            .max_by(|a, b| a.1.total_cmp(&b.1).then(a.2.total_cmp(&b.2)));
        match fits {
            Some(&(lambda, cost, quality)) => {
                eprintln!(
                    "λ {lambda:.4} routes at {cost:.3e} USD per request (target {target:.3e}), mean quality {quality:.4}"
                );
                cal.default_lambda = Some(lambda);
            }
            None => {
                let cheapest = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
                anyhow::bail!(
                    "--target-cost {target:.3e}: no λ routes that cheaply on this data (cheapest {cheapest:.3e} USD per request)"
                );
            }
        }
    }
    Ok(cal)
}

/// The calibration and the λ sweep's (λ, mean cost, mean quality) points on the many-model pool.
#[allow(clippy::type_complexity)]
fn calibrate_with(
    table: &data::Table,
    groups: &[eval::Group],
    pred: &[Vec<f64>],
    shares: &[f64],
) -> (Calibration, Vec<(f64, f64, f64)>) {
    let mut cal = Calibration::default();
    let mut all_shares: Vec<f64> = STRONG_SHARES.iter().chain(shares).copied().collect();
    all_shares.sort_by(f64::total_cmp);
    all_shares.dedup();
    let mut sweep = Vec::new();
    for g in groups {
        let Some((s, w)) = g.pair else { continue };
        let (js, jw) = (g.models[s], g.models[w]);
        let mut gap: Vec<f64> = g.rows.iter().map(|&i| pred[i][js] - pred[i][jw]).collect();
        gap.sort_by(f64::total_cmp);
        let thresholds = all_shares
            .iter()
            .map(|&share| Threshold {
                strong_share: share,
                threshold: metrics::quantile(&gap, 1.0 - share),
            })
            .collect();
        cal.pairs.push(PairCalibration {
            strong: table.models[js].clone(),
            weak: table.models[jw].clone(),
            thresholds,
        });
    }
    if let Some(g) = groups
        .iter()
        .filter(|g| g.models.len() > 2)
        .max_by_key(|g| g.rows.len())
    {
        let pick = |m: &dyn Fn(usize, usize) -> f64| -> Vec<Vec<f64>> {
            g.rows
                .iter()
                .map(|&i| g.models.iter().map(|&j| m(i, j)).collect())
                .collect()
        };
        let truth = pick(&|i, j| table.quality[i][j].unwrap_or(0.0));
        let p = pick(&|i, j| pred[i][j]);
        let cost = pick(&|i, j| table.cost[i][j]);
        let best_single = (0..g.models.len())
            .map(|j| truth.iter().map(|r| r[j]).sum::<f64>() / truth.len().max(1) as f64)
            .fold(f64::NEG_INFINITY, f64::max);
        let pts: Vec<(f64, f64, f64)> = metrics::lambda_grid(&cost)
            .into_iter()
            .filter(|l| l.is_finite())
            .map(|l| {
                let (c, q) = metrics::route_point(&p, &truth, &cost, l);
                (l, c, q)
            })
            .collect();
        let reach = pts
            .iter()
            .filter(|p| p.2 >= best_single)
            .min_by(|a, b| a.1.total_cmp(&b.1));
        let top = pts
            .iter()
            .max_by(|a, b| a.2.total_cmp(&b.2).then(b.1.total_cmp(&a.1)));
        cal.default_lambda = reach.or(top).map(|p| p.0);
        sweep = pts;
    }
    (cal, sweep)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::data::{ModelPrice, Prices, Row, Table};

    #[test]
    fn predictor_specs_parse() {
        assert_eq!(parse_candidate("source").unwrap(), Candidate::SourceMean);
        let Candidate::Spec(PredictorSpec::Knn(c)) = parse_candidate("knn:k=7,tau=0.2").unwrap()
        else {
            panic!()
        };
        assert_eq!((c.k, c.tau), (7, Some(0.2)));
        let Candidate::Spec(PredictorSpec::Knn(c)) = parse_candidate("knn-plain").unwrap() else {
            panic!()
        };
        assert_eq!(c.tau, None);
        let Candidate::Spec(PredictorSpec::Blend { weight, mf, .. }) =
            parse_candidate("blend:w=0.3,dim=8").unwrap()
        else {
            panic!()
        };
        assert_eq!((weight, mf.dim), (0.3, 8));
        let Candidate::Spec(PredictorSpec::Task(t)) = parse_candidate(DEFAULT_PREDICTOR).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (t.alpha, t.knn.k, t.knn.pca, t.mf_weight),
            (0.5, 50, 128, 0.2)
        );
        assert_eq!(t.knn.shrink, 5.0);
        assert!(matches!(
            parse_candidate("mlp:hidden=16").unwrap(),
            Candidate::Spec(PredictorSpec::Mlp(MlpConfig { hidden: 16, .. }))
        ));
        assert!(parse_candidate("nope").is_err());
        assert!(parse_candidate("knn:k").is_err());
    }

    fn table() -> (Table, Prices) {
        let price = |p: f64| ModelPrice {
            input_usd_per_mtok: p,
            output_usd_per_mtok: p,
            params_b: None,
            source: None,
        };
        let prices = Prices(
            [("s", 10.0), ("w", 1.0), ("a", 1.0), ("b", 2.0), ("c", 3.0)]
                .into_iter()
                .map(|(m, p)| (m.to_string(), price(p)))
                .collect(),
        );
        let mut rows = Vec::new();
        for i in 0..20 {
            let pair = i < 10;
            let scores = if pair {
                [("s", 1.0), ("w", f64::from(i % 2))]
                    .into_iter()
                    .map(|(m, q)| (m.to_string(), q))
                    .collect()
            } else {
                [("a", 0.0), ("b", 1.0), ("c", 1.0)]
                    .into_iter()
                    .map(|(m, q)| (m.to_string(), q))
                    .collect()
            };
            let source = if pair {
                if i < 5 { "mmlu/x" } else { "gsm8k" }
            } else {
                "mix9/y"
            };
            rows.push(Row {
                id: format!("r{i}"),
                source: source.into(),
                prompt: "p".into(),
                scores,
                responses: None,
            });
        }
        (Table::new(rows, &prices).unwrap(), prices)
    }

    #[test]
    fn groups_split_pools_and_datasets() {
        let (t, prices) = table();
        let g = eval::groups(&t, &prices);
        assert_eq!(g.len(), 2);
        let pair = g.iter().find(|g| g.models.len() == 2).unwrap();
        // The pricier model of a pair is the strong one.
        assert_eq!(t.models[pair.models[pair.pair.unwrap().0]], "s");
        let e = eval::eval_groups(&t, &prices);
        assert_eq!(
            e.len(),
            4,
            "pair pool + its two datasets + the 3-model pool"
        );
    }

    /// Predictions where the strong model's score is the row index (so the pair's gap grows with it) and
    /// every other model gets `other(model)`.
    fn row_index_preds(t: &Table, other: impl Fn(&str) -> f64) -> Vec<Vec<f64>> {
        (0..t.len())
            .map(|i| {
                t.models
                    .iter()
                    .map(|m| if m == "s" { i as f64 } else { other(m) })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn calibration_thresholds_and_lambda() {
        let (t, prices) = table();
        let g = eval::groups(&t, &prices);
        // Predicted gap = row index for the pair; truth for the pool: b and c are right, b cheaper.
        let pred = row_index_preds(&t, |_| 0.5);
        let cal = calibrate(&t, &g, &pred);
        let pc = &cal.pairs[0];
        assert_eq!((pc.strong.as_str(), pc.weak.as_str()), ("s", "w"));
        let half = pc
            .thresholds
            .iter()
            .find(|t| t.strong_share == 0.5)
            .unwrap();
        // Gaps of the pair rows are -0.5 + 0..9: median 4.0.
        assert!((half.threshold - 4.0).abs() < 1e-9, "{half:?}");
        assert!(cal.default_lambda.is_some());
    }

    #[test]
    fn calibration_to_a_share_and_a_target_cost() {
        let (t, prices) = table();
        let g = eval::groups(&t, &prices);
        // The most expensive model looks a little better: a small λ buys it, a large one the cheapest.
        let pred = row_index_preds(&t, |m| if m == "c" { 0.6 } else { 0.5 });
        let cal = calibrate_to(&t, &g, &pred, &[0.25], None).unwrap();
        let quarter = cal.pairs[0]
            .thresholds
            .iter()
            .find(|t| t.strong_share == 0.25)
            .unwrap();
        // Gaps -0.5 + 0..9: the top quarter of the pair rows lies above the 75% quantile, 6.25.
        assert!((quarter.threshold - 6.25).abs() < 1e-9, "{quarter:?}");
        // Every row of the pool costs the same per model, so the sweep's mean costs are the models'.
        let pool = g.iter().find(|g| g.models.len() > 2).unwrap();
        let cost_of = |name: &str| {
            let j = t.models.iter().position(|m| m == name).unwrap();
            t.cost[pool.rows[0]][j]
        };
        let (cheap, dear) = (cost_of("a"), cost_of("c"));
        let mid = (cheap + dear) / 2.0;
        let under = calibrate_to(&t, &g, &pred, &[], Some(mid)).unwrap();
        let over = calibrate_to(&t, &g, &pred, &[], Some(dear * 2.0)).unwrap();
        assert!(under.default_lambda.unwrap() > over.default_lambda.unwrap());
        let err = calibrate_to(&t, &g, &pred, &[], Some(cheap / 10.0)).unwrap_err();
        assert!(
            err.to_string().contains("no λ routes that cheaply"),
            "{err}"
        );
    }
}
