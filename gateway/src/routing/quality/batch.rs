//! Micro-batching of full-path router runs: concurrent prompts, tokenized
//! once, wait in buckets of similar length (word pieces ≤ 16, ≤ 32, ≤ 64,
//! longer) and each bucket's batch runs as one encoder pass on a blocking
//! thread when it is full or its first prompt has waited `wait`, whichever
//! comes first, and a router slot is free. Each caller gets its own row.
//! A prompt whose batch has not started within `max_queue_wait` is refused
//! (the caller routes it on priors), so nothing waits without bound.
//!
//! Buckets keep padding small: one pass is padded to its longest prompt and
//! the encoder's cost is linear in padded length (docs/BENCHMARKS.md §15).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ndarray::Array2;
use routemesh_router::encoder::Pieces;
use routemesh_router::{EmbedPath, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Upper bounds, in word pieces, of the length buckets (the last takes the rest).
const BUCKETS: [usize; 4] = [16, 32, 64, usize::MAX];

/// Prompts accepted and not yet in a bucket. The batcher empties it into the
/// buckets as they arrive; the buckets themselves are bounded by
/// `max_queue_wait`, after which their prompts are refused.
const QUEUE: usize = 1024;

/// `router.batch`: micro-batching of the full path's encoder runs.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchSettings {
    /// How long the first prompt of a length bucket waits for others before
    /// its batch runs. `0s` (the default) turns batching off: each prompt is
    /// its own pass. Off by default because on both CPUs measured it gave
    /// no more learned decisions per second and added its wait at low load
    /// (docs/BENCHMARKS.md §15.2 and §19.3); `2ms` turns it on.
    #[serde(default = "default_wait", with = "humantime_serde")]
    #[schemars(schema_with = "routemesh_mesh::config_schema::duration")]
    pub wait: Duration,
    /// Prompts in one pass at most; a full bucket runs at once.
    #[serde(default = "default_max_size")]
    pub max_size: usize,
    /// Longest prompt batched, in word pieces, rounded up to a bucket's bound;
    /// longer ones run alone as soon as a router slot is free (as without
    /// batching). On the 2-core benchmark machine a pass over
    /// prompts of 33–128 pieces cost the same per prompt batched or not, so
    /// waiting for company there only adds latency (docs/BENCHMARKS.md §15).
    #[serde(default = "default_max_pieces")]
    pub max_pieces: usize,
    /// Longest a prompt waits for its batch to start (the wait, then a free
    /// router slot); beyond it the prompt is routed on priors and counted in
    /// `routemesh_router_overloaded_total`.
    #[serde(default = "default_max_queue_wait", with = "humantime_serde")]
    #[schemars(schema_with = "routemesh_mesh::config_schema::duration")]
    pub max_queue_wait: Duration,
}

fn default_wait() -> Duration {
    Duration::ZERO
}
fn default_max_size() -> usize {
    16
}
fn default_max_pieces() -> usize {
    32
}
fn default_max_queue_wait() -> Duration {
    Duration::from_millis(4)
}

impl Default for BatchSettings {
    fn default() -> Self {
        Self {
            wait: default_wait(),
            max_size: default_max_size(),
            max_pieces: default_max_pieces(),
            max_queue_wait: default_max_queue_wait(),
        }
    }
}

impl BatchSettings {
    /// Whether prompts are batched at all (a batch of one is today's pass).
    pub fn enabled(&self) -> bool {
        !self.wait.is_zero() && self.max_size > 1
    }

