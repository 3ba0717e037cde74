//! The client: calls and publishes, over a CallStream to a remote node or
//! straight into an in-process kernel.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
#[cfg(feature = "in-process")]
use kernel_core::{Kernel, Parent, Publication};
use kernel_proto::headers as h;
use kernel_proto::v1::{self as pb, kernel_client::KernelClient, Failure};
use parking_lot::Mutex;
use serde::{de::DeserializeOwned, Serialize};
use tonic::transport::Channel;

use crate::wire::Tls;
pub(crate) use crate::wire::{channel, insert_meta, Bearer, Wire};
use tonic::Code;

use crate::error::Error;
use crate::mux::Mux;
#[cfg(feature = "in-process")]
use crate::origin::local_parent;
pub(crate) use crate::origin::Origin;
use crate::origin::{earliest, origin_deadline, origin_headers};
use kernel_proto::batch::batched;

/// Per-call options.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// The method within the service.
    pub method: String,
    /// Content type of the payload (JSON when empty).
    pub content_type: String,
    /// How long the call may take.
    pub timeout: Option<Duration>,
    /// Extra headers: `traceparent`, `baggage`, `x-kernel-context`,
    /// `x-kernel-budget` are honoured by the kernel.
    pub headers: HashMap<String, String>,
}

/// A reply: payload and content type.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    /// The body.
    pub payload: Bytes,
    /// Its content type.
    pub content_type: String,
}

/// What a publish returns.
#[derive(Debug, Clone)]
pub struct Published {
    id: PublishedId,
    /// Subscriptions that got it.
    pub matched: u32,
}

/// An in-process publish gets the id as a number and writes it only when
/// asked; a remote one gets the wire form.
#[derive(Debug, Clone)]
enum PublishedId {
    Wire(String),
    #[cfg(feature = "in-process")]
    Local(kernel_core::Accepted),
}

impl Published {
    /// The kernel-assigned event id (16 hex digits).
    pub fn event_id(&self) -> std::borrow::Cow<'_, str> {
        match &self.id {
            PublishedId::Wire(s) => s.as_str().into(),
            #[cfg(feature = "in-process")]
            PublishedId::Local(a) => a.event_id().into(),
        }
    }

    pub(crate) fn from_wire(event_id: String, matched: u32) -> Published {
        Published {
            id: PublishedId::Wire(event_id),
            matched,
        }
    }
}

type CallMux = Mux<CallUp, Result<Reply, Failure>>;

pub(crate) enum CallUp {
    Call(pb::CallFrame),
    Cancel(u64),
}

fn fold_calls(items: Vec<CallUp>) -> pb::CallStreamUp {
    let mut f = pb::CallStreamUp::default();
    for i in items {
        match i {
            CallUp::Call(c) => f.calls.push(c),
            CallUp::Cancel(id) => f.cancels.push(id),
        }
    }
    f
}

pub(crate) struct Remote {
    url: String,
    pub(crate) channel: Channel,
    bearer: Bearer,
    calls: Mutex<Option<Arc<CallMux>>>,
    opening: tokio::sync::Mutex<()>,
}

#[derive(Clone)]
enum Transport {
    Remote(Arc<Remote>),
    #[cfg(feature = "in-process")]
    Local(Arc<Kernel>),
}

/// A handle for calling services and publishing events. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    transport: Transport,
    plugin: Option<Arc<str>>,
    /// Spans for events handled through [`Client::subscribe`] (off unless
    /// set with [`Client::telemetry`]).
    pub(crate) telemetry: kernel_proto::trace::Telemetry,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("plugin", &self.plugin)
            .finish()
    }
}

impl Remote {
    fn new(url: &str, channel: Channel, bearer: Bearer) -> Arc<Remote> {
        Arc::new(Remote {
            url: url.to_owned(),
            channel,
            bearer,
            calls: Mutex::new(None),
            opening: tokio::sync::Mutex::new(()),
        })
    }

    /// A generated client for one RPC (cheap: the channel is shared).
    pub(crate) fn kernel_client(&self) -> Wire {
        KernelClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }
}

