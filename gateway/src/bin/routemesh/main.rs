//! `routemesh`: one binary for the whole mesh (`up`, `gateway`, `worker`).
//!
//! This file is the command line and its dispatch; each operator subcommand has its module (`keys`,
//! `cost`, `telemetry`), `serve` runs the mesh and `try_prompt` is `up --try`. The libraries it drives
//! (routemesh-gateway, routemesh-router-train for `router`, routemesh-bench for `bench`) know nothing of
//! this binary.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::{Parser, Subcommand};
use routemesh_gateway::Config;
use routemesh_gateway::config::DEMO_CONFIG;

mod cost;
mod keys;
mod serve;
mod telemetry;
mod try_prompt;

#[derive(Parser)]
#[command(
    name = "routemesh",
    version,
    about = "A model-routing gateway: each request goes to the model that answers it well at the lowest cost and latency"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// Configuration file (YAML). `up` without one runs the embedded demo mesh.
    // Global, so `routemesh keys add ... --config FILE` takes it after the
    // nested subcommand too.
    #[arg(long, short, env = "ROUTEMESH_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Write a JSON file with the bound addresses once serving (for scripts and tests).
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a gateway and its workers in one process (the embedded demo by default).
    Up {
        #[command(flatten)]
        common: Common,
        /// Override gateway.listen, e.g. 127.0.0.1:0.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Override gateway.http_listen (the OpenAI-compatible API).
        #[arg(long)]
        http_listen: Option<SocketAddr>,
        /// Override gateway.admin_listen (metrics, health, cost).
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
        /// Send this prompt once the mesh is up and show who answered and why.
        #[arg(long = "try", value_name = "PROMPT")]
        try_prompt: Option<String>,
        /// Exit after --try instead of serving until interrupted.
        #[arg(long, requires = "try_prompt")]
        once: bool,
    },
    /// Run a gateway that discovers workers from the configured registry.
    Gateway {
        #[command(flatten)]
        common: Common,
        /// Override gateway.listen.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Override gateway.http_listen (the OpenAI-compatible API).
        #[arg(long)]
        http_listen: Option<SocketAddr>,
        /// Override gateway.admin_listen (metrics, health, cost).
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
    },
    /// Run the worker agents listed under `workers:` in the configuration.
    Worker {
        #[command(flatten)]
        common: Common,
    },
    /// Print the live telemetry every gateway shares (from `registry.redis`):
    /// per worker, model and tenant, and quality feedback per model.
    Telemetry {
        #[command(flatten)]
        common: Common,
        /// History to aggregate, e.g. 60s or 10m (at most 1h).
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        window: std::time::Duration,
        /// Print the snapshot as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Spend by tenant and model, and what routing saved against sending
    /// everything to the pool's most expensive model (from `registry.redis`).
    Cost {
        #[command(flatten)]
        common: Common,
        /// Hours back from now: the current hour and the ones before it
        /// (with --daily, the days that cover them). Default: 24, or 720
        /// (30 days) with --daily.
        #[arg(long)]
        hours: Option<u64>,
        /// Also a table with one row per hour (UTC).
        #[arg(long, conflicts_with = "daily")]
        hourly: bool,
        /// Also a table with one row per day (UTC); the JSON report is then by day.
        #[arg(long)]
        daily: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// API keys stored in Redis (`registry.redis`); gateways accept them with
    /// `gateway.auth.redis: true`.
    Keys {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// The learned router: train, evaluate, score, calibrate (see router/README.md).
    Router {
        #[command(subcommand)]
        command: routemesh_router_train::cli::RouterCommand,
    },
    /// Load generator: open loop (--rate) or closed loop (--concurrency)
    /// against a gateway, a worker or an OpenAI-compatible HTTP server.
    Bench(routemesh_bench::BenchArgs),
    /// Check a configuration file and print it with every default filled in.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Print the configuration file's JSON Schema (draft-07), derived from
    /// the types the configuration is read into; editors and CI can check
    /// config files with it, and the Helm chart embeds it.
    ConfigSchema,
}

fn load(path: Option<&Path>, fallback: Option<&str>) -> anyhow::Result<Config> {
    Ok(match (path, fallback) {
        (Some(path), _) => Config::from_file(path)?,
        (None, Some(text)) => Config::from_yaml(text, "embedded demo configuration")?,
        (None, None) => bail!("--config FILE is required"),
    })
}

/// Logs only, for one-shot commands.
fn plain_logs() {
    let _ = routemesh_gateway::tracing_setup::init(&Default::default(), "routemesh");
}

/// jemalloc, with its background threads on (see `main`), returns freed
/// pages to the OS within seconds: after a burst (a connection flood, large
/// bodies) RSS comes back down, where glibc's allocator kept it at its peak.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Purging of freed pages runs on jemalloc's own threads rather than
    // waiting for the next allocation in the thread that freed them.
    let _ = tikv_jemalloc_ctl::background_thread::write(true);
    let cli = Cli::parse();
    match cli.command {
        Command::Up {
            common,
            listen,
            http_listen,
            admin_listen,
            try_prompt,
            once,
        } => {
            let mut config = load(common.config.as_deref(), Some(DEMO_CONFIG))?;
            serve::override_listen(&mut config, listen, http_listen, admin_listen);
            let mut note = None;
            if common.config.is_none() {
                let model = routemesh_gateway::config::demo_local_model_path();
                note = Some(
                    if routemesh_gateway::config::add_demo_local_worker(&mut config, &model)? {
                        format!(
                            "demo pool: SmolLM2-135M-Instruct runs on the CPU (backend local) from {}",
                            model.display()
                        )
                    } else {
                        format!(
                            "demo pool: simulated models only; {} is absent (scripts/fetch-local-model.sh fetches SmolLM2-135M-Instruct for a real small model)",
                            model.display()
                        )
                    },
                );
            }
            serve::serve(config, &common, true, true, try_prompt, once, note).await
        }
        Command::Gateway {
            common,
            listen,
            http_listen,
            admin_listen,
        } => {
            let mut config = load(common.config.as_deref(), None)?;
            serve::override_listen(&mut config, listen, http_listen, admin_listen);
            serve::serve(config, &common, false, true, None, false, None).await
        }
        Command::Worker { common } => {
            let config = load(common.config.as_deref(), None)?;
            serve::serve(config, &common, true, false, None, false, None).await
        }
        Command::Telemetry {
            common,
            window,
            json,
        } => {
            plain_logs();
            let config = load(common.config.as_deref(), None)?;
            telemetry::print_telemetry(&config, window, json).await
        }
        // CPU-bound and synchronous (ONNX, training): off the async runtime.
        Command::Router { command } => {
            plain_logs();
            tokio::task::spawn_blocking(move || routemesh_router_train::cli::run(command)).await?
        }
        Command::Cost {
            common,
            hours,
            hourly,
            daily,
            json,
        } => {
            plain_logs();
            let config = load(common.config.as_deref(), None)?;
            use routemesh_gateway::tenancy::{cost::Period, cost_text::Breakdown};
            let (period, default_hours) = if daily {
                (Period::Day, 30 * 24)
            } else {
                (Period::Hour, 24)
            };
            let hours = hours.unwrap_or(default_hours);
            let breakdown = if hourly || daily {
                Breakdown::ByPeriod
            } else {
                Breakdown::Totals
            };
            cost::print_cost(&config, hours, period, breakdown, json).await
        }
        Command::Keys { common, command } => {
            plain_logs();
            let config = load(common.config.as_deref(), None)?;
            keys::run(&config, command).await
        }
        Command::Bench(args) => routemesh_bench::run(args).await,
        Command::CheckConfig { file } => {
            let config = Config::from_file(&file)?;
            print!("{}", serde_norway::to_string(&config)?);
            Ok(())
        }
        Command::ConfigSchema => {
            let schema = routemesh_gateway::config::schema::config_schema();
            println!("{}", serde_json::to_string_pretty(&schema)?);
            Ok(())
        }
    }
}
