//! The pool's load checks on a thread and runtime of their own, so that a
//! gateway saturated by request traffic cannot starve them: on the shared
//! runtime a load check's reply waits behind every queued request task, and
//! a healthy worker would be taken out because the *gateway* is overloaded.
//!
//! The thread runs a current-thread Tokio runtime that drives only the load
//! checks and their own connections to the workers (one HTTP/2 connection per
//! network worker, apart from the request traffic's, so a connection full of
//! request streams cannot delay a check either). The operating system gives
//! this thread its share of the cores like any other, which is the budget the
//! checks need: a few small RPCs per interval.

use std::future::Future;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// The thread the load checks run on. Dropping it stops the thread (its
/// tasks are dropped with its runtime).
#[derive(Debug)]
pub(crate) struct HealthThread {
    handle: Handle,
    stop: CancellationToken,
}

impl HealthThread {
    pub(crate) fn start() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("routemesh-health")
            .build()?;
        let handle = runtime.handle().clone();
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name("routemesh-health".into())
            // Drives every task spawned on `handle` until stopped; the
            // runtime (and whatever it still holds) is dropped on this thread.
            .spawn(move || runtime.block_on(stopped.cancelled()))?;
        Ok(Self { handle, stop })
    }

    /// Runs `task` on the health thread; the result is awaited from any
    /// runtime. `None` if the thread has stopped.
    pub(crate) async fn run<F>(&self, task: F) -> Option<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(task).await.ok()
    }

    /// Spawns a task that lives as long as the thread (or until it returns).
    pub(crate) fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(task)
    }

    /// Enters the health runtime, so that what is created meanwhile (a
    /// channel's connection task) is driven by it.
    pub(crate) fn enter(&self) -> tokio::runtime::EnterGuard<'_> {
        self.handle.enter()
    }
}

impl Drop for HealthThread {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use routemesh_mesh::MemoryRegistry;
    use routemesh_worker::{WorkerConfig, start_worker};

    use super::*;
    use crate::pool::testing::network_pool;

    #[tokio::test]
    async fn runs_work_on_its_own_thread_and_stops_when_dropped() {
        let health = HealthThread::start().expect("health thread");
        let name = health
            .run(async { std::thread::current().name().map(str::to_string) })
            .await
            .flatten();
        assert_eq!(name.as_deref(), Some("routemesh-health"));
        let forever = health.spawn(std::future::pending::<()>());
        drop(health);
        // The runtime goes with the thread, cancelling what it still held.
        let ended = forever.await;
        assert!(ended.is_err_and(|e| e.is_cancelled()));
    }

    #[test]
    fn a_starved_gateway_runtime_does_not_take_a_healthy_worker_out() {
        // The worker in a runtime of its own, as if in another process.
        let worker_runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("worker runtime");
        let config: WorkerConfig = serde_norway::from_str(
            "id: w\nmodel: m\ntier: small\nlisten: 127.0.0.1:0\ndrain_grace: 1s\nbackend: {sim: {ttft_ms: {median: 0}, tokens_per_second: {median: 0}, output_tokens: {median: 3}}}\n",
        )
        .expect("worker config");
        let registry = Arc::new(MemoryRegistry::default());
        let worker = worker_runtime
            .block_on(start_worker(config, registry.clone()))
            .expect("worker");

        // The gateway's runtime has one thread, which request traffic is
        // about to hog.
        let gateway_runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("gateway runtime");
        gateway_runtime.block_on(async {
            let pool = network_pool(registry, Duration::from_millis(200)).await;
            let stop = tokio_util::sync::CancellationToken::new();
            let maintenance = pool.spawn_maintenance(
                Duration::from_secs(60),
                Duration::from_millis(50),
                stop.clone(),
            );
            let worker = pool.snapshot()[0].clone();
            assert!(worker.healthy() && worker.last_load().is_some());

            // Saturated: no task of this runtime runs for a second. The
            // checks go on meanwhile (every 50 ms), and none is missed.
            let answered = worker.load_checks_answered();
            std::thread::sleep(Duration::from_secs(1));
            let during = worker.load_checks_answered() - answered;
            assert!(
                during >= 2,
                "{during} load checks answered while the gateway's runtime was busy"
            );
            assert!(worker.healthy());
            assert_eq!(
                worker
                    .missed_checks
                    .load(std::sync::atomic::Ordering::Acquire),
                0
            );
            stop.cancel();
            maintenance.await.expect("maintenance stops");
        });
        worker_runtime
            .block_on(worker.shutdown())
            .expect("worker stops");
    }
}
