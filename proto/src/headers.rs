//! Header names shared by gRPC metadata and stream frame header maps, and the
//! W3C `traceparent` helpers.

use rand::Rng;

/// W3C Trace Context parent.
pub const TRACEPARENT: &str = "traceparent";
/// W3C Trace Context vendor state.
pub const TRACESTATE: &str = "tracestate";
/// W3C Baggage.
pub const BAGGAGE: &str = "baggage";
/// The context path of the current call.
pub const CONTEXT: &str = "x-kernel-context";
/// The trace id (32 hex digits) a unary call ran under, in its response.
pub const TRACE_ID: &str = "x-kernel-trace-id";
/// What the tree may still spend.
pub const BUDGET: &str = "x-kernel-budget";
/// The calling plugin, set by the kernel only.
pub const CALLER: &str = "x-kernel-caller";
/// The plugin identity a connection claims (used when auth is off).
pub const PLUGIN: &str = "x-kernel-plugin";
/// Dead-letter reason.
pub const DLQ_REASON: &str = "x-kernel-dlq-reason";
/// Dead-letter attempt count.
pub const DLQ_ATTEMPTS: &str = "x-kernel-dlq-attempts";

/// Headers that the kernel copies from a caller to the provider unchanged.
pub const PASSTHROUGH: [&str; 3] = [TRACEPARENT, TRACESTATE, BAGGAGE];

/// A fresh `traceparent` for a request that arrived without one.
pub fn new_traceparent() -> String {
    let mut rng = rand::thread_rng();
    let trace: u128 = rng.gen::<u128>() | 1;
    let span: u64 = rng.gen::<u64>() | 1;
    format!("00-{trace:032x}-{span:016x}-01")
}

/// The trace id of a `traceparent`, when it is well formed.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let _version = parts.next()?;
    let trace = parts.next()?;
    (trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit())).then_some(trace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_traceparent_is_valid() {
        let tp = new_traceparent();
        assert_eq!(tp.len(), 55);
        assert!(trace_id(&tp).is_some());
        assert_eq!(trace_id("garbage"), None);
    }
}
