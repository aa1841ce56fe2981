//! `routemesh router verify` and `train-verifier`, and the cascade section of `eval --cv`: the answer
//! verifier scored on data rows, trained onto an existing artifact, and cross-validated against
//! prompt-only routing and the reference verifier.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use routemesh_router::fast::StaticEmbedder;
use routemesh_router::verify::{FeatureSet, VERIFIER_DIR, VerifyInput, load_static_embedder};
use routemesh_router::{artifact, embed, encoder::Encoder};

use super::inputs::{EncoderArgs, default_artifact_dir, load_embedded, load_router};
use super::spec::{DEFAULT_PREDICTOR, parse_candidate};
use crate::data::{self, Prices, Table};
use crate::eval;
use crate::verifier::{
    self, Answers, CascadeScores, DEFAULT_FEATURES, DEFAULT_LAMBDA, PairRows, answers, fold_of,
    oof_scores, parse_features,
};

// The `verify` subcommand's arguments (its help text is the doc comment of `RouterCommand::Verify`).
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Artifact directory (default: router/artifacts/default of this source tree).
    #[arg(long)]
    pub router: Option<PathBuf>,
    pub data: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub enc: EncoderArgs,
}

// The `train-verifier` subcommand's arguments.
#[derive(Debug, clap::Args)]
pub struct TrainVerifierArgs {
    /// The artifact to add the verifier to (only its `verifier/` is written).
    #[arg(long)]
    pub router: PathBuf,
    #[arg(required = true)]
    pub data: Vec<PathBuf>,
    #[command(flatten)]
    pub opts: VerifierOpts,
    #[arg(long)]
    pub models: Option<PathBuf>,
    /// The artifact's predictor spec, cross-validated on `data` (`--verifier-cv` folds, `--verifier-seed`)
    /// for the out-of-fold predicted gaps the gap adjustment of cascade routing is fitted on; `none`
    /// skips the adjustment (the verifier then has plain thresholds only).
    #[arg(long, default_value = DEFAULT_PREDICTOR)]
    pub gap_predictor: String,
    #[command(flatten)]
    pub enc: EncoderArgs,
}

/// How a verifier is trained (shared by `train`, `train-verifier` and `eval`).
#[derive(Debug, Clone, clap::Args)]
pub struct VerifierOpts {
    /// Verifier feature groups: hand, answer (static embedding of the answer), prompt, pq (the router's
    /// predicted quality, stacked out-of-fold). `eval` cross-validates each given spec; `FEATURES@LAMBDA`
    /// sets the L2 penalty.
    #[arg(long = "verifier", default_values_t = [format!("{DEFAULT_FEATURES}@{DEFAULT_LAMBDA}")])]
    pub verifier: Vec<String>,
    /// Folds of the out-of-fold scores that calibrate the verifier's escalation thresholds.
    #[arg(long = "verifier-cv", default_value_t = 5)]
    pub verifier_cv: usize,
    #[arg(long = "verifier-seed", default_value_t = 1)]
    pub verifier_seed: u64,
}

/// `FEATURES@LAMBDA` (lambda optional).
pub fn parse_verifier_spec(spec: &str) -> anyhow::Result<(FeatureSet, f64)> {
    let (f, l) = match spec.split_once('@') {
        Some((f, l)) => (
            f,
            l.parse::<f64>()
                .with_context(|| format!("verifier spec {spec:?}: lambda"))?,
        ),
        None => (spec, DEFAULT_LAMBDA),
    };
    Ok((parse_features(f).map_err(anyhow::Error::msg)?, l))
}

/// The static embedder of `dir/fast`, with the sha256 of the model.onnx it derives from.
pub fn artifact_embedder(
    dir: &Path,
    enc: &EncoderArgs,
) -> anyhow::Result<(String, StaticEmbedder)> {
    let fast = dir.join(artifact::FAST_DIR);
    load_static_embedder(&fast, &enc.asset_paths()).with_context(|| {
        format!(
            "loading the static embedder of {} (the verifier embeds with the artifact's fast path)",
            fast.display()
        )
    })
}

