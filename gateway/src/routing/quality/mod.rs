//! Predicted quality for the policy: the learned router (ONNX encoder and
//! quality predictor) when an artifact is loaded, run off the async threads
//! and cached by prompt; the tier/price prior otherwise. Feedback moves
//! either (see `GatewayState::predictions`).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use routemesh_router::encoder::AssetPaths;
use routemesh_router::{EmbedPath, Router, RouterConfig};

use super::feedback::PromptPoint;

mod batch;
mod knowledge;
mod online;
pub use batch::BatchSettings;
pub use knowledge::{Knowledge, StandIn};
pub use online::OnlineModel;
use serde::{Deserialize, Serialize};

/// Where the router artifact and the encoder assets are.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouterSettings {
    /// Use the learned router at all (false: tier/price priors only).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The artifact directory. Unset: `$ROUTEMESH_ROUTER`, else
    /// `router/artifacts/default`, else `/usr/share/routemesh/router`, the first
    /// that exists; if none does, priors only.
    #[serde(default)]
    pub artifact: Option<PathBuf>,
    /// Encoder assets (runtime library, model, tokenizer) from
    /// `scripts/fetch-router-assets.sh`. Unset: `$ROUTEMESH_ASSETS`, else
    /// `.cache/routemesh/assets`.
    #[serde(default)]
    pub assets: Option<PathBuf>,
    /// Prompts whose predictions are remembered.
    #[serde(default = "default_cache")]
    pub cache_entries: usize,
    /// `auto` (default): the artifact's static-embedding fast path (about a
    /// thousand times cheaper than the encoder), except for prompts routed
    /// within a strong/weak pair the artifact calibrated thresholds for, where
    /// the encoder predicts (the model card shows the fast path losing APGR
    /// there; the encoder is loaded at start if the pool holds such a pair,
    /// else when a pair first needs it); `fast`: always
    /// the fast path; `full`: always the transformer encoder.
    #[serde(default)]
    pub path: RouterPath,
    /// ONNX Runtime threads for one encoder pass (full path and pairs under
    /// `auto`). Unset: the cores this process may use, at most 4. A pass is
    /// compute-bound and router runs are already limited to one per core, so
    /// spreading one pass over the cores cuts decision latency.
    #[serde(default)]
    pub encoder_threads: Option<usize>,
    /// For a model the router does not know: how far below the router's
    /// predictions for the known models nearest to it (size, family) its
    /// prior sits, per prompt. A model smaller than those loses another
    /// 0.02 per halving of size (at most 0.2).
    #[serde(default = "default_unknown_model_margin")]
    pub unknown_model_margin: f64,
    /// Micro-batching of the encoder's runs (full path, and pairs under
    /// `auto`): concurrent prompts of similar length share one pass.
    #[serde(default)]
    pub batch: BatchSettings,
}

fn default_unknown_model_margin() -> f64 {
    0.05
}

/// ONNX Runtime threads per encoder pass when `encoder_threads` is unset.
fn default_encoder_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// Which embedder the learned router uses (see [`RouterSettings::path`]).
#[derive(
    Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RouterPath {
    #[default]
    Auto,
    Fast,
    Full,
}

fn yes() -> bool {
    true
}
fn default_cache() -> usize {
    10_000
}

impl Default for RouterSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            artifact: None,
            assets: None,
            cache_entries: default_cache(),
            path: RouterPath::default(),
            encoder_threads: None,
            unknown_model_margin: default_unknown_model_margin(),
            batch: BatchSettings::default(),
        }
    }
}

/// What the router says about one prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutedPrompt {
    /// Artifact model name -> predicted quality.
    pub scores: HashMap<String, f64>,
    /// The prompt's point in the embedding space it was predicted in, where
    /// feedback on it is kept and feedback near it counts.
    pub point: Option<PromptPoint>,
    /// That space's id (`EmbeddingSpace::id`).
    pub space: Arc<str>,
    /// The embedding itself (int8), kept with feedback so that a model the
    /// router does not know can be onboarded from its scores.
    pub embedding: Option<PromptPoint>,
}

pub type Predicted = Arc<RoutedPrompt>;

#[derive(Debug, thiserror::Error)]
pub enum QualityError {
    #[error("router artifact {path}: {source}")]
    Load {
        path: String,
        source: routemesh_router::RouterError,
    },
    #[error("router load task failed: {0}")]
    Task(String),
}

/// What stands in for one served name, by the training pool it is compared in.
type StandInsByPool = Vec<(usize, Arc<StandIn>)>;

/// How the router knows one served name, by the `router_model` declared with it.
type KnownAs = Vec<(Option<String>, Knowledge)>;

