//! `routemesh router onboard`: add a model to a router artifact (root predictor and fast path) from rows
//! scored for it, without retraining the others; and `eval --onboard-lomo`, the leave-one-model-out
//! evaluation of onboarding.

use std::path::{Path, PathBuf};

use anyhow::Context;
use routemesh_router::artifact::{self, Manifest, OnboardedModel};
use routemesh_router::embed;
use routemesh_router::encoder::{Encoder, EncoderConfig};
use routemesh_router::fast::{self, StaticEmbedder};
use routemesh_router::onboard::{self, OnboardConfig, Similarity};
use routemesh_router::predict::TaskMixture;

use super::inputs::EncoderArgs;
use crate::data;
use crate::onboard_eval::{ArmScore, ModelResult};
use crate::save;

// The `onboard` subcommand's arguments (its help text is the doc comment of `RouterCommand::Onboard`).
#[derive(Debug, clap::Args)]
pub struct OnboardArgs {
    /// The router artifact to add the model to (left untouched; its manifest sets the encoder's
    /// truncation, `--max-len`/`--keep-tail` are not used).
    #[arg(long)]
    pub router: PathBuf,
    /// The model's name (as the data's `scores` spell it).
    #[arg(long)]
    pub model: String,
    /// JSONL rows; those whose `scores` contain the model are used.
    #[arg(long)]
    pub data: PathBuf,
    /// Where to write the updated artifact (not the router's own directory).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace an existing artifact in `--out`.
    #[arg(long)]
    pub force: bool,
    /// Onboarding hyper-parameters over the defaults, `shrink=10,temp=3,ridge=10,append=0,similar=8` (any
    /// subset).
    #[arg(long, default_value = "")]
    pub onboard: String,
    #[command(flatten)]
    pub enc: EncoderArgs,
}

/// `shrink=..,temp=..,ridge=..,append=0|1,similar=..` over the defaults.
pub fn parse_onboard_config(s: &str) -> anyhow::Result<OnboardConfig> {
    let mut c = OnboardConfig::default();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .with_context(|| format!("expected key=value in {part:?}"))?;
        let x: f64 = v
            .parse()
            .with_context(|| format!("{k}={v} is not a number"))?;
        match k {
            "shrink" => c.shrink = x,
            "temp" => c.temperature = x,
            "ridge" => c.mf_ridge = x,
            "append" => c.append_exemplars = x != 0.0,
            "similar" => c.max_similar = x as usize,
            other => anyhow::bail!("unknown onboarding setting {other:?}"),
        }
    }
    Ok(c)
}

pub fn describe(c: &OnboardConfig) -> String {
    format!(
        "shrink={},temp={},ridge={},append={},similar={}",
        c.shrink,
        c.temperature,
        c.mf_ridge,
        u8::from(c.append_exemplars),
        c.max_similar
    )
}

/// `--out` must be a new or empty directory, or (with `--force`) an earlier artifact, and not the source.
/// Returns whether an earlier artifact is to be replaced (removed just before writing, once the new one
/// is ready).
fn check_out(router: &Path, out: &Path, force: bool) -> anyhow::Result<bool> {
    if let (Ok(a), Ok(b)) = (router.canonicalize(), out.canonicalize()) {
        anyhow::ensure!(
            a != b,
            "--out is the router's own directory: write the updated artifact elsewhere"
        );
    }
    let non_empty = std::fs::read_dir(out).is_ok_and(|mut d| d.next().is_some());
    if non_empty {
        anyhow::ensure!(
            force,
            "{} is not empty (pass --force to replace it)",
            out.display()
        );
        anyhow::ensure!(
            out.join(artifact::MANIFEST).is_file(),
            "{} is not empty and not a router artifact: refusing to replace it",
            out.display()
        );
    }
    Ok(non_empty)
}

