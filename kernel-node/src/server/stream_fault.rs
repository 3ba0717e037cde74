//! How an open stream ends when its client sends a frame the node cannot
//! read: an undecodable message (bad varint, wire type 7, runaway groups)
//! ends it with `INTERNAL`, one over the size limit with `OUT_OF_RANGE`
//! (PROTOCOL §8.3), never with `OK`. A client that went away (reset,
//! disconnect) gets nothing: nobody is listening.

use futures::{Stream, StreamExt};
use tokio::sync::oneshot;
use tonic::{Code, Status};

/// The status to end a stream with after `read` failed reading it, or
/// None when the client is simply gone.
pub(crate) fn fault(read: &Status) -> Option<Status> {
    let code = match read.code() {
        Code::OutOfRange | Code::ResourceExhausted => Code::OutOfRange,
        Code::Internal | Code::InvalidArgument | Code::DataLoss => Code::Internal,
        _ => return None,
    };
    Some(Status::new(
        code,
        format!("unreadable frame on the stream: {}", read.message()),
    ))
}

/// `stream`, then the status sent on `end` (if one is) as its last item.
pub(crate) fn ended_with<T: Send + 'static>(
    stream: impl Stream<Item = Result<T, Status>> + Send + 'static,
    end: oneshot::Receiver<Status>,
) -> impl Stream<Item = Result<T, Status>> + Send + 'static {
    stream.chain(futures::stream::once(end).filter_map(|r| async move { r.ok().map(Err) }))
}
