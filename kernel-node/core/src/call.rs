//! A call as the kernel sees it, whoever made it and whoever answers it:
//! the [`Request`], its [`Reply`] and the header map both carry. Below the
//! provider, the registry, the middleware and the router, which all speak
//! these types.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::context::{Node, Parent};

/// Header map of a call (same names as gRPC metadata).
pub type Headers = HashMap<String, String>;

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A successful call result.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    /// The reply body.
    pub payload: Bytes,
    /// Its content type.
    pub content_type: String,
    /// The context node the call ran under, set by the kernel on the way
    /// out when the request asked for it ([`Request::report_context`]: the
    /// edge tells a unary caller its path and trace from it); providers
    /// leave it `None`.
    pub context: Option<std::sync::Arc<Node>>,
}

/// A call as the kernel sees it, whoever made it.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// The service to call.
    pub service: String,
    /// The method (may be empty).
    pub method: String,
    /// The arguments.
    pub payload: Bytes,
    /// Their content type (empty = JSON).
    pub content_type: String,
    /// Caller-supplied headers; only trace, baggage and budget are honoured.
    pub headers: Headers,
    /// Where the call hangs in the context tree.
    pub parent: Parent,
    /// The caller's absolute deadline.
    pub deadline: Option<Instant>,
    /// The calling plugin, as the kernel knows it (never from a header).
    pub caller: Option<Arc<str>>,
    /// Whether the reply should name the call's context node
    /// ([`Reply::context`]): only a caller that reports it asks (the unary
    /// edge), so other calls do not hold the node past their end.
    pub report_context: bool,
}
