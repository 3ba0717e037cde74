//! The Register RPC: one provider session per stream.

use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use kernel_proto::v1::{self as pb, ProviderDown, ProviderUp, RegisterMode};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use futures::StreamExt;
use kernel_core::Error;
use kernel_core::Kernel;
use kernel_core::{Down, Instance, Link, RemoteLink, Reply, Work};
use kernel_proto::batch::batched;

/// How long a new stream may take to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the handshake, registers the instance and returns the downstream
/// half; a background task reads results until the session ends.
///
/// With auth on, `verified` is the plugin the connection's token stands
/// for, and the hello must name that plugin.
pub(crate) async fn session(
    kernel: Arc<Kernel>,
    mut inbound: Streaming<ProviderUp>,
    verified: Option<Arc<str>>,
) -> Result<impl Stream<Item = Result<ProviderDown, Status>> + Send + 'static, Status> {
    let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
        .await
        .map_err(|_| Status::deadline_exceeded("no hello within 10 s"))??;
    let hello = first.and_then(|f| f.hello).ok_or_else(|| {
        Status::from(Error::Protocol {
            detail: "the first Register frame must carry `hello`".into(),
        })
    })?;
    if hello.plugin.is_empty() || hello.plugin.len() > 128 {
        return Err(Error::InvalidName {
            what: "plugin",
            name: hello.plugin.chars().take(80).collect(),
            reason: "must be 1 to 128 bytes".into(),
        }
        .into());
    }
    if kernel.capabilities().enabled() && verified.as_deref() != Some(hello.plugin.as_str()) {
        tracing::warn!(target: "audit", plugin = %hello.plugin, verified = ?verified, "denied: hello names another plugin");
        return Err(Error::PermissionDenied {
            plugin: verified.as_deref().unwrap_or("(anonymous)").to_owned(),
            capability: format!("register as plugin {}", hello.plugin),
        }
        .into());
    }
    if hello.services.is_empty() {
        return Err(Error::Protocol {
            detail: format!("plugin `{}` registered no services", hello.plugin),
        }
        .into());
    }
    let mode = RegisterMode::try_from(hello.mode).unwrap_or(RegisterMode::Pool);
    let id: Arc<str> = if hello.instance_id.is_empty() {
        format!("{}-{:08x}", hello.plugin, rand::random::<u32>()).into()
    } else {
        hello.instance_id.into()
    };
    let max = match hello.max_concurrency {
        0 => kernel.config().router.default_max_concurrency,
        n => n,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let inst = Arc::new(
        Instance::new(
            hello.plugin.into(),
            id.clone(),
            hello.services,
            Link::Remote(RemoteLink::new(tx)),
            max as usize,
        )?
        .with_topic_schemas(&hello.topic_schemas)?,
    );
    kernel.register(inst.clone(), mode)?;
    tracing::info!(plugin = %inst.plugin, instance = %inst.id, services = ?inst.services.iter().map(|s| &s.name).collect::<Vec<_>>(), ?mode, "provider registered");

    let welcome = ProviderDown {
        welcome: Some(pb::Welcome {
            instance_id: id.to_string(),
            heartbeat_interval_ms: kernel.config().router.heartbeat_interval_ms,
        }),
        ..Default::default()
    };
    let life = kernel.lifecycle().clone();
    life.spawn(Work::Sessions, read_results(kernel, inst, inbound));
    // A session outlives the node's calls (it serves them) and ends when
    // the lifecycle closes sessions.
    Ok(batched(rx, Some(welcome), fold_down)
        .map(Ok)
        .take_until(async move { life.closing().await }))
}

fn fold_down(items: Vec<Down>) -> ProviderDown {
    let mut frame = ProviderDown::default();
    for item in items {
        match item {
            Down::Invoke(inv) => frame.invocations.push(inv),
            Down::Cancel(id) => frame.cancels.push(id),
            Down::Drain(reason) => frame.drain = Some(pb::Drain { reason }),
        }
    }
    frame
}

/// Reads results until the stream ends, breaks, or goes silent past the
/// heartbeat timeout; then deregisters the instance and fails its in-flight
/// calls with `UNAVAILABLE` at once.
async fn read_results(
    kernel: Arc<Kernel>,
    inst: Arc<Instance>,
    mut inbound: Streaming<ProviderUp>,
) {
    let Link::Remote(link) = &inst.link else {
        return;
    };
    let silence = Duration::from_millis(kernel.config().router.heartbeat_timeout_ms);
    let why = loop {
        let next = tokio::select! {
            n = tokio::time::timeout(silence, inbound.message()) => n,
            _ = kernel.lifecycle().closing() => break "node shutting down".to_owned(),
        };
        match next {
            Ok(Ok(Some(frame))) => {
                for r in frame.results {
                    let result = match r.error {
                        Some(mut f) => {
                            // A failure must not claim OK (proto default 0)
                            // or an unknown code.
                            if !(1..=16).contains(&f.code) {
                                f.code = tonic::Code::Unknown as i32;
                            }
                            Err(f)
                        }
                        None => Ok(Reply {
                            payload: r.payload,
                            content_type: r.content_type,
                            context: None,
                        }),
                    };
                    link.complete(r.call_id, result);
                }
            }
            Ok(Ok(None)) => break "stream closed".to_owned(),
            Ok(Err(status)) => break format!("stream error: {}", status.message()),
            Err(_) => break format!("no frame for {} ms", silence.as_millis()),
        }
    };
    kernel.registry().deregister(&inst);
    kernel.broker().schemas.remove(&inst.id);
    link.close();
    tracing::info!(plugin = %inst.plugin, instance = %inst.id, reason = %why, "provider deregistered");
}
