//! Streams whose items come from a producer future polled inside the stream
//! itself: nothing is spawned, so when the consumer drops the stream (a client
//! went away) the producer is dropped with it and its work is cancelled.

use futures::StreamExt;

/// A stream fed by a producer future that runs inside the stream's own task:
/// when the client goes away the stream is dropped and so is the producer.
pub fn driven_stream<T, F, Fut>(
    produce: F,
) -> std::pin::Pin<Box<dyn futures::Stream<Item = T> + Send>>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let producer = produce(tx);
    Box::pin(futures::stream::unfold(
        (
            Some(Box::pin(producer)),
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ),
        |(mut producer, mut rx)| async move {
            loop {
                match producer.as_mut() {
                    Some(p) => {
                        tokio::select! {
                            biased;
                            item = rx.next() => return item.map(|i| (i, (producer, rx))),
                            () = p.as_mut() => producer = None,
                        }
                    }
                    None => return rx.next().await.map(|i| (i, (None, rx))),
                }
            }
        },
    ))
}