/// Predictions by prompt and embedder; bounded, so old prompts are forgotten.
type Cache = quick_cache::sync::Cache<u64, Predicted>;

#[derive(Debug, Default)]
pub struct QualityModel {
    router: Option<Arc<Router>>,
    artifact: Option<PathBuf>,
    /// `None` without a router.
    cache: Option<Cache>,
    /// Router runs allowed at once (one per core). Beyond that a request is
    /// routed on priors instead of queueing for the CPU: under overload an
    /// unbounded queue of inference jobs would take the cores from the
    /// requests already admitted.
    inference_slots: Option<Arc<tokio::sync::Semaphore>>,
    /// Batches the encoder's runs (`router.batch`); `None`: one pass per prompt.
    batcher: Option<batch::Batcher>,
    unknown_model_margin: f64,
    /// How the router knows each model the pool has served (by name and
    /// declared `router_model`): matched once, not per request.
    knowledge: std::sync::RwLock<HashMap<String, KnownAs>>,
    /// Stand-ins of unknown models, by (model, training pool).
    stand_ins: std::sync::RwLock<HashMap<String, StandInsByPool>>,
    /// Models onboarded online from feedback, by served name (replaced whole on a rebuild).
    online: std::sync::RwLock<Arc<HashMap<String, Arc<OnlineModel>>>>,
    online_generation: std::sync::atomic::AtomicU64,
    /// The feedback change number each (model, path) was last looked at for onboarding.
    online_checked: std::sync::Mutex<HashMap<(String, EmbedPath), u64>>,
}

/// Longest a request waits for a router slot before it is routed on priors.
const ROUTER_SLOT_WAIT: std::time::Duration = std::time::Duration::from_millis(2);

fn auto_artifact() -> Option<PathBuf> {
    std::env::var_os("ROUTEMESH_ROUTER")
        .map(PathBuf::from)
        .into_iter()
        .chain([
            PathBuf::from("router/artifacts/default"),
            PathBuf::from("/usr/share/routemesh/router"),
        ])
        .find(|p| p.join("manifest.json").exists())
}

impl QualityModel {
    /// Priors only.
    pub fn priors() -> Self {
        Self::default()
    }

    /// Loads the router the settings name. An artifact named explicitly must
    /// load; one found by looking around may fail (missing encoder assets),
    /// and the gateway then routes on priors, saying so in its log.
    pub async fn load(settings: &RouterSettings) -> Result<Self, QualityError> {
        if !settings.enabled {
            return Ok(Self::priors());
        }
        let explicit = settings.artifact.is_some();
        let Some(artifact) = settings.artifact.clone().or_else(auto_artifact) else {
            tracing::info!("no router artifact found; routing on tier/price priors");
            return Ok(Self::priors());
        };
        let config = RouterConfig {
            assets: settings
                .assets
                .as_deref()
                .map_or_else(AssetPaths::from_env, AssetPaths::in_dir),
            fast_path: settings.path != RouterPath::Full,
            escalate_pairs: settings.path == RouterPath::Auto,
            threads: settings
                .encoder_threads
                .unwrap_or_else(default_encoder_threads)
                .max(1),
            ..RouterConfig::default()
        };
        let path = artifact.clone();
        let loaded = tokio::task::spawn_blocking(move || Router::load_with(&path, &config))
            .await
            .map_err(|e| QualityError::Task(e.to_string()))?;
        match loaded {
            Ok(router) => {
                tracing::info!(artifact = %artifact.display(), models = router.models().len(), path = router.path().as_str(), "learned router loaded");
                let router = Arc::new(router);
                let slots = Arc::new(tokio::sync::Semaphore::new(
                    std::thread::available_parallelism().map_or(2, |n| n.get()),
                ));
                // Only the encoder is batched: the fast path is a fraction of a
                // millisecond a prompt, and a wait for company would double it.
                let batcher = (settings.batch.enabled() && settings.path != RouterPath::Fast)
                    .then(|| batch::Batcher::start(router.clone(), slots.clone(), &settings.batch));
                Ok(Self {
                    router: Some(router),
                    artifact: Some(artifact),
                    cache: Some(crate::cache::bounded(settings.cache_entries)),
                    inference_slots: Some(slots),
                    batcher,
                    unknown_model_margin: settings.unknown_model_margin,
                    ..Self::default()
                })
            }
            Err(source) if explicit => Err(QualityError::Load {
                path: artifact.display().to_string(),
                source,
            }),
            Err(e) => {
                tracing::warn!(artifact = %artifact.display(), error = %e, "router artifact not loaded; routing on tier/price priors");
                Ok(Self::priors())
            }
        }
    }

