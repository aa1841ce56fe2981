//! Router artifact: a directory with `manifest.json` and compact little-endian weight files.
//!
//! The manifest pins everything a prediction depends on (encoder id and model.onnx sha256, model list,
//! predictor kind and hyper-parameters, per-file sha256) so that a load either reproduces the trained
//! router exactly or refuses with a clear error. Exemplar embeddings are stored as int8 with one scale
//! per row (4x smaller than f32; cosine error ~1e-4), scores as f16.
//!
//! This module is what an artifact is (its manifest, errors and file names) and [`load()`] reads one;
//! `routemesh-router-train` writes them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::encoder::hex;

mod load;

pub use load::{load, load_static_table, load_task_mixture};

pub const FORMAT: &str = "routemesh-router";
pub const FORMAT_VERSION: u32 = 1;
pub const MANIFEST: &str = "manifest.json";
/// Sub-directory of an artifact holding its fast path (static table + a predictor trained on it).
pub const FAST_DIR: &str = "fast";
/// The fast path's static table: int8 rows, their scales, and the word-piece weights.
pub const STATIC_TABLE: &str = "static_table.i8";
pub const STATIC_SCALES: &str = "static_scales.f32";
pub const STATIC_WEIGHTS: &str = "static_weights.f32";

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

impl FileInfo {
    /// The manifest entry of a file with these contents (what loading checks them against).
    pub fn of(bytes: &[u8]) -> Self {
        Self {
            sha256: sha256(bytes),
            bytes: bytes.len() as u64,
        }
    }
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
    /// [`TaskMixture`](crate::predict::TaskMixture): `task.f32` holds the classifier (`[classes, dim]`
    /// weights, `[classes]` biases), the per-task means (`[classes, models]`, NaN = not scored) and the
    /// per-model prior (`[models]`); the residual kNN and MF use the files of those kinds.
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
    /// Models added after training from their scores alone (`routemesh router onboard`), by name; the
    /// other models are "learned". Absent in artifacts without onboarded models, which load unchanged.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub onboarded: BTreeMap<String, OnboardedModel>,
}

/// How an onboarded model was added: from how many scored prompts, borrowing from which known models,
/// with which pseudo-count pulling its per-task means towards theirs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OnboardedModel {
    pub scored_prompts: usize,
    /// The known models its prior was built from, most similar first.
    pub similar_to: Vec<String>,
    pub shrink: f64,
}

/// Reads `dir/name`, listed in `files`, and checks its sha256 and size (for sub-artifacts with their
/// own manifests, such as `verifier/`).
pub fn read_checked(
    dir: &Path,
    files: &BTreeMap<String, FileInfo>,
    name: &str,
) -> Result<Vec<u8>, ArtifactError> {
    let path = dir.join(name);
    let info = files
        .get(name)
        .ok_or_else(|| ArtifactError::Invalid(format!("{name} is not listed in files")))?;
    let bytes = std::fs::read(&path).map_err(|source| ArtifactError::Io {
        path: path.clone(),
        source,
    })?;
    let got = sha256(&bytes);
    if got != info.sha256 || bytes.len() as u64 != info.bytes {
        return Err(ArtifactError::Checksum {
            file: path,
            expected: info.sha256.clone(),
            got,
        });
    }
    Ok(bytes)
}

/// sha256 of a file's bytes, lowercase hex (as the manifest records it).
fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
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
