//! Recording off the request path: the request path only does a `try_send`
//! into a bounded channel; a background task collects a flush interval's
//! records and writes them aggregated (one pipelined round trip, one
//! increment per distinct field of a (worker, model, tenant, slot) series
//! or spend period however many records share it, so Redis commands per
//! request fall as the rate rises), buffers them while the shared store is
//! down (bounded, oldest dropped and counted), and refreshes the snapshot
//! the router reads. Local observations are always kept too, so routing goes
//! on from them when the shared store is unreachable.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::record::{FeedbackEvent, RequestRecord, now_ms};
use crate::store::MemoryStore;
use crate::telemetry::{ReadCache, Snapshot, Telemetry};

#[derive(Debug, Clone)]
pub struct RecorderConfig {
    /// Records one store write aggregates at most: a flush comes early when
    /// this many are waiting (bounds the memory they hold).
    pub batch_max: usize,
    /// Longest a record waits before it is written.
    pub flush_interval: Duration,
    /// Records kept while the shared store is down; beyond it the oldest go.
    pub buffer_max: usize,
    /// Records waiting for the background task; beyond it new ones are dropped.
    pub channel_capacity: usize,
    /// How often the snapshot is re-read.
    pub snapshot_interval: Duration,
    /// Seconds of history the snapshot aggregates.
    pub window_secs: u32,
    pub feedback_days: u32,
}

impl Default for RecorderConfig {
    fn default() -> Self {
        Self {
            batch_max: 50_000,
            flush_interval: Duration::from_secs(1),
            buffer_max: 100_000,
            channel_capacity: 65_536,
            snapshot_interval: Duration::from_secs(1),
            window_secs: 120,
            feedback_days: 7,
        }
    }
}

/// Counters about the recorder itself (exported as metrics).
#[derive(Debug, Default, Serialize)]
pub struct RecorderStats {
    pub recorded: AtomicU64,
    /// Dropped on the request path: the channel was full.
    pub dropped_channel_full: AtomicU64,
    /// Dropped from the outage buffer: the shared store was down too long.
    pub dropped_buffer_full: AtomicU64,
    /// Writes to the shared store (each one round trip, or two with the index).
    pub shared_writes: AtomicU64,
    pub shared_write_errors: AtomicU64,
    pub shared_snapshot_errors: AtomicU64,
    /// Records waiting in the outage buffer now.
    pub buffered: AtomicU64,
}

enum Event {
    Request(RequestRecord),
    Feedback(FeedbackEvent),
}

/// The live snapshot and where it came from.
#[derive(Debug, Clone)]
pub struct LiveSnapshot {
    pub snapshot: Arc<Snapshot>,
    /// "shared" (every replica, from the store) or "local" (this process only).
    pub source: &'static str,
}

