//! Onboarding a model from scores: the in-memory core on a toy task mixture, the manifest record, and
//! the `onboard` command on the committed artifact with a few real rows (skipped, with a message, when
//! the shared data or the encoder assets are absent).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ndarray::Array2;
use routemesh_router::QualityPredictor;
use routemesh_router::artifact::{self, Manifest, OnboardedModel};
use routemesh_router::onboard::{self, OnboardConfig};
use routemesh_router::predict::{KnnConfig, TaskMixture};
use routemesh_router_train::fit::{MfConfig, TaskConfig, TrainSet, train_task_mixture};

/// Three tasks (clusters of embeddings) and three models with different task profiles.
const PROFILES: [[f64; 3]; 3] = [[0.9, 0.2, 0.6], [0.3, 0.8, 0.5], [0.5, 0.5, 0.1]];

fn toy_rows(n: usize, offset: usize) -> (Array2<f32>, Vec<String>, Vec<usize>) {
    let dim = 12;
    let mut emb = Array2::<f32>::zeros((n, dim));
    let mut sources = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..n {
        let t = (i + offset) % 3;
        emb[[i, t]] = 1.0;
        emb[[i, 3 + (i * 7 + offset) % 9]] = 0.4;
        let norm = emb.row(i).dot(&emb.row(i)).sqrt();
        emb.row_mut(i).mapv_inplace(|v| v / norm);
        sources.push(format!("toy/task{t}"));
        tasks.push(t);
    }
    (emb, sources, tasks)
}

/// Scores drawn around a profile: 1 with the profile's probability, in a fixed pattern.
fn score(profile: &[f64; 3], task: usize, i: usize) -> f64 {
    let u = ((i * 37 + task * 11) % 100) as f64 / 100.0;
    if u < profile[task] { 1.0 } else { 0.0 }
}

fn trained() -> (TaskMixture, Array2<f32>, Vec<usize>) {
    let (emb, sources, tasks) = toy_rows(300, 0);
    let models: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    let quality: Vec<Vec<Option<f64>>> = (0..300)
        .map(|i| {
            PROFILES
                .iter()
                .map(|p| Some(score(p, tasks[i], i)))
                .collect()
        })
        .collect();
    let cfg = TaskConfig {
        lr: 0.05,
        ..small_task_config(60, 20)
    };
    let set = TrainSet {
        models: &models,
        emb: emb.view(),
        quality: &quality,
        sources: Some(&sources),
    };
    (train_task_mixture(&set, &cfg), emb, tasks)
}

fn column(p: &[Vec<f64>], j: usize) -> Vec<f64> {
    p.iter().map(|r| r[j]).collect()
}

fn mean_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>() / a.len() as f64
}

/// A task mixture small enough for tests: 10 neighbours, no PCA, a 4-dimension MF.
fn small_task_config(epochs: usize, mf_epochs: usize) -> TaskConfig {
    TaskConfig {
        epochs,
        knn: KnnConfig {
            k: 10,
            pca: 0,
            ..TaskConfig::default().knn
        },
        mf_weight: 0.2,
        mf: MfConfig {
            dim: 4,
            epochs: mf_epochs,
            ..MfConfig::default()
        },
        ..TaskConfig::default()
    }
}

#[test]
fn a_model_onboarded_from_an_existing_models_scores_predicts_like_it() {
    let (base, _, _) = trained();
    // 60 new prompts, scored exactly as model "b" scores them.
    let (emb, _, tasks) = toy_rows(60, 1);
    let y: Vec<f64> = (0..60)
        .map(|i| score(&PROFILES[1], tasks[i], i + 1000))
        .collect();
    let cfg = OnboardConfig::default();
    let sim = onboard::similarity(&base, emb.view(), &y, &[0, 1, 2], &[], &cfg).unwrap();
    assert_eq!(sim.similar_to(&base.models)[0], "b", "{sim:?}");
    let added = onboard::onboard(&base, "b-copy", emb.view(), &y, &sim, &cfg).unwrap();
    assert_eq!(added.models, ["a", "b", "c", "b-copy"]);
    let (test, _, _) = toy_rows(90, 2);
    let p = added.predict(test.view());
    let d = mean_abs_diff(&column(&p, 3), &column(&p, 1));
    assert!(d < 0.05, "b-copy differs from b by {d} on average");
    // The other models' predictions do not move.
    let before = base.predict(test.view());
    for j in 0..3 {
        assert!(mean_abs_diff(&column(&p, j), &column(&before, j)) < 1e-9);
    }
    // Taking it out again gives the original predictor's predictions.
    let again = onboard::without_model(&added, "b-copy").unwrap();
    assert_eq!(again.models, base.models);
    assert_eq!(again.predict(test.view()), before);
    assert!(matches!(
        onboard::onboard(&added, "b-copy", emb.view(), &y, &sim, &cfg),
        Err(onboard::OnboardError::Known(_))
    ));
}

