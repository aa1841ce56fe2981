//! The gateway's entry point: load an artifact with its encoder, then prompt -> predicted quality per model.

use std::path::Path;
use std::sync::{Mutex, OnceLock};

use ndarray::ArrayView2;

use ndarray::Array2;

use crate::artifact::{self, ArtifactError, Calibration, Manifest};
use crate::encoder::{
    AssetPaths, EMBED_DIM, ENCODER_ID, Encoder, EncoderConfig, EncoderError, Pieces,
};
use crate::fast::{self, STATIC_ENCODER_ID, StaticEmbedder};
use crate::names::ModelCatalog;
use crate::predict::{EmbeddingFrame, QualityPredictor};
use crate::verify::{AnswerVerifier, VERIFIER_DIR, VerifyError};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    #[error(transparent)]
    Encoder(#[from] EncoderError),
    #[error(transparent)]
    Verify(#[from] VerifyError),
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
    /// Use the artifact's fast path (static embeddings) when it has one; otherwise the full encoder.
    pub fast_path: bool,
    /// With the fast path: predict with the encoder for prompts routed within a strong/weak pair (a pool
    /// the artifact calibrated RouteLLM thresholds for), where the model card shows the fast path losing
    /// APGR; the many-model pool stays on the fast path. The encoder is loaded the first time a pair
    /// needs it, so a gateway whose pool has no pair never pays its memory.
    pub escalate_pairs: bool,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            assets: AssetPaths::from_env(),
            threads: 1,
            sessions: 1,
            fast_path: true,
            escalate_pairs: false,
        }
    }
}

/// Which embedder a router's predictions come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EmbedPath {
    /// Static word-piece embeddings (see [`crate::fast`]).
    Fast,
    /// The transformer encoder.
    Full,
}

impl EmbedPath {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fast => "fast",
            Self::Full => "full",
        }
    }
}

/// An embedding space prompts are compared in (one per embed path of an artifact): what feedback
/// exemplars are stored in, so they are dropped when the space changes.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingSpace {
    /// Names the embedder and the training prompts the centre comes from: `fast:<sha prefix>`.
    pub id: String,
    /// Where prompts are compared (see [`QualityPredictor::embedding_frame`]); `None`: raw cosine.
    pub frame: Option<EmbeddingFrame>,
}

impl EmbeddingSpace {
    fn of(path: EmbedPath, manifest: &Manifest, predictor: &dyn QualityPredictor) -> Self {
        // The exemplars fix the centre; without them the encoder alone fixes the space.
        let digest = manifest
            .files
            .get("exemplars.i8")
            .map_or(manifest.encoder.model_sha256.as_str(), |f| {
                f.sha256.as_str()
            });
        Self {
            id: format!("{}:{}", path.as_str(), digest.get(..16).unwrap_or(digest)),
            frame: predictor.embedding_frame(),
        }
    }
}

#[derive(Debug)]
struct FastPath {
    manifest: Manifest,
    space: EmbeddingSpace,
    /// Shared with the answer verifier, which embeds with the same table.
    embedder: Arc<StaticEmbedder>,
    predictor: Box<dyn QualityPredictor>,
}

