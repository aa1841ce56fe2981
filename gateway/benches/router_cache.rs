//! The gateway's router prediction cache: a hit (prompt hash + lookup) versus
//! a miss (encoder + predictor on a blocking thread). Needs the encoder assets
//! (`scripts/fetch-router-assets.sh`, ROUTEMESH_ASSETS); skips without them.
//!
//! `cargo bench -p routemesh-gateway --bench router_cache`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use routemesh_gateway::routing::quality::{QualityModel, RouterSettings};

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let settings = RouterSettings {
        artifact: Some(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../router/artifacts/default"),
        ),
        ..RouterSettings::default()
    };
    let model = match runtime.block_on(QualityModel::load(&settings)) {
        Ok(m) if m.loaded() => m,
        other => {
            eprintln!("SKIP router cache bench: {:?}", other.err());
            return;
        }
    };
    let prompt = "Janet has 16 eggs, eats 3 and bakes with 4. She sells the rest at $2 each. How much does she earn?";
    runtime.block_on(model.predict(prompt, &[])).unwrap();
    c.bench_function("router_prediction_cache_hit", |b| {
        b.iter(|| runtime.block_on(model.predict(prompt, &[])))
    });
    let mut i = 0u64;
    c.bench_function("router_prediction_cache_miss", |b| {
        b.iter(|| {
            i += 1;
            runtime.block_on(model.predict(&format!("{prompt} (variant {i})"), &[]))
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
