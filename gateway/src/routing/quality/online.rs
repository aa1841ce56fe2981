//! Models the router does not know, onboarded online from feedback: once a model of the pool has
//! `feedback_memory.onboard_after` scored requests whose exemplars every tenant may use (a trusted
//! tenant's, or all of them without auth), the gateway runs the same onboarding as
//! `routemesh router onboard` (`routemesh_router::onboard`) on their embeddings and scores: per-task
//! means shrunk towards the known models it resembles, a residual-memory column and an MF vector.
//! From then on the router predicts it like a model it was trained on ("onboarded"), and it is
//! rebuilt as more scores arrive.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use ndarray::{Array2, ArrayView2};
use routemesh_mesh::ModelSpec;
use routemesh_router::EmbedPath;
use routemesh_router::onboard::{self, OnboardConfig};
use routemesh_router::predict::{QualityPredictor, TaskMixture};

use super::{Knowledge, QualityModel};
use crate::routing::feedback::{FeedbackMemory, Scope, ScoredPrompt};

/// A model onboarded online: the router's mixture of each path extended by it (its last column).
#[derive(Debug)]
pub struct OnlineModel {
    mixtures: Vec<(EmbedPath, TaskMixture, u64)>,
    /// The router's training pool it joined (its predictions are comparable with that pool's).
    pub pool: Option<usize>,
    /// Scored prompts it was learned from (on the path with most).
    pub scored: usize,
    /// The known models its prior borrows from, most similar first.
    pub similar_to: Vec<String>,
    /// When it was built: feedback recorded before then is in the fit, and
    /// must not also move its predictions as exemplars.
    pub built_at_ms: u64,
}

impl OnlineModel {
    /// Its predicted quality for one embedded prompt of `path`.
    pub fn predict(&self, path: EmbedPath, emb: ArrayView2<'_, f32>) -> Option<f64> {
        let (_, mixture, _) = self.mixtures.iter().find(|(p, _, _)| *p == path)?;
        mixture.predict(emb).into_iter().next()?.last().copied()
    }

    fn built_from(&self, path: EmbedPath) -> Option<u64> {
        self.mixtures
            .iter()
            .find(|(p, _, _)| *p == path)
            .map(|(_, _, changed)| *changed)
    }
}

/// Exemplars every requester may use: a trusted tenant's, or the anonymous tenant's (no auth).
fn shared_by_all(scope: &Scope) -> bool {
    matches!(scope, Scope::Global | Scope::Tenant(None))
}

impl QualityModel {
    /// The models onboarded online, by served name.
    pub fn online_models(&self) -> Arc<HashMap<String, Arc<OnlineModel>>> {
        self.online
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// When the online model `name` was built, if it is one.
    pub fn online_built_at(&self, name: &str) -> Option<u64> {
        self.online_models().get(name).map(|o| o.built_at_ms)
    }

    /// Changes whenever an online model is (re)built.
    pub fn online_generation(&self) -> u64 {
        self.online_generation.load(Ordering::Acquire)
    }

    /// Onboards (or rebuilds) each model of `specs` the router does not know from the feedback
    /// exemplars every tenant may use, once there are `min_rows` of them and they changed since the
    /// last build, counting those recorded from `oldest_ms` on (`telemetry.feedback_days`). Runs the
    /// fits off the async threads. Returns the models (re)built.
    pub async fn onboard_from_feedback(
        &self,
        specs: &[ModelSpec],
        memory: &FeedbackMemory,
        min_rows: usize,
        oldest_ms: u64,
    ) -> Vec<String> {
        let Some(router) = self.router.clone() else {
            return Vec::new();
        };
        if min_rows == 0 || memory.is_empty() {
            return Vec::new();
        }
        let mut built = Vec::new();
        for spec in specs {
            if spec.quality_prior.is_some()
                || self.base_knowledge(spec) != Knowledge::Unknown
                || built.contains(&spec.name)
            {
                continue;
            }
            let existing = self.online_models().get(&spec.name).cloned();
            let mut inputs = Vec::new();
            for path in [EmbedPath::Fast, EmbedPath::Full] {
                if router.task_mixture(path).is_none() || router.space(path).id.is_empty() {
                    continue;
                }
                let space = router.space(path).id.clone();
                let built = existing.as_ref().and_then(|o| o.built_from(path));
                let Some((changed, n)) = memory.changed(&spec.name, &space) else {
                    continue;
                };
                let seen = self
                    .online_checked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert((spec.name.clone(), path), changed);
                if n < min_rows || built == Some(changed) || seen == Some(changed) {
                    continue;
                }
                let Some((changed, rows)) =
                    memory.scored(&spec.name, &space, oldest_ms, shared_by_all)
                else {
                    continue;
                };
                if rows.len() >= min_rows {
                    inputs.push((path, changed, rows));
                }
            }
            if inputs.is_empty() {
                continue;
            }
            let (router, name) = (router.clone(), spec.name.clone());
            let fitted = tokio::task::spawn_blocking(move || fit(&router, &name, inputs)).await;
            match fitted {
                Ok(Ok(model)) => {
                    tracing::info!(model = %spec.name, scored = model.scored, similar_to = ?model.similar_to, "model onboarded from feedback");
                    let mut online = self.online.write().unwrap_or_else(|e| e.into_inner());
                    let mut next = (**online).clone();
                    next.insert(spec.name.clone(), Arc::new(model));
                    *online = Arc::new(next);
                    self.online_generation.fetch_add(1, Ordering::AcqRel);
                    built.push(spec.name.clone());
                }
                Ok(Err(e)) => {
                    tracing::warn!(model = %spec.name, error = %e, "onboarding from feedback failed")
                }
                Err(e) => {
                    tracing::warn!(model = %spec.name, error = %e, "onboarding task failed")
                }
            }
        }
        built
    }
}

/// The onboarding fits of one model, for each path with enough scored prompts.
fn fit(
    router: &routemesh_router::Router,
    name: &str,
    inputs: Vec<(EmbedPath, u64, Vec<ScoredPrompt>)>,
) -> Result<OnlineModel, onboard::OnboardError> {
    let cfg = OnboardConfig::default();
    let mut model = OnlineModel {
        mixtures: Vec::new(),
        pool: None,
        scored: 0,
        similar_to: Vec::new(),
        built_at_ms: routemesh_telemetry::record::now_ms(),
    };
    for (path, changed, mut rows) in inputs {
        let Some(base) = router.task_mixture(path) else {
            continue;
        };
        // A row of another dimension (a corrupt record) would fail the whole fit.
        let dim = base.classifier.w.ncols();
        rows.retain(|(e, _)| e.len() == dim);
        if rows.is_empty() {
            continue;
        }
        let dim = rows.first().map_or(0, |(e, _)| e.len());
        let flat: Vec<f32> = rows.iter().flat_map(|(e, _)| e.iter().copied()).collect();
        let emb = Array2::from_shape_vec((rows.len(), dim), flat)
            .map_err(|e| onboard::OnboardError::Numerical(e.to_string()))?;
        let scores: Vec<f64> = rows.iter().map(|(_, s)| *s).collect();
        let candidates: Vec<usize> = (0..base.models.len()).collect();
        let sim =
            onboard::similarity(base, emb.view(), &scores, &candidates, router.pools(), &cfg)?;
        let mixture = onboard::onboard(base, name, emb.view(), &scores, &sim, &cfg)?;
        if rows.len() > model.scored {
            model.scored = rows.len();
            model.pool = sim.pool;
            model.similar_to = sim.similar_to(&base.models);
        }
        model.mixtures.push((path, mixture, changed));
    }
    Ok(model)
}
