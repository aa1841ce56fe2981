//! `routemesh cost`: spend by tenant and model from the shared telemetry, and what routing saved against
//! sending every request to the pool's most expensive model; per hour or day with `--hourly`/`--daily`.

use anyhow::bail;
use routemesh_gateway::Config;
use routemesh_gateway::tenancy::cost::{Counterfactual, Period, ReportRange, report};
use routemesh_gateway::tenancy::cost_text::Breakdown;
use routemesh_mesh::Tier;

/// Prints the last `hours` of spend (by hour, or by day with `daily`), as tables or JSON.
pub async fn print_cost(
    config: &Config,
    hours: u64,
    period: Period,
    breakdown: Breakdown,
    json: bool,
) -> anyhow::Result<()> {
    let Some(telemetry) = routemesh_gateway::up::shared_telemetry(config).await? else {
        bail!(
            "without `registry.redis` spend lives in each gateway's memory; ask a gateway: GET http://<admin_listen>/v1/cost"
        );
    };
    let registry = routemesh_gateway::up::connect_registry(config).await?;
    let workers = registry.list().await?;
    // The large-model share counts the models registered now as large.
    let mut large_models: Vec<String> = workers
        .iter()
        .filter(|w| w.tier == Tier::Large)
        .map(|w| w.model.clone())
        .collect();
    large_models.sort();
    large_models.dedup();
    // The counterfactual: the most expensive model registered now.
    let strongest = routemesh_mesh::TokenPrices::most_expensive(workers, |w| w.prices()).map(|w| {
        Counterfactual {
            model: w.model,
            input_usd_per_mtok: w.input_usd_per_mtok,
            output_usd_per_mtok: w.output_usd_per_mtok,
        }
    });
    let range = ReportRange::hours(hours, period, routemesh_telemetry::record::now_ms());
    let rows = telemetry
        .spend(range.from_ms, range.to_ms, period == Period::Day)
        .await?;
    let report = report(&rows, strongest, &large_models, range);
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render(breakdown));
        println!(
            "(every gateway of the mesh. REQUESTS counts each client request once, ATTEMPTS every call to a worker,\n \
             failed-over and cascade follow-up calls included. LARGE: the share of requests on large-tier models.\n \
             The counterfactual keeps each request's token counts.)"
        );
    }
    Ok(())
}
