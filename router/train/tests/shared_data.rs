//! Checks against the real routing data in ../shared/data (skipped, with a message, when it is absent).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use routemesh_router::predict::KnnConfig;
use routemesh_router_train::data::{self, Prices, Table};
use routemesh_router_train::eval;
use routemesh_router_train::fit::PredictorSpec;

fn shared() -> Option<std::path::PathBuf> {
    let d = data::shared_data_dir();
    if d.is_none() {
        eprintln!(
            "skipping: ../shared/data/routing not found (set ROUTEMESH_DATA to run these tests)"
        );
    }
    d
}

#[test]
fn mt_bench_baselines_match_the_data_readme() -> anyhow::Result<()> {
    let Some(dir) = shared() else { return Ok(()) };
    let prices = Prices::load(&dir.join("models.json"))?;
    let table = Table::new(data::load_jsonl(&dir.join("mt_bench.jsonl"))?, &prices)?;
    assert_eq!(table.len(), 160);
    let groups = eval::groups(&table, &prices);
    assert_eq!(groups.len(), 1);
    let g = &groups[0];
    // A prompt-blind predictor: every row ties, so the PGR curve is the random diagonal.
    let pred = vec![vec![0.5; table.models.len()]; table.len()];
    let r = eval::group_report(&table, g, &pred);
    let b = r.binary.as_ref().expect("a strong/weak pair");
    assert_eq!(b.strong, "gpt-4-1106-preview");
    assert!((b.router.apgr - 0.5).abs() < 1e-12);
    assert!(b.oracle.apgr > 1.0);
    assert!((b.acc_strong - 0.923).abs() < 1e-3, "{}", b.acc_strong);
    Ok(())
}

#[test]
fn knn_beats_prompt_blind_on_mix9_costs() -> anyhow::Result<()> {
    // Embedding-free sanity check of the training path on real rows: a kNN over one-hot source
    // "embeddings" must route mix9 better than the singles hull (it can tell tasks apart).
    let Some(dir) = shared() else { return Ok(()) };
    let prices = Prices::load(&dir.join("models.json"))?;
    let table = Table::new(data::load_jsonl(&dir.join("mix9.jsonl"))?, &prices)?;
    let mut sources: Vec<&str> = table.rows.iter().map(|r| r.source.as_str()).collect();
    sources.sort_unstable();
    sources.dedup();
    let emb = ndarray::Array2::from_shape_fn((table.len(), sources.len()), |(i, j)| {
        f32::from(u8::from(table.rows[i].source == sources[j]))
    });
    let cands = [eval::Candidate::Spec(PredictorSpec::Knn(KnnConfig {
        k: 20,
        ..KnnConfig::default()
    }))];
    let preds = eval::cross_validate(&table, emb.view(), &cands, 3, 1, |_| {});
    let g = &eval::groups(&table, &prices)[0];
    let r = eval::group_report(&table, g, &preds[0]);
    assert!(
        r.multi.router.aiq > r.multi.singles_hull.aiq + 0.02,
        "{} vs {}",
        r.multi.router.aiq,
        r.multi.singles_hull.aiq
    );
    Ok(())
}
