//! The models the pool serves now, with their workers' health and load.

use std::collections::BTreeMap;

use routemesh_proto::v1::{ListModelsResponse, ModelInfo, WorkerInfo};

use super::state::GatewayState;

impl GatewayState {
    pub(crate) fn list_models(&self) -> ListModelsResponse {
        let snapshot = self.pool.snapshot();
        let quality = &self.routing.quality;
        let mut models: BTreeMap<&str, ModelInfo> = BTreeMap::new();
        for w in snapshot.iter() {
            let info = models.entry(w.record.model.as_str()).or_insert_with(|| {
                let knowledge = quality.knowledge(&w.spec);
                ModelInfo {
                    name: w.record.model.clone(),
                    tier: w.record.tier.to_wire(),
                    input_usd_per_mtok: w.record.input_usd_per_mtok,
                    output_usd_per_mtok: w.record.output_usd_per_mtok,
                    workers: Vec::new(),
                    healthy_workers: 0,
                    router_model: knowledge.router_model().unwrap_or_default().to_string(),
                    router_knowledge: knowledge.as_str().to_string(),
                    capabilities: Some(w.record.capabilities().into()),
                }
            });
            info.healthy_workers += u32::from(w.healthy());
            info.workers.push(WorkerInfo {
                id: w.record.id.clone(),
                endpoint: w.record.endpoint.clone(),
                healthy: w.healthy(),
                load: w.last_load(),
                gateway_in_flight: w.in_flight(),
            });
        }
        ListModelsResponse {
            models: models.into_values().collect(),
        }
    }
}
