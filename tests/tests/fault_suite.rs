//! The fault-injection suite: real processes on loopback, bounded in time.
//! Each scenario reports requests sent, succeeded, failed with the expected
//! status, failed otherwise, and lost (no answer within a generous bound),
//! and asserts that none is lost and every failure carries the right status.
//! Run with `--nocapture` to see the table (docs/RELIABILITY.md keeps one).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use routemesh_proto::v1::{GenerateRequest, GenerationParams};
use routemesh_tests::*;
use tonic::Code;

const FAST: &str =
    "{ttft_ms: {median: 2}, tokens_per_second: {median: 2000}, output_tokens: {median: 8}}";
/// A request without an answer after this long counts as lost.
const LOST_AFTER: Duration = Duration::from_secs(15);

#[derive(Debug, Default)]
struct Tally {
    sent: u64,
    ok: u64,
    failed_right: u64,
    failed_wrong: Vec<String>,
    lost: u64,
}

impl Tally {
    fn report(&self, scenario: &str) {
        eprintln!(
            "| {scenario} | {} | {} | {} | {} | {} |",
            self.sent,
            self.ok,
            self.failed_right,
            self.failed_wrong.len(),
            self.lost
        );
        assert_eq!(self.lost, 0, "{scenario}: requests lost");
        assert!(
            self.failed_wrong.is_empty(),
            "{scenario}: wrong statuses: {:?}",
            &self.failed_wrong[..self.failed_wrong.len().min(5)]
        );
        assert!(self.sent > 0 && self.ok > 0, "{scenario}: {self:?}");
    }
}

