//! Stand-alone `router` command for development (the gateway binary wires the same subcommands as
//! `routemesh router ...`): `cargo run --release -p routemesh-router-train --example router-cli -- train ...`.

use clap::Parser;

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: routemesh_router_train::cli::RouterCommand,
}

fn main() -> anyhow::Result<()> {
    routemesh_router_train::cli::run(Cli::parse().cmd)
}
