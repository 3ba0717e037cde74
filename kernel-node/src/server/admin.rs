//! The Admin service: what is connected, what is live, and branch kill.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use kernel_proto::v1::{self as pb, admin_server::Admin};
use tonic::{Request, Response, Status};

use kernel_core::Kernel;
use kernel_core::Stats;
use plugin_host::Host;

/// Admin RPCs over a kernel (and the plugins the node supervises).
#[derive(Debug, Clone)]
pub struct AdminService {
    kernel: Arc<Kernel>,
    plugins: Option<Arc<Host>>,
    store: Option<Arc<crate::store::Store>>,
}

impl AdminService {
    /// Admin over `kernel`, over `plugins` when the node supervises some,
    /// and over its durable subscriptions when it has a database.
    pub fn new(
        kernel: Arc<Kernel>,
        plugins: Option<Arc<Host>>,
        store: Option<Arc<crate::store::Store>>,
    ) -> Self {
        AdminService {
            kernel,
            plugins,
            store,
        }
    }

    fn store(&self) -> Result<&crate::store::Store, Status> {
        self.store.as_deref().ok_or_else(|| {
            Status::failed_precondition(
                "durable subscriptions need a node with a database (database_url)",
            )
        })
    }

    /// In-process plugins, reported like supervised ones: they live as long
    /// as the node (restarts never apply), in the node's own process.
    fn in_process(&self) -> impl Iterator<Item = pb::SupervisedPlugin> {
        let pid = std::process::id();
        self.kernel
            .registry()
            .instances()
            .into_iter()
            .filter(|i| i.transport() == "in-process")
            .map(move |i| pb::SupervisedPlugin {
                plugin: i.plugin.to_string(),
                state: if i.draining.load(Ordering::Relaxed) {
                    "stopped".into()
                } else {
                    "running".into()
                },
                instance: 1,
                pid,
                ..Default::default()
            })
    }

