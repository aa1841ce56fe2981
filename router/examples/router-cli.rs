//! Stand-alone `router` command for development (the gateway binary wires the same subcommands as
//! `routemesh router ...`): `cargo run --release -p routemesh-router --example router-cli -- train ...`.

use clap::Parser;

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: routemesh_router::cli::RouterCommand,
}

fn main() -> anyhow::Result<()> {
    routemesh_router::cli::run(Cli::parse().cmd)
}
