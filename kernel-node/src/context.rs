//! Request contexts: the context tree, deadlines, cancellation and budgets.
//!
//! Every call and every event delivery gets a [`Node`] whose path is its
//! parent's path plus a child number (`5f0c9a1e2b3d4c6f.2.1`). Nodes are
//! owned by the calls that run them; the per-root [`Tree`] indexes the live
//! ones by path for admin lookups and for remote callers that name their
//! parent by path. A node's cancellation token is a child of its parent's,
//! so cancelling a node cancels its whole branch and nothing else.

pub mod budget;
pub mod headers;

use rustc_hash::FxHashMap as HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Instant;

use kernel_proto::v1::Failure;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::config::BudgetConfig;
use crate::error::Error;
use budget::{Budget, Exhausted};

type RootMap = Mutex<HashMap<u64, Weak<Tree>>>;

/// All live context trees of a node.
#[derive(Debug)]
pub struct Contexts {
    roots: Arc<RootMap>,
    budgets: BudgetConfig,
}

/// One request's tree: its budget and an index of its live nodes.
#[derive(Debug)]
pub struct Tree {
    id: u64,
    /// Spending and limits shared by the whole tree.
    pub budget: Budget,
    /// The trace this tree belongs to: the first `traceparent` seen, or one
    /// made up on first use (most in-process trees never need one).
    traceparent: OnceLock<String>,
    nodes: Mutex<HashMap<String, Weak<Node>>>,
    roots: Weak<RootMap>,
    next_top: AtomicU32,
}

impl Tree {
    /// The tree's `traceparent`.
    pub fn traceparent(&self) -> &str {
        self.traceparent.get_or_init(headers::new_traceparent)
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        if let Some(roots) = self.roots.upgrade() {
            let mut roots = roots.lock();
            if roots.get(&self.id).is_some_and(|w| w.strong_count() == 0) {
                roots.remove(&self.id);
            }
        }
    }
}

/// One call or delivery in a context tree.
#[derive(Debug)]
pub struct Node {
    /// The tree this node belongs to.
    pub tree: Arc<Tree>,
    parent: Option<Arc<Node>>,
    /// The dotted path, root id first.
    pub path: String,
    /// Hops below the root (a root-level call has depth 1).
    pub depth: u64,
    /// The service called, or `event:<topic>` for a delivery.
    pub service: String,
    /// The provider plugin, once one was selected.
    pub plugin: OnceLock<Arc<str>>,
    /// Cancelled when this call, or any ancestor, is cancelled.
    pub cancel: CancellationToken,
    /// Absolute deadline, already the minimum of the parent's and the caller's.
    pub deadline: Option<Instant>,
    /// Why the branch was cancelled, when the kernel did it on purpose.
    reason: OnceLock<Failure>,
    next_child: AtomicU32,
    started: Instant,
}

