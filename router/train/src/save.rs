//! Writing router artifacts: each predictor's weights as named little-endian files, the manifest that
//! pins them (sha256 and size per file), and the fast path's static table. The inverse of
//! `routemesh_router::artifact::load`, which the gateway uses.

use std::collections::BTreeMap;
use std::path::Path;

use half::f16;
use ndarray::Array2;
use routemesh_router::artifact::{
    ArtifactError, Calibration, EncoderInfo, FORMAT, FORMAT_VERSION, FileInfo, MANIFEST, Manifest,
    PredictorInfo, STATIC_SCALES, STATIC_TABLE, STATIC_WEIGHTS,
};
use routemesh_router::predict::quant::quantize_rows;
use routemesh_router::predict::{
    Blend, Knn, MatrixFactorization, Mlp, Prior, QualityPredictor, Ridge, TaskMixture,
};

fn f32_bytes(v: impl IntoIterator<Item = f32>) -> Vec<u8> {
    v.into_iter().flat_map(f32::to_le_bytes).collect()
}

/// The files of one predictor, by name.
fn predictor_files(p: &dyn PredictorParts) -> Vec<(String, Vec<u8>)> {
    p.parts()
}

/// Serialisation of the concrete predictors into named byte files.
pub trait PredictorParts {
    fn parts(&self) -> Vec<(String, Vec<u8>)>;
    fn info(&self) -> PredictorInfo;
}

fn knn_parts(k: &Knn) -> Vec<(String, Vec<u8>)> {
    let (codes, scales) = quantize_rows(&k.exemplars);
    let scores: Vec<u8> = k
        .scores
        .iter()
        .flat_map(|r| r.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()))
        .collect();
    let mut parts = vec![
        (
            "exemplars.i8".into(),
            codes.iter().map(|&c| c.to_le_bytes()[0]).collect(),
        ),
        ("exemplar_scales.f32".into(), f32_bytes(scales)),
        ("exemplar_scores.f16".into(), scores),
        (
            "prior.f32".into(),
            f32_bytes(k.prior.iter().map(|&v| v as f32)),
        ),
    ];
    if let Some(p) = &k.proj {
        parts.push((
            "pca.f32".into(),
            f32_bytes(p.mean.iter().chain(p.basis.iter()).copied()),
        ));
    }
    parts
}

fn mf_parts(m: &MatrixFactorization) -> Vec<(String, Vec<u8>)> {
    vec![(
        "mf.f32".into(),
        f32_bytes(m.w.iter().chain(m.v.iter()).chain(m.b.iter()).copied()),
    )]
}

impl PredictorParts for Prior {
    fn parts(&self) -> Vec<(String, Vec<u8>)> {
        vec![(
            "prior.f32".into(),
            f32_bytes(self.prior.iter().map(|&v| v as f32)),
        )]
    }
    fn info(&self) -> PredictorInfo {
        PredictorInfo::Prior
    }
}

impl PredictorParts for Knn {
    fn parts(&self) -> Vec<(String, Vec<u8>)> {
        knn_parts(self)
    }
    fn info(&self) -> PredictorInfo {
        PredictorInfo::Knn {
            k: self.config.k,
            tau: self.config.tau,
            shrink: self.config.shrink,
            exemplars: self.exemplars.nrows(),
            pca: self.proj.as_ref().map_or(0, |p| p.dims()),
        }
    }
}

impl PredictorParts for MatrixFactorization {
    fn parts(&self) -> Vec<(String, Vec<u8>)> {
        mf_parts(self)
    }
    fn info(&self) -> PredictorInfo {
        PredictorInfo::Mf {
            dim: self.w.nrows(),
        }
    }
}

impl PredictorParts for Ridge {
    fn parts(&self) -> Vec<(String, Vec<u8>)> {
        let w = self
            .weights
            .iter()
            .map(|&v| v as f32)
            .chain(self.bias.iter().map(|&v| v as f32));
        vec![("ridge.f32".into(), f32_bytes(w))]
    }
    fn info(&self) -> PredictorInfo {
        PredictorInfo::Ridge
    }
}

