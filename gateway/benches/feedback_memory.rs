//! Feedback memory on the request path: recording an exemplar (the Feedback
//! call) and the shift it gives a prediction (every routed request while
//! exemplars exist), at the default cap of 20,000 exemplars of 128
//! dimensions (the default artifact's frame: its kNN memory's principal
//! components), all of one model (the worst case for a query). Also prints
//! p50/p99 of single insertions, which the target is stated in.
//!
//! `cargo bench -p routemesh-gateway --bench feedback_memory`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use routemesh_gateway::routing::feedback::{
    FeedbackEntry, FeedbackMemory, FeedbackMemoryConfig, PromptPoint, Scope,
};

const DIM: usize = 128;

/// A deterministic pseudo-random unit point (xorshift), so runs compare.
fn point(seed: u64) -> PromptPoint {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..DIM)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    PromptPoint::new(&v, None).unwrap()
}

fn entry(i: u64) -> FeedbackEntry {
    FeedbackEntry {
        key: format!("t:bench\u{1f}req-{i}"),
        scope: Scope::Tenant(Some("bench".into())),
        source: Some("bench".into()),
        model: "m".into(),
        score: (i % 2) as f32,
        base: 0.6,
        space: "fast:bench".into(),
        point: point(i),
        embedding: None,
        at_ms: 1,
    }
}

fn bench(c: &mut Criterion) {
    let memory = FeedbackMemory::new(FeedbackMemoryConfig::default());
    let cap = FeedbackMemoryConfig::default().entries as u64;
    for i in 0..cap {
        memory.insert(entry(i));
    }
    // Single insertions at the cap (each one evicts the oldest), timed alone.
    let mut took: Vec<f64> = (cap..cap + 20_000)
        .map(|i| {
            let e = entry(i);
            let start = std::time::Instant::now();
            memory.insert(e);
            start.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    took.sort_by(f64::total_cmp);
    eprintln!(
        "feedback insert at {cap} exemplars: p50 {:.2} µs, p99 {:.2} µs, max {:.2} µs",
        took[took.len() / 2],
        took[took.len() * 99 / 100],
        took[took.len() - 1]
    );
    let mut i = 2 * cap;
    c.bench_function("feedback_insert_at_cap", |b| {
        b.iter(|| {
            i += 1;
            memory.insert(entry(i));
        })
    });
    let query = point(7);
    let owner = Some("bench".to_string());
    c.bench_function("feedback_shift_20k_exemplars_one_model", |b| {
        b.iter(|| memory.shift("m", "fast:bench", &query, &owner, 10.0, 0))
    });
    c.bench_function("feedback_shift_model_without_exemplars", |b| {
        b.iter(|| memory.shift("other", "fast:bench", &query, &owner, 10.0, 0))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
