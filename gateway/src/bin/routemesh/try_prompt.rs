//! `routemesh up --try PROMPT`: one request through the running gateway, printed with the answer, who
//! served it and why the router chose it.

use std::net::SocketAddr;

use routemesh_proto::v1::{ChatMessage, GenerateRequest, gateway_client::GatewayClient};

/// Sends one prompt through the gateway and prints the answer and the routing decision.
pub async fn try_request(addr: SocketAddr, prompt: &str) -> anyhow::Result<()> {
    let mut client = GatewayClient::connect(format!("http://{addr}")).await?;
    let request = GenerateRequest {
        messages: vec![ChatMessage {
            role: "user".into(),
            content: prompt.into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let response = client.generate(request).await?.into_inner();
    let usage = response.usage.unwrap_or_default();
    let route = response.route.unwrap_or_default();
    println!("prompt:    {prompt}");
    println!("answer:    {}", response.text);
    println!(
        "served by: model {} on worker {}{}",
        usage.model,
        usage.worker_id,
        if usage.simulated {
            " (simulated engine)"
        } else {
            ""
        }
    );
    println!("why:       {} policy: {}", route.policy, route.reason);
    for c in &route.candidates {
        println!(
            "           {:<24} quality {:.2} ({}), expected cost {:.6} USD, load {:.2}, score {:.4}{}",
            c.model,
            c.predicted_quality,
            c.quality_source,
            c.expected_cost_usd,
            c.load,
            c.score,
            if c.eligible {
                String::new()
            } else {
                format!(", excluded: {}", c.excluded_because)
            }
        );
    }
    println!(
        "usage:     {} prompt + {} completion tokens, {:.6} USD, first token after {:.0} ms, {:.0} ms in all",
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.cost_usd,
        usage.time_to_first_token_ms,
        usage.total_time_ms
    );
    Ok(())
}
