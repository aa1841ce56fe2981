//! Engine confidence through real worker processes: `want_logprobs` makes the
//! `openai` backend ask its engine for `logprobs` (and only then) and reduce
//! them to mean and minimum, unary and streamed; an engine that ignores the
//! parameter (or covers only part of a stream) leaves the confidence unset;
//! the `sim` backend reports its configured synthetic values; the `local`
//! backend reports the model's own log-probabilities over exactly the
//! completion's tokens.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use routemesh_proto::v1::{
    AnswerConfidence, ChatMessage, GenerationParams, StreamEnd, WorkerGenerateRequest,
    WorkerGenerateResponse, worker_client::WorkerClient, worker_stream_event,
};
use routemesh_tests::fake_openai::{FakeOpenAi, SURE_LOGPROBS, UNSURE_LOGPROBS};
use routemesh_tests::*;
use tonic::transport::Channel;

fn request(model: &str, prompt: &str, want_logprobs: bool) -> WorkerGenerateRequest {
    WorkerGenerateRequest {
        request_id: "r".into(),
        model: model.into(),
        messages: vec![ChatMessage {
            role: "user".into(),
            content: prompt.into(),
            ..Default::default()
        }],
        params: Some(GenerationParams {
            max_tokens: Some(16),
            temperature: Some(0.0),
            ..Default::default()
        }),
        tenant: "t".into(),
        want_logprobs,
        user: String::new(),
    }
}

async fn unary(
    client: &mut WorkerClient<Channel>,
    req: WorkerGenerateRequest,
) -> WorkerGenerateResponse {
    client.generate(req).await.unwrap().into_inner()
}

async fn streamed(client: &mut WorkerClient<Channel>, req: WorkerGenerateRequest) -> StreamEnd {
    let mut stream = client.generate_stream(req).await.unwrap().into_inner();
    let mut end = None;
    while let Some(event) = stream.message().await.unwrap() {
        if let Some(worker_stream_event::Event::End(e)) = event.event {
            end = Some(e);
        }
    }
    end.expect("an end event")
}

