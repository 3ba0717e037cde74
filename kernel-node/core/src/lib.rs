//! The kernel proper: a small, stable microkernel with no server in it.
//!
//! Plugins register string-named services, call each other through the
//! router, and publish/subscribe events through the broker; every call and
//! delivery gets a context (trace, context path, deadline, budget). The
//! `kernel-node` crate puts a gRPC server, configuration loading and trace
//! export around a [`Kernel`]; in-process plugins (the SDK's `in-process`
//! feature) use it directly.
//!
//! # Layout, from the ground up
//! Each module imports only modules above it in this list (checked with
//! `shared/tools/import-circles`; see `docs/ARCHITECTURE.md`, Floors).
//! - `config`, `error`, `names`, `stats`, `lifecycle`, `metrics`: leaves
//!   (the crate's other modules are not imported by them).
//! - `context`: the context tree, paths and budgets.
//! - `capability`: `[auth]`, and what each plugin may do (deny by default
//!   when auth is on).
//! - `schema`: JSON Schema compilation and bounded error listing.
//! - `call`: [`Request`], [`Reply`], [`Headers`]: a call as every layer sees it.
//! - `provider`: remote (Register session) and in-process provider instances.
//! - `registry`: which instances provide which service names.
//! - `invocation`: a call on its way down the pipeline, and the `Stage` trait.
//! - `middleware`: the pipeline's stages (trace, validate, accounting,
//!   dispatch), composed in one place.
//! - `router`: the entry point for every call.
//! - `broker`: the event bus (topic trie, subscriptions, acks, dead letters).
//! - `kernel`: the [`Kernel`] that owns all of the above; the in-process API.

mod breaker;
mod broker;
mod call;
mod capability;
mod config;
mod context;
mod error;
mod invocation;
mod keeper;
mod kernel;
mod lifecycle;
mod metrics;
mod middleware;
mod names;
mod provider;
mod rate;
mod registry;
mod router;
mod schema;
mod stats;

pub use broker::subscription::{DeadLetter, Subscription, Take};
pub use broker::trie::Trie;
pub use broker::trie::{Interest, Match, Queue};
pub use broker::{
    Accepted, Broker, InterestChange, Publication, Stored, SubscribeRequest, OUTBOX_ID_BIT,
};
pub use call::{BoxFuture, Headers, Reply, Request};
pub use capability::{covers, Action, AuthConfig, Capabilities, PluginAuth};
pub use config::{BrokerConfig, BudgetConfig, BudgetOverride, Config, RouterConfig};
pub use context::{ChildSpec, Contexts, Node as ContextNode, Parent};
pub use error::Error;
pub use keeper::{Keeper, Kept};
pub use kernel::{Keeping, Kernel, LocalRegistration};
pub use lifecycle::{Drained, Lifecycle, Work};
pub use metrics::{EdgeRequest, EdgeSeries, Metrics, NodeFigures};
pub use names::{validate_pattern, validate_service, validate_topic, MAX_NAME_BYTES, MAX_TOKENS};
pub use provider::{Down, Instance, Link, LocalCall, LocalHandler, RemoteLink};
pub use registry::{Absence, Pool, Registry};
pub use router::CallFuture;
pub use stats::Stats;

/// The parsers of input from outside that the public API does not reach
/// directly, for the fuzz targets in `fuzz/`: not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::broker::trie::naive_match;
    pub use crate::context::budget::{
        check_header as check_budget_header, parse_header as parse_budget_header, Budget,
        MAX_COUNTER_NAME_BYTES, MAX_HEADER_BYTES as MAX_BUDGET_HEADER_BYTES,
        MAX_HEADER_ENTRIES as MAX_BUDGET_HEADER_ENTRIES,
    };
    pub use crate::context::path::{check_path, child_path, path_key, root_path, MAX_PATH_BYTES};
}
