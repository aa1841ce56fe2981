//! `routemesh`: one binary for the whole mesh (`up`, `gateway`, `worker`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use routemesh_gateway::Config;
use routemesh_gateway::config::DEMO_CONFIG;
use routemesh_gateway::up::Mesh;
use routemesh_proto::v1::{ChatMessage, GenerateRequest, gateway_client::GatewayClient};

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
        /// Hours back from now.
        #[arg(long, default_value_t = 24)]
        hours: u64,
        /// Per day instead of per hour (for long ranges).
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
        command: KeysCommand,
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
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key for a tenant and print it (once: only its SHA-256 is stored).
    Add {
        #[arg(long)]
        tenant: String,
        /// The key stops working after this long, e.g. 30d, 12h.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<std::time::Duration>,
        /// A label shown by `keys list`.
        #[arg(long)]
        name: Option<String>,
        /// Print the key and its details as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a key: give the key, its SHA-256, or a unique prefix of the
    /// SHA-256 (8+ hex digits, as `keys list` shows). Gateways stop accepting
    /// it within `gateway.auth.cache_ttl`.
    Revoke { key: String },
    /// List stored keys (by SHA-256 prefix, never the key).
    List {
        #[arg(long)]
        json: bool,
    },
}

async fn keys_command(config: &Config, command: KeysCommand) -> anyhow::Result<()> {
    let Some(redis) = &config.registry.redis else {
        bail!("`routemesh keys` manages keys in Redis: the configuration needs `registry.redis`");
    };
    let store = routemesh_gateway::keys::RedisKeys::connect(&redis.url, &redis.mesh).await?;
    let now = routemesh_telemetry::record::now_ms();
    let when = |ms: u64| {
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
        )
        .to_string()
    };
    match command {
        KeysCommand::Add {
            tenant,
            expires_in,
            name,
            json,
        } => {
            let (key, listed) = store.add(&tenant, name.as_deref(), expires_in, now).await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"key": key, "sha256": listed.sha256, "tenant": listed.tenant,
                                       "expires_ms": listed.expires_ms})
                );
            } else {
                println!("{key}");
                eprintln!(
                    "key {} for tenant {tenant:?}{}; it is shown only now",
                    &listed.sha256[..12],
                    listed
                        .expires_ms
                        .map_or(", no expiry".to_string(), |e| format!(
                            ", expires {}",
                            when(e)
                        ))
                );
                if !config.gateway.auth.redis {
                    eprintln!(
                        "note: this configuration's gateways do not read keys from Redis (set gateway.auth.redis: true)"
                    );
                }
            }
        }
        KeysCommand::Revoke { key } => {
            let revoked = store.revoke(&key).await?;
            eprintln!(
                "revoked key {} of tenant {:?}; gateways refuse it within {}",
                &revoked.sha256[..12],
                revoked.tenant,
                humantime::format_duration(config.gateway.auth.cache_ttl)
            );
        }
        KeysCommand::List { json } => {
            let keys = store.list().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
            } else {
                println!(
                    "{:<14} {:<20} {:<16} {:<22} {:<22}",
                    "SHA256", "TENANT", "NAME", "CREATED", "EXPIRES"
                );
                for k in keys {
                    let expires = match k.expires_ms {
                        None => "never".to_string(),
                        Some(e) if e <= now => format!("{} (expired)", when(e)),
                        Some(e) => when(e),
                    };
                    println!(
                        "{:<14} {:<20} {:<16} {:<22} {expires}",
                        &k.sha256[..12],
                        k.tenant,
                        k.name.as_deref().unwrap_or("-"),
                        when(k.created_ms),
                    );
                }
            }
        }
    }
    Ok(())
}

fn load(path: Option<&Path>, fallback: Option<&str>) -> anyhow::Result<Config> {
    Ok(match (path, fallback) {
        (Some(path), _) => Config::from_file(path)?,
        (None, Some(text)) => Config::from_yaml(text, "embedded demo configuration")?,
        (None, None) => bail!("--config FILE is required"),
    })
}

fn override_listen(
    config: &mut Config,
    grpc: Option<SocketAddr>,
    http: Option<SocketAddr>,
    admin: Option<SocketAddr>,
) {
    if let Some(addr) = admin {
        config.gateway.admin_listen = Some(addr);
    }
    if let Some(addr) = grpc {
        config.gateway.listen = addr;
    }
    if let Some(addr) = http {
        config.gateway.http_listen = Some(addr);
    }
}

fn write_ready_file(path: &Path, mesh: &Mesh) -> anyhow::Result<()> {
    // Written whole and renamed, so a reader never sees half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&mesh.describe())?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn serve(
    config: Config,
    common: &Common,
    workers: bool,
    gateway: bool,
    try_prompt: Option<String>,
    once: bool,
    note: Option<String>,
) -> anyhow::Result<()> {
    let service = match (workers, gateway) {
        (true, false) => "routemesh-worker",
        (false, true) => "routemesh-gateway",
        _ => "routemesh",
    };
    let traces = routemesh_gateway::tracing_setup::init(&config.tracing, service)?;
    if let Some(note) = note {
        tracing::info!("{note}");
    }
    let result = serve_traced(config, common, workers, gateway, try_prompt, once).await;
    if let Some(provider) = traces {
        // Send the last spans before exiting.
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }
    result
}

