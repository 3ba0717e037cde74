//! The gRPC server: the Kernel and Admin services, `grpc.health.v1`, server
//! reflection, and [`run`].
//!
//! # Layout
//! - `register`: provider sessions.
//! - `call`: unary Call and the multiplexed CallStream.
//! - `events`: Publish, PublishStream, Subscribe.
//! - `admin`: the Admin service.
//! - `admin_http`: `/metrics`, `/healthz`, `/readyz`.
//! - `incoming`: accepting connections on the TCP port and the optional
//!   Unix-domain socket (a cap, and a deadline for the first byte).
//! - `metadata`: context headers and deadlines out of gRPC metadata.
//! - `stream_fault`: how a stream ends after an unreadable frame.
//! - `edge_metrics`, `edge_auth`, `edge_timeout`, `edge_log`: the
//!   transport edge's layers (requests counted, bearer tokens checked, time
//!   to a response head capped, failures logged by who is at fault).

mod admin;
mod admin_http;
mod call;
mod edge_auth;
mod edge_log;
mod edge_metrics;
mod edge_timeout;
mod events;
mod incoming;
mod metadata;
mod register;
mod stream_fault;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use kernel_proto::v1::{self as pb, admin_server::AdminServer, kernel_server::KernelServer};
use tonic::{Request, Response, Status, Streaming};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultMakeSpan, TraceLayer};

pub use admin::AdminService;
pub use admin_http::{serve_admin_http, serve_admin_http_with};
pub use incoming::Listeners;

use kernel_core::Kernel;
use kernel_proto::headers;

use crate::config::ServerConfig;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Envelope allowance on top of `router.max_payload_bytes` for gRPC messages
/// (ids, names, headers), so an at-limit payload still fits its frame.
const ENVELOPE_ALLOWANCE: usize = 64 * 1024;

/// Concurrent HTTP/2 streams one connection may hold (calls on a
/// CallStream do not count: they are multiplexed inside one stream).
const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

/// HTTP/2 flow-control windows and the largest frame the node accepts.
/// Larger than hyper's defaults (1 MiB windows, 16 KiB frames) so a bulk
/// publisher or a busy subscription moves batches of events in few frames
/// and few syscalls; memory per stream stays bounded by the window.
const STREAM_WINDOW: u32 = 4 << 20;
const CONNECTION_WINDOW: u32 = 8 << 20;
const MAX_FRAME: u32 = 256 << 10;

/// The Kernel RPCs over a [`Kernel`].
#[derive(Debug, Clone)]
pub struct KernelService {
    kernel: Arc<Kernel>,
    store: Option<Arc<crate::store::Store>>,
}

impl KernelService {
    /// The service over `kernel`, with the node's database when it has one
    /// (durable subscriptions).
    pub fn new(kernel: Arc<Kernel>, store: Option<Arc<crate::store::Store>>) -> Self {
        KernelService { kernel, store }
    }
}

#[tonic::async_trait]
impl pb::kernel_server::Kernel for KernelService {
    type RegisterStream = BoxStream<pb::ProviderDown>;
    type CallStreamStream = BoxStream<pb::CallStreamDown>;
    type PublishStreamStream = BoxStream<pb::PublishStreamDown>;
    type SubscribeStream = BoxStream<pb::SubscribeDown>;

    async fn register(
        &self,
        req: Request<Streaming<pb::ProviderUp>>,
    ) -> Result<Response<Self::RegisterStream>, Status> {
        let verified = self
            .kernel
            .capabilities()
            .enabled()
            .then(|| metadata::caller_from(req.metadata()))
            .flatten();
        let s = register::session(self.kernel.clone(), req.into_inner(), verified).await?;
        Ok(Response::new(Box::pin(ended_by_shutdown(
            s,
            self.kernel.clone(),
        ))))
    }

    async fn call(
        &self,
        req: Request<pb::CallRequest>,
    ) -> Result<Response<pb::CallResponse>, Status> {
        call::unary(&self.kernel, req).await
    }

    async fn call_stream(
        &self,
        req: Request<Streaming<pb::CallStreamUp>>,
    ) -> Result<Response<Self::CallStreamStream>, Status> {
        Ok(Response::new(Box::pin(ended_by_shutdown(
            call::stream(self.kernel.clone(), req),
            self.kernel.clone(),
        ))))
    }

    async fn publish(
        &self,
        req: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        events::publish(&self.kernel, req).await.map(Response::new)
    }

