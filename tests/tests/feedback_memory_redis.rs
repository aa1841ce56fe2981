//! Feedback exemplars shared through a real Redis that goes away: a write
//! during the outage waits in the replica's queue and is shared once Redis is
//! back, and a Redis that lost its data (restarted without persistence) is
//! read again from the start rather than skipped by a stale cursor.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use routemesh_gateway::routing::feedback::{
    FeedbackEntry, FeedbackMemory, FeedbackMemoryConfig, PromptPoint, Scope, SharedFeedback,
};
use routemesh_tests::*;

fn entry(key: &str, axis: usize) -> FeedbackEntry {
    let mut v = vec![0.0f32; 16];
    v[axis] = 1.0;
    FeedbackEntry {
        key: key.into(),
        scope: Scope::Global,
        source: Some("trusted".into()),
        model: "m".into(),
        score: 1.0,
        base: 0.5,
        space: "fast:test".into(),
        point: PromptPoint::new(&v, None).unwrap(),
        embedding: None,
        at_ms: 1,
    }
}

async fn replica(url: &str, mesh: &str) -> SharedFeedback {
    let memory = Arc::new(FeedbackMemory::new(FeedbackMemoryConfig::default()));
    SharedFeedback::redis(memory, url, mesh).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exemplars_survive_a_redis_outage_and_a_redis_that_lost_its_data() {
    let redis = OwnRedis::start().unwrap();
    let (url, port) = (redis.url(), redis.port);
    let mesh = unique_mesh("fbmem-outage");
    let (a, b) = (replica(&url, &mesh).await, replica(&url, &mesh).await);

    a.record(entry("first", 0)).await;
    assert_eq!(b.sync().await.unwrap(), 1);
    assert!(b.memory().get("first").is_some());

    // Redis goes away: the write is kept by replica a, in memory and queued.
    drop(redis);
    a.record(entry("during-outage", 1)).await;
    assert!(
        a.memory().get("during-outage").is_some(),
        "a uses it at once"
    );
    assert!(a.sync().await.is_err(), "Redis is down");

    // Redis comes back empty (no persistence): a's queued write lands, and b,
    // whose cursor is past everything the new Redis has, reads it anyway.
    let _redis = OwnRedis::start_on(port).unwrap();
    let mut shared = false;
    for _ in 0..50 {
        if a.sync().await.is_ok() {
            shared = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(shared, "a's queue is flushed once Redis answers");
    let mut read = 0;
    for _ in 0..50 {
        if let Ok(n) = b.sync().await {
            read += n;
            if b.memory().get("during-outage").is_some() {
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        b.memory().get("during-outage").is_some(),
        "b reads the write made during the outage ({read} read)"
    );
    assert!(b.memory().get("first").is_some(), "and keeps what it had");
}