#[test]
fn with_few_rows_the_means_stay_near_the_similar_models_and_move_with_more() {
    let (base, _, _) = trained();
    let cfg = OnboardConfig::default();
    // A model like "a" on tasks 1 and 2 but perfect on task 0 (where "a" has 0.9): scored on task 0 only.
    let task0_means = |rows: usize| {
        let (emb, _, tasks) = toy_rows(rows * 3, 0);
        let keep: Vec<usize> = (0..rows * 3).filter(|&i| tasks[i] == 0).collect();
        let emb = emb.select(ndarray::Axis(0), &keep);
        let y = vec![1.0; keep.len()];
        // Similar to "a" by construction (a given weight, as the CLI's fast path receives it).
        let sim = onboard::Similarity {
            weights: vec![1.0, 0.0, 0.0],
            pool: None,
        };
        let added = onboard::onboard(&base, "new", emb.view(), &y, &sim, &cfg).unwrap();
        let c = base
            .classifier
            .classes
            .iter()
            .position(|c| c == "toy/task0")
            .unwrap();
        (
            f64::from(base.means[[c, 0]]),
            f64::from(added.means[[c, 3]]),
            f64::from(added.means[[(c + 1) % 3, 3]]),
            f64::from(base.means[[(c + 1) % 3, 0]]),
        )
    };
    let (a0, few, other_task, a_other) = task0_means(1);
    // One row: the pseudo-count (10) keeps the mean near a's 0.9, a little above it.
    assert!(few > a0 && few - a0 < (1.0 - a0) * 0.3, "{a0} -> {few}");
    // A task it was not scored on keeps a's mean (up to classifier leakage).
    assert!(
        (other_task - a_other).abs() < 0.02,
        "{a_other} -> {other_task}"
    );
    let (_, many, _, _) = task0_means(60);
    assert!(many > few && many > 0.95, "{few} -> {many}");
}

#[test]
fn similarity_prefers_the_model_that_agrees_and_joins_its_pool() {
    let (base, _, _) = trained();
    let (emb, _, tasks) = toy_rows(40, 0);
    let y: Vec<f64> = (0..40).map(|i| score(&PROFILES[2], tasks[i], i)).collect();
    let pools = vec![
        vec!["a".to_string()],
        vec!["b".to_string(), "c".to_string()],
    ];
    let cfg = OnboardConfig::default();
    let sim = onboard::similarity(&base, emb.view(), &y, &[0, 1, 2], &pools, &cfg).unwrap();
    assert_eq!(sim.pool, Some(1));
    assert_eq!(sim.weights[0], 0.0, "a is in another pool");
    assert!(sim.weights[2] > sim.weights[1], "{sim:?}");
    assert_eq!(
        sim.join_pool(&pools, "new"),
        vec![
            vec!["a".to_string()],
            vec!["b".into(), "c".into(), "new".into()]
        ]
    );
    // No rows: every candidate of the pool weighs the same.
    let none = onboard::similarity(
        &base,
        emb.slice(ndarray::s![0..0, ..]),
        &[],
        &[1, 2],
        &pools,
        &cfg,
    )
    .unwrap();
    assert_eq!((none.weights[1], none.weights[2]), (0.5, 0.5));
    // Bad input is refused by name.
    assert!(matches!(
        onboard::similarity(&base, emb.view(), &[2.0; 40], &[0], &pools, &cfg),
        Err(onboard::OnboardError::Score(_))
    ));
    assert!(matches!(
        onboard::similarity(&base, emb.view(), &y[..3], &[0], &pools, &cfg),
        Err(onboard::OnboardError::Mismatch { .. })
    ));
}

