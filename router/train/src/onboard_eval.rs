//! Leave-one-model-out evaluation of onboarding: for each cross-validation fold and each model M of a
//! pool, train the task mixture on the fold's training rows without M, onboard M from B of those rows
//! scored for it, and score the out-of-fold routing (AIQ, cost to match the best single model) next to
//! M fully trained and M unknown on a fixed tier prior.

use ndarray::ArrayView2;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use routemesh_router::QualityPredictor;
use routemesh_router::names::{ModelCatalog, stand_in_penalty};
use routemesh_router::onboard::{self, OnboardConfig, OnboardError};

use crate::data::{Prices, Table};
use crate::eval::{Group, fold_split, group_report};
use crate::fit::{TaskConfig, TrainSet, select_rows, train_task_mixture};

/// A fixed prior for a model the router does not know: 0.55 up to 9B parameters, 0.80 above (the
/// gateway's tier priors; unknown size counts as large).
pub fn tier_prior(prices: &Prices, model: &str) -> f64 {
    match prices.get(model).ok().and_then(|p| p.params_b) {
        Some(b) if b <= 9.0 => 0.55,
        _ => 0.80,
    }
}

/// Margins of the stand-in arm: the gateway's prior for a model the router does not know (its nearest
/// known models' predictions, less the margin and a size penalty; `routemesh_router::names`).
pub const STAND_IN_MARGINS: [f64; 3] = [0.0, 0.05, 0.10];

/// What one leave-one-model-out run compares.
#[derive(Debug, Clone)]
pub struct LomoSetup<'a> {
    pub spec: &'a TaskConfig,
    pub configs: &'a [OnboardConfig],
    /// Scored prompts of the held-out model to onboard from (each a prefix of one shuffled order of the
    /// fold's training rows, so a larger budget holds the smaller ones' rows).
    pub budgets: &'a [usize],
    pub folds: usize,
    pub seed: u64,
    /// Independent draws of the scored rows per budget (metrics averaged over them: one draw of a few
    /// rows is noisy).
    pub repeats: usize,
}

/// Out-of-fold routing quality of one arm for one held-out model.
#[derive(Debug, Clone, PartialEq)]
pub struct ArmScore {
    pub aiq: f64,
    /// Cost of the cheapest routing that matches the best single model's quality, as a multiple of that
    /// model's cost (`None`: never matched); over repeated draws, the mean of those that matched.
    pub cost_to_match: Option<f64>,
    /// Draws that never matched the best single model.
    pub never: usize,
}

impl ArmScore {
    /// The mean of several draws' scores.
    fn mean_of(draws: &[ArmScore]) -> ArmScore {
        let matched: Vec<f64> = draws.iter().filter_map(|d| d.cost_to_match).collect();
        ArmScore {
            aiq: draws.iter().map(|d| d.aiq).sum::<f64>() / draws.len().max(1) as f64,
            cost_to_match: (!matched.is_empty())
                .then(|| matched.iter().sum::<f64>() / matched.len() as f64),
            never: draws.iter().map(|d| d.never).sum(),
        }
    }
}

/// The arms of one held-out model.
#[derive(Debug, Clone)]
pub struct ModelResult {
    pub model: String,
    pub full: ArmScore,
    pub prior: ArmScore,
    /// The stand-in prior at each of [`STAND_IN_MARGINS`].
    pub stand_in: Vec<ArmScore>,
    /// `[config][budget]`.
    pub onboarded: Vec<Vec<ArmScore>>,
}

fn score(table: &Table, g: &Group, pred: &[Vec<f64>]) -> ArmScore {
    let r = group_report(table, g, pred);
    ArmScore {
        aiq: r.multi.router.aiq,
        cost_to_match: r.multi.router.cost_to_match_best,
        never: usize::from(r.multi.router.cost_to_match_best.is_none()),
    }
}

