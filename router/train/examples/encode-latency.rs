//! Per-prompt encoder latency at batch 1, as quantiles: what the full path's decision latency is made of.
//!
//! Criterion (`benches/router.rs`) gives means; a p99 target needs the distribution over real prompt
//! lengths. Encodes every k-th prompt of a JSONL data file (up to `--prompts`) one at a time, for each
//! `--max-len`/`--keep-tail`/`--threads` combination given, and prints p50/p90/p99/max.
//!
//! `cargo run --release -p routemesh-router-train --example encode-latency -- ../shared/data/routing/mix9.jsonl`

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use routemesh_router::encoder::{AssetPaths, Encoder, EncoderConfig};

#[derive(Parser)]
struct Args {
    /// A JSONL file with a `prompt` field per line.
    data: PathBuf,
    /// Prompts to time, spread evenly over the file.
    #[arg(long, default_value_t = 500)]
    prompts: usize,
    /// Truncation lengths to compare.
    #[arg(long, value_delimiter = ',', default_value = "256,128")]
    max_len: Vec<usize>,
    /// Word pieces kept from the end of a truncated prompt (0: the start only).
    #[arg(long, default_value_t = 0)]
    keep_tail: usize,
    /// ONNX Runtime intra-op thread counts to compare.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    threads: Vec<usize>,
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.data)?;
    let lines = text.lines().count();
    let prompts: Vec<String> = text
        .lines()
        .step_by(lines.div_ceil(args.prompts.max(1)).max(1))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["prompt"].as_str().map(str::to_owned))
        .collect();
    anyhow::ensure!(!prompts.is_empty(), "no prompts in {}", args.data.display());
    println!(
        "{} prompts of {}, batch 1; ms per prompt",
        prompts.len(),
        args.data.display()
    );
    println!("max_len keep_tail threads    mean     p50     p90     p99     max");
    for &max_len in &args.max_len {
        for &threads in &args.threads {
            let keep_tail = if max_len > args.keep_tail {
                args.keep_tail
            } else {
                0
            };
            let enc = Encoder::load(&EncoderConfig {
                assets: AssetPaths::from_env(),
                max_len,
                keep_tail,
                threads,
                sessions: 1,
            })?;
            // Warm up: the first runs allocate and pick kernels.
            for p in prompts.iter().take(20) {
                enc.encode(&[p.as_str()])?;
            }
            let mut ms: Vec<f64> = prompts
                .iter()
                .map(|p| {
                    let t = Instant::now();
                    enc.encode(&[p.as_str()])
                        .map(|_| t.elapsed().as_secs_f64() * 1e3)
                })
                .collect::<Result<_, _>>()?;
            ms.sort_by(f64::total_cmp);
            let mean = ms.iter().sum::<f64>() / ms.len() as f64;
            println!(
                "{max_len:>7} {keep_tail:>9} {threads:>7} {mean:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>7.2}",
                quantile(&ms, 0.5),
                quantile(&ms, 0.9),
                quantile(&ms, 0.99),
                ms[ms.len() - 1]
            );
        }
    }
    Ok(())
}
