//! Providing services: the [`Plugin`] builder, its remote session (Register
//! stream with heartbeats, cancel and drain handling, reconnect with backoff)
//! and its in-process attachment.

use std::collections::HashMap;

use rustc_hash::FxHashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
#[cfg(feature = "in-process")]
use kernel_core::{BoxFuture, Kernel, LocalCall, LocalHandler, LocalRegistration};
use kernel_proto::trace::Telemetry;
use kernel_proto::v1::{self as pb, Failure, RegisterMode};
use parking_lot::Mutex;
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::client::{channel, Client};
use crate::context::Context;
use crate::error::Error;
use crate::wire::Tls;
use kernel_proto::batch::batched;

/// How long a drained session waits for the kernel to acknowledge its close.
const DRAIN_FLUSH: Duration = Duration::from_secs(5);

/// How long a cancelled handler may run on before its task is aborted.
const CANCEL_GRACE: Duration = Duration::from_secs(5);

pub use crate::handler::HandlerResult;
use crate::handler::{end_span, in_span};
use crate::handler::{guarded, handler_span, run_handler, Handler};

/// A plugin: a name and the services it provides.
#[derive(Clone)]
pub struct Plugin {
    name: String,
    instance_id: String,
    services: Vec<pb::ServiceDecl>,
    /// By service name, looked up on every call (FxHash: the names are the
    /// plugin's own, so SipHash's flood resistance buys nothing here).
    handlers: FxHashMap<String, Handler>,
    max_concurrency: u32,
    mode: RegisterMode,
    max_reply_bytes: usize,
    telemetry: Telemetry,
    topic_schemas: HashMap<String, String>,
    /// The bearer token to present (else `KERNEL_TOKEN`).
    token: Option<String>,
    tls: Option<Tls>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("services", &self.handlers.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// How a remote session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// The kernel told this instance to drain, and it did.
    Drained(String),
    /// The caller's shutdown token fired.
    Shutdown,
}

impl Plugin {
    /// A plugin named `name` providing nothing yet.
    pub fn new(name: &str) -> Plugin {
        Plugin {
            name: name.to_owned(),
            // A supervised plugin gets its instance id from the plugin host,
            // which tells its instances apart by it (hot reload).
            instance_id: std::env::var("KERNEL_INSTANCE_ID").unwrap_or_default(),
            services: Vec::new(),
            handlers: FxHashMap::default(),
            max_concurrency: 0,
            mode: RegisterMode::Pool,
            max_reply_bytes: 4 * 1024 * 1024,
            telemetry: Telemetry::disabled(),
            topic_schemas: HashMap::new(),
            token: None,
            tls: None,
        }
    }

