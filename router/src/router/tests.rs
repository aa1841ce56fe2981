//! Loading and predicting with the default artifact on both paths, pairs escalated to the encoder,
//! and the verifier loaded alongside.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

/// The default artifact with its fast path, if it and the encoder assets are here (else says why).
fn default_artifact_with_assets() -> Option<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts/default");
    if !dir.join(artifact::FAST_DIR).join("manifest.json").is_file() {
        eprintln!("skipping: the default artifact has no fast path");
        return None;
    }
    if let Err(e) = AssetPaths::from_env().check() {
        eprintln!("skipping: {e}");
        return None;
    }
    Some(dir)
}

#[test]
fn the_verifier_loads_with_the_artifact_on_either_path_and_is_optional() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts/default");
    // No verifier/ in a directory: none, not an error.
    let empty = tempfile::tempdir().unwrap();
    assert!(
        load_verifier(empty.path(), None, &AssetPaths::from_env())
            .unwrap()
            .is_none()
    );
    if !dir.join(VERIFIER_DIR).join("manifest.json").is_file() {
        eprintln!("skipping: the default artifact has no verifier");
        return;
    }
    let Some(dir) = default_artifact_with_assets() else {
        return;
    };
    for fast_path in [true, false] {
        let r = Router::load_with(
            &dir,
            &RouterConfig {
                fast_path,
                ..RouterConfig::default()
            },
        )
        .unwrap();
        let v = r.verifier().expect("the default artifact has a verifier");
        assert_eq!(v.id(), "learned-v1");
        assert!(!v.models().is_empty());
        let s = v
            .score(&crate::verify::VerifyInput {
                model: &v.models()[0],
                prompt: "What is 3 * 60?",
                answer: "3 * 60 = <<3*60=180>>180\n#### 180",
                predicted_quality: None,
            })
            .unwrap();
        assert!((0.0..=1.0).contains(&s));
    }
}

#[test]
fn router_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Router>();
}

#[test]
fn default_artifact_predicts_when_assets_present() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts/default");
    if !dir.join("manifest.json").is_file() {
        eprintln!("skipping: no artifact at {}", dir.display());
        return;
    }
    if let Err(e) = AssetPaths::from_env().check() {
        eprintln!("skipping: {e}");
        return;
    }
    let full = RouterConfig {
        fast_path: false,
        ..RouterConfig::default()
    };
    let r = Router::load_with(&dir, &full).unwrap();
    assert_eq!(r.path(), EmbedPath::Full);
    let p = r.predict("What is 17 * 23? Think step by step.").unwrap();
    assert_eq!(p.len(), r.models().len());
    assert!(p.iter().all(|(_, q)| (0.0..=1.0).contains(q)), "{p:?}");
    assert_eq!(r.pools().len(), 2);
    // Odd inputs are predictions too, not errors.
    let long = "ünïcödé ".repeat(3000);
    for odd in ["", "   ", long.as_str()] {
        assert_eq!(r.predict(odd).unwrap().len(), r.models().len());
    }
    // A batch gives each prompt what it gets alone (padding must not leak into the pooling).
    let prompts = [
        "Translate 'good morning' to French.",
        "Prove Fermat's little theorem.",
    ];
    let batch = r.predict_batch(&prompts).unwrap();
    for (p, b) in prompts.iter().zip(&batch) {
        let alone = r.predict(p).unwrap();
        for ((_, a), b) in alone.iter().zip(b) {
            assert!((a - b).abs() < 1e-3, "{p}: {a} vs {b}");
        }
    }
}

