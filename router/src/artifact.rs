//! Router artifact: a directory with `manifest.json` and compact little-endian weight files.
//!
//! The manifest pins everything a prediction depends on (encoder id and model.onnx sha256, model list,
//! predictor kind and hyper-parameters, per-file sha256) so that a load either reproduces the trained
//! router exactly or refuses with a clear error. Exemplar embeddings are stored as int8 with one scale
//! per row (4x smaller than f32; cosine error ~1e-4), scores as f16.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::f16;
use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::encoder::hex;
use crate::predict::quant::{dequantize_rows, quantize_rows};
use crate::predict::{
    Blend, Knn, KnnConfig, MatrixFactorization, Mlp, Prior, Projection, QualityPredictor, Ridge,
    SoftmaxClassifier, TaskMixture,
};

pub const FORMAT: &str = "routemesh-router";
pub const FORMAT_VERSION: u32 = 1;
pub const MANIFEST: &str = "manifest.json";
/// Sub-directory of an artifact holding its fast path (static table + a predictor trained on it).
pub const FAST_DIR: &str = "fast";
const STATIC_TABLE: &str = "static_table.i8";
const STATIC_SCALES: &str = "static_scales.f32";
const STATIC_WEIGHTS: &str = "static_weights.f32";

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid manifest: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "{dir}: not a router artifact (format {found:?}, version {version}; this build reads {FORMAT:?} v{FORMAT_VERSION})"
    )]
    Format {
        dir: PathBuf,
        found: String,
        version: u32,
    },
    #[error(
        "{file}: sha256 {got} does not match the manifest's {expected} (corrupt or edited artifact)"
    )]
    Checksum {
        file: PathBuf,
        expected: String,
        got: String,
    },
    #[error("{file}: {msg}")]
    Shape { file: PathBuf, msg: String },
    #[error(
        "artifact was trained with encoder model sha256 {expected}, the loaded model.onnx is {got}"
    )]
    EncoderMismatch { expected: String, got: String },
    #[error("manifest: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EncoderInfo {
    pub id: String,
    pub model_sha256: String,
    pub max_len: usize,
    /// Word pieces a truncated prompt keeps from its end (see `EncoderConfig::keep_tail`); absent is 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub keep_tail: usize,
    pub dim: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileInfo {
    pub sha256: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PredictorInfo {
    Prior,
    Knn {
        k: usize,
        tau: Option<f64>,
        shrink: f64,
        exemplars: usize,
        /// Principal components kept (`pca.f32`), 0 = full embedding.
        #[serde(default)]
        pca: usize,
    },
    Mf {
        dim: usize,
    },
    Ridge,
    Blend {
        k: usize,
        tau: Option<f64>,
        shrink: f64,
        exemplars: usize,
        #[serde(default)]
        pca: usize,
        dim: usize,
        weight: f64,
    },
    Mlp {
        hidden: usize,
    },
    /// [`TaskMixture`]: `task.f32` holds the classifier (`[classes, dim]` weights, `[classes]` biases),
    /// the per-task means (`[classes, models]`, NaN = not scored) and the per-model prior (`[models]`);
    /// the residual kNN and MF use the files of those kinds.
    Task {
        classes: Vec<String>,
        alpha: f64,
        /// Residual memory (`exemplars` 0 = none).
        k: usize,
        tau: Option<f64>,
        shrink: f64,
        exemplars: usize,
        #[serde(default)]
        pca: usize,
        /// MF mixed in with `mf_weight` (`mf_dim` 0 = none).
        mf_dim: usize,
        mf_weight: f64,
    },
}

/// Strong-call threshold on `pred[strong] − pred[weak]` for a target share of strong calls.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Threshold {
    pub strong_share: f64,
    pub threshold: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PairCalibration {
    pub strong: String,
    pub weak: String,
    /// Calibrated on the training prompts: route to strong when the score gap is >= threshold.
    pub thresholds: Vec<Threshold>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Calibration {
    /// Willingness to pay (quality per USD) for argmax(quality − λ·cost), if calibrated.
    pub default_lambda: Option<f64>,
    #[serde(default)]
    pub pairs: Vec<PairCalibration>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub encoder: EncoderInfo,
    pub models: Vec<String>,
    /// Groups of models trained on the same rows (and scored on the same rubric): predicted qualities
    /// are comparable within a pool, not necessarily across pools.
    #[serde(default)]
    pub pools: Vec<Vec<String>>,
    pub predictor: PredictorInfo,
    pub files: BTreeMap<String, FileInfo>,
    #[serde(default)]
    pub calibration: Calibration,
    /// Free-form provenance (data files, rows, CV results).
    #[serde(default)]
    pub training: serde_json::Value,
}

fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn f32_bytes(v: impl IntoIterator<Item = f32>) -> Vec<u8> {
    v.into_iter().flat_map(f32::to_le_bytes).collect()
}

fn read_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
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
        files.insert(
            name,
            FileInfo {
                sha256: sha256(&bytes),
                bytes: bytes.len() as u64,
            },
        );
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
    };
    write_manifest(dir, &manifest)?;
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

pub fn read_manifest(dir: &Path) -> Result<Manifest, ArtifactError> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path).map_err(|source| ArtifactError::Io {
        path: path.clone(),
        source,
    })?;
    let m: Manifest =
        serde_json::from_str(&text).map_err(|source| ArtifactError::Json { path, source })?;
    if m.format != FORMAT || m.format_version != FORMAT_VERSION {
        return Err(ArtifactError::Format {
            dir: dir.into(),
            found: m.format,
            version: m.format_version,
        });
    }
    if m.models.is_empty() {
        return Err(ArtifactError::Invalid("no models".into()));
    }
    Ok(m)
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
        manifest.files.insert(
            name.to_string(),
            FileInfo {
                sha256: sha256(&bytes),
                bytes: bytes.len() as u64,
            },
        );
    }
    write_manifest(dir, manifest)
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
        PredictorInfo::Task {
            classes,
            alpha,
            k,
            tau,
            shrink,
            exemplars,
            pca,
            mf_dim,
            mf_weight,
        } => {
            let c = classes.len();
            let v = read_f32(&f.read("task.f32", (c * e + c + c * m + m) * 4)?);
            let shape = |err: ndarray::ShapeError| ArtifactError::Shape {
                file: dir.join("task.f32"),
                msg: err.to_string(),
            };
            let (a, b) = (c * e, c * e + c);
            let residual = if exemplars > 0 {
                Some(f.knn(k, tau, shrink, exemplars, pca)?)
            } else {
                None
            };
            let mf = if mf_dim > 0 {
                Some(f.mf(mf_dim)?)
            } else {
                None
            };
            Box::new(TaskMixture {
                models: manifest.models.clone(),
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
    };
    Ok((manifest, p))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::predict::tests::toy;
    use crate::predict::{MfConfig, MlpConfig, TaskConfig, TrainSet};

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
        let knn = Knn::train(
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
        let knn_pca = Knn::train(
            &data,
            KnnConfig {
                k: 5,
                pca: 4,
                ..KnnConfig::default()
            },
        );
        assert!(knn_pca.proj.is_some());
        let mf = MatrixFactorization::train(
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
            Box::new(Ridge::train(&data, 0.1)),
            Box::new(Blend {
                knn: knn_pca,
                mf: mf.clone(),
                weight: 0.3,
            }),
            Box::new(Mlp::train(
                &data,
                &MlpConfig {
                    hidden: 6,
                    epochs: 20,
                    ..MlpConfig::default()
                },
            )),
            Box::new(TaskMixture::train(
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
        let knn = Knn::train(&data, KnnConfig::default());
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