/// Asserts the summary is (tokens, mean, min) to rounding.
fn assert_confidence(got: Option<&AnswerConfidence>, tokens: u32, mean: f64, min: f64) {
    let got = got.unwrap_or_else(|| panic!("no confidence; expected {tokens} tokens"));
    assert_eq!(got.tokens, tokens, "{got:?}");
    assert!(
        (got.mean_logprob - mean).abs() < 1e-9,
        "{got:?}, mean {mean}"
    );
    assert!((got.min_logprob - min).abs() < 1e-9, "{got:?}, min {min}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_and_sim_confidence() {
    let fake = FakeOpenAi::start().await;
    let yaml = format!(
        "workers:\n  - id: engine-0\n    model: fake-model\n    tier: small\n    backend:\n      openai:\n        base_url: {}\n        timeout: 5s\n  - id: sim-0\n    model: sim-model\n    tier: small\n    backend:\n      sim: {{ttft_ms: {{median: 0}}, tokens_per_second: {{median: 0}}, output_tokens: {{median: 5}}, logprobs: {{sure: -0.25, unsure: -3}}}}\n",
        fake.base_url
    );
    let worker = Process::start("confidence-workers", "worker", &yaml, &[]).unwrap();
    let mut openai = worker_client(&worker.worker_endpoint(0)).await;
    let mut sim = worker_client(&worker.worker_endpoint(1)).await;
    let sent = || fake.state.requests.lock().unwrap().last().cloned().unwrap();

    // Not asked: `logprobs` is not sent (some engines reject it), and no
    // confidence comes back, unary or streamed.
    let done = unary(&mut openai, request("fake-model", "hi", false)).await;
    assert!(done.confidence.is_none());
    assert!(sent().get("logprobs").is_none(), "{}", sent());
    let end = streamed(&mut openai, request("fake-model", "hi", false)).await;
    assert!(end.confidence.is_none());
    assert!(sent().get("logprobs").is_none(), "{}", sent());

    // Asked: `"logprobs": true` goes out; the engine's per-token values come
    // back reduced. The fake scripts [-0.01, -0.05, -0.12, -0.02] (mean
    // -0.20 / 4 = -0.05, min -0.12) and, for an unsure prompt,
    // [-1.5, -3.5, -2.0, -3.0] (mean -10 / 4 = -2.5, min -3.5).
    assert_eq!(SURE_LOGPROBS, [-0.01, -0.05, -0.12, -0.02]);
    assert_eq!(UNSURE_LOGPROBS, [-1.5, -3.5, -2.0, -3.0]);
    let done = unary(&mut openai, request("fake-model", "hi", true)).await;
    assert_eq!(sent()["logprobs"], true);
    assert_confidence(done.confidence.as_ref(), 4, -0.05, -0.12);
    let done = unary(&mut openai, request("fake-model", "I am unsure", true)).await;
    assert_confidence(done.confidence.as_ref(), 4, -2.5, -3.5);

    // Streamed: one entry per SSE chunk, accumulated and sent at the end.
    let end = streamed(&mut openai, request("fake-model", "hi", true)).await;
    assert_eq!(sent()["logprobs"], true);
    assert_eq!(sent()["stream"], true);
    assert_confidence(end.confidence.as_ref(), 4, -0.05, -0.12);
    let end = streamed(&mut openai, request("fake-model", "unsure?", true)).await;
    assert_confidence(end.confidence.as_ref(), 4, -2.5, -3.5);

    // An engine that ignores the parameter: an answer, no confidence, no error.
    let done = unary(&mut openai, request("fake-model", "no-logprobs", true)).await;
    assert_eq!(sent()["logprobs"], true);
    assert!(!done.text.is_empty());
    assert!(done.confidence.is_none(), "{:?}", done.confidence);
    let end = streamed(&mut openai, request("fake-model", "no-logprobs", true)).await;
    assert!(end.usage.is_some());
    assert!(end.confidence.is_none(), "{:?}", end.confidence);

    // Log-probabilities for only part of a streamed answer: a summary of the
    // rest would overstate the engine's certainty, so there is none.
    let end = streamed(&mut openai, request("fake-model", "partial-logprobs", true)).await;
    assert!(end.usage.is_some());
    assert!(end.confidence.is_none(), "{:?}", end.confidence);

    // The simulated engine: only when asked, its configured synthetic values
    // over every completion token, chosen by the prompt.
    let done = unary(&mut sim, request("sim-model", "hi", false)).await;
    assert!(done.confidence.is_none());
    for streaming in [false, true] {
        for (prompt, lp) in [("hi", -0.25), ("unsure about this", -3.0)] {
            let req = request("sim-model", prompt, true);
            let (confidence, usage) = if streaming {
                let end = streamed(&mut sim, req).await;
                (end.confidence, end.usage.unwrap())
            } else {
                let done = unary(&mut sim, req).await;
                (done.confidence, done.usage.unwrap())
            };
            assert!(usage.simulated);
            assert_confidence(confidence.as_ref(), usage.completion_tokens, lp, lp);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_model_confidence() {
    let Some(model) = local_model() else { return };
    let path = serde_json::Value::from(model.display().to_string());
    let yaml = format!(
        "workers:\n  - id: smol-0\n    model: smol\n    tier: small\n    capacity: 1\n    backend:\n      local: {{model: {path}, threads: 2, context: 512}}\n"
    );
    let worker = Process::start("confidence-local", "worker", &yaml, &[]).unwrap();
    let mut client = worker_client(&worker.worker_endpoint(0)).await;

    let done = unary(
        &mut client,
        request("smol", "What is the capital of France?", false),
    )
    .await;
    assert!(done.confidence.is_none());

    // The model's own log-probabilities of its greedy tokens: one per
    // completion token, all <= 0, the minimum no higher than the mean.
    let done = unary(
        &mut client,
        request("smol", "What is the capital of France?", true),
    )
    .await;
    let usage = done.usage.unwrap();
    let c = done.confidence.expect("a confidence from the local model");
    assert_eq!(c.tokens, usage.completion_tokens, "{c:?} {usage:?}");
    assert!(c.tokens > 0);
    assert!(c.mean_logprob <= 0.0 && c.mean_logprob.is_finite(), "{c:?}");
    assert!(c.min_logprob <= c.mean_logprob, "{c:?}");

    // Streamed, the same greedy answer has the same summary.
    let end = streamed(
        &mut client,
        request("smol", "What is the capital of France?", true),
    )
    .await;
    let streamed_c = end.confidence.expect("a streamed confidence");
    assert_eq!(streamed_c.tokens, end.usage.unwrap().completion_tokens);
    assert_eq!(streamed_c.tokens, c.tokens);
    assert!((streamed_c.mean_logprob - c.mean_logprob).abs() < 1e-9);
    assert!((streamed_c.min_logprob - c.min_logprob).abs() < 1e-9);
}
