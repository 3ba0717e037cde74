//! Multiplexing many requests over one bidirectional stream: ids, a pending
//! map (frames are batched by `kernel_proto::batch`), and failure of everything pending when the
//! stream dies. Used by calls (CallStream) and pipelined publishing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

/// The sending half of a multiplexed stream.
pub(crate) struct Mux<Up, R> {
    tx: mpsc::UnboundedSender<Up>,
    pending: Mutex<HashMap<u64, oneshot::Sender<R>>>,
    next: AtomicU64,
    dead: AtomicBool,
}

impl<Up, R> Mux<Up, R> {
    /// A mux and the receiver its stream drains.
    pub(crate) fn new() -> (Arc<Self>, mpsc::UnboundedReceiver<Up>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Arc::new(Mux {
                tx,
                pending: Mutex::new(HashMap::new()),
                next: AtomicU64::new(1),
                dead: AtomicBool::new(false),
            }),
            rx,
        )
    }

    /// Registers a new request id and sends the frame built for it.
    pub(crate) fn send(
        &self,
        build: impl FnOnce(u64) -> Up,
    ) -> Option<(u64, oneshot::Receiver<R>)> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            // `dead` is set under this lock by `fail_all`: a request is either
            // refused here or failed there, never left pending forever.
            let mut pending = self.pending.lock();
            if self.dead.load(Ordering::Acquire) {
                return None;
            }
            pending.insert(id, tx);
        }
        if self.tx.send(build(id)).is_err() {
            self.pending.lock().remove(&id);
            return None;
        }
        Some((id, rx))
    }

    /// Sends a control frame (e.g. a cancel). False when the stream is gone.
    pub(crate) fn control(&self, up: Up) -> bool {
        self.tx.send(up).is_ok()
    }

    /// Forgets a request; true if it was still pending.
    pub(crate) fn forget(&self, id: u64) -> bool {
        self.pending.lock().remove(&id).is_some()
    }

    /// Delivers a response.
    pub(crate) fn complete(&self, id: u64, r: R) {
        if let Some(tx) = self.pending.lock().remove(&id) {
            let _ = tx.send(r);
        }
    }

    /// Whether the stream died.
    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    /// Marks the stream dead and fails everything pending.
    pub(crate) fn fail_all(&self, err: impl Fn() -> R) {
        let pending = {
            let mut p = self.pending.lock();
            self.dead.store(true, Ordering::Release);
            std::mem::take(&mut *p)
        };
        for (_, tx) in pending {
            let _ = tx.send(err());
        }
    }
}
