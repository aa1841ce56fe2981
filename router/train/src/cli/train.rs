//! `routemesh router train`: fit a predictor on embedded rows (optionally cross-validated against
//! baselines), calibrate it, and write the artifact, plus its fast path with `--fast`.

use std::path::PathBuf;
use std::time::Instant;

use routemesh_router::artifact::{self, EncoderInfo};
use routemesh_router::encoder::{EMBED_DIM, ENCODER_ID};

use super::calibrate::calibrate;
use super::inputs::{EncoderArgs, load_embedded, prices_path};
use super::spec::{DEFAULT_PREDICTOR, parse_candidate};
use crate::data;
use crate::distill;
use crate::eval::{self, Candidate};
use crate::fit::{PredictorSpec, TrainSet};
use crate::save::{self, SavablePredictor};

// The `train` subcommand's arguments (its help text is the doc comment of
// `RouterCommand::Train`).
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    #[arg(required = true)]
    pub data: Vec<PathBuf>,
    #[arg(long)]
    pub out: PathBuf,
    /// Predictor spec (see `eval --predictor`).
    #[arg(long, default_value = DEFAULT_PREDICTOR)]
    pub predictor: String,
    /// Also run k-fold CV of this predictor against baselines and record it in the manifest; its
    /// out-of-fold predictions then calibrate thresholds and λ (unbiased, unlike in-sample kNN).
    #[arg(long)]
    pub cv: Option<usize>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long)]
    pub models: Option<PathBuf>,
    /// Predictors cross-validated next to `--predictor` under `--cv` (comma-separated; `none` for
    /// only the router's own out-of-fold predictions).
    #[arg(long, default_value = "knn,knn-plain,mf,ridge,mlp,source,prior")]
    pub baselines: String,
    /// Also build the fast path (`DIR/fast`): static word-piece embeddings distilled from the encoder
    /// and the same predictor trained on them.
    #[arg(long)]
    pub fast: bool,
    /// The answer verifier, trained into `DIR/verifier` when the rows carry `responses`.
    #[command(flatten)]
    pub verifier: super::verify::VerifierOpts,
    #[command(flatten)]
    pub enc: EncoderArgs,
}

pub(super) fn run(args: TrainArgs) -> anyhow::Result<()> {
    let TrainArgs {
        data,
        out,
        predictor,
        cv,
        seed,
        models,
        baselines,
        fast,
        verifier,
        enc,
    } = args;
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
    let (_, router_oof) = job.train_and_save(&out, emb.view(), info, provenance.clone())?;
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
        let (mut m, _) = job.train_and_save(&dir, femb.view(), info, provenance)?;
        save::save_static_table(&dir, &mut m, &embedder.table(), embedder.weights())?;
        eprintln!("wrote the fast path to {}", dir.display());
    }
    if table.rows.iter().any(|r| r.responses.is_some()) {
        let mut opts = verifier;
        if !out
            .join(artifact::FAST_DIR)
            .join(artifact::MANIFEST)
            .is_file()
        {
            // The verifier's embeddings come from the artifact's own static table.
            eprintln!(
                "no fast path in {}: the verifier uses hand features only",
                out.display()
            );
            opts.verifier = vec![format!("hand@{}", crate::verifier::DEFAULT_LAMBDA)];
        }
        // The gap adjustment of cascade routing is fitted on the router's out-of-fold predictions: those
        // of `--cv` when it ran (same predictor, same rows), else a cross-validation of its own.
        let router_oof = match router_oof {
            Some(p) => p,
            None => super::verify::router_oof(
                &table,
                emb.view(),
                &predictor,
                opts.verifier_cv,
                opts.verifier_seed,
            )?,
        };
        super::verify::train_and_save(&out, &table, &prices, &opts, None, Some(&router_oof), &enc)?;
    }
    Ok(())
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
    /// calibrates on out-of-fold predictions (in-sample kNN predictions see themselves), which it also
    /// returns.
    fn train_and_save(
        &self,
        out: &std::path::Path,
        emb: ndarray::ArrayView2<'_, f32>,
        encoder: EncoderInfo,
        mut training: serde_json::Value,
    ) -> anyhow::Result<(artifact::Manifest, Option<Vec<Vec<f64>>>)> {
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
        let calib_pred = oof.clone().unwrap_or_else(|| model.predict(emb));
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
        Ok((m, oof))
    }
}

/// Trains the concrete predictor of `spec` (artifacts need the concrete type to serialise it).
pub fn train_savable(spec: &PredictorSpec, data: &TrainSet<'_>) -> Box<dyn SavablePredictor> {
    spec.train_savable(data)
}
