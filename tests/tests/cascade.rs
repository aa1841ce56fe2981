//! Cascades through the real binary: the cheap model answers first, the
//! verifier judges the answer, and a weak one is escalated to the strong
//! model. The workers are sim workers replaying a small dataset written here
//! (so each model's answer is known), plus a rogue worker for failover.
//! Accept and escalate are scripted through `unverifiable` (a sim engine
//! gives no log-probabilities, so the confidence verifier cannot judge) and
//! through thresholds of 0 and 1 for the learned verifier.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use routemesh_proto::v1::generate_stream_event::Event;
use routemesh_proto::v1::{GenerateRequest, GenerateResponse, GenerationParams, RoutingHints};
use routemesh_tests::rogue_worker::RogueWorker;
use routemesh_tests::*;
use tonic::Code;

const EGGS: &str = "Tom buys 3 boxes of 12 eggs and breaks 5. How many eggs are left?";
const CHEAP_EGGS: &str = "3 boxes of 12 eggs is 3 * 12 = <<3*12=36>>36 eggs. 36 - 5 = <<36-5=31>>31 eggs are left.\n#### 31";
const STRONG_EGGS: &str =
    "He has 3 * 12 = 36 eggs and breaks 5, so 36 - 5 = 31 eggs are left.\n\n#### 31";
const SHIRT: &str = "A shirt costs $20 and is discounted by 25%. A hat costs $8. What do both cost after the discount on the shirt?";
const CHEAP_SHIRT: &str =
    "The discount is 20 * 0.25 = <<20*0.25=4>>7, so the shirt costs 20 - 7 = <<20-7=1";
const STRONG_SHIRT: &str =
    "The shirt costs 20 - 25% of 20 = 20 - 5 = 15 dollars. With the hat: 15 + 8 = 23.\n\n#### 23";
const REFUSE: &str = "refuse: how many legs do 4 spiders have?";
const CHEAP_REFUSE: &str = "4 * 8 = <<4*8=32>>32\n#### 32";
const STRONG_REFUSE: &str = "Each spider has 8 legs, so 4 spiders have 32 legs.\n\n#### 32";

/// The replayed dataset: each prompt with the cheap and the strong model's answer.
fn fixture(dir: &Path) -> PathBuf {
    let path = dir.join("cascade.jsonl");
    let rows: Vec<String> = [
        ("eggs", EGGS, CHEAP_EGGS, STRONG_EGGS),
        ("shirt", SHIRT, CHEAP_SHIRT, STRONG_SHIRT),
        ("refuse", REFUSE, CHEAP_REFUSE, STRONG_REFUSE),
    ]
    .iter()
    .map(|(id, prompt, cheap, strong)| {
        serde_json::json!({
            "id": id, "source": "test", "prompt": prompt,
            "scores": {"cheap": 1.0, "strong": 1.0},
            "responses": {"cheap": cheap, "strong": strong},
        })
        .to_string()
    })
    .collect();
    std::fs::write(&path, rows.join("\n")).unwrap();
    path
}

struct Mesh {
    process: Process,
    _dir: tempfile::TempDir,
}

/// `routemesh up` with a cheap and a strong sim worker replaying the
/// fixture, `strategy: cascade` with `cascade` (YAML flow mapping), and
/// `more` appended (e.g. static workers).
fn mesh(cascade: &str, strong_ttft_ms: u32, more: &str) -> Mesh {
    let dir = tempfile::tempdir().unwrap();
    let data = fixture(dir.path());
    let sim = |model: &str, ttft: u32| {
        format!(
            "{{tokens_per_second: {{median: 0}}, ttft_ms: {{median: {ttft}}}, replay: {}, replay_model: {model}}}",
            data.display()
        )
    };
    let yaml = format!(
        "gateway:\n  listen: 127.0.0.1:0\n  http_listen: 127.0.0.1:0\n  admin_listen: 127.0.0.1:0\n  request_timeout: 20s\n  load_interval: 100ms\n  discovery_interval: 100ms\n  strategy: cascade\n  cascade: {cascade}\n  router: {{artifact: {artifact}}}\nworkers:\n  - id: cheap-0\n    model: cheap\n    tier: small\n    input_usd_per_mtok: 0.2\n    output_usd_per_mtok: 0.2\n    backend:\n      sim: {}\n  - id: strong-0\n    model: strong\n    tier: large\n    input_usd_per_mtok: 12\n    output_usd_per_mtok: 36\n    backend:\n      sim: {}\n{more}",
        sim("cheap", 0),
        sim("strong", strong_ttft_ms),
        artifact = workspace_root().join("router/artifacts/default").display(),
    );
    let process = Process::start("cascade-mesh", "up", &yaml, &[]).unwrap();
    Mesh { process, _dir: dir }
}

