//! Request contexts: the context tree, deadlines, cancellation and budgets.
//!
//! Every call and every event delivery gets a [`Node`] whose path is its
//! parent's path plus a child number (`5f0c9a1e2b3d4c6f.2.1`). Nodes are
//! owned by the calls that run them and point at their parents. A node is
//! cancelled when it or any ancestor is, so cancelling a node cancels its
//! whole branch and nothing else; waiters on any node of a tree share the
//! tree's wake-up, which fires (rarely) when something in it is cancelled.
//!
//! # What a call pays for
//! Bookkeeping runs on every call, so the expensive parts are deferred
//! until someone can use them. A node's path is written out on first use
//! (an error, a span, a header for a remote provider, the SDK's
//! `ctx.path()`); only then is the node indexed by path and its tree made
//! findable by root id. Nobody outside the kernel can name a node, or a
//! tree, whose path was never written, so nothing is lost: lookups by path
//! (remote callers naming their parent, `CancelContext`) find every node
//! that could be named, and `GetContext` lists every live node of the tree
//! from the tree's member list, writing out the paths it shows.

pub(crate) mod budget;
pub(crate) mod ended;

mod node;
pub(crate) mod path;

pub use node::Node;
pub(crate) use node::NodeInfo;

pub(crate) use path::parse_path;

use rustc_hash::FxHashMap as HashMap;
use smallvec::SmallVec;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::config::BudgetConfig;
use crate::error::Error;
use budget::{Budget, Exhausted};
use path::path_key;

type RootMap = Mutex<HashMap<u64, Weak<Tree>>>;

/// All live context trees of a node that can be named.
#[derive(Debug)]
pub struct Contexts {
    shared: Arc<Shared>,
}

/// What every tree of a node refers to: the index of nameable trees and
/// the budget defaults (a root that makes its tree on first use keeps a
/// handle to this, see [`Node::tree`]).
#[derive(Debug)]
struct Shared {
    roots: RootMap,
    budgets: BudgetConfig,
    /// Roots that ended, so they cannot be revived.
    graveyard: Mutex<ended::Graveyard>,
    /// Auth on: a named caller may work under a context path only where it
    /// is handling the call or delivery (see [`Contexts::checking_holders`]).
    check_holders: bool,
}

/// One request's tree: its budget, its members, and an index of the live
/// nodes whose paths were written out.
#[derive(Debug)]
pub struct Tree {
    id: u64,
    /// Spending and limits shared by the whole tree.
    pub budget: Budget,
    /// The trace this tree belongs to: the first `traceparent` seen, or one
    /// made up on first use (most in-process trees never need one).
    traceparent: OnceLock<String>,
    /// The node that started the tree, which for most trees is the only
    /// top-level one: kept apart so a root call takes no lock.
    first: Weak<Node>,
    /// Every other node made in this tree, weakly; dead entries are swept
    /// when the list would grow.
    members: Mutex<SmallVec<[Weak<Node>; 2]>>,
    /// Nodes whose path was written out, by path.
    named: Mutex<HashMap<String, Weak<Node>>>,
    shared: Weak<Shared>,
    /// Whether the tree is in the roots map (findable by root id).
    listed: AtomicBool,
    /// Wakes every waiter in the tree when any of its nodes is cancelled.
    cancelled: Notify,
    /// The root call's deadline.
    deadline: Option<Instant>,
    /// Why the root was cancelled, once it was.
    ended_by: OnceLock<kernel_proto::v1::Failure>,
}

impl Tree {
    /// The tree's `traceparent`.
    pub fn traceparent(&self) -> &str {
        self.traceparent
            .get_or_init(kernel_proto::headers::new_traceparent)
    }

    /// Makes the tree findable by its root id (once a path of it is out).
    fn list(self: &Arc<Self>) {
        if self.listed.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(shared) = self.shared.upgrade() {
            let mut roots = shared.roots.lock();
            // A live tree already holds this id (a 1 in 2^64 draw, or a
            // remote caller reusing a root): it keeps it.
            if roots.get(&self.id).is_none_or(|w| w.strong_count() == 0) {
                roots.insert(self.id, Arc::downgrade(self));
            }
        }
    }

