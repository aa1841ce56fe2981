//! A worker agent watches its engine: when the engine stops answering, the
//! agent leaves the pool (out of the registry, NOT_SERVING, its load report
//! says why) so routing stops sending it work; when the engine answers
//! again, it comes back. The engine is a real HTTP server that goes away
//! and returns on the same port.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use routemesh_proto::v1::{ListModelsRequest, LoadRequest};
use routemesh_tests::fake_openai::FakeOpenAi;
use routemesh_tests::*;

fn mesh_yaml(base_url: &str) -> String {
    format!(
        "{}workers:\n  - id: engine-0\n    model: engine-model\n    tier: large\n    registration_ttl: 600ms\n    backend:\n      openai: {{base_url: \"{base_url}\", timeout: 2s}}\n  - id: sim-0\n    model: sim-model\n    tier: small\n    backend:\n      sim: {{ttft_ms: {{median: 1}}}}\n",
        gateway_yaml(None)
    )
}

async fn models(url: &str) -> Vec<String> {
    let mut c = gateway_client(url).await;
    c.list_models(ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models
        .into_iter()
        .map(|m| m.name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_leaves_the_pool_while_its_engine_is_down() {
    let engine = FakeOpenAi::start().await;
    let port: u16 = engine
        .base_url
        .trim_start_matches("http://127.0.0.1:")
        .trim_end_matches("/v1")
        .parse()
        .unwrap();
    let up = Process::start("up", "up", &mesh_yaml(&engine.base_url), &[]).unwrap();
    let url = up.gateway_url();
    wait_for_pool(&url, 2).await;

    // The engine goes away; the agent stays up but leaves the pool.
    drop(engine);
    eventually(
        Duration::from_secs(10),
        "the engine's model leaves the pool",
        || {
            let url = url.clone();
            async move { models(&url).await == ["sim-model"] }
        },
    )
    .await;
    let mut agent = worker_client(&up.worker_endpoint(0)).await;
    let report = agent.load(LoadRequest {}).await.unwrap().into_inner();
    assert!(!report.engine_down.is_empty(), "the load report says why");
    // Routed requests go to what can serve them meanwhile.
    let mut client = gateway_client(&url).await;
    let answer = client
        .generate(ask("still there?"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.usage.unwrap().model, "sim-model");
    assert!(up.log().contains("engine does not answer"), "{}", up.log());

    // It answers again on its port: the worker is back.
    let _engine = FakeOpenAi::start_on(port).await;
    eventually(
        Duration::from_secs(10),
        "the engine's model is back",
        || {
            let url = url.clone();
            async move { models(&url).await.len() == 2 }
        },
    )
    .await;
    let report = agent.load(LoadRequest {}).await.unwrap().into_inner();
    assert!(report.engine_down.is_empty());
}
