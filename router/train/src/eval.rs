//! Evaluation of predictors on routing data: groups of rows sharing a model pool, k-fold cross-validated
//! out-of-fold predictions, and the metrics of each group next to baselines.

use ndarray::ArrayView2;
use rand::SeedableRng;
use rand::seq::SliceRandom;

use crate::data::{Prices, Table};
use crate::fit::{PredictorSpec, TrainSet, select_rows, source_mean_predictions};
use crate::metrics::{self, Report};

/// Rows scored for exactly the same models (one source file's pool, e.g. mix9's nine models).
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// Model indices into the table's model list.
    pub models: Vec<usize>,
    pub rows: Vec<usize>,
    /// (strong, weak) as indices into `models` when the pool is a pair: the pricier model is strong.
    pub pair: Option<(usize, usize)>,
    /// Dataset (source prefix before '/') when the group is one dataset of a pool.
    pub dataset: Option<String>,
}

impl Group {
    pub fn name(&self, table: &Table) -> String {
        let names: Vec<&str> = self
            .models
            .iter()
            .map(|&j| table.models[j].as_str())
            .collect();
        let pool = if names.len() <= 3 {
            names.join(" / ")
        } else {
            format!("{} models", names.len())
        };
        match &self.dataset {
            Some(d) => format!("{d}: {pool}"),
            None => format!("pooled: {pool}"),
        }
    }
}

pub fn groups(table: &Table, prices: &Prices) -> Vec<Group> {
    let mut out: Vec<Group> = Vec::new();
    for (i, q) in table.quality.iter().enumerate() {
        let sig: Vec<usize> = (0..q.len()).filter(|&j| q[j].is_some()).collect();
        if sig.is_empty() {
            continue;
        }
        match out.iter_mut().find(|g| g.models == sig) {
            Some(g) => g.rows.push(i),
            None => out.push(Group {
                models: sig,
                rows: vec![i],
                pair: None,
                dataset: None,
            }),
        }
    }
    for g in &mut out {
        if g.models.len() == 2 {
            let p = |k: usize| {
                prices
                    .total_per_mtok(&table.models[g.models[k]])
                    .unwrap_or(0.0)
            };
            g.pair = Some(if p(0) >= p(1) { (0, 1) } else { (1, 0) });
        }
    }
    out
}

/// The dataset of a row: its source up to the first '/' (`mmlu/anatomy` -> `mmlu`).
pub fn dataset_of(source: &str) -> &str {
    source.split('/').next().unwrap_or(source)
}

/// Pools (see [`groups`]) and, for pools mixing datasets, each dataset on its own (RouteLLM reports MMLU,
/// GSM8K and MT-Bench separately).
pub fn eval_groups(table: &Table, prices: &Prices) -> Vec<Group> {
    let mut out = Vec::new();
    for g in groups(table, prices) {
        let mut names: Vec<&str> = Vec::new();
        for &i in &g.rows {
            let d = dataset_of(&table.rows[i].source);
            if !names.contains(&d) {
                names.push(d);
            }
        }
        out.push(g.clone());
        if names.len() > 1 {
            for d in names {
                let rows = g
                    .rows
                    .iter()
                    .copied()
                    .filter(|&i| dataset_of(&table.rows[i].source) == d)
                    .collect();
                out.push(Group {
                    rows,
                    dataset: Some(d.to_string()),
                    ..g.clone()
                });
            }
        }
    }
    out
}

/// Metrics of `pred` (`[row][table model]`) on one group.
pub fn group_report(table: &Table, g: &Group, pred: &[Vec<f64>]) -> Report {
    let names: Vec<String> = g.models.iter().map(|&j| table.models[j].clone()).collect();
    let pick = |mat: &dyn Fn(usize, usize) -> f64| -> Vec<Vec<f64>> {
        g.rows
            .iter()
            .map(|&i| g.models.iter().map(|&j| mat(i, j)).collect())
            .collect()
    };
    let truth = pick(&|i, j| table.quality[i][j].unwrap_or(0.0));
    let p = pick(&|i, j| pred[i][j]);
    let cost = pick(&|i, j| table.cost[i][j]);
    metrics::evaluate(&names, &truth, &p, &cost, g.pair)
}

/// What cross-validation compares: a trainable predictor or the label-reading per-source baseline.
#[derive(Debug, Clone, PartialEq)]
pub enum Candidate {
    Spec(PredictorSpec),
    SourceMean,
}

impl Candidate {
    pub fn name(&self) -> String {
        match self {
            Self::Spec(s) => s.name(),
            Self::SourceMean => "per-source mean (reads label)".into(),
        }
    }
}

