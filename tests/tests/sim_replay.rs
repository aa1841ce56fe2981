//! The sim backend replaying a real routing dataset through the whole mesh:
//! a known prompt gets that model's recorded answer, and its recorded score
//! travels back with the usage.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use routemesh_proto::v1::{GenerateRequest, GenerationParams};
use routemesh_tests::*;

const MIXTRAL: &str = "mistralai/Mixtral-8x7B-Instruct-v0.1";
const GPT4: &str = "gpt-4-1106-preview";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_answers_and_scores_travel_through_the_mesh() {
    let Some(data) = routing_data() else { return };
    let gsm8k = data.join("gsm8k.jsonl");
    let yaml = format!(
        "gateway:\n  listen: 127.0.0.1:0\n  http_listen: 127.0.0.1:0\n  admin_listen: 127.0.0.1:0\nworkers:\n  - id: mixtral-0\n    model: mixtral\n    tier: small\n    input_usd_per_mtok: 0.6\n    output_usd_per_mtok: 0.6\n    backend:\n      sim: {{tokens_per_second: {{median: 0}}, ttft_ms: {{median: 0}}, replay: {path}, replay_model: {MIXTRAL}}}\n  - id: gpt4-0\n    model: gpt-4\n    tier: large\n    input_usd_per_mtok: 10\n    output_usd_per_mtok: 30\n    backend:\n      sim: {{tokens_per_second: {{median: 0}}, ttft_ms: {{median: 0}}, replay: {path}, replay_model: {GPT4}}}\n",
        path = gsm8k.display()
    );
    let mesh = Process::start("replay-mesh", "up", &yaml, &[]).unwrap();
    let mut client = gateway_client(&mesh.gateway_url()).await;

    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&gsm8k)
        .unwrap()
        .lines()
        .take(25)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for row in &rows {
        for (model, dataset_model) in [("mixtral", MIXTRAL), ("gpt-4", GPT4)] {
            let req = GenerateRequest {
                model: model.into(),
                params: Some(GenerationParams {
                    max_tokens: Some(4096),
                    ..Default::default()
                }),
                ..ask(row["prompt"].as_str().unwrap())
            };
            let response = client.generate(req).await.unwrap().into_inner();
            let usage = response.usage.unwrap();
            assert_eq!(
                response.text,
                row["responses"][dataset_model].as_str().unwrap(),
                "{} on {model}",
                row["id"]
            );
            assert_eq!(
                usage.replay_quality,
                row["scores"][dataset_model].as_f64(),
                "{} on {model}",
                row["id"]
            );
            assert!(usage.simulated);
        }
    }

    // A prompt the dataset does not hold gets simulated text and no score.
    let response = client
        .generate(GenerateRequest {
            model: "gpt-4".into(),
            ..ask("not in the dataset")
        })
        .await
        .unwrap()
        .into_inner();
    assert!(response.text.starts_with("[simulated gpt-4]"));
    assert_eq!(response.usage.unwrap().replay_quality, None);
}
