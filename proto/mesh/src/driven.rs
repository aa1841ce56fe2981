//! Streams whose items come from a producer task tied to the stream: the
//! producer runs on its own (so its timers fire even while the consumer is
//! not polling, e.g. an HTTP/2 client that stopped opening its flow-control
//! window), and when the consumer drops the stream (a client went away) the
//! producer is aborted and its work cancelled.

use std::pin::Pin;
use std::task::{Context, Poll};

/// Items the producer may send ahead of the consumer: the stream's buffer.
const BUFFER: usize = 16;

/// A stream fed by a producer spawned for it: when the stream is dropped,
/// so is the producer (at its next await).
pub fn driven_stream<T, F, Fut>(produce: F) -> Pin<Box<dyn futures::Stream<Item = T> + Send>>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(BUFFER);
    let producer = tokio::spawn(produce(tx));
    Box::pin(Driven {
        rx,
        producer: producer.abort_handle(),
    })
}

/// How handing an item to a stream's consumer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Delivered,
    /// The consumer dropped the stream.
    Gone,
    /// The consumer did not take the item (the buffer stayed full) by the
    /// given time: it stopped reading.
    Stalled,
}

/// Sends `item`, waiting for room in the stream's buffer until `until` at
/// most: a consumer that stops reading cannot hold the producer (and what
/// it holds: a worker, a concurrency slot) for longer.
pub async fn send_until<T>(
    tx: &tokio::sync::mpsc::Sender<T>,
    item: T,
    until: tokio::time::Instant,
) -> Sent {
    match tokio::time::timeout_at(until, tx.send(item)).await {
        Ok(Ok(())) => Sent::Delivered,
        Ok(Err(_)) => Sent::Gone,
        Err(_) => Sent::Stalled,
    }
}

struct Driven<T> {
    rx: tokio::sync::mpsc::Receiver<T>,
    producer: tokio::task::AbortHandle,
}

impl<T> futures::Stream for Driven<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.rx.poll_recv(cx)
    }
}

impl<T> Drop for Driven<T> {
    fn drop(&mut self) {
        self.producer.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::time::Duration;

    #[tokio::test]
    async fn the_producer_runs_while_nobody_polls() {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let stream = driven_stream(move |tx: tokio::sync::mpsc::Sender<u32>| async move {
            for i in 0..(BUFFER as u32 + 4) {
                // A consumer that does not read: the producer's own
                // deadline still ends it.
                if tokio::time::timeout(Duration::from_millis(50), tx.send(i))
                    .await
                    .is_err()
                {
                    let _ = done_tx.send(i);
                    return;
                }
            }
        });
        let stalled_at = done_rx.await.expect("the producer gave up on its own");
        assert_eq!(stalled_at, BUFFER as u32);
        drop(stream);
    }

    #[tokio::test]
    async fn dropping_the_stream_cancels_the_producer() {
        let (dropped_tx, dropped_rx) = tokio::sync::oneshot::channel::<()>();
        let mut stream = driven_stream(move |tx: tokio::sync::mpsc::Sender<u32>| async move {
            let _dropped = dropped_tx; // dropped with the producer
            let _ = tx.send(1).await;
            std::future::pending::<()>().await;
        });
        assert_eq!(stream.next().await, Some(1));
        drop(stream);
        assert!(dropped_rx.await.is_err(), "the producer was dropped");
    }
}