impl PredictorParts for Blend {
    fn parts(&self) -> Vec<(String, Vec<u8>)> {
        let mut p = knn_parts(&self.knn);
        p.extend(mf_parts(&self.mf));
        p
    }
    fn info(&self) -> PredictorInfo {
        PredictorInfo::Blend {
            k: self.knn.config.k,
            tau: self.knn.config.tau,
            shrink: self.knn.config.shrink,
            exemplars: self.knn.exemplars.nrows(),
            pca: self.knn.proj.as_ref().map_or(0, |p| p.dims()),
            dim: self.mf.w.nrows(),
            weight: self.weight,
        }
    }
}

impl PredictorParts for Mlp {
    fn parts(&self) -> Vec<(String, Vec<u8>)> {
        let all = self
            .w1
            .iter()
            .chain(self.b1.iter())
            .chain(self.w2.iter())
            .chain(self.b2.iter())
            .copied();
        vec![("mlp.f32".into(), f32_bytes(all))]
    }
    fn info(&self) -> PredictorInfo {
        PredictorInfo::Mlp {
            hidden: self.w1.nrows(),
        }
    }
}

impl PredictorParts for TaskMixture {
    fn parts(&self) -> Vec<(String, Vec<u8>)> {
        let c = &self.classifier;
        let all =
            c.w.iter()
                .chain(c.b.iter())
                .chain(self.means.iter())
                .chain(self.prior.iter())
                .copied();
        let mut p = vec![("task.f32".into(), f32_bytes(all))];
        if let Some(k) = &self.residual {
            p.extend(knn_parts(k));
        }
        if let Some(m) = &self.mf {
            p.extend(mf_parts(m));
        }
        p
    }
    fn info(&self) -> PredictorInfo {
        let k = self.residual.as_ref();
        PredictorInfo::Task {
            classes: self.classifier.classes.clone(),
            alpha: self.alpha,
            k: k.map_or(0, |k| k.config.k),
            tau: k.and_then(|k| k.config.tau),
            shrink: k.map_or(0.0, |k| k.config.shrink),
            exemplars: k.map_or(0, |k| k.exemplars.nrows()),
            pca: k.and_then(|k| k.proj.as_ref()).map_or(0, |p| p.dims()),
            mf_dim: self.mf.as_ref().map_or(0, |m| m.w.nrows()),
            mf_weight: self.mf_weight,
        }
    }
}

/// A predictor that can be saved: the trait objects the trainer produces.
pub trait SavablePredictor: QualityPredictor + PredictorParts {}
impl<T: QualityPredictor + PredictorParts> SavablePredictor for T {}

/// Writes `predictor` and the manifest into `dir` (created; existing files overwritten).
pub fn save(
    dir: &Path,
    encoder: EncoderInfo,
    predictor: &dyn SavablePredictor,
    calibration: Calibration,
    pools: Vec<Vec<String>>,
    training: serde_json::Value,
) -> Result<Manifest, ArtifactError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ArtifactError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut files = BTreeMap::new();
    for (name, bytes) in predictor_files(predictor) {
        let path = dir.join(&name);
        std::fs::write(&path, &bytes).map_err(io(&path))?;
        files.insert(name, FileInfo::of(&bytes));
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        encoder,
        models: predictor.models().to_vec(),
        pools,
        predictor: predictor.info(),
        files,
        calibration,
        training,
        onboarded: BTreeMap::new(),
    };
    write_manifest(dir, &manifest)?;
    Ok(manifest)
}

