//! Failures on the wire: a `kernel.v1.Failure` (code, message, causality
//! chain) inside stream frames, and packed in a standard `google.rpc.Status`
//! in the `grpc-status-details-bin` trailer of a unary status.

use prost::Message;
use tonic::{Code, Status};

use crate::v1::{Failure, Hop};

/// gRPC status code names (`NOT_FOUND`, …), by number.
pub const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The name of gRPC code `code` (`UNKNOWN` for a number outside 0..=16).
pub fn code_name(code: i32) -> &'static str {
    usize::try_from(code)
        .ok()
        .and_then(|i| CODE_NAMES.get(i))
        .copied()
        .unwrap_or("UNKNOWN")
}

/// The number of the gRPC code named `name`, if it is one.
pub fn code_of(name: &str) -> Option<i32> {
    CODE_NAMES.iter().position(|c| *c == name).map(|i| i as i32)
}

/// Hops a causality chain keeps: the first [`MAX_HOPS`]` / 2` (where the
/// failure started) and the last ones (the caller's side). Each hop's
/// context path grows with its depth, so an uncapped chain grows with the
/// square of the depth (about 11 KB at depth 64); capped, a failure from
/// any depth stays under about 3 KB.
pub const MAX_HOPS: usize = 16;

/// Adds the hop a failure just crossed to its causality chain (past
/// [`MAX_HOPS`], the middle hop goes: the origin and the nearest hops stay).
pub fn push_hop(failure: &mut Failure, context: &str, service: &str, plugin: &str) {
    if failure.causality.len() >= MAX_HOPS {
        failure.causality.remove(MAX_HOPS / 2);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deep_chain_keeps_its_origin_and_nearest_hops_within_the_cap() {
        let mut f = Failure {
            code: Code::NotFound as i32,
            message: "gone".into(),
            causality: Vec::new(),
        };
        let mut path = String::from("5f0c9a1e2b3d4c6f");
        for depth in 1..=64 {
            path.push_str(".1");
            push_hop(&mut f, &path, &format!("svc.d{depth}"), "p");
        }
        assert_eq!(f.causality.len(), MAX_HOPS);
        assert_eq!(f.causality[0].service, "svc.d1", "the origin stays");
        assert_eq!(
            f.causality[MAX_HOPS - 1].service,
            "svc.d64",
            "the nearest stays"
        );
        let trailer = failure_to_status(&f).details().len();
        assert!(trailer < 3 * 1024, "{trailer} bytes");
    }

    #[test]
    fn failure_survives_a_status_round_trip() {
        let mut f = Failure {
            code: Code::NotFound as i32,
            message: "no provider for service `inventory.check`".into(),
            causality: Vec::new(),
        };
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
