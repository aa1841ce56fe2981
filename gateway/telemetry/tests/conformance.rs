//! One conformance suite, run against every store: the in-memory store and a
//! real Redis (each run under a fresh mesh name, so keys never collide).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_arguments)]

use std::sync::Arc;

use routemesh_telemetry::store::HashStore;
use routemesh_telemetry::{
    FeedbackEvent, MemoryStore, Outcome, RedisStore, RequestRecord, Telemetry,
};

const T0: u64 = 1_790_000_000_000; // a fixed instant at the start of a 10 s slot
const MIN: u64 = 60_000;

fn redis_url() -> String {
    routemesh_tests::shared_redis_url()
}

async fn stores() -> Vec<(&'static str, Arc<dyn HashStore>, Option<String>)> {
    let mesh = format!("conformance-{}", uuid::Uuid::new_v4().simple());
    let redis = RedisStore::connect(&redis_url(), &mesh)
        .await
        .expect("Redis for the conformance suite");
    vec![
        ("memory", Arc::new(MemoryStore::new()), None),
        ("redis", Arc::new(redis), Some(mesh)),
    ]
}

async fn cleanup(mesh: Option<String>) {
    if let Some(mesh) = mesh {
        routemesh_tests::delete_mesh_keys(&redis_url(), &mesh).await;
    }
}

fn record(
    at_ms: u64,
    worker: &str,
    model: &str,
    tenant: &str,
    outcome: Outcome,
    ttft: f64,
    total: f64,
    tokens: u32,
    cost: f64,
) -> RequestRecord {
    RequestRecord {
        at_ms,
        tenant: tenant.into(),
        model: model.into(),
        worker_id: worker.into(),
        outcome,
        ttft_ms: ttft,
        total_ms: total,
        prompt_tokens: 10,
        completion_tokens: tokens,
        cost_usd: cost,
        follow_up: false,
        failed_over: false,
    }
}

#[tokio::test]
async fn windowed_stats_per_worker_model_and_tenant() {
    for (name, store, mesh) in stores().await {
        let t = Telemetry::new(store);
        let mut batch = Vec::new();
        // 100 ok requests with ttft 1..=100 ms and 11 tokens over ttft + 1000 ms.
        for i in 1..=100u32 {
            batch.push(record(
                T0 + u64::from(i),
                "w1",
                "small",
                "acme",
                Outcome::Ok,
                f64::from(i),
                f64::from(i) + 1000.0,
                11,
                0.001,
            ));
        }
        for _ in 0..25 {
            batch.push(record(
                T0,
                "w1",
                "small",
                "acme",
                Outcome::WorkerError,
                0.0,
                5.0,
                0,
                0.0,
            ));
        }
        // Another worker, another tenant, and an old record outside the window.
        batch.push(record(
            T0,
            "w2",
            "large",
            "beta",
            Outcome::Ok,
            300.0,
            3300.0,
            31,
            0.03,
        ));
        batch.push(record(
            T0 - 30 * MIN,
            "w2",
            "large",
            "beta",
            Outcome::Ok,
            9000.0,
            9000.0,
            2,
            5.0,
        ));
        t.record(&batch).await.unwrap();

        let s = t.snapshot(T0 + 1000, 300, 7).await.unwrap();
        let w1 = &s.workers["w1"];
        assert_eq!((w1.requests, w1.errors), (125.0, 25.0), "{name}");
        assert!((w1.error_rate - 0.2).abs() < 1e-9, "{name}");
        let p50 = w1.ttft_ms_p50.unwrap();
        assert!((50.0..=50.0 * 1.19).contains(&p50), "{name}: p50 {p50}");
        let p99 = w1.ttft_ms_p99.unwrap();
        assert!((99.0..=99.0 * 1.19).contains(&p99), "{name}: p99 {p99}");
        // 10 tokens after the first in 1000 ms.
        assert!(
            (w1.tokens_per_second.unwrap() - 10.0).abs() < 1e-9,
            "{name}"
        );
        assert!((w1.mean_ttft_ms.unwrap() - 50.5).abs() < 1e-9, "{name}");
        assert!((s.models["small"].cost_usd - 0.1).abs() < 1e-9, "{name}");
        assert!(
            (s.tenants["acme"].cost_per_request_usd.unwrap() - 0.1 / 125.0).abs() < 1e-12,
            "{name}"
        );
        // The 30-minute-old record is outside a 5-minute window, inside an hour's.
        assert_eq!(s.workers["w2"].requests, 1.0, "{name}");
        let wide = t.snapshot(T0 + 1000, 3600, 7).await.unwrap();
        assert_eq!(wide.workers["w2"].requests, 2.0, "{name}");
        cleanup(mesh).await;
    }
}

#[tokio::test]
async fn replicas_writing_to_one_store_merge() {
    for (name, store, mesh) in stores().await {
        let (a, b) = (Telemetry::new(store.clone()), Telemetry::new(store));
        a.record(&[record(T0, "w", "m", "t", Outcome::Ok, 10.0, 20.0, 2, 0.5)])
            .await
            .unwrap();
        b.record(&[record(
            T0,
            "w",
            "m",
            "t",
            Outcome::Timeout,
            0.0,
            20.0,
            0,
            0.0,
        )])
        .await
        .unwrap();
        let s = a.snapshot(T0, 10, 1).await.unwrap();
        assert_eq!(
            (s.workers["w"].requests, s.workers["w"].timeouts),
            (2.0, 1.0),
            "{name}"
        );
        cleanup(mesh).await;
    }
}