/// Trains the first verifier spec of `opts` on `table`'s answers and writes it to `artifact/verifier`.
/// `pq` are out-of-fold router predictions (`[row][table model]`) for the stacked feature, if wanted;
/// `router_oof` the router's out-of-fold predictions the gap adjustment is fitted on (none: no
/// adjustment).
pub fn train_and_save(
    artifact_dir: &Path,
    table: &Table,
    prices: &Prices,
    opts: &VerifierOpts,
    pq: Option<&[Vec<f64>]>,
    router_oof: Option<&[Vec<f64>]>,
    enc: &EncoderArgs,
) -> anyhow::Result<()> {
    let spec = opts
        .verifier
        .first()
        .map_or(DEFAULT_FEATURES, String::as_str);
    let (set, lambda) = parse_verifier_spec(spec)?;
    anyhow::ensure!(
        !set.predicted_quality || pq.is_some(),
        "the verifier's pq feature needs out-of-fold router predictions (train with --cv)"
    );
    let (sha, embedder) = if set.needs_embedder() {
        let (sha, e) = artifact_embedder(artifact_dir, enc)?;
        (Some(sha), Some(Arc::new(e)))
    } else {
        (None, None)
    };
    let t = std::time::Instant::now();
    let a = answers(table, &set, embedder.as_deref(), pq)?;
    anyhow::ensure!(
        !a.row.is_empty(),
        "no rows with `responses` and scores: nothing to train a verifier on"
    );
    let fold = fold_of(table.len(), opts.verifier_cv, opts.verifier_seed);
    let k = opts.verifier_cv.clamp(2, table.len().max(2));
    let oof = oof_scores(&a, &fold, k, lambda);
    let auc = auc(&oof, &a.label);
    let gap = router_oof.and_then(|r| verifier::fit_gap(table, prices, &a, &oof, r));
    let mut training = serde_json::json!({
        "answers": a.row.len(),
        "rows": table.len(),
        "features": set.name(),
        "lambda": lambda,
        "oof_auc": auc,
        "folds": k,
        "seed": opts.verifier_seed,
    });
    if let Some(g) = &gap {
        training["gap_adjustment"] = serde_json::json!({
            "fitted_on": "the router's and the verifier's out-of-fold scores of the pair's rows",
            "rows": g.adjustment.rows,
            "mean_gain": g.mean_gain,
        });
    }
    let v = verifier::train_verifier(
        &a,
        set,
        lambda,
        Some(&oof),
        embedder,
        sha,
        training,
        gap.as_ref(),
    )?;
    let dir = artifact_dir.join(VERIFIER_DIR);
    verifier::save_verifier(&dir, &v)?;
    eprintln!(
        "wrote the verifier ({}, {} answers, out-of-fold AUC {auc:.3}) to {} in {:.1?}",
        set.name(),
        a.row.len(),
        dir.display(),
        t.elapsed()
    );
    match (&gap, router_oof) {
        (Some(g), _) => eprintln!(
            "gap adjustment for {} -> {} on {} rows: k = {:.4} logit per unit of gap, gap mean {:.4}",
            g.adjustment.weak,
            g.adjustment.strong,
            g.adjustment.rows,
            g.adjustment.gap_weight,
            g.adjustment.gap_mean
        ),
        (None, Some(_)) => eprintln!(
            "no gap adjustment: no strong/weak pair with answers, or the stacker's verifier weight is \
             not negative"
        ),
        (None, None) => {}
    }
    Ok(())
}

