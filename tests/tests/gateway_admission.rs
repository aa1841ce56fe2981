//! The gateway's concurrency limit: requests over it are refused at once with
//! RESOURCE_EXHAUSTED (no queue builds up), a stream holds its slot until it
//! ends, and health checks are never refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use routemesh_tests::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_limit_is_refused_at_once_and_health_still_answers() {
    // A worker whose engine stalls 3 s before the first token: requests pile up.
    let worker = sim_worker_yaml(
        None,
        "slow-0",
        "m",
        "small",
        "{stall_rate: 1.0, stall_for: 3s}",
    );
    let yaml = format!(
        "{}{}",
        gateway_yaml_with(None, "  max_concurrent_requests: 2\n"),
        worker
    );
    let mesh = Process::start("mesh", "up", &yaml, &[]).unwrap();
    let url = mesh.gateway_url();

    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = gateway_client(&url).await;
        held.push(tokio::spawn(async move {
            c.generate_stream(ask("hold")).await.map(|_| ())
        }));
    }
    wait_for_in_flight(&url, 2).await;

    let mut client = gateway_client(&url).await;
    let started = std::time::Instant::now();
    let status = client.generate(ask("one more")).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("limit of 2 concurrent requests"),
        "{}",
        status.message()
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused at once, not queued"
    );

    // Health is outside the limit.
    let channel = tonic::transport::Channel::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        serving.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // Once the held requests finish, new ones are admitted again.
    for h in held {
        h.await.unwrap().unwrap();
    }
    eventually(Duration::from_secs(10), "admitted again", || {
        let mut c = client.clone();
        async move {
            c.route(ask("hi")).await.is_ok()
                && c.generate(routemesh_proto::v1::GenerateRequest { ..ask("x") })
                    .await
                    .map(|_| true)
                    .unwrap_or_else(|s| s.code() != Code::ResourceExhausted)
        }
    })
    .await;
}
