//! The kernel's error type and its one mapping to `tonic::Status`.
//!
//! Every failure a caller can see is an [`Error`]. It converts into a
//! [`Failure`] (the wire form, carried in stream frames and in the details of
//! unary statuses) and from there into a `tonic::Status`, in exactly one place.

use kernel_proto::failure::failure_to_status;
use kernel_proto::v1::Failure;
use tonic::{Code, Status};

/// Everything that can go wrong inside the kernel, with the context a reader
/// needs to find the cause.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nobody provides the service.
    #[error("no provider for service `{service}`")]
    NoProvider {
        /// The service that was called.
        service: String,
    },
    /// A name (service, topic, pattern, plugin) is malformed.
    #[error("invalid {what} `{name}`: {reason}")]
    InvalidName {
        /// What kind of name: `service`, `topic`, `pattern`, ...
        what: &'static str,
        /// The offending name.
        name: String,
        /// What is wrong, naming the offending token where there is one.
        reason: String,
    },
    /// A payload is larger than the configured limit.
    #[error("payload of {size} bytes exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// Its size.
        size: usize,
        /// The configured maximum.
        limit: usize,
    },
    /// The deadline passed before the call could complete.
    #[error("deadline exceeded calling `{service}` at context {context}")]
    DeadlineExceeded {
        /// The service being called.
        service: String,
        /// The context path of the call.
        context: String,
    },
    /// Every provider instance is at its concurrency limit and the wait queue
    /// is full (or the wait timed out).
    #[error("service `{service}` is saturated: {detail}")]
    Saturated {
        /// The service being called.
        service: String,
        /// Queue full or waited too long.
        detail: String,
    },
    /// A budget of the context tree is spent.
    #[error("budget `{budget}` exhausted at context {context} (limit {limit})")]
    BudgetExhausted {
        /// `calls`, `depth`, `events` or a custom counter.
        budget: String,
        /// The context path whose operation exceeded it.
        context: String,
        /// The limit in force.
        limit: u64,
    },
    /// The call was cancelled (caller went away, branch killed by an operator
    /// or by a budget).
    #[error("cancelled at context {context}")]
    Cancelled {
        /// The context path of the cancelled call.
        context: String,
    },
    /// The provider went away while the call was in flight.
    #[error("provider {plugin}/{instance} of `{service}` disconnected")]
    ProviderGone {
        /// The plugin name.
        plugin: String,
        /// Its instance id.
        instance: String,
        /// The service being called.
        service: String,
    },
    /// A subscriber's buffer stayed full past the publisher's deadline.
    #[error("subscription `{subscription}` is full ({buffered} events buffered); publish timed out on `{topic}`")]
    Backpressure {
        /// The slow subscription's name or id.
        subscription: String,
        /// How many events it holds.
        buffered: usize,
        /// The topic being published.
        topic: String,
    },
    /// An event fails a schema registered for its topic.
    #[error("invalid event on `{topic}`: {detail}")]
    InvalidEvent {
        /// The topic published.
        topic: String,
        /// What failed.
        detail: String,
    },
    /// The payload fails the service's schema or is not what its content type says.
    #[error("invalid argument for `{service}`: {detail}")]
    InvalidArgument {
        /// The service being called.
        service: String,
        /// What failed.
        detail: String,
    },
    /// A stream frame broke the protocol (missing hello, duplicate id, ...).
    #[error("protocol error: {detail}")]
    Protocol {
        /// What was wrong.
        detail: String,
    },
    /// Every instance of the service has an open circuit breaker.
    #[error("circuit open for every instance of `{service}` ({instances}): failing fast")]
    CircuitOpen {
        /// The service that was called.
        service: String,
        /// Its instances.
        instances: usize,
    },
    /// Nobody provides the service because the plugin that does is down
    /// (known to the plugin host): a clear answer at once, not a wait.
    #[error("`{service}` is unavailable: its plugin `{plugin}` is {state}")]
    PluginDown {
        /// The service that was called.
        service: String,
        /// The plugin that provides it when it runs.
        plugin: String,
        /// Its state (`backoff`, `crash-loop`, `exited`, ...).
        state: String,
    },
    /// The node is shutting down: the work is refused, or was cut when the
    /// grace period ended.
    #[error("node shutting down: call refused or cut at the end of the grace period (server.shutdown_grace_ms); retry on another node or after the restart")]
    ShuttingDown,
    /// An instance id is already registered.
    #[error("instance id `{instance}` is already registered")]
    DuplicateInstance {
        /// The id the new session asked for.
        instance: String,
    },
    /// A per-plugin limit was reached.
    #[error("plugin `{plugin}` reached {limit} ({value})")]
    LimitReached {
        /// The setting, e.g. `broker.max_subscriptions_per_plugin`.
        limit: &'static str,
        /// Who.
        plugin: String,
        /// Its value.
        value: usize,
    },
    /// A plugin tried something its grants do not cover (auth on).
    #[error("permission denied: plugin `{plugin}` lacks the capability `{capability}`")]
    PermissionDenied {
        /// Who asked (`(anonymous)` without an identity).
        plugin: String,
        /// What was missing: `call billing.charge`, `admin`, ...
        capability: String,
    },
    /// A service is provided by another plugin (auth on: no plugin joins or
    /// replaces another's providers).
    #[error(
        "permission denied: service `{service}` is provided by plugin `{owner}`, not `{plugin}`"
    )]
    NotOwner {
        /// The service asked for.
        service: String,
        /// Who provides it now.
        owner: String,
        /// Who asked.
        plugin: String,
    },
    /// The node's database, which this request needs, cannot be reached.
    #[error("database {database} is unavailable: {cause}")]
    StoreUnavailable {
        /// The database, as the node shows it (no password).
        database: String,
        /// What failed.
        cause: String,
    },
    /// A durable subscription's stored backlog is full.
    #[error("durable subscription `{durable}` has a full backlog ({limit} events, durable.max_backlog); it must ack or be deleted")]
    BacklogFull {
        /// Its name.
        durable: String,
        /// The limit.
        limit: u64,
    },
    /// A request that cannot be served in the node's present state (a
    /// durable subscription without a database, one already connected).
    #[error("{0}")]
    Precondition(String),
    /// A failure that came back from a provider or a deeper hop, passed through.
    #[error("{}", .0.message)]
    Remote(Failure),
}