/// The router's out-of-fold predictions (`[row][table model]`) of predictor `spec` on `table`, under the
/// folds of `eval --cv` (`folds`, `seed`): what the gap adjustment is fitted on.
pub fn router_oof(
    table: &Table,
    emb: ndarray::ArrayView2<'_, f32>,
    spec: &str,
    folds: usize,
    seed: u64,
) -> anyhow::Result<Vec<Vec<f64>>> {
    let cand = parse_candidate(spec)?;
    let t = std::time::Instant::now();
    let mut preds = eval::cross_validate(table, emb, &[cand], folds, seed, |m| eprintln!("{m}"));
    eprintln!(
        "out-of-fold router predictions ({folds} folds) for the gap adjustment in {:.1?}",
        t.elapsed()
    );
    preds.pop().context("no predictions")
}

/// Area under the ROC curve of `score` for binary `label` (ties count half).
pub fn auc(score: &[f64], label: &[f64]) -> f64 {
    let mut idx: Vec<usize> = (0..score.len()).collect();
    idx.sort_by(|&a, &b| score[a].total_cmp(&score[b]));
    let (mut rank_sum, mut pos) = (0.0, 0.0);
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && score[idx[j + 1]] == score[idx[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            if label[k] >= 0.5 {
                rank_sum += rank;
                pos += 1.0;
            }
        }
        i = j + 1;
    }
    let neg = score.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return 0.5;
    }
    (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg)
}

pub(super) fn train_verifier_cmd(args: TrainVerifierArgs) -> anyhow::Result<()> {
    let TrainVerifierArgs {
        router,
        data,
        opts,
        models,
        gap_predictor,
        enc,
    } = args;
    let prices = data::Prices::load(&super::inputs::prices_path(models.as_deref(), &data)?)?;
    // Refuse a directory that is not an artifact: the verifier belongs to one.
    let manifest = artifact::read_manifest(&router)
        .with_context(|| format!("{} is not a router artifact", router.display()))?;
    if gap_predictor == "none" {
        let table = Table::new(data::load_many(&data)?, &prices)?;
        return train_and_save(&router, &table, &prices, &opts, None, None, &enc);
    }
    // The gap adjustment needs predicted gaps the verifier's rows were not trained on: the artifact's
    // predictor family cross-validated on these rows (the artifact itself has seen them).
    let cand = parse_candidate(&gap_predictor)?;
    if let Some(trained) = manifest.training.get("predictor").and_then(|p| p.as_str())
        && trained != cand.name()
    {
        eprintln!(
            "warning: the artifact's predictor is {trained:?}, the gap adjustment cross-validates \
             {:?} (--gap-predictor)",
            cand.name()
        );
    }
    let encoder = enc.load()?;
    let (rows, emb) = load_embedded(&encoder, &data)?;
    let table = Table::new(rows, &prices)?;
    let oof = router_oof(
        &table,
        emb.view(),
        &gap_predictor,
        opts.verifier_cv,
        opts.verifier_seed,
    )?;
    train_and_save(&router, &table, &prices, &opts, None, Some(&oof), &enc)
}

pub(super) fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let VerifyArgs {
        router,
        data,
        out,
        enc,
    } = args;
    let dir = router.unwrap_or_else(default_artifact_dir);
    let r = load_router(&dir, &enc, true)?;
    let v = r.verifier().with_context(|| {
        format!(
            "{} has no verifier (no {VERIFIER_DIR}/): add one with `routemesh router train-verifier \
             --router {} DATA.jsonl`",
            dir.display(),
            dir.display()
        )
    })?;
    let file = std::fs::File::open(&data).with_context(|| format!("reading {}", data.display()))?;
    let mut text = String::new();
    let mut n = 0;
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", data.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let row: data::Row = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: not a data row", data.display(), i + 1))?;
        let mut accept = serde_json::Map::new();
        if let Some(responses) = &row.responses {
            let predicted = if v.manifest().features.predicted_quality {
                Some(r.predict(&row.prompt)?)
            } else {
                None
            };
            for (model, answer) in responses {
                let Some(answer) = answer else { continue };
                let pq = predicted
                    .as_ref()
                    .and_then(|p| p.iter().find(|(m, _)| m == model).map(|(_, q)| *q));
                let s = v
                    .score(&VerifyInput {
                        model,
                        prompt: &row.prompt,
                        answer,
                        predicted_quality: pq,
                    })
                    .with_context(|| format!("{}:{}", data.display(), i + 1))?;
                accept.insert(model.clone(), serde_json::Value::from(s));
            }
        }
        text.push_str(&serde_json::to_string(
            &serde_json::json!({"id": row.id, "accept": accept}),
        )?);
        text.push('\n');
        n += 1;
    }
    std::fs::write(&out, text).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("wrote {n} rows of {} scores to {}", v.id(), out.display());
    Ok(())
}

