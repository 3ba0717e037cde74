//! The kernel's error type and its one mapping to `tonic::Status`.
//!
//! Every failure a caller can see is an [`Error`]. It converts into a
//! [`Failure`] (the wire form, carried in stream frames and in the details of
//! unary statuses) and from there into a `tonic::Status`, in exactly one place.

use kernel_proto::v1::{Failure, Hop};
use prost::Message;
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
            | Error::Backpressure { .. } => Code::ResourceExhausted,
            Error::Cancelled { .. } => Code::Cancelled,
            Error::ProviderGone { .. } => Code::Unavailable,
            Error::Remote(f) => Code::from_i32(f.code),
        }
    }

    /// The wire form of this error, without a causality hop yet.
    pub fn into_failure(self) -> Failure {
        match self {
            Error::Remote(f) => f,
            other => Failure {
                code: other.code() as i32,
                message: other.to_string(),
                causality: Vec::new(),
            },
        }
    }
}

/// Adds the hop a failure just crossed to its causality chain.
pub fn push_hop(failure: &mut Failure, context: &str, service: &str, plugin: &str) {
    failure.causality.push(Hop {
        context: context.to_owned(),
        service: service.to_owned(),
        plugin: plugin.to_owned(),
    });
}

/// `google.rpc.Status`, the standard payload of `grpc-status-details-bin`
/// that every gRPC library (grpc-go, grpcio, grpc-java) knows how to parse.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<Any>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, prost::Message)]
struct Any {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// The type URL of a `kernel.v1.Failure` packed in status details.
pub const FAILURE_TYPE_URL: &str = "type.googleapis.com/kernel.v1.Failure";

/// Renders a failure as a gRPC status: code and message (with the origin of
/// the causality chain appended), and the whole `Failure` packed as an `Any`
/// in a standard `google.rpc.Status` in the details.
pub fn failure_to_status(failure: &Failure) -> Status {
    let mut message = failure.message.clone();
    if let Some(origin) = failure.causality.first() {
        if origin.context.is_empty() {
            message.push_str(&format!(" (origin: {})", origin.service));
        } else {
            message.push_str(&format!(
                " (origin: {} at {})",
                origin.service, origin.context
            ));
        }
    }
    let details = RpcStatus {
        code: failure.code,
        message: message.clone(),
        details: vec![Any {
            type_url: FAILURE_TYPE_URL.to_owned(),
            value: failure.encode_to_vec(),
        }],
    };
    Status::with_details(
        Code::from_i32(failure.code),
        message,
        details.encode_to_vec().into(),
    )
}

/// Reads the `Failure` back out of a status made by [`failure_to_status`],
/// or builds a chain-less one from the code and message.
pub fn status_to_failure(status: &Status) -> Failure {
    RpcStatus::decode(status.details())
        .ok()
        .and_then(|s| {
            s.details
                .into_iter()
                .find(|a| a.type_url == FAILURE_TYPE_URL)
        })
        .and_then(|a| Failure::decode(a.value.as_slice()).ok())
        .unwrap_or_else(|| Failure {
            code: status.code() as i32,
            message: status.message().to_owned(),
            causality: Vec::new(),
        })
}

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        failure_to_status(&err.into_failure())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_survives_a_status_round_trip() {
        let mut f = Error::NoProvider {
            service: "inventory.check".into(),
        }
        .into_failure();
        push_hop(&mut f, "00000000000000aa.1", "inventory.check", "");
        let status = failure_to_status(&f);
        assert_eq!(status.code(), Code::NotFound);
        assert!(status
            .message()
            .contains("origin: inventory.check at 00000000000000aa.1"));
        assert_eq!(status_to_failure(&status), f);
        let plain = Status::internal("boom");
        assert_eq!(status_to_failure(&plain).message, "boom");
    }
}
