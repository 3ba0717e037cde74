//! Where a call or event comes from in the context tree, and what it
//! inherits from there: its parent, headers and deadline.

use std::collections::HashMap;
#[cfg(feature = "in-process")]
use std::sync::Arc;
use std::time::Instant;

#[cfg(feature = "in-process")]
use kernel_core::Parent;
use kernel_proto::headers as h;

/// Where a call or event comes from in the context tree (set by [`crate::Context`]).
#[derive(Debug, Clone, Default)]
pub(crate) enum Origin {
    /// A top-level request.
    #[default]
    Root,
    /// A remote handler's context: its path, deadline and inherited headers.
    Remote {
        path: String,
        deadline: Option<Instant>,
        headers: HashMap<String, String>,
    },
    /// An in-process handler's context node.
    #[cfg(feature = "in-process")]
    Local(Arc<kernel_core::ContextNode>, HashMap<String, String>),
}

/// Where an in-process call or emit hangs, and the headers it inherits.
#[cfg(feature = "in-process")]
pub(crate) fn local_parent(origin: &Origin) -> (Parent, HashMap<String, String>) {
    match origin {
        Origin::Root => (Parent::None, HashMap::new()),
        #[cfg(feature = "in-process")]
        Origin::Local(node, hs) => (Parent::Node(node.clone()), hs.clone()),
        Origin::Remote { path, headers, .. } => (Parent::Path(path.clone()), headers.clone()),
    }
}

pub(crate) fn origin_headers(origin: &Origin) -> HashMap<String, String> {
    match origin {
        Origin::Root => HashMap::new(),
        Origin::Remote { path, headers, .. } => {
            let mut hs = headers.clone();
            hs.insert(h::CONTEXT.to_owned(), path.clone());
            hs
        }
        #[cfg(feature = "in-process")]
        Origin::Local(node, headers) => {
            let mut hs = headers.clone();
            hs.insert(h::CONTEXT.to_owned(), node.path().to_owned());
            hs
        }
    }
}

pub(crate) fn origin_deadline(origin: &Origin) -> Option<Instant> {
    match origin {
        Origin::Root => None,
        Origin::Remote { deadline, .. } => *deadline,
        #[cfg(feature = "in-process")]
        Origin::Local(node, _) => node.deadline,
    }
}

pub(crate) fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