    fn join(&self, node: &Arc<Node>) {
        let mut members = self.members.lock();
        if members.len() == members.capacity() && members.len() >= 2 {
            members.retain(|w| w.strong_count() > 0);
        }
        members.push(Arc::downgrade(node));
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        if !*self.listed.get_mut() {
            return;
        }
        if let Some(shared) = self.shared.upgrade() {
            let cancelled = self.ended_by.take();
            if cancelled.is_some() || self.deadline.is_some() {
                shared.graveyard.lock().record(
                    self.id,
                    ended::Ended {
                        cancelled,
                        deadline: self.deadline,
                    },
                );
            }
            let mut roots = shared.roots.lock();
            if roots.get(&self.id).is_some_and(|w| w.strong_count() == 0) {
                roots.remove(&self.id);
            }
        }
    }
}

/// Where a new call hangs in the tree.
#[derive(Debug, Clone, Default)]
pub enum Parent {
    /// No context: start a new root.
    #[default]
    None,
    /// A path from an `x-kernel-context` header.
    Path(String),
    /// A live node (in-process callers hold theirs).
    Node(Arc<Node>),
}

/// What a new child needs besides its parent.
#[derive(Debug, Default)]
pub struct ChildSpec<'a> {
    /// The service (empty for a delivery).
    pub service: &'a str,
    /// The same name already shared (the registry keeps one per service),
    /// so the node need not copy it.
    pub shared_service: Option<&'a Arc<str>>,
    /// The calling plugin, for per-plugin budget overrides on a new root.
    pub caller: Option<&'a str>,
    /// The caller's requested deadline.
    pub deadline: Option<Instant>,
    /// The caller's `x-kernel-budget`, if any.
    pub budget_header: Option<&'a str>,
    /// The caller's `traceparent`, if any.
    pub traceparent: Option<&'a str>,
    /// Charge the `calls` budget (false for event deliveries).
    pub is_call: bool,
    /// When the call entered the kernel, if the caller already read the clock.
    pub started: Option<quanta::Instant>,
}

impl Contexts {
    /// An empty registry of trees with the node's budget defaults.
    pub fn new(budgets: BudgetConfig) -> Contexts {
        Contexts::with_holders(budgets, false)
    }

    /// The same, where (auth on) a named caller that names a context path
    /// must be the plugin handling the call or delivery at that path: it
    /// holds the live invocation there. Anyone else (another plugin that
    /// learned the path, a path of a node that is gone) is refused with
    /// `PERMISSION_DENIED`. In-process handlers pass their node, not a
    /// path, and are not asked.
    pub fn checking_holders(budgets: BudgetConfig) -> Contexts {
        Contexts::with_holders(budgets, true)
    }

    fn with_holders(budgets: BudgetConfig, check_holders: bool) -> Contexts {
        Contexts {
            shared: Arc::new(Shared {
                roots: Mutex::new(HashMap::default()),
                budgets,
                graveyard: Mutex::new(ended::Graveyard::default()),
                check_holders,
            }),
        }
    }

    /// Creates the node for a new call or delivery under `parent`, charging
    /// the tree's budget. On exhaustion the parent's branch is cancelled (with
    /// the reason recorded) and the error names the budget and path.
    pub fn child(&self, parent: Parent, spec: ChildSpec<'_>) -> Result<Arc<Node>, Error> {
        let parent = match parent {
            Parent::Node(n) => Some(n),
            Parent::Path(p) => Some(self.resolve(&p, &spec)?),
            Parent::None => None,
        };
        let node = match parent {
            Some(p) => {
                let number = p.next_child.fetch_add(1, Ordering::Relaxed) + 1;
                let deadline = match (spec.deadline, p.deadline) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                let (tree, depth) = (p.tree().clone(), p.depth + 1);
                Arc::new(Node::new(
                    Place::Tree(tree),
                    Some(p),
                    number,
                    depth,
                    deadline,
                    &spec,
                ))
            }
            // A plain root call (no budget header, trace or per-plugin
            // budget to record): its tree is made on first use, already
            // charged for this call, so a call that never nests, names its
            // context or waits for cancellation makes no tree at all.
            None if self.lazy_root(&spec) => {
                let place = Place::Lazy(self.shared.clone(), OnceLock::new());
                return Ok(Arc::new(Node::new(place, None, 1, 1, spec.deadline, &spec)));
            }
            // A new root: its tree is built in place and shared only with
            // its first node, so recording that node takes no lock.
            None => Arc::new_cyclic(|me| {
                let tree = make_tree(&self.shared, path::new_root_id(), &spec, Some(me.clone()));
                Node::new(
                    Place::Tree(Arc::new(tree)),
                    None,
                    1,
                    1,
                    spec.deadline,
                    &spec,
                )
            }),
        };
        self.charge(&node, &spec)?;
        if node.parent.is_some() {
            node.tree().join(&node);
        }
        Ok(node)
    }