#[test]
fn the_manifest_records_onboarded_models_and_old_manifests_read_unchanged() {
    let dir = routemesh_router_train::cli::default_artifact_dir();
    let text = std::fs::read_to_string(dir.join(artifact::MANIFEST)).unwrap();
    let m: Manifest = serde_json::from_str(&text).unwrap();
    assert!(m.onboarded.is_empty());
    // Written back, a manifest without onboarded models is byte-for-byte what it was.
    assert_eq!(serde_json::to_string_pretty(&m).unwrap() + "\n", text);
    let mut with = m.clone();
    with.onboarded.insert(
        "my-org/model".into(),
        OnboardedModel {
            scored_prompts: 50,
            similar_to: vec!["llama3-70b-instruct".into()],
            shrink: 4.0,
        },
    );
    let back: Manifest = serde_json::from_str(&serde_json::to_string(&with).unwrap()).unwrap();
    assert_eq!(back, with);
    assert_eq!(back.onboarded["my-org/model"].scored_prompts, 50);
}

/// The shared data and the encoder assets, or why the test is skipped.
fn data_and_assets() -> Option<std::path::PathBuf> {
    let Some(dir) = routemesh_router_train::data::shared_data_dir() else {
        eprintln!(
            "skipping: ../shared/data/routing not found (set ROUTEMESH_DATA to run this test)"
        );
        return None;
    };
    if let Err(e) = routemesh_router::encoder::AssetPaths::from_env().check() {
        eprintln!("skipping: {e} (set ROUTEMESH_ASSETS)");
        return None;
    }
    Some(dir)
}

fn onboard_args(
    router: &std::path::Path,
    model: &str,
    data: &std::path::Path,
    out: &std::path::Path,
    force: bool,
) -> routemesh_router_train::cli::RouterCommand {
    routemesh_router_train::cli::RouterCommand::Onboard(routemesh_router_train::cli::OnboardArgs {
        router: router.into(),
        model: model.into(),
        data: data.into(),
        out: out.into(),
        force,
        onboard: String::new(),
        enc: routemesh_router_train::cli::EncoderArgs {
            assets: None,
            threads: 1,
            max_len: routemesh_router::encoder::DEFAULT_MAX_LEN,
            keep_tail: routemesh_router::encoder::DEFAULT_KEEP_TAIL,
        },
    })
}

#[test]
fn the_onboard_command_adds_a_model_to_both_paths_of_the_committed_artifact() -> anyhow::Result<()>
{
    use routemesh_router_train::cli::run;
    let Some(data_dir) = data_and_assets() else {
        return Ok(());
    };
    let router = routemesh_router_train::cli::default_artifact_dir();
    let best = "llama-3.1-nemotron-51b-instruct";
    let copy = "my-org/nemotron-51b-copy";
    // 40 mix9 rows, scored for a new name exactly as the best mix9 model scored them.
    let rows = routemesh_router_train::data::load_jsonl(&data_dir.join("mix9.jsonl"))?;
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("scored.jsonl");
    let mut text = String::new();
    for r in rows.iter().step_by(97).take(40) {
        let mut r = r.clone();
        let q = r.scores[best];
        r.scores.clear();
        r.scores.insert(copy.into(), q);
        text.push_str(&serde_json::to_string(&r)?);
        text.push('\n');
    }
    std::fs::write(&data, text)?;
    let out = tmp.path().join("onboarded");
    run(onboard_args(&router, copy, &data, &out, false))?;

    let original = artifact::read_manifest(&router)?;
    for dir in [out.clone(), out.join(artifact::FAST_DIR)] {
        let m = artifact::read_manifest(&dir)?;
        assert_eq!(m.models.len(), original.models.len() + 1);
        assert_eq!(m.models.last().map(String::as_str), Some(copy));
        let rec = &m.onboarded[copy];
        assert_eq!(rec.scored_prompts, 40);
        assert!(!rec.similar_to.is_empty());
        // It joins the mix9 pool (the similar models' pool), not the GPT-4/Mixtral one.
        let pool = m
            .pools
            .iter()
            .find(|p| p.iter().any(|x| x == copy))
            .unwrap();
        assert!(pool.iter().any(|x| x == best), "{pool:?}");
        assert!(rec.similar_to.iter().all(|s| pool.contains(s)));
    }
    assert!(out.join("verifier/manifest.json").is_file());
    // The gateway's loader accepts it, on either path, and predicts the copy like the original.
    for fast_path in [true, false] {
        let r = routemesh_router::Router::load_with(
            &out,
            &routemesh_router::RouterConfig {
                fast_path,
                ..routemesh_router::RouterConfig::default()
            },
        )?;
        assert_eq!(r.manifest().onboarded[copy].scored_prompts, 40);
        let prompts: Vec<&str> = rows
            .iter()
            .skip(5)
            .step_by(301)
            .map(|r| r.prompt.as_str())
            .collect();
        let p = r.predict_batch(&prompts)?;
        let j_best = r.models().iter().position(|m| m == best).unwrap();
        let j_copy = r.models().len() - 1;
        let d = mean_abs_diff(&column(&p, j_copy), &column(&p, j_best));
        assert!(
            d < 0.15,
            "fast_path {fast_path}: the copy differs from {best} by {d}"
        );
    }
    // Refusals: a non-empty --out without --force, the router's own directory, a trained model.
    let err = run(onboard_args(&router, copy, &data, &out, false)).unwrap_err();
    assert!(err.to_string().contains("--force"), "{err}");
    let err = run(onboard_args(&out, copy, &data, &out, true)).unwrap_err();
    assert!(err.to_string().contains("own directory"), "{err}");
    let out2 = tmp.path().join("again");
    let err = run(onboard_args(&router, best, &data, &out2, false)).unwrap_err();
    assert!(err.to_string().contains("trained model"), "{err}");
    // Onboarding an onboarded model again updates it (same model count), from the new rows.
    run(onboard_args(&out, copy, &data, &out2, false))?;
    let m2 = artifact::read_manifest(&out2)?;
    assert_eq!(m2.models.len(), original.models.len() + 1);
    artifact::load(&out2.join(artifact::FAST_DIR))?;
    Ok(())
}