impl Client {
    /// A client of the node at `url` (e.g. `http://127.0.0.1:50051`). The
    /// connection is made on first use and re-made after the node restarts.
    /// It presents the token in `KERNEL_TOKEN` when that is set (a plugin
    /// the node supervises gets its own there); see [`Client::with_token`].
    /// An `https://` URL is TLS, trusting the CA in `KERNEL_TLS_CA` (else
    /// the system's roots), with the client certificate in
    /// `KERNEL_TLS_CERT`/`KERNEL_TLS_KEY` when set; see [`Client::connect_tls`].
    pub fn connect(url: &str) -> Result<Client, Error> {
        Client::connect_tls(url, &Tls::from_env()?)
    }

    /// The same with explicit TLS settings (used for an `https://` URL).
    pub fn connect_tls(url: &str, tls: &Tls) -> Result<Client, Error> {
        let channel = channel(url, tls)?;
        Ok(Client::from_channel(url, channel))
    }

    pub(crate) fn from_channel(url: &str, channel: Channel) -> Client {
        Client {
            transport: Transport::Remote(Remote::new(
                url,
                channel,
                Bearer::new(&std::env::var("KERNEL_TOKEN").unwrap_or_default()),
            )),
            plugin: None,
            telemetry: kernel_proto::trace::Telemetry::disabled(),
        }
    }

    /// A client inside the node's process: calls go through the same kernel
    /// pipeline with no HTTP/2 and no envelope encoding.
    #[cfg(feature = "in-process")]
    pub fn in_process(kernel: Arc<Kernel>) -> Client {
        Client {
            transport: Transport::Local(kernel),
            plugin: None,
            telemetry: kernel_proto::trace::Telemetry::disabled(),
        }
    }

    /// The same client, presenting `token` (`authorization: Bearer …`) on
    /// every request: with auth on, the node knows the plugin by it.
    pub fn with_token(mut self, token: &str) -> Client {
        // Irrefutable without the `in-process` feature.
        #[allow(irrefutable_let_patterns)]
        if let Transport::Remote(r) = &self.transport {
            self.transport =
                Transport::Remote(Remote::new(&r.url, r.channel.clone(), Bearer::new(token)));
        }
        self
    }

    /// The same client, identifying itself as `plugin` (the kernel sets
    /// `x-kernel-caller` from this; with auth off it is a claim, with auth
    /// on the token decides and this must match it).
    pub fn with_plugin(mut self, plugin: &str) -> Client {
        self.plugin = Some(plugin.into());
        self
    }

    /// The same client, exporting a `plugin.event` span through
    /// `telemetry` for each event its [`Client::subscribe`] handlers take:
    /// a child of the kernel's delivery span, so the handling lands in the
    /// publisher's trace (and calls or events the handler makes with the
    /// event's `traceparent` nest under it).
    pub fn telemetry(mut self, telemetry: kernel_proto::trace::Telemetry) -> Client {
        self.telemetry = telemetry;
        self
    }

    /// The plugin identity this client claims.
    pub fn plugin_name(&self) -> Option<String> {
        self.plugin.as_deref().map(str::to_owned)
    }

    /// The in-process kernel, if this client is in-process.
    #[cfg(feature = "in-process")]
    pub fn kernel(&self) -> Option<&Arc<Kernel>> {
        match &self.transport {
            #[cfg(feature = "in-process")]
            Transport::Local(k) => Some(k),
            Transport::Remote(_) => None,
        }
    }

    pub(crate) fn remote(&self) -> Option<&Arc<Remote>> {
        match &self.transport {
            Transport::Remote(r) => Some(r),
            #[cfg(feature = "in-process")]
            Transport::Local(_) => None,
        }
    }

    /// Calls `service` with `payload`; returns the reply payload.
    pub async fn call(&self, service: &str, payload: impl Into<Bytes>) -> Result<Bytes, Error> {
        self.call_in(
            &Origin::Root,
            service,
            payload.into(),
            CallOptions::default(),
        )
        .await
        .map(|r| r.payload)
    }

    /// Calls with options.
    pub async fn call_with(
        &self,
        service: &str,
        payload: impl Into<Bytes>,
        opts: CallOptions,
    ) -> Result<Reply, Error> {
        self.call_in(&Origin::Root, service, payload.into(), opts)
            .await
    }

