//! Telemetry shared through Redis, and routing that adapts to it: two gateway
//! replicas see each other's observations and feedback; a failing or slow
//! worker loses traffic and wins it back when it recovers; feedback moves
//! traffic between models.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use routemesh_proto::v1::gateway_client::GatewayClient;
use routemesh_proto::v1::{FeedbackRequest, GenerateRequest};
use routemesh_tests::*;
use tonic::transport::Channel;

const FAST: &str =
    "{ttft_ms: {median: 2}, tokens_per_second: {median: 2000}, output_tokens: {median: 8}}";

struct Cleanup(String, String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (redis, mesh) = (self.0.clone(), self.1.clone());
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(delete_mesh_keys(&redis, &mesh));
        })
        .join();
    }
}

/// Sends `n` requests; returns how many each worker served.
async fn send(client: &mut GatewayClient<Channel>, n: usize) -> HashMap<String, usize> {
    let mut served = HashMap::new();
    for _ in 0..n {
        let r = client.generate(ask("hello")).await.unwrap().into_inner();
        *served.entry(r.usage.unwrap().worker_id).or_default() += 1;
    }
    served
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_telemetry_and_feedback() {
    let redis = shared_redis_url();
    let mesh = unique_mesh("replicas");
    let _cleanup = Cleanup(redis.clone(), mesh.clone());
    let r = Some((redis.as_str(), mesh.as_str()));
    let _worker = Process::start(
        "w",
        "worker",
        &sim_worker_yaml(r, "shared-w", "m", "small", FAST),
        &[],
    )
    .unwrap();
    let one = Process::start("gateway-1", "gateway", &gateway_yaml(r), &[]).unwrap();
    let two = Process::start("gateway-2", "gateway", &gateway_yaml(r), &[]).unwrap();
    let mut c1 = gateway_client(&one.gateway_url()).await;
    let c2 = gateway_client(&two.gateway_url()).await;

    eventually(Duration::from_secs(10), "gateway 1 serves", || {
        let mut c1 = c1.clone();
        async move { c1.generate(ask("hi")).await.is_ok() }
    })
    .await;
    let mut last = None;
    for i in 0..20 {
        let req = GenerateRequest {
            request_id: format!("{mesh}-{i}"),
            ..ask("hello")
        };
        last = Some(c1.generate(req).await.unwrap().into_inner().request_id);
    }
    c1.feedback(FeedbackRequest {
        request_id: last.unwrap(),
        score: 0.0,
        comment: String::new(),
    })
    .await
    .unwrap();

    // Gateway 2 served nothing, yet its Route explanation shows gateway 1's
    // requests and feedback, read from Redis.
    eventually(
        Duration::from_secs(10),
        "gateway 2 sees gateway 1's telemetry and feedback",
        || {
            let mut c2 = c2.clone();
            async move {
                let d = c2.route(ask("hi")).await.unwrap().into_inner();
                let c = &d.candidates[0];
                d.telemetry_source == "shared"
                    && c.observed_requests >= 20.0
                    && c.feedback_count == 1.0
                    && c.quality_source == "prior+feedback"
            }
        },
    )
    .await;
    let d = c2.clone().route(ask("hi")).await.unwrap().into_inner();
    let c = &d.candidates[0];
    // Prior 0.55 with weight 10 and one score of 0: 5.5 / 11.
    assert!((c.predicted_quality - 0.5).abs() < 1e-9, "{c:?}");
    assert!(
        c.observed_ttft_ms_p50 > 0.0 && c.observed_error_rate == 0.0,
        "{c:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_worker_loses_traffic_and_wins_it_back() {
    let redis = shared_redis_url();
    let mesh = unique_mesh("failing");
    let _cleanup = Cleanup(redis.clone(), mesh.clone());
    let r = Some((redis.as_str(), mesh.as_str()));
    // "a-flaky" sorts first, so with equal scores it would win every tie; it
    // declares the same speed as the steady one (its sim's), so it does.
    let mut flaky = Process::start(
        "flaky",
        "worker",
        &sim_worker_yaml(
            r,
            "a-flaky",
            "m",
            "small",
            "{error_rate: 1.0, ttft_ms: {median: 2}, tokens_per_second: {median: 2000}, output_tokens: {median: 8}}",
        ),
        &[],
    )
    .unwrap();
    let _steady = Process::start(
        "steady",
        "worker",
        &sim_worker_yaml(r, "b-steady", "m", "small", FAST),
        &[],
    )
    .unwrap();
    let gateway = Process::start("gateway", "gateway", &gateway_yaml(r), &[]).unwrap();
    let mut client = gateway_client(&gateway.gateway_url()).await;
    wait_for_pool(&gateway.gateway_url(), 2).await;

    // Every failure at the flaky worker fails over to the steady one: no
    // client error, and the flaky worker's observed error rate climbs until
    // it stops getting traffic.
    send(&mut client, 20).await;
    eventually(
        Duration::from_secs(10),
        "the flaky worker gets no more traffic",
        || {
            let mut c = client.clone();
            async move { send(&mut c, 10).await.get("b-steady") == Some(&10) }
        },
    )
    .await;
    let d = client.route(ask("hi")).await.unwrap().into_inner();
    let flaky_view = d
        .candidates
        .iter()
        .find(|c| c.worker_id == "a-flaky")
        .unwrap();
    assert!(flaky_view.observed_error_rate > 0.5, "{flaky_view:?}");
    assert!(d.reason.contains("error rate"), "{}", d.reason);

    // The worker recovers (restarted healthy under the same id): once its
    // errors age out of the window it wins traffic again.
    flaky.terminate().unwrap();
    let _recovered = Process::start(
        "recovered",
        "worker",
        &sim_worker_yaml(r, "a-flaky", "m", "small", FAST),
        &[],
    )
    .unwrap();
    eventually(
        Duration::from_secs(30),
        "the recovered worker serves again",
        || {
            let mut c = client.clone();
            async move { send(&mut c, 5).await.get("a-flaky").copied().unwrap_or(0) > 0 }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_worker_loses_traffic_to_a_fast_one() {
    let redis = shared_redis_url();
    let mesh = unique_mesh("slow");
    let _cleanup = Cleanup(redis.clone(), mesh.clone());
    let r = Some((redis.as_str(), mesh.as_str()));
    // The slow worker declares itself fast (a wrong `expected_*`), so it
    // takes the traffic until its real speed is observed.
    let _slow = Process::start(
        "slow",
        "worker",
        &sim_worker_yaml(
            r,
            "a-slow",
            "m",
            "small",
            "{ttft_ms: {median: 400}, tokens_per_second: {median: 40}, output_tokens: {median: 8}}",
        )
        .replace(
            "    backend:",
            "    expected_ttft_ms: 1\n    expected_tokens_per_second: 100000\n    backend:",
        ),
        &[],
    )
    .unwrap();
    let _fast = Process::start(
        "fast",
        "worker",
        &sim_worker_yaml(r, "b-fast", "m", "small", FAST),
        &[],
    )
    .unwrap();
    // A latency weight that makes a second matter.
    let gateway = Process::start(
        "gateway",
        "gateway",
        &gateway_yaml_with(r, "  latency_weight: 0.2\n"),
        &[],
    )
    .unwrap();
    let mut client = gateway_client(&gateway.gateway_url()).await;
    wait_for_pool(&gateway.gateway_url(), 2).await;
    // At first only declared figures are known and a-slow claims to be the
    // faster; once its speed is observed, traffic moves to the fast worker.
    send(&mut client, 5).await;
    eventually(
        Duration::from_secs(15),
        "the slow worker's speed is known and the fast one takes the traffic",
        || {
            let mut c = client.clone();
            async move {
                let known = c
                    .route(ask("hi"))
                    .await
                    .map(|d| {
                        d.into_inner().candidates.iter().all(|c| {
                            ["telemetry", "load-report"].contains(&c.latency_source.as_str())
                        })
                    })
                    .unwrap_or(false);
                known && send(&mut c, 5).await.get("b-fast") == Some(&5)
            }
        },
    )
    .await;
    let d = client.route(ask("hi")).await.unwrap().into_inner();
    let slow = d
        .candidates
        .iter()
        .find(|c| c.worker_id == "a-slow")
        .unwrap();
    let fast = d
        .candidates
        .iter()
        .find(|c| c.worker_id == "b-fast")
        .unwrap();
    assert!(
        slow.expected_latency_ms > fast.expected_latency_ms * 5.0,
        "{slow:?} vs {fast:?}"
    );
    assert!(
        ["telemetry", "load-report"].contains(&slow.latency_source.as_str()),
        "{slow:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_moves_traffic_between_models() {
    let redis = shared_redis_url();
    let mesh = unique_mesh("feedback");
    let _cleanup = Cleanup(redis.clone(), mesh.clone());
    let r = Some((redis.as_str(), mesh.as_str()));
    let _small = Process::start(
        "small",
        "worker",
        &sim_worker_yaml(r, "small-0", "small-model", "small", FAST),
        &[],
    )
    .unwrap();
    let _large = Process::start(
        "large",
        "worker",
        &sim_worker_yaml(r, "large-0", "large-model", "large", FAST),
        &[],
    )
    .unwrap();
    // λ low enough that, on priors, the large model wins.
    let gateway = Process::start(
        "gateway",
        "gateway",
        &gateway_yaml_with(r, "  cost_weight: 1\n"),
        &[],
    )
    .unwrap();
    let mut client = gateway_client(&gateway.gateway_url()).await;
    wait_for_pool(&gateway.gateway_url(), 2).await;
    let first = client.generate(ask("hi")).await.unwrap().into_inner();
    assert_eq!(first.usage.as_ref().unwrap().model, "large-model");
    // Users report the large model's answers as bad.
    for i in 0..10 {
        let r = client
            .generate(GenerateRequest {
                request_id: format!("{mesh}-fb-{i}"),
                model: "large-model".into(),
                ..ask("hi")
            })
            .await
            .unwrap();
        client
            .feedback(FeedbackRequest {
                request_id: r.into_inner().request_id,
                score: 0.0,
                comment: String::new(),
            })
            .await
            .unwrap();
    }
    eventually(
        Duration::from_secs(10),
        "routing moves to the small model",
        || {
            let mut c = client.clone();
            async move {
                let d = c.route(ask("hi")).await.unwrap().into_inner();
                d.model == "small-model" && d.candidates.iter().any(|c| c.feedback_count == 10.0)
            }
        },
    )
    .await;
    let d = client.route(ask("hi")).await.unwrap().into_inner();
    let large = d
        .candidates
        .iter()
        .find(|c| c.model == "large-model")
        .unwrap();
    // (0.8 · 10 + 0) / (10 + 10) = 0.4.
    assert!(
        (large.predicted_quality - 0.4).abs() < 1e-9 && large.quality_source == "prior+feedback",
        "{large:?}"
    );
}
