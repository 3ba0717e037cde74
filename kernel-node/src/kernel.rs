//! The [`Kernel`]: owns the registry, router, broker and context trees, and
//! is the in-process API (what the gRPC services and in-process plugins call).

use std::sync::Arc;

use kernel_proto::v1::{self as pb, RegisterMode};
use tokio_util::sync::CancellationToken;

use crate::broker::subscription::Subscription;
use crate::broker::{Accepted, Broker, Publication, SubscribeRequest};
use crate::config::Config;
use crate::context::{Contexts, Node};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::middleware;
use crate::provider::{Instance, Link, LocalHandler};
use crate::registry::Registry;
use crate::router::{Request, Router};
use crate::stats::Stats;
use crate::telemetry::Telemetry;
use std::sync::atomic::AtomicBool;

/// A running kernel. Cheap to share (`Arc<Kernel>`).
#[derive(Debug)]
pub struct Kernel {
    /// The configuration it was built with.
    pub config: Config,
    /// Live context trees.
    pub contexts: Arc<Contexts>,
    /// Who provides what.
    pub registry: Arc<Registry>,
    /// Calls.
    pub router: Router,
    /// Events.
    pub broker: Broker,
    /// Counters.
    pub stats: Arc<Stats>,
    /// Prometheus call metrics.
    pub metrics: Arc<Metrics>,
    /// Trace export (disabled unless configured).
    pub telemetry: Telemetry,
    /// Set when shutdown begins (`/readyz` turns 503).
    pub draining: AtomicBool,
    /// Cancelled when the grace period is over: long-lived streams end.
    pub shutdown: CancellationToken,
    /// Notified when shutdown begins (the grace period starts).
    pub shutdown_started: tokio::sync::Notify,
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
    pub fn new(config: Config) -> Arc<Kernel> {
        Kernel::with_telemetry(config, Telemetry::disabled())
    }

    /// A kernel exporting traces through `telemetry`.
    pub fn with_telemetry(config: Config, telemetry: Telemetry) -> Arc<Kernel> {
        let stats = Arc::new(Stats::default());
        let metrics = Arc::new(Metrics::default());
        let contexts = Arc::new(Contexts::new(config.budget.clone()));
        let registry = Arc::new(Registry::new());
        let router = Router::new(middleware::pipeline(
            registry.clone(),
            contexts.clone(),
            config.router.clone(),
            telemetry.clone(),
            metrics.clone(),
        ));
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
            broker,
            stats,
            metrics,
            telemetry,
            shutdown: CancellationToken::new(),
            shutdown_started: tokio::sync::Notify::new(),
            draining: AtomicBool::new(false),
        })
    }

    /// Routes one call.
    pub fn call(&self, req: Request) -> crate::router::CallFuture {
        self.router.call(req)
    }

    /// Publishes one event (the broker's future as is, like [`Kernel::call`]).
    pub fn publish(
        &self,
        p: Publication,
    ) -> impl std::future::Future<Output = Result<Accepted, Error>> + Send + '_ {
        self.broker.publish(p)
    }

    /// Opens a subscription.
    pub fn subscribe(&self, req: SubscribeRequest) -> Result<Arc<Subscription>, Error> {
        self.broker.subscribe(req)
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
        self.registry.register(instance.clone(), mode)?;
        self.broker
            .schemas
            .add(&instance.id, &instance.topic_schemas);
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