    /// Calls with JSON in and out.
    pub async fn call_json<T: Serialize, R: DeserializeOwned>(
        &self,
        service: &str,
        args: &T,
    ) -> Result<R, Error> {
        let bytes = self.call(service, serde_json::to_vec(args)?).await?;
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// Publishes an event (unary; see [`crate::Publisher`] for pipelining
    /// and [`crate::BulkPublisher`] for bulk).
    pub fn publish(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
    ) -> impl std::future::Future<Output = Result<Published, Error>> + Send + '_ {
        self.publish_in(&Origin::Root, topic, payload.into(), None)
    }

    /// Publishes, waiting at most `timeout` for subscriber buffer space.
    pub fn publish_with_timeout(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Result<Published, Error>> + Send + '_ {
        self.publish_in(&Origin::Root, topic, payload.into(), Some(timeout))
    }

    pub(crate) async fn call_in(
        &self,
        origin: &Origin,
        service: &str,
        payload: Bytes,
        opts: CallOptions,
    ) -> Result<Reply, Error> {
        match &self.transport {
            #[cfg(feature = "in-process")]
            Transport::Local(kernel) => {
                let (parent, mut headers) = local_parent(origin);
                // A plain root call has no headers: skip hashing into an
                // empty map.
                if !opts.headers.is_empty() {
                    headers.extend(opts.headers);
                }
                let named = if headers.is_empty() {
                    None
                } else {
                    headers.remove(h::CONTEXT)
                };
                let parent = match named {
                    Some(p) if matches!(parent, Parent::None) => Parent::Path(p),
                    _ => parent,
                };
                let r = kernel
                    .call(kernel_core::Request {
                        service: service.to_owned(),
                        method: opts.method,
                        payload,
                        content_type: opts.content_type,
                        headers,
                        parent,
                        deadline: opts.timeout.map(|t| Instant::now() + t),
                        caller: self.plugin.clone(),
                        report_context: false,
                    })
                    .await?;
                Ok(Reply {
                    payload: r.payload,
                    content_type: r.content_type,
                })
            }
            Transport::Remote(remote) => {
                let mut headers = origin_headers(origin);
                headers.extend(opts.headers);
                let deadline = earliest(
                    origin_deadline(origin),
                    opts.timeout.map(|t| Instant::now() + t),
                );
                if deadline.is_some_and(|d| d <= Instant::now()) {
                    return Err(Error::new(
                        Code::DeadlineExceeded,
                        format!("deadline passed before calling `{service}`"),
                    ));
                }
                let timeout_us = deadline.map_or(0, |d| {
                    d.saturating_duration_since(Instant::now())
                        .as_micros()
                        .max(1) as u64
                });
                let frame = pb::CallFrame {
                    id: 0,
                    service: service.to_owned(),
                    method: opts.method,
                    payload,
                    content_type: opts.content_type,
                    headers,
                    timeout_us,
                };
                remote.call(self.plugin.as_deref(), frame).await
            }
        }
    }

    /// The local branch is the kernel's own publish future (ready at once
    /// unless a subscriber is full); the remote one is boxed, so an
    /// in-process publish never builds or moves the larger gRPC future.
    pub(crate) fn publish_in(
        &self,
        origin: &Origin,
        topic: &str,
        payload: Bytes,
        timeout: Option<Duration>,
    ) -> impl std::future::Future<Output = Result<Published, Error>> + Send + '_ {
        use futures::future::Either;
        #[cfg(feature = "in-process")]
        use futures::future::FutureExt;
        match &self.transport {
            #[cfg(feature = "in-process")]
            Transport::Local(kernel) => {
                let (parent, headers) = local_parent(origin);
                let publish = kernel.publish(Publication {
                    topic: topic.to_owned(),
                    payload,
                    content_type: String::new(),
                    headers,
                    parent,
                    deadline: timeout.map(|t| Instant::now() + t),
                    caller: self.plugin.clone(),
                    id: None,
                    settled: None,
                });
                Either::Left(publish.map(|r| match r {
                    Ok(a) => Ok(Published {
                        matched: a.matched,
                        id: PublishedId::Local(a),
                    }),
                    Err(e) => Err(Error::from(e.into_failure())),
                }))
            }
            Transport::Remote(remote) => {
                let mut req = tonic::Request::new(pb::PublishRequest {
                    topic: topic.to_owned(),
                    payload,
                    content_type: String::new(),
                    headers: HashMap::new(),
                });
                for (k, v) in origin_headers(origin) {
                    insert_meta(&mut req, &k, &v);
                }
                if let Some(p) = &self.plugin {
                    insert_meta(&mut req, h::PLUGIN, p);
                }
                if let Some(t) = timeout {
                    req.set_timeout(t);
                }
                let mut kernel = remote.kernel_client();
                let remote: futures::future::BoxFuture<'_, Result<Published, Error>> =
                    Box::pin(async move {
                        let r = kernel.publish(req).await?.into_inner();
                        Ok(Published::from_wire(r.event_id, r.matched))
                    });
                // Without the in-process branch, the other side is never built.
                #[cfg(not(feature = "in-process"))]
                let remote =
                    Either::<std::future::Ready<Result<Published, Error>>, _>::Right(remote);
                #[cfg(feature = "in-process")]
                let remote = Either::Right(remote);
                remote
            }
        }
    }

    /// Charges a custom budget counter of the context at `path` (remote).
    pub(crate) async fn charge_remote(
        &self,
        path: &str,
        counter: &str,
        amount: u64,
    ) -> Result<u64, Error> {
        let Some(remote) = self.remote() else {
            return Err(Error::internal("charge_remote on an in-process client"));
        };
        let mut req = tonic::Request::new(pb::ChargeRequest {
            counter: counter.to_owned(),
            amount,
        });
        insert_meta(&mut req, h::CONTEXT, path);
        let r = remote.kernel_client().charge(req).await?;
        Ok(r.into_inner().remaining)
    }
}

