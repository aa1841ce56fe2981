//! Keeps the rayon pool's other threads awake through one forward pass.
//!
//! A decoded token is ~150 parallel products of a few dozen microseconds
//! each. Between two of them rayon's idle threads yield and then sleep, and
//! each product starts by waking them again: about a tenth of decode time
//! went to `sched_yield`, futex and the scheduler (docs/BENCHMARKS.md
//! §18.6). llama.cpp's threads spin between its steps instead. Here each
//! other thread of the pool runs a job that looks for work without sleeping
//! until the pass ends, so every product is picked up at once.
//!
//! Only while the pass has the pool to itself: with two passes at once
//! (several slots generating) a spinning job could hold a thread the other
//! pass is waiting on, so the pool then works as plain rayon does.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Forward passes in progress in this process.
static PASSES: AtomicUsize = AtomicUsize::new(0);

/// Jobs spinning now (for the tests: none may outlive its pass).
static SPINNING: AtomicUsize = AtomicUsize::new(0);

/// A spinning job gives up after this long without work (the pass has
/// moved on to something serial and long, or the pool is shared now).
const IDLE_LIMIT: Duration = Duration::from_millis(2);

/// Held for one forward pass; the other threads spin until it is dropped.
pub(super) struct KeepAwake {
    done: Arc<AtomicBool>,
}

impl KeepAwake {
    /// Call on a thread of `pool` (inside `install`): that thread does not
    /// spin, it runs the pass.
    pub(super) fn start(pool: &rayon::ThreadPool) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let alone = PASSES.fetch_add(1, Ordering::AcqRel) == 0;
        let runner = rayon::current_thread_index();
        if alone && pool.current_num_threads() > 1 {
            let done = done.clone();
            pool.spawn_broadcast(move |thread| {
                if Some(thread.index()) != runner {
                    spin_until(&done);
                }
            });
        }
        Self { done }
    }
}

impl Drop for KeepAwake {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Release);
        PASSES.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Runs the pool's pending jobs as they come until `done`, another pass
/// starts, or nothing came for `IDLE_LIMIT`.
fn spin_until(done: &AtomicBool) {
    SPINNING.fetch_add(1, Ordering::AcqRel);
    let mut last_work = Instant::now();
    while !done.load(Ordering::Acquire) && PASSES.load(Ordering::Acquire) == 1 {
        match rayon::yield_now() {
            Some(rayon::Yield::Executed) => last_work = Instant::now(),
            _ if last_work.elapsed() > IDLE_LIMIT => break,
            _ => std::hint::spin_loop(),
        }
    }
    SPINNING.fetch_sub(1, Ordering::AcqRel);
}

#[cfg(test)]
mod tests {
    use rayon::prelude::*;

    use super::*;

    fn pool() -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("pool")
    }

    /// Parallel products of many passes, one after another and from two
    /// threads at once, all complete with the right sums, and the pool is
    /// free again afterwards (no job keeps spinning).
    #[test]
    fn passes_alone_and_at_once_complete_and_leave_the_pool_free() {
        let pool = pool();
        let values: Vec<u64> = (0..10_000).collect();
        let expected: u64 = values.iter().sum();
        let pass = |pool: &rayon::ThreadPool| {
            pool.install(|| {
                let _awake = KeepAwake::start(pool);
                (0..50)
                    .map(|_| {
                        values
                            .par_chunks(100)
                            .map(|c| c.iter().sum::<u64>())
                            .sum::<u64>()
                    })
                    .collect::<Vec<_>>()
            })
        };
        for sums in (0..20).map(|_| pass(&pool)) {
            assert!(sums.iter().all(|&s| s == expected));
        }
        std::thread::scope(|scope| {
            let runs: Vec<_> = (0..2)
                .map(|_| scope.spawn(|| (0..20).map(|_| pass(&pool)).collect::<Vec<_>>()))
                .collect();
            for run in runs {
                let passes = run.join().expect("no panic");
                assert!(passes.iter().flatten().all(|&s| s == expected));
            }
        });
        assert_eq!(PASSES.load(Ordering::Acquire), 0);
        // No job keeps spinning once its pass is over.
        let deadline = Instant::now() + Duration::from_secs(5);
        while SPINNING.load(Ordering::Acquire) > 0 {
            assert!(
                Instant::now() < deadline,
                "a spinning job outlived its pass"
            );
            std::thread::yield_now();
        }
    }
}