impl Drop for Node {
    fn drop(&mut self) {
        let mut nodes = self.tree.nodes.lock();
        if nodes.get(&self.path).is_some_and(|w| w.strong_count() == 0) {
            nodes.remove(&self.path);
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
#[derive(Debug)]
pub struct ChildSpec<'a> {
    /// The service (or `event:<topic>`).
    pub service: &'a str,
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

impl Contexts {
    /// An empty registry of trees with the node's budget defaults.
    pub fn new(budgets: BudgetConfig) -> Contexts {
        Contexts {
            roots: Arc::new(Mutex::new(HashMap::default())),
            budgets,
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
        let (tree, path, depth, parent_cancel, parent_deadline) = match &parent {
            Some(p) => {
                let n = p.next_child.fetch_add(1, Ordering::Relaxed) + 1;
                (
                    p.tree.clone(),
                    child_path(&p.path, n),
                    p.depth + 1,
                    Some(&p.cancel),
                    p.deadline,
                )
            }
            None => {
                let tree = self.new_tree(&spec);
                let n = tree.next_top.fetch_add(1, Ordering::Relaxed) + 1;
                let path = root_path(tree.id, n);
                (tree, path, 1, None, None)
            }
        };
        if let Some(h) = spec.budget_header {
            tree.budget.lower_from_header(h);
            if let Some(d) = budget::parse_header(h).find(|(k, _)| *k == budget::DEPTH) {
                tree.budget.lower_depth(depth.saturating_sub(1), d.1);
            }
        }
        let charged = if spec.is_call {
            tree.budget.charge_call(depth)
        } else {
            Ok(())
        };
        if let Err(Exhausted { budget, limit }) = charged {
            // The parent overspent by starting this call: its branch goes.
            if let Some(p) = &parent {
                p.kill(Error::BudgetExhausted {
                    budget: budget.clone(),
                    context: p.path.clone(),
                    limit,
                });
            }
            return Err(Error::BudgetExhausted {
                budget,
                context: path,
                limit,
            });
        }
        let deadline = match (spec.deadline, parent_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let node = Arc::new(Node {
            cancel: parent_cancel.map_or_else(CancellationToken::new, |c| c.child_token()),
            tree: tree.clone(),
            parent,
            path,
            depth,
            service: spec.service.to_owned(),
            plugin: OnceLock::new(),
            deadline,
            reason: OnceLock::new(),
            next_child: AtomicU32::new(0),
            started: Instant::now(),
        });
        tree.nodes
            .lock()
            .insert(node.path.clone(), Arc::downgrade(&node));
        Ok(node)
    }

    fn new_tree(&self, spec: &ChildSpec<'_>) -> Arc<Tree> {
        let mut roots = self.roots.lock();
        loop {
            let id: u64 = rand::random();
            if roots.get(&id).is_some_and(|w| w.strong_count() > 0) {
                continue;
            }
            let tree = Arc::new(self.make_tree(id, spec));
            roots.insert(id, Arc::downgrade(&tree));
            return tree;
        }
    }

    fn make_tree(&self, id: u64, spec: &ChildSpec<'_>) -> Tree {
        Tree {
            id,
            budget: Budget::new(&self.budgets, spec.caller),
            traceparent: spec
                .traceparent
                .map(|t| OnceLock::from(t.to_owned()))
                .unwrap_or_default(),
            nodes: Mutex::new(HashMap::default()),
            roots: Arc::downgrade(&self.roots),
            next_top: AtomicU32::new(0),
        }
    }

    /// Finds the live node a remote caller names, or stands one in for a path
    /// the kernel no longer (or never) knew, so numbering and budgets still
    /// hang off the right tree.
    fn resolve(&self, path: &str, spec: &ChildSpec<'_>) -> Result<Arc<Node>, Error> {
        let (root, depth) = parse_path(path).ok_or_else(|| Error::InvalidName {
            what: "context path",
            name: path.chars().take(64).collect(),
            reason: "expected `<16 hex digits>(.<number>)*`".into(),
        })?;
        let tree = {
            let mut roots = self.roots.lock();
            match roots.get(&root).and_then(Weak::upgrade) {
                Some(t) => t,
                None => {
                    let t = Arc::new(self.make_tree(root, spec));
                    roots.insert(root, Arc::downgrade(&t));
                    t
                }
            }
        };
        if let Some(n) = tree.nodes.lock().get(path).and_then(Weak::upgrade) {
            return Ok(n);
        }
        let node = Arc::new(Node {
            tree: tree.clone(),
            parent: None,
            path: path.to_owned(),
            depth,
            service: String::new(),
            plugin: OnceLock::new(),
            cancel: CancellationToken::new(),
            deadline: None,
            reason: OnceLock::new(),
            next_child: AtomicU32::new(0),
            started: Instant::now(),
        });
        tree.nodes
            .lock()
            .insert(path.to_owned(), Arc::downgrade(&node));
        Ok(node)
    }

    /// The live node at `path`, if any.
    pub fn find(&self, path: &str) -> Option<Arc<Node>> {
        let (root, _) = parse_path(path)?;
        let tree = self.roots.lock().get(&root).and_then(Weak::upgrade)?;
        let node = tree.nodes.lock().get(path).and_then(Weak::upgrade);
        node
    }

    /// Live nodes of a tree, parents before children.
    pub fn tree(&self, root: &str) -> Vec<NodeInfo> {
        let Ok(id) = u64::from_str_radix(root, 16) else {
            return Vec::new();
        };
        let Some(tree) = self.roots.lock().get(&id).and_then(Weak::upgrade) else {
            return Vec::new();
        };
        let nodes: Vec<Arc<Node>> = tree
            .nodes
            .lock()
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        let mut out: Vec<NodeInfo> = nodes.iter().map(|n| n.info()).collect();
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
        let count = node
            .tree
            .nodes
            .lock()
            .iter()
            .filter(|(p, w)| (p.as_str() == path || p.starts_with(&prefix)) && w.strong_count() > 0)
            .count();
        node.kill(Error::Cancelled {
            context: format!("{path} (cancelled by operator)"),
        });
        count as u32
    }

    /// Live trees (for stats).
    pub fn live_trees(&self) -> usize {
        self.roots
            .lock()
            .values()
            .filter(|w| w.strong_count() > 0)
            .count()
    }
}

impl Node {
    /// Cancels this node's branch, remembering why.
    pub fn kill(&self, why: Error) {
        let _ = self.reason.set(why.into_failure());
        self.cancel.cancel();
    }

    /// Why this node (or the nearest ancestor that was killed) was cancelled.
    pub fn cancel_reason(&self) -> Failure {
        let mut cur = Some(self);
        while let Some(n) = cur {
            if let Some(r) = n.reason.get() {
                return r.clone();
            }
            cur = n.parent.as_deref();
        }
        Error::Cancelled {
            context: self.path.clone(),
        }
        .into_failure()
    }

    /// The time left before the deadline (None = no deadline).
    pub fn remaining(&self) -> Option<std::time::Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// The root id, hex.
    pub fn root(&self) -> &str {
        self.path.split('.').next().unwrap_or_default()
    }

    fn info(&self) -> NodeInfo {
        NodeInfo {
            path: self.path.clone(),
            service: self.service.clone(),
            plugin: self.plugin.get().map(|p| p.to_string()).unwrap_or_default(),
            state: if self.cancel.is_cancelled() {
                "cancelled"
            } else {
                "running"
            },
            elapsed_us: self.started.elapsed().as_micros() as u64,
        }
    }
}

/// `<16 hex digits>.<n>`, without the formatting machinery (every root
/// call builds one).
fn root_path(id: u64, n: u32) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(28);
    for shift in (0..16).rev() {
        s.push(HEX[((id >> (shift * 4)) & 0xf) as usize] as char);
    }
    s.push('.');
    push_decimal(&mut s, n);
    s
}

/// `<parent>.<n>`.
fn child_path(parent: &str, n: u32) -> String {
    let mut s = String::with_capacity(parent.len() + 11);
    s.push_str(parent);
    s.push('.');
    push_decimal(&mut s, n);
    s
}

fn push_decimal(s: &mut String, mut n: u32) {
    let mut digits = [0u8; 10];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for d in &digits[i..] {
        s.push(*d as char);
    }
}

/// Splits a path into its root id and depth; None when malformed.
pub fn parse_path(path: &str) -> Option<(u64, u64)> {
    if path.len() > 1024 {
        return None;
    }
    let mut parts = path.split('.');
    let root = parts.next()?;
    if root.is_empty() || root.len() > 16 {
        return None;
    }
    let id = u64::from_str_radix(root, 16).ok()?;
    let mut depth = 0;
    for p in parts {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.len() > 9 {
            return None;
        }
        depth += 1;
    }
    Some((id, depth))
}

fn path_key(path: &str) -> Vec<u64> {
    path.split('.')
        .skip(1)
        .map(|p| p.parse().unwrap_or(0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(service: &str) -> ChildSpec<'_> {
        ChildSpec {
            service,
            caller: None,
            deadline: None,
            budget_header: None,
            traceparent: None,
            is_call: true,
        }
    }

    #[test]
    fn paths_number_children_in_order() {
        let c = Contexts::new(BudgetConfig::default());
        let a = c.child(Parent::None, spec("a")).expect("root call");
        assert!(a.path.ends_with(".1"));
        let b1 = c.child(Parent::Node(a.clone()), spec("b")).expect("child");
        let b2 = c
            .child(Parent::Path(a.path.clone()), spec("b"))
            .expect("child by path");
        assert_eq!(b1.path, format!("{}.1", a.path));
        assert_eq!(b2.path, format!("{}.2", a.path));
        assert_eq!(b2.depth, 2);
        assert_eq!(c.tree(a.root()).len(), 3);
        drop((b1, b2));
        assert_eq!(c.tree(a.root()).len(), 1);
    }

    #[test]
    fn cancel_kills_branch_only() {
        let c = Contexts::new(BudgetConfig::default());
        let a = c.child(Parent::None, spec("a")).expect("root");
        let b = c.child(Parent::Node(a.clone()), spec("b")).expect("b");
        let b1 = c.child(Parent::Node(b.clone()), spec("b1")).expect("b1");
        let s = c
            .child(Parent::Node(a.clone()), spec("s"))
            .expect("sibling");
        assert_eq!(c.cancel(&b.path), 2);
        assert!(b1.cancel.is_cancelled());
        assert!(!s.cancel.is_cancelled());
        assert!(!a.cancel.is_cancelled());
        assert!(b1.cancel_reason().message.contains("operator"));
    }

    #[test]
    fn depth_budget_kills_parent_branch() {
        let cfg = BudgetConfig {
            depth: 2,
            ..BudgetConfig::default()
        };
        let c = Contexts::new(cfg);
        let a = c.child(Parent::None, spec("a")).expect("depth 1");
        let b = c
            .child(Parent::Node(a.clone()), spec("b"))
            .expect("depth 2");
        let err = c
            .child(Parent::Node(b.clone()), spec("c"))
            .expect_err("depth 3");
        assert!(err.to_string().contains("depth"), "{err}");
        assert!(b.cancel.is_cancelled());
        assert!(!a.cancel.is_cancelled());
    }

    #[test]
    fn path_formatting_matches_fmt() {
        for (id, n) in [
            (0u64, 1u32),
            (0xff, 9),
            (u64::MAX, 10),
            (0x5f0c9a1e2b3d4c6f, u32::MAX),
        ] {
            assert_eq!(root_path(id, n), format!("{id:016x}.{n}"));
            assert_eq!(child_path("ab.1", n), format!("ab.1.{n}"));
        }
    }

    #[test]
    fn malformed_paths_rejected() {
        assert_eq!(parse_path("00000000000000ff.1.2"), Some((255, 2)));
        for bad in ["", "zz", "ff..1", "ff.x", "ff.1.", "11111111111111111.1"] {
            assert!(parse_path(bad).is_none(), "{bad}");
        }
    }
}
