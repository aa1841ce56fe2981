//! `routemesh up` calls the worker agents of its own process in-process (no
//! socket between its gateway and those workers), while workers elsewhere,
//! static or registered in Redis, are still dialled over the network. The
//! real binary in front of the fake OpenAI-compatible engine: answers,
//! streams, the engine's errors with their mapped codes, failover, a clear
//! error when every worker fails, recovery, and a drain on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use routemesh_proto::v1::generate_stream_event::Event;
use routemesh_proto::v1::{GenerationParams, ListModelsRequest};
use routemesh_tests::fake_openai::{ANSWER_PIECES, FakeOpenAi};
use routemesh_tests::*;
use serde_json::{Value, json};
use tonic::Code;

const INSTANT: &str =
    "{ttft_ms: {median: 1}, tokens_per_second: {median: 0}, output_tokens: {median: 4}}";

/// One `workers:` entry: an agent with the `openai` backend in front of `base_url`.
fn openai_worker(id: &str, base_url: &str, usd_per_mtok: f64) -> String {
    format!(
        "  - id: {id}\n    model: fake-model\n    tier: large\n    input_usd_per_mtok: {usd_per_mtok}\n    output_usd_per_mtok: {usd_per_mtok}\n    registration_ttl: 2s\n    drain_grace: 5s\n    backend:\n      openai:\n        base_url: {base_url}\n        engine_model: served-name\n        timeout: 1s\n"
    )
}

