//! The cost of recording on the request path: `Recorder::record` is a
//! `try_send` into a bounded channel; batching and Redis happen elsewhere.
//!
//! `cargo bench -p routemesh-telemetry --bench recorder`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use routemesh_telemetry::{Outcome, Recorder, RecorderConfig, RequestRecord};

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let recorder = runtime.block_on(async { Recorder::start(None, RecorderConfig::default()) });
    let record = RequestRecord {
        at_ms: routemesh_telemetry::record::now_ms(),
        tenant: "acme".into(),
        model: "llama-3.1-8b-instruct".into(),
        worker_id: "llama-8b-0".into(),
        outcome: Outcome::Ok,
        ttft_ms: 42.0,
        total_ms: 420.0,
        prompt_tokens: 100,
        completion_tokens: 64,
        cost_usd: 3.3e-5,
        follow_up: false,
        failed_over: false,
    };
    c.bench_function("recorder_record_on_request_path", |b| {
        b.iter(|| recorder.record(record.clone()))
    });
    c.bench_function("recorder_snapshot_read", |b| b.iter(|| recorder.snapshot()));
    runtime.block_on(recorder.shutdown());
}

criterion_group!(benches, bench);
criterion_main!(benches);