    /// What `check-config` refuses: the key at fault and why.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.max_size == 0 || self.max_size > 64 {
            return Err(("max_size", format!("{} must be in [1, 64]", self.max_size)));
        }
        if self.max_pieces == 0 {
            return Err(("max_pieces", "must be at least 1".into()));
        }
        if self.wait > Duration::from_millis(100) {
            return Err((
                "wait",
                format!(
                    "{:?} is longer than 100ms: every full-path decision would wait that long at low load",
                    self.wait
                ),
            ));
        }
        if self.enabled() && self.max_queue_wait < self.wait {
            return Err((
                "max_queue_wait",
                format!(
                    "{:?} is shorter than wait ({:?}): a prompt alone would always be routed on priors",
                    self.max_queue_wait, self.wait
                ),
            ));
        }
        if self.max_queue_wait > Duration::from_secs(1) {
            return Err((
                "max_queue_wait",
                format!("{:?} is longer than 1s", self.max_queue_wait),
            ));
        }
        Ok(())
    }
}

/// One prompt's share of a pass.
#[derive(Debug)]
pub(crate) struct Row {
    /// `[1, 384]`: the prompt's embedding.
    pub embedding: Array2<f32>,
    /// Predicted quality per artifact model.
    pub scores: Vec<f64>,
    /// Prompts in the pass it ran in.
    pub batch_rows: usize,
    /// From the pass's start to this row's answer.
    pub took: Duration,
}

/// Why a prompt got no row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BatchError {
    #[error("no router slot within the batch's queue wait")]
    Overloaded,
    #[error("the router batcher is stopped")]
    Stopped,
    #[error("router pass failed: {0}")]
    Failed(String),
}

/// What a caller runs with its row, on the pass's blocking thread (so that
/// work on the row stays off the async threads), or with the refusal.
type Finish = Box<dyn FnOnce(Result<Row, BatchError>) + Send>;

struct Job {
    pieces: Pieces,
    arrived: Instant,
    finish: Finish,
}