/// How the gateway reaches each worker, by id, from its overview JSON.
async fn transports(admin: &str) -> HashMap<String, String> {
    let overview: Value = reqwest::get(format!("{admin}/v1/overview"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    overview["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["id"].as_str().unwrap().to_string(),
                w["transport"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn port_of(endpoint: &str) -> u16 {
    endpoint.rsplit(':').next().unwrap().parse().unwrap()
}

/// Established TCP connections accepted on `port` (loopback IPv4 and IPv6),
/// from /proc/net: how many callers have a socket open to that server.
fn established_to(port: u16) -> usize {
    let local_port = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        })
        // Fields: sl, local address, remote address, state (01: established).
        .filter(|f| f.len() > 3 && f[1].ends_with(&local_port) && f[3] == "01")
        .count()
}

async fn chat(http: &str, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{http}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn user(prompt: &str) -> Value {
    json!([{"role": "user", "content": prompt}])
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// The JSON payloads of an SSE body, `[DONE]` included as a string.
fn sse_events(body: &str) -> Vec<Value> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap_or_else(|_| Value::String(d.to_string())))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_serves_its_own_openai_worker_in_process_and_dials_a_static_one() {
    let fake = FakeOpenAi::start().await;
    let remote = Process::start(
        "remote-worker",
        "worker",
        &sim_worker_yaml(None, "remote-0", "remote-model", "small", INSTANT),
        &[],
    )
    .unwrap();
    let remote_endpoint = remote.worker_endpoint(0);
    let yaml = format!(
        "{}workers:\n{}static_workers:\n  - {{id: remote-0, model: remote-model, tier: small, endpoint: \"{remote_endpoint}\"}}\n",
        gateway_yaml(None),
        openai_worker("engine-0", &fake.base_url, 1.0),
    );
    let mesh = Process::start("mesh", "up", &yaml, &[]).unwrap();
    let (url, http, admin) = (mesh.gateway_url(), mesh.http_url(), mesh.admin_url());
    wait_for_pool(&url, 2).await;
    assert_eq!(
        transports(&admin).await,
        HashMap::from([
            ("engine-0".to_string(), "in-process".to_string()),
            ("remote-0".to_string(), "network".to_string()),
        ])
    );

    // gRPC, whole and streamed: the engine's answer, and the route and usage
    // name the in-process worker.
    let mut gw = gateway_client(&url).await;
    let mut pinned = ask("hi");
    pinned.model = "fake-model".into();
    let done = gw.generate(pinned.clone()).await.unwrap().into_inner();
    assert_eq!(done.text, ANSWER_PIECES.concat());
    assert_eq!(done.route.unwrap().worker_id, "engine-0");
    let usage = done.usage.unwrap();
    assert_eq!(
        (usage.worker_id.as_str(), usage.completion_tokens),
        ("engine-0", 4)
    );
    assert!(
        (usage.cost_usd - (11.0 + 4.0) / 1e6).abs() < 1e-12,
        "{usage:?}"
    );
    let mut stream = gw
        .generate_stream(pinned.clone())
        .await
        .unwrap()
        .into_inner();
    let (mut route, mut text, mut end) = (None, String::new(), None);
    while let Some(event) = stream.message().await.unwrap() {
        match event.event.unwrap() {
            Event::Route(r) => route = Some(r),
            Event::Delta(d) => text.push_str(&d.text),
            Event::End(e) => end = Some(e),
            Event::ToolCall(c) => panic!("no tools were offered: {c:?}"),
        }
    }
    assert_eq!(route.unwrap().worker_id, "engine-0");
    assert_eq!(text, ANSWER_PIECES.concat());
    assert_eq!(end.unwrap().usage.unwrap().completion_tokens, 4);

    // The OpenAI HTTP API, plain: headers name the worker.
    let response = chat(
        &http,
        json!({"model": "fake-model", "messages": user("hi")}),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-routemesh-worker"), "engine-0");
    assert_eq!(header(&response, "x-routemesh-model"), "fake-model");
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        ANSWER_PIECES.concat()
    );
    assert_eq!(body["usage"]["completion_tokens"], 4);

    // ... and streamed: every delta, usage in the last chunk, then [DONE].
    let response = chat(
        &http,
        json!({"model": "fake-model", "messages": user("hi"), "stream": true,
               "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-routemesh-worker"), "engine-0");
    let mut body = String::new();
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        body.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    let events = sse_events(&body);
    let text: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, ANSWER_PIECES.concat(), "{body}");
    assert_eq!(events.last(), Some(&Value::String("[DONE]".into())));
    assert!(
        events.iter().any(|e| e["usage"]["completion_tokens"] == 4),
        "{body}"
    );

    // The engine's errors keep their mapped codes through the in-process hop,
    // plain and streamed, and say which worker failed and why.
    for (prompt, status, needle) in [
        ("error-400", 400, "max_tokens is too large"),
        ("error-429", 429, "slow down"),
    ] {
        for stream in [false, true] {
            let response = chat(
                &http,
                json!({"model": "fake-model", "messages": user(prompt), "stream": stream}),
            )
            .await;
            assert_eq!(response.status(), status, "{prompt} (stream {stream})");
            let body: Value = response.json().await.unwrap();
            let message = body["error"]["message"].as_str().unwrap();
            assert!(
                message.contains("engine-0") && message.contains(needle),
                "{prompt}: {message}"
            );
        }
    }
    // The engine's own timeout (1 s) is a gateway timeout.
    let response = chat(
        &http,
        json!({"model": "fake-model", "messages": user("slow")}),
    )
    .await;
    assert_eq!(response.status(), 504);
    let status = gw
        .generate({
            let mut r = pinned.clone();
            r.messages[0].content = "error-429".into();
            r
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // The static worker is another process, reached over the network.
    let response = chat(
        &http,
        json!({"model": "remote-model", "messages": user("hi")}),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-routemesh-worker"), "remote-0");

    // No socket to the in-process worker's port, though every call and load
    // check above went to it; the remote worker has the gateway's connection.
    assert_eq!(
        established_to(port_of(&mesh.worker_endpoint(0))),
        0,
        "a connection to the in-process worker's port"
    );
    assert!(established_to(port_of(&remote_endpoint)) >= 1);

    // The in-process worker still serves on its port for other callers.
    let mut direct = worker_client(&mesh.worker_endpoint(0)).await;
    let load = direct
        .load(routemesh_proto::v1::LoadRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (load.worker_id.as_str(), load.backend.as_str()),
        ("engine-0", "openai")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_own_workers_are_in_process_and_other_processes_are_dialled() {
    let redis = shared_redis_url();
    let mesh_name = unique_mesh("in-process");
    let r = Some((redis.as_str(), mesh_name.as_str()));
    let other = Process::start(
        "other-worker",
        "worker",
        &sim_worker_yaml(r, "other-0", "other-model", "small", INSTANT),
        &[],
    )
    .unwrap();
    let own = sim_worker_yaml(None, "own-0", "own-model", "small", INSTANT);
    let mesh = Process::start("mesh", "up", &format!("{}{own}", gateway_yaml(r)), &[]).unwrap();
    let url = mesh.gateway_url();
    wait_for_pool(&url, 2).await;
    assert_eq!(
        transports(&mesh.admin_url()).await,
        HashMap::from([
            ("own-0".to_string(), "in-process".to_string()),
            ("other-0".to_string(), "network".to_string()),
        ])
    );
    let mut gw = gateway_client(&url).await;
    for (model, worker) in [("own-model", "own-0"), ("other-model", "other-0")] {
        let mut request = ask("hi");
        request.model = model.into();
        let done = gw.generate(request).await.unwrap().into_inner();
        assert_eq!(done.usage.unwrap().worker_id, worker);
    }
    assert_eq!(established_to(port_of(&mesh.worker_endpoint(0))), 0);
    assert!(established_to(port_of(&other.worker_endpoint(0))) >= 1);
    drop(mesh);
    delete_mesh_keys(&redis, &mesh_name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_workers_fail_over_then_fail_clearly_then_recover() {
    let (a, b) = (FakeOpenAi::start().await, FakeOpenAi::start().await);
    // a-0 is cheaper, so the router tries it first.
    let yaml = format!(
        "{}workers:\n{}{}",
        gateway_yaml(None),
        openai_worker("a-0", &a.base_url, 1.0),
        openai_worker("b-0", &b.base_url, 10.0),
    );
    let mesh = Process::start("mesh", "up", &yaml, &[]).unwrap();
    let (url, http) = (mesh.gateway_url(), mesh.http_url());
    wait_for_pool(&url, 2).await;
    let served_by =
        |response: &reqwest::Response| header(response, "x-routemesh-worker").to_string();
    let response = chat(
        &http,
        json!({"model": "fake-model", "messages": user("hi")}),
    )
    .await;
    assert_eq!(served_by(&response), "a-0");

    // a-0's engine is down (its agent still answers load checks): every
    // request is served by b-0, after failing over from a-0 at first.
    a.state.failing.store(true, Ordering::Release);
    for stream in [false, true, false, true] {
        let response = chat(
            &http,
            json!({"model": "fake-model", "messages": user("hi"), "stream": stream}),
        )
        .await;
        assert_eq!(response.status(), 200);
        assert_eq!(served_by(&response), "b-0");
    }
    let (_, metrics) = curl_get(&format!("{}/metrics", mesh.admin_url()), &[]);
    let failovers: f64 = metrics
        .lines()
        .find(|l| l.starts_with("routemesh_failovers_total{") && l.contains("fake-model"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(failovers >= 1.0, "{metrics}");

    // Both engines down: a clear 503 naming who failed and why, on both APIs.
    b.state.failing.store(true, Ordering::Release);
    let response = chat(
        &http,
        json!({"model": "fake-model", "messages": user("hi")}),
    )
    .await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap().to_string();
    assert!(
        (message.contains("a-0") || message.contains("b-0")) && message.contains("engine down"),
        "{message}"
    );
    let mut pinned = ask("hi");
    pinned.model = "fake-model".into();
    pinned.params = Some(GenerationParams {
        max_tokens: Some(8),
        ..Default::default()
    });
    let status = gateway_client(&url)
        .await
        .generate(pinned.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    // The engines come back: load checks and the breakers let traffic return.
    a.state.failing.store(false, Ordering::Release);
    b.state.failing.store(false, Ordering::Release);
    eventually(Duration::from_secs(15), "requests served again", || {
        let url = url.clone();
        let request = pinned.clone();
        async move { gateway_client(&url).await.generate(request).await.is_ok() }
    })
    .await;
    let models = gateway_client(&url)
        .await
        .list_models(ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models;
    assert_eq!(models[0].workers.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_process_stream_finish_then_exits() {
    // 20 tokens at 20 tokens/s: the stream lasts about a second.
    let worker = sim_worker_yaml(
        None,
        "w",
        "m",
        "small",
        "{ttft_ms: {median: 1}, tokens_per_second: {median: 20}, output_tokens: {median: 20}}",
    );
    let mut mesh = Process::start(
        "mesh",
        "up",
        &format!("{}{worker}", gateway_yaml(None)),
        &[],
    )
    .unwrap();
    let url = mesh.gateway_url();
    wait_for_pool(&url, 1).await;
    let mut request = ask("a story");
    request.params = Some(GenerationParams {
        max_tokens: Some(20),
        ..Default::default()
    });
    let mut stream = gateway_client(&url)
        .await
        .generate_stream(request)
        .await
        .unwrap()
        .into_inner();
    let mut deltas = 0;
    while deltas == 0 {
        if let Some(Event::Delta(_)) = stream.message().await.unwrap().unwrap().event {
            deltas += 1;
        }
    }
    // SIGTERM while the stream runs; the process waits for it to finish.
    let terminated = tokio::task::spawn_blocking(move || {
        let status = mesh.terminate();
        (mesh, status)
    });
    let mut end = None;
    while let Some(event) = stream.message().await.unwrap() {
        match event.event.unwrap() {
            Event::Delta(_) => deltas += 1,
            Event::End(e) => end = Some(e),
            Event::Route(_) | Event::ToolCall(_) => {}
        }
    }
    let end = end.expect("the stream ended with usage, not cut off");
    assert_eq!(end.usage.unwrap().completion_tokens, deltas);
    assert!(deltas > 1, "{deltas} deltas");
    let (mesh, status) = terminated.await.unwrap();
    let status = status.unwrap();
    assert!(status.success(), "{status:?}\n{}", mesh.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_workers_off_sends_them_through_their_ports() {
    let worker = sim_worker_yaml(None, "w", "m", "small", INSTANT);
    let yaml = format!(
        "{}{worker}",
        gateway_yaml_with(None, "  in_process_workers: false\n")
    );
    let mesh = Process::start("mesh", "up", &yaml, &[]).unwrap();
    wait_for_pool(&mesh.gateway_url(), 1).await;
    assert_eq!(
        transports(&mesh.admin_url()).await,
        HashMap::from([("w".to_string(), "network".to_string())])
    );
    let done = gateway_client(&mesh.gateway_url())
        .await
        .generate(ask("hi"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.usage.unwrap().worker_id, "w");
    assert!(established_to(port_of(&mesh.worker_endpoint(0))) >= 1);
}
