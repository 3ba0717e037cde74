//! The kernel's own configuration: `[router]`, `[broker]`, `[budget]` and
//! `[auth]` (its types in `crate::capability`).
//!
//! The node's `Config` (in the `kernel-node` crate) holds these sections
//! beside its server and telemetry ones and hands them to
//! [`crate::Kernel::new`]; the defaults live next to the names here.

use std::collections::HashMap;

use serde::Deserialize;

/// What a [`crate::Kernel`] is built with.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Call routing.
    pub router: RouterConfig,
    /// Event bus.
    pub broker: BrokerConfig,
    /// Context-tree budgets.
    pub budget: BudgetConfig,
    /// Identity and capabilities.
    pub auth: crate::capability::AuthConfig,
}

/// `[router]`: how calls reach providers.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterConfig {
    /// Largest payload accepted for calls and events (and gRPC messages, plus
    /// a small envelope allowance).
    pub max_payload_bytes: usize,
    /// Concurrency an instance gets when its hello says 0.
    pub default_max_concurrency: u32,
    /// Calls that may wait per instance when it is at its concurrency limit.
    pub queue_limit: usize,
    /// How long a queued call waits for a slot before `RESOURCE_EXHAUSTED`.
    pub queue_timeout_ms: u64,
    /// How often providers are asked to send a frame when idle.
    pub heartbeat_interval_ms: u64,
    /// A provider silent for this long is deregistered.
    pub heartbeat_timeout_ms: u64,
    /// Consecutive failures (UNAVAILABLE, INTERNAL, UNKNOWN,
    /// DEADLINE_EXCEEDED from the provider) that open an instance's circuit
    /// breaker; 0 turns breakers off.
    pub breaker_failures: u32,
    /// How long an open breaker keeps calls away before one probe.
    pub breaker_open_ms: u64,
    /// Attempts at a method its provider declared idempotent (the first
    /// one included; 1 = no retries), within the caller's deadline.
    pub retry_attempts: u32,
    /// The first retry's delay; each further one doubles it.
    pub retry_backoff_ms: u64,
    /// Provider instances (Register sessions and in-process registrations)
    /// one plugin may have at once.
    pub max_instances_per_plugin: usize,
    /// Calls one plugin (by its identity, or its claimed name with auth
    /// off) may have in flight at once; 0 = no cap.
    pub max_in_flight_per_plugin: usize,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            max_payload_bytes: 4 * 1024 * 1024,
            default_max_concurrency: 1024,
            queue_limit: 1024,
            queue_timeout_ms: 5_000,
            heartbeat_interval_ms: 5_000,
            heartbeat_timeout_ms: 15_000,
            breaker_failures: 5,
            breaker_open_ms: 1_000,
            retry_attempts: 3,
            retry_backoff_ms: 10,
            max_instances_per_plugin: 256,
            max_in_flight_per_plugin: 4_096,
        }
    }
}

/// `[broker]`: the event bus.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Events a subscription may hold before publishers wait.
    pub buffer: usize,
    /// Default max unacked events in flight per subscriber.
    pub window: u32,
    /// Default redelivery timeout.
    pub ack_wait_ms: u64,
    /// Default delivery attempts before dead-lettering.
    pub max_deliver: u32,
    /// How long a publish waits for buffer space when the caller gives no deadline.
    pub publish_timeout_ms: u64,
    /// Longest topic or pattern, in bytes.
    pub max_topic_bytes: usize,
    /// Most tokens in a topic or pattern.
    pub max_topic_tokens: usize,
    /// Subscriptions one plugin (by its `x-kernel-plugin` or verified
    /// name) may hold at once.
    pub max_subscriptions_per_plugin: usize,
    /// Events per second one plugin may publish (token bucket); 0 = no limit.
    pub max_publish_rate_per_plugin: u32,
    /// The bucket's size: events a plugin may publish at once above the
    /// rate; 0 = one second's worth.
    pub publish_burst_per_plugin: u32,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            buffer: 4096,
            window: 256,
            ack_wait_ms: 30_000,
            max_deliver: 5,
            publish_timeout_ms: 5_000,
            max_topic_bytes: 256,
            max_topic_tokens: 16,
            max_subscriptions_per_plugin: 10_000,
            max_publish_rate_per_plugin: 0,
            publish_burst_per_plugin: 0,
        }
    }
}

/// `[budget]`: what one context tree may spend.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetConfig {
    /// Total calls in a tree.
    pub calls: u64,
    /// Deepest nesting of calls.
    pub depth: u64,
    /// Total events emitted in a tree.
    pub events: u64,
    /// Custom counters plugins charge, e.g. `sql = 1000`. Unlisted counters
    /// are unlimited.
    pub custom: HashMap<String, u64>,
    /// Per-plugin overrides, applied to trees that plugin starts.
    pub plugins: HashMap<String, BudgetOverride>,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            calls: 100_000,
            depth: 64,
            events: 100_000,
            custom: HashMap::new(),
            plugins: HashMap::new(),
        }
    }
}

/// `[budget.plugins.NAME]`: overrides for trees started by one plugin.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetOverride {
    /// Total calls.
    pub calls: Option<u64>,
    /// Deepest nesting.
    pub depth: Option<u64>,
    /// Total events.
    pub events: Option<u64>,
    /// Custom counters.
    pub custom: HashMap<String, u64>,
}