/// The cascade section of `eval --cv`: for every strong/weak pair with recorded answers, the learned
/// verifier(s) of `opts`, the reference verifier and prompt-only routing (`routing_pred`, the first
/// predictor's out-of-fold predictions), all on the same folds.
#[allow(clippy::too_many_arguments)]
pub(super) fn cascade_eval(
    table: &Table,
    groups: &[eval::Group],
    routing_pred: &[Vec<f64>],
    folds: usize,
    seed: u64,
    opts: &VerifierOpts,
    embedder_dir: &Path,
    enc: &EncoderArgs,
    encoder: &Encoder,
) -> anyhow::Result<String> {
    let mut out = String::new();
    let fold = fold_of(table.len(), folds, seed);
    let k = folds.clamp(2, table.len().max(2));
    let mut embedder: Option<Arc<StaticEmbedder>> = None;
    for g in groups {
        let Some((s, w)) = g.pair else { continue };
        let (js, jw) = (g.models[s], g.models[w]);
        let (ms, mw) = (&table.models[js], &table.models[jw]);
        let rows: Vec<usize> = g
            .rows
            .iter()
            .copied()
            .filter(|&i| {
                let r = &table.rows[i];
                r.response(ms).is_some() && r.response(mw).is_some()
            })
            .collect();
        if rows.len() < 2 * k {
            continue;
        }
        // Only this pair's rows: the verifier trains on their answers (both models').
        let sub = Table {
            models: table.models.clone(),
            rows: rows.iter().map(|&i| table.rows[i].clone()).collect(),
            quality: rows.iter().map(|&i| table.quality[i].clone()).collect(),
            cost: rows.iter().map(|&i| table.cost[i].clone()).collect(),
        };
        let sub_fold: Vec<usize> = rows.iter().map(|&i| fold[i]).collect();
        let sub_pred: Vec<Vec<f64>> = rows.iter().map(|&i| routing_pred[i].clone()).collect();
        let p = PairRows::of(table, &rows, js, jw);
        let routing: Vec<f64> = sub_pred.iter().map(|r| r[js] - r[jw]).collect();
        let weak_of = |a: &Answers, scores: &[f64]| -> Vec<f64> {
            let mut v = vec![0.5; rows.len()];
            for (kk, (&r, &m)) in a.row.iter().zip(&a.model).enumerate() {
                if a.models[m] == *mw {
                    v[r] = scores[kk];
                }
            }
            v
        };
        // Every verifier spec, the first one being "the" verifier of the table.
        let mut variants: Vec<(String, Vec<f64>)> = Vec::new();
        for spec in &opts.verifier {
            let (set, lambda) = parse_verifier_spec(spec)?;
            if set.needs_embedder() && embedder.is_none() {
                embedder = Some(Arc::new(artifact_embedder(embedder_dir, enc)?.1));
            }
            let a = answers(&sub, &set, embedder.as_deref(), Some(&sub_pred))?;
            let oof = oof_scores(&a, &sub_fold, k, lambda);
            let weak = weak_of(&a, &oof);
            let weak_labels: Vec<f64> = p.q_weak.clone();
            variants.push((
                format!(
                    "{}@{lambda} (AUC all {:.3}, weak {:.3})",
                    set.name(),
                    auc(&oof, &a.label),
                    auc(&weak, &weak_labels)
                ),
                weak,
            ));
        }
        let reference = reference_oof(&sub, mw, &sub_fold, k, encoder)?;
        let (combined, combined_direct) =
            verifier::cascade_routing(&p, &routing, &variants[0].1, &sub_fold, k);
        let serving = verifier::serving_form(&p, &routing, &variants[0].1, &sub_fold, k);
        let scores = CascadeScores {
            routing: routing.clone(),
            cascade: variants[0].1.iter().map(|v| -v).collect(),
            reference: reference.iter().map(|v| -v).collect(),
            combined,
            combined_direct,
            serving,
        };
        let boot = 200;
        let lines = verifier::cascade_table(&p, &scores, boot, seed);
        use std::fmt::Write;
        let _ = write!(out, "\n######## {} ", g.name(table));
        out.push_str(&verifier::format_cascade(&p, &lines, boot));
        let _ = writeln!(out, "verifier specs (cascade APGR, out-of-fold):");
        for (name, weak) in &variants {
            let _ = writeln!(
                out,
                "  {:50} {:.3}",
                name,
                verifier::cascade_apgr(weak, &p.q_strong, &p.q_weak)
            );
        }
        let _ = writeln!(
            out,
            "  {:50} {:.3}",
            "reference (ridge, MiniLM(prompt+answer) + 4 hand)",
            verifier::cascade_apgr(&reference, &p.q_strong, &p.q_weak)
        );
    }
    Ok(out)
}