/// Runs the leave-one-model-out comparison over the models of `group` (its rows only), logging progress.
pub fn leave_one_model_out(
    table: &Table,
    emb: ArrayView2<'_, f32>,
    group: &Group,
    prices: &Prices,
    setup: &LomoSetup<'_>,
    mut log: impl FnMut(&str),
) -> Result<Vec<ModelResult>, OnboardError> {
    let n = table.len();
    let m = table.models.len();
    let mut idx = group.rows.clone();
    idx.shuffle(&mut rand::rngs::StdRng::seed_from_u64(setup.seed));
    let folds = setup.folds.clamp(2, idx.len().max(2));
    let (nc, nb, nr) = (
        setup.configs.len(),
        setup.budgets.len(),
        setup.repeats.max(1),
    );
    let blank = || vec![vec![0.0; m]; n];
    let mut full = blank();
    let held: Vec<usize> = group.models.clone();
    let mut prior = vec![blank(); held.len()];
    let mut stand_in = vec![vec![blank(); STAND_IN_MARGINS.len()]; held.len()];
    // Onboarded arms differ from the prior arm only in the held-out model's column: keep just that,
    // `[held][config][budget][repeat][row]`.
    let mut onb = vec![vec![vec![vec![vec![0.0; n]; nr]; nb]; nc]; held.len()];
    for f in 0..folds {
        let (train, test) = fold_split(&idx, folds, f);
        let tr_emb = select_rows(emb, &train);
        let te_emb = select_rows(emb, &test);
        let tr_src: Vec<String> = train
            .iter()
            .map(|&i| table.rows[i].source.clone())
            .collect();
        let t = std::time::Instant::now();
        let tr_q: Vec<Vec<Option<f64>>> = train.iter().map(|&i| table.quality[i].clone()).collect();
        let all = train_task_mixture(
            &TrainSet {
                models: &table.models,
                emb: tr_emb.view(),
                quality: &tr_q,
                sources: Some(&tr_src),
            },
            setup.spec,
        );
        for (r, p) in test.iter().zip(all.predict(te_emb.view())) {
            full[*r] = p;
        }
        log(&format!(
            "fold {}/{folds}: fully trained in {:.1?}",
            f + 1,
            t.elapsed()
        ));
        for (h, &held_out) in held.iter().enumerate() {
            let t = std::time::Instant::now();
            let keep: Vec<usize> = (0..m).filter(|&j| j != held_out).collect();
            let models: Vec<String> = keep.iter().map(|&j| table.models[j].clone()).collect();
            let q: Vec<Vec<Option<f64>>> = train
                .iter()
                .map(|&i| keep.iter().map(|&j| table.quality[i][j]).collect())
                .collect();
            let base = train_task_mixture(
                &TrainSet {
                    models: &models,
                    emb: tr_emb.view(),
                    quality: &q,
                    sources: Some(&tr_src),
                },
                setup.spec,
            );
            // Back to the table's model order: the base predicts `keep`, an onboarded model comes last.
            let place =
                |rows: Vec<Vec<f64>>, held_q: &dyn Fn(&[f64]) -> f64, out: &mut Vec<Vec<f64>>| {
                    for (r, p) in test.iter().zip(rows) {
                        let mut row = vec![0.0; m];
                        for (k, &j) in keep.iter().enumerate() {
                            row[j] = p[k];
                        }
                        row[held_out] = held_q(&p);
                        out[*r] = row;
                    }
                };
            let base_pred = base.predict(te_emb.view());
            let tier = tier_prior(prices, &table.models[held_out]);
            place(base_pred.clone(), &|_| tier, &mut prior[h]);
            // The gateway's stand-in: the nearest known models by size and family.
            let params = prices
                .get(&table.models[held_out])
                .ok()
                .and_then(|p| p.params_b);
            let names: Vec<&str> = models.iter().map(String::as_str).collect();
            let stands = ModelCatalog::new(&models).nearest(
                &table.models[held_out],
                params,
                params.is_none_or(|b| b > 20.0),
                &names,
            );
            for (k, &margin) in STAND_IN_MARGINS.iter().enumerate() {
                let penalty = stand_in_penalty(&stands, margin);
                let q = |p: &[f64]| {
                    let stood: f64 = stands
                        .iter()
                        .filter_map(|s| {
                            let j = models.iter().position(|m| *m == s.model)?;
                            Some(s.weight * p[j])
                        })
                        .sum();
                    (stood - penalty).clamp(0.0, 1.0)
                };
                place(base_pred.clone(), &q, &mut stand_in[h][k]);
            }
            let candidates: Vec<usize> = (0..models.len()).collect();
            let pools = vec![models.clone()];
            let name = &table.models[held_out];
            let scored: Vec<usize> = (0..train.len())
                .filter(|&r| table.quality[train[r]][held_out].is_some())
                .collect();
            // Per draw, a seeded order of the training rows scored for the held-out model; each budget
            // takes a prefix of it.
            let orders: Vec<Vec<usize>> = (0..nr)
                .map(|repeat| {
                    let mut order = scored.clone();
                    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(
                        setup.seed ^ ((f as u64) << 32) ^ ((repeat as u64) << 16) ^ held_out as u64,
                    ));
                    order
                })
                .collect();
            for (repeat, order) in orders.iter().enumerate() {
                for (c, cfg) in setup.configs.iter().enumerate() {
                    for (b, &budget) in setup.budgets.iter().enumerate() {
                        let rows = &order[..budget.min(order.len())];
                        let e = select_rows(tr_emb.view(), rows);
                        let y: Vec<f64> = rows
                            .iter()
                            .map(|&r| table.quality[train[r]][held_out].unwrap_or(0.0))
                            .collect();
                        let sim =
                            onboard::similarity(&base, e.view(), &y, &candidates, &pools, cfg)?;
                        let added = onboard::onboard(&base, name, e.view(), &y, &sim, cfg)?;
                        let last = models.len();
                        let column = &mut onb[h][c][b][repeat];
                        for (r, p) in test.iter().zip(added.predict(te_emb.view())) {
                            column[*r] = p[last];
                        }
                    }
                }
            }
            log(&format!(
                "fold {}/{folds}: without {} and onboarded in {:.1?}",
                f + 1,
                table.models[held_out],
                t.elapsed()
            ));
        }
    }
    let full_score = score(table, group, &full);
    let mut out = Vec::with_capacity(held.len());
    for (h, &j) in held.iter().enumerate() {
        let mut pred = prior[h].clone();
        let mut onboarded = Vec::with_capacity(nc);
        for per_config in &onb[h] {
            let mut per_budget = Vec::with_capacity(nb);
            for draws in per_config {
                let scores: Vec<ArmScore> = draws
                    .iter()
                    .map(|column| {
                        for &i in &group.rows {
                            pred[i][j] = column[i];
                        }
                        score(table, group, &pred)
                    })
                    .collect();
                per_budget.push(ArmScore::mean_of(&scores));
            }
            onboarded.push(per_budget);
        }
        out.push(ModelResult {
            model: table.models[j].clone(),
            full: full_score.clone(),
            prior: score(table, group, &prior[h]),
            stand_in: stand_in[h].iter().map(|p| score(table, group, p)).collect(),
            onboarded,
        });
    }
    Ok(out)
}
