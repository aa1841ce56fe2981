//! The batcher with the real router (default artifact, full path): when a
//! batch closes, that each caller gets its own prompt's row, refusals under
//! overload and at shutdown. Skips without the encoder assets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use routemesh_router::RouterConfig;
use routemesh_router::encoder::AssetPaths;

use super::*;

/// Far beyond any test: a batch that must close on size never closes on time.
const LONG: Duration = Duration::from_secs(3600);

fn full_path_router() -> Option<Arc<Router>> {
    if let Err(e) = AssetPaths::from_env().check() {
        eprintln!("SKIP: {e}");
        return None;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../router/artifacts/default");
    let cfg = RouterConfig {
        fast_path: false,
        ..RouterConfig::default()
    };
    Some(Arc::new(Router::load_with(&dir, &cfg).unwrap()))
}

fn settings(wait: Duration, max_size: usize, max_queue_wait: Duration) -> BatchSettings {
    BatchSettings {
        wait,
        max_size,
        max_pieces: usize::MAX,
        max_queue_wait,
    }
}

/// Runs `prompt` through `batcher`: its row's scores and batch size.
async fn scored(
    batcher: &Batcher,
    router: &Router,
    prompt: &str,
) -> Result<(Vec<f64>, usize), BatchError> {
    let pieces = router.full_pieces(prompt).unwrap();
    batcher
        .run(pieces, |row| (row.scores, row.batch_rows))
        .await
}

const SHORT: [&str; 4] = [
    "How do I bake bread?",
    "Prove that sqrt(2) is irrational.",
    "What is the capital of France?",
    "Write a haiku about the sea.",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_bucket_runs_at_once_and_each_caller_gets_its_own_scores() {
    let Some(router) = full_path_router() else {
        return;
    };
    let slots = Arc::new(Semaphore::new(2));
    let batcher = Batcher::start(router.clone(), slots, &settings(LONG, 4, LONG));
    let rows = tokio::join!(
        scored(&batcher, &router, SHORT[0]),
        scored(&batcher, &router, SHORT[1]),
        scored(&batcher, &router, SHORT[2]),
        scored(&batcher, &router, SHORT[3]),
    );
    for (prompt, row) in SHORT.iter().zip([rows.0, rows.1, rows.2, rows.3]) {
        let (scores, batch_rows) = row.unwrap();
        // Only the fourth prompt could close the batch: the wait is an hour.
        assert_eq!(batch_rows, 4);
        let (_, _, alone) = router.predict_on(EmbedPath::Full, &[prompt]).unwrap();
        assert_eq!(scores.len(), alone[0].len());
        for (b, a) in scores.iter().zip(&alone[0]) {
            assert!((b - a).abs() < 1e-3, "{prompt}: batched {b} alone {a}");
        }
    }
    batcher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_prompt_runs_when_its_wait_ends() {
    let Some(router) = full_path_router() else {
        return;
    };
    let wait = Duration::from_millis(30);
    let batcher = Batcher::start(
        router.clone(),
        Arc::new(Semaphore::new(2)),
        &settings(wait, 8, LONG),
    );
    let started = Instant::now();
    let (_, batch_rows) = scored(&batcher, &router, SHORT[0]).await.unwrap();
    assert_eq!(batch_rows, 1);
    assert!(started.elapsed() >= wait, "ran before its wait ended");
    batcher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_of_different_lengths_run_in_separate_batches() {
    let Some(router) = full_path_router() else {
        return;
    };
    let batcher = Batcher::start(
        router.clone(),
        Arc::new(Semaphore::new(2)),
        &settings(Duration::from_millis(30), 2, LONG),
    );
    let long = format!(
        "{} What is the capital of France?",
        "Some context. ".repeat(30)
    );
    assert!(router.full_pieces(&long).unwrap().len() > 64);
    let (short, long) = tokio::join!(
        scored(&batcher, &router, SHORT[0]),
        scored(&batcher, &router, &long)
    );
    // Two prompts would fill a batch of two, but not across buckets.
    assert_eq!(short.unwrap().1, 1);
    assert_eq!(long.unwrap().1, 1);
    batcher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_longer_than_max_pieces_runs_alone_without_waiting() {
    let Some(router) = full_path_router() else {
        return;
    };
    let batcher = Batcher::start(
        router.clone(),
        Arc::new(Semaphore::new(2)),
        &BatchSettings {
            max_pieces: 32,
            ..settings(LONG, 8, LONG)
        },
    );
    let long = format!(
        "{} What is the capital of France?",
        "Some context. ".repeat(10)
    );
    assert!((33..=64).contains(&router.full_pieces(&long).unwrap().len()));
    // With an hour's wait and a batch of eight, only running alone at once answers.
    let (_, batch_rows) = scored(&batcher, &router, &long).await.unwrap();
    assert_eq!(batch_rows, 1);
    batcher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_whose_batch_cannot_start_in_time_is_refused() {
    let Some(router) = full_path_router() else {
        return;
    };
    // Every router slot is busy for the whole test.
    let slots = Arc::new(Semaphore::new(1));
    let _busy = slots.clone().acquire_owned().await.unwrap();
    let batcher = Batcher::start(
        router.clone(),
        slots,
        &settings(Duration::from_millis(1), 8, Duration::from_millis(20)),
    );
    let started = Instant::now();
    let refused = scored(&batcher, &router, SHORT[0]).await;
    assert_eq!(refused.unwrap_err(), BatchError::Overloaded);
    assert!(started.elapsed() >= Duration::from_millis(20));
    batcher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_refuses_waiting_prompts_and_later_ones_and_lets_running_passes_answer() {
    let Some(router) = full_path_router() else {
        return;
    };
    let answer = |prompt: &str| {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let finish: Finish = Box::new(move |row: Result<Row, BatchError>| {
            let _ = tx.send(row.map(|r| r.batch_rows));
        });
        (router.full_pieces(prompt).unwrap(), finish, rx)
    };
    // Prompts waiting for company (an hour's wait, a batch of eight) when the stop comes.
    let batcher = Batcher::start(
        router.clone(),
        Arc::new(Semaphore::new(1)),
        &settings(LONG, 8, LONG),
    );
    let waiting: Vec<_> = SHORT[..3]
        .iter()
        .map(|p| {
            let (pieces, finish, rx) = answer(p);
            batcher.submit(pieces, finish);
            rx
        })
        .collect();
    // A pass that has started when the stop comes: a batch of one starts at once.
    let slots = Arc::new(Semaphore::new(1));
    let running = Batcher::start(router.clone(), slots.clone(), &settings(LONG, 1, LONG));
    let (pieces, finish, started) = answer(SHORT[3]);
    running.submit(pieces, finish);
    // It has started once it holds the only slot.
    while slots.available_permits() > 0 {
        tokio::task::yield_now().await;
    }
    tokio::join!(batcher.shutdown(), running.shutdown());
    for rx in waiting {
        assert_eq!(rx.await.unwrap(), Err(BatchError::Stopped));
    }
    assert_eq!(started.await.unwrap(), Ok(1));
    assert_eq!(
        scored(&batcher, &router, SHORT[0]).await.unwrap_err(),
        BatchError::Stopped
    );
}

#[test]
fn settings_are_checked_and_zero_wait_turns_batching_off() {
    // Off unless a wait is set (it did not pay on the CPUs measured).
    assert!(!BatchSettings::default().enabled());
    assert!(BatchSettings::default().check().is_ok());
    let on: BatchSettings = serde_json::from_str(r#"{"wait": "2ms"}"#).unwrap();
    assert!(on.enabled());
    assert!(on.check().is_ok());
    let off: BatchSettings = serde_json::from_str(r#"{"wait": "0s"}"#).unwrap();
    assert!(!off.enabled());
    assert!(off.check().is_ok());
    let one: BatchSettings = serde_json::from_str(r#"{"max_size": 1}"#).unwrap();
    assert!(!one.enabled());
    for (bad, key) in [
        (r#"{"max_size": 0}"#, "max_size"),
        (r#"{"max_size": 65}"#, "max_size"),
        (r#"{"wait": "200ms"}"#, "wait"),
        (
            r#"{"wait": "5ms", "max_queue_wait": "2ms"}"#,
            "max_queue_wait",
        ),
        (r#"{"max_queue_wait": "2s"}"#, "max_queue_wait"),
        (r#"{"max_pieces": 0}"#, "max_pieces"),
    ] {
        let s: BatchSettings = serde_json::from_str(bad).unwrap();
        assert_eq!(s.check().unwrap_err().0, key, "{bad}");
    }
    assert!(serde_json::from_str::<BatchSettings>(r#"{"size": 4}"#).is_err());
}