    async fn publish_stream(
        &self,
        req: Request<Streaming<pb::PublishStreamUp>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        Ok(Response::new(Box::pin(ended_by_shutdown(
            events::publish_stream(self.kernel.clone(), req),
            self.kernel.clone(),
        ))))
    }

    async fn subscribe(
        &self,
        req: Request<Streaming<pb::SubscribeUp>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let s = events::subscribe(self.kernel.clone(), self.store.clone(), req).await?;
        Ok(Response::new(Box::pin(ended_by_shutdown(
            s,
            self.kernel.clone(),
        ))))
    }

    async fn charge(
        &self,
        req: Request<pb::ChargeRequest>,
    ) -> Result<Response<pb::ChargeResponse>, Status> {
        let path = req
            .metadata()
            .get(headers::CONTEXT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| {
                Status::invalid_argument("Charge needs the `x-kernel-context` metadata")
            })?;
        let caller = metadata::caller_from(req.metadata());
        let body = req.into_inner();
        let contexts = self.kernel.contexts();
        // Auth on: only the plugin handling the context may charge it.
        contexts.check_holder(&path, caller.as_deref())?;
        let node = contexts
            .find(&path)
            .ok_or_else(|| match contexts.ended(&path) {
                Some(e) => Status::from(e),
                None => Status::not_found(format!("no live context at `{path}`")),
            })?;
        let remaining = self.kernel.charge(&node, &body.counter, body.amount)?;
        Ok(Response::new(pb::ChargeResponse { remaining }))
    }
}

/// Why the server stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection could not load the descriptor set.
    #[error("reflection: {0}")]
    Reflection(String),
    /// The `[auth]` section cannot be used.
    #[error(transparent)]
    Auth(#[from] crate::identity::IdentityError),
    /// A `[server.tls]` file cannot be read or used.
    #[error("server.tls: {0}")]
    Tls(String),
}

/// The TLS settings of `[server.tls]`, when it is on.
fn tls_config(
    tls: &crate::config::TlsConfig,
) -> Result<Option<tonic::transport::ServerTlsConfig>, ServerError> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) else {
        return Ok(None);
    };
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| ServerError::Tls(format!("cannot read {}: {e}", p.display())))
    };
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
    if let Some(ca) = &tls.client_ca_file {
        config = config.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(Some(config))
}

/// How long, after the grace period, streams get to tell their peers that
/// they end, and the transport to close its connections.
const LINGER: Duration = Duration::from_secs(1);