/// The batcher: a task that owns the buckets, stopped by [`Batcher::shutdown`]
/// or when the batcher is dropped.
pub(crate) struct Batcher {
    queue: mpsc::Sender<Job>,
    stop: CancellationToken,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("stopped", &self.stop.is_cancelled())
            .finish()
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Batcher {
    /// Starts the batching task (on the current tokio runtime). Passes take
    /// one of `slots` each, shared with the router's other runs.
    pub(crate) fn start(
        router: Arc<Router>,
        slots: Arc<Semaphore>,
        settings: &BatchSettings,
    ) -> Self {
        let (queue, arrivals) = mpsc::channel(QUEUE);
        let stop = CancellationToken::new();
        let task = tokio::spawn(
            Buckets {
                router,
                slots,
                wait: settings.wait,
                max_size: settings.max_size.max(1),
                max_pieces: settings.max_pieces,
                max_queue_wait: settings.max_queue_wait.max(settings.wait),
                buckets: BUCKETS.map(|_| VecDeque::new()),
                running: JoinSet::new(),
            }
            .run(arrivals, stop.clone()),
        );
        Self {
            queue,
            stop,
            task: std::sync::Mutex::new(Some(task)),
        }
    }

    /// Queues `pieces`; `finish` gets its row (on a blocking thread) or the
    /// reason it got none. Never waits: a full queue or a stopped batcher
    /// refuses at once (through `finish` as well).
    pub(crate) fn submit(&self, pieces: Pieces, finish: Finish) {
        let job = Job {
            pieces,
            arrived: Instant::now(),
            finish,
        };
        if let Err(e) = self.queue.try_send(job) {
            let (job, why) = match e {
                mpsc::error::TrySendError::Full(job) => (job, BatchError::Overloaded),
                mpsc::error::TrySendError::Closed(job) => (job, BatchError::Stopped),
            };
            (job.finish)(Err(why));
        }
    }

    /// Runs `pieces` in a batch and `finish` on its row there: the row's
    /// result, or why there was none.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        pieces: Pieces,
        finish: impl FnOnce(Row) -> T + Send + 'static,
    ) -> Result<T, BatchError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(
            pieces,
            Box::new(move |row| {
                let _ = tx.send(row.map(finish));
            }),
        );
        // Every job is answered, run or refused; a dropped one means the task ended.
        rx.await.unwrap_or(Err(BatchError::Stopped))
    }

    /// Stops taking prompts, refuses those still waiting for a batch, lets the
    /// passes already running answer theirs, and returns when all is done.
    pub(crate) async fn shutdown(&self) {
        self.stop.cancel();
        let task = self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// The batching task's state.
struct Buckets {
    router: Arc<Router>,
    slots: Arc<Semaphore>,
    wait: Duration,
    max_size: usize,
    /// Buckets of longer prompts run each prompt alone, at once.
    max_pieces: usize,
    max_queue_wait: Duration,
    /// Waiting prompts by length bucket, oldest first.
    buckets: [VecDeque<Job>; BUCKETS.len()],
    /// Passes on blocking threads, awaited at shutdown.
    running: JoinSet<()>,
}

impl Buckets {
    async fn run(mut self, mut arrivals: mpsc::Receiver<Job>, stop: CancellationToken) {
        loop {
            let now = Instant::now();
            // Start what can start before refusing anything: a prompt is
            // refused for want of a slot, never because this task ran late.
            while let Some(bucket) = self.oldest_ready(now) {
                match self.slots.clone().try_acquire_owned() {
                    Ok(slot) => self.dispatch(bucket, slot),
                    Err(_) => break,
                }
            }
            self.refuse_expired(now);
            let ready = self.oldest_ready(now);
            let wake = self.next_wake(now);
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                permit = self.slots.clone().acquire_owned(), if ready.is_some() => match (permit, ready) {
                    (Ok(permit), Some(bucket)) => self.dispatch(bucket, permit),
                    // The slots are never closed; if they were, no pass could run.
                    _ => break,
                },
                job = arrivals.recv() => match job {
                    Some(job) => self.buckets[bucket_of(job.pieces.len())].push_back(job),
                    None => break,
                },
                Some(_) = self.running.join_next(), if !self.running.is_empty() => {}
                () = sleep_until(wake), if wake.is_some() => {}
            }
        }
        // Nothing more gets in; what is waiting is refused, what runs finishes.
        arrivals.close();
        while let Ok(job) = arrivals.try_recv() {
            (job.finish)(Err(BatchError::Stopped));
        }
        for bucket in &mut self.buckets {
            for job in bucket.drain(..) {
                (job.finish)(Err(BatchError::Stopped));
            }
        }
        while self.running.join_next().await.is_some() {}
    }

    /// Prompts whose batch did not start in time: routed on priors.
    fn refuse_expired(&mut self, now: Instant) {
        for bucket in &mut self.buckets {
            while bucket
                .front()
                .is_some_and(|job| now >= job.arrived + self.max_queue_wait)
            {
                if let Some(job) = bucket.pop_front() {
                    (job.finish)(Err(BatchError::Overloaded));
                }
            }
        }
    }

    /// The bucket to run next: of those full or waited out, the one whose
    /// first prompt came first.
    fn oldest_ready(&self, now: Instant) -> Option<usize> {
        self.buckets
            .iter()
            .enumerate()
            .filter_map(|(i, b)| Some((i, b.front()?.arrived, b.len())))
            .filter(|&(i, first, len)| len >= self.batch_size(i) || now >= first + self.wait)
            .min_by_key(|&(_, first, _)| first)
            .map(|(i, _, _)| i)
    }

    /// Prompts per pass in `bucket`: one where batching does not pay.
    fn batch_size(&self, bucket: usize) -> usize {
        let shortest = bucket.checked_sub(1).map_or(1, |b| BUCKETS[b] + 1);
        if shortest > self.max_pieces {
            1
        } else {
            self.max_size
        }
    }

    /// When a bucket's wait ends or its first prompt expires next.
    fn next_wake(&self, now: Instant) -> Option<Instant> {
        self.buckets
            .iter()
            .filter_map(|b| b.front().map(|j| j.arrived))
            .flat_map(|first| {
                let waited = first + self.wait;
                [
                    (waited > now).then_some(waited),
                    Some(first + self.max_queue_wait),
                ]
            })
            .flatten()
            .min()
    }

    /// Runs up to `max_size` prompts of `bucket` as one pass.
    fn dispatch(&mut self, bucket: usize, slot: tokio::sync::OwnedSemaphorePermit) {
        let take = self.buckets[bucket].len().min(self.batch_size(bucket));
        let jobs: Vec<Job> = self.buckets[bucket].drain(..take).collect();
        let router = self.router.clone();
        self.running.spawn_blocking(move || {
            let _slot = slot;
            let started = Instant::now();
            let batch: Vec<&Pieces> = jobs.iter().map(|j| &j.pieces).collect();
            let rows = batch.len();
            let predicted = router.predict_pieces(&batch);
            crate::metrics::router_batch();
            match predicted {
                Ok((embeddings, scores)) => {
                    for ((job, scores), embedding) in
                        jobs.into_iter().zip(scores).zip(embeddings.rows())
                    {
                        let row = Row {
                            embedding: embedding.insert_axis(ndarray::Axis(0)).to_owned(),
                            scores,
                            batch_rows: rows,
                            took: started.elapsed(),
                        };
                        (job.finish)(Ok(row));
                    }
                }
                Err(e) => {
                    let why = BatchError::Failed(e.to_string());
                    for job in jobs {
                        (job.finish)(Err(why.clone()));
                    }
                }
            }
        });
    }
}

