//! The [`Kernel`]: owns the registry, router, broker and context trees, and
//! is the in-process API (what the gRPC services and in-process plugins call).

use std::sync::Arc;

use kernel_proto::trace::Telemetry;
use kernel_proto::v1::{self as pb, Failure, RegisterMode};

use crate::broker::subscription::Subscription;
use crate::broker::{Accepted, Broker, Publication, SubscribeRequest};
use crate::call::{Reply, Request};
use crate::capability::{Action, Capabilities};
use crate::config::Config;
use crate::context::{Contexts, Node, Parent};
use crate::error::Error;
use crate::keeper::{Keeper, Kept};
use crate::lifecycle::Lifecycle;
use crate::metrics::{Metrics, NodeFigures};
use crate::middleware::{self, BareRouter};
use crate::provider::{Instance, Link, LocalHandler};
use crate::rate::PublishRate;
use crate::registry::Registry;
use crate::router::{CallFuture, Router};
use crate::stats::Stats;

/// The keeping of an accepted event for durable subscriptions, still under
/// way (see [`Kernel::publish_staged`]); `None` when nobody keeps it.
pub type Keeping = Option<crate::call::BoxFuture<Result<(), Error>>>;

/// A running kernel. Cheap to share (`Arc<Kernel>`).
#[derive(Debug)]
pub struct Kernel {
    config: Config,
    contexts: Arc<Contexts>,
    registry: Arc<Registry>,
    router: Router,
    /// Accounting and dispatch alone, for measuring the middleware's share.
    bare: BareRouter,
    broker: Broker,
    stats: Arc<Stats>,
    metrics: Arc<Metrics>,
    telemetry: Telemetry,
    lifecycle: Lifecycle,
    capabilities: Arc<Capabilities>,
    publish_rate: PublishRate,
    /// Durable subscriptions' storage, when the node has a database.
    keeper: std::sync::OnceLock<Arc<dyn Keeper>>,
}

/// An in-process registration; dropping it deregisters the instance.
#[derive(Debug)]
pub struct LocalRegistration {
    kernel: Arc<Kernel>,
    instance: Arc<Instance>,
}

impl LocalRegistration {
    /// The instance id.
    pub fn instance_id(&self) -> &str {
        &self.instance.id
    }
}

impl Drop for LocalRegistration {
    fn drop(&mut self) {
        self.kernel.registry.deregister(&self.instance);
        self.kernel.broker.schemas.remove(&self.instance.id);
    }
}

impl Kernel {
    /// A kernel with the given configuration.
    pub fn new(config: impl Into<Config>) -> Arc<Kernel> {
        Kernel::with_telemetry(config, Telemetry::disabled())
    }

    /// A kernel exporting traces through `telemetry`.
    pub fn with_telemetry(config: impl Into<Config>, telemetry: Telemetry) -> Arc<Kernel> {
        let config = config.into();
        let stats = Arc::new(Stats::default());
        let metrics = Arc::new(Metrics::default());
        let contexts = Arc::new(if config.auth.enabled {
            Contexts::checking_holders(config.budget.clone())
        } else {
            Contexts::new(config.budget.clone())
        });
        let registry = Arc::new(Registry::new());
        let capabilities = Arc::new(Capabilities::new(&config.auth));
        let router = Router::new(middleware::pipeline(
            registry.clone(),
            contexts.clone(),
            config.router.clone(),
            telemetry.clone(),
            metrics.clone(),
            capabilities.clone(),
        ));
        let bare = middleware::bare(registry.clone(), contexts.clone(), config.router.clone());
        let config_rate = (
            config.broker.max_publish_rate_per_plugin,
            config.broker.publish_burst_per_plugin,
        );
        let broker = Broker::new(
            config.broker.clone(),
            config.router.max_payload_bytes,
            contexts.clone(),
            stats.clone(),
            telemetry.clone(),
        );
        Arc::new(Kernel {
            config,
            contexts,
            registry,
            router,
            bare,
            broker,
            stats,
            metrics,
            telemetry,
            lifecycle: Lifecycle::new(),
            capabilities,
            publish_rate: PublishRate::new(config_rate.0, config_rate.1),
            keeper: std::sync::OnceLock::new(),
        })
    }

    /// What each plugin may do (every check passes with auth off).
    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    /// Routes one call.
    pub fn call(&self, req: Request) -> CallFuture {
        self.router.call(req)
    }

