//! The gateway routing with the default router artifact (ONNX encoder and
//! learned quality predictor) end to end: predictions depend on the prompt,
//! Generate follows the same decision as Route, models the artifact does not
//! know fall back to priors. Needs the encoder assets (`./dev test` fetches
//! them and sets ROUTEMESH_ASSETS); skips, saying so, without them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use routemesh_proto::v1::{GenerateRequest, RouteDecision};
use routemesh_tests::*;

const FAST: &str =
    "{ttft_ms: {median: 1}, tokens_per_second: {median: 0}, output_tokens: {median: 8}}";

fn mesh_yaml(assets: &str, extra_worker: &str) -> String {
    let artifact = workspace_root().join("router/artifacts/default");
    let workers = [
        sim_worker_yaml(None, "llama-8b-0", "llama-3.1-8b-instruct", "small", FAST),
        sim_worker_yaml(None, "qwen-7b-0", "qwen2.5-7b-instruct", "small", FAST),
        sim_worker_yaml(
            None,
            "nemotron-49b-0",
            "llama-3.3-nemotron-super-49b-v1",
            "large",
            FAST,
        ),
    ]
    .iter()
    .enumerate()
    .map(|(i, w)| {
        if i == 0 {
            w.clone()
        } else {
            w.replacen("workers:\n", "", 1)
        }
    })
    .collect::<String>();
    format!(
        "{}{workers}{extra_worker}",
        gateway_yaml_with(
            None,
            &format!(
                "  router: {{artifact: {}, assets: {assets}}}\n",
                artifact.display()
            )
        )
    )
}

/// Generates `req` and scores its answer `score`, as a user would.
async fn generate_and_score(
    client: &mut routemesh_proto::v1::gateway_client::GatewayClient<tonic::transport::Channel>,
    req: GenerateRequest,
    score: f64,
) {
    let id = client.generate(req).await.unwrap().into_inner().request_id;
    client
        .feedback(routemesh_proto::v1::FeedbackRequest {
            request_id: id,
            score,
            comment: String::new(),
        })
        .await
        .unwrap();
}

