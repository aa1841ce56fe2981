//! What a flush costs the store: records of one flush are aggregated per
//! (worker, model, tenant, slot) series and spend period, so N records
//! cost what one does: per series and slot one replace of the writer's
//! running totals (HSET) and one expiry, per spend period one increment per
//! distinct field and one expiry. And a refreshed snapshot reads again only
//! what can still change.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use routemesh_telemetry::store::{Apply, HashStore, HashUpdate, StoreError};
use routemesh_telemetry::telemetry::FULL_READ_EVERY_MS;
use routemesh_telemetry::{
    MemoryStore, Outcome, ReadCache, Recorder, RecorderConfig, RedisStore, RequestRecord, Telemetry,
};

const T0: u64 = 1_790_000_000_000; // the start of a 10 s slot (and of an hour)

/// A memory store that keeps what it was asked, and counts the commands
/// Redis would run for it (the same pipelines `RedisStore` sends).
#[derive(Default)]
struct Counting {
    inner: MemoryStore,
    updates: Mutex<Vec<Vec<HashUpdate>>>,
    reads: Mutex<Vec<Vec<String>>>,
    commands: Mutex<u64>,
}

impl Counting {
    fn count(&self, n: usize) {
        *self.commands.lock().unwrap() += n as u64;
    }
}

#[async_trait::async_trait]
impl HashStore for Counting {
    async fn update(&self, updates: &[HashUpdate]) -> Result<(), StoreError> {
        // Added: one HINCRBYFLOAT per field; replaced: one HSET; and one
        // PEXPIRE per key (as RedisStore pipelines them).
        self.count(
            updates
                .iter()
                .map(|u| match u.apply {
                    Apply::Add => u.fields.len() + 1,
                    Apply::Replace => 2,
                })
                .sum(),
        );
        self.updates.lock().unwrap().push(updates.to_vec());
        self.inner.update(updates).await
    }
    async fn index_add(
        &self,
        index: &str,
        members: &[String],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.count(2);
        self.inner.index_add(index, members, ttl).await
    }
    async fn index(&self, index: &str) -> Result<Vec<String>, StoreError> {
        self.count(1);
        self.inner.index(index).await
    }
    async fn read(&self, keys: &[String]) -> Result<Vec<HashMap<String, f64>>, StoreError> {
        self.count(keys.len());
        self.reads.lock().unwrap().push(keys.to_vec());
        self.inner.read(keys).await
    }
    fn commands(&self) -> u64 {
        *self.commands.lock().unwrap()
    }
}

fn ok(at_ms: u64, worker: &str, tenant: &str) -> RequestRecord {
    RequestRecord {
        at_ms,
        tenant: tenant.into(),
        model: "m".into(),
        worker_id: worker.into(),
        outcome: Outcome::Ok,
        ttft_ms: 12.0,
        total_ms: 80.0,
        prompt_tokens: 10,
        completion_tokens: 16,
        cost_usd: 0.001,
        follow_up: false,
        failed_over: false,
    }
}

/// Fields of one served request in one series: n, ok, the two latency
/// sums, three histogram buckets, decode tokens and time, tokens in and
/// out, cost.
const SERIES_FIELDS: usize = 12;
/// Commands of one series' slot: HSET of the running totals, PEXPIRE.
const SERIES_COMMANDS: usize = 2;
/// Fields of one (tenant, model) pair in one spend period: cost, calls,
/// tokens in and out.
const SPEND_FIELDS: usize = 4;

/// The commands one flush of records costs, and the keys it wrote.
async fn flush_cost(records: &[RequestRecord]) -> (u64, usize) {
    let store = Arc::new(Counting::default());
    let t = Telemetry::new(store.clone());
    t.record(records).await.unwrap();
    let updates = store.updates.lock().unwrap();
    assert_eq!(updates.len(), 1, "one pipelined write per flush");
    (store.commands(), updates[0].len())
}

#[tokio::test]
async fn n_records_of_one_series_cost_what_one_does() {
    // 3 series (worker, model, tenant) of one slot, one hour, one day:
    // each series one HSET + PEXPIRE, each spend field once and a PEXPIRE
    // per period, SADD + PEXPIRE of the index.
    let expected = (3 * SERIES_COMMANDS + 2 * SPEND_FIELDS + 2 + 2) as u64;
    for n in [1u64, 10, 1000] {
        let records: Vec<RequestRecord> = (0..n).map(|i| ok(T0 + i, "w", "t")).collect();
        assert_eq!(flush_cost(&records).await, (expected, 5), "{n} records");
    }
}

