//! Recently served requests, remembered so Feedback can attribute a score to
//! the model and worker that answered. Bounded: the least useful are
//! forgotten first (S3-FIFO), so a flood of requests never grows it.
//!
//! Requests are keyed by their owner (the tenant whose API key made them,
//! `None` without auth) and their id: a client-chosen id is namespaced by
//! its tenant, so another tenant choosing the same id neither overwrites
//! the request nor can score it. Each remembered request also holds the
//! score it was given, so a second score replaces the first.

use std::sync::{Arc, Mutex};

use routemesh_mesh::ModelSpec;

use crate::routing::quality::Predicted;

#[derive(Debug, Clone)]
pub(crate) struct Served {
    /// The model that answered, as the pool knows it.
    pub spec: ModelSpec,
    pub worker_id: String,
    /// What the router said about the prompt (its point in embedding
    /// space, where feedback on this request is kept).
    pub predicted: Option<Predicted>,
    /// The score this request was given, shared by every copy of this entry
    /// so that concurrent Feedback calls for one request see each other.
    pub scored: Arc<Mutex<Option<Scored>>>,
}

/// A score already counted for a request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Scored {
    pub score: f64,
    /// When it was first recorded: a replacement is recorded in the same
    /// day's feedback, so both expire from the window together.
    pub at_ms: u64,
}

impl Served {
    pub(crate) fn new(spec: ModelSpec, worker_id: String, predicted: Option<Predicted>) -> Self {
        Self {
            spec,
            worker_id,
            predicted,
            scored: Arc::default(),
        }
    }
}

/// Who made a request: the tenant its API key authenticated, or `None`
/// when auth is off (every caller is then the same anonymous tenant).
pub(crate) type Owner = Option<String>;

#[derive(Debug)]
pub(crate) struct Recent {
    served: quick_cache::sync::Cache<(Owner, String), Served>,
}

impl Recent {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            served: crate::cache::bounded(capacity),
        }
    }

    pub(crate) fn remember(&self, owner: &Owner, request_id: &str, served: Served) {
        self.served
            .insert((owner.clone(), request_id.to_string()), served);
    }

    /// The request `owner` made with this id; another tenant's request with
    /// the same id is not found (not revealed).
    pub(crate) fn lookup(&self, owner: &Owner, request_id: &str) -> Option<Served> {
        self.served.get(&(owner.clone(), request_id.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(model: &str) -> Served {
        let spec = ModelSpec {
            name: model.into(),
            tier: routemesh_mesh::Tier::Small,
            input_usd_per_mtok: 0.0,
            output_usd_per_mtok: 0.0,
            quality_prior: None,
            router_model: None,
            params_b: None,
        };
        Served::new(spec, "w".into(), None)
    }

    fn model(r: &Recent, owner: &Owner, id: &str) -> Option<String> {
        r.lookup(owner, id).map(|s| s.spec.name)
    }

    #[test]
    fn remembers_recent_requests_and_stays_bounded() {
        let r = Recent::new(100);
        r.remember(&None, "a", served("1"));
        assert_eq!(model(&r, &None, "a"), Some("1".into()));
        assert_eq!(model(&r, &None, "b"), None);
        for i in 0..10_000 {
            r.remember(&None, &format!("req-{i}"), served("x"));
        }
        let kept = (0..10_000)
            .filter(|i| r.lookup(&None, &format!("req-{i}")).is_some())
            .count();
        assert!(kept <= 100, "{kept} of 10000 kept with a capacity of 100");
        assert!(
            r.lookup(&None, "req-9999").is_some(),
            "the newest request is remembered"
        );
    }

    #[test]
    fn request_ids_are_namespaced_by_owner() {
        let r = Recent::new(100);
        let (a, b) = (Some("a".to_string()), Some("b".to_string()));
        r.remember(&a, "id", served("a-model"));
        r.remember(&b, "id", served("b-model"));
        assert_eq!(model(&r, &a, "id"), Some("a-model".into()));
        assert_eq!(model(&r, &b, "id"), Some("b-model".into()));
        assert_eq!(model(&r, &None, "id"), None, "anonymous is not a or b");
    }
}
