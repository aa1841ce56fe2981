//! The recorder while Redis goes away and comes back: writes buffer (bounded),
//! routing reads fall back to local observations, and the buffered records
//! reach Redis once it returns. Uses a redis-server of its own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use routemesh_telemetry::{
    Outcome, Recorder, RecorderConfig, RedisStore, RequestRecord, Telemetry,
};
use routemesh_tests::{OwnRedis, free_port};

fn record(i: u32) -> RequestRecord {
    RequestRecord {
        at_ms: routemesh_telemetry::record::now_ms(),
        tenant: "t".into(),
        model: "m".into(),
        worker_id: "w".into(),
        outcome: Outcome::Ok,
        ttft_ms: f64::from(i % 50),
        total_ms: 100.0,
        prompt_tokens: 1,
        completion_tokens: 2,
        cost_usd: 0.001,
        follow_up: false,
        failed_over: false,
    }
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..600 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffers_through_an_outage_and_converges_after() {
    let port = free_port();
    let redis = OwnRedis::start_on(port).unwrap();
    let url = format!("redis://127.0.0.1:{port}");
    let store = RedisStore::connect(&url, "outage").await.unwrap();
    let config = RecorderConfig {
        flush_interval: Duration::from_millis(20),
        snapshot_interval: Duration::from_millis(50),
        ..RecorderConfig::default()
    };
    let recorder = Recorder::start(Some(Telemetry::new(Arc::new(store))), config);

    for i in 0..50 {
        recorder.record(record(i));
    }
    until("50 records in the shared snapshot", || {
        let live = recorder.snapshot();
        live.source == "shared"
            && live
                .snapshot
                .workers
                .get("w")
                .is_some_and(|s| s.requests == 50.0)
    })
    .await;

    drop(redis);
    for i in 0..30 {
        recorder.record(record(i));
    }
    until("writes fail and records buffer", || {
        recorder.stats.shared_write_errors.load(Ordering::Relaxed) > 0
            && recorder.stats.buffered.load(Ordering::Relaxed) == 30
    })
    .await;
    until("routing reads local observations", || {
        let live = recorder.snapshot();
        live.source == "local"
            && live
                .snapshot
                .workers
                .get("w")
                .is_some_and(|s| s.requests == 80.0)
    })
    .await;

    // Redis returns (empty: it keeps nothing on disk); the buffered records arrive.
    let _redis = OwnRedis::start_on(port).unwrap();
    until("buffer flushed to the new Redis", || {
        recorder.stats.buffered.load(Ordering::Relaxed) == 0
    })
    .await;
    // A slot's hash holds this replica's running totals, replaced whole on
    // each write: the outage's records arrive, and with them what the
    // replica had written before into the same slot (Redis lost it).
    // Earlier slots it no longer writes stay lost: 30 to 80 requests.
    until(
        "the shared snapshot again, with the outage's records",
        || {
            let live = recorder.snapshot();
            live.source == "shared"
                && live
                    .snapshot
                    .workers
                    .get("w")
                    .is_some_and(|s| (30.0..=80.0).contains(&s.requests))
        },
    )
    .await;
    assert_eq!(
        recorder.stats.dropped_buffer_full.load(Ordering::Relaxed),
        0
    );
    assert_eq!(
        recorder.stats.dropped_channel_full.load(Ordering::Relaxed),
        0
    );
    recorder.shutdown().await;
}