#[tokio::test]
async fn the_cost_grows_with_distinct_series_not_with_records() {
    // Two workers and two tenants: 2 + 1 + 2 series, two (tenant, model)
    // spend pairs in each period.
    let expected = (5 * SERIES_COMMANDS + 2 * 2 * SPEND_FIELDS + 2 + 2) as u64;
    for n in [4u64, 4000] {
        let records: Vec<RequestRecord> = (0..n)
            .map(|i| {
                let (w, t) = [("w1", "a"), ("w2", "b")][usize::from(i % 2 == 1)];
                ok(T0 + i, w, t)
            })
            .collect();
        assert_eq!(flush_cost(&records).await, (expected, 7), "{n} records");
    }
    // A flush that spans a slot boundary writes both slots' keys.
    let records = [ok(T0, "w", "t"), ok(T0 + 10_000, "w", "t")];
    let (commands, keys) = flush_cost(&records).await;
    assert_eq!(keys, 3 * 2 + 2);
    assert_eq!(
        commands,
        (6 * SERIES_COMMANDS + 2 * SPEND_FIELDS + 2 + 2) as u64
    );
}

#[tokio::test]
async fn a_flush_interval_of_records_is_one_write() {
    let store = Arc::new(Counting::default());
    let recorder = Recorder::start(
        Some(Telemetry::new(store.clone())),
        RecorderConfig {
            // Nothing is flushed on a timer during the test: only the last
            // flush at shutdown writes, as one flush interval would.
            flush_interval: Duration::from_secs(3600),
            snapshot_interval: Duration::from_secs(3600),
            ..RecorderConfig::default()
        },
    );
    for i in 0..1000 {
        recorder.record(ok(T0 + i, "w", "t"));
    }
    recorder.shutdown().await;
    let updates = store.updates.lock().unwrap();
    assert_eq!(updates.len(), 1, "1000 records, one write");
    let fields: usize = updates[0].iter().map(|u| u.fields.len()).sum();
    assert_eq!(fields, 3 * SERIES_FIELDS + 2 * SPEND_FIELDS);
    let n: f64 = updates[0]
        .iter()
        .filter(|u| u.key.starts_with("tel:"))
        .flat_map(|u| &u.fields)
        .filter(|(f, _)| f.ends_with("\u{1f}n"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(n, 3000.0, "every record counted in each of its 3 series");
}

#[tokio::test]
async fn a_refresh_reads_only_what_can_still_change() {
    let store = Arc::new(Counting::default());
    let t = Telemetry::new(store.clone());
    let last_read = || store.reads.lock().unwrap().last().unwrap().len();
    // History across the window, and a record in the current slot.
    let now = T0 + 65_000;
    let records: Vec<RequestRecord> = (0..7).map(|i| ok(T0 + i * 10_000, "w", "t")).collect();
    t.record(&records).await.unwrap();
    let mut cache = ReadCache::default();
    let first = t.snapshot_cached(now, 120, 7, &mut cache).await.unwrap();
    // 3 series x 13 slots (120 s + the partial current one) + 7 feedback days.
    assert_eq!(last_read(), 3 * 13 + 7);
    assert_eq!(first.workers["w"].requests, 7.0);

    // A second later: the current and previous slot of each series and
    // today's feedback; the closed slots come from the cache, and the
    // snapshot is the one a full read gives.
    t.record(&[ok(now + 1000, "w", "t")]).await.unwrap();
    let second = t
        .snapshot_cached(now + 1000, 120, 7, &mut cache)
        .await
        .unwrap();
    assert_eq!(last_read(), 3 * 2 + 1);
    assert_eq!(second.workers["w"].requests, 8.0);
    assert_eq!(second, t.snapshot(now + 1000, 120, 7).await.unwrap());

    // A late write to a closed slot (as after an outage) is not read by a
    // light refresh, and shows at the next full read, FULL_READ_EVERY_MS
    // after the last.
    t.record(&[ok(T0 + 20_000, "w", "t")]).await.unwrap();
    let light = t
        .snapshot_cached(now + 2000, 120, 7, &mut cache)
        .await
        .unwrap();
    assert_eq!(light.workers["w"].requests, 8.0);
    let full = t
        .snapshot_cached(now + FULL_READ_EVERY_MS, 120, 7, &mut cache)
        .await
        .unwrap();
    assert_eq!(last_read(), 3 * 13 + 7);
    assert_eq!(full.workers["w"].requests, 9.0);
}

/// The Redis store counts the commands it sends, as the metric reports them.
#[tokio::test]
async fn the_redis_store_counts_its_commands() {
    let url = routemesh_tests::shared_redis_url();
    let mesh = format!("aggregation-{}", uuid::Uuid::new_v4().simple());
    let redis = Arc::new(RedisStore::connect(&url, &mesh).await.unwrap());
    let t = Telemetry::new(redis.clone());
    let records: Vec<RequestRecord> = (0..500).map(|i| ok(T0 + i, "w", "t")).collect();
    t.record(&records).await.unwrap();
    assert_eq!(
        (t.commands(), t.round_trips()),
        ((3 * SERIES_COMMANDS + 2 * SPEND_FIELDS + 2 + 2) as u64, 2)
    );
    let s = t.snapshot(T0 + 1000, 60, 1).await.unwrap();
    assert_eq!(s.workers["w"].requests, 500.0);
    routemesh_tests::delete_mesh_keys(&url, &mesh).await;
}