    /// The node's plugin host, or NOT_FOUND naming `plugin` when the node
    /// supervises none.
    fn host(&self, plugin: &str) -> Result<&Host, Status> {
        self.plugins.as_deref().ok_or_else(|| unknown(plugin))
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn list_supervised(
        &self,
        _: Request<pb::ListSupervisedRequest>,
    ) -> Result<Response<pb::ListSupervisedResponse>, Status> {
        let plugins = self
            .plugins
            .as_deref()
            .map(Host::status)
            .unwrap_or_default()
            .into_iter()
            .map(|s| pb::SupervisedPlugin {
                state: s.state.as_str().to_owned(),
                instance: s.runs.last().map_or(0, |r| r.instance),
                pid: s.pid().unwrap_or_default(),
                restarts: s.restarts,
                last_exit: s.last_exit().map(ToString::to_string).unwrap_or_default(),
                uptime_ms: s.uptime().map_or(0, |d| d.as_millis() as u64),
                critical: s.critical,
                reload_failures: s.reload_failures,
                plugin: s.name,
            })
            .chain(self.in_process())
            .collect();
        Ok(Response::new(pb::ListSupervisedResponse { plugins }))
    }

    async fn reset_plugin(
        &self,
        req: Request<pb::PluginRequest>,
    ) -> Result<Response<pb::PluginResponse>, Status> {
        let name = req.into_inner().plugin;
        self.host(&name)?.reset(&name).map_err(|_| unknown(&name))?;
        Ok(Response::new(pb::PluginResponse {}))
    }

    async fn reload_plugin(
        &self,
        req: Request<pb::PluginRequest>,
    ) -> Result<Response<pb::PluginResponse>, Status> {
        let name = req.into_inner().plugin;
        self.host(&name)?
            .reload(&name)
            .map_err(|_| unknown(&name))?;
        Ok(Response::new(pb::PluginResponse {}))
    }

    async fn list_durables(
        &self,
        _: Request<pb::ListDurablesRequest>,
    ) -> Result<Response<pb::ListDurablesResponse>, Status> {
        let durables = self
            .store()?
            .durables()
            .list()
            .into_iter()
            .map(|(name, patterns, backlog, connected)| pb::DurableInfo {
                name,
                patterns,
                backlog,
                connected,
            })
            .collect();
        Ok(Response::new(pb::ListDurablesResponse { durables }))
    }

    async fn delete_durable(
        &self,
        req: Request<pb::DeleteDurableRequest>,
    ) -> Result<Response<pb::DeleteDurableResponse>, Status> {
        let name = req.into_inner().name;
        let deleted_events = self.store()?.durables().delete(&name).await?;
        tracing::info!(target: "audit", durable = %name, deleted_events, "durable subscription deleted");
        Ok(Response::new(pb::DeleteDurableResponse { deleted_events }))
    }

    async fn list_plugins(
        &self,
        _: Request<pb::ListPluginsRequest>,
    ) -> Result<Response<pb::ListPluginsResponse>, Status> {
        let plugins = self
            .kernel
            .registry()
            .instances()
            .iter()
            .map(|i| pb::PluginInfo {
                plugin: i.plugin.to_string(),
                instance_id: i.id.to_string(),
                services: i.services.iter().map(|s| s.name.clone()).collect(),
                in_flight: i.in_flight.load(Ordering::Relaxed) as u32,
                state: if i.draining.load(Ordering::Relaxed) {
                    "draining".into()
                } else {
                    "active".into()
                },
                transport: i.transport().into(),
            })
            .collect();
        Ok(Response::new(pb::ListPluginsResponse { plugins }))
    }

    async fn list_services(
        &self,
        _: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        let services = self
            .kernel
            .registry()
            .services()
            .into_iter()
            .map(|(name, pool)| pb::ServiceInfo {
                name,
                instances: pool.instances.iter().map(|i| i.id.to_string()).collect(),
            })
            .collect();
        Ok(Response::new(pb::ListServicesResponse { services }))
    }

    async fn list_subscriptions(
        &self,
        _: Request<pb::ListSubscriptionsRequest>,
    ) -> Result<Response<pb::ListSubscriptionsResponse>, Status> {
        let subscriptions = self
            .kernel
            .broker()
            .subscriptions()
            .iter()
            .map(|s| pb::SubscriptionInfo {
                id: s.id.to_string(),
                name: s.label(),
                patterns: s.opts.patterns.clone(),
                queue_group: s
                    .opts
                    .group
                    .as_deref()
                    .and_then(|g| g.split('|').next())
                    .unwrap_or_default()
                    .to_owned(),
                buffered: s.buffered() as u32,
                unacked: s.unacked() as u32,
            })
            .collect();
        Ok(Response::new(pb::ListSubscriptionsResponse {
            subscriptions,
        }))
    }

    async fn get_context(
        &self,
        req: Request<pb::GetContextRequest>,
    ) -> Result<Response<pb::GetContextResponse>, Status> {
        let nodes = self
            .kernel
            .contexts()
            .tree(&req.into_inner().root)
            .into_iter()
            .map(|n| pb::ContextNode {
                path: n.path,
                service: n.service,
                plugin: n.plugin,
                state: n.state.into(),
                elapsed_us: n.elapsed_us,
            })
            .collect();
        Ok(Response::new(pb::GetContextResponse { nodes }))
    }

    async fn cancel_context(
        &self,
        req: Request<pb::CancelContextRequest>,
    ) -> Result<Response<pb::CancelContextResponse>, Status> {
        let path = req.into_inner().path;
        let cancelled = self.kernel.contexts().cancel(&path);
        if cancelled == 0 {
            return Err(Status::not_found(format!("no live context at `{path}`")));
        }
        tracing::info!(context = %path, cancelled, "context branch cancelled by operator");
        Ok(Response::new(pb::CancelContextResponse { cancelled }))
    }

    async fn stats(
        &self,
        _: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        let s = &self.kernel.stats();
        let (calls, call_errors) = self.kernel.metrics().totals();
        Ok(Response::new(pb::StatsResponse {
            calls,
            call_errors,
            events_published: Stats::get(&s.events_published),
            events_delivered: Stats::get(&s.events_delivered),
            events_redelivered: Stats::get(&s.events_redelivered),
            events_dead_lettered: Stats::get(&s.events_dead_lettered),
            plugins: self.kernel.registry().instances().len() as u32,
            subscriptions: self.kernel.broker().subscriptions().len() as u32,
        }))
    }
}

/// NOT_FOUND for a plugin the node does not supervise (the name a client
/// sent, capped).
/// The Admin service's gate (an interceptor: a synchronous look at the
/// metadata): with auth on, only a plugin granted `admin` gets in.
pub(crate) fn admin_gate(kernel: &Kernel, req: Request<()>) -> Result<Request<()>, Status> {
    let caller = crate::server::metadata::caller_from(req.metadata());
    kernel
        .capabilities()
        .check(caller.as_deref(), kernel_core::Action::Admin, "")?;
    Ok(req)
}

fn unknown(plugin: &str) -> Status {
    Status::not_found(format!(
        "no supervised plugin `{}`",
        plugin.chars().take(128).collect::<String>()
    ))
}
