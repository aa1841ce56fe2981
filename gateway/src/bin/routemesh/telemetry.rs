//! `routemesh telemetry`: the live telemetry every gateway shares through Redis, per worker, model and
//! tenant, and quality feedback per model.

use anyhow::bail;
use routemesh_gateway::Config;

/// Prints the shared snapshot over `window` (10 s to 1 h), as tables or JSON.
pub async fn print_telemetry(
    config: &Config,
    window: std::time::Duration,
    json: bool,
) -> anyhow::Result<()> {
    let Some(telemetry) = routemesh_gateway::up::shared_telemetry(config).await? else {
        bail!(
            "without `registry.redis` telemetry lives in each gateway's memory; the Route RPC shows what a gateway sees"
        );
    };
    let window_secs = u32::try_from(window.as_secs())
        .unwrap_or(3600)
        .clamp(10, 3600);
    let snapshot = telemetry
        .snapshot(routemesh_telemetry::record::now_ms(), window_secs, 7)
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&snapshot)?);
        return Ok(());
    }
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
    for (title, rows) in [
        ("WORKER", &snapshot.workers),
        ("MODEL", &snapshot.models),
        ("TENANT", &snapshot.tenants),
    ] {
        println!(
            "{title:<28} {:>7} {:>6} {:>17} {:>20} {:>8} {:>12} {:>12}",
            "REQS",
            "ERR%",
            "TTFT p50/95/99 ms",
            "LATENCY p50/95/99 ms",
            "TOK/S",
            "COST USD",
            "USD/REQ"
        );
        let mut names: Vec<_> = rows.keys().collect();
        names.sort();
        for name in names {
            let s = &rows[name];
            println!(
                "{name:<28} {:>7.0} {:>6.1} {:>17} {:>20} {:>8} {:>12.6} {:>12}",
                s.requests,
                s.error_rate * 100.0,
                format!(
                    "{}/{}/{}",
                    ms(s.ttft_ms_p50),
                    ms(s.ttft_ms_p95),
                    ms(s.ttft_ms_p99)
                ),
                format!(
                    "{}/{}/{}",
                    ms(s.latency_ms_p50),
                    ms(s.latency_ms_p95),
                    ms(s.latency_ms_p99)
                ),
                s.tokens_per_second
                    .map_or("-".to_string(), |t| format!("{t:.0}")),
                s.cost_usd,
                s.cost_per_request_usd
                    .map_or("-".to_string(), |c| format!("{c:.2e}")),
            );
        }
        println!();
    }
    println!("{:<28} {:>7} {:>10}", "FEEDBACK (7 days)", "COUNT", "MEAN");
    let mut models: Vec<_> = snapshot.feedback.keys().collect();
    models.sort();
    for m in models {
        let f = &snapshot.feedback[m];
        println!("{m:<28} {:>7.0} {:>10.3}", f.count, f.mean().unwrap_or(0.0));
    }
    println!(
        "\n(last {window_secs} s, all gateways of mesh; latency quantiles are upper bounds of ~19%-wide buckets)"
    );
    Ok(())
}