    /// Stops the router's batcher, if it runs (prompts still waiting for a
    /// batch are routed on priors; passes already running answer).
    pub async fn shutdown(&self) {
        if let Some(batcher) = &self.batcher {
            batcher.shutdown().await;
        }
    }

    pub fn loaded(&self) -> bool {
        self.router.is_some()
    }

    pub fn artifact(&self) -> Option<&Path> {
        self.artifact.as_deref()
    }

    /// The router's cost weight calibrated on its training data, if any.
    pub fn calibrated_cost_weight(&self) -> Option<f64> {
        self.router.as_ref()?.calibration().default_lambda
    }

    /// Calibrated RouteLLM thresholds: (strong model, weak model, share of
    /// strong calls on the training prompts, threshold).
    pub fn calibrated_thresholds(&self) -> Vec<(String, String, f64, f64)> {
        let Some(router) = &self.router else {
            return Vec::new();
        };
        router
            .calibration()
            .pairs
            .iter()
            .flat_map(|p| {
                p.thresholds.iter().map(move |t| {
                    (
                        p.strong.clone(),
                        p.weak.clone(),
                        t.strong_share,
                        t.threshold,
                    )
                })
            })
            .collect()
    }

    /// Gets the router ready for a pool: loads the encoder now (off the async
    /// threads) if prompts routed among `pool_models` are predicted with it,
    /// so the first such request does not wait for the load.
    pub async fn prepare(&self, pool_models: &[&str]) {
        let Some(router) = self.router.clone() else {
            return;
        };
        if router.path_for(pool_models) != EmbedPath::Full || router.encoder().is_some() {
            return;
        }
        let started = std::time::Instant::now();
        match tokio::task::spawn_blocking(move || router.load_full_path()).await {
            Ok(Ok(())) => tracing::info!(
                took_ms = started.elapsed().as_millis() as u64,
                "router encoder loaded for the pool's strong/weak pair"
            ),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "router encoder unavailable; the pair is predicted on the fast path")
            }
            Err(e) => tracing::warn!(error = %e, "router encoder load task failed"),
        }
    }

    /// Predicted quality per model for `prompt` routed among `pool_models`
    /// (artifact names, see `router_names`), or `None` without a router (or if the encoder fails, logged). Never
    /// blocks the async threads.
    pub async fn predict(&self, prompt: &str, pool_models: &[&str]) -> Option<Predicted> {
        let router = self.router.clone()?;
        let path = router.path_for(pool_models);
        // The generation before the models: a rebuild in between caches the
        // older models' predictions under the older generation, never the newer.
        let generation = self.online_generation();
        let online = self.online_models();
        let key = {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            prompt.hash(&mut h);
            path.hash(&mut h);
            // Models onboarded online change what a prompt is predicted.
            generation.hash(&mut h);
            h.finish()
        };
        if let Some(hit) = self.cache.as_ref().and_then(|c| c.get(&key)) {
            crate::metrics::router_cache(true);
            return Some(hit);
        }
        crate::metrics::router_cache(false);
        if path == EmbedPath::Full
            && let Some(batcher) = &self.batcher
        {
            match batch::predict(batcher, &router, prompt, online.clone()).await {
                batch::Batched::Routed(routed) => {
                    let predicted = Arc::new(routed);
                    if let Some(cache) = &self.cache {
                        cache.insert(key, predicted.clone());
                    }
                    return Some(predicted);
                }
                batch::Batched::Priors => return None,
                // Not tokenized (the encoder did not load): the unbatched run below says why.
                batch::Batched::Unbatched => {}
            }
        }
        let slot = match &self.inference_slots {
            // A short wait rides out bursts (a fast-path decision is ~0.5 ms);
            // a longer one means the cores are saturated.
            Some(slots) => {
                match tokio::time::timeout(ROUTER_SLOT_WAIT, slots.clone().acquire_owned()).await {
                    Ok(Ok(permit)) => Some(permit),
                    _ => {
                        crate::metrics::router_overloaded();
                        return None;
                    }
                }
            }
            None => None,
        };
        let text = prompt.to_string();
        let started = std::time::Instant::now();
        let result = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let prompts = [text.as_str()];
            let (took, embedding, scores) = match router.predict_on(path, &prompts) {
                Ok(done) => done,
                // The encoder could not be loaded for a pair: the fast path still predicts.
                Err(e) if path == EmbedPath::Full && router.path() == EmbedPath::Fast => {
                    tracing::warn!(error = %e, "router encoder unavailable; predicting on the fast path");
                    router.predict_on(EmbedPath::Fast, &prompts)?
                }
                Err(e) => return Err(e),
            };
            let scores = scores.into_iter().next().unwrap_or_default();
            Ok::<_, routemesh_router::RouterError>((
                took,
                routed_prompt(&router, &online, took, &embedding, scores),
            ))
        })
        .await;
        let predicted: Predicted = match result {
            Ok(Ok((took, routed))) => {
                crate::metrics::router_inference(started.elapsed(), took.as_str());
                Arc::new(routed)
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "router prediction failed; using priors for this request");
                return None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "router task failed; using priors for this request");
                return None;
            }
        };
        if let Some(cache) = &self.cache {
            cache.insert(key, predicted.clone());
        }
        Some(predicted)
    }

    /// The learned verifier's acceptance threshold under which `share` of its
    /// training answers by `model` would be escalated (of their
    /// gap-adjusted scores with `gap_adjusted`).
    pub fn verifier_threshold(&self, model: &str, share: f64, gap_adjusted: bool) -> Option<f64> {
        let verifier = self.router.as_ref()?.verifier()?;
        Some(if gap_adjusted {
            verifier.adjusted_threshold_for_escalation_share(model, share)
        } else {
            verifier.threshold_for_escalation_share(model, share)
        })
    }

    /// Cascade routing at serving time: the learned verifier's `score` of
    /// an answer by `model`, adjusted for how much better the router
    /// predicts the stronger model of the pair the adjustment was fitted on
    /// would do on this prompt. `None` when it does not apply (another
    /// model, no fitted pair, no prediction for both).
    pub fn adjust_for_gap(
        &self,
        model: &str,
        score: f64,
        predicted: Option<&Predicted>,
    ) -> Option<f64> {
        let verifier = self.router.as_ref()?.verifier()?;
        let (weak, strong) = verifier.gap_pair()?;
        if model != weak {
            return None;
        }
        let scores = &predicted?.scores;
        let gap = scores.get(strong)? - scores.get(weak)?;
        Some(verifier.adjusted_score(score, gap))
    }

    /// P(`answer` by `model` to `prompt` is good) from the learned verifier;
    /// `None` without one, or if it fails (logged). Hand features alone take
    /// microseconds (12 µs p99) and are computed in place; a verifier that
    /// embeds the texts runs off the async threads.
    pub async fn verify_answer(
        &self,
        model: &str,
        prompt: &str,
        answer: &str,
        predicted_quality: Option<f64>,
    ) -> Option<f64> {
        let router = self.router.clone()?;
        let verifier = router.verifier()?;
        if !verifier.manifest().features.needs_embedder() {
            let scored = verifier.score(&routemesh_router::verify::VerifyInput {
                model,
                prompt,
                answer,
                predicted_quality,
            });
            return scored
                .inspect_err(|e| tracing::warn!(error = %e, "answer verifier failed; the answer is unjudged"))
                .ok();
        }
        let (model, prompt, answer) = (model.to_string(), prompt.to_string(), answer.to_string());
        let scored = tokio::task::spawn_blocking(move || {
            let verifier = router.verifier()?;
            Some(verifier.score(&routemesh_router::verify::VerifyInput {
                model: &model,
                prompt: &prompt,
                answer: &answer,
                predicted_quality,
            }))
        })
        .await;
        match scored {
            Ok(Some(Ok(score))) => Some(score),
            Ok(Some(Err(e))) => {
                tracing::warn!(error = %e, "answer verifier failed; the answer is unjudged");
                None
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "answer verifier task failed; the answer is unjudged");
                None
            }
        }
    }
}

/// What the router says about one prompt, from its embedding (`[1, 384]`)
/// and the artifact models' scores: those, the online models' predictions and
/// the prompt's point in the space `took` embeds in.
fn routed_prompt(
    router: &Router,
    online: &HashMap<String, Arc<OnlineModel>>,
    took: EmbedPath,
    embedding: &ndarray::Array2<f32>,
    scores: Vec<f64>,
) -> RoutedPrompt {
    let space = router.space(took);
    let point = match &space.frame {
        Some(frame) => frame
            .point(embedding.row(0))
            .and_then(|v| PromptPoint::new(&v, None)),
        None => embedding
            .row(0)
            .as_slice()
            .and_then(|row| PromptPoint::new(row, None)),
    };
    let mut scores: HashMap<String, f64> = router.models().iter().cloned().zip(scores).collect();
    for (name, online) in online.iter() {
        if let Some(q) = online.predict(took, embedding.view()) {
            scores.insert(name.clone(), q);
        }
    }
    RoutedPrompt {
        scores,
        point,
        space: Arc::from(space.id.as_str()),
        embedding: embedding
            .row(0)
            .as_slice()
            .and_then(|row| PromptPoint::new(row, None)),
    }
}
