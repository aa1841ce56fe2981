//! What an autoscaler scales on, as a running gateway exports it: per model,
//! the requests generating and waiting at its healthy workers (from their
//! own load reports), their slots, in-flight per slot, and the engines'
//! KV-cache use where the engine reports it (a real HTTP engine serving
//! vLLM's metric); and the gateway's own generations in flight.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use routemesh_proto::v1::GenerateRequest;
use routemesh_tests::fake_openai::FakeOpenAi;
use routemesh_tests::*;

fn pinned(model: &str) -> GenerateRequest {
    GenerateRequest {
        model: model.into(),
        ..ask("hold on")
    }
}

/// The sample of `series` (name and labels, exactly) on a metrics page.
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_export_load_per_slot_queue_and_kv_cache() {
    let engine = FakeOpenAi::start().await;
    *engine.state.kv_cache_usage.lock().unwrap() = Some(0.25);
    // sim-model: 2 slots, and every request stalls until its client leaves,
    // so three held requests are two generating and one queued.
    let yaml = format!(
        "{}workers:\n  - id: sim-0\n    model: sim-model\n    tier: small\n    capacity: 2\n    max_queue: 8\n    backend:\n      sim: {{stall_rate: 1.0}}\n  - id: engine-0\n    model: engine-model\n    tier: large\n    capacity: 4\n    registration_ttl: 600ms\n    backend:\n      openai: {{base_url: \"{}\", timeout: 5s}}\n",
        gateway_yaml(None),
        engine.base_url
    );
    let mesh = Process::start("up", "up", &yaml, &[]).unwrap();
    let url = mesh.gateway_url();
    wait_for_pool(&url, 2).await;

    let held: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                gateway_client(&url)
                    .await
                    .generate(pinned("sim-model"))
                    .await
            })
        })
        .collect();
    wait_for_in_flight(&url, 3).await;

    let metrics = format!("{}/metrics", mesh.admin_url());
    let expected = [
        (r#"routemesh_pool_in_flight{model="sim-model"}"#, 2.0),
        (r#"routemesh_pool_queue_depth{model="sim-model"}"#, 1.0),
        (r#"routemesh_pool_slots{model="sim-model"}"#, 2.0),
        (r#"routemesh_pool_utilization{model="sim-model"}"#, 1.0),
        (r#"routemesh_pool_in_flight{model="engine-model"}"#, 0.0),
        (r#"routemesh_pool_slots{model="engine-model"}"#, 4.0),
        (r#"routemesh_pool_utilization{model="engine-model"}"#, 0.0),
        (
            r#"routemesh_pool_kv_cache_usage{model="engine-model"}"#,
            0.25,
        ),
        ("routemesh_gateway_requests_in_flight", 3.0),
        ("routemesh_gateway_request_slots", 4096.0),
    ];
    // The workers' load reports reach the gateway on its next load check.
    let mut page = String::new();
    eventually(
        Duration::from_secs(10),
        "the pool's load series show the held requests",
        || {
            page = curl_get(&metrics, &[]).1;
            let ok = expected
                .iter()
                .all(|(series, v)| sample(&page, series) == Some(*v));
            async move { ok }
        },
    )
    .await;
    // A simulated engine reports no KV cache: no series is made up for it.
    assert!(
        !page.contains(r#"routemesh_pool_kv_cache_usage{model="sim-model"}"#),
        "{page}"
    );

    // The held requests leave; so does the load.
    for h in &held {
        h.abort();
    }
    eventually(Duration::from_secs(10), "the load is gone", || {
        let page = curl_get(&metrics, &[]).1;
        let ok = sample(&page, r#"routemesh_pool_in_flight{model="sim-model"}"#) == Some(0.0)
            && sample(&page, r#"routemesh_pool_queue_depth{model="sim-model"}"#) == Some(0.0)
            && sample(&page, "routemesh_gateway_requests_in_flight") == Some(0.0);
        async move { ok }
    })
    .await;

    // An engine that stops reporting its KV cache stops being averaged in.
    *engine.state.kv_cache_usage.lock().unwrap() = None;
    eventually(
        Duration::from_secs(10),
        "the KV-cache series leaves",
        || {
            let page = curl_get(&metrics, &[]).1;
            let ok = !page.contains("routemesh_pool_kv_cache_usage{");
            async move { ok }
        },
    )
    .await;
}
