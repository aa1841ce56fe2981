//! Tenant rate limits and budgets enforced across two gateway replicas
//! through Redis: a budget spent through one replica is refused by the other,
//! requests per minute count both, streamed tokens count like unary ones,
//! a burst of concurrent requests cannot overspend (each reserves its most
//! at admission), spend during a Redis outage is charged when Redis
//! returns, and with `limits_fail_open: false` a lost Redis refuses limited
//! tenants.

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

    // Budget: each answer costs about 2.6e-4 USD (10/30 USD per M tokens)
    // and may cost up to about 2.9e-4 (its reservation); spent through
    // gateway 1 until refused, then refused by gateway 2 too.
    let mut spent = 0.0;
    let refusal = loop {
        match c1.generate(tenant_request("capped")).await {
            Ok(answer) => spent += answer.into_inner().usage.unwrap().cost_usd,
            Err(status) => break status,
        }
        assert!(spent < 0.001, "spent {spent} of a 0.001 budget");
    };
    assert!(spent > 0.0005, "refused too early, at {spent}: {refusal:?}");
    let status = c2.generate(tenant_request("capped")).await.unwrap_err();
    for status in [&refusal, &status] {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().contains("budget_usd_per_day"),
            "{}",
            status.message()
        );
    }
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

    // Streamed tokens count like unary ones: 25 tokens per minute holds one
    // stream of at most 13 (prompt + 8 completion tokens) and what it
    // used, not a second one that might take 13 more.
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
    assert_eq!(streamed, 1);

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