/// The predictor without `name` if it was onboarded before (to onboard it again from these rows); a
/// trained model cannot be onboarded over.
fn without_earlier(
    manifest: &Manifest,
    mixture: TaskMixture,
    name: &str,
) -> anyhow::Result<TaskMixture> {
    if !mixture.models.iter().any(|m| m == name) {
        return Ok(mixture);
    }
    anyhow::ensure!(
        manifest.onboarded.contains_key(name),
        "{name} is a trained model of this router: onboarding it would discard what training learned"
    );
    Ok(onboard::without_model(&mixture, name)?)
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Writes the onboarded predictor of one path (root or `fast/`) with its manifest updated.
fn write_path(
    src: &Path,
    out: &Path,
    mut manifest: Manifest,
    predictor: &TaskMixture,
    sim: &Similarity,
    record: &OnboardedModel,
    name: &str,
) -> anyhow::Result<()> {
    manifest.pools = sim.join_pool(&manifest.pools, name);
    manifest.onboarded.insert(name.to_string(), record.clone());
    save::save_updated(src, out, manifest, predictor)?;
    // What the gateway will do with it: it must load.
    artifact::load(out).with_context(|| format!("re-reading {}", out.display()))?;
    Ok(())
}

pub(super) fn run(args: OnboardArgs) -> anyhow::Result<()> {
    let OnboardArgs {
        router,
        model: name,
        data: data_path,
        out,
        force,
        onboard: settings,
        enc,
    } = args;
    let cfg = parse_onboard_config(&settings)?;
    let replace = check_out(&router, &out, force)?;
    let (manifest, mixture) = artifact::load_task_mixture(&router)
        .with_context(|| format!("loading {}", router.display()))?;
    let base = without_earlier(&manifest, mixture, &name)?;
    let rows: Vec<data::Row> = data::load_jsonl(&data_path)?
        .into_iter()
        .filter(|r| r.scores.contains_key(&name))
        .collect();
    anyhow::ensure!(
        !rows.is_empty(),
        "no row of {} scores {name}",
        data_path.display()
    );
    let prompts: Vec<&str> = rows.iter().map(|r| r.prompt.as_str()).collect();
    let scores: Vec<f64> = rows
        .iter()
        .filter_map(|r| r.scores.get(&name))
        .copied()
        .collect();

    let encoder = Encoder::load(&EncoderConfig {
        assets: enc.asset_paths(),
        max_len: manifest.encoder.max_len,
        keep_tail: manifest.encoder.keep_tail,
        threads: enc.threads,
        sessions: 1,
    })?;
    anyhow::ensure!(
        encoder.model_sha256() == manifest.encoder.model_sha256,
        "the encoder's model.onnx is not the one the router was trained with"
    );
    // Not cached: a model's scored rows are few, and a cache would be written wherever this runs.
    let emb = embed::embed_cached(&encoder, &prompts, None, |_| {})?;
    // Similar models are chosen among the trained ones only: onboarded models are estimates themselves.
    let candidates: Vec<usize> = (0..base.models.len())
        .filter(|&j| !manifest.onboarded.contains_key(&base.models[j]))
        .collect();
    let pools: Vec<Vec<String>> = manifest
        .pools
        .iter()
        .map(|p| p.iter().filter(|m| **m != name).cloned().collect())
        .collect();
    let sim = onboard::similarity(&base, emb.view(), &scores, &candidates, &pools, &cfg)?;
    let record = OnboardedModel {
        scored_prompts: scores.len(),
        similar_to: sim.similar_to(&base.models),
        shrink: cfg.shrink,
    };
    let root = onboard::onboard(&base, &name, emb.view(), &scores, &sim, &cfg)?;
    let root_models = base.models.clone();
    if replace {
        std::fs::remove_dir_all(&out).with_context(|| format!("removing {}", out.display()))?;
    }
    write_path(&router, &out, manifest, &root, &sim, &record, &name)?;

    let fast_src = router.join(artifact::FAST_DIR);
    if fast_src.join(artifact::MANIFEST).is_file() {
        let (fm, fmix) = artifact::load_task_mixture(&fast_src)?;
        let fbase = without_earlier(&fm, fmix, &name)?;
        // The same similarity on both paths: one answer to "which models is it like".
        anyhow::ensure!(
            fbase.models == root_models,
            "the fast path's models differ from the root's"
        );
        let (codes, scales, weights) = artifact::load_static_table(&fast_src, &fm)?;
        let embedder = StaticEmbedder::from_quantized(
            fast::plain_tokenizer(&enc.asset_paths().tokenizer)?,
            codes,
            scales,
            weights,
            fm.encoder.max_len,
        )?;
        let femb = embedder.embed(&prompts)?;
        let fast = onboard::onboard(&fbase, &name, femb.view(), &scores, &sim, &cfg)?;
        write_path(
            &fast_src,
            &out.join(artifact::FAST_DIR),
            fm,
            &fast,
            &sim,
            &record,
            &name,
        )?;
    }
    let verifier = router.join(routemesh_router::verify::VERIFIER_DIR);
    if verifier.is_dir() {
        copy_dir(&verifier, &out.join(routemesh_router::verify::VERIFIER_DIR))?;
    }
    let mut weights: Vec<(f64, &str)> = sim
        .weights
        .iter()
        .zip(&root_models)
        .filter(|(w, _)| **w > 0.0)
        .map(|(w, m)| (*w, m.as_str()))
        .collect();
    weights.sort_by(|a, b| b.0.total_cmp(&a.0));
    let weights: Vec<String> = weights.iter().map(|(w, m)| format!("{m} {w:.2}")).collect();
    eprintln!(
        "onboarded {name} from {} scored prompts ({}), similar to: {}",
        scores.len(),
        describe(&cfg),
        weights.join(", ")
    );
    eprintln!("wrote {}", out.display());
    Ok(())
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 { f64::NAN } else { s / n as f64 }
}

fn cost(c: Option<f64>) -> String {
    c.map_or("never".into(), |v| format!("{v:.3}x"))
}

/// The leave-one-model-out table of one onboarding setting: per budget, the mean over held-out models of
/// ΔAIQ and Δcost-to-match against fully trained, and the row of `focus` (e.g. the best single model).
pub fn lomo_table(
    results: &[ModelResult],
    budgets: &[usize],
    config: usize,
    focus: &str,
) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:>8} {:>10} {:>12} {:>6} | {:>10} {:>12}",
        "budget", "mean ΔAIQ", "mean Δcost", "never", "focus AIQ", "focus cost"
    );
    let focused = results.iter().find(|r| r.model == focus);
    let line = |o: &mut String, label: &str, arm: &dyn Fn(&ModelResult) -> &ArmScore| {
        let d_aiq = mean(results.iter().map(|r| arm(r).aiq - r.full.aiq));
        let both: Vec<f64> = results
            .iter()
            .filter_map(|r| Some(arm(r).cost_to_match? - r.full.cost_to_match?))
            .collect();
        let never: usize = results.iter().map(|r| arm(r).never).sum();
        let (fa, fc) = focused.map_or((f64::NAN, None), |r| (arm(r).aiq, arm(r).cost_to_match));
        let _ = writeln!(
            o,
            "{label:>8} {d_aiq:>+10.4} {:>+11.3}x {never:>6} | {fa:>10.3} {:>12}",
            mean(both.into_iter()),
            cost(fc)
        );
    };
    line(&mut o, "full", &|r| &r.full);
    line(&mut o, "prior", &|r| &r.prior);
    for (k, margin) in crate::onboard_eval::STAND_IN_MARGINS.iter().enumerate() {
        line(&mut o, &format!("stand{margin:.2}"), &|r| &r.stand_in[k]);
    }
    for (b, budget) in budgets.iter().enumerate() {
        line(&mut o, &budget.to_string(), &|r| &r.onboarded[config][b]);
    }
    // The mean over held-out models within 0.01 AIQ and 0.05x (at that budget and every larger one).
    let mean_ok = |b: usize| {
        let d_aiq = mean(
            results
                .iter()
                .map(|r| r.onboarded[config][b].aiq - r.full.aiq),
        );
        let d_cost =
            mean(results.iter().filter_map(|r| {
                Some(r.onboarded[config][b].cost_to_match? - r.full.cost_to_match?)
            }));
        let never = results
            .iter()
            .any(|r| r.onboarded[config][b].cost_to_match.is_none());
        d_aiq >= -0.01 && d_cost <= 0.05 && !never
    };
    let from = (0..budgets.len()).find(|&b| (b..budgets.len()).all(mean_ok));
    let _ = writeln!(
        o,
        "mean within 0.01 AIQ and 0.05x cost-to-match of fully trained from {} scored prompts",
        from.map_or(
            format!("more than {}", budgets.last().copied().unwrap_or(0)),
            |b| { budgets[b].to_string() }
        )
    );
    o
}

