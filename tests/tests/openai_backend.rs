//! The worker's `openai` backend against an HTTP server that speaks the OpenAI
//! wire format: plain and SSE, usage reported or counted, engine errors,
//! timeouts and malformed chunks mapped to gRPC codes; and a gateway that
//! dials the worker from static configuration.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use routemesh_proto::v1::{
    ChatMessage, FinishReason, GenerationParams, LoadRequest, WorkerGenerateRequest,
    worker_stream_event,
};
use routemesh_tests::fake_openai::{ANSWER_PIECES, FakeOpenAi};
use routemesh_tests::*;
use tonic::Code;

fn worker_yaml(base_url: &str) -> String {
    format!(
        "workers:\n  - id: engine-0\n    model: fake-model\n    tier: large\n    input_usd_per_mtok: 1.0\n    output_usd_per_mtok: 2.0\n    backend:\n      openai:\n        base_url: {base_url}\n        engine_model: served-name\n        timeout: 1s\n"
    )
}

fn request(prompt: &str) -> WorkerGenerateRequest {
    WorkerGenerateRequest {
        request_id: "r".into(),
        model: "fake-model".into(),
        messages: vec![ChatMessage {
            role: "user".into(),
            content: prompt.into(),
            ..Default::default()
        }],
        params: Some(GenerationParams {
            max_tokens: Some(32),
            temperature: Some(0.5),
            stop: vec!["\n\n".into()],
            seed: Some(3),
            ..Default::default()
        }),
        tenant: "t".into(),
        want_logprobs: false,
        user: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_engine_behind_the_worker() {
    let fake = FakeOpenAi::start().await;
    let worker =
        Process::start("openai-worker", "worker", &worker_yaml(&fake.base_url), &[]).unwrap();
    let mut client = worker_client(&worker.worker_endpoint(0)).await;

    // Plain completion: text, usage from the engine, cost from the prices.
    let done = client.generate(request("hi")).await.unwrap().into_inner();
    assert_eq!(done.text, ANSWER_PIECES.concat());
    let usage = done.usage.unwrap();
    assert_eq!(
        (
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.estimated
        ),
        (11, 4, false)
    );
    assert!((usage.cost_usd - (11.0 * 1.0 + 4.0 * 2.0) / 1e6).abs() < 1e-12);
    assert!(!usage.simulated);
    let sent = fake.state.requests.lock().unwrap()[0].clone();
    assert_eq!(sent["model"], "served-name");
    assert_eq!(sent["max_tokens"], 32);
    assert_eq!(sent["temperature"], 0.5);
    assert_eq!(sent["stop"][0], "\n\n");
    assert_eq!(sent["seed"], 3);
    assert_eq!(sent["stream"], false);

    // SSE streaming: the deltas in order, then usage from the final chunk.
    let mut stream = client
        .generate_stream(request("hi"))
        .await
        .unwrap()
        .into_inner();
    let (mut text, mut end) = (String::new(), None);
    while let Some(event) = stream.message().await.unwrap() {
        match event.event.unwrap() {
            worker_stream_event::Event::Delta(d) => text.push_str(&d.text),
            worker_stream_event::Event::End(e) => end = Some(e),
            worker_stream_event::Event::ToolCall(c) => panic!("no tools were offered: {c:?}"),
        }
    }
    assert_eq!(text, ANSWER_PIECES.concat());
    let end = end.unwrap();
    assert_eq!(end.finish_reason, FinishReason::Stop as i32);
    assert_eq!(
        end.usage
            .as_ref()
            .map(|u| (u.completion_tokens, u.estimated)),
        Some((4, false))
    );
    let sent = fake.state.requests.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        (
            sent["stream"].as_bool(),
            sent["stream_options"]["include_usage"].as_bool()
        ),
        (Some(true), Some(true))
    );

    // No usage from the engine: estimated (ceil(chars / 4); one token per
    // streamed delta) and flagged as such.
    let usage = client
        .generate(request("no-usage"))
        .await
        .unwrap()
        .into_inner()
        .usage
        .unwrap();
    assert!(
        usage.estimated && usage.prompt_tokens == 2 && usage.completion_tokens == 7,
        "{usage:?}"
    );
    let mut stream = client
        .generate_stream(request("no-usage"))
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(e) = stream.message().await.unwrap() {
        last = e.event;
    }
    let Some(worker_stream_event::Event::End(end)) = last else {
        panic!("no end")
    };
    assert_eq!(
        end.usage.map(|u| (u.completion_tokens, u.estimated)),
        Some((4, true))
    );

    // Engine errors and timeouts map to gRPC codes with the engine's message.
    for (prompt, code, needle) in [
        (
            "error-400",
            Code::InvalidArgument,
            "max_tokens is too large",
        ),
        ("error-429", Code::ResourceExhausted, "slow down"),
        ("error-503", Code::Unavailable, "engine overloaded"),
        ("slow", Code::DeadlineExceeded, "did not answer within 1s"),
    ] {
        for streaming in [false, true] {
            let status = if streaming {
                client
                    .generate_stream(request(prompt))
                    .await
                    .map(|_| ())
                    .unwrap_err()
            } else {
                client
                    .generate(request(prompt))
                    .await
                    .map(|_| ())
                    .unwrap_err()
            };
            assert_eq!(
                status.code(),
                code,
                "{prompt} (stream {streaming}): {status:?}"
            );
            assert!(
                status.message().contains(needle),
                "{prompt}: {}",
                status.message()
            );
        }
    }

    // A malformed chunk or an error object mid-stream ends the stream with an
    // error after the deltas already sent.
    for (prompt, code, needle) in [
        ("malformed", Code::Internal, "malformed"),
        ("midstream-error", Code::Internal, "engine exploded"),
    ] {
        let mut stream = client
            .generate_stream(request(prompt))
            .await
            .unwrap()
            .into_inner();
        let first = stream.message().await.unwrap().unwrap();
        assert!(
            matches!(first.event, Some(worker_stream_event::Event::Delta(ref d)) if d.text == "Hello")
        );
        let status = stream.message().await.unwrap_err();
        assert_eq!(status.code(), code, "{prompt}: {status:?}");
        assert!(
            status.message().contains(needle),
            "{prompt}: {}",
            status.message()
        );
    }

    // A request for another model is refused by the worker.
    let status = client
        .generate(WorkerGenerateRequest {
            model: "other".into(),
            ..request("hi")
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);

    // The load report tells the backend and counts.
    let load = client.load(LoadRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (load.backend.as_str(), load.in_flight, load.capacity),
        ("openai", 0, 4)
    );
    assert!(load.engine.unwrap().failed >= 8);

    // A gateway with the worker as a static entry (no registry) routes to it.
    let gateway_yaml = format!(
        "gateway:\n  listen: 127.0.0.1:0\n  http_listen: 127.0.0.1:0\n  admin_listen: 127.0.0.1:0\nstatic_workers:\n  - id: engine-0\n    model: fake-model\n    tier: large\n    endpoint: {}\n",
        worker.worker_endpoint(0)
    );
    let gateway = Process::start("gateway", "gateway", &gateway_yaml, &[]).unwrap();
    let mut gw = gateway_client(&gateway.gateway_url()).await;
    let response = gw.generate(ask("hi")).await.unwrap().into_inner();
    assert_eq!(response.text, ANSWER_PIECES.concat());
    assert_eq!(response.usage.unwrap().worker_id, "engine-0");
    let status = gw.generate(ask("error-400")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("engine-0")
            && status.message().contains("max_tokens is too large")
    );
}