/// Runs `clients` loops of unary requests for `duration`, judging failures by `expected`.
async fn load(
    url: &str,
    clients: usize,
    duration: Duration,
    request: GenerateRequest,
    expected: &'static [Code],
) -> Tally {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop_at = Instant::now() + duration;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (url, tally, request) = (url.to_string(), tally.clone(), request.clone());
            tokio::spawn(async move {
                let mut client = gateway_client(&url).await;
                while Instant::now() < stop_at {
                    let result =
                        tokio::time::timeout(LOST_AFTER, client.generate(request.clone())).await;
                    let mut t = tally.lock().unwrap();
                    t.sent += 1;
                    match result {
                        Err(_) => t.lost += 1,
                        Ok(Ok(_)) => t.ok += 1,
                        Ok(Err(s)) if expected.contains(&s.code()) => t.failed_right += 1,
                        Ok(Err(s)) => {
                            t.failed_wrong
                                .push(format!("{:?}: {}", s.code(), s.message()))
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    Arc::try_unwrap(tally).unwrap().into_inner().unwrap()
}

fn with_deadline(mut request: GenerateRequest) -> tonic::Request<GenerateRequest> {
    request.params = Some(GenerationParams {
        max_tokens: Some(8),
        ..Default::default()
    });
    let mut r = tonic::Request::new(request);
    r.set_timeout(Duration::from_secs(1));
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_a_worker_under_load() {
    let redis = shared_redis_url();
    let mesh = unique_mesh("fault-kill");
    let r = Some((redis.as_str(), mesh.as_str()));
    let mut doomed = Process::start(
        "doomed",
        "worker",
        &sim_worker_yaml(r, "a-doomed", "m", "small", FAST),
        &[],
    )
    .unwrap();
    let _survivor = Process::start(
        "survivor",
        "worker",
        &sim_worker_yaml(r, "b-survivor", "m", "small", FAST),
        &[],
    )
    .unwrap();
    let gateway = Process::start("gateway", "gateway", &gateway_yaml(r), &[]).unwrap();
    let url = gateway.gateway_url();
    wait_for_pool(&url, 2).await;
    let killer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        doomed.kill();
    });
    let tally = load(
        &url,
        4,
        Duration::from_secs(3),
        ask("hello"),
        &[Code::Unavailable],
    )
    .await;
    killer.await.unwrap();
    tally.report("kill -9 one of two workers under load");
    delete_mesh_keys(&redis, &mesh).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_accepts_and_never_answers() {
    let blackhole = sim_worker_yaml(None, "a-blackhole", "m", "small", "{stall_rate: 1.0}");
    let healthy =
        sim_worker_yaml(None, "b-healthy", "m", "small", FAST).replacen("workers:\n", "", 1);
    let mesh = Process::start(
        "mesh",
        "up",
        &format!("{}{blackhole}{healthy}", gateway_yaml(None)),
        &[],
    )
    .unwrap();
    let url = mesh.gateway_url();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut client = gateway_client(&url).await;
    let stop_at = Instant::now() + Duration::from_secs(6);
    while Instant::now() < stop_at {
        let result =
            tokio::time::timeout(LOST_AFTER, client.generate(with_deadline(ask("hello")))).await;
        let mut t = tally.lock().unwrap();
        t.sent += 1;
        match result {
            Err(_) => t.lost += 1,
            Ok(Ok(_)) => t.ok += 1,
            // The client's 1 s deadline ends requests stuck at the black hole.
            Ok(Err(s)) if matches!(s.code(), Code::DeadlineExceeded | Code::Cancelled) => {
                t.failed_right += 1
            }
            Ok(Err(s)) => t
                .failed_wrong
                .push(format!("{:?}: {}", s.code(), s.message())),
        }
    }
    let tally = Arc::try_unwrap(tally).unwrap().into_inner().unwrap();
    tally.report("a worker that accepts and never answers (client deadline 1 s)");
    // Timeouts raise the black hole's observed error rate: most traffic moves away.
    assert!(tally.ok > tally.failed_right, "{tally:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_at_five_times_capacity() {
    // Capacity: 2 slots + 2 queued at the worker, 8 at the gateway; 40 at once.
    let worker = sim_worker_yaml(
        None,
        "w",
        "m",
        "small",
        "{ttft_ms: {median: 50}, tokens_per_second: {median: 200}, output_tokens: {median: 8}}",
    )
    .replace(
        "    registration_ttl",
        "    capacity: 2\n    max_queue: 2\n    registration_ttl",
    );
    let mesh = Process::start(
        "mesh",
        "up",
        &format!(
            "{}{worker}",
            gateway_yaml_with(None, "  max_concurrent_requests: 8\n")
        ),
        &[],
    )
    .unwrap();
    let tally = load(
        &mesh.gateway_url(),
        40,
        Duration::from_secs(2),
        ask("hello"),
        &[Code::ResourceExhausted],
    )
    .await;
    tally.report("a burst at 5x capacity (40 clients, 2 slots + 2 queued)");
    assert!(
        tally.failed_right > 0,
        "the excess is refused, not queued: {tally:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_disconnect_mid_stream() {
    let worker = sim_worker_yaml(
        None,
        "w",
        "m",
        "small",
        "{ttft_ms: {median: 2}, tokens_per_second: {median: 50}, output_tokens: {median: 200}}",
    );
    let mesh = Process::start(
        "mesh",
        "up",
        &format!("{}{worker}", gateway_yaml(None)),
        &[],
    )
    .unwrap();
    let url = mesh.gateway_url();
    let mut tally = Tally::default();
    for _ in 0..10 {
        let mut client = gateway_client(&url).await;
        let mut stream = client
            .generate_stream(ask("a long story"))
            .await
            .unwrap()
            .into_inner();
        stream.message().await.unwrap();
        stream.message().await.unwrap();
        drop(stream); // the client goes away mid-stream
        tally.sent += 1;
        tally.failed_right += 1;
    }
    // Nothing leaks: the worker's slots free up and new requests are served.
    eventually(Duration::from_secs(10), "no request left in flight", || {
        let url = url.clone();
        async move {
            let models = gateway_client(&url)
                .await
                .list_models(routemesh_proto::v1::ListModelsRequest {})
                .await
                .unwrap()
                .into_inner()
                .models;
            models.iter().flat_map(|m| &m.workers).all(|w| {
                w.gateway_in_flight == 0 && w.load.as_ref().is_some_and(|l| l.in_flight == 0)
            })
        }
    })
    .await;
    let mut client = gateway_client(&url).await;
    let mut short = ask("short");
    short.params = Some(GenerationParams {
        max_tokens: Some(4),
        ..Default::default()
    });
    for _ in 0..5 {
        client.generate(short.clone()).await.unwrap();
        tally.sent += 1;
        tally.ok += 1;
    }
    tally.report("10 clients disconnecting mid-stream, then 5 requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_and_missing_keys() {
    // sha256("sk-good")
    let digest = "4c3fe847ba5369a26bb663f9713c893e7e9407c376d5e33038740063b5a09125";
    let keys = format!("  auth:\n    keys:\n      - tenant: acme\n        sha256: {digest}\n");
    let worker = sim_worker_yaml(None, "w", "m", "small", FAST);
    let mesh = Process::start(
        "mesh",
        "up",
        &format!("{}{worker}", gateway_yaml_with(None, &keys)),
        &[],
    )
    .unwrap();
    let mut client = gateway_client(&mesh.gateway_url()).await;
    let mut tally = Tally::default();
    for key in [None, Some("sk-bad"), Some(""), Some("sk-good-but-longer")] {
        let mut request = tonic::Request::new(ask("hi"));
        if let Some(k) = key {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {k}").parse().unwrap());
        }
        tally.sent += 1;
        match client.generate(request).await {
            Err(s) if s.code() == Code::Unauthenticated => tally.failed_right += 1,
            other => tally.failed_wrong.push(format!("{key:?}: {other:?}")),
        }
    }
    let mut request = tonic::Request::new(ask("hi"));
    request
        .metadata_mut()
        .insert("authorization", "Bearer sk-good".parse().unwrap());
    tally.sent += 1;
    match client.generate(request).await {
        Ok(_) => tally.ok += 1,
        Err(s) => tally.failed_wrong.push(format!("good key refused: {s:?}")),
    }
    tally.report("missing, invalid and wrong API keys, then the right one");
}

/// A request for the gateway at `url` with `key`.
fn with_key(key: &str) -> tonic::Request<GenerateRequest> {
    let mut request = tonic::Request::new(ask("hi"));
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_that_expire_and_are_revoked_under_traffic() {
    let redis = shared_redis_url();
    let mesh_name = unique_mesh("keys");
    let yaml = format!(
        "{}{}",
        gateway_yaml_with(
            Some((&redis, &mesh_name)),
            "  auth: {redis: true, cache_ttl: 300ms}\n"
        ),
        sim_worker_yaml(Some((&redis, &mesh_name)), "w", "m", "small", FAST)
            .split_once("workers:")
            .map(|(_, w)| format!("workers:{w}"))
            .unwrap(),
    );
    let add = |extra: &[&str]| {
        let mut args = vec!["keys", "add", "--tenant", "acme", "--json"];
        args.extend_from_slice(extra);
        let out = run_cli(&args, &yaml);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let revoked = add(&[]);
    let mesh = Process::start("mesh", "up", &yaml, &[]).unwrap();
    wait_for_pool_with_key(&mesh.gateway_url(), revoked["key"].as_str().unwrap()).await;
    // Made once the mesh serves, so its 2 s of life are all under traffic.
    let expiring = add(&["--expires-in", "2s"]);
    let expires_ms = expiring["expires_ms"].as_u64().unwrap();
    let key = expiring["key"].as_str().unwrap().to_string();

    // Three clients use the expiring key until a second past its expiry:
    // before it every request is served; after it every one is refused with
    // UNAUTHENTICATED naming the expiry.
    let mut tally = Tally::default();
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let (url, key) = (mesh.gateway_url(), key.clone());
            tokio::spawn(async move {
                let mut client = gateway_client(&url).await;
                let mut seen = Vec::new();
                loop {
                    let sent_ms = routemesh_now_ms();
                    if sent_ms > expires_ms + 1000 {
                        return seen;
                    }
                    let result =
                        tokio::time::timeout(LOST_AFTER, client.generate(with_key(&key))).await;
                    seen.push((sent_ms, routemesh_now_ms(), result.map(|r| r.map(|_| ()))));
                }
            })
        })
        .collect();
    for task in tasks {
        for (sent_ms, done_ms, result) in task.await.unwrap() {
            tally.sent += 1;
            match result {
                Err(_) => tally.lost += 1,
                Ok(Ok(())) if sent_ms < expires_ms => tally.ok += 1,
                Ok(Err(s))
                    if s.code() == Code::Unauthenticated
                        && s.message().contains("expired")
                        && done_ms >= expires_ms =>
                {
                    tally.failed_right += 1
                }
                other => tally
                    .failed_wrong
                    .push(format!("sent {sent_ms} (expiry {expires_ms}): {other:?}")),
            }
        }
    }
    assert!(
        tally.ok > 0 && tally.failed_right > 0,
        "served before expiry and refused after: {tally:?}"
    );

    // A revoked key stops working within the cache TTL.
    let mut client = gateway_client(&mesh.gateway_url()).await;
    let revoked_key = revoked["key"].as_str().unwrap();
    client.generate(with_key(revoked_key)).await.unwrap();
    tally.sent += 1;
    tally.ok += 1;
    let out = run_cli(
        &["keys", "revoke", &revoked["sha256"].as_str().unwrap()[..12]],
        &yaml,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let revoked_at = Instant::now();
    loop {
        tally.sent += 1;
        match client.generate(with_key(revoked_key)).await {
            Ok(_) => tally.ok += 1,
            Err(s) if s.code() == Code::Unauthenticated && s.message() == "invalid API key" => {
                tally.failed_right += 1;
                break;
            }
            Err(s) => tally.failed_wrong.push(format!("revoked: {s:?}")),
        }
        assert!(
            revoked_at.elapsed() < Duration::from_millis(1500),
            "revocation not seen within the 300 ms cache TTL"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // `keys list` shows what is left: the expired key, marked so.
    let out = run_cli(&["keys", "list"], &yaml);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("(expired)") && listed.lines().count() == 2,
        "{listed}"
    );
    delete_mesh_keys(&redis, &mesh_name).await;
    tally.report("keys expiring and revoked under traffic (3 clients; cache TTL 300 ms)");
}

fn routemesh_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Waits until the gateway at `url` serves a request made with `key`.
async fn wait_for_pool_with_key(url: &str, key: &str) {
    let (url, key) = (url.to_string(), key.to_string());
    eventually(Duration::from_secs(10), "the pool serves", || {
        let (url, key) = (url.clone(), key.clone());
        async move {
            gateway_client(&url)
                .await
                .generate(with_key(&key))
                .await
                .is_ok()
        }
    })
    .await;
}

/// Redis restarts (losing everything: no persistence) while the gateway
/// serves: a key added afterwards works on its first request, not after
/// one UNAVAILABLE per gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_key_lookup_after_a_redis_restart_is_served() {
    let redis = OwnRedis::start().unwrap();
    let (url, port) = (redis.url(), redis.port);
    let mesh_name = unique_mesh("keys-restart");
    let yaml = format!(
        "{}{}",
        gateway_yaml_with(Some((&url, &mesh_name)), "  auth: {redis: true}\n"),
        sim_worker_yaml(Some((&url, &mesh_name)), "w", "m", "small", FAST)
            .split_once("workers:")
            .map(|(_, w)| format!("workers:{w}"))
            .unwrap(),
    );
    let add = || {
        let out = run_cli(&["keys", "add", "--tenant", "acme", "--json"], &yaml);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["key"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let before = add();
    let mesh = Process::start("mesh", "up", &yaml, &[]).unwrap();
    wait_for_pool_with_key(&mesh.gateway_url(), &before).await;

    drop(redis);
    let _redis = OwnRedis::start_on(port).unwrap();
    let after = add();
    // The worker re-announces itself on its next heartbeat, so the request
    // may still find no worker; what must not happen is a refusal of the key.
    let mut client = gateway_client(&mesh.gateway_url()).await;
    let first = client.generate(with_key(&after)).await;
    assert!(
        !matches!(&first, Err(s) if s.code() == tonic::Code::Unavailable && s.message().contains("key store")),
        "the first lookup after the restart: {first:?}"
    );
    assert!(
        !matches!(&first, Err(s) if s.code() == tonic::Code::Unauthenticated),
        "{first:?}"
    );
}

/// A worker frozen mid-request (SIGSTOP: its connection stays open, it
/// answers nothing): the client gets DEADLINE_EXCEEDED from the gateway,
/// whether the deadline is its own or the gateway's `request_timeout`, not
/// tonic's CANCELLED "Timeout expired".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_workers_requests_end_with_deadline_exceeded() {
    let (worker, gw) = gateway_with_one_worker(
        QUICK_SIM,
        &gateway_yaml_with(None, "  max_attempts: 1\n")
            .replace("request_timeout: 20s", "request_timeout: 1500ms")
            // No load check notices the freeze first.
            .replace("load_interval: 100ms", "load_interval: 60s"),
    );
    let mut client = gateway_client(&gw.gateway_url()).await;
    eventually(Duration::from_secs(10), "the gateway serves", || {
        let mut c = client.clone();
        async move { c.generate(ask("hi")).await.is_ok() }
    })
    .await;
    let stopped = std::process::Command::new("kill")
        .args(["-STOP", &worker.pid().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let stat = format!("/proc/{}/stat", worker.pid());
    eventually(Duration::from_secs(5), "the worker is stopped", || {
        let stat = stat.clone();
        async move {
            // The state follows the command name in parentheses: T = stopped.
            std::fs::read_to_string(&stat)
                .ok()
                .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('T')))
                .unwrap_or(false)
        }
    })
    .await;

    let mut with_deadline = tonic::Request::new(ask("hi"));
    with_deadline.set_timeout(Duration::from_millis(800));
    let own = client.generate(with_deadline).await.unwrap_err();
    let gateways = client.generate(ask("hi")).await.unwrap_err();
    let _ = std::process::Command::new("kill")
        .args(["-CONT", &worker.pid().to_string()])
        .status();
    for status in [own, gateways] {
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        assert!(status.message().contains("deadline"), "{status:?}");
    }
}

/// Open-loop traffic at `rate` requests per second for `duration`; each
/// request's outcome (`Ok(())`, or its status, or "lost").
async fn open_loop(url: &str, rate: u64, duration: Duration, request: GenerateRequest) -> Tally {
    let client = gateway_client(url).await;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let stop_at = Instant::now() + duration;
    let mut calls = Vec::new();
    while Instant::now() < stop_at {
        tick.tick().await;
        let (mut client, tally, request) = (client.clone(), tally.clone(), request.clone());
        calls.push(tokio::spawn(async move {
            let result = tokio::time::timeout(LOST_AFTER, client.generate(request)).await;
            let mut t = tally.lock().unwrap();
            t.sent += 1;
            match result {
                Err(_) => t.lost += 1,
                Ok(Ok(_)) => t.ok += 1,
                Ok(Err(s)) => t
                    .failed_wrong
                    .push(format!("{:?}: {}", s.code(), s.message())),
            }
        }));
    }
    for call in calls {
        call.await.unwrap();
    }
    Arc::try_unwrap(tally).unwrap().into_inner().unwrap()
}

/// kill -9 of one of two workers under 200 req/s (KILL_RATE overrides: the
/// reliability table's 1,000 req/s run uses the release binary) of open-loop unary
/// traffic, each answer taking ~150 ms (so ~15 are in flight at the worker
/// killed): every request that was in flight there, and every one routed
/// there before the gateway noticed, fails over to the survivor. No client
/// sees an error (before the failovers of unreachable workers had their own
/// budget, a burst of 10 ran out and 28 were lost in the run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_200_requests_per_second_loses_nothing() {
    let redis = shared_redis_url();
    let mesh = unique_mesh("fault-kill-rate");
    let r = Some((redis.as_str(), mesh.as_str()));
    let slow = "{ttft_ms: {median: 50}, tokens_per_second: {median: 200}, output_tokens: {median: 20}, seed: 1}";
    let mut doomed = Process::start(
        "doomed",
        "worker",
        &format!(
            "{}    capacity: 256\n",
            sim_worker_yaml(r, "a-doomed", "m", "small", slow)
        ),
        &[],
    )
    .unwrap();
    let _survivor = Process::start(
        "survivor",
        "worker",
        &format!(
            "{}    capacity: 256\n",
            sim_worker_yaml(r, "b-survivor", "m", "small", slow)
        ),
        &[],
    )
    .unwrap();
    let gateway = Process::start("gateway", "gateway", &gateway_yaml(r), &[]).unwrap();
    let url = gateway.gateway_url();
    wait_for_pool(&url, 2).await;
    let killer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        doomed.kill();
    });
    let rate = std::env::var("KILL_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(200);
    let tally = open_loop(&url, rate, Duration::from_secs(3), ask("hello")).await;
    killer.await.unwrap();
    tally.report(&format!(
        "kill -9 one of two workers at {rate} req/s (open loop)"
    ));
    delete_mesh_keys(&redis, &mesh).await;
}
