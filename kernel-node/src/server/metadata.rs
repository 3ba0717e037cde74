//! Reading context out of gRPC metadata: headers, deadline, parent, caller.

use std::time::{Duration, Instant};

use tonic::metadata::MetadataMap;

use kernel_core::Headers;
use kernel_core::Parent;
use kernel_proto::headers;

/// How much earlier than the caller's `grpc-timeout` the kernel answers
/// `DEADLINE_EXCEEDED` itself: gRPC libraries (tonic, grpc-go) enforce the
/// same deadline on both ends and report a local `CANCELLED` when their own
/// timer wins, so the kernel's answer (with its context path) must be on the
/// wire before then. Timers have millisecond resolution; a loaded machine
/// adds scheduling delay (a 5 ms margin on a 50 ms timeout was seen lost on
/// this 2-core machine under a parallel build). The margin is a fifth of the
/// timeout, capped here.
pub(crate) const DEADLINE_MARGIN: Duration = Duration::from_millis(20);

/// Context headers a caller may send (x-kernel-caller is not among them).
const ACCEPTED: [&str; 5] = [
    headers::TRACEPARENT,
    headers::TRACESTATE,
    headers::BAGGAGE,
    headers::CONTEXT,
    headers::BUDGET,
];

/// The accepted context headers of a request.
pub(crate) fn headers_from(meta: &MetadataMap) -> Headers {
    let mut h = Headers::new();
    for name in ACCEPTED {
        if let Some(v) = meta.get(name).and_then(|v| v.to_str().ok()) {
            h.insert(name.to_owned(), v.to_owned());
        }
    }
    h
}

/// The parent context named by `x-kernel-context`, if any.
pub(crate) fn parent_from(h: &Headers) -> Parent {
    match h.get(headers::CONTEXT) {
        Some(p) if !p.is_empty() => Parent::Path(p.clone()),
        _ => Parent::None,
    }
}

/// The plugin identity a connection claims (`x-kernel-plugin`).
pub(crate) fn caller_from(meta: &MetadataMap) -> Option<std::sync::Arc<str>> {
    meta.get(headers::PLUGIN)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= 128)
        .map(Into::into)
}

/// The absolute deadline from `grpc-timeout`, less the reply margin.
pub(crate) fn deadline_from(meta: &MetadataMap) -> Option<Instant> {
    let raw = meta.get("grpc-timeout")?.to_str().ok()?;
    let d = parse_grpc_timeout(raw)?;
    Some(Instant::now() + d.saturating_sub(DEADLINE_MARGIN.min(d / 5)))
}

/// Parses the gRPC `TimeoutValue TimeoutUnit` form, e.g. `250m`, `3S`.
pub(crate) fn parse_grpc_timeout(raw: &str) -> Option<Duration> {
    if raw.len() < 2 || raw.len() > 9 {
        return None;
    }
    let (num, unit) = raw.split_at(raw.len() - 1);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// An absolute deadline from a frame's `timeout_us` (0 = none).
pub(crate) fn deadline_from_us(us: u64) -> Option<Instant> {
    (us > 0).then(|| Instant::now() + Duration::from_micros(us))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("x"), None);
        assert_eq!(parse_grpc_timeout("12q"), None);
    }
}