    /// Applies the caller's budget header and charges the new node's call.
    /// On exhaustion the parent's branch is cancelled (it overspent by
    /// starting this call) and the error names the budget and the path.
    fn charge(&self, node: &Arc<Node>, spec: &ChildSpec<'_>) -> Result<(), Error> {
        let budget = &node.tree().budget;
        if let Some(h) = spec.budget_header {
            budget.lower_from_header(h);
            if let Some(d) = budget::parse_header(h).find(|(k, _)| *k == budget::DEPTH) {
                budget.lower_depth(node.depth.saturating_sub(1), d.1);
            }
        }
        if !spec.is_call {
            return Ok(());
        }
        let Err(Exhausted { budget, limit }) = budget.charge_call(node.depth) else {
            return Ok(());
        };
        if let Some(p) = &node.parent {
            p.kill(Error::BudgetExhausted {
                budget: budget.clone(),
                context: p.path().to_owned(),
                limit,
            });
        }
        Err(Error::BudgetExhausted {
            budget,
            context: node.path().to_owned(),
            limit,
        })
    }

    /// Whether a root call can make its tree on first use: nothing about
    /// it needs recording now, and the default limits allow one call.
    fn lazy_root(&self, spec: &ChildSpec<'_>) -> bool {
        let b = &self.shared.budgets;
        spec.is_call
            && spec.budget_header.is_none()
            && spec.traceparent.is_none()
            && (spec.caller.is_none() || b.plugins.is_empty())
            && b.calls >= 1
            && b.depth >= 1
    }

    /// Finds the live node a remote caller names, or stands one in for a path
    /// the kernel no longer (or never) knew, so numbering and budgets still
    /// hang off the right tree.
    /// With holders checked (auth on), whether `caller` may work under
    /// `path`: it is handling the call or delivery there. Always Ok when
    /// holders are not checked or there is no caller.
    pub fn check_holder(&self, path: &str, caller: Option<&str>) -> Result<(), Error> {
        let (true, Some(caller)) = (self.shared.check_holders, caller) else {
            return Ok(());
        };
        match parse_path(path) {
            Some((root, _)) => self.held(root, path, caller).map(drop),
            None => Err(Error::InvalidName {
                what: "context path",
                name: path.chars().take(64).collect(),
                reason: "expected `<16 hex digits>(.<number>)*`".into(),
            }),
        }
    }

    /// The live node at `path` when `caller` is the plugin handling it.
    fn held(&self, root: u64, path: &str, caller: &str) -> Result<Arc<Node>, Error> {
        let node = self
            .shared
            .roots
            .lock()
            .get(&root)
            .and_then(Weak::upgrade)
            .and_then(|t| t.named.lock().get(path).and_then(Weak::upgrade));
        match node {
            Some(n) if n.plugin().as_deref() == Some(caller) && !n.is_cancelled() => Ok(n),
            Some(n) if n.is_cancelled() => Err(Error::Remote(n.cancel_reason())),
            _ => Err(Error::PermissionDenied {
                plugin: caller.to_owned(),
                capability: format!(
                    "context {path} (only the plugin handling the call or delivery there may work under it)"
                ),
            }),
        }
    }

    fn resolve(&self, path: &str, spec: &ChildSpec<'_>) -> Result<Arc<Node>, Error> {
        let (root, depth) = parse_path(path).ok_or_else(|| Error::InvalidName {
            what: "context path",
            name: path.chars().take(64).collect(),
            reason: "expected `<16 hex digits>(.<number>)*`".into(),
        })?;
        if let (true, Some(caller)) = (self.shared.check_holders, spec.caller) {
            return self.held(root, path, caller);
        }
        let tree = {
            let mut roots = self.shared.roots.lock();
            match roots.get(&root).and_then(Weak::upgrade) {
                Some(t) => t,
                None => {
                    // A root that ended stays ended: refused with what
                    // ended it, and a stand-in never outlives its deadline.
                    let end = self.shared.graveyard.lock().get(root).cloned();
                    if let Some(e) = end.as_ref().and_then(|e| e.refusal(path, spec.service)) {
                        return Err(e);
                    }
                    let deadline = end.and_then(|e| e.deadline);
                    let mut tree = make_tree(&self.shared, root, spec, None);
                    tree.deadline = deadline;
                    let t = Arc::new(tree);
                    t.listed.store(true, Ordering::Relaxed);
                    roots.insert(root, Arc::downgrade(&t));
                    t
                }
            }
        };
        if let Some(n) = tree.named.lock().get(path).and_then(Weak::upgrade) {
            return Ok(n);
        }
        let node = Arc::new(Node::stand_in(
            tree.clone(),
            path.to_owned(),
            depth,
            tree.deadline,
        ));
        tree.named
            .lock()
            .insert(path.to_owned(), Arc::downgrade(&node));
        tree.join(&node);
        Ok(node)
    }

