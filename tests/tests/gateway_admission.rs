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

/// A client connection is told the gRPC port's stream limit
/// (`connections.max_concurrent_streams`), and its requests beyond it wait in
/// the client and are then served: none is refused, none fails with its
/// connection (an overloaded gateway without the limit closed busy clients'
/// connections with a GOAWAY, failing every call on them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_a_connections_stream_limit_wait_in_the_client() {
    // Each answer waits 1 s for its first token, so the requests overlap.
    let worker = sim_worker_yaml(
        None,
        "slow-0",
        "m",
        "small",
        "{stall_rate: 1.0, stall_for: 1s, output_tokens: {median: 4}}",
    );
    let yaml = format!(
        "{}{}",
        gateway_yaml_with(None, "  connections: {max_concurrent_streams: 2}\n"),
        worker
    );
    let mesh = Process::start("mesh", "up", &yaml, &[]).unwrap();
    let url = mesh.gateway_url();

    // The server's SETTINGS precede its answer to a ping.
    let tcp = tokio::net::TcpStream::connect(url.trim_start_matches("http://"))
        .await
        .unwrap();
    let (_client, mut connection) = h2::client::handshake(tcp).await.unwrap();
    let mut ping_pong = connection.ping_pong().expect("ping_pong");
    tokio::select! {
        pong = ping_pong.ping(h2::Ping::opaque()) => { pong.unwrap(); }
        closed = &mut connection => panic!("connection ended: {closed:?}"),
    }
    assert_eq!(connection.max_concurrent_send_streams(), 2);

    // Five requests on one connection: two at a time in the gateway, all served.
    let client = gateway_client(&url).await;
    let calls: Vec<_> = (0..5)
        .map(|i| {
            let mut c = client.clone();
            tokio::spawn(async move { c.generate(ask(&format!("question {i}"))).await })
        })
        .collect();
    wait_for_in_flight(&url, 2).await;
    for call in calls {
        let answer = call.await.unwrap();
        assert!(answer.is_ok(), "{answer:?}");
    }
}
