//! A gateway and two workers as separate processes, discovering each other
//! through a real Redis: every Gateway RPC end to end, and its error codes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use routemesh_proto::v1::{
    ChatMessage, FeedbackRequest, GenerateRequest, GenerationParams, ListModelsRequest,
    RoutingHints, Tier, generate_stream_event,
};
use routemesh_tests::*;
use tonic::Code;

struct Mesh {
    _small: Process,
    _large: Process,
    gateway: Process,
    redis: String,
    mesh: String,
}

async fn mesh(test: &str) -> Mesh {
    let redis = shared_redis_url();
    let mesh = unique_mesh(test);
    let r = Some((redis.as_str(), mesh.as_str()));
    let small = Process::start(
        "small",
        "worker",
        &sim_worker_yaml(
            r,
            "small-0",
            "small-model",
            "small",
            "{ttft_ms: {median: 5}, tokens_per_second: {median: 2000}, seed: 1}",
        ),
        &[],
    )
    .unwrap();
    let large = Process::start(
        "large",
        "worker",
        &sim_worker_yaml(
            r,
            "large-0",
            "large-model",
            "large",
            "{ttft_ms: {median: 5}, tokens_per_second: {median: 2000}, seed: 2}",
        ),
        &[],
    )
    .unwrap();
    let gateway = Process::start("gateway", "gateway", &gateway_yaml(r), &[]).unwrap();
    let m = Mesh {
        _small: small,
        _large: large,
        gateway,
        redis,
        mesh,
    };
    let url = m.gateway.gateway_url();
    eventually(Duration::from_secs(10), "both workers discovered", || {
        let url = url.clone();
        async move {
            let mut c = gateway_client(&url).await;
            c.list_models(ListModelsRequest {})
                .await
                .map(|r| r.into_inner().models.len() == 2)
                .unwrap_or(false)
        }
    })
    .await;
    m
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let (redis, mesh) = (self.redis.clone(), self.mesh.clone());
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(delete_mesh_keys(&redis, &mesh));
        })
        .join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_end_to_end() {
    let m = mesh("rpcs").await;
    let mut client = gateway_client(&m.gateway.gateway_url()).await;

    // ListModels: both models, their tiers, prices and a load report.
    let models = client
        .list_models(ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models;
    let names: Vec<_> = models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["large-model", "small-model"]);
    assert_eq!(models[0].tier, Tier::Large as i32);
    assert_eq!(models[0].input_usd_per_mtok, 10.0);
    assert_eq!(models[1].healthy_workers, 1);
    assert!(
        models[1].workers[0]
            .load
            .as_ref()
            .is_some_and(|l| l.capacity == 4 && l.backend == "sim")
    );

    // Generate, pinned: that model answers, usage and cost come back.
    let mut req = ask("Name a prime number.");
    req.model = "small-model".into();
    req.request_id = "req-pinned-1".into();
    let response = client.generate(req).await.unwrap();
    assert_eq!(
        response.metadata().get("x-request-id").unwrap(),
        "req-pinned-1"
    );
    let response = response.into_inner();
    let usage = response.usage.unwrap();
    assert_eq!(
        (usage.model.as_str(), usage.worker_id.as_str()),
        ("small-model", "small-0")
    );
    assert!(usage.simulated && usage.completion_tokens > 0);
    let expected_cost =
        (0.2 * f64::from(usage.prompt_tokens) + 0.2 * f64::from(usage.completion_tokens)) / 1e6;
    assert!((usage.cost_usd - expected_cost).abs() < 1e-12);
    assert!(response.text.starts_with("[simulated small-model]"));
    assert_eq!(response.route.unwrap().policy, "utility");

    // Route: a dry run with hints; the explanation names the excluded candidate.
    let mut req = ask("Explain quantum entanglement.");
    req.hints = Some(RoutingHints {
        allowed_tiers: vec![Tier::Small as i32],
        ..Default::default()
    });
    let route = client.route(req).await.unwrap().into_inner();
    assert_eq!(route.model, "small-model");
    let large = route
        .candidates
        .iter()
        .find(|c| c.model == "large-model")
        .unwrap();
    assert!(
        !large.eligible && large.excluded_because.contains("allowed_tiers"),
        "{large:?}"
    );

    // GenerateStream: the route first, deltas, then the end with usage.
    let mut req = ask("Count to five.");
    req.params = Some(GenerationParams {
        max_tokens: Some(5),
        ..Default::default()
    });
    let mut stream = client.generate_stream(req).await.unwrap().into_inner();
    let mut events = Vec::new();
    while let Some(event) = stream.message().await.unwrap() {
        events.push(event.event.unwrap());
    }
    assert!(matches!(
        events.first(),
        Some(generate_stream_event::Event::Route(_))
    ));
    let deltas = events
        .iter()
        .filter(|e| matches!(e, generate_stream_event::Event::Delta(_)))
        .count();
    assert!(deltas >= 1);
    let Some(generate_stream_event::Event::End(end)) = events.last() else {
        panic!("no end event: {events:?}")
    };
    assert_eq!(end.usage.as_ref().unwrap().completion_tokens, 5);
    assert_eq!(
        end.finish_reason,
        routemesh_proto::v1::FinishReason::Length as i32
    );

    // Feedback on the pinned request is attributed to its model.
    let fb = client
        .feedback(FeedbackRequest {
            request_id: "req-pinned-1".into(),
            score: 0.9,
            comment: "good".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (fb.model.as_str(), fb.worker_id.as_str()),
        ("small-model", "small-0")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_right_code_and_names_the_field() {
    let m = mesh("badinput").await;
    let mut client = gateway_client(&m.gateway.gateway_url()).await;
    let cases: Vec<(GenerateRequest, Code, &str)> = vec![
        (
            GenerateRequest::default(),
            Code::InvalidArgument,
            "messages",
        ),
        (
            GenerateRequest {
                messages: vec![ChatMessage {
                    role: "user".into(),
                    content: "".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
            Code::InvalidArgument,
            "messages[0].content",
        ),
        (
            GenerateRequest {
                model: "gpt-17".into(),
                ..ask("hi")
            },
            Code::NotFound,
            "model: unknown model \"gpt-17\"",
        ),
        (
            GenerateRequest {
                params: Some(GenerationParams {
                    max_tokens: Some(1_000_000),
                    ..Default::default()
                }),
                ..ask("hi")
            },
            Code::InvalidArgument,
            "params.max_tokens",
        ),
        (
            GenerateRequest {
                params: Some(GenerationParams {
                    temperature: Some(3.0),
                    ..Default::default()
                }),
                ..ask("hi")
            },
            Code::InvalidArgument,
            "params.temperature",
        ),
        (
            GenerateRequest {
                hints: Some(RoutingHints {
                    max_cost_usd: Some(0.0),
                    ..Default::default()
                }),
                ..ask("hi")
            },
            Code::FailedPrecondition,
            "max_cost_usd",
        ),
    ];
    for (req, code, needle) in cases {
        for streaming in [false, true] {
            let status = if streaming {
                client
                    .generate_stream(req.clone())
                    .await
                    .map(|_| ())
                    .unwrap_err()
            } else {
                client.generate(req.clone()).await.map(|_| ()).unwrap_err()
            };
            assert_eq!(status.code(), code, "{needle}: {status:?}");
            assert!(
                status.message().contains(needle),
                "{needle} not in {:?}",
                status.message()
            );
        }
    }
    let status = client
        .feedback(FeedbackRequest {
            request_id: "never-sent".into(),
            score: 0.5,
            comment: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = client
        .feedback(FeedbackRequest {
            request_id: "x".into(),
            score: 1.5,
            comment: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message().starts_with("score")),
        (Code::InvalidArgument, true)
    );
}

/// Behind a Service, Feedback lands on any replica: a request served by one
/// gateway is scored through another, and it keeps one score whichever
/// replicas score it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_reaches_any_replica() {
    let m = mesh("fb-any").await;
    let r = Some((m.redis.as_str(), m.mesh.as_str()));
    let other = Process::start("gateway-2", "gateway", &gateway_yaml(r), &[]).unwrap();
    wait_for_pool(&other.gateway_url(), 2).await;
    let mut one = gateway_client(&m.gateway.gateway_url()).await;
    let mut two = gateway_client(&other.gateway_url()).await;

    // The small model as routing sees it: (predicted quality, scores counted).
    let small =
        |c: &routemesh_proto::v1::gateway_client::GatewayClient<tonic::transport::Channel>| {
            let mut c = c.clone();
            async move {
                let d = c.route(ask("x")).await.unwrap().into_inner();
                d.candidates
                    .iter()
                    .find(|c| c.model == "small-model")
                    .map(|c| (c.predicted_quality, c.feedback_count))
                    .unwrap()
            }
        };
    let (prior, _) = small(&two).await;

    let mut req = ask("Name a prime number.");
    req.model = "small-model".into();
    req.request_id = format!("{}-scored", m.mesh);
    let id = one.generate(req).await.unwrap().into_inner().request_id;
    let score = |score: f64| FeedbackRequest {
        request_id: id.clone(),
        score,
        comment: String::new(),
    };
    // The record travels off the request path: wait for it, not a sleep.
    let request = score(0.1);
    eventually(
        Duration::from_secs(10),
        "gateway 2 finds the request",
        || {
            let mut c = two.clone();
            let request = request.clone();
            async move { c.feedback(request).await.is_ok() }
        },
    )
    .await;
    let attributed = two.feedback(score(0.1)).await.unwrap().into_inner();
    assert_eq!(
        (attributed.model.as_str(), attributed.worker_id.as_str()),
        ("small-model", "small-0")
    );
    eventually(Duration::from_secs(10), "the low score counts", || {
        let small = small(&two);
        async move {
            let (q, n) = small.await;
            n == 1.0 && q < prior
        }
    })
    .await;
    // Scored again on the serving replica: it replaces the first score
    // (the model rises above its prior), it is not counted twice.
    one.feedback(score(1.0)).await.unwrap();
    eventually(Duration::from_secs(10), "the replacement counts", || {
        let small = small(&two);
        async move { small.await.0 > prior }
    })
    .await;
    assert_eq!(small(&two).await.1, 1.0, "one request, one score");
    // Unknown everywhere: NOT_FOUND from either replica.
    let unknown = FeedbackRequest {
        request_id: "never-served".into(),
        score: 0.5,
        comment: String::new(),
    };
    assert_eq!(
        two.feedback(unknown).await.unwrap_err().code(),
        Code::NotFound
    );
}

/// `feedback_per_minute` holds across replicas: calls on two gateways add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feedback_limit_counts_every_replica() {
    let m = mesh("fb-rate").await;
    let r = Some((m.redis.as_str(), m.mesh.as_str()));
    let limited = gateway_yaml_with(r, "  feedback_per_minute: 3\n");
    let a = Process::start("gateway-a", "gateway", &limited, &[]).unwrap();
    let b = Process::start("gateway-b", "gateway", &limited, &[]).unwrap();
    wait_for_pool(&a.gateway_url(), 2).await;
    let mut ca = gateway_client(&a.gateway_url()).await;
    let mut cb = gateway_client(&b.gateway_url()).await;
    let id = ca
        .generate(ask("hi"))
        .await
        .unwrap()
        .into_inner()
        .request_id;
    let score = || FeedbackRequest {
        request_id: id.clone(),
        score: 0.5,
        comment: String::new(),
    };
    // The served request reaches Redis off the request path: wait for its
    // record in the time-bucketed hashes of served requests (every call
    // counts, so none is spent waiting).
    let buckets = format!("rm:v1:{{{}}}:req:b:*", m.mesh);
    let field = format!("-\u{1f}{id}");
    let client = redis::Client::open(m.redis.as_str()).unwrap();
    eventually(Duration::from_secs(10), "the request is in Redis", || {
        let (client, buckets, field) = (client.clone(), buckets.clone(), field.clone());
        async move {
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(&buckets)
                .query_async(&mut conn)
                .await
                .unwrap();
            for key in keys {
                let found: bool = redis::cmd("HEXISTS")
                    .arg(&key)
                    .arg(&field)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                if found {
                    return true;
                }
            }
            false
        }
    })
    .await;
    // Minute boundaries aside (a new minute starts the count afresh), the
    // fourth call is refused whichever replica gets it.
    let started = std::time::SystemTime::now();
    ca.feedback(score()).await.unwrap();
    ca.feedback(score()).await.unwrap();
    cb.feedback(score()).await.unwrap();
    let refused = cb.feedback(score()).await.unwrap_err();
    let same_minute =
        |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() / 60;
    if same_minute(started) == same_minute(std::time::SystemTime::now()) {
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        assert!(
            refused.message().contains("feedback_per_minute"),
            "{refused:?}"
        );
    }
}
