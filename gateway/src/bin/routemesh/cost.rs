//! `routemesh cost`: spend by tenant and model from the shared telemetry, and what routing saved against
//! sending every request to the pool's most expensive model.

use anyhow::bail;
use routemesh_gateway::Config;

/// Prints the last `hours` of spend (per hour, or per day with `daily`), as tables or JSON.
pub async fn print_cost(
    config: &Config,
    hours: u64,
    daily: bool,
    json: bool,
) -> anyhow::Result<()> {
    let Some(telemetry) = routemesh_gateway::up::shared_telemetry(config).await? else {
        bail!(
            "without `registry.redis` spend lives in each gateway's memory; ask a gateway: GET http://<admin_listen>/v1/cost"
        );
    };
    let registry = routemesh_gateway::up::connect_registry(config).await?;
    // The counterfactual: the most expensive model registered now.
    let workers = registry.list().await?;
    let strongest = routemesh_mesh::TokenPrices::most_expensive(workers, |w| w.prices()).map(|w| {
        routemesh_gateway::tenancy::cost::Counterfactual {
            model: w.model,
            input_usd_per_mtok: w.input_usd_per_mtok,
            output_usd_per_mtok: w.output_usd_per_mtok,
        }
    });
    let to = routemesh_telemetry::record::now_ms();
    let from = to.saturating_sub(hours.clamp(1, 24 * 400) * 3_600_000);
    let rows = telemetry.spend(from, to, daily).await?;
    let report = routemesh_gateway::tenancy::cost::report(&rows, strongest, from, to);
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
        println!(
            "(last {hours} h, every gateway of the mesh; the counterfactual keeps each request's token counts)"
        );
    }
    Ok(())
}