impl Error {
    /// The gRPC code a caller sees for this error.
    pub fn code(&self) -> Code {
        match self {
            Error::NoProvider { .. } => Code::NotFound,
            Error::InvalidName { .. }
            | Error::InvalidArgument { .. }
            | Error::InvalidEvent { .. }
            | Error::Protocol { .. } => Code::InvalidArgument,
            Error::PayloadTooLarge { .. } => Code::OutOfRange,
            Error::DeadlineExceeded { .. } => Code::DeadlineExceeded,
            Error::Saturated { .. }
            | Error::BudgetExhausted { .. }
            | Error::Backpressure { .. }
            | Error::LimitReached { .. }
            | Error::BacklogFull { .. } => Code::ResourceExhausted,
            Error::StoreUnavailable { .. } => Code::Unavailable,
            Error::Precondition(_) => Code::FailedPrecondition,
            Error::Cancelled { .. } => Code::Cancelled,
            Error::ProviderGone { .. }
            | Error::ShuttingDown
            | Error::PluginDown { .. }
            | Error::CircuitOpen { .. } => Code::Unavailable,
            Error::DuplicateInstance { .. } => Code::AlreadyExists,
            Error::PermissionDenied { .. } | Error::NotOwner { .. } => Code::PermissionDenied,
            Error::Remote(f) => Code::from_i32(f.code),
        }
    }

    /// The wire form of this error, without a causality hop yet (the same
    /// as `Failure::from`, for use at the end of a method chain).
    pub fn into_failure(self) -> Failure {
        Failure::from(self)
    }
}

impl From<Error> for Failure {
    fn from(err: Error) -> Failure {
        match err {
            Error::Remote(f) => f,
            other => Failure {
                code: other.code() as i32,
                message: other.to_string(),
                causality: Vec::new(),
            },
        }
    }
}

/// The one mapping to `tonic::Status`: through the wire form, so a unary
/// status carries the same `Failure` a stream frame would.
impl From<Error> for Status {
    fn from(err: Error) -> Status {
        failure_to_status(&Failure::from(err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernel_proto::failure::status_to_failure;

    #[test]
    fn an_error_reaches_the_caller_with_its_code_and_its_wire_form() {
        let status = Status::from(Error::DuplicateInstance {
            instance: "greeter-1".into(),
        });
        assert_eq!(status.code(), Code::AlreadyExists);
        let f = status_to_failure(&status);
        assert_eq!(f.code, Code::AlreadyExists as i32);
        assert!(f.message.contains("`greeter-1`"), "{}", f.message);
        assert_eq!(Status::from(Error::ShuttingDown).code(), Code::Unavailable);
    }
}