/// Whether `s` is within `aiq_tol` AIQ and `cost_tol` cost-to-match of `full` (a cost that never matches
/// is within only if fully trained never matches either).
fn within(s: &ArmScore, full: &ArmScore, aiq_tol: f64, cost_tol: f64) -> bool {
    let cost_ok = match (s.cost_to_match, full.cost_to_match) {
        (Some(a), Some(f)) => a - f <= cost_tol,
        (_, None) => true,
        (None, Some(_)) => false,
    };
    full.aiq - s.aiq <= aiq_tol && cost_ok
}

/// Per held-out model: ΔAIQ / Δcost-to-match against fully trained at every budget, and the smallest
/// budget from which onboarding stays within `aiq_tol` AIQ and `cost_tol` cost-to-match (at that budget
/// and every larger one).
pub fn per_model_table(
    results: &[ModelResult],
    budgets: &[usize],
    config: usize,
    aiq_tol: f64,
    cost_tol: f64,
) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = write!(o, "{:34} {:>15}", "held-out model", "prior");
    for b in budgets {
        let _ = write!(o, " {b:>15}");
    }
    let _ = writeln!(o, "  within from");
    let cell = |s: &ArmScore, f: &ArmScore| {
        let cost = match (s.cost_to_match, f.cost_to_match) {
            (Some(a), Some(b)) => format!("{:+.2}", a - b),
            (None, _) => "never".into(),
            (Some(_), None) => "-".into(),
        };
        format!("{:+.3}/{cost}", s.aiq - f.aiq)
    };
    for r in results {
        let _ = write!(o, "{:34} {:>15}", r.model, cell(&r.prior, &r.full));
        for s in &r.onboarded[config] {
            let _ = write!(o, " {:>15}", cell(s, &r.full));
        }
        let ok = |b: usize| within(&r.onboarded[config][b], &r.full, aiq_tol, cost_tol);
        let from = (0..budgets.len()).find(|&b| (b..budgets.len()).all(ok));
        let _ = writeln!(
            o,
            "  {}",
            from.map_or(format!("> {}", budgets.last().copied().unwrap_or(0)), |b| {
                budgets[b].to_string()
            })
        );
    }
    o
}

