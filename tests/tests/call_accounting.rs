//! Every call to a worker is accounted exactly once, whichever way it ends:
//! the telemetry (metrics and the shared snapshot) and the worker's circuit
//! breaker each see it once, for whole answers and streams alike. The worker
//! is a real gRPC server that misbehaves on purpose (`rogue_worker`), behind
//! the real gateway binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures::StreamExt;
use routemesh_proto::v1::GenerateRequest;
use routemesh_proto::v1::generate_stream_event::Event;
use routemesh_tests::rogue_worker::{RogueWorker, RunningRogue};
use routemesh_tests::*;
use tonic::Code;

/// A gateway whose only worker is `rogue`, with a breaker that opens on the
/// first failure it is told of (and stays open for the test). Load checks get
/// a second (`load_interval`): a check slowed by a busy test machine must not
/// take the worker out, which would be a different failure than the one
/// under test.
async fn gateway_for(rogue: &RunningRogue) -> Process {
    let yaml = format!(
        "gateway:\n  listen: 127.0.0.1:0\n  http_listen: null\n  admin_listen: 127.0.0.1:0\n  discovery_interval: 100ms\n  load_interval: 1s\n  request_timeout: 20s\n  router: {{enabled: false}}\n  circuit_breaker: {{failures: 1, open_for: 60s, max_open_for: 60s}}\n  telemetry: {{window: 10s, snapshot_interval: 50ms, flush_interval: 20ms, min_requests: 3}}\nstatic_workers:\n  - {{id: rogue, model: rogue-model, tier: small, endpoint: \"{}\"}}\n",
        rogue.endpoint
    );
    let gateway = Process::start("gateway", "gateway", &yaml, &[]).unwrap();
    wait_for_pool(&gateway.gateway_url(), 1).await;
    gateway
}

