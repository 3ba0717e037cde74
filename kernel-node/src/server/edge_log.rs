//! How the transport edge logs an RPC that failed: a client's mistake or
//! an expected refusal (a bad name, no provider, a deadline, a budget,
//! shutdown, a plugin down) at DEBUG, a fault of the kernel or a provider
//! (`UNKNOWN`, `UNIMPLEMENTED`, `INTERNAL`, `DATA_LOSS`, a transport error)
//! at WARN. Messages can carry client-supplied strings (service names,
//! topics), so they are escaped and capped.

use std::time::Duration;

use tower_http::classify::GrpcFailureClass;
use tower_http::trace::OnFailure;
use tracing::Span;

/// Longest message logged, in characters.
const MAX_LOGGED: usize = 200;

/// The edge's failure logger.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LogFailure;

impl OnFailure<GrpcFailureClass> for LogFailure {
    fn on_failure(&mut self, class: GrpcFailureClass, latency: Duration, _: &Span) {
        let latency_ms = latency.as_millis() as u64;
        match class {
            GrpcFailureClass::Status(status) => {
                let code = status.code_raw();
                let message = capped(status.message().unwrap_or_default());
                if is_fault(code) {
                    tracing::warn!(code, %message, latency_ms, "rpc failed");
                } else {
                    tracing::debug!(code, %message, latency_ms, "rpc refused");
                }
            }
            // The transport's own errors, and any kind a later tower-http adds.
            other => {
                tracing::warn!(error = %capped(&other.to_string()), latency_ms, "rpc failed in transport");
            }
        }
    }
}

/// Codes that mean something broke, rather than that a caller was told no.
fn is_fault(code: i32) -> bool {
    matches!(code, 2 | 12 | 13 | 15)
}

/// `text` with control characters and quotes escaped, at most
/// [`MAX_LOGGED`] characters of it.
fn capped(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_LOGGED)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().nth(MAX_LOGGED).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_escaped_and_capped_and_faults_told_from_refusals() {
        assert_eq!(capped("a\nb\"c"), "a\\nb\\\"c");
        let long = "x".repeat(MAX_LOGGED + 10);
        assert_eq!(capped(&long).chars().count(), MAX_LOGGED + 1);
        assert!(is_fault(13) && is_fault(2));
        assert!(!is_fault(5) && !is_fault(3) && !is_fault(14));
    }
}
