//! How the learned router knows each model of the pool: matched by name (or
//! a declared `router_model`) to the artifact's models, or standing on the
//! known models nearest to it, on the router's own per-prompt scale.

use std::collections::HashMap;
use std::sync::Arc;

use routemesh_mesh::ModelSpec;
use routemesh_router::names::Stand;

use super::QualityModel;

/// How the learned router knows a model of the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Knowledge {
    /// Trained on it, under this artifact name.
    Learned(Arc<str>),
    /// Added to the artifact from scored prompts (`routemesh router onboard`),
    /// or onboarded online from feedback (under its served name).
    Onboarded(Arc<str>),
    /// Not known (or no router): see [`QualityModel::stand_in`].
    Unknown,
}

impl Knowledge {
    /// `learned`, `onboarded` or `prior`, as ListModels and the explanation say it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Knowledge::Learned(_) => "learned",
            Knowledge::Onboarded(_) => "onboarded",
            Knowledge::Unknown => "prior",
        }
    }

    /// The artifact's name for the model, when it knows it.
    pub fn router_model(&self) -> Option<&str> {
        match self {
            Knowledge::Learned(m) | Knowledge::Onboarded(m) => Some(m),
            Knowledge::Unknown => None,
        }
    }
}

/// A model's prior on the router's scale: the predictions for `stands` (weights summing to 1), less
/// `penalty`.
#[derive(Debug, Clone, PartialEq)]
pub struct StandIn {
    pub stands: Vec<Stand>,
    pub penalty: f64,
}

impl StandIn {
    /// The prior for a prompt the router predicted `scores` for; `None` if it lacks a stand.
    pub fn quality(&self, scores: &HashMap<String, f64>) -> Option<f64> {
        let mut q = 0.0;
        for s in &self.stands {
            q += s.weight * scores.get(&s.model)?;
        }
        (!self.stands.is_empty()).then(|| (q - self.penalty).clamp(0.0, 1.0))
    }
}

impl QualityModel {
    /// How the router knows `spec`: by its declared `router_model`, else its
    /// name matched leniently (see `routemesh_router::names`). Matched once.
    pub fn knowledge(&self, spec: &ModelSpec) -> Knowledge {
        match self.base_knowledge(spec) {
            Knowledge::Unknown if self.online_models().contains_key(&spec.name) => {
                Knowledge::Onboarded(Arc::from(spec.name.as_str()))
            }
            known => known,
        }
    }

    /// How the artifact itself knows `spec` (not counting models onboarded
    /// online from feedback).
    pub(super) fn base_knowledge(&self, spec: &ModelSpec) -> Knowledge {
        let Some(router) = &self.router else {
            return Knowledge::Unknown;
        };
        // Looked up by reference: this runs for every worker of every decision.
        if let Some(k) = self
            .knowledge
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(spec.name.as_str())
            .and_then(|known| {
                known
                    .iter()
                    .find(|(declared, _)| *declared == spec.router_model)
            })
        {
            return k.1.clone();
        }
        let known = router
            .catalog()
            .resolve(&spec.name, spec.router_model.as_deref());
        let k = match known {
            Some(m) if router.manifest().onboarded.contains_key(m) => {
                Knowledge::Onboarded(Arc::from(m))
            }
            Some(m) => Knowledge::Learned(Arc::from(m)),
            None => {
                if let Some(declared) = &spec.router_model {
                    tracing::warn!(model = %spec.name, router_model = %declared, "router_model is not a model of the router artifact; the model is routed on the known models nearest to it");
                }
                Knowledge::Unknown
            }
        };
        self.knowledge
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(spec.name.clone())
            .or_default()
            .push((spec.router_model.clone(), k.clone()));
        k
    }

    /// The router's training pool that predictions for this pool are
    /// compared in: the one that knows most of `knowledge`'s models (ties:
    /// the larger pool), `None` without a router.
    pub fn training_pool(&self, knowledge: &[Knowledge]) -> Option<usize> {
        let router = self.router.as_ref()?;
        router
            .pools()
            .iter()
            .enumerate()
            .max_by_key(|(i, pool)| {
                let known = knowledge
                    .iter()
                    .filter_map(|k| k.router_model())
                    .filter(|m| pool.iter().any(|p| p == m))
                    .count();
                (known, pool.len(), std::cmp::Reverse(*i))
            })
            .map(|(i, _)| i)
    }

    /// Whether `model` (an artifact name) is in training pool `pool`.
    pub fn in_training_pool(&self, model: &str, pool: usize) -> bool {
        if let Some(online) = self.online_models().get(model) {
            return online.pool == Some(pool);
        }
        self.router
            .as_ref()
            .and_then(|r| r.pools().get(pool))
            .is_some_and(|p| p.iter().any(|m| m == model))
    }

    /// What stands in for a model the router does not know, within training
    /// pool `pool`: the known models nearest in size and family, less
    /// `router.unknown_model_margin` and 0.02 per halving of size below them.
    /// `None` without a router, or for a model with a configured
    /// `quality_prior` (a fixed figure the operator chose).
    pub fn stand_in(&self, spec: &ModelSpec, pool: usize) -> Option<Arc<StandIn>> {
        if spec.quality_prior.is_some() {
            return None;
        }
        let router = self.router.as_ref()?;
        // Looked up by reference: this runs for every unknown model of every decision.
        if let Some(s) = self
            .stand_ins
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(spec.name.as_str())
            .and_then(|by_pool| by_pool.iter().find(|(p, _)| *p == pool))
        {
            return Some(s.1.clone());
        }
        let candidates: Vec<&str> = router
            .pools()
            .get(pool)?
            .iter()
            .map(String::as_str)
            .collect();
        let large = spec.tier == routemesh_mesh::Tier::Large;
        let stands = router
            .catalog()
            .nearest(&spec.name, spec.params_b, large, &candidates);
        let stand_in = Arc::new(StandIn {
            penalty: routemesh_router::names::stand_in_penalty(&stands, self.unknown_model_margin),
            stands,
        });
        self.stand_ins
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(spec.name.clone())
            .or_default()
            .push((pool, stand_in.clone()));
        Some(stand_in)
    }

    /// The artifact's names of the pool's models it knows (what `predict`
    /// and `prepare` take).
    pub fn router_names<'a>(&self, specs: impl Iterator<Item = &'a ModelSpec>) -> Vec<String> {
        let mut names: Vec<String> = specs
            .filter_map(|s| self.knowledge(s).router_model().map(str::to_string))
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}
