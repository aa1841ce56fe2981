//! Reading an artifact's weight files into predictors, each file checked against the manifest's sha256
//! and the size its dimensions imply.

use std::path::Path;

use half::f16;
use ndarray::{Array1, Array2};

use super::{
    ArtifactError, Manifest, PredictorInfo, STATIC_SCALES, STATIC_TABLE, STATIC_WEIGHTS,
    read_manifest, sha256,
};
use crate::predict::quant::dequantize_rows;
use crate::predict::{
    Blend, Knn, KnnConfig, MatrixFactorization, Mlp, Prior, Projection, QualityPredictor, Ridge,
    SoftmaxClassifier, TaskMixture,
};

fn read_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

struct Files<'a> {
    dir: &'a Path,
    manifest: &'a Manifest,
}

impl Files<'_> {
    /// Reads a file listed in the manifest and checks its sha256 and size.
    fn read(&self, name: &str, expect_len: usize) -> Result<Vec<u8>, ArtifactError> {
        let path = self.dir.join(name);
        let info = self
            .manifest
            .files
            .get(name)
            .ok_or_else(|| ArtifactError::Invalid(format!("{name} is not listed in files")))?;
        let bytes = std::fs::read(&path).map_err(|source| ArtifactError::Io {
            path: path.clone(),
            source,
        })?;
        let got = sha256(&bytes);
        if got != info.sha256 {
            return Err(ArtifactError::Checksum {
                file: path,
                expected: info.sha256.clone(),
                got,
            });
        }
        if bytes.len() != expect_len {
            return Err(ArtifactError::Shape {
                file: path,
                msg: format!(
                    "{} bytes, the manifest's dimensions need {expect_len}",
                    bytes.len()
                ),
            });
        }
        Ok(bytes)
    }

    fn knn(
        &self,
        k: usize,
        tau: Option<f64>,
        shrink: f64,
        n: usize,
        pca: usize,
    ) -> Result<Knn, ArtifactError> {
        let (m, e) = (self.manifest.models.len(), self.manifest.encoder.dim);
        let proj = if pca > 0 {
            let v = read_f32(&self.read("pca.f32", (e + pca * e) * 4)?);
            let basis = Array2::from_shape_vec((pca, e), v[e..].to_vec()).map_err(|err| {
                ArtifactError::Shape {
                    file: self.dir.join("pca.f32"),
                    msg: err.to_string(),
                }
            })?;
            Some(Projection {
                mean: Array1::from_vec(v[..e].to_vec()),
                basis,
            })
        } else {
            None
        };
        let dim = if pca > 0 { pca } else { e };
        let codes: Vec<i8> = self
            .read("exemplars.i8", n * dim)?
            .into_iter()
            .map(|b| i8::from_le_bytes([b]))
            .collect();
        let scales = read_f32(&self.read("exemplar_scales.f32", n * 4)?);
        let scores_b = self.read("exemplar_scores.f16", n * m * 2)?;
        let flat: Vec<f32> = scores_b
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect();
        let scores = flat.chunks(m.max(1)).map(<[f32]>::to_vec).collect();
        let prior = read_f32(&self.read("prior.f32", m * 4)?)
            .into_iter()
            .map(f64::from)
            .collect();
        Ok(Knn::from_parts(
            self.manifest.models.clone(),
            KnnConfig {
                k,
                tau,
                shrink,
                ..KnnConfig::default()
            },
            dequantize_rows(&codes, &scales, dim),
            scores,
            prior,
            proj,
        ))
    }

    /// The task mixture of a `task` manifest (see [`PredictorInfo::Task`]).
    fn task_mixture(&self) -> Result<TaskMixture, ArtifactError> {
        let PredictorInfo::Task {
            classes,
            alpha,
            k,
            tau,
            shrink,
            exemplars,
            pca,
            mf_dim,
            mf_weight,
        } = self.manifest.predictor.clone()
        else {
            return Err(ArtifactError::Invalid(
                "the predictor is not a task mixture".into(),
            ));
        };
        let (m, e) = (self.manifest.models.len(), self.manifest.encoder.dim);
        let c = classes.len();
        let v = read_f32(&self.read("task.f32", (c * e + c + c * m + m) * 4)?);
        let shape = |err: ndarray::ShapeError| ArtifactError::Shape {
            file: self.dir.join("task.f32"),
            msg: err.to_string(),
        };
        let (a, b) = (c * e, c * e + c);
        let residual = if exemplars > 0 {
            Some(self.knn(k, tau, shrink, exemplars, pca)?)
        } else {
            None
        };
        let mf = if mf_dim > 0 {
            Some(self.mf(mf_dim)?)
        } else {
            None
        };
        Ok(TaskMixture {
            models: self.manifest.models.clone(),
            classifier: SoftmaxClassifier {
                classes,
                w: Array2::from_shape_vec((c, e), v[..a].to_vec()).map_err(shape)?,
                b: Array1::from_vec(v[a..b].to_vec()),
            },
            means: Array2::from_shape_vec((c, m), v[b..b + c * m].to_vec()).map_err(shape)?,
            prior: v[b + c * m..].to_vec(),
            residual,
            alpha,
            mf,
            mf_weight,
        })
    }

    fn mf(&self, d: usize) -> Result<MatrixFactorization, ArtifactError> {
        let (m, e) = (self.manifest.models.len(), self.manifest.encoder.dim);
        let v = read_f32(&self.read("mf.f32", (d * e + m * d + m) * 4)?);
        let shape = |msg: String| ArtifactError::Shape {
            file: self.dir.join("mf.f32"),
            msg,
        };
        let w = Array2::from_shape_vec((d, e), v[..d * e].to_vec())
            .map_err(|e| shape(e.to_string()))?;
        let vv = Array2::from_shape_vec((m, d), v[d * e..d * e + m * d].to_vec())
            .map_err(|e| shape(e.to_string()))?;
        let b = Array1::from_vec(v[d * e + m * d..].to_vec());
        Ok(MatrixFactorization {
            models: self.manifest.models.clone(),
            w,
            v: vv,
            b,
        })
    }
}

