//! Turns a channel of items into a stream of batched frames: under load many
//! items share one gRPC message (and one HTTP/2 DATA frame), which is where
//! stream throughput comes from; when idle each item goes out at once. Used
//! by the node's streams and by the SDK's, in both directions.

use futures::Stream;
use tokio::sync::mpsc::UnboundedReceiver;

/// Most items folded into one frame.
pub const MAX_BATCH: usize = 512;

/// A stream that yields `first` (if any), then one frame per wake-up holding
/// every item ready in `rx` (up to [`MAX_BATCH`]). Ends when `rx` closes.
pub fn batched<T, F, Frame>(
    rx: UnboundedReceiver<T>,
    first: Option<Frame>,
    fold: F,
) -> impl Stream<Item = Frame> + Send + 'static
where
    T: Send + 'static,
    Frame: Send + 'static,
    F: Fn(Vec<T>) -> Frame + Send + 'static,
{
    futures::stream::unfold((rx, first, fold), |(mut rx, first, fold)| async move {
        if let Some(f) = first {
            return Some((f, (rx, None, fold)));
        }
        let item = rx.recv().await?;
        let mut items = Vec::with_capacity(8);
        items.push(item);
        while items.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(i) => items.push(i),
                Err(_) => break,
            }
        }
        let frame = fold(items);
        Some((frame, (rx, None, fold)))
    })
}