/// Serves the node on `listener` until `shutdown` resolves; then stops
/// accepting and runs the kernel's lifecycle (see `kernel_core::Lifecycle`):
/// calls and call streams finish (new calls get `UNAVAILABLE`), then
/// provider sessions and subscriptions end, all within
/// `server.shutdown_grace_ms`; the node returns as soon as the last tracked
/// task is done. `plugins`, the node's supervised plugins when it has
/// some, are listed and driven through Admin.
pub async fn run(
    listeners: impl Into<Listeners>,
    kernel: Arc<Kernel>,
    config: ServerConfig,
    plugins: Option<Arc<plugin_host::Host>>,
    store: Option<Arc<crate::store::Store>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let max_msg = kernel.config().router.max_payload_bytes + ENVELOPE_ALLOWANCE;
    let identities = crate::identity::Identities::from_config(&kernel.config().auth)?;
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<KernelServer<KernelService>>()
        .await;
    // Reflection in both versions: grpcurl and most tools speak v1, older
    // ones (and some UIs) only v1alpha.
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(kernel_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflection_builder()
        .build_v1()
        .map_err(|e| ServerError::Reflection(e.to_string()))?;
    let reflection_alpha = reflection_builder()
        .build_v1alpha()
        .map_err(|e| ServerError::Reflection(e.to_string()))?;
    let kernel_svc = KernelServer::new(KernelService::new(kernel.clone(), store.clone()))
        .max_decoding_message_size(max_msg)
        .max_encoding_message_size(max_msg);
    let gate_kernel = kernel.clone();
    let admin_svc = AdminServer::with_interceptor(
        AdminService::new(kernel.clone(), plugins, store),
        move |req| admin::admin_gate(&gate_kernel, req),
    );

    let incoming = incoming::guarded(
        listeners.into(),
        config.max_connections,
        Duration::from_millis(config.handshake_timeout_ms.max(1)),
    );
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    let (begin, begun) = tokio::sync::oneshot::channel::<()>();
    // The transport edge (tier 1): metrics outermost; then identity of the
    // request; then the HTTP span, so it logs the request id it was given;
    // then the time limit, innermost. The other limits (streams and
    // concurrency per connection, keepalive, message sizes) are set on the
    // server and the services.
    let edge = tower::ServiceBuilder::new()
        // Outermost, so every request is counted and timed, whatever the
        // layers and services inside do with it.
        .layer(edge_metrics::EdgeMetricsLayer::new(
            kernel.metrics().clone(),
        ))
        // Every request gets an `x-request-id` (kept when the client sent
        // one), before anything logs about it...
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        // ...and the response carries it back (a timeout's answer too).
        .layer(PropagateRequestIdLayer::x_request_id())
        // One debug-level `tracing` span per HTTP/2 request (method = gRPC
        // path); the kernel's OpenTelemetry spans live in the pipeline.
        .layer(
            TraceLayer::new_for_grpc()
                .make_span_with(DefaultMakeSpan::new().level(tracing::Level::DEBUG))
                // Refusals at DEBUG, faults at WARN, client strings escaped.
                .on_failure(edge_log::LogFailure),
        )
        // Inside the span (a refusal is logged with its request id) and
        // before any service: no token, no work.
        .layer(edge_auth::EdgeAuthLayer::new(identities))
        // Innermost, the cap on time to a response head: its
        // DEADLINE_EXCEEDED answer passes every layer above like any other
        // (counted, logged in the span, given the request id).
        .layer(edge_timeout::EdgeTimeoutLayer::new(
            Some(Duration::from_millis(config.max_request_ms)).filter(|d| !d.is_zero()),
        ));
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls_config(&config.tls)? {
        builder = builder
            .tls_config(tls)
            .map_err(|e| ServerError::Tls(format!("{e}: {:?}", std::error::Error::source(&e))))?;
    }
    let drain_life = kernel.lifecycle().clone();
    let serve = builder
        .tcp_nodelay(true)
        // Limits: streams per connection and per-connection concurrency
        // bound what one client can hold open; keepalive finds dead peers
        // (a killed plugin behind a proxy) even when TCP does not.
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .concurrency_limit_per_connection(MAX_STREAMS_PER_CONNECTION as usize)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(CONNECTION_WINDOW))
        .max_frame_size(Some(MAX_FRAME))
        .layer(edge)
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(kernel_svc)
        .add_service(admin_svc)
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            tracing::info!("shutting down: finishing in-flight calls");
            // Streams refuse new calls before anyone can hear of the
            // shutdown; then health watchers and checks on open
            // connections hear it, before the drain waits on anything.
            drain_life.begin_drain();
            health_reporter
                .set_not_serving::<KernelServer<KernelService>>()
                .await;
            health_reporter
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            let _ = begin.send(());
        });
    tokio::pin!(serve);
    let life = kernel.lifecycle().clone();
    // The drain runs beside the transport, which keeps serving the open
    // streams until they end.
    let drain = async move {
        match begun.await {
            Ok(()) => Some(life.shut_down(grace, LINGER).await),
            Err(_) => std::future::pending().await,
        }
    };
    let drained = tokio::select! {
        r = &mut serve => {
            r?;
            None
        }
        d = drain => d,
    };
    if let Some(d) = drained {
        let (calls, sessions) = kernel.lifecycle().running();
        tracing::info!(
            took_ms = d.took.as_millis() as u64,
            in_time = d.in_time,
            calls_left = calls,
            sessions_left = sessions,
            "drained"
        );
        // Connections close once their streams have ended; a stream the
        // kernel does not track (a health watch) is cut after a moment.
        let _ = tokio::time::timeout(LINGER, &mut serve).await;
    }
    tracing::info!("node stopped");
    Ok(())
}

/// The status a stream ends with when the node shuts down under it, so a
/// client knows to reconnect elsewhere instead of taking the end as done.
fn shutting_down() -> Status {
    Status::unavailable("node shutting down; reconnect")
}

/// `stream`, then, if it ended because the node is shutting down, the
/// [`shutting_down`] status as its last item.
fn ended_by_shutdown<T, S>(stream: S, kernel: Arc<Kernel>) -> impl Stream<Item = Result<T, Status>>
where
    S: Stream<Item = Result<T, Status>>,
{
    use futures::StreamExt;
    stream.chain(futures::stream::iter(
        std::iter::from_fn(move || {
            // Once: the closure is dropped with the iterator after it.
            kernel
                .lifecycle()
                .is_draining()
                .then(|| Err(shutting_down()))
        })
        .take(1),
    ))
}