/// Calls to the rogue worker as the gateway's metrics count them, by outcome.
fn calls(gateway: &Process, outcome: &str) -> f64 {
    let (_, text) = curl_get(&format!("{}/metrics", gateway.admin_url()), &[]);
    text.lines()
        .filter(|l| {
            l.starts_with("routemesh_worker_calls_total{")
                && l.contains("worker=\"rogue\"")
                && l.contains(&format!("outcome=\"{outcome}\""))
        })
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

fn breaker(gateway: &Process) -> String {
    let (_, body) = curl_get(&format!("{}/v1/overview", gateway.admin_url()), &[]);
    let overview: serde_json::Value = serde_json::from_str(&body).unwrap();
    overview["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == "rogue")
        .map(|w| w["breaker"].as_str().unwrap().to_string())
        .unwrap()
}

/// Waits until the shared telemetry snapshot has counted `n` calls at the
/// rogue worker, and checks that it stays at `n`.
async fn telemetry_counts(gateway: &Process, n: f64) {
    let requests = || {
        let (_, body) = curl_get(&format!("{}/v1/telemetry", gateway.admin_url()), &[]);
        let t: serde_json::Value = serde_json::from_str(&body).unwrap();
        t["snapshot"]["workers"]["rogue"]["requests"]
            .as_f64()
            .unwrap_or(0.0)
    };
    eventually(
        Duration::from_secs(5),
        "telemetry counts the call",
        || async { requests() == n },
    )
    .await;
    // Two more snapshot intervals: nothing is counted twice.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(requests(), n);
}

fn prompt(text: &str) -> GenerateRequest {
    GenerateRequest {
        model: "rogue-model".into(),
        ..ask(text)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_closed_before_any_event_is_one_failed_call() {
    let rogue = RogueWorker::start().await;
    let gateway = gateway_for(&rogue).await;
    let mut client = gateway_client(&gateway.gateway_url()).await;
    let status = client
        .generate_stream(prompt("close-at-once"))
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(status.message().contains("without an event"), "{status:?}");
    assert_eq!(calls(&gateway, "worker_error"), 1.0);
    assert_eq!(breaker(&gateway), "open");
    telemetry_counts(&gateway, 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ending_without_its_end_event_is_one_failed_call() {
    let rogue = RogueWorker::start().await;
    let gateway = gateway_for(&rogue).await;
    let mut client = gateway_client(&gateway.gateway_url()).await;
    let mut events = client
        .generate_stream(prompt("no-end"))
        .await
        .unwrap()
        .into_inner();
    let mut deltas = 0;
    let status = loop {
        match events.next().await.expect("the stream ends with an error") {
            Ok(e) => deltas += usize::from(matches!(e.event, Some(Event::Delta(_)))),
            Err(status) => break status,
        }
    };
    assert_eq!(deltas, 2);
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("without an end event"),
        "{status:?}"
    );
    assert_eq!(calls(&gateway, "worker_error"), 1.0);
    assert_eq!(breaker(&gateway), "open");
    telemetry_counts(&gateway, 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_failing_midway_is_one_failed_call() {
    let rogue = RogueWorker::start().await;
    let gateway = gateway_for(&rogue).await;
    let mut client = gateway_client(&gateway.gateway_url()).await;
    let mut events = client
        .generate_stream(prompt("fail-mid"))
        .await
        .unwrap()
        .into_inner();
    let status = loop {
        if let Err(status) = events.next().await.expect("an error ends it") {
            break status;
        }
    };
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(
        status.message().contains("mid-stream after 2 deltas"),
        "{status:?}"
    );
    assert_eq!(calls(&gateway, "worker_error"), 1.0);
    assert_eq!(breaker(&gateway), "open");
    telemetry_counts(&gateway, 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_a_stream_is_one_cancelled_call_not_the_workers_fault() {
    let rogue = RogueWorker::start().await;
    let gateway = gateway_for(&rogue).await;
    let mut client = gateway_client(&gateway.gateway_url()).await;
    let mut events = client
        .generate_stream(prompt("endless"))
        .await
        .unwrap()
        .into_inner();
    for _ in 0..3 {
        events.next().await.unwrap().unwrap();
    }
    drop(events);
    drop(client);
    eventually(
        Duration::from_secs(5),
        "the abandoned call is counted",
        || async { calls(&gateway, "cancelled") == 1.0 },
    )
    .await;
    assert_eq!(calls(&gateway, "worker_error"), 0.0);
    assert_eq!(breaker(&gateway), "closed");
    telemetry_counts(&gateway, 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_and_streamed_answers_are_one_served_call_each() {
    let rogue = RogueWorker::start().await;
    let gateway = gateway_for(&rogue).await;
    let mut client = gateway_client(&gateway.gateway_url()).await;
    let answer = client.generate(prompt("hi")).await.unwrap().into_inner();
    assert_eq!(answer.text, "ok ok");
    let events: Vec<_> = client
        .generate_stream(prompt("hi"))
        .await
        .unwrap()
        .into_inner()
        .collect()
        .await;
    assert!(matches!(
        events.last().unwrap().as_ref().unwrap().event,
        Some(Event::End(_))
    ));
    assert_eq!(calls(&gateway, "ok"), 2.0);
    assert_eq!(breaker(&gateway), "closed");
    telemetry_counts(&gateway, 2.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_short_deadline_is_one_timed_out_call_not_the_workers_fault() {
    let rogue = RogueWorker::start().await;
    let gateway = gateway_for(&rogue).await;
    let mut client = gateway_client(&gateway.gateway_url()).await;
    for streaming in [false, true] {
        let mut request = tonic::Request::new(prompt("stall"));
        request.set_timeout(Duration::from_millis(300));
        let status = if streaming {
            client
                .generate_stream(request)
                .await
                .map(|_| ())
                .unwrap_err()
        } else {
            client.generate(request).await.map(|_| ()).unwrap_err()
        };
        // The client's own timer may end it first (CANCELLED, "Timeout expired").
        assert!(
            matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
            "{status:?}"
        );
    }
    // The gateway's own timer and tonic's grpc-timeout layer race for the
    // same instant: the call ends as timed out or as dropped with its request
    // (cancelled). Either way it is counted once and not against the worker.
    eventually(Duration::from_secs(5), "both calls are counted", || async {
        calls(&gateway, "timeout") + calls(&gateway, "cancelled") == 2.0
    })
    .await;
    assert_eq!(calls(&gateway, "worker_error"), 0.0);
    assert_eq!(breaker(&gateway), "closed");
    telemetry_counts(&gateway, 2.0).await;
}
