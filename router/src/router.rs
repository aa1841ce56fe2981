//! The gateway's entry point: load an artifact with its encoder, then prompt -> predicted quality per model.

use std::path::Path;

use ndarray::ArrayView2;

use crate::artifact::{self, ArtifactError, Manifest};
use crate::encoder::{AssetPaths, EMBED_DIM, ENCODER_ID, Encoder, EncoderConfig, EncoderError};
use crate::predict::QualityPredictor;

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    #[error(transparent)]
    Encoder(#[from] EncoderError),
}

/// A loaded router. `Send + Sync`; `predict` is synchronous CPU work (run it on a blocking thread).
/// How to run a router's encoder.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    pub assets: AssetPaths,
    /// ONNX Runtime intra-op threads per session.
    pub threads: usize,
    /// ONNX sessions, i.e. how many prompts can be encoded in parallel (see [`EncoderConfig::sessions`]).
    pub sessions: usize,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            assets: AssetPaths::from_env(),
            threads: 1,
            sessions: 1,
        }
    }
}

#[derive(Debug)]
pub struct Router {
    manifest: Manifest,
    encoder: Encoder,
    predictor: Box<dyn QualityPredictor>,
}

impl Router {
    /// Loads `dir` with the encoder assets from `$ROUTEMESH_ASSETS` (see [`AssetPaths::from_env`]).
    pub fn load(dir: &Path) -> Result<Self, RouterError> {
        Self::load_with(dir, &RouterConfig::default())
    }

    pub fn load_with(dir: &Path, cfg: &RouterConfig) -> Result<Self, RouterError> {
        let (manifest, predictor) = artifact::load(dir)?;
        if manifest.encoder.id != ENCODER_ID || manifest.encoder.dim != EMBED_DIM {
            return Err(ArtifactError::Invalid(format!(
                "artifact expects encoder {} (dim {}), this build has {ENCODER_ID} (dim {EMBED_DIM})",
                manifest.encoder.id, manifest.encoder.dim
            ))
            .into());
        }
        let encoder = Encoder::load(&EncoderConfig {
            assets: cfg.assets.clone(),
            max_len: manifest.encoder.max_len,
            threads: cfg.threads,
            sessions: cfg.sessions,
        })?;
        // Embeddings from another model.onnx would silently mean something else: refuse.
        if encoder.model_sha256() != manifest.encoder.model_sha256 {
            return Err(ArtifactError::EncoderMismatch {
                expected: manifest.encoder.model_sha256.clone(),
                got: encoder.model_sha256().to_string(),
            }
            .into());
        }
        Ok(Self {
            manifest,
            encoder,
            predictor,
        })
    }

    pub fn models(&self) -> &[String] {
        &self.manifest.models
    }

    /// Models whose predictions share a training pool and rubric (see [`Manifest::pools`]).
    pub fn pools(&self) -> &[Vec<String>] {
        &self.manifest.pools
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    /// Predicted quality per model (in [`Router::models`] order) for one prompt.
    pub fn predict(&self, prompt: &str) -> Result<Vec<(String, f64)>, RouterError> {
        let p = self.predict_batch(&[prompt])?;
        Ok(self
            .models()
            .iter()
            .cloned()
            .zip(p.into_iter().next().unwrap_or_default())
            .collect())
    }

    /// `[prompt][model]` for a batch (one encoder run).
    pub fn predict_batch(&self, prompts: &[&str]) -> Result<Vec<Vec<f64>>, RouterError> {
        let emb = self.encoder.encode(prompts)?;
        Ok(self.predictor.predict(emb.view()))
    }

    /// For callers that already have embeddings from this router's encoder.
    pub fn predict_embedded(&self, emb: ArrayView2<'_, f32>) -> Vec<Vec<f64>> {
        self.predictor.predict(emb)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

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
        let r = Router::load(&dir).unwrap();
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
}