    /// Why nothing may run under `path` any more: its root was cancelled,
    /// or its deadline passed (None when the root is live or forgotten).
    pub fn ended(&self, path: &str) -> Option<Error> {
        let (root, _) = parse_path(path)?;
        self.shared.graveyard.lock().get(root)?.refusal(path, "")
    }

    /// The live node at `path`, if its path was ever written out.
    pub fn find(&self, path: &str) -> Option<Arc<Node>> {
        let (root, _) = parse_path(path)?;
        let tree = self
            .shared
            .roots
            .lock()
            .get(&root)
            .and_then(Weak::upgrade)?;
        let node = tree.named.lock().get(path).and_then(Weak::upgrade);
        node
    }

    fn members(&self, root: u64) -> Vec<Arc<Node>> {
        let Some(tree) = self.shared.roots.lock().get(&root).and_then(Weak::upgrade) else {
            return Vec::new();
        };
        let members = tree.members.lock();
        std::iter::once(&tree.first)
            .chain(members.iter())
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// Live nodes of a tree, parents before children.
    pub fn tree(&self, root: &str) -> Vec<NodeInfo> {
        let Ok(id) = u64::from_str_radix(root, 16) else {
            return Vec::new();
        };
        let mut out: Vec<NodeInfo> = self.members(id).iter().map(|n| n.info()).collect();
        out.sort_by_key(|n| path_key(&n.path));
        out
    }

    /// Cancels the node at `path` and its branch; returns how many live
    /// nodes were in it.
    pub fn cancel(&self, path: &str) -> u32 {
        let Some(node) = self.find(path) else {
            return 0;
        };
        let prefix = format!("{path}.");
        let count = self
            .members(node.tree().id)
            .iter()
            .filter(|n| {
                let p = n.path();
                p == path || p.starts_with(&prefix)
            })
            .count();
        node.kill(Error::Cancelled {
            context: format!("{path} (cancelled by operator)"),
        });
        count as u32
    }

    /// Live trees that can be named (for stats).
    pub fn live_trees(&self) -> usize {
        self.shared
            .roots
            .lock()
            .values()
            .filter(|w| w.strong_count() > 0)
            .count()
    }
}

/// A tree started by the node `first` (None for a tree made for a path
/// from elsewhere). A root-level call always starts a new tree, so its node
/// is always `<root>.1`.
fn make_tree(
    shared: &Arc<Shared>,
    id: u64,
    spec: &ChildSpec<'_>,
    first: Option<Weak<Node>>,
) -> Tree {
    // A tree made with its first node has that node's deadline; a stand-in
    // tree's comes from what is remembered of its root.
    let root_deadline = first.as_ref().and(spec.deadline);
    Tree {
        id,
        budget: Budget::new(&shared.budgets, spec.caller),
        traceparent: spec
            .traceparent
            .map(|t| OnceLock::from(t.to_owned()))
            .unwrap_or_default(),
        first: first.unwrap_or_default(),
        members: Mutex::new(SmallVec::new()),
        named: Mutex::new(HashMap::default()),
        shared: Arc::downgrade(shared),
        listed: AtomicBool::new(false),
        cancelled: Notify::new(),
        deadline: root_deadline,
        ended_by: OnceLock::new(),
    }
}

/// The tree of a root that made it on first use: default budgets, already
/// charged for the root's own call (see [`Contexts::lazy_root`]).
fn lazy_tree(shared: &Arc<Shared>, first: Weak<Node>, deadline: Option<Instant>) -> Tree {
    let mut tree = make_tree(
        shared,
        path::new_root_id(),
        &ChildSpec::default(),
        Some(first),
    );
    // Cannot fail: `lazy_root` checked the limits allow one call.
    let _ = tree.budget.charge_call(1);
    tree.deadline = deadline;
    tree
}

/// Where a node's tree is.
#[derive(Debug)]
enum Place {
    /// Made with the node (children, and roots with something to record).
    Tree(Arc<Tree>),
    /// A plain root's: made on first use.
    Lazy(Arc<Shared>, OnceLock<Arc<Tree>>),
}

#[cfg(test)]
mod tests;
