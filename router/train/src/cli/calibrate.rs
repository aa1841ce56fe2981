//! `routemesh router calibrate` and the calibration `train` records: strong/weak thresholds per share of
//! strong calls (quantiles of the predicted score gap) and the default λ for argmax(quality − λ·cost).
//! `--cascade` is handed to [`super::cascade`] (the gateway cascade's acceptance threshold).

use std::path::PathBuf;

use anyhow::Context;
use routemesh_router::artifact::{self, Calibration, PairCalibration, Threshold};

use super::inputs::{EncoderArgs, load_embedded, load_router, prices_path};
use crate::data;
use crate::eval;
use crate::metrics;
use crate::save;

// The `calibrate` subcommand's arguments (its help text is the doc comment of
// `RouterCommand::Calibrate`).
#[derive(Debug, clap::Args)]
pub struct CalibrateArgs {
    /// Artifact directory (required unless --cascade, which defaults to router/artifacts/default of
    /// this source tree and reads its verifier).
    #[arg(long, required_unless_present = "cascade")]
    pub router: Option<PathBuf>,
    #[arg(required = true)]
    pub data: Vec<PathBuf>,
    #[arg(long)]
    pub models: Option<PathBuf>,
    /// Also calibrate the pair threshold for this share of strong-model calls (0 < S < 1;
    /// repeatable), next to the 10%…90% grid.
    #[arg(long = "strong-share", conflicts_with = "cascade")]
    pub strong_shares: Vec<f64>,
    /// Set the default λ to the one whose routed mean cost per request on this data is closest to
    /// this many USD without exceeding it (instead of "the cheapest λ matching the best model").
    /// With --cascade: the cascade's mean cost per request (the weak call on every request, the
    /// strong call on escalated ones); the largest escalation share within it is taken.
    #[arg(long)]
    pub target_cost: Option<f64>,
    /// Calibrate the gateway cascade's acceptance threshold instead (writes nothing: prints the
    /// `gateway.cascade.accept_threshold` to paste). Scores the weak model's recorded answers
    /// (`responses`) with the artifact's verifier and reports the escalation share, cost per request
    /// and quality the threshold gives on these rows. Rows the verifier was trained on score
    /// in-sample (optimistic): calibrate on held-out rows where you have them.
    #[arg(long)]
    pub cascade: bool,
    /// With --cascade: the share of requests to escalate (0..1; the nearest share the rows allow).
    #[arg(long, requires = "cascade", conflicts_with = "target_cost")]
    pub escalation_share: Option<f64>,
    /// With --cascade: the model answering first (default: of the two models with recorded answers,
    /// the cheaper in models.json).
    #[arg(long, requires = "cascade")]
    pub weak: Option<String>,
    /// With --cascade: the model escalated to (default: the other model with recorded answers).
    #[arg(long, requires = "cascade")]
    pub strong: Option<String>,
    #[command(flatten)]
    pub enc: EncoderArgs,
}

pub(super) fn run(args: CalibrateArgs) -> anyhow::Result<()> {
    let CalibrateArgs {
        router,
        data,
        models,
        strong_shares,
        target_cost,
        cascade,
        escalation_share,
        weak,
        strong,
        enc,
    } = args;
    if cascade {
        return super::cascade::run(super::cascade::CascadeOpts {
            router,
            data,
            models,
            escalation_share,
            target_cost,
            weak,
            strong,
            enc,
        });
    }
    let router = router.context("--router DIR: the artifact whose manifest is recalibrated")?;
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
