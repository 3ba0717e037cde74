//! One call or delivery in a context tree: its place (parent, number,
//! path written on first use), deadline, cancellation and admin snapshot.

use std::sync::atomic::{fence, AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use kernel_proto::v1::Failure;

use super::path::{child_path, root_path};
use super::{lazy_tree, ChildSpec, Place, Tree};
use crate::error::Error;

/// One call or delivery in a context tree.
#[derive(Debug)]
pub struct Node {
    /// The tree this node belongs to (see [`Node::tree`]).
    place: Place,
    pub(super) parent: Option<Arc<Node>>,
    /// Its number among its parent's children (or the tree's top level).
    pub(super) number: u32,
    /// The dotted path, written on first use (see [`Node::path`]).
    pub(super) path: OnceLock<String>,
    /// Hops below the root (a root-level call has depth 1).
    pub depth: u64,
    /// The service called (empty for a delivery).
    pub service: Arc<str>,
    /// The provider plugin, once one was selected (see [`Node::plugin`]).
    /// A mutex rather than a `OnceLock`: it is set on every dispatched
    /// call, and `OnceLock::set` goes through std's general `Once` path,
    /// where an uncontended lock is two atomics (`docs/PERFORMANCE.md`).
    plugin: parking_lot::Mutex<Option<Arc<str>>>,
    /// Set when this node itself was cancelled (see [`Node::is_cancelled`]).
    pub(super) cancelled: AtomicBool,
    /// Absolute deadline, already the minimum of the parent's and the caller's.
    pub deadline: Option<Instant>,
    /// Why the branch was cancelled, when the kernel did it on purpose.
    /// Boxed: set only on a kill, and a smaller node is cheaper to make.
    pub(super) reason: OnceLock<Box<Failure>>,
    pub(super) next_child: AtomicU32,
    pub(super) started: quanta::Instant,
}

impl Drop for Node {
    fn drop(&mut self) {
        // A written path implies a made tree.
        let (Some(path), Some(tree)) = (self.path.get(), self.made_tree()) else {
            return;
        };
        let mut named = tree.named.lock();
        if named.get(path).is_some_and(|w| w.strong_count() == 0) {
            named.remove(path);
        }
    }
}

/// A snapshot of a live node for admin listings.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// Path.
    pub path: String,
    /// Service.
    pub service: String,
    /// Provider plugin.
    pub plugin: String,
    /// `running` or `cancelled`.
    pub state: &'static str,
    /// Microseconds since start.
    pub elapsed_us: u64,
}

impl Node {
    pub(super) fn new(
        place: Place,
        parent: Option<Arc<Node>>,
        number: u32,
        depth: u64,
        deadline: Option<Instant>,
        spec: &ChildSpec<'_>,
    ) -> Node {
        Node {
            cancelled: AtomicBool::new(false),
            place,
            parent,
            number,
            path: OnceLock::new(),
            depth,
            service: spec
                .shared_service
                .cloned()
                .unwrap_or_else(|| spec.service.into()),
            plugin: parking_lot::Mutex::new(None),
            deadline,
            reason: OnceLock::new(),
            next_child: AtomicU32::new(0),
            started: spec.started.unwrap_or_else(quanta::Instant::now),
        }
    }

    /// A node for a path the kernel no longer (or never) knew, named by a
    /// remote caller: indexed under that path at once.
    pub(super) fn stand_in(
        tree: Arc<Tree>,
        path: String,
        depth: u64,
        deadline: Option<Instant>,
    ) -> Node {
        Node {
            place: Place::Tree(tree),
            parent: None,
            number: 0,
            path: OnceLock::from(path),
            depth,
            service: "".into(),
            plugin: parking_lot::Mutex::new(None),
            cancelled: AtomicBool::new(false),
            deadline,
            reason: OnceLock::new(),
            next_child: AtomicU32::new(0),
            started: quanta::Instant::now(),
        }
    }

    /// The dotted path, root id first. Writing it out makes the node (and
    /// its ancestors, and its tree) findable by path.
    pub fn path(self: &Arc<Self>) -> &str {
        if let Some(p) = self.path.get() {
            return p;
        }
        let written = match &self.parent {
            Some(p) => child_path(p.path(), self.number),
            None => root_path(self.tree().id, self.number.into()),
        };
        let path = self.path.get_or_init(|| written);
        let tree = self.tree();
        tree.named.lock().insert(path.clone(), Arc::downgrade(self));
        tree.list();
        path
    }

