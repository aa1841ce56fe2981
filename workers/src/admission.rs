//! Admission control at the worker: a fixed number of generation slots and a
//! bounded queue in front of them, as on a real GPU server.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug)]
pub struct Admission {
    slots: Arc<Semaphore>,
    capacity: u32,
    max_queue: u32,
    waiting: AtomicU32,
    in_flight: AtomicU32,
}

/// The queue is full: the request is refused rather than left to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("worker at capacity: {in_flight} generating, {waiting} queued (max queue {max_queue})")]
pub struct Overloaded {
    pub in_flight: u32,
    pub waiting: u32,
    pub max_queue: u32,
}

/// A held generation slot; released on drop.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    admission: Arc<Admission>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admission.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Waiting<'a>(&'a AtomicU32);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    pub fn new(capacity: u32, max_queue: u32) -> Arc<Self> {
        let capacity = capacity.max(1);
        Arc::new(Self {
            slots: Arc::new(Semaphore::new(capacity as usize)),
            capacity,
            max_queue,
            waiting: AtomicU32::new(0),
            in_flight: AtomicU32::new(0),
        })
    }

    /// Takes a slot, waiting in the queue if there is room in it.
    pub async fn acquire(self: &Arc<Self>) -> Result<Slot, Overloaded> {
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let waiting = self.waiting.fetch_add(1, Ordering::AcqRel);
                let guard = Waiting(&self.waiting);
                if waiting >= self.max_queue {
                    drop(guard);
                    return Err(Overloaded {
                        in_flight: self.in_flight(),
                        waiting,
                        max_queue: self.max_queue,
                    });
                }
                let permit = self.slots.clone().acquire_owned().await;
                drop(guard);
                // The semaphore is never closed, so this only fails if that changes.
                permit.map_err(|_| Overloaded {
                    in_flight: 0,
                    waiting: 0,
                    max_queue: 0,
                })?
            }
        };
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Ok(Slot {
            _permit: permit,
            admission: self.clone(),
        })
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    pub fn waiting(&self) -> u32 {
        self.waiting.load(Ordering::Acquire)
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    pub fn max_queue(&self) -> u32 {
        self.max_queue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn queue_then_refuse() {
        let a = Admission::new(1, 1);
        let first = a.acquire().await.unwrap();
        let queued = tokio::spawn({
            let a = a.clone();
            async move { a.acquire().await.map(|_| ()) }
        });
        while a.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        let refused = a.acquire().await.unwrap_err();
        assert_eq!(refused.waiting, 1);
        drop(first);
        queued.await.unwrap().unwrap();
        assert_eq!((a.in_flight(), a.waiting()), (0, 0));
    }
}
