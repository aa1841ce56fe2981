//! `routemesh bench` against a real `routemesh up`: briefly, at a low rate,
//! for every kind of target. Checks behaviour (counts, no errors, ordered
//! quantiles, the JSON shape), never performance: the numbers themselves
//! belong to tests/bench/ and docs/BENCHMARKS.md.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use routemesh_tests::*;
use serde_json::Value;

fn mesh() -> Process {
    let worker = sim_worker_yaml(
        None,
        "fast-0",
        "m",
        "small",
        "{ttft_ms: {median: 0}, tokens_per_second: {median: 0}, output_tokens: {median: 8}}",
    );
    let yaml = format!("{}{}", gateway_yaml(None), worker);
    Process::start("mesh", "up", &yaml, &[]).unwrap()
}

/// Runs `routemesh bench --json` with `args` and returns the parsed report.
fn bench(args: &[&str]) -> Value {
    let out = Command::new(routemesh_bin())
        .arg("bench")
        .args(["--json", "--warmup", "200ms", "--duration", "1s"])
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("routemesh runs");
    assert!(
        out.status.success(),
        "bench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "bench printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn assert_quantiles_ordered(report: &Value, key: &str) {
    let q = &report[key];
    let v = |name: &str| {
        q[name]
            .as_f64()
            .unwrap_or_else(|| panic!("{key}.{name} in {report}"))
    };
    let ordered = [v("min"), v("p50"), v("p90"), v("p99"), v("p99_9"), v("max")];
    assert!(
        ordered.windows(2).all(|w| w[0] <= w[1]),
        "{key} quantiles not ordered: {ordered:?}"
    );
    assert!(v("min") > 0.0, "{key}: latencies are positive");
}

fn assert_clean(report: &Value, expected: u64) {
    let ok = report["ok"].as_u64().unwrap();
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");
    assert_eq!(report["requests"].as_u64(), Some(ok), "{report}");
    // 1 s at 20 req/s: the scheduler sends exactly 20 measured requests.
    assert_eq!(ok, expected, "{report}");
    assert_eq!(report["latency_ms"]["count"].as_u64(), Some(ok), "{report}");
    assert_quantiles_ordered(report, "latency_ms");
    assert_quantiles_ordered(report, "service_time_ms");
    assert!(report["achieved_rate"].as_f64().unwrap() > 0.0, "{report}");
}

#[test]
fn open_loop_reports_every_request_on_each_target() {
    let mesh = mesh();
    let gateway = mesh.gateway_url();
    let worker = mesh.worker_endpoint(0);
    let http = mesh.http_url();

    for (target, url) in [
        ("generate", &gateway),
        ("generate-stream", &gateway),
        ("route", &gateway),
        ("worker-generate", &worker),
        ("worker-generate-stream", &worker),
        ("http", &http),
        ("http-stream", &http),
    ] {
        let report = bench(&["--target", target, "--url", url, "--rate", "20"]);
        assert_eq!(report["target"], target);
        assert_eq!(report["mode"], "open-loop");
        assert_eq!(report["rate"].as_f64(), Some(20.0));
        assert_clean(&report, 20);
        // The generator's own lag is reported in open loop.
        assert_quantiles_ordered(&report, "send_lag_ms");
        if target.ends_with("stream") {
            assert_quantiles_ordered(&report, "ttft_ms");
            assert_eq!(report["ttft_ms"]["count"].as_u64(), Some(20), "{report}");
            // Every stream carried at least one text delta.
            assert!(report["deltas"].as_u64().unwrap() >= 20, "{report}");
        } else {
            assert!(report["ttft_ms"].is_null(), "{report}");
            assert_eq!(report["deltas"].as_u64(), Some(0), "{report}");
        }
        if target.starts_with("worker") {
            // Asked the worker for its model.
            assert_eq!(report["model"], "m", "{report}");
        }
    }
}

#[test]
fn closed_loop_and_errors_by_status() {
    let mesh = mesh();
    let gateway = mesh.gateway_url();

    let report = bench(&["--url", &gateway, "--concurrency", "2"]);
    assert_eq!(report["mode"], "closed-loop");
    assert_eq!(report["concurrency"].as_u64(), Some(2));
    assert!(report["send_lag_ms"].is_null(), "{report}");
    let ok = report["ok"].as_u64().unwrap();
    assert!(ok > 0, "{report}");
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");
    assert_quantiles_ordered(&report, "latency_ms");

    // A model the pool does not have: every request fails, counted by status.
    let report = bench(&["--url", &gateway, "--rate", "10", "--model", "nope"]);
    assert_eq!(report["ok"].as_u64(), Some(0), "{report}");
    assert_eq!(
        report["errors"]["grpc NOT_FOUND"].as_u64(),
        Some(10),
        "{report}"
    );
    assert!(report["latency_ms"].is_null(), "{report}");

    // The same on the HTTP API.
    let report = bench(&[
        "--target",
        "http",
        "--url",
        &mesh.http_url(),
        "--rate",
        "10",
        "--model",
        "nope",
    ]);
    assert_eq!(report["errors"]["http 404"].as_u64(), Some(10), "{report}");
}

#[test]
fn prompts_come_from_a_file_on_gateway_targets_only() {
    let mesh = mesh();
    let gateway = mesh.gateway_url();
    // Prompts cycled from a data file (JSONL with a `prompt` field, or plain lines).
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts.jsonl");
    std::fs::write(
        &prompts,
        "{\"id\": \"a\", \"prompt\": \"What is 2+2?\"}\nName a prime number.\n",
    )
    .unwrap();
    let prompts = prompts.to_str().unwrap();
    let report = bench(&[
        "--target",
        "route",
        "--url",
        &gateway,
        "--rate",
        "20",
        "--prompts",
        prompts,
        "--unique-prompts",
    ]);
    assert_clean(&report, 20);
    // Only gateway targets take them.
    let out = Command::new(routemesh_bin())
        .args(["bench", "--target", "worker-generate", "--rate", "5"])
        .args(["--url", &mesh.worker_endpoint(0), "--prompts", prompts])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--prompts is for gateway targets"),
        "{stderr}"
    );
}

#[test]
fn bad_arguments_are_refused_with_a_reason() {
    let out = Command::new(routemesh_bin())
        .args(["bench", "--url", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--rate") && stderr.contains("--concurrency"),
        "{stderr}"
    );
}
