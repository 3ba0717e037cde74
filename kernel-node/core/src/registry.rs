//! The service registry: which instances provide which names.
//!
//! Reads (provider selection, on every call) are lock-free: the name → pool
//! map is an immutable snapshot swapped atomically by the rare writers
//! (register, replace, deregister), which serialize on one mutex. A replace
//! therefore takes effect for every new call at once: there is no moment in
//! which a caller sees neither the old nor the new instance.

use rustc_hash::FxHashMap as HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use kernel_proto::v1::RegisterMode;
use parking_lot::Mutex;

use crate::error::Error;
use crate::metrics::Series;
use crate::names;
use crate::provider::{Instance, Link};
use crate::schema::MethodSchemas;

/// Instances providing one name, and what every call to that name needs
/// looked up once per registry change rather than once per call.
#[derive(Debug, Default)]
pub struct Pool {
    /// The service name, shared with every call's context node.
    pub name: Arc<str>,
    /// Active instances (draining ones are removed).
    pub instances: Vec<Arc<Instance>>,
    /// Argument schemas by method, from the newest instance; None when it
    /// declared none (validation then has nothing to do).
    pub schemas: Option<Arc<MethodSchemas>>,
    /// Methods the newest instance declared idempotent (the kernel may
    /// retry them); None when it declared none.
    pub idempotent: Option<Arc<[String]>>,
    /// The name's metrics series, fetched on the first call.
    series: OnceLock<&'static Series>,
    rr: AtomicUsize,
}

impl Pool {
    fn with(name: &str, instances: Vec<Arc<Instance>>) -> Pool {
        let schemas = instances.last().and_then(|i| i.schemas.get(name).cloned());
        let idempotent = instances
            .last()
            .and_then(|i| i.services.iter().find(|s| s.name == name))
            .filter(|d| !d.idempotent_methods.is_empty())
            .map(|d| d.idempotent_methods.clone().into());
        Pool {
            name: name.into(),
            instances,
            schemas,
            idempotent,
            series: OnceLock::new(),
            rr: AtomicUsize::new(0),
        }
    }

    /// The name's metrics series; `fetch` runs once per pool.
    #[inline]
    pub fn series(&self, fetch: impl FnOnce() -> &'static Series) -> &'static Series {
        self.series.get_or_init(fetch)
    }

    /// Least in-flight, ties broken round robin so equal instances share
    /// load; instances whose circuit breaker is open are skipped (None when
    /// every one is: see [`Pool::all_open`]).
    pub fn pick(&self) -> Option<&Arc<Instance>> {
        match self.instances.len() {
            0 => None,
            1 => self.instances.first().filter(|i| i.breaker.allows()),
            n => {
                let start = self.rr.fetch_add(1, Ordering::Relaxed) % n;
                let mut best: Option<&Arc<Instance>> = None;
                let mut best_load = usize::MAX;
                for i in 0..n {
                    let inst = &self.instances[(start + i) % n];
                    let load = inst.in_flight.load(Ordering::Relaxed);
                    if load < best_load && inst.breaker.available() {
                        best_load = load;
                        best = Some(inst);
                    }
                }
                // A half-open instance takes one probe call at a time.
                best.filter(|b| !b.breaker.is_open() || b.breaker.claim_probe())
            }
        }
    }

    /// Whether the pool has instances and every one's breaker is open.
    pub fn all_open(&self) -> bool {
        !self.instances.is_empty() && self.instances.iter().all(|i| i.breaker.is_open())
    }

    /// Whether `method` was declared idempotent.
    pub fn is_idempotent(&self, method: &str) -> bool {
        self.idempotent
            .as_ref()
            .is_some_and(|m| m.iter().any(|x| x == method))
    }
}

type Snapshot = HashMap<String, Arc<Pool>>;

/// Why a service has no provider, when something outside the registry
/// knows (the plugin host: the plugin that provides it is down).
pub trait Absence: Send + Sync + 'static {
    /// The plugin expected to provide `service` and the state it is in,
    /// when that plugin is known and down.
    fn why_absent(&self, service: &str) -> Option<(String, String)>;
}

/// Names to pools, plus every connected instance.
#[derive(Default)]
pub struct Registry {
    services: ArcSwap<Snapshot>,
    instances: Mutex<Vec<Arc<Instance>>>,
    absence: arc_swap::ArcSwapOption<Box<dyn Absence>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("services", &self.services)
            .field("instances", &self.instances)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Tells the registry who knows why a service may be missing.
    pub fn set_absence(&self, absence: Box<dyn Absence>) {
        self.absence.store(Some(Arc::new(absence)));
    }

