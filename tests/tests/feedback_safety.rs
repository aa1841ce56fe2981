//! Feedback that cannot be poisoned, against the real binary: only the
//! tenant whose key made a request may score it, client-chosen request ids
//! are namespaced by tenant, a request holds one score (the last replaces
//! the earlier), and each tenant's Feedback calls are rate limited.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use routemesh_proto::v1::gateway_client::GatewayClient;
use routemesh_proto::v1::{FeedbackRequest, GenerateRequest};
use routemesh_tests::*;
use tonic::Code;
use tonic::transport::Channel;

const FAST: &str =
    "{ttft_ms: {median: 2}, tokens_per_second: {median: 2000}, output_tokens: {median: 8}}";
const KEY_A: &str = "sk-tenant-a";
const KEY_B: &str = "sk-tenant-b";
/// `printf %s sk-tenant-a | sha256sum`, and the same for b.
const AUTH: &str = "  auth:\n    keys:\n      - tenant: a\n        sha256: 43b53901e1469bd75268ffbc35c6d9927badb376e0b829975797d34235dbc4a7\n      - tenant: b\n        sha256: 2ee2fc626331c5f5659d7006fa212eaff5082b2532da2e9cd0cb99436ccc3502\n";

/// A gateway with a small and a large sim model in one process.
fn mesh(extra: &str) -> Process {
    let small = sim_worker_yaml(None, "small-0", "small-model", "small", FAST);
    let large = sim_worker_yaml(None, "large-0", "large-model", "large", FAST);
    let large = large.trim_start_matches("workers:\n");
    Process::start(
        "mesh",
        "up",
        &format!("{}{small}{large}", gateway_yaml_with(None, extra)),
        &[],
    )
    .unwrap()
}

fn with_key<T>(message: T, key: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(k) = key {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {k}").parse().unwrap());
    }
    request
}

/// Asks `model` under the client-chosen `request_id`.
async fn generate(client: &mut GatewayClient<Channel>, key: Option<&str>, id: &str, model: &str) {
    let request = GenerateRequest {
        request_id: id.into(),
        model: model.into(),
        ..ask("hi")
    };
    let done = client.generate(with_key(request, key)).await.unwrap();
    assert_eq!(done.into_inner().request_id, id);
}

async fn score(
    client: &mut GatewayClient<Channel>,
    key: Option<&str>,
    id: &str,
    score: f64,
) -> Result<String, tonic::Status> {
    let request = FeedbackRequest {
        request_id: id.into(),
        score,
        comment: String::new(),
    };
    client
        .feedback(with_key(request, key))
        .await
        .map(|r| r.into_inner().model)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_scores_and_ids_are_namespaced_by_tenant() {
    let gateway = mesh(&format!("{AUTH}  feedback_per_minute: 6\n"));
    let mut client = gateway_client(&gateway.gateway_url()).await;
    let (a, b) = (Some(KEY_A), Some(KEY_B));
    // (`wait_for_pool` asks without a key.)
    eventually(Duration::from_secs(10), "2 workers in the pool", || {
        let mut c = client.clone();
        async move {
            let models = c
                .list_models(with_key(routemesh_proto::v1::ListModelsRequest {}, a))
                .await;
            models.is_ok_and(|m| {
                m.into_inner()
                    .models
                    .iter()
                    .map(|m| m.workers.len())
                    .sum::<usize>()
                    == 2
            })
        }
    })
    .await;

    // Tenant b chooses tenant a's request id: it gets its own request, and
    // a's stays a's.
    generate(&mut client, a, "shared-id", "large-model").await;
    generate(&mut client, b, "shared-id", "small-model").await;
    generate(&mut client, a, "a-only", "large-model").await;
    assert_eq!(
        score(&mut client, a, "shared-id", 1.0).await.unwrap(),
        "large-model"
    );
    assert_eq!(
        score(&mut client, b, "shared-id", 0.0).await.unwrap(),
        "small-model"
    );

    // b cannot score a's request, and cannot tell it exists: the same
    // NOT_FOUND as for an id nobody used.
    let theirs = score(&mut client, b, "a-only", 0.0).await.unwrap_err();
    let nobodys = score(&mut client, b, "never-used", 0.0).await.unwrap_err();
    assert_eq!(theirs.code(), Code::NotFound, "{theirs:?}");
    assert_eq!(nobodys.code(), Code::NotFound);
    assert_eq!(
        theirs.message().replace("a-only", "ID"),
        nobodys.message().replace("never-used", "ID")
    );

    // Per-tenant rate limit: a has used 1 of its 6 calls this minute; the
    // loop goes past 6 even if the minute turns over once meanwhile.
    let mut refused = None;
    for _ in 0..13 {
        if let Err(status) = score(&mut client, a, "a-only", 0.5).await {
            refused = Some(status);
            break;
        }
    }
    let refused = refused.expect("a is refused past 6 calls a minute");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("gateway.feedback_per_minute"),
        "{refused:?}"
    );
    // b's calls are its own.
    assert_eq!(
        score(&mut client, b, "shared-id", 1.0).await.unwrap(),
        "small-model"
    );
}