/// How a prompt sent through the batcher came out.
pub(crate) enum Batched {
    Routed(super::RoutedPrompt),
    /// Refused or failed (counted and logged): routed on priors.
    Priors,
    /// Not tokenized for the full path (the encoder did not load): the
    /// unbatched run decides what to do (the fast path, when there is one).
    Unbatched,
}

/// The full path's prediction for `prompt` through `batcher`, the online
/// models' included, as the unbatched run gives it.
pub(crate) async fn predict(
    batcher: &Batcher,
    router: &Arc<Router>,
    prompt: &str,
    online: Arc<HashMap<String, Arc<super::OnlineModel>>>,
) -> Batched {
    // Tokenized once, here; a long prompt takes long enough to keep it off the async threads.
    let text = prompt.to_string();
    let tokenizer = router.clone();
    let pieces = match tokio::task::spawn_blocking(move || tokenizer.full_pieces(&text)).await {
        Ok(Ok(pieces)) => pieces,
        Ok(Err(_)) | Err(_) => return Batched::Unbatched,
    };
    let router = router.clone();
    let run = batcher
        .run(pieces, move |row: Row| {
            let routed = super::routed_prompt(
                &router,
                &online,
                EmbedPath::Full,
                &row.embedding,
                row.scores,
            );
            (row.took, row.batch_rows, routed)
        })
        .await;
    match run {
        Ok((took, batch_rows, routed)) => {
            tracing::trace!(
                batch_rows,
                took_us = took.as_micros() as u64,
                "full-path prediction batched"
            );
            crate::metrics::router_inference(took, EmbedPath::Full.as_str());
            Batched::Routed(routed)
        }
        Err(BatchError::Overloaded) => {
            crate::metrics::router_overloaded();
            Batched::Priors
        }
        Err(BatchError::Stopped) => Batched::Priors,
        Err(e @ BatchError::Failed(_)) => {
            tracing::warn!(error = %e, "router prediction failed; using priors for this request");
            Batched::Priors
        }
    }
}

fn bucket_of(pieces: usize) -> usize {
    BUCKETS
        .iter()
        .position(|&max| pieces <= max)
        .unwrap_or(BUCKETS.len() - 1)
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at.into()).await;
    }
}

#[cfg(test)]
#[path = "batch_tests.rs"]
mod tests;
