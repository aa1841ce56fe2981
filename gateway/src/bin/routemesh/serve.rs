//! `up`, `gateway` and `worker`: start the mesh (or one side of it) from a configuration, write the
//! ready file, optionally send the `--try` prompt, and serve until SIGINT or SIGTERM, then drain.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, bail};
use routemesh_gateway::Config;
use routemesh_gateway::up::Mesh;

use crate::Common;
use crate::try_prompt::try_request;

pub fn override_listen(
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

pub async fn serve(
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
    // Each listener caps its own connections; the process must have room
    // for all of them (the default soft limit is often 1,024).
    match routemesh_mesh::conn::raise_open_file_limit() {
        Ok(limit) => tracing::debug!(limit, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
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