#[derive(Debug)]
pub struct Router {
    manifest: Manifest,
    /// The transformer encoder: loaded at start on the full path, on first need when the fast path
    /// escalates pairs to it (a failed load is kept, logged by the caller, and the fast path serves).
    encoder: OnceLock<Result<Encoder, String>>,
    encoder_config: EncoderConfig,
    encoder_loading: Mutex<()>,
    predictor: Box<dyn QualityPredictor>,
    fast: Option<FastPath>,
    escalate_pairs: bool,
    /// The calibration of the path each pool is predicted on.
    calibration: Calibration,
    /// The answer verifier of cascades, when the artifact has `verifier/`.
    verifier: Option<AnswerVerifier>,
    /// The full path's embedding space.
    space: EmbeddingSpace,
    catalog: ModelCatalog,
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
        let encoder_config = EncoderConfig {
            assets: cfg.assets.clone(),
            max_len: manifest.encoder.max_len,
            keep_tail: manifest.encoder.keep_tail,
            threads: cfg.threads,
            sessions: cfg.sessions,
        };
        let fast_dir = dir.join(artifact::FAST_DIR);
        if cfg.fast_path && fast_dir.join(artifact::MANIFEST).is_file() {
            // The fast path needs only the tokenizer: no ONNX Runtime, no encoder session (most of a
            // gateway's memory when loaded).
            let fast = load_fast(&fast_dir, &manifest, &cfg.assets)?;
            let verifier = load_verifier(dir, Some(fast.embedder.clone()), &cfg.assets)?;
            let mut calibration = fast.manifest.calibration.clone();
            if cfg.escalate_pairs {
                // Pairs are predicted on the full path, so their thresholds are the full path's.
                calibration.pairs = manifest.calibration.pairs.clone();
            }
            return Ok(Self {
                space: EmbeddingSpace::of(EmbedPath::Full, &manifest, predictor.as_ref()),
                catalog: ModelCatalog::new(&manifest.models),
                manifest,
                encoder: OnceLock::new(),
                encoder_config,
                encoder_loading: Mutex::new(()),
                predictor,
                fast: Some(fast),
                escalate_pairs: cfg.escalate_pairs,
                calibration,
                verifier,
            });
        }
        let encoder = load_encoder(&encoder_config, &manifest)?;
        // Loaded on its own: the verifier's embedder does not depend on which path routes.
        let verifier = load_verifier(dir, None, &cfg.assets)?;
        Ok(Self {
            verifier,
            space: EmbeddingSpace::of(EmbedPath::Full, &manifest, predictor.as_ref()),
            catalog: ModelCatalog::new(&manifest.models),
            calibration: manifest.calibration.clone(),
            manifest,
            encoder: OnceLock::from(Ok(encoder)),
            encoder_config,
            encoder_loading: Mutex::new(()),
            predictor,
            fast: None,
            escalate_pairs: false,
        })
    }

    /// The encoder, loading it on first use (one load at a time; a failure is remembered).
    fn full_encoder(&self) -> Result<&Encoder, RouterError> {
        if self.encoder.get().is_none() {
            let _one_at_a_time = self
                .encoder_loading
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if self.encoder.get().is_none() {
                let loaded =
                    load_encoder(&self.encoder_config, &self.manifest).map_err(|e| e.to_string());
                let _ = self.encoder.set(loaded);
            }
        }
        match self.encoder.get() {
            Some(Ok(e)) => Ok(e),
            Some(Err(e)) => Err(ArtifactError::Invalid(format!("encoder not loaded: {e}")).into()),
            None => Err(ArtifactError::Invalid("encoder not loaded".into()).into()),
        }
    }

    /// Loads the encoder now if it is not loaded yet (a gateway whose pool holds a pair calls this at
    /// start, so the first pair request does not wait for it). A failure is kept, as on first use.
    pub fn load_full_path(&self) -> Result<(), RouterError> {
        self.full_encoder().map(|_| ())
    }

    /// The path prompts routed among `pool` (model names) are predicted on: the fast path, unless it
    /// escalates pairs, `pool` holds both models of a calibrated strong/weak pair, and the encoder has not
    /// failed to load.
    pub fn path_for(&self, pool: &[&str]) -> EmbedPath {
        match &self.fast {
            None => EmbedPath::Full,
            Some(_) if !self.escalate_pairs => EmbedPath::Fast,
            // The encoder failed to load once (logged then): the fast path serves pairs too.
            Some(_) if matches!(self.encoder.get(), Some(Err(_))) => EmbedPath::Fast,
            Some(_) => {
                let pair_in_pool =
                    self.manifest.calibration.pairs.iter().any(|p| {
                        pool.contains(&p.strong.as_str()) && pool.contains(&p.weak.as_str())
                    });
                if pair_in_pool {
                    EmbedPath::Full
                } else {
                    EmbedPath::Fast
                }
            }
        }
    }

    /// Embeds `prompts` on `path` and predicts from those embeddings: `([n, 384], [prompt][model])`.
    /// The full path falls back to the fast one (with the error) if the encoder cannot be loaded.
    #[allow(clippy::type_complexity)]
    pub fn predict_on(
        &self,
        path: EmbedPath,
        prompts: &[&str],
    ) -> Result<(EmbedPath, Array2<f32>, Vec<Vec<f64>>), RouterError> {
        let path = self.resolve(path);
        let emb = self.embed_on(path, prompts)?;
        let p = self.predict_embedded_on(path, emb.view());
        Ok((path, emb, p))
    }

    /// `prompt`'s word pieces for the full path (loading the encoder on first need): a batcher tokenizes
    /// each prompt once, groups prompts of similar length and runs each group with
    /// [`Router::predict_pieces`].
    pub fn full_pieces(&self, prompt: &str) -> Result<Pieces, RouterError> {
        Ok(self.full_encoder()?.tokenize(prompt)?)
    }

    /// Full-path predictions for prompts tokenized by [`Router::full_pieces`], in one encoder pass
    /// padded to the longest: `([n, 384], [prompt][model])`, as [`Router::predict_on`] gives each alone.
    pub fn predict_pieces(
        &self,
        batch: &[&Pieces],
    ) -> Result<(Array2<f32>, Vec<Vec<f64>>), RouterError> {
        let emb = self.full_encoder()?.encode_pieces(batch)?;
        let p = self.predict_embedded_on(EmbedPath::Full, emb.view());
        Ok((emb, p))
    }

    /// `path` if this router has it loaded, else the full path (a router without a fast path).
    fn resolve(&self, path: EmbedPath) -> EmbedPath {
        match (path, &self.fast) {
            (EmbedPath::Fast, Some(_)) => EmbedPath::Fast,
            _ => EmbedPath::Full,
        }
    }

    fn embed_on(&self, path: EmbedPath, prompts: &[&str]) -> Result<Array2<f32>, RouterError> {
        match (path, &self.fast) {
            (EmbedPath::Fast, Some(f)) => Ok(f.embedder.embed(prompts)?),
            _ => Ok(self.full_encoder()?.encode(prompts)?),
        }
    }

    fn predict_embedded_on(&self, path: EmbedPath, emb: ArrayView2<'_, f32>) -> Vec<Vec<f64>> {
        match (path, &self.fast) {
            (EmbedPath::Fast, Some(f)) => f.predictor.predict(emb),
            _ => self.predictor.predict(emb),
        }
    }

    /// The embedder predictions come from.
    pub fn path(&self) -> EmbedPath {
        if self.fast.is_some() {
            EmbedPath::Fast
        } else {
            EmbedPath::Full
        }
    }

    /// Calibrated thresholds and λ (each predictor has its own score scale): those of the path each
    /// pool is predicted on (with pairs escalated, the pairs' thresholds are the full path's).
    pub fn calibration(&self) -> &Calibration {
        &self.calibration
    }

    /// Embeds prompts with the active path: `[n, 384]`, rows L2-normalised.
    pub fn embed(&self, prompts: &[&str]) -> Result<Array2<f32>, RouterError> {
        self.embed_on(self.path(), prompts)
    }

    pub fn models(&self) -> &[String] {
        &self.manifest.models
    }

    /// The artifact's models indexed for matching served names (see [`crate::names`]).
    pub fn catalog(&self) -> &ModelCatalog {
        &self.catalog
    }

    /// The predictor of `path` as a task mixture, when it is one (what onboarding extends).
    pub fn task_mixture(&self, path: EmbedPath) -> Option<&crate::predict::TaskMixture> {
        match (self.resolve(path), &self.fast) {
            (EmbedPath::Fast, Some(f)) => f.predictor.as_task_mixture(),
            _ => self.predictor.as_task_mixture(),
        }
    }

    /// The embedding space of `path` (the full path's when this router has no fast path).
    pub fn space(&self, path: EmbedPath) -> &EmbeddingSpace {
        match (self.resolve(path), &self.fast) {
            (EmbedPath::Fast, Some(f)) => &f.space,
            _ => &self.space,
        }
    }

    /// Models whose predictions share a training pool and rubric (see [`Manifest::pools`]).
    pub fn pools(&self) -> &[Vec<String>] {
        &self.manifest.pools
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The transformer encoder, if loaded (at start on the full path; on first need when escalating).
    pub fn encoder(&self) -> Option<&Encoder> {
        self.encoder.get().and_then(|e| e.as_ref().ok())
    }

    /// The answer verifier of cascades, loaded with the artifact from `verifier/` when present.
    pub fn verifier(&self) -> Option<&AnswerVerifier> {
        self.verifier.as_ref()
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

    /// `[prompt][model]` for a batch (one encoder run on the full path).
    pub fn predict_batch(&self, prompts: &[&str]) -> Result<Vec<Vec<f64>>, RouterError> {
        let emb = self.embed(prompts)?;
        Ok(self.predict_embedded(emb.view()))
    }

    /// For embeddings from [`Router::embed`] (the active path's embedder).
    pub fn predict_embedded(&self, emb: ArrayView2<'_, f32>) -> Vec<Vec<f64>> {
        self.predict_embedded_on(self.path(), emb)
    }
}

/// The encoder the artifact was trained with, refusing another `model.onnx`.
fn load_encoder(cfg: &EncoderConfig, manifest: &Manifest) -> Result<Encoder, RouterError> {
    let encoder = Encoder::load(cfg)?;
    // Embeddings from another model.onnx would silently mean something else: refuse.
    if encoder.model_sha256() != manifest.encoder.model_sha256 {
        return Err(ArtifactError::EncoderMismatch {
            expected: manifest.encoder.model_sha256.clone(),
            got: encoder.model_sha256().to_string(),
        }
        .into());
    }
    Ok(encoder)
}

/// The fast path of an artifact: its own manifest (calibrated on its own predictions), the static table
/// and the predictor trained on static embeddings. It must derive from the same encoder as the artifact.
fn load_fast(dir: &Path, main: &Manifest, assets: &AssetPaths) -> Result<FastPath, RouterError> {
    let (manifest, predictor) = artifact::load(dir)?;
    if manifest.encoder.id != STATIC_ENCODER_ID
        || manifest.encoder.dim != EMBED_DIM
        || manifest.models != main.models
    {
        return Err(ArtifactError::Invalid(format!(
            "{}: a fast path needs encoder {STATIC_ENCODER_ID} (dim {EMBED_DIM}) and the artifact's models; \
             found {} (dim {})",
            dir.display(),
            manifest.encoder.id,
            manifest.encoder.dim
        ))
        .into());
    }
    if manifest.encoder.model_sha256 != main.encoder.model_sha256 {
        return Err(ArtifactError::EncoderMismatch {
            expected: main.encoder.model_sha256.clone(),
            got: manifest.encoder.model_sha256.clone(),
        }
        .into());
    }
    let (codes, scales, weights) = artifact::load_static_table(dir, &manifest)?;
    let tokenizer = fast::plain_tokenizer(&assets.tokenizer)?;
    let embedder = StaticEmbedder::from_quantized(
        tokenizer,
        codes,
        scales,
        weights,
        manifest.encoder.max_len,
    )?;
    Ok(FastPath {
        space: EmbeddingSpace::of(EmbedPath::Fast, &manifest, predictor.as_ref()),
        manifest,
        embedder: Arc::new(embedder),
        predictor,
    })
}

/// The artifact's `verifier/`, if it has one (an artifact without it loads as before).
fn load_verifier(
    dir: &Path,
    embedder: Option<Arc<StaticEmbedder>>,
    assets: &AssetPaths,
) -> Result<Option<AnswerVerifier>, RouterError> {
    let vdir = dir.join(VERIFIER_DIR);
    if !vdir.join(artifact::MANIFEST).is_file() {
        return Ok(None);
    }
    Ok(Some(AnswerVerifier::load(&vdir, embedder, assets)?))
}

#[cfg(test)]
mod tests;