/// The large model's prediction and feedback count, as Route explains it.
async fn large_model(client: &mut GatewayClient<Channel>) -> (f64, f64) {
    let d = client.route(ask("hi")).await.unwrap().into_inner();
    let large = d
        .candidates
        .iter()
        .find(|c| c.model == "large-model")
        .unwrap();
    (large.predicted_quality, large.feedback_count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_scores_on_one_request_count_as_one() {
    // Without auth: every caller is the same anonymous tenant.
    let gateway = mesh("  feedback_per_minute: 1000\n");
    let mut client = gateway_client(&gateway.gateway_url()).await;
    wait_for_pool(&gateway.gateway_url(), 2).await;
    assert_eq!(large_model(&mut client).await, (0.8, 0.0));
    generate(&mut client, None, "poison", "large-model").await;
    for _ in 0..500 {
        score(&mut client, None, "poison", 0.0).await.unwrap();
    }
    // One score of 0 against the prior's weight of 10: (0.8 · 10 + 0) / 11.
    // (Before scores were per request: 0.8 · 10 / 510 = 0.016.)
    let one = 8.0 / 11.0;
    eventually(Duration::from_secs(10), "the score is seen", || {
        let mut c = client.clone();
        async move { large_model(&mut c).await.1 > 0.0 }
    })
    .await;
    // Let any straggling flush land before judging.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (quality, count) = large_model(&mut client).await;
    assert_eq!(count, 1.0);
    assert!((quality - one).abs() < 1e-9, "{quality} vs {one}");

    // The last score replaces the earlier ones: still one score, now 1.0.
    score(&mut client, None, "poison", 1.0).await.unwrap();
    eventually(Duration::from_secs(10), "the score is replaced", || {
        let mut c = client.clone();
        async move {
            let (quality, count) = large_model(&mut c).await;
            count == 1.0 && (quality - 9.0 / 11.0).abs() < 1e-9
        }
    })
    .await;
}

/// The large model's prediction as `key`'s tenant is routed.
async fn large_model_for(client: &mut GatewayClient<Channel>, key: Option<&str>) -> (f64, String) {
    let d = client
        .route(with_key(ask("hi"), key))
        .await
        .unwrap()
        .into_inner();
    let large = d
        .candidates
        .iter()
        .find(|c| c.model == "large-model")
        .unwrap();
    (large.predicted_quality, large.quality_source.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_feedback_moves_only_its_own_routing_unless_trusted() {
    // b is trusted: its feedback moves everyone's routing; a's only a's.
    let gateway = mesh(&format!(
        "{AUTH}  feedback_per_minute: 100\n  tenants:\n    b: {{trusted_feedback: true}}\n"
    ));
    let mut client = gateway_client(&gateway.gateway_url()).await;
    let (a, b) = (Some(KEY_A), Some(KEY_B));
    eventually(
        Duration::from_secs(10),
        "the large model is routable",
        || {
            let mut c = client.clone();
            async move {
                c.route(with_key(ask("hi"), a))
                    .await
                    .is_ok_and(|d| d.into_inner().candidates.len() == 2)
            }
        },
    )
    .await;
    assert_eq!(large_model_for(&mut client, a).await.0, 0.8);

    // a rates three of the large model's answers 0: a's routing learns it,
    // b's does not.
    for i in 0..3 {
        let id = format!("a-{i}");
        generate(&mut client, a, &id, "large-model").await;
        score(&mut client, a, &id, 0.0).await.unwrap();
    }
    let moved = 0.8 * 10.0 / 13.0;
    eventually(
        Duration::from_secs(10),
        "a's routing learns a's scores",
        || {
            let mut c = client.clone();
            async move { (large_model_for(&mut c, a).await.0 - moved).abs() < 1e-9 }
        },
    )
    .await;
    assert_eq!(large_model_for(&mut client, a).await.1, "prior+feedback");
    assert_eq!(
        large_model_for(&mut client, b).await,
        (0.8, "prior".to_string()),
        "a's feedback stays out of b's routing"
    );

    // b is trusted: its one score of 1 reaches a's routing too.
    generate(&mut client, b, "b-0", "large-model").await;
    score(&mut client, b, "b-0", 1.0).await.unwrap();
    let both = (0.8 * 10.0 + 1.0) / 14.0;
    eventually(
        Duration::from_secs(10),
        "b's trusted score reaches a",
        || {
            let mut c = client.clone();
            async move { (large_model_for(&mut c, a).await.0 - both).abs() < 1e-9 }
        },
    )
    .await;
    let b_own = (0.8 * 10.0 + 1.0) / 11.0;
    assert!((large_model_for(&mut client, b).await.0 - b_own).abs() < 1e-9);
}
