//! One conformance suite for the registry, run against the in-memory
//! registry and a real Redis (each run under a fresh mesh name, so keys never
//! collide), plus the Redis key layout that older gateways and workers read.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use routemesh_mesh::{
    MemoryRegistry, RedisConn, RedisRegistry, Registry, Tier, WorkerRecord, key_prefix,
};

fn redis_url() -> String {
    routemesh_tests::shared_redis_url()
}

fn fresh_mesh() -> String {
    format!("registry-{}", uuid::Uuid::new_v4().simple())
}

fn record(id: &str, tier: Tier) -> WorkerRecord {
    WorkerRecord {
        id: id.into(),
        model: format!("model-{id}"),
        tier,
        endpoint: format!("http://127.0.0.1:1/{id}"),
        capacity: 4,
        max_queue: 16,
        input_usd_per_mtok: 0.5,
        output_usd_per_mtok: 1.5,
        quality_prior: Some(0.6),
        router_model: None,
        params_b: None,
        backend: "sim".into(),
        simulated: true,
        expected_ttft_ms: Some(120.0),
        expected_tokens_per_second: None,
        capabilities: Some(routemesh_mesh::Capabilities {
            tools: false,
            context_tokens: Some(4096),
            ..routemesh_mesh::Capabilities::OPENAI_ENGINE
        }),
    }
}

/// A record written before workers declared their speed or capabilities
/// still decodes, and the declared figures survive the JSON round trip.
#[test]
fn records_without_declared_speed_decode() {
    let old = r#"{"id":"w","model":"m","tier":"small","endpoint":"http://h:1","capacity":4,"max_queue":16,"input_usd_per_mtok":0.1,"output_usd_per_mtok":0.2,"quality_prior":null,"backend":"sim","simulated":true}"#;
    let r: WorkerRecord = serde_json::from_str(old).unwrap();
    assert_eq!(
        (r.expected_ttft_ms, r.expected_tokens_per_second),
        (None, None)
    );
    // An agent older than capabilities is assumed to serve everything.
    assert_eq!(r.capabilities(), routemesh_mesh::Capabilities::UNDECLARED);
    let new = record("n", Tier::Large);
    let back: WorkerRecord = serde_json::from_str(&serde_json::to_string(&new).unwrap()).unwrap();
    assert_eq!(back, new);
}

async fn cleanup(mesh: &str) {
    routemesh_tests::delete_mesh_keys(&redis_url(), mesh).await;
}

/// What every registry does: announced records are listed (sorted by id)
/// until withdrawn or expired; announcing again replaces a record.
async fn conformance(name: &str, registry: Arc<dyn Registry>) {
    let ttl = Duration::from_secs(30);
    assert!(registry.list().await.unwrap().is_empty(), "{name}");
    registry
        .announce(&record("b", Tier::Large), ttl)
        .await
        .unwrap();
    registry
        .announce(&record("a", Tier::Small), ttl)
        .await
        .unwrap();
    assert_eq!(
        registry.list().await.unwrap(),
        vec![record("a", Tier::Small), record("b", Tier::Large)],
        "{name}"
    );

    let mut changed = record("a", Tier::Small);
    changed.capacity = 8;
    registry.announce(&changed, ttl).await.unwrap();
    assert_eq!(
        registry.list().await.unwrap(),
        vec![changed, record("b", Tier::Large)],
        "{name}"
    );

    registry.withdraw("b").await.unwrap();
    registry.withdraw("not-there").await.unwrap();
    let ids: Vec<String> = registry
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, ["a"], "{name}");

    // A record that is not refreshed disappears.
    registry
        .announce(&record("short", Tier::Small), Duration::from_millis(50))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let ids: Vec<String> = registry
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        if ids == ["a"] {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{name}: {ids:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn memory_registry_conforms() {
    conformance("memory", Arc::new(MemoryRegistry::default())).await;
}

#[tokio::test]
async fn redis_registry_conforms() {
    let mesh = fresh_mesh();
    let registry = RedisRegistry::connect(&redis_url(), &mesh)
        .await
        .expect("Redis for the registry conformance suite");
    conformance("redis", Arc::new(registry)).await;
    cleanup(&mesh).await;
}

#[tokio::test]
async fn static_records_never_expire() {
    let registry = MemoryRegistry::with_static([record("s", Tier::Large)]);
    assert_eq!(
        registry.list().await.unwrap(),
        vec![record("s", Tier::Large)]
    );
}

/// The layout in Redis is what gateways and workers of other versions read:
/// `rm:v1:{<mesh>}:workers` indexes ids, `rm:v1:{<mesh>}:worker:<id>` holds
/// the JSON record with the field names below.
#[tokio::test]
async fn redis_layout_is_unchanged() {
    let mesh = fresh_mesh();
    let registry = RedisRegistry::connect(&redis_url(), &mesh).await.unwrap();
    registry
        .announce(&record("w1", Tier::Large), Duration::from_secs(30))
        .await
        .unwrap();

    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let ids: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("rm:v1:{{{mesh}}}:workers"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(ids, ["w1"]);
    let json: String = redis::cmd("GET")
        .arg(format!("rm:v1:{{{mesh}}}:worker:w1"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        value,
        serde_json::json!({
            "id": "w1", "model": "model-w1", "tier": "large",
            "endpoint": "http://127.0.0.1:1/w1", "capacity": 4, "max_queue": 16,
            "input_usd_per_mtok": 0.5, "output_usd_per_mtok": 1.5, "quality_prior": 0.6,
            "backend": "sim", "simulated": true,
            // Optional, written only when declared; readers of older
            // versions ignore it (records are not parsed strictly).
            "expected_ttft_ms": 120.0,
            "capabilities": {"tools": false, "json_output": true, "structured_output": true,
                             "vision": false, "logprobs": true, "context_tokens": 4096}
        })
    );

    // A record written without the optional fields still parses.
    let old = r#"{"id":"w2","model":"m","tier":"small","endpoint":"http://x:1","capacity":1,
        "max_queue":0,"input_usd_per_mtok":0.0,"output_usd_per_mtok":0.0,"backend":"openai",
        "simulated":false}"#;
    let _: () = redis::cmd("SET")
        .arg(format!("rm:v1:{{{mesh}}}:worker:w2"))
        .arg(old)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("SADD")
        .arg(format!("rm:v1:{{{mesh}}}:workers"))
        .arg("w2")
        .query_async(&mut conn)
        .await
        .unwrap();
    let listed = registry.list().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(
        (listed[1].tier, listed[1].quality_prior),
        (Tier::Small, None)
    );
    cleanup(&mesh).await;
}

#[tokio::test]
async fn connection_keys_carry_the_mesh_prefix() {
    let mesh = fresh_mesh();
    let patience = routemesh_mesh::Patience {
        connect_timeout: Duration::from_secs(1),
        response_timeout: Duration::from_secs(1),
        retries: 0,
        max_retry_delay: None,
    };
    let conn = RedisConn::connect(&redis_url(), &mesh, patience)
        .await
        .unwrap();
    assert_eq!(conn.prefix(), key_prefix(&mesh));
    assert_eq!(conn.key("workers"), format!("rm:v1:{{{mesh}}}:workers"));
    let mut manager = conn.manager();
    let pong: String = redis::cmd("PING").query_async(&mut manager).await.unwrap();
    assert_eq!(pong, "PONG");
}