#[test]
fn leave_one_model_out_runs_on_a_small_mix9_subset() -> anyhow::Result<()> {
    use routemesh_router_train::{data, eval, onboard_eval};
    let Some(dir) = data::shared_data_dir() else {
        eprintln!(
            "skipping: ../shared/data/routing not found (set ROUTEMESH_DATA to run this test)"
        );
        return Ok(());
    };
    let prices = data::Prices::load(&dir.join("models.json"))?;
    let rows: Vec<_> = data::load_jsonl(&dir.join("mix9.jsonl"))?
        .into_iter()
        .step_by(9)
        .collect();
    let table = data::Table::new(rows, &prices)?;
    // Embedding-free: one-hot sources stand in for prompt embeddings (the task is what matters most).
    let mut sources: Vec<&str> = table.rows.iter().map(|r| r.source.as_str()).collect();
    sources.sort_unstable();
    sources.dedup();
    let emb = Array2::from_shape_fn((table.len(), sources.len()), |(i, j)| {
        f32::from(u8::from(table.rows[i].source == sources[j]))
    });
    let group = eval::groups(&table, &prices).remove(0);
    let spec = small_task_config(10, 3);
    let setup = onboard_eval::LomoSetup {
        spec: &spec,
        configs: &[OnboardConfig::default()],
        budgets: &[0, 100],
        folds: 2,
        seed: 1,
        repeats: 2,
    };
    let results =
        onboard_eval::leave_one_model_out(&table, emb.view(), &group, &prices, &setup, |_| {})?;
    assert_eq!(results.len(), 9);
    let mean = |f: &dyn Fn(&onboard_eval::ModelResult) -> f64| {
        results.iter().map(f).sum::<f64>() / results.len() as f64
    };
    let prior = mean(&|r| r.prior.aiq);
    let onboarded = mean(&|r| r.onboarded[0][1].aiq);
    let full = results[0].full.aiq;
    // 100 scored prompts route better than a fixed tier prior and come close to fully trained.
    assert!(onboarded > prior, "onboarded {onboarded} vs prior {prior}");
    assert!(
        full - onboarded < 0.02,
        "onboarded {onboarded} vs full {full}"
    );
    assert_eq!(onboard_eval::tier_prior(&prices, "gemma-2-9b-it"), 0.55);
    assert_eq!(
        onboard_eval::tier_prior(&prices, "llama3-70b-instruct"),
        0.80
    );
    Ok(())
}