/// Out-of-fold predictions `[row][model]` of every candidate under `folds`-fold CV (rows shuffled with
/// `seed`; the same folds for every candidate, so differences are paired).
pub fn cross_validate(
    table: &Table,
    emb: ArrayView2<'_, f32>,
    candidates: &[Candidate],
    folds: usize,
    seed: u64,
    mut log: impl FnMut(&str),
) -> Vec<Vec<Vec<f64>>> {
    let n = table.len();
    let m = table.models.len();
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    let folds = folds.clamp(2, n.max(2));
    let mut out = vec![vec![vec![0.0; m]; n]; candidates.len()];
    for f in 0..folds {
        let (train, test) = fold_split(&idx, folds, f);
        let tr_emb = select_rows(emb, &train);
        let te_emb = select_rows(emb, &test);
        let tr_q: Vec<Vec<Option<f64>>> = train.iter().map(|&i| table.quality[i].clone()).collect();
        let tr_src: Vec<String> = train
            .iter()
            .map(|&i| table.rows[i].source.clone())
            .collect();
        let data = TrainSet {
            models: &table.models,
            emb: tr_emb.view(),
            quality: &tr_q,
            sources: Some(&tr_src),
        };
        for (c, cand) in candidates.iter().enumerate() {
            let t = std::time::Instant::now();
            let pred = match cand {
                Candidate::Spec(s) => s.train(&data).predict(te_emb.view()),
                Candidate::SourceMean => {
                    let trs: Vec<&str> = train
                        .iter()
                        .map(|&i| table.rows[i].source.as_str())
                        .collect();
                    let tes: Vec<&str> = test
                        .iter()
                        .map(|&i| table.rows[i].source.as_str())
                        .collect();
                    source_mean_predictions(&trs, &data, &tes)
                }
            };
            for (r, &i) in test.iter().enumerate() {
                out[c][i].clone_from(&pred[r]);
            }
            log(&format!(
                "fold {}/{folds} {}: {:.1?}",
                f + 1,
                cand.name(),
                t.elapsed()
            ));
        }
    }
    out
}

/// One line per candidate and group: the headline numbers (APGR for a pair, AIQ and cost-to-match for a pool).
pub fn summary(
    table: &Table,
    groups: &[Group],
    names: &[String],
    preds: &[Vec<Vec<f64>>],
) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    for g in groups {
        let _ = writeln!(o, "\n== {} ({} rows)", g.name(table), g.rows.len());
        let _ = writeln!(
            o,
            "{:56}{:>7}{:>8}{:>8}{:>8}{:>12}",
            "predictor", "APGR", "CPT50", "AIQ", "q_max", "$match/best"
        );
        let mut base: Option<Report> = None;
        for (name, p) in names.iter().zip(preds) {
            let r = group_report(table, g, p);
            let (apgr, cpt50) =
                r.binary
                    .as_ref()
                    .map_or((String::from("-"), String::from("-")), |b| {
                        (
                            format!("{:.3}", b.router.apgr),
                            b.router.cpt50.map_or("never".into(), |v| format!("{v:.1}")),
                        )
                    });
            let c = &r.multi.router;
            let _ = writeln!(
                o,
                "{:56}{:>7}{:>8}{:8.3}{:8.3}{:>12}",
                name.chars().take(56).collect::<String>(),
                apgr,
                cpt50,
                c.aiq,
                c.q_max,
                c.cost_to_match_best
                    .map_or("never".into(), |v| format!("{v:.3}"))
            );
            base.get_or_insert(r);
        }
        if let Some(r) = base {
            let m = &r.multi;
            for (name, c) in [
                ("oracle", &m.oracle),
                ("random", &m.random),
                ("singles hull", &m.singles_hull),
            ] {
                let apgr = match (name, &r.binary) {
                    ("oracle", Some(b)) => format!("{:.3}", b.oracle.apgr),
                    ("random", Some(_)) => "0.500".into(),
                    _ => "-".into(),
                };
                let _ = writeln!(
                    o,
                    "{:56}{:>7}{:>8}{:8.3}{:8.3}{:>12}",
                    name,
                    apgr,
                    "",
                    c.aiq,
                    c.q_max,
                    c.cost_to_match_best
                        .map_or("never".into(), |v| format!("{v:.3}"))
                );
            }
            let _ = writeln!(
                o,
                "best single model: {} (q {:.3})",
                m.best_model,
                m.single
                    .iter()
                    .find(|s| s.0 == m.best_model)
                    .map_or(0.0, |s| s.1.q_max)
            );
        }
    }
    o
}

/// Fold `f` of `folds` over the shuffled row indices `idx`: (training rows, test rows). Every
/// cross-validation here splits this way, so their folds are the same rows.
pub fn fold_split(idx: &[usize], folds: usize, f: usize) -> (Vec<usize>, Vec<usize>) {
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (p, &i) in idx.iter().enumerate() {
        if p % folds == f {
            test.push(i);
        } else {
            train.push(i);
        }
    }
    (train, test)
}