async fn serve_traced(
    config: Config,
    common: &Common,
    workers: bool,
    gateway: bool,
    try_prompt: Option<String>,
    once: bool,
) -> anyhow::Result<()> {
    if workers && config.workers.is_empty() {
        bail!("the configuration lists no workers (key `workers`)");
    }
    let mesh = Mesh::start(&config, workers, gateway).await?;
    if let Some(path) = &common.ready_file {
        write_ready_file(path, &mesh)?;
    }
    if let (Some(prompt), Some(g)) = (try_prompt, &mesh.gateway) {
        let outcome = try_request(g.addr, &prompt).await;
        if let Err(e) = &outcome {
            eprintln!("demo request failed: {e:#}");
        }
        if once {
            mesh.shutdown().await;
            return outcome;
        }
        println!(
            "\nThe mesh keeps serving (gRPC on {}); Ctrl-C stops it. Try:",
            g.addr
        );
        println!(
            "  grpcurl -plaintext -d '{{\"messages\":[{{\"role\":\"user\",\"content\":\"Hello\"}}]}}' {} routemesh.v1.Gateway/Generate",
            g.addr
        );
        if let Some(admin) = g.admin_addr {
            println!(
                "  open http://{admin}/ for the overview page (spend, savings, routing mix, health)"
            );
        }
        if let Some(http) = g.http_addr {
            println!(
                "  curl -s http://{http}/v1/chat/completions -H 'content-type: application/json' -d '{{\"model\":\"router\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hello\"}}]}}'"
            );
        }
    }
    shutdown_signal().await;
    tracing::info!("shutting down: draining in-flight requests");
    mesh.shutdown().await;
    Ok(())
}

/// Sends one prompt through the gateway and prints the answer and the routing decision.
async fn try_request(addr: SocketAddr, prompt: &str) -> anyhow::Result<()> {
    let mut client = GatewayClient::connect(format!("http://{addr}")).await?;
    let request = GenerateRequest {
        messages: vec![ChatMessage {
            role: "user".into(),
            content: prompt.into(),
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

async fn print_telemetry(
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

async fn print_cost(config: &Config, hours: u64, daily: bool, json: bool) -> anyhow::Result<()> {
    let Some(telemetry) = routemesh_gateway::up::shared_telemetry(config).await? else {
        bail!(
            "without `registry.redis` spend lives in each gateway's memory; ask a gateway: GET http://<admin_listen>/v1/cost"
        );
    };
    let registry = routemesh_gateway::up::connect_registry(config).await?;
    // The counterfactual: the most expensive model registered now.
    let strongest = registry
        .list()
        .await?
        .into_iter()
        .max_by(|a, b| {
            (a.input_usd_per_mtok + a.output_usd_per_mtok)
                .total_cmp(&(b.input_usd_per_mtok + b.output_usd_per_mtok))
        })
        .map(|w| routemesh_gateway::cost::Counterfactual {
            model: w.model,
            input_usd_per_mtok: w.input_usd_per_mtok,
            output_usd_per_mtok: w.output_usd_per_mtok,
        });
    let to = routemesh_telemetry::record::now_ms();
    let from = to.saturating_sub(hours.clamp(1, 24 * 400) * 3_600_000);
    let rows = telemetry.spend(from, to, daily).await?;
    let report = routemesh_gateway::cost::report(&rows, strongest, from, to);
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

/// Logs only, for one-shot commands.
fn plain_logs() {
    let _ = routemesh_gateway::tracing_setup::init(&Default::default(), "routemesh");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
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
            override_listen(&mut config, listen, http_listen, admin_listen);
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
            serve(config, &common, true, true, try_prompt, once, note).await
        }
        Command::Gateway {
            common,
            listen,
            http_listen,
            admin_listen,
        } => {
            let mut config = load(common.config.as_deref(), None)?;
            override_listen(&mut config, listen, http_listen, admin_listen);
            serve(config, &common, false, true, None, false, None).await
        }
        Command::Worker { common } => {
            let config = load(common.config.as_deref(), None)?;
            serve(config, &common, true, false, None, false, None).await
        }
        Command::Telemetry {
            common,
            window,
            json,
        } => {
            plain_logs();
            let config = load(common.config.as_deref(), None)?;
            print_telemetry(&config, window, json).await
        }
        // CPU-bound and synchronous (ONNX, training): off the async runtime.
        Command::Router { command } => {
            plain_logs();
            tokio::task::spawn_blocking(move || routemesh_router_train::cli::run(command)).await?
        }
        Command::Cost {
            common,
            hours,
            daily,
            json,
        } => {
            plain_logs();
            let config = load(common.config.as_deref(), None)?;
            print_cost(&config, hours, daily, json).await
        }
        Command::Keys { common, command } => {
            plain_logs();
            let config = load(common.config.as_deref(), None)?;
            keys_command(&config, command).await
        }
        Command::Bench(args) => routemesh_bench::run(args).await,
        Command::CheckConfig { file } => {
            let config = Config::from_file(&file)?;
            print!("{}", serde_norway::to_string(&config)?);
            Ok(())
        }
    }
}