#[tokio::test]
async fn spend_by_tenant_model_hour_and_day() {
    for (name, store, mesh) in stores().await {
        let t = Telemetry::new(store);
        let hour = 3_600_000;
        let start = T0 - T0 % hour;
        t.record(&[
            record(
                start + 1,
                "w",
                "small",
                "acme",
                Outcome::Ok,
                1.0,
                2.0,
                5,
                0.25,
            ),
            record(
                start + 2,
                "w",
                "small",
                "acme",
                Outcome::Ok,
                1.0,
                2.0,
                5,
                0.25,
            ),
            record(
                start + hour + 5,
                "w",
                "large",
                "acme",
                Outcome::Ok,
                1.0,
                2.0,
                5,
                2.0,
            ),
            record(
                start + hour + 6,
                "w",
                "small",
                "beta",
                Outcome::Ok,
                1.0,
                2.0,
                5,
                0.125,
            ),
            // acme's request in hour 1 first failed at another worker and
            // moved on, then was escalated by a cascade: three calls, one
            // request.
            RequestRecord {
                failed_over: true,
                ..record(
                    start + hour + 4,
                    "w2",
                    "large",
                    "acme",
                    Outcome::WorkerError,
                    0.0,
                    1.0,
                    0,
                    0.0,
                )
            },
            RequestRecord {
                follow_up: true,
                ..record(
                    start + hour + 7,
                    "w",
                    "large",
                    "acme",
                    Outcome::Ok,
                    1.0,
                    2.0,
                    5,
                    1.0,
                )
            },
        ])
        .await
        .unwrap();
        let hourly = t.spend(start, start + 2 * hour, false).await.unwrap();
        let rows: Vec<_> = hourly
            .iter()
            .map(|r| {
                (
                    r.period_start_ms - start,
                    r.tenant.as_str(),
                    r.model.as_str(),
                    r.cost_usd,
                    r.requests,
                    r.attempts,
                )
            })
            .collect();
        assert_eq!(
            rows,
            vec![
                (0, "acme", "small", 0.5, 2.0, 2.0),
                (hour, "acme", "large", 3.0, 1.0, 3.0),
                (hour, "beta", "small", 0.125, 1.0, 1.0)
            ],
            "{name}"
        );
        let daily = t.spend(start, start + 2 * hour, true).await.unwrap();
        let total: f64 = daily.iter().map(|r| r.cost_usd).sum();
        assert!((total - 3.625).abs() < 1e-9, "{name}");
        let requests: f64 = daily.iter().map(|r| r.requests).sum();
        let attempts: f64 = daily.iter().map(|r| r.attempts).sum();
        assert_eq!((requests, attempts), (4.0, 6.0), "{name}");
        assert!(
            daily
                .iter()
                .all(|r| r.prompt_tokens > 0.0 && r.completion_tokens > 0.0),
            "{name}"
        );
        cleanup(mesh).await;
    }
}

#[tokio::test]
async fn feedback_per_model_and_scope() {
    for (name, store, mesh) in stores().await {
        let t = Telemetry::new(store);
        let fb = |model: &str, scope: &str, score: f64| FeedbackEvent {
            at_ms: T0,
            model: model.into(),
            scope: scope.into(),
            score,
            replaces: None,
        };
        t.record_feedback(&[
            fb("small", "math", 0.0),
            fb("small", "math", 0.5),
            fb("small", "chat", 1.0),
            fb("large", "", 0.75),
        ])
        .await
        .unwrap();
        let s = t.snapshot(T0, 300, 7).await.unwrap();
        let small = &s.feedback["small"];
        assert_eq!((small.sum, small.count), (1.5, 3.0), "{name}");
        assert_eq!(small.by_scope["math"], (0.5, 2.0), "{name}");
        assert_eq!(s.feedback["large"].mean(), Some(0.75), "{name}");
        cleanup(mesh).await;
    }
}

#[tokio::test]
async fn a_replaced_score_counts_once() {
    for (name, store, mesh) in stores().await {
        let t = Telemetry::new(store);
        let fb = |score: f64, replaces: Option<f64>| FeedbackEvent {
            at_ms: T0,
            model: "large".into(),
            scope: "math".into(),
            score,
            replaces,
        };
        // One request scored 0.2, then 0.0 (replacing 0.2), then 0.6
        // (replacing 0.0); another request scored 1.0.
        t.record_feedback(&[fb(0.2, None), fb(0.0, Some(0.2))])
            .await
            .unwrap();
        t.record_feedback(&[fb(0.6, Some(0.0)), fb(1.0, None)])
            .await
            .unwrap();
        let s = t.snapshot(T0, 300, 7).await.unwrap();
        let large = &s.feedback["large"];
        assert_eq!(large.count, 2.0, "{name}");
        assert!((large.sum - 1.6).abs() < 1e-9, "{name}: {large:?}");
        let (sum, n) = large.by_scope["math"];
        assert!((sum - 1.6).abs() < 1e-9 && n == 2.0, "{name}");
        cleanup(mesh).await;
    }
}

#[tokio::test]
async fn redis_keys_are_hash_tagged_and_expire() {
    let mesh = format!("ttl-{}", uuid::Uuid::new_v4().simple());
    let t = Telemetry::new(Arc::new(
        RedisStore::connect(&redis_url(), &mesh).await.unwrap(),
    ));
    t.record(&[record(T0, "w", "m", "t", Outcome::Ok, 1.0, 2.0, 2, 0.1)])
        .await
        .unwrap();
    t.record_feedback(&[FeedbackEvent {
        at_ms: T0,
        model: "m".into(),
        scope: String::new(),
        score: 1.0,
        replaces: None,
    }])
    .await
    .unwrap();
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("rm:v1:{{{mesh}}}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(keys.len() >= 6, "{keys:?}");
    for key in &keys {
        assert!(key.starts_with(&format!("rm:v1:{{{mesh}}}:")));
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 0, "{key} has no TTL");
    }
    cleanup(Some(mesh)).await;
}
