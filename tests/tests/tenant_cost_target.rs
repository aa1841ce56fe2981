//! A tenant's cost target is held online: its cost weight moves until the
//! mix of small and large models costs what the target says, while a tenant
//! without a target keeps the default trade-off.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use routemesh_proto::v1::GenerateRequest;
use routemesh_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cost_target_is_met_within_tolerance() {
    let fast = "{ttft_ms: {median: 1}, tokens_per_second: {median: 0}, output_tokens: {median: 8}, seed: 3}";
    let small = sim_worker_yaml(None, "small-0", "small-model", "small", fast);
    let large = sim_worker_yaml(None, "large-0", "large-model", "large", fast);
    let workers = format!("{}\n{}", small, large.replacen("workers:\n", "", 1));
    // Target: 40% of a large-model answer's cost (about 2.5e-4 USD for 8 tokens).
    let target = 1.0e-4;
    let yaml = format!(
        "{}{workers}",
        gateway_yaml_with(
            None,
            &format!("  tenants:\n    frugal:\n      target_cost_per_request_usd: {target}\n")
        )
    );
    let mesh = Process::start("mesh", "up", &yaml, &[]).unwrap();
    let mut client = gateway_client(&mesh.gateway_url()).await;

    let mut costs = Vec::new();
    let mut large_calls = 0;
    for _ in 0..400 {
        let r = client
            .generate(GenerateRequest {
                tenant: "frugal".into(),
                ..ask("hi")
            })
            .await
            .unwrap()
            .into_inner();
        let usage = r.usage.unwrap();
        large_calls += usize::from(usage.model == "large-model");
        costs.push(usage.cost_usd);
    }
    let settled = &costs[100..];
    let mean = settled.iter().sum::<f64>() / settled.len() as f64;
    eprintln!(
        "tenant cost target: mean {mean:.3e} USD/request vs target {target:.1e}; {large_calls}/400 large"
    );
    assert!(
        (mean / target - 1.0).abs() < 0.3,
        "mean cost {mean:.3e} vs target {target:.1e}"
    );
    assert!(
        large_calls > 40 && large_calls < 360,
        "a real mix: {large_calls} large of 400"
    );

    // The tenant without a target gets the default λ: the large model, on priors.
    for _ in 0..5 {
        let r = client.generate(ask("hi")).await.unwrap().into_inner();
        assert_eq!(r.usage.unwrap().model, "large-model");
    }
}
