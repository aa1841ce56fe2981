//! Tenant rate limits and budgets enforced across two gateway replicas
//! through Redis: a budget spent through one replica is refused by the other,
//! requests per minute count both, streamed tokens count like unary ones, and
//! with `limits_fail_open: false` a lost Redis refuses limited tenants.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use routemesh_proto::v1::{GenerateRequest, GenerationParams};
use routemesh_tests::*;
use tonic::Code;

const FAST: &str =
    "{ttft_ms: {median: 1}, tokens_per_second: {median: 0}, output_tokens: {median: 8}, seed: 1}";

fn tenants(fail_open: bool) -> String {
    format!(
        "  limits_fail_open: {fail_open}\n  tenants:\n    capped: {{budget_usd_per_day: 0.001}}\n    paced: {{requests_per_minute: 5}}\n    streamer: {{tokens_per_minute: 25}}\n"
    )
}

fn tenant_request(tenant: &str) -> GenerateRequest {
    GenerateRequest {
        tenant: tenant.into(),
        params: Some(GenerationParams {
            max_tokens: Some(8),
            ..Default::default()
        }),
        ..ask("How are you today?")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold_across_replicas() {
    let redis = OwnRedis::start().unwrap();
    let url = redis.url();
    let r = Some((url.as_str(), "limits"));
    let _worker = Process::start(
        "w",
        "worker",
        &sim_worker_yaml(r, "big-0", "big", "large", FAST),
        &[],
    )
    .unwrap();
    let one = Process::start(
        "gw-1",
        "gateway",
        &gateway_yaml_with(r, &tenants(true)),
        &[],
    )
    .unwrap();
    let two = Process::start(
        "gw-2",
        "gateway",
        &gateway_yaml_with(r, &tenants(true)),
        &[],
    )
    .unwrap();
    let (mut c1, mut c2) = (
        gateway_client(&one.gateway_url()).await,
        gateway_client(&two.gateway_url()).await,
    );
    eventually(
        std::time::Duration::from_secs(10),
        "both gateways see the worker",
        || {
            let (mut a, mut b) = (c1.clone(), c2.clone());
            async move { a.route(ask("hi")).await.is_ok() && b.route(ask("hi")).await.is_ok() }
        },
    )
    .await;

    // Budget: each answer costs about 2.6e-4 USD (10/30 USD per M tokens);
    // spent through gateway 1, refused by gateway 2 once over 0.001.
    let mut spent = 0.0;
    while spent < 0.001 {
        spent += c1
            .generate(tenant_request("capped"))
            .await
            .unwrap()
            .into_inner()
            .usage
            .unwrap()
            .cost_usd;
    }
    let status = c2.generate(tenant_request("capped")).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("budget_usd_per_day"),
        "{}",
        status.message()
    );
    assert_eq!(
        status.metadata().get("grpc-retry-pushback-ms").unwrap(),
        "250"
    );

    // Requests per minute count both replicas.
    let mut outcomes = Vec::new();
    for i in 0..12 {
        let client = if i % 2 == 0 { &mut c1 } else { &mut c2 };
        outcomes.push(
            client
                .generate(tenant_request("paced"))
                .await
                .map(|_| ())
                .map_err(|s| (s.code(), s.message().to_string())),
        );
    }
    assert!(outcomes[..5].iter().all(Result::is_ok), "{outcomes:?}");
    let refused: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(
        !refused.is_empty(),
        "the per-minute limit refuses: {outcomes:?}"
    );
    assert!(
        refused
            .iter()
            .all(|(code, msg)| *code == Code::ResourceExhausted
                && msg.contains("requests_per_minute"))
    );

    // Streamed tokens count like unary ones: 25 tokens per minute is two
    // streams of about 13 (prompt + 8 completion tokens).
    let mut streamed = 0;
    let refusal = loop {
        let mut stream = match c1.generate_stream(tenant_request("streamer")).await {
            Ok(s) => s.into_inner(),
            Err(status) => break status,
        };
        while stream.message().await.unwrap().is_some() {}
        streamed += 1;
        assert!(streamed <= 3, "the token limit never refused a stream");
    };
    assert!(
        refusal.message().contains("tokens_per_minute"),
        "{refusal:?}"
    );
    assert!(streamed >= 2);

    // A tenant without limits is never refused.
    for _ in 0..3 {
        c2.generate(tenant_request("free")).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_refuses_limited_tenants_when_redis_is_gone() {
    let redis = OwnRedis::start().unwrap();
    let url = redis.url();
    let r = Some((url.as_str(), "closed"));
    let _worker = Process::start(
        "w",
        "worker",
        &sim_worker_yaml(r, "big-0", "big", "large", FAST),
        &[],
    )
    .unwrap();
    let gw = Process::start("gw", "gateway", &gateway_yaml_with(r, &tenants(false)), &[]).unwrap();
    let mut client = gateway_client(&gw.gateway_url()).await;
    eventually(
        std::time::Duration::from_secs(10),
        "the gateway sees the worker",
        || {
            let mut c = client.clone();
            async move { c.generate(tenant_request("paced")).await.is_ok() }
        },
    )
    .await;
    drop(redis);
    let status = client.generate(tenant_request("paced")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("limits_fail_open is false"),
        "{}",
        status.message()
    );
    // Unlimited tenants need no limits store.
    client.generate(tenant_request("free")).await.unwrap();
}