    /// The node's tree: its budget, trace and index. A plain root call
    /// makes it here, on first use.
    pub fn tree(self: &Arc<Self>) -> &Arc<Tree> {
        match &self.place {
            Place::Tree(t) => t,
            Place::Lazy(shared, slot) => slot.get_or_init(|| {
                let tree = Arc::new(lazy_tree(shared, Arc::downgrade(self), self.deadline));
                // Pairs with the fence in `cancel`: a canceller that did not
                // see this tree (so woke nobody) set its flag before, and
                // the waiter that made it checks the flag after.
                fence(Ordering::SeqCst);
                tree
            }),
        }
    }

    /// The tree, if it was made.
    pub(super) fn made_tree(&self) -> Option<&Arc<Tree>> {
        match &self.place {
            Place::Tree(t) => Some(t),
            Place::Lazy(_, slot) => slot.get(),
        }
    }

    /// Cancels this node's branch, remembering why.
    pub fn kill(&self, why: Error) {
        let _ = self.reason.set(Box::new(why.into_failure()));
        self.cancel();
    }

    /// Cancels this node's branch.
    pub fn cancel(&self) {
        if !self.cancelled.swap(true, Ordering::AcqRel) {
            // A cancelled root ends its tree for good (see `ended`).
            if self.depth == 1 {
                if let Some(tree) = self.made_tree() {
                    // Abandoned because its deadline passed: it ended by
                    // the deadline, not by a cancel.
                    let late = self.deadline.is_some_and(|d| d <= Instant::now());
                    let why = self.reason.get().map_or_else(
                        || kernel_proto::v1::Failure {
                            code: if late {
                                tonic::Code::DeadlineExceeded
                            } else {
                                tonic::Code::Cancelled
                            } as i32,
                            message: if late {
                                "deadline exceeded"
                            } else {
                                "cancelled"
                            }
                            .into(),
                            causality: Vec::new(),
                        },
                        |f| (**f).clone(),
                    );
                    let _ = tree.ended_by.set(why);
                }
            }
            // Nobody can wait on a tree that was never made (see `tree`).
            fence(Ordering::SeqCst);
            if let Some(tree) = self.made_tree() {
                tree.cancelled.notify_waiters();
            }
        }
    }

    /// True once this node or an ancestor was cancelled.
    pub fn is_cancelled(&self) -> bool {
        let mut cur = Some(self);
        while let Some(n) = cur {
            if n.cancelled.load(Ordering::Acquire) {
                return true;
            }
            cur = n.parent.as_deref();
        }
        false
    }

    /// Resolves once this node or an ancestor is cancelled.
    pub async fn cancelled(self: &Arc<Self>) {
        let tree = self.tree();
        loop {
            let woken = tree.cancelled.notified();
            tokio::pin!(woken);
            // Registered before the check, so a cancel between the two is
            // not missed.
            woken.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            woken.await;
        }
    }

    /// Why this node (or the nearest ancestor that was killed) was cancelled.
    pub fn cancel_reason(self: &Arc<Self>) -> Failure {
        let mut cur = Some(self);
        while let Some(n) = cur {
            if let Some(r) = n.reason.get() {
                return (**r).clone();
            }
            cur = n.parent.as_ref();
        }
        Error::Cancelled {
            context: self.path().to_owned(),
        }
        .into_failure()
    }

    /// The time left before the deadline (None = no deadline).
    pub fn remaining(&self) -> Option<std::time::Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// The root id, hex.
    pub fn root(self: &Arc<Self>) -> String {
        format!("{:016x}", self.tree().id)
    }

    /// The provider plugin chosen for this call, once dispatch chose one.
    pub fn plugin(&self) -> Option<Arc<str>> {
        self.plugin.lock().clone()
    }

    /// Records the provider plugin chosen for this call (the first choice
    /// stays).
    pub fn set_plugin(&self, plugin: &Arc<str>) {
        self.plugin.lock().get_or_insert_with(|| plugin.clone());
    }

    pub(super) fn info(self: &Arc<Self>) -> NodeInfo {
        NodeInfo {
            path: self.path().to_owned(),
            service: self.service.to_string(),
            plugin: self.plugin().as_deref().unwrap_or_default().to_owned(),
            state: if self.is_cancelled() {
                "cancelled"
            } else {
                "running"
            },
            elapsed_us: self.started.elapsed().as_micros() as u64,
        }
    }
}
