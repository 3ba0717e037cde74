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

/// The absolute deadline from `grpc-timeout`, less the reply margin. None
/// when the header is missing or malformed, and when the deadline is too far
/// off for the clock to represent (on some platforms `Instant` cannot hold
/// the 11 000 years `99999999H` asks for; adding would panic).
pub(crate) fn deadline_from(meta: &MetadataMap) -> Option<Instant> {
    let raw = meta.get(headers::GRPC_TIMEOUT)?.to_str().ok()?;
    let d = headers::parse_grpc_timeout(raw).ok()?;
    Instant::now().checked_add(d.saturating_sub(DEADLINE_MARGIN.min(d / 5)))
}

/// An absolute deadline from a frame's `timeout_us` (0 = none; so is one
/// too far off for the clock, see [`deadline_from`]).
pub(crate) fn deadline_from_us(us: u64) -> Option<Instant> {
    (us > 0)
        .then(|| Instant::now().checked_add(Duration::from_micros(us)))
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout(raw: &str) -> MetadataMap {
        let mut meta = MetadataMap::new();
        meta.insert(headers::GRPC_TIMEOUT, raw.parse().expect("ascii"));
        meta
    }

    #[test]
    fn grpc_timeout_becomes_a_deadline_less_the_margin() {
        let before = Instant::now();
        let d = deadline_from(&timeout("250m")).expect("a deadline");
        assert!(
            d >= before + Duration::from_millis(230),
            "margin at most 20 ms"
        );
        assert!(d <= Instant::now() + Duration::from_millis(230));
        assert_eq!(deadline_from(&timeout("12q")), None);
        assert_eq!(deadline_from(&MetadataMap::new()), None);
    }

    #[test]
    fn the_largest_deadlines_do_not_panic() {
        let _ = deadline_from(&timeout("99999999H"));
        let _ = deadline_from_us(u64::MAX);
        assert_eq!(deadline_from_us(0), None);
    }
}
