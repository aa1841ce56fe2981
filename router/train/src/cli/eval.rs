//! `routemesh router eval`: cross-validated predictors next to baselines (`--cv K`), or a trained artifact,
//! on routing data; summary or full route_eval-style tables, and prediction files for the Python
//! cross-checks.

use std::path::PathBuf;

use anyhow::Context;

use super::inputs::{
    EncoderArgs, load_embedded, load_router, prices_path, read_embeddings, router_embeddings,
};
use super::spec::{DEFAULT_PREDICTOR, PREVIOUS_PREDICTOR, parse_candidate};
use crate::data;
use crate::eval;
use crate::metrics;

// The `eval` subcommand's arguments (its help text is the doc comment of
// `RouterCommand::Eval`).
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Router artifact directory (without `--cv`).
    #[arg(long)]
    pub router: Option<PathBuf>,
    #[arg(required = true)]
    pub data: Vec<PathBuf>,
    /// k-fold cross-validation of `--predictor`s on `data` instead of evaluating a trained artifact.
    #[arg(long)]
    pub cv: Option<usize>,
    /// Predictors to cross-validate (the first is "the router" of the full tables).
    #[arg(long = "predictor", default_values_t = [DEFAULT_PREDICTOR.to_string(), PREVIOUS_PREDICTOR.to_string(), "knn".to_string(), "mf".to_string(), "knn-plain".to_string(), "ridge".to_string(), "mlp".to_string(), "source".to_string(), "prior".to_string()])]
    pub predictors: Vec<String>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Price list (default: models.json next to the first data file).
    #[arg(long)]
    pub models: Option<PathBuf>,
    /// Write the first predictor's (out-of-fold) predictions as route_eval.py JSONL, one file per group.
    #[arg(long)]
    pub pred_out: Option<PathBuf>,
    /// Print the full route_eval-style tables, not only the summary.
    #[arg(long)]
    pub full: bool,
    /// Cross-validate on precomputed embeddings instead of the encoder's: raw little-endian f32
    /// `[rows, 384]` in the order of the data files' rows (for comparing other embedders).
    #[arg(long)]
    pub embeddings: Option<PathBuf>,
    /// With `--router`: evaluate the artifact's fast path.
    #[arg(long)]
    pub fast: bool,
    /// Leave-one-model-out evaluation of onboarding over the largest pool's models (with `--cv K`): each
    /// model trained out, onboarded from `--budgets` scored prompts, next to fully trained and a tier
    /// prior (0.55 up to 9B parameters, 0.80 above). Uses the first `--predictor` (a task mixture).
    #[arg(long, requires = "cv")]
    pub onboard_lomo: bool,
    /// Scored prompts to onboard from, under `--onboard-lomo`.
    #[arg(long, value_delimiter = ',', default_values_t = [0usize, 10, 25, 50, 100, 200, 400])]
    pub budgets: Vec<usize>,
    /// Independent draws of the scored rows per budget under `--onboard-lomo` (metrics averaged).
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Onboarding settings compared under `--onboard-lomo` (see `onboard --onboard`; repeatable).
    #[arg(long = "onboard-config", default_values_t = [String::new()])]
    pub onboard_configs: Vec<String>,
    /// The answer verifier(s) cross-validated in the cascade table (rows with `responses`).
    #[command(flatten)]
    pub verifier: super::verify::VerifierOpts,
    #[command(flatten)]
    pub enc: EncoderArgs,
}

pub(super) fn run(args: EvalArgs) -> anyhow::Result<()> {
    let EvalArgs {
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
        onboard_lomo,
        budgets,
        repeats,
        onboard_configs,
        verifier,
        enc,
    } = args;
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
    if onboard_lomo {
        let spec = predictors.first().map_or(DEFAULT_PREDICTOR, String::as_str);
        return super::onboard::run_lomo(
            &table,
            emb.view(),
            &prices,
            spec,
            &onboard_configs,
            &budgets,
            cv.unwrap_or(5),
            seed,
            repeats,
        );
    }
    let groups = eval::eval_groups(&table, &prices);
    let mut cascade = String::new();
    let (names, preds) = match (cv, router) {
        (Some(k), router) => {
            let cands = predictors
                .iter()
                .map(|p| parse_candidate(p))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let preds =
                eval::cross_validate(&table, emb.view(), &cands, k, seed, |m| eprintln!("{m}"));
            if table.rows.iter().any(|r| r.responses.is_some()) {
                // The verifier embeds with an artifact's static table: the given one, else the default.
                let dir = router
                    .clone()
                    .unwrap_or_else(super::inputs::default_artifact_dir);
                cascade = super::verify::cascade_eval(
                    &table, &groups, &preds[0], k, seed, &verifier, &dir, &enc, &encoder,
                )?;
            }
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
                let prompts: Vec<&str> = table.rows.iter().map(|r| r.prompt.as_str()).collect();
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
            cascade = super::verify::artifact_cascade_eval(&table, &groups, &p, &r)?;
            (vec![format!("artifact {}", dir.display())], vec![p])
        }
        (None, None) => anyhow::bail!("give --router DIR or --cv K"),
    };
    print!("{}", eval::summary(&table, &groups, &names, &preds));
    print!("{cascade}");
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