    /// Provides `service` with an async handler over raw bytes.
    pub fn provide<F, Fut>(mut self, service: &str, handler: F) -> Plugin
    where
        F: Fn(Context, Bytes) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        let h: Handler = Arc::new(move |ctx, payload, max_reply| {
            // A handler that panics before it returns its future (say,
            // indexing an empty payload) is caught here, inside the call,
            // like one that panics while it runs.
            let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                handler(ctx.clone(), payload)
            }));
            Box::pin(guarded(started, ctx, max_reply))
        });
        self.handlers.insert(service.to_owned(), h);
        self.services.push(pb::ServiceDecl {
            name: service.to_owned(),
            ..Default::default()
        });
        self
    }

    /// Provides `service` with a typed JSON handler.
    pub fn provide_json<T, R, F, Fut>(self, service: &str, handler: F) -> Plugin
    where
        T: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(Context, T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, Error>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        self.provide(service, move |ctx, payload| {
            let handler = handler.clone();
            async move {
                let args: T = serde_json::from_slice(&payload).map_err(|e| {
                    Error::invalid_argument(format!("arguments are not the expected JSON: {e}"))
                })?;
                let out = handler(ctx, args).await?;
                Ok(Bytes::from(serde_json::to_vec(&out)?))
            }
        })
    }

    /// Attaches a JSON Schema to a method of a service already provided
    /// (`""` for calls without a method).
    pub fn schema(mut self, service: &str, method: &str, schema: &str) -> Plugin {
        if let Some(s) = self.services.iter_mut().find(|s| s.name == service) {
            s.method_schemas
                .insert(method.to_owned(), schema.to_owned());
        }
        self
    }

    /// Declares a JSON Schema for events on topics matching `pattern`
    /// (`order.*`, `audit.>`): while this plugin is registered, the kernel
    /// refuses (`INVALID_ARGUMENT`) any publish on a matching topic whose
    /// payload does not validate, whoever publishes it.
    pub fn topic_schema(mut self, pattern: &str, schema: &str) -> Plugin {
        self.topic_schemas
            .insert(pattern.to_owned(), schema.to_owned());
        self
    }

    /// How many invocations this instance runs at once (0 = kernel default).
    pub fn max_concurrency(mut self, n: u32) -> Plugin {
        self.max_concurrency = n;
        self
    }

    /// Replace existing providers of these names (hot swap) instead of
    /// joining their pool.
    pub fn replace(mut self) -> Plugin {
        self.mode = RegisterMode::Replace;
        self
    }

    /// Exports a span per handled call through `telemetry` (see
    /// [`Telemetry::from_config`], which reads the standard `OTEL_*`
    /// variables). Nested calls and emits become children of that span.
    pub fn telemetry(mut self, telemetry: Telemetry) -> Plugin {
        self.telemetry = telemetry;
        self
    }

    /// Presents `token` to the node (with auth on, the node knows the
    /// plugin by it); by default `KERNEL_TOKEN`, which the node sets for the
    /// plugins it supervises.
    pub fn token(mut self, token: &str) -> Plugin {
        self.token = Some(token.to_owned());
        self
    }

    /// TLS settings for an `https://` node (default: [`Tls::from_env`]).
    pub fn tls(mut self, tls: Tls) -> Plugin {
        self.tls = Some(tls);
        self
    }

    /// A fixed instance id (default: made up by the kernel).
    pub fn instance_id(mut self, id: &str) -> Plugin {
        self.instance_id = id.to_owned();
        self
    }

    /// Registers in-process: calls reach the handlers directly through the
    /// kernel pipeline. Dropping the returned value deregisters.
    #[cfg(feature = "in-process")]
    pub fn attach(self, kernel: &Arc<Kernel>) -> Result<LocalRegistration, Error> {
        let client = Client::in_process(kernel.clone()).with_plugin(&self.name);
        let adapter = Arc::new(LocalAdapter {
            handlers: self.handlers,
            client,
            telemetry: self.telemetry,
            plugin: self.name.clone(),
        });
        kernel
            .register_local(
                &self.name,
                self.services,
                adapter,
                self.mode,
                self.max_concurrency,
                &self.topic_schemas,
            )
            .map_err(|e| Error::from(e.into_failure()))
    }

    /// Serves out-of-process until drained or `shutdown` fires; reconnects
    /// with backoff (100 ms doubling to 5 s) when the node goes away.
    pub async fn serve(self, url: &str, shutdown: CancellationToken) -> Result<SessionEnd, Error> {
        let tls = match &self.tls {
            Some(t) => t.clone(),
            None => Tls::from_env()?,
        };
        let channel = channel(url, &tls)?;
        let mut client = Client::from_channel(url, channel).with_plugin(&self.name);
        if let Some(token) = &self.token {
            client = client.with_token(token);
        }
        let plugin = Arc::new(self);
        let mut backoff = Duration::from_millis(100);
        loop {
            let started = Instant::now();
            match plugin.session(&client, &shutdown).await {
                Ok(end) => return Ok(end),
                Err(e) => {
                    if shutdown.is_cancelled() {
                        return Ok(SessionEnd::Shutdown);
                    }
                    // The kernel refused this plugin's hello (bad name,
                    // schema, duplicate instance id): retrying cannot help.
                    if matches!(
                        e.code(),
                        tonic::Code::InvalidArgument | tonic::Code::PermissionDenied
                    ) {
                        return Err(e);
                    }
                    if started.elapsed() > Duration::from_secs(10) {
                        backoff = Duration::from_millis(100);
                    }
                    tracing::warn!(plugin = %plugin.name, cause = %e, retry_ms = backoff.as_millis() as u64, "kernel session lost; reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => return Ok(SessionEnd::Shutdown),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn session(
        self: &Arc<Self>,
        client: &Client,
        shutdown: &CancellationToken,
    ) -> Result<SessionEnd, Error> {
        let (tx, rx) = mpsc::unbounded_channel::<Up>();
        let hello = pb::ProviderUp {
            hello: Some(pb::Hello {
                plugin: self.name.clone(),
                instance_id: self.instance_id.clone(),
                services: self.services.clone(),
                max_concurrency: self.max_concurrency,
                mode: self.mode as i32,
                topic_schemas: self.topic_schemas.clone(),
            }),
            ..Default::default()
        };
        let Some(remote) = client.remote() else {
            return Err(Error::internal("a remote session needs a remote client"));
        };
        let mut inbound = remote
            .kernel_client()
            .max_decoding_message_size(self.max_reply_bytes + 64 * 1024)
            .max_encoding_message_size(self.max_reply_bytes + 64 * 1024)
            .register(batched(rx, Some(hello), fold_up))
            .await?
            .into_inner();
        let welcome = inbound
            .message()
            .await?
            .and_then(|f| f.welcome)
            .ok_or_else(|| Error::internal("the kernel did not answer hello"))?;
        tracing::info!(plugin = %self.name, instance = %welcome.instance_id, "registered with the kernel");
        let heartbeat = Duration::from_millis(welcome.heartbeat_interval_ms.max(100));
        let running: Arc<Mutex<FxHashMap<u64, Running>>> = Arc::default();
        let mut draining: Option<String> = None;
        let mut beat = tokio::time::interval(heartbeat);
        let idle = Arc::new(tokio::sync::Notify::new());
        loop {
            if let Some(reason) = &draining {
                if running.lock().is_empty() {
                    // Half-close, then wait for the kernel to end the session:
                    // the last results are ahead of the close on the stream,
                    // so none is lost if the process exits right after.
                    drop(tx);
                    let _ = tokio::time::timeout(DRAIN_FLUSH, async {
                        while let Ok(Some(_)) = inbound.message().await {}
                    })
                    .await;
                    return Ok(SessionEnd::Drained(reason.clone()));
                }
            }
            let frame = tokio::select! {
                f = inbound.message() => f?,
                _ = beat.tick() => {
                    let _ = tx.send(Up::Heartbeat);
                    continue;
                }
                _ = idle.notified(), if draining.is_some() => continue,
                _ = shutdown.cancelled() => return Ok(SessionEnd::Shutdown),
            };
            let Some(frame) = frame else {
                return Err(Error::new(
                    tonic::Code::Unavailable,
                    "the kernel closed the session",
                ));
            };
            // Invocations first: a cancel batched into the same frame as its
            // invocation must find it running.
            for inv in frame.invocations {
                self.start(inv, client, &tx, &running, &idle);
            }
            for id in frame.cancels {
                if let Some(r) = running.lock().remove(&id) {
                    // The handler sees a cancelled context and may return on
                    // its own; one that ignores it is stopped after a grace.
                    r.cancel.cancel();
                    tokio::spawn(async move {
                        tokio::time::sleep(CANCEL_GRACE).await;
                        r.abort.abort();
                    });
                }
            }
            if let Some(d) = frame.drain {
                tracing::info!(plugin = %self.name, reason = %d.reason, "draining");
                draining = Some(d.reason);
            }
        }
    }

    fn start(
        self: &Arc<Self>,
        inv: pb::Invocation,
        client: &Client,
        tx: &mpsc::UnboundedSender<Up>,
        running: &Arc<Mutex<FxHashMap<u64, Running>>>,
        idle: &Arc<tokio::sync::Notify>,
    ) {
        let id = inv.call_id;
        let cancel = CancellationToken::new();
        let deadline =
            (inv.timeout_us > 0).then(|| Instant::now() + Duration::from_micros(inv.timeout_us));
        let mut headers = inv.headers;
        let span = handler_span(&self.telemetry, &self.name, &inv.service, &mut headers);
        let ctx = Context::remote(
            client.clone(),
            inv.service.clone(),
            inv.method,
            headers,
            deadline,
            cancel.clone(),
        );
        let handler = self.handlers.get(&inv.service).cloned();
        let tx = tx.clone();
        let map = running.clone();
        let idle = idle.clone();
        let max = self.max_reply_bytes;
        let mut guard = running.lock();
        let task = tokio::spawn(async move {
            let result = in_span(&span, run_handler(handler.as_ref(), ctx, inv.payload, max)).await;
            end_span(span, result.as_ref().err().map(|f| f.message.clone()));
            let still_wanted = map.lock().remove(&id).is_some();
            if still_wanted {
                let _ = tx.send(Up::Result(to_result(id, result)));
            }
            idle.notify_one();
        });
        guard.insert(
            id,
            Running {
                cancel,
                abort: task.abort_handle(),
            },
        );
    }
}

struct Running {
    cancel: CancellationToken,
    abort: tokio::task::AbortHandle,
}

enum Up {
    Result(pb::CallResult),
    Heartbeat,
}

fn fold_up(items: Vec<Up>) -> pb::ProviderUp {
    let mut f = pb::ProviderUp::default();
    for i in items {
        match i {
            Up::Result(r) => f.results.push(r),
            Up::Heartbeat => f.heartbeat = true,
        }
    }
    f
}

fn to_result(call_id: u64, r: Result<Bytes, Failure>) -> pb::CallResult {
    match r {
        Ok(payload) => pb::CallResult {
            call_id,
            payload,
            content_type: String::new(),
            error: None,
        },
        Err(f) => pb::CallResult {
            call_id,
            error: Some(f),
            ..Default::default()
        },
    }
}

/// In-process handlers behind the kernel's [`LocalHandler`] trait.
#[cfg(feature = "in-process")]
struct LocalAdapter {
    /// By service name, looked up on every call (FxHash: the names are the
    /// plugin's own, so SipHash's flood resistance buys nothing here).
    handlers: FxHashMap<String, Handler>,
    client: Client,
    telemetry: Telemetry,
    plugin: String,
}

#[cfg(feature = "in-process")]
impl LocalHandler for LocalAdapter {
    fn invoke(&self, mut call: LocalCall) -> BoxFuture<Result<Bytes, Failure>> {
        let payload = std::mem::take(&mut call.payload);
        if !self.telemetry.enabled() {
            // The handler's own future is the call's: one box in all.
            let handler = self.handlers.get(&call.service);
            let ctx = Context::local(self.client.clone(), call);
            return run_handler(handler, ctx, payload, usize::MAX);
        }
        let handler = self.handlers.get(&call.service).cloned();
        call.headers.insert(
            kernel_proto::headers::CONTEXT.to_owned(),
            call.context.path().to_owned(),
        );
        let span = handler_span(
            &self.telemetry,
            &self.plugin,
            &call.service,
            &mut call.headers,
        );
        call.headers.remove(kernel_proto::headers::CONTEXT);
        let ctx = Context::local(self.client.clone(), call);
        Box::pin(async move {
            let call = run_handler(handler.as_ref(), ctx, payload, usize::MAX);
            let result = in_span(&span, call).await;
            end_span(span, result.as_ref().err().map(|f| f.message.clone()));
            result
        })
    }
}