    /// Routes one call through accounting and dispatch only, skipping the
    /// trace and validate layers: for measuring what the middleware costs,
    /// never for serving.
    pub fn call_bare(
        &self,
        req: Request,
    ) -> impl std::future::Future<Output = Result<Reply, Failure>> + Send + 'static {
        self.bare.call(req)
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Live context trees.
    pub fn contexts(&self) -> &Contexts {
        &self.contexts
    }

    /// Who provides what.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The event bus.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Event counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Call and edge metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The whole node in Prometheus text format.
    pub fn render_metrics(&self) -> String {
        let subscriptions = self
            .broker
            .subscriptions()
            .iter()
            .map(|s| (s.id, s.label(), s.buffered(), s.unacked()))
            .collect();
        let mut text = self.metrics.render(&NodeFigures {
            stats: &self.stats,
            plugins_connected: self.registry.instances().len(),
            subscriptions,
        });
        if self.capabilities.enabled() {
            text.push_str("# HELP kernel_denials_total Requests refused for a missing capability (auth on), by capability.\n# TYPE kernel_denials_total counter\n");
            for (capability, n) in self.capabilities.denials() {
                text.push_str(&format!(
                    "kernel_denials_total{{capability=\"{capability}\"}} {n}\n"
                ));
            }
        }
        text
    }

    /// Trace export (disabled unless configured).
    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// Shutdown signals and the tracked tasks of the node.
    pub fn lifecycle(&self) -> &Lifecycle {
        &self.lifecycle
    }

