//! The `local` backend through the real `routemesh` binary: a mesh with
//! SmolLM2-135M-Instruct on the CPU beside a simulated large model answers
//! pinned requests with the model's real greedy text and real token counts,
//! honours stop sequences, and frees the slot when a streaming client leaves.
//! Asked straight, its worker refuses a prompt longer than the model's
//! context as OUT_OF_RANGE (a model with a longer context could serve it)
//! and a request for tools, which this model cannot serve, by name.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use routemesh_proto::v1::{
    ChatMessage, FinishReason, GenerationParams, LoadRequest, Tool, WorkerGenerateRequest,
    worker_stream_event,
};
use routemesh_tests::*;
use tonic::Code;

const MODEL: &str = "smollm2-135m-instruct";

fn mesh_yaml(model: &std::path::Path) -> String {
    let path = serde_json::Value::from(model.display().to_string());
    format!(
        "{}workers:\n  - id: smol-0\n    model: {MODEL}\n    tier: small\n    input_usd_per_mtok: 0.01\n    output_usd_per_mtok: 0.01\n    capacity: 1\n    drain_grace: 5s\n    backend:\n      local: {{model: {path}, threads: 2, context: 512}}\n  - id: large-0\n    model: large-model\n    tier: large\n    input_usd_per_mtok: 10\n    output_usd_per_mtok: 30\n    backend:\n      sim: {{ttft_ms: {{median: 5}}, tokens_per_second: {{median: 1000}}}}\n",
        gateway_yaml(None)
    )
}

fn greedy(max_tokens: u32, stop: &[&str]) -> GenerationParams {
    GenerationParams {
        max_tokens: Some(max_tokens),
        temperature: Some(0.0),
        stop: stop.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_model_answers_through_the_mesh() {
    let Some(model) = local_model() else { return };
    let mesh = Process::start("local-mesh", "up", &mesh_yaml(&model), &[]).unwrap();
    assert!(mesh.log().contains("local model loaded"), "{}", mesh.log());
    let url = mesh.gateway_url();
    wait_for_pool(&url, 2).await;
    let mut gateway = gateway_client(&url).await;

    // Pinned to the local model: its greedy answer, counted by its tokenizer.
    let mut request = ask("What is the capital of France?");
    request.model = MODEL.into();
    request.params = Some(greedy(24, &[]));
    let done = gateway
        .generate(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        done.text,
        "L'Étoile, la Marseillaise, la femme, la femme au martyre, la"
    );
    let usage = done.usage.unwrap();
    assert_eq!(usage.model, MODEL);
    assert_eq!(
        (
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.estimated,
            usage.simulated
        ),
        (37, 24, false, false)
    );
    assert_eq!(done.finish_reason, FinishReason::Length as i32);
    assert!(
        usage.time_to_first_token_ms > 0.0 && usage.time_to_first_token_ms <= usage.total_time_ms
    );

    // A stop sequence ends the answer before it.
    request.params = Some(greedy(24, &[", la"]));
    let done = gateway.generate(request).await.unwrap().into_inner();
    assert_eq!(
        (done.text.as_str(), done.finish_reason),
        ("L'Étoile", FinishReason::StopSequence as i32)
    );

    // Streaming straight from the worker; the client leaves after two
    // deltas, and the one slot is free again for the next request.
    let mut worker = worker_client(&mesh.worker_endpoint(0)).await;
    let long = WorkerGenerateRequest {
        request_id: "long".into(),
        model: MODEL.into(),
        messages: vec![ChatMessage {
            role: "user".into(),
            content: "Tell me a very long story.".into(),
            ..Default::default()
        }],
        params: Some(greedy(400, &[])),
        tenant: "t".into(),
        want_logprobs: false,
        user: String::new(),
    };
    let mut stream = worker
        .generate_stream(long.clone())
        .await
        .unwrap()
        .into_inner();
    for _ in 0..2 {
        let event = stream.message().await.unwrap().unwrap();
        assert!(matches!(
            event.event,
            Some(worker_stream_event::Event::Delta(_))
        ));
    }
    drop(stream);
    let endpoint = mesh.worker_endpoint(0);
    eventually(Duration::from_secs(10), "the slot is released", || {
        let endpoint = endpoint.clone();
        async move {
            let load = worker_client(&endpoint)
                .await
                .load(LoadRequest {})
                .await
                .unwrap()
                .into_inner();
            load.in_flight == 0 && load.queue_depth == 0
        }
    })
    .await;
    let mut quick = ask("Say yes.");
    quick.model = MODEL.into();
    quick.params = Some(greedy(4, &[]));
    let done = tokio::time::timeout(Duration::from_secs(20), gateway.generate(quick))
        .await
        .expect("the freed slot answers")
        .unwrap()
        .into_inner();
    assert!(done.usage.unwrap().completion_tokens <= 4);

    // A prompt longer than the slot's 512-token context: OUT_OF_RANGE with
    // the numbers, unary and streamed, and no retry hint.
    let too_long = WorkerGenerateRequest {
        messages: vec![ChatMessage {
            role: "user".into(),
            content: "word ".repeat(600),
            ..Default::default()
        }],
        params: Some(greedy(4, &[])),
        ..long.clone()
    };
    for streaming in [false, true] {
        let status = if streaming {
            // The refusal comes as the stream's first message.
            match worker.generate_stream(too_long.clone()).await {
                Ok(stream) => stream.into_inner().message().await.unwrap_err(),
                Err(status) => status,
            }
        } else {
            worker.generate(too_long.clone()).await.unwrap_err()
        };
        assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
        assert!(
            status.message().contains("this model's context is 512"),
            "{}",
            status.message()
        );
        assert!(status.metadata().get("x-routemesh-retryable").is_none());
    }

    // Tools offered to a model without tool calling: refused by name.
    let with_tools = WorkerGenerateRequest {
        params: Some(GenerationParams {
            tools: vec![Tool {
                name: "get_weather".into(),
                ..Default::default()
            }],
            ..greedy(4, &[])
        }),
        ..long
    };
    let status = worker.generate(with_tools).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("no tool calling"),
        "{}",
        status.message()
    );
}
