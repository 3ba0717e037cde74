//! The SDK's error: a gRPC-style status with the causality chain, or a
//! local problem (connecting, JSON).

use kernel_proto::v1::{Failure, Hop};
use tonic::Code;

/// Everything an SDK call or a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A status from the kernel, a provider, or a handler of yours.
    #[error("{code:?}: {message}{}", chain(.causality))]
    Status {
        /// The gRPC code.
        code: Code,
        /// The message.
        message: String,
        /// Hops the failure crossed, where it started first.
        causality: Vec<Hop>,
    },
    /// Could not reach the node.
    #[error("cannot connect to the kernel at {url}: {source}")]
    Connect {
        /// The URL.
        url: String,
        /// The transport error.
        source: tonic::transport::Error,
    },
    /// A payload did not (de)serialize.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

fn chain(hops: &[Hop]) -> String {
    if hops.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = hops
        .iter()
        .map(|h| {
            if h.plugin.is_empty() {
                format!("{} @ {}", h.service, h.context)
            } else {
                format!("{} ({}) @ {}", h.service, h.plugin, h.context)
            }
        })
        .collect();
    format!(" [causality: {}]", parts.join(" <- "))
}

impl Error {
    /// A status error with `code` and `message`.
    pub fn new(code: Code, message: impl Into<String>) -> Error {
        Error::Status {
            code,
            message: message.into(),
            causality: Vec::new(),
        }
    }

    /// `INVALID_ARGUMENT`.
    pub fn invalid_argument(message: impl Into<String>) -> Error {
        Error::new(Code::InvalidArgument, message)
    }

    /// `INTERNAL`.
    pub fn internal(message: impl Into<String>) -> Error {
        Error::new(Code::Internal, message)
    }

    /// The gRPC code (`UNAVAILABLE` for connection errors, `INVALID_ARGUMENT`
    /// for JSON errors).
    pub fn code(&self) -> Code {
        match self {
            Error::Status { code, .. } => *code,
            Error::Connect { .. } => Code::Unavailable,
            Error::Json(_) => Code::InvalidArgument,
        }
    }

    /// The message without the chain.
    pub fn message(&self) -> String {
        match self {
            Error::Status { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }

    /// The causality chain: where the failure started first.
    pub fn causality(&self) -> &[Hop] {
        match self {
            Error::Status { causality, .. } => causality,
            _ => &[],
        }
    }

    /// The wire form, keeping the chain so the kernel can extend it.
    pub fn into_failure(self) -> Failure {
        match self {
            Error::Status {
                code,
                message,
                causality,
            } => Failure {
                code: code as i32,
                message,
                causality,
            },
            other => Failure {
                code: other.code() as i32,
                message: other.to_string(),
                causality: Vec::new(),
            },
        }
    }
}

impl From<Failure> for Error {
    fn from(f: Failure) -> Error {
        Error::Status {
            code: Code::from_i32(f.code),
            message: f.message,
            causality: f.causality,
        }
    }
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Error {
        kernel_proto::failure::status_to_failure(&s).into()
    }
}