/// Runs `n` requests of `tenant` at once, alternating between the clients;
/// returns the answers' (cost, tokens) and the refusals.
async fn burst(
    clients: &[routemesh_proto::v1::gateway_client::GatewayClient<tonic::transport::Channel>],
    tenant: &str,
    n: usize,
) -> (Vec<(f64, u32)>, Vec<tonic::Status>) {
    let calls = (0..n).map(|i| {
        let mut client = clients[i % clients.len()].clone();
        let request = tenant_request(tenant);
        tokio::spawn(async move { client.generate(request).await })
    });
    let mut served = Vec::new();
    let mut refused = Vec::new();
    for call in futures::future::join_all(calls).await {
        match call.unwrap() {
            Ok(answer) => {
                let usage = answer.into_inner().usage.unwrap();
                served.push((
                    usage.cost_usd,
                    usage.prompt_tokens + usage.completion_tokens,
                ));
            }
            Err(status) => refused.push(status),
        }
    }
    (served, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_burst_cannot_overspend() {
    let redis = OwnRedis::start().unwrap();
    let url = redis.url();
    let r = Some((url.as_str(), "burst"));
    // Slow enough that the whole burst is in flight at once.
    let slow = "{ttft_ms: {median: 300}, tokens_per_second: {median: 0}, output_tokens: {median: 8}, seed: 1}";
    let _worker = Process::start(
        "w",
        "worker",
        &format!(
            "{}    capacity: 256\n",
            sim_worker_yaml(r, "big-0", "big", "large", slow)
        ),
        &[],
    )
    .unwrap();
    let limits = "  tenants:\n    spender: {budget_usd_per_day: 0.002}\n    talker: {tokens_per_minute: 200}\n";
    let gateways: Vec<Process> = (0..2)
        .map(|i| {
            Process::start(
                &format!("gw-{i}"),
                "gateway",
                &gateway_yaml_with(r, limits),
                &[],
            )
            .unwrap()
        })
        .collect();
    let mut clients = Vec::new();
    for gw in &gateways {
        clients.push(gateway_client(&gw.gateway_url()).await);
    }
    for client in &clients {
        let client = client.clone();
        eventually(
            std::time::Duration::from_secs(10),
            "the gateway sees the worker",
            || {
                let mut c = client.clone();
                async move { c.route(ask("hi")).await.is_ok() }
            },
        )
        .await;
    }

    // A hundred requests at once; before reservations every one was
    // admitted (the budget was checked against spend alone) and billed 13x
    // the budget.
    let (served, refused) = burst(&clients, "spender", 100).await;
    let spent: f64 = served.iter().map(|(cost, _)| cost).sum();
    assert!(!served.is_empty(), "{refused:?}");
    assert!(spent <= 0.002, "spent {spent} of a 0.002 budget");
    assert!(
        refused
            .iter()
            .all(|s| s.code() == Code::ResourceExhausted
                && s.message().contains("budget_usd_per_day")),
        "{refused:?}"
    );

    let (served, refused) = burst(&clients, "talker", 100).await;
    let tokens: u32 = served.iter().map(|(_, tokens)| tokens).sum();
    assert!(!served.is_empty(), "{refused:?}");
    assert!(
        tokens <= 200,
        "{tokens} tokens against a limit of 200 per minute"
    );
    assert!(
        refused
            .iter()
            .all(|s| s.code() == Code::ResourceExhausted
                && s.message().contains("tokens_per_minute")),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_during_a_redis_outage_is_charged_when_redis_returns() {
    let port = free_port();
    let redis = OwnRedis::start_on(port).unwrap();
    let url = redis.url();
    let r = Some((url.as_str(), "outage"));
    let _worker = Process::start(
        "w",
        "worker",
        &sim_worker_yaml(r, "big-0", "big", "large", FAST),
        &[],
    )
    .unwrap();
    let gw = Process::start("gw", "gateway", &gateway_yaml_with(r, &tenants(true)), &[]).unwrap();
    let mut client = gateway_client(&gw.gateway_url()).await;
    eventually(
        std::time::Duration::from_secs(10),
        "the gateway sees the worker",
        || {
            let mut c = client.clone();
            async move { c.generate(tenant_request("free")).await.is_ok() }
        },
    )
    .await;

    // Redis goes; limits fail open, and the tenant spends about 2.6x its
    // daily budget of 0.001 USD.
    drop(redis);
    let mut spent = 0.0;
    for _ in 0..10 {
        spent += client
            .generate(tenant_request("capped"))
            .await
            .unwrap()
            .into_inner()
            .usage
            .unwrap()
            .cost_usd;
    }
    assert!(spent > 0.002, "{spent}");

    // Redis returns, empty: the spend is charged to today's counter.
    let _redis = OwnRedis::start_on(port).unwrap();
    let day = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        / 86_400_000;
    let key = format!("rm:v1:{{outage}}:lim:capped:usd:d:{day}");
    let redis_client = redis::Client::open(url.as_str()).unwrap();
    eventually(
        std::time::Duration::from_secs(15),
        "the outage's spend is charged",
        || {
            let (client, key) = (redis_client.clone(), key.clone());
            async move {
                let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
                    return false;
                };
                let charged: Option<f64> = redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .unwrap_or(None);
                charged.is_some_and(|c| (c - spent).abs() < 1e-9)
            }
        },
    )
    .await;
    let status = client.generate(tenant_request("capped")).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("budget_usd_per_day"),
        "{}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_counts_against_the_requests_per_minute() {
    let (_worker, gw) = gateway_with_one_worker(
        FAST,
        &gateway_yaml_with(
            None,
            "  tenants:\n    router-user: {requests_per_minute: 3}\n",
        ),
    );
    let mut client = gateway_client(&gw.gateway_url()).await;
    eventually(
        std::time::Duration::from_secs(10),
        "the gateway sees the worker",
        || {
            let mut c = client.clone();
            async move { c.route(ask("hi")).await.is_ok() }
        },
    )
    .await;
    let mut outcomes = Vec::new();
    for _ in 0..5 {
        outcomes.push(
            client
                .route(tenant_request("router-user"))
                .await
                .map(|_| ()),
        );
    }
    assert!(outcomes[..3].iter().all(Result::is_ok), "{outcomes:?}");
    let refused = outcomes[3].as_ref().unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("requests_per_minute"),
        "{refused:?}"
    );
}
