//! The per-worker circuit breaker end to end: an engine that fails while its
//! worker agent still answers load checks is cut off after a few failures,
//! probed with growing backoff while it stays down, and taken back by the
//! first probe that succeeds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use routemesh_proto::v1::GenerateRequest;
use routemesh_tests::fake_openai::FakeOpenAi;
use routemesh_tests::*;
use tonic::Code;

fn pinned(model: &str) -> GenerateRequest {
    GenerateRequest {
        model: model.into(),
        ..ask("hi")
    }
}

fn breaker_state(mesh: &Process, worker: &str) -> String {
    let (code, body) = curl_get(&format!("{}/v1/overview", mesh.admin_url()), &[]);
    assert_eq!(code, 200, "{body}");
    let overview: serde_json::Value = serde_json::from_str(&body).unwrap();
    overview["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == worker)
        .map(|w| w["breaker"].as_str().unwrap().to_string())
        .unwrap()
}

fn metric(mesh: &Process, name_and_labels: &[&str]) -> f64 {
    let (_, text) = curl_get(&format!("{}/metrics", mesh.admin_url()), &[]);
    text.lines()
        .filter(|l| name_and_labels.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_engine_is_cut_off_probed_and_taken_back() {
    let fake = FakeOpenAi::start().await;
    fake.state.failing.store(true, Ordering::Release);
    let yaml = format!(
        "{}workers:\n  - id: engine\n    model: engine-model\n    tier: small\n    backend:\n      openai: {{base_url: \"{}\", engine_model: e, timeout: 2s}}\n  - id: sim\n    model: sim-model\n    tier: small\n    backend:\n      sim: {{ttft_ms: {{median: 1}}}}\n",
        gateway_yaml_with(
            None,
            "  circuit_breaker: {failures: 3, open_for: 200ms, max_open_for: 800ms}\n"
        ),
        fake.base_url
    );
    let mesh = Process::start("mesh", "up", &yaml, &[]).unwrap();
    wait_for_pool(&mesh.gateway_url(), 2).await;
    let mut client = gateway_client(&mesh.gateway_url()).await;

    // The engine fails: every request pinned to it fails with UNAVAILABLE
    // (naming the worker while calls reach it, "unhealthy" once cut off).
    let started = Instant::now();
    let mut sent = 0u32;
    while started.elapsed() < Duration::from_millis(2500) {
        let status = client.generate(pinned("engine-model")).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        sent += 1;
    }
    let reached = fake.state.requests.lock().unwrap().len();
    // Open, or half-open if its backoff ran out since the last request.
    assert_ne!(breaker_state(&mesh, "engine"), "closed");
    // 3 failures open it; then one probe per backoff (200, 400, 800, 800 ms).
    // Without the breaker a request would reach it after every load check
    // (every 100 ms): about 25.
    assert!(
        (3..=9).contains(&reached),
        "{reached} of {sent} requests reached the failing engine"
    );
    assert!(sent > 50, "only {sent} requests sent");
    eprintln!("failing engine: {reached} of {sent} requests in 2.5 s reached it");
    let reopened = metric(
        &mesh,
        &[
            "routemesh_circuit_breaker_transitions_total{",
            "worker=\"engine\"",
            "from=\"half_open\"",
            "to=\"open\"",
        ],
    );
    assert!(reopened >= 2.0, "failed probes re-open it: {reopened}");
    // Route explains why the engine is skipped (unless its backoff just ran
    // out, when it is eligible for a probe).
    let decision = client.route(ask("hi")).await.unwrap().into_inner();
    let engine = decision
        .candidates
        .iter()
        .find(|c| c.worker_id == "engine")
        .unwrap();
    assert!(
        engine.excluded_because.starts_with("circuit breaker")
            || engine.excluded_because.is_empty(),
        "{engine:?}"
    );
    // The other model never noticed.
    client.generate(pinned("sim-model")).await.unwrap();

    // The engine recovers: the next probe succeeds and closes the breaker.
    fake.state.failing.store(false, Ordering::Release);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match client.generate(pinned("engine-model")).await {
            Ok(answer) => {
                assert_eq!(answer.into_inner().usage.unwrap().worker_id, "engine");
                break;
            }
            Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        }
        assert!(Instant::now() < deadline, "the engine was never taken back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(breaker_state(&mesh, "engine"), "closed");
    for _ in 0..5 {
        client.generate(pinned("engine-model")).await.unwrap();
    }
    let closed = metric(
        &mesh,
        &[
            "routemesh_circuit_breaker_transitions_total{",
            "worker=\"engine\"",
            "from=\"half_open\"",
            "to=\"closed\"",
        ],
    );
    assert_eq!(closed, 1.0);
}
