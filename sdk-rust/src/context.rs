//! The handler's view of its call: identity in the tree, deadline,
//! cancellation, headers, and nested calls/emits that inherit all of it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kernel_proto::headers as h;
use serde::{de::DeserializeOwned, Serialize};
use tokio_util::sync::CancellationToken;

use crate::client::{CallOptions, Client, Published, Reply};
use crate::error::Error;
use crate::origin::Origin;

/// A running call's context. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Context {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: Client,
    service: String,
    method: String,
    caller: Option<String>,
    origin: Origin,
    /// A remote call's cancellation (an in-process call reads its node's).
    cancel: Option<CancellationToken>,
}

impl Context {
    pub(crate) fn remote(
        client: Client,
        service: String,
        method: String,
        mut headers: HashMap<String, String>,
        deadline: Option<Instant>,
        cancel: CancellationToken,
    ) -> Context {
        let path = headers.remove(h::CONTEXT).unwrap_or_default();
        let caller = headers.remove(h::CALLER);
        Context {
            inner: Arc::new(Inner {
                client,
                service,
                method,
                caller,
                origin: Origin::Remote {
                    path,
                    deadline,
                    headers,
                },
                cancel: Some(cancel),
            }),
        }
    }

    #[cfg(feature = "in-process")]
    pub(crate) fn local(client: Client, call: kernel_core::LocalCall) -> Context {
        let headers = call.headers;
        Context {
            inner: Arc::new(Inner {
                client,
                service: call.service,
                method: call.method,
                caller: call.caller.map(|c| c.to_string()),
                origin: Origin::Local(call.context, headers),
                cancel: None,
            }),
        }
    }

    /// The service this call was made to.
    pub fn service(&self) -> &str {
        &self.inner.service
    }

    /// The method (may be empty).
    pub fn method(&self) -> &str {
        &self.inner.method
    }

    /// This call's context path, e.g. `5f0c9a1e2b3d4c6f.1.2`.
    pub fn path(&self) -> &str {
        match &self.inner.origin {
            Origin::Remote { path, .. } => path,
            #[cfg(feature = "in-process")]
            Origin::Local(node, _) => node.path(),
            Origin::Root => "",
        }
    }

    /// The calling plugin, as the kernel identified it.
    pub fn caller(&self) -> Option<&str> {
        self.inner.caller.as_deref()
    }

    /// A context header (`traceparent`, `baggage`, `x-kernel-budget`, ...).
    pub fn header(&self, name: &str) -> Option<&str> {
        match &self.inner.origin {
            Origin::Remote { headers, .. } => headers.get(name).map(String::as_str),
            #[cfg(feature = "in-process")]
            Origin::Local(_, headers) => headers.get(name).map(String::as_str),
            Origin::Root => None,
        }
    }

    /// The W3C baggage that flowed down to this call.
    pub fn baggage(&self) -> Option<&str> {
        self.header(h::BAGGAGE)
    }

    /// The trace id this call belongs to.
    pub fn trace_id(&self) -> Option<&str> {
        match (self.header(h::TRACEPARENT), &self.inner.origin) {
            (Some(tp), _) => h::trace_id(tp),
            // In-process calls inherit the tree's trace without copying it.
            #[cfg(feature = "in-process")]
            (None, Origin::Local(node, _)) => h::trace_id(node.tree().traceparent()),
            (None, _) => None,
        }
    }

    /// Time left before the deadline; None when there is no deadline.
    pub fn remaining(&self) -> Option<Duration> {
        match &self.inner.origin {
            Origin::Remote { deadline, .. } => {
                deadline.map(|d| d.saturating_duration_since(Instant::now()))
            }
            #[cfg(feature = "in-process")]
            Origin::Local(node, _) => node.remaining(),
            Origin::Root => None,
        }
    }

    /// True once the caller went away, the deadline passed on the kernel's
    /// side, or the branch was cancelled.
    pub fn is_cancelled(&self) -> bool {
        match (&self.inner.cancel, &self.inner.origin) {
            (Some(token), _) => token.is_cancelled(),
            #[cfg(feature = "in-process")]
            (None, Origin::Local(node, _)) => node.is_cancelled(),
            (None, _) => false,
        }
    }

    /// Resolves when the call is cancelled.
    pub async fn cancelled(&self) {
        match (&self.inner.cancel, &self.inner.origin) {
            (Some(token), _) => token.cancelled().await,
            #[cfg(feature = "in-process")]
            (None, Origin::Local(node, _)) => node.cancelled().await,
            (None, _) => std::future::pending().await,
        }
    }

    /// A client for calls that are not part of this call's tree.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// A nested call: child of this context, same trace and baggage, the
    /// remaining deadline.
    pub async fn call(&self, service: &str, payload: impl Into<Bytes>) -> Result<Bytes, Error> {
        self.call_with(service, payload, CallOptions::default())
            .await
            .map(|r| r.payload)
    }

    /// A nested call with options.
    pub async fn call_with(
        &self,
        service: &str,
        payload: impl Into<Bytes>,
        opts: CallOptions,
    ) -> Result<Reply, Error> {
        if self.is_cancelled() {
            return Err(Error::new(
                tonic::Code::Cancelled,
                format!("context {} is cancelled", self.path()),
            ));
        }
        self.inner
            .client
            .call_in(&self.inner.origin, service, payload.into(), opts)
            .await
    }

    /// A nested call with JSON in and out.
    pub async fn call_json<T: Serialize, R: DeserializeOwned>(
        &self,
        service: &str,
        args: &T,
    ) -> Result<R, Error> {
        let bytes = self.call(service, serde_json::to_vec(args)?).await?;
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// Emits an event from this context (charged to its `events` budget).
    pub fn emit(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
    ) -> impl std::future::Future<Output = Result<Published, Error>> + Send + '_ {
        self.inner
            .client
            .publish_in(&self.inner.origin, topic, payload.into(), self.remaining())
    }

    /// The headers an emit from this context carries: its trace, baggage
    /// and context path.
    #[cfg(feature = "postgres")]
    pub(crate) fn origin_headers(&self) -> HashMap<String, String> {
        crate::origin::origin_headers(&self.inner.origin)
    }

    /// Charges a custom budget counter (e.g. `sql`). When the budget is spent
    /// this fails with `RESOURCE_EXHAUSTED` and the kernel cancels this branch.
    pub async fn charge(&self, counter: &str, amount: u64) -> Result<u64, Error> {
        match &self.inner.origin {
            #[cfg(feature = "in-process")]
            Origin::Local(node, _) => {
                let Some(kernel) = self.inner.client.kernel() else {
                    return Err(Error::internal("in-process context without a kernel"));
                };
                kernel
                    .charge(node, counter, amount)
                    .map_err(|e| Error::from(e.into_failure()))
            }
            Origin::Remote { path, .. } => {
                self.inner.client.charge_remote(path, counter, amount).await
            }
            Origin::Root => Err(Error::invalid_argument("no context to charge")),
        }
    }
}