impl Remote {
    async fn mux(&self, plugin: Option<&str>) -> Result<Arc<CallMux>, Error> {
        if let Some(m) = self.calls.lock().as_ref().filter(|m| !m.is_dead()) {
            return Ok(m.clone());
        }
        let _one = self.opening.lock().await;
        if let Some(m) = self.calls.lock().as_ref().filter(|m| !m.is_dead()) {
            return Ok(m.clone());
        }
        let (mux, rx) = CallMux::new();
        let mut req = tonic::Request::new(batched(rx, None, fold_calls));
        if let Some(p) = plugin {
            insert_meta(&mut req, h::PLUGIN, p);
        }
        let mut inbound = self
            .kernel_client()
            .call_stream(req)
            .await
            .map_err(|s| {
                Error::new(
                    s.code(),
                    format!("opening a call stream to {}: {}", self.url, s.message()),
                )
            })?
            .into_inner();
        let reader = mux.clone();
        tokio::spawn(async move {
            while let Ok(Some(frame)) = inbound.message().await {
                for r in frame.replies {
                    let out = match r.error {
                        Some(f) => Err(f),
                        None => Ok(Reply {
                            payload: r.payload,
                            content_type: r.content_type,
                        }),
                    };
                    reader.complete(r.id, out);
                }
            }
            reader.fail_all(|| {
                Err(Failure {
                    code: Code::Unavailable as i32,
                    message: "the call stream to the kernel closed".into(),
                    causality: Vec::new(),
                })
            });
        });
        *self.calls.lock() = Some(mux.clone());
        Ok(mux)
    }

    async fn call(&self, plugin: Option<&str>, frame: pb::CallFrame) -> Result<Reply, Error> {
        let mut frame = Some(frame);
        for _ in 0..2 {
            let mux = self.mux(plugin).await?;
            let Some(f) = frame.take() else { break };
            let mut f = Some(f);
            let sent = mux.send(|id| {
                let mut f = f.take().unwrap_or_default();
                f.id = id;
                CallUp::Call(f)
            });
            match sent {
                Some((id, rx)) => {
                    let guard = CancelOnDrop { mux: &mux, id };
                    let out = rx.await;
                    std::mem::forget(guard);
                    return match out {
                        Ok(r) => r.map_err(Error::from),
                        Err(_) => Err(Error::new(
                            Code::Unavailable,
                            "the call stream to the kernel closed",
                        )),
                    };
                }
                // The stream died between lookup and send: the frame was not
                // sent, so it is safe to open a new stream and try once more.
                None => frame = f,
            }
        }
        Err(Error::new(
            Code::Unavailable,
            format!("cannot reach the kernel at {}", self.url),
        ))
    }
}

/// Sends a cancel frame when a call future is dropped before its reply.
struct CancelOnDrop<'a> {
    mux: &'a CallMux,
    id: u64,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if self.mux.forget(self.id) {
            self.mux.control(CallUp::Cancel(self.id));
        }
    }
}
