//! Redis stopped and restarted under traffic: no client request fails because
//! of it. Routing goes on from the last known pool and local telemetry, and
//! converges on the shared view again once Redis is back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use routemesh_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_keep_flowing_while_redis_is_down() {
    let redis = OwnRedis::start().unwrap();
    let (url, port) = (redis.url(), redis.port);
    let r = Some((url.as_str(), "outage"));
    let fast =
        "{ttft_ms: {median: 2}, tokens_per_second: {median: 2000}, output_tokens: {median: 8}}";
    let _worker = Process::start(
        "worker",
        "worker",
        &sim_worker_yaml(r, "w-0", "m", "small", fast),
        &[],
    )
    .unwrap();
    let gateway = Process::start("gateway", "gateway", &gateway_yaml(r), &[]).unwrap();
    let gw = gateway.gateway_url();

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(std::sync::Mutex::new(Vec::<String>::new())),
    );
    let traffic: Vec<_> = (0..3)
        .map(|_| {
            let (gw, stop, ok, failed) = (gw.clone(), stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                let mut client = gateway_client(&gw).await;
                while !stop.load(Ordering::Relaxed) {
                    match client.generate(ask("hello")).await {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(s) => {
                            failed
                                .lock()
                                .unwrap()
                                .push(format!("{:?}: {}", s.code(), s.message()));
                            0
                        }
                    };
                }
            })
        })
        .collect();
    let source = |gw: String| async move {
        let d = gateway_client(&gw)
            .await
            .route(ask("hi"))
            .await
            .unwrap()
            .into_inner();
        (
            d.telemetry_source,
            d.candidates.first().map_or(0.0, |c| c.observed_requests),
        )
    };

    eventually(
        Duration::from_secs(10),
        "traffic with shared telemetry",
        || {
            let (gw, ok) = (gw.clone(), ok.clone());
            async move { ok.load(Ordering::Relaxed) > 50 && source(gw).await.0 == "shared" }
        },
    )
    .await;

    drop(redis);
    let at_outage = ok.load(Ordering::Relaxed);
    eventually(Duration::from_secs(10), "routing on local telemetry while Redis is down", || {
        let (gw, ok) = (gw.clone(), ok.clone());
        async move { ok.load(Ordering::Relaxed) > at_outage + 100 && source(gw).await.0 == "local" }
    })
    .await;

    // Redis comes back empty; registrations and telemetry converge again.
    let _redis = OwnRedis::start_on(port).unwrap();
    eventually(
        Duration::from_secs(20),
        "the shared view again, with the outage's records",
        || {
            let gw = gw.clone();
            async move {
                let (src, observed) = source(gw).await;
                src == "shared" && observed > 0.0
            }
        },
    )
    .await;
    let at_return = ok.load(Ordering::Relaxed);
    eventually(
        Duration::from_secs(10),
        "traffic after Redis returned",
        || {
            let ok = ok.clone();
            async move { ok.load(Ordering::Relaxed) > at_return + 50 }
        },
    )
    .await;

    stop.store(true, Ordering::Relaxed);
    for t in traffic {
        t.await.unwrap();
    }
    let failed = failed.lock().unwrap();
    eprintln!(
        "| Redis stopped and restarted under traffic (3 clients) | {} | {} | 0 | {} | 0 |",
        ok.load(Ordering::Relaxed) + failed.len() as u64,
        ok.load(Ordering::Relaxed),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} requests failed because of Redis: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
}