#[test]
fn fast_path_predicts_like_the_full_path_on_odd_inputs() {
    let Some(dir) = default_artifact_with_assets() else {
        return;
    };
    let r = Router::load(&dir).unwrap();
    assert_eq!(r.path(), EmbedPath::Fast);
    assert!(!r.calibration().pairs.is_empty());
    let long = "ünïcödé 🚀 ".repeat(5000);
    for odd in ["", "   ", "\u{0}\u{feff}", long.as_str()] {
        let p = r.predict(odd).unwrap();
        assert_eq!(p.len(), r.models().len());
        assert!(
            p.iter().all(|(_, q)| (0.0..=1.0).contains(q)),
            "{odd:?}: {p:?}"
        );
    }
    let prompts = ["Solve for x: 3x + 7 = 22.", "Who painted the Mona Lisa?"];
    let batch = r.predict_batch(&prompts).unwrap();
    for (p, b) in prompts.iter().zip(&batch) {
        let alone = r.predict(p).unwrap();
        for ((_, a), b) in alone.iter().zip(b) {
            assert!((a - b).abs() < 1e-9, "{p}: {a} vs {b}");
        }
    }
    // The prompt matters: different tasks get different predictions.
    assert_ne!(batch[0], batch[1]);
}

#[test]
fn pairs_escalate_to_the_encoder_and_the_many_model_pool_stays_fast() {
    let Some(dir) = default_artifact_with_assets() else {
        return;
    };
    let auto = Router::load_with(
        &dir,
        &RouterConfig {
            escalate_pairs: true,
            ..RouterConfig::default()
        },
    )
    .unwrap();
    // Nothing needed the encoder yet.
    assert!(auto.encoder().is_none());
    let pair = auto.manifest().calibration.pairs[0].clone();
    let pair_pool = [pair.strong.as_str(), pair.weak.as_str(), "some-other-model"];
    assert_eq!(auto.path_for(&pair_pool), EmbedPath::Full);
    let many: Vec<&str> = auto.pools()[0]
        .iter()
        .chain(&auto.pools()[1])
        .filter(|m| **m != pair.weak)
        .map(String::as_str)
        .collect();
    assert_eq!(auto.path_for(&many), EmbedPath::Fast);
    let fast = Router::load(&dir).unwrap();
    let full = Router::load_with(
        &dir,
        &RouterConfig {
            fast_path: false,
            ..RouterConfig::default()
        },
    )
    .unwrap();
    // The pair's thresholds are the full path's, λ the fast path's.
    assert_eq!(auto.calibration().pairs, full.calibration().pairs);
    assert_eq!(
        auto.calibration().default_lambda,
        fast.calibration().default_lambda
    );
    let prompt = ["Natalia sold clips to 48 of her friends in April. How many in all?"];
    let (path, _, on_full) = auto.predict_on(EmbedPath::Full, &prompt).unwrap();
    assert_eq!(path, EmbedPath::Full);
    assert!(auto.encoder().is_some());
    assert_eq!(on_full, full.predict_batch(&prompt).unwrap());
    let (_, _, on_fast) = auto.predict_on(EmbedPath::Fast, &prompt).unwrap();
    assert_eq!(on_fast, fast.predict_batch(&prompt).unwrap());
}

#[test]
fn a_pair_falls_back_to_the_fast_path_when_the_encoder_cannot_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts/default");
    let assets = AssetPaths::from_env();
    if !dir.join(artifact::FAST_DIR).join("manifest.json").is_file() || !assets.tokenizer.is_file()
    {
        eprintln!("skipping: no fast path or no tokenizer.json");
        return;
    }
    // Only the tokenizer: the fast path loads, the encoder cannot.
    let only_tokenizer = AssetPaths {
        model: std::path::PathBuf::from("/nonexistent/model.onnx"),
        ..assets
    };
    let r = Router::load_with(
        &dir,
        &RouterConfig {
            assets: only_tokenizer,
            escalate_pairs: true,
            ..RouterConfig::default()
        },
    )
    .unwrap();
    let pair = r.manifest().calibration.pairs[0].clone();
    let pool = [pair.strong.as_str(), pair.weak.as_str()];
    assert_eq!(r.path_for(&pool), EmbedPath::Full);
    let err = r.predict_on(EmbedPath::Full, &["hi"]).unwrap_err();
    assert!(err.to_string().contains("model.onnx"), "{err}");
    // Tried once: from now on the pair is predicted on the fast path.
    assert_eq!(r.path_for(&pool), EmbedPath::Fast);
    assert_eq!(
        r.predict_on(EmbedPath::Fast, &["hi"]).unwrap().0,
        EmbedPath::Fast
    );
}