    /// The error for a call to `service`, which nobody provides: the
    /// plugin that should, and its state, when that is known
    /// (`UNAVAILABLE`); else `NOT_FOUND`.
    pub fn missing(&self, service: &str) -> Error {
        let known = self.absence.load();
        match known.as_ref().and_then(|a| a.why_absent(service)) {
            Some((plugin, state)) => Error::PluginDown {
                service: service.to_owned(),
                plugin,
                state,
            },
            None => Error::NoProvider {
                service: service.to_owned(),
            },
        }
    }

    /// The pool for a name, if anyone provides it.
    #[inline]
    pub fn pool(&self, service: &str) -> Option<Arc<Pool>> {
        self.services.load().get(service).cloned()
    }

    /// Adds an instance. In replace mode the previous providers of each of its
    /// names leave those pools at once; an instance left in no pool gets a
    /// drain notice and its queued callers go back to selection.
    pub fn register(&self, inst: Arc<Instance>, mode: RegisterMode) -> Result<(), Error> {
        for s in &inst.services {
            names::validate_service(&s.name)?;
        }
        let mut all = self.instances.lock();
        if all.iter().any(|i| i.id == inst.id) {
            return Err(Error::DuplicateInstance {
                instance: inst.id.to_string(),
            });
        }
        let current = self.services.load_full();
        let mut next: Snapshot = (*current).clone();
        let mut displaced: Vec<Arc<Instance>> = Vec::new();
        for s in &inst.services {
            let mut members = next
                .get(&s.name)
                .map(|p| p.instances.clone())
                .unwrap_or_default();
            if mode == RegisterMode::Replace {
                displaced.append(&mut members);
            }
            members.push(inst.clone());
            next.insert(s.name.clone(), Arc::new(Pool::with(&s.name, members)));
        }
        self.services.store(Arc::new(next));
        all.push(inst.clone());
        let still_listed = |i: &Arc<Instance>| {
            self.services
                .load()
                .values()
                .any(|p| p.instances.iter().any(|x| Arc::ptr_eq(x, i)))
        };
        for old in displaced {
            if !still_listed(&old) && !old.draining.swap(true, Ordering::SeqCst) {
                tracing::info!(plugin = %old.plugin, instance = %old.id, by = %inst.id, "instance replaced; draining");
                old.permits.close();
                if let Link::Remote(r) = &old.link {
                    r.drain(format!("replaced by instance {}", inst.id));
                }
            }
        }
        Ok(())
    }

    /// Takes the instance with id `instance` out of every pool and tells
    /// it to drain: it gets no new calls, finishes the ones it has, and
    /// closes its session (a hot reload's old instance). False when no such
    /// instance is connected or it already drains.
    pub fn drain(&self, instance: &str, reason: &str) -> bool {
        let all = self.instances.lock();
        let Some(inst) = all.iter().find(|i| &*i.id == instance).cloned() else {
            return false;
        };
        if inst.draining.swap(true, Ordering::SeqCst) {
            return false;
        }
        self.unlist(&inst);
        tracing::info!(plugin = %inst.plugin, instance = %inst.id, reason, "instance draining");
        if let Link::Remote(r) = &inst.link {
            r.drain(reason.to_owned());
        }
        true
    }

    /// Removes an instance from every pool (session closed or heartbeat lost).
    pub fn deregister(&self, inst: &Arc<Instance>) {
        let mut all = self.instances.lock();
        all.retain(|i| !Arc::ptr_eq(i, inst));
        self.unlist(inst);
    }

    /// Takes `inst` out of every pool, and sends its queued callers back
    /// to selection.
    fn unlist(&self, inst: &Arc<Instance>) {
        let current = self.services.load_full();
        let mut next: Snapshot =
            HashMap::with_capacity_and_hasher(current.len(), Default::default());
        for (name, pool) in current.iter() {
            if pool.instances.iter().any(|i| Arc::ptr_eq(i, inst)) {
                let members: Vec<_> = pool
                    .instances
                    .iter()
                    .filter(|i| !Arc::ptr_eq(i, inst))
                    .cloned()
                    .collect();
                if !members.is_empty() {
                    next.insert(name.clone(), Arc::new(Pool::with(name, members)));
                }
            } else {
                next.insert(name.clone(), pool.clone());
            }
        }
        self.services.store(Arc::new(next));
        inst.permits.close();
    }

    /// Every connected instance, draining ones included.
    pub fn instances(&self) -> Vec<Arc<Instance>> {
        self.instances.lock().clone()
    }

    /// Names with their pools, sorted by name.
    pub fn services(&self) -> Vec<(String, Arc<Pool>)> {
        let mut v: Vec<_> = self
            .services
            .load()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}