/// Writes `predictor` into `out` as an update of the artifact in `src` described by `manifest` (models,
/// predictor info, pools, onboarded models as the caller set them): the predictor's files are written
/// and their checksums replaced; every other file the manifest lists (e.g. a fast path's static table) is
/// copied from `src`, checked against its checksum.
pub fn save_updated(
    src: &Path,
    out: &Path,
    mut manifest: Manifest,
    predictor: &dyn SavablePredictor,
) -> Result<Manifest, ArtifactError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ArtifactError::Io { path, source }
    };
    std::fs::create_dir_all(out).map_err(io(out))?;
    let parts = predictor_files(predictor);
    let others: Vec<String> = manifest
        .files
        .keys()
        .filter(|name| !parts.iter().any(|(p, _)| p == *name))
        .cloned()
        .collect();
    for name in others {
        let bytes = routemesh_router::artifact::read_checked(src, &manifest.files, &name)?;
        let path = out.join(&name);
        std::fs::write(&path, &bytes).map_err(io(&path))?;
    }
    for (name, bytes) in parts {
        let path = out.join(&name);
        std::fs::write(&path, &bytes).map_err(io(&path))?;
        manifest.files.insert(name, FileInfo::of(&bytes));
    }
    manifest.models = predictor.models().to_vec();
    manifest.predictor = predictor.info();
    write_manifest(out, &manifest)?;
    Ok(manifest)
}

pub fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), ArtifactError> {
    let path = dir.join(MANIFEST);
    let text = serde_json::to_string_pretty(manifest).map_err(|source| ArtifactError::Json {
        path: path.clone(),
        source,
    })?;
    std::fs::write(&path, text + "\n").map_err(|source| ArtifactError::Io { path, source })
}

