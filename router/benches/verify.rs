//! Answer-verifier speed: one `AnswerVerifier::score` per recorded GSM8K answer (features, static
//! embeddings of answer and prompt, logistic), as a cascade pays it once per verified answer. Criterion
//! reports the mean; the p50/p99 of single calls over every answer is printed too (issue 17 asks for
//! <= 2 ms p99). Needs the default artifact's `verifier/` and the tokenizer (ROUTEMESH_ASSETS); uses
//! ../shared/data/routing/gsm8k.jsonl when present, else generated answers.
//!
//! `cargo bench -p routemesh-router --bench verify`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use routemesh_router::{Router, VerifyInput};

fn answers() -> Vec<(String, String, String)> {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/routing/gsm8k.jsonl");
    match std::fs::read_to_string(&data) {
        Ok(text) => text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .flat_map(|v| {
                let prompt = v["prompt"].as_str().unwrap_or_default().to_string();
                v["responses"]
                    .as_object()
                    .map(|r| {
                        r.iter()
                            .filter_map(|(m, a)| {
                                Some((m.clone(), prompt.clone(), a.as_str()?.to_string()))
                            })
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default()
            })
            .collect(),
        Err(_) => (0..512)
            .map(|i| {
                (
                    "weak".to_string(),
                    format!("Tom has {i} apples and buys {} more. How many?", i % 7),
                    format!(
                        "He has {i} + {} = <<{i}+{}={}>>{} apples.\n#### {}",
                        i % 7,
                        i % 7,
                        i + i % 7,
                        i + i % 7,
                        i + i % 7
                    ),
                )
            })
            .collect(),
    }
}

fn bench(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts/default");
    let router = match Router::load(&dir) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("SKIP verify bench: {e}");
            return;
        }
    };
    let Some(v) = router.verifier() else {
        eprintln!("SKIP verify bench: the default artifact has no verifier/");
        return;
    };
    let answers = answers();
    let input = |k: usize| {
        let (m, p, a) = &answers[k % answers.len()];
        VerifyInput {
            model: m,
            prompt: p,
            answer: a,
            predicted_quality: None,
        }
    };
    // Single-call latency over every answer, twice (the first pass warms caches).
    let mut times = Vec::with_capacity(answers.len());
    for pass in 0..2 {
        times.clear();
        for k in 0..answers.len() {
            let t = Instant::now();
            std::hint::black_box(v.score(&input(k)).unwrap());
            times.push(t.elapsed().as_secs_f64() * 1e6);
        }
        if pass == 1 {
            times.sort_by(f64::total_cmp);
            let q = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
            eprintln!(
                "verifier {} single-call latency over {} answers: p50 {:.1} us, p99 {:.1} us, max {:.1} us",
                v.id(),
                times.len(),
                q(0.5),
                q(0.99),
                q(1.0)
            );
        }
    }
    let mut i = 0;
    c.bench_function("verifier_score_gsm8k_answer", |b| {
        b.iter(|| {
            i += 1;
            v.score(&input(i)).unwrap()
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
