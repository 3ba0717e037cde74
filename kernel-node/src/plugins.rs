//! Plugins the node supervises itself: the `[[plugins]]` of its config and
//! the manifests in `plugins_dir`, run by an embedded `plugin_host::Host`
//! that connects them to this node.

use std::sync::Arc;

use kernel_core::{Absence, Kernel};
use plugin_host::{Host, KernelUrls, Manifest, Readiness};

use crate::config::Config;

/// A plugin is ready once the node's registry has every service its
/// manifest lists.
struct Registered(Arc<Kernel>);

impl Readiness for Registered {
    fn is_provided(&self, service: &str) -> bool {
        self.0.registry().pool(service).is_some()
    }

    fn instance_ready(&self, instance: &str, services: &[String]) -> bool {
        services.iter().all(|s| {
            self.0
                .registry()
                .pool(s)
                .is_some_and(|p| p.instances.iter().any(|i| &*i.id == instance))
        })
    }

    fn instance_failures(&self, instance: &str) -> Option<u64> {
        self.0
            .registry()
            .instances()
            .iter()
            .find(|i| &*i.id == instance)
            .map(|i| i.failures.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn drain(&self, instance: &str) -> bool {
        self.0
            .registry()
            .drain(instance, "replaced by a reload of its plugin")
    }
}

/// A call to a service of a supervised plugin that is down fails at once
/// with `UNAVAILABLE` naming the plugin and its state.
struct Down(Arc<Host>);

impl Absence for Down {
    fn why_absent(&self, service: &str) -> Option<(String, String)> {
        self.0
            .down_for(service)
            .map(|(plugin, state)| (plugin, state.as_str().to_owned()))
    }
}

/// The manifests `config` declares; each refused one is logged naming the
/// plugin and the key, and the others still start.
pub fn manifests(config: &Config) -> Vec<Manifest> {
    let (mut good, mut bad) = plugin_host::manifest::from_values(config.plugins.clone());
    if let Some(dir) = &config.plugins_dir {
        let (g, b) = plugin_host::manifest::load_dir(dir);
        good.extend(g);
        bad.extend(b);
    }
    for e in &bad {
        tracing::error!(cause = %e, "plugin manifest refused; the other plugins start");
    }
    good
}

/// With auth on, gives every supervised plugin a token of its own: a
/// random one, in its environment as `KERNEL_TOKEN` (which the SDKs
/// present), and its salted hash among the plugin's `auth` tokens. Its
/// grants still come from `[auth.plugins.NAME]` (deny by default).
pub fn issue_tokens(manifests: &mut [Manifest], auth: &mut kernel_core::AuthConfig) {
    if !auth.enabled {
        return;
    }
    for m in manifests {
        let token = crate::identity::hex(&rand::random::<[u8; 32]>());
        auth.plugins
            .entry(m.name.clone())
            .or_default()
            .tokens
            .push(crate::identity::hash_token(&token));
        m.env.insert("KERNEL_TOKEN".into(), token);
    }
}

/// Starts supervising `manifests` against the node at `urls` (none: no
/// host).
pub fn start(
    manifests: Vec<Manifest>,
    kernel: &Arc<Kernel>,
    urls: KernelUrls,
) -> Option<Arc<Host>> {
    if manifests.is_empty() {
        return None;
    }
    tracing::info!(plugins = manifests.len(), "supervising plugins");
    let readiness: Arc<dyn Readiness> = Arc::new(Registered(kernel.clone()));
    let host = Arc::new(Host::start(manifests, urls, Some(readiness)));
    kernel.registry().set_absence(Box::new(Down(host.clone())));
    Some(host)
}