#[derive(Debug)]
pub struct Recorder {
    tx: mpsc::Sender<Event>,
    /// Where reports read from: the shared store, else this process's.
    reports: Telemetry,
    reports_shared: bool,
    live: Arc<RwLock<LiveSnapshot>>,
    pub stats: Arc<RecorderStats>,
    stop: CancellationToken,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Recorder {
    /// Starts the background task. `shared` is the store every replica sees
    /// (Redis); `None` keeps telemetry in this process.
    pub fn start(shared: Option<Telemetry>, config: RecorderConfig) -> Self {
        let (tx, rx) = mpsc::channel(config.channel_capacity.max(1));
        let live = Arc::new(RwLock::new(LiveSnapshot {
            snapshot: Arc::new(Snapshot::default()),
            source: "local",
        }));
        let stats = Arc::new(RecorderStats::default());
        let stop = CancellationToken::new();
        let local = Telemetry::new(Arc::new(MemoryStore::new()));
        let reports_shared = shared.is_some();
        let reports = shared.clone().unwrap_or_else(|| local.clone());
        let worker = Flusher {
            local,
            shared,
            config,
            live: live.clone(),
            stats: stats.clone(),
            pending: Vec::new(),
            pending_feedback: Vec::new(),
            outage: VecDeque::new(),
            outage_feedback: VecDeque::new(),
            retry_at: None,
            backoff: Duration::from_millis(100),
            read_cache: ReadCache::default(),
        };
        let task = tokio::spawn(worker.run(rx, stop.clone()));
        Self {
            tx,
            reports,
            reports_shared,
            live,
            stats,
            stop,
            task: std::sync::Mutex::new(Some(task)),
        }
    }

    /// Records a request; never waits. Dropped (and counted) if the
    /// background task is this far behind.
    pub fn record(&self, record: RequestRecord) {
        match self.tx.try_send(Event::Request(record)) {
            Ok(()) => {
                self.stats.recorded.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.stats
                    .dropped_channel_full
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Queues a feedback score; false when it was dropped (the channel is
    /// full), so the caller does not count a score that was never recorded.
    pub fn feedback(&self, event: FeedbackEvent) -> bool {
        if self.tx.try_send(Event::Feedback(event)).is_err() {
            self.stats
                .dropped_channel_full
                .fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// The telemetry that reports (spend, snapshots on demand) read.
    pub fn reports(&self) -> &Telemetry {
        &self.reports
    }

    /// Where [`Self::reports`] reads: "shared" (the store every replica
    /// writes) or "local" (this process's own records).
    pub fn reports_source(&self) -> &'static str {
        if self.reports_shared {
            "shared"
        } else {
            "local"
        }
    }

    /// The latest snapshot; cheap.
    pub fn snapshot(&self) -> LiveSnapshot {
        match self.live.read() {
            Ok(l) => l.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Flushes what is pending (bounded by a short grace) and stops.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

struct Flusher {
    local: Telemetry,
    shared: Option<Telemetry>,
    config: RecorderConfig,
    live: Arc<RwLock<LiveSnapshot>>,
    stats: Arc<RecorderStats>,
    pending: Vec<RequestRecord>,
    pending_feedback: Vec<FeedbackEvent>,
    outage: VecDeque<RequestRecord>,
    outage_feedback: VecDeque<FeedbackEvent>,
    retry_at: Option<Instant>,
    backoff: Duration,
    /// What the last shared snapshot read and need not read again.
    read_cache: ReadCache,
}

impl Flusher {
    async fn run(mut self, mut rx: mpsc::Receiver<Event>, stop: CancellationToken) {
        let mut flush = tokio::time::interval(self.config.flush_interval);
        let mut refresh = tokio::time::interval(self.config.snapshot_interval);
        for t in [&mut flush, &mut refresh] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                event = rx.recv() => match event {
                    Some(Event::Request(r)) => {
                        self.pending.push(r);
                        if self.pending.len() >= self.config.batch_max {
                            self.flush().await;
                        }
                    }
                    Some(Event::Feedback(f)) => self.pending_feedback.push(f),
                    None => break,
                },
                _ = flush.tick() => self.flush().await,
                _ = refresh.tick() => self.refresh().await,
            }
        }
        // Drain what is already queued, then one last bounded flush.
        while let Ok(event) = rx.try_recv() {
            match event {
                Event::Request(r) => self.pending.push(r),
                Event::Feedback(f) => self.pending_feedback.push(f),
            }
        }
        self.retry_at = None;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.flush()).await;
    }

    async fn flush(&mut self) {
        if self.pending.is_empty()
            && self.pending_feedback.is_empty()
            && self.outage.is_empty()
            && self.outage_feedback.is_empty()
        {
            return;
        }
        let batch = std::mem::take(&mut self.pending);
        let feedback = std::mem::take(&mut self.pending_feedback);
        // The local store is memory: it cannot fail.
        let _ = self.local.record(&batch).await;
        let _ = self.local.record_feedback(&feedback).await;
        let Some(shared) = self.shared.clone() else {
            return;
        };
        self.outage.extend(batch);
        self.outage_feedback.extend(feedback);
        self.trim_outage();
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        while !self.outage.is_empty() || !self.outage_feedback.is_empty() {
            let n = self.outage.len().min(self.config.batch_max);
            let chunk: Vec<RequestRecord> = self.outage.iter().take(n).cloned().collect();
            let fb: Vec<FeedbackEvent> = self.outage_feedback.iter().cloned().collect();
            self.stats.shared_writes.fetch_add(1, Ordering::Relaxed);
            let result = async {
                if !chunk.is_empty() {
                    shared.record(&chunk).await?;
                }
                if !fb.is_empty() {
                    shared.record_feedback(&fb).await?;
                }
                Ok::<_, crate::store::StoreError>(())
            }
            .await;
            match result {
                Ok(()) => {
                    self.outage.drain(..n);
                    self.outage_feedback.clear();
                    if self.retry_at.take().is_some() {
                        tracing::info!("telemetry store reachable again; buffered records written");
                    }
                    self.backoff = Duration::from_millis(100);
                }
                Err(e) => {
                    self.stats
                        .shared_write_errors
                        .fetch_add(1, Ordering::Relaxed);
                    if self.retry_at.is_none() {
                        tracing::warn!(error = %e, "telemetry store unreachable; buffering records and routing on local observations");
                    }
                    self.retry_at = Some(Instant::now() + self.backoff);
                    self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
                    break;
                }
            }
        }
        self.stats
            .buffered
            .store(self.outage.len() as u64, Ordering::Relaxed);
    }

    fn trim_outage(&mut self) {
        let over = self.outage.len().saturating_sub(self.config.buffer_max);
        if over > 0 {
            self.outage.drain(..over);
            self.stats
                .dropped_buffer_full
                .fetch_add(over as u64, Ordering::Relaxed);
        }
        let over = self
            .outage_feedback
            .len()
            .saturating_sub(self.config.buffer_max);
        self.outage_feedback.drain(..over);
    }

    async fn refresh(&mut self) {
        let now = now_ms();
        let (window, days) = (self.config.window_secs, self.config.feedback_days);
        let shared = match &self.shared {
            Some(shared) if self.retry_at.is_none() => {
                match shared
                    .snapshot_cached(now, window, days, &mut self.read_cache)
                    .await
                {
                    Ok(s) => Some(s),
                    Err(e) => {
                        self.stats
                            .shared_snapshot_errors
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(error = %e, "telemetry snapshot from the shared store failed; using local observations");
                        None
                    }
                }
            }
            _ => None,
        };
        let live = match shared {
            Some(s) => LiveSnapshot {
                snapshot: Arc::new(s),
                source: "shared",
            },
            None => match self.local.snapshot(now, window, days).await {
                Ok(s) => LiveSnapshot {
                    snapshot: Arc::new(s),
                    source: "local",
                },
                Err(_) => return,
            },
        };
        if let Ok(mut l) = self.live.write() {
            *l = live;
        }
    }
}
