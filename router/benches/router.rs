//! Router speed: decisions per second without cache hits (embedder + predictor
//! on each prompt), on the full path (encoder) and the fast path (static
//! embeddings), by batch size and prompt length, and the full path at a shorter truncation. Needs the encoder assets
//! (`scripts/fetch-router-assets.sh`; ROUTEMESH_ASSETS) and uses mix9 prompts
//! from ../shared/data when present, else generated ones.
//!
//! `cargo bench -p routemesh-router --bench router`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hash::{Hash, Hasher};
use std::path::Path;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use routemesh_router::{Router, RouterConfig};

fn prompts() -> Vec<String> {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/routing/mix9.jsonl");
    match std::fs::read_to_string(&data) {
        // Every k-th row (the file is grouped by task and starts with three long-prompt tasks), in a fixed
        // shuffled order: a run measures a prefix of the cycle, which should look like the whole.
        Ok(text) => {
            let mut prompts: Vec<String> = text
                .lines()
                .step_by(text.lines().count().div_ceil(512).max(1))
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter_map(|v| v["prompt"].as_str().map(str::to_owned))
                .collect();
            prompts.sort_by_key(|p| {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                p.hash(&mut h);
                h.finish()
            });
            prompts
        }
        Err(_) => (0..512)
            .map(|i| {
                format!(
                    "Question {i}: explain why the sky is blue in {} words.",
                    20 + i % 50
                )
            })
            .collect(),
    }
}

fn bench(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts/default");
    let prompts = prompts();
    for fast_path in [false, true] {
        let cfg = RouterConfig {
            fast_path,
            ..RouterConfig::default()
        };
        let router = match Router::load_with(&dir, &cfg) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("SKIP router bench: {e}");
                return;
            }
        };
        let name = format!("router_{}_path_no_cache", router.path().as_str());
        let mut group = c.benchmark_group(name);
        for batch in [1usize, 8, 32] {
            group.throughput(Throughput::Elements(batch as u64));
            // Carried across samples: each sample goes on through the cycle instead of restarting it.
            let mut i = 0;
            group.bench_with_input(
                BenchmarkId::new("mix9_prompts_batch", batch),
                &batch,
                |b, &batch| {
                    b.iter(|| {
                        let chunk: Vec<&str> = (0..batch)
                            .map(|k| prompts[(i + k) % prompts.len()].as_str())
                            .collect();
                        i += batch;
                        router.predict_batch(&chunk).unwrap()
                    });
                },
            );
        }
        for words in [8usize, 64, 256] {
            let prompt = "routing ".repeat(words);
            group.throughput(Throughput::Elements(1));
            group.bench_with_input(BenchmarkId::new("prompt_words", words), &prompt, |b, p| {
                b.iter(|| router.predict(p).unwrap())
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
