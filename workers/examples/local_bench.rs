//! Speed and golden output of the local backend, for docs/BENCHMARKS.md and
//! `tests/bench/local_backend.sh`: prints JSON comparable with
//! `tests/bench/llama_cpp_reference.py`.
//!
//!     cargo run --release -p routemesh-worker --example local_bench -- MODEL.gguf [THREADS] [DECODE_TOKENS]

use routemesh_proto::v1::{ChatMessage, GenerationParams};
use routemesh_worker::backend::{Backend, GenerateInput, LocalBackend, LocalConfig};

fn user(text: &str) -> Vec<ChatMessage> {
    vec![ChatMessage {
        role: "user".into(),
        content: text.into(),
        ..Default::default()
    }]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let model = args
        .get(1)
        .ok_or("usage: local_bench MODEL.gguf [THREADS] [DECODE_TOKENS]")?;
    let threads = args
        .get(2)
        .map_or(Ok(2), |t| t.parse())
        .map_err(|e| format!("{e}"))?;
    let decode: usize = args
        .get(3)
        .map_or(Ok(128), |t| t.parse())
        .map_err(|e| format!("{e}"))?;
    let config = LocalConfig {
        threads: Some(threads),
        ..LocalConfig::new(model)
    };
    let backend = LocalBackend::load(&config, 1).await?;

    let golden = user("What is the capital of France?");
    let done = backend
        .generate(GenerateInput {
            request_id: "bench".into(),
            messages: golden.clone(),
            params: GenerationParams {
                max_tokens: Some(48),
                temperature: Some(0.0),
                ..Default::default()
            },
            want_logprobs: false,
            user: String::new(),
        })
        .await
        .map_err(|e| e.to_string())?;

    // A 32-token prompt (with the template), the same as llama.cpp's run.
    let prompt32 = vec![
        ChatMessage {
            role: "system".into(),
            content: "You are a helpful assistant.".into(),
            ..Default::default()
        },
        ChatMessage {
            role: "user".into(),
            content: "Please tell me a short story about a quick brown fox.".into(),
            ..Default::default()
        },
    ];
    let n_prompt = backend.prompt_tokens(&prompt32)?.len();
    let measure = |tokens| tokio::task::block_in_place(|| backend.measure(&prompt32, tokens));
    let _ = measure(8)?; // warm-up
    let mut runs = Vec::new();
    for _ in 0..5 {
        runs.push(measure(decode)?);
    }
    let mut ttft: Vec<f64> = runs.iter().map(|r| r.0.as_secs_f64() * 1000.0).collect();
    let mut tps: Vec<f64> = runs.iter().map(|r| r.1).collect();
    ttft.sort_by(f64::total_cmp);
    tps.sort_by(f64::total_cmp);
    let json = serde_json::json!({
        "engine": "routemesh local backend",
        "threads": threads,
        "golden_prompt_tokens": backend.prompt_tokens(&golden)?,
        "golden_greedy": done.text,
        "timing_prompt_tokens": n_prompt,
        "ttft_ms_median": (ttft[2] * 10.0).round() / 10.0,
        "decode_tokens_per_s_median": (tps[2] * 10.0).round() / 10.0,
        "ttft_ms_best": (ttft[0] * 10.0).round() / 10.0,
        "decode_tokens_per_s_best": (tps[4] * 10.0).round() / 10.0,
        "runs": runs.iter().map(|r| [(r.0.as_secs_f64() * 1e4).round() / 10.0, (r.1 * 10.0).round() / 10.0]).collect::<Vec<_>>(),
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?
    );
    Ok(())
}