    /// Publishes one event (the broker's future as is, like [`Kernel::call`],
    /// once the publisher's `publish` capability covers the topic, its
    /// publish rate allows one more, and, naming a context, it holds it).
    pub fn publish(
        &self,
        p: Publication,
    ) -> impl std::future::Future<Output = Result<Accepted, Error>> + Send + '_ {
        use futures::future::Either;
        match self.check_publish(&p) {
            Ok(()) if self.keeper.get().is_none() => Either::Left(self.broker.publish(p)),
            // Boxed: the keeping path's future is large, and inline it would
            // make every publish's future as large (moved at each layer).
            Ok(()) => Either::Right(Either::Left(Box::pin(self.publish_unchecked(p)))),
            Err(e) => Either::Right(Either::Right(std::future::ready(Err(e)))),
        }
    }

    /// Publishes without the publisher's checks: for the node's own
    /// publishers (the outbox relay, whose rows the database vouches for).
    /// An event a durable subscription wants is kept before this resolves.
    pub fn publish_unchecked(
        &self,
        p: Publication,
    ) -> impl std::future::Future<Output = Result<Accepted, Error>> + Send + '_ {
        let staged = self.stage(p);
        async move {
            let (accepted, keeping) = staged.await?;
            if let Some(k) = keeping {
                k.await?;
            }
            Ok(accepted)
        }
    }

    /// [`Kernel::publish`] in two stages: the future resolves once the bus
    /// accepted the event (in order, as `publish`), with, when a durable
    /// subscription wants it, the keeping still under way in the second
    /// future (answer the publisher after it). A stream of publishes can
    /// so accept its next event while the previous one is being written.
    pub fn publish_staged(
        &self,
        p: Publication,
    ) -> impl std::future::Future<Output = Result<(Accepted, Keeping), Error>> + Send + '_ {
        use futures::future::Either;
        match self.check_publish(&p) {
            Ok(()) => Either::Left(self.stage(p)),
            Err(e) => Either::Right(std::future::ready(Err(e))),
        }
    }

    fn check_publish(&self, p: &Publication) -> Result<(), Error> {
        self.capabilities
            .check(p.caller.as_deref(), Action::Publish, &p.topic)
            .and_then(|()| self.publish_rate.take(p.caller.as_ref()))
            .and_then(|()| match &p.parent {
                Parent::Path(path) => self.contexts.check_holder(path, p.caller.as_deref()),
                _ => Ok(()),
            })
    }

    /// The bus's acceptance, and the keeping started when a durable
    /// subscription wants the event.
    fn stage(
        &self,
        p: Publication,
    ) -> impl std::future::Future<Output = Result<(Accepted, Keeping), Error>> + Send + '_ {
        use futures::future::{Either, FutureExt};
        let Some(keeper) = self.keeper.get().filter(|k| k.wants(&p.topic)).cloned() else {
            return Either::Left(self.broker.publish(p).map(|r| r.map(|a| (a, None))));
        };
        let mut headers = p.headers.clone();
        headers.remove(kernel_proto::headers::CONTEXT);
        if let Some(c) = &p.caller {
            headers.insert(kernel_proto::headers::CALLER.to_owned(), c.to_string());
        }
        let (topic, payload, content_type) =
            (p.topic.clone(), p.payload.clone(), p.content_type.clone());
        let accept = self.broker.publish(p);
        Either::Right(async move {
            let accepted = accept.await?;
            // Handed to the keeper now, in acceptance order.
            let keeping = keeper.keep(Kept {
                id: accepted.id,
                topic,
                payload,
                content_type,
                headers,
                publish_time_unix_ns: crate::broker::now_unix_ns(),
            });
            Ok((accepted, Some(keeping)))
        })
    }

    /// Hands the kernel its durable subscriptions' storage (once, at start).
    pub fn set_keeper(&self, keeper: Arc<dyn Keeper>) {
        let _ = self.keeper.set(keeper);
    }

    /// Opens a subscription (every pattern covered by the subscriber's
    /// `subscribe` capability).
    pub fn subscribe(&self, req: SubscribeRequest) -> Result<Arc<Subscription>, Error> {
        for p in &req.patterns {
            self.capabilities
                .check(req.plugin.as_deref(), Action::Subscribe, p)?;
        }
        if let Some(plugin) = &req.plugin {
            let limit = self.config.broker.max_subscriptions_per_plugin;
            let held = self
                .broker
                .subscriptions()
                .iter()
                .filter(|s| s.opts.plugin.as_ref() == Some(plugin))
                .count();
            if held >= limit {
                return Err(Error::LimitReached {
                    limit: "broker.max_subscriptions_per_plugin",
                    plugin: plugin.to_string(),
                    value: limit,
                });
            }
        }
        self.broker.subscribe(req)
    }

    /// Registers a provider instance, remote or in-process: its plugin's
    /// `provide` capability must cover every service, and (auth on) no
    /// service may be one another plugin provides, in replace mode too.
    pub fn register(&self, inst: Arc<Instance>, mode: RegisterMode) -> Result<(), Error> {
        for s in &inst.services {
            self.capabilities
                .check(Some(&inst.plugin), Action::Provide, &s.name)?;
            if self.capabilities.enabled() {
                let owner = self.registry.pool(&s.name).and_then(|p| {
                    p.instances
                        .iter()
                        .find(|i| i.plugin != inst.plugin)
                        .map(|i| i.plugin.to_string())
                });
                if let Some(owner) = owner {
                    self.capabilities.record(Action::Provide);
                    tracing::warn!(target: "audit", plugin = %inst.plugin, service = %s.name, owner = %owner, "denied: service owned by another plugin");
                    return Err(Error::NotOwner {
                        service: s.name.clone(),
                        owner,
                        plugin: inst.plugin.to_string(),
                    });
                }
            }
        }
        let limit = self.config.router.max_instances_per_plugin;
        let held = self
            .registry
            .instances()
            .iter()
            .filter(|i| i.plugin == inst.plugin)
            .count();
        if held >= limit {
            return Err(Error::LimitReached {
                limit: "router.max_instances_per_plugin",
                plugin: inst.plugin.to_string(),
                value: limit,
            });
        }
        self.registry.register(inst.clone(), mode)?;
        self.broker.schemas.add(&inst.id, &inst.topic_schemas);
        Ok(())
    }

    /// Registers an in-process provider.
    pub fn register_local(
        self: &Arc<Self>,
        plugin: &str,
        services: Vec<pb::ServiceDecl>,
        handler: Arc<dyn LocalHandler>,
        mode: RegisterMode,
        max_concurrency: u32,
        topic_schemas: &std::collections::HashMap<String, String>,
    ) -> Result<LocalRegistration, Error> {
        let id: Arc<str> = format!("{plugin}-local-{:08x}", rand::random::<u32>()).into();
        let max = if max_concurrency == 0 {
            self.config.router.default_max_concurrency
        } else {
            max_concurrency
        };
        let instance = Arc::new(
            Instance::new(
                plugin.into(),
                id,
                services,
                Link::Local(handler),
                max as usize,
            )?
            .with_topic_schemas(topic_schemas)?,
        );
        self.register(instance.clone(), mode)?;
        Ok(LocalRegistration {
            kernel: self.clone(),
            instance,
        })
    }

    /// Charges a custom budget counter of `node`'s tree. On exhaustion the
    /// node's branch is cancelled and the error names the counter and path.
    pub fn charge(&self, node: &Arc<Node>, counter: &str, amount: u64) -> Result<u64, Error> {
        node.tree()
            .budget
            .charge_custom(counter, amount)
            .map_err(|e| {
                let err = || Error::BudgetExhausted {
                    budget: e.budget.clone(),
                    context: node.path().to_owned(),
                    limit: e.limit,
                };
                node.kill(err());
                err()
            })
    }
}