/// `eval --onboard-lomo`: the leave-one-model-out comparison over the largest pool, one table per
/// onboarding setting.
#[allow(clippy::too_many_arguments)]
pub(super) fn run_lomo(
    table: &data::Table,
    emb: ndarray::ArrayView2<'_, f32>,
    prices: &data::Prices,
    predictor: &str,
    settings: &[String],
    budgets: &[usize],
    folds: usize,
    seed: u64,
    repeats: usize,
) -> anyhow::Result<()> {
    let crate::eval::Candidate::Spec(crate::fit::PredictorSpec::Task(spec)) =
        super::spec::parse_candidate(predictor)?
    else {
        anyhow::bail!("onboarding needs a task-mixture predictor, not {predictor}")
    };
    let configs = settings
        .iter()
        .map(|s| parse_onboard_config(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let group = crate::eval::groups(table, prices)
        .into_iter()
        .max_by_key(|g| g.models.len())
        .context("no scored rows")?;
    let setup = crate::onboard_eval::LomoSetup {
        spec: &spec,
        configs: &configs,
        budgets,
        folds,
        seed,
        repeats,
    };
    let t = std::time::Instant::now();
    let results =
        crate::onboard_eval::leave_one_model_out(table, emb, &group, prices, &setup, |m| {
            eprintln!("{m}")
        })?;
    // The best single model of the pool (on all its rows): the one whose onboarding matters most.
    let report = crate::eval::group_report(
        table,
        &group,
        &vec![vec![0.0; table.models.len()]; table.len()],
    );
    let focus = report.multi.best_model.clone();
    println!(
        "leave-one-model-out onboarding: {} ({} rows), {folds}-fold CV seed {seed}, {repeats} draws of \
         the scored rows per budget, predictor {predictor}, {:.0?}",
        group.name(table),
        group.rows.len(),
        t.elapsed()
    );
    println!(
        "deltas are onboarded minus fully trained, mean over the {} held-out models (never: draws \
         that never match the best single model, left out of the mean); focus = {focus}",
        results.len()
    );
    for (c, cfg) in configs.iter().enumerate() {
        println!("\n== onboarding {}", describe(cfg));
        print!("{}", lomo_table(&results, budgets, c, &focus));
        println!(
            "per held-out model, onboarded minus fully trained (ΔAIQ/Δcost-to-match), and the \
             budget from which it stays within 0.01 AIQ and 0.05x:"
        );
        print!("{}", per_model_table(&results, budgets, c, 0.01, 0.05));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn onboarding_settings_parse_over_the_defaults() {
        assert_eq!(parse_onboard_config("").unwrap(), OnboardConfig::default());
        let c = parse_onboard_config("shrink=2, temp=0.5,append=1,similar=2,ridge=3").unwrap();
        assert_eq!(
            (
                c.shrink,
                c.temperature,
                c.append_exemplars,
                c.max_similar,
                c.mf_ridge
            ),
            (2.0, 0.5, true, 2, 3.0)
        );
        assert_eq!(parse_onboard_config(&describe(&c)).unwrap(), c);
        assert!(parse_onboard_config("shrink").is_err());
        assert!(parse_onboard_config("nope=1").is_err());
    }

    #[test]
    fn the_tables_report_deltas_against_fully_trained() {
        let arm = |aiq: f64, cost: Option<f64>| ArmScore {
            aiq,
            cost_to_match: cost,
            never: usize::from(cost.is_none()),
        };
        let results = vec![ModelResult {
            model: "m".into(),
            full: arm(0.65, Some(0.25)),
            prior: arm(0.60, None),
            stand_in: vec![arm(0.64, Some(0.3)); 3],
            onboarded: vec![vec![arm(0.63, Some(0.40)), arm(0.645, Some(0.27))]],
        }];
        let t = lomo_table(&results, &[10, 50], 0, "m");
        assert!(t.contains("-0.0200"), "{t}");
        assert!(t.contains("stand0.05") && t.contains("-0.0100"), "{t}");
        assert!(t.contains("from 50 scored prompts"), "{t}");
        let p = per_model_table(&results, &[10, 50], 0, 0.01, 0.05);
        assert!(
            p.contains("-0.050/never") && p.contains("-0.005/+0.02"),
            "{p}"
        );
        assert!(p.trim_end().ends_with("50"), "{p}");
    }
}
