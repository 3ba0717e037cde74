//! The host: one supervisor per plugin, their status, operator orders.

use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::Error;
use crate::manifest::Manifest;
use crate::status::{Event, PluginStatus, State};
use crate::supervisor::{self, Order, Readiness, Shared};
use crate::transport::KernelUrls;

/// Supervised plugins. Dropping it does not stop them: call
/// [`Host::stop`] (the shims still take them down when the process exits).
pub struct Host {
    plugins: Vec<Hosted>,
    events: Mutex<Option<mpsc::UnboundedReceiver<Event>>>,
}

struct Hosted {
    /// The services its manifest lists.
    services: Vec<String>,
    status: Shared,
    orders: mpsc::UnboundedSender<Order>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("plugins", &self.status())
            .finish()
    }
}

/// How often a plugin's program file is looked at for changes.
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Sends `order()` when the file at `path` changed and then stayed the
/// same for one more look (a copy in progress is not used); ends when the
/// supervisor is gone.
async fn watch(
    path: std::path::PathBuf,
    orders: mpsc::UnboundedSender<Order>,
    order: impl Fn() -> Order + Send + 'static,
) {
    let stamp = |p: &std::path::Path| {
        std::fs::metadata(p).ok().map(|m| {
            (
                m.modified().ok(),
                m.len(),
                std::os::unix::fs::MetadataExt::ino(&m),
            )
        })
    };
    let mut running = stamp(&path);
    let mut seen = running;
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        if orders.is_closed() {
            return;
        }
        let now = stamp(&path);
        if now.is_some() && now == seen && now != running {
            tracing::info!(file = %path.display(), "plugin file changed: reloading");
            if orders.send(order()).is_err() {
                return;
            }
            running = now;
        }
        seen = now;
    }
}

impl Host {
    /// Starts a supervisor for each manifest; plugins connect to the kernel
    /// at the one of `urls` their manifest's transport names. With
    /// `readiness`, a plugin is running once every service its manifest
    /// lists is provided.
    pub fn start(
        manifests: Vec<Manifest>,
        urls: KernelUrls,
        readiness: Option<Arc<dyn Readiness>>,
    ) -> Host {
        let urls = Arc::new(urls);
        let (events, rx) = mpsc::unbounded_channel();
        let plugins = manifests
            .into_iter()
            .map(|m| {
                let status = Shared {
                    status: Arc::new(Mutex::new(PluginStatus {
                        name: m.name.clone(),
                        critical: m.critical,
                        state: State::Starting,
                        restarts: 0,
                        reload_failures: 0,
                        runs: Vec::new(),
                    })),
                    events: events.clone(),
                };
                let (orders, rx) = mpsc::unbounded_channel();
                let services = m.services.clone();
                if m.reload_on_change {
                    if let Some(program) = crate::manifest::resolve(&m.command, m.cwd.as_deref()) {
                        tokio::spawn(watch(program, orders.clone(), || Order::Reload(None)));
                    }
                    if let Some(file) = m.source.clone() {
                        let name = m.name.clone();
                        let from = file.clone();
                        tokio::spawn(watch(file, orders.clone(), move || {
                            match crate::manifest::load_file(&from) {
                                Ok(new) if new.name == name => Order::Reload(Some(Box::new(new))),
                                Ok(new) => Order::Refused(format!(
                                    "the manifest now names `{}`; a plugin keeps its name",
                                    new.name
                                )),
                                Err(e) => Order::Refused(format!("manifest refused: {e}")),
                            }
                        }));
                    }
                }
                let task = tokio::spawn(supervisor::supervise(
                    m,
                    urls.clone(),
                    readiness.clone(),
                    status.clone(),
                    rx,
                ));
                Hosted {
                    services,
                    status,
                    orders,
                    task: Mutex::new(Some(task)),
                }
            })
            .collect();
        Host {
            plugins,
            events: Mutex::new(Some(rx)),
        }
    }

    /// Every [`Event`] since the host started, in order (once: the first
    /// caller takes the receiver).
    pub fn take_events(&self) -> Option<mpsc::UnboundedReceiver<Event>> {
        self.events.lock().take()
    }

    /// Every plugin's status, in manifest order.
    pub fn status(&self) -> Vec<PluginStatus> {
        self.plugins
            .iter()
            .map(|p| p.status.lock().clone())
            .collect()
    }

    /// The plugin whose manifest lists `service`, and its state, when that
    /// plugin is not running (so a call to it can fail at once, naming it).
    pub fn down_for(&self, service: &str) -> Option<(String, State)> {
        let p = self
            .plugins
            .iter()
            .find(|p| p.services.iter().any(|s| s == service))?;
        let s = p.status.lock();
        (!s.state.is_up()).then(|| (s.name.clone(), s.state))
    }

    /// Critical plugins that are not running: the node is not ready while
    /// there is any.
    pub fn critical_down(&self) -> Vec<String> {
        self.status()
            .into_iter()
            .filter(|s| s.critical && !s.state.is_up())
            .map(|s| s.name)
            .collect()
    }

    /// Takes `plugin` out of a crash loop (or an exit it was not to be
    /// restarted from) and starts it again.
    pub fn reset(&self, plugin: &str) -> Result<(), Error> {
        self.order(plugin, Order::Reset)
    }

    /// Reloads `plugin`: a new instance beside the old one, traffic
    /// switched once it is ready, rolled back if it is not.
    pub fn reload(&self, plugin: &str) -> Result<(), Error> {
        self.order(plugin, Order::Reload(None))
    }

    fn order(&self, plugin: &str, order: Order) -> Result<(), Error> {
        let p = self
            .plugins
            .iter()
            .find(|p| p.status.lock().name == plugin)
            .ok_or_else(|| Error::Unknown {
                plugin: plugin.to_owned(),
            })?;
        let _ = p.orders.send(order);
        Ok(())
    }

    /// Stops every plugin (SIGTERM, then SIGKILL after its grace) and
    /// waits for them.
    pub async fn stop(&self) {
        for p in &self.plugins {
            let _ = p.orders.send(Order::Stop);
        }
        for p in &self.plugins {
            let task = p.task.lock().take();
            if let Some(task) = task {
                let _ = task.await;
            }
        }
    }

    /// The status as Prometheus text (`kernel_plugin_*`).
    pub fn render_metrics(&self) -> String {
        use std::fmt::Write as _;
        let status = self.status();
        let mut out = String::new();
        // One family: its help and type lines, then one sample a plugin.
        let mut family =
            |name: &str,
             kind: &str,
             help: &str,
             sample: &dyn Fn(&PluginStatus) -> (String, u64)| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                for s in &status {
                    let (labels, value) = sample(s);
                    let _ = writeln!(out, "{name}{{plugin=\"{}\"{labels}}} {value}", s.name);
                }
            };
        family(
            "kernel_plugin_up",
            "gauge",
            "Whether a supervised plugin is running and ready.",
            &|s| {
                (
                    format!(",state=\"{}\"", s.state.as_str()),
                    u64::from(s.state.is_up()),
                )
            },
        );
        family(
            "kernel_plugin_reload_failures_total",
            "counter",
            "Reloads rolled back.",
            &|s| (String::new(), u64::from(s.reload_failures)),
        );
        family(
            "kernel_plugin_restarts",
            "gauge",
            "Restarts of a supervised plugin since start or reset.",
            &|s| (String::new(), u64::from(s.restarts)),
        );
        out
    }
}