/// The static table of a fast-path artifact, verified and as stored: int8 codes `[vocab * dim]`, one
/// scale per row, and the word-piece weights.
#[allow(clippy::type_complexity)]
pub fn load_static_table(
    dir: &Path,
    manifest: &Manifest,
) -> Result<(Vec<i8>, Vec<f32>, Vec<f32>), ArtifactError> {
    let f = Files { dir, manifest };
    let dim = manifest.encoder.dim;
    let vocab = manifest
        .files
        .get(STATIC_WEIGHTS)
        .map(|i| i.bytes as usize / 4)
        .ok_or_else(|| {
            ArtifactError::Invalid(format!("{STATIC_WEIGHTS} is not listed in files"))
        })?;
    let weights = read_f32(&f.read(STATIC_WEIGHTS, vocab * 4)?);
    let scales = read_f32(&f.read(STATIC_SCALES, vocab * 4)?);
    let codes: Vec<i8> = f
        .read(STATIC_TABLE, vocab * dim)?
        .into_iter()
        .map(|b| i8::from_le_bytes([b]))
        .collect();
    Ok((codes, scales, weights))
}

/// Loads an artifact whose predictor is a task mixture as that concrete type (what onboarding a model
/// updates), verifying every file; any other predictor kind is refused.
pub fn load_task_mixture(dir: &Path) -> Result<(Manifest, TaskMixture), ArtifactError> {
    let manifest = read_manifest(dir)?;
    let mixture = Files {
        dir,
        manifest: &manifest,
    }
    .task_mixture()?;
    Ok((manifest, mixture))
}

