//! Capabilities: what each plugin may do once auth is on. Deny by default:
//! a plugin may provide, call, publish and subscribe only where a grant
//! of its own covers the name, and use Admin only when granted. Grants are
//! patterns in the topic grammar (`inventory.*`, `order.>`); with auth
//! off every check passes and costs one branch.
//!
//! The same checks run for remote and in-process plugins: the pipeline's
//! capability stage for calls, and the kernel's `register`, `publish` and
//! `subscribe` for the rest. Every denial is one audit log line (target
//! `audit`: who, what, the rule that was missing) and one count in
//! `kernel_denials_total`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;

use crate::error::Error;

/// `[auth]`: identity and capabilities.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Whether clients must present a token and plugins are held to their
    /// grants. Off by default (development on loopback).
    pub enabled: bool,
    /// Plugins by name: their credentials and grants.
    pub plugins: HashMap<String, PluginAuth>,
}

/// One plugin's credentials and grants.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginAuth {
    /// Salted token hashes (`sha256:<salt hex>:<digest hex>`, made with
    /// `kernel-node hash-token`); two during a rotation.
    pub tokens: Vec<String>,
    /// An environment variable holding a plain token.
    pub token_env: Option<String>,
    /// A file holding plain tokens, one per line (re-read when it changes).
    pub token_file: Option<String>,
    /// Services it may provide.
    pub provide: Vec<String>,
    /// Services it may call.
    pub call: Vec<String>,
    /// Topics it may publish to.
    pub publish: Vec<String>,
    /// Topics it may subscribe to (a subscription pattern must be covered).
    pub subscribe: Vec<String>,
    /// Whether it may use the Admin service.
    pub admin: bool,
}

/// What a check is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Registering as a provider of a service.
    Provide,
    /// Calling a service.
    Call,
    /// Publishing on a topic.
    Publish,
    /// Subscribing with a pattern.
    Subscribe,
    /// Using the Admin service.
    Admin,
}

impl Action {
    /// The capability's name, as in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Provide => "provide",
            Action::Call => "call",
            Action::Publish => "publish",
            Action::Subscribe => "subscribe",
            Action::Admin => "admin",
        }
    }
}

/// The grants of every plugin, and the denials counted so far.
#[derive(Debug, Default)]
pub struct Capabilities {
    enabled: bool,
    grants: HashMap<String, PluginAuth>,
    denials: [AtomicU64; 5],
}

impl Capabilities {
    /// The grants `config` lists.
    pub fn new(config: &AuthConfig) -> Capabilities {
        Capabilities {
            enabled: config.enabled,
            grants: config.plugins.clone(),
            denials: Default::default(),
        }
    }

    /// Whether checks apply (auth on).
    #[inline]
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether `plugin` (None: a client that named no plugin) may do
    /// `action` on `name`; `PERMISSION_DENIED` naming the missing
    /// capability otherwise, audited and counted.
    #[inline]
    pub fn check(&self, plugin: Option<&str>, action: Action, name: &str) -> Result<(), Error> {
        if !self.enabled {
            return Ok(());
        }
        self.check_enabled(plugin, action, name)
    }

    #[cold]
    fn check_enabled(&self, plugin: Option<&str>, action: Action, name: &str) -> Result<(), Error> {
        let grant = plugin.and_then(|p| self.grants.get(p));
        let allowed = grant.is_some_and(|g| {
            let patterns = match action {
                Action::Provide => &g.provide,
                Action::Call => &g.call,
                Action::Publish => &g.publish,
                Action::Subscribe => &g.subscribe,
                Action::Admin => return g.admin,
            };
            patterns.iter().any(|p| covers(p, name))
        });
        if allowed {
            return Ok(());
        }
        let who = plugin.unwrap_or("(anonymous)");
        let capability = match action {
            Action::Admin => "admin".to_owned(),
            a => format!("{} {name}", a.as_str()),
        };
        let rule = match (plugin, grant) {
            (None, _) => "no identity".to_owned(),
            (Some(_), None) => "plugin has no grants".to_owned(),
            (Some(p), Some(_)) => {
                format!("no auth.plugins.{p}.{} pattern covers it", action.as_str())
            }
        };
        self.denials[action as usize].fetch_add(1, Ordering::Relaxed);
        tracing::warn!(target: "audit", plugin = %who, capability = %capability, rule = %rule, "denied");
        Err(Error::PermissionDenied {
            plugin: who.to_owned(),
            capability,
        })
    }

    /// Counts a denial decided elsewhere (a service another plugin owns).
    pub fn record(&self, action: Action) {
        self.denials[action as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Denials so far, by capability name.
    pub fn denials(&self) -> Vec<(&'static str, u64)> {
        [
            Action::Provide,
            Action::Call,
            Action::Publish,
            Action::Subscribe,
            Action::Admin,
        ]
        .into_iter()
        .map(|a| (a.as_str(), self.denials[a as usize].load(Ordering::Relaxed)))
        .collect()
    }
}

/// Whether grant pattern `grant` covers `name` (a name, or a subscription
/// pattern: then every topic it matches must be one `grant` matches).
/// `*` stands for one token, `>` for one or more at the end.
pub fn covers(grant: &str, name: &str) -> bool {
    let mut g = grant.split('.');
    let mut n = name.split('.');
    loop {
        match (g.next(), n.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(t)) if t != ">" => {}
            (Some(gt), Some(t)) if gt == t && gt != "*" && gt != ">" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(enabled: bool) -> Capabilities {
        let mut plugins = HashMap::new();
        plugins.insert(
            "orders".to_owned(),
            PluginAuth {
                provide: vec!["orders.*".into()],
                call: vec!["inventory.>".into()],
                publish: vec!["order.*".into()],
                subscribe: vec!["stock.>".into()],
                ..PluginAuth::default()
            },
        );
        Capabilities::new(&AuthConfig { enabled, plugins })
    }

    #[test]
    fn grants_cover_names_and_patterns_in_the_topic_grammar() {
        assert!(covers("orders.*", "orders.place"));
        assert!(!covers("orders.*", "orders.place.now"));
        assert!(covers("orders.>", "orders.place.now"));
        assert!(!covers("orders.>", "orders"));
        assert!(covers("orders.place", "orders.place"));
        assert!(!covers("orders.place", "orders.*"));
        // Subscription patterns: covered only when every match is.
        assert!(covers("stock.>", "stock.*"));
        assert!(covers("stock.>", "stock.>"));
        assert!(covers("stock.*", "stock.*"));
        assert!(!covers("stock.*", "stock.>"));
        assert!(!covers("stock.*.eu", "stock.>"));
        assert!(covers(">", "anything.at.all"));
    }

    #[test]
    fn deny_by_default_naming_the_missing_capability() {
        let c = caps(true);
        assert!(c
            .check(Some("orders"), Action::Call, "inventory.check")
            .is_ok());
        let e = c
            .check(Some("orders"), Action::Call, "billing.charge")
            .expect_err("not granted");
        assert!(e.to_string().contains("call billing.charge"), "{e}");
        assert!(c.check(Some("orders"), Action::Admin, "").is_err());
        assert!(c
            .check(Some("stranger"), Action::Publish, "order.created")
            .is_err());
        assert!(c.check(None, Action::Call, "inventory.check").is_err());
        assert!(c
            .check(Some("orders"), Action::Subscribe, "stock.*")
            .is_ok());
        assert_eq!(
            c.denials().iter().map(|(_, n)| n).sum::<u64>(),
            4,
            "{:?}",
            c.denials()
        );
        // Auth off: everything passes.
        assert!(caps(false).check(None, Action::Admin, "").is_ok());
    }
}