fn request(prompt: &str, hints: Option<RoutingHints>) -> GenerateRequest {
    GenerateRequest {
        params: Some(GenerationParams {
            max_tokens: Some(64),
            ..Default::default()
        }),
        hints,
        ..ask(prompt)
    }
}

fn metric(mesh: &Process, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (_, text) = curl_get(&format!("{}/metrics", mesh.admin_url()), &[]);
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

async fn generate(mesh: &Process, req: GenerateRequest) -> GenerateResponse {
    let mut client = gateway_client(&mesh.gateway_url()).await;
    client.generate(req).await.unwrap().into_inner()
}

/// The streamed text and route of a request.
async fn stream(
    mesh: &Process,
    req: GenerateRequest,
) -> (String, routemesh_proto::v1::RouteDecision, f64) {
    let mut client = gateway_client(&mesh.gateway_url()).await;
    let mut events = client.generate_stream(req).await.unwrap().into_inner();
    let (mut text, mut route, mut cost) = (String::new(), None, 0.0);
    while let Some(event) = events.next().await {
        match event.unwrap().event.unwrap() {
            Event::Route(r) => {
                assert!(
                    route.is_none() && text.is_empty(),
                    "the route comes first, once"
                );
                route = Some(r);
            }
            Event::Delta(d) => text.push_str(&d.text),
            Event::ToolCall(c) => panic!("no tools were offered: {c:?}"),
            Event::End(end) => cost = end.usage.unwrap().cost_usd,
        }
    }
    (text, route.unwrap(), cost)
}

fn http_chat(mesh: &Process, prompt: &str) -> (String, serde_json::Value) {
    let body = serde_json::json!({"model": "router", "max_tokens": 64, "messages": [{"role": "user", "content": prompt}]});
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-D",
            "-",
            "-H",
            "content-type: application/json",
            "-d",
        ])
        .arg(body.to_string())
        .arg(format!("{}/v1/chat/completions", mesh.http_url()))
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (
        head.to_ascii_lowercase(),
        serde_json::from_str(body).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weak_answer_is_escalated_and_every_step_is_billed() {
    let mesh = mesh("{verifier: confidence, unverifiable: escalate}", 0, "");
    let m = &mesh.process;
    wait_for_pool(&m.gateway_url(), 2).await;

    let response = generate(m, request(EGGS, None)).await;
    assert_eq!(response.text, STRONG_EGGS);
    let usage = response.usage.unwrap();
    assert_eq!(usage.model, "strong");
    let route = response.route.unwrap();
    assert_eq!(route.strategy, "cascade");
    assert!(route.escalated);
    assert_eq!(route.model, "strong");
    let steps: Vec<(&str, &str)> = route
        .cascade
        .iter()
        .map(|s| (s.model.as_str(), s.outcome.as_str()))
        .collect();
    assert_eq!(steps, [("cheap", "escalated"), ("strong", "answering")]);
    assert_eq!(route.cascade[0].verifier, "confidence");
    assert!(
        route.cascade[0].reason.contains("no score"),
        "{:?}",
        route.cascade[0]
    );
    // The request's cost is both calls: the cheap answer's and the strong one's.
    let cheap_cost = route.cascade[0].cost_usd;
    assert!(cheap_cost > 0.0);
    assert!(
        usage.cost_usd > cheap_cost * 2.0,
        "{} vs {cheap_cost}",
        usage.cost_usd
    );
    assert_eq!(
        metric(
            m,
            "routemesh_cascade_escalations_total",
            &[
                ("from_model", "cheap"),
                ("to_model", "strong"),
                ("verifier", "confidence")
            ]
        ),
        1.0
    );
    assert_eq!(
        metric(
            m,
            "routemesh_cascade_verdicts_total",
            &[("verdict", "unverifiable")]
        ),
        1.0
    );
    // Both calls were served and recorded: one at each worker.
    for worker in ["cheap-0", "strong-0"] {
        assert_eq!(
            metric(
                m,
                "routemesh_worker_calls_total",
                &[("worker", worker), ("outcome", "ok")]
            ),
            1.0,
            "{worker}"
        );
    }

    // Streamed: the cheap answer was judged before anything was sent, so the
    // client sees only the strong model's text, after a route that says so.
    let (text, route, cost) = stream(m, request(EGGS, None)).await;
    assert_eq!(text, STRONG_EGGS);
    assert!(!text.contains("<<3*12=36>>"));
    assert!(route.escalated);
    assert_eq!(route.cascade.len(), 2);
    assert!(
        (cost - usage.cost_usd).abs() < 1e-9,
        "{cost} vs {}",
        usage.cost_usd
    );

    // The OpenAI API says so in a header; `model` is the answering model.
    let (head, body) = http_chat(m, EGGS);
    assert!(head.contains("x-routemesh-escalated: true"), "{head}");
    assert_eq!(body["model"], "strong");
    assert_eq!(body["choices"][0]["message"]["content"], STRONG_EGGS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_answer_is_the_cheap_one_alone() {
    let mesh = mesh("{verifier: confidence, unverifiable: accept}", 0, "");
    let m = &mesh.process;
    wait_for_pool(&m.gateway_url(), 2).await;

    // The dry run shows the cascade's first call: among the cheap tier.
    let mut client = gateway_client(&m.gateway_url()).await;
    let dry = client
        .route(request(EGGS, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (dry.strategy.as_str(), dry.model.as_str()),
        ("cascade", "cheap")
    );
    assert!(dry.candidates.iter().all(|c| c.model == "cheap"), "{dry:?}");

    let response = generate(m, request(EGGS, None)).await;
    assert_eq!(response.text, CHEAP_EGGS);
    let route = response.route.unwrap();
    assert!(!route.escalated);
    assert_eq!(route.cascade.len(), 1);
    assert_eq!(route.cascade[0].outcome, "accepted");
    let usage = response.usage.unwrap();
    assert!((usage.cost_usd - route.cascade[0].cost_usd).abs() < 1e-12);

    let (text, route, _) = stream(m, request(EGGS, None)).await;
    assert_eq!(text, CHEAP_EGGS);
    assert_eq!(route.cascade[0].outcome, "accepted");

    let (head, body) = http_chat(m, EGGS);
    assert!(head.contains("x-routemesh-escalated: false"), "{head}");
    assert_eq!(body["model"], "cheap");
    assert_eq!(
        metric(m, "routemesh_worker_calls_total", &[("worker", "strong-0")]),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_budget_keeps_the_cheap_answer_or_fails_naming_the_hint() {
    let mesh = mesh("{verifier: confidence, unverifiable: escalate}", 0, "");
    let m = &mesh.process;
    wait_for_pool(&m.gateway_url(), 2).await;
    // The cheap step fits 0.001 USD; the strong model (64 tokens at 36 USD
    // per million, about 0.0023) does not fit what is left.
    let budget = |floor: Option<f64>| {
        Some(RoutingHints {
            max_cost_usd: Some(0.001),
            quality_floor: floor,
            ..Default::default()
        })
    };
    let response = generate(m, request(EGGS, budget(None))).await;
    assert_eq!(response.text, CHEAP_EGGS);
    let route = response.route.unwrap();
    assert!(!route.escalated);
    assert_eq!(route.cascade[0].outcome, "kept");
    assert!(
        route.cascade[0].reason.contains("max_cost_usd"),
        "{}",
        route.cascade[0].reason
    );
    // One verdict for the one judged answer: kept, not also escalated.
    assert_eq!(metric(m, "routemesh_cascade_verdicts_total", &[]), 1.0);
    assert_eq!(
        metric(
            m,
            "routemesh_cascade_verdicts_total",
            &[("verdict", "kept")]
        ),
        1.0
    );

    // With a quality floor the client asked for better than the cheap answer
    // and the budget rules out anything better: a clear error.
    let mut client = gateway_client(&m.gateway_url()).await;
    let status = client
        .generate(request(EGGS, budget(Some(0.9))))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("quality_floor"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("max_cost_usd"),
        "{}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_escalation_fails_over_and_a_deadline_holds_across_steps() {
    let rogue = RogueWorker::start().await;
    // The rogue is the cheaper strong worker, so the escalation tries it first.
    let statics = format!(
        "static_workers:\n  - {{id: a-rogue, model: strong-rogue, tier: large, endpoint: \"{}\", input_usd_per_mtok: 10, output_usd_per_mtok: 30}}\n",
        rogue.endpoint
    );
    let with_rogue = mesh(
        "{verifier: confidence, unverifiable: escalate}",
        0,
        &statics,
    );
    let m = &with_rogue.process;
    wait_for_pool(&m.gateway_url(), 3).await;
    let response = generate(m, request(REFUSE, None)).await;
    assert_eq!(response.text, STRONG_REFUSE);
    let route = response.route.unwrap();
    assert_eq!(route.worker_id, "strong-0");
    assert!(route.escalated);
    assert!(rogue.state.calls.load(std::sync::atomic::Ordering::Acquire) >= 1);
    assert!(metric(m, "routemesh_failovers_total", &[]) >= 1.0);
    drop(with_rogue);

    // A slow strong model: the client's deadline covers the whole cascade.
    let slow = mesh("{verifier: confidence, unverifiable: escalate}", 10_000, "");
    let m = &slow.process;
    wait_for_pool(&m.gateway_url(), 2).await;
    let mut client = gateway_client(&m.gateway_url()).await;
    let mut req = tonic::Request::new(request(EGGS, None));
    req.set_timeout(Duration::from_millis(1500));
    let started = std::time::Instant::now();
    let status = client.generate(req).await.unwrap_err();
    // The client's own timer may end it first (CANCELLED, "Timeout expired").
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // The gateway held the same deadline: the cheap step was served, the
    // strong one cut at the deadline (not after its 10 s), each counted once.
    eventually(Duration::from_secs(5), "the strong call ends", || async {
        metric(
            m,
            "routemesh_worker_calls_total",
            &[("worker", "strong-0"), ("outcome", "timeout")],
        ) + metric(
            m,
            "routemesh_worker_calls_total",
            &[("worker", "strong-0"), ("outcome", "cancelled")],
        ) == 1.0
    })
    .await;
    assert_eq!(
        metric(
            m,
            "routemesh_worker_calls_total",
            &[("worker", "cheap-0"), ("outcome", "ok")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_learned_verifier_judges_answers_from_their_text() {
    let mesh = mesh("{verifier: learned, accept_threshold: 0.0}", 0, "");
    let m = &mesh.process;
    wait_for_pool(&m.gateway_url(), 2).await;
    let mut scores = Vec::new();
    for prompt in [EGGS, SHIRT] {
        let response = generate(m, request(prompt, None)).await;
        let route = response.route.unwrap();
        let step = &route.cascade[0];
        assert_eq!(step.verifier, "learned");
        assert_eq!(step.outcome, "accepted", "{step:?}");
        assert!((0.0..=1.0).contains(&step.score), "{step:?}");
        scores.push(step.score);
    }
    // A clean worked answer with a final number beats a truncated one with
    // wrong calculator arithmetic.
    assert!(scores[0] > scores[1], "{scores:?}");

    // A floor of 1 is more than any answer proves: escalated.
    let floor = Some(RoutingHints {
        quality_floor: Some(1.0),
        ..Default::default()
    });
    let response = generate(m, request(SHIRT, floor)).await;
    assert_eq!(response.text, STRONG_SHIRT);
    assert!(response.route.unwrap().escalated);
}

/// A mesh whose cheap model is an OpenAI-compatible engine (the fake), so
/// its answers come with scripted log-probabilities and verdicts.
fn engine_mesh(cascade: &str, base_url: &str) -> Process {
    let yaml = format!(
        "gateway:\n  listen: 127.0.0.1:0\n  http_listen: null\n  admin_listen: 127.0.0.1:0\n  request_timeout: 20s\n  load_interval: 100ms\n  discovery_interval: 100ms\n  router: {{enabled: false}}\n  strategy: cascade\n  cascade: {cascade}\nworkers:\n  - id: engine-0\n    model: cheap\n    tier: small\n    input_usd_per_mtok: 0.2\n    output_usd_per_mtok: 0.2\n    backend:\n      openai:\n        base_url: {base_url}\n        timeout: 5s\n  - id: strong-0\n    model: strong\n    tier: large\n    input_usd_per_mtok: 12\n    output_usd_per_mtok: 36\n    backend:\n      sim: {{tokens_per_second: {{median: 0}}, ttft_ms: {{median: 0}}}}\n"
    );
    Process::start("engine-cascade", "up", &yaml, &[]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_confidence_and_self_check_judge_real_engine_answers() {
    let fake = routemesh_tests::fake_openai::FakeOpenAi::start().await;

    // Engine confidence: the fake's log-probs are sure (mean -0.05) unless
    // the prompt says "unsure" (mean -2.5); the default logistic puts them
    // at about 0.93 and nearly 0.
    let m = engine_mesh("{verifier: confidence}", &fake.base_url);
    wait_for_pool(&m.gateway_url(), 2).await;
    let sure = generate(&m, request("What is 2+2?", None)).await;
    let route = sure.route.unwrap();
    assert!(!route.escalated, "{route:?}");
    let step = &route.cascade[0];
    assert_eq!(
        (step.verifier.as_str(), step.outcome.as_str()),
        ("confidence", "accepted")
    );
    assert!(step.score > 0.9, "{step:?}");
    let unsure = generate(&m, request("unsure: what is 2+2?", None)).await;
    let route = unsure.route.unwrap();
    assert!(route.escalated, "{route:?}");
    assert!(route.cascade[0].score < 0.01, "{:?}", route.cascade[0]);
    assert_eq!(unsure.usage.unwrap().model, "strong");
    // The engine was asked for log-probs on the cheap step only.
    let asked: Vec<bool> = fake
        .state
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|b| b["logprobs"].as_bool() == Some(true))
        .collect();
    assert_eq!(asked, [true, true]);
    drop(m);

    // Self-check (AutoMix): the cheap model is asked whether its answer is
    // correct, twice; each verdict is a billed call.
    fake.state.requests.lock().unwrap().clear();
    let m = engine_mesh(
        "{verifier: self-check, self_check: {samples: 2}}",
        &fake.base_url,
    );
    wait_for_pool(&m.gateway_url(), 2).await;
    let judged = generate(&m, request("What is 2+2?", None)).await;
    let route = judged.route.unwrap();
    let step = &route.cascade[0];
    assert_eq!(
        (step.verifier.as_str(), step.outcome.as_str(), step.score),
        ("self-check", "accepted", 1.0)
    );
    // Three calls to the engine: the answer and two verdicts, all in the cost.
    let requests = fake.state.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 3);
    let question = requests[1]["messages"].as_array().unwrap().last().unwrap()["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        question.contains("What is 2+2?")
            && question.contains("Proposed answer: Hello from the fake engine."),
        "{question}"
    );
    assert!(judged.usage.unwrap().cost_usd > step.cost_usd);
    let doubted = generate(&m, request("unsure: what is 2+2?", None)).await;
    let route = doubted.route.unwrap();
    assert_eq!(route.cascade[0].score, 0.0);
    assert!(route.escalated);
}

const WEAK: &str = "mistralai/Mixtral-8x7B-Instruct-v0.1";
const STRONG: &str = "gpt-4-1106-preview";

/// The GPT-4/Mixtral pair the router and the verifier's gap adjustment know.
fn pair_mesh(cascade: &str) -> Process {
    let (weak, strong) = (WEAK, STRONG);
    let sim = "{tokens_per_second: {median: 0}, ttft_ms: {median: 0}}";
    let yaml = format!(
        "gateway:\n  listen: 127.0.0.1:0\n  http_listen: null\n  admin_listen: 127.0.0.1:0\n  load_interval: 100ms\n  discovery_interval: 100ms\n  router: {{artifact: {}}}\n  strategy: cascade\n  cascade: {cascade}\nworkers:\n  - id: weak-0\n    model: {weak}\n    tier: small\n    input_usd_per_mtok: 0.6\n    output_usd_per_mtok: 0.6\n    backend: {{sim: {sim}}}\n  - id: strong-0\n    model: {strong}\n    tier: large\n    input_usd_per_mtok: 10\n    output_usd_per_mtok: 30\n    backend: {{sim: {sim}}}\n",
        workspace_root().join("router/artifacts/default").display()
    );
    Process::start("pair-mesh", "up", &yaml, &[]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pairs_cheap_answer_is_judged_with_the_routers_gap() {
    let m = pair_mesh("{verifier: learned, accept_threshold: 0.0}");
    wait_for_pool(&m.gateway_url(), 2).await;
    let response = generate(&m, request(EGGS, None)).await;
    let step = &response.route.unwrap().cascade[0];
    assert_eq!(
        (step.model.as_str(), step.outcome.as_str()),
        (WEAK, "accepted")
    );
    assert!(
        step.reason
            .contains("adjusted for the router's predicted gap"),
        "{step:?}"
    );
    drop(m);
    // Turned off, the plain score.
    let m = pair_mesh("{verifier: learned, accept_threshold: 0.0, use_router_gap: false}");
    wait_for_pool(&m.gateway_url(), 2).await;
    let response = generate(&m, request(EGGS, None)).await;
    let step = &response.route.unwrap().cascade[0];
    assert!(!step.reason.contains("adjusted"), "{step:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cascade_routing_skips_a_cheap_model_predicted_to_fail() {
    // Models the router knows, so it predicts both; `direct_below: 1.0` is
    // above any prediction: every prompt skips the cheap step.
    let (weak, strong) = (WEAK, STRONG);
    let m = pair_mesh("{direct_below: 1.0}");
    wait_for_pool(&m.gateway_url(), 2).await;
    let mut client = gateway_client(&m.gateway_url()).await;
    let dry = client
        .route(request(EGGS, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dry.model, strong, "the dry run shows the skip too");

    let response = generate(&m, request(EGGS, None)).await;
    let route = response.route.unwrap();
    assert_eq!(route.model, strong);
    let steps: Vec<(&str, &str)> = route
        .cascade
        .iter()
        .map(|s| (s.model.as_str(), s.outcome.as_str()))
        .collect();
    assert_eq!(steps, [(weak, "skipped"), (strong, "answering")]);
    assert!(route.cascade[0].score < 1.0 && route.cascade[0].threshold == 1.0);
    // Not an escalation: nothing was answered and replaced.
    assert!(!route.escalated);
    assert_eq!(
        metric(&m, "routemesh_cascade_skips_total", &[("model", weak)]),
        1.0
    );
    assert_eq!(
        metric(&m, "routemesh_worker_calls_total", &[("worker", "weak-0")]),
        0.0
    );
}
