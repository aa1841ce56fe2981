//! The encoder alone at batch sizes 1, 4, 8 and 16 within length buckets (word pieces ≤ 16, ≤ 32, ≤ 64,
//! ≤ 128): whether one padded pass over prompts of similar length costs less per prompt than a pass each,
//! which is what the gateway's micro-batcher bets on. Real mix9 prompts from ../shared/data, tokenized
//! once and grouped by length as the gateway groups them. Needs the encoder assets
//! (`scripts/fetch-router-assets.sh`; ROUTEMESH_ASSETS).
//!
//! `cargo bench -p routemesh-router --bench encoder_batch` (ENCODER_THREADS=1,2 picks the ONNX Runtime
//! intra-op threads per pass; default 2, the gateway's default on two cores)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use routemesh_router::encoder::{Encoder, EncoderConfig, Pieces};

/// The gateway's buckets (`routing::quality::batch`).
const BUCKETS: [usize; 4] = [16, 32, 64, 128];

fn prompts() -> Vec<String> {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/routing/mix9.jsonl");
    let text = std::fs::read_to_string(&data).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["prompt"].as_str().map(str::to_owned))
        .collect()
}

fn bench(c: &mut Criterion) {
    let threads: Vec<usize> = std::env::var("ENCODER_THREADS")
        .unwrap_or_else(|_| "2".into())
        .split(',')
        .filter_map(|t| t.trim().parse().ok())
        .collect();
    let prompts = prompts();
    if prompts.is_empty() {
        eprintln!("SKIP encoder batch bench: no ../shared/data/routing/mix9.jsonl");
        return;
    }
    for threads in threads {
        let encoder = match Encoder::load(&EncoderConfig {
            threads,
            ..EncoderConfig::default()
        }) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("SKIP encoder batch bench: {e}");
                return;
            }
        };
        let mut bucketed: Vec<Vec<Pieces>> = vec![Vec::new(); BUCKETS.len()];
        // Every 7th prompt: enough of each length without tokenizing the whole file.
        for p in prompts.iter().step_by(7) {
            let pieces = encoder.tokenize(p).unwrap();
            let b = BUCKETS
                .iter()
                .position(|&max| pieces.len() <= max)
                .unwrap_or(BUCKETS.len() - 1);
            bucketed[b].push(pieces);
        }
        let mut group = c.benchmark_group(format!("encoder_threads_{threads}"));
        for (bucket, rows) in BUCKETS.iter().zip(&bucketed) {
            if rows.len() < 16 {
                eprintln!("bucket <= {bucket}: only {} prompts, skipped", rows.len());
                continue;
            }
            let mean = rows.iter().map(Pieces::len).sum::<usize>() as f64 / rows.len() as f64;
            eprintln!(
                "bucket <= {bucket} pieces: {} prompts, mean {mean:.1} pieces",
                rows.len()
            );
            for batch in [1usize, 4, 8, 16] {
                group.throughput(Throughput::Elements(batch as u64));
                // Carried across samples, so each sample goes on through the bucket's prompts.
                let mut i = 0;
                group.bench_with_input(
                    BenchmarkId::new(format!("bucket_{bucket}_batch"), batch),
                    &batch,
                    |b, &batch| {
                        b.iter(|| {
                            let chunk: Vec<&Pieces> =
                                (0..batch).map(|k| &rows[(i + k) % rows.len()]).collect();
                            i += batch;
                            encoder.encode_pieces(&chunk).unwrap()
                        });
                    },
                );
            }
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(std::time::Duration::from_secs(4));
    targets = bench
}
criterion_main!(benches);