/// The cascade section of `eval --router`: a trained artifact's own verifier (and its gap adjustment)
/// on rows with both models' answers, next to the artifact's routing, on the same rows. In-sample for
/// rows the artifact was trained on, like the routing numbers beside it.
pub(super) fn artifact_cascade_eval(
    table: &Table,
    groups: &[eval::Group],
    pred: &[Vec<f64>],
    router: &routemesh_router::Router,
) -> anyhow::Result<String> {
    use std::fmt::Write;
    let Some(v) = router.verifier() else {
        return Ok(String::new());
    };
    let mut out = String::new();
    for g in groups {
        let Some((s, w)) = g.pair else { continue };
        let (js, jw) = (g.models[s], g.models[w]);
        let (ms, mw) = (&table.models[js], &table.models[jw]);
        let rows: Vec<usize> = g
            .rows
            .iter()
            .copied()
            .filter(|&i| table.rows[i].response(mw).is_some())
            .collect();
        if rows.is_empty() {
            continue;
        }
        let p = PairRows::of(table, &rows, js, jw);
        let gap: Vec<f64> = rows.iter().map(|&i| pred[i][js] - pred[i][jw]).collect();
        let mut plain = Vec::with_capacity(rows.len());
        let mut adjusted = Vec::with_capacity(rows.len());
        for (k, &i) in rows.iter().enumerate() {
            let row = &table.rows[i];
            let score = v.score(&VerifyInput {
                model: mw,
                prompt: &row.prompt,
                answer: row.response(mw).unwrap_or_default(),
                predicted_quality: Some(pred[i][jw]),
            })?;
            plain.push(-score);
            adjusted.push(-v.adjusted_score(score, gap[k]));
        }
        let none = vec![f64::NEG_INFINITY; rows.len()];
        let all: Vec<usize> = (0..rows.len()).collect();
        let n = rows.len() as f64;
        let _ = writeln!(
            out,
            "
== cascade of {} ({mw} first, then {ms}), {} rows with its answer; verifier {}; cost per request in USD (weak only {:.6}, strong only {:.6})",
            g.name(table),
            rows.len(),
            v.id(),
            p.cost_weak.iter().sum::<f64>() / n,
            p.cost_strong.iter().sum::<f64>() / n,
        );
        let _ = writeln!(
            out,
            "{:52}{:>7}{:>8}{:>11}",
            "policy", "APGR", "CPT50", "cost@50"
        );
        for (name, escalate, cascade) in [
            ("routing (the artifact's predicted gap)", &gap, false),
            ("cascade, the artifact's verifier", &plain, true),
            ("cascade routing, gap-adjusted verifier", &adjusted, true),
        ] {
            let c = verifier::curve(&p, &all, &none, escalate, cascade);
            let _ = writeln!(
                out,
                "{:52}{:>7.3}{:>8}{:>11.6}",
                name,
                c.apgr,
                c.cpt50.map_or("-".into(), |x| format!("{x:.1}%")),
                c.cost50
            );
        }
    }
    Ok(out)
}