/// Loads the manifest and the predictor of an artifact directory, verifying every file.
pub fn load(dir: &Path) -> Result<(Manifest, Box<dyn QualityPredictor>), ArtifactError> {
    let manifest = read_manifest(dir)?;
    let f = Files {
        dir,
        manifest: &manifest,
    };
    let (m, e) = (manifest.models.len(), manifest.encoder.dim);
    let p: Box<dyn QualityPredictor> = match manifest.predictor.clone() {
        PredictorInfo::Prior => Box::new(Prior {
            models: manifest.models.clone(),
            prior: read_f32(&f.read("prior.f32", m * 4)?)
                .into_iter()
                .map(f64::from)
                .collect(),
        }),
        PredictorInfo::Knn {
            k,
            tau,
            shrink,
            exemplars,
            pca,
        } => Box::new(f.knn(k, tau, shrink, exemplars, pca)?),
        PredictorInfo::Mf { dim } => Box::new(f.mf(dim)?),
        PredictorInfo::Ridge => {
            let v = read_f32(&f.read("ridge.f32", (m * e + m) * 4)?);
            let weights =
                Array2::from_shape_vec((m, e), v[..m * e].iter().map(|&x| f64::from(x)).collect())
                    .map_err(|err| ArtifactError::Shape {
                        file: dir.join("ridge.f32"),
                        msg: err.to_string(),
                    })?;
            Box::new(Ridge {
                models: manifest.models.clone(),
                weights,
                bias: v[m * e..].iter().map(|&x| f64::from(x)).collect(),
            })
        }
        PredictorInfo::Blend {
            k,
            tau,
            shrink,
            exemplars,
            pca,
            dim,
            weight,
        } => Box::new(Blend {
            knn: f.knn(k, tau, shrink, exemplars, pca)?,
            mf: f.mf(dim)?,
            weight,
        }),
        PredictorInfo::Mlp { hidden } => {
            let h = hidden;
            let v = read_f32(&f.read("mlp.f32", (h * e + h + m * h + m) * 4)?);
            let shape = |err: ndarray::ShapeError| ArtifactError::Shape {
                file: dir.join("mlp.f32"),
                msg: err.to_string(),
            };
            let (a, b) = (h * e, h * e + h);
            Box::new(Mlp {
                models: manifest.models.clone(),
                w1: Array2::from_shape_vec((h, e), v[..a].to_vec()).map_err(shape)?,
                b1: Array1::from_vec(v[a..b].to_vec()),
                w2: Array2::from_shape_vec((m, h), v[b..b + m * h].to_vec()).map_err(shape)?,
                b2: Array1::from_vec(v[b + m * h..].to_vec()),
            })
        }
        PredictorInfo::Task { .. } => Box::new(f.task_mixture()?),
    };
    Ok((manifest, p))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::artifact::{FAST_DIR, MANIFEST};

    fn committed() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts/default")
    }

    /// No encoder needed: the predictors and the static table load and verify on their own.
    #[test]
    fn the_committed_artifact_and_its_fast_path_load() {
        let dir = committed();
        let (m, p) = load(&dir).unwrap();
        assert_eq!(p.models(), m.models.as_slice());
        let emb = ndarray::Array2::from_shape_fn((3, m.encoder.dim), |(i, k)| {
            ((i * 7 + k) as f32 * 0.37).sin() / (m.encoder.dim as f32 / 2.0).sqrt()
        });
        let pred = p.predict(emb.view());
        assert_eq!(pred.len(), 3);
        assert!(pred.iter().flatten().all(|q| (0.0..=1.0).contains(q)));
        let fast = dir.join(FAST_DIR);
        let (fm, fp) = load(&fast).unwrap();
        assert_eq!(fm.models, m.models);
        assert_eq!(fp.kind(), p.kind());
        let (codes, scales, weights) = load_static_table(&fast, &fm).unwrap();
        assert_eq!(codes.len(), scales.len() * fm.encoder.dim);
        assert_eq!(weights.len(), scales.len());
    }

    #[test]
    fn corrupt_or_foreign_artifacts_are_refused() {
        let copy = tempfile::tempdir().unwrap();
        let manifest = read_manifest(&committed()).unwrap();
        for name in manifest.files.keys().map(String::as_str).chain([MANIFEST]) {
            std::fs::copy(committed().join(name), copy.path().join(name)).unwrap();
        }
        load(copy.path()).unwrap();
        // One flipped bit in the exemplars.
        let path = copy.path().join("exemplars.i8");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[3] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let err = load(copy.path()).unwrap_err();
        assert!(matches!(err, ArtifactError::Checksum { .. }), "{err}");
        // Another format version.
        let text = std::fs::read_to_string(copy.path().join(MANIFEST)).unwrap();
        let text = text.replace("\"format_version\": 1", "\"format_version\": 99");
        std::fs::write(copy.path().join(MANIFEST), text).unwrap();
        let err = load(copy.path()).unwrap_err();
        assert!(err.to_string().contains("not a router artifact"), "{err}");
        // No manifest at all.
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            load(empty.path()).unwrap_err(),
            ArtifactError::Io { .. }
        ));
    }
}