fn by_model(d: &RouteDecision) -> Vec<(String, f64, String)> {
    let mut v: Vec<_> = d
        .candidates
        .iter()
        .map(|c| {
            (
                c.model.clone(),
                c.predicted_quality,
                c.quality_source.clone(),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_with_the_default_artifact() {
    let Some(assets) = std::env::var_os("ROUTEMESH_ASSETS") else {
        eprintln!(
            "SKIP: ROUTEMESH_ASSETS not set (run scripts/fetch-router-assets.sh, or ./dev test)"
        );
        return;
    };
    let assets = assets.to_string_lossy().to_string();
    let worker = |id: &str, model: &str| {
        sim_worker_yaml(None, id, model, "small", FAST).replacen("workers:\n", "", 1)
    };
    // A model the router does not know; a known one under its Hugging Face
    // id of a quantised build; a fine-tune that declares what it derives from.
    let extra = [
        worker("mystery-0", "mystery-model"),
        worker("qwen-awq-0", "Qwen/Qwen2.5-7B-Instruct-AWQ"),
        worker("finetune-0", "my-org/support-bot").replace(
            "    backend:",
            "    router_model: gemma-2-9b-it\n    backend:",
        ),
    ]
    .concat();
    let mesh = Process::start("mesh", "up", &mesh_yaml(&assets, &extra), &[]).unwrap();
    let mut client = gateway_client(&mesh.gateway_url()).await;

    let math =
        "Let f(x) = x^3 sin(x). Compute f''(x) and evaluate it at x = pi/2, showing every step.";
    let chat = "Write a friendly one-line greeting for a coffee shop sign.";
    let d_math = client.route(ask(math)).await.unwrap().into_inner();
    let d_chat = client.route(ask(chat)).await.unwrap().into_inner();

    // The artifact's models are scored by the router, under any spelling or
    // a declared router_model; the unknown one stands on the known models
    // nearest to it, per prompt.
    let candidate = |d: &RouteDecision, model: &str| {
        d.candidates
            .iter()
            .find(|c| c.model == model)
            .cloned()
            .unwrap_or_else(|| panic!("{model} is a candidate: {d:?}"))
    };
    for (model, quality, source) in by_model(&d_math) {
        assert!((0.0..=1.0).contains(&quality), "{model}: {quality}");
        let c = candidate(&d_math, &model);
        if model == "mystery-model" {
            assert_eq!(source, "nearest-known");
            assert_eq!(c.router_knowledge, "prior");
            assert_eq!(c.stands_on.len(), 3, "{c:?}");
        } else {
            assert_eq!(source, "router", "{model}");
            assert_eq!(c.router_knowledge, "learned", "{model}");
        }
    }
    for d in [&d_math, &d_chat] {
        let awq = candidate(d, "Qwen/Qwen2.5-7B-Instruct-AWQ");
        assert_eq!(awq.router_model, "qwen2.5-7b-instruct");
        assert_eq!(
            awq.predicted_quality,
            candidate(d, "qwen2.5-7b-instruct").predicted_quality
        );
        assert_eq!(
            candidate(d, "my-org/support-bot").router_model,
            "gemma-2-9b-it"
        );
    }
    let mystery = |d: &RouteDecision| candidate(d, "mystery-model").predicted_quality;
    assert!(
        (mystery(&d_math) - mystery(&d_chat)).abs() > 1e-3,
        "a prior per prompt"
    );
    let listed = client
        .list_models(routemesh_proto::v1::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    let knowledge: Vec<(&str, &str, &str)> = listed
        .models
        .iter()
        .map(|m| {
            (
                m.name.as_str(),
                m.router_knowledge.as_str(),
                m.router_model.as_str(),
            )
        })
        .collect();
    assert!(
        knowledge.contains(&("mystery-model", "prior", "")),
        "{knowledge:?}"
    );
    assert!(
        knowledge.contains(&("my-org/support-bot", "learned", "gemma-2-9b-it")),
        "{knowledge:?}"
    );
    // Predictions depend on the prompt.
    let (m, c) = (by_model(&d_math), by_model(&d_chat));
    assert!(
        m.iter().zip(&c).any(|(a, b)| (a.1 - b.1).abs() > 1e-3),
        "{m:?} vs {c:?}"
    );
    assert!(
        d_math.reason.contains("(router)") || d_math.reason.contains("(nearest-known)"),
        "{}",
        d_math.reason
    );

    // Decisions are stable, and Generate serves where Route said.
    let again = client.route(ask(math)).await.unwrap().into_inner();
    assert_eq!(again.model, d_math.model);
    let served = client
        .generate(GenerateRequest { ..ask(math) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(served.usage.unwrap().model, d_math.model);
    assert_eq!(served.route.unwrap().model, d_math.model);

    // Odd input: empty-looking, huge and odd-Unicode prompts route without error.
    for prompt in [
        ".",
        &"word ".repeat(5000),
        "🦀🦀 ¿qué? \u{200b}\u{202e}עברית 東京 \u{0}",
    ] {
        let d = client.route(ask(prompt)).await.unwrap().into_inner();
        assert!(!d.model.is_empty());
    }

    eprintln!(
        "math prompt -> {} ({m:?}); chat prompt -> {} ({c:?})",
        d_math.model, d_chat.model
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_moves_similar_prompts_only() {
    let Some(assets) = std::env::var_os("ROUTEMESH_ASSETS") else {
        eprintln!(
            "SKIP: ROUTEMESH_ASSETS not set (run scripts/fetch-router-assets.sh, or ./dev test)"
        );
        return;
    };
    // Quality alone decides here (the harness prices the large tier like GPT-4).
    let yaml = mesh_yaml(&assets.to_string_lossy(), "")
        .replace("  router: {", "  cost_weight: 0.0\n  router: {");
    let mesh = Process::start("mesh", "up", &yaml, &[]).unwrap();
    let mut client = gateway_client(&mesh.gateway_url()).await;
    let large = "llama-3.3-nemotron-super-49b-v1";
    let (rated, similar, other) = (
        "Solve for x: 3x^2 - 12x + 9 = 0.",
        "Solve for y: 2y^2 - 8y + 6 = 0.",
        "Write a friendly greeting for a coffee shop sign.",
    );
    let before_similar = client.route(ask(similar)).await.unwrap().into_inner();
    let before_other = client.route(ask(other)).await.unwrap().into_inner();
    assert_eq!(
        before_similar.model, large,
        "the router sends the equation to the large model at first: {before_similar:?}"
    );
    assert!(before_similar.prompt_region.is_empty(), "regions are gone");

    // Users rate the large model's answers to the equation as wrong.
    for i in 0..15 {
        let req = GenerateRequest {
            request_id: format!("fb-{i}"),
            model: large.into(),
            ..ask(rated)
        };
        generate_and_score(&mut client, req, 0.0).await;
    }
    eventually(
        std::time::Duration::from_secs(10),
        "the similar prompt moves off the large model",
        || {
            let mut c = client.clone();
            async move { c.route(ask(similar)).await.unwrap().into_inner().model != large }
        },
    )
    .await;
    let after = client.route(ask(similar)).await.unwrap().into_inner();
    let large_after = after.candidates.iter().find(|c| c.model == large).unwrap();
    assert_eq!(large_after.quality_source, "router+feedback");
    // An unrelated prompt keeps its prediction.
    let other_after = client.route(ask(other)).await.unwrap().into_inner();
    let q = |d: &RouteDecision| {
        d.candidates
            .iter()
            .find(|c| c.model == large)
            .map(|c| (c.predicted_quality, c.quality_source.clone()))
    };
    assert_eq!(q(&other_after), q(&before_other));
}

/// A counter or a histogram's count from the gateway's /metrics (0 when absent).
fn metric(mesh: &Process, series: &str) -> f64 {
    let (_, text) = curl_get(&format!("{}/metrics", mesh.admin_url()), &[]);
    text.lines()
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(name, _)| *name == series)
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_full_path_routes_concurrent_prompts_through_the_batcher() {
    let Some(assets) = std::env::var_os("ROUTEMESH_ASSETS") else {
        eprintln!("SKIP: ROUTEMESH_ASSETS not set");
        return;
    };
    // A long wait and queue wait: batches close on size or time, never refuse here.
    let yaml = mesh_yaml(&assets.to_string_lossy(), "").replacen(
        "  router: {",
        "  router: {path: full, batch: {wait: 100ms, max_size: 4, max_queue_wait: 1s}, ",
        1,
    );
    let mesh = Process::start("mesh", "up", &yaml, &[]).unwrap();
    let prompts = [
        "Is 91 a prime number?",
        "Write a haiku about the sea.",
        "What is the capital of France?",
        "Translate 'good morning' into German.",
    ];
    let url = mesh.gateway_url();
    let decisions = futures::future::join_all(prompts.iter().map(|p| {
        let url = url.clone();
        async move {
            let mut client = gateway_client(&url).await;
            client.route(ask(p)).await.unwrap().into_inner()
        }
    }))
    .await;
    for d in &decisions {
        for (model, quality, source) in by_model(d) {
            assert_eq!(source, "router", "{model} predicted by the router: {d:?}");
            assert!((0.0..=1.0).contains(&quality), "{model}: {quality}");
        }
    }
    // Each prompt ran on the encoder, in passes of up to four, none refused.
    let runs = metric(
        &mesh,
        "routemesh_router_inference_seconds_count{path=\"full\"}",
    );
    let batches = metric(&mesh, "routemesh_router_batches_total");
    assert_eq!(runs, 4.0);
    assert!((1.0..=4.0).contains(&batches), "{batches} passes");
    assert_eq!(metric(&mesh, "routemesh_router_overloaded_total"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_encoder_is_a_clear_startup_error() {
    let yaml = mesh_yaml("/nonexistent/assets", "");
    let err = match Process::start("mesh", "up", &yaml, &[]) {
        Ok(_) => panic!("a router named explicitly must load"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("fetch-router-assets"),
        "the error says how to fetch the assets: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_exemplars_reach_every_replica_through_redis() {
    let Some(assets) = std::env::var_os("ROUTEMESH_ASSETS") else {
        eprintln!(
            "SKIP: ROUTEMESH_ASSETS not set (run scripts/fetch-router-assets.sh, or ./dev test)"
        );
        return;
    };
    let redis = shared_redis_url();
    let mesh = unique_mesh("fbmem");
    let r = Some((redis.as_str(), mesh.as_str()));
    let large = "llama-3.3-nemotron-super-49b-v1";
    let _small = Process::start(
        "small",
        "worker",
        &sim_worker_yaml(r, "qwen-7b-0", "qwen2.5-7b-instruct", "small", FAST),
        &[],
    )
    .unwrap();
    let _large = Process::start(
        "large",
        "worker",
        &sim_worker_yaml(r, "nemotron-49b-0", large, "large", FAST),
        &[],
    )
    .unwrap();
    let router = format!(
        "  cost_weight: 0.0\n  router: {{artifact: {}, assets: {}}}\n",
        workspace_root().join("router/artifacts/default").display(),
        assets.to_string_lossy()
    );
    let one = Process::start("gateway-1", "gateway", &gateway_yaml_with(r, &router), &[]).unwrap();
    let two = Process::start("gateway-2", "gateway", &gateway_yaml_with(r, &router), &[]).unwrap();
    wait_for_pool(&one.gateway_url(), 2).await;
    wait_for_pool(&two.gateway_url(), 2).await;
    let mut c1 = gateway_client(&one.gateway_url()).await;
    let mut c2 = gateway_client(&two.gateway_url()).await;
    let (rated, similar, other) = (
        "Solve for x: 3x^2 - 12x + 9 = 0.",
        "Solve for y: 2y^2 - 8y + 6 = 0.",
        "Write a friendly greeting for a coffee shop sign.",
    );
    let large_on = |d: &RouteDecision| {
        d.candidates
            .iter()
            .find(|c| c.model == large)
            .map(|c| (c.predicted_quality, c.quality_source.clone()))
            .unwrap()
    };
    let before = large_on(&c2.route(ask(similar)).await.unwrap().into_inner());
    let other_before = large_on(&c2.route(ask(other)).await.unwrap().into_inner());
    assert_eq!(before.1, "router");

    // Scored through gateway 1, which served the requests.
    for i in 0..5 {
        let req = GenerateRequest {
            request_id: format!("{mesh}-{i}"),
            model: large.into(),
            ..ask(rated)
        };
        let id = c1.generate(req).await.unwrap().into_inner().request_id;
        c1.feedback(routemesh_proto::v1::FeedbackRequest {
            request_id: id,
            score: 0.0,
            comment: String::new(),
        })
        .await
        .unwrap();
    }
    // Gateway 2 served none of them, yet learns them for similar prompts.
    eventually(
        std::time::Duration::from_secs(10),
        "gateway 2 reads gateway 1's exemplars from Redis",
        || {
            let mut c = c2.clone();
            let before = before.0;
            async move {
                // All five exemplars: the sync may land between two of them.
                let d = c.route(ask(similar)).await.unwrap().into_inner();
                d.candidates.iter().any(|c| {
                    c.model == large
                        && c.quality_source == "router+feedback"
                        && c.predicted_quality < before - 0.05
                })
            }
        },
    )
    .await;
    let after = large_on(&c2.route(ask(similar)).await.unwrap().into_inner());
    assert!(after.0 < before.0 - 0.05, "{before:?} -> {after:?}");
    assert_eq!(
        large_on(&c2.route(ask(other)).await.unwrap().into_inner()),
        other_before,
        "an unrelated prompt keeps its prediction"
    );
    delete_mesh_keys(&redis, &mesh).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_model_is_onboarded_from_feedback() {
    let Some(assets) = std::env::var_os("ROUTEMESH_ASSETS") else {
        eprintln!(
            "SKIP: ROUTEMESH_ASSETS not set (run scripts/fetch-router-assets.sh, or ./dev test)"
        );
        return;
    };
    let extra = sim_worker_yaml(None, "mystery-0", "mystery-model", "small", FAST).replacen(
        "workers:\n",
        "",
        1,
    );
    let yaml = mesh_yaml(&assets.to_string_lossy(), &extra).replace(
        "  router: {",
        "  feedback_memory: {onboard_after: 10}\n  router: {",
    );
    let mesh = Process::start("mesh", "up", &yaml, &[]).unwrap();
    wait_for_pool(&mesh.gateway_url(), 4).await;
    let mut client = gateway_client(&mesh.gateway_url()).await;
    let mystery = |d: &RouteDecision| {
        d.candidates
            .iter()
            .find(|c| c.model == "mystery-model")
            .cloned()
            .unwrap()
    };
    let unseen =
        "A baker makes 24 loaves a day and sells each for $3. How much does he earn in a week?";
    let before = mystery(&client.route(ask(unseen)).await.unwrap().into_inner());
    assert_eq!(before.router_knowledge, "prior");
    assert_eq!(before.quality_source, "nearest-known");

    // Users score the model's answers to word problems: all good.
    for i in 0..12 {
        let prompt = format!(
            "Tom has {} apples and buys {} more at $2 each. How many apples does he have, and what did he pay?",
            3 + i,
            2 * i + 1
        );
        let req = GenerateRequest {
            model: "mystery-model".into(),
            ..ask(&prompt)
        };
        generate_and_score(&mut client, req, 1.0).await;
    }
    eventually(
        std::time::Duration::from_secs(15),
        "the model is onboarded into the router",
        || {
            let mut c = client.clone();
            async move {
                let d = c.route(ask(unseen)).await.unwrap().into_inner();
                d.candidates
                    .iter()
                    .any(|c| c.model == "mystery-model" && c.router_knowledge == "onboarded")
            }
        },
    )
    .await;
    let after = mystery(&client.route(ask(unseen)).await.unwrap().into_inner());
    eprintln!(
        "unseen word problem: {:.3} ({}) -> {:.3} ({})",
        before.predicted_quality,
        before.quality_source,
        after.predicted_quality,
        after.quality_source
    );
    assert!(after.quality_source.starts_with("onboarded"), "{after:?}");
    assert!(
        after.predicted_quality > before.predicted_quality + 0.05,
        "perfect scores on word problems raise an unseen word problem: {before:?} -> {after:?}"
    );
    let listed = client
        .list_models(routemesh_proto::v1::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    let m = listed
        .models
        .iter()
        .find(|m| m.name == "mystery-model")
        .unwrap();
    assert_eq!(m.router_knowledge, "onboarded");
}