/// Adds the fast path's static table to the (already saved) artifact in `dir`: int8 rows with one scale
/// each (vectors are unit length, so the int8 error is a ~1e-4 cosine) and the f32 word-piece weights.
pub fn save_static_table(
    dir: &Path,
    manifest: &mut Manifest,
    table: &Array2<f32>,
    weights: &[f32],
) -> Result<(), ArtifactError> {
    let (codes, scales) = quantize_rows(table);
    let files = [
        (
            STATIC_TABLE,
            codes.iter().map(|&c| c.to_le_bytes()[0]).collect(),
        ),
        (STATIC_SCALES, f32_bytes(scales)),
        (STATIC_WEIGHTS, f32_bytes(weights.iter().copied())),
    ];
    for (name, bytes) in files {
        let path = dir.join(name);
        std::fs::write(&path, &bytes).map_err(|source| ArtifactError::Io { path, source })?;
        manifest
            .files
            .insert(name.to_string(), FileInfo::of(&bytes));
    }
    write_manifest(dir, manifest)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::fit::tests::toy;
    use crate::fit::{
        MfConfig, MlpConfig, TaskConfig, TrainSet, train_knn, train_mf, train_mlp, train_ridge,
        train_task_mixture,
    };
    use routemesh_router::artifact::{load, load_static_table, read_manifest};
    use routemesh_router::predict::KnnConfig;
    use routemesh_router::predict::quant::dequantize_rows;

    fn info(dim: usize) -> EncoderInfo {
        EncoderInfo {
            id: "test".into(),
            model_sha256: "00".into(),
            max_len: 16,
            keep_tail: 0,
            dim,
        }
    }

    #[test]
    fn save_load_round_trip_every_kind() {
        let (models, emb, q) = toy();
        let data = TrainSet {
            models: &models,
            emb: emb.view(),
            quality: &q,
            sources: None,
        };
        let knn = train_knn(
            &data,
            KnnConfig {
                k: 5,
                tau: Some(0.1),
                shrink: 1.0,
                smooth: 0.0,
                pca: 0,
            },
        );
        let sources: Vec<String> = (0..q.len()).map(|i| format!("task{}", i % 3)).collect();
        let labelled = TrainSet {
            sources: Some(&sources),
            ..data
        };
        // A projected memory too: exercises pca.f32.
        let knn_pca = train_knn(
            &data,
            KnnConfig {
                k: 5,
                pca: 4,
                ..KnnConfig::default()
            },
        );
        assert!(knn_pca.proj.is_some());
        let mf = train_mf(
            &data,
            &MfConfig {
                dim: 4,
                epochs: 50,
                lr: 0.01,
                ..MfConfig::default()
            },
        );
        let preds: Vec<Box<dyn SavablePredictor>> = vec![
            Box::new(Prior {
                models: models.clone(),
                prior: data.prior(),
            }),
            Box::new(knn.clone()),
            Box::new(knn_pca.clone()),
            Box::new(mf.clone()),
            Box::new(train_ridge(&data, 0.1)),
            Box::new(Blend {
                knn: knn_pca,
                mf: mf.clone(),
                weight: 0.3,
            }),
            Box::new(train_mlp(
                &data,
                &MlpConfig {
                    hidden: 6,
                    epochs: 20,
                    ..MlpConfig::default()
                },
            )),
            Box::new(train_task_mixture(
                &labelled,
                &TaskConfig {
                    knn: KnnConfig {
                        k: 5,
                        pca: 4,
                        ..KnnConfig::default()
                    },
                    mf_weight: 0.2,
                    mf: MfConfig {
                        dim: 4,
                        epochs: 20,
                        ..MfConfig::default()
                    },
                    ..TaskConfig::default()
                },
            )),
        ];
        for p in preds {
            let dir = tempfile::tempdir().unwrap();
            let cal = Calibration {
                default_lambda: Some(2.0),
                pairs: vec![],
            };
            let saved = save(
                dir.path(),
                info(8),
                p.as_ref(),
                cal,
                vec![models.clone()],
                serde_json::json!({"rows": 80}),
            )
            .unwrap();
            let (m, loaded) = load(dir.path()).unwrap();
            assert_eq!(m, saved);
            assert_eq!(loaded.kind(), p.kind());
            let (a, b) = (p.predict(emb.view()), loaded.predict(emb.view()));
            for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
                // int8 exemplars and f16 scores: close, not bit-equal.
                assert!((x - y).abs() < 2e-2, "{} {x} vs {y}", p.kind());
            }
        }
    }

    /// A kNN artifact of the toy data saved into a fresh directory.
    fn saved_toy_knn() -> (tempfile::TempDir, Manifest) {
        let (models, emb, q) = toy();
        let data = TrainSet {
            models: &models,
            emb: emb.view(),
            quality: &q,
            sources: None,
        };
        let dir = tempfile::tempdir().unwrap();
        let knn = train_knn(&data, KnnConfig::default());
        let m = save(
            dir.path(),
            info(8),
            &knn,
            Calibration::default(),
            vec![],
            serde_json::Value::Null,
        )
        .unwrap();
        (dir, m)
    }

    #[test]
    fn static_table_round_trip_and_checksum() {
        let (dir, mut m) = saved_toy_knn();
        // Unit rows, as the encoder gives them.
        let table = Array2::from_shape_fn((5, 8), |(i, k)| ((i * 8 + k) as f32).sin());
        let norms = table.map_axis(ndarray::Axis(1), |r| r.dot(&r).sqrt());
        let table = &table / &norms.insert_axis(ndarray::Axis(1));
        let weights = vec![1.0, 2.0, 0.0, 3.5, 1.25];
        save_static_table(dir.path(), &mut m, &table, &weights).unwrap();
        let m = read_manifest(dir.path()).unwrap();
        let (codes, scales, w) = load_static_table(dir.path(), &m).unwrap();
        let back = dequantize_rows(&codes, &scales, 8);
        assert_eq!(w, weights);
        for (a, b) in back.rows().into_iter().zip(table.rows()) {
            assert!(a.dot(&b) > 0.9999, "{a} vs {b}");
        }
        // A flipped byte in the table is refused.
        let path = dir.path().join(STATIC_TABLE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[0] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let err = load_static_table(dir.path(), &m).unwrap_err();
        assert!(matches!(err, ArtifactError::Checksum { .. }), "{err}");
    }

    #[test]
    fn corrupt_or_foreign_artifacts_are_refused() {
        let (dir, _) = saved_toy_knn();
        // Flip one byte of the exemplars.
        let path = dir.path().join("exemplars.i8");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[3] ^= 0x55;
        std::fs::write(&path, &bytes).unwrap();
        let err = load(dir.path()).unwrap_err();
        assert!(matches!(err, ArtifactError::Checksum { .. }), "{err}");
        // Wrong format version.
        let mut m = read_manifest(dir.path()).unwrap();
        m.format_version = 99;
        write_manifest(dir.path(), &m).unwrap();
        let err = load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("not a router artifact"), "{err}");
        // No manifest at all.
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            load(empty.path()).unwrap_err(),
            ArtifactError::Io { .. }
        ));
    }
}