/// The reference verifier of issue 17, out-of-fold: ridge on the encoder embedding of prompt + the weak
/// model's answer plus length, final marker, truncation and wrong-annotation count; trained on the weak
/// model's answers. The best of three penalties is reported (in its favour).
fn reference_oof(
    sub: &Table,
    weak: &str,
    fold: &[usize],
    k: usize,
    encoder: &Encoder,
) -> anyhow::Result<Vec<f64>> {
    let n = sub.rows.len();
    let texts: Vec<String> = sub
        .rows
        .iter()
        .map(|r| format!("{}\n{}", r.prompt, r.response(weak).unwrap_or("")))
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let emb = embed::embed_cached(encoder, &refs, Some(&embed::default_cache_dir()), |_| {})?;
    let d = emb.ncols() + 4;
    let mut x = ndarray::Array2::<f64>::zeros((n, d));
    for (i, r) in sub.rows.iter().enumerate() {
        for c in 0..emb.ncols() {
            x[[i, c]] = f64::from(emb[[i, c]]);
        }
        let h = verifier::reference_hand(&r.prompt, r.response(weak).unwrap_or(""));
        for (c, v) in h.iter().enumerate() {
            x[[i, emb.ncols() + c]] = *v;
        }
    }
    let jw = sub
        .model_index(weak)
        .context("weak model not in the table")?;
    let y: Vec<f64> = (0..n).map(|i| sub.quality[i][jw].unwrap_or(0.0)).collect();
    let mut best: Option<(f64, Vec<f64>)> = None;
    for lambda in [0.3, 1.0, 3.0] {
        let mut s = vec![0.5; n];
        for f in 0..k {
            let tr: Vec<usize> = (0..n).filter(|&i| fold[i] != f).collect();
            let te: Vec<usize> = (0..n).filter(|&i| fold[i] == f).collect();
            if tr.is_empty() || te.is_empty() {
                continue;
            }
            let xt = x.select(ndarray::Axis(0), &tr);
            let yt: Vec<f64> = tr.iter().map(|&i| y[i]).collect();
            let (w, b) = verifier::fit_ridge(&xt, &yt, lambda);
            for &i in &te {
                s[i] = (b + x.row(i).dot(&w)).clamp(0.0, 1.0);
            }
        }
        let qs: Vec<f64> = (0..n)
            .map(|i| {
                sub.rows[i]
                    .scores
                    .iter()
                    .find(|(m, _)| m.as_str() != weak)
                    .map_or(0.0, |(_, q)| *q)
            })
            .collect();
        let apgr = verifier::cascade_apgr(&s, &qs, &y);
        if best.as_ref().is_none_or(|(a, _)| apgr > *a) {
            best = Some((apgr, s));
        }
    }
    best.map(|(_, s)| s).context("no reference fit")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// The default artifact, if it has a verifier and the tokenizer is here (else says why).
    fn default_with_verifier() -> Option<PathBuf> {
        let dir = default_artifact_dir();
        if !dir.join(VERIFIER_DIR).join("manifest.json").is_file() {
            eprintln!("skipping: the default artifact has no verifier");
            return None;
        }
        if !routemesh_router::encoder::AssetPaths::from_env()
            .tokenizer
            .is_file()
        {
            eprintln!("skipping: no tokenizer.json (ROUTEMESH_ASSETS)");
            return None;
        }
        Some(dir)
    }

    fn enc() -> EncoderArgs {
        EncoderArgs {
            assets: None,
            threads: 1,
            max_len: 128,
            keep_tail: 64,
        }
    }

    #[test]
    fn verify_writes_one_line_per_row_with_every_answering_model() {
        let Some(dir) = default_with_verifier() else {
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("rows.jsonl");
        let rows = [
            serde_json::json!({"id": "a", "prompt": "What is 3 * 60?", "scores": {"weak": 1.0, "strong": 1.0},
                "responses": {"weak": "3 * 60 = <<3*60=180>>180\n#### 180", "strong": "180", "unseen-model": "It is 18"}}),
            serde_json::json!({"id": "b", "prompt": "No answers here", "scores": {"weak": 0.0}}),
            serde_json::json!({"id": "c", "prompt": "2+2?", "scores": {"weak": 0.0},
                "responses": {"weak": "<<2+2=5>>5", "strong": null}}),
        ];
        let text: String = rows.iter().map(|r| format!("{r}\n\n")).collect();
        std::fs::write(&data, text).unwrap();
        let out = tmp.path().join("pred.jsonl");
        verify(VerifyArgs {
            router: Some(dir.clone()),
            data: data.clone(),
            out: out.clone(),
            enc: enc(),
        })
        .unwrap();
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        let keys = |v: &serde_json::Value| -> Vec<String> {
            v["accept"].as_object().unwrap().keys().cloned().collect()
        };
        assert_eq!(lines[0]["id"], "a");
        assert_eq!(keys(&lines[0]), ["strong", "unseen-model", "weak"]);
        assert!(keys(&lines[1]).is_empty());
        assert_eq!(keys(&lines[2]), ["weak"], "a null response is not scored");
        for l in &lines {
            for (_, p) in l["accept"].as_object().unwrap() {
                assert!((0.0..=1.0).contains(&p.as_f64().unwrap()), "{l}");
            }
        }
        // A wrong annotation and no final marker look worse than a checked, marked answer.
        assert!(lines[0]["accept"]["weak"].as_f64() > lines[2]["accept"]["weak"].as_f64());

        // Malformed input names the file and line.
        std::fs::write(&data, format!("{}\n{{not json\n", rows[0])).unwrap();
        let err = verify(VerifyArgs {
            router: Some(dir),
            data: data.clone(),
            out: out.clone(),
            enc: enc(),
        })
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains(&format!("{}:2", data.display())), "{msg}");
    }

    #[test]
    fn verify_says_when_the_artifact_has_no_verifier() {
        let Some(dir) = default_with_verifier() else {
            return;
        };
        // A copy of the default artifact without verifier/.
        let tmp = tempfile::tempdir().unwrap();
        let copy = tmp.path().join("art");
        for sub in ["", artifact::FAST_DIR] {
            std::fs::create_dir_all(copy.join(sub)).unwrap();
            for e in std::fs::read_dir(dir.join(sub)).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_file() {
                    std::fs::copy(e.path(), copy.join(sub).join(e.file_name())).unwrap();
                }
            }
        }
        let r = load_router(&copy, &enc(), true).unwrap();
        assert!(
            r.verifier().is_none(),
            "an artifact without verifier/ loads as before"
        );
        let data = tmp.path().join("rows.jsonl");
        std::fs::write(
            &data,
            "{\"id\": \"a\", \"prompt\": \"x\", \"scores\": {}}\n",
        )
        .unwrap();
        let err = verify(VerifyArgs {
            router: Some(copy),
            data,
            out: tmp.path().join("out.jsonl"),
            enc: enc(),
        })
        .unwrap_err();
        assert!(err.to_string().contains("has no verifier"), "{err}");
    }

    #[test]
    fn auc_by_hand() {
        assert_eq!(auc(&[0.1, 0.2, 0.3, 0.4], &[0.0, 0.0, 1.0, 1.0]), 1.0);
        assert_eq!(auc(&[0.5; 4], &[0.0, 1.0, 0.0, 1.0]), 0.5);
        assert_eq!(auc(&[0.1, 0.4, 0.35, 0.8], &[0.0, 0.0, 1.0, 1.0]), 0.75);
    }
}
