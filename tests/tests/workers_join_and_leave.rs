//! Workers join and leave a Redis-registered mesh while requests flow: no
//! request fails, newcomers take traffic, a killed worker fails fast.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use routemesh_proto::v1::ListModelsRequest;
use routemesh_tests::*;
use tokio::sync::Mutex;
use tonic::Code;

const FAST: &str =
    "{ttft_ms: {median: 2}, tokens_per_second: {median: 1000}, output_tokens: {median: 8}}";

#[derive(Default)]
struct Tally {
    ok_by_worker: HashMap<String, u32>,
    failures: Vec<String>,
}

/// Sends requests back to back from `clients` tasks until `stop`.
fn traffic(
    url: String,
    clients: usize,
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|_| {
            let (url, stop, tally) = (url.clone(), stop.clone(), tally.clone());
            tokio::spawn(async move {
                let mut client = gateway_client(&url).await;
                while !stop.load(Ordering::Relaxed) {
                    let result = client.generate(ask("Say something short.")).await;
                    let mut t = tally.lock().await;
                    match result {
                        Ok(r) => {
                            *t.ok_by_worker
                                .entry(r.into_inner().usage.unwrap().worker_id)
                                .or_default() += 1
                        }
                        Err(s) => t.failures.push(format!("{:?}: {}", s.code(), s.message())),
                    }
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_and_draining_workers_lose_no_request() {
    let redis = shared_redis_url();
    let mesh = unique_mesh("joinleave");
    let r = Some((redis.as_str(), mesh.as_str()));
    let mut first = Process::start(
        "first",
        "worker",
        &sim_worker_yaml(r, "first", "m", "small", FAST),
        &[],
    )
    .unwrap();
    let gateway = Process::start("gateway", "gateway", &gateway_yaml(r), &[]).unwrap();
    let url = gateway.gateway_url();

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let tasks = traffic(url.clone(), 4, stop.clone(), tally.clone());

    // A second worker joins under traffic and starts taking requests.
    let second = Process::start(
        "second",
        "worker",
        &sim_worker_yaml(r, "second", "m", "small", FAST),
        &[],
    )
    .unwrap();
    eventually(
        Duration::from_secs(10),
        "the new worker serves requests",
        || {
            let tally = tally.clone();
            async move {
                tally
                    .lock()
                    .await
                    .ok_by_worker
                    .get("second")
                    .copied()
                    .unwrap_or(0)
                    >= 5
            }
        },
    )
    .await;

    // The first worker drains (SIGTERM) under traffic: it withdraws, finishes
    // what it has, and the gateway moves everything to the second.
    let status = first.terminate().unwrap();
    assert!(status.success(), "worker exit status {status}");
    let served_by_second = tally
        .lock()
        .await
        .ok_by_worker
        .get("second")
        .copied()
        .unwrap_or(0);
    eventually(
        Duration::from_secs(10),
        "traffic continues on the remaining worker",
        || {
            let tally = tally.clone();
            async move {
                tally
                    .lock()
                    .await
                    .ok_by_worker
                    .get("second")
                    .copied()
                    .unwrap_or(0)
                    >= served_by_second + 20
            }
        },
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "the drained worker leaves the pool",
        || {
            let url = url.clone();
            async move {
                let mut c = gateway_client(&url).await;
                let models = c
                    .list_models(ListModelsRequest {})
                    .await
                    .unwrap()
                    .into_inner()
                    .models;
                models
                    .iter()
                    .all(|m| m.workers.iter().all(|w| w.id != "first"))
            }
        },
    )
    .await;

    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let t = tally.lock().await;
    assert!(
        t.failures.is_empty(),
        "requests failed while workers joined and left: {:?}",
        t.failures
    );
    assert!(t.ok_by_worker.get("first").copied().unwrap_or(0) > 0);
    drop(second);
    delete_mesh_keys(&redis, &mesh).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_request_fails_the_request_promptly() {
    let redis = shared_redis_url();
    let mesh = unique_mesh("kill9");
    let r = Some((redis.as_str(), mesh.as_str()));
    // A worker whose engine stalls before the first token: requests hang there.
    let mut worker = Process::start(
        "stalling",
        "worker",
        &sim_worker_yaml(r, "stalling", "m", "small", "{stall_rate: 1.0}"),
        &[],
    )
    .unwrap();
    let gateway = Process::start("gateway", "gateway", &gateway_yaml(r), &[]).unwrap();
    let url = gateway.gateway_url();

    let mut unary_client = gateway_client(&url).await;
    let mut stream_client = gateway_client(&url).await;
    let unary = tokio::spawn(async move { unary_client.generate(ask("hello")).await.map(|_| ()) });
    let stream = tokio::spawn(async move {
        stream_client
            .generate_stream(ask("hello"))
            .await
            .map(|_| ())
    });
    wait_for_in_flight(&url, 2).await;

    let killed_at = Instant::now();
    worker.kill();
    for (name, handle) in [("unary", unary), ("stream", stream)] {
        let status = tokio::time::timeout(Duration::from_secs(10), handle)
            .await
            .expect("no hang")
            .unwrap()
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{name}: {status:?}");
        assert!(
            status.message().contains("stalling"),
            "{name}: the error names the worker: {}",
            status.message()
        );
    }
    assert!(killed_at.elapsed() < Duration::from_secs(10));

    // With no worker left, new requests are refused as UNAVAILABLE, not hung.
    let mut client = gateway_client(&url).await;
    eventually(
        Duration::from_secs(10),
        "new requests get UNAVAILABLE",
        || {
            let mut client = client.clone();
            async move {
                client
                    .generate(ask("anyone?"))
                    .await
                    .is_err_and(|s| s.code() == Code::Unavailable)
            }
        },
    )
    .await;
    let status = client.generate(ask("anyone?")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // The operator can tell why the worker left the routing.
    let log = gateway.log();
    assert!(
        log.contains("worker marked unhealthy") && log.contains("stalling"),
        "the health transition is logged with the worker: {log}"
    );
    delete_mesh_keys(&redis, &mesh).await;
}
